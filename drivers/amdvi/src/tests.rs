//! Host tests of the unit against the model IOMMU in `model.rs`, which
//! caches DTEs, halts on illegal commands and overflows its event log: what
//! QEMU 10.0.2's AMD-Vi does not do (docs/QEMU.md). A child of `unit` (see
//! its `mod tests`), so the tests may look at the unit's private state.

use super::*;
use crate::command::Opcode;
use crate::device_table::FirmwareSetting;
use crate::discovery::Requester;
use crate::fault::EventFlags;
use crate::fault::RawEvent;
use crate::hardware::Counters;
use crate::interrupt::Irte32;
use crate::model::{HOST_DMA, Model, Variant};
use crate::regs::{self, Status};
use firmware::acpi::ivrs::IvhdType;
use iommu::FaultReason;
use iommu_kit::Rationed;
use std::vec;

const EDU_A: u16 = 0x20;
const EDU_B: u16 = 0x28;
const RW: Prot = Prot {
    read: true,
    write: true,
};

fn description() -> UnitDescription {
    UnitDescription {
        ivhd_type: IvhdType::Type11,
        segment: 0,
        iommu_device_id: 0x08,
        capability_offset: 0x40,
        mmio_base: 0xFED8_0000,
        efr_image: Some(0x29d3),
        requesters: [0x00, 0x08, EDU_A, EDU_B, 0xA0]
            .map(|device_id| Requester {
                device_id,
                setting: FirmwareSetting(if device_id == 0xA0 { 0x40 } else { 0 }),
            })
            .to_vec(),
        aliases: vec![],
        unity: vec![],
    }
}

fn unit_with(np_cache: bool) -> (AmdVi, &'static Model) {
    unit_described(np_cache, description())
}

fn unit_described(np_cache: bool, description: UnitDescription) -> (AmdVi, &'static Model) {
    unit_of(Variant::default(), np_cache, description)
}

fn unit_of(
    variant: Variant,
    np_cache: bool,
    description: UnitDescription,
) -> (AmdVi, &'static Model) {
    let (model, regs) = Model::with(variant);
    // SAFETY: the model's register block, owned by this unit from here on.
    let mmio = unsafe { Mmio::new(regs, regs::MMIO_SIZE) };
    let header = CapabilityHeader(if np_cache { 0x1f03_000f } else { 0x1b03_000f });
    model.state.lock().unwrap().np_cache = np_cache;
    let unit = AmdVi::new(UnitId(0), description, mmio, header, &*HOST_DMA, model).unwrap();
    (unit, model)
}

fn opcodes(commands: &[Command]) -> Vec<Option<Opcode>> {
    commands.iter().map(Command::opcode).collect()
}

#[test]
fn bring_up_blocks_every_requester_and_invalidates_everything() {
    let (unit, model) = unit_with(true);
    // DeviceIDs up to 0xA0 need 161 entries: two pages, 256 entries.
    assert_eq!(unit.hardware.device_table_entries, 256);
    for id in 0..256u16 {
        let dte = unit.hardware.dte(id).unwrap();
        assert!(dte.blocks_dma(), "{id:#x}");
        assert_eq!(dte.int_ctl(), 0);
    }
    // Firmware's Lint0Pass (IVHD setting bit 6) is copied for the IOAPIC's entry.
    assert_eq!(unit.hardware.dte(0xA0).unwrap().0[2], 1 | 1 << 62);
    assert_eq!(
        opcodes(&model.take_executed()),
        [
            Some(Opcode::InvalidateIommuAll),
            Some(Opcode::CompletionWait)
        ]
    );
    assert_eq!(unit.hardware.counters().tail_writes, 1);
}

#[test]
fn every_dte_change_reaches_the_iommu_before_the_operation_returns() {
    let (mut unit, model) = unit_with(true);
    // The IOMMU has cached both devices' DTEs (they did DMA).
    model.fetch_dte(EDU_A);
    model.fetch_dte(EDU_B);
    model.take_executed();

    let a = unit.alloc_domain(DomainKind::Paging).unwrap();
    let b = unit.alloc_domain(DomainKind::Paging).unwrap();
    let a_id = unit.domains[&a.0].id;
    unit.attach(DeviceId(EDU_A.into()), a).unwrap();
    assert!(model.stale_dtes().is_empty(), "{:?}", model.stale_dtes());
    let dte = unit.hardware.dte(EDU_A).unwrap();
    assert_eq!((dte.mode(), dte.domain()), (4, a_id));
    assert!(dte.readable() && dte.writable() && dte.int_ctl() == 0);
    assert_eq!(
        model.take_executed(),
        [
            Command::invalidate_devtab_entry(EDU_A),
            unit.hardware.last_completion_wait()
        ]
    );

    // Moving to another domain also drops the old domain's IOTLB entries.
    unit.attach(DeviceId(EDU_A.into()), b).unwrap();
    assert!(model.stale_dtes().is_empty());
    let executed = model.take_executed();
    assert_eq!(
        executed[..2],
        [
            Command::invalidate_devtab_entry(EDU_A),
            Command::invalidate_iommu_pages(a_id, PageRange::ALL, true)
        ]
    );
    assert_eq!(unit.free_domain(b), Err(IommuError::Busy));

    unit.detach(DeviceId(EDU_A.into()));
    assert!(model.stale_dtes().is_empty());
    assert!(unit.hardware.dte(EDU_A).unwrap().blocks_dma());
    unit.free_domain(a).unwrap();
    unit.free_domain(b).unwrap();

    // Interrupt remapping changes are invalidated too.
    let target = crate::interrupt::Target {
        vector: 0x40,
        destination: 0,
        int_type: crate::interrupt::IntType::Fixed,
    };
    model.take_executed();
    unit.hardware.remap_interrupt(EDU_B, 3, target).unwrap();
    assert!(model.stale_dtes().is_empty());
    assert_eq!(
        opcodes(&model.take_executed()),
        [
            Some(Opcode::InvalidateDevtabEntry),
            Some(Opcode::InvalidateInterruptTable),
            Some(Opcode::CompletionWait)
        ]
    );
    let table = unit.hardware.dte(EDU_B).unwrap().interrupt_table();
    // SAFETY: host memory of the unit's interrupt table.
    let irte = unsafe { core::ptr::read_volatile((table + 12) as *const u32) };
    assert_eq!(irte, Irte32::remapped(target).unwrap().0);
    unit.hardware.block_interrupts(EDU_B).unwrap();
    assert!(model.stale_dtes().is_empty());
    assert_eq!(unit.hardware.dte(EDU_B).unwrap().int_ctl(), 0);
}

#[test]
fn routes_share_the_devices_own_table_and_the_last_unroute_blocks_again() {
    let (mut unit, model) = unit_with(true);
    let device = DeviceId(EDU_B.into());
    // Compatibility format: vector 0x45 to APIC 2.
    let compat = MsiMessage {
        address: 0xFEE0_2000,
        data: 0x45,
    };
    let irte_at = |unit: &AmdVi, index: u16| {
        let table = unit.hardware.dte(EDU_B).unwrap().interrupt_table();
        let offset = usize::from(index) * core::mem::size_of::<Irte32>();
        // SAFETY: host memory of the unit's interrupt table, entry in bounds.
        unsafe { core::ptr::read_volatile((table as usize + offset) as *const u32) }
    };
    let (first, routed) = unit.route_msi(device, compat).unwrap();
    let (address, data) = crate::interrupt::remappable_msi(0).unwrap();
    assert_eq!(routed, MsiMessage { address, data });
    let target = crate::interrupt::target_of_compat_msi(compat.address, compat.data);
    assert_eq!(irte_at(&unit, 0), Irte32::remapped(target).unwrap().0);
    // Another function with the same DeviceID: the next index.
    let (second, routed) = unit.route_msi(device, compat).unwrap();
    let (address, data) = crate::interrupt::remappable_msi(1).unwrap();
    assert_eq!(routed, MsiMessage { address, data });
    assert!(model.stale_dtes().is_empty());
    unit.unroute_msi(first);
    assert_eq!(irte_at(&unit, 0), Irte32::DISABLED.0, "entry 0 still live");
    assert_eq!(irte_at(&unit, 1), Irte32::remapped(target).unwrap().0);
    assert_ne!(
        unit.hardware.dte(EDU_B).unwrap().int_ctl(),
        0,
        "blocked too early"
    );
    unit.unroute_msi(second);
    assert_eq!(
        unit.hardware.dte(EDU_B).unwrap().int_ctl(),
        0,
        "interrupts not blocked"
    );
    assert!(model.stale_dtes().is_empty());
    assert_eq!(
        unit.route_msi(DeviceId(0x1_0000), compat),
        Err(IommuError::Invalid)
    );
}

#[test]
fn np_cache_decides_whether_a_new_mapping_is_invalidated() {
    for np_cache in [true, false] {
        let (mut unit, model) = unit_with(np_cache);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        model.take_executed();
        let gather = unit
            .map(
                domain,
                0x10_0000,
                0x5000_0000,
                0x4000,
                Prot {
                    read: true,
                    write: true,
                },
            )
            .unwrap();
        unit.flush(domain, &gather).unwrap();
        let expected = if np_cache {
            vec![
                Some(Opcode::InvalidateIommuPages),
                Some(Opcode::CompletionWait),
            ]
        } else {
            vec![]
        };
        assert_eq!(
            opcodes(&model.take_executed()),
            expected,
            "NpCache={np_cache}"
        );
        // Unmap is always invalidated: one command + one wait for 2^k pages.
        let before = unit.hardware.counters();
        let gather = unit.unmap(domain, 0x10_0000, 0x4000).unwrap();
        unit.flush(domain, &gather).unwrap();
        let cost = unit.hardware.counters().since(&before);
        assert_eq!(
            (
                cost.invalidate_iommu_pages,
                cost.completion_waits,
                cost.tail_writes
            ),
            (1, 1, 1)
        );
        let executed = model.take_executed();
        assert_eq!(executed[0].0[1], 0x10_1001);
    }
}

#[test]
fn unity_ranges_are_identity_mapped_on_attach_and_reported_reserved() {
    let mut described = description();
    described.unity.push(crate::discovery::UnityRange {
        first_device: EDU_A,
        last_device: EDU_A,
        start: 0xA_0000,
        last: 0xA_1FFF,
        read: true,
        write: true,
    });
    let (mut unit, model) = unit_described(true, described);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    model.take_executed();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    assert_eq!(unit.iova_to_phys(domain, 0xA_1234), Some(0xA_1234));
    assert_eq!(unit.iova_to_phys(domain, 0xA_2000), None);
    // NpCache: the new entries are invalidated with the DTE.
    assert_eq!(
        opcodes(&model.take_executed()),
        [
            Some(Opcode::InvalidateDevtabEntry),
            Some(Opcode::InvalidateIommuPages),
            Some(Opcode::CompletionWait)
        ]
    );
    let regions = unit.reserved_regions(DeviceId(EDU_A.into()));
    assert!(regions.contains(&ReservedRegion {
        range: IovaRange {
            start: 0xA_0000,
            last: 0xA_1FFF
        },
        kind: ReservedKind::Direct
    }));
    assert_eq!(unit.reserved_regions(DeviceId(EDU_B.into())).len(), 1);
}

#[test]
fn paging_domain_tables_are_freed_after_the_flush_and_with_the_domain() {
    let (mut unit, _model) = unit_with(false);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let rw = Prot {
        read: true,
        write: true,
    };
    let gather = unit
        .map(domain, 0x4000_0000, 0x8000_0000, 0x20_0000, rw)
        .unwrap();
    assert!(gather.is_empty(), "no NpCache: a new mapping owes nothing");
    assert_eq!(unit.iova_to_phys(domain, 0x4010_0000), Some(0x8010_0000));
    let gather = unit.unmap(domain, 0x4000_0000, 0x20_0000).unwrap();
    assert_eq!(gather.leaf_sizes, 1 << 21, "one 2 MiB leaf");
    unit.flush(domain, &gather).unwrap();
    assert_eq!(unit.iova_to_phys(domain, 0x4010_0000), None);
    unit.free_domain(domain).unwrap();
    assert_eq!(
        unit.map(domain, 0, 0, 4096, rw),
        Err(IommuError::Invalid),
        "a freed domain is gone"
    );
}

#[test]
fn identity_domain_passes_dma_untranslated_and_aperture_matches_the_tables() {
    let (mut unit, _model) = unit_with(true);
    let domain = unit.alloc_domain(DomainKind::Identity).unwrap();
    unit.attach(DeviceId(EDU_B.into()), domain).unwrap();
    let dte = unit.hardware.dte(EDU_B).unwrap();
    assert_eq!(dte.0[0], 0x6000_0000_0000_0003);
    assert_eq!(unit.iova_to_phys(domain, 0x1234_5000), Some(0x1234_5000));
    assert_eq!(unit.info().aperture.last, (1 << 48) - 1);
    unit.detach(DeviceId(EDU_B.into()));
    unit.free_domain(domain).unwrap();
}

#[test]
fn unmap_that_frees_a_table_invalidates_with_pde() {
    let (mut unit, model) = unit_with(false);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let rw = Prot {
        read: true,
        write: true,
    };
    // 512 separate 4 KiB leaves (phys not 2 MiB aligned) fill one level-1 table.
    let gather = unit
        .map(domain, 0x20_0000, 0x8000_1000, 0x20_0000, rw)
        .unwrap();
    unit.flush(domain, &gather).unwrap();
    model.take_executed();
    let gather = unit.unmap(domain, 0x20_0000, 0x20_0000).unwrap();
    assert!(gather.freed_tables && gather.leaf_sizes == 4096);
    unit.flush(domain, &gather).unwrap();
    let executed = model.take_executed();
    assert_eq!(executed.len(), 2);
    // S=1 over the 2 MiB block at 0x20_0000, PDE=1.
    assert_eq!(executed[0].0[1], 0x2F_F000 | 0b11);
    // Partial unmaps keep the table: PDE=0.
    let gather = unit
        .map(domain, 0x20_0000, 0x8000_1000, 0x4000, rw)
        .unwrap();
    unit.flush(domain, &gather).unwrap();
    model.take_executed();
    let gather = unit.unmap(domain, 0x20_0000, 0x4000).unwrap();
    unit.flush(domain, &gather).unwrap();
    assert_eq!(model.take_executed()[0].0[1], 0x20_1000 | 0b01);
}

/// Issue 20, several CPUs at once: four threads map, translate, unmap and
/// flush their own 2 MiB of one domain through `&self` (each unmap unlinks
/// a level-1 table and owes PDE = 1), sharing one command buffer and each
/// waiting for its own COMPLETION_WAIT. Before its own flush a thread's
/// device sees its old translation or none, never a table another thread's
/// flush freed and its map reused; after it, none; nothing cached
/// outlives its change.
#[test]
fn cpus_map_and_unmap_disjoint_ranges_of_one_domain_at_once() {
    let (mut unit, model) = unit_with(false);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    assert!(unit.shares_mapping());
    iommu_kit::fakes::map_and_unmap_from_four_threads(&unit, domain, 100, |iova| {
        model.translate(EDU_A, iova).map(|leaf| leaf.phys)
    });
    if let Err(stale) = model.check_no_stale_cache() {
        panic!("after the threads: {stale}");
    }
    unit.detach(DeviceId(EDU_A.into()));
    unit.free_domain(domain).unwrap();
}

#[test]
fn illegal_command_that_halts_the_buffer_is_reported_and_recovered() {
    let (mut unit, model) = unit_with(true);
    model.state.lock().unwrap().halt_on_illegal = true;
    let slot = unit.hardware.command_buffer.phys()
        + unit
            .hardware
            .command_ring
            .pointer(unit.hardware.command_tail());
    // The IOMMU stops at it; the driver moves the head past it, and the
    // batch's own COMPLETION_WAIT ends the wait: the error is the batch's.
    let err = unit.hardware.run(&[Command::illegal()]).unwrap_err();
    assert_eq!(err, UnitError::IllegalCommand { address: slot });
    assert_eq!(unit.hardware.counters().command_errors, 1);
    // The buffer runs again and the ILLEGAL_COMMAND event is in the unit's list.
    unit.hardware.run(&[Command::invalidate_all()]).unwrap();
    assert!(
        unit.take_unit_events()
            .contains(&Event::IllegalCommand { address: slot })
    );
    assert!(unit.hardware.probe_event_log().unwrap());
}

#[test]
fn illegal_command_on_a_buffer_that_keeps_going_is_still_an_error() {
    let (unit, _model) = unit_with(true);
    let slot = unit.hardware.command_buffer.phys()
        + unit
            .hardware
            .command_ring
            .pointer(unit.hardware.command_tail());
    assert_eq!(
        unit.hardware
            .run(&[Command::invalidate_all(), Command::illegal()]),
        Err(UnitError::IllegalCommand { address: slot + 16 })
    );
    unit.hardware.run(&[]).unwrap();
}

#[test]
fn a_failed_attach_leaves_the_device_where_it_was() {
    let (mut unit, model) = unit_with(true);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let before = unit.hardware.dte(EDU_A).unwrap();
    model.state.lock().unwrap().stalled = true;
    assert_eq!(
        unit.attach(DeviceId(EDU_A.into()), domain),
        Err(IommuError::Timeout)
    );
    assert_eq!(unit.hardware.dte(EDU_A), Some(before));
    // The IOMMU may have fetched the new entry before the old one went
    // back: the domain is reachable until that is invalidated.
    assert_eq!(unit.free_domain(domain), Err(IommuError::Timeout));
    model.state.lock().unwrap().stalled = false;
    assert_eq!(unit.free_domain(domain), Ok(()), "the domain has no device");
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    assert!(!unit.hardware.dte(EDU_A).unwrap().blocks_dma());
}

#[test]
fn an_old_illegal_command_event_does_not_fail_later_batches_in_its_slot() {
    let (unit, _model) = unit_with(true);
    assert!(unit.hardware.run(&[Command::illegal()]).is_err());
    // Well past one lap of the 256-entry ring: every slot is reused.
    for _ in 0..300 {
        unit.hardware
            .run(&[Command::invalidate_devtab_entry(EDU_A)])
            .unwrap();
    }
    assert_eq!(unit.hardware.counters().command_errors, 1);
}

#[test]
fn command_ring_wraps() {
    let (unit, model) = unit_with(true);
    for _ in 0..200 {
        unit.hardware
            .run(&[Command::invalidate_devtab_entry(EDU_A)])
            .unwrap();
    }
    assert_eq!(model.take_executed().len(), 2 + 400);
    assert_eq!(unit.hardware.command_tail(), (2 + 400) % 256);
}

/// Each COMPLETION_WAIT stores to its own slot's quadword a token of its own
/// position (the shared queue's per-caller completion): a lap later the
/// quadword still holds the old token, which must not end the new wait.
#[test]
fn a_completion_wait_is_ended_only_by_its_own_store() {
    let (unit, model) = unit_with(true);
    for _ in 0..300 {
        unit.hardware
            .run(&[Command::invalidate_devtab_entry(EDU_A)])
            .unwrap();
    }
    let stores: std::collections::BTreeSet<u64> = model
        .take_executed()
        .iter()
        .filter(|c| c.opcode() == Some(crate::command::Opcode::CompletionWait))
        .map(|c| c.0[0])
        .collect();
    assert_eq!(
        stores.len(),
        128,
        "one store quadword per slot a wait lands in"
    );
    model.state.lock().unwrap().stalled = true;
    assert!(matches!(
        unit.hardware
            .run(&[Command::invalidate_devtab_entry(EDU_A)]),
        Err(UnitError::CommandTimeout { .. })
    ));
}

#[test]
fn faults_go_to_the_owning_domain_and_overflow_restarts_the_log() {
    let (mut unit, model) = unit_with(true);
    let domain = unit.alloc_domain(DomainKind::Blocked).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    let fault = |n: u64| RawEvent::encode(2, EDU_A, 1, EventFlags::RW, n << 12);
    for n in 0..300 {
        model.raise_event(fault(n));
    }
    model.raise_event(RawEvent::encode(2, EDU_B, 0, EventFlags::empty(), 0x9000));
    model.step();
    assert_eq!(model.state.lock().unwrap().dropped_events, 46);
    let mut out = Vec::new();
    assert_eq!(unit.drain_domain_faults(domain, &mut out), 255);
    assert_eq!(out[0].iova, 0);
    assert_eq!(out[254].iova, 254 << 12);
    assert!(
        out.iter()
            .all(|r| r.access == iommu::Access::Write && r.reason == FaultReason::NotPresent)
    );
    assert_eq!(unit.hardware.counters().event_overflows, 1);
    // Logging runs again after the restart.
    model.raise_event(RawEvent::encode(2, EDU_B, 0, EventFlags::empty(), 0xA000));
    model.step();
    out.clear();
    assert_eq!(unit.drain_faults(&mut out), 1);
    assert_eq!(
        (out[0].requester, out[0].iova),
        (DeviceId(EDU_B.into()), 0xA000)
    );
    assert!(unit.hardware.status().contains(Status::EVENT_LOG_RUN));
}

/// Issue 9, fault storm (host half: QEMU 10.0.2 never writes its event log):
/// rounds of far more events than the 256-entry log holds. Every overflow is
/// seen and the log restarted; what reached the log is delivered (up to the
/// bounded queue, the rest counted as dropped); nothing is invented.
#[test]
fn fault_storm_overflows_are_counted_and_the_log_keeps_recovering() {
    let (mut unit, model) = unit_with(true);
    let domain = unit.alloc_domain(DomainKind::Blocked).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    const ROUNDS: u64 = 20;
    const PER_ROUND: u64 = 1000;
    let mut delivered = 0u64;
    for round in 0..ROUNDS {
        for n in 0..PER_ROUND {
            let iova = (round * PER_ROUND + n) << 12;
            model.raise_event(RawEvent::encode(2, EDU_A, 1, EventFlags::RW, iova));
        }
        model.step();
        // Drain every fifth round: 5 x 255 logged records overfill the queue.
        if round % 5 == 4 {
            let mut out = Vec::new();
            delivered += unit.drain_domain_faults(domain, &mut out) as u64;
            assert!(out.len() <= FAULT_QUEUE_CAPACITY);
            assert!(out.iter().all(|r| r.requester == DeviceId(EDU_A.into())));
        } else {
            unit.poll_events();
        }
    }
    let counters = unit.hardware.counters();
    let dropped_by_hardware = model.state.lock().unwrap().dropped_events as u64;
    assert_eq!(counters.event_overflows, ROUNDS, "one overflow per round");
    assert_eq!(counters.events + dropped_by_hardware, ROUNDS * PER_ROUND);
    assert_eq!(delivered + counters.dropped_faults, counters.events);
    assert!(
        counters.dropped_faults > 0,
        "the bounded queue was exercised"
    );
    // The 256-entry log holds 255 per round; every fifth round's drain finds
    // 5 x 255 records of which the queue kept 1024.
    assert_eq!(counters.events, ROUNDS * 255);
    assert_eq!(counters.dropped_faults, (ROUNDS / 5) * (5 * 255 - 1024));
    // After the storm: logging runs again and a single fault arrives intact.
    model.raise_event(RawEvent::encode(2, EDU_A, 0, EventFlags::empty(), 0x5000));
    model.step();
    assert!(unit.hardware.status().contains(Status::EVENT_LOG_RUN));
    let mut out = Vec::new();
    assert_eq!(unit.drain_domain_faults(domain, &mut out), 1);
    assert_eq!(out[0].iova, 0x5000);
    // Commands still run.
    unit.hardware.run(&[Command::invalidate_all()]).unwrap();
}

/// Issue 20, several CPUs' commands, one COMPLETION_WAIT (§2.4.1: it
/// completes only once every command before it has): A's and B's commands
/// are queued beside each other; B queues the wait, and A, finding it after
/// its own commands, waits for it instead of queueing another.
#[test]
fn two_submitters_commands_share_one_completion_wait() {
    let (unit, model) = unit_with(true);
    let hardware = &unit.hardware;
    model.take_executed();
    let queue = |command: Command| {
        let claim = hardware.claim_commands(1).unwrap();
        let end = claim.positions().end;
        hardware.write_and_publish(claim, &[command], false);
        end
    };
    let a = queue(Command::invalidate_all());
    let b = queue(Command::invalidate_devtab_entry(EDU_A));
    let b_wait = hardware.completion_wait_after(b).unwrap();
    let a_wait = hardware.completion_wait_after(a).unwrap();
    assert_eq!(a_wait, b_wait, "A rides B's wait");
    hardware.run(&[]).unwrap();
    assert_eq!(
        opcodes(&model.take_executed()),
        [
            Some(Opcode::InvalidateIommuAll),
            Some(Opcode::InvalidateDevtabEntry),
            Some(Opcode::CompletionWait),
            Some(Opcode::CompletionWait),
        ]
    );
    assert_eq!(hardware.counters().shared_waits, 1);
}

/// Issue 20: on an IOMMU that halts at a bad command, the batch that holds
/// it fails and every other CPU's batch, queued before or behind it, still
/// completes: the driver moves the head past the bad command only (§2.4),
/// whichever caller's wait met the halt.
#[test]
fn a_halt_fails_only_the_batch_that_holds_the_bad_command() {
    let (unit, model) = unit_with(true);
    model.state.lock().unwrap().halt_on_illegal = true;
    let hardware = &unit.hardware;
    for round in 0..50 {
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|threads| {
            let bad = threads.spawn(|| {
                start.wait();
                hardware.run(&[Command::illegal()])
            });
            let good = threads.spawn(|| {
                start.wait();
                hardware.run(&[Command::invalidate_all()])
            });
            assert_eq!(
                good.join().unwrap(),
                Ok(()),
                "round {round}: the good batch"
            );
            assert!(
                matches!(bad.join().unwrap(), Err(UnitError::IllegalCommand { .. })),
                "round {round}: the bad batch"
            );
        });
    }
    assert_eq!(hardware.counters().command_errors, 50);
    assert!(hardware.status().contains(Status::CMD_BUF_RUN));
}

/// Issue 9, misprogrammed hardware (host half: QEMU keeps going after an
/// illegal command): many illegal commands on an IOMMU that halts on each.
/// Every one is an error to the caller, every halt is recovered, and the
/// valid batch after each completes.
#[test]
fn illegal_command_storm_is_reported_and_recovered_every_time() {
    let (mut unit, model) = unit_with(true);
    model.state.lock().unwrap().halt_on_illegal = true;
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    const ROUNDS: u64 = 100;
    for round in 0..ROUNDS {
        let err = unit.hardware.run(&[Command::illegal()]).unwrap_err();
        assert!(
            matches!(err, UnitError::IllegalCommand { .. }),
            "round {round}: {err:?}"
        );
        let iova = 0x10_0000 + round * 4096;
        let gather = unit.map(domain, iova, 0x20_0000, 4096, RW).unwrap();
        unit.flush(domain, &gather).unwrap();
        let gather = unit.unmap(domain, iova, 4096).unwrap();
        unit.flush(domain, &gather).unwrap();
    }
    assert_eq!(unit.hardware.counters().command_errors, ROUNDS);
    assert!(unit.hardware.status().contains(Status::CMD_BUF_RUN));
    assert!(model.stale_dtes().is_empty());
}

/// Issue 9, resource exhaustion: with no pages for tables, alloc_domain and map
/// fail with NoMemory, leave nothing allocated and nothing mapped, and work once
/// pages are there again.
#[test]
fn table_page_exhaustion_fails_cleanly_and_recovers() {
    let (mut unit, _model) = unit_with(true);
    let budget: &'static Rationed =
        std::boxed::Box::leak(std::boxed::Box::new(Rationed::new(&*HOST_DMA)));
    budget.allow(0);
    let previous = unit.set_table_memory(budget);
    assert_eq!(
        unit.alloc_domain(DomainKind::Paging),
        Err(IommuError::NoMemory)
    );
    assert_eq!(budget.live(), 0);
    // Root only: the first map needs three more levels.
    for pages in 1..4 {
        budget.allow(pages);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        assert_eq!(
            unit.map(domain, 0x4000_0000, 0x20_0000, 4096, RW),
            Err(IommuError::NoMemory),
            "{pages} page(s)"
        );
        assert_eq!(unit.iova_to_phys(domain, 0x4000_0000), None);
        unit.free_domain(domain).unwrap();
        assert_eq!(budget.live(), 0, "{pages} page(s): leaked");
    }
    budget.allow(4);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.map(domain, 0x4000_0000, 0x20_0000, 4096, RW).unwrap();
    assert_eq!(unit.iova_to_phys(domain, 0x4000_0123), Some(0x20_0123));
    unit.free_domain(domain).unwrap();
    assert_eq!(budget.live(), 0);
    let _ = unit.set_table_memory(previous);
    assert!(unit.alloc_domain(DomainKind::Paging).is_ok());
}

#[test]
fn counters_subtract() {
    let before = Counters {
        commands: 2,
        tail_writes: 1,
        ..Counters::default()
    };
    let after = Counters {
        commands: 5,
        tail_writes: 2,
        ..Counters::default()
    };
    let delta = after.since(&before);
    assert_eq!((delta.commands, delta.tail_writes), (3, 1));
}

/// Issue 16, ordering (AMD IOMMU §2.4: the IOMMU fetches commands up to
/// COMMAND_TAIL as soon as it moves): every command is in memory, ordered by
/// a device barrier, before the tail register moves (Linux
/// `iommu_queue_command_sync` → `writel` of the tail, whose barrier does this).
#[test]
fn hw_commands_are_ordered_before_the_command_tail_moves() {
    use iommu_kit::fakes::trace::{Recording, doorbell_after_barrier};
    let (mut unit, _model) = unit_with(true);
    let recording = Recording::start();
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    unit.detach(DeviceId(EDU_A.into()));
    doorbell_after_barrier(&recording.take(), regs::COMMAND_TAIL.0).unwrap();
}

/// Issue 16, ordering (AMD IOMMU §2.5: the IOMMU may overwrite an entry once
/// EVENT_HEAD passed it): the entries are read before the head register
/// hands their slots back, behind a full device barrier.
#[test]
fn hw_event_entries_are_read_before_the_head_moves() {
    use iommu_kit::fakes::trace::{Recording, barrier_before};
    use os_services::barrier::Barrier;
    let (mut unit, model) = unit_with(true);
    model.raise_event(RawEvent::encode(2, EDU_A, 0, EventFlags::empty(), 0x7000));
    model.step();
    let recording = Recording::start();
    assert_eq!(unit.poll_events(), 1);
    barrier_before(&recording.take(), regs::EVENT_HEAD.0, Barrier::IoMb).unwrap();
}

/// Issue 16, freeing after a failed invalidation: a flush whose
/// INVALIDATE_IOMMU_PAGES never completed did not confirm its range, so the
/// next flush of the domain, even for an unrelated range, invalidates every
/// page (with PDE) before the pages the first unmap unlinked may be freed.
#[test]
fn hw_a_failed_flush_is_made_good_by_the_next_before_anything_is_freed() {
    let (mut unit, model) = unit_with(true);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let id = unit.domains[&domain.0].id;
    for iova in [0x10_0000, 0x20_0000] {
        let gather = unit.map(domain, iova, 0x20_0000, 4096, RW).unwrap();
        unit.flush(domain, &gather).unwrap();
    }
    let first = unit.unmap(domain, 0x10_0000, 4096).unwrap();
    model.state.lock().unwrap().stalled = true;
    assert_eq!(unit.flush(domain, &first), Err(IommuError::Timeout));
    model.state.lock().unwrap().stalled = false;
    let everything = Command::invalidate_iommu_pages(id, PageRange::ALL, true);
    let seen = model.state.lock().unwrap().executed.len();
    let second = unit.unmap(domain, 0x20_0000, 4096).unwrap();
    unit.flush(domain, &second).unwrap();
    assert!(
        model.state.lock().unwrap().executed[seen..].contains(&everything),
        "the flush after a failed one did not invalidate the whole domain"
    );
    let gather = unit.map(domain, 0x30_0000, 0x20_0000, 4096, RW).unwrap();
    unit.flush(domain, &gather).unwrap();
    let seen = model.state.lock().unwrap().executed.len();
    let third = unit.unmap(domain, 0x30_0000, 4096).unwrap();
    unit.flush(domain, &third).unwrap();
    assert!(!model.state.lock().unwrap().executed[seen..].contains(&everything));
}

/// Issue 16, coherence (AMD IOMMU §3.4.4 Coherent, §2.2.2.1): the driver
/// writes DTEs with cached stores and never writes a line back, so the IOMMU's
/// device-table reads must snoop. Without Coherent the model reads DRAM, where
/// a blocked entry may still be the allocator's zeros: V=0, pass-through (Linux
/// `iommu_init_flags` sets Coherent).
#[test]
fn hw_device_table_reads_snoop_so_no_stale_entry_passes_dma_through() {
    let (mut unit, model) = unit_with(true);
    assert!(
        model.fetch_dte(EDU_A).blocks_dma(),
        "a blocked device's DMA passes"
    );
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    assert_eq!(model.fetch_dte(EDU_A), unit.hardware.dte(EDU_A).unwrap());
}

/// Issue 16 (AMD IOMMU §3.4.4 InvTimeOut, §2.5.8 IOTLB_INV_TIMEOUT): a device
/// that never answers an IOTLB invalidation is given up on by the IOMMU, which
/// logs it, before the driver's own COMPLETION_WAIT bound declares the whole
/// command buffer stuck (Linux `iommu_set_inv_tlb_timeout`).
#[test]
fn hw_device_iotlb_invalidations_time_out_before_the_command_buffer_does() {
    let (_unit, model) = unit_with(true);
    let field = (model.control() & regs::Control::INV_TIMEOUT).bits() >> 5;
    // InvTimeOut encodings 1..=6: 1 ms times 10^(n-1).
    assert!((1..=6).contains(&field), "InvTimeOut {field}");
    let iommu_gives_up = core::time::Duration::from_millis(10u64.pow(field as u32 - 1));
    assert!(iommu_gives_up < crate::hardware::COMMAND_TIMEOUT);
}

/// Issue 16 (AMD IOMMU §3.4.5): an exclusion range firmware left enabled lets
/// DMA to it bypass every domain; bring-up clears it.
#[test]
fn hw_an_exclusion_range_left_by_firmware_is_cleared() {
    let variant = Variant {
        firmware_exclusion: Some((0x1000_0000, 0x1FFF_F000)),
        ..Variant::default()
    };
    let (_unit, model) = unit_of(variant, true, description());
    assert!(!model.excluded(0x1000_0000) && !model.excluded(0x1FFF_FFFF));
}

/// Issue 16 (AMD IOMMU §3.4.7 IASup): without INVALIDATE_IOMMU_ALL, bring-up
/// invalidates every DTE and interrupt table one by one: 512 commands for 256
/// entries, twice what the ring holds. They go in ring-sized batches, each
/// completed before the next (Linux `amd_iommu_flush_all_devices`).
#[test]
fn hw_bring_up_without_invalidate_all_batches_its_invalidations() {
    let variant = Variant {
        efr: Variant::default().efr & !(1 << 6),
        ..Variant::default()
    };
    let (unit, model) = unit_of(variant, true, description());
    assert!(!unit.hardware.extended_features().invalidate_all());
    let executed = model.take_executed();
    for device_id in 0..256u16 {
        for command in [
            Command::invalidate_devtab_entry(device_id),
            Command::invalidate_interrupt_table(device_id),
        ] {
            assert!(executed.contains(&command), "{command:?}");
        }
    }
}

/// Issue 16, AMD erratum 732 (Linux `iommu_print_event`): the IOMMU may move
/// EVENT_TAIL before the entry is in memory. The reader waits for a zero
/// entry to be written instead of losing the event, and zeroes what it
/// consumed so that an unwritten slot is told from an old entry.
#[test]
fn hw_an_event_entry_written_after_the_tail_moved_is_not_lost() {
    let variant = Variant {
        late_event_entries: true,
        ..Variant::default()
    };
    let (mut unit, model) = unit_of(variant, true, description());
    let domain = unit.alloc_domain(DomainKind::Blocked).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    model.raise_event(RawEvent::encode(2, EDU_A, 1, EventFlags::RW, 0x7000));
    model.step();
    let mut out = Vec::new();
    assert_eq!(unit.drain_domain_faults(domain, &mut out), 1);
    assert_eq!((out[0].iova, out[0].access), (0x7000, iommu::Access::Write));
    let slot = unit.hardware.event_log_phys() as *const [u64; 2];
    // SAFETY: host "physical" addresses are pointers into the event log.
    assert_eq!(unsafe { core::ptr::read_volatile(slot) }, [0, 0]);
}

/// Issue 16, freeing after a failed invalidation: a detach whose
/// INVALIDATE_DEVTAB_ENTRY never completed left the device blocked in memory,
/// not in the DTE cache, which may still lead it to the old domain's tables.
/// The domain is not freed until the entry and the domain's pages were
/// invalidated again (Linux frees a domain only after the detach's
/// `device_flush_dte` and `domain_flush_complete` returned).
#[test]
fn hw_a_failed_detach_is_made_good_before_its_domain_is_freed() {
    let (mut unit, model) = unit_with(true);
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    let id = unit.domains[&domain.0].id;
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    model.fetch_dte(EDU_A);
    model.state.lock().unwrap().stalled = true;
    unit.detach(DeviceId(EDU_A.into()));
    assert_eq!(unit.free_domain(domain), Err(IommuError::Timeout));
    assert!(
        unit.domains.contains_key(&domain.0),
        "freed while the DTE may be cached"
    );
    // The queue comes back without having run what timed out (a restart).
    {
        let mut state = model.state.lock().unwrap();
        state.stalled = false;
    }
    unit.hardware.recover_command_buffer(&[], 0);
    model.take_executed();
    unit.free_domain(domain).unwrap();
    let executed = model.take_executed();
    assert!(executed.contains(&Command::invalidate_devtab_entry(EDU_A)));
    assert!(executed.contains(&Command::invalidate_iommu_pages(id, PageRange::ALL, true)));
    assert_eq!(model.stale_dtes(), Vec::<u16>::new());
}

/// Time for two models at once: every wait of either unit's driver moves both.
struct BothModels([&'static Model; 2]);

impl Clock for BothModels {
    fn now_ns(&self) -> u64 {
        self.0[1].now_ns();
        self.0[0].now_ns()
    }

    fn relax(&self) {
        self.0.iter().for_each(|model| model.relax());
    }
}

/// Issue 16 (AMD IOMMU §5.2.2: one IVHD per IOMMU, each listing the requesters
/// it sees): every IOMMU is brought up, not only the first. One left as
/// firmware left it (here: IommuEn off) lets the DMA behind it bypass. Linux
/// `init_iommu_all` brings up every IVHD.
#[test]
fn hw_every_ivhd_is_brought_up_blocking() {
    let units_of = |dma: &'static (dyn os_services::DmaMemory + Sync)| {
        let (first, first_regs) = Model::with(Variant::default());
        let (second, second_regs) = Model::with(Variant::default());
        let clock: &'static BothModels =
            std::boxed::Box::leak(std::boxed::Box::new(BothModels([first, second])));
        let behind_second = UnitDescription {
            mmio_base: 0xFED9_0000,
            requesters: vec![Requester {
                device_id: EDU_B,
                setting: FirmwareSetting(0),
            }],
            ..description()
        };
        let header = CapabilityHeader(0x1b03_000f);
        // SAFETY: each model's register block, owned by its unit from here on.
        let (first_mmio, second_mmio) = unsafe {
            (
                Mmio::new(first_regs, regs::MMIO_SIZE),
                Mmio::new(second_regs, regs::MMIO_SIZE),
            )
        };
        let units = AmdVi::bring_up_all(
            [
                (description(), first_mmio, header),
                (behind_second, second_mmio, header),
            ],
            dma,
            clock,
        );
        (units, [first, second])
    };

    let (units, models) = units_of(&*HOST_DMA);
    let units = units.unwrap();
    assert_eq!(units.len(), 2);
    for (index, model) in models.iter().enumerate() {
        assert!(
            model.control().contains(regs::Control::IOMMU_EN),
            "unit {index} translates"
        );
    }
    assert!(models[1].fetch_dte(EDU_B).blocks_dma(), "nothing attached");

    // Memory for the first unit only: the second fails, and the first is not
    // handed out on its own.
    let budget: &'static Rationed =
        std::boxed::Box::leak(std::boxed::Box::new(Rationed::new(&*HOST_DMA)));
    budget.allow(4);
    let (units, _) = units_of(budget);
    assert_eq!(units.err().map(|(index, _)| index), Some(1));
}

/// Issue 17, dirty tracking (AMD IOMMU §2.2.2.1 DTE HAD, §2.2.7.2 host D
/// bit, EFR HDSup; Linux `amd_iommu_set_dirty_tracking`,
/// `amd_iommu_read_and_clear_dirty`): only an IOMMU with HDSup tracks;
/// turning it on sets HAD in the DTE of every attached device (and of one
/// attached later), invalidates each DTE and every page of the domain; the
/// model then sets D in the leaves a device writes through, which the unit
/// reads (kept, or cleared with a gather to flush).
#[test]
fn hw_dirty_tracking_sets_had_and_reads_the_d_bits() {
    let (mut plain, _) = unit_with(true);
    assert!(!plain.dirty_tracking());
    let domain = plain.alloc_domain(DomainKind::Paging).unwrap();
    assert_eq!(
        plain.set_dirty_tracking(domain, true),
        Err(IommuError::Unsupported)
    );
    let variant = Variant {
        efr: Variant::default().efr | 1 << 52,
        ..Variant::default()
    };
    let (mut unit, model) = unit_of(variant, true, description());
    assert!(unit.dirty_tracking());
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(EDU_A.into()), domain).unwrap();
    let iova = 0x10_0000;
    let gather = unit.map(domain, iova, 0x8000_0000, 0x4000, RW).unwrap();
    unit.flush(domain, &gather).unwrap();
    let dirty = |unit: &mut AmdVi, keep: bool| {
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
    model.take_executed();
    unit.set_dirty_tracking(domain, true).unwrap();
    assert!(unit.hardware.dte(EDU_A).unwrap().host_access_dirty(), "HAD");
    let executed = opcodes(&model.take_executed());
    assert!(
        executed.contains(&Some(Opcode::InvalidateDevtabEntry)),
        "{executed:?}"
    );
    assert!(
        executed.contains(&Some(Opcode::InvalidateIommuPages)),
        "{executed:?}"
    );
    unit.attach(DeviceId(EDU_B.into()), domain).unwrap();
    assert!(
        unit.hardware.dte(EDU_B).unwrap().host_access_dirty(),
        "HAD on attach"
    );
    // On: the write is recorded; kept, then cleared with a gather to flush.
    // The 16 KiB map is one Next Level 7 page (§2.2.3): a write through any
    // of its entries makes the whole page dirty.
    assert!(model.dma_write(EDU_A, iova + 0x3000));
    assert_eq!(dirty(&mut unit, true).0, [(iova, 0x4000)]);
    let (seen, gather) = dirty(&mut unit, false);
    assert_eq!(seen, [(iova, 0x4000)]);
    assert!(!gather.is_empty());
    unit.flush(domain, &gather).unwrap();
    assert_eq!(dirty(&mut unit, true).0, [], "cleared");
    // Off again: HAD cleared, writes leave no trace.
    unit.set_dirty_tracking(domain, false).unwrap();
    assert!(!unit.hardware.dte(EDU_A).unwrap().host_access_dirty());
    assert!(model.dma_write(EDU_A, iova));
    assert_eq!(dirty(&mut unit, true).0, []);
}

/// Issue 16, the strict model's caches (AMD IOMMU §2.4.3 INVALIDATE_IOMMU_PAGES
/// and its PDE bit, §3.2.1 NpCache, §2.4.5 INVALIDATE_INTERRUPT_TABLE; Linux
/// `build_inv_address` always sets PDE, `domain_flush_np_cache` flushes a new
/// mapping under NpCache): before every operation the model walks and caches
/// everything a device could reach (translations, the directories on the way,
/// with NpCache the not-present ones too, and IRTEs); after it, no cached item
/// may disagree with memory. Covers leaves removed one by one, a leaf table
/// freed, a huge page replaced by a table, a domain switched and a DomainID
/// reused, and interrupt routes made and taken down.
#[test]
fn hw_no_cached_translation_directory_or_irte_outlives_its_change() {
    const PROBES: [u64; 9] = [
        0x60_0000,
        0x7F_F000,
        0x10_0000,
        0x10_1000,
        0x10_3000,
        0x20_0000,
        0x20_1000,
        0x3F_F000,
        0x4000_0000,
    ];
    for np_cache in [false, true] {
        let (mut unit, model) = unit_with(np_cache);
        let fill = |model: &Model| {
            for device in [EDU_A, EDU_B] {
                for iova in PROBES {
                    model.translate(device, iova);
                }
                for index in 0..4 {
                    model.interrupt(device, index);
                }
            }
        };
        let step = |unit: &mut AmdVi, what: &str, op: &mut dyn FnMut(&mut AmdVi)| {
            fill(model);
            op(unit);
            if let Err(stale) = model.check_no_stale_cache() {
                panic!("NpCache={np_cache}, after {what}: {stale}");
            }
        };
        let map = |unit: &mut AmdVi, domain, iova, phys, len| {
            let gather = unit.map(domain, iova, phys, len, RW).unwrap();
            unit.flush(domain, &gather).unwrap();
        };
        let unmap = |unit: &mut AmdVi, domain, iova, len| {
            let gather = unit.unmap(domain, iova, len).unwrap();
            unit.flush(domain, &gather).unwrap();
        };
        let a = unit.alloc_domain(DomainKind::Paging).unwrap();
        step(&mut unit, "attach", &mut |unit| {
            unit.attach(DeviceId(EDU_A.into()), a).unwrap()
        });
        step(&mut unit, "first maps", &mut |unit| {
            map(unit, a, 0x10_0000, 0x8000_0000, 0x1000);
            map(unit, a, 0x10_1000, 0x8000_5000, 0x1000);
            map(unit, a, 0x10_3000, 0x8000_9000, 0x1000);
        });
        step(&mut unit, "a 2 MiB map", &mut |unit| {
            map(unit, a, 0x20_0000, 0x4000_0000, 0x20_0000)
        });
        step(&mut unit, "one leaf unmapped", &mut |unit| {
            unmap(unit, a, 0x10_1000, 0x1000)
        });
        step(&mut unit, "the leaf table emptied", &mut |unit| {
            unmap(unit, a, 0x10_0000, 0x1000);
            unmap(unit, a, 0x10_3000, 0x1000);
        });
        step(&mut unit, "pages filling a leaf table", &mut |unit| {
            // Not 2 MiB-aligned physically: 4 KiB pages only, in one table.
            map(unit, a, 0x60_0000, 0x8000_1000, 0x20_0000)
        });
        step(
            &mut unit,
            "that whole table unmapped and freed",
            &mut |unit| unmap(unit, a, 0x60_0000, 0x20_0000),
        );
        step(&mut unit, "the 2 MiB page unmapped", &mut |unit| {
            unmap(unit, a, 0x20_0000, 0x20_0000)
        });
        step(&mut unit, "4 KiB pages where it was", &mut |unit| {
            map(unit, a, 0x20_0000, 0x9000_0000, 0x1000);
            map(unit, a, 0x20_1000, 0x9000_3000, 0x1000);
        });
        step(&mut unit, "an interrupt routed", &mut |unit| {
            let message = MsiMessage {
                address: 0xFEE0_0000,
                data: 0x41,
            };
            unit.route_msi(DeviceId(EDU_A.into()), message).unwrap();
            unit.route_msi(DeviceId(EDU_A.into()), message).unwrap();
        });
        // The IRTE half of this test means something only if the model
        // really remaps (and so caches) the routed device's interrupts.
        assert!(
            model.interrupt(EDU_A, 1).is_some(),
            "the model does not remap EDU_A's interrupts: IRTE cache untested"
        );
        step(&mut unit, "one route taken down", &mut |unit| {
            unit.unroute_msi(MsiRoute(u64::from(EDU_A) << 16))
        });
        step(&mut unit, "the last route taken down", &mut |unit| {
            unit.unroute_msi(MsiRoute(u64::from(EDU_A) << 16 | 1))
        });
        let b = unit.alloc_domain(DomainKind::Paging).unwrap();
        step(&mut unit, "a switch to another domain", &mut |unit| {
            map(unit, b, 0x10_0000, 0xA000_0000, 0x1000);
            unit.attach(DeviceId(EDU_A.into()), b).unwrap();
        });
        step(
            &mut unit,
            "the first domain freed, its id reused",
            &mut |unit| {
                unit.free_domain(a).unwrap();
                let c = unit.alloc_domain(DomainKind::Paging).unwrap();
                map(unit, c, 0x10_0000, 0xB000_0000, 0x1000);
                unit.attach(DeviceId(EDU_B.into()), c).unwrap();
            },
        );
        step(&mut unit, "a detach", &mut |unit| {
            unit.detach(DeviceId(EDU_A.into()))
        });
    }
}
