//! Exceptions: the IDT, entry stubs that save a [`TrapFrame`], and the handler.
//!
//! The `x86-interrupt` calling convention is unstable, so the stubs are plain
//! assembly: each pushes a dummy error code where the CPU does not (Intel SDM
//! Vol. 3A §6.13, Table 6-1) and its vector number, then a common path saves the
//! general registers and calls [`x86_exception_handler`] with the frame.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::structures::idt::InterruptDescriptorTable;

/// Number of architecturally defined exception vectors.
const EXCEPTION_VECTORS: usize = 32;
const VECTOR_BREAKPOINT: u64 = 3;
const VECTOR_INVALID_OPCODE: u64 = 6;
const VECTOR_PAGE_FAULT: u64 = 14;
/// Length of `ud2`, skipped when a test provokes #UD on purpose.
const UD2_LEN: u64 = 2;

/// The state the stubs save, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU (SDM Vol. 3A §6.14.1, 64-bit mode stack frame).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

global_asm!(
    r#"
    .section .text.isr, "ax"
    .code64
isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call x86_exception_handler
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
isr_0:
    push 0
    push 0
    jmp isr_common
isr_1:
    push 0
    push 1
    jmp isr_common
isr_2:
    push 0
    push 2
    jmp isr_common
isr_3:
    push 0
    push 3
    jmp isr_common
isr_4:
    push 0
    push 4
    jmp isr_common
isr_5:
    push 0
    push 5
    jmp isr_common
isr_6:
    push 0
    push 6
    jmp isr_common
isr_7:
    push 0
    push 7
    jmp isr_common
isr_8:
    push 8
    jmp isr_common
isr_9:
    push 0
    push 9
    jmp isr_common
isr_10:
    push 10
    jmp isr_common
isr_11:
    push 11
    jmp isr_common
isr_12:
    push 12
    jmp isr_common
isr_13:
    push 13
    jmp isr_common
isr_14:
    push 14
    jmp isr_common
isr_15:
    push 0
    push 15
    jmp isr_common
isr_16:
    push 0
    push 16
    jmp isr_common
isr_17:
    push 17
    jmp isr_common
isr_18:
    push 0
    push 18
    jmp isr_common
isr_19:
    push 0
    push 19
    jmp isr_common
isr_20:
    push 0
    push 20
    jmp isr_common
isr_21:
    push 21
    jmp isr_common
isr_22:
    push 0
    push 22
    jmp isr_common
isr_23:
    push 0
    push 23
    jmp isr_common
isr_24:
    push 0
    push 24
    jmp isr_common
isr_25:
    push 0
    push 25
    jmp isr_common
isr_26:
    push 0
    push 26
    jmp isr_common
isr_27:
    push 0
    push 27
    jmp isr_common
isr_28:
    push 0
    push 28
    jmp isr_common
isr_29:
    push 29
    jmp isr_common
isr_30:
    push 30
    jmp isr_common
isr_31:
    push 0
    push 31
    jmp isr_common
    .section .rodata.isr, "a"
    .balign 8
    .global isr_table
isr_table:
    .quad isr_0
    .quad isr_1
    .quad isr_2
    .quad isr_3
    .quad isr_4
    .quad isr_5
    .quad isr_6
    .quad isr_7
    .quad isr_8
    .quad isr_9
    .quad isr_10
    .quad isr_11
    .quad isr_12
    .quad isr_13
    .quad isr_14
    .quad isr_15
    .quad isr_16
    .quad isr_17
    .quad isr_18
    .quad isr_19
    .quad isr_20
    .quad isr_21
    .quad isr_22
    .quad isr_23
    .quad isr_24
    .quad isr_25
    .quad isr_26
    .quad isr_27
    .quad isr_28
    .quad isr_29
    .quad isr_30
    .quad isr_31
"#
);

unsafe extern "C" {
    static isr_table: [u64; EXCEPTION_VECTORS];
}

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();
static BREAKPOINTS: AtomicUsize = AtomicUsize::new(0);
static UNDEFINED_INSTRUCTIONS: AtomicUsize = AtomicUsize::new(0);
static EXPECT_UNDEFINED_INSTRUCTION: AtomicBool = AtomicBool::new(false);

pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        // SAFETY: reading the stub address table the assembly above defines.
        let stub = |vector: usize| VirtAddr::new(unsafe { isr_table[vector] });
        // SAFETY (every set_handler_addr below): each stub saves a TrapFrame,
        // calls the handler and returns with iretq after dropping the vector
        // and error code; the stub pushes a dummy error code exactly for the
        // vectors where the CPU does not.
        unsafe {
            idt.divide_error.set_handler_addr(stub(0));
            idt.debug.set_handler_addr(stub(1));
            idt.non_maskable_interrupt.set_handler_addr(stub(2));
            idt.breakpoint.set_handler_addr(stub(3));
            idt.overflow.set_handler_addr(stub(4));
            idt.bound_range_exceeded.set_handler_addr(stub(5));
            idt.invalid_opcode.set_handler_addr(stub(6));
            idt.device_not_available.set_handler_addr(stub(7));
            idt.double_fault.set_handler_addr(stub(8));
            idt.invalid_tss.set_handler_addr(stub(10));
            idt.segment_not_present.set_handler_addr(stub(11));
            idt.stack_segment_fault.set_handler_addr(stub(12));
            idt.general_protection_fault.set_handler_addr(stub(13));
            idt.page_fault.set_handler_addr(stub(14));
            idt.x87_floating_point.set_handler_addr(stub(16));
            idt.alignment_check.set_handler_addr(stub(17));
            idt.machine_check.set_handler_addr(stub(18));
            idt.simd_floating_point.set_handler_addr(stub(19));
            idt.virtualization.set_handler_addr(stub(20));
            idt.cp_protection_exception.set_handler_addr(stub(21));
            idt.vmm_communication_exception.set_handler_addr(stub(29));
            idt.security_exception.set_handler_addr(stub(30));
        }
        idt
    });
    idt.load();
}

fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 22] = [
        "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range",
        "invalid opcode", "device not available", "double fault", "coprocessor overrun",
        "invalid TSS", "segment not present", "stack fault", "general protection",
        "page fault", "reserved", "x87 FP", "alignment check", "machine check",
        "SIMD FP", "virtualization", "control protection",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("reserved")
}

#[unsafe(no_mangle)]
extern "C" fn x86_exception_handler(frame: &mut TrapFrame) {
    match frame.vector {
        // int3 is a trap: RIP already points past it, so just resume.
        VECTOR_BREAKPOINT => {
            BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
        }
        VECTOR_INVALID_OPCODE if EXPECT_UNDEFINED_INSTRUCTION.swap(false, Ordering::SeqCst) => {
            UNDEFINED_INSTRUCTIONS.fetch_add(1, Ordering::SeqCst);
            frame.rip += UD2_LEN;
        }
        vector => {
            let fault_address = if vector == VECTOR_PAGE_FAULT {
                x86_64::registers::control::Cr2::read_raw()
            } else {
                0
            };
            panic!(
                "unhandled exception: {} (vector {}), error code {:#x}, rip {:#x}, faulting address {:#x}, rsp {:#x}",
                exception_name(vector),
                vector,
                frame.error_code,
                frame.rip,
                fault_address,
                frame.rsp
            );
        }
    }
}

/// Executes `int3`; the handler counts it and execution resumes after it.
pub fn breakpoint() {
    x86_64::instructions::interrupts::int3();
}

pub fn breakpoints_seen() -> usize {
    BREAKPOINTS.load(Ordering::SeqCst)
}

/// Executes `ud2` with the handler told to expect it and skip it.
pub fn undefined_instruction() {
    EXPECT_UNDEFINED_INSTRUCTION.store(true, Ordering::SeqCst);
    // SAFETY: the #UD handler skips the 2-byte ud2 when it was announced above.
    unsafe { core::arch::asm!("ud2") };
}

pub fn undefined_instructions_seen() -> usize {
    UNDEFINED_INSTRUCTIONS.load(Ordering::SeqCst)
}
