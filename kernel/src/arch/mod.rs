//! Architecture glue: entry, console, exceptions, time, exit.
//!
//! Each architecture module provides the same small surface: `Serial`,
//! `exit`, `now_ns`, the deliberate-exception hooks the tests use, and the
//! `kernel_entry` symbol the `boot` crate's entry code calls.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

/// How the kernel leaves QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// QEMU exits with status 0.
    Success,
    /// Some test failed: a non-zero status.
    Failure,
    /// The kernel panicked: another non-zero status.
    Panic,
}
