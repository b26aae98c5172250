//! Physical memory: the frame allocator and the kernel heap.
//!
//! Memory is identity-mapped (physical == virtual) for the kernel on both
//! architectures, so a frame's physical address is also its kernel address.

pub mod dma;
pub mod frames;
mod heap;

pub use heap::used as heap_used;

use core::sync::atomic::{AtomicU64, Ordering};

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

/// The owner (task owner id; 0: the kernel) that heap and DMA allocations
/// are charged to now, per CPU: each CPU works for its own task.
static CURRENT_OWNER: [AtomicU64; crate::arch::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::arch::MAX_CPUS];

fn this_cpus_owner() -> &'static AtomicU64 {
    &CURRENT_OWNER[crate::arch::current_cpu_index() as usize]
}

/// Charges what the heap and [`dma`] allocate from now on, on this CPU, to
/// `owner` (`None`: the kernel's own, uncharged); returns the previous
/// setting, to put back. The iommufd service sets it while it works for a
/// task.
pub fn charge_to(owner: Option<u64>) -> Option<u64> {
    let previous = this_cpus_owner().swap(owner.unwrap_or(0), Ordering::SeqCst);
    (previous != 0).then_some(previous)
}

/// Runs `f` with its allocations charged to the kernel: for records that
/// outlive the task they were made for.
pub fn uncharged<R>(f: impl FnOnce() -> R) -> R {
    let owner = charge_to(None);
    let result = f();
    charge_to(owner);
    result
}

fn current_owner() -> u64 {
    this_cpus_owner().load(Ordering::Relaxed)
}

/// Heap accounting per task: the bytes charged, the quota, and whether a
/// task is over it.
pub mod heap_charges {
    pub use super::heap::{
        DEFAULT_QUOTA, HeapCommitment, charged, grown_frames, over_quota, quota, reparent,
        reparented, set_quota,
    };
}

/// Makes the heap usable: called first thing by the architecture's entry,
/// because parsing the device tree (which says where RAM is) needs it.
pub fn init_heap() {
    heap::init();
}
