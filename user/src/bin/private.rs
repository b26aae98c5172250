//! One of two tasks that use the same user address at the same time: each
//! must see only its own page there (separate address spaces). The task
//! argument is the byte this task fills its page with (the two tasks get
//! different ones). Exit code 0 = the page was fresh and kept this task's
//! contents across a yield.
#![no_std]
#![no_main]

use user_programs::{argument, entry, mem_alloc, println, yield_now};

entry!(main);

const PAGE: usize = 4096;

fn main() -> i32 {
    let marker = argument() as u8;
    if marker == 0 {
        // A zero marker could not tell this task's bytes from a fresh page.
        return 4;
    }
    let Ok(page) = mem_alloc(1) else { return 1 };
    // SAFETY: one writable page was just mapped at `page`.
    let memory = unsafe { core::slice::from_raw_parts_mut(page, PAGE) };
    if memory.iter().any(|&byte| byte != 0) {
        return 2;
    }
    memory.fill(marker);
    // The other task fills its page at the same address meanwhile.
    yield_now();
    if memory.iter().any(|&byte| byte != marker) {
        return 3;
    }
    println!("page {page:p} kept {marker:#x}");
    0
}
