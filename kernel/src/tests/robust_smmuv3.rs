//! Robustness on the SMMUv3, its own mechanisms: a task's stage 1 aimed at
//! kernel memory over the kernel's stage 2, a fault storm that overflows the
//! event queue, rejected commands and a hung command queue. The scenarios
//! every IOMMU shares (hostile DMA, table pages running out, page reuse) are
//! `robustness.rs`.
//!
//! The group runs after `smmuv3::TESTS` and uses the unit as those tests leave
//! it (the two-level stream table is sticky in QEMU until reset), through
//! `with_unit`. Every test checks free frames before == after.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use iommu::{DeviceId, DomainHandle, DomainKind, IommuError, IommuUnit};
use os_services::Clock;
use smmuv3::fault::EventKind;
use smmuv3::regs::CommandError;
use smmuv3::{Command, Error, Fault, RawCommand};

use super::smmuv3::{
    SMALL_DMA, UNTOUCHED, attach, bytes, dma, edus, expect_one_fault, faults_of, fill, map,
    not_here, open, rw, settled_free_frames, unit,
};
use crate::iommu::smmuv3 as glue;
use crate::memory::frames;
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};
use crate::time::CLOCK;

pub static TESTS: &[Test] = &[
    Test {
        name: "robust::smmuv3::task_stage1_aimed_at_kernel_memory_is_stopped_by_the_kernel_stage2",
        run: task_stage1_aimed_at_kernel_memory_is_stopped,
    },
    Test {
        name: "robust::smmuv3::fault_storm_overflows_the_event_queue_every_owner_learns_the_loss_and_dma_recovers",
        run: fault_storm_is_survived_and_counted,
    },
    Test {
        name: "robust::smmuv3::rejected_commands_and_a_hung_queue_return_errors_and_restart_recovers",
        run: hung_and_misprogrammed_queue_recovers,
    },
];

/// IOVAs of these tests: clear of RAM (1-4 GiB on `virt`), the MSI doorbell
/// and each other.
const IOVA_SCRATCH: u64 = 0x1000_0000;
const IOVA_LAND: u64 = 0x1010_0000;
const IOVA_STORM: u64 = 0x2000_0000;

/// Detaches both streams and frees the domains: the tests' common cleanup.
fn release(
    platform: &Platform,
    sids: &[u32],
    domains: &[DomainHandle],
) -> Result<Vec<Result<(), IommuError>>, String> {
    unit(platform, |u| {
        for &sid in sids {
            u.detach(DeviceId(sid));
        }
        // Faults left behind must not reach the next test.
        u.collect_faults();
        domains
            .iter()
            .map(|&d| {
                u.take_domain_faults(d);
                u.free_domain(d)
            })
            .collect()
    })
}

fn paging_domain(platform: &Platform) -> Result<DomainHandle, String> {
    unit(platform, |u| u.alloc_domain(DomainKind::Paging))?
        .map_err(|err| format!("alloc paging: {err:?}"))
}

/// What the kernel keeps in the frame a hostile task aims at.
const KERNEL_BYTE: u8 = 0x96;

/// A task-owned stage 1 (nested domain) whose CD or page table points at
/// kernel memory: every access the task's tables make goes through the
/// kernel's stage 2, which maps only the task's own CD page, so the SMMU
/// cannot even read kernel memory as a table, let alone DMA to it.
fn task_stage1_aimed_at_kernel_memory_is_stopped(platform: &Platform) -> TestResult {
    if let Some(outcome) = super::smmuv3::nesting_unavailable(platform)? {
        return Ok(outcome);
    }
    let (device, sid) = edus(platform)?[0];
    let free_before = settled_free_frames(platform)?;
    let parent = unit(platform, |u| u.alloc_domain(DomainKind::NestParent))?
        .map_err(|err| format!("nest parent: {err:?}"))?;
    let kernel = frames::alloc().ok_or("no frame")?;
    let cd_page = frames::alloc().ok_or("no frame")?;
    let result = (|| -> Result<usize, String> {
        fill(&kernel, 4096, |_| KERNEL_BYTE);
        // Stage 2 gives the task its CD page (IPA = PA) and nothing else.
        map(platform, parent, cd_page.phys, cd_page.phys, 4096, rw())?;
        let format = io_page_table::ArmLpae::new(io_page_table::ArmConfig {
            stage: io_page_table::Stage::Stage1,
            granule: io_page_table::Granule::K4,
            input_bits: 48,
            output_bits: 44,
            contiguous: false,
        })
        .map_err(|err| format!("stage-1 format: {err:?}"))?;
        let fields = format.stage1_fields();
        // The task's CD names the kernel frame as its level-0 table.
        let cd = smmuv3::Cd::stage1(&smmuv3::Stage1Config {
            asid: 99,
            root: kernel.phys,
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
        // Guest STEs (SMMUv3 §5.2 word 0: V, Config = stage-1 translate,
        // S1ContextPtr): one at the task's CD, one at kernel memory as a CD.
        const GUEST_S1: u64 = (0b101 << 1) | 1;
        // The SMMU's first read for a stage-2 lookup: the kernel frame, as the
        // level-0 table (entry 0 for the IOVA below) or as the CD.
        let cases = [
            (
                "task table root at kernel memory",
                cd_page.phys,
                smmuv3::fault::FaultClass::TableWalk,
            ),
            (
                "task CD at kernel memory",
                kernel.phys,
                smmuv3::fault::FaultClass::ContextDescriptor,
            ),
        ];
        let edu = open(platform, device)?;
        let mut blocked = 0;
        for (what, cd_ipa, class) in cases {
            let nested = unit(platform, |u| {
                u.alloc_domain(DomainKind::Nested {
                    parent,
                    data: iommu::NestedData::ArmSmmuV3 {
                        ste: [cd_ipa | GUEST_S1, 0],
                    },
                })
            })?
            .map_err(|err| format!("{what}: nested: {err:?}"))?;
            let run = (|| -> Result<(), String> {
                attach(platform, sid, nested)?;
                // The IOVA a hostile table would translate to the kernel frame.
                for direction in [edu::Direction::ToRam, edu::Direction::ToDevice] {
                    dma(&edu, direction, IOVA_SCRATCH, SMALL_DMA)?;
                    ensure!(
                        bytes(&kernel, 4096).iter().all(|&b| b == KERNEL_BYTE),
                        "{what}: the kernel frame changed"
                    );
                    let faults = faults_of(platform, nested)?;
                    ensure_eq!(
                        faults.len(),
                        1,
                        format!("{what}: {direction:?}: {faults:?}")
                    );
                    let e = &faults[0].event;
                    ensure_eq!(
                        (e.kind, e.sid, e.stage, e.class, e.input_addr, e.ipa),
                        (
                            EventKind::Translation,
                            sid,
                            smmuv3::Stage::Stage2,
                            class,
                            IOVA_SCRATCH,
                            kernel.phys
                        ),
                        format!("{what}: {direction:?}: (type, sid, stage, class, IOVA, IPA)")
                    );
                    ensure_eq!(faults[0].count as usize, SMALL_DMA / 4, "events coalesced");
                    blocked += 1;
                }
                Ok(())
            })();
            let freed = unit(platform, |u| {
                u.detach(DeviceId(sid));
                u.collect_faults();
                u.take_domain_faults(nested);
                u.free_domain(nested)
            })?;
            run?;
            freed.map_err(|err| format!("free nested: {err:?}"))?;
        }
        Ok(blocked)
    })();
    let freed = unit(platform, |u| u.free_domain(parent))?;
    frames::free(kernel);
    frames::free(cd_page);
    let blocked = result?;
    freed.map_err(|err| format!("free parent: {err:?}"))?;
    ensure_eq!(frames::free_count(), free_before, "free frames");
    println!("    nested: {blocked} DMAs through a hostile task stage 1 blocked at stage 2");
    Ok(Outcome::Passed)
}

/// Rounds of the storm: each runs a 4 KiB faulting DMA on both devices at
/// once (2 x 1024 chunk faults for a 128-entry event queue).
const STORM_ROUNDS: u64 = 24;
/// The domains' fault queues during the storm: small, so that they fill too.
const STORM_FAULT_CAPACITY: usize = 8;
/// Event records the driver's queue holds (EVENTQ_LOG2_MAX = 7 in QEMU).
const EVENTQ_ENTRIES: u32 = 128;

fn lost_of(faults: &[Fault]) -> Option<(u32, u32)> {
    faults.iter().find_map(|f| match f.event.kind {
        EventKind::Lost { overflows, dropped } => Some((overflows, dropped)),
        _ => None,
    })
}

fn fault_storm_is_survived_and_counted(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let pair = edus(platform)?;
    let ((device, sid), (other, other_sid)) = (pair[0], pair[1]);
    let free_before = settled_free_frames(platform)?;
    let (_, gerror_irq) = glue::enable_interrupts(platform)?;
    let capacity = unit(platform, |u| u.fault_capacity())?;
    let a = paging_domain(platform)?;
    let b = paging_domain(platform)?;
    let land_a = frames::alloc().ok_or("no frame")?;
    let land_b = frames::alloc().ok_or("no frame")?;
    let result = (|| -> Result<String, String> {
        map(platform, a, IOVA_LAND, land_a.phys, 4096, rw())?;
        map(platform, b, IOVA_LAND, land_b.phys, 4096, rw())?;
        attach(platform, sid, a)?;
        attach(platform, other_sid, b)?;
        unit(platform, |u| u.set_fault_capacity(STORM_FAULT_CAPACITY))?;
        let edu = open(platform, device)?;
        let other_edu = open(platform, other)?;
        let before = unit(platform, |u| u.hardware.counters())?;
        let gerrors_seen = crate::irq::count(gerror_irq);
        let start = CLOCK.now_ns();
        for round in 0..STORM_ROUNDS {
            let iova = IOVA_STORM + round * 4096;
            for e in [&edu, &other_edu] {
                e.start_dma(edu::Direction::ToRam, iova, 0, edu::BUFFER_SIZE, false)
                    .map_err(|err| format!("storm DMA: {err:?}"))?;
            }
            for e in [&edu, &other_edu] {
                e.wait_dma()
                    .map_err(|err| format!("storm DMA wait: {err:?}"))?;
            }
            // As an interrupt-driven owner would: drain, do not take.
            unit(platform, |u| u.collect_faults())?;
        }
        let storm_ms = (CLOCK.now_ns() - start) / 1_000_000;
        let after = unit(platform, |u| u.hardware.counters())?;
        let gerrors = crate::irq::count(gerror_irq) - gerrors_seen;
        let faults_a = faults_of(platform, a)?;
        let faults_b = faults_of(platform, b)?;

        let overflows = after.event_overflows - before.event_overflows;
        ensure_eq!(overflows, STORM_ROUNDS, "event queue overflows counted");
        ensure!(gerrors >= 1, "no GERROR interrupt during the storm");
        let mut kept = 0;
        let mut dropped = 0;
        for (faults, owner_sid) in [(&faults_a, sid), (&faults_b, other_sid)] {
            let (lost_overflows, lost_dropped) = lost_of(faults).ok_or(format!(
                "StreamID {owner_sid:#x}: no Lost record in {faults:?}"
            ))?;
            ensure_eq!(
                u64::from(lost_overflows),
                STORM_ROUNDS,
                "overflows the owner of {owner_sid:#x} is told of"
            );
            let real: Vec<&Fault> = faults
                .iter()
                .filter(|f| !matches!(f.event.kind, EventKind::Lost { .. }))
                .collect();
            ensure!(
                real.len() <= STORM_FAULT_CAPACITY,
                "{} faults kept over a capacity of {STORM_FAULT_CAPACITY}",
                real.len()
            );
            for fault in &real {
                let e = &fault.event;
                ensure!(
                    e.kind == EventKind::Translation
                        && e.sid == owner_sid
                        && !e.read
                        && (IOVA_STORM..IOVA_STORM + STORM_ROUNDS * 4096).contains(&e.input_addr)
                        && fault.count <= EVENTQ_ENTRIES,
                    "storm fault {fault:?}"
                );
            }
            ensure_eq!(
                faults.last().map(|f| f.event.kind),
                Some(EventKind::Lost {
                    overflows: lost_overflows,
                    dropped: lost_dropped
                }),
                "the Lost record comes last"
            );
            kept += real.len() as u64;
            dropped += u64::from(lost_dropped);
        }
        // One device's 1024 events fill the queue each round, the other's
        // are all discarded by the SMMU: one fault per round reaches the
        // driver, and every one was either kept or counted as dropped.
        ensure_eq!(
            kept + dropped,
            STORM_ROUNDS,
            "faults kept + dropped by the domain queues"
        );
        ensure!(dropped > 0, "the domain queues never filled");
        // Responsive: the whole storm took about its DMAs' time.
        ensure!(storm_ms < STORM_ROUNDS * 1000, "storm took {storm_ms} ms");

        // Afterwards: faults are exact again and mapped DMA lands.
        unit(platform, |u| u.set_fault_capacity(capacity))?;
        dma(&edu, edu::Direction::ToRam, IOVA_STORM, SMALL_DMA)?;
        expect_one_fault(
            &faults_of(platform, a)?,
            sid,
            IOVA_STORM,
            EventKind::Translation,
            false,
        )?;
        fill(&land_a, SMALL_DMA, |_| UNTOUCHED);
        fill(&land_b, SMALL_DMA, |_| UNTOUCHED);
        for e in [&edu, &other_edu] {
            e.start_dma(edu::Direction::ToRam, IOVA_LAND, 0, SMALL_DMA, false)
                .map_err(|err| format!("landing DMA: {err:?}"))?;
        }
        for e in [&edu, &other_edu] {
            e.wait_dma()
                .map_err(|err| format!("landing DMA wait: {err:?}"))?;
        }
        for (what, frame) in [("A", &land_a), ("B", &land_b)] {
            ensure!(
                bytes(frame, SMALL_DMA).iter().any(|&b| b != UNTOUCHED),
                "mapped DMA of {what} did not land after the storm"
            );
        }
        ensure!(
            faults_of(platform, b)?.is_empty(),
            "B faulted after the storm"
        );
        Ok(format!(
            "{} chunk faults in {storm_ms} ms: {} events read, {overflows} queue overflows, {kept} faults kept, {dropped} dropped, {gerrors} GERROR IRQs",
            STORM_ROUNDS * 2 * (edu::BUFFER_SIZE as u64 / 4),
            after.events - before.events
        ))
    })();
    unit(platform, |u| u.set_fault_capacity(capacity))?;
    let freed = release(platform, &[sid, other_sid], &[a, b])?;
    frames::free(land_a);
    frames::free(land_b);
    let figures = result?;
    ensure!(freed.iter().all(Result::is_ok), "free: {freed:?}");
    ensure_eq!(frames::free_count(), free_before, "free frames");
    println!("    fault storm: {figures}");
    Ok(Outcome::Passed)
}

/// Opcodes SMMUv3 §4 leaves unallocated.
const UNALLOCATED_OPCODES: [u64; 2] = [0x7F, 0x00];

fn hung_and_misprogrammed_queue_recovers(platform: &Platform) -> TestResult {
    if let Some(outcome) = not_here(platform) {
        return Ok(outcome);
    }
    let pair = edus(platform)?;
    let ((device, sid), (other, other_sid)) = (pair[0], pair[1]);
    let free_before = settled_free_frames(platform)?;
    let a = paging_domain(platform)?;
    let gone = frames::alloc().ok_or("no frame")?;
    let kept = frames::alloc().ok_or("no frame")?;
    let result = (|| -> Result<u64, String> {
        // Misprogrammed: two illegal commands inside a batch of valid ones.
        // Each is skipped (CERROR_ILL), the valid ones around them run, and
        // the caller gets an error.
        let (synced, errors, next) = unit(platform, |u| {
            let before = u.hardware.counters().command_errors;
            let batch = [
                Command::CFGI_ALL.encode(),
                RawCommand([UNALLOCATED_OPCODES[0], 0]),
                Command::TlbiNsnhAll.encode(),
                RawCommand([UNALLOCATED_OPCODES[1], 0]),
                Command::CFGI_ALL.encode(),
            ];
            let synced = u.hardware.execute_raw(&batch);
            let errors = u.hardware.counters().command_errors - before;
            let next = u.hardware.execute(&[Command::CFGI_ALL]);
            (synced, errors, next)
        })?;
        ensure!(
            matches!(
                synced,
                Err(Error::CommandRejected {
                    error: CommandError::Illegal,
                    ..
                })
            ),
            "sync after illegal commands: {synced:?}"
        );
        ensure_eq!(errors, 2, "rejected commands counted");
        ensure_eq!(next, Ok(()), "the queue runs again");

        map(platform, a, IOVA_LAND, kept.phys, 4096, rw())?;
        map(platform, a, IOVA_SCRATCH, gone.phys, 4096, rw())?;
        attach(platform, sid, a)?;
        let edu = open(platform, device)?;

        // Hung: the SMMU stops consuming commands (queues off). The unmap's
        // flush must come back with a timeout within its bound, and keep the
        // unlinked table pages until an invalidation succeeds.
        let gather = unit(platform, |u| u.unmap(a, IOVA_SCRATCH, 4096))?
            .map_err(|err| format!("unmap: {err:?}"))?;
        ensure!(!gather.is_empty(), "unmap changed nothing");
        let free_after_unmap = frames::free_count();
        unit(platform, |u| u.hardware.shutdown())?.map_err(|err| format!("shutdown: {err:?}"))?;
        let start = CLOCK.now_ns();
        let flushed = unit(platform, |u| u.flush(a, &gather))?;
        let waited_ms = (CLOCK.now_ns() - start) / 1_000_000;
        ensure_eq!(flushed, Err(IommuError::Timeout), "flush on a hung queue");
        ensure!(
            (100..1000).contains(&waited_ms),
            "the bound was {waited_ms} ms"
        );
        ensure_eq!(
            frames::free_count(),
            free_after_unmap,
            "table pages released before their invalidation completed"
        );
        // An attach on the hung queue fails and fails closed: the stream
        // belongs to no domain and its STE aborts.
        let attached = unit(platform, |u| u.attach(DeviceId(other_sid), a))?;
        ensure_eq!(attached, Err(IommuError::Timeout), "attach on a hung queue");
        ensure_eq!(
            unit(platform, |u| u.domain_of(other_sid))?,
            None,
            "stream recorded as attached after a failed attach"
        );
        // Off means blocked (GBPA.ABORT), never bypass: a mapped DMA does not land.
        fill(&kept, SMALL_DMA, |_| UNTOUCHED);
        dma(&edu, edu::Direction::ToRam, IOVA_LAND, SMALL_DMA)?;
        ensure!(
            bytes(&kept, SMALL_DMA).iter().all(|&b| b == UNTOUCHED),
            "DMA landed while the SMMU was off"
        );

        // Recovery: restart over the same tables, retry the flush.
        unit(platform, |u| u.hardware.restart())?.map_err(|err| format!("restart: {err:?}"))?;
        unit(platform, |u| u.flush(a, &gather))?
            .map_err(|err| format!("flush after restart: {err:?}"))?;
        dma(&edu, edu::Direction::ToRam, IOVA_SCRATCH, SMALL_DMA)?;
        expect_one_fault(
            &faults_of(platform, a)?,
            sid,
            IOVA_SCRATCH,
            EventKind::Translation,
            false,
        )?;
        // The stream whose attach failed aborts (silently), though its STE
        // may have been written before the queue hung.
        let other_edu = open(platform, other)?;
        fill(&kept, SMALL_DMA, |_| UNTOUCHED);
        dma(&other_edu, edu::Direction::ToRam, IOVA_LAND, SMALL_DMA)?;
        ensure!(
            bytes(&kept, SMALL_DMA).iter().all(|&b| b == UNTOUCHED),
            "the stream of the failed attach reached the domain"
        );
        dma(&edu, edu::Direction::ToRam, IOVA_LAND, SMALL_DMA)?;
        ensure!(
            bytes(&kept, SMALL_DMA).iter().any(|&b| b != UNTOUCHED),
            "mapped DMA did not land after the restart"
        );
        map(platform, a, IOVA_SCRATCH, gone.phys, 4096, rw())?;
        Ok(waited_ms)
    })();
    let freed = release(platform, &[sid, other_sid], &[a])?;
    frames::free(gone);
    frames::free(kept);
    let waited_ms = result?;
    ensure!(freed.iter().all(Result::is_ok), "free: {freed:?}");
    ensure_eq!(frames::free_count(), free_before, "free frames");
    println!("    hung queue: CMD_SYNC bound expired after {waited_ms} ms, restart recovered");
    Ok(Outcome::Passed)
}
