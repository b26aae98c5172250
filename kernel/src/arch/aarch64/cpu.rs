//! Which CPU is running: the kernel's index of each CPU lives in its
//! TPIDR_EL1, which EL0 can neither read nor write, so a task cannot make
//! the kernel take it for another CPU.

use aarch64_cpu::registers::{Readable, TPIDR_EL1, Writeable};

/// The index the kernel gave the running CPU (0 on the boot CPU).
pub fn cpu_index() -> u64 {
    TPIDR_EL1.get()
}

/// Records the running CPU's index (once, first thing on each CPU).
pub fn set_cpu_index(index: u64) {
    TPIDR_EL1.set(index);
}
