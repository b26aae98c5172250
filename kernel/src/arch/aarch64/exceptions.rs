//! Exception vectors (ARM ARM D1.10.2, the vector table at VBAR_EL1) and the
//! handler. Every entry saves a [`TrapFrame`] and calls
//! [`aarch64_exception_handler`]; the handler may change ELR to resume elsewhere.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::registers::{VBAR_EL1, Writeable};

use super::trap_frame::{TRAP_FRAME_SIZE, TrapFrame};

/// ESR_EL1.EC values (ARM ARM D19.2.37).
const EC_UNKNOWN: u64 = 0x00;
const EC_BRK_AARCH64: u64 = 0x3C;
const ESR_EC_SHIFT: u64 = 26;
/// A Data Abort taken without a change of Exception level (Arm ARM
/// D24.2.40, ESR_EL1.EC 0b100101).
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// ISS of a Data Abort (Arm ARM D24.2.40): the fault status code and
/// whether the access was a write.
const ISS_DFSC_MASK: u64 = 0x3F;
const ISS_WNR: u64 = 1 << 6;
/// DFSC 0b010000: a synchronous External abort, not on a table walk.
const DFSC_SYNCHRONOUS_EXTERNAL_ABORT: u64 = 0x10;
/// How often one configuration read that aborts runs again before the
/// abort is fatal: aborts of one instruction less than
/// [`CONFIG_READ_RETRY_WINDOW_NS`] apart count as one read's retries.
const CONFIG_READ_RETRIES: u64 = 3;
const CONFIG_READ_RETRY_WINDOW_NS: u64 = 1_000_000;
const INSTRUCTION_LEN: u64 = 4;

global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 2048
    .global exception_vectors
exception_vectors:
    .set kind, 0
    .rept 16
    .balign 0x80
    sub sp, sp, #{frame}
    stp x0, x1, [sp, #0]
    mov x0, #kind
    b exception_common
    .set kind, kind + 1
    .endr

exception_common:
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    str x30, [sp, #240]
    mrs x1, elr_el1
    mrs x2, spsr_el1
    stp x1, x2, [sp, #248]
    mrs x1, esr_el1
    mrs x2, far_el1
    stp x1, x2, [sp, #264]
    mrs x1, sp_el0
    stp x0, x1, [sp, #280]
    stp q0, q1, [sp, #304]
    stp q2, q3, [sp, #336]
    stp q4, q5, [sp, #368]
    stp q6, q7, [sp, #400]
    stp q8, q9, [sp, #432]
    stp q10, q11, [sp, #464]
    stp q12, q13, [sp, #496]
    stp q14, q15, [sp, #528]
    stp q16, q17, [sp, #560]
    stp q18, q19, [sp, #592]
    stp q20, q21, [sp, #624]
    stp q22, q23, [sp, #656]
    stp q24, q25, [sp, #688]
    stp q26, q27, [sp, #720]
    stp q28, q29, [sp, #752]
    stp q30, q31, [sp, #784]
    mrs x1, fpcr
    mrs x2, fpsr
    str x1, [sp, #816]
    str x2, [sp, #824]
    mov x0, sp
    bl aarch64_exception_handler

    // Restores the frame at sp, pops it and returns from the exception.
    // `super::user` enters a task through here with its saved state.
    .global exception_return
exception_return:
    ldp x1, x2, [sp, #248]
    msr elr_el1, x1
    msr spsr_el1, x2
    ldr x1, [sp, #288]
    msr sp_el0, x1
    ldr x1, [sp, #816]
    ldr x2, [sp, #824]
    msr fpcr, x1
    msr fpsr, x2
    ldp q0, q1, [sp, #304]
    ldp q2, q3, [sp, #336]
    ldp q4, q5, [sp, #368]
    ldp q6, q7, [sp, #400]
    ldp q8, q9, [sp, #432]
    ldp q10, q11, [sp, #464]
    ldp q12, q13, [sp, #496]
    ldp q14, q15, [sp, #528]
    ldp q16, q17, [sp, #560]
    ldp q18, q19, [sp, #592]
    ldp q20, q21, [sp, #624]
    ldp q22, q23, [sp, #656]
    ldp q24, q25, [sp, #688]
    ldp q26, q27, [sp, #720]
    ldp q28, q29, [sp, #752]
    ldp q30, q31, [sp, #784]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x19, [sp, #144]
    ldp x20, x21, [sp, #160]
    ldp x22, x23, [sp, #176]
    ldp x24, x25, [sp, #192]
    ldp x26, x27, [sp, #208]
    ldp x28, x29, [sp, #224]
    ldr x30, [sp, #240]
    ldp x0, x1, [sp, #0]
    add sp, sp, #{frame}
    eret
"#,
    frame = const TRAP_FRAME_SIZE,
);

unsafe extern "C" {
    static exception_vectors: u8;
}

static BREAKPOINTS: AtomicUsize = AtomicUsize::new(0);
static UNDEFINED_INSTRUCTIONS: AtomicUsize = AtomicUsize::new(0);
static EXPECT_UNDEFINED_INSTRUCTION: AtomicBool = AtomicBool::new(false);
static CONFIG_READS_RETRIED: AtomicUsize = AtomicUsize::new(0);
/// Per CPU: the configuration read that last aborted, when, and how often
/// in a row.
static ABORTED_CONFIG_READ: [AbortedRead; crate::arch::MAX_CPUS] = [const {
    AbortedRead {
        pc: AtomicU64::new(0),
        at_ns: AtomicU64::new(0),
        in_a_row: AtomicU64::new(0),
    }
}; crate::arch::MAX_CPUS];

struct AbortedRead {
    pc: AtomicU64,
    at_ns: AtomicU64,
    in_a_row: AtomicU64,
}

pub fn init() {
    VBAR_EL1.set(&raw const exception_vectors as u64);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

fn vector_name(kind: u64) -> (&'static str, &'static str) {
    const ORIGINS: [&str; 4] = [
        "current EL with SP_EL0",
        "current EL with SP_ELx",
        "lower EL (AArch64)",
        "lower EL (AArch32)",
    ];
    const TYPES: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];
    (TYPES[(kind % 4) as usize], ORIGINS[(kind / 4 % 4) as usize])
}

#[unsafe(no_mangle)]
extern "C" fn aarch64_exception_handler(frame: &mut TrapFrame) {
    let class = frame.esr >> ESR_EC_SHIFT;
    const SYNCHRONOUS: u64 = 0;
    const IRQ: u64 = 1;
    if frame.kind % 4 == IRQ {
        super::gic::handle_irq();
        super::user::preempt_if_due(frame);
        return;
    }
    // Anything else from EL0 (a system call, a fault) goes back to the
    // scheduler; a task's IRQs were handled above and resume it unless the
    // preemption tick ended its slice.
    if frame.kind >= super::user::FIRST_LOWER_EL_VECTOR {
        super::user::trap_from_user(frame);
    }
    let _ = SYNCHRONOUS;
    match (frame.kind % 4, class) {
        // Synchronous exceptions taken at EL1.
        (0, EC_BRK_AARCH64) => {
            BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
            frame.elr += INSTRUCTION_LEN;
        }
        (0, EC_UNKNOWN) if EXPECT_UNDEFINED_INSTRUCTION.swap(false, Ordering::SeqCst) => {
            UNDEFINED_INSTRUCTIONS.fetch_add(1, Ordering::SeqCst);
            frame.elr += INSTRUCTION_LEN;
        }
        // ELR names the load itself (a synchronous abort is precise): the
        // return runs it again.
        (0, EC_DATA_ABORT_SAME_EL) if may_retry_config_read(frame) => {}
        _ => {
            // x29 is the frame pointer (AAPCS64 frame record).
            crate::backtrace::print_from(frame.elr, frame.x[29]);
            panic!(
                "unhandled {} exception from {} (vector {}): ESR {:#x} (EC {:#x}), FAR {:#x}, ELR {:#x}",
                vector_name(frame.kind).0,
                vector_name(frame.kind).1,
                frame.kind,
                frame.esr,
                class,
                frame.far,
                frame.elr
            )
        }
    }
}

/// Whether the abort in `frame` is a configuration read to run again.
///
/// QEMU 10.0.2 under multi-threaded TCG now and then ends a read of a
/// present function's configuration space in an External abort while other
/// vCPUs change the memory map (QEMU.md §6); a
/// configuration read has no side effect, so running it again is sound. A
/// read that aborts [`CONFIG_READ_RETRIES`] times in a row stays fatal, as
/// every other External abort is.
fn may_retry_config_read(frame: &TrapFrame) -> bool {
    let iss = frame.esr;
    if iss & ISS_DFSC_MASK != DFSC_SYNCHRONOUS_EXTERNAL_ABORT
        || iss & ISS_WNR != 0
        || !crate::platform::is_config_address(frame.far as usize)
    {
        return false;
    }
    // Only this CPU's handler touches its entry, with interrupts masked.
    let last = &ABORTED_CONFIG_READ[super::cpu::cpu_index() as usize];
    let now = crate::arch::now_ns();
    let previous_pc = last.pc.swap(frame.elr, Ordering::Relaxed);
    let previous_ns = last.at_ns.swap(now, Ordering::Relaxed);
    let same_read =
        previous_pc == frame.elr && now.saturating_sub(previous_ns) < CONFIG_READ_RETRY_WINDOW_NS;
    let count = if same_read {
        last.in_a_row.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        last.in_a_row.store(1, Ordering::Relaxed);
        1
    };
    if count > CONFIG_READ_RETRIES {
        return false;
    }
    CONFIG_READS_RETRIED.fetch_add(1, Ordering::Relaxed);
    true
}

/// Configuration reads run again after an External abort since boot.
pub fn config_reads_retried() -> usize {
    CONFIG_READS_RETRIED.load(Ordering::Relaxed)
}

/// Executes `brk #0`; the handler counts it and resumes after it.
pub fn breakpoint() {
    // SAFETY: the handler skips the brk and returns.
    unsafe { core::arch::asm!("brk #0") };
}

pub fn breakpoints_seen() -> usize {
    BREAKPOINTS.load(Ordering::SeqCst)
}

/// Executes a permanently undefined instruction with the handler told to skip it.
pub fn undefined_instruction() {
    EXPECT_UNDEFINED_INSTRUCTION.store(true, Ordering::SeqCst);
    // SAFETY: the handler skips the announced `udf` and returns.
    unsafe { core::arch::asm!("udf #0") };
}

pub fn undefined_instructions_seen() -> usize {
    UNDEFINED_INSTRUCTIONS.load(Ordering::SeqCst)
}
