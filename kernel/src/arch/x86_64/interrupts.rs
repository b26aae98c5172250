//! The local APIC (Intel SDM Vol. 3A §11) and MSI message composition.
//! The legacy 8259 PICs are masked: every interrupt the kernel uses is an MSI
//! (edu, the VT-d fault event, AMD-Vi's own MSI).
//!
//! Where the CPU has it, the APIC runs in x2APIC mode (SDM §11.12): its
//! registers are MSRs, read and written by RDMSR/WRMSR, the IPI command is
//! one 64-bit write. Linux prefers it too; here it also takes the APIC off
//! QEMU's multi-threaded TCG MMIO path, which now and then lost an access
//! (QEMU.md §6): QEMU serves these MSRs in the vCPU's own thread. Otherwise
//! the xAPIC page is used through MMIO.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use os_services::mmio::{Mmio, Reg32};
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

use crate::arch::MAX_CPUS;

/// IA32_APIC_BASE MSR (SDM Vol. 3A §11.4.4): base address in bits 12..51,
/// bit 10 EXTD (x2APIC mode, §11.12.1), bit 11 EN (the APIC is enabled).
const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
const APIC_BASE_X2APIC_MODE: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
/// CPUID.01H:ECX bit 21: the CPU has x2APIC mode.
const CPUID_X2APIC: u32 = 1 << 21;
/// x2APIC registers (SDM §11.12.1.2, Table 11-6): MSR 0x800 plus the xAPIC
/// register's offset divided by 16.
const X2APIC_MSR_BASE: u32 = 0x800;
const X2APIC_REGISTER_STRIDE: usize = 0x10;
/// The x2APIC ICR (§11.12.9): one 64-bit MSR, the destination's x2APIC ID
/// in bits 63:32, no delivery-status bit (an IPI is sent when WRMSR
/// retires).
const X2APIC_ICR: u32 = 0x830;
const X2APIC_ICR_DESTINATION_SHIFT: u32 = 32;
const APIC_REGISTER_BLOCK: usize = 0x1000;
/// Local APIC registers (SDM Vol. 3A Table 11-1).
const LAPIC_ID: Reg32 = Reg32(0x020);
const LAPIC_TPR: Reg32 = Reg32(0x080);
const LAPIC_EOI: Reg32 = Reg32(0x0B0);
const LAPIC_SVR: Reg32 = Reg32(0x0F0);
/// Interrupt Command Register (SDM Vol. 3A §11.6.1): writing the low half
/// sends the IPI the two halves describe.
const LAPIC_ICR_LOW: Reg32 = Reg32(0x300);
const LAPIC_ICR_HIGH: Reg32 = Reg32(0x310);
/// ICR high bits 31:24: the destination's APIC ID.
const ICR_DESTINATION_SHIFT: u32 = 24;
/// ICR low: delivery mode bits 10:8 (Fixed 000, INIT 101, Start Up 110),
/// bit 12 delivery status (1 while the IPI is pending), bit 14 level
/// (1 = assert; INIT and Start Up need it).
const ICR_DELIVERY_FIXED: u32 = 0b000 << 8;
const ICR_DELIVERY_INIT: u32 = 0b101 << 8;
const ICR_DELIVERY_STARTUP: u32 = 0b110 << 8;
const ICR_SEND_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
/// In-Service Register: eight 32-bit registers 16 bytes apart, bit `v % 32`
/// of register `v / 32` set while vector `v` is being serviced.
const LAPIC_ISR_BASE: usize = 0x100;
const LAPIC_ISR_STRIDE: usize = 0x10;
/// SVR bit 8: APIC software enable.
const SVR_APIC_ENABLE: u32 = 1 << 8;
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// The inter-processor interrupts' vectors: in the top priority class
/// (0xF0-0xFF; SDM §11.8.3.1: a vector's class is its upper four bits, and a
/// local APIC delivers nothing of a class at or below the one in service),
/// above every device vector, so a storm of device interrupts cannot starve
/// a TLB shootdown. Linux puts its system vectors there too
/// (`arch/x86/include/asm/irq_vectors.h`).
pub const SHOOTDOWN_VECTOR: u8 = 0xFC;
pub const RESCHEDULE_VECTOR: u8 = 0xFD;
const LAPIC_ID_SHIFT: u32 = 24;

/// MSI address format (SDM Vol. 3A §11.11.1): 0xFEEx_xxxx with the
/// destination APIC ID in bits 19:12; data bits 7:0 carry the vector, with
/// fixed delivery and edge trigger when the upper bits are zero.
const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;
const MSI_DESTINATION_SHIFT: u64 = 12;

/// 8259A command/data ports; 0xFF masks all lines.
const PIC1_DATA: u16 = 0x21;
const PIC2_DATA: u16 = 0xA1;

struct Lapic(Mmio);

// SAFETY: every CPU sees its own local APIC at the same address; its
// registers are accessed with single 32-bit volatile operations, and the one
// two-register sequence (the ICR's halves in `send_ipi`) runs with this
// CPU's interrupts off, on this CPU's own ICR.
unsafe impl Sync for Lapic {}
// SAFETY: as above.
unsafe impl Send for Lapic {}

static LAPIC: spin::Once<Lapic> = spin::Once::new();

/// Every CPU runs its APIC in x2APIC mode (set by the boot CPU before it
/// switches its own; each CPU switches first thing when it sets its APIC up).
static X2APIC: AtomicBool = AtomicBool::new(false);
/// The boot CPU's APIC is set up: interrupts can be in service.
static APIC_READY: AtomicBool = AtomicBool::new(false);

/// Whether the APICs run in x2APIC mode.
pub fn x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

/// Reads the running CPU's APIC register `reg` (its xAPIC offset).
pub(super) fn apic_read(reg: Reg32) -> u32 {
    if x2apic() {
        // SAFETY: in x2APIC mode every register of Table 11-6 that the
        // kernel reads is an MSR; reading one has no side effect.
        unsafe { Msr::new(x2apic_msr(reg)).read() as u32 }
    } else {
        lapic().read32(reg)
    }
}

/// Writes `value` to the running CPU's APIC register `reg`.
pub(super) fn apic_write(reg: Reg32, value: u32) {
    if x2apic() {
        // SAFETY: as in `apic_read`; the registers written (TPR, SVR, EOI
        // with 0, the timer's) take a 32-bit value in the MSR's low half.
        unsafe { Msr::new(x2apic_msr(reg)).write(u64::from(value)) }
    } else {
        lapic().write32(reg, value);
    }
}

fn x2apic_msr(reg: Reg32) -> u32 {
    X2APIC_MSR_BASE + (reg.0 / X2APIC_REGISTER_STRIDE) as u32
}

/// The running CPU's local APIC page (xAPIC mode; every CPU finds its own at
/// the address IA32_APIC_BASE gives, the same on all of them).
fn lapic() -> &'static Mmio {
    &LAPIC
        .call_once(|| {
            // SAFETY: reading IA32_APIC_BASE has no side effects.
            let base = unsafe { Msr::new(IA32_APIC_BASE).read() } & APIC_BASE_ADDRESS_MASK;
            // SAFETY: the APIC page (0xFEE0_0000 on q35) lies in the identity
            // map's uncached part and is used only through this Mmio.
            Lapic(unsafe {
                Mmio::new(
                    NonNull::new(base as *mut u8).expect("APIC base 0"),
                    APIC_REGISTER_BLOCK,
                )
            })
        })
        .0
}

/// Masks the legacy PICs, then readies this CPU's local APIC and enables
/// interrupts: on the boot CPU once the interrupt handlers are in place.
pub fn init() {
    // SAFETY: masking the legacy PICs only stops their (unused) interrupts.
    unsafe {
        Port::<u8>::new(PIC1_DATA).write(0xFF);
        Port::<u8>::new(PIC2_DATA).write(0xFF);
    }
    // Every CPU of a machine has the same features; the boot CPU decides.
    let leaf = core::arch::x86_64::__cpuid(1);
    X2APIC.store(leaf.ecx & CPUID_X2APIC != 0, Ordering::Relaxed);
    init_this_cpu();
    APIC_READY.store(true, Ordering::Release);
}

/// Enables the running CPU's local APIC (in x2APIC mode where the CPUs
/// have it), accepting every priority, and interrupts on it.
pub fn init_this_cpu() {
    if x2apic() {
        let mut base = Msr::new(IA32_APIC_BASE);
        // SAFETY: SDM §11.12.5: xAPIC (EN = 1, EXTD = 0) to x2APIC (both 1)
        // is a valid transition; the address bits are kept. Nothing on this
        // CPU has used the APIC yet, and nothing reaches it through the
        // xAPIC page from here on.
        unsafe {
            let value = base.read();
            base.write(value | APIC_BASE_ENABLE | APIC_BASE_X2APIC_MODE);
        }
    }
    apic_write(LAPIC_TPR, 0);
    apic_write(LAPIC_SVR, SVR_APIC_ENABLE | u32::from(SPURIOUS_VECTOR));
    x86_64::instructions::interrupts::enable();
}

/// The running CPU's local APIC ID (SDM Vol. 3A §11.4.6; in x2APIC mode
/// the whole register, §11.12.5.1): read from its own APIC, which ring 3
/// cannot change, so it tells the CPU apart safely.
pub fn local_apic_id() -> u8 {
    let id = apic_read(LAPIC_ID);
    if x2apic() {
        id as u8
    } else {
        (id >> LAPIC_ID_SHIFT) as u8
    }
}

/// An inter-processor interrupt the kernel sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipi {
    /// INIT (SDM Vol. 3A §8.4.4.1: puts the CPU in wait-for-SIPI).
    Init,
    /// Start Up at real-mode page `page` (CS = page << 8, IP = 0).
    Startup { page: u8 },
    /// An ordinary interrupt with `vector`.
    Fixed { vector: u8 },
}

/// Sends `ipi` to the CPU whose local APIC ID is `apic_id` and waits (bounded)
/// until the local APIC has sent it; false if it stayed pending.
pub fn send_ipi(apic_id: u8, ipi: Ipi) -> bool {
    let command = match ipi {
        Ipi::Init => ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT,
        Ipi::Startup { page } => ICR_DELIVERY_STARTUP | ICR_LEVEL_ASSERT | u32::from(page),
        Ipi::Fixed { vector } => ICR_DELIVERY_FIXED | ICR_LEVEL_ASSERT | u32::from(vector),
    };
    if x2apic() {
        let icr = (u64::from(apic_id) << X2APIC_ICR_DESTINATION_SHIFT) | u64::from(command);
        // SAFETY: one write of the running CPU's ICR sends the IPI it
        // describes (§11.12.9); the kernel chooses what it sends.
        unsafe { Msr::new(X2APIC_ICR).write(icr) };
        return true;
    }
    let lapic = lapic();
    // The two halves must describe one IPI. Each CPU writes only its own
    // ICR, so keeping a handler on this CPU from sending in between is all
    // it takes: interrupts off, no lock.
    x86_64::instructions::interrupts::without_interrupts(|| {
        lapic.write32(LAPIC_ICR_HIGH, u32::from(apic_id) << ICR_DESTINATION_SHIFT);
        lapic.write32(LAPIC_ICR_LOW, command);
        os_services::wait_until(&crate::time::CLOCK, ICR_SEND_TIMEOUT, || {
            (lapic.read32(LAPIC_ICR_LOW) & ICR_SEND_PENDING == 0).then_some(())
        })
        .is_ok()
    })
}

/// How long a local APIC may take to send an IPI.
const ICR_SEND_TIMEOUT: core::time::Duration = core::time::Duration::from_millis(10);

/// Called from the interrupt stubs for vectors 32..=255.
pub fn dispatch(vector: u8) {
    // A spurious interrupt must not be acknowledged (SDM §11.9); it never
    // sets its in-service bit. A device's message with the spurious vector
    // does, and left unacknowledged it would block every interrupt.
    if vector == SPURIOUS_VECTOR && !in_service(vector) {
        return;
    }
    crate::irq::handle(u32::from(vector));
    end_of_interrupt(vector);
}

/// Whether the local APIC is servicing `vector` (its ISR bit, SDM §11.8.4):
/// set for an interrupt it delivered, never for an exception or an `int n`.
/// Before the APIC is set up nothing is in service.
pub fn in_service(vector: u8) -> bool {
    APIC_READY.load(Ordering::Acquire)
        && apic_read(isr_register(vector / 32)) & (1 << (vector % 32)) != 0
}

/// In-Service Register `index` (0-7): vectors `32 * index` to `32 * index + 31`.
fn isr_register(index: u8) -> Reg32 {
    Reg32(LAPIC_ISR_BASE + usize::from(index) * LAPIC_ISR_STRIDE)
}

/// The highest vector in service on this CPU's local APIC (0: none), for
/// diagnostics: one left in service blocks every vector of its priority
/// class and below (SDM §11.8.3.1).
pub fn highest_in_service() -> u8 {
    (0..8u8)
        .rev()
        .find_map(|register| {
            let bits = apic_read(isr_register(register));
            (bits != 0).then(|| register * 32 + (31 - bits.leading_zeros()) as u8)
        })
        .unwrap_or(0)
}

/// Ends `vector`, the interrupt just served (SDM §11.8.5: an EOI ends the
/// highest-priority one in service, which it is once every interrupt that
/// nested in it has ended), and makes sure it did.
///
/// A vector left in service blocks its whole priority class for good
/// (SDM §11.8.3.1): on QEMU's multi-threaded TCG an EOI write was now and
/// then lost (QEMU.md §6), the CPU then stopped taking the timer and IPIs.
/// The in-service bit is read back and the EOI repeated while it stays set
/// (a lost read returns 0, which never repeats an EOI that took effect).
pub fn end_of_interrupt(vector: u8) {
    apic_write(LAPIC_EOI, 0);
    for _ in 0..EOI_REPEATS {
        if !in_service(vector) {
            return;
        }
        EOIS_REPEATED.fetch_add(1, Ordering::Relaxed);
        apic_write(LAPIC_EOI, 0);
    }
}

/// How often an EOI is repeated while its vector stays in service.
const EOI_REPEATS: usize = 3;
static EOIS_REPEATED: AtomicUsize = AtomicUsize::new(0);

/// EOI writes repeated since boot because the first did not take effect.
pub fn eois_repeated() -> usize {
    EOIS_REPEATED.load(Ordering::Relaxed)
}

/// The MSI (address, data) that delivers `vector` to the boot CPU, where
/// device interrupts go whichever CPU sets the device up.
pub fn msi_message(vector: u8) -> (u64, u32) {
    let apic_id = u64::from(super::cpu::apic_id_of(0));
    (
        MSI_ADDRESS_BASE | (apic_id << MSI_DESTINATION_SHIFT),
        u32::from(vector),
    )
}

/// Interrupt numbers the kernel may hand out: above the exceptions, below
/// the spurious vector.
pub const ALLOCATABLE: core::ops::Range<u32> = 0x30..0xF0;

/// How each CPU last halted: bit 63 interrupts enabled, bits 7:0 the
/// highest vector in service.
static HALTED_WITH: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Notes the running CPU's interrupt state just before a `hlt` (`enabled`:
/// whether interrupts will be on during it).
pub fn note_halt(enabled: bool) {
    let value = (u64::from(enabled) << 63) | u64::from(highest_in_service());
    HALTED_WITH[super::cpu::cpu_index()].store(value, Ordering::Relaxed);
}

/// How CPU `cpu` last halted: whether interrupts were enabled and the
/// highest vector its local APIC had in service.
pub fn halted_with(cpu: usize) -> (bool, u8) {
    let value = HALTED_WITH[cpu].load(Ordering::Relaxed);
    (value >> 63 != 0, value as u8)
}
