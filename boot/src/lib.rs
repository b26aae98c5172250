//! Per-architecture entry code and the boot information handed to the kernel.
//!
//! The entry code runs before any Rust: it puts the CPU into the state the
//! kernel is compiled for (x86_64 long mode with an identity map; AArch64 EL1
//! with the MMU and FP/SIMD on), sets up a boot stack and calls the kernel's
//! `extern "C"` entry function with the firmware hand-off pointer:
//!
//! * x86_64: `kernel_entry(start_info: u64)`, the physical address of the PVH
//!   `hvm_start_info` (see [`pvh`]). A secondary CPU started by INIT-SIPI-SIPI
//!   runs the trampoline the kernel copied below 1 MiB and calls
//!   `secondary_entry(start: &ApStart)` in long mode.
//! * aarch64: `kernel_entry(dtb: u64)`, the device-tree blob's physical
//!   address, or 0 when the loader did not pass one in `x0` (QEMU's ELF boot).
//!   A secondary CPU started by PSCI CPU_ON enters at `_ap_start`
//!   and calls `secondary_entry(start: &ApStart)` with the MMU on.
#![no_std]

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub mod pvh;

// Symbols the linker scripts define around the kernel image.
unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range `[start, end)` the kernel image occupies (it runs
/// identity-mapped, so these are also its virtual addresses).
pub fn kernel_image_range() -> (u64, u64) {
    // Only the addresses of the linker-defined symbols are taken; they are
    // never read.
    (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    )
}

/// Size of the stack the entry code runs the kernel on.
pub const BOOT_STACK_SIZE: usize = 256 * 1024;
