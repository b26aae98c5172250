//! AMD-Vi in QEMU (configuration `amdvi`: q35 + `amd-iommu,pt=off`, two edu devices).
//! On machines without an IVRS every test reports "not applicable".

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;

use ::iommu::{Access, DomainKind, FaultRecord, Gather, HwInfo, IommuUnit, ReservedKind};
use amdvi::irte;
use amdvi::regs::{self};

use crate::iommu::amdvi::{self as glue, Absent};
use crate::memory::frames;
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "amdvi::unit_is_discovered_from_the_ivrs",
        run: unit_is_discovered_from_the_ivrs,
    },
    Test {
        name: "amdvi::bring_up_runs_the_command_buffer_and_event_log",
        run: bring_up_runs_the_command_buffer_and_event_log,
    },
    Test {
        name: "amdvi::unattached_device_dma_is_blocked",
        run: unattached_device_dma_is_blocked,
    },
    Test {
        name: "amdvi::blocked_domain_attach_and_detach_keep_dma_blocked",
        run: blocked_domain_attach_and_detach_keep_dma_blocked,
    },
    Test {
        name: "amdvi::illegal_command_does_not_wedge_the_command_buffer",
        run: illegal_command_does_not_wedge_the_command_buffer,
    },
    Test {
        name: "amdvi::blocked_dma_is_recorded_as_io_page_fault",
        run: blocked_dma_is_recorded_as_io_page_fault,
    },
    Test {
        name: "amdvi::edu_msi_arrives_through_its_irte",
        run: edu_msi_arrives_through_its_irte,
    },
    Test {
        name: "amdvi::aligned_unmap_flush_costs_one_invalidation_one_wait_one_tail_write",
        run: aligned_unmap_flush_costs_one_invalidation_one_wait_one_tail_write,
    },
];

/// The unit, or the reason the test does not apply / failed to start.
macro_rules! unit_or_skip {
    ($platform:expr) => {
        match glue::unit($platform) {
            Ok(unit) => unit,
            Err(Absent::NoIvrs) => {
                return Ok(Outcome::NotApplicable("no AMD-Vi IVRS on this machine"))
            }
            Err(other) => return Err(format!("AMD-Vi unit unusable: {other:?}")),
        }
    };
}

fn edus() -> Vec<&'static crate::devices::PciDevice> {
    crate::devices::edus().collect()
}

fn open(
    platform: &Platform,
    device: &crate::devices::PciDevice,
) -> Result<edu::Edu<'static>, alloc::string::String> {
    crate::devices::open_edu(platform, device).map_err(|err| format!("{err:?}"))
}

/// A frame filled with `byte`.
fn filled_frame(byte: u8) -> Result<frames::Frames, &'static str> {
    let frame = frames::alloc().ok_or("no frame")?;
    // SAFETY: the frame was just allocated to the caller and is identity-mapped.
    unsafe { core::ptr::write_bytes(frame.as_mut_ptr(), byte, frame.len()) };
    Ok(frame)
}

/// True when every byte of `frame` still reads `byte` (volatile: a device may have
/// written it).
fn frame_holds(frame: &frames::Frames, byte: u8) -> bool {
    // SAFETY: the frame belongs to the test; volatile reads of DMA-visible memory.
    (0..frame.len()).all(|i| unsafe { core::ptr::read_volatile(frame.as_mut_ptr().add(i)) } == byte)
}

fn unit_is_discovered_from_the_ivrs(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let unit = unit.lock();
    let description = unit.description();
    ensure_eq!(
        description.mmio_base,
        0xFED8_0000,
        "register base from the IVHD"
    );
    for device in edus() {
        let id = device.function.bdf.requester_id();
        ensure!(
            description.translates(id),
            "IVHD does not list edu {} ({id:#x})",
            device.function.bdf
        );
    }
    // The live EFR matches the IVHD 11h image and is reported raw.
    ensure_eq!(
        Some(unit.extended_features().0),
        description.efr_image,
        "EFR register vs IVHD image"
    );
    match unit.hw_info() {
        HwInfo::AmdVi { efr, .. } => ensure_eq!(efr, unit.extended_features().0, "hw_info EFR"),
        other => return Err(format!("hw_info: {other:?}")),
    }
    let edu_id = glue::device_id(edus()[0].function.bdf);
    let regions = unit.reserved_regions(edu_id);
    ensure!(
        regions
            .iter()
            .any(|r| r.kind == ReservedKind::Msi && r.range.start == 0xFEE0_0000),
        "interrupt window not reserved: {regions:?}"
    );
    Ok(Outcome::Passed)
}

fn bring_up_runs_the_command_buffer_and_event_log(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let mut unit = unit.lock();
    // SAFETY: reading the status register the unit owns; reads have no side effects.
    let status = {
        let base = unit.description().mmio_base as *const u8;
        unsafe { core::ptr::read_volatile(base.add(0x2020).cast::<u64>()) }
    };
    let status = regs::Status::from_bits_retain(status);
    ensure!(
        status.contains(regs::Status::CMD_BUF_RUN | regs::Status::EVENT_LOG_RUN),
        "status {status:?}"
    );
    for device in edus() {
        let dte = unit
            .dte(device.function.bdf.requester_id())
            .ok_or("edu outside the device table")?;
        ensure!(
            dte.blocks_dma(),
            "edu {} DTE not blocked: {dte:x?}",
            device.function.bdf
        );
        ensure_eq!(
            dte.int_ctl(),
            amdvi::dte::IntCtl::Abort as u8,
            "IntCtl of an unattached edu"
        );
    }
    // An empty batch is exactly one COMPLETION_WAIT and one tail write, and completes.
    let before = unit.counters();
    unit.run(&[])
        .map_err(|err| format!("COMPLETION_WAIT: {err:?}"))?;
    let cost = unit.counters().since(&before);
    ensure_eq!(
        (cost.commands, cost.completion_waits, cost.tail_writes),
        (1, 1, 1),
        "commands, waits, tail writes"
    );
    Ok(Outcome::Passed)
}

/// A device write to RAM from an unattached (blocked) edu leaves memory unchanged.
fn dma_write_is_blocked(
    platform: &Platform,
    device: &crate::devices::PciDevice,
) -> Result<bool, alloc::string::String> {
    let edu = open(platform, device)?;
    let target = filled_frame(0xA5)?;
    let result = edu.dma(edu::Direction::ToRam, target.phys, 0, edu::BUFFER_SIZE);
    let unchanged = frame_holds(&target, 0xA5);
    frames::free(target);
    result.map_err(|err| format!("edu DMA: {err:?}"))?;
    Ok(unchanged)
}

fn unattached_device_dma_is_blocked(platform: &Platform) -> TestResult {
    let _unit = unit_or_skip!(platform);
    let free_before = frames::free_count();
    for device in edus() {
        ensure!(
            dma_write_is_blocked(platform, device)?,
            "edu {} wrote RAM through a blocked DTE",
            device.function.bdf
        );
    }
    ensure_eq!(frames::free_count(), free_before, "free frames");
    Ok(Outcome::Passed)
}

fn blocked_domain_attach_and_detach_keep_dma_blocked(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let free_before = frames::free_count();
    let device = edus()[1];
    let id = glue::device_id(device.function.bdf);
    let domain = {
        let mut unit = unit.lock();
        let domain = unit
            .alloc_domain(DomainKind::Blocked)
            .map_err(|err| format!("{err:?}"))?;
        let before = unit.counters();
        unit.attach(id, domain)
            .map_err(|err| format!("attach: {err:?}"))?;
        let cost = unit.counters().since(&before);
        ensure_eq!(
            (
                cost.invalidate_devtab_entry,
                cost.completion_waits,
                cost.tail_writes
            ),
            (1, 1, 1),
            "attach: INVALIDATE_DEVTAB_ENTRY, COMPLETION_WAIT, tail writes"
        );
        ensure!(
            unit.dte(id.0 as u16).is_some_and(|dte| dte.blocks_dma()),
            "DTE not blocked after attaching to a blocked domain"
        );
        ensure_eq!(
            unit.free_domain(domain),
            Err(::iommu::IommuError::Busy),
            "freeing an attached domain"
        );
        domain
    };
    ensure!(
        dma_write_is_blocked(platform, device)?,
        "DMA landed while attached to a blocked domain"
    );
    {
        let mut unit = unit.lock();
        let before = unit.counters();
        unit.detach(id);
        let cost = unit.counters().since(&before);
        // The old domain's IOTLB entries go too (QEMU keys its IOTLB by requester).
        ensure_eq!(
            (
                cost.invalidate_devtab_entry,
                cost.invalidate_iommu_pages,
                cost.completion_waits
            ),
            (1, 1, 1),
            "detach: INVALIDATE_DEVTAB_ENTRY, INVALIDATE_IOMMU_PAGES, COMPLETION_WAIT"
        );
        unit.free_domain(domain)
            .map_err(|err| format!("free: {err:?}"))?;
    }
    ensure_eq!(frames::free_count(), free_before, "free frames");
    Ok(Outcome::Passed)
}

fn illegal_command_does_not_wedge_the_command_buffer(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let mut unit = unit.lock();
    let before = unit.counters();
    let logged = unit
        .probe_event_log()
        .map_err(|err| format!("illegal command probe: {err:?}"))?;
    if logged {
        // The error was surfaced as IllegalCommand (or a recovered timeout) and counted.
        ensure!(
            unit.counters().since(&before).command_errors >= 1,
            "an illegal command the event log recorded was not counted as an error"
        );
    }
    // Whatever the IOMMU did with it, the next batch completes.
    for _ in 0..3 {
        unit.run(&[amdvi::command::Command::invalidate_all()])
            .map_err(|err| format!("command after the illegal one: {err:?}"))?;
    }
    Ok(Outcome::Passed)
}

fn blocked_dma_is_recorded_as_io_page_fault(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let works = unit
        .lock()
        .probe_event_log()
        .map_err(|err| format!("probe: {err:?}"))?;
    if !works {
        return Ok(Outcome::NotApplicable(
            "this IOMMU never writes its event log (QEMU 10.0.2, QEMU-NOTES §2)",
        ));
    }
    let device = edus()[0];
    let mut drained: Vec<FaultRecord> = Vec::new();
    unit.lock().drain_faults(&mut drained);
    drained.clear();
    ensure!(
        dma_write_is_blocked(platform, device)?,
        "blocked DMA landed"
    );
    unit.lock().drain_faults(&mut drained);
    let id = glue::device_id(device.function.bdf);
    ensure!(
        drained
            .iter()
            .any(|r| r.requester == id && r.access == Access::Write),
        "no write fault from {id:?}: {drained:?}"
    );
    Ok(Outcome::Passed)
}

fn note_interrupt() {}

fn edu_msi_arrives_through_its_irte(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let free_before = frames::free_count();
    let device = edus()[0];
    let id = device.function.bdf.requester_id();
    let edu = open(platform, device)?;
    let config = &platform.pci.ecam;
    let msi = pci::Msi::find(config, device.function.bdf).ok_or("edu has no MSI capability")?;
    let vector = crate::irq::alloc_vector(note_interrupt).ok_or("no free vector")?;
    let irq = u32::from(vector);
    let (compat_address, compat_data) = crate::irq::msi_message(vector);
    let wait = Duration::from_millis(200);
    let raise = |edu: &edu::Edu| {
        let seen = crate::irq::count(irq);
        edu.raise_interrupt(1);
        let delivered = crate::irq::wait_for(irq, seen, wait);
        edu.acknowledge_interrupt(1);
        delivered
    };

    // Unattached: IntCtl=abort, so even a well-formed compatibility MSI is dropped.
    msi.enable(config, compat_address, compat_data as u16);
    let leaked = raise(&edu);

    // Remapped: the device sends IRTE index 5; the IRTE names the vector.
    const INDEX: u16 = 5;
    let (address, data) = irte::remappable_msi(INDEX).ok_or("index")?;
    let target = irte::target_of_compat_msi(compat_address, compat_data);
    let setup = {
        let mut unit = unit.lock();
        let before = unit.counters();
        let result = unit.remap_interrupt(id, INDEX, target);
        (result, unit.counters().since(&before))
    };
    msi.enable(config, address, data as u16);
    let remapped = setup.0.is_ok() && raise(&edu);

    // RemapEn=0 on that IRTE: aborted again.
    let disabled = unit.lock().disable_interrupt(id, INDEX);
    let after_disable = raise(&edu);

    msi.disable(config);
    let blocked = unit.lock().block_interrupts(id);
    crate::irq::free(irq);

    ensure!(!leaked, "an MSI got through a DTE with IntCtl=abort");
    setup.0.map_err(|err| format!("remap: {err:?}"))?;
    ensure_eq!(
        (
            setup.1.invalidate_devtab_entry,
            setup.1.invalidate_interrupt_table,
            setup.1.completion_waits
        ),
        (1, 1, 1),
        "remap: INVALIDATE_DEVTAB_ENTRY, INVALIDATE_INTERRUPT_TABLE, COMPLETION_WAIT"
    );
    ensure!(
        remapped,
        "no MSI on vector {vector:#x} through IRTE {INDEX}"
    );
    disabled.map_err(|err| format!("disable: {err:?}"))?;
    ensure!(!after_disable, "an MSI got through an IRTE with RemapEn=0");
    blocked.map_err(|err| format!("block: {err:?}"))?;
    ensure_eq!(frames::free_count(), free_before, "free frames");
    Ok(Outcome::Passed)
}

fn aligned_unmap_flush_costs_one_invalidation_one_wait_one_tail_write(
    platform: &Platform,
) -> TestResult {
    let unit = unit_or_skip!(platform);
    let mut unit = unit.lock();
    let domain = unit
        .alloc_domain(DomainKind::Blocked)
        .map_err(|err| format!("{err:?}"))?;
    let mut result = Ok(Outcome::Passed);
    for k in [0u32, 4, 9] {
        let mut gather = Gather::default();
        let base = 0x4000_0000u64;
        for page in 0..(1u64 << k) {
            gather.add_leaf(base + page * 4096, 4096);
        }
        let before = unit.counters();
        if let Err(err) = unit.flush(domain, &gather) {
            result = Err(format!("flush 2^{k} pages: {err:?}"));
            break;
        }
        let cost = unit.counters().since(&before);
        let got = (
            cost.invalidate_iommu_pages,
            cost.completion_waits,
            cost.tail_writes,
            cost.commands,
            cost.mmio_writes,
        );
        if got != (1, 1, 1, 2, 1) {
            result = Err(format!(
                "2^{k}-page unmap: (INVALIDATE_IOMMU_PAGES, COMPLETION_WAIT, tail writes, commands, MMIO writes) = {got:?}"
            ));
            break;
        }
    }
    let _ = unit.free_domain(domain);
    result
}
