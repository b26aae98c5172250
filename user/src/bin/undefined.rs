//! Executes an undefined instruction: the task must be killed.
#![no_std]
#![no_main]

use user_programs::{entry, println};

entry!(main);

fn main() -> i32 {
    println!("executing an undefined instruction");
    // SAFETY: not sound, on purpose: the instruction traps.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("ud2")
    };
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("udf #1")
    };
    println!("the undefined instruction did not trap");
    1
}
