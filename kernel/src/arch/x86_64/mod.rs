//! x86_64 (q35): PVH hand-off, COM1 console, IDT, TSC clock, exit through
//! ACPI S5 (status 0) or isa-debug-exit (non-zero).

mod cpu;
mod exceptions;
mod exit;
mod gdt;
mod hardening;
pub mod interrupts;
mod smp;
mod time;
mod trap_frame;
pub mod user;

use core::sync::atomic::{AtomicU16, Ordering};

use boot::pvh::{MEMMAP_TYPE_RAM, MemmapEntry, START_INFO_MAGIC, StartInfo};

use crate::boot_info::{BootInfo, FirmwareTables, MemoryRegion};

pub use exceptions::{
    breakpoint, breakpoints_seen, stray_interrupts, undefined_instruction,
    undefined_instructions_seen,
};
pub use exit::exit;
pub use hardening::protect_user_memory;
pub use time::now_ns;

/// The console: COM1, a 16550 at I/O port 0x3F8.
pub type Serial = uart_16550::Uart16550Tty<uart_16550::backend::PioBackend>;
const COM1: u16 = 0x3F8;

/// Name printed in reports.
pub const ARCH_NAME: &str = "x86_64";

/// The running CPU's initial APIC ID (CPUID leaf 1, EBX bits 31:24), the id
/// the MADT lists it by.
pub fn boot_cpu_id() -> u64 {
    // CPUID is unprivileged and side-effect free; leaf 1 exists on every
    // x86-64 CPU.
    let leaf = core::arch::x86_64::__cpuid(1);
    u64::from(leaf.ebx >> 24)
}

/// CPUID.(EAX=07H, ECX=0): the structured extended feature flags.
const CPUID_STRUCTURED_FEATURES: u32 = 7;
/// The first extended CPUID leaf: its EAX is the highest extended leaf.
const CPUID_EXTENDED_BASE: u32 = 0x8000_0000;

/// CPUID leaf `leaf`, sub-leaf `subleaf`, if the CPU has that leaf: a leaf
/// above the highest of its range (basic, from leaf 0's EAX; extended, from
/// leaf 8000_0000H's) answers with another leaf's data, not zeros (SDM
/// Vol. 2A, CPUID).
fn cpuid(leaf: u32, subleaf: u32) -> Option<core::arch::x86_64::CpuidResult> {
    let range_base = leaf & CPUID_EXTENDED_BASE;
    // CPUID is unprivileged and side-effect free.
    let highest = core::arch::x86_64::__cpuid(range_base).eax;
    (leaf <= highest).then(|| core::arch::x86_64::__cpuid_count(leaf, subleaf))
}

/// ACPI fixed-hardware ports the FADT tells us (defaults: q35 with SeaBIOS,
/// PM base 0x600). Set by platform discovery before they are needed.
static PM1A_CONTROL_PORT: AtomicU16 = AtomicU16::new(0x604);
static PM_TIMER_PORT: AtomicU16 = AtomicU16::new(0x608);

/// Records the ACPI PM1a control and PM timer ports from the FADT.
pub fn set_acpi_ports(pm1a_control: Option<u16>, pm_timer: Option<u16>) {
    if let Some(port) = pm1a_control {
        PM1A_CONTROL_PORT.store(port, Ordering::Relaxed);
    }
    if let Some(port) = pm_timer {
        PM_TIMER_PORT.store(port, Ordering::Relaxed);
    }
}

/// Storage for the command line: the PVH copy lives in low memory that the
/// kernel may reuse.
static CMDLINE: spin::Once<heapless::String<1024>> = spin::Once::new();

/// Called by `boot`'s PVH entry code in long mode with the start_info address.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(start_info: u64) -> ! {
    // SAFETY: COM1 exists on q35 and nothing else drives it.
    let serial = unsafe { Serial::new_port(COM1, uart_16550::Config::default()) };
    if let Ok(serial) = serial {
        crate::console::init(serial);
    }
    gdt::init(&gdt::BOOT_CPU_TABLES);
    exceptions::init();
    crate::memory::init_heap();
    let boot = boot_info_from_pvh(start_info);
    crate::kernel_main(boot)
}

fn boot_info_from_pvh(start_info_phys: u64) -> BootInfo {
    // SAFETY: the PVH loader passes the physical address of a valid
    // hvm_start_info; the low 4 GiB are identity-mapped and nothing has
    // been allocated over it yet.
    let start_info = unsafe { core::ptr::read_unaligned(start_info_phys as *const StartInfo) };
    assert_eq!(start_info.magic, START_INFO_MAGIC, "not booted through PVH");
    assert!(
        start_info.version >= 1,
        "PVH start_info version 0 has no memory map"
    );

    let mut ram = heapless::Vec::new();
    for index in 0..start_info.memmap_entries as usize {
        let entry_addr =
            start_info.memmap_paddr + (index * core::mem::size_of::<MemmapEntry>()) as u64;
        // SAFETY: memmap_entries entries follow memmap_paddr (PVH protocol).
        let entry = unsafe { core::ptr::read_unaligned(entry_addr as *const MemmapEntry) };
        if entry.kind == MEMMAP_TYPE_RAM
            && ram
                .push(MemoryRegion {
                    base: entry.addr,
                    size: entry.size,
                })
                .is_err()
        {
            println!(
                "boot: more than {} RAM ranges; ignoring the rest",
                ram.capacity()
            );
        }
    }

    let cmdline = CMDLINE.call_once(|| {
        let mut text = heapless::String::new();
        if start_info.cmdline_paddr != 0 {
            // SAFETY: the loader stores a NUL-terminated string there.
            let raw = unsafe {
                core::ffi::CStr::from_ptr(start_info.cmdline_paddr as *const core::ffi::c_char)
            };
            for ch in raw.to_str().unwrap_or("").chars() {
                if text.push(ch).is_err() {
                    break;
                }
            }
        }
        text
    });

    BootInfo {
        ram,
        reserved: heapless::Vec::new(),
        cmdline: cmdline.as_str(),
        firmware: FirmwareTables::Acpi {
            rsdp: start_info.rsdp_paddr,
        },
    }
}

/// Starts the other CPUs the MADT lists (INIT-SIPI-SIPI); returns how many
/// CPUs now run kernel code, this one included.
pub fn start_secondary_cpus(
    platform: &crate::platform::Platform,
) -> Result<usize, alloc::string::String> {
    smp::start_secondary_cpus(&crate::platform::cpu_ids(platform))
        .map(|()| crate::arch::online_cpus())
        .map_err(|why| alloc::format!("{why}"))
}

/// How CPU `cpu` last halted, for a report about a CPU that does not answer.
pub fn halt_diagnostics(cpu: usize) -> alloc::string::String {
    let (enabled, in_service) = interrupts::halted_with(cpu);
    alloc::format!(
        "last halted with interrupts {}, highest vector in service {in_service:#x}",
        if enabled { "on" } else { "off" }
    )
}

pub use smp::{flush_tlb_all_cpus, shootdowns_done, sleep_unless, wake_cpu};

/// What the kernel repaired after the emulator misbehaved, and how often
/// (the test run's closing lines report it).
pub fn emulator_repairs() -> [(usize, &'static str); 2] {
    [
        (
            interrupts::eois_repeated(),
            "EOIs written again after the first left the interrupt in service",
        ),
        (
            smp::shootdowns_resent(),
            "shootdown IPIs sent again after the first got no answer",
        ),
    ]
}

/// How each CPU learns its index (the boot log says).
pub fn cpu_identity_source() -> &'static str {
    cpu::identity_source()
}

/// How each CPU takes its interrupts (the boot log says).
pub fn interrupt_controller() -> &'static str {
    if interrupts::x2apic() {
        "local APIC in x2APIC mode (registers as MSRs)"
    } else {
        "local APIC in xAPIC mode (registers through MMIO)"
    }
}

/// The kernel's index of the running CPU (0 on the boot CPU), from
/// IA32_TSC_AUX (see `cpu`).
pub fn current_cpu_index() -> u64 {
    cpu::cpu_index() as u64
}
