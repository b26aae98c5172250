//! Writes to memory after freeing it: the page is gone, so the task must be
//! killed (which also shows that the kernel flushed the stale translation).
#![no_std]
#![no_main]

use user_programs::{entry, mem_alloc, mem_free, println};

entry!(main);

fn main() -> i32 {
    let Ok(page) = mem_alloc(1) else { return 2 };
    // SAFETY: one writable page was just mapped at `page`.
    unsafe { page.write_volatile(1) };
    // SAFETY: not sound, on purpose: the page is used after it is freed.
    unsafe {
        if mem_free(page, 1).is_err() {
            return 3;
        }
        println!("writing to freed memory at {page:p}");
        page.write_volatile(2);
    }
    println!("freed memory was still mapped");
    1
}
