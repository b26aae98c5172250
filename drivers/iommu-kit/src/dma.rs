//! Memory the IOMMU reads and writes behind the CPU's back: tables, queues,
//! completion words.
//!
//! Two rules hold for all of it, in every driver. Accesses are volatile (the
//! compiler must not merge, reorder or drop them), and an entry the hardware
//! may fetch at any moment is written so that no fetch sees a mix granting more
//! than the old or the new entry: the word holding the valid bit last, after a
//! fence (VT-d 3.4 §6.2.5 "entries are read atomically per 128 bits" and §9.10
//! for IRTEs; AMD IOMMU §2.2.2 DTE and §2.2.5 IRTE; SMMUv3 §3.21.3 for STEs and
//! CDs), and the written lines cleaned for a walker that does not snoop the CPU
//! caches (VT-d ECAP.C = 0, SMMUv3 IDR0.COHACC = 0).

use core::mem::{align_of, size_of};
use os_services::barrier::dma_wmb;
use os_services::{DmaMemory, DmaRegion};

/// Writes the CPU cache lines covering `[virt, virt + len)` back to memory
/// (x86 `clflush`, Arm `dc cvac`), for hardware whose reads do not snoop.
/// The kernel supplies it; `None` where the hardware snoops.
pub type CacheClean = fn(*const u8, usize);

/// What a driver needs to share memory with a device that does not snoop:
/// `clean` writes CPU-cached lines back before the device reads them,
/// `invalidate` drops the CPU's copies (writing back anything dirty) before
/// the CPU reads what the device wrote.
#[derive(Clone, Copy, Debug)]
pub struct CacheMaintenance {
    /// Writes the lines of a range back to memory (`dc cvac`, `clflush`).
    pub clean: CacheClean,
    /// Writes back and drops the lines of a range (`dc civac`, `clflush`).
    pub invalidate: CacheClean,
}

/// The cache-line size `clean` counts in (x86-64 and the Arm cores this
/// kernel runs on; the kernel's clean hook itself steps by the line size).
pub const CACHE_LINE: usize = 64;

/// A zeroed, physically contiguous allocation the hardware reads or writes,
/// kept as plain numbers so that the structures holding it stay `Send` (the
/// kernel keeps every unit behind a lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaBuffer {
    phys: u64,
    virt: usize,
    len: usize,
}

impl DmaBuffer {
    /// `len` bytes (whole frames) aligned to `align`, zeroed; `None` when the
    /// memory service has none.
    pub fn alloc(dma: &dyn DmaMemory, len: usize, align: usize) -> Option<Self> {
        dma.alloc(len, align).map(Self::from_region)
    }

    /// Takes over `region` from the memory service.
    pub fn from_region(region: DmaRegion) -> Self {
        Self {
            phys: region.phys,
            virt: region.virt as usize,
            len: region.len,
        }
    }

    /// The region, to give back to the memory service.
    pub fn region(&self) -> DmaRegion {
        DmaRegion {
            phys: self.phys,
            virt: self.virt as *mut u8,
            len: self.len,
        }
    }

    /// Returns the memory to the service it came from.
    pub fn free(self, dma: &dyn DmaMemory) {
        dma.free(self.region());
    }

    /// Bus address of the first byte.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + size_of::<T>() <= self.len && offset.is_multiple_of(align_of::<T>()),
            "DMA buffer access at {offset:#x} (+{}) outside {} bytes or misaligned",
            size_of::<T>(),
            self.len
        );
        (self.virt + offset) as *mut T
    }

    /// Reads a value the hardware may have written.
    pub fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: `at` checked that the value lies inside the allocation, which
        // this buffer owns and which stays mapped until `free`, and that it is
        // aligned for `T`. Volatile: the hardware writes it behind our back.
        unsafe { core::ptr::read_volatile(self.at::<T>(offset)) }
    }

    /// Writes a value the hardware may read at any time.
    pub fn write<T: Copy>(&self, offset: usize, value: T) {
        // SAFETY: as in `read`; volatile because the hardware reads it.
        unsafe { core::ptr::write_volatile(self.at::<T>(offset), value) }
        #[cfg(any(test, feature = "host-fakes"))]
        crate::fakes::trace::write(self.phys + offset as u64, size_of::<T>());
    }

    /// Writes the 64-bit words of an entry at `offset` that the hardware may
    /// fetch while it changes: `hold` (if given) into the word carrying the
    /// valid bit first, so the entry is inert while the others change; then
    /// every other word; then, after a `dma_wmb`, the valid word's final
    /// value, and another `dma_wmb` so the entry is in place before whatever
    /// the caller does next (its invalidation command); then the lines are
    /// cleaned (`clean`) for a walker that does not snoop. Linux orders its
    /// STEs, CDs (`arm_smmu_write_entry`), DTEs and IRTEs the same way.
    pub fn publish(
        &self,
        offset: usize,
        words: &[u64],
        valid_word: usize,
        hold: Option<u64>,
        clean: Option<CacheClean>,
    ) -> usize {
        assert!(valid_word < words.len());
        if let Some(hold) = hold {
            self.write(offset + valid_word * 8, hold);
            dma_wmb();
        }
        for (index, word) in words.iter().enumerate() {
            if index != valid_word {
                self.write(offset + index * 8, *word);
            }
        }
        dma_wmb();
        self.write(offset + valid_word * 8, words[valid_word]);
        dma_wmb();
        self.clean(offset, words.len() * 8, clean)
    }

    /// Makes `len` bytes at `offset` visible to a walker that does not snoop;
    /// nothing to do when `clean` is `None` (the hardware snoops). Returns
    /// how many cache lines that wrote back (what the figures count).
    pub fn clean(&self, offset: usize, len: usize, clean: Option<CacheClean>) -> usize {
        self.over_lines(offset, len, clean)
    }

    /// Drops the CPU's copies of `len` bytes at `offset` before reading what
    /// a device that does not snoop wrote there; nothing to do when
    /// `invalidate` is `None`. Returns how many cache lines that covered.
    pub fn invalidate(&self, offset: usize, len: usize, invalidate: Option<CacheClean>) -> usize {
        self.over_lines(offset, len, invalidate)
    }

    /// Runs the cache operation `op` over `len` bytes at `offset`.
    fn over_lines(&self, offset: usize, len: usize, op: Option<CacheClean>) -> usize {
        let Some(op) = op else {
            return 0;
        };
        if len == 0 {
            return 0;
        }
        let start = self.at::<u8>(offset);
        assert!(offset + len <= self.len);
        op(start, len);
        let first = (self.virt + offset) / CACHE_LINE;
        let last = (self.virt + offset + len - 1) / CACHE_LINE;
        last - first + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{HostDma, maintenance};
    use std::vec::Vec;

    #[test]
    fn reads_back_what_it_wrote_and_refuses_out_of_bounds() {
        let dma = HostDma::default();
        let buffer = DmaBuffer::alloc(&dma, 4096, 4096).unwrap();
        buffer.write::<u64>(8, 0xDEAD_BEEF);
        buffer.write::<u32>(4092, 7);
        assert_eq!(buffer.read::<u64>(8), 0xDEAD_BEEF);
        assert_eq!(buffer.read::<u32>(4092), 7);
        assert!(std::panic::catch_unwind(|| buffer.write::<u64>(4090, 0)).is_err());
        assert!(std::panic::catch_unwind(|| buffer.read::<u64>(4)).is_err());
        buffer.free(&dma);
        assert_eq!(dma.live(), 0);
    }

    /// The order the hardware may see: with a hold value, the valid word is
    /// made inert first; every other word is written before a `dma_wmb`
    /// that precedes the valid word's final write, and another `dma_wmb`
    /// follows it.
    #[test]
    fn hw_publish_orders_the_valid_word_after_a_device_barrier() {
        use crate::fakes::trace::{Recording, Step};
        use os_services::barrier::Barrier;
        let dma = HostDma::default();
        let buffer = DmaBuffer::alloc(&dma, 4096, 4096).unwrap();
        let recording = Recording::start();
        buffer.publish(32, &[1, 2, 3, 4], 0, Some(0), None);
        let base = buffer.phys() + 32;
        let write = |word: u64| Step::Write {
            phys: base + word * 8,
            len: 8,
        };
        let wmb = Step::Barrier(Barrier::DmaWmb);
        assert_eq!(
            recording.take(),
            [
                write(0),
                wmb,
                write(1),
                write(2),
                write(3),
                wmb,
                write(0),
                wmb
            ]
        );
        buffer.free(&dma);
    }

    #[test]
    fn publish_writes_the_valid_word_last_and_cleans_the_entry() {
        let dma = HostDma::default();
        let buffer = DmaBuffer::alloc(&dma, 4096, 4096).unwrap();
        buffer.write::<u64>(64, 0xFFFF);
        maintenance::take_cleaned();
        buffer.publish(64, &[1, 2, 3, 4], 0, Some(0), Some(maintenance::clean));
        let words: Vec<u64> = (0..4).map(|i| buffer.read::<u64>(64 + i * 8)).collect();
        assert_eq!(words, [1, 2, 3, 4]);
        let base = buffer.region().virt as u64;
        assert!(maintenance::take_cleaned().contains(&(base + 64, 32)));
        buffer.free(&dma);
    }
}
