//! Allocates, fills, checks and frees task memory. Exit code 0 = every check held.
#![no_std]
#![no_main]

use user_programs::abi::Errno;
use user_programs::{entry, mem_alloc, mem_free, println};

entry!(main);

const PAGE: usize = 4096;

fn run() -> Result<(), i32> {
    let pages = 4;
    let first = mem_alloc(pages).map_err(|_| 1)?;
    let second = mem_alloc(1).map_err(|_| 2)?;
    // SAFETY: the kernel mapped `pages` writable pages at `first`.
    let memory = unsafe { core::slice::from_raw_parts_mut(first, pages * PAGE) };
    if memory.iter().any(|&byte| byte != 0) {
        println!("fresh memory is not zeroed");
        return Err(3);
    }
    for (index, byte) in memory.iter_mut().enumerate() {
        *byte = (index % 251) as u8;
    }
    if memory
        .iter()
        .enumerate()
        .any(|(index, &byte)| byte != (index % 251) as u8)
    {
        return Err(4);
    }
    // The two allocations never overlap.
    let second_addr = second as usize;
    if (first as usize..first as usize + pages * PAGE).contains(&second_addr) {
        return Err(5);
    }
    // SAFETY: `memory` is not used after this.
    if unsafe { mem_free(first.wrapping_add(PAGE), 1) } != Err(Errno::EINVAL) {
        println!("freeing part of an allocation was accepted");
        return Err(6);
    }
    // SAFETY: nothing uses the allocations after they are freed.
    unsafe {
        mem_free(first, pages).map_err(|_| 7)?;
        if mem_free(first, pages) != Err(Errno::EINVAL) {
            println!("double free was accepted");
            return Err(8);
        }
        mem_free(second, 1).map_err(|_| 9)?;
    }
    println!("allocated, checked and freed {} pages", pages + 1);
    Ok(())
}

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}
