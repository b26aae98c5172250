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

/// CPUs running kernel code, the boot CPU included (each architecture's
/// `smp` counts in the CPUs it starts).
static ONLINE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(1);

/// How many CPUs run kernel code (the boot CPU and every started one).
pub fn online_cpus() -> usize {
    ONLINE.load(core::sync::atomic::Ordering::Acquire)
}

/// Says so when the firmware lists more CPUs than the kernel runs
/// (`others`: the listed CPUs besides this one); each architecture's `smp`
/// starts [`MAX_CPUS`] at most.
fn report_cpus_left(others: usize) {
    if others >= MAX_CPUS {
        println!(
            "smp: {} CPUs listed; the kernel runs at most {MAX_CPUS}",
            others + 1
        );
    }
}

/// Counts in a secondary CPU that said it runs kernel code.
fn count_online_cpu() {
    ONLINE.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
}

/// Bytes of stack each secondary CPU gets: as many as the boot CPU's, since
/// it runs the same scheduler, system calls and drivers.
const CPU_STACK_BYTES: usize = boot::BOOT_STACK_SIZE;
/// Written at the bottom of each secondary CPU's stack: the stacks come from
/// the heap without a guard page, so an overflow would silently corrupt
/// whatever lies below; the canary makes it visible ([`cpu_stacks_intact`]).
const STACK_CANARY: u128 = 0x57AC_CA4A_57AC_CA4A_57AC_CA4A_57AC_CA4A;
/// Each secondary CPU's stack bottom (its canary), by CPU index.
static STACK_BOTTOMS: [core::sync::atomic::AtomicPtr<u128>; MAX_CPUS] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// A stack for secondary CPU `index`, for good (leaked); returns its top
/// (16-byte aligned).
pub fn alloc_cpu_stack(index: usize) -> u64 {
    let stack: &'static mut [u128] =
        alloc::boxed::Box::leak(alloc::vec![0u128; CPU_STACK_BYTES / 16].into_boxed_slice());
    stack[0] = STACK_CANARY;
    STACK_BOTTOMS[index].store(stack.as_mut_ptr(), core::sync::atomic::Ordering::Release);
    stack.as_ptr_range().end as u64
}

/// Whether every secondary CPU's stack still has its canary; the index of
/// the first that does not.
pub fn cpu_stacks_intact() -> Result<(), usize> {
    for (index, bottom) in STACK_BOTTOMS.iter().enumerate() {
        let bottom = bottom.load(core::sync::atomic::Ordering::Acquire);
        // SAFETY: non-null entries point to the first element of a leaked
        // stack; a volatile read because another CPU's writes are the point.
        if !bottom.is_null() && unsafe { bottom.read_volatile() } != STACK_CANARY {
            return Err(index);
        }
    }
    Ok(())
}

/// The most bytes of its stack secondary CPU `index` has used so far (the
/// stacks start zeroed; the deepest written word marks the high water).
pub fn cpu_stack_used(index: usize) -> usize {
    let bottom = STACK_BOTTOMS[index].load(core::sync::atomic::Ordering::Acquire);
    if bottom.is_null() {
        return 0;
    }
    let words = CPU_STACK_BYTES / 16;
    // SAFETY: `bottom` starts a leaked stack of `words` elements; reading
    // words another CPU may be writing is a racy but harmless estimate, done
    // with volatile reads.
    let untouched = (1..words)
        .take_while(|&word| unsafe { bottom.add(word).read_volatile() } == 0)
        .count();
    (words - 1 - untouched) * 16
}

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
