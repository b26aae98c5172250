//! Jumps into the kernel's code: the task must be killed at the fetch.
#![no_std]
#![no_main]

use user_programs::{entry, println};

entry!(main);

#[cfg(target_arch = "x86_64")]
const KERNEL_IMAGE: usize = 0x20_0000;
#[cfg(target_arch = "aarch64")]
const KERNEL_IMAGE: usize = 0x4020_0000;

fn main() -> i32 {
    println!("calling kernel code at {KERNEL_IMAGE:#x}");
    // SAFETY: not sound, on purpose: the kernel must stop this fetch.
    let kernel: extern "C" fn() = unsafe { core::mem::transmute(KERNEL_IMAGE) };
    kernel();
    println!("kernel code ran in user mode");
    1
}
