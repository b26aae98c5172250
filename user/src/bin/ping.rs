//! One half of a pair that takes turns through `yield`: prints a line, then
//! lets the other task run.
#![no_std]
#![no_main]

use user_programs::{entry, println, yield_now};

entry!(main);

fn main() -> i32 {
    for round in 0..3 {
        println!("ping {round}");
        yield_now();
    }
    0
}
