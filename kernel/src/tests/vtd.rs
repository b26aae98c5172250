//! Intel VT-d in QEMU, what only VT-d has: bring-up with every device
//! blocked and faults drained as raw records, register-based invalidation,
//! separate contexts and domain ids, interrupt remapping proven by an edu
//! MSI, and the invalidation cost figures. The DMA matrix every IOMMU shares
//! is `dma_matrix.rs`.
//!
//! Every test brings a unit up and tears it down again, so the frames it
//! used are all returned (checked) and other test groups see the machine as
//! the firmware left it.

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;

use ::iommu::{DeviceId, DomainKind, Gather, IommuUnit, ReservedKind};
use vtd::fault::{Fault, reason};
use vtd::interrupt::{Irte, remappable_msi_address};
use vtd::regs::Global;

use crate::devices::{self, PciDevice};
use crate::iommu::vtd::{self as glue, Unit, fault_events};
use crate::memory::frames::{self, Frames};
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "vtd::bring_up_translates_with_every_device_blocked_and_reports_one_fault_per_dma",
        run: blocked_dma_is_dropped_and_faults_once,
    },
    Test {
        name: "vtd::register_based_invalidation_makes_detach_visible_without_the_queue",
        run: register_based_invalidation_makes_detach_visible,
    },
    Test {
        name: "vtd::devices_have_separate_contexts_and_domain_ids",
        run: devices_have_separate_contexts_and_domain_ids,
    },
    Test {
        name: "vtd::edu_msi_arrives_through_its_irte_and_stops_when_it_is_cleared",
        run: edu_msi_arrives_through_its_irte_and_stops_when_cleared,
    },
    Test {
        name: "vtd::an_msi_from_another_requester_than_the_irte_names_is_blocked_and_reported",
        run: msi_from_the_wrong_requester_is_blocked,
    },
    Test {
        name: "vtd::aligned_range_flush_costs_one_invalidation_one_wait_one_tail_write",
        run: aligned_range_flush_costs_one_invalidation_one_wait_one_tail_write,
    },
    Test {
        name: "vtd::only_functions_the_dmar_puts_behind_the_unit_are_named_for_it",
        run: only_functions_behind_the_unit_are_named_for_it,
    },
    Test {
        name: "vtd::every_drhd_is_brought_up_blocking",
        run: every_drhd_is_brought_up_blocking,
    },
    Test {
        name: "vtd::the_demo_walk_reaches_the_page_it_mapped",
        run: the_demo_walk_reaches_the_page_it_mapped,
    },
];

pub(crate) const DMA_LEN: usize = 256;

pub(crate) fn edu_pair() -> Result<(&'static PciDevice, &'static PciDevice), alloc::string::String>
{
    let mut edus = devices::edus();
    let a = edus.next().ok_or("no edu")?;
    let b = edus.next().ok_or("no second edu")?;
    Ok((a, b))
}

pub(crate) fn requester(device: &PciDevice) -> u16 {
    device.function.bdf.requester_id()
}

/// A frame filled with `fill`, and its bytes.
pub(crate) fn filled_frame(fill: u8) -> Result<Frames, alloc::string::String> {
    let frame = frames::alloc().ok_or("no frame")?;
    // SAFETY: the frame was just allocated to this test and is identity-mapped.
    unsafe { core::ptr::write_bytes(frame.as_mut_ptr(), fill, 4096) };
    Ok(frame)
}

pub(crate) fn bytes(frame: &Frames) -> Vec<u8> {
    (0..DMA_LEN)
        // SAFETY: a volatile read of a frame this test owns; a device may have written it.
        .map(|i| unsafe { core::ptr::read_volatile(frame.as_mut_ptr().add(i)) })
        .collect()
}

pub(crate) fn open(
    platform: &Platform,
    device: &PciDevice,
) -> Result<edu::Edu<'static>, alloc::string::String> {
    devices::open_edu(platform, device).map_err(|err| format!("{err:?}"))
}

pub(crate) fn drain(unit: &mut Unit) -> Vec<Fault> {
    let mut faults = Vec::new();
    unit.hardware.drain_raw_faults(&mut faults);
    faults
}

/// The fault reason of a DMA from a device whose context is not present.
fn blocked_reason(_unit: &Unit) -> u8 {
    reason::CONTEXT_NOT_PRESENT
}

fn expect_one_fault(
    unit: &mut Unit,
    what: &str,
    source: u16,
    address: u64,
    is_read: bool,
) -> Result<(), alloc::string::String> {
    let faults = drain(unit);
    ensure_eq!(
        faults.len(),
        1,
        format!("{what}: fault records {faults:x?}")
    );
    let fault = faults[0];
    ensure_eq!(fault.source_id, source, format!("{what}: source id"));
    ensure_eq!(fault.address, address, format!("{what}: fault address"));
    ensure_eq!(
        fault.reason,
        blocked_reason(unit),
        format!("{what}: reason")
    );
    ensure_eq!(fault.is_read, is_read, format!("{what}: read (T)"));
    Ok(())
}

pub(crate) fn with_unit(
    platform: &Platform,
    body: impl FnOnce(&mut Unit) -> TestResult,
) -> TestResult {
    with_unit_options(platform, vtd::Options::default(), body)
}

/// Brings the platform's unit up afresh with `options` and table pages from
/// `dma`, runs `body` on it, shuts it down and checks that every frame came
/// back. The next user of the unit brings the default one up again.
pub(crate) fn with_unit_in(
    platform: &Platform,
    options: vtd::Options,
    dma: &'static (dyn os_services::DmaMemory + Sync),
    body: impl FnOnce(&mut Unit) -> TestResult,
) -> TestResult {
    glue::shut_down();
    let free_before = frames::free_count();
    if !glue::bring_up_again(platform, options, dma)? {
        return Ok(Outcome::NotApplicable("no VT-d unit in the DMAR"));
    }
    let outcome = glue::with_unit(platform, body);
    glue::shut_down();
    let outcome = outcome??;
    ensure_eq!(
        frames::free_count(),
        free_before,
        "free frames after the test"
    );
    Ok(outcome)
}

/// [`with_unit_in`] with the kernel's DMA memory.
pub(crate) fn with_unit_options(
    platform: &Platform,
    options: vtd::Options,
    body: impl FnOnce(&mut Unit) -> TestResult,
) -> TestResult {
    with_unit_in(platform, options, &crate::memory::dma::DMA, body)
}

/// Whether the platform's unit runs in scalable mode (`None`: no VT-d).
pub(crate) fn scalable(platform: &Platform) -> Option<bool> {
    glue::with_unit(platform, |unit| unit.hardware.mode().is_scalable()).ok()
}

fn blocked_dma_is_dropped_and_faults_once(platform: &Platform) -> TestResult {
    with_unit(platform, |unit| {
        let status = unit.hardware.global_status();
        ensure!(
            status.contains(Global::TRANSLATION | Global::ROOT_TABLE_POINTER),
            "GSTS {status:?}"
        );
        ensure_eq!(
            status.contains(Global::QUEUED_INVALIDATION),
            unit.hardware.ecap().queued_invalidation(),
            "QIES"
        );
        ensure_eq!(
            status.contains(Global::INTERRUPT_REMAPPING),
            unit.hardware.ecap().interrupt_remapping(),
            "IRES"
        );
        let (cap, ecap) = unit.hardware.read_capabilities();
        ensure_eq!(
            unit.hw_info(),
            ::iommu::HwInfo::IntelVtd { cap, ecap },
            "hw_info"
        );
        let expected_mode = match (
            unit.hardware.ecap().scalable_mode(),
            unit.hardware.ecap().second_stage(),
        ) {
            (false, _) => vtd::Mode::Legacy,
            (true, true) => vtd::Mode::ScalableSecondStage,
            (true, false) => vtd::Mode::ScalableFirstStage,
        };
        ensure_eq!(unit.hardware.mode(), expected_mode, "mode");

        let (a, _) = edu_pair()?;
        let edu = open(platform, a)?;
        let target = filled_frame(0x5A)?;
        let events_before = fault_events();
        let write = edu.dma(edu::Direction::ToRam, target.phys, 0, DMA_LEN);
        let untouched = bytes(&target).iter().all(|&b| b == 0x5A);
        let write_fault = expect_one_fault(unit, "blocked write", requester(a), target.phys, false);
        // The record was cleared, so a second blocked DMA (a read) records again.
        let read = edu.dma(edu::Direction::ToDevice, target.phys, 0, DMA_LEN);
        let read_fault = expect_one_fault(unit, "blocked read", requester(a), target.phys, true);
        frames::free(target);
        write.map_err(|err| format!("DMA: {err:?}"))?;
        read.map_err(|err| format!("DMA: {err:?}"))?;
        ensure!(untouched, "a blocked device wrote memory");
        write_fault?;
        read_fault?;
        let event =
            os_services::wait_until(&crate::time::CLOCK, Duration::from_millis(100), || {
                (fault_events() > events_before).then_some(())
            });
        ensure!(
            event.is_ok(),
            "no fault-event interrupt ({} before, {} now)",
            events_before,
            fault_events()
        );
        Ok(Outcome::Passed)
    })
}

/// Same scenario with queued invalidation off: QEMU then honours CCMD and
/// the IOTLB register, and the detach must still be seen by the next DMA.
fn register_based_invalidation_makes_detach_visible(platform: &Platform) -> TestResult {
    // Scalable mode has only queued invalidation (VT-d 3.4 §6.5).
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
    with_unit_options(platform, options, |unit| {
        ensure!(
            !unit.hardware.uses_queued_invalidation(),
            "the queue is in use"
        );
        let before = unit.hardware.counters();
        let outcome = attach_dma_detach_dma(platform, unit)?;
        let cost = unit.hardware.counters().since(&before);
        // Detach: one context-cache and one IOTLB invalidation, no waits;
        // under caching mode the attach (not present → present) owes the same.
        let expected = if unit.hardware.cap().caching_mode() {
            4
        } else {
            2
        };
        ensure_eq!(
            (cost.invalidations, cost.waits),
            (expected, 0),
            "register invalidations"
        );
        Ok(outcome)
    })
}

fn attach_dma_detach_dma(platform: &Platform, unit: &mut Unit) -> TestResult {
    {
        if !unit.hardware.ecap().pass_through() {
            return Ok(Outcome::NotApplicable("no ECAP.PT"));
        }
        let (a, _) = edu_pair()?;
        let edu = open(platform, a)?;
        let device = DeviceId(requester(a).into());
        let domain = unit
            .alloc_domain(DomainKind::Identity)
            .map_err(|err| format!("alloc: {err:?}"))?;
        unit.attach(device, domain)
            .map_err(|err| format!("attach: {err:?}"))?;
        let source = filled_frame(0xC3)?;
        let landed = filled_frame(0)?;
        let blocked = filled_frame(0x11)?;
        let run = (|| -> Result<(), alloc::string::String> {
            edu.dma(edu::Direction::ToDevice, source.phys, 0, DMA_LEN)
                .map_err(|err| format!("{err:?}"))?;
            edu.dma(edu::Direction::ToRam, landed.phys, 0, DMA_LEN)
                .map_err(|err| format!("{err:?}"))?;
            ensure!(
                bytes(&landed).iter().all(|&b| b == 0xC3),
                "DMA through the pass-through context did not land"
            );
            ensure!(drain(unit).is_empty(), "faults from an attached device");
            unit.detach(device);
            // QEMU caches the pass-through context: only the invalidation that
            // detach issues makes this DMA see the non-present entry.
            edu.dma(edu::Direction::ToRam, blocked.phys, 0, DMA_LEN)
                .map_err(|err| format!("{err:?}"))?;
            ensure!(
                bytes(&blocked).iter().all(|&b| b == 0x11),
                "DMA after detach reached memory"
            );
            expect_one_fault(unit, "after detach", requester(a), blocked.phys, false)
        })();
        frames::free(source);
        frames::free(landed);
        frames::free(blocked);
        run?;
        unit.free_domain(domain)
            .map_err(|err| format!("free: {err:?}"))?;
        Ok(Outcome::Passed)
    }
}

fn devices_have_separate_contexts_and_domain_ids(platform: &Platform) -> TestResult {
    with_unit(platform, |unit| {
        if !unit.hardware.ecap().pass_through() {
            return Ok(Outcome::NotApplicable("no ECAP.PT"));
        }
        let (a, b) = edu_pair()?;
        let (edu_a, edu_b) = (open(platform, a)?, open(platform, b)?);
        let first = unit
            .alloc_domain(DomainKind::Identity)
            .map_err(|e| format!("{e:?}"))?;
        let second = unit
            .alloc_domain(DomainKind::Identity)
            .map_err(|e| format!("{e:?}"))?;
        ensure!(
            unit.domain_id(first) != unit.domain_id(second),
            "two domains share domain id {:?}",
            unit.domain_id(first)
        );
        unit.attach(DeviceId(requester(a).into()), first)
            .map_err(|e| format!("{e:?}"))?;
        let reachable = filled_frame(0x22)?;
        let protected = filled_frame(0x33)?;
        let run = (|| -> Result<(), alloc::string::String> {
            // b stays blocked while a is attached: its write must not land.
            edu_b
                .dma(edu::Direction::ToRam, protected.phys, 0, DMA_LEN)
                .map_err(|err| format!("{err:?}"))?;
            ensure!(
                bytes(&protected).iter().all(|&b| b == 0x33),
                "the blocked device wrote memory"
            );
            expect_one_fault(unit, "device b", requester(b), protected.phys, false)?;
            edu_a
                .dma(edu::Direction::ToDevice, reachable.phys, 0, DMA_LEN)
                .map_err(|err| format!("{err:?}"))?;
            ensure!(drain(unit).is_empty(), "faults from the attached device");
            let regions = unit.reserved_regions(DeviceId(requester(a).into()));
            ensure!(
                regions
                    .iter()
                    .any(|r| r.kind == ReservedKind::Msi && r.range.start == 0xFEE0_0000),
                "no interrupt window in {regions:?}"
            );
            Ok(())
        })();
        frames::free(reachable);
        frames::free(protected);
        unit.detach(DeviceId(requester(a).into()));
        run?;
        unit.free_domain(first).map_err(|e| format!("{e:?}"))?;
        unit.free_domain(second).map_err(|e| format!("{e:?}"))?;
        Ok(Outcome::Passed)
    })
}

fn note_interrupt() {}

/// An MSI of `device` that goes through a fresh IRTE made for requester
/// `source` (which the entry verifies). `body` gets the unit, the device and
/// the interrupt; the MSI, the vector and the IRTE are given back whatever
/// `body` returned.
fn with_remapped_msi(
    platform: &Platform,
    unit: &mut Unit,
    device: &PciDevice,
    source: u16,
    body: impl FnOnce(&mut Unit, &edu::Edu, RemappedMsi) -> Fallible,
) -> TestResult {
    let edu = open(platform, device)?;
    let config = &platform.pci.ecam;
    let msi = pci::Msi::find(config, device.function.bdf).ok_or("edu has no MSI capability")?;
    let vector = crate::irq::alloc_vector(note_interrupt).ok_or("no free vector")?;
    let (compat_address, _) = crate::irq::msi_message(vector);
    let apic_id = ((compat_address >> 12) & 0xFF) as u8;
    let Some(index) = unit.hardware.alloc_interrupt() else {
        crate::irq::free(u32::from(vector));
        return Err("no free IRTE".into());
    };
    let interrupt = RemappedMsi {
        irq: u32::from(vector),
        index,
    };
    let run = unit
        .hardware
        .set_interrupt(index, Irte::remapped(vector, apic_id, source))
        .map_err(|err| format!("IRTE: {err:?}"))
        .and_then(|()| {
            msi.enable(config, remappable_msi_address(index), 0);
            body(unit, &edu, interrupt)
        });
    msi.disable(config);
    crate::irq::free(interrupt.irq);
    let freed = unit.hardware.free_interrupt(index);
    run?;
    freed.map_err(|err| format!("free IRTE: {err:?}"))?;
    Ok(Outcome::Passed)
}

/// The interrupt of [`with_remapped_msi`]: kernel vector and IRTE index.
#[derive(Clone, Copy)]
struct RemappedMsi {
    irq: u32,
    index: u16,
}

impl RemappedMsi {
    /// Has the edu raise its interrupt; whether it arrived within `timeout`
    /// (exactly once).
    fn raise(self, edu: &edu::Edu, timeout: Duration) -> Fallible<bool> {
        let seen = crate::irq::count(self.irq);
        edu.raise_interrupt(1);
        let delivered = crate::irq::wait_for(self.irq, seen, timeout);
        edu.acknowledge_interrupt(1);
        ensure!(
            crate::irq::count(self.irq) <= seen + 1,
            "one raise delivered {} interrupts",
            crate::irq::count(self.irq) - seen
        );
        Ok(delivered)
    }

    /// The unit recorded exactly one interrupt-remapping fault for this
    /// entry, with `expected` reason, from `source`.
    fn expect_fault(self, unit: &mut Unit, expected: u8, source: u16) -> Fallible {
        let faults = drain(unit);
        ensure_eq!(faults.len(), 1, format!("fault records {faults:x?}"));
        ensure_eq!(faults[0].reason, expected, "reason");
        ensure_eq!(faults[0].source_id, source, "source id");
        ensure_eq!(faults[0].interrupt_index(), self.index, "interrupt index");
        Ok(())
    }
}

fn edu_msi_arrives_through_its_irte_and_stops_when_cleared(platform: &Platform) -> TestResult {
    with_unit(platform, |unit| {
        if !unit.hardware.interrupt_remapping_enabled() {
            return Ok(Outcome::NotApplicable("no interrupt remapping (ECAP.IR)"));
        }
        let (a, _) = edu_pair()?;
        with_remapped_msi(platform, unit, a, requester(a), |unit, edu, msi| {
            ensure!(
                msi.raise(edu, Duration::from_millis(500))?,
                "no MSI through IRTE {}",
                msi.index
            );
            ensure!(drain(unit).is_empty(), "faults from a good interrupt");
            unit.hardware
                .clear_interrupt(msi.index)
                .map_err(|err| format!("clear IRTE: {err:?}"))?;
            ensure!(
                !msi.raise(edu, Duration::from_millis(100))?,
                "MSI delivered through a non-present IRTE"
            );
            msi.expect_fault(unit, reason::IRTE_NOT_PRESENT, requester(a))
        })
    })
}

/// The IRTE verifies the requester (SVT = 01): edu A sending through an
/// entry made for edu B is blocked and reported as a source-id fault.
fn msi_from_the_wrong_requester_is_blocked(platform: &Platform) -> TestResult {
    with_unit(platform, |unit| {
        if !unit.hardware.interrupt_remapping_enabled() {
            return Ok(Outcome::NotApplicable("no interrupt remapping (ECAP.IR)"));
        }
        let (a, b) = edu_pair()?;
        with_remapped_msi(platform, unit, a, requester(b), |unit, edu, msi| {
            ensure!(
                !msi.raise(edu, Duration::from_millis(100))?,
                "an MSI from the wrong requester was delivered"
            );
            msi.expect_fault(unit, reason::IRTE_SOURCE_ID, requester(a))
        })
    })
}

fn aligned_range_flush_costs_one_invalidation_one_wait_one_tail_write(
    platform: &Platform,
) -> TestResult {
    with_unit(platform, |unit| {
        let domain = unit
            .alloc_domain(DomainKind::Identity)
            .or_else(|_| unit.alloc_domain(DomainKind::Blocked))
            .map_err(|err| format!("{err:?}"))?;
        let queued = unit.hardware.uses_queued_invalidation();
        for pages in [1u64, 2, 16, 512, 1 << 18, 1 << 19] {
            let mut gather = Gather::default();
            gather.add_leaf(0x1_0000_0000, pages * 4096);
            let before = unit.hardware.counters();
            unit.flush(domain, &gather)
                .map_err(|err| format!("flush: {err:?}"))?;
            let cost = unit.hardware.counters().since(&before);
            // Queued: the descriptor(s) plus one wait, published by one IQT write.
            let expected = if queued { (1, 1, 1) } else { (1, 0, 2) };
            ensure_eq!(
                (cost.invalidations, cost.waits, cost.mmio_writes),
                expected,
                format!("cost of flushing {pages} pages")
            );
        }
        let before = unit.hardware.counters();
        unit.flush(domain, &Gather::default())
            .map_err(|err| format!("{err:?}"))?;
        ensure_eq!(
            unit.hardware.counters(),
            before,
            "an empty gather costs nothing"
        );
        unit.free_domain(domain).map_err(|err| format!("{err:?}"))?;
        Ok(Outcome::Passed)
    })
}

// ---- paging domains: the DMA matrix of issue 5 ---------------------------
//
// These run once `io-page-table` provides the VT-d formats (the kernel's
// `new_table` hook); until then alloc_domain(Paging) is `Unsupported` and
// they report "not applicable".

pub static PAGING_TESTS: &[Test] = &[Test {
    name: "vtd::paging::map_costs_nothing_unless_caching_mode_and_unmap_one_psi_one_wait_one_tail_write",
    run: map_and_unmap_costs,
}];

pub(crate) const READ_WRITE: ::iommu::Prot = ::iommu::Prot {
    read: true,
    write: true,
};
pub(crate) const READ_ONLY: ::iommu::Prot = ::iommu::Prot {
    read: true,
    write: false,
};

pub(crate) type Fallible<T = ()> = Result<T, alloc::string::String>;

/// A paging domain, or `None` when this kernel has no table format for the unit.
pub(crate) fn paging_domain(unit: &mut Unit) -> Fallible<Option<::iommu::DomainHandle>> {
    match unit.alloc_domain(DomainKind::Paging) {
        Ok(domain) => Ok(Some(domain)),
        Err(::iommu::IommuError::Unsupported) => Ok(None),
        Err(err) => Err(format!("alloc paging domain: {err:?}")),
    }
}

pub(crate) fn map(
    unit: &mut Unit,
    domain: ::iommu::DomainHandle,
    iova: u64,
    phys: u64,
    len: u64,
    prot: ::iommu::Prot,
) -> Fallible {
    let gather = unit
        .map(domain, iova, phys, len, prot)
        .map_err(|err| format!("map {iova:#x}: {err:?}"))?;
    unit.flush(domain, &gather)
        .map_err(|err| format!("flush after map: {err:?}"))
}

pub(crate) fn holds(frame: &Frames, value: u8) -> bool {
    bytes(frame).iter().all(|&b| b == value)
}

/// Fault reason of a DMA that found no leaf: legacy and second stage report
/// missing read/write permission (§7.1.3: R = W = 0), first stage its own code.
pub(crate) fn no_leaf_reasons(unit: &Unit, is_read: bool) -> &'static [u8] {
    match (unit.hardware.mode(), is_read) {
        (vtd::Mode::ScalableFirstStage, _) => &[reason::FIRST_STAGE_NOT_PRESENT],
        (_, true) => &[reason::READ],
        (_, false) => &[reason::WRITE],
    }
}

pub(crate) fn expect_fault(
    unit: &mut Unit,
    what: &str,
    source: u16,
    iova: u64,
    is_read: bool,
    reasons: &[u8],
) -> Fallible {
    let faults = drain(unit);
    ensure_eq!(
        faults.len(),
        1,
        format!("{what}: fault records {faults:x?}")
    );
    let fault = faults[0];
    ensure_eq!(fault.source_id, source, format!("{what}: source id"));
    ensure_eq!(fault.address, iova, format!("{what}: fault address"));
    ensure_eq!(fault.is_read, is_read, format!("{what}: read (T)"));
    ensure!(
        reasons.contains(&fault.reason),
        "{what}: reason {:#x} not in {reasons:x?}",
        fault.reason
    );
    Ok(())
}

fn map_and_unmap_costs(platform: &Platform) -> TestResult {
    with_unit(platform, |unit| {
        let caching = unit.hardware.cap().caching_mode();
        for k in [0u32, 3] {
            let pages = 1u64 << k;
            let (map, unmap) = crate::figures::vtd::costs(unit, k)?;
            let per_map = if caching { (1, 1, 1) } else { (0, 0, 0) };
            ensure_eq!(
                (map.invalidations, map.waits, map.mmio_writes),
                (per_map.0 * pages, per_map.1 * pages, per_map.2 * pages),
                format!("cost of {pages} maps")
            );
            ensure_eq!(
                (unmap.invalidations, unmap.waits, unmap.mmio_writes),
                (1, 1, 1),
                format!("cost of unmapping {pages} pages")
            );
            // Walks that do not snoop (QEMU: ECAP.C = 0) get only the lines
            // written: one invalidation and its wait, 32 bytes of the ring.
            let most_lines = if unit.hardware.ecap().coherent() {
                0
            } else {
                2
            };
            ensure!(
                unmap.cache_lines <= most_lines,
                "{} cache lines written back for unmapping {pages} pages",
                unmap.cache_lines
            );
        }
        Ok(Outcome::Passed)
    })
}

/// The kernel names a PCI function for a unit (so tasks can attach it) only
/// when the DMAR's device scopes put it behind that unit. The expectation comes
/// from the firmware crate's own scope lookup, not the driver's: QEMU lists
/// every bus-0 function it creates (both edus; a bridge as a sub-hierarchy,
/// which covers the buses below it), and nothing at 00:07.0.
fn only_functions_behind_the_unit_are_named_for_it(platform: &Platform) -> TestResult {
    let crate::platform::Firmware::Acpi(acpi) = &platform.firmware;
    let Some(dmar) = &acpi.dmar else {
        return Ok(Outcome::NotApplicable("no DMAR"));
    };
    if dmar.drhds.is_empty() {
        return Ok(Outcome::NotApplicable("no DRHD in the DMAR"));
    }
    let absent = pci::Bdf::new(0, 7, 0);
    let functions = devices::all().iter().map(|device| device.function.bdf);
    // Whether `drhd` lists a sub-hierarchy (bridge) whose buses hold `bus`.
    let bridged = |drhd: &firmware::acpi::dmar::Drhd, bus: u8| {
        drhd.scopes.iter().any(|scope| {
            scope.scope_type == firmware::acpi::dmar::DeviceScopeType::PciSubHierarchy
                && scope.bdf().is_some_and(|(b, d, f)| {
                    devices::buses_below(pci::Bdf::new(b, d, f).requester_id()).is_some_and(
                        |(secondary, subordinate)| (secondary..=subordinate).contains(&bus),
                    )
                })
        })
    };
    for bdf in functions.chain([absent]) {
        let behind = dmar
            .drhds
            .iter()
            .position(|drhd| bridged(drhd, bdf.bus))
            .or_else(|| {
                let drhd = dmar.drhd_for(0, bdf.bus, bdf.device, bdf.function)?;
                dmar.drhds
                    .iter()
                    .position(|unit| unit.register_base == drhd.register_base)
            });
        let named = crate::iommu::vtd::endpoint(platform, bdf);
        let expected = behind.map(|unit| {
            (
                ::iommu::UnitId(unit as u32),
                DeviceId(u32::from(bdf.requester_id())),
            )
        });
        ensure_eq!(named, expected, format!("unit and name of {bdf:?}"));
        ensure_eq!(
            crate::iommu::vtd::device_id(platform, bdf),
            expected.filter(|&(unit, _)| unit.0 == 0).map(|(_, id)| id),
            format!("name of {bdf:?} on the first unit")
        );
    }
    ensure!(
        crate::iommu::vtd::endpoint(platform, absent).is_none(),
        "00:07.0 is outside every device scope"
    );
    for edu in devices::edus() {
        ensure!(
            crate::iommu::vtd::endpoint(platform, edu.function.bdf).is_some(),
            "edu {:?} is behind a unit",
            edu.function.bdf
        );
    }
    Ok(Outcome::Passed)
}

/// Every DRHD is brought up, not only the first: a unit left as firmware left
/// it would let the DMA of the devices behind it go wherever firmware pointed
/// it. Each is translating (TE) with nothing attached, and the iommufd core
/// holds one handle per unit. (QEMU builds one DRHD; which unit a device
/// belongs to with several is the host-tested `vtd::discovery::unit_for`.)
fn every_drhd_is_brought_up_blocking(platform: &Platform) -> TestResult {
    let described = crate::iommu::vtd::descriptions(platform)?.len();
    if described == 0 {
        return Ok(Outcome::NotApplicable("no DRHD in the DMAR"));
    }
    crate::iommu::vtd::with_unit(platform, |_| ())?;
    ensure_eq!(crate::iommu::vtd::units_up(), described, "units up");
    for index in 0..described {
        let status =
            crate::iommu::vtd::with_unit_at(platform, index, |unit| unit.hardware.global_status())?;
        ensure!(
            status.contains(::vtd::regs::Global::TRANSLATION),
            "unit {index} translates (GSTS {status:?})"
        );
    }
    ensure!(
        crate::iommu::vtd::with_unit_at(platform, described, |_| ()).is_err(),
        "no unit beyond the DMAR's"
    );
    crate::iommufd_service::prepare();
    ensure_eq!(
        crate::iommufd_service::unit_count(),
        described,
        "units the iommufd core holds"
    );
    Ok(Outcome::Passed)
}

/// The demo's lesson (`figures::walk`): the hardware's walk to a mapped
/// page, read back level by level from the unit's own tables, ends in that
/// page at the byte asked about.
fn the_demo_walk_reaches_the_page_it_mapped(platform: &Platform) -> TestResult {
    with_unit(platform, |unit| {
        let text = crate::figures::walk::lesson(unit, |unit, domain, iova, visit| {
            unit.walk_mapping(domain, iova, visit)
        })?;
        crate::figures::walk::check(&text)?;
        Ok(Outcome::Passed)
    })
}
