//! Host tests of the unit against a register-level model of the hardware
//! that records every GCMD write and every descriptor the driver queues.
//! They prove what QEMU cannot show: invalidations QEMU would not miss
//! (PASID cache, interrupt-entry cache, caching mode, RWBF), GCMD discipline
//! and bounded waits.

extern crate std;

use alloc::vec;
use alloc::vec::Vec;

use iommu::{DeviceId, DomainKind, Gather, IommuError, IommuUnit, Prot, UnitId};
use proptest::prelude::*;

use crate::command::{Descriptor, DescriptorType, PasidGranularity};
use crate::device_table::{ContextEntry, PasidEntry};
use crate::hardware::{Error, Mode, Options};
use crate::interrupt::Irte;
use crate::invalidation::page_selective_mask;
use crate::model::*;
use crate::regs::{self, Cap, Ecap, Global, Granularity};
use crate::unit::Vtd;
use iommu_kit::fakes::maintenance;

const RW: Prot = Prot {
    read: true,
    write: true,
};

#[test]
fn bring_up_blocks_compatibility_format_left_on_by_firmware_and_then_isolates_msis() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    model.gsts.set(Global::COMPATIBILITY_FORMAT.bits());
    let unit = rig.unit(&model);
    let status = Global::from_bits_retain(model.gsts.get());
    assert!(status.contains(Global::INTERRUPT_REMAPPING));
    assert!(
        !status.contains(Global::COMPATIBILITY_FORMAT),
        "CFI left on"
    );
    assert!(unit.isolates_msi());
    assert!(
        model
            .gcmd_writes
            .borrow()
            .last()
            .is_some_and(|gcmd| gcmd & Global::COMPATIBILITY_FORMAT.bits() == 0)
    );
}

#[test]
fn without_interrupt_remapping_msis_are_not_isolated() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY & !ECAP_IR);
    let unit = rig.unit(&model);
    assert!(!unit.hardware.interrupt_remapping_enabled());
    assert!(!unit.isolates_msi());
}

#[test]
fn bring_up_sets_root_then_queue_then_remapping_then_translation() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let unit = rig.unit(&model);
    assert_eq!(unit.hardware.mode(), Mode::Legacy);
    assert!(
        unit.hardware.uses_queued_invalidation() && unit.hardware.interrupt_remapping_enabled()
    );
    assert_eq!(
        *model.gcmd_writes.borrow(),
        vec![
            0x4000_0000, // SRTP
            0x0400_0000, // QIE
            0x0500_0000, // QIE kept + SIRTP
            0x0600_0000, // QIE + IRE (CFI stays clear)
            0x8600_0000, // + TE
        ]
    );
    // One-shot bits are never written back even though GSTS keeps RTPS/IRTPS.
    assert!(
        model.gcmd_writes.borrow()[1..]
            .iter()
            .all(|value| value & Global::ROOT_TABLE_POINTER.bits() == 0)
    );
    assert_eq!(
        kinds(&model.take_descriptors()),
        vec![
            DescriptorType::ContextCache,
            DescriptorType::Iotlb,
            DescriptorType::Wait,
            DescriptorType::InterruptEntryCache,
            DescriptorType::Wait,
        ]
    );
    assert!(model.register_invalidations.borrow().is_empty());
    drop(unit);
    assert_eq!(rig.dma.live(), 0, "tables leaked");
}

#[test]
fn every_domain_gets_its_own_domain_id() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let a = unit.alloc_domain(DomainKind::Identity).unwrap();
    let b = unit.alloc_domain(DomainKind::Identity).unwrap();
    let c = unit.alloc_domain(DomainKind::Blocked).unwrap();
    let ids = [a, b, c].map(|d| unit.domain_id(d).unwrap());
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert!(
        ids.iter().all(|&id| id != 0),
        "DID 0 is reserved under caching mode"
    );
}

#[test]
fn detach_invalidates_context_and_iotlb_of_the_old_domain() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let did = unit.domain_id(domain).unwrap();
    model.take_descriptors();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    // Not present → present needs nothing without caching mode.
    assert!(model.take_descriptors().is_empty());
    unit.detach(DeviceId(EDU_A.into()));
    let stream = model.take_descriptors();
    assert_eq!(
        stream[0],
        Descriptor::context_cache(Granularity::Selective, did, EDU_A)
    );
    assert_eq!(
        stream[1],
        Descriptor::iotlb(Granularity::Domain, did, 0, 0, false)
    );
    assert_eq!(stream[2].kind(), Some(DescriptorType::Wait));
    assert_eq!(stream.len(), 3);
    assert_eq!(unit.free_domain(domain), Ok(()));
}

#[test]
fn caching_mode_invalidates_not_present_to_present() {
    let rig = Rig::new();
    let model = Model::new(CAP_CACHING_MODE, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let did = unit.domain_id(domain).unwrap();
    model.take_descriptors();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    let stream = model.take_descriptors();
    assert_eq!(
        stream,
        vec![
            Descriptor::context_cache(Granularity::Selective, 0, EDU_A),
            Descriptor::iotlb(Granularity::Domain, did, 0, 0, false),
            stream[2],
        ]
    );
    assert_eq!(stream[2].kind(), Some(DescriptorType::Wait));
}

#[test]
fn write_buffer_flush_when_cap_requires_it() {
    let rig = Rig::new();
    let model = Model::new(CAP_RWBF, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let before = model.gcmd_writes.borrow().len();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    let writes = model.gcmd_writes.borrow()[before..].to_vec();
    assert_eq!(
        writes,
        vec![0x8600_0000 | Global::WRITE_BUFFER_FLUSH.bits()]
    );
}

#[test]
fn scalable_detach_adds_pasid_cache_invalidation() {
    for (ecap, iotlb) in [
        (ECAP_SCALABLE_SL, DescriptorType::Iotlb),
        (ECAP_SCALABLE_FL, DescriptorType::PasidIotlb),
    ] {
        let rig = Rig::new();
        let model = Model::new(CAP_DEFAULT, ecap);
        let mut unit = rig.unit(&model);
        assert!(unit.hardware.mode().is_scalable());
        assert!(model.wide(), "PASID descriptors need 256-bit slots");
        let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
        let did = unit.domain_id(domain).unwrap();
        unit.attach(DeviceId(EDU_B.into()), domain).unwrap();
        model.take_descriptors();
        unit.detach(DeviceId(EDU_B.into()));
        let stream = model.take_descriptors();
        assert_eq!(
            kinds(&stream),
            vec![
                DescriptorType::ContextCache,
                DescriptorType::PasidCache,
                iotlb,
                DescriptorType::Wait
            ]
        );
        assert_eq!(stream[1], Descriptor::pasid_cache(did, 0));
        if iotlb == DescriptorType::PasidIotlb {
            assert_eq!(
                stream[2],
                Descriptor::pasid_iotlb(PasidGranularity::Pasid, did, 0, 0, 0, false)
            );
        }
        drop(unit);
        assert_eq!(rig.dma.live(), 0);
    }
}

#[test]
fn aligned_unmap_costs_one_psi_one_wait_one_tail_write() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let did = unit.domain_id(domain).unwrap();
    model.take_descriptors();
    for k in [0u8, 1, 4, 9] {
        let mut gather = Gather::default();
        let base = 0x4000_0000u64;
        for page in 0..(1u64 << k) {
            gather.add_leaf(base + page * 4096, 4096);
        }
        let before = unit.hardware.counters();
        unit.flush(domain, &gather).unwrap();
        let cost = unit.hardware.counters().since(&before);
        assert_eq!(
            (cost.invalidations, cost.waits, cost.mmio_writes),
            (1, 1, 1)
        );
        let stream = model.take_descriptors();
        assert_eq!(
            stream[0],
            Descriptor::iotlb(Granularity::Selective, did, base, k, true)
        );
        assert_eq!(stream.len(), 2);
    }
}

/// Issue 20, several CPUs at once: four threads map, walk, unmap and flush
/// their own 2 MiB of one caching-mode domain through `&self` (real tables;
/// each unmap unlinks a leaf table, owed an IH = 0 invalidation), sharing
/// the invalidation queue and each waiting for its own wait descriptor's
/// status (the loop is `iommu_kit::fakes::map_and_unmap_from_four_threads`,
/// the probe a walk of the tables). Every flush completes, each thread's
/// walk finds its own pages and none after its unmap, and every table page
/// comes back with the domain.
#[test]
fn cpus_map_and_unmap_disjoint_ranges_of_one_domain_at_once() {
    let rig = Rig::new();
    let model = Model::new(CAP_CACHING_MODE, ECAP_LEGACY);
    let env = crate::hardware::Environment {
        new_table: None,
        ..rig.env()
    };
    let mut unit = Vtd::new(UnitId(0), &model, env, description(), Options::default()).unwrap();
    let before = rig.dma.live();
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    assert!(unit.shares_mapping());
    model.take_descriptors();
    assert_eq!(unit.hardware.counters().shared_waits, 0);
    const ROUNDS: u64 = 50;
    // The leaf a walk of the real tables finds (caching mode: no IOTLB of
    // mapped pages to consult).
    let walked = |iova| {
        let mut leaf = None;
        unit.walk_mapping(domain, iova, &mut |step| {
            if let io_page_table::StepKind::Leaf { phys, .. } = step.kind {
                leaf = Some(phys);
            }
        });
        leaf
    };
    iommu_kit::fakes::map_and_unmap_from_four_threads(&unit, domain, ROUNDS, walked);
    // Two flushes a round, each one invalidation and a wait: its own, or
    // another CPU's queued after it.
    let waits = model
        .take_descriptors()
        .iter()
        .filter(|d| d.kind() == Some(DescriptorType::Wait))
        .count();
    let shared = unit.hardware.counters().shared_waits;
    assert_eq!(waits as u64 + shared, 4 * ROUNDS * 2);
    unit.free_domain(domain).unwrap();
    assert_eq!(rig.dma.live(), before, "a table page was lost or kept");
}

#[test]
fn invalidation_falls_back_to_domain_past_mamv() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let did = unit.domain_id(domain).unwrap();
    model.take_descriptors();
    // 2^19 pages: one more than MAMV = 18 allows.
    let gather = Gather {
        start: 0,
        last: (1 << 31) - 1,
        leaf_sizes: 1 << 21,
        freed_tables: true,
    };
    unit.flush(domain, &gather).unwrap();
    assert_eq!(
        model.take_descriptors()[0],
        Descriptor::iotlb(Granularity::Domain, did, 0, 0, false)
    );
    // An empty gather owes nothing.
    unit.flush(domain, &Gather::default()).unwrap();
    assert!(model.take_descriptors().is_empty());
}

#[test]
fn first_stage_uses_pasid_based_page_invalidation() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_SCALABLE_FL);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let did = unit.domain_id(domain).unwrap();
    model.take_descriptors();
    let mut gather = Gather::default();
    gather.add_leaf(0x20_0000, 0x20_0000);
    unit.flush(domain, &gather).unwrap();
    assert_eq!(
        model.take_descriptors()[0],
        Descriptor::pasid_iotlb(PasidGranularity::Page, did, 0, 0x20_0000, 9, true)
    );
}

#[test]
fn irte_changes_invalidate_the_interrupt_entry_cache() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let index = unit.hardware.alloc_interrupt().unwrap();
    model.take_descriptors();
    unit.hardware
        .set_interrupt(index, Irte::remapped(0x40, 0, EDU_A))
        .unwrap();
    unit.hardware.clear_interrupt(index).unwrap();
    let stream = model.take_descriptors();
    let iec = Descriptor::interrupt_entry_cache(Some(index));
    assert_eq!(
        kinds(&stream),
        vec![
            DescriptorType::InterruptEntryCache,
            DescriptorType::Wait,
            DescriptorType::InterruptEntryCache,
            DescriptorType::Wait
        ]
    );
    assert_eq!((stream[0], stream[2]), (iec, iec));
    assert_eq!(
        unit.hardware.set_interrupt(200, Irte::default()),
        Err(Error::Invalid)
    );
}

#[test]
fn each_route_goes_through_a_fresh_irte_that_its_unroute_frees() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let device = DeviceId(EDU_A.into());
    // Compatibility format: vector 0x41 to APIC 1.
    let compat = iommu::MsiMessage {
        address: 0xFEE0_1000,
        data: 0x41,
    };
    model.take_descriptors();
    let (route, routed) = unit.route_msi(device, compat).unwrap();
    assert_eq!(
        routed,
        iommu::MsiMessage {
            address: crate::interrupt::remappable_msi_address(0),
            data: 0
        }
    );
    assert_eq!(
        kinds(&model.take_descriptors()),
        vec![DescriptorType::InterruptEntryCache, DescriptorType::Wait]
    );
    // A second route of the same requester (another function behind the
    // same bridge) gets an entry of its own; each unroute frees its own.
    let (second, message) = unit.route_msi(device, compat).unwrap();
    assert_ne!(second, route);
    assert_eq!(message.address, crate::interrupt::remappable_msi_address(1));
    unit.unroute_msi(route);
    assert_eq!(
        unit.hardware.alloc_interrupt(),
        Some(0),
        "the first entry was not freed"
    );
    unit.unroute_msi(second);
    assert_eq!(
        unit.hardware.alloc_interrupt(),
        Some(1),
        "the second entry was not freed"
    );
    // A route the unit never made frees nothing.
    unit.unroute_msi(iommu::MsiRoute(7));
    assert_eq!(unit.hardware.alloc_interrupt(), Some(2));
}

#[test]
fn route_msi_without_interrupt_remapping_keeps_the_message() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_NO_QI);
    let mut unit = rig.unit(&model);
    assert!(!unit.hardware.interrupt_remapping_enabled());
    let compat = iommu::MsiMessage {
        address: 0xFEE0_0000,
        data: 0x30,
    };
    let (route, message) = unit.route_msi(DeviceId(EDU_A.into()), compat).unwrap();
    assert_eq!(message, compat);
    unit.unroute_msi(route);
}

#[test]
fn register_based_invalidation_without_qi() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_NO_QI);
    let mut unit = rig.unit(&model);
    assert!(
        !unit.hardware.uses_queued_invalidation() && !unit.hardware.interrupt_remapping_enabled()
    );
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let did = unit.domain_id(domain).unwrap();
    model.register_invalidations.borrow_mut().clear();
    let mut gather = Gather::default();
    gather.add_leaf(0x1000, 4096);
    unit.flush(domain, &gather).unwrap();
    assert_eq!(
        *model.register_invalidations.borrow(),
        vec![(0xF8, regs::iotlb_command(Granularity::Selective, did))]
    );
    assert_eq!(
        *model.other.borrow().get(&0xF0).unwrap(),
        regs::invalidate_address(0x1000, 0, true)
    );
    assert!(model.descriptors.borrow().is_empty());
}

#[test]
fn scalable_mode_refuses_to_run_without_the_queue() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_SCALABLE_SL & !(1 << 1));
    let result = Vtd::new(
        UnitId(0),
        &model,
        rig.env(),
        description(),
        Options::default(),
    );
    assert!(matches!(result, Err(Error::Unsupported(_))));
    drop(result);
    assert_eq!(rig.dma.live(), 0, "a failed bring-up leaked");
}

#[test]
fn a_hung_unit_is_a_timeout_not_a_hang() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    model.stalled.set(true);
    let mut gather = Gather::default();
    gather.add_leaf(0x1000, 4096);
    assert_eq!(unit.flush(domain, &gather), Err(IommuError::Timeout));
    assert_eq!(
        unit.invalidate(domain, &gather),
        Err(Error::Timeout("invalidation wait"))
    );
}

/// Each wait descriptor writes its own slot's status word with a token of
/// its own position (the shared queue's per-caller completion): a lap later,
/// the same slot's word still holds the old token, which must not satisfy
/// the new wait.
#[test]
fn a_wait_is_satisfied_only_by_its_own_status_write() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    let mut gather = Gather::default();
    gather.add_leaf(0x1000, 4096);
    // Several laps of the 256-slot ring, two slots a flush.
    for _ in 0..300 {
        unit.invalidate(domain, &gather).unwrap();
    }
    let waits: Vec<u64> = model
        .descriptors
        .borrow()
        .iter()
        .filter(|d| d.kind() == Some(crate::command::DescriptorType::Wait))
        .map(|d| d.0[1])
        .collect();
    let words: std::collections::BTreeSet<u64> = waits.iter().copied().collect();
    assert_eq!(words.len(), 128, "one status word per slot a wait lands in");
    model.stalled.set(true);
    assert_eq!(
        unit.invalidate(domain, &gather),
        Err(Error::Timeout("invalidation wait"))
    );
}

#[test]
fn faults_are_drained_cleared_and_decoded() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    model.fault.set((0x0b00_0000, 0xc0ff_ff06_0000_0020));
    let mut records = Vec::new();
    assert_eq!(unit.drain_faults(&mut records), 1);
    assert_eq!(records[0].iova, 0x0b00_0000);
    assert_eq!(records[0].requester, DeviceId(0x20));
    assert_eq!(model.fault.get().1 >> 63, 0, "F not cleared");
    assert_eq!(unit.drain_faults(&mut records), 0);
}

#[test]
fn fault_overflow_is_cleared_with_the_records() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    model.fault.set((0x2000, 0xc000_0005_0000_0028));
    model.fsts_sticky.set(0x1);
    let mut records = Vec::new();
    assert_eq!(unit.drain_faults(&mut records), 1);
    assert_eq!(records[0].access, iommu::Access::Read);
    assert_eq!(model.fsts_sticky.get() & 0x1, 0, "PFO not cleared");
}

/// A fault storm against the model's single record: the first fault of a
/// window fills the record, every later one only sets PFO (VT-d 3.4
/// §7.1.3). The statistics count one record and one overflow per drained
/// window, nothing while the record is empty, and stay put across drains
/// that find nothing.
#[test]
fn fault_stats_count_records_and_overflows_across_a_storm() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    assert_eq!(unit.hardware.fault_stats(), crate::FaultStats::default());
    let (mut expected_records, mut expected_overflows) = (0u64, 0u64);
    let mut records = Vec::new();
    for window in 0..40u64 {
        // Window w brings w % 5 faults (0 to 4) before it is drained.
        let faults = window % 5;
        for fault in 0..faults {
            if model.fault.get().1 >> 63 == 0 {
                model
                    .fault
                    .set((0x1000 * (fault + 1), 0xc000_0006_0000_0020));
            } else {
                model.fsts_sticky.set(model.fsts_sticky.get() | 0x1);
            }
        }
        expected_records += u64::from(faults > 0);
        expected_overflows += u64::from(faults > 1);
        let drained = unit.drain_faults(&mut records);
        assert_eq!(drained, usize::from(faults > 0), "window {window}");
        assert_eq!(model.fsts_sticky.get() & 0x1, 0, "PFO left set");
        assert_eq!(
            unit.hardware.fault_stats(),
            crate::FaultStats {
                records: expected_records,
                overflows: expected_overflows,
            },
            "window {window}"
        );
    }
    assert_eq!(records.len() as u64, expected_records);
    assert_eq!((expected_records, expected_overflows), (32, 24));
}

/// CAP.ND = 6 gives 2^16 domain ids, 0 reserved: exactly 65,535 live
/// domains, each with its own id, then `NoMemory` (never a wrapped id that
/// another live domain holds). A freed id comes back only after a
/// domain-selective IOTLB invalidation, and alloc/free cycles past the id
/// space keep working.
#[test]
fn domain_ids_run_out_cleanly_and_come_back_invalidated() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let mut live = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        match unit.alloc_domain(DomainKind::Blocked) {
            Ok(domain) => {
                let did = unit.domain_id(domain).unwrap();
                assert_ne!(did, 0, "domain id 0 handed out");
                assert!(seen.insert(did), "domain id {did} handed out twice");
                live.push(domain);
            }
            Err(error) => {
                assert_eq!(error, IommuError::NoMemory);
                break;
            }
        }
        assert!(live.len() <= 65_535, "more live domains than ids");
    }
    assert_eq!(live.len(), 65_535);
    model.take_descriptors();
    let freed = live.swap_remove(1234);
    let freed_did = unit.domain_id(freed).unwrap();
    unit.free_domain(freed).unwrap();
    assert!(model.take_descriptors().is_empty(), "free costs nothing");
    let again = unit.alloc_domain(DomainKind::Blocked).unwrap();
    assert_eq!(unit.domain_id(again), Some(freed_did));
    let issued = model.take_descriptors();
    let domain_iotlb = Descriptor::iotlb(Granularity::Domain, freed_did, 0, 0, false);
    assert!(
        issued.contains(&domain_iotlb),
        "recycled id not invalidated: {issued:x?}"
    );
    assert_eq!(
        unit.alloc_domain(DomainKind::Blocked),
        Err(IommuError::NoMemory)
    );
    for domain in live.drain(..) {
        unit.free_domain(domain).unwrap();
    }
    unit.free_domain(again).unwrap();
    for _ in 0..70_000 {
        let domain = unit.alloc_domain(DomainKind::Blocked).unwrap();
        unit.free_domain(domain).unwrap();
    }
}

/// Issue 20, several CPUs' invalidations, one wait (§6.5.2.8: a wait
/// descriptor completes only once every descriptor before it has): A's and
/// B's invalidations are queued beside each other; B queues the wait, and A,
/// finding it after its own descriptors, waits for it instead.
#[test]
fn two_submitters_invalidations_share_one_wait() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let unit = rig.unit(&model);
    model.take_descriptors();
    let a = Descriptor::iotlb(Granularity::Domain, 1, 0, 0, false);
    let b = Descriptor::iotlb(Granularity::Domain, 2, 0, 0, false);
    let a = unit.hardware.queue_without_wait(&[a]).unwrap();
    let b = unit.hardware.queue_without_wait(&[b]).unwrap();
    let b_wait = unit.hardware.wait_after(&b).unwrap();
    let a_wait = unit.hardware.wait_after(&a).unwrap();
    assert_eq!(a_wait, b_wait, "A rides B's wait");
    let queued = |positions, wait_at| crate::hardware::Queued { positions, wait_at };
    assert_eq!(unit.hardware.wait_for(queued(b, b_wait)), Ok(()));
    assert_eq!(unit.hardware.wait_for(queued(a, a_wait)), Ok(()));
    assert_eq!(
        kinds(&model.take_descriptors()),
        [
            DescriptorType::Iotlb,
            DescriptorType::Iotlb,
            DescriptorType::Wait
        ]
    );
    assert_eq!(unit.hardware.counters().shared_waits, 1);
}

/// Issue 20: a rejected descriptor is the error of the caller whose claim
/// holds it, whichever caller's wait met the stop and repaired it
/// (§6.5.2.10): B, queued behind A's bad descriptor, completes; A's wait
/// reports it; the queue runs on (QEMU fetches again only on an IQT write,
/// which the repair makes).
#[test]
fn a_rejection_goes_to_the_caller_whose_descriptor_it_was() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let unit = rig.unit(&model);
    let a = unit
        .hardware
        .queue_descriptors(&[Descriptor([0xF, 0, 0, 0])])
        .unwrap();
    let b = Descriptor::iotlb(Granularity::Global, 0, 0, 0, false);
    assert_eq!(unit.hardware.submit(&[b]), Ok(()), "B");
    assert_eq!(unit.hardware.wait_for(a), Err(Error::QueueError), "A");
    assert_eq!(model.fsts_sticky.get() & 0x10, 0, "IQE cleared");
    assert_eq!(unit.hardware.submit(&[b]), Ok(()), "reported once");
}

#[test]
fn a_rejected_descriptor_is_an_error_and_the_queue_runs_again() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    model.take_descriptors();
    assert_eq!(
        unit.hardware.submit_raw(&[Descriptor([0xF, 0, 0, 0])]),
        Err(Error::QueueError)
    );
    assert_eq!(model.fsts_sticky.get() & 0x10, 0, "IQE not cleared");
    // Errors in a row, more than the ring holds: each is the caller's
    // error alone, and the ring never fills with stuck descriptors.
    for _ in 0..300 {
        assert_eq!(
            unit.hardware.submit_raw(&[Descriptor([0xF, 0, 0, 0])]),
            Err(Error::QueueError)
        );
        assert_eq!(model.fsts_sticky.get() & 0x10, 0, "IQE not cleared");
    }
    let mut gather = Gather::default();
    gather.add_leaf(0x1000, 4096);
    unit.flush(domain, &gather).unwrap();
    let kinds = kinds(&model.take_descriptors());
    assert_eq!(kinds.last(), Some(&DescriptorType::Wait));
    assert!(kinds.contains(&DescriptorType::Iotlb));
}

#[test]
fn devices_outside_the_scope_are_refused() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    assert_eq!(
        unit.attach(DeviceId(0x30), domain),
        Err(IommuError::Invalid)
    );
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    assert_eq!(unit.free_domain(domain), Err(IommuError::Busy));
}

#[test]
fn paging_domain_context_names_its_table_and_domain() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let did = unit.domain_id(domain).unwrap();
    assert!(
        !model.context_entry(EDU_A).is_present(),
        "blocked before attach"
    );
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    assert_eq!(
        model.context_entry(EDU_A),
        ContextEntry::new(
            crate::device_table::TranslationType::Translated,
            FAKE_ROOT,
            2,
            did
        )
    );
    unit.detach(DeviceId(EDU_A.into()));
    assert!(
        !model.context_entry(EDU_A).is_present(),
        "blocked after detach"
    );
}

#[test]
fn scalable_paging_domains_fill_the_rid_pasid_entry() {
    for (ecap, first_stage) in [(ECAP_SCALABLE_SL, false), (ECAP_SCALABLE_FL, true)] {
        let rig = Rig::new();
        let model = Model::new(CAP_DEFAULT, ecap);
        let mut unit = rig.unit(&model);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        let did = unit.domain_id(domain).unwrap();
        unit.attach(DeviceId(EDU_B.into()), domain).unwrap();
        let expected = if first_stage {
            PasidEntry::first_stage(FAKE_ROOT, 2, did)
        } else {
            PasidEntry::second_stage(FAKE_ROOT, 2, did)
        };
        assert_eq!(model.rid_pasid_entry(EDU_B), expected);
        unit.detach(DeviceId(EDU_B.into()));
        assert!(!model.rid_pasid_entry(EDU_B).is_present());
        assert_eq!(unit.free_domain(domain), Ok(()));
        drop(unit);
        assert_eq!(rig.dma.live(), 0);
    }
}

#[test]
fn map_costs_nothing_unless_caching_mode_and_unmap_costs_one_psi() {
    for (cap, caching) in [(CAP_DEFAULT, false), (CAP_CACHING_MODE, true)] {
        let rig = Rig::new();
        let model = Model::new(cap, ECAP_LEGACY);
        let mut unit = rig.unit(&model);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        let did = unit.domain_id(domain).unwrap();
        unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
        model.take_descriptors();
        let before = unit.hardware.counters();
        let gather = unit.map(domain, 0x10_0000, 0x20_0000, 0x4000, RW).unwrap();
        unit.flush(domain, &gather).unwrap();
        let cost = unit.hardware.counters().since(&before);
        if caching {
            assert_eq!(
                (cost.invalidations, cost.waits, cost.mmio_writes),
                (1, 1, 1)
            );
            // IH = 0: the map may have linked directory entries
            // (hw_caching_mode_maps_invalidate_the_walk_caches_too).
            assert_eq!(
                model.take_descriptors()[0],
                Descriptor::iotlb(Granularity::Selective, did, 0x10_0000, 2, false)
            );
        } else {
            assert_eq!(cost, Default::default(), "a map owes no invalidation");
        }
        let before = unit.hardware.counters();
        let gather = unit.unmap(domain, 0x10_0000, 0x4000).unwrap();
        unit.flush(domain, &gather).unwrap();
        let cost = unit.hardware.counters().since(&before);
        assert_eq!(
            (cost.invalidations, cost.waits, cost.mmio_writes),
            (1, 1, 1)
        );
        let stream = model.take_descriptors();
        assert_eq!(
            stream[0],
            Descriptor::iotlb(Granularity::Selective, did, 0x10_0000, 2, true)
        );
    }
}

#[test]
fn rmrr_ranges_are_identity_mapped_for_their_device_and_reported() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut description = description();
    let range = iommu::IovaRange {
        start: 0xE_0000,
        last: 0xE_FFFF,
    };
    description.reserved.push(crate::discovery::DirectRegion {
        requester: EDU_B,
        range,
    });
    let mut unit = Vtd::new(
        UnitId(0),
        &model,
        rig.env(),
        description,
        Options::default(),
    )
    .unwrap();
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    MAPPED.with(|mapped| mapped.borrow_mut().clear());
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    assert!(
        MAPPED.with(|mapped| mapped.borrow().is_empty()),
        "edu A has no RMRR"
    );
    unit.attach(DeviceId(EDU_B.into()), domain).unwrap();
    assert_eq!(
        MAPPED.with(|mapped| mapped.borrow().clone()),
        vec![(0xE_0000, 0xE_0000, 0x1_0000)]
    );
    let regions = unit.reserved_regions(DeviceId(EDU_B.into()));
    assert!(
        regions
            .iter()
            .any(|r| r.range == range && r.kind == iommu::ReservedKind::Direct)
    );
    assert!(
        unit.reserved_regions(DeviceId(EDU_A.into()))
            .iter()
            .all(|r| r.kind != iommu::ReservedKind::Direct)
    );
}

#[test]
fn capability_decoders_agree_with_model() {
    assert!(Cap(CAP_RWBF).required_write_buffer_flush());
    assert!(!Ecap(ECAP_NO_QI).queued_invalidation());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The PSI block covers the range, is naturally aligned, and is the
    /// smallest such block (its half containing `start` would miss `last`).
    #[test]
    fn psi_mask_is_the_smallest_aligned_cover(start in 0u64..(1 << 40), len in 1u64..(1 << 32)) {
        let last = start + len - 1;
        let (base, mask) = page_selective_mask(start, last).unwrap();
        let size = 4096u64 << mask;
        prop_assert_eq!(base % size, 0);
        prop_assert!(base <= start && last < base + size);
        if mask > 0 {
            let half = size / 2;
            let lower = base + if start - base >= half { half } else { 0 };
            prop_assert!(last >= lower + half);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Attach(usize, usize),
    Detach(usize),
    Map(usize, usize),
    Unmap(usize, usize),
    /// An MSI of the device routed through a fresh IRTE.
    Route(usize),
    /// The n-th live route (modulo their number) taken down.
    Unroute(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..3usize).prop_map(|(device, domain)| Op::Attach(device, domain)),
        (0..2usize).prop_map(Op::Detach),
        (0..2usize, 0..SHADOW_PAGES.len()).prop_map(|(domain, page)| Op::Map(domain, page)),
        (0..2usize, 0..SHADOW_PAGES.len()).prop_map(|(domain, page)| Op::Unmap(domain, page)),
        (0..2usize).prop_map(Op::Route),
        (0..4usize).prop_map(Op::Unroute),
    ]
}

/// Runs one generated operation on `unit` (a map over a mapped page is
/// skipped; every other failure is the test's).
fn apply_op(
    unit: &mut Vtd<'_, &Model>,
    op: Op,
    devices: &[u16],
    domains: &[iommu::DomainHandle],
    routes: &mut Vec<iommu::MsiRoute>,
) -> Result<(), std::string::String> {
    match op {
        Op::Attach(device, domain) => {
            unit.attach(DeviceId(devices[device].into()), domains[domain])
                .map_err(|err| std::format!("attach: {err:?}"))?;
        }
        Op::Detach(device) => unit.detach(DeviceId(devices[device].into())),
        Op::Map(domain, page) => {
            let iova = SHADOW_PAGES[page];
            if let Ok(gather) = unit.map(domains[domain], iova, 0x8000_0000 + iova, 4096, RW) {
                unit.flush(domains[domain], &gather)
                    .map_err(|err| std::format!("flush: {err:?}"))?;
            }
        }
        Op::Unmap(domain, page) => {
            let gather = unit
                .unmap(domains[domain], SHADOW_PAGES[page], 4096)
                .map_err(|err| std::format!("unmap: {err:?}"))?;
            unit.flush(domains[domain], &gather)
                .map_err(|err| std::format!("flush: {err:?}"))?;
        }
        Op::Route(device) => {
            let message = iommu::MsiMessage {
                address: 0xFEE0_1000,
                data: 0x41 + routes.len() as u32,
            };
            let (route, _) = unit
                .route_msi(DeviceId(devices[device].into()), message)
                .map_err(|err| std::format!("route: {err:?}"))?;
            routes.push(route);
        }
        Op::Unroute(n) => {
            if !routes.is_empty() {
                let route = routes.remove(n % routes.len());
                unit.unroute_msi(route);
            }
        }
    }
    Ok(())
}

/// Runs `ops` against the shadow cache model, with the model's page tables
/// or (`real_tables`) io-page-table's, which the model walks; `last` looks
/// at the model after the last step's caches were filled again.
fn run_against_shadow(
    cap: u64,
    ecap: u64,
    real_tables: bool,
    ops: &[Op],
    last: impl FnOnce(&Model) -> Result<(), std::string::String>,
) -> Result<(), std::string::String> {
    let rig = Rig::new();
    let model = Model::new(cap, ecap);
    let mut unit = if real_tables {
        let env = crate::hardware::Environment {
            new_table: None,
            ..rig.env()
        };
        Vtd::new(UnitId(0), &model, env, description(), Options::default())
            .map_err(|err| std::format!("bring-up: {err:?}"))?
    } else {
        rig.unit(&model)
    };
    let devices = [EDU_A, EDU_B];
    let domains = [
        unit.alloc_domain(DomainKind::Paging).unwrap(),
        unit.alloc_domain(DomainKind::Paging).unwrap(),
        unit.alloc_domain(DomainKind::Identity).unwrap(),
    ];
    let mut routes = Vec::new();
    model.fill(&devices);
    for (step, op) in ops.iter().enumerate() {
        apply_op(&mut unit, *op, &devices, &domains, &mut routes)?;
        model
            .check_no_stale_cache(&devices)
            .map_err(|err| std::format!("after step {step} {op:?} of {ops:?}: {err}"))?;
        model.fill(&devices);
    }
    last(&model)
}

/// The stale-cache proptest below is only as strong as what the model
/// caches: if `fill` cached nothing, nothing could be stale and every
/// sequence would pass. After an attach, a map and a route, every cache the
/// configuration has must hold a live entry: a context, the RID_PASID entry
/// (scalable), a present IOTLB entry, a walk (io-page-table's tables), and
/// the IRTE.
#[test]
fn the_shadow_caches_are_live_in_every_configuration() {
    for config in 0..6usize {
        for real_tables in [false, true] {
            let cap = [CAP_DEFAULT, CAP_CACHING_MODE][config % 2];
            let ecap = [ECAP_LEGACY, ECAP_SCALABLE_SL, ECAP_SCALABLE_FL][config / 2];
            let ops = [Op::Attach(0, 0), Op::Map(0, 0), Op::Route(0)];
            let result = run_against_shadow(cap, ecap, real_tables, &ops, |model| {
                let shadow = model.shadow.borrow();
                let present_contexts = shadow.contexts.values().flatten().count();
                let present_iotlb = shadow.iotlb.values().filter(|e| e.1.is_some()).count();
                let mut missing = Vec::new();
                if present_contexts == 0 {
                    missing.push("context");
                }
                if shadow.scalable && shadow.pasids.is_empty() {
                    missing.push("RID_PASID entry");
                }
                if present_iotlb == 0 {
                    missing.push("IOTLB entry");
                }
                if real_tables && shadow.walks.is_empty() {
                    missing.push("walk");
                }
                if shadow.irtes.is_empty() {
                    missing.push("IRTE");
                }
                match missing.is_empty() {
                    true => Ok(()),
                    false => Err(std::format!("nothing cached: {missing:?}")),
                }
            });
            assert!(
                result.is_ok(),
                "config {config}, real tables {real_tables}: {}",
                result.unwrap_err()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Legacy, caching mode, scalable second and first stage: no sequence
    /// of attach/detach/map/unmap/route/unroute leaves a stale cached entry
    /// behind (context, PASID, IOTLB, paging-structure and interrupt-entry
    /// caches).
    #[test]
    fn no_operation_sequence_leaves_a_stale_cache_entry(
        config in 0..6usize,
        real_tables in proptest::bool::ANY,
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let cap = [CAP_DEFAULT, CAP_CACHING_MODE][config % 2];
        let ecap = [ECAP_LEGACY, ECAP_SCALABLE_SL, ECAP_SCALABLE_FL][config / 2];
        let result = run_against_shadow(cap, ecap, real_tables, &ops, |_| Ok(()));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// Issue 16, ordering (VT-d 3.4 §6.5.2: the hardware fetches from the queue
/// up to IQT as soon as it moves): every descriptor is in memory, ordered by a
/// device barrier, before the tail register moves. Linux `qi_submit_sync`
/// writes the descriptors, then IQT with `writel`, whose barrier does this.
#[test]
fn hw_descriptors_are_ordered_before_the_queue_tail_moves() {
    use iommu_kit::fakes::trace::{Recording, doorbell_after_barrier};
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let recording = Recording::start();
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    unit.detach(DeviceId(EDU_A.into()));
    doorbell_after_barrier(&recording.take(), regs::IQT.0).unwrap();
}

/// Issue 16, wasted work: on a unit whose walks do not snoop (ECAP.C = 0),
/// the driver writes back only the cache lines it wrote: the queue slots of
/// one submission and the one entry a detach clears, not the whole 4 KiB
/// ring and table page each time (64 lines each).
#[test]
fn hw_only_the_lines_written_are_written_back() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    assert!(!unit.hardware.ecap().coherent());
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let device = DeviceId(EDU_A.into());
    unit.attach(device, domain).unwrap();
    let gather = unit
        .map(domain, 0x10_0000, 0x8000_0000, 0x1000, RW)
        .unwrap();
    unit.flush(domain, &gather).unwrap();
    let before = unit.hardware.counters();
    let gather = unit.unmap(domain, 0x10_0000, 0x1000).unwrap();
    unit.flush(domain, &gather).unwrap();
    let unmap = unit.hardware.counters().since(&before);
    // A page-selective invalidation and its wait: 32 bytes of the ring.
    assert!(unmap.cache_lines <= 2, "unmap: {unmap:?}");
    let before = unit.hardware.counters();
    unit.detach(device);
    let detach = unit.hardware.counters().since(&before);
    // The context entry (one line) and three descriptors (48 bytes).
    assert!(detach.cache_lines <= 3, "detach: {detach:?}");
}

/// Issue 16, freeing after a failed invalidation: a flush that timed out
/// never confirmed its range, so the next flush of the domain, even for an
/// unrelated range, invalidates the whole domain before the pages the first
/// unmap unlinked may be freed (otherwise a walk could still use a cached
/// translation into a freed table). Linux keeps freed tables on the gather's
/// freelist until an `iotlb_sync` that covered them completed.
#[test]
fn hw_a_failed_flush_is_made_good_by_the_next_before_anything_is_freed() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let did = unit.domain_id(domain).unwrap();
    for iova in [0x10_0000, 0x20_0000] {
        let gather = unit.map(domain, iova, 0x8000_0000, 0x1000, RW).unwrap();
        unit.flush(domain, &gather).unwrap();
    }
    let first = unit.unmap(domain, 0x10_0000, 0x1000).unwrap();
    model.stalled.set(true);
    assert_eq!(unit.flush(domain, &first), Err(IommuError::Timeout));
    model.stalled.set(false);
    model.take_descriptors();
    let second = unit.unmap(domain, 0x20_0000, 0x1000).unwrap();
    unit.flush(domain, &second).unwrap();
    let domain_wide = |descriptor: &Descriptor| {
        descriptor.kind() == Some(DescriptorType::Iotlb)
            && (descriptor.0[0] >> 4) & 3 == 2
            && (descriptor.0[0] >> 16) as u16 == did
    };
    assert!(
        model.take_descriptors().iter().any(domain_wide),
        "the flush after a failed one did not invalidate the whole domain"
    );
    // Made good: the next flush is page-selective again.
    let gather = unit
        .map(domain, 0x30_0000, 0x8000_0000, 0x1000, RW)
        .unwrap();
    unit.flush(domain, &gather).unwrap();
    let third = unit.unmap(domain, 0x30_0000, 0x1000).unwrap();
    model.take_descriptors();
    unit.flush(domain, &third).unwrap();
    assert!(!model.take_descriptors().iter().any(domain_wide));
}

/// Issue 16, caching mode (VT-d 3.4 §6.1, §6.5.2.3 IH): a map into an empty
/// range links new directory entries, whose not-present form a caching-mode
/// unit may hold in its paging-structure caches. IH = 1 would let it keep
/// them, and the new mapping would fault; the map's invalidation has IH = 0
/// (Linux `__mapping_notify_one` → `iommu_flush_iotlb_psi(..., ih = 0, ...)`).
#[test]
fn hw_caching_mode_maps_invalidate_the_walk_caches_too() {
    let rig = Rig::new();
    let model = Model::new(CAP_CACHING_MODE, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let did = unit.domain_id(domain).unwrap();
    model.take_descriptors();
    let gather = unit
        .map(domain, 0x4000_0000, 0x8000_0000, 0x1000, RW)
        .unwrap();
    unit.flush(domain, &gather).unwrap();
    assert_eq!(
        model.take_descriptors()[0],
        Descriptor::iotlb(Granularity::Selective, did, 0x4000_0000, 0, false)
    );
}

/// Issue 16, coherence (VT-d 3.4 §3.6, §9.6 PWSNP; Linux
/// `iommu_paging_structure_coherency`): in scalable mode ECAP.C covers the
/// root, context and PASID tables only; page walks snoop when ECAP.SMPWC is
/// set *and* the PASID entry sets PWSNP. With C = 1 and SMPWC = 0 every page
/// table write must be cleaned (or the walk may find the old PTE in DRAM
/// after an unmap); with SMPWC = 1 and C = 0, PWSNP is set and table writes
/// need no cleaning. Real io-page-table tables, a recording cache clean.
#[test]
fn hw_scalable_page_walks_snoop_by_smpwc_and_pwsnp_not_by_c() {
    const C: u64 = 1;
    const SMPWC: u64 = 1 << 48;
    for (ecap, walks_snoop) in [
        (ECAP_SCALABLE_SL | C, false),
        (ECAP_SCALABLE_SL | SMPWC, true),
    ] {
        let rig = Rig::new();
        let model = Model::new(CAP_DEFAULT, ecap);
        let env = crate::hardware::Environment {
            flush_cache: maintenance::clean,
            new_table: None,
            ..rig.env()
        };
        let mut unit = Vtd::new(UnitId(0), &model, env, description(), Options::default()).unwrap();
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
        let entry = model.rid_pasid_entry(EDU_A);
        assert_eq!(
            entry.page_walk_snoop(),
            walks_snoop,
            "PWSNP, ECAP {ecap:#x}"
        );
        maintenance::take_cleaned();
        unit.map(domain, 0x10_0000, 0x8000_0000, 0x1000, RW)
            .unwrap();
        let cleaned = maintenance::take_cleaned().len();
        assert_eq!(cleaned > 0, !walks_snoop, "table cleans, ECAP {ecap:#x}");
        unit.free_domain(domain).ok();
    }
}

/// Issue 16, freeing after a failed invalidation: a detach whose context
/// and IOTLB invalidation timed out left the device blocked in memory, not in
/// the caches, which may still walk the old domain's tables. The domain is
/// not freed (its tables stay) until that invalidation has been repeated and
/// completed (Linux frees a domain only after `domain_context_clear_one` and
/// the IOTLB flush of the detach returned).
#[test]
fn hw_a_failed_detach_is_made_good_before_its_domain_is_freed() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let did = unit.domain_id(domain).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    model.stalled.set(true);
    unit.detach(DeviceId(EDU_A.into()));
    assert_eq!(unit.free_domain(domain), Err(IommuError::Timeout));
    assert!(
        unit.domain_id(domain).is_some(),
        "freed before the caches were clean"
    );
    model.stalled.set(false);
    model.take_descriptors();
    unit.free_domain(domain).unwrap();
    assert!(
        model
            .take_descriptors()
            .contains(&Descriptor::context_cache(
                Granularity::Selective,
                did,
                EDU_A
            )),
        "freed without repeating the detach's invalidation"
    );
}

/// Issue 16 (VT-d 3.4 §8.1 HAW, §9.8: address bits at or above the host
/// address width are reserved and fault): the tables name physical addresses
/// only below the DMAR's width, not below a constant 48 bits. Real tables.
#[test]
fn hw_tables_name_only_addresses_the_platform_can_reach() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let env = crate::hardware::Environment {
        new_table: None,
        ..rig.env()
    };
    let description = crate::discovery::UnitDescription {
        output_bits: 39,
        ..description()
    };
    let mut unit = Vtd::new(UnitId(0), &model, env, description, Options::default()).unwrap();
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    assert!(
        unit.map(domain, 0x10_0000, (1 << 39) - 0x1000, 0x1000, RW)
            .is_ok()
    );
    assert_eq!(
        unit.map(domain, 0x20_0000, 1 << 39, 0x1000, RW),
        Err(IommuError::Invalid),
        "a PTE with reserved address bits"
    );
    unit.free_domain(domain).unwrap();
}

/// Issue 16 (VT-d 3.4 §10.4.4 GCMD.TE: with translation off, DMA is not
/// remapped at all): a unit that goes away must not let DMA or interrupts
/// bypass. It parks the root and interrupt-remapping table pointers on a
/// zeroed page that outlives it (nothing present), invalidates everything
/// cached, and leaves translation and remapping on; only then are its own
/// structures freed, unreachable by any walk.
#[test]
fn hw_a_dropped_unit_blocks_instead_of_letting_dma_bypass() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    model.take_descriptors();
    drop(unit);
    let status = Global::from_bits_retain(model.gsts.get());
    assert!(
        status.contains(Global::TRANSLATION | Global::INTERRUPT_REMAPPING),
        "DMA or interrupts bypass after the drop: {status:?}"
    );
    let registers = model.other.borrow();
    assert_eq!(registers[&regs::RTADDR.0] & !0xFFF, rig.parking.phys());
    assert_eq!(registers[&regs::IRTA.0] & !0xFFF, rig.parking.phys());
    drop(registers);
    assert_eq!(
        kinds(&model.take_descriptors()),
        vec![
            DescriptorType::ContextCache,
            DescriptorType::Iotlb,
            DescriptorType::Wait,
            DescriptorType::InterruptEntryCache,
            DescriptorType::Wait,
        ]
    );
    assert_eq!(rig.dma.live(), 0, "structures leaked");
    // A unit brought up over the parked one keeps translation on throughout.
    let gcmd_before = model.gcmd_writes.borrow().len();
    let unit = rig.unit(&model);
    assert!(
        model.gcmd_writes.borrow()[gcmd_before..]
            .iter()
            .all(|gcmd| gcmd & Global::TRANSLATION.bits() != 0),
        "translation turned off during the bring-up"
    );
    drop(unit);
}

/// Issue 16 (VT-d 3.4 §9.10 SVT; Linux `set_msi_sid` → `set_irte_verify_bus`):
/// behind a PCIe-to-PCI bridge an MSI may carry the function's own id or the
/// bridge's alias, so its IRTE verifies the bus range (SVT = 10, SID = start
/// bus : end bus), not one id that the bridge may not use.
#[test]
fn hw_msis_behind_a_pcie_to_pci_bridge_verify_the_bus() {
    let rig = Rig::new();
    let model = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let mut unit = rig.unit(&model);
    let message = iommu::MsiMessage {
        address: 0xFEE0_0000,
        data: 0x41,
    };
    let (route, _) = unit
        .route_msi_from_buses(DeviceId(EDU_A.into()), (2, 2), message)
        .unwrap();
    let table = model.other.borrow()[&regs::IRTA.0] & !0xFFF;
    // SAFETY: the interrupt remapping table lies in host memory the driver
    // allocated (phys == virt); `route` is an index into it.
    let irte = unsafe { core::ptr::read_volatile((table + route.0 * 16) as *const Irte) };
    assert_eq!((irte.high >> 18) & 0b11, 0b10, "SVT");
    assert_eq!(irte.high & 0xFFFF, 0x0202, "SID = start bus : end bus");
    assert_eq!(
        unit.route_msi_from_buses(DeviceId(EDU_A.into()), (3, 2), message),
        Err(IommuError::Invalid)
    );
}

/// Issue 16 (VT-d 3.4 §8.3: a platform has one DRHD per remapping unit, each
/// with its own device scope): every unit is brought up, not only the first.
/// A unit left as firmware left it (here: translation off) lets the DMA of the
/// devices behind it bypass. Linux `init_dmars` brings up every DRHD.
#[test]
fn hw_every_drhd_is_brought_up_blocking() {
    let rig = Rig::new();
    let first = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let second = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let behind_second = crate::discovery::UnitDescription {
        register_base: 0xFED9_1000,
        devices: vec![EDU_B],
        ..description()
    };
    let behind_first = crate::discovery::UnitDescription {
        devices: vec![EDU_A],
        ..description()
    };
    let units = Vtd::bring_up_all(
        [
            (&first, behind_first.clone()),
            (&second, behind_second.clone()),
        ],
        rig.env(),
        Options::default(),
    )
    .unwrap();
    assert_eq!(units.len(), 2);
    for (index, model) in [&first, &second].into_iter().enumerate() {
        let status =
            Global::from_bits_retain(crate::hardware::Registers::read32(&model, regs::GSTS));
        assert!(
            status.contains(Global::TRANSLATION),
            "unit {index}: translation on, {status:?}"
        );
    }
    // Nothing is attached: the device behind the second unit is blocked.
    assert_eq!(second.truth(EDU_B), None);
    drop(units);

    // A unit that cannot come up (no page-table depth the driver builds) takes
    // the others down with it: none is handed out half the machine isolated.
    let broken = Model::new(CAP_DEFAULT & !(0x1F << 8), ECAP_LEGACY);
    let first = Model::new(CAP_DEFAULT, ECAP_LEGACY);
    let failed = Vtd::bring_up_all(
        [(&first, behind_first), (&broken, behind_second)],
        rig.env(),
        Options::default(),
    )
    .err()
    .map(|(index, _)| index);
    assert_eq!(failed, Some(1));
    let status = Global::from_bits_retain(crate::hardware::Registers::read32(&&first, regs::GSTS));
    assert!(
        status.contains(Global::TRANSLATION),
        "the unit that was up is parked translating, not bypassing: {status:?}"
    );
}

/// Issue 16, paging-structure caches (VT-d 3.4 §6.2.4.2, §6.5.2.3): a unit may
/// cache the directory entries of a walk (which leaf table maps a 2 MiB
/// region; under caching mode also a not-present one) until an IOTLB
/// invalidation with IH = 0 covers the region. With real tables: an unmap
/// that frees a leaf table, and a map that links a new one where a walk
/// cached none, each leave no cached walk that disagrees with memory (the
/// freed table would otherwise still be walked: DMA into freed memory).
/// Linux: `iommu_flush_iotlb_psi(..., ih = 0, ...)` when `freelist` is not
/// empty; `__mapping_notify_one` with ih = 0.
#[test]
fn hw_paging_structure_caches_never_outlive_the_tables_they_name() {
    const REGION: u64 = 0x20_0000;
    for (cap, ecap) in [
        (CAP_DEFAULT, ECAP_LEGACY),
        (CAP_CACHING_MODE, ECAP_LEGACY),
        (CAP_DEFAULT, ECAP_SCALABLE_SL),
        (CAP_CACHING_MODE, ECAP_SCALABLE_FL),
    ] {
        let rig = Rig::new();
        let model = Model::new(cap, ecap);
        let env = crate::hardware::Environment {
            new_table: None,
            ..rig.env()
        };
        let mut unit = Vtd::new(UnitId(0), &model, env, description(), Options::default()).unwrap();
        let device = DeviceId(EDU_A.into());
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(device, domain).unwrap();
        let config = std::format!("CAP {cap:#x} ECAP {ecap:#x}");
        // Under caching mode the walk of the empty region is cached as
        // not-present: the map that links its leaf table must drop it.
        model.fill(&[EDU_A]);
        let gather = unit.map(domain, REGION, 0x8000_0000, 0x1000, RW).unwrap();
        unit.flush(domain, &gather).unwrap();
        model
            .check_no_stale_cache(&[EDU_A])
            .unwrap_or_else(|err| panic!("{config}, after the map: {err}"));
        // The walk now caches the leaf table; the unmap of the whole region
        // frees it.
        model.fill(&[EDU_A]);
        assert!(
            model
                .shadow
                .borrow()
                .walks
                .values()
                .any(|&(_, leaf)| leaf.is_some()),
            "{config}: the walk was cached"
        );
        let gather = unit.unmap(domain, REGION, 0x20_0000).unwrap();
        assert!(gather.freed_tables, "{config}: the leaf table was freed");
        unit.flush(domain, &gather).unwrap();
        model
            .check_no_stale_cache(&[EDU_A])
            .unwrap_or_else(|err| panic!("{config}, after the unmap: {err}"));
        unit.detach(device);
        unit.free_domain(domain).unwrap();
    }
}

/// What the unit reads of `devices`' translation: each one's context or
/// RID_PASID view and, through its tables, the leaf entry of every shadow
/// page (0 where the walk stops).
fn translation_as_read(model: &Model, devices: &[u16]) -> Vec<(Option<View>, Vec<u64>)> {
    devices
        .iter()
        .map(|&sid| {
            let view = model.truth(sid);
            let leaves = SHADOW_PAGES
                .iter()
                .map(|&page| {
                    let Some(root) = view.and_then(|view| view.root) else {
                        return 0;
                    };
                    model
                        .leaf_table_of(root, page)
                        .map_or(0, |table| model.fetch(table + ((page >> 12) & 0x1FF) * 8))
                })
                .collect();
            (view, leaves)
        })
        .collect()
}

/// Runs `ops` on a unit that does not snoop, checking after each that what it
/// reads from memory (only what the driver wrote back) is what the CPU wrote.
fn run_reading_memory(cap: u64, ecap: u64, ops: &[Op]) -> Result<(), std::string::String> {
    let rig = Rig::new();
    let model = Model::new(cap, ecap);
    model.reads_memory.set(true);
    let env = crate::hardware::Environment {
        flush_cache: maintenance::clean,
        new_table: None,
        ..rig.env()
    };
    let mut unit = Vtd::new(UnitId(0), &model, env, description(), Options::default())
        .map_err(|err| std::format!("bring-up: {err:?}"))?;
    let devices = [EDU_A, EDU_B];
    let domains = [
        unit.alloc_domain(DomainKind::Paging).unwrap(),
        unit.alloc_domain(DomainKind::Paging).unwrap(),
        unit.alloc_domain(DomainKind::Identity).unwrap(),
    ];
    let compare = |model: &Model, when: &dyn core::fmt::Debug| {
        let memory = translation_as_read(model, &devices);
        model.reads_memory.set(false);
        let cpu = translation_as_read(model, &devices);
        model.reads_memory.set(true);
        if memory == cpu {
            Ok(())
        } else {
            Err(std::format!(
                "{when:?}: the unit reads {memory:x?}, the CPU wrote {cpu:x?}"
            ))
        }
    };
    compare(&model, &"bring-up")?;
    let mut routes = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        apply_op(&mut unit, *op, &devices, &domains, &mut routes)?;
        compare(&model, &(step, op))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Issue 16, coherence (VT-d 3.4 §3.6, §9.1-§9.9, ECAP.C, ECAP.SMPWC): a
    /// unit that does not snoop reads root, context and PASID entries and
    /// page tables from memory, which holds only the lines the driver wrote
    /// back (a line never written back holds anything). In legacy, caching
    /// and both scalable modes, after every attach, detach, map and unmap the
    /// unit reads exactly the translation the CPU wrote. Linux
    /// `__iommu_flush_cache` after every entry (and table) it writes.
    #[test]
    fn hw_a_unit_that_does_not_snoop_reads_only_what_was_written_back(
        config in 0..4usize,
        ops in proptest::collection::vec(op(), 1..16),
    ) {
        let (cap, ecap) = [
            (CAP_DEFAULT, ECAP_LEGACY),
            (CAP_CACHING_MODE, ECAP_LEGACY),
            (CAP_DEFAULT, ECAP_SCALABLE_SL),
            (CAP_DEFAULT, ECAP_SCALABLE_FL),
        ][config];
        let result = run_reading_memory(cap, ecap, &ops);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// ECAP.SLADS (bit 45): the hardware sets the A and D bits of second-stage
/// leaves when the PASID entry asks.
const ECAP_SLADS: u64 = 1 << 45;

/// Issue 17, dirty tracking (VT-d 3.4 §9.6 SSADE, §9.8 D bit; Linux
/// `intel_iommu_set_dirty_tracking`, `intel_iommu_read_and_clear_dirty`):
/// only a scalable second-stage unit with ECAP.SLADS tracks; turning it on
/// sets SSADE in the PASID entry of every attached device (and of one
/// attached later) and invalidates the PASID cache and the domain's IOTLB;
/// the model sets D on a write only then, and not through an IOTLB entry that
/// knows the leaf dirty: after a clearing read, only the flush of the gather
/// it returns makes the next write count.
#[test]
fn hw_dirty_tracking_sets_ssade_and_reads_the_d_bits() {
    for (ecap, tracks) in [
        (ECAP_LEGACY, false),
        (ECAP_SCALABLE_SL, false),
        (ECAP_SCALABLE_FL | ECAP_SLADS, false),
        (ECAP_SCALABLE_SL | ECAP_SLADS, true),
    ] {
        let model = Model::new(CAP_DEFAULT, ecap);
        let rig = Rig::new();
        let env = crate::hardware::Environment {
            new_table: None,
            ..rig.env()
        };
        let unit = Vtd::new(UnitId(0), &model, env, description(), Options::default()).unwrap();
        assert_eq!(unit.dirty_tracking(), tracks, "ECAP {ecap:#x}");
    }
    let model = Model::new(CAP_DEFAULT, ECAP_SCALABLE_SL | ECAP_SLADS);
    let rig = Rig::new();
    let env = crate::hardware::Environment {
        new_table: None,
        ..rig.env()
    };
    let mut unit = Vtd::new(UnitId(0), &model, env, description(), Options::default()).unwrap();
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    let iova = 0x10_0000;
    let gather = unit.map(domain, iova, 0x8000_0000, 0x4000, RW).unwrap();
    unit.flush(domain, &gather).unwrap();
    let dirty = |unit: &mut Vtd<'_, &Model>, keep: bool| {
        let mut seen = Vec::new();
        let gather = unit
            .read_dirty(domain, iova, 0x4000, keep, &mut |at, size| {
                seen.push((at, size))
            })
            .unwrap();
        (seen, gather)
    };
    // Off: a write leaves no trace.
    assert!(model.dma_write(EDU_A, iova));
    assert_eq!(dirty(&mut unit, true).0, []);
    model.take_descriptors();
    unit.set_dirty_tracking(domain, true).unwrap();
    assert!(model.rid_pasid_entry(EDU_A).second_stage_dirty(), "SSADE");
    assert_eq!(
        kinds(&model.take_descriptors()),
        [
            DescriptorType::PasidCache,
            DescriptorType::Iotlb,
            DescriptorType::Wait
        ]
    );
    // A device attached later gets SSADE too.
    unit.attach(DeviceId(EDU_B.into()), domain).unwrap();
    assert!(
        model.rid_pasid_entry(EDU_B).second_stage_dirty(),
        "SSADE on attach"
    );
    // On: a write marks its page; kept, then cleared.
    assert!(model.dma_write(EDU_A, iova + 0x2000));
    assert_eq!(dirty(&mut unit, true).0, [(iova + 0x2000, 0x1000)]);
    let (seen, gather) = dirty(&mut unit, false);
    assert_eq!(seen, [(iova + 0x2000, 0x1000)]);
    assert_eq!(dirty(&mut unit, true).0, [], "cleared");
    // The IOTLB still knows the page dirty: without the flush a new write
    // sets nothing in memory and would be lost.
    assert!(model.dma_write(EDU_A, iova + 0x2000));
    assert_eq!(dirty(&mut unit, true).0, [], "lost without the flush");
    unit.flush(domain, &gather).unwrap();
    assert!(model.dma_write(EDU_A, iova + 0x2000));
    assert_eq!(dirty(&mut unit, true).0, [(iova + 0x2000, 0x1000)]);
    // Off again: SSADE cleared.
    unit.set_dirty_tracking(domain, false).unwrap();
    assert!(!model.rid_pasid_entry(EDU_A).second_stage_dirty());
    assert!(!model.rid_pasid_entry(EDU_B).second_stage_dirty());
}
