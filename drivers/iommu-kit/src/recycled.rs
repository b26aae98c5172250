//! DMA memory whose unzeroed allocations come back as a hostile previous
//! owner left them: every word holding one chosen value. A structure a driver
//! takes unzeroed (`DmaMemory::alloc_uninit`) must be written whole before a
//! device may read it; with the chosen word a valid leaf to a page the device
//! must not reach, any entry the driver forgot becomes a mapping a test can
//! catch with DMA.

use core::sync::atomic::{AtomicUsize, Ordering};

use os_services::{DmaMemory, DmaRegion};
use spin::Mutex;

/// Another `DmaMemory` whose `alloc_uninit` fills what it hands out with a
/// chosen 64-bit word, when one is set; zeroed allocations stay zeroed.
pub struct Recycled<'a> {
    inner: &'a (dyn DmaMemory + Sync),
    /// The word unzeroed allocations are filled with, if any.
    word: Mutex<Option<u64>>,
    filled: AtomicUsize,
}

impl<'a> Recycled<'a> {
    /// Hands out what `inner` does until [`Self::fill_with`] sets a word.
    pub const fn new(inner: &'a (dyn DmaMemory + Sync)) -> Self {
        Self {
            inner,
            word: Mutex::new(None),
            filled: AtomicUsize::new(0),
        }
    }

    /// From now on, unzeroed allocations hold `word` in every 8 bytes
    /// (`None`: as `inner` hands them out).
    pub fn fill_with(&self, word: Option<u64>) {
        *self.word.lock() = word;
    }

    /// Allocations handed out filled so far.
    pub fn filled(&self) -> usize {
        self.filled.load(Ordering::SeqCst)
    }
}

impl DmaMemory for Recycled<'_> {
    fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.inner.alloc(len, align)
    }

    fn alloc_uninit(&self, len: usize, align: usize) -> Option<DmaRegion> {
        let region = self.inner.alloc_uninit(len, align)?;
        let word = *self.word.lock();
        if let Some(word) = word {
            let words = region.virt.cast::<u64>();
            for i in 0..region.len / 8 {
                // SAFETY: the region is `len` bytes of memory just allocated
                // for this caller, frame-aligned, so every 8-byte word of it
                // is in bounds and aligned; nothing else holds it yet.
                unsafe { words.add(i).write_volatile(word) };
            }
            self.filled.fetch_add(1, Ordering::SeqCst);
        }
        Some(region)
    }

    fn free(&self, region: DmaRegion) {
        self.inner.free(region)
    }

    fn phys_to_virt(&self, phys: u64) -> *mut u8 {
        self.inner.phys_to_virt(phys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::HostDma;

    fn words(region: &DmaRegion) -> impl Iterator<Item = u64> + '_ {
        // SAFETY: a live region of `len` bytes, 8-byte aligned.
        (0..region.len / 8).map(|i| unsafe { region.virt.cast::<u64>().add(i).read() })
    }

    #[test]
    fn unzeroed_allocations_hold_the_word_and_zeroed_ones_stay_zero() {
        let host = HostDma::default();
        let recycled = Recycled::new(&host);
        recycled.fill_with(Some(0x1234_5003));
        let dirty = recycled.alloc_uninit(8192, 4096).unwrap();
        let clean = recycled.alloc(4096, 4096).unwrap();
        assert!(words(&dirty).all(|word| word == 0x1234_5003));
        assert!(words(&clean).all(|word| word == 0));
        assert_eq!(recycled.filled(), 1);
        recycled.fill_with(None);
        let plain = recycled.alloc_uninit(4096, 4096).unwrap();
        assert_eq!(recycled.filled(), 1);
        for region in [dirty, clean, plain] {
            recycled.free(region);
        }
        assert_eq!(host.live(), 0);
    }
}
