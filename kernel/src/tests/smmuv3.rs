//! SMMUv3 in QEMU, what only the SMMUv3 has: discovery, linear and two-level
//! stream tables, blocked and bypassed streams, the event and command
//! queues, every granule and contiguous runs, nesting, proven with edu DMA.
//! The DMA matrix every IOMMU shares is `dma_matrix.rs`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use iommu::{DeviceId, DomainKind, HwInfo, IommuError, IommuUnit, ReservedKind};
use smmuv3::fault::EventKind;
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
        name: "smmuv3::command_queue_wraps_and_a_batch_larger_than_it_completes",
        run: command_queue_wraps_and_a_batch_larger_than_it_completes,
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
    Test {
        name: "smmuv3::every_granule_idr5_offers_carries_dma",
        run: every_granule_idr5_offers_carries_dma,
    },
    Test {
        name: "smmuv3::task_memory_carries_dma_in_every_granule_with_free_frames_scattered",
        run: task_memory_carries_dma_in_every_granule,
    },
    Test {
        name: "smmuv3::contiguous_runs_carry_dma_and_go_only_whole_in_every_granule",
        run: contiguous_runs_carry_dma_and_go_only_whole_in_every_granule,
    },
    Test {
        name: "smmuv3::edu_msi_reaches_the_gic_through_a_paging_domain",
        run: edu_msi_reaches_the_gic_through_a_paging_domain,
    },
    Test {
        name: "smmuv3::aligned_unmap_costs_one_range_tlbi_and_one_sync",
        run: aligned_unmap_costs_one_range_tlbi_and_one_sync,
    },
    Test {
        name: "smmuv3::nested_task_stage1_over_kernel_stage2",
        run: nested_task_stage1_over_kernel_stage2,
    },
    Test {
        name: "smmuv3::the_demo_walk_reaches_the_page_it_mapped",
        run: the_demo_walk_reaches_the_page_it_mapped,
    },
];

/// Bytes per faulting transfer: QEMU records one event per 4-byte chunk, so
/// 64 bytes give 16 events and stay well inside the 128-entry event queue.
pub(crate) const SMALL_DMA: usize = 64;
/// A byte no transfer in these tests writes.
pub(crate) const UNTOUCHED: u8 = 0x5A;

pub(crate) fn not_here(platform: &Platform) -> Option<Outcome> {
    glue::description(platform)
        .is_none()
        .then_some(Outcome::NotApplicable("no SMMUv3 in this machine"))
}

/// The two edu devices on bus 0 with their StreamIDs (the driver tests
/// leave the bridge configuration's edus behind a bridge to the group tests:
/// their alias StreamID does not fit the 8-bit linear table tested here).
pub(crate) fn edus(platform: &Platform) -> Result<Vec<(&'static PciDevice, u32)>, String> {
    let list: Vec<_> = crate::devices::edus()
        .filter(|device| device.function.bdf.bus == 0)
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

/// Free frames once the unit is up and the level-2 stream tables of both edu
/// StreamIDs exist (both are allocated once per bring-up, not per test).
pub(crate) fn settled_free_frames(platform: &Platform) -> Result<usize, String> {
    for (_, sid) in edus(platform)? {
        glue::with_unit(platform, |unit| unit.hardware.read_ste(sid))?
            .map_err(|err| format!("STE of {sid:#x}: {err:?}"))?;
    }
    Ok(frames::free_count())
}

pub(crate) fn bytes(frame: &Frames, len: usize) -> Vec<u8> {
    // SAFETY: the frame is owned by the test and identity-mapped; volatile
    // because a device may have written it.
    (0..len)
        .map(|i| unsafe { core::ptr::read_volatile(frame.as_mut_ptr().add(i)) })
        .collect()
}

pub(crate) fn fill(frame: &Frames, len: usize, value: impl Fn(usize) -> u8) {
    for i in 0..len {
        // SAFETY: as in `bytes`.
        unsafe { core::ptr::write_volatile(frame.as_mut_ptr().add(i), value(i)) };
    }
}

pub(crate) fn open(platform: &Platform, device: &PciDevice) -> Result<edu::Edu<'static>, String> {
    crate::devices::open_edu(platform, device).map_err(|err| format!("{err:?}"))
}

/// The device writes its buffer to `frame`; true when anything landed.
pub(crate) fn to_ram_lands(
    platform: &Platform,
    device: &PciDevice,
    len: usize,
) -> Result<bool, String> {
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
        description.register_base,
        0x0905_0000,
        "SMMU base from the device tree"
    );
    ensure_eq!(
        description.eventq.intid(),
        Some(74 + 32),
        "eventq interrupt"
    );
    ensure_eq!(
        description.gerror.intid(),
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
        (unit.hardware.is_two_level(), unit.hardware.sid_bits())
    })?;
    ensure!(!two_level, "asked for a linear table");
    ensure_eq!(sid_bits, 8, "linear table StreamID bits");
    let (gbpa, cr0ack) = glue::with_unit(platform, |unit| {
        (unit.hardware.gbpa(), unit.hardware.cr0ack())
    })?;
    ensure!(
        gbpa.contains(smmuv3::regs::Gbpa::ABORT),
        "GBPA {gbpa:?}: unknown traffic would bypass while SMMUEN = 0"
    );
    use smmuv3::regs::Cr0;
    ensure_eq!(cr0ack, Cr0::SMMUEN | Cr0::EVENTQEN | Cr0::CMDQEN, "CR0ACK");
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
    let free_before = settled_free_frames(platform)?;
    let domain = glue::with_unit(platform, |unit| unit.alloc_domain(DomainKind::Identity))?
        .map_err(|err| format!("alloc identity: {err:?}"))?;
    let before = glue::with_unit(platform, |unit| unit.hardware.counters())?;
    glue::with_unit(platform, |unit| unit.attach(DeviceId(sid), domain))?
        .map_err(|err| format!("attach: {err:?}"))?;
    let after = glue::with_unit(platform, |unit| unit.hardware.counters())?;
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
        let before = unit.hardware.counters();
        // The rejection is the error of the call whose command it was.
        let synced = unit
            .hardware
            .execute_raw(&[RawCommand([UNALLOCATED_OPCODE, 0])]);
        let gerror_after = unit.hardware.active_gerror();
        let next = unit
            .hardware
            .submit(&[Command::CFGI_ALL])
            .and_then(|()| unit.hardware.sync());
        (
            synced,
            gerror_after,
            next,
            unit.hardware.counters().command_errors - before.command_errors,
        )
    })?;
    let (synced, gerror_after, next, errors) = result;
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
    let before = glue::with_unit(platform, |unit| unit.hardware.counters())?;
    // 4 KiB from a stream with an invalid STE: 1024 events for a 128-entry queue.
    ensure!(
        !to_ram_lands(platform, device, edu::BUFFER_SIZE)?,
        "DMA from unattached stream landed"
    );
    let faults = glue::with_unit(platform, |unit| unit.take_unowned_faults())?;
    let after = glue::with_unit(platform, |unit| unit.hardware.counters())?;
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
        (unit.hardware.is_two_level(), unit.hardware.sid_bits())
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
    // QEMU virt: the GICv2m frame, or the ITS's GITS_TRANSLATER page.
    let expected = if crate::irq::controller_isolates_msi() {
        0x0809_0000
    } else {
        0x0802_0000
    };
    ensure_eq!(doorbell.start, expected, "doorbell page");
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
        unit.hardware.execute_raw(&[RawCommand([0x7F, 0])])
    })?;
    ensure!(rejected.is_err(), "illegal command accepted");
    ensure!(
        crate::irq::wait_for(gerror, seen, Duration::from_secs(1)),
        "no global error interrupt"
    );
    Ok(Outcome::Passed)
}

pub(crate) fn rw() -> iommu::Prot {
    iommu::Prot {
        read: true,
        write: true,
    }
}

pub(crate) fn unit<R>(
    platform: &Platform,
    f: impl FnOnce(&mut smmuv3::SmmuUnit<'static>) -> R,
) -> Result<R, String> {
    glue::with_unit(platform, f)
}

pub(crate) fn map(
    platform: &Platform,
    domain: iommu::DomainHandle,
    iova: u64,
    phys: u64,
    len: u64,
    prot: iommu::Prot,
) -> Result<iommu::Gather, String> {
    unit(platform, |u| {
        let gather = u.map(domain, iova, phys, len, prot)?;
        u.flush(domain, &gather)?;
        Ok::<_, iommu::IommuError>(gather)
    })?
    .map_err(|err| format!("map {iova:#x}: {err:?}"))
}

pub(crate) fn attach(
    platform: &Platform,
    sid: u32,
    domain: iommu::DomainHandle,
) -> Result<(), String> {
    unit(platform, |u| u.attach(DeviceId(sid), domain))?
        .map_err(|err| format!("attach {sid:#x}: {err:?}"))
}

pub(crate) fn faults_of(
    platform: &Platform,
    domain: iommu::DomainHandle,
) -> Result<Vec<smmuv3::Fault>, String> {
    unit(platform, |u| u.take_domain_faults(domain))
}

/// One fault of `kind` at `iova` from `sid`, coalesced from its chunk events.
pub(crate) fn expect_one_fault(
    faults: &[smmuv3::Fault],
    sid: u32,
    iova: u64,
    kind: EventKind,
    read: bool,
) -> Result<(), String> {
    ensure_eq!(faults.len(), 1, alloc::format!("fault records {faults:?}"));
    let event = &faults[0].event;
    ensure_eq!(
        (event.sid, event.input_addr, event.kind, event.read),
        (sid, iova, kind, read),
        "fault (sid, address, type, read)"
    );
    ensure_eq!(
        faults[0].count as usize,
        SMALL_DMA / 4,
        "events coalesced (one per 4-byte chunk)"
    );
    Ok(())
}

pub(crate) fn dma(
    edu: &edu::Edu<'_>,
    direction: edu::Direction,
    iova: u64,
    len: usize,
) -> Result<(), String> {
    edu.dma(direction, iova, 0, len)
        .map_err(|err| format!("edu DMA at {iova:#x}: {err:?}"))
}

/// Runs `body` once for every granule IDR5 offers, with a paging domain of that
/// granule, `bytes(granule)` of memory aligned to its size and the first edu with
/// its StreamID; detaches that edu, frees the domain and the memory after each,
/// puts the 4K granule back and checks that no frame leaked.
fn with_each_granule(
    platform: &Platform,
    bytes: impl Fn(smmuv3::Granule) -> u64,
    mut body: impl FnMut(
        smmuv3::Granule,
        iommu::DomainHandle,
        &Frames,
        (&PciDevice, u32),
    ) -> Result<(), String>,
) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let (device, sid) = edus(platform)?[0];
    let granules: Vec<smmuv3::Granule> = unit(platform, |u| {
        u.hardware.features().idr5().granules().collect()
    })?;
    ensure!(!granules.is_empty(), "IDR5 offers no granule");
    let free_before = settled_free_frames(platform)?;
    for granule in granules {
        let size = bytes(granule);
        let memory = frames::alloc_contiguous((size / 4096) as usize, size as usize)
            .ok_or(alloc::format!("{granule:?}: no {size:#x} aligned bytes"))?;
        let result = (|| -> Result<(), String> {
            unit(platform, |u| u.set_granule(granule))?
                .map_err(|err| format!("{granule:?}: {err:?}"))?;
            let domain = unit(platform, |u| u.alloc_domain(DomainKind::Paging))?
                .map_err(|err| format!("{granule:?} domain: {err:?}"))?;
            let checked = body(granule, domain, &memory, (device, sid));
            let freed = unit(platform, |u| {
                u.detach(DeviceId(sid));
                u.free_domain(domain)
            })?;
            checked?;
            freed.map_err(|err| format!("free: {err:?}"))
        })();
        frames::free(memory);
        result?;
    }
    unit(platform, |u| u.set_granule(smmuv3::Granule::K4))?.map_err(|err| format!("{err:?}"))?;
    ensure_eq!(frames::free_count(), free_before, "free frames");
    Ok(Outcome::Passed)
}

/// The device writes its buffer to `iova`; true when anything landed at
/// `offset` in `memory`.
fn lands_at(edu: &edu::Edu<'_>, iova: u64, memory: &Frames, offset: u64) -> Result<bool, String> {
    // SAFETY: inside memory the test owns.
    let target = unsafe { memory.as_mut_ptr().add(offset as usize) };
    for i in 0..SMALL_DMA {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(target.add(i), UNTOUCHED) };
    }
    dma(edu, edu::Direction::ToRam, iova, SMALL_DMA)?;
    // SAFETY: as above.
    Ok((0..SMALL_DMA).any(|i| unsafe { core::ptr::read_volatile(target.add(i)) } != UNTOUCHED))
}

fn every_granule_idr5_offers_carries_dma(platform: &Platform) -> TestResult {
    with_each_granule(
        platform,
        smmuv3::Granule::size,
        |granule, domain, page, (device, sid)| {
            let size = granule.size();
            let iova = 0x3000_0000;
            map(platform, domain, iova, page.phys, size, rw())?;
            attach(platform, sid, domain)?;
            // Land in the last 4 KiB of the page: the offset bits of the granule
            // must pass through.
            let offset = size - 4096;
            let edu = open(platform, device)?;
            ensure!(
                lands_at(&edu, iova + offset, page, offset)?,
                "{granule:?}: DMA did not land"
            );
            Ok(())
        },
    )
}

/// Issue 16: a task's own memory carries DMA in every granule IDR5 offers,
/// even when the free single frames are scattered. A map is a multiple of the
/// domain's smallest page (the IOAS alignment the task reads), so the pinned
/// memory under it must be physically contiguous in runs of that page; task
/// allocations are backed by naturally aligned contiguous chunks
/// (`task::DMA_CHUNK_PAGES`). edu-dma maps two spans of the alignment and
/// DMAs through them. Before, its 16K and 64K maps of memory built from
/// scattered frames failed with EINVAL.
fn task_memory_carries_dma_in_every_granule(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let granules: Vec<smmuv3::Granule> = unit(platform, |u| {
        u.hardware.features().idr5().granules().collect()
    })?;
    // The core and every per-device structure exist before counting.
    crate::iommufd_service::prepare();
    let free_before = settled_free_frames(platform)?;
    // Every other frame of a run held: frames handed out one by one from the
    // bottom of memory are never contiguous.
    let mut scattered: Vec<Frames> = (0..1024).filter_map(|_| frames::alloc()).collect();
    let held: Vec<Frames> = scattered.iter().copied().step_by(2).collect();
    scattered.retain(|frame| !held.contains(frame));
    scattered.into_iter().for_each(frames::free);
    let result = (|| -> Result<(), String> {
        for granule in granules {
            unit(platform, |u| u.set_granule(granule))?
                .map_err(|err| format!("{granule:?}: {err:?}"))?;
            let program = super::spawn_program("edu-dma", 0)?;
            let run = super::run_captured(alloc::vec![program]);
            let report = run.reports.first().ok_or("no report")?;
            let pages = 2 * granule.size() / 4096;
            ensure_eq!(
                report.exit.clone(),
                crate::task::Exit::Code(0),
                format!("edu-dma in the {granule:?} granule:\n{}", report.output)
            );
            ensure!(
                report
                    .output
                    .contains(&format!("{pages} pages of task memory")),
                "{granule:?}: edu-dma mapped {pages} pages:\n{}",
                report.output
            );
        }
        Ok(())
    })();
    unit(platform, |u| u.set_granule(smmuv3::Granule::K4))?.map_err(|err| format!("{err:?}"))?;
    held.into_iter().for_each(frames::free);
    result?;
    ensure_eq!(
        settled_free_frames(platform)?,
        free_before,
        "free frames after the runs"
    );
    Ok(Outcome::Passed)
}

/// Pages in one contiguous run (D8.6.1).
fn contiguous_run_entries(granule: smmuv3::Granule) -> u64 {
    match granule {
        smmuv3::Granule::K4 => 16,
        smmuv3::Granule::K16 => 128,
        smmuv3::Granule::K64 => 32,
    }
}

/// For every granule IDR5 offers, one aligned run of pages with the Contiguous
/// bit (D8.6.1: 16 x 4K, 128 x 16K, 32 x 64K): a DMA into its last page lands
/// at its offset, an unmap of one page of it changes nothing, and the whole run
/// unmapped and flushed blocks the DMA with one translation fault.
fn contiguous_runs_carry_dma_and_go_only_whole_in_every_granule(platform: &Platform) -> TestResult {
    let run_bytes = |granule: smmuv3::Granule| granule.size() * contiguous_run_entries(granule);
    with_each_granule(
        platform,
        run_bytes,
        |granule, domain, run, (device, sid)| {
            let page = granule.size();
            let size = run_bytes(granule);
            // Aligned for the run, not for the next level's block.
            let iova = 0x3000_0000 + size;
            map(platform, domain, iova, run.phys, size, rw())?;
            for i in 0..contiguous_run_entries(granule) {
                let leaf =
                    unit(platform, |u| u.translation(domain, iova + i * page))?.ok_or("no leaf")?;
                let contiguous = leaf.pte & io_page_table::format::arm::ARM_CONTIGUOUS != 0;
                ensure_eq!(
                    (contiguous, leaf.leaf_iova, leaf.leaf_size),
                    (true, iova, size),
                    alloc::format!("{granule:?} entry {i} (Contiguous, run, size)")
                );
            }
            attach(platform, sid, domain)?;
            let edu = open(platform, device)?;
            let last_page = size - page;
            ensure!(
                lands_at(&edu, iova + last_page, run, last_page)?,
                "{granule:?}: DMA into the run did not land"
            );
            let cut = unit(platform, |u| u.unmap(domain, iova + last_page, page))?;
            ensure_eq!(
                cut,
                Err(IommuError::Invalid),
                format!("{granule:?}: unmap of one page of a run is refused")
            );
            ensure!(
                lands_at(&edu, iova + last_page, run, last_page)?,
                "{granule:?}: the run stopped translating after a refused unmap"
            );
            let gather = unit(platform, |u| u.unmap(domain, iova, size))?
                .map_err(|err| format!("{granule:?}: unmap: {err:?}"))?;
            ensure_eq!(
                (gather.start, gather.last),
                (iova, iova + size - 1),
                alloc::format!("{granule:?} gather of the whole run")
            );
            unit(platform, |u| u.flush(domain, &gather))?
                .map_err(|err| format!("flush: {err:?}"))?;
            ensure!(
                !lands_at(&edu, iova + last_page, run, last_page)?,
                "{granule:?}: DMA landed after the run was unmapped and flushed"
            );
            expect_one_fault(
                &faults_of(platform, domain)?,
                sid,
                iova + last_page,
                EventKind::Translation,
                false,
            )
        },
    )
}

fn note_msi() {}

fn edu_msi_reaches_the_gic_through_a_paging_domain(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let (device, sid) = edus(platform)?[0];
    let Some((intid, message)) =
        crate::irq::alloc_device_msi(note_msi, device.function.bdf.requester_id())
    else {
        return Ok(Outcome::NotApplicable(
            "no GICv2m frame or ITS to signal through",
        ));
    };
    let (doorbell, data) = (message.address, message.data);
    let domain = unit(platform, |u| u.alloc_domain(DomainKind::Paging))?
        .map_err(|err| format!("alloc: {err:?}"))?;
    let config = &platform.pci.ecam;
    let msi = pci::Msi::find(config, device.function.bdf).ok_or("edu has no MSI")?;
    let result = (|| -> Result<(), String> {
        attach(platform, sid, domain)?;
        let edu = open(platform, device)?;
        let seen = crate::irq::count(intid);
        msi.enable(config, doorbell, data as u16);
        edu.raise_interrupt(1);
        let delivered = crate::irq::wait_for(intid, seen, Duration::from_secs(1));
        edu.acknowledge_interrupt(1);
        msi.disable(config);
        ensure!(
            delivered,
            "MSI to {doorbell:#x} not delivered through the domain"
        );
        Ok(())
    })();
    crate::irq::free(intid);
    let freed = unit(platform, |u| {
        u.detach(DeviceId(sid));
        u.free_domain(domain)
    })?;
    result?;
    freed.map_err(|err| format!("free: {err:?}"))?;
    Ok(Outcome::Passed)
}

fn aligned_unmap_costs_one_range_tlbi_and_one_sync(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let ril = unit(platform, |u| u.hardware.features().range_invalidation())?;
    if !ril {
        return Ok(Outcome::NotApplicable(
            "no IDR3.RIL (per-leaf cost is host-tested)",
        ));
    }
    let free_before = settled_free_frames(platform)?;
    let costs = crate::figures::smmuv3::unmap_costs(platform, &[0, 1, 2, 3, 4, 5, 9])?;
    for cost in &costs {
        // A map owes nothing (invalid entries are never cached, issue 16).
        ensure_eq!(
            cost.map_commands,
            0,
            alloc::format!("commands of mapping {} pages", cost.pages)
        );
        ensure_eq!(
            (cost.tlbi, cost.syncs, cost.commands, cost.mmio_writes),
            (1, 1, 2, 1),
            alloc::format!(
                "(TLBI, CMD_SYNC, commands, MMIO writes) for {} pages",
                cost.pages
            )
        );
    }
    // Without RIL: one per leaf up to the limit, then one ASID-wide.
    // (512 pages are one 2 MiB block: one leaf, one TLBI.)
    let without: Vec<(u64, u64, bool)> = costs
        .iter()
        .map(|c| (c.pages, c.tlbi_without_ril, c.context_wide_without_ril))
        .collect();
    ensure_eq!(
        without,
        [
            (1, 1, false),
            (2, 2, false),
            (4, 4, false),
            (8, 8, false),
            (16, 16, false),
            (32, 1, true),
            (512, 1, false)
        ],
        "planned TLBIs without RIL"
    );
    ensure_eq!(frames::free_count(), free_before, "free frames");

    // Attach costs: from abort one hitless switch (1 CFGI + 1 SYNC); between
    // two stage-1 domains only the CD pointer (word 0) changes: hitless too.
    let sid = edus(platform)?[0].1;
    let costs = unit(
        platform,
        |u| -> Result<(u64, u64, u64), iommu::IommuError> {
            let a = u.alloc_domain(DomainKind::Paging)?;
            let b = u.alloc_domain(DomainKind::Paging)?;
            let c0 = u.hardware.counters();
            u.attach(DeviceId(sid), a)?;
            let c1 = u.hardware.counters();
            u.attach(DeviceId(sid), b)?;
            let c2 = u.hardware.counters();
            u.detach(DeviceId(sid));
            let c3 = u.hardware.counters();
            u.free_domain(a)?;
            u.free_domain(b)?;
            Ok((
                c1.commands - c0.commands,
                c2.commands - c1.commands,
                c3.commands - c2.commands,
            ))
        },
    )?
    .map_err(|err| format!("attach costs: {err:?}"))?;
    let stage1 = unit(platform, |u| {
        u.paging_stage() == smmuv3::paging::PagingStage::Stage1
    })?;
    // Stage 2 -> stage 2 changes the VMID (word 2) and S2TTB (word 3): through abort.
    let switch = if stage1 { 2 } else { 4 };
    ensure_eq!(costs, (2, switch, 4), "commands for attach, switch, detach");
    Ok(Outcome::Passed)
}

/// IPA window of the nested test's stage 2 outside RAM: proves stage 2
/// translates rather than passing IPAs through.
const IPA_WINDOW: u64 = 0xC0_0000_0000 >> 4;
/// An IPA stage 2 does not map.
const IPA_HOLE: u64 = 0xD0_0000_0000 >> 4;

/// Why a nesting test cannot run here (no SMMU, or not both stages), if so.
pub(crate) fn nesting_unavailable(platform: &Platform) -> Result<Option<Outcome>, String> {
    if let Some(outcome) = not_here(platform) {
        return Ok(Some(outcome));
    }
    let (stage1, stage2) = unit(platform, |u| {
        (
            u.hardware.features().stage1(),
            u.hardware.features().stage2(),
        )
    })?;
    Ok((!(stage1 && stage2)).then_some(Outcome::NotApplicable(
        "the SMMU does not implement both stages",
    )))
}

fn nested_task_stage1_over_kernel_stage2(platform: &Platform) -> TestResult {
    if let Some(outcome) = nesting_unavailable(platform)? {
        return Ok(outcome);
    }
    let (device, sid) = edus(platform)?[0];
    let crate::platform::Firmware::DeviceTree(tree) = &platform.firmware;
    let ram = *tree.memory.first().ok_or("no RAM in the device tree")?;
    let free_before = settled_free_frames(platform)?;
    let parent = unit(platform, |u| u.alloc_domain(DomainKind::NestParent))?
        .map_err(|err| format!("nest parent: {err:?}"))?;
    let buffer = frames::alloc().ok_or("no frame")?;
    // The task's stage-1 table and CD: ordinary memory, addressed by IPA.
    let format = io_page_table::ArmLpae::new(io_page_table::ArmConfig {
        stage: io_page_table::Stage::Stage1,
        granule: io_page_table::Granule::K4,
        input_bits: 48,
        output_bits: 44,
        contiguous: false,
    })
    .map_err(|err| format!("stage-1 format: {err:?}"))?;
    let mut task_table = io_page_table::PageTable::new(
        format,
        iommu_kit::DmaTableAlloc::new(&crate::memory::dma::DMA, None),
        io_page_table::Coherence::Coherent,
    )
    .map_err(|_| "no memory for the task table")?;
    let cd_page = frames::alloc().ok_or("no frame")?;
    let result = (|| -> Result<(), String> {
        // Stage 2: RAM at IPA = PA (the task's tables and CD live there), and
        // a window outside RAM onto `buffer`.
        map(platform, parent, ram.base, ram.base, ram.size, rw())?;
        map(platform, parent, IPA_WINDOW, buffer.phys, 4096, rw())?;
        let prot =
            io_page_table::Prot::READ | io_page_table::Prot::WRITE | io_page_table::Prot::CACHE;
        task_table
            .map(0x7000_0000, IPA_WINDOW, 4096, prot)
            .map_err(|err| format!("task map: {err:?}"))?;
        task_table
            .map(0x7100_0000, IPA_HOLE, 4096, prot)
            .map_err(|err| format!("task map: {err:?}"))?;
        let fields = task_table.format().stage1_fields();
        let cd = smmuv3::Cd::stage1(&smmuv3::Stage1Config {
            asid: 77,
            root: task_table.root_phys(),
            granule: smmuv3::Granule::K4,
            ias_bits: 48,
            ips_encoding: u32::from(fields.ips),
            mair: fields.mair,
        })
        .map_err(|err| format!("CD: {err:?}"))?;
        for (i, word) in cd.0.iter().enumerate() {
            // SAFETY: the CD page is owned by this test; volatile for the SMMU.
            unsafe { core::ptr::write_volatile(cd_page.as_mut_ptr().cast::<u64>().add(i), *word) };
        }
        let guest_ste =
            smmuv3::Ste::guest_stage1(cd_page.phys).map_err(|err| format!("guest STE: {err:?}"))?;
        let nested = unit(platform, |u| {
            u.alloc_domain(DomainKind::Nested {
                parent,
                data: iommu::NestedData::ArmSmmuV3 { ste: guest_ste },
            })
        })?
        .map_err(|err| format!("nested: {err:?}"))?;
        let run = (|| -> Result<(), String> {
            attach(platform, sid, nested)?;
            let edu = open(platform, device)?;
            fill(&buffer, SMALL_DMA, |_| UNTOUCHED);
            // IOVA -> (task stage 1) -> IPA window -> (kernel stage 2) -> buffer.
            dma(&edu, edu::Direction::ToRam, 0x7000_0000, SMALL_DMA)?;
            ensure!(
                bytes(&buffer, SMALL_DMA).iter().any(|&b| b != UNTOUCHED),
                "nested DMA did not land"
            );
            // Stage-1 fault: IOVA the task did not map.
            dma(&edu, edu::Direction::ToRam, 0x7200_0000, SMALL_DMA)?;
            let s1 = faults_of(platform, nested)?;
            expect_one_fault(&s1, sid, 0x7200_0000, EventKind::Translation, false)?;
            ensure_eq!(
                s1[0].event.stage,
                smmuv3::Stage::Stage1,
                "stage of the first fault"
            );
            // Stage-2 fault: the task mapped an IPA the kernel did not.
            dma(&edu, edu::Direction::ToRam, 0x7100_0000, SMALL_DMA)?;
            let s2 = faults_of(platform, nested)?;
            expect_one_fault(&s2, sid, 0x7100_0000, EventKind::Translation, false)?;
            ensure_eq!(
                s2[0].event.stage,
                smmuv3::Stage::Stage2,
                "stage of the second fault"
            );
            ensure_eq!(s2[0].event.ipa, IPA_HOLE, "faulting IPA");
            // The kernel withdraws the IPA window from stage 2: the flush of a
            // nest parent must also drop the combined IOVA -> PA entries the
            // first DMA cached, so the task's IOVA faults at stage 2 now.
            let gather = unit(platform, |u| u.unmap(parent, IPA_WINDOW, 4096))?
                .map_err(|err| format!("unmap of the IPA window: {err:?}"))?;
            unit(platform, |u| u.flush(parent, &gather))?
                .map_err(|err| format!("parent flush: {err:?}"))?;
            fill(&buffer, SMALL_DMA, |_| UNTOUCHED);
            dma(&edu, edu::Direction::ToRam, 0x7000_0000, SMALL_DMA)?;
            ensure!(
                bytes(&buffer, SMALL_DMA).iter().all(|&b| b == UNTOUCHED),
                "nested DMA landed after its stage-2 mapping was removed"
            );
            let withdrawn = faults_of(platform, nested)?;
            expect_one_fault(&withdrawn, sid, 0x7000_0000, EventKind::Translation, false)?;
            ensure_eq!(
                withdrawn[0].event.stage,
                smmuv3::Stage::Stage2,
                "stage of the withdrawn-window fault"
            );
            // A task invalidation is confined to its VMID and accepted.
            let tlbi = Command::TlbiNhAsid {
                vmid: 0xFFFF,
                asid: 77,
            }
            .encode();
            let (done, result) = unit(platform, |u| {
                u.invalidate_nested(
                    nested,
                    &[iommu::NestedInvalidation::ArmSmmuV3 { cmd: tlbi.0 }],
                )
            })?;
            ensure_eq!((done, result), (1, Ok(())), "task TLBI");
            Ok(())
        })();
        let freed = unit(platform, |u| {
            u.detach(DeviceId(sid));
            u.free_domain(nested)
        })?;
        run?;
        freed.map_err(|err| format!("free nested: {err:?}"))?;
        Ok(())
    })();
    drop(task_table);
    let freed = unit(platform, |u| u.free_domain(parent))?;
    frames::free(buffer);
    frames::free(cd_page);
    result?;
    freed.map_err(|err| format!("free parent: {err:?}"))?;
    ensure_eq!(frames::free_count(), free_before, "free frames");
    Ok(Outcome::Passed)
}

fn command_queue_wraps_and_a_batch_larger_than_it_completes(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    // The driver's command queue holds 256 entries (or fewer, per IDR1.CMDQS):
    // 300 commands in one batch must wait for room mid-batch, and three more
    // batches take the producer index around the ring again.
    let (results, issued) = unit(platform, |u| {
        let before = u.hardware.counters().commands;
        let batch = alloc::vec![Command::CFGI_ALL; 300];
        let results: Vec<_> = (0..4).map(|_| u.hardware.execute(&batch)).collect();
        (results, u.hardware.counters().commands - before)
    })?;
    ensure!(
        results.iter().all(Result::is_ok),
        "batches failed: {results:?}"
    );
    ensure_eq!(issued, 4 * 301, "commands issued (with one CMD_SYNC each)");
    Ok(Outcome::Passed)
}

/// The demo's lesson (`figures::walk`): the hardware's walk to a mapped
/// page, read back level by level from the unit's own tables, ends in that
/// page at the byte asked about.
fn the_demo_walk_reaches_the_page_it_mapped(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let text = glue::with_unit(platform, |unit| {
        crate::figures::walk::lesson(unit, |unit, domain, iova, visit| {
            unit.walk_mapping(domain, iova, visit)
        })
    })??;
    crate::figures::walk::check(&text)?;
    Ok(Outcome::Passed)
}
