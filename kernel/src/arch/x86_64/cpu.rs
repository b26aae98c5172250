//! Which CPU is running, and what is kept per CPU to say so: the kernel's
//! index of each local APIC ID, each CPU's APIC ID (for IPIs) and
//! descriptor tables.
//!
//! The running CPU is known by IA32_TSC_AUX, which each CPU sets to its
//! index when it starts and reads back with RDPID (or RDMSR): ring 3 can
//! read it but not write it, and can rewrite the GS base with a segment
//! load, so the kernel does not trust GS. A CPU with neither RDPID nor
//! RDTSCP (whose MSR TSC_AUX is) falls back to its initial APIC ID (CPUID).
//! Not the APIC first: under QEMU's multi-threaded TCG an MMIO access now
//! and then fails silently, and a local APIC ID read as 0 made a secondary
//! CPU take the boot CPU's slots (QEMU.md §6).

use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use x86_64::registers::model_specific::Msr;

use super::gdt::{BOOT_CPU_TABLES, CpuTables};
use crate::arch::MAX_CPUS;

/// Local APIC IDs are 8 bits in xAPIC mode.
const APIC_IDS: usize = 256;

/// The kernel's index of each local APIC ID that runs kernel code (the boot
/// CPU's stays 0, the value every entry starts with).
static INDEX_BY_APIC_ID: [AtomicU8; APIC_IDS] = [const { AtomicU8::new(0) }; APIC_IDS];
/// Each CPU's local APIC ID, by the kernel's index, for IPIs.
static APIC_ID_BY_INDEX: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
/// Each secondary CPU's descriptor tables (index 0 is [`BOOT_CPU_TABLES`]).
static TABLES: [AtomicPtr<CpuTables>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// IA32_TSC_AUX (SDM Vol. 4 Table 2-2, MSR C000_0103H): what RDPID and
/// RDTSCP return; only ring 0 writes it. Zero after reset.
const IA32_TSC_AUX: u32 = 0xC000_0103;
/// CPUID.(EAX=07H, ECX=0):ECX bit 22: RDPID (SDM Vol. 2A, CPUID).
const CPUID_ECX_RDPID: u32 = 1 << 22;
/// CPUID.80000001H:EDX bit 27: RDTSCP, and with it IA32_TSC_AUX.
const CPUID_EXTENDED_FEATURES: u32 = 0x8000_0001;
const CPUID_EDX_RDTSCP: u32 = 1 << 27;

/// How [`cpu_index`] asks: by local APIC ID until [`choose_identity`] ran.
static IDENTITY: AtomicU8 = AtomicU8::new(Identity::ApicId as u8);

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Identity {
    ApicId,
    Rdpid,
    TscAuxMsr,
}

impl Identity {
    /// The one [`choose_identity`] picked (the APIC ID before it ran).
    fn chosen() -> Identity {
        match IDENTITY.load(Ordering::Relaxed) {
            value if value == Identity::Rdpid as u8 => Identity::Rdpid,
            value if value == Identity::TscAuxMsr as u8 => Identity::TscAuxMsr,
            _ => Identity::ApicId,
        }
    }
}

/// The kernel's index of the running CPU (0 on the boot CPU).
pub fn cpu_index() -> usize {
    match Identity::chosen() {
        Identity::Rdpid => {
            let index: u64;
            // SAFETY: RDPID only reads IA32_TSC_AUX; CPUID said it exists.
            unsafe {
                core::arch::asm!("rdpid {}", out(reg) index, options(nomem, nostack, preserves_flags))
            };
            index as usize
        }
        // SAFETY: reading IA32_TSC_AUX, which CPUID said exists, has no side effect.
        Identity::TscAuxMsr => unsafe { Msr::new(IA32_TSC_AUX).read() as usize },
        Identity::ApicId => INDEX_BY_APIC_ID[initial_apic_id()].load(Ordering::Relaxed) as usize,
    }
}

/// Picks how CPUs tell themselves apart, on the boot CPU before any other
/// starts: IA32_TSC_AUX where the CPU has it (its value 0, the boot CPU's
/// index, is written first).
pub fn choose_identity() {
    let structured = super::cpuid(super::CPUID_STRUCTURED_FEATURES, 0).map_or(0, |leaf| leaf.ecx);
    let extended = super::cpuid(CPUID_EXTENDED_FEATURES, 0).map_or(0, |leaf| leaf.edx);
    let identity = if structured & CPUID_ECX_RDPID != 0 {
        Identity::Rdpid
    } else if extended & CPUID_EDX_RDTSCP != 0 {
        Identity::TscAuxMsr
    } else {
        Identity::ApicId
    };
    if identity != Identity::ApicId {
        write_tsc_aux(0);
    }
    IDENTITY.store(identity as u8, Ordering::Relaxed);
}

/// How CPUs tell themselves apart, for the boot log and tests.
pub fn identity_source() -> &'static str {
    match Identity::chosen() {
        Identity::Rdpid => "RDPID",
        Identity::TscAuxMsr => "IA32_TSC_AUX",
        Identity::ApicId => "initial APIC ID",
    }
}

/// Records that the running CPU is the kernel's CPU `index`: called first
/// thing on a secondary CPU, before anything asks [`cpu_index`].
pub fn set_index_of_this_cpu(index: usize) {
    if Identity::chosen() != Identity::ApicId {
        write_tsc_aux(index as u64);
    }
    INDEX_BY_APIC_ID[initial_apic_id()].store(index as u8, Ordering::Relaxed);
}

/// The running CPU's initial APIC ID, from CPUID rather than its APIC's
/// registers (see the module comment); the kernel never changes APIC IDs.
fn initial_apic_id() -> usize {
    super::boot_cpu_id() as usize
}

fn write_tsc_aux(value: u64) {
    // SAFETY: IA32_TSC_AUX exists (CPUID, checked by the caller) and holds
    // only the value RDPID/RDTSCP return; nothing else depends on it.
    unsafe { Msr::new(IA32_TSC_AUX).write(value) };
}

/// The local APIC ID of the kernel's CPU `index`.
pub fn apic_id_of(index: usize) -> u8 {
    APIC_ID_BY_INDEX[index].load(Ordering::Relaxed)
}

pub fn set_apic_id(index: usize, apic_id: u8) {
    APIC_ID_BY_INDEX[index].store(apic_id, Ordering::Relaxed);
}

/// CPU `index`'s descriptor tables.
pub fn tables_of(index: usize) -> &'static CpuTables {
    let tables = TABLES[index].load(Ordering::Acquire);
    if tables.is_null() {
        &BOOT_CPU_TABLES
    } else {
        // SAFETY: non-null entries point to leaked, never-freed tables.
        unsafe { &*tables }
    }
}

pub fn set_tables(index: usize, tables: &'static mut CpuTables) {
    TABLES[index].store(tables, Ordering::Release);
}
