//! Robustness on Intel VT-d, the VT-d mechanisms themselves: a fault storm
//! that overflows the single fault record, a rejected invalidation
//! descriptor, hung register-based invalidation, and table pages running
//! out where scalable mode needs PASID tables at attach. The scenarios every
//! IOMMU shares (hostile DMA, exhaustion across a whole operation, a page
//! reused under a DMA in flight, a storm, a hung queue) are `robustness.rs`;
//! the probe there hangs VT-d's queue with `set_queue_enable` from here.
//!
//! Every test brings a unit up and tears it down, and checks that every
//! frame came back (frames before == after). The helpers are the VT-d
//! group's (`super::vtd`).

use alloc::format;
use core::ptr::NonNull;
use core::time::Duration;

use ::iommu::{DeviceId, DomainHandle, DomainKind, IommuError, IommuUnit};
use edu::Direction;
use iommu_kit::Rationed;
use os_services::Clock;
use vtd::command::Descriptor;
use vtd::regs::{self, FaultStatus, Global};

use super::vtd::{
    DMA_LEN, Fallible, READ_ONLY, READ_WRITE, drain, edu_pair, expect_fault, filled_frame, holds,
    map, no_leaf_reasons, open, paging_domain, requester, scalable, with_unit, with_unit_in,
    with_unit_options,
};
use crate::iommu::vtd::{Unit, descriptions, fault_events};
use crate::memory::frames::{self, Frames};
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "robust::vtd::fault_storm_overflows_the_record_counts_overflows_and_the_devices_work_again",
        run: fault_storm,
    },
    Test {
        name: "robust::vtd::rejected_descriptors_report_a_queue_error_and_invalidation_works_again",
        run: rejected_descriptors_are_reported_and_the_queue_recovers,
    },
    Test {
        name: "robust::vtd::a_hung_register_invalidation_times_out_to_the_caller_and_the_unit_recovers",
        run: hung_register_invalidation_times_out_and_recovers,
    },
    Test {
        name: "robust::vtd::table_pages_running_out_fail_cleanly_leak_nothing_and_the_unit_recovers",
        run: table_page_exhaustion_fails_cleanly,
    },
];

/// IOVAs far above every RAM address (QEMU's RAM is below 4 GiB here), so
/// they never coincide with the identity-aimed targets.
const PATTERN_IOVA: u64 = 0x1_0000_1000;
const CHECK_IOVA: u64 = 0x1_0000_2000;
/// Never mapped in any domain.
const HOLE_IOVA: u64 = 0x0030_0000;
const PATTERN: u8 = 0xA5;

fn dma(edu: &edu::Edu<'_>, direction: Direction, iova: u64, offset: usize, len: usize) -> Fallible {
    edu.dma(direction, iova, offset, len)
        .map_err(|err| format!("edu DMA at {iova:#x}: {err:?}"))
}

fn device(pci: &crate::devices::PciDevice) -> DeviceId {
    DeviceId(requester(pci).into())
}

/// Attaches edu A and B to two paging domains; A reads `PATTERN` through
/// `PATTERN_IOVA` and writes through `CHECK_IOVA`. Tears it all down after
/// `body`, and returns NotApplicable without paging domains.
fn with_two_paging_domains(
    platform: &Platform,
    body: impl FnOnce(&mut Unit, [DomainHandle; 2], [&edu::Edu<'static>; 2], &Frames) -> Fallible,
) -> TestResult {
    with_unit(platform, |unit| {
        let Some(domain_a) = paging_domain(unit)? else {
            return Ok(Outcome::NotApplicable(
                "io-page-table has no table format for this VT-d mode",
            ));
        };
        let domain_b = paging_domain(unit)?.ok_or("second paging domain")?;
        let (a, b) = edu_pair()?;
        let (edu_a, edu_b) = (open(platform, a)?, open(platform, b)?);
        let pattern = filled_frame(PATTERN)?;
        let check = filled_frame(0xEE)?;
        let result = (|| -> Fallible {
            unit.attach(device(a), domain_a)
                .map_err(|err| format!("attach a: {err:?}"))?;
            unit.attach(device(b), domain_b)
                .map_err(|err| format!("attach b: {err:?}"))?;
            map(unit, domain_a, PATTERN_IOVA, pattern.phys, 4096, READ_ONLY)?;
            map(unit, domain_a, CHECK_IOVA, check.phys, 4096, READ_WRITE)?;
            map(unit, domain_b, PATTERN_IOVA, pattern.phys, 4096, READ_ONLY)?;
            body(unit, [domain_a, domain_b], [&edu_a, &edu_b], &check)
        })();
        unit.detach(device(a));
        unit.detach(device(b));
        let freed = (unit.free_domain(domain_a), unit.free_domain(domain_b));
        frames::free(pattern);
        frames::free(check);
        result?;
        ensure!(
            freed.0.is_ok() && freed.1.is_ok(),
            "free domains: {freed:?}"
        );
        Ok(Outcome::Passed)
    })
}

// ---- 1. hostile device ------------------------------------------------------

// ---- 2. fault storm -----------------------------------------------------------

/// Rounds per storm: both edus fault once per round (0.1 s per round).
/// The full storm runs in the `vtd` configuration (legacy, no caching
/// mode); the other VT-d configurations run a shorter one to stay inside the
/// CI budget.
fn storm_rounds(unit: &Unit) -> usize {
    if unit.hardware.mode() == vtd::Mode::Legacy && !unit.hardware.cap().caching_mode() {
        250
    } else {
        60
    }
}
/// Rounds between two drains of the fault record.
const STORM_WINDOW: usize = 10;

/// Both edus fault together, round after round, and the record is drained
/// only every `STORM_WINDOW` rounds: VT-d keeps one record, so each window
/// yields one record and FSTS.PFO for the rest. The driver counts records
/// and overflows; the kernel keeps taking the fault interrupt and the clock
/// keeps running; afterwards both devices' mapped DMAs land and a new fault
/// is recorded with the right address again.
fn fault_storm(platform: &Platform) -> TestResult {
    with_two_paging_domains(platform, |unit, [_, domain_b], [edu_a, edu_b], check| {
        let (a, b) = edu_pair()?;
        let (sid_a, sid_b) = (requester(a), requester(b));
        let rounds = storm_rounds(unit);
        let stats_before = unit.hardware.fault_stats();
        let events_before = fault_events();
        let started = crate::time::CLOCK.now_ns();
        let mut windows = 0u64;
        for round in 0..rounds {
            // Different pages and directions, so that no fault repeats one before it.
            let iova_a = HOLE_IOVA + (round as u64 % 64) * 4096;
            edu_a
                .start_dma(Direction::ToRam, iova_a, 0, DMA_LEN, false)
                .map_err(|err| format!("round {round}, edu A: {err:?}"))?;
            edu_b
                .start_dma(Direction::ToDevice, HOLE_IOVA, 0, DMA_LEN, false)
                .map_err(|err| format!("round {round}, edu B: {err:?}"))?;
            edu_a.wait_dma().map_err(|err| format!("edu A: {err:?}"))?;
            edu_b.wait_dma().map_err(|err| format!("edu B: {err:?}"))?;
            if (round + 1) % STORM_WINDOW == 0 {
                let overflows = unit.hardware.fault_stats().overflows;
                let faults = drain(unit);
                windows += 1;
                ensure_eq!(faults.len(), 1, format!("records in window {windows}"));
                let fault = faults[0];
                ensure!(
                    (fault.source_id == sid_a && !fault.is_read)
                        || (fault.source_id == sid_b
                            && fault.is_read
                            && fault.address == HOLE_IOVA),
                    "window {windows}: a record no storm DMA explains: {fault:x?}"
                );
                ensure!(
                    (HOLE_IOVA..HOLE_IOVA + 64 * 4096).contains(&fault.address),
                    "window {windows}: fault address {:#x}",
                    fault.address
                );
                ensure_eq!(
                    unit.hardware.fault_stats().overflows,
                    overflows + 1,
                    format!("PFO in window {windows}")
                );
            }
        }
        drain(unit);
        let elapsed_ms = (crate::time::CLOCK.now_ns() - started) / 1_000_000;
        let stats = unit.hardware.fault_stats();
        let issued = 2 * rounds as u64;
        let recorded = stats.records - stats_before.records;
        let overflows = stats.overflows - stats_before.overflows;
        let events = fault_events() - events_before;
        println!(
            "robust::vtd: fault storm: {issued} faulting DMAs in {elapsed_ms} ms, {recorded} recorded, \
             {overflows} overflows (PFO), {} lost to the single record, {events} fault interrupts",
            issued - recorded
        );
        ensure_eq!(recorded, windows, "records");
        ensure_eq!(overflows, windows, "overflows");
        ensure!(events >= 1, "no fault interrupt during the storm");
        // Each DMA costs 100 ms of virtual time; the storm must not be much slower.
        let budget_ms = rounds as u64 * 100 * 4;
        ensure!(
            elapsed_ms < budget_ms,
            "storm took {elapsed_ms} ms (budget {budget_ms})"
        );

        // Both devices work again, and fault reporting does too.
        let check_b = filled_frame(0)?;
        let recovered = (|| -> Fallible {
            map(unit, domain_b, CHECK_IOVA, check_b.phys, 4096, READ_WRITE)?;
            edu_a
                .start_dma(Direction::ToDevice, PATTERN_IOVA, 0, DMA_LEN, false)
                .map_err(|err| format!("{err:?}"))?;
            edu_b
                .start_dma(Direction::ToDevice, PATTERN_IOVA, 0, DMA_LEN, false)
                .map_err(|err| format!("{err:?}"))?;
            edu_a.wait_dma().map_err(|err| format!("{err:?}"))?;
            edu_b.wait_dma().map_err(|err| format!("{err:?}"))?;
            edu_a
                .start_dma(Direction::ToRam, CHECK_IOVA, 0, DMA_LEN, false)
                .map_err(|err| format!("{err:?}"))?;
            edu_b
                .start_dma(Direction::ToRam, CHECK_IOVA, 0, DMA_LEN, false)
                .map_err(|err| format!("{err:?}"))?;
            edu_a.wait_dma().map_err(|err| format!("{err:?}"))?;
            edu_b.wait_dma().map_err(|err| format!("{err:?}"))?;
            ensure!(
                holds(check, PATTERN),
                "edu A's DMA after the storm did not land"
            );
            ensure!(
                holds(&check_b, PATTERN),
                "edu B's DMA after the storm did not land"
            );
            ensure!(
                drain(unit).is_empty(),
                "faults from mapped DMAs after the storm"
            );
            dma(edu_a, Direction::ToRam, HOLE_IOVA, 0, DMA_LEN)?;
            expect_fault(
                unit,
                "first fault after the storm",
                sid_a,
                HOLE_IOVA,
                false,
                no_leaf_reasons(unit, false),
            )
        })();
        frames::free(check_b);
        recovered
    })
}

// ---- 3. hung or misprogrammed hardware -------------------------------------

/// Descriptors QEMU and the spec reject (§6.5.2.10): unknown types 0 and
/// 0xF (type bits 3:0 and 11:9).
const REJECTED: [Descriptor; 3] = [
    Descriptor([0xF, 0, 0, 0]),
    Descriptor([0x0, 0, 0, 0]),
    Descriptor([0xE00 | 0x2, 0, 0, 0]),
];
/// Enough rejected submissions to wrap the 4 KiB ring several times.
const REJECTED_ROUNDS: usize = 300;

/// Rejected descriptors (alone and after a good one) return
/// `Error::QueueError` and leave FSTS.IQE clear; after hundreds of them (the
/// ring wraps) a map, an unmap whose invalidation must really run, and DMA
/// all work.
fn rejected_descriptors_are_reported_and_the_queue_recovers(platform: &Platform) -> TestResult {
    with_two_paging_domains(platform, |unit, [domain_a, _], [edu_a, _], check| {
        if !unit.hardware.uses_queued_invalidation() {
            return Err("the unit runs without queued invalidation".into());
        }
        let sid = requester(edu_pair()?.0);
        // A translation in QEMU's IOTLB that only a working queue removes.
        dma(edu_a, Direction::ToDevice, PATTERN_IOVA, 0, DMA_LEN)?;
        dma(edu_a, Direction::ToRam, CHECK_IOVA, 0, DMA_LEN)?;
        ensure!(holds(check, PATTERN), "DMA before the errors did not land");
        let good = Descriptor([0x2 | (1 << 4), 0, 0, 0]);
        let mut errors = 0usize;
        for round in 0..REJECTED_ROUNDS {
            let bad = REJECTED[round % REJECTED.len()];
            let batch: &[Descriptor] = if round % 2 == 0 { &[bad] } else { &[good, bad] };
            let result = unit.hardware.submit_raw(batch);
            ensure_eq!(
                result,
                Err(vtd::Error::QueueError),
                format!("round {round}, descriptor {:#x}", bad.0[0])
            );
            ensure!(
                !unit
                    .hardware
                    .fault_status()
                    .contains(FaultStatus::QUEUE_ERROR),
                "round {round}: IQE left set"
            );
            errors += 1;
        }
        ensure!(drain(unit).is_empty(), "DMA faults from queue errors");
        // The queue works: a good submission completes, and an unmap's
        // invalidation takes the cached translation away.
        unit.hardware
            .submit_raw(&[good])
            .map_err(|err| format!("good descriptor after the errors: {err:?}"))?;
        let gather = unit
            .unmap(domain_a, CHECK_IOVA, 4096)
            .map_err(|err| format!("unmap after the errors: {err:?}"))?;
        unit.flush(domain_a, &gather)
            .map_err(|err| format!("flush after the errors: {err:?}"))?;
        // SAFETY: the check frame belongs to this test.
        unsafe { core::ptr::write_bytes(check.as_mut_ptr(), 0x77, 4096) };
        dma(edu_a, Direction::ToRam, CHECK_IOVA, 0, DMA_LEN)?;
        ensure!(holds(check, 0x77), "a stale translation survived the flush");
        expect_fault(
            unit,
            "after unmap",
            sid,
            CHECK_IOVA,
            false,
            no_leaf_reasons(unit, false),
        )?;
        map(unit, domain_a, CHECK_IOVA, check.phys, 4096, READ_WRITE)?;
        dma(edu_a, Direction::ToRam, CHECK_IOVA, 0, DMA_LEN)?;
        ensure!(holds(check, PATTERN), "DMA after remapping did not land");
        println!("robust::vtd: {errors} rejected descriptors (IQE) reported and recovered");
        Ok(())
    })
}

/// The unit's register block, for a test that plays broken hardware.
pub(super) fn raw_registers(platform: &Platform) -> Fallible<os_services::mmio::Mmio> {
    let description = descriptions(platform)?
        .into_iter()
        .next()
        .ok_or("no DRHD")?;
    let base = NonNull::new(description.register_base as *mut u8).ok_or("DRHD base 0")?;
    // SAFETY: the register page is identity-mapped uncached. The tests
    // write only GCMD (one enable bit, the others preserved), IQA and IQT,
    // to play a hung unit, and put QIE back as the unit expects before
    // they end.
    Ok(unsafe { os_services::mmio::Mmio::new(base, description.register_size as usize) })
}

pub(super) fn set_queue_enable(registers: &os_services::mmio::Mmio, on: bool) -> Fallible {
    let status = Global::from_bits_retain(registers.read32(regs::GSTS));
    registers.write32(
        regs::GCMD,
        Global::command(status, Global::QUEUED_INVALIDATION, on).bits(),
    );
    os_services::wait_until(&crate::time::CLOCK, Duration::from_millis(100), || {
        let status = Global::from_bits_retain(registers.read32(regs::GSTS));
        (status.contains(Global::QUEUED_INVALIDATION) == on).then_some(())
    })
    .map_err(|_| format!("GSTS.QIES did not become {on}"))
}

/// With queued invalidation off, the unit invalidates through the IOTLB
/// register. The test turns QIE on behind its back: QEMU then ignores the
/// register and leaves IVT set forever (a hung unit). The unit's flush must
/// give up after its bound with `IommuError::Timeout`, and once the
/// hardware behaves again (QIE off) the same flush succeeds and the unmap
/// is seen by the next DMA.
fn hung_register_invalidation_times_out_and_recovers(platform: &Platform) -> TestResult {
    match scalable(platform) {
        None => return Ok(Outcome::NotApplicable("no VT-d unit in the DMAR")),
        Some(true) => {
            return Ok(Outcome::NotApplicable(
                "scalable mode has no register-based invalidation",
            ));
        }
        Some(false) => {}
    }
    let options = vtd::Options {
        queued_invalidation: false,
        interrupt_remapping: false,
    };
    let ring = filled_frame(0)?;
    let outcome = with_unit_options(platform, options, |unit| {
        let registers = raw_registers(platform)?;
        let hang = || -> Fallible {
            registers.write64(regs::IQT, 0);
            registers.write64(regs::IQA, regs::queue_address(ring.phys, false, 0));
            set_queue_enable(&registers, true)?;
            // QEMU leaves QIE only when the last descriptor it ran was a
            // wait: run one, writing into the ring frame's second half.
            let wait = Descriptor::wait(ring.phys + 2048, 1);
            // SAFETY: the ring frame belongs to this test; QEMU reads it
            // on the IQT write below.
            unsafe {
                core::ptr::write_volatile(ring.as_mut_ptr() as *mut u64, wait.0[0]);
                core::ptr::write_volatile((ring.as_mut_ptr() as *mut u64).add(1), wait.0[1]);
            }
            registers.write64(regs::IQT, 16);
            Ok(())
        };
        let unhang = || -> Fallible {
            set_queue_enable(&registers, false)?;
            registers.write64(regs::IQT, 0);
            Ok(())
        };
        hang_flush_recover(platform, unit, "IOTLB register", hang, unhang)
    });
    frames::free(ring);
    outcome
}

/// Edu A in a paging domain, a mapped page the DMA reaches (so QEMU caches
/// it), then `hang`, an unmap whose flush must time out within its bound,
/// `unhang`, the same flush again, and DMAs proving the unmap took effect
/// and the unit maps again.
fn hang_flush_recover(
    platform: &Platform,
    unit: &mut Unit,
    what: &str,
    hang: impl FnOnce() -> Fallible,
    unhang: impl FnOnce() -> Fallible,
) -> TestResult {
    let Some(domain) = paging_domain(unit)? else {
        return Ok(Outcome::NotApplicable("no paging domain"));
    };
    let (a, _) = edu_pair()?;
    let edu_a = open(platform, a)?;
    let sid = requester(a);
    let pattern = filled_frame(PATTERN)?;
    let check = filled_frame(0xEE)?;
    let result = (|| -> Fallible {
        unit.attach(device(a), domain)
            .map_err(|err| format!("attach: {err:?}"))?;
        map(unit, domain, PATTERN_IOVA, pattern.phys, 4096, READ_ONLY)?;
        map(unit, domain, CHECK_IOVA, check.phys, 4096, READ_WRITE)?;
        dma(&edu_a, Direction::ToDevice, PATTERN_IOVA, 0, DMA_LEN)?;
        dma(&edu_a, Direction::ToRam, CHECK_IOVA, 0, DMA_LEN)?;
        ensure!(holds(&check, PATTERN), "DMA before the hang did not land");

        hang()?;
        let gather = unit
            .unmap(domain, CHECK_IOVA, 4096)
            .map_err(|err| format!("unmap: {err:?}"))?;
        let started = crate::time::CLOCK.now_ns();
        let hung = unit.flush(domain, &gather);
        let waited_ms = (crate::time::CLOCK.now_ns() - started) / 1_000_000;
        unhang()?;
        ensure_eq!(
            hung,
            Err(IommuError::Timeout),
            format!("flush on a hung {what}")
        );
        ensure!(
            (100..1000).contains(&waited_ms),
            "the bounded wait took {waited_ms} ms"
        );
        // Hardware back: the caller retries the same flush.
        unit.flush(domain, &gather)
            .map_err(|err| format!("flush after recovery: {err:?}"))?;
        // SAFETY: the check frame belongs to this test.
        unsafe { core::ptr::write_bytes(check.as_mut_ptr(), 0x77, 4096) };
        dma(&edu_a, Direction::ToRam, CHECK_IOVA, 0, DMA_LEN)?;
        ensure!(
            holds(&check, 0x77),
            "the unmap was not invalidated after recovery"
        );
        let reasons = no_leaf_reasons(unit, false);
        expect_fault(unit, "after recovery", sid, CHECK_IOVA, false, reasons)?;
        map(unit, domain, CHECK_IOVA, check.phys, 4096, READ_WRITE)?;
        dma(&edu_a, Direction::ToRam, CHECK_IOVA, 0, DMA_LEN)?;
        ensure!(holds(&check, PATTERN), "DMA after recovery did not land");
        println!("robust::vtd: hung {what}: flush gave up after {waited_ms} ms, retry ok");
        Ok(())
    })();
    unit.detach(device(a));
    let freed = unit.free_domain(domain);
    frames::free(pattern);
    frames::free(check);
    result?;
    freed.map_err(|err| format!("free domain: {err:?}"))?;
    Ok(Outcome::Passed)
}

// ---- 4. resource exhaustion -------------------------------------------------

/// The kernel's DMA memory, rationed on demand.
static RATIONED: Rationed = Rationed::new(&crate::memory::dma::DMA);

/// IOVAs in separate 512 GiB regions: a first map there needs three new
/// table pages (levels 3, 2 and 1 of a 4-level table).
fn far_iova(region: u64) -> u64 {
    (region + 1) << 39
}

/// A unit whose table pages come from a rationed memory service: with
/// 0, 1 or 2 allocations left, a paging domain cannot be created or a map
/// into an empty region fails with `NoMemory`, the device stays blocked
/// there, and (scalable mode) an attach that needs PASID tables fails and
/// leaves the device blocked. Once the ration is lifted everything works,
/// and after teardown every frame is back. Domain ids are recycled: more
/// alloc/free cycles than the unit has ids all succeed.
fn table_page_exhaustion_fails_cleanly(platform: &Platform) -> TestResult {
    RATIONED.unlimited();
    let outcome = with_unit_in(platform, vtd::Options::default(), &RATIONED, |unit| {
        let outcome = exhaust(platform, unit);
        RATIONED.unlimited();
        outcome
    });
    RATIONED.unlimited();
    outcome
}

fn exhaust(platform: &Platform, unit: &mut Unit) -> TestResult {
    let refused_before = RATIONED.refused();
    RATIONED.allow(0);
    let free = frames::free_count();
    match unit.alloc_domain(DomainKind::Paging) {
        Err(IommuError::NoMemory) => {}
        Err(IommuError::Unsupported) => {
            RATIONED.unlimited();
            return Ok(Outcome::NotApplicable("no paging domains for this mode"));
        }
        other => return Err(format!("paging domain without memory: {other:?}")),
    }
    ensure_eq!(
        frames::free_count(),
        free,
        "frames after the refused domain"
    );
    RATIONED.unlimited();
    let domain = unit
        .alloc_domain(DomainKind::Paging)
        .map_err(|err| format!("paging domain: {err:?}"))?;
    let (a, _) = edu_pair()?;
    let edu_a = open(platform, a)?;
    let sid = requester(a);
    let pattern = filled_frame(PATTERN)?;
    let check = filled_frame(0xEE)?;
    let result = (|| -> Fallible {
        map(unit, domain, PATTERN_IOVA, pattern.phys, 4096, READ_ONLY)?;
        // Attach without memory: legacy mode needs none (the context table
        // of the bus exists since bring-up); scalable mode needs PASID tables.
        RATIONED.allow(0);
        let free = frames::free_count();
        let attached = unit.attach(device(a), domain);
        RATIONED.unlimited();
        match attached {
            Ok(()) => ensure!(
                !unit.hardware.mode().is_scalable(),
                "scalable attach without memory"
            ),
            Err(IommuError::NoMemory) => {
                ensure_eq!(
                    frames::free_count(),
                    free,
                    "frames after the refused attach"
                );
                dma(&edu_a, Direction::ToRam, PATTERN_IOVA, 0, DMA_LEN)?;
                ensure!(
                    holds(&pattern, PATTERN),
                    "a half-attached device wrote memory"
                );
                let faults = drain(unit);
                ensure!(
                    faults.len() == 1 && faults[0].source_id == sid,
                    "the device is not blocked after the refused attach: {faults:x?}"
                );
                unit.attach(device(a), domain)
                    .map_err(|err| format!("attach: {err:?}"))?;
            }
            Err(err) => return Err(format!("attach without memory: {err:?}")),
        }
        let mut refused_maps = 0;
        for allowed in 0..3u64 {
            let iova = far_iova(allowed);
            RATIONED.allow(allowed as usize);
            let mapped = unit.map(domain, iova, check.phys, 4096, READ_WRITE);
            RATIONED.unlimited();
            ensure_eq!(
                mapped.map(|_| ()),
                Err(IommuError::NoMemory),
                format!("map with {allowed} table pages left")
            );
            refused_maps += 1;
            dma(&edu_a, Direction::ToRam, iova, 0, DMA_LEN)?;
            ensure!(
                holds(&check, 0xEE),
                "a DMA reached the page of a failed map"
            );
            expect_fault(
                unit,
                "failed map",
                sid,
                iova,
                false,
                no_leaf_reasons(unit, false),
            )?;
        }
        ensure!(
            RATIONED.refused() >= refused_before + 4,
            "the ration did not refuse"
        );
        // Resources back: the same map works and carries DMA.
        let iova = far_iova(2);
        map(unit, domain, iova, check.phys, 4096, READ_WRITE)?;
        dma(&edu_a, Direction::ToDevice, PATTERN_IOVA, 0, DMA_LEN)?;
        dma(&edu_a, Direction::ToRam, iova, 0, DMA_LEN)?;
        ensure!(
            holds(&check, PATTERN),
            "DMA after the ration was lifted did not land"
        );
        ensure!(drain(unit).is_empty(), "faults after recovery");
        println!(
            "robust::vtd: table-page exhaustion: {refused_maps} maps and 1 domain refused cleanly, {} allocations refused",
            RATIONED.refused() - refused_before
        );
        // Domain ids: more alloc/free cycles than CAP.ND has ids; each
        // freed id is invalidated before it is handed out again.
        let ids = unit.hardware.cap().domain_count() as usize;
        let started = crate::time::CLOCK.now_ns();
        for cycle in 0..ids + 16 {
            let blocked = unit
                .alloc_domain(DomainKind::Blocked)
                .map_err(|err| format!("domain id cycle {cycle}: {err:?}"))?;
            unit.free_domain(blocked)
                .map_err(|err| format!("free in cycle {cycle}: {err:?}"))?;
        }
        println!(
            "robust::vtd: {} domain alloc/free cycles over {ids} ids in {} ms",
            ids + 16,
            (crate::time::CLOCK.now_ns() - started) / 1_000_000
        );
        Ok(())
    })();
    unit.detach(device(a));
    let freed = unit.free_domain(domain);
    frames::free(pattern);
    frames::free(check);
    result?;
    freed.map_err(|err| format!("free domain: {err:?}"))?;
    Ok(Outcome::Passed)
}

// ---- 5. page reuse ----------------------------------------------------------
