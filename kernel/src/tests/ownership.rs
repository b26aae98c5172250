//! Device ownership against a hostile task (the `hostile` program): what
//! `device_open` gave a task is taken back when the device is released, the
//! device is stopped before anyone else can open it, and nothing of one owner
//! reaches the next (VFIO's release rules: `vfio_pci_zap_bars`, bus mastering
//! off, reset between owners).

use alloc::format;
use alloc::string::String;

use super::Baseline;
use super::NO_DEVICE;
use crate::platform::Platform;
use crate::task::{Exit, Report};
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
    Test {
        name: "ownership::functions_behind_one_pci_bridge_are_one_group",
        run: functions_behind_one_pci_bridge_are_one_group,
    },
    Test {
        name: "ownership::a_task_owns_a_whole_group",
        run: a_task_owns_a_whole_group,
    },
    Test {
        name: "ownership::isolation_groups_follow_acs_and_the_bridges",
        run: isolation_groups_follow_acs_and_the_bridges,
    },
    Test {
        name: "ownership::every_dma_alias_of_an_opened_function_is_held_with_it",
        run: every_dma_alias_of_an_opened_function_is_held_with_it,
    },
    Test {
        name: "ownership::a_device_cannot_raise_another_tasks_interrupt",
        run: a_device_cannot_raise_another_tasks_interrupt,
    },
    Test {
        name: "ownership::the_policy_refuses_each_kind_of_function_for_its_reason",
        run: the_policy_refuses_each_kind_of_function_for_its_reason,
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
const GROUP_HOLDER: u64 = 9;
const GROUP_CONTENDER: u64 = 10;
const GROUP_HEIR: u64 = 11;
const GROUP_WHOLE: u64 = 21;
const IRQ_VICTIM: u64 = 12;
const IRQ_SPOOFER: u64 = 13;
/// The `hostile` messages the x86 entry path must drop each run: all of
/// its fifteen but the spurious vector's (an ordinary interrupt).
#[cfg(target_arch = "x86_64")]
const MESSAGES_DROPPED_PER_RUN: usize = 14;

/// Runs one `hostile` task alone to its end; `None` where no IOMMU
/// translates an edu.
fn run_alone(attack: u64, owners: &mut alloc::vec::Vec<u64>) -> Result<Option<Report>, String> {
    let task = super::spawn_hostile(attack, 0)?;
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

/// The edus behind a PCIe-to-PCI bridge (their DMA carries its requester
/// id, not their own), when there are two.
fn edus_behind_a_bridge() -> Option<alloc::vec::Vec<&'static crate::devices::PciDevice>> {
    let behind: alloc::vec::Vec<_> = crate::devices::edus()
        .filter(|edu| crate::devices::dma_alias(edu.function.bdf) != edu.function.bdf)
        .collect();
    (behind.len() >= 2).then_some(behind)
}

/// Two edus behind one PCIe-to-PCI bridge carry the bridge's requester id
/// (secondary bus, 00.0): one isolation group. Whoever opens one holds both;
/// DMA works through the alias the unit programs; another task is refused
/// either function (EBUSY) while the group is held; after release the group
/// goes to the next owner, and once that one is gone, too, the function's
/// DMA is blocked (not bypass).
fn functions_behind_one_pci_bridge_are_one_group(platform: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let Some(behind) = edus_behind_a_bridge() else {
        return Ok(Outcome::NotApplicable(
            "needs two edus behind a PCIe-to-PCI bridge",
        ));
    };
    let baseline = Baseline::now();
    // The translated edus are listed in BDF order: bus 0 first.
    let first = (crate::devices::edus().count() - behind.len()) as u64;
    let holder = super::spawn_hostile(GROUP_HOLDER, first)?;
    let contender = super::spawn_hostile(GROUP_CONTENDER, first + 1)?;
    let mut owners = alloc::vec![holder.owner, contender.owner];
    // The holder must open its function before the contender tries: one
    // CPU runs them in that order (the holder's open comes before its
    // first yield).
    let run = super::run_captured_on_one_cpu(alloc::vec![holder, contender]);
    let (holder, contender) = (&run.reports[0], &run.reports[1]);
    if holder.exit == Exit::Code(NO_DEVICE) {
        return Ok(Outcome::NotApplicable("no IOMMU translates the edus here"));
    }
    ensure_eq!(
        holder.exit,
        Exit::Code(0),
        format!("holder: {:?}", holder.output)
    );
    ensure_eq!(
        contender.exit,
        Exit::Code(0),
        format!("contender: {:?}", contender.output)
    );
    let heir = super::spawn_hostile(GROUP_HEIR, first + 1)?;
    owners.push(heir.owner);
    let run = super::run_captured(alloc::vec![heir]);
    ensure_eq!(
        run.reports[0].exit,
        Exit::Code(0),
        format!("heir: {:?}", run.reports[0].output)
    );
    baseline.check(&owners)?;
    // Released: the group's function is blocked, not in bypass.
    super::dma_to_a_kernel_page_is_blocked(platform, behind[1])?;
    Ok(Outcome::Passed)
}

/// A task owns a whole group: it opens both edus behind the bridge, the
/// second may join only the first's HWPT, both DMA through the one
/// requester id and each gets exactly its own completion interrupt (an
/// IRTE, ITS event or SPI per function), a function cannot be opened twice;
/// afterwards the bridge resets its bus once, both are blocked, and
/// everything is given back.
fn a_task_owns_a_whole_group(platform: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let Some(behind) = edus_behind_a_bridge() else {
        return Ok(Outcome::NotApplicable(
            "needs two edus behind a PCIe-to-PCI bridge",
        ));
    };
    let baseline = Baseline::now();
    let (_, bus_resets) = crate::devices::resets();
    let first = (crate::devices::edus().count() - behind.len()) as u64;
    let owner_task = super::spawn_hostile(GROUP_WHOLE, first)?;
    let owners = [owner_task.owner];
    let run = super::run_captured(alloc::vec![owner_task]);
    let report = &run.reports[0];
    if report.exit == Exit::Code(NO_DEVICE) {
        return Ok(Outcome::NotApplicable("no IOMMU translates the edus here"));
    }
    ensure_eq!(report.exit, Exit::Code(0), format!("{:?}", report.output));
    baseline.check(&owners)?;
    // Released whole, the group got its bridge's Secondary Bus Reset once,
    // and its BARs back (the kernel reaches both edus below).
    ensure_eq!(
        crate::devices::resets().1,
        bus_resets + 1,
        "secondary bus resets"
    );
    for edu in behind {
        super::dma_to_a_kernel_page_is_blocked(platform, edu)?;
    }
    Ok(Outcome::Passed)
}

/// Every requester id a device's DMA may carry (its own behind the bridge
/// as well as the bridge's alias) is claimed by the task that opens it, so
/// the core programs all of them in its domain (host test
/// `every_alias_of_a_device_is_claimed_and_programmed_with_it`), and all of
/// them are free again once the task is gone. The open is made for the task
/// by the kernel, as its system call would, so the test can look between
/// open and release.
fn every_dma_alias_of_an_opened_function_is_held_with_it(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let Some(edu) = crate::devices::edus()
        .find(|edu| crate::devices::dma_alias(edu.function.bdf) != edu.function.bdf)
    else {
        return Ok(Outcome::NotApplicable(
            "needs an edu behind a PCIe-to-PCI bridge",
        ));
    };
    let bdf = edu.function.bdf;
    let baseline = Baseline::now();
    let mut task = super::spawn_program("hello", 0)?;
    let owner = task.owner;
    let page = task
        .allocate(1)
        .map_err(|errno| format!("mem_alloc: {errno:?}"))?;
    let open = abi::DeviceOpen {
        size: core::mem::size_of::<abi::DeviceOpen>() as u32,
        pci_address: u32::from(bdf.requester_id()),
        ..Default::default()
    };
    task.copy_to_user(page, abi::as_bytes(&open))
        .map_err(|errno| format!("argument: {errno:?}"))?;
    let opened = crate::iommufd_service::call(&mut task, abi::syscall::DEVICE_OPEN, page);
    let held = crate::iommufd_service::alias_holders(bdf);
    crate::iommufd_service::release(&mut task);
    drop(task);
    crate::memory::heap_charges::reparent(owner);
    opened.map_err(|errno| format!("device_open of {bdf}: {errno:?}"))?;
    ensure!(
        held.len() >= 2,
        "{bdf}: fewer than two requester ids the unit names: {held:?}"
    );
    ensure!(
        held.iter().all(|&(_, holder)| holder == Some(owner)),
        "{bdf}: not every id held by the task that opened it: {held:?}"
    );
    let after = crate::iommufd_service::alias_holders(bdf);
    ensure!(
        after.iter().all(|&(_, holder)| holder.is_none()),
        "{bdf}: ids still held after release: {after:?}"
    );
    baseline.check(&[owner])?;
    Ok(Outcome::Passed)
}

/// Isolation groups follow ACS and the bridges (`pci::acs`): the kernel
/// turned on the isolation controls every function implements (QEMU's
/// `pcie-root-port` has ACS), an edu on bus 0 is alone in its group, and the
/// edus behind the PCIe-to-PCI bridge share one (the bridge with them), which
/// the kernel hands out because they share its requester id.
fn isolation_groups_follow_acs_and_the_bridges(platform: &Platform) -> TestResult {
    let config = &platform.pci.ecam;
    for device in crate::devices::all() {
        let bdf = device.function.bdf;
        let acs = pci::acs::read(config, bdf);
        if pci::bridge::port_type(config, bdf) == Some(pci::bridge::PortType::RootPort) {
            ensure!(acs.is_some(), "root port {bdf} without ACS");
        }
        if let Some((implemented, enabled)) = acs {
            ensure!(
                enabled.contains(implemented & pci::acs::ISOLATION),
                "{bdf}: ACS {enabled:?} on of {implemented:?}"
            );
        }
    }
    for edu in crate::devices::edus() {
        let bdf = edu.function.bdf;
        let group = crate::devices::isolation_group(platform, bdf);
        let behind = crate::devices::dma_alias(bdf) != bdf;
        if behind {
            let mates = crate::devices::edus()
                .filter(|other| crate::devices::dma_alias(other.function.bdf) != other.function.bdf)
                .count();
            ensure!(
                group.iter().filter(|&&member| member != bdf).count() >= mates - 1
                    && group.iter().all(|&member| member.bus != 0),
                "{bdf}: group {group:?}"
            );
        } else {
            ensure_eq!(group, alloc::vec![bdf], format!("{bdf}: group"));
        }
    }
    crate::iommufd_service::prepare();
    for edu in crate::devices::edus() {
        ensure!(
            crate::iommufd_service::refusal(edu)
                != Some(crate::device_policy::Refusal::SharedGroup),
            "{}: refused as a shared group",
            edu.function.bdf
        );
    }
    Ok(Outcome::Passed)
}

/// A task's device writes interrupt messages aimed at another task's
/// interrupt (the likely vector, GICv2m SPI or ITS EventID): where the
/// platform isolates MSIs (AMD-Vi remapping; a GICv3 ITS, which translates
/// by the writer's DeviceID), the other task's wait times out.
fn a_device_cannot_raise_another_tasks_interrupt(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    if crate::devices::edus().count() < 2 {
        return Ok(Outcome::NotApplicable("needs two edu devices"));
    }
    if !crate::iommufd_service::msis_isolated() {
        return Ok(Outcome::NotApplicable(
            "MSIs are not isolated here (allow_unsafe_interrupts)",
        ));
    }
    if matches!(
        crate::iommufd_service::unit_hw_info(),
        Some(iommu::HwInfo::IntelVtd { .. })
    ) {
        // On hardware GSTS.CFIS = 0 blocks compatibility-format messages;
        // QEMU 10.0.2's VT-d reports it and still delivers them.
        return Ok(Outcome::NotApplicable(
            "QEMU's VT-d delivers compatibility-format MSIs despite CFIS = 0",
        ));
    }
    let baseline = Baseline::now();
    let victim = super::spawn_hostile(IRQ_VICTIM, 0)?;
    let spoofer = super::spawn_hostile(IRQ_SPOOFER, 1)?;
    let owners = [victim.owner, spoofer.owner];
    let run = super::run_captured(alloc::vec![victim, spoofer]);
    let (victim, spoofer) = (&run.reports[0], &run.reports[1]);
    if victim.exit == Exit::Code(NO_DEVICE) {
        return Ok(Outcome::NotApplicable("no IOMMU translates an edu here"));
    }
    ensure_eq!(
        spoofer.exit,
        Exit::Code(0),
        format!("spoofer: {:?}", spoofer.output)
    );
    ensure_eq!(
        victim.exit,
        Exit::Code(0),
        format!("victim: {:?}; spoofer: {:?}", victim.output, spoofer.output)
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

/// `device_policy::refusal` over functions made up for the purpose, one per
/// reason, including those QEMU cannot show (an RMRR/IVMD range, a BAR below
/// a page): each is refused for its own reason, in the documented order, and
/// a plain endpoint is not.
fn the_policy_refuses_each_kind_of_function_for_its_reason(_: &Platform) -> TestResult {
    use crate::device_policy::{Facts, Refusal, refusal};
    use crate::devices::PciDevice;
    let function = |bus, device, function, class: u32, layout, multi_function| pci::Function {
        bdf: pci::Bdf::new(bus, device, function),
        vendor_id: 0x1234,
        device_id: 0x5678,
        class,
        header_type: pci::HeaderType {
            layout,
            multi_function,
        },
    };
    let bar0 = |size| pci::Bar::Memory {
        index: 0,
        address: 0x1000_0000,
        size,
        is_64bit: false,
        prefetchable: false,
    };
    let endpoint = |bus, device, func| PciDevice {
        function: function(
            bus,
            device,
            func,
            0x00FF00,
            pci::HeaderType::ENDPOINT,
            false,
        ),
        bars: alloc::vec![bar0(1 << 20)],
    };
    let all = alloc::vec![
        endpoint(0, 4, 0),
        PciDevice {
            function: function(0, 6, 0, 0x060400, pci::HeaderType::PCI_BRIDGE, false),
            bars: alloc::vec![],
        },
        PciDevice {
            function: function(0, 1, 0, 0x080600, pci::HeaderType::ENDPOINT, false),
            bars: alloc::vec![],
        },
        PciDevice {
            function: function(0, 7, 0, 0x00FF00, pci::HeaderType::ENDPOINT, false),
            bars: alloc::vec![bar0(0x100)],
        },
        endpoint(0, 0x1F, 2),
        endpoint(0, 0x1F, 3),
    ];
    let fine = Facts {
        translated: true,
        firmware_dma: false,
        unsafe_interrupts: false,
        shared_group: false,
    };
    let cases = [
        (0, fine, None),
        (
            0,
            Facts {
                translated: false,
                ..fine
            },
            Some(Refusal::NotTranslated),
        ),
        (
            0,
            Facts {
                firmware_dma: true,
                ..fine
            },
            Some(Refusal::FirmwareDma),
        ),
        (
            0,
            Facts {
                unsafe_interrupts: true,
                ..fine
            },
            Some(Refusal::UnsafeInterrupts),
        ),
        (1, fine, Some(Refusal::Bridge)),
        (2, fine, Some(Refusal::IommuFunction)),
        (3, fine, Some(Refusal::SharedPage)),
        (
            4,
            Facts {
                shared_group: true,
                ..fine
            },
            Some(Refusal::SharedGroup),
        ),
        // A bridge is refused as a bridge whatever else holds.
        (
            1,
            Facts {
                firmware_dma: true,
                unsafe_interrupts: true,
                ..fine
            },
            Some(Refusal::Bridge),
        ),
    ];
    for (index, facts, expected) in cases {
        ensure_eq!(
            refusal(&all[index], facts),
            expected,
            format!("{} with {facts:?}", all[index].function.bdf)
        );
    }
    ensure_eq!(
        Refusal::FirmwareDma.errno(),
        abi::Errno::EPERM,
        "errno of a refused function"
    );
    ensure_eq!(
        Refusal::NotTranslated.errno(),
        abi::Errno::EINVAL,
        "errno of a function no unit names"
    );
    Ok(Outcome::Passed)
}
