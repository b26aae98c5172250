//! The kernel heap, on `linked_list_allocator`.
//!
//! The heap lives in the kernel image's .bss, so it exists before the
//! firmware has told us where RAM is (the device tree must be parsed first,
//! and parsing allocates).

use core::cell::UnsafeCell;

use linked_list_allocator::LockedHeap;

const HEAP_SIZE: usize = 16 << 20;

#[repr(C, align(4096))]
struct HeapSpace(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the space is handed to the allocator once and only reached through it.
unsafe impl Sync for HeapSpace {}

static HEAP_SPACE: HeapSpace = HeapSpace(UnsafeCell::new([0; HEAP_SIZE]));

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub fn init() {
    let mut heap = HEAP.lock();
    if heap.size() == 0 {
        // SAFETY: HEAP_SPACE is used for nothing else, and the size check
        // makes sure it is handed over only once.
        unsafe { heap.init(HEAP_SPACE.0.get().cast::<u8>(), HEAP_SIZE) };
    }
}

/// Bytes currently allocated from the heap (for leak checks).
pub fn used() -> usize {
    HEAP.lock().used()
}
