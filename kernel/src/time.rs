//! The kernel's clock, as the driver-facing `os_services::Clock`.

use os_services::Clock;

/// The architecture's monotonic clock.
pub struct KernelClock;

/// How long `relax` waits between two polls of a device register.
///
/// Under QEMU's TCG every MMIO read takes the big QEMU lock; a guest that
/// polls a status register back to back can starve the main loop that runs
/// the device's completion timer (edu finishes its DMA from a timer), which
/// showed as a 5 s DMA timeout on a loaded host. Reading the CPU's own
/// counter in between takes no lock.
const POLL_INTERVAL_NS: u64 = 20_000;

impl Clock for KernelClock {
    fn now_ns(&self) -> u64 {
        crate::arch::now_ns()
    }

    fn relax(&self) {
        let start = self.now_ns();
        while self.now_ns().wrapping_sub(start) < POLL_INTERVAL_NS {
            core::hint::spin_loop();
        }
    }
}

pub static CLOCK: KernelClock = KernelClock;
