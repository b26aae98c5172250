//! Starting the secondary CPUs the device tree lists, through PSCI CPU_ON
//! (Arm DEN 0022 PSCI 1.1 §5.6) over the conduit the tree names.
//!
//! Each CPU gets an [`ApStart`] (the boot CPU's MAIR, TCR, TTBR0 and SCTLR,
//! a stack of its own) as CPU_ON's context id, enters at `boot`'s
//! `_ap_start` with its MMU off, turns the MMU on with the boot CPU's tables,
//! and reaches [`secondary_entry`], which installs the exception vectors,
//! records the CPU's index in TPIDR_EL1 (the per-CPU pointer) and says it is
//! online. It brings up its part of the GIC and then serves the scheduler
//! ([`crate::scheduler::serve_secondary_cpu`]), halted until a run is offered.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use aarch64_cpu::registers::{MAIR_EL1, Readable, SCTLR_EL1, TCR_EL1, TTBR0_EL1};
use boot::aarch64::{ApStart, ap_start};
use firmware::devicetree::{Platform as DeviceTreePlatform, PsciMethod};

use super::cache;

/// PSCI 1.1 §5.1.4: CPU_ON, SMC64 calling convention.
const PSCI_CPU_ON_64: u64 = 0xC400_0003;
/// PSCI 1.1 §5.2.2 return codes the kernel tells apart.
const PSCI_SUCCESS: i64 = 0;
const PSCI_ALREADY_ON: i64 = -4;
/// How long a started CPU may take to say it is online.
const START_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a CPU did not start.
pub enum StartError {
    /// The device tree names no PSCI conduit.
    NoPsci,
    /// CPU_ON returned this PSCI error code.
    Refused { mpidr: u64, code: i64 },
    /// The CPU was started but never said it was online.
    Silent { mpidr: u64 },
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartError::NoPsci => write!(f, "the device tree names no PSCI conduit"),
            StartError::Refused { mpidr, code } => {
                write!(f, "PSCI CPU_ON refused CPU {mpidr:#x} with {code}")
            }
            StartError::Silent { mpidr } => {
                write!(f, "CPU {mpidr:#x} started but never came online")
            }
        }
    }
}

/// A PSCI call through `$conduit` (`hvc` or `smc`): the firmware (QEMU's
/// PSCI emulation, or EL2/EL3 firmware) reads x0-x3 and returns in x0;
/// SMCCC 1.1 lets it clobber x0-x17, which are declared so.
macro_rules! psci_asm {
    ($conduit:literal, $function:expr, $a:expr, $b:expr, $c:expr) => {{
        let result: u64;
        // SAFETY: see the macro's comment: a firmware call that touches only
        // the declared registers.
        unsafe {
            core::arch::asm!(
                concat!($conduit, " #0"),
                inlateout("x0") $function => result,
                inlateout("x1") $a => _, inlateout("x2") $b => _, inlateout("x3") $c => _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
                out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
                out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                options(nostack),
            )
        };
        result as i64
    }};
}

/// Calls PSCI function `function` with three arguments over `method`.
fn psci_call(method: PsciMethod, function: u64, a: u64, b: u64, c: u64) -> i64 {
    match method {
        PsciMethod::Hvc => psci_asm!("hvc", function, a, b, c),
        PsciMethod::Smc => psci_asm!("smc", function, a, b, c),
    }
}

/// Starts every CPU of `tree` other than this one whose enable method is
/// PSCI, one at a time, waiting (bounded) for each to come online
/// ([`crate::arch::online_cpus`] counts them); stops at the first that does not.
pub fn start_secondary_cpus(tree: &DeviceTreePlatform) -> Result<(), StartError> {
    let own = super::boot_cpu_id();
    let others: Vec<u64> = tree
        .cpus
        .iter()
        .filter(|cpu| cpu.psci && cpu.mpidr != own)
        .map(|cpu| cpu.mpidr)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    crate::arch::report_cpus_left(others.len());
    let method = tree.psci.ok_or(StartError::NoPsci)?;
    init_reschedule();
    for mpidr in others.into_iter().take(crate::arch::MAX_CPUS - 1) {
        let index = crate::arch::online_cpus();
        // The start block stays for the CPU's lifetime: leaked.
        let stack_top = crate::arch::alloc_cpu_stack(index);
        let start: &'static ApStart = Box::leak(Box::new(ApStart {
            mair: MAIR_EL1.get(),
            tcr: TCR_EL1.get(),
            ttbr0: TTBR0_EL1.get(),
            sctlr: SCTLR_EL1.get(),
            stack_top,
            cpu_index: index as u64,
            online: AtomicU64::new(0),
        }));
        // The CPU reads the block with its MMU (and caches) off.
        cache::clean_to_poc(
            core::ptr::from_ref(start).cast(),
            core::mem::size_of::<ApStart>(),
        );
        // Identity-mapped kernel: these virtual addresses are the physical ones.
        let entry = ap_start as *const () as u64;
        let context = core::ptr::from_ref(start) as u64;
        let code = psci_call(method, PSCI_CPU_ON_64, mpidr, entry, context);
        if code != PSCI_SUCCESS && code != PSCI_ALREADY_ON {
            return Err(StartError::Refused { mpidr, code });
        }
        let online = os_services::wait_until(&crate::time::CLOCK, START_TIMEOUT, || {
            (start.online.load(Ordering::Acquire) != 0).then_some(())
        });
        if online.is_err() {
            return Err(StartError::Silent { mpidr });
        }
        crate::arch::count_online_cpu();
    }
    Ok(())
}

/// Called by `boot`'s `_ap_start` with the MMU on and this CPU's stack.
#[unsafe(no_mangle)]
extern "C" fn secondary_entry(start: &ApStart) -> ! {
    super::cpu::set_cpu_index(start.cpu_index);
    super::exceptions::init();
    if let Err(why) = super::gic::init_this_cpu() {
        println!("smp: CPU {} takes no interrupts: {why}", start.cpu_index);
    }
    // The reschedule SGI is enabled per CPU (banked in GICv2, in each
    // CPU's redistributor in GICv3).
    let _ = super::gic::enable_spi(RESCHEDULE_SGI, true);
    start.online.store(1, Ordering::Release);
    crate::scheduler::serve_secondary_cpu()
}

/// The SGI that wakes a CPU to look for work.
const RESCHEDULE_SGI: u32 = 0;

/// Registers the reschedule SGI's handler and enables it on this (the boot)
/// CPU: it only has to end a WFI, so the handler has nothing to do.
fn init_reschedule() {
    let _ = crate::irq::enable_spi(RESCHEDULE_SGI, true, || {});
}

/// Sends the reschedule SGI to the CPU with kernel index `cpu`.
pub fn wake_cpu(cpu: usize) {
    super::gic::send_sgi(cpu, RESCHEDULE_SGI);
}

/// Waits for an interrupt unless `ready` holds. IRQs are masked for the
/// check and the WFI: an interrupt pending while masked still ends a WFI
/// (ARM ARM D1.16.2), so a wake-up SGI sent after the check is not lost;
/// unmasking then takes it. WFI, not WFE: QEMU's TCG treats WFE as a yield
/// and keeps the vCPU's host thread spinning.
pub fn sleep_unless(ready: impl Fn() -> bool) {
    // SAFETY: masking IRQs on this CPU only defers them.
    unsafe { core::arch::asm!("msr daifset, #2", options(nostack)) };
    if !ready() {
        aarch64_cpu::asm::wfi();
    }
    // SAFETY: unmasking IRQs: the vectors and this CPU's GIC are set up.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}

/// Drops every CPU's cached translations: `TLBI VMALLE1IS` is broadcast to
/// every PE in the Inner Shareable domain and the `DSB ISH` after it waits
/// until all of them have done it (ARM ARM D8.13.4 "Broadcast TLB
/// maintenance"), so no IPI is needed (Linux arm64 `flush_tlb_all` does the
/// same). Never fails.
pub fn flush_tlb_all_cpus() -> Result<(), usize> {
    // SAFETY: TLB maintenance and barriers only.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi vmalle1is",
            "dsb ish",
            "isb",
            options(nostack)
        )
    };
    Ok(())
}
