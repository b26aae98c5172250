//! Device ownership against a hostile task (the `hostile` program): what
//! `device_open` gave a task is taken back when the device is released, the
//! device is stopped before anyone else can open it, and nothing of one owner
//! reaches the next (VFIO's release rules: `vfio_pci_zap_bars`, bus mastering
//! off, reset between owners).

use alloc::format;
use alloc::string::String;

use super::Baseline;
use crate::platform::Platform;
use crate::task::{Exit, Report, Task};
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "ownership::a_destroyed_devices_registers_are_gone_from_its_old_owner",
        run: a_destroyed_devices_registers_are_gone_from_its_old_owner,
    },
    Test {
        name: "ownership::a_released_device_carries_nothing_to_its_next_owner",
        run: a_released_device_carries_nothing_to_its_next_owner,
    },
    Test {
        name: "ownership::open_destroy_cycles_reuse_one_window_and_leak_nothing",
        run: open_destroy_cycles_reuse_one_window_and_leak_nothing,
    },
    Test {
        name: "ownership::injected_interrupt_messages_harm_nobody",
        run: injected_interrupt_messages_harm_nobody,
    },
    Test {
        name: "ownership::only_endpoints_a_task_can_own_alone_are_handed_out",
        run: only_endpoints_a_task_can_own_alone_are_handed_out,
    },
    Test {
        name: "ownership::msi_devices_are_refused_where_nothing_isolates_their_interrupts",
        run: msi_devices_are_refused_where_nothing_isolates_their_interrupts,
    },
];

/// The attacks of the `hostile` program (its argument's top byte).
const STALE_BAR: u64 = 1;
const LEAVE_DMA: u64 = 2;
const HEIR: u64 = 3;
const CYCLES: u64 = 4;
const INJECT_FROM_USER: u64 = 5;
const INJECT_FROM_KERNEL: u64 = 6;
const OPEN_EVERYTHING: u64 = 7;
const OPEN_MSI_DEVICE: u64 = 8;
/// The `hostile` messages the x86 entry path must drop each run: all of
/// its ten but the spurious vector's (an ordinary interrupt).
#[cfg(target_arch = "x86_64")]
const MESSAGES_DROPPED_PER_RUN: usize = 9;
/// The program's exit code when no edu sits behind an IOMMU.
const NO_DEVICE: i32 = 77;

fn spawn(attack: u64) -> Result<Task, String> {
    super::spawn_program("hostile", attack << 56)
}

/// Runs one `hostile` task alone to its end; `None` where no IOMMU
/// translates an edu.
fn run_alone(attack: u64, owners: &mut alloc::vec::Vec<u64>) -> Result<Option<Report>, String> {
    let task = spawn(attack)?;
    owners.push(task.owner);
    let mut run = super::run_captured(alloc::vec![task]);
    let report = run.reports.remove(0);
    Ok((report.exit != Exit::Code(NO_DEVICE)).then_some(report))
}

fn a_destroyed_devices_registers_are_gone_from_its_old_owner(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let baseline = Baseline::now();
    let mut owners = alloc::vec::Vec::new();
    let Some(report) = run_alone(STALE_BAR, &mut owners)? else {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    };
    let Exit::Killed(why) = &report.exit else {
        return Err(format!(
            "the old owner was not killed: {:?}, {:?}",
            report.exit, report.output
        ));
    };
    ensure!(
        report.output.contains("reading its registers"),
        "killed before the attack: {why}; {:?}",
        report.output
    );
    ensure!(
        why.contains("page fault") || why.contains("abort"),
        "killed, but not by the revoked mapping: {why}"
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

fn a_released_device_carries_nothing_to_its_next_owner(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let baseline = Baseline::now();
    let mut owners = alloc::vec::Vec::new();
    let Some(leaver) = run_alone(LEAVE_DMA, &mut owners)? else {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    };
    ensure_eq!(
        leaver.exit,
        Exit::Code(0),
        format!("the first owner: {:?}", leaver.output)
    );
    let heir = run_alone(HEIR, &mut owners)?.ok_or("the edu vanished")?;
    ensure_eq!(
        heir.exit,
        Exit::Code(0),
        format!("the next owner: {:?}", heir.output)
    );
    ensure!(
        heir.output.contains("nothing of the previous owner"),
        "the next owner: {:?}",
        heir.output
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

fn open_destroy_cycles_reuse_one_window_and_leak_nothing(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let baseline = Baseline::now();
    let mut owners = alloc::vec::Vec::new();
    let Some(report) = run_alone(CYCLES, &mut owners)? else {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    };
    ensure_eq!(
        report.exit,
        Exit::Code(0),
        format!("the cycling task: {:?}", report.output)
    );
    ensure!(
        report.output.contains("all in one register window"),
        "{:?}",
        report.output
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

/// A device that sends interrupt messages with vectors of its choosing (the
/// system-call gate, the spurious vector, exceptions 16-31, an NMI) neither
/// harms its owner nor the kernel, whether the message lands in user mode or
/// while the kernel idles; afterwards another task's DMA and interrupts work.
/// On x86 with a compatibility-format message getting through (QEMU's VT-d
/// does not model the CFI block), the kernel counts what it dropped.
fn injected_interrupt_messages_harm_nobody(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let baseline = Baseline::now();
    let mut owners = alloc::vec::Vec::new();
    #[cfg(target_arch = "x86_64")]
    let stray_before = crate::arch::stray_interrupts();
    for attack in [INJECT_FROM_USER, INJECT_FROM_KERNEL] {
        let Some(report) = run_alone(attack, &mut owners)? else {
            return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
        };
        ensure_eq!(
            report.exit,
            Exit::Code(0),
            format!("the injecting task: {:?}", report.output)
        );
        ensure!(
            report.output.contains("this task and the kernel live on"),
            "{:?}",
            report.output
        );
    }
    let after = super::spawn_program("edu-dma", 0)?;
    owners.push(after.owner);
    let run = super::run_captured(alloc::vec![after]);
    ensure_eq!(
        run.reports[0].exit,
        Exit::Code(0),
        format!("edu-dma after the injections: {:?}", run.reports[0].output)
    );
    #[cfg(target_arch = "x86_64")]
    {
        let dropped = crate::arch::stray_interrupts() - stray_before;
        // Either the unit stopped every message (AMD-Vi: the interrupt
        // window goes through its remapping, which blocks them), or every
        // one but the spurious vector's reached the CPU as an exception or
        // system-call vector and was dropped (QEMU's VT-d lets compatibility
        // format through).
        ensure!(
            dropped == 0 || dropped == 2 * MESSAGES_DROPPED_PER_RUN,
            "the kernel dropped {dropped} device-sent messages"
        );
    }
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

/// Bridges, the IOMMU's own function, functions that share an isolation
/// group and functions no unit translates are refused, and `device_list`
/// says so; the edus stay openable.
fn only_endpoints_a_task_can_own_alone_are_handed_out(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let baseline = Baseline::now();
    let mut owners = alloc::vec::Vec::new();
    let Some(report) = run_alone(OPEN_EVERYTHING, &mut owners)? else {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    };
    ensure_eq!(
        report.exit,
        Exit::Code(0),
        format!("the task opening everything: {:?}", report.output)
    );
    // Every machine has a host bridge; q35 also its LPC bridge, AHCI and
    // SMBus functions.
    ensure!(
        report.output.contains("| REFUSED | BRIDGE)"),
        "no bridge refused: {:?}",
        report.output
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

/// Without the command line's opt-in, an MSI device is handed out only
/// where its interrupts are isolated (VT-d with remapping and compatibility
/// format blocked, AMD-Vi): behind SMMUv3 with a GICv2m it is refused, and
/// `device_list` says why.
fn msi_devices_are_refused_where_nothing_isolates_their_interrupts(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let baseline = Baseline::now();
    let mut owners = alloc::vec::Vec::new();
    let allowed = crate::iommufd_service::allow_unsafe_interrupts(false);
    let report = run_alone(OPEN_MSI_DEVICE, &mut owners);
    crate::iommufd_service::allow_unsafe_interrupts(allowed);
    let Some(report) = report? else {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    };
    ensure_eq!(
        report.exit,
        Exit::Code(0),
        format!("the opening task: {:?}", report.output)
    );
    let expected = if crate::iommufd_service::msis_isolated() {
        "opened with isolated interrupts"
    } else {
        "refused for unisolated interrupts"
    };
    ensure!(
        report.output.contains(expected),
        "expected {expected:?}: {:?}",
        report.output
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}
