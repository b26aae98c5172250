//! Never yields and never exits: only preemption lets other tasks run, and
//! only the CPU budget ends it.
#![no_std]
#![no_main]

use user_programs::{entry, println};

entry!(main);

fn main() -> i32 {
    println!("spinning");
    loop {
        core::hint::spin_loop();
    }
}
