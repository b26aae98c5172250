//! Device-visible memory for drivers, from the frame allocator.

use os_services::{DmaMemory, DmaRegion};

use super::frames::{self, FRAME_SIZE, Frames};

/// The kernel's implementation of [`DmaMemory`]: zeroed, physically
/// contiguous frames; identity-mapped, so phys == virt.
pub struct KernelDma;

pub static DMA: KernelDma = KernelDma;

impl DmaMemory for KernelDma {
    fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        let count = len.div_ceil(FRAME_SIZE).max(1);
        let frames = frames::alloc_contiguous(count, align.max(FRAME_SIZE))?;
        Some(DmaRegion {
            phys: frames.phys,
            virt: frames.as_mut_ptr(),
            len: frames.len(),
        })
    }

    fn free(&self, region: DmaRegion) {
        frames::free(Frames {
            phys: region.phys,
            count: region.len / FRAME_SIZE,
        });
    }

    fn phys_to_virt(&self, phys: u64) -> *mut u8 {
        phys as *mut u8
    }
}
