//! Starting the application processors the MADT lists, with the INIT-SIPI-SIPI
//! sequence (Intel SDM Vol. 3A §8.4.4.1, "Typical BSP Initialization
//! Sequence"), and telling the CPUs apart afterwards.
//!
//! A Startup IPI starts a CPU in real mode at a page below 1 MiB, so `boot`'s
//! trampoline is copied to [`AP_TRAMPOLINE_BASE`]; its [`ApStart`] block gives
//! the CPU the boot CPU's page tables, a stack and its index. The CPU climbs to
//! long mode there and reaches [`secondary_entry`], which loads its own GDT and
//! TSS, the shared IDT, the same supervisor-mode protections as the boot CPU
//! and enables its local APIC. It then serves the scheduler
//! ([`crate::scheduler::serve_secondary_cpu`]), halted until a run is offered.
//!
//! The running CPU is known by its local APIC ID, read from its own APIC
//! (ring 3 can rewrite the GS base with a segment load, not the APIC), and
//! turned into the kernel's index through a table the CPU fills in at start.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use boot::x86_64::{AP_TRAMPOLINE_BASE, ApStart, ap_trampoline};

use super::cpu::{self, cpu_index};
use super::gdt::{self, CpuTables};
use super::interrupts::{self, Ipi};
use crate::arch::MAX_CPUS;

/// SDM §8.4.4.1: wait 10 ms after INIT, 200 µs after each Startup IPI.
const AFTER_INIT: Duration = Duration::from_millis(10);
const AFTER_STARTUP: Duration = Duration::from_micros(200);
/// How long a started CPU may take to say it is online.
const START_TIMEOUT: Duration = Duration::from_secs(1);
/// A real-mode page number is the address's bits 19:12.
const PAGE_SHIFT: u64 = 12;

/// Whether the IPIs' handlers are installed (before the first secondary CPU
/// starts).
static IPIS_READY: AtomicBool = AtomicBool::new(false);
/// Per CPU: shootdowns asked of it, and the latest one it has done. A
/// requester takes a ticket and waits until `done` reaches it.
static FLUSH_REQUESTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FLUSH_DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// How long a CPU may take to answer a shootdown, and when it is sent
/// the IPI again.
const SHOOTDOWN_TIMEOUT: Duration = Duration::from_millis(100);
const RESEND_SHOOTDOWN_AFTER: Duration = Duration::from_millis(10);
static SHOOTDOWNS_RESENT: AtomicUsize = AtomicUsize::new(0);

/// Why a CPU did not start.
pub enum StartError {
    /// The local APIC did not send an IPI to this APIC ID.
    NotSent { apic_id: u8 },
    /// The CPU was sent INIT-SIPI-SIPI but never said it was online.
    Silent { apic_id: u8 },
    /// The boot CPU's page tables are above 4 GiB, out of the trampoline's reach.
    TablesTooHigh,
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartError::NotSent { apic_id } => {
                write!(f, "the local APIC did not send an IPI to APIC ID {apic_id}")
            }
            StartError::Silent { apic_id } => {
                write!(f, "the CPU with APIC ID {apic_id} never came online")
            }
            StartError::TablesTooHigh => write!(f, "the page tables lie above 4 GiB"),
        }
    }
}

/// Starts every CPU in `apic_ids` other than this one, one at a time,
/// waiting (bounded) for each; stops at the first that does not come
/// online. At most [`MAX_CPUS`] CPUs run, each with an APIC ID below 256;
/// the rest are reported and left.
pub fn start_secondary_cpus(apic_ids: &[u64]) -> Result<(), StartError> {
    let own = interrupts::local_apic_id();
    cpu::set_apic_id(0, own);
    cpu::choose_identity();
    // The reschedule IPI only has to interrupt a halted CPU: its handler
    // has nothing to do.
    crate::irq::install_system_vector(interrupts::RESCHEDULE_VECTOR, || {});
    crate::irq::install_system_vector(interrupts::SHOOTDOWN_VECTOR, on_shootdown);
    IPIS_READY.store(true, Ordering::Release);
    // APIC IDs are 8 bits wide in the kernel (and in the MSI and IRTE
    // destinations it writes): a CPU above them is left, and said so.
    let mut others: Vec<u8> = apic_ids
        .iter()
        .filter_map(|&id| u8::try_from(id).ok())
        .collect();
    let beyond = apic_ids.len() - others.len();
    if beyond > 0 {
        println!("smp: {beyond} CPUs have APIC IDs above 255; the kernel leaves them");
    }
    others.retain(|&id| id != own);
    if others.is_empty() {
        return Ok(());
    }
    crate::arch::report_cpus_left(others.len());
    let cr3 = x86_64::registers::control::Cr3::read_raw()
        .0
        .start_address()
        .as_u64();
    if cr3 > u64::from(u32::MAX) {
        return Err(StartError::TablesTooHigh);
    }
    let (code, params_offset) = ap_trampoline();
    let page = AP_TRAMPOLINE_BASE as *mut u8;
    // SAFETY: the trampoline page lies in the first MiB, which the frame
    // allocator never hands out and the identity map covers writable; no
    // CPU runs there now (the previous one left it before saying online).
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), page, code.len()) };
    let start = page.wrapping_add(params_offset).cast::<ApStart>();
    for apic_id in others.into_iter().take(MAX_CPUS - 1) {
        let index = crate::arch::online_cpus();
        // The tables stay for the CPU's lifetime: leaked.
        let stack_top = crate::arch::alloc_cpu_stack(index);
        let tables: &'static mut CpuTables = Box::leak(Box::new(CpuTables::new()));
        cpu::set_tables(index, tables);
        cpu::set_apic_id(index, apic_id);
        // SAFETY: `start` is the trampoline's parameter block (aligned: the
        // trampoline is 16-aligned and the block 8-aligned in it); no other
        // CPU reads it until the IPIs below.
        unsafe {
            start.write(ApStart {
                cr3,
                stack_top,
                cpu_index: index as u64,
                online: AtomicU64::new(0),
            });
        }
        // SAFETY: as above; the block was just written and stays put.
        let start = unsafe { &*start };
        wake(apic_id, start)?;
        crate::arch::count_online_cpu();
    }
    Ok(())
}

/// INIT, then up to two Startup IPIs (the second only if the first did not
/// start the CPU, as SDM §8.4.4.1 and Linux's `wakeup_secondary_cpu_via_init`
/// allow), then waits for `start.online`.
fn wake(apic_id: u8, start: &ApStart) -> Result<(), StartError> {
    let started = || (start.online.load(Ordering::Acquire) != 0).then_some(());
    let pause = |how_long: Duration| {
        let _ = os_services::wait_until(&crate::time::CLOCK, how_long, || None::<()>);
    };
    if !interrupts::send_ipi(apic_id, Ipi::Init) {
        return Err(StartError::NotSent { apic_id });
    }
    pause(AFTER_INIT);
    let page = (AP_TRAMPOLINE_BASE >> PAGE_SHIFT) as u8;
    for _ in 0..2 {
        if !interrupts::send_ipi(apic_id, Ipi::Startup { page }) {
            return Err(StartError::NotSent { apic_id });
        }
        pause(AFTER_STARTUP);
        if started().is_some() {
            return Ok(());
        }
    }
    os_services::wait_until(&crate::time::CLOCK, START_TIMEOUT, started)
        .map_err(|_| StartError::Silent { apic_id })
}

/// Called by the trampoline in long mode with this CPU's stack, interrupts
/// off and the boot CPU's page tables.
#[unsafe(no_mangle)]
extern "C" fn secondary_entry(start: &ApStart) -> ! {
    let index = start.cpu_index as usize;
    cpu::set_index_of_this_cpu(index);
    gdt::init(cpu::tables_of(index));
    super::exceptions::load();
    // The same protections as the boot CPU (CR4 is per CPU).
    super::hardening::protect_user_memory();
    start.online.store(1, Ordering::Release);
    interrupts::init_this_cpu();
    crate::scheduler::serve_secondary_cpu()
}

/// Sends the reschedule IPI to the CPU with kernel index `cpu`: it wakes
/// from `hlt` and looks for work.
pub fn wake_cpu(cpu: usize) {
    interrupts::send_ipi(
        cpu::apic_id_of(cpu),
        Ipi::Fixed {
            vector: interrupts::RESCHEDULE_VECTOR,
        },
    );
}

/// The shootdown IPI's handler: notes which request it serves, flushes this
/// CPU's TLB (a CR3 reload: every non-global entry, and the kernel maps
/// nothing global), then says so. A request made after the note gets an IPI
/// of its own.
fn on_shootdown() {
    let cpu = cpu_index();
    let serving = FLUSH_REQUESTED[cpu].load(Ordering::Acquire);
    x86_64::instructions::tlb::flush_all();
    FLUSH_DONE[cpu].fetch_max(serving, Ordering::Release);
}

/// Drops every CPU's cached translations: this CPU's directly, the others'
/// through the shootdown IPI, waiting (bounded) until each has flushed. x86
/// TLBs are per CPU and not kept coherent with the page tables (SDM Vol. 3A
/// §4.10.5: the initiating processor must have the others invalidate).
/// Runs with interrupts enabled, so two CPUs shooting at each other both
/// answer. Errs with the index of a CPU that did not answer.
pub fn flush_tlb_all_cpus() -> Result<(), usize> {
    x86_64::instructions::tlb::flush_all();
    if !IPIS_READY.load(Ordering::Acquire) {
        return Ok(());
    }
    let own = cpu_index();
    let shoot = |cpu: usize| {
        interrupts::send_ipi(
            cpu::apic_id_of(cpu),
            Ipi::Fixed {
                vector: interrupts::SHOOTDOWN_VECTOR,
            },
        )
    };
    let mut tickets = [0; MAX_CPUS];
    for cpu in (0..crate::arch::online_cpus()).filter(|&cpu| cpu != own) {
        tickets[cpu] = FLUSH_REQUESTED[cpu].fetch_add(1, Ordering::AcqRel) + 1;
        shoot(cpu);
    }
    for cpu in (0..crate::arch::online_cpus()).filter(|&cpu| cpu != own) {
        let answered = || (FLUSH_DONE[cpu].load(Ordering::Acquire) >= tickets[cpu]).then_some(());
        if os_services::wait_until(&crate::time::CLOCK, RESEND_SHOOTDOWN_AFTER, answered).is_ok() {
            continue;
        }
        // An IPI cannot get lost on hardware, but an ICR write could under
        // QEMU's multi-threaded TCG (QEMU.md §6); a second one is harmless:
        // the answer is a ticket, and a flush more costs a refill.
        SHOOTDOWNS_RESENT.fetch_add(1, Ordering::Relaxed);
        shoot(cpu);
        os_services::wait_until(
            &crate::time::CLOCK,
            SHOOTDOWN_TIMEOUT - RESEND_SHOOTDOWN_AFTER,
            answered,
        )
        .map_err(|_| cpu)?;
    }
    Ok(())
}

/// Shootdown IPIs sent a second time since boot (the first got no answer
/// within [`RESEND_SHOOTDOWN_AFTER`]).
pub fn shootdowns_resent() -> usize {
    SHOOTDOWNS_RESENT.load(Ordering::Relaxed)
}

/// How many shootdowns CPU `cpu` has done (tests).
pub fn shootdowns_done(cpu: usize) -> u64 {
    FLUSH_DONE[cpu].load(Ordering::Acquire)
}

/// Halts this CPU until an interrupt unless `ready` holds. The check runs
/// with interrupts off and `sti; hlt` ends it: `sti` takes effect after the
/// next instruction (SDM Vol. 2B, STI), so a wake-up IPI that arrives after
/// the check still ends the `hlt` instead of being taken before it.
pub fn sleep_unless(ready: impl Fn() -> bool) {
    x86_64::instructions::interrupts::disable();
    if ready() {
        x86_64::instructions::interrupts::enable();
    } else {
        // `sti; hlt` below: halted with interrupts on.
        interrupts::note_halt(true);
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}
