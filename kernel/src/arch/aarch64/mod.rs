//! aarch64 (`virt`): device-tree hand-off, PL011 console, exception vectors,
//! generic-timer clock, exit through semihosting.

pub mod cache;
pub mod cpu;
mod exceptions;
pub mod gic;
mod hardening;
mod pl011;
pub mod smp;
mod trap_frame;
pub mod user;

use aarch64_cpu::registers::{CNTFRQ_EL0, CNTPCT_EL0, Readable};

use crate::boot_info::{BootInfo, FirmwareTables, MemoryRegion};

pub use exceptions::{
    breakpoint, breakpoints_seen, undefined_instruction, undefined_instructions_seen,
};
pub use hardening::protect_user_memory;
pub use pl011::Pl011 as Serial;

pub const ARCH_NAME: &str = "aarch64";

/// The running CPU's MPIDR_EL1 affinity fields (Aff3 in bits 39:32, Aff2-0
/// in 23:0; ARM ARM D23.2.100), the value the device tree's `cpu` `reg`
/// holds (binding `arm/cpus`).
pub fn boot_cpu_id() -> u64 {
    use aarch64_cpu::registers::{MPIDR_EL1, Readable};
    const AFFINITY: u64 = 0xFF_00FF_FFFF;
    MPIDR_EL1.get() & AFFINITY
}

/// QEMU `virt` puts UART0 here (hw/arm/virt.c `VIRT_UART`). The console
/// starts on it before the device tree is read, like Linux's earlycon, so that
/// a failure to parse the device tree is still reported.
const EARLY_UART_BASE: usize = 0x0900_0000;
/// QEMU's ELF boot leaves x0 = 0 and the DTB at the RAM base (docs/QEMU.md §5).
const DTB_AT_RAM_BASE: u64 = 0x4000_0000;

/// Called by `boot`'s entry code at EL1 with the MMU on.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(dtb: u64) -> ! {
    // SAFETY: the boot identity map covers the UART as Device memory and
    // nothing else drives it.
    crate::console::init(unsafe { Serial::new(EARLY_UART_BASE) });
    exceptions::init();
    // The per-CPU index: the boot CPU is CPU 0.
    cpu::set_cpu_index(0);
    crate::memory::init_heap();
    let dtb_addr = if dtb != 0 { dtb } else { DTB_AT_RAM_BASE };
    let boot = boot_info_from_device_tree(dtb_addr);
    crate::kernel_main(boot)
}

fn boot_info_from_device_tree(dtb_addr: u64) -> BootInfo {
    // SAFETY: the DTB header lies in identity-mapped RAM (the boot map covers
    // 1-4 GiB); only its 40-byte header is read here.
    let header = unsafe {
        core::slice::from_raw_parts(dtb_addr as *const u8, firmware::devicetree::FDT_HEADER_SIZE)
    };
    let size = firmware::devicetree::dtb_size_of(header).expect("no device tree at the RAM base");
    // SAFETY: the header says the blob is `size` bytes long; it stays in
    // place forever because its range is reserved below.
    let dtb: &'static [u8] = unsafe { core::slice::from_raw_parts(dtb_addr as *const u8, size) };
    let platform = firmware::devicetree::Platform::parse(dtb).expect("malformed device tree");

    let mut ram = heapless::Vec::new();
    for region in &platform.memory {
        let _ = ram.push(MemoryRegion {
            base: region.base,
            size: region.size,
        });
    }
    let mut reserved = heapless::Vec::new();
    let _ = reserved.push(MemoryRegion {
        base: dtb_addr,
        size: size as u64,
    });
    for reservation in &platform.reserved {
        let region = reservation.region;
        let _ = reserved.push(MemoryRegion {
            base: region.base,
            size: region.size,
        });
    }
    let cmdline = CMDLINE.call_once(|| platform.bootargs.clone().unwrap_or_default());
    BootInfo {
        ram,
        reserved,
        cmdline: cmdline.as_str(),
        firmware: FirmwareTables::DeviceTree { dtb },
    }
}

static CMDLINE: spin::Once<alloc::string::String> = spin::Once::new();

/// Nanoseconds from the generic timer's physical count.
pub fn now_ns() -> u64 {
    let hz = CNTFRQ_EL0.get().max(1);
    (u128::from(CNTPCT_EL0.get()) * 1_000_000_000 / u128::from(hz)) as u64
}

/// Arm semihosting (IHI 0073) SYS_EXIT with the extended AArch64 parameter
/// block; QEMU needs `-semihosting` and exits with the given status.
const SEMIHOSTING_SYS_EXIT: u32 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

pub fn exit(code: crate::arch::ExitCode) -> ! {
    let status: u64 = match code {
        crate::arch::ExitCode::Success => 0,
        crate::arch::ExitCode::Failure => 1,
        crate::arch::ExitCode::Panic => 2,
    };
    let block = [ADP_STOPPED_APPLICATION_EXIT, status];
    // SAFETY: the semihosting call reads the two-word block and ends the VM;
    // without `-semihosting` it is an undefined instruction (the host's
    // timeout then ends the run).
    unsafe {
        core::arch::asm!("hlt #0xf000", in("w0") SEMIHOSTING_SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
    }
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// Starts the other CPUs the device tree lists (PSCI CPU_ON); returns how
/// many CPUs now run kernel code, this one included.
pub fn start_secondary_cpus(
    platform: &crate::platform::Platform,
) -> Result<usize, alloc::string::String> {
    let crate::platform::Firmware::DeviceTree(tree) = &platform.firmware;
    smp::start_secondary_cpus(tree)
        .map(|()| crate::arch::online_cpus())
        .map_err(|why| alloc::format!("{why}"))
}

/// How CPU `cpu` last halted: nothing is noted on aarch64 (its shootdown
/// needs no answer).
pub fn halt_diagnostics(_cpu: usize) -> alloc::string::String {
    alloc::string::String::from("no halt state noted")
}

pub use smp::{flush_tlb_all_cpus, sleep_unless, wake_cpu};

/// What the kernel repaired after the emulator misbehaved, and how often
/// (the test run's closing lines report it).
pub fn emulator_repairs() -> [(usize, &'static str); 1] {
    [(
        exceptions::config_reads_retried(),
        "configuration reads ran again after an External abort",
    )]
}

/// How each CPU learns its index (the boot log says).
pub fn cpu_identity_source() -> &'static str {
    "TPIDR_EL1"
}

/// How each CPU takes its interrupts (the boot log says).
pub fn interrupt_controller() -> &'static str {
    gic::name()
}

/// The kernel's index of the running CPU (TPIDR_EL1; 0 on the boot CPU).
pub fn current_cpu_index() -> u64 {
    cpu::cpu_index()
}
