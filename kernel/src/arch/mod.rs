//! Architecture glue: entry, console, exceptions, time, exit.
//!
//! Each architecture module provides the same small surface: `Serial`,
//! `exit`, `now_ns`, the deliberate-exception hooks the tests use,
//! `protect_user_memory`, and the `kernel_entry` symbol the `boot` crate's
//! entry code calls.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

/// The most CPUs the kernel runs on (per-CPU state is kept in arrays of
/// this length); further CPUs the firmware lists are left off.
pub const MAX_CPUS: usize = 8;

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

/// Which supervisor-mode protections against user memory are on. The kernel
/// never needs user addresses itself: it reaches task memory through the
/// identity map of the task's frames (`Task::copy_from_user`), so both can
/// be on from boot and a kernel bug that follows a user pointer faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserMemoryProtection {
    /// The kernel cannot execute user pages (x86 SMEP; aarch64 PXN, which
    /// every user mapping carries).
    pub no_execute: bool,
    /// The kernel cannot read or write user pages (x86 SMAP; aarch64 PAN).
    pub no_access: bool,
}

static USER_MEMORY_PROTECTION: spin::Once<UserMemoryProtection> = spin::Once::new();

/// Turns the protections on the first time (at boot, before any task runs)
/// and says which are on.
pub fn user_memory_protection() -> UserMemoryProtection {
    *USER_MEMORY_PROTECTION.call_once(protect_user_memory)
}
