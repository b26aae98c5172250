//! EL0: entering a task, coming back on its traps, its page-table entries.
//!
//! [`run`] saves the kernel's callee-saved registers and DAIF on the current
//! stack (SP_EL1), copies the task's [`UserContext`] (a [`TrapFrame`]) below
//! them and leaves through the common exception return, `eret`ing to EL0t with
//! the task's SP_EL0. Every exception from EL0 then arrives on that stack.
//! IRQs are handled there and return to the task; anything synchronous (`svc
//! #0`, an abort, an undefined instruction) and SError copy the frame into the
//! context and unwind to [`run`]'s caller (`leave_user`), so the scheduler runs
//! in ordinary kernel context.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use super::trap_frame::TrapFrame;
use crate::arch::MAX_CPUS;
use crate::task::{Access, Trap};

/// Vectors 8..16 are "from a lower EL" (ARM ARM D1.10.2, Table D1-5).
pub const FIRST_LOWER_EL_VECTOR: u64 = 8;
/// SPSR_EL1 for the return to EL0t (ARM ARM C5.2.18): M = 0b0000, and D, A,
/// I, F clear so that device interrupts reach the kernel while a task runs.
const SPSR_EL0T: u64 = 0;
/// x8 carries the system call number (abi::syscall).
const SYSCALL_NUMBER_REGISTER: usize = 8;

/// ESR_EL1.EC values (ARM ARM D19.2.37).
const ESR_EC_SHIFT: u64 = 26;
const ESR_ISS_MASK: u64 = (1 << 25) - 1;
const EC_UNKNOWN: u64 = 0x00;
const EC_ILLEGAL_STATE: u64 = 0x0E;
const EC_SVC_AARCH64: u64 = 0x15;
const EC_SYSTEM_REGISTER: u64 = 0x18;
const EC_INSTRUCTION_ABORT_LOWER: u64 = 0x20;
const EC_PC_ALIGNMENT: u64 = 0x22;
const EC_DATA_ABORT_LOWER: u64 = 0x24;
const EC_SP_ALIGNMENT: u64 = 0x26;
const EC_BRK_AARCH64: u64 = 0x3C;

/// Stage-1 page descriptor bits (ARM ARM D8.3.2, VMSAv8-64 descriptor formats).
const DESC_VALID: u64 = 1 << 0;
/// Bit 1 set: a table descriptor at levels 0-2, a page descriptor at level 3.
const DESC_TABLE_OR_PAGE: u64 = 1 << 1;
/// `AttrIndx[4:2]`: MAIR_EL1 index 1, Normal write-back (boot/src/aarch64.rs).
const ATTR_NORMAL_WB: u64 = 1 << 2;
/// AttrIndx = 0: the boot MAIR's Device-nGnRnE attribute.
const ATTR_DEVICE: u64 = 0;
/// `AP[2:1]` (bits 7:6): 0b01 = read/write at EL1 and EL0, 0b11 = read-only at both.
const AP_READ_WRITE_ANY_EL: u64 = 0b01 << 6;
const AP_READ_ONLY_ANY_EL: u64 = 0b11 << 6;
/// `SH[9:8]` = 0b11, inner shareable.
const SH_INNER: u64 = 0b11 << 8;
/// AF: set, so that the first access does not fault.
const AF: u64 = 1 << 10;
/// nG: the translation belongs to this address space only.
const NOT_GLOBAL: u64 = 1 << 11;
/// PXN: the kernel never executes user memory. UXN: nor does the task, for data.
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
/// Output address bits 47:12.
const DESC_ADDRESS_MASK: u64 = 0x0000_FFFF_FFFF_F000;
/// TTBR0_EL1.BADDR (ARM ARM D19.2.155), without the ASID and CnP bits.
const TTBR_ADDRESS_MASK: u64 = 0x0000_FFFF_FFFF_FFFE;

/// The registers of a task while it is not running.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserContext {
    pub frame: TrapFrame,
}

/// What [`run`] returns through `leave_user`.
const LEFT_FOR_TRAP: u64 = 1;
/// Bytes `enter_user` keeps on the kernel stack: x19-x30, d8-d15, DAIF, padding.
const KERNEL_SAVE_SIZE: usize = 176;

/// One CPU's part in running tasks: each CPU runs its own task.
struct CpuUserState {
    /// The kernel stack pointer saved by `enter_user`, restored by `leave_user`.
    kernel_stack_pointer: AtomicU64,
    /// The context of the task that is running, where its traps are recorded.
    current: AtomicPtr<UserContext>,
    /// Set by the timer interrupt; an IRQ from EL0 with it set ends the run.
    preempt: AtomicBool,
    /// Whether this CPU's GIC interface has the timer's PPI enabled (PPIs
    /// are enabled per CPU: GICv2 banks them, GICv3 keeps them in each
    /// CPU's redistributor).
    timer_enabled: AtomicBool,
}

static PER_CPU: [CpuUserState; MAX_CPUS] = [const {
    CpuUserState {
        kernel_stack_pointer: AtomicU64::new(0),
        current: AtomicPtr::new(core::ptr::null_mut()),
        preempt: AtomicBool::new(false),
        timer_enabled: AtomicBool::new(false),
    }
}; MAX_CPUS];

fn this_cpu() -> &'static CpuUserState {
    &PER_CPU[super::cpu::cpu_index() as usize]
}

global_asm!(
    r#"
    .section .text.user, "ax"
    // enter_user(frame: *const TrapFrame, kernel_sp: *mut u64): saves the
    // kernel stack pointer in this CPU's slot; returns only through
    // leave_user.
    .global enter_user
enter_user:
    sub sp, sp, #{save}
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mrs x2, daif
    str x2, [sp, #160]
    msr daifset, #0xf
    mov x2, sp
    str x2, [x1]
    sub sp, sp, #{frame}
    mov x2, #0
1:
    add x5, x0, x2
    ldp x3, x4, [x5]
    add x6, sp, x2
    stp x3, x4, [x6]
    add x2, x2, #16
    cmp x2, #{frame}
    b.lo 1b
    b exception_return

    // leave_user(reason: u64, kernel_sp: u64) -> !: back onto the stack
    // enter_user saved.
    .global leave_user
leave_user:
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    ldr x1, [sp, #160]
    msr daif, x1
    add sp, sp, #{save}
    ret
"#,
    save = const KERNEL_SAVE_SIZE,
    frame = const core::mem::size_of::<TrapFrame>(),
);

unsafe extern "C" {
    fn enter_user(frame: *const TrapFrame, kernel_sp: *mut u64) -> u64;
    fn leave_user(reason: u64, kernel_sp: u64) -> !;
}

impl UserContext {
    /// Sets the value the program's entry receives as its first argument (x0).
    pub fn set_argument(&mut self, value: u64) {
        self.frame.x[0] = value;
    }

    /// Where the task resumes (its entry point before it first runs).
    pub fn resume_address(&self) -> u64 {
        self.frame.elr
    }

    /// A task about to start at `entry` with its stack pointer at `stack_top`.
    pub fn new(entry: u64, stack_top: u64) -> Self {
        let mut frame = TrapFrame::zeroed();
        frame.elr = entry;
        frame.spsr = SPSR_EL0T;
        frame.sp_el0 = stack_top;
        UserContext { frame }
    }

    /// The trap that ended the last [`run`].
    pub fn trap(&self) -> Trap {
        let f = &self.frame;
        let class = f.esr >> ESR_EC_SHIFT;
        // Each group of four vectors starts with its synchronous one.
        const SYNCHRONOUS: u64 = 0;
        const IRQ: u64 = 1;
        let synchronous = f.kind % 4 == SYNCHRONOUS;
        if f.kind % 4 == IRQ {
            return Trap::Preempted;
        }
        if synchronous && class == EC_SVC_AARCH64 {
            return Trap::Syscall {
                number: f.x[SYSCALL_NUMBER_REGISTER],
                args: [f.x[0], f.x[1], f.x[2], f.x[3], f.x[4], f.x[5]],
            };
        }
        let what = if !synchronous {
            "asynchronous abort (SError)"
        } else {
            match class {
                EC_UNKNOWN => "undefined instruction",
                EC_ILLEGAL_STATE => "illegal execution state",
                EC_SYSTEM_REGISTER => "system register access",
                EC_INSTRUCTION_ABORT_LOWER => "instruction abort",
                EC_PC_ALIGNMENT => "PC alignment fault",
                EC_DATA_ABORT_LOWER => "data abort",
                EC_SP_ALIGNMENT => "SP alignment fault",
                EC_BRK_AARCH64 => "breakpoint",
                _ => "synchronous exception",
            }
        };
        let has_address = synchronous
            && matches!(
                class,
                EC_INSTRUCTION_ABORT_LOWER | EC_DATA_ABORT_LOWER | EC_PC_ALIGNMENT
            );
        Trap::Fault {
            what,
            address: has_address.then_some(f.far),
            code: f.esr & ESR_ISS_MASK,
            pc: f.elr,
        }
    }

    pub fn set_syscall_result(&mut self, value: i64) {
        self.frame.x[0] = value as u64;
    }
}

/// Runs the task until its next system call or fault; the context then holds
/// its registers and [`UserContext::trap`] says what happened. The task's
/// address space must be the active one.
pub fn run(context: &mut UserContext) {
    let cpu = this_cpu();
    cpu.current.store(context, Ordering::SeqCst);
    // SAFETY: the frame's SPSR is EL0t, so the eret can only reach EL0; the
    // trap that ends the run comes back (on this CPU: exceptions are taken
    // where they happen) through leave_user onto this stack with the
    // callee-saved registers and DAIF enter_user saved.
    let reason = unsafe { enter_user(&context.frame, cpu.kernel_stack_pointer.as_ptr()) };
    debug_assert_eq!(reason, LEFT_FOR_TRAP);
    cpu.current.store(core::ptr::null_mut(), Ordering::SeqCst);
}

/// Called by the exception handler for a synchronous exception or SError from EL0.
pub fn trap_from_user(frame: &TrapFrame) -> ! {
    let cpu = this_cpu();
    let current = cpu.current.load(Ordering::SeqCst);
    assert!(
        !current.is_null(),
        "exception from EL0 with no task running"
    );
    // SAFETY: `current` is the context `run` waits on on this CPU; nothing
    // else touches it until leave_user returns there, onto the stack this
    // CPU's enter_user saved.
    unsafe {
        (*current).frame = *frame;
        leave_user(
            LEFT_FOR_TRAP,
            cpu.kernel_stack_pointer.load(Ordering::SeqCst),
        )
    }
}

/// A table descriptor (levels 0-2); access is decided by the leaf.
pub fn table_entry(phys: u64) -> u64 {
    (phys & DESC_ADDRESS_MASK) | DESC_VALID | DESC_TABLE_OR_PAGE
}

/// A level-3 page descriptor for a task page.
pub fn page_entry(phys: u64, access: Access) -> u64 {
    let mut entry = (phys & DESC_ADDRESS_MASK)
        | DESC_VALID
        | DESC_TABLE_OR_PAGE
        | ATTR_NORMAL_WB
        | SH_INNER
        | AF
        | NOT_GLOBAL
        | PXN;
    entry |= if access.write {
        AP_READ_WRITE_ANY_EL
    } else {
        AP_READ_ONLY_ANY_EL
    };
    if !access.execute {
        entry |= UXN;
    }
    entry
}

/// A level-3 page descriptor for device registers mapped into a task:
/// Device-nGnRnE (MAIR index 0 of the boot MAIR), never executable.
pub fn device_page_entry(phys: u64) -> u64 {
    (phys & DESC_ADDRESS_MASK)
        | DESC_VALID
        | DESC_TABLE_OR_PAGE
        | ATTR_DEVICE
        | AF
        | NOT_GLOBAL
        | AP_READ_WRITE_ANY_EL
        | PXN
        | UXN
}

pub fn entry_address(entry: u64) -> u64 {
    entry & DESC_ADDRESS_MASK
}

pub fn entry_present(entry: u64) -> bool {
    entry & DESC_VALID != 0
}

/// The level-0 table in use.
pub fn current_root() -> u64 {
    let ttbr: u64;
    // SAFETY: reading TTBR0_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) ttbr, options(nomem, nostack)) };
    ttbr & TTBR_ADDRESS_MASK
}

/// Makes `root` the active address space and drops every stale translation
/// (no ASIDs: the whole TLB goes).
///
/// # Safety
/// `root` must map the kernel exactly as the boot tables do.
pub unsafe fn switch_root(root: u64) {
    // SAFETY: forwarded from the caller; the barriers make the table writes
    // visible to the walker before the switch and the TLB clean after it.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "msr ttbr0_el1, {root}",
            "isb",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            root = in(reg) root,
            options(nostack),
        )
    };
}

/// Drops stale translations after a change to the active tables.
pub fn flush_tlb() {
    // SAFETY: TLB maintenance only.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            options(nostack)
        )
    };
}

/// Makes code written through the kernel's mapping visible to instruction
/// fetch at EL0 (ARM ARM B2.4.4): clean the data cache to the point of
/// unification, then invalidate the instruction cache.
pub fn sync_instruction_cache(phys: u64, len: usize) {
    let line = super::cache::data_line();
    let mut address = phys & !(line - 1);
    while address < phys + len as u64 {
        // SAFETY: cache maintenance on identity-mapped RAM the kernel owns.
        unsafe { core::arch::asm!("dc cvau, {}", in(reg) address, options(nostack)) };
        address += line;
    }
    // SAFETY: cache maintenance only.
    unsafe { core::arch::asm!("dsb ish", "ic ialluis", "dsb ish", "isb", options(nostack)) };
}

/// The EL1 virtual timer's interrupt: PPI 11, INTID 27 (Arm Base System
/// Architecture, PPI assignments; QEMU virt `ARCH_TIMER_VIRT_IRQ`).
const VIRTUAL_TIMER_INTID: u32 = 27;
/// CNTV_CTL_EL0 (ARM ARM D19.12.17): ENABLE, and IMASK to silence it.
const CNTV_CTL_ENABLE: u64 = 1 << 0;
const CNTV_CTL_IMASK: u64 = 1 << 1;

/// Whether the timer interrupt could be enabled (needs a GIC).
static PREEMPTION_TIMER: spin::Once<bool> = spin::Once::new();

fn set_timer_control(value: u64) {
    // SAFETY: writing the EL1 virtual timer's control only (de)arms it.
    unsafe { core::arch::asm!("msr cntv_ctl_el0, {}", "isb", in(reg) value, options(nostack)) };
}

fn on_timer_tick() {
    // The interrupt is level-sensitive: silence the timer before the EOI.
    set_timer_control(CNTV_CTL_IMASK);
    this_cpu().preempt.store(true, Ordering::SeqCst);
}

/// Whether this CPU can take the timer's interrupt: the handler is
/// registered once, the PPI enabled on each CPU the first time it asks.
fn preemption_timer() -> bool {
    let available = *PREEMPTION_TIMER.call_once(|| {
        set_timer_control(CNTV_CTL_IMASK);
        let enabled = crate::irq::enable_spi(VIRTUAL_TIMER_INTID, false, on_timer_tick).is_ok();
        this_cpu().timer_enabled.store(enabled, Ordering::SeqCst);
        enabled
    });
    let cpu = this_cpu();
    if available && !cpu.timer_enabled.load(Ordering::SeqCst) {
        set_timer_control(CNTV_CTL_IMASK);
        let enabled = super::gic::enable_spi(VIRTUAL_TIMER_INTID, false).is_ok();
        cpu.timer_enabled.store(enabled, Ordering::SeqCst);
        return enabled;
    }
    available
}

/// Arms a one-shot interrupt `slice_ns` from now that ends the task's run
/// (a [`Trap::Preempted`]); false when there is no timer to do it with.
pub fn arm_preemption(slice_ns: u64) -> bool {
    this_cpu().preempt.store(false, Ordering::SeqCst);
    if !preemption_timer() {
        return false;
    }
    let frequency: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) frequency, options(nomem, nostack)) };
    // CNTV_TVAL_EL0 is a signed 32-bit down-counter.
    let ticks = (u128::from(frequency) * u128::from(slice_ns) / 1_000_000_000)
        .clamp(1, i32::MAX as u128) as u64;
    // SAFETY: programming the EL1 virtual timer's countdown only.
    unsafe { core::arch::asm!("msr cntv_tval_el0, {}", in(reg) ticks, options(nostack)) };
    set_timer_control(CNTV_CTL_ENABLE);
    true
}

/// Sleeps until the next interrupt: a device's, or the timer's after about
/// `max_ms`. Without a timer it only pauses briefly, so the caller polls.
pub fn idle(max_ms: u64) {
    // IRQs stay masked from arming the one-shot timer to the WFI: a tick taken
    // in between would be silenced by `on_timer_tick` and leave the WFI waiting
    // for an interrupt that may never come. An IRQ pending while masked is
    // still a WFI wake-up event (ARM ARM, "Wait For Interrupt"), and restoring
    // the masks then takes it.
    let daif: u64;
    // SAFETY: saving the interrupt masks and masking IRQs on this CPU only
    // defers them; no `nomem`, so memory accesses stay on their side.
    unsafe { core::arch::asm!("mrs {}, daif", "msr daifset, #2", out(reg) daif, options(nostack)) };
    let armed = arm_preemption(max_ms.saturating_mul(1_000_000));
    if armed {
        // SAFETY: WFI only waits; a pending interrupt (the timer at the
        // latest) ends it.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
    // SAFETY: puts back the masks saved above; a pending interrupt is taken here.
    unsafe { core::arch::asm!("msr daif, {}", in(reg) daif, options(nostack)) };
    if armed {
        disarm_preemption();
    } else {
        os_services::Clock::relax(&crate::time::CLOCK);
    }
}

/// Whether tasks can be preempted (the timer's interrupt could be enabled).
pub fn preemption_available() -> bool {
    preemption_timer()
}

/// Stops the preemption timer.
pub fn disarm_preemption() {
    if preemption_timer() {
        set_timer_control(CNTV_CTL_IMASK);
    }
}

/// Called after an IRQ was handled: if it came from EL0 and was the
/// preemption tick, the task's run ends here.
pub fn preempt_if_due(frame: &TrapFrame) {
    if frame.kind >= FIRST_LOWER_EL_VECTOR && this_cpu().preempt.swap(false, Ordering::SeqCst) {
        trap_from_user(frame);
    }
}
