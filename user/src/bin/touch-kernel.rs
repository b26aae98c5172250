//! Reads kernel memory, which the kernel keeps mapped but inaccessible from
//! user mode: the task must be killed at the load.
#![no_std]
#![no_main]

use user_programs::{entry, println};

entry!(main);

/// The start of the kernel image (linker/<arch>.ld): mapped, kernel-only.
#[cfg(target_arch = "x86_64")]
const KERNEL_IMAGE: u64 = 0x20_0000;
#[cfg(target_arch = "aarch64")]
const KERNEL_IMAGE: u64 = 0x4020_0000;

fn main() -> i32 {
    println!("reading kernel memory at {KERNEL_IMAGE:#x}");
    // SAFETY: not sound, on purpose: the kernel must stop this load.
    let value = unsafe { core::ptr::read_volatile(KERNEL_IMAGE as *const u64) };
    println!("read {value:#x}: the kernel's memory is not protected");
    1
}
