//! The runtime every user program links: the entry point, exit on panic, thin
//! wrappers over the system calls of [`abi::syscall`] and a console writer.
//!
//! A program is a `#![no_std] #![no_main]` binary that names its main function
//! with [`entry!`]; returning from it exits the task with that code.
#![no_std]

extern crate alloc;

pub mod edu;
mod heap;
pub mod iommu;
pub mod stage1;

use core::fmt;

use abi::Errno;
use abi::syscall as nr;

pub use abi;

/// Exit code of a task whose program panicked.
pub const PANIC_EXIT_CODE: i32 = 101;

/// Defines the program's main function, `fn() -> i32`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "C" fn user_main() -> i32 {
            $main()
        }
    };
}

unsafe extern "C" {
    fn user_main() -> i32;
}

// The kernel enters at `_start` with the stack pointer at the (16-byte
// aligned) top of the task's stack, the first-argument register (rdi / x0)
// holding the task's argument and every other register zero.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    and rsp, -16
    call user_start
    ud2
"#
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    bl user_start
    udf #0
"#
);

/// The value the kernel passed to this task's entry (0 unless it set one).
static ARGUMENT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The argument the kernel started this task with (`Task::set_argument`).
pub fn argument() -> u64 {
    ARGUMENT.load(core::sync::atomic::Ordering::Relaxed)
}

/// Entered from `_start` with the kernel's first-argument register untouched.
#[unsafe(no_mangle)]
extern "C" fn user_start(argument: u64) -> ! {
    ARGUMENT.store(argument, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: `user_main` is defined by the program through `entry!`.
    let code = unsafe { user_main() };
    exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("panic: {info}");
    exit(PANIC_EXIT_CODE)
}

/// The raw system call: `number` and up to six arguments in, the raw result
/// (negative = `-errno`) out. Register convention: [`abi::syscall`].
#[cfg(target_arch = "x86_64")]
pub fn syscall(number: u64, args: [u64; 6]) -> i64 {
    let result: i64;
    // SAFETY: the gate enters the kernel, which validates every argument
    // against this task's address space and preserves all registers but rax.
    unsafe {
        core::arch::asm!(
            "int {vector}",
            vector = const nr::X86_SYSCALL_VECTOR,
            inlateout("rax") number as i64 => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            options(nostack),
        );
    }
    result
}

/// The raw system call: `number` and up to six arguments in, the raw result
/// (negative = `-errno`) out. Register convention: [`abi::syscall`].
#[cfg(target_arch = "aarch64")]
pub fn syscall(number: u64, args: [u64; 6]) -> i64 {
    let result: i64;
    // SAFETY: `svc` enters the kernel, which validates every argument against
    // this task's address space and preserves all registers but x0.
    unsafe {
        core::arch::asm!(
            "svc #0",
            in("x8") number,
            inlateout("x0") args[0] as i64 => result,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            in("x5") args[5],
            options(nostack),
        );
    }
    result
}

/// Turns a raw result into `Ok(value)` or the error it encodes.
pub fn check(result: i64) -> Result<u64, Errno> {
    if result >= 0 {
        Ok(result as u64)
    } else {
        // An unknown negative code means a kernel/runtime mismatch; report it
        // as the most generic failure rather than inventing a value.
        Err(Errno::from_syscall_return(result).unwrap_or(Errno::EINVAL))
    }
}

/// Writes `bytes` to the console; returns how many were written.
pub fn write(bytes: &[u8]) -> Result<usize, Errno> {
    check(syscall(
        nr::WRITE,
        [bytes.as_ptr() as u64, bytes.len() as u64, 0, 0, 0, 0],
    ))
    .map(|n| n as usize)
}

/// Ends the task with `code`.
pub fn exit(code: i32) -> ! {
    syscall(nr::EXIT, [code as u32 as u64, 0, 0, 0, 0, 0]);
    // The kernel never returns from exit; if it did, fault rather than run on.
    loop {
        core::hint::spin_loop();
    }
}

/// Lets the other runnable tasks run first.
pub fn yield_now() {
    syscall(nr::YIELD, [0; 6]);
}

/// Nanoseconds since boot (`abi::syscall::CLOCK`).
pub fn now_ns() -> u64 {
    syscall(nr::CLOCK, [0; 6]) as u64
}

/// What the kernel lets this task hold and what it holds now
/// (`abi::syscall::LIMITS`).
pub fn limits() -> Result<abi::TaskLimits, Errno> {
    let mut report = abi::TaskLimits::default();
    let len = core::mem::size_of::<abi::TaskLimits>() as u64;
    let address = &raw mut report as u64;
    check(syscall(nr::LIMITS, [address, len, 0, 0, 0, 0]))?;
    Ok(report)
}

/// Waits for the interrupt of opened device `device` (see
/// `abi::syscall::IRQ_WAIT`); returns how many arrived since the last call.
pub fn irq_wait(device: u32, timeout_ns: u64) -> Result<u64, Errno> {
    check(syscall(
        nr::IRQ_WAIT,
        [u64::from(device), timeout_ns, 0, 0, 0, 0],
    ))
}

/// Maps `pages` zeroed pages; returns their first address.
pub fn mem_alloc(pages: usize) -> Result<*mut u8, Errno> {
    check(syscall(nr::MEM_ALLOC, [pages as u64, 0, 0, 0, 0, 0])).map(|addr| addr as *mut u8)
}

/// Frees an allocation made by [`mem_alloc`] (same address, same size).
///
/// # Safety
/// Nothing may use the memory afterwards: it is unmapped.
pub unsafe fn mem_free(address: *mut u8, pages: usize) -> Result<(), Errno> {
    check(syscall(
        nr::MEM_FREE,
        [address as u64, pages as u64, 0, 0, 0, 0],
    ))
    .map(|_| ())
}

/// Runs iommufd `command` on the argument struct `arg`, which starts with its
/// `size` (the kernel copies it in and the results back out).
pub fn iommufd<T>(command: abi::Command, arg: &mut T) -> Result<(), Errno> {
    check(syscall(
        command as u64,
        [arg as *mut T as u64, 0, 0, 0, 0, 0],
    ))
    .map(|_| ())
}

/// A program's numbered steps: a step that fails prints what failed, under
/// the program's name, and its number becomes the program's exit code.
pub struct Steps(pub &'static str);

impl Steps {
    pub fn check<T, E: fmt::Debug>(
        &self,
        number: i32,
        what: &str,
        result: Result<T, E>,
    ) -> Result<T, i32> {
        result.map_err(|error| {
            println!("{}: step {number} ({what}) failed: {error:?}", self.0);
            number
        })
    }
}

/// The console as a [`fmt::Write`] sink.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        write(text.as_bytes()).map(|_| ()).map_err(|_| fmt::Error)
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = fmt::Write::write_fmt(&mut Console, args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::_print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::_print(format_args!("{}\n", format_args!($($arg)*))));
}
