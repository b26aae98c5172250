//! Isolation between tasks through the IOMMU (the `isolation` program): a
//! task's device cannot reach another task's memory (not even by physical
//! address), open its device or name its objects, and a task killed with its
//! device attached is torn down without disturbing the other, its device
//! left blocked.

use alloc::format;
use alloc::string::String;

use super::Baseline;
use super::NO_DEVICE;
use crate::iommufd_service;
use crate::memory::frames;
use crate::platform::Platform;
use crate::task::{Exit, Task};
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "isolation::a_task_cannot_reach_another_tasks_memory_device_or_objects",
        run: a_task_cannot_reach_another_tasks_memory_device_or_objects,
    },
    Test {
        name: "isolation::a_task_killed_with_its_device_attached_leaves_the_other_working",
        run: a_task_killed_with_its_device_attached_leaves_the_other_working,
    },
    Test {
        name: "isolation::faults_a_task_leaves_unread_do_not_hide_another_tasks_faults",
        run: faults_a_task_leaves_unread_do_not_hide_another_tasks_faults,
    },
];

/// Roles of the `isolation` program (its argument's top byte).
const OWNER: u64 = 1;
const PROBER: u64 = 2;
const VICTIM: u64 = 3;
const WORKER: u64 = 4;
const FAULTER: u64 = 5;

fn argument(role: u64, edu: u64, address: u64) -> u64 {
    (role << 56) | (edu << 48) | address
}

fn spawn(role: u64, edu: u64, address: u64) -> Result<Task, String> {
    super::spawn_program("isolation", argument(role, edu, address))
}

/// Whether the unit reports blocked DMA as fault records (QEMU 10.0.2's
/// AMD-Vi never writes its event log).
fn faults_reported(platform: &Platform) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !matches!(&platform.firmware, crate::platform::Firmware::Acpi(info) if info.ivrs.is_some())
    }
    #[cfg(target_arch = "aarch64")]
    {
        let _ = platform;
        true
    }
}

fn a_task_cannot_reach_another_tasks_memory_device_or_objects(platform: &Platform) -> TestResult {
    iommufd_service::prepare();
    if crate::devices::edus().count() < 2 {
        return Ok(Outcome::NotApplicable("needs two edu devices"));
    }
    let baseline = Baseline::now();
    let mut owner = spawn(OWNER, 0, 0)?;
    // The owner's buffer: allocated before it starts, so the prober can be
    // told its physical address.
    let va = owner
        .allocate(1)
        .map_err(|err| format!("allocate: {err:?}"))?;
    let phys = owner.memory.allocations[&va].frames[0];
    owner.set_argument(argument(OWNER, 0, va));
    let prober = spawn(PROBER, 1, phys)?;
    let owners = [owner.owner, prober.owner];
    // The prober must find the owner holding its device: one CPU runs them
    // in that order.
    let run = super::run_captured_on_one_cpu(alloc::vec![owner, prober]);
    let (owner, prober) = (&run.reports[0], &run.reports[1]);
    if owner.exit == Exit::Code(NO_DEVICE) {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    }
    ensure_eq!(
        owner.exit,
        Exit::Code(0),
        format!("owner: {:?}", owner.output)
    );
    ensure_eq!(
        prober.exit,
        Exit::Code(0),
        format!("prober: {:?}", prober.output)
    );
    for (output, line) in [
        (
            &owner.output,
            "owner: buffer, objects and DMA intact after the prober",
        ),
        (&prober.output, "opening the owner's edu: EBUSY"),
        (&prober.output, ": ENOENT"),
        (&prober.output, "blocked both ways"),
    ] {
        ensure!(output.contains(line), "no {line:?} in {output:?}");
    }
    if faults_reported(platform) {
        ensure!(
            prober.output.contains("one at that address: true"),
            "the hostile DMA at {phys:#x} was not reported: {:?}",
            prober.output
        );
    }
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

fn a_task_killed_with_its_device_attached_leaves_the_other_working(
    platform: &Platform,
) -> TestResult {
    iommufd_service::prepare();
    let Some(victim_edu) = crate::devices::edus().next() else {
        return Ok(Outcome::NotApplicable("no edu device"));
    };
    if crate::devices::edus().count() < 2 {
        return Ok(Outcome::NotApplicable("needs two edu devices"));
    }
    let baseline = Baseline::now();
    let victim = spawn(VICTIM, 0, 0)?;
    let worker = spawn(WORKER, 1, 0)?;
    let owners = [victim.owner, worker.owner];
    // The victim attaches its device before the worker starts: one CPU runs
    // them in that order.
    let run = super::run_captured_on_one_cpu(alloc::vec![victim, worker]);
    let (victim, worker) = (&run.reports[0], &run.reports[1]);
    if victim.exit == Exit::Code(NO_DEVICE) {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    }
    let Exit::Killed(report) = &victim.exit else {
        return Err(format!(
            "the victim was not killed: {:?}, {:?}",
            victim.exit, victim.output
        ));
    };
    ensure!(
        victim.output.contains("now faulting on purpose"),
        "the victim died before attaching: {report}; {:?}",
        victim.output
    );
    ensure_eq!(
        worker.exit,
        Exit::Code(0),
        format!("worker: {:?}", worker.output)
    );
    ensure!(
        worker
            .output
            .contains("DMA works after the victim was killed"),
        "worker: {:?}",
        worker.output
    );
    baseline.check(&owners)?;
    // The dead task's device was left blocked, not in bypass.
    super::dma_to_a_kernel_page_is_blocked(platform, victim_edu)?;
    ensure_eq!(
        frames::free_count(),
        baseline.frames,
        "free frames at the end"
    );
    Ok(Outcome::Passed)
}

/// A task whose device faulted and which never reads the record stays alive
/// while another task's device faults: the other task still finds its own
/// record (the kernel drains the unit between task runs; VT-d keeps one
/// fault-recording register and records nothing more while it is full).
fn faults_a_task_leaves_unread_do_not_hide_another_tasks_faults(platform: &Platform) -> TestResult {
    iommufd_service::prepare();
    if crate::devices::edus().count() < 2 {
        return Ok(Outcome::NotApplicable("needs two edu devices"));
    }
    if !faults_reported(platform) {
        return Ok(Outcome::NotApplicable(
            "the unit reports no faults here (QEMU's AMD-Vi writes no event log)",
        ));
    }
    let baseline = Baseline::now();
    let faulter = spawn(FAULTER, 0, 0)?;
    let reader = super::spawn_program("edu-dma", 1)?;
    let owners = [faulter.owner, reader.owner];
    // The faulter's device faults before the reader's: one CPU runs them in
    // that order.
    let run = super::run_captured_on_one_cpu(alloc::vec![faulter, reader]);
    let (faulter, reader) = (&run.reports[0], &run.reports[1]);
    if faulter.exit == Exit::Code(NO_DEVICE) {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    }
    ensure_eq!(
        faulter.exit,
        Exit::Code(0),
        format!("faulter: {:?}", faulter.output)
    );
    ensure_eq!(
        reader.exit,
        Exit::Code(0),
        format!("edu-dma: {:?}", reader.output)
    );
    ensure!(
        faulter.output.contains("not reading it"),
        "faulter: {:?}",
        faulter.output
    );
    ensure!(
        reader.output.contains("first: IOVA"),
        "the second task's fault was not recorded: {:?}",
        reader.output
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}
