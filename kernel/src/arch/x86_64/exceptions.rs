//! Exceptions and interrupts: the IDT, entry stubs that save a [`TrapFrame`],
//! and the handler (interrupts go on to [`super::interrupts::dispatch`]).
//!
//! The `x86-interrupt` calling convention is unstable, so the stubs are plain
//! assembly: each pushes a dummy error code where the CPU does not (Intel SDM
//! Vol. 3A §6.13, Table 6-1) and its vector number, then a common path saves the
//! general registers and calls [`x86_exception_handler`] with the frame.
//!
//! A device can send any vector from 16 up as a message (a DMA write to
//! 0xFEEx_xxxx that no interrupt remapping stopped): the handler tells those
//! from exceptions and system calls by the local APIC's in-service bit,
//! acknowledges and drops them, and counts them ([`stray_interrupts`]).
//! Vectors 17, 21, 29 and 30 are exceptions with an error code, but only
//! where alignment checking (CR0.AM), CET or SEV-ES is on, none of which this
//! kernel turns on: their stubs push a dummy code like an interrupt's, so a
//! device that sends them leaves a well-formed frame.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use x86_64::VirtAddr;

use super::trap_frame::{FIRST_INTERRUPT_VECTOR, TrapFrame, exception_name};
use x86_64::structures::idt::{Entry, HandlerFunc, InterruptDescriptorTable};

const VECTORS: usize = 256;
const VECTOR_NMI: u64 = 2;
const VECTOR_BREAKPOINT: u64 = 3;
const VECTOR_INVALID_OPCODE: u64 = 6;
const VECTOR_PAGE_FAULT: u64 = 14;
/// The vector the handler gives a frame whose error-code slot the CPU never
/// filled (the stubs' return path checks for it).
const WITHOUT_ERROR_CODE: u64 = u64::MAX;

/// The exceptions whose stubs leave the CPU's error code (SDM Vol. 3A Table
/// 6-1: #DF and #TS, #NP, #SS, #GP, #PF; the assembly says the same).
fn pushes_error_code(vector: u64) -> bool {
    vector == 8 || (10..=14).contains(&vector)
}

/// Length of `ud2`, skipped when a test provokes #UD on purpose.
const UD2_LEN: u64 = 2;

// The common path saves the general registers around the handler. Then one
// stub per vector, each in its own 16-byte slot (at most 12 bytes: push imm8,
// push imm32, jmp rel32), so the table is `isr_stubs + 16 * vector`: the
// vectors whose exceptions push an error code (SDM Vol. 3A Table 6-1: 8 and
// 10-14; 17, 21, 29 and 30 only under CR0.AM, CET or SEV-ES, none of which
// this kernel turns on) leave it; every other stub pushes a dummy 0 in its
// place. The handler marks a frame whose "error code" the CPU never pushed
// (an interrupt a device sent with such a vector) with vector `u64::MAX`:
// the return then drops one slot, not two.
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
    cmp qword ptr [rsp], -1
    je isr_return_without_error_code
    add rsp, 16
    iretq
isr_return_without_error_code:
    add rsp, 8
    iretq
    .balign 16
isr_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || ((vector >= 10) && (vector <= 14))
    .else
    push 0
    .endif
    push vector
    jmp isr_common
    .set vector, vector + 1
    .endr

    .section .rodata.isr, "a"
    .balign 8
    .global isr_table
isr_table:
    .set vector, 0
    .rept 256
    .quad isr_stubs + 16 * vector
    .set vector, vector + 1
    .endr
"#
);

unsafe extern "C" {
    static isr_table: [u64; VECTORS];
}

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();
static BREAKPOINTS: AtomicUsize = AtomicUsize::new(0);
static UNDEFINED_INSTRUCTIONS: AtomicUsize = AtomicUsize::new(0);
static EXPECT_UNDEFINED_INSTRUCTION: AtomicBool = AtomicBool::new(false);
static STRAY_INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

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
            for vector in FIRST_INTERRUPT_VECTOR..VECTORS {
                idt[vector as u8].set_handler_addr(stub(vector));
            }
            // Vectors the CPU never raises here still need a gate: a device
            // can send them, and a missing gate is a #NP in whatever ran.
            for vector in UNUSED_EXCEPTION_VECTORS {
                every_gate(&mut idt)[vector].set_handler_addr(stub(vector));
            }
            // Tasks enter the kernel through this gate (`int`), so ring 3 may use it.
            idt[super::user::SYSCALL_VECTOR]
                .set_handler_addr(stub(usize::from(super::user::SYSCALL_VECTOR)))
                .set_privilege_level(x86_64::PrivilegeLevel::Ring3);
            // A double fault runs on its own stack: the one that faulted may
            // be gone. gdt::init put that stack in the TSS's IST.
            idt.double_fault
                .set_handler_addr(stub(8))
                .set_stack_index(super::gdt::DOUBLE_FAULT_IST_INDEX);
        }
        idt
    });
    idt.load();
}

/// Loads the IDT [`init`] built on a secondary CPU (one table serves all).
pub fn load() {
    IDT.get().expect("exceptions::init not called").load();
}

/// Exception vectors without a field of their own in the `x86_64` crate's
/// table (coprocessor overrun, reserved, hypervisor injection): none of them
/// is raised by the CPU this kernel runs on, and none pushes an error code.
const UNUSED_EXCEPTION_VECTORS: [usize; 10] = [9, 15, 22, 23, 24, 25, 26, 27, 28, 31];

/// The table as its 256 gates in vector order.
fn every_gate(idt: &mut InterruptDescriptorTable) -> &mut [Entry<HandlerFunc>; VECTORS] {
    const _: () = assert!(
        core::mem::size_of::<InterruptDescriptorTable>()
            == VECTORS * core::mem::size_of::<Entry<HandlerFunc>>()
    );
    // SAFETY: the table is `#[repr(C)]`: the 256 gates of SDM Vol. 3A §6.14.1
    // in vector order (the size assert above), and every `Entry<F>` has the
    // same layout (`F` only appears in a `PhantomData`).
    unsafe { &mut *(idt as *mut InterruptDescriptorTable).cast::<[Entry<HandlerFunc>; VECTORS]>() }
}

#[unsafe(no_mangle)]
extern "C" fn x86_exception_handler(frame: &mut TrapFrame) {
    // Nothing in this kernel sends NMIs: one is a device's message (delivery
    // mode NMI, or fixed delivery with vector 2) or the platform's. It is
    // counted and whatever ran resumes.
    if frame.vector == VECTOR_NMI {
        STRAY_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        if super::interrupts::in_service(VECTOR_NMI as u8) {
            super::interrupts::end_of_interrupt(VECTOR_NMI as u8);
        }
        return;
    }
    let syscall = frame.vector == u64::from(super::user::SYSCALL_VECTOR);
    // An exception vector or the system call gate that the local APIC
    // delivered is a device's message, not a fault or a call of the task.
    if (syscall || frame.vector < FIRST_INTERRUPT_VECTOR as u64)
        && super::interrupts::in_service(frame.vector as u8)
    {
        STRAY_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        super::interrupts::end_of_interrupt(frame.vector as u8);
        if pushes_error_code(frame.vector) {
            // The APIC pushed no error code: the CPU's frame starts one slot
            // lower than the stub assumed, so nothing above `vector` is what
            // `TrapFrame` says. Resume as it is; the return drops one slot.
            frame.vector = WITHOUT_ERROR_CODE;
            return;
        }
        super::user::preempt_if_due(frame);
        return;
    }
    // A task's system call or fault goes back to the scheduler; its device
    // interrupts are handled below like any other and resume it.
    if super::trap_frame::from_user(frame)
        && (syscall || frame.vector < FIRST_INTERRUPT_VECTOR as u64)
    {
        super::user::trap_from_user(frame);
    }
    match frame.vector {
        vector if vector == u64::from(super::user::SYSCALL_VECTOR) => {
            panic!(
                "system call gate used from the kernel at rip {:#x}",
                frame.rip
            )
        }
        vector if vector >= FIRST_INTERRUPT_VECTOR as u64 => {
            super::interrupts::dispatch(vector as u8);
            super::user::preempt_if_due(frame);
        }
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
            crate::backtrace::print_from(frame.rip, frame.rbp);
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

/// Device messages with an exception or system-call vector, and NMIs, that
/// the handler dropped since boot.
pub fn stray_interrupts() -> usize {
    STRAY_INTERRUPTS.load(Ordering::SeqCst)
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
