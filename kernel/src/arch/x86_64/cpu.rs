//! Which CPU is running, and what is kept per CPU to say so: the kernel's
//! index of each local APIC ID, each CPU's APIC ID (for IPIs) and
//! descriptor tables, and how each last halted (diagnostics).
//!
//! The running CPU is known by its local APIC ID, read from its own APIC:
//! ring 3 can rewrite the GS base with a segment load, not the APIC.

use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU64, Ordering};

use super::gdt::{BOOT_CPU_TABLES, CpuTables};
use super::interrupts;
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
/// How each CPU last halted: bit 63 interrupts enabled, bits 7:0 the
/// highest vector in service.
static HALTED_WITH: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The kernel's index of the running CPU (0 on the boot CPU).
pub fn cpu_index() -> usize {
    usize::from(INDEX_BY_APIC_ID[usize::from(interrupts::local_apic_id())].load(Ordering::Relaxed))
}

/// Records that the running CPU is the kernel's CPU `index` (once, at start).
pub fn set_index_of_this_apic(index: usize) {
    INDEX_BY_APIC_ID[usize::from(interrupts::local_apic_id())]
        .store(index as u8, Ordering::Relaxed);
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

/// Notes the running CPU's interrupt state just before a `hlt` (`enabled`:
/// whether interrupts will be on during it).
pub fn note_halt(enabled: bool) {
    let value = (u64::from(enabled) << 63) | u64::from(interrupts::highest_in_service());
    HALTED_WITH[cpu_index()].store(value, Ordering::Relaxed);
}

/// How CPU `cpu` last halted: whether interrupts were enabled and the
/// highest vector its local APIC had in service.
pub fn halted_with(cpu: usize) -> (bool, u8) {
    let value = HALTED_WITH[cpu].load(Ordering::Relaxed);
    (value >> 63 != 0, value as u8)
}
