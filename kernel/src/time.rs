//! The kernel's clock, as the driver-facing `os_services::Clock`.

use os_services::Clock;

/// The architecture's monotonic clock.
pub struct KernelClock;

impl Clock for KernelClock {
    fn now_ns(&self) -> u64 {
        crate::arch::now_ns()
    }
}

pub static CLOCK: KernelClock = KernelClock;
