//! Table pages for AMD v1 I/O page tables (from `io-page-table`), taken from the
//! driver's `DmaMemory`.

use alloc::collections::BTreeMap;
use core::ptr::NonNull;

use io_page_table::TableAlloc;
use os_services::{DmaMemory, DmaRegion};

/// Hands `io-page-table` zeroed, naturally aligned pages of device-visible memory
/// and returns them to the same `DmaMemory`.
pub struct DmaTableAlloc {
    dma: &'static (dyn DmaMemory + Sync),
    live: BTreeMap<u64, DmaRegion>,
}

impl DmaTableAlloc {
    pub fn new(dma: &'static (dyn DmaMemory + Sync)) -> Self {
        Self {
            dma,
            live: BTreeMap::new(),
        }
    }

    /// Table pages currently allocated.
    pub fn live_pages(&self) -> usize {
        self.live.len()
    }
}

// SAFETY: `DmaMemory::alloc(bytes, bytes)` returns zeroed, physically contiguous
// memory aligned to `bytes` that nobody else owns until `free`; `phys_to_virt` of
// the DmaMemory reaches every byte of it; x86 table walks snoop the caches, so
// `clean_for_device` has nothing to do (tables are created `Coherence::Coherent`).
unsafe impl TableAlloc for DmaTableAlloc {
    fn alloc_table(&mut self, bytes: usize) -> Option<u64> {
        let region = self.dma.alloc(bytes, bytes)?;
        self.live.insert(region.phys, region);
        Some(region.phys)
    }

    unsafe fn free_table(&mut self, phys: u64, _bytes: usize) {
        if let Some(region) = self.live.remove(&phys) {
            self.dma.free(region);
        }
    }

    fn phys_to_virt(&self, phys: u64) -> NonNull<u8> {
        // A null here would mean the DmaMemory maps nothing at a page it handed out.
        NonNull::new(self.dma.phys_to_virt(phys)).unwrap_or(NonNull::dangling())
    }
}

impl Drop for DmaTableAlloc {
    fn drop(&mut self) {
        // The page table frees its pages first (its Drop runs before its fields');
        // anything left is returned here.
        for (_, region) in core::mem::take(&mut self.live) {
            self.dma.free(region);
        }
    }
}
