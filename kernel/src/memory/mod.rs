//! Physical memory: the frame allocator and the kernel heap.
//!
//! Memory is identity-mapped (physical == virtual) for the kernel on both
//! architectures, so a frame's physical address is also its kernel address.

pub mod dma;
pub mod frames;
mod heap;

pub use heap::used as heap_used;

use crate::boot_info::{BootInfo, MemoryRegion};

/// Lowest physical address handed out: the first MiB holds firmware data
/// (x86 BIOS areas, PVH start info) we may still need.
const LOWEST_USABLE: u64 = 1 << 20;

/// Hands all RAM the firmware reported, minus the kernel image (which holds
/// the heap) and reserved ranges, to the frame allocator.
pub fn init(boot: &BootInfo) {
    let (image_start, image_end) = boot::kernel_image_range();
    let image = MemoryRegion {
        base: image_start,
        size: image_end - image_start,
    };
    let low = MemoryRegion {
        base: 0,
        size: LOWEST_USABLE,
    };
    frames::init(
        boot.ram.iter().copied(),
        boot.reserved.iter().copied().chain([image, low]),
    );
}

/// Makes the heap usable: called first thing by the architecture's entry,
/// because parsing the device tree (which says where RAM is) needs it.
pub fn init_heap() {
    heap::init();
}
