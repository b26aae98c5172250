//! ECAM: memory-mapped configuration space (PCIe Base 6.0 §7.2.2).

use core::ops::RangeInclusive;
use core::ptr::NonNull;

use crate::{Bdf, ConfigSpace};

/// ECAM address bits: `bus[27:20]`, `device[19:15]`, `function[14:12]`, `offset[11:0]`.
const BUS_SHIFT: usize = 20;
const DEVICE_SHIFT: usize = 15;
const FUNCTION_SHIFT: usize = 12;
const FUNCTION_CONFIG_SIZE: u16 = 4096;

/// One ECAM window covering `buses`.
#[derive(Debug)]
pub struct Ecam {
    base: NonNull<u8>,
    buses: RangeInclusive<u8>,
}

// SAFETY: configuration accesses are single volatile loads/stores; callers
// serialise read-modify-write sequences themselves.
unsafe impl Send for Ecam {}
unsafe impl Sync for Ecam {}

impl Ecam {
    /// # Safety
    /// `base` must map (uncached) the ECAM window of `buses`, i.e.
    /// `(buses.end - buses.start + 1) << 20` bytes, for as long as the value lives.
    pub unsafe fn new(base: NonNull<u8>, buses: RangeInclusive<u8>) -> Self {
        Ecam { base, buses }
    }

    /// The buses the window covers.
    pub fn buses(&self) -> RangeInclusive<u8> {
        self.buses.clone()
    }

    /// Whether `address` lies in the window (an exception handler asking
    /// whether a faulting access was a configuration access).
    pub fn contains(&self, address: usize) -> bool {
        let start = self.base.as_ptr() as usize;
        let size = (usize::from(self.buses.end() - self.buses.start()) + 1) << BUS_SHIFT;
        address
            .checked_sub(start)
            .is_some_and(|offset| offset < size)
    }

    fn address(&self, bdf: Bdf, offset: u16) -> Option<*mut u32> {
        if !self.buses.contains(&bdf.bus)
            || offset >= FUNCTION_CONFIG_SIZE
            || !offset.is_multiple_of(4)
        {
            return None;
        }
        let index = (usize::from(bdf.bus - self.buses.start()) << BUS_SHIFT)
            | (usize::from(bdf.device & 0x1F) << DEVICE_SHIFT)
            | (usize::from(bdf.function & 0x7) << FUNCTION_SHIFT)
            | usize::from(offset);
        // SAFETY: index is inside the window `new` was given.
        Some(unsafe { self.base.as_ptr().add(index) }.cast::<u32>())
    }
}

impl ConfigSpace for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.address(bdf, offset) {
            // SAFETY: a valid, aligned address inside the ECAM window.
            Some(address) => unsafe { address.read_volatile() },
            // Outside the window behaves like an absent function.
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(address) = self.address(bdf, offset) {
            // SAFETY: a valid, aligned address inside the ECAM window.
            unsafe { address.write_volatile(value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_spans_one_mebibyte_per_bus_and_nothing_beyond() {
        let base = 0x40_1000_0000usize;
        // SAFETY: never accessed: only the address arithmetic is tested.
        let ecam = unsafe { Ecam::new(NonNull::new(base as *mut u8).unwrap(), 2..=3) };
        assert!(!ecam.contains(base - 1));
        assert!(ecam.contains(base));
        assert!(ecam.contains(base + (2 << 20) - 1));
        assert!(!ecam.contains(base + (2 << 20)));
    }
}
