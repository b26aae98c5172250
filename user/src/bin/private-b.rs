//! One of two tasks that use the same user address at the same time: each
//! must see only its own page there (separate address spaces). Exit code 0 =
//! the page was fresh and kept this task's contents across a yield.
#![no_std]
#![no_main]

use user_programs::{entry, mem_alloc, println, yield_now};

entry!(main);

const MARKER: u8 = 0x5A;
const PAGE: usize = 4096;

fn main() -> i32 {
    let Ok(page) = mem_alloc(1) else { return 1 };
    // SAFETY: one writable page was just mapped at `page`.
    let memory = unsafe { core::slice::from_raw_parts_mut(page, PAGE) };
    if memory.iter().any(|&byte| byte != 0) {
        return 2;
    }
    memory.fill(MARKER);
    // The other task fills its page at the same address meanwhile.
    yield_now();
    if memory.iter().any(|&byte| byte != MARKER) {
        return 3;
    }
    println!("page {page:p} kept {MARKER:#x}");
    0
}
