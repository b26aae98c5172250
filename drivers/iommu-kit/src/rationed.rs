//! DMA memory with an allocation budget, to run a driver out of table pages
//! on demand: every failure path that allocates must give back what it took
//! (a test counts the live allocations before and after).

use core::sync::atomic::{AtomicUsize, Ordering};

use os_services::{DmaMemory, DmaRegion};

/// Another `DmaMemory` that grants at most the allowed number of further
/// allocations, counting refusals and what is still allocated through it.
pub struct Rationed<'a> {
    inner: &'a (dyn DmaMemory + Sync),
    left: AtomicUsize,
    refused: AtomicUsize,
    live: AtomicUsize,
}

impl<'a> Rationed<'a> {
    /// Unlimited until [`allow`](Self::allow) is called.
    pub const fn new(inner: &'a (dyn DmaMemory + Sync)) -> Self {
        Self {
            inner,
            left: AtomicUsize::new(usize::MAX),
            refused: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
        }
    }

    /// Grants `allocations` more, then refuses.
    pub fn allow(&self, allocations: usize) {
        self.left.store(allocations, Ordering::SeqCst);
    }

    /// Grants every allocation from now on.
    pub fn unlimited(&self) {
        self.allow(usize::MAX);
    }

    /// Allocations refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Allocations made through this service and not freed.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Rationed<'_> {
    /// One allocation from the ration, made by `alloc` if one is left.
    fn ration(&self, alloc: impl FnOnce() -> Option<DmaRegion>) -> Option<DmaRegion> {
        let granted = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if !granted {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        let region = alloc()?;
        self.live.fetch_add(1, Ordering::SeqCst);
        Some(region)
    }
}

impl DmaMemory for Rationed<'_> {
    fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.ration(|| self.inner.alloc(len, align))
    }

    fn alloc_uninit(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.ration(|| self.inner.alloc_uninit(len, align))
    }

    fn free(&self, region: DmaRegion) {
        self.live.fetch_sub(1, Ordering::SeqCst);
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

    #[test]
    fn refuses_past_the_budget_and_counts_what_is_live() {
        let host = HostDma::default();
        let rationed = Rationed::new(&host);
        rationed.allow(2);
        let first = rationed.alloc(4096, 4096).unwrap();
        let second = rationed.alloc(4096, 4096).unwrap();
        assert!(rationed.alloc(4096, 4096).is_none());
        assert_eq!((rationed.refused(), rationed.live()), (1, 2));
        rationed.free(first);
        rationed.free(second);
        assert_eq!((rationed.live(), host.live()), (0, 0));
    }
}
