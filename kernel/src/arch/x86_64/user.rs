//! Ring 3: entering a task, coming back on its traps, its page-table entries.
//!
//! The kernel runs a task with [`run`], which saves the kernel's callee-saved
//! registers and flags on the current stack, points TSS.RSP0 just below them
//! and `iretq`s into the task with the registers of its [`UserContext`]. Any
//! trap from ring 3 arrives on that same stack (the CPU switches to RSP0).
//! Device interrupts are handled there and `iretq` straight back to the task.
//! A system call (`int 0xF0`, an interrupt gate with DPL 3) or a fault copies
//! the trap frame into the context and unwinds to [`run`]'s caller
//! (`leave_user`): the scheduler then runs in ordinary kernel context.
//!
//! `x86_64-unknown-none` code (kernel and user programs) does not use SSE or
//! x87, so the general registers are the whole user state.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use os_services::mmio::Reg32;

use crate::arch::MAX_CPUS;

use super::gdt;
use super::interrupts::{apic_read, apic_write};
use super::trap_frame::{TrapFrame, exception_name, from_user};

/// The syscall gate (an interrupt gate with DPL 3).
pub const SYSCALL_VECTOR: u8 = abi::syscall::X86_SYSCALL_VECTOR;
const VECTOR_PAGE_FAULT: u64 = 14;
const FIRST_INTERRUPT_VECTOR: u64 = super::trap_frame::FIRST_INTERRUPT_VECTOR as u64;
/// RFLAGS.IF (SDM Vol. 1 §3.4.3): device interrupts stay on in ring 3.
const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS bit 1 is reserved and always 1.
const RFLAGS_RESERVED_ONE: u64 = 1 << 1;

/// Page-table entry bits (SDM Vol. 3A §4.5, Tables 4-15 to 4-19).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_NO_EXECUTE: u64 = 1 << 63;
/// PWT and PCD (SDM Vol. 3A Table 4-19): uncached, for device registers.
const PTE_WRITE_THROUGH: u64 = 1 << 3;
const PTE_CACHE_DISABLE: u64 = 1 << 4;
/// Bits 51:12 of an entry hold the physical address.
const PTE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The registers of a task while it is not running.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserContext {
    pub frame: TrapFrame,
    /// CR2 of the last page fault.
    pub fault_address: u64,
}

/// Why [`run`] returned.
const LEFT_FOR_TRAP: u64 = 1;

/// One CPU's part in running tasks: each CPU runs its own task.
struct CpuUserState {
    /// The kernel stack pointer saved by `enter_user`, restored by `leave_user`.
    kernel_stack_pointer: AtomicU64,
    /// The context of the task that is running, where its traps are recorded.
    current: AtomicPtr<UserContext>,
    /// Set by the timer interrupt; a trap from ring 3 with it set ends the run.
    preempt: AtomicBool,
    /// When the running task's slice ends, in `now_ns` time. The tick
    /// compares against it, so a badly calibrated timer only makes slices
    /// coarser.
    slice_end_ns: AtomicU64,
}

static PER_CPU: [CpuUserState; MAX_CPUS] = [const {
    CpuUserState {
        kernel_stack_pointer: AtomicU64::new(0),
        current: AtomicPtr::new(core::ptr::null_mut()),
        preempt: AtomicBool::new(false),
        slice_end_ns: AtomicU64::new(u64::MAX),
    }
}; MAX_CPUS];

fn this_cpu() -> &'static CpuUserState {
    &PER_CPU[super::cpu::cpu_index()]
}

global_asm!(
    r#"
    .section .text.user, "ax"
    .code64
    // enter_user(frame: *const TrapFrame, kernel_sp: *mut u64, rsp0: *mut u64):
    // saves the kernel stack pointer in both (this CPU's slot and its TSS)
    // and never returns by itself; the next trap from ring 3 returns from it
    // through leave_user.
    .global enter_user
enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    pushfq
    cli
    mov [rsi], rsp
    mov [rdx], rsp
    push qword ptr [rdi + 168]
    push qword ptr [rdi + 160]
    push qword ptr [rdi + 152]
    push qword ptr [rdi + 144]
    push qword ptr [rdi + 136]
    mov r15, [rdi + 0]
    mov r14, [rdi + 8]
    mov r13, [rdi + 16]
    mov r12, [rdi + 24]
    mov r11, [rdi + 32]
    mov r10, [rdi + 40]
    mov r9, [rdi + 48]
    mov r8, [rdi + 56]
    mov rbp, [rdi + 64]
    mov rsi, [rdi + 80]
    mov rdx, [rdi + 88]
    mov rcx, [rdi + 96]
    mov rbx, [rdi + 104]
    mov rax, [rdi + 112]
    mov rdi, [rdi + 72]
    iretq

    // leave_user(reason: u64, kernel_sp: u64) -> !: back onto the stack
    // enter_user saved, returning `reason` from enter_user.
    .global leave_user
leave_user:
    mov rsp, rsi
    mov rax, rdi
    popfq
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#
);

unsafe extern "C" {
    fn enter_user(frame: *const TrapFrame, kernel_sp: *mut u64, rsp0: *mut u64) -> u64;
    fn leave_user(reason: u64, kernel_sp: u64) -> !;
}

impl UserContext {
    /// A task about to start at `entry` with its stack pointer at `stack_top`.
    pub fn new(entry: u64, stack_top: u64) -> Self {
        UserContext {
            frame: TrapFrame {
                r15: 0,
                r14: 0,
                r13: 0,
                r12: 0,
                r11: 0,
                r10: 0,
                r9: 0,
                r8: 0,
                rbp: 0,
                rdi: 0,
                rsi: 0,
                rdx: 0,
                rcx: 0,
                rbx: 0,
                rax: 0,
                vector: 0,
                error_code: 0,
                rip: entry,
                cs: gdt::user_code_selector(),
                rflags: RFLAGS_IF | RFLAGS_RESERVED_ONE,
                rsp: stack_top,
                ss: gdt::user_data_selector(),
            },
            fault_address: 0,
        }
    }

    /// Sets the value the program's entry receives as its first argument
    /// (rdi, the System V first-argument register).
    pub fn set_argument(&mut self, value: u64) {
        self.frame.rdi = value;
    }

    /// Where the task resumes (its entry point before it first runs).
    pub fn resume_address(&self) -> u64 {
        self.frame.rip
    }

    /// The trap that ended the last [`run`].
    pub fn trap(&self) -> crate::task::Trap {
        use crate::task::Trap;
        if self.frame.vector >= FIRST_INTERRUPT_VECTOR
            && self.frame.vector != u64::from(SYSCALL_VECTOR)
        {
            return Trap::Preempted;
        }
        if self.frame.vector == u64::from(SYSCALL_VECTOR) {
            let f = &self.frame;
            return Trap::Syscall {
                number: f.rax,
                args: [f.rdi, f.rsi, f.rdx, f.r10, f.r8, f.r9],
            };
        }
        Trap::Fault {
            what: exception_name(self.frame.vector),
            address: (self.frame.vector == VECTOR_PAGE_FAULT).then_some(self.fault_address),
            code: self.frame.error_code,
            pc: self.frame.rip,
        }
    }

    pub fn set_syscall_result(&mut self, value: i64) {
        self.frame.rax = value as u64;
    }
}

/// Runs the task until its next system call or fault; the context then holds
/// its registers and [`UserContext::trap`] says what happened. The task's
/// address space must be the active one.
pub fn run(context: &mut UserContext) {
    // One index names the CPU for both of its slots.
    let index = super::cpu::cpu_index();
    let cpu = &PER_CPU[index];
    cpu.current.store(context, Ordering::SeqCst);
    // SAFETY: the frame holds user selectors (RPL 3) and RFLAGS with IF set
    // and IOPL 0, so iretq can only reach ring 3; the trap that ends the run
    // comes back through leave_user onto this stack with the callee-saved
    // registers and flags enter_user saved. Both slots are this CPU's: the
    // task runs here until the trap, and traps from ring 3 arrive on the
    // CPU they happen on.
    let reason = unsafe {
        enter_user(
            &context.frame,
            cpu.kernel_stack_pointer.as_ptr(),
            super::cpu::tables_of(index).rsp0_slot(),
        )
    };
    debug_assert_eq!(reason, LEFT_FOR_TRAP);
    cpu.current.store(core::ptr::null_mut(), Ordering::SeqCst);
}

/// Called by the exception handler for a system call or a fault from ring 3.
pub fn trap_from_user(frame: &TrapFrame) -> ! {
    let cpu = this_cpu();
    let current = cpu.current.load(Ordering::SeqCst);
    assert!(
        !current.is_null(),
        "trap from ring 3 with no task running (CPU {}, APIC ID {}, vector {:#x}, rip {:#x}, cs {:#x})",
        super::cpu::cpu_index(),
        super::interrupts::local_apic_id(),
        frame.vector,
        frame.rip,
        frame.cs
    );
    // SAFETY: `current` is the context `run` is waiting on on this CPU;
    // nothing else touches it until leave_user returns there, onto the
    // stack this CPU's enter_user saved.
    unsafe {
        (*current).frame = *frame;
        (*current).fault_address = x86_64::registers::control::Cr2::read_raw();
        leave_user(
            LEFT_FOR_TRAP,
            cpu.kernel_stack_pointer.load(Ordering::SeqCst),
        )
    }
}

/// An intermediate table entry: user-accessible so the leaf decides.
pub fn table_entry(phys: u64) -> u64 {
    (phys & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_WRITABLE | PTE_USER
}

/// A 4 KiB user page.
pub fn page_entry(phys: u64, access: crate::task::Access) -> u64 {
    let mut entry = (phys & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    if access.write {
        entry |= PTE_WRITABLE;
    }
    if !access.execute {
        entry |= PTE_NO_EXECUTE;
    }
    entry
}

/// A 4 KiB user page over device registers: uncached, never executable.
pub fn device_page_entry(phys: u64) -> u64 {
    (phys & PTE_ADDRESS_MASK)
        | PTE_PRESENT
        | PTE_USER
        | PTE_WRITABLE
        | PTE_WRITE_THROUGH
        | PTE_CACHE_DISABLE
        | PTE_NO_EXECUTE
}

pub fn entry_address(entry: u64) -> u64 {
    entry & PTE_ADDRESS_MASK
}

pub fn entry_present(entry: u64) -> bool {
    entry & PTE_PRESENT != 0
}

/// The root (PML4) in use.
pub fn current_root() -> u64 {
    x86_64::registers::control::Cr3::read_raw()
        .0
        .start_address()
        .as_u64()
}

/// Makes `root` the active address space (CR3 load flushes non-global TLB entries).
///
/// # Safety
/// `root` must map the kernel exactly as the boot tables do.
pub unsafe fn switch_root(root: u64) {
    // SAFETY: forwarded from the caller; CR3 keeps flags 0 (PWT/PCD off).
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) root, options(nostack)) };
}

/// Drops stale translations of the active address space.
pub fn flush_tlb() {
    // SAFETY: reloading CR3 with its own value only flushes the TLB.
    unsafe { switch_root(current_root()) };
}

/// Makes freshly written code visible to instruction fetch: x86 keeps the
/// instruction cache coherent by itself.
pub fn sync_instruction_cache(_phys: u64, _len: usize) {}

/// Local APIC timer registers (SDM Vol. 3A §11.5.4, Table 11-1).
const LAPIC_LVT_TIMER: Reg32 = Reg32(0x320);
const LAPIC_TIMER_INITIAL_COUNT: Reg32 = Reg32(0x380);
const LAPIC_TIMER_CURRENT_COUNT: Reg32 = Reg32(0x390);
const LAPIC_TIMER_DIVIDE: Reg32 = Reg32(0x3E0);
/// LVT timer: bit 16 masks it; mode bits 18:17 = 01 is periodic.
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b1011: divide by 1.
const TIMER_DIVIDE_BY_1: u32 = 0b1011;
/// Calibration window of the timer against the TSC clock.
const CALIBRATION_NS: u64 = 10_000_000;
/// Period of the tick while a task runs.
const TICK_MS: u64 = 1;

/// The timer's vector and its ticks per millisecond, set up on first use.
static PREEMPTION_TIMER: spin::Once<Option<(u8, u64)>> = spin::Once::new();

fn on_timer_tick() {
    let cpu = this_cpu();
    if super::now_ns() >= cpu.slice_end_ns.load(Ordering::SeqCst) {
        cpu.preempt.store(true, Ordering::SeqCst);
    }
}

fn preemption_timer() -> Option<(u8, u64)> {
    *PREEMPTION_TIMER.call_once(|| {
        let vector = crate::irq::alloc_vector(on_timer_tick)?;
        apic_write(LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
        apic_write(LAPIC_LVT_TIMER, LVT_MASKED | u32::from(vector));
        apic_write(LAPIC_TIMER_INITIAL_COUNT, u32::MAX);
        let start = super::now_ns();
        while super::now_ns() - start < CALIBRATION_NS {
            core::hint::spin_loop();
        }
        let elapsed = u32::MAX - apic_read(LAPIC_TIMER_CURRENT_COUNT);
        apic_write(LAPIC_TIMER_INITIAL_COUNT, 0);
        let per_ms = u64::from(elapsed) * 1_000_000 / CALIBRATION_NS;
        (per_ms > 0).then_some((vector, per_ms))
    })
}

/// Ends the task's run (a [`Trap::Preempted`](crate::task::Trap::Preempted)) at the first tick after
/// `slice_ns` from now; false when there is no timer to do it with.
pub fn arm_preemption(slice_ns: u64) -> bool {
    let cpu = this_cpu();
    cpu.preempt.store(false, Ordering::SeqCst);
    let Some((vector, per_ms)) = preemption_timer() else {
        return false;
    };
    cpu.slice_end_ns
        .store(super::now_ns().saturating_add(slice_ns), Ordering::SeqCst);
    let ticks = u32::try_from(per_ms.saturating_mul(TICK_MS)).unwrap_or(u32::MAX);
    // Each CPU has its own timer: the divider the calibration ran with is
    // set on whichever CPU arms it (a secondary CPU's is still at its
    // reset value, divide by 2).
    apic_write(LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
    apic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | u32::from(vector));
    apic_write(LAPIC_TIMER_INITIAL_COUNT, ticks.max(1));
    true
}

/// Sleeps until the next interrupt: a device's, or the timer's within about
/// `max_ms`. Without a timer it only pauses briefly, so the caller polls.
pub fn idle(max_ms: u64) {
    if arm_preemption(max_ms.saturating_mul(1_000_000)) {
        // Interrupts are enabled in the kernel: the periodic tick ends the halt.
        super::interrupts::note_halt(x86_64::instructions::interrupts::are_enabled());
        x86_64::instructions::hlt();
        disarm_preemption();
    } else {
        os_services::Clock::relax(&crate::time::CLOCK);
    }
}

/// Whether tasks can be preempted (a timer vector was free and calibrated).
pub fn preemption_available() -> bool {
    preemption_timer().is_some()
}

/// Stops the preemption timer.
pub fn disarm_preemption() {
    if let Some((vector, _)) = preemption_timer() {
        apic_write(LAPIC_TIMER_INITIAL_COUNT, 0);
        apic_write(LAPIC_LVT_TIMER, LVT_MASKED | u32::from(vector));
    }
}

/// Called after an interrupt from ring 3 was handled: if it was the
/// preemption tick, the task's run ends here.
pub fn preempt_if_due(frame: &TrapFrame) {
    if from_user(frame) && this_cpu().preempt.swap(false, Ordering::SeqCst) {
        trap_from_user(frame);
    }
}
