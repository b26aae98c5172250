//! The services a hardware driver takes from the operating system.
//!
//! Drivers never reach into the kernel: they receive these traits. That keeps
//! them buildable and testable on the host (with a fake clock and heap-backed
//! "physical" memory) and makes every wait on hardware bounded by construction:
//! the only way to wait is [`wait_until`], which takes a deadline.
#![no_std]
#![warn(missing_docs)]

pub mod barrier;
pub mod mmio;
pub mod observe;

use core::time::Duration;

/// A monotonic clock.
pub trait Clock {
    /// Nanoseconds since an arbitrary fixed point; never goes backwards.
    fn now_ns(&self) -> u64;

    /// Gives the CPU away briefly inside a polling loop (a pause/yield hint).
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// A wait on hardware ran past its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut {
    /// How long was waited before giving up.
    pub waited: Duration,
}

/// Polls `done` until it returns `Some`, or fails once `timeout` has passed.
///
/// Every wait on a device status bit, a queue head or a completion write goes
/// through here so that a hung or misprogrammed device becomes an error the
/// caller reports, never a hang.
pub fn wait_until<T>(
    clock: &dyn Clock,
    timeout: Duration,
    mut done: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let start = clock.now_ns();
    let bound = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    loop {
        if let Some(value) = done() {
            return Ok(value);
        }
        let waited = clock.now_ns().saturating_sub(start);
        if waited > bound {
            // One last look: the condition may have become true while the
            // clock was read, and a late success is still a success.
            return done().ok_or(TimedOut {
                waited: Duration::from_nanos(waited),
            });
        }
        clock.relax();
    }
}

/// A physically contiguous block of memory a device may access, zeroed
/// unless it came from [`DmaMemory::alloc_uninit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    /// Physical (bus) address of the first byte.
    pub phys: u64,
    /// CPU address of the first byte.
    pub virt: *mut u8,
    /// Length in bytes (a multiple of the 4 KiB frame size).
    pub len: usize,
}

/// Memory for device-visible structures (IOMMU tables, queues, DMA buffers).
pub trait DmaMemory {
    /// Allocates `len` bytes (rounded up to whole 4 KiB frames), zeroed,
    /// aligned to `align` (a power of two, at least 4 KiB).
    fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion>;

    /// [`DmaMemory::alloc`] without the zeroing: the memory holds whatever
    /// it held (another user's data, in a kernel), so only for a structure
    /// the caller writes whole before any device may reach it. The default
    /// zeroes anyway.
    fn alloc_uninit(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.alloc(len, align)
    }

    /// Returns a region obtained from [`DmaMemory::alloc`] or
    /// [`DmaMemory::alloc_uninit`].
    fn free(&self, region: DmaRegion);

    /// The CPU address through which physical address `phys` is reached.
    fn phys_to_virt(&self, phys: u64) -> *mut u8;
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::cell::Cell;

    /// A clock that advances by a fixed step on every read.
    struct SteppingClock {
        now: Cell<u64>,
        step: u64,
    }

    impl Clock for SteppingClock {
        fn now_ns(&self) -> u64 {
            let now = self.now.get();
            self.now.set(now + self.step);
            now
        }
    }

    #[test]
    fn wait_until_returns_the_value_once_ready() {
        let clock = SteppingClock {
            now: Cell::new(0),
            step: 10,
        };
        let mut polls = 0;
        let result = wait_until(&clock, Duration::from_micros(1), || {
            polls += 1;
            (polls == 3).then_some(polls)
        });
        assert_eq!(result, Ok(3));
    }

    #[test]
    fn wait_until_times_out_on_a_condition_that_never_holds() {
        let clock = SteppingClock {
            now: Cell::new(0),
            step: 1_000,
        };
        let result: Result<(), _> = wait_until(&clock, Duration::from_micros(10), || None);
        let err = result.unwrap_err();
        assert!(err.waited > Duration::from_micros(10));
        assert!(err.waited <= Duration::from_micros(12));
    }

    #[test]
    fn wait_until_accepts_a_late_success() {
        let clock = SteppingClock {
            now: Cell::new(0),
            step: 1_000,
        };
        let mut polls = 0;
        let result = wait_until(&clock, Duration::from_nanos(500), || {
            polls += 1;
            (polls == 2).then_some(())
        });
        assert_eq!(result, Ok(()));
    }
}
