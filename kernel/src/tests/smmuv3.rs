//! SMMUv3 in QEMU: bring-up, stream tables, blocked and bypassed streams,
//! the event and command queues, proven with edu DMA.
//!
//! The tests run in order in one boot: the linear stream table first, then
//! the two-level one (QEMU keeps two-level lookup once FMT = 1 was written).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use iommu::{DeviceId, DomainKind, HwInfo, IommuUnit, ReservedKind};
use smmuv3::event::EventKind;
use smmuv3::regs::CommandError;
use smmuv3::{Command, Error, RawCommand, StreamTableFormat};

use crate::devices::PciDevice;
use crate::iommu::smmuv3 as glue;
use crate::memory::frames::{self, Frames};
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "smmuv3::discovered_with_stream_ids_and_id_registers",
        run: discovered_with_stream_ids_and_id_registers,
    },
    Test {
        name: "smmuv3::linear_table_blocks_unattached_dma_and_reports_bad_ste",
        run: linear_table_blocks_unattached_dma_and_reports_bad_ste,
    },
    Test {
        name: "smmuv3::identity_domain_moves_bytes_and_detach_aborts_silently",
        run: identity_domain_moves_bytes_and_detach_aborts_silently,
    },
    Test {
        name: "smmuv3::illegal_command_is_skipped_and_acknowledged_through_gerrorn",
        run: illegal_command_is_skipped_and_acknowledged_through_gerrorn,
    },
    Test {
        name: "smmuv3::event_queue_overflow_is_detected_and_recovered",
        run: event_queue_overflow_is_detected_and_recovered,
    },
    Test {
        name: "smmuv3::eventq_and_gerror_wired_interrupts_fire",
        run: eventq_and_gerror_wired_interrupts_fire,
    },
    Test {
        name: "smmuv3::two_level_table_carries_dma_and_blocks_the_other_stream",
        run: two_level_table_carries_dma_and_blocks_the_other_stream,
    },
    Test {
        name: "smmuv3::msi_doorbell_is_a_reserved_region",
        run: msi_doorbell_is_a_reserved_region,
    },
];

/// Bytes per faulting transfer: QEMU records one event per 4-byte chunk, so
/// 64 bytes give 16 events and stay well inside the 128-entry event queue.
const SMALL_DMA: usize = 64;
/// A byte no transfer in these tests writes.
const UNTOUCHED: u8 = 0x5A;

fn not_here(platform: &Platform) -> Option<Outcome> {
    glue::description(platform)
        .is_none()
        .then_some(Outcome::NotApplicable("no SMMUv3 in this machine"))
}

/// The two edu devices with their StreamIDs.
fn edus(platform: &Platform) -> Result<Vec<(&'static PciDevice, u32)>, String> {
    let list: Vec<_> = crate::devices::edus()
        .map(|device| {
            glue::stream_id(platform, device.function.bdf)
                .map(|sid| (device, sid))
                .ok_or(format!("{} has no StreamID", device.function.bdf))
        })
        .collect::<Result<_, _>>()?;
    ensure!(
        list.len() >= 2,
        "need two edu devices, found {}",
        list.len()
    );
    Ok(list)
}

fn bytes(frame: &Frames, len: usize) -> Vec<u8> {
    // SAFETY: the frame is owned by the test and identity-mapped; volatile
    // because a device may have written it.
    (0..len)
        .map(|i| unsafe { core::ptr::read_volatile(frame.as_mut_ptr().add(i)) })
        .collect()
}

fn fill(frame: &Frames, len: usize, value: impl Fn(usize) -> u8) {
    for i in 0..len {
        // SAFETY: as in `bytes`.
        unsafe { core::ptr::write_volatile(frame.as_mut_ptr().add(i), value(i)) };
    }
}

fn open(platform: &Platform, device: &PciDevice) -> Result<edu::Edu<'static>, String> {
    crate::devices::open_edu(platform, device).map_err(|err| format!("{err:?}"))
}

/// The device writes its buffer to `frame`; true when anything landed.
fn to_ram_lands(platform: &Platform, device: &PciDevice, len: usize) -> Result<bool, String> {
    let edu = open(platform, device)?;
    let frame = frames::alloc().ok_or("no frame")?;
    fill(&frame, len, |_| UNTOUCHED);
    let result = edu.dma(edu::Direction::ToRam, frame.phys, 0, len);
    let landed = bytes(&frame, len).iter().any(|&b| b != UNTOUCHED);
    frames::free(frame);
    result.map_err(|err| format!("edu DMA: {err:?}"))?;
    Ok(landed)
}

fn discovered_with_stream_ids_and_id_registers(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let description = glue::description(platform).ok_or("no SMMU")?;
    ensure_eq!(
        description.base,
        0x0905_0000,
        "SMMU base from the device tree"
    );
    ensure_eq!(
        description.eventq.and_then(|irq| irq.intid()),
        Some(74 + 32),
        "eventq interrupt"
    );
    ensure_eq!(
        description.gerror.and_then(|irq| irq.intid()),
        Some(77 + 32),
        "gerror interrupt"
    );
    let sids: Vec<u32> = edus(platform)?.iter().map(|(_, sid)| *sid).collect();
    ensure_eq!(sids, [0x08, 0x10], "edu StreamIDs through iommu-map");
    // Linear first: QEMU keeps two-level lookup once FMT = 1 was written.
    glue::bring_up(platform, StreamTableFormat::Linear { sid_bits: 8 })?;
    let info = glue::with_unit(platform, |unit| unit.hw_info())?;
    let HwInfo::ArmSmmuV3 { idr, aidr, .. } = info else {
        return Err(format!("hw_info is not SMMUv3: {info:?}"));
    };
    // IDR0: S1P/S2P as configured, TTF AArch64, COHACC; IDR1 SIDSIZE 16.
    let stages = idr[0] & 0b11;
    ensure!(stages != 0, "IDR0 {:#x} has no stage", idr[0]);
    ensure_eq!(idr[1] & 0x3F, 16, "IDR1.SIDSIZE");
    ensure!(aidr <= 0xFF, "AIDR {aidr:#x} out of range");
    Ok(Outcome::Passed)
}

fn linear_table_blocks_unattached_dma_and_reports_bad_ste(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let (device, sid) = edus(platform)?[0];
    let (two_level, sid_bits) = glue::with_unit(platform, |unit| {
        (unit.smmu.is_two_level(), unit.smmu.sid_bits())
    })?;
    ensure!(!two_level, "asked for a linear table");
    ensure_eq!(sid_bits, 8, "linear table StreamID bits");
    ensure!(
        !to_ram_lands(platform, device, SMALL_DMA)?,
        "DMA from unattached {} landed",
        device.function.bdf
    );
    let faults = glue::with_unit(platform, |unit| unit.take_unowned_faults())?;
    ensure_eq!(faults.len(), 1, "coalesced fault records");
    ensure_eq!(faults[0].event.kind, EventKind::BadSte, "event type");
    ensure_eq!(faults[0].event.sid, sid, "StreamID");
    ensure!(faults[0].count >= 1, "fault without events");
    // The queue is drained: nothing more comes out.
    let again = glue::with_unit(platform, |unit| unit.take_unowned_faults())?;
    ensure!(again.is_empty(), "event queue not drained: {again:?}");
    Ok(Outcome::Passed)
}

fn identity_domain_moves_bytes_and_detach_aborts_silently(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let (device, sid) = edus(platform)?[0];
    let free_before = frames::free_count();
    let domain = glue::with_unit(platform, |unit| unit.alloc_domain(DomainKind::Identity))?
        .map_err(|err| format!("alloc identity: {err:?}"))?;
    let before = glue::with_unit(platform, |unit| unit.smmu.counters())?;
    glue::with_unit(platform, |unit| unit.attach(DeviceId(sid), domain))?
        .map_err(|err| format!("attach: {err:?}"))?;
    let after = glue::with_unit(platform, |unit| unit.smmu.counters())?;
    // From an invalid STE: one hitless switch, one CFGI_STE and one CMD_SYNC.
    ensure_eq!(after.cfgi - before.cfgi, 1, "CFGI_STE per first attach");
    ensure_eq!(after.syncs - before.syncs, 1, "CMD_SYNC per first attach");

    let edu = open(platform, device)?;
    let source = frames::alloc().ok_or("no frame")?;
    let destination = frames::alloc().ok_or("no frame")?;
    fill(&source, edu::BUFFER_SIZE, |i| {
        (i as u8).wrapping_mul(7) ^ 0xC3
    });
    let moved = edu
        .dma(edu::Direction::ToDevice, source.phys, 0, edu::BUFFER_SIZE)
        .and_then(|()| edu.dma(edu::Direction::ToRam, destination.phys, 0, edu::BUFFER_SIZE));
    let same = bytes(&source, edu::BUFFER_SIZE) == bytes(&destination, edu::BUFFER_SIZE);
    frames::free(source);
    frames::free(destination);
    moved.map_err(|err| format!("edu DMA: {err:?}"))?;
    ensure!(same, "bytes through the bypass STE differ");

    glue::with_unit(platform, |unit| unit.detach(DeviceId(sid)))?;
    ensure!(
        !to_ram_lands(platform, device, SMALL_DMA)?,
        "DMA after detach landed"
    );
    let faults = glue::with_unit(platform, |unit| {
        let mut out = Vec::new();
        unit.drain_faults(&mut out);
        out
    })?;
    ensure!(faults.is_empty(), "abort STE recorded events: {faults:?}");
    glue::with_unit(platform, |unit| unit.free_domain(domain))?
        .map_err(|err| format!("free: {err:?}"))?;
    ensure_eq!(frames::free_count(), free_before, "free frames");
    Ok(Outcome::Passed)
}

fn illegal_command_is_skipped_and_acknowledged_through_gerrorn(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    /// An opcode SMMUv3 §4 leaves unallocated.
    const UNALLOCATED_OPCODE: u64 = 0x7F;
    let result = glue::with_unit(platform, |unit| {
        let before = unit.smmu.counters();
        let submitted = unit.smmu.submit_raw(&[RawCommand([UNALLOCATED_OPCODE, 0])]);
        let synced = unit.smmu.sync();
        let gerror_after = unit.smmu.active_gerror();
        let next = unit
            .smmu
            .submit(&[Command::CFGI_ALL])
            .and_then(|()| unit.smmu.sync());
        (
            submitted,
            synced,
            gerror_after,
            next,
            unit.smmu.counters().command_errors - before.command_errors,
        )
    })?;
    let (submitted, synced, gerror_after, next, errors) = result;
    ensure_eq!(submitted, Ok(()), "submitting");
    ensure_eq!(
        synced,
        Err(Error::CommandRejected {
            error: CommandError::Illegal,
            opcode: UNALLOCATED_OPCODE as u8
        }),
        "sync after an illegal command"
    );
    ensure!(
        !gerror_after.contains(smmuv3::regs::Gerror::CMDQ_ERR),
        "CMDQ_ERR still active after recovery: {gerror_after:?}"
    );
    ensure_eq!(next, Ok(()), "the queue runs again");
    ensure_eq!(errors, 1, "command errors counted");
    Ok(Outcome::Passed)
}

fn event_queue_overflow_is_detected_and_recovered(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let (device, sid) = edus(platform)?[1];
    let before = glue::with_unit(platform, |unit| unit.smmu.counters())?;
    // 4 KiB from a stream with an invalid STE: 1024 events for a 128-entry queue.
    ensure!(
        !to_ram_lands(platform, device, edu::BUFFER_SIZE)?,
        "DMA from unattached stream landed"
    );
    let faults = glue::with_unit(platform, |unit| unit.take_unowned_faults())?;
    let after = glue::with_unit(platform, |unit| unit.smmu.counters())?;
    ensure!(
        after.event_overflows > before.event_overflows,
        "no overflow detected ({} events read)",
        after.events - before.events
    );
    ensure!(
        faults.iter().all(|f| f.event.sid == sid),
        "faults of other streams: {faults:?}"
    );
    // After the overflow was acknowledged, events are recorded again.
    ensure!(
        !to_ram_lands(platform, device, SMALL_DMA)?,
        "small DMA landed"
    );
    let faults = glue::with_unit(platform, |unit| unit.take_unowned_faults())?;
    ensure_eq!(faults.len(), 1, "faults after recovery");
    ensure_eq!(
        faults[0].event.kind,
        EventKind::BadSte,
        "event after recovery"
    );
    Ok(Outcome::Passed)
}

fn two_level_table_carries_dma_and_blocks_the_other_stream(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    glue::bring_up(platform, StreamTableFormat::TwoLevel)?;
    let pair = edus(platform)?;
    let ((blocked, blocked_sid), (carried, carried_sid)) = (pair[0], pair[1]);
    let (two_level, sid_bits) = glue::with_unit(platform, |unit| {
        (unit.smmu.is_two_level(), unit.smmu.sid_bits())
    })?;
    ensure!(two_level, "asked for a two-level table");
    ensure_eq!(sid_bits, 16, "two-level table covers IDR1.SIDSIZE");
    let domain = glue::with_unit(platform, |unit| unit.alloc_domain(DomainKind::Identity))?
        .map_err(|err| format!("alloc identity: {err:?}"))?;
    glue::with_unit(platform, |unit| unit.attach(DeviceId(carried_sid), domain))?
        .map_err(|err| format!("attach: {err:?}"))?;
    ensure!(
        to_ram_lands(platform, carried, SMALL_DMA)?,
        "DMA through a level-2 STE did not land"
    );
    ensure!(
        !to_ram_lands(platform, blocked, SMALL_DMA)?,
        "DMA of the unattached stream landed"
    );
    let faults = glue::with_unit(platform, |unit| unit.take_unowned_faults())?;
    ensure_eq!(faults.len(), 1, "faults");
    ensure_eq!(
        (faults[0].event.kind, faults[0].event.sid),
        (EventKind::BadSte, blocked_sid),
        "fault of the unattached stream"
    );
    glue::with_unit(platform, |unit| {
        unit.detach(DeviceId(carried_sid));
        unit.free_domain(domain)
    })?
    .map_err(|err| format!("free: {err:?}"))?;
    Ok(Outcome::Passed)
}

fn msi_doorbell_is_a_reserved_region(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let Some(doorbell) = glue::msi_doorbell(platform) else {
        return Ok(Outcome::NotApplicable(
            "no GICv2m frame or ITS (gic-version=2?)",
        ));
    };
    let sid = edus(platform)?[0].1;
    let regions = glue::with_unit(platform, |unit| unit.reserved_regions(DeviceId(sid)))?;
    ensure!(
        regions
            .iter()
            .any(|r| r.kind == ReservedKind::Msi && r.range == doorbell),
        "{doorbell:?} not reserved: {regions:?}"
    );
    ensure_eq!(doorbell.start, 0x0802_0000, "GICv2m frame");
    Ok(Outcome::Passed)
}

fn eventq_and_gerror_wired_interrupts_fire(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let (eventq, gerror) = glue::enable_interrupts(platform)?;
    ensure_eq!((eventq, gerror), (74 + 32, 77 + 32), "INTIDs");
    let (device, _) = edus(platform)?[1];
    let seen = crate::irq::count(eventq);
    glue::EVENTS_PENDING.store(false, core::sync::atomic::Ordering::SeqCst);
    ensure!(
        !to_ram_lands(platform, device, SMALL_DMA)?,
        "DMA of an unattached stream landed"
    );
    let delivered = crate::irq::wait_for(eventq, seen, Duration::from_secs(1));
    let faults = glue::with_unit(platform, |unit| unit.take_unowned_faults())?;
    ensure!(delivered, "no event queue interrupt");
    ensure!(
        glue::EVENTS_PENDING.load(core::sync::atomic::Ordering::SeqCst),
        "the handler did not run"
    );
    ensure_eq!(faults.len(), 1, "faults drained after the interrupt");

    let seen = crate::irq::count(gerror);
    let rejected = glue::with_unit(platform, |unit| {
        unit.smmu
            .submit_raw(&[RawCommand([0x7F, 0])])
            .and_then(|()| unit.smmu.sync())
    })?;
    ensure!(rejected.is_err(), "illegal command accepted");
    ensure!(
        crate::irq::wait_for(gerror, seen, Duration::from_secs(1)),
        "no global error interrupt"
    );
    Ok(Outcome::Passed)
}
