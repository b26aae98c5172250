//! `io-page-table`'s page allocator over a driver's [`DmaMemory`]: the one
//! adapter all three drivers give their domains' I/O page tables.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use io_page_table::TableAlloc;
use os_services::{DmaMemory, DmaRegion};

use crate::dma::CacheClean;

/// Hands `io-page-table` naturally aligned pages of device-visible memory,
/// zeroed (or as they come, for the leaf tables it writes whole before
/// linking them), and takes them back; cleans written lines through `clean` when the
/// walker does not snoop.
pub struct DmaTableAlloc<'a> {
    dma: &'a (dyn DmaMemory + Sync),
    clean: Option<CacheClean>,
    live: AtomicUsize,
}

impl<'a> DmaTableAlloc<'a> {
    /// Tables from `dma`, each written back with `clean` before a walker that does not snoop may read it.
    pub fn new(dma: &'a (dyn DmaMemory + Sync), clean: Option<CacheClean>) -> Self {
        Self {
            dma,
            clean,
            live: AtomicUsize::new(0),
        }
    }

    /// Table pages allocated and not yet freed.
    pub fn live_pages(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

// SAFETY: `DmaMemory::alloc(bytes, bytes)` returns zeroed, physically contiguous
// memory aligned to `bytes` that nobody else owns until it is freed
// (`alloc_uninit` the same but of any content, as `alloc_table_uninit` may);
// `phys_to_virt` is the memory service's own translation and reaches every
// byte of it; `free_table` rebuilds exactly the region `alloc_table` got
// (its phys, the service's virt for it, `bytes`); `clean_for_device` writes
// the lines back through the kernel's hook.
unsafe impl TableAlloc for DmaTableAlloc<'_> {
    fn alloc_table(&self, bytes: usize) -> Option<u64> {
        let region = self.dma.alloc(bytes, bytes)?;
        self.live.fetch_add(1, Ordering::Relaxed);
        Some(region.phys)
    }

    fn alloc_table_uninit(&self, bytes: usize) -> Option<u64> {
        let region = self.dma.alloc_uninit(bytes, bytes)?;
        self.live.fetch_add(1, Ordering::Relaxed);
        Some(region.phys)
    }

    unsafe fn free_table(&self, phys: u64, bytes: usize) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.dma.free(DmaRegion {
            phys,
            virt: self.dma.phys_to_virt(phys),
            len: bytes,
        });
    }

    fn phys_to_virt(&self, phys: u64) -> NonNull<u8> {
        // Table pages are mapped memory the service handed out: never null.
        NonNull::new(self.dma.phys_to_virt(phys)).unwrap_or(NonNull::dangling())
    }

    fn clean_for_device(&self, virt: NonNull<u8>, bytes: usize) {
        if let Some(clean) = self.clean {
            clean(virt.as_ptr(), bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::HostDma;
    use io_page_table::{AmdV1, AmdV1Config, Coherence, PageTable, Prot};

    #[test]
    fn a_table_takes_its_pages_from_the_memory_and_gives_them_all_back() {
        let dma = HostDma::default();
        {
            let format = AmdV1::new(AmdV1Config {
                levels: 4,
                output_bits: 52,
                nl7_pages: false,
            })
            .unwrap();
            let mut table =
                PageTable::new(format, DmaTableAlloc::new(&dma, None), Coherence::Coherent)
                    .unwrap();
            table
                .map(1 << 39, 0x8000_0000, 4096, Prot::READ | Prot::WRITE)
                .unwrap();
            assert_eq!(table.allocator().live_pages(), 4);
            assert_eq!(dma.live(), 4);
        }
        assert_eq!(dma.live(), 0);
    }
}
