//! The task's heap, for programs that use `alloc` (the page tables a task
//! builds for its own nested stage 1): `HEAP_PAGES` pages of `mem_alloc`
//! memory, taken on the first allocation, so programs that never allocate
//! never pay for it.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};

use linked_list_allocator::LockedHeap;

const HEAP_PAGES: usize = 16;

struct TaskHeap(LockedHeap);

// SAFETY: allocation and deallocation go to linked_list_allocator's heap,
// which hands out disjoint blocks of the memory it was given; that memory is
// this task's own mem_alloc pages, never freed.
unsafe impl GlobalAlloc for TaskHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut heap = self.0.lock();
        if heap.size() == 0 {
            let Ok(memory) = crate::mem_alloc(HEAP_PAGES) else {
                return null_mut();
            };
            // SAFETY: mem_alloc just mapped HEAP_PAGES fresh writable pages
            // at `memory`, used by nothing else.
            unsafe { heap.init(memory, HEAP_PAGES * abi::syscall::PAGE_SIZE as usize) };
        }
        heap.allocate_first_fit(layout)
            .map_or(null_mut(), |block| block.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(block) = NonNull::new(ptr) {
            // SAFETY: the caller returns a block `alloc` gave out with `layout`.
            unsafe { self.0.lock().deallocate(block, layout) };
        }
    }
}

#[global_allocator]
static HEAP: TaskHeap = TaskHeap(LockedHeap::empty());
