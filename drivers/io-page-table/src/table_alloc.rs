//! The caller's table-page memory: allocation, phys→virt, and cache maintenance.

use core::ptr::NonNull;

/// Where table pages come from. Supplied by the caller (the kernel's frame allocator,
/// or [`crate::heap::HeapTableAlloc`] on the host).
///
/// Every method takes `&self`: a table mapped from several CPUs at once
/// ([`crate::PageTable::map_shared`]) allocates from all of them, so an
/// allocator that is `Sync` synchronises itself (a lock, per-CPU pools); one
/// that is not keeps its table to one thread.
///
/// # Safety
///
/// Implementers promise that:
/// - `alloc_table(bytes)` returns the physical address, a multiple of `bytes`, of
///   `bytes` of zeroed memory owned exclusively by the page table until `free_table`
///   (its CPU mapping need only be 8-byte aligned); `alloc_table_uninit(bytes)`
///   the same but of any content;
/// - `phys_to_virt(phys)` returns a CPU pointer through which every byte of every
///   page currently allocated can be read and written, for any `phys` inside it;
/// - `clean_for_device` makes the CPU's writes to the given bytes visible to a
///   non-snooping IOMMU (a no-op on coherent systems).
pub unsafe trait TableAlloc {
    /// Allocates a zeroed table page of `bytes` (a power of two ≥ 4096), naturally
    /// aligned. `None` when out of memory.
    fn alloc_table(&self, bytes: usize) -> Option<u64>;

    /// [`Self::alloc_table`] without the zeroing, for a table the page table
    /// writes whole before it links it (a new leaf table: its leaves, and
    /// zero around them), so that the zeroes are not written twice. The
    /// default zeroes anyway.
    fn alloc_table_uninit(&self, bytes: usize) -> Option<u64> {
        self.alloc_table(bytes)
    }

    /// Returns a page obtained from `alloc_table(bytes)`.
    ///
    /// # Safety
    ///
    /// `phys` came from `alloc_table(bytes)` and is no longer referenced by the
    /// hardware (the caller flushed the IOMMU's caches since unlinking it).
    unsafe fn free_table(&self, phys: u64, bytes: usize);

    /// The CPU address of physical address `phys` inside an allocated table page.
    fn phys_to_virt(&self, phys: u64) -> NonNull<u8>;

    /// Writes the CPU cache lines covering `bytes` bytes at `virt` back to memory,
    /// for an IOMMU that does not snoop its table walks (VT-d ECAP.C = 0,
    /// SMMUv3 IDR0.COHACC = 0). Only called for [`Coherence::NonCoherent`] tables.
    fn clean_for_device(&self, virt: NonNull<u8>, bytes: usize) {
        let _ = (virt, bytes);
    }
}

/// Whether the IOMMU's table walker snoops CPU caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coherence {
    /// The walker snoops: no cache maintenance.
    Coherent,
    /// The walker reads memory: every modified table line is cleaned through
    /// [`TableAlloc::clean_for_device`] before the change can matter.
    NonCoherent,
}
