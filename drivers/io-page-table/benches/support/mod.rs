//! The baselines the crate is measured against.

use std::alloc::{Layout, alloc_zeroed};

use io_page_table::TableAlloc;
use io_page_table::heap::HeapTableAlloc;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as X86PageTable, PageTableFlags,
    PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// The naive algorithm: a 4-level x86-64 table mapped and unmapped one 4 KiB page
/// at a time, each walking from the root (how a per-page `iommu_map` loop works).
pub struct Naive {
    alloc: HeapTableAlloc,
    root: u64,
}

const ADDR: u64 = 0x000f_ffff_ffff_f000;
const LINK: u64 = 0x27; // P | RW | US | A
const LEAF: u64 = 0x67; // P | RW | US | A | D

impl Naive {
    pub fn new() -> Self {
        let alloc = HeapTableAlloc::new();
        let root = alloc.alloc_table(4096).expect("root");
        Naive { alloc, root }
    }

    fn slot(&self, table: u64, iova: u64, level: u32) -> *mut u64 {
        let idx = (iova >> (12 + 9 * level)) & 511;
        // SAFETY: `table` is a live 4 KiB page of this tree, idx < 512.
        unsafe {
            self.alloc
                .phys_to_virt(table)
                .as_ptr()
                .cast::<u64>()
                .add(idx as usize)
        }
    }

    pub fn map_4k(&mut self, iova: u64, phys: u64) -> bool {
        let mut table = self.root;
        for level in (1..4).rev() {
            let slot = self.slot(table, iova, level);
            // SAFETY: see `slot`.
            let pte = unsafe { slot.read_volatile() };
            table = if pte == 0 {
                let Some(new) = self.alloc.alloc_table(4096) else {
                    return false;
                };
                // SAFETY: see `slot`.
                unsafe { slot.write_volatile(new | LINK) };
                new
            } else {
                pte & ADDR
            };
        }
        let slot = self.slot(table, iova, 0);
        // SAFETY: see `slot`.
        unsafe {
            if slot.read_volatile() != 0 {
                return false;
            }
            slot.write_volatile(phys | LEAF);
        }
        true
    }

    pub fn unmap_4k(&mut self, iova: u64) -> bool {
        let mut table = self.root;
        for level in (1..4).rev() {
            // SAFETY: see `slot`.
            let pte = unsafe { self.slot(table, iova, level).read_volatile() };
            if pte == 0 {
                return false;
            }
            table = pte & ADDR;
        }
        let slot = self.slot(table, iova, 0);
        // SAFETY: see `slot`.
        unsafe {
            let was = slot.read_volatile();
            slot.write_volatile(0);
            was != 0
        }
    }
}

/// Frames for the `x86_64` crate's mapper: host memory where phys == virt.
struct Frames {
    next: u64,
    end: u64,
}

// SAFETY: every frame handed out is a distinct, 4 KiB-aligned, zeroed, leaked
// heap page, never returned.
unsafe impl FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        if self.next >= self.end {
            return None;
        }
        let frame = PhysFrame::containing_address(PhysAddr::new(self.next));
        self.next += 4096;
        Some(frame)
    }
}

/// The `x86_64` crate's `OffsetPageTable` over host memory (offset 0: the host
/// heap's virtual addresses serve as physical addresses).
pub struct X86Crate {
    mapper: OffsetPageTable<'static>,
    frames: Frames,
}

impl X86Crate {
    pub fn new(pool_pages: u64) -> Self {
        let bytes = ((pool_pages + 1) * 4096) as usize;
        let layout = Layout::from_size_align(bytes, 4096).expect("layout");
        // SAFETY: non-zero size; the pool is leaked for the benchmark's lifetime.
        let base = unsafe { alloc_zeroed(layout) } as u64;
        assert!(base != 0);
        // SAFETY: the first page is zeroed, aligned and exclusively ours, forever.
        let l4 = unsafe { &mut *(base as *mut X86PageTable) };
        // SAFETY: with offset 0, every frame of the pool is reachable at its address.
        let mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(0)) };
        X86Crate {
            mapper,
            frames: Frames {
                next: base + 4096,
                end: base + bytes as u64,
            },
        }
    }

    pub fn map_4k(&mut self, iova: u64, phys: u64) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(iova));
        let frame = PhysFrame::containing_address(PhysAddr::new(phys));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        // SAFETY: the mapping is never used for a CPU access (this is a host
        // table in heap memory, not the live CR3 one).
        unsafe { self.mapper.map_to(page, frame, flags, &mut self.frames) }
            .expect("map_to")
            .ignore();
    }

    pub fn unmap_4k(&mut self, iova: u64) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(iova));
        self.mapper.unmap(page).expect("unmap").1.ignore();
    }
}
