//! Host tests of the SMMU instance and the unit against the register-level
//! model in `model.rs`: bring-up order, hitless STE updates, the command
//! queue's error and timeout recovery, event draining and overflow.

use crate::command::opcode;
use crate::fault::EventKind;
use crate::hardware::StreamTableFormat;
use crate::regs::{self, CommandError, Cr0, Gbpa, Gerror};
use crate::{Command, Error, RawCommand, Ste};

use std::vec;
use std::vec::Vec;

use crate::model::*;

#[test]
fn bring_up_aborts_unknown_traffic_and_enables_last() {
    let rig = rig();
    let smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    let model = &rig.model;
    assert!(Gbpa::from_bits_retain(model.read(regs::GBPA.0)).contains(Gbpa::ABORT));
    assert_eq!(
        Cr0::from_bits_retain(model.read(regs::CR0.0)),
        Cr0::SMMUEN | Cr0::EVENTQEN | Cr0::CMDQEN
    );
    // Linear, LOG2SIZE 8; the table is zeroed (every STE V = 0).
    assert_eq!(model.read(regs::STRTAB_BASE_CFG.0), 8);
    let table = (model.read64(regs::STRTAB_BASE.0) & regs::STRTAB_BASE_ADDR_MASK) as *const u64;
    // SAFETY: 256 STEs of 8 words the driver allocated.
    assert!((0..256 * 8).all(|i| unsafe { *table.add(i) } == 0));
    // Stale configuration and TLB entries are dropped before SMMUEN.
    assert_eq!(
        opcodes(&model.log.borrow()),
        [
            opcode::CFGI_STE_RANGE,
            opcode::TLBI_S12_VMALL,
            opcode::TLBI_NSNH_ALL,
            opcode::CMD_SYNC
        ]
    );
    assert!(!smmu.is_two_level());
}

#[test]
fn two_level_table_gets_its_level_2_table_on_first_use() {
    let rig = rig();
    let mut smmu = smmu(&rig, StreamTableFormat::TwoLevel);
    let model = &rig.model;
    assert_eq!(
        model.read(regs::STRTAB_BASE_CFG.0),
        (1 << 16) | (8 << 6) | 16
    );
    smmu.write_ste(0x10, &Ste::bypass()).unwrap();
    let l1 = (model.read64(regs::STRTAB_BASE.0) & regs::STRTAB_BASE_ADDR_MASK) as *const u64;
    // SAFETY: the L1 table has 256 descriptors.
    let desc = unsafe { *l1 };
    assert_eq!(desc & 0x1F, 9, "span = SPLIT + 1");
    let l2 = (desc & !0x3F) as *const u64;
    // SAFETY: STE 0x10 of the level-2 table.
    let ste: Vec<u64> = (0..8).map(|i| unsafe { *l2.add(0x10 * 8 + i) }).collect();
    assert_eq!(ste, Ste::bypass().0);
    assert_eq!(smmu.read_ste(0x10).unwrap(), Ste::bypass());
    assert_eq!(smmu.read_ste(0x1_0000), Err(Error::BadStreamId(0x1_0000)));
}

#[test]
fn ste_switch_between_domains_goes_through_abort_with_two_syncs() {
    let rig = rig();
    let mut smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    let skip = rig.model.log.borrow().len();
    smmu.write_ste(8, &Ste::bypass()).unwrap();
    let first = opcodes(&rig.model.log.borrow()[skip..]);
    assert_eq!(
        first,
        [opcode::CFGI_STE, opcode::CMD_SYNC],
        "hitless from invalid"
    );
    let stage1 = Ste::translate(Some(0x4000_0000), None).unwrap();
    let skip = rig.model.log.borrow().len();
    smmu.write_ste(8, &stage1).unwrap();
    let switch = opcodes(&rig.model.log.borrow()[skip..]);
    assert_eq!(
        switch,
        [
            opcode::CFGI_STE,
            opcode::CMD_SYNC,
            opcode::CFGI_STE,
            opcode::CMD_SYNC
        ],
        "bypass -> stage 1 changes words 0 and 1"
    );
    assert_eq!(smmu.read_ste(8).unwrap(), stage1);
    assert_eq!(rig.model.log.borrow().last().unwrap()[0] & 0xFF, 0x46);
    let cfgi = rig.model.log.borrow()[skip];
    assert_eq!(cfgi[0] >> 32, 8, "CFGI_STE names the StreamID");
}

/// Issue 20, several CPUs' commands, one CMD_SYNC (§4.7.3): A's and B's
/// TLBIs are queued beside each other; B queues the CMD_SYNC, and A, finding
/// it after its own commands, waits for it instead of queueing another.
#[test]
fn two_submitters_commands_share_one_cmd_sync() {
    let rig = rig();
    let smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    let skip = rig.model.log.borrow().len();
    let before = smmu.counters();
    let a = smmu
        .queue(&[Command::TlbiNhAsid { vmid: 0, asid: 1 }])
        .unwrap();
    let b = smmu
        .queue(&[Command::TlbiNhAsid { vmid: 0, asid: 2 }])
        .unwrap();
    let b_sync = smmu.sync_for(&b).unwrap();
    let a_sync = smmu.sync_for(&a).unwrap();
    assert_eq!(a_sync, b_sync, "A rides B's CMD_SYNC");
    assert_eq!(smmu.wait_cmdq_through(b, b_sync + 1), Ok(()));
    assert_eq!(smmu.wait_cmdq_through(a, a_sync + 1), Ok(()));
    let cost = smmu.counters().since(&before);
    assert_eq!((cost.syncs, cost.shared_syncs), (1, 1));
    let log = rig.model.log.borrow();
    assert_eq!(
        opcodes(&log[skip..]),
        [opcode::TLBI_NH_ASID, opcode::TLBI_NH_ASID, opcode::CMD_SYNC]
    );
}

/// Issue 20: a rejected command is the error of the caller whose command it
/// was, whichever caller's wait met the stop and repaired the queue (§7.1):
/// B, queued behind A's bad command, completes; A's wait reports it.
#[test]
fn a_rejection_goes_to_the_caller_whose_command_it_was() {
    let rig = rig();
    let smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    let a = smmu
        .queue_raw(&[RawCommand([0x7F, 0]), Command::Sync.encode()])
        .unwrap();
    assert_eq!(smmu.execute(&[Command::TlbiNsnhAll]), Ok(()), "B");
    assert_eq!(
        smmu.wait_cmdq_consumed(a),
        Err(Error::CommandRejected {
            error: CommandError::Illegal,
            opcode: 0x7F
        }),
        "A"
    );
    assert_eq!(smmu.sync(), Ok(()), "reported once");
}

#[test]
fn illegal_command_is_replaced_and_the_queue_resumes() {
    let rig = rig();
    let smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    assert_eq!(
        smmu.execute_raw(&[RawCommand([0x7F, 0])]),
        Err(Error::CommandRejected {
            error: CommandError::Illegal,
            opcode: 0x7F
        })
    );
    assert!(smmu.active_gerror().is_empty(), "CMDQ_ERR acknowledged");
    assert_eq!(smmu.counters().command_errors, 1);
    assert_eq!(smmu.execute(&[Command::TlbiNsnhAll]), Ok(()));
    let log = rig.model.log.borrow();
    // The bad slot ran as a CMD_SYNC, then the sync, then the new batch.
    assert_eq!(
        opcodes(&log[log.len() - 4..]),
        [
            opcode::CMD_SYNC,
            opcode::CMD_SYNC,
            opcode::TLBI_NSNH_ALL,
            opcode::CMD_SYNC
        ]
    );
}

#[test]
fn a_hung_queue_times_out_and_restart_keeps_the_tables() {
    let rig = rig();
    let mut smmu = smmu(&rig, StreamTableFormat::TwoLevel);
    smmu.enable_interrupts(true, true).unwrap();
    smmu.write_ste(8, &Ste::bypass()).unwrap();
    let ste_phys = smmu.ste_phys(8).unwrap();
    // Queues off: nothing consumes the command, the bound expires.
    smmu.shutdown().unwrap();
    assert_eq!(
        smmu.execute(&[Command::TlbiNsnhAll]),
        Err(Error::Timeout("CMD_SYNC"))
    );
    assert_ne!(
        rig.model.read(regs::CMDQ_PROD.0),
        rig.model.read(regs::CMDQ_CONS.0)
    );
    smmu.restart().unwrap();
    assert_eq!(
        Cr0::from_bits_retain(rig.model.read(regs::CR0.0)),
        Cr0::SMMUEN | Cr0::EVENTQEN | Cr0::CMDQEN
    );
    assert_eq!(
        rig.model.read(regs::IRQ_CTRL.0),
        0b101,
        "interrupts restored"
    );
    // Same stream table, same STE, and the queue runs again.
    assert_eq!(smmu.ste_phys(8), Some(ste_phys));
    assert_eq!(smmu.read_ste(8).unwrap(), Ste::bypass());
    assert_eq!(smmu.execute(&[Command::TlbiNsnhAll]), Ok(()));
    let log = rig.model.log.borrow();
    assert_eq!(
        opcodes(&log[log.len() - 2..]),
        [opcode::TLBI_NSNH_ALL, opcode::CMD_SYNC]
    );
}

#[test]
fn command_queue_wraps_under_large_batches() {
    let rig = rig();
    let smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    let skip = rig.model.log.borrow().len();
    let batch = vec![Command::CfgiSte { sid: 3, leaf: true }; 700];
    smmu.execute(&batch).unwrap();
    smmu.execute(&batch).unwrap();
    let log = rig.model.log.borrow();
    assert_eq!(
        log.len() - skip,
        2 * 701,
        "every command consumed once, in order"
    );
    assert!(log[skip..skip + 700].iter().all(|c| c[0] & 0xFF == 0x03));
}

#[test]
fn events_are_drained_coalesced_and_overflow_is_counted() {
    let rig = rig();
    let mut smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    for chunk in 0..16u64 {
        rig.model
            .inject_event([(8 << 32) | 0x10, 1 << 41, 0x9000 + 4 * chunk, 0]);
    }
    rig.model.inject_event([(0x10 << 32) | 0x04, 0, 0, 0]);
    assert_eq!(smmu.drain_events(), 17);
    let faults = smmu.take_faults();
    assert_eq!(faults.len(), 2);
    assert_eq!(
        (faults[0].event.kind, faults[0].count),
        (EventKind::Translation, 16)
    );
    assert_eq!(
        (faults[1].event.kind, faults[1].event.sid),
        (EventKind::BadSte, 0x10)
    );
    assert_eq!(
        rig.model.read(regs::EVENTQ_CONS.0),
        rig.model.read(regs::EVENTQ_PROD.0),
        "CONS caught up"
    );
    // Overflow flag: counted and acknowledged through OVACKFLG.
    let prod = rig.model.read(regs::EVENTQ_PROD.0);
    rig.model.write(regs::EVENTQ_PROD.0, prod | (1 << 31));
    assert_eq!(smmu.drain_events(), 0);
    assert_eq!(smmu.counters().event_overflows, 1);
    assert_eq!(rig.model.read(regs::EVENTQ_CONS.0) >> 31, 1);
    assert_eq!(smmu.drain_events(), 0);
    assert_eq!(smmu.counters().event_overflows, 1, "acknowledged once");
}

#[test]
fn drop_disables_before_freeing() {
    let rig = rig();
    let smmu = smmu(&rig, StreamTableFormat::TwoLevel);
    drop(smmu);
    assert_eq!(rig.model.read(regs::CR0.0), 0);
    assert_eq!(rig.dma.live(), 0, "every region returned");
}

mod unit {
    use super::*;
    use crate::{SmmuUnit, StreamConfig};
    use iommu::{
        DeviceId, DomainKind, FaultReason, IommuError, IommuUnit, IovaRange, NestedData,
        NestedInvalidation, Prot, UnitId,
    };

    const RW: Prot = Prot {
        read: true,
        write: true,
    };

    fn unit(rig: &Rig) -> SmmuUnit<'static> {
        let doorbell = IovaRange::from_len(0x0802_0000, 0x1000);
        SmmuUnit::new(
            smmu(rig, StreamTableFormat::TwoLevel),
            rig.dma,
            UnitId(0),
            doorbell,
        )
    }

    fn since(rig: &Rig, skip: usize) -> Vec<[u64; 2]> {
        rig.model.log.borrow()[skip..].to_vec()
    }

    /// Issue 20, several CPUs at once: four threads map, translate, unmap
    /// and flush their own range of one domain through `&self` (each range
    /// in a last-level table of its own, so that each unmap frees that table
    /// and owes a walk-cache invalidation), sharing one command queue. After
    /// its own flush no thread's range translates any more, nothing cached
    /// outlives its change, and every table page comes back with the domain:
    /// no flush freed another thread's unlinked table before its TLBI.
    #[test]
    fn hw_cpus_map_and_unmap_disjoint_ranges_of_one_domain_at_once() {
        let rig = rig();
        let mut unit = unit(&rig);
        // The stream's level-2 stream table exists from here on.
        let blocked = unit.alloc_domain(DomainKind::Blocked).unwrap();
        unit.attach(DeviceId(8), blocked).unwrap();
        let before = rig.dma.live();
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        assert!(unit.shares_mapping());
        iommu_kit::fakes::map_and_unmap_from_four_threads(&unit, domain, 200, |iova| {
            rig.model.translate(8, iova).map(|e| e.leaf.output)
        });
        if let Err(stale) = rig.model.check_no_stale_cache(&[8]) {
            panic!("after the threads: {stale}");
        }
        unit.attach(DeviceId(8), blocked).unwrap();
        unit.free_domain(domain).unwrap();
        assert_eq!(rig.dma.live(), before, "a table page was lost or kept");
    }

    /// Issue 20: with two unmaps' tables unlinked, the flush of one frees
    /// that one's table pages alone; the other's wait for its own TLBI (the
    /// SMMU may still walk them through its walk cache, §3.21.2).
    #[test]
    fn hw_a_flush_frees_only_the_table_pages_inside_its_range() {
        let rig = rig();
        let mut unit = unit(&rig);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        let (a, b, len) = (0x4000_0000u64, 0x4040_0000u64, 0x20_0000u64);
        for iova in [a, b] {
            let gather = unit.map(domain, iova, 0x8000_1000, len, RW).unwrap();
            unit.flush(domain, &gather).unwrap();
        }
        let unmapped_a = unit.unmap(domain, a, len).unwrap();
        let unmapped_b = unit.unmap(domain, b, len).unwrap();
        let live = rig.dma.live();
        unit.flush(domain, &unmapped_b).unwrap();
        assert_eq!(rig.dma.live(), live - 1, "b's table alone is freed");
        unit.flush(domain, &unmapped_a).unwrap();
        assert_eq!(rig.dma.live(), live - 2, "then a's");
    }

    /// Issue 16, freeing after a failed invalidation: a flush whose CMD_SYNC
    /// never completed did not confirm its range, so the next flush of the
    /// domain, even for an unrelated range, invalidates the whole ASID before
    /// the table pages the first unmap unlinked may be freed.
    #[test]
    fn hw_a_failed_flush_is_made_good_by_the_next_before_anything_is_freed() {
        let rig = rig();
        let mut unit = unit(&rig);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        for iova in [0x10_0000, 0x20_0000] {
            let gather = unit.map(domain, iova, 0x8000_0000, 0x1000, RW).unwrap();
            unit.flush(domain, &gather).unwrap();
        }
        let first = unit.unmap(domain, 0x10_0000, 0x1000).unwrap();
        unit.hardware.shutdown().unwrap();
        assert_eq!(unit.flush(domain, &first), Err(IommuError::Timeout));
        unit.hardware.restart().unwrap();
        let asid_wide = |log: &[[u64; 2]]| {
            log.iter()
                .any(|c| (c[0] & 0xFF) as u8 == crate::command::opcode::TLBI_NH_ASID)
        };
        let skip = rig.model.log.borrow().len();
        let second = unit.unmap(domain, 0x20_0000, 0x1000).unwrap();
        unit.flush(domain, &second).unwrap();
        assert!(
            asid_wide(&since(&rig, skip)),
            "the flush after a failed one did not invalidate the whole ASID"
        );
        let gather = unit
            .map(domain, 0x30_0000, 0x8000_0000, 0x1000, RW)
            .unwrap();
        unit.flush(domain, &gather).unwrap();
        let skip = rig.model.log.borrow().len();
        let third = unit.unmap(domain, 0x30_0000, 0x1000).unwrap();
        unit.flush(domain, &third).unwrap();
        assert!(!asid_wide(&since(&rig, skip)));
    }

    /// Issue 16, the strict model's caches (SMMUv3 §4.3.1-§4.3.4, §4.4,
    /// §16.2; Linux `arm_smmu_tlb_inv_range_domain`, `arm_smmu_sync_cd`):
    /// before every operation the model translates everything the streams
    /// could reach (STEs, CDs, TLB entries per leaf of both stages, the walk
    /// caches); after it, no cached item may disagree with memory. Stage 1 in
    /// every granule with and without range invalidation, and stage 2: leaves
    /// removed one by one, a last-level table freed, a block replaced by a
    /// table, a switch, a freed ASID or VMID reused, a detach.
    #[test]
    fn hw_no_cached_cd_tlb_entry_or_walk_outlives_its_change() {
        use crate::Granule;
        let variants = [
            ("stage 1, 4K", IDR[0], IDR[3], Granule::K4),
            ("stage 1, 4K, RIL", IDR[0], IDR[3] | 1 << 14, Granule::K4),
            ("stage 1, 16K", IDR[0], IDR[3], Granule::K16),
            ("stage 1, 64K, RIL", IDR[0], IDR[3] | 1 << 14, Granule::K64),
            ("stage 2, 4K", IDR[0] & !0b10, IDR[3], Granule::K4),
            (
                "stage 2, 16K, RIL",
                IDR[0] & !0b10,
                IDR[3] | 1 << 14,
                Granule::K16,
            ),
        ];
        for (name, idr0, idr3, granule) in variants {
            let rig = rig();
            rig.model.write(regs::IDR0.0, idr0);
            rig.model.write(regs::IDR3.0, idr3);
            let mut unit = unit(&rig);
            unit.set_granule(granule).unwrap();
            let page = granule.size();
            // What one last-level table covers: the block size one level up.
            let block = page << (page.trailing_zeros() - 3);
            // Both clear of the MSI doorbell the unit maps at 0x0802_0000.
            let (small, big, whole) = (0x100_0000, 256 * block, 512 * block);
            let probes = [
                whole,
                whole + block - page,
                small,
                small + page,
                small + 3 * page,
                big,
                big + page,
                big + block - page,
            ];
            const STREAMS: [u32; 2] = [8, 16];
            let model = rig.model.clone();
            let step = |unit: &mut SmmuUnit<'static>,
                        what: &str,
                        op: &mut dyn FnMut(&mut SmmuUnit<'static>)| {
                for sid in STREAMS {
                    for iova in probes {
                        model.translate(sid, iova);
                    }
                }
                op(unit);
                if let Err(stale) = model.check_no_stale_cache(&STREAMS) {
                    panic!("{name}, after {what}: {stale}");
                }
            };
            let map = |unit: &mut SmmuUnit<'static>, domain, iova, phys, len| {
                let gather = unit
                    .map(domain, iova, phys, len, RW)
                    .unwrap_or_else(|e| panic!("{name}: map {iova:#x}+{len:#x}: {e:?}"));
                unit.flush(domain, &gather).unwrap();
            };
            let unmap = |unit: &mut SmmuUnit<'static>, domain, iova, len| {
                let gather = unit.unmap(domain, iova, len).unwrap();
                unit.flush(domain, &gather).unwrap();
            };
            let a = unit.alloc_domain(DomainKind::Paging).unwrap();
            step(&mut unit, "attach", &mut |unit| {
                unit.attach(DeviceId(8), a).unwrap()
            });
            assert!(
                model.translate(8, small).is_none(),
                "{name}: an empty table translated"
            );
            step(&mut unit, "first maps", &mut |unit| {
                map(unit, a, small, 0x8000_0000, page);
                map(unit, a, small + page, 0x8000_0000 + 5 * page, page);
                map(unit, a, small + 3 * page, 0x8000_0000 + 9 * page, page);
            });
            assert!(
                model.translate(8, small + page).is_some() && !model.walks.borrow().is_empty(),
                "{name}: the model walked nothing"
            );
            step(&mut unit, "a block map", &mut |unit| {
                map(unit, a, big, 4 * block, block)
            });
            step(&mut unit, "one leaf unmapped", &mut |unit| {
                unmap(unit, a, small + page, page)
            });
            step(&mut unit, "the last-level table emptied", &mut |unit| {
                unmap(unit, a, small, page);
                unmap(unit, a, small + 3 * page, page);
            });
            step(&mut unit, "pages filling a last-level table", &mut |unit| {
                // Not block-aligned physically: pages only, in one table.
                map(unit, a, whole, 0x8000_0000 + page, block)
            });
            step(
                &mut unit,
                "that whole table unmapped and freed",
                &mut |unit| unmap(unit, a, whole, block),
            );
            step(&mut unit, "the block unmapped", &mut |unit| {
                unmap(unit, a, big, block)
            });
            step(&mut unit, "pages where it was", &mut |unit| {
                map(unit, a, big, 0x9000_0000, page);
                map(unit, a, big + page, 0x9000_0000 + 3 * page, page);
            });
            let b = unit.alloc_domain(DomainKind::Paging).unwrap();
            step(&mut unit, "a switch to another domain", &mut |unit| {
                map(unit, b, small, 0xA000_0000, page);
                unit.attach(DeviceId(8), b).unwrap();
            });
            step(
                &mut unit,
                "the first domain freed, its tag reused",
                &mut |unit| {
                    unit.free_domain(a).unwrap();
                    let c = unit.alloc_domain(DomainKind::Paging).unwrap();
                    map(unit, c, small, 0xB000_0000, page);
                    map(unit, c, big, 0xB000_0000 + 2 * page, page);
                    unit.attach(DeviceId(16), c).unwrap();
                },
            );
            step(&mut unit, "a detach", &mut |unit| unit.detach(DeviceId(8)));
        }
    }

    /// Issue 16, wasted work: a map fills only invalid entries, which the
    /// SMMU never caches, so it owes no TLBI and no CMD_SYNC (Linux
    /// `arm_smmu_map_pages` issues none); an unmap still owes both.
    #[test]
    fn hw_a_map_owes_no_invalidation_and_an_unmap_does() {
        let rig = rig();
        let mut unit = unit(&rig);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        let before = unit.hardware.counters();
        let gather = unit
            .map(domain, 0x10_0000, 0x8000_0000, 0x20_0000, RW)
            .unwrap();
        assert!(gather.is_empty(), "a map's gather: {gather:?}");
        unit.flush(domain, &gather).unwrap();
        assert_eq!(unit.hardware.counters().since(&before).commands, 0);
        let gather = unit.unmap(domain, 0x10_0000, 0x20_0000).unwrap();
        unit.flush(domain, &gather).unwrap();
        let cost = unit.hardware.counters().since(&before);
        assert!(cost.tlbi >= 1 && cost.syncs == 1, "unmap cost {cost:?}");
    }

    /// The aperture is what paging domains' tables translate (stage 1: 48
    /// bits, not IDR5.OAS), and a map just past it is refused; the page
    /// sizes are the current granule's leaves, not every granule IDR5 offers.
    #[test]
    fn info_reports_what_paging_domains_accept() {
        let rig = rig();
        let mut unit = unit(&rig);
        let info = unit.info();
        assert_eq!(info.aperture, IovaRange::from_len(0, 1 << 48).unwrap());
        assert_eq!(info.page_sizes, (1 << 12) | (1 << 21) | (1 << 30));
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        let beyond = info.aperture.last + 1;
        assert_eq!(
            unit.map(domain, beyond, 0x8000_0000, 4096, RW),
            Err(IommuError::Invalid)
        );
        let last_page = info.aperture.last + 1 - 4096;
        assert!(unit.map(domain, last_page, 0x8000_0000, 4096, RW).is_ok());
        unit.set_granule(crate::Granule::K64).unwrap();
        assert_eq!(unit.info().page_sizes, (1 << 16) | (1 << 29));
    }

    #[test]
    fn paging_domain_attach_map_unmap_flush() {
        let rig = rig();
        let mut unit = unit(&rig);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        let ste = unit.hardware.read_ste(8).unwrap();
        assert_eq!(ste.config(), Some(StreamConfig::Stage1));
        // The CD the STE names is valid and carries ASID 1.
        let cd_ptr = (ste.0[0] & (((1 << 52) - 1) & !0x3F)) as *const u64;
        // SAFETY: the CD the driver allocated from HostDma.
        let cd0 = unsafe { *cd_ptr };
        assert_ne!(cd0 & (1 << 31), 0, "CD.V");
        assert_eq!(cd0 >> 48, 1, "CD.ASID");
        let gather = unit
            .map(domain, 0x10_0000, 0x4000_0000, 0x4000, RW)
            .unwrap();
        unit.flush(domain, &gather).unwrap();
        let skip = rig.model.log.borrow().len();
        let gather = unit.unmap(domain, 0x10_0000, 0x4000).unwrap();
        assert_eq!((gather.start, gather.last), (0x10_0000, 0x10_3FFF));
        unit.flush(domain, &gather).unwrap();
        let log = since(&rig, skip);
        assert_eq!(log.len(), 2, "one ranged TLBI + one CMD_SYNC: {log:x?}");
        assert_eq!(
            log[0],
            Command::TlbiNhVa {
                vmid: 0,
                asid: 1,
                addr: 0x10_0000,
                leaf: true,
                range: Some(crate::command::TlbiRange {
                    granule: crate::Granule::K4,
                    num: 0,
                    scale: 2
                })
            }
            .encode()
            .0
        );
        assert_eq!(unit.free_domain(domain), Err(IommuError::Busy));
        unit.detach(DeviceId(8));
        assert_eq!(unit.hardware.read_ste(8).unwrap(), Ste::abort());
        assert_eq!(unit.free_domain(domain), Ok(()));
        assert_eq!(unit.free_domain(domain), Err(IommuError::Invalid));
    }

    /// Issue 16 (SMMUv3 §5.2 S1STALLD, §6.3.1 STALL_MODEL): a task that owns
    /// its CD (nesting) could set CD.S and stall its device's faulting
    /// transactions, which this kernel never resumes. Where stalls are optional
    /// (STALL_MODEL 0b00) every stage-1 STE forbids them; where the SMMU cannot
    /// stall (QEMU: 0b01) the bit is ILLEGAL and stays clear (Linux
    /// `arm_smmu_make_cdtable_ste`).
    #[test]
    fn hw_stage1_stes_forbid_stalls_where_the_smmu_could_stall() {
        for (stall_model, forbidden) in [(0b00, true), (0b01, false)] {
            let rig = rig();
            let idr0 = IDR[0] & !(0b11 << 24) | stall_model << 24;
            rig.model.write(regs::IDR0.0, idr0);
            let mut unit = unit(&rig);
            let parent = unit.alloc_domain(DomainKind::NestParent).unwrap();
            let nested = unit
                .alloc_domain(DomainKind::Nested {
                    parent,
                    data: NestedData::ArmSmmuV3 {
                        ste: [0x4123_4000 | (0b101 << 1) | 1, 0],
                    },
                })
                .unwrap();
            let own = unit.alloc_domain(DomainKind::Paging).unwrap();
            unit.attach(DeviceId(0x10), nested).unwrap();
            unit.attach(DeviceId(0x18), own).unwrap();
            for sid in [0x10, 0x18] {
                let ste = unit.hardware.read_ste(sid).unwrap();
                assert_eq!(
                    ste.stalls_disabled(),
                    forbidden,
                    "STALL_MODEL {stall_model}"
                );
            }
        }
    }

    /// Issue 16 (SMMUv3 §3.21.3, §4.3.1): an attach whose queue hung after
    /// the CFGI_STE but before the CMD_SYNC leaves the SMMU holding the new
    /// STE, whatever the driver then writes to memory. The abort it writes is
    /// followed by its own CFGI_STE, so once the queue moves again no
    /// completed CMD_SYNC leaves a stale entry (a device translating through
    /// a domain it is not attached to, whose tables may be freed).
    #[test]
    fn hw_a_failed_attach_leaves_no_stale_ste_cached() {
        let rig = rig();
        let mut unit = unit(&rig);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        // A neighbour brings the level-2 table: the attach below is one
        // CFGI_STE and its CMD_SYNC, and the queue hangs between the two.
        let neighbour = unit.alloc_domain(DomainKind::Blocked).unwrap();
        unit.attach(DeviceId(9), neighbour).unwrap();
        rig.model.fetch_ste(8);
        rig.model.commands_until_hang.set(Some(1));
        assert_eq!(unit.attach(DeviceId(8), domain), Err(IommuError::Timeout));
        assert_eq!(unit.domain_of(8), None);
        rig.model.commands_until_hang.set(None);
        unit.hardware.sync().unwrap();
        assert_eq!(rig.model.stale_stes(), Vec::<u32>::new());
        // Abort reads only word 0; the others may hold the half-written target.
        assert_eq!(rig.model.fetch_ste(8)[0], Ste::abort().0[0]);
        unit.free_domain(domain).unwrap();
    }

    /// Issue 20: a caller waits for its own CMD_SYNC, not for the queue to
    /// drain. A's batch and CMD_SYNC complete; B's, queued after it, never
    /// do (the queue hangs behind A's): A's wait still ends, B's times out.
    #[test]
    fn each_caller_waits_for_its_own_cmd_sync_only() {
        let rig = rig();
        let unit = unit(&rig);
        rig.model.commands_until_hang.set(Some(2));
        let a = unit
            .hardware
            .queue(&[Command::TlbiNsnhAll, Command::Sync])
            .unwrap();
        let b = unit.hardware.queue(&[Command::Sync]).unwrap();
        assert_eq!(unit.hardware.wait_cmdq_consumed(a), Ok(()));
        assert_eq!(
            unit.hardware.wait_cmdq_consumed(b),
            Err(Error::Timeout("CMD_SYNC"))
        );
    }

    /// Issue 16 (SMMUv3 §4.3.2, §3.21.3): when the queue hung with no room,
    /// even the abort's own CFGI_STE cannot be queued. The SMMU may have
    /// fetched the entry half-way through the update (it may fetch an STE at
    /// any time); the driver then owes a CFGI_ALL, which leads the next
    /// submission, so the first CMD_SYNC to complete after the queue moves
    /// again leaves no stale entry cached.
    #[test]
    fn hw_an_abort_whose_cfgi_cannot_be_queued_is_made_good_by_cfgi_all_first() {
        let rig = rig();
        let mut unit = unit(&rig);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        let neighbour = unit.alloc_domain(DomainKind::Blocked).unwrap();
        unit.attach(DeviceId(9), neighbour).unwrap();
        // The queue stops and fills up: nothing more can be queued.
        rig.model.commands_until_hang.set(Some(0));
        let filler = std::vec![Command::Sync; (1 << 8) + 1];
        assert!(matches!(
            unit.hardware.submit(&filler),
            Err(Error::Timeout(_))
        ));
        assert_eq!(unit.attach(DeviceId(8), domain), Err(IommuError::Timeout));
        // What the SMMU fetched half-way through the update, before the abort.
        let half_way = rig.model.ste_in_memory(9);
        rig.model.ste_cache.borrow_mut().insert(8, half_way);
        assert_eq!(rig.model.stale_stes(), std::vec![8]);
        rig.model.log.borrow_mut().clear();
        rig.model.commands_until_hang.set(None);
        unit.hardware.sync().unwrap();
        assert_eq!(rig.model.stale_stes(), Vec::<u32>::new());
        let log = rig.model.log.borrow();
        let first_cfgi_all = log
            .iter()
            .position(|command| *command == Command::CFGI_ALL.encode().0);
        let last_sync = log
            .iter()
            .rposition(|command| (command[0] & 0xFF) as u8 == crate::command::opcode::CMD_SYNC);
        assert!(
            first_cfgi_all.is_some() && first_cfgi_all < last_sync,
            "CFGI_ALL before the last CMD_SYNC: {:?}",
            opcodes(&log)
        );
        drop(log);
        unit.free_domain(domain).unwrap();
    }

    /// Issue 16, coherence (SMMUv3 §6.3.1 COHACC, §6.3.11 CR1, §5.2/§5.4 walk
    /// attributes; Linux `ARM_SMMU_FEAT_COHERENCY`, io-pgtable
    /// `coherent_walk`): an SMMU that does not snoop reads DRAM. Without cache
    /// maintenance it is refused; with it, every line it reads (stream table,
    /// STE, CD, command slots, page-table entries) is written back before it
    /// may look, every event record is read only after the CPU's copy was
    /// dropped, and its own accesses are non-cacheable, outer shareable.
    #[test]
    fn hw_a_non_coherent_smmu_reads_only_what_was_written_back() {
        use iommu_kit::fakes::maintenance::{self, covers};
        let rig = rig();
        rig.model
            .write(regs::IDR0.0, IDR[0] & !regs::Idr0::COHACC.bits());
        assert!(matches!(
            smmu_with(&rig, StreamTableFormat::TwoLevel, None),
            Err(Error::Unsupported(_))
        ));
        maintenance::take_cleaned();
        // From here the model reads the stream table and the command queue
        // from memory: only what the driver wrote back.
        rig.model.reads_memory.set(true);
        let smmu = smmu_with(
            &rig,
            StreamTableFormat::TwoLevel,
            Some(maintenance::RECORDING),
        )
        .unwrap();
        assert_eq!(
            rig.model.read(regs::CR1.0),
            regs::cr1::for_walk(regs::Walk::NonCoherent)
        );
        let mut unit = SmmuUnit::new(
            smmu,
            rig.dma,
            UnitId(0),
            IovaRange::from_len(0x0802_0000, 0x1000),
        );
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        let ste = unit.hardware.read_ste(8).unwrap();
        // The SMMU finds the STE the CPU wrote (its level-1 descriptor too),
        // and every command it consumed was whole (a slot never written back
        // reads as all ones: an illegal opcode, and the attach's CMD_SYNC
        // would never have completed).
        assert_eq!(rig.model.fetch_ste(8), ste.0);
        let cleaned = maintenance::take_cleaned();
        assert!(
            covers(&cleaned, unit.hardware.ste_phys(8).unwrap(), 64),
            "STE"
        );
        // CD fetch attributes: non-cacheable (S1CIR/S1COR = 0), outer shareable.
        assert_eq!((ste.0[1] >> 2) & 0x3F, 0b10_00_00);
        let cd_phys = ste.0[0] & (((1 << 52) - 1) & !0x3F);
        assert!(covers(&cleaned, cd_phys, 64), "CD");
        // SAFETY: the CD lies in memory the driver allocated (phys == virt).
        let cd0 = unsafe { *(cd_phys as *const u64) };
        assert_eq!((cd0 >> 8) & 0x3F, 0b10_00_00, "TTB0 walk attributes");
        let cmdq = unit.hardware.command_queue_phys();
        assert!(covers(&cleaned, cmdq, 16), "command slots");
        unit.map(domain, 0x4000_0000, 0x8000_0000, 0x1000, RW)
            .unwrap();
        assert!(
            maintenance::take_cleaned().len() >= 2,
            "new tables and the leaf written back"
        );
        // Nesting is off: the SMMU would read task-owned CDs and tables from
        // DRAM, and a task cannot clean its own cache lines.
        assert!(unit.info().nesting.is_none());
        assert_eq!(
            unit.alloc_domain(DomainKind::NestParent),
            Err(IommuError::Unsupported)
        );
        let eventq = unit.hardware.event_queue_phys();
        maintenance::take_invalidated();
        rig.model
            .inject_event([0x10 | (8 << 32), 0, 0x4000_0000, 0]);
        unit.hardware.drain_events();
        assert!(
            covers(&maintenance::take_invalidated(), eventq, 32),
            "event record read from the cache"
        );
    }

    /// Issue 17, dirty tracking (SMMUv3 §6.3.1 IDR0.HTTU, §5.4 CD.HA/HD,
    /// ARM ARM D8.4.6 DBM; Linux `arm_smmu_read_and_clear_dirty`): only an
    /// SMMU with HTTU = 0b10 tracks, for stage-1 domains, whose CD sets HA
    /// and HD and whose writable leaves carry DBM. As Linux, a new writable
    /// leaf starts dirty; once cleared (writable-clean) it is reported again
    /// only after the model's device writes through it.
    #[test]
    fn hw_dirty_tracking_uses_httu_and_dbm() {
        let plain = rig();
        assert!(!unit(&plain).dirty_tracking());
        let rig = rig();
        rig.model.write(regs::IDR0.0, IDR[0] | 0b10 << 6);
        let mut unit = unit(&rig);
        assert!(unit.dirty_tracking());
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.set_dirty_tracking(domain, true).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        let ste = unit.hardware.read_ste(8).unwrap();
        let cd_phys = ste.0[0] & (((1 << 52) - 1) & !0x3F);
        // SAFETY: the CD lies in memory the driver allocated (phys == virt).
        let cd0 = unsafe { *(cd_phys as *const u64) };
        assert_eq!(cd0 & (0b11 << 42), 0b11 << 42, "CD.HA and CD.HD");
        let iova = 0x4000_0000;
        let gather = unit.map(domain, iova, 0x8000_0000, 0x2000, RW).unwrap();
        unit.flush(domain, &gather).unwrap();
        let dirty = |unit: &mut SmmuUnit<'_>, keep: bool| {
            let mut seen = Vec::new();
            let gather = unit
                .read_dirty(domain, iova, 0x2000, keep, &mut |at, size| {
                    seen.push((at, size))
                })
                .unwrap();
            (seen, gather)
        };
        // Writable-dirty from the map on (Linux): cleared once.
        let (seen, gather) = dirty(&mut unit, false);
        assert_eq!(seen, [(iova, 0x1000), (iova + 0x1000, 0x1000)]);
        unit.flush(domain, &gather).unwrap();
        assert_eq!(dirty(&mut unit, true).0, []);
        // The device writes the second page: DBM makes it writable-dirty.
        assert!(rig.model.dma_write(8, iova + 0x1800));
        assert_eq!(dirty(&mut unit, true).0, [(iova + 0x1000, 0x1000)]);
        assert_eq!(dirty(&mut unit, false).0, [(iova + 0x1000, 0x1000)]);
        assert_eq!(dirty(&mut unit, true).0, [], "cleared");
        // Stage 2 is not tracked here.
        let parent = unit.alloc_domain(DomainKind::NestParent).unwrap();
        assert_eq!(
            unit.set_dirty_tracking(parent, true),
            Err(IommuError::Invalid)
        );
    }

    /// Issue 17 (Linux `arm_vsmmu_convert_user_cmd`): a vIOMMU's commands
    /// name virtual StreamIDs, which become the StreamIDs their vDEVICEs
    /// bind; TLBI_NH_* and TLBI_NSNH_ALL carry the vIOMMU's VMID whatever the
    /// guest wrote; a virtual StreamID nobody bound, or a stream-table
    /// command, is refused after the commands before it took effect.
    #[test]
    fn viommu_commands_name_virtual_stream_ids_and_are_confined_to_the_vmid() {
        let rig = rig();
        let mut unit = unit(&rig);
        let parent = unit.alloc_domain(DomainKind::NestParent).unwrap();
        // The VMID the parent's stage 2 is tagged with, as a nested STE says.
        let nested = unit
            .alloc_domain(DomainKind::Nested {
                parent,
                data: NestedData::ArmSmmuV3 {
                    ste: [0x4123_4000 | (0b101 << 1) | 1, 0],
                },
            })
            .unwrap();
        unit.attach(DeviceId(0x10), nested).unwrap();
        let vmid = unit.hardware.read_ste(0x10).unwrap().vmid();
        let vdevices = [(0x100, DeviceId(0x10)), (0x200, DeviceId(0x18))];
        let arm = |command: Command| NestedInvalidation::ArmSmmuV3 {
            cmd: command.encode().0,
        };
        let skip = rig.model.log.borrow().len();
        let (done, result) = unit.invalidate_viommu(
            parent,
            &vdevices,
            &[
                arm(Command::CfgiCd {
                    sid: 0x200,
                    ssid: 0,
                    leaf: true,
                }),
                arm(Command::TlbiNhAsid {
                    vmid: 0x7777,
                    asid: 5,
                }),
                NestedInvalidation::ArmSmmuV3 {
                    cmd: [u64::from(opcode::TLBI_NSNH_ALL), 0],
                },
                arm(Command::CfgiCdAll { sid: 0x300 }),
                arm(Command::CfgiCdAll { sid: 0x100 }),
            ],
        );
        assert_eq!((done, result), (3, Err(IommuError::Refused)));
        let log = since(&rig, skip);
        assert_eq!(
            log[..3],
            [
                Command::CfgiCd {
                    sid: 0x18,
                    ssid: 0,
                    leaf: true
                }
                .encode()
                .0,
                Command::TlbiNhAsid { vmid, asid: 5 }.encode().0,
                [u64::from(opcode::TLBI_NH_ALL) | u64::from(vmid) << 32, 0],
            ],
            "virtual StreamID translated, VMID confined"
        );
        assert_eq!(
            opcodes(&log[3..]),
            [opcode::CMD_SYNC],
            "one CMD_SYNC, nothing of the refused command"
        );
        let cfgi_ste = Command::CfgiSte {
            sid: 0x100,
            leaf: true,
        };
        assert_eq!(
            unit.invalidate_viommu(parent, &vdevices, &[arm(cfgi_ste)]),
            (0, Err(IommuError::Refused))
        );
        unit.detach(DeviceId(0x10));
        unit.free_domain(nested).unwrap();
        unit.free_domain(parent).unwrap();
    }

    #[test]
    fn nested_domains_validate_the_guest_ste_and_confine_invalidations() {
        let rig = rig();
        let mut unit = unit(&rig);
        let plain = unit.alloc_domain(DomainKind::Paging).unwrap();
        let parent = unit.alloc_domain(DomainKind::NestParent).unwrap();
        let guest = |word0: u64| DomainKind::Nested {
            parent,
            data: NestedData::ArmSmmuV3 { ste: [word0, 0] },
        };
        let cd_ipa = 0x4123_4000;
        // Bypass config, invalid, substreams, or a parent that is no nest parent.
        assert_eq!(
            unit.alloc_domain(guest(cd_ipa | (0b100 << 1) | 1)),
            Err(IommuError::Invalid)
        );
        assert_eq!(
            unit.alloc_domain(guest(cd_ipa | (0b101 << 1))),
            Err(IommuError::Invalid)
        );
        assert_eq!(
            unit.alloc_domain(guest(cd_ipa | (0b101 << 1) | 1 | (1 << 59))),
            Err(IommuError::Invalid)
        );
        assert_eq!(
            unit.alloc_domain(DomainKind::Nested {
                parent: plain,
                data: NestedData::ArmSmmuV3 {
                    ste: [cd_ipa | (0b101 << 1) | 1, 0]
                },
            }),
            Err(IommuError::Invalid)
        );
        let nested = unit.alloc_domain(guest(cd_ipa | (0b101 << 1) | 1)).unwrap();
        unit.attach(DeviceId(0x10), nested).unwrap();
        let ste = unit.hardware.read_ste(0x10).unwrap();
        assert_eq!(ste.config(), Some(StreamConfig::Nested));
        assert_eq!(ste.0[0] & !0xF, cd_ipa, "S1ContextPtr is the task's CD");
        let vmid = ste.vmid();
        assert_ne!(vmid, 0);
        // A TLBI naming another VMID is rewritten to the parent's.
        let skip = rig.model.log.borrow().len();
        let foreign = Command::TlbiNhAsid {
            vmid: 0x7777,
            asid: 5,
        }
        .encode();
        let cfgi_cd = Command::CfgiCdAll { sid: 0xBEEF }.encode();
        let (done, result) = unit.invalidate_nested(
            nested,
            &[
                NestedInvalidation::ArmSmmuV3 { cmd: foreign.0 },
                NestedInvalidation::ArmSmmuV3 { cmd: cfgi_cd.0 },
            ],
        );
        assert_eq!((done, result), (2, Ok(())));
        let log = since(&rig, skip);
        assert_eq!(
            log[0],
            Command::TlbiNhAsid { vmid, asid: 5 }.encode().0,
            "VMID confined"
        );
        assert_eq!(
            log[2],
            Command::CfgiCdAll { sid: 0x10 }.encode().0,
            "SID confined"
        );
        // Stream table invalidation is the kernel's business.
        let cfgi_ste = Command::CfgiSte { sid: 8, leaf: true }.encode();
        assert_eq!(
            unit.invalidate_nested(nested, &[NestedInvalidation::ArmSmmuV3 { cmd: cfgi_ste.0 }]),
            (0, Err(IommuError::Invalid))
        );
        assert_eq!(
            unit.free_domain(parent),
            Err(IommuError::Busy),
            "nested child"
        );
        unit.detach(DeviceId(0x10));
        unit.free_domain(nested).unwrap();
        unit.free_domain(parent).unwrap();
    }

    #[test]
    fn faults_go_to_the_owning_domain() {
        let rig = rig();
        let mut unit = unit(&rig);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), domain).unwrap();
        for chunk in 0..16u64 {
            rig.model
                .inject_event([(8 << 32) | 0x13, 1 << 41, 0x2000 + 4 * chunk, 0]);
        }
        rig.model.inject_event([(0x10 << 32) | 0x04, 0, 0, 0]);
        let mine = unit.take_domain_faults(domain);
        assert_eq!(mine.len(), 1);
        assert_eq!(
            (mine[0].event.kind, mine[0].count),
            (EventKind::Permission, 16)
        );
        let unowned = unit.take_unowned_faults();
        assert_eq!(unowned.len(), 1);
        let record = crate::fault::fault_record(UnitId(0), &mine[0]);
        assert_eq!(record.reason, FaultReason::Permission);
        assert_eq!(record.iova, 0x2000);
        assert_eq!(record.requester, DeviceId(8));
    }

    #[test]
    fn reserved_region_and_doorbell_mapping() {
        let rig = rig();
        let mut unit = unit(&rig);
        let regions = unit.reserved_regions(DeviceId(8));
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].range.start, 0x0802_0000);
        let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
        // The doorbell page is taken: mapping over it is refused.
        assert_eq!(
            unit.map(domain, 0x0802_0000, 0x4000_0000, 0x1000, RW),
            Err(IommuError::Invalid)
        );
        assert!(unit.info().nesting.is_some());
        unit.free_domain(domain).unwrap();
    }
}

mod lost {
    use super::*;
    use crate::SmmuUnit;
    use crate::fault::LOST_RECORD_CODE;
    use iommu::{DeviceId, DomainKind, FaultReason, IommuUnit, IovaRange, UnitId};

    fn unit(rig: &Rig) -> SmmuUnit<'static> {
        SmmuUnit::new(
            smmu(rig, StreamTableFormat::TwoLevel),
            rig.dma,
            UnitId(0),
            IovaRange::from_len(0x0802_0000, 0x1000),
        )
    }

    fn translation_fault(rig: &Rig, sid: u64, page: u64) {
        rig.model
            .inject_event([(sid << 32) | 0x10, 1 << 41, page * 0x1000, 0]);
    }

    #[test]
    fn an_event_queue_overflow_reaches_every_attached_owner_once() {
        let rig = rig();
        let mut unit = unit(&rig);
        let a = unit.alloc_domain(DomainKind::Paging).unwrap();
        let b = unit.alloc_domain(DomainKind::Paging).unwrap();
        let idle = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), a).unwrap();
        unit.attach(DeviceId(0x10), b).unwrap();
        translation_fault(&rig, 8, 1);
        let prod = rig.model.read(regs::EVENTQ_PROD.0);
        rig.model.write(regs::EVENTQ_PROD.0, prod | (1 << 31));
        unit.collect_faults();
        let mine = unit.take_domain_faults(a);
        assert_eq!(mine.len(), 2, "{mine:?}");
        assert_eq!(mine[0].event.kind, EventKind::Translation);
        assert_eq!(
            mine[1].event.kind,
            EventKind::Lost {
                overflows: 1,
                dropped: 0
            }
        );
        assert_eq!(mine[1].event.sid, 8);
        let theirs = unit.take_domain_faults(b);
        assert_eq!(theirs.len(), 1, "B had no fault but may have lost some");
        assert_eq!(theirs[0].event.sid, 0x10);
        assert!(
            unit.take_domain_faults(idle).is_empty(),
            "no stream attached"
        );
        // Reported once: the next take is clean.
        assert!(unit.take_domain_faults(a).is_empty());
        // Through the contract: one record with the driver's code.
        let prod = rig.model.read(regs::EVENTQ_PROD.0);
        rig.model.write(regs::EVENTQ_PROD.0, prod & !(1 << 31));
        unit.collect_faults();
        let mut out = Vec::new();
        unit.drain_faults(&mut out);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|r| r.reason == FaultReason::Other(LOST_RECORD_CODE))
        );
    }

    #[test]
    fn a_full_domain_queue_counts_what_it_dropped() {
        let rig = rig();
        let mut unit = unit(&rig);
        unit.set_fault_capacity(3);
        let a = unit.alloc_domain(DomainKind::Paging).unwrap();
        unit.attach(DeviceId(8), a).unwrap();
        for page in 0..10 {
            translation_fault(&rig, 8, page);
            // Drained one at a time, as an interrupt-driven owner would.
            unit.collect_faults();
        }
        let faults = unit.take_domain_faults(a);
        assert_eq!(faults.len(), 4);
        let pages: Vec<u64> = faults[..3].iter().map(|f| f.event.input_addr).collect();
        assert_eq!(pages, [0, 0x1000, 0x2000], "the oldest are kept");
        assert_eq!(
            (faults[3].event.kind, faults[3].count),
            (
                EventKind::Lost {
                    overflows: 0,
                    dropped: 7
                },
                7
            )
        );
    }
}

#[test]
fn an_attach_on_a_hung_queue_fails_closed() {
    use iommu::{DeviceId, DomainKind, IommuError, IommuUnit, IovaRange, UnitId};
    let rig = rig();
    let mut unit = crate::SmmuUnit::new(
        smmu(&rig, StreamTableFormat::TwoLevel),
        rig.dma,
        UnitId(0),
        IovaRange::from_len(0x0802_0000, 0x1000),
    );
    let a = unit.alloc_domain(DomainKind::Paging).unwrap();
    let b = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(8), a).unwrap();
    unit.hardware.shutdown().unwrap();
    assert_eq!(unit.attach(DeviceId(8), b), Err(IommuError::Timeout));
    assert_eq!(unit.domain_of(8), None, "attached to neither");
    // Abort reads only word 0; the others may hold the half-written target.
    assert_eq!(unit.hardware.read_ste(8).unwrap().0[0], Ste::abort().0[0]);
    // A cannot go while the queue is hung (its TLBI fails); after a restart
    // both can.
    assert_eq!(unit.free_domain(a), Err(IommuError::Timeout));
    unit.hardware.restart().unwrap();
    assert_eq!(unit.free_domain(a), Ok(()));
    assert_eq!(unit.free_domain(b), Ok(()));
}

/// Issue 16 (SMMUv3 §6.3.1 STALL_MODEL = 0b10): with forced stalls every
/// faulting transaction waits for a CMD_RESUME this kernel never sends, so a
/// device that faults once would hang: such an SMMU is refused at bring-up.
#[test]
fn hw_an_smmu_with_forced_stalls_is_refused() {
    let rig = rig();
    rig.model
        .write(regs::IDR0.0, IDR[0] & !(0b11 << 24) | (0b10 << 24));
    assert!(matches!(
        smmu_with(&rig, StreamTableFormat::TwoLevel, None),
        Err(Error::Unsupported(_))
    ));
}

/// Issue 16 (SMMUv3 §7.5 SFM_ERR): in Service Failure Mode the SMMU no
/// longer promises to translate as configured; the driver turns it off, so
/// every stream aborts through GBPA until a restart (Linux
/// `arm_smmu_gerror_handler` → `arm_smmu_device_disable`).
#[test]
fn hw_service_failure_mode_turns_the_smmu_off() {
    let rig = rig();
    let mut smmu = smmu(&rig, StreamTableFormat::TwoLevel);
    let gerror = rig.model.read(regs::GERROR.0) ^ Gerror::SFM_ERR.bits();
    rig.model.write(regs::GERROR.0, gerror);
    assert!(smmu.handle_global_errors().contains(Gerror::SFM_ERR));
    let cr0 = Cr0::from_bits_retain(rig.model.read(regs::CR0.0));
    assert!(!cr0.contains(Cr0::SMMUEN), "still translating in SFM");
    assert_eq!(
        Gbpa::from_bits_retain(rig.model.read(regs::GBPA.0)) & Gbpa::ABORT,
        Gbpa::ABORT
    );
    assert_eq!(smmu.counters().service_failures, 1);
    smmu.restart().unwrap();
    assert!(Cr0::from_bits_retain(rig.model.read(regs::CR0.0)).contains(Cr0::SMMUEN));
}

/// Issue 16, freeing after a failed invalidation: a detach on a hung queue
/// still leaves the stream aborting and belonging to no domain; the old
/// domain cannot be freed before the queue works again (its TLBI, queued
/// behind the detach's CFGI_STE, would fail), and can be after a restart.
#[test]
fn hw_a_detach_on_a_hung_queue_blocks_and_defers_the_free() {
    use iommu::{DeviceId, DomainKind, IommuError, IommuUnit, IovaRange, UnitId};
    let rig = rig();
    let mut unit = crate::SmmuUnit::new(
        smmu(&rig, StreamTableFormat::TwoLevel),
        rig.dma,
        UnitId(0),
        IovaRange::from_len(0x0802_0000, 0x1000),
    );
    let domain = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DeviceId(8), domain).unwrap();
    unit.hardware.shutdown().unwrap();
    unit.detach(DeviceId(8));
    assert_eq!(unit.domain_of(8), None, "still attached after a detach");
    assert_eq!(unit.hardware.read_ste(8).unwrap().0[0], Ste::abort().0[0]);
    assert_eq!(unit.free_domain(domain), Err(IommuError::Timeout));
    unit.hardware.restart().unwrap();
    assert_eq!(unit.free_domain(domain), Ok(()));
}

mod ids {
    use super::*;
    use crate::SmmuUnit;
    use iommu::{DomainKind, IommuError, IommuUnit, IovaRange, UnitId};

    /// Issue 16: an SMMU without IDR0.ASID16 (and VMID16) compares 8-bit
    /// ASIDs and VMIDs (§6.3.1, §5.4: the upper 8 bits are IGNORED): a driver
    /// that hands out ASID 256 gives a second domain the TLB entries of ASID 0's
    /// and the first's (Linux `arm_smmu_device_hw_probe` sets `asid_bits`
    /// from ASID16). With 8 bits, 255 domains live at once and the next one
    /// is refused; a freed id comes back.
    #[test]
    fn hw_eight_bit_asids_run_out_instead_of_aliasing() {
        let rig = rig();
        let eight_bit = IDR[0] & !(regs::Idr0::ASID16 | regs::Idr0::VMID16).bits();
        rig.model.write(regs::IDR0.0, eight_bit);
        let mut unit = SmmuUnit::new(
            smmu(&rig, StreamTableFormat::TwoLevel),
            rig.dma,
            UnitId(0),
            IovaRange::from_len(0x0802_0000, 0x1000),
        );
        let live: Vec<_> = (0..255)
            .map(|n| {
                unit.alloc_domain(DomainKind::Paging)
                    .unwrap_or_else(|err| panic!("domain {n}: {err:?}"))
            })
            .collect();
        assert_eq!(
            unit.alloc_domain(DomainKind::Paging),
            Err(IommuError::NoMemory)
        );
        unit.free_domain(live[7]).unwrap();
        assert!(unit.alloc_domain(DomainKind::Paging).is_ok());
    }

    /// More domains than there are 16-bit ASIDs, allocated and freed one
    /// after the other: freed ASIDs are reused, so the space never runs out.
    #[test]
    fn freed_asids_are_reused_and_the_id_space_does_not_run_out() {
        let rig = rig();
        let mut unit = SmmuUnit::new(
            smmu(&rig, StreamTableFormat::TwoLevel),
            rig.dma,
            UnitId(0),
            IovaRange::from_len(0x0802_0000, 0x1000),
        );
        let held = unit.alloc_domain(DomainKind::Paging).unwrap();
        for round in 0..(u16::MAX as u32 + 10) {
            let domain = unit
                .alloc_domain(DomainKind::Paging)
                .unwrap_or_else(|err| panic!("round {round}: {err:?}"));
            unit.free_domain(domain).unwrap();
        }
        // The freed ASID was invalidated before reuse: the last free's TLBI
        // names the same ASID as the first one did.
        let log = rig.model.log.borrow();
        let asids: Vec<u64> = log
            .iter()
            .filter(|c| (c[0] & 0xFF) as u8 == opcode::TLBI_NH_ASID)
            .map(|c| c[0] >> 48)
            .collect();
        assert_eq!(asids.len(), u16::MAX as usize + 10, "one TLBI per free");
        // ASID 1 is held; every other domain got ASID 2 back.
        assert!(asids.iter().all(|&a| a == 2), "one ASID recycled");
        drop(log);
        unit.free_domain(held).unwrap();
    }
}

/// Issue 16, ordering (SMMUv3 §3.5: the SMMU consumes up to PROD as soon as
/// it moves): every command is in memory, ordered by a device barrier
/// (`dmb oshst`, not the CPU's `dmb ish`), before CMDQ_PROD moves (Linux
/// `arm_smmu_cmdq_issue_cmdlist`: `dma_wmb()` before the PROD write).
#[test]
fn hw_commands_are_ordered_before_the_producer_index_moves() {
    use iommu_kit::fakes::trace::{Recording, doorbell_after_barrier};
    let rig = rig();
    let smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    let recording = Recording::start();
    smmu.execute(&[Command::TlbiNsnhAll]).unwrap();
    doorbell_after_barrier(&recording.take(), regs::CMDQ_PROD.0).unwrap();
}

/// Issue 16, ordering (SMMUv3 §3.5: the SMMU may overwrite a record once CONS
/// passed it): the records are read before EVENTQ_CONS hands their slots back
/// (Linux `queue_sync_cons_out`: `__iomb()`).
#[test]
fn hw_event_records_are_read_before_the_consumer_index_moves() {
    use iommu_kit::fakes::trace::{Recording, barrier_before};
    use os_services::barrier::Barrier;
    let rig = rig();
    let mut smmu = smmu(&rig, StreamTableFormat::Linear { sid_bits: 8 });
    rig.model
        .inject_event([(8 << 32) | 0x10, 1 << 41, 0x9000, 0]);
    let recording = Recording::start();
    assert_eq!(smmu.drain_events(), 1);
    barrier_before(&recording.take(), regs::EVENTQ_CONS.0, Barrier::IoMb).unwrap();
}
