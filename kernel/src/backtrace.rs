//! Frame-pointer backtraces for panics and fatal exceptions.
//!
//! The kernel is built with `-C force-frame-pointers=yes` (`.cargo/config.toml`),
//! so every kernel function keeps a frame record: on x86-64 `push rbp; mov rbp,
//! rsp`, on AArch64 the AAPCS64 record `stp x29, x30, [sp, #-n]!; mov x29, sp`.
//! Both put the caller's frame pointer at `[fp]` and the return address at
//! `[fp + 8]`. The kernel prints the return addresses as one line of hex; the
//! host turns them into function, file and line (`qemu_tests::symbolize`, the
//! `addr2line` crate over the kernel ELF), so nothing here needs symbols.
//!
//! The walk trusts nothing it reads: a frame pointer must be aligned, above the
//! previous one and within [`STACK_WINDOW`] of the first (kernel stacks are
//! smaller), and a return address must lie in the kernel's text; the walk
//! stops at the first one that is not. Functions of the precompiled `core`
//! may keep no frame record: they preserve the caller's frame pointer
//! (callee-saved), so the walk skips them rather than derailing.

use core::fmt::Write;

/// Frames printed at most.
const MAX_FRAMES: usize = 24;

/// Room for the longest line: the prefix and [`MAX_FRAMES`] addresses.
const LINE_BYTES: usize = 48 + MAX_FRAMES * 19;

/// How far above the first frame pointer a caller's frame may be.
const STACK_WINDOW: u64 = 256 * 1024;

unsafe extern "C" {
    /// Linker script: the first and one past the last byte of `.text`.
    static __text_start: u8;
    static __text_end: u8;
}

fn in_text(address: u64) -> bool {
    // Only the symbols' addresses are taken, never their contents.
    let (start, end) = (&raw const __text_start as u64, &raw const __text_end as u64);
    (start..end).contains(&address)
}

/// The current frame pointer.
#[inline(always)]
fn frame_pointer() -> u64 {
    let fp: u64;
    // SAFETY: reads a register; no memory is touched.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    fp
}

/// Prints `backtrace: RET...` for the code that called this function.
#[inline(never)]
pub fn print_here() {
    let own = frame_pointer();
    // This function's own record is gone once the call below becomes a tail
    // call (it does on AArch64), so the walk starts at the caller's record.
    // SAFETY: `own` points at this function's frame record, live until it
    // returns.
    let caller = unsafe { (own as *const u64).read_volatile() };
    print(None, caller);
}

/// Prints `backtrace from PC: RET...` for an exception taken at `pc` with
/// frame pointer `fp` (from the trap frame).
pub fn print_from(pc: u64, fp: u64) {
    print(Some(pc), fp);
}

fn print(pc: Option<u64>, first: u64) {
    // A fixed buffer: the walk runs in a panic, where the heap may be what
    // failed. A frame that does not fit is left out.
    let mut line = heapless::String::<LINE_BYTES>::new();
    match pc {
        Some(pc) => {
            let _ = write!(line, "backtrace from {pc:#x}:");
        }
        None => {
            let _ = write!(line, "backtrace:");
        }
    }
    let mut fp = first;
    for _ in 0..MAX_FRAMES {
        let plausible = fp != 0
            && fp.is_multiple_of(8)
            && fp >= first
            && fp - first < STACK_WINDOW
            && fp.checked_add(16).is_some();
        if !plausible {
            break;
        }
        // SAFETY: `fp` is aligned and within a small window above a frame
        // pointer the CPU just used, which lies on a mapped kernel stack.
        let (caller_fp, return_address) = unsafe {
            let record = fp as *const u64;
            (record.read_volatile(), record.add(1).read_volatile())
        };
        if !in_text(return_address) {
            break;
        }
        let _ = write!(line, " {return_address:#x}");
        if caller_fp <= fp {
            break;
        }
        fp = caller_fp;
    }
    println!("{line}");
}
