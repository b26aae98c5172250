//! The smallest task: one line on the console, exit code 0.
#![no_std]
#![no_main]

use user_programs::{entry, println};

entry!(main);

fn main() -> i32 {
    println!("hello from user mode");
    0
}
