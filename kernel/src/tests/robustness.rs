//! Robustness scenarios written once for every IOMMU, over the same probe as
//! the DMA matrix (`unit_probe.rs`): a hostile device aims at what it must
//! never reach, the unit runs out of table pages in the middle of an
//! operation, a page is handed to a new owner right after its unmap. The
//! vendor-specific robustness (fault-record overflow, rejected and hung
//! command queues, a task's stage-1 over the kernel's stage 2) stays in
//! `robust_vtd.rs`, `robust_amdvi.rs` and `robust_smmuv3.rs`: those are
//! each hardware's own mechanisms.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

use edu::Direction;
use iommu::{Access, DomainHandle, DomainKind, IommuError};
use iommu_kit::{Rationed, Recycled};

use super::unit_probe::*;
use crate::memory::frames;
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "iommu::robust::hostile_dma_at_kernel_memory_is_blocked_both_ways_and_reported",
        run: hostile_dma_at_kernel_memory,
    },
    Test {
        name: "iommu::robust::hostile_dma_at_another_domains_page_is_blocked_both_ways_and_reported",
        run: hostile_dma_at_another_domains_page,
    },
    Test {
        name: "iommu::robust::hostile_dma_at_the_iommus_own_structures_is_blocked_both_ways_and_reported",
        run: hostile_dma_at_the_iommus_own_structures,
    },
    Test {
        name: "iommu::robust::table_pages_running_out_at_every_step_fail_cleanly_leak_nothing_and_recover",
        run: table_pages_running_out_fail_cleanly,
    },
    Test {
        name: "iommu::robust::a_new_leaf_table_on_a_page_filled_with_leaves_by_a_hostile_owner_maps_only_what_was_asked",
        run: a_new_leaf_table_on_a_hostile_page_maps_only_what_was_asked,
    },
    Test {
        name: "iommu::robust::a_page_handed_to_a_new_owner_is_not_reached_once_its_unmap_is_flushed",
        run: a_reused_page_is_not_reached_once_flushed,
    },
    Test {
        name: "iommu::robust::a_flush_on_hung_hardware_times_out_within_its_bound_and_the_retry_works",
        run: a_flush_on_hung_hardware_times_out,
    },
    Test {
        name: "iommu::robust::a_storm_of_faulting_dma_from_both_devices_invents_no_fault_and_leaves_both_working",
        run: a_fault_storm_leaves_both_devices_working,
    },
];

// ---- a hostile device ---------------------------------------------------------

/// What the hostile device's buffer holds: never found in any target.
const HOSTILE: u8 = 0xE1;
/// IOVAs of the hostile device's own two pages: its buffer's source and the
/// page its buffer is read back through.
const IOVA_SOURCE: u64 = 0x0050_0000;
const IOVA_READBACK: u64 = 0x0060_0000;

/// A page of the kernel image (`.rodata`) with a known pattern.
#[repr(align(4096))]
struct KernelPage([u8; 4096]);
static KERNEL_STATIC: KernelPage = KernelPage([0x5A; 4096]);

fn snapshot(phys: u64) -> Vec<u8> {
    (0..DMA_LEN)
        // SAFETY: every target is memory the kernel identity-maps; volatile
        // because a device may have written it.
        .map(|i| unsafe { core::ptr::read_volatile((phys as *const u8).add(i)) })
        .collect()
}

/// Edu A in a paging domain that maps only its buffer's source (HOSTILE
/// bytes, read-only) and a readback page; aims at every target as an IOVA
/// (nothing is mapped there) a write and a read. Each write must leave the
/// target unchanged and each read must give the device zeros, never the
/// target's bytes; each is one fault from the device at that page, where the
/// unit records faults. `targets` names them (and may map into the other
/// domain, device B's, first).
fn hostile(
    platform: &Platform,
    targets: impl FnOnce(
        &mut Scene<'_>,
        DomainHandle,
        DomainHandle,
    ) -> Fallible<Vec<(&'static str, u64)>>,
) -> TestResult {
    scenario(platform, |s| {
        let own = s.paging_domain()?;
        let other = s.paging_domain()?;
        let source = s.frame(HOSTILE)?;
        let readback = s.frame(0)?;
        s.map(own, IOVA_SOURCE, source.phys, 4096, READ_ONLY)?;
        s.map(own, IOVA_READBACK, readback.phys, 4096, READ_WRITE)?;
        s.attach(s.a.id, own)?;
        s.attach(s.b.id, other)?;
        let targets = targets(s, own, other)?;
        let reason = (s.probe.no_leaf_reason)(platform);
        s.faults()?;
        for &(what, phys) in &targets {
            ensure!(phys != 0, "{what}: no address");
            // No driver call between the snapshots: the unit's own
            // structures stay put.
            let before = snapshot(phys);
            ensure!(
                before.iter().any(|&byte| byte != HOSTILE),
                "{what} already holds the hostile bytes"
            );
            dma(&s.a, Direction::ToDevice, IOVA_SOURCE)?;
            dma(&s.a, Direction::ToRam, phys)?;
            ensure!(
                snapshot(phys) == before,
                "the hostile write reached the {what} at {phys:#x}"
            );
            expect_page_fault(s, what, phys, Access::Write, reason)?;
            dma(&s.a, Direction::ToDevice, phys)?;
            expect_page_fault(s, what, phys, Access::Read, reason)?;
            refill(&readback, HOSTILE);
            dma(&s.a, Direction::ToRam, IOVA_READBACK)?;
            ensure!(
                holds(&readback, 0),
                "the device read the {what} at {phys:#x}: {:02x?}",
                &bytes_at(&readback, 0)[..8]
            );
        }
        s.expect_no_fault("the readbacks")?;
        println!(
            "{}: {} hostile targets x 2 directions blocked{}",
            s.probe.vendor,
            targets.len(),
            if s.records_faults() {
                " and reported"
            } else {
                " (this unit records no faults)"
            }
        );
        Ok(())
    })
}

/// One fault from device A at `phys`'s page (VT-d records the page, SMMUv3
/// the byte address): nothing where the unit records no faults.
fn expect_page_fault(
    s: &Scene<'_>,
    what: &str,
    phys: u64,
    access: Access,
    reason: iommu::FaultReason,
) -> Fallible {
    let faults = s.faults()?;
    if !s.records_faults() {
        ensure!(
            faults.is_empty(),
            "{what}: records from a unit that writes none"
        );
        return Ok(());
    }
    let matching = faults.iter().filter(|fault| {
        fault.requester == s.a.id
            && fault.access == access
            && fault.iova & !0xFFF == phys & !0xFFF
            && fault.reason == reason
    });
    ensure_eq!(
        (matching.count(), faults.len()),
        (1, 1),
        format!("{what} {access:?} at {phys:#x}: fault records {faults:x?}")
    );
    Ok(())
}

fn hostile_dma_at_kernel_memory(platform: &Platform) -> TestResult {
    // Kept alive across the scenario: the heap line is a target.
    let heap = Box::new([0x4E_u8; 4096]);
    let heap_address = heap.as_ptr() as u64;
    let outcome = hostile(platform, |s, _, _| {
        let kernel_frame = s.frame(0x3C)?;
        Ok(alloc::vec![
            ("kernel image", KERNEL_STATIC.0.as_ptr() as u64),
            ("kernel heap", heap_address),
            ("kernel frame", kernel_frame.phys),
        ])
    });
    drop(heap);
    outcome
}

/// The other device's domain maps its page at IOVA = PA (as a task's pinned
/// page would be): the address is live there, so the block is the domains'
/// doing, not a dead address (the control DMA shows it).
fn hostile_dma_at_another_domains_page(platform: &Platform) -> TestResult {
    hostile(platform, |s, _, other| {
        let page = s.frame(UNTOUCHED)?;
        s.map(other, page.phys, page.phys, 4096, READ_WRITE)?;
        dma(&s.b, Direction::ToRam, page.phys)?;
        ensure!(
            !holds(&page, UNTOUCHED),
            "control: the other device's own DMA did not land"
        );
        s.expect_no_fault("the other device's own DMA")?;
        refill(&page, 0xB6);
        Ok(alloc::vec![("other domain's page", page.phys)])
    })
}

fn hostile_dma_at_the_iommus_own_structures(platform: &Platform) -> TestResult {
    hostile(platform, |s, own, other| {
        let devices = [s.a.id, s.b.id];
        (s.probe.structures)(s.platform, &devices, &[own, other])
    })
}

// ---- running out of table pages -------------------------------------------------

/// The kernel's DMA memory, rationed on demand.
static RATIONED: Rationed = Rationed::new(&crate::memory::dma::DMA);

/// An IOVA in a 256 GiB region of its own: its first map needs a new table
/// page at every level below the root. Below 2^39: QEMU's stage-2 walk never
/// reaches the second table of a concatenated root (docs/QEMU.md §3).
const IOVA_FAR: u64 = 0x40_0000_0000;

/// Allocate a paging domain, attach device A and map two pages at a fresh
/// IOVA, with the unit's table memory allowed 0, 1, 2, … more allocations,
/// until the whole operation succeeds (a fail-nth sweep). Every shortfall
/// must fail with `NoMemory`, leave the device unable to reach the target,
/// and give back everything it took; the first full success carries DMA.
fn table_pages_running_out_fail_cleanly(platform: &Platform) -> TestResult {
    let Some(probe) = probe(platform) else {
        return Ok(Outcome::NotApplicable("no IOMMU in this machine"));
    };
    RATIONED.unlimited();
    (probe.use_table_memory)(platform, &RATIONED)?;
    let outcome = scenario(platform, |s| {
        let source = s.frame(0x42)?;
        let target = s.frame(UNTOUCHED)?;
        for allowed in 0..32 {
            let live = RATIONED.live();
            RATIONED.allow(allowed);
            let attempt = build(s, source.phys, target.phys);
            RATIONED.unlimited();
            match attempt {
                Ok(_) if allowed == 0 => {
                    return Err(
                        "the operation needed no table page: the sweep proves nothing".into(),
                    );
                }
                Ok(domain) => {
                    dma(&s.a, Direction::ToDevice, IOVA_FAR)?;
                    dma(&s.a, Direction::ToRam, IOVA_FAR + 4096)?;
                    if !holds(&target, 0x42) {
                        let faults = s.faults()?;
                        return Err(format!(
                            "DMA after the sweep ({allowed} allocations) did not land: {:x?}, faults {faults:x?}",
                            &bytes_at(&target, 0)[..8]
                        ));
                    }
                    s.expect_no_fault("DMA after the sweep")?;
                    println!(
                        "{}: the operation takes {allowed} table allocations; every shortfall failed cleanly",
                        s.probe.vendor
                    );
                    return release(s, domain);
                }
                Err((failure, domain)) => {
                    ensure_eq!(
                        failure,
                        IommuError::NoMemory,
                        format!("with {allowed} allocations")
                    );
                    // Whatever stood: the device reaches nothing.
                    dma(&s.a, Direction::ToRam, IOVA_FAR + 4096)?;
                    ensure!(
                        holds(&target, UNTOUCHED),
                        "with {allowed} allocations the DMA landed"
                    );
                    s.faults()?;
                    if let Some(domain) = domain {
                        release(s, domain)?;
                    }
                    ensure_eq!(
                        RATIONED.live(),
                        live,
                        format!("table pages left after {allowed} allocations")
                    );
                }
            }
        }
        Err("still failing after 32 allocations".into())
    });
    RATIONED.unlimited();
    let restored = (probe.use_table_memory)(platform, &crate::memory::dma::DMA);
    let outcome = outcome?;
    restored?;
    Ok(outcome)
}

// ---- a table page recycled from a hostile owner ----------------------------------

/// The kernel's DMA memory, its unzeroed pages filled on demand.
static RECYCLED: Recycled = Recycled::new(&crate::memory::dma::DMA);

/// A new leaf table takes a page nobody zeroed: `io-page-table` writes every
/// entry of it before the link (`PageTable::fill_new_leaf_table`), so its
/// page may hold anything. Here it holds, in every entry, the unit's own
/// read-write leaf to a victim page, as a frame a hostile owner filled and
/// freed may. A map of one page into fresh IOVA space must leave the table's
/// other entries empty: DMA to them finds no leaf, the victim stays
/// untouched, and the mapped page still carries DMA.
fn a_new_leaf_table_on_a_hostile_page_maps_only_what_was_asked(platform: &Platform) -> TestResult {
    let Some(probe) = probe(platform) else {
        return Ok(Outcome::NotApplicable("no IOMMU in this machine"));
    };
    RECYCLED.fill_with(None);
    (probe.use_table_memory)(platform, &RECYCLED)?;
    let outcome = scenario(platform, |s| {
        let source = s.frame(0x42)?;
        let target = s.frame(UNTOUCHED)?;
        let victim = s.frame(UNTOUCHED)?;
        let domain = s.paging_domain()?;
        s.map(domain, IOVA_IN, source.phys, 4096, READ_ONLY)?;
        // The unit's own encoding of a read-write leaf to the victim, which
        // then is mapped nowhere.
        s.map(domain, IOVA_OUT, victim.phys, 4096, READ_WRITE)?;
        let hostile_leaf = s.leaf_entry(domain, IOVA_OUT)?;
        s.unmap(domain, IOVA_OUT, 4096)?;

        RECYCLED.fill_with(Some(hostile_leaf));
        let filled = RECYCLED.filled();
        let mapped = s.map(domain, IOVA_FAR, target.phys, 4096, READ_WRITE);
        RECYCLED.fill_with(None);
        mapped?;
        ensure!(
            RECYCLED.filled() > filled,
            "the map took no unzeroed table page: this run proves nothing"
        );

        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToDevice, IOVA_IN)?;
        let reason = (s.probe.no_leaf_reason)(platform);
        // The entries beside the mapped one, and the table's last.
        let last_in_table = IOVA_FAR + (BLOCK - 4096);
        for neighbour in [IOVA_FAR + 4096, last_in_table] {
            dma(&s.a, Direction::ToRam, neighbour)?;
            ensure!(
                holds(&victim, UNTOUCHED),
                "DMA to {neighbour:#x} reached the page the recycled table page named"
            );
            s.expect_fault(
                "DMA beside the mapped page",
                s.a.id,
                neighbour,
                Access::Write,
                reason,
            )?;
        }
        dma(&s.a, Direction::ToRam, IOVA_FAR)?;
        ensure!(
            holds(&target, 0x42),
            "control: DMA to the mapped page did not land: {:x?}",
            &bytes_at(&target, 0)[..8]
        );
        s.expect_no_fault("DMA to the mapped page")
    });
    let restored = (probe.use_table_memory)(platform, &crate::memory::dma::DMA);
    let outcome = outcome?;
    restored?;
    Ok(outcome)
}

/// The operation the sweep rations; on failure, the error and the domain if
/// one was created.
fn build(
    s: &mut Scene<'_>,
    source: u64,
    target: u64,
) -> Result<DomainHandle, (IommuError, Option<DomainHandle>)> {
    let domain = s
        .unit(|unit| unit.alloc_domain(DomainKind::Paging))
        .map_err(|_| (IommuError::Invalid, None))?
        .map_err(|err| (err, None))?;
    let steps = s.unit(|unit| {
        unit.attach(s.a.id, domain)?;
        let gather = unit.map(domain, IOVA_FAR, source, 4096, READ_ONLY)?;
        unit.flush(domain, &gather)?;
        let gather = unit.map(domain, IOVA_FAR + 4096, target, 4096, READ_WRITE)?;
        unit.flush(domain, &gather)
    });
    match steps {
        Ok(Ok(())) => Ok(domain),
        Ok(Err(err)) => Err((err, Some(domain))),
        Err(_) => Err((IommuError::Invalid, Some(domain))),
    }
}

fn release(s: &Scene<'_>, domain: DomainHandle) -> Fallible {
    let device = s.a.id;
    s.unit(|unit| {
        unit.detach(device);
        unit.free_domain(domain)
    })?
    .map_err(|err| format!("free domain: {err:?}"))
}

// ---- a page handed on ------------------------------------------------------------

/// A 2 MiB-aligned IOVA region per round: unmapping the whole region unlinks
/// its last-level table page.
const IOVA_REUSE: u64 = 0x0800_0000;
/// What one last-level table maps with 4 KiB pages.
const LAST_LEVEL_SPAN: u64 = 2 << 20;
/// What the new owner writes into the page.
const NEW_OWNER: u8 = 0x5C;

/// Device A starts a write to a mapped page P (the edu performs it 100 ms
/// later); meanwhile the kernel unmaps the whole region P's last-level table
/// covers, flushes, and hands P to a new owner, who fills it. The write must
/// not land, and the unlinked table page may be freed only by the flush. The
/// control round skips the flush until after the DMA: the cached translation
/// carries the stale write, so the check is one that can fail.
///
/// P changes owner inside the test rather than through `frames::free` and
/// `frames::alloc`: the frame allocator is next-fit, so it would hand P out
/// again only after cycling through all of RAM; taking it over directly is
/// the worst case an allocator could produce.
fn a_reused_page_is_not_reached_once_flushed(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let source = s.frame(0x42)?;
        s.map(domain, IOVA_SOURCE, source.phys, 4096, READ_ONLY)?;
        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToDevice, IOVA_SOURCE)?;
        let reason = (s.probe.no_leaf_reason)(platform);
        for (round, flushed) in [false, true].into_iter().enumerate() {
            let iova = IOVA_REUSE + round as u64 * LAST_LEVEL_SPAN;
            let page = s.frame(UNTOUCHED)?;
            s.map(domain, iova, page.phys, 4096, READ_WRITE)?;
            dma(&s.a, Direction::ToRam, iova)?;
            ensure!(holds(&page, 0x42), "mapped DMA did not land");
            refill(&page, UNTOUCHED);
            s.a.edu
                .start_dma(Direction::ToRam, iova, 0, DMA_LEN, false)
                .map_err(|err| format!("start the DMA: {err:?}"))?;
            let free_mapped = frames::free_count();
            let gather = s.unmap_unflushed(domain, iova, LAST_LEVEL_SPAN)?;
            ensure_eq!(
                frames::free_count(),
                free_mapped,
                "table pages freed before the invalidation"
            );
            if flushed {
                s.flush(domain, &gather)?;
                ensure!(
                    frames::free_count() > free_mapped,
                    "the flush released no table page: the unmap unlinked none"
                );
            }
            // The new owner.
            refill(&page, NEW_OWNER);
            let done =
                s.a.edu
                    .wait_dma()
                    .map_err(|err| format!("the DMA: {err:?}"));
            let intact = holds(&page, NEW_OWNER);
            if !flushed {
                s.flush(domain, &gather)?;
            }
            done?;
            if flushed {
                ensure!(
                    intact,
                    "a DMA in flight reached the page after its unmap was flushed and it changed owner"
                );
                s.expect_fault("the stale write", s.a.id, iova, Access::Write, reason)?;
            } else {
                ensure!(
                    !intact,
                    "control: without the flush the cached translation did not carry the \
                     stale write, so this run proves nothing"
                );
                s.faults()?;
            }
        }
        Ok(())
    })
}

// ---- a fault storm -------------------------------------------------------------

/// Rounds of the storm: each is a faulting write from both devices at once.
const STORM_ROUNDS: usize = 24;
/// The storm drains the unit every this many rounds, as the kernel's
/// scheduler would between task runs.
const DRAIN_EVERY: usize = 8;

/// Both devices, each in its own domain, write to a hole again and again at
/// the same time. Whatever each unit can record (VT-d one record and an
/// overflow bit, AMD-Vi an event log QEMU never writes, SMMUv3 a queue that
/// overflows), no record is invented: each names one of the two devices, a
/// write, at the hole, or reports a loss; and afterwards both devices' mapped
/// DMA lands without a fault. How each hardware counts what it lost is its
/// own test (`robust_vtd.rs`, `robust_amdvi.rs`, `robust_smmuv3.rs`).
fn a_fault_storm_leaves_both_devices_working(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let (domain_a, domain_b) = (s.paging_domain()?, s.paging_domain()?);
        let (page_a, page_b) = (s.frame(UNTOUCHED)?, s.frame(UNTOUCHED)?);
        s.map(domain_a, IOVA_READBACK, page_a.phys, 4096, READ_WRITE)?;
        s.map(domain_b, IOVA_READBACK, page_b.phys, 4096, READ_WRITE)?;
        s.attach(s.a.id, domain_a)?;
        s.attach(s.b.id, domain_b)?;
        let reason = (s.probe.no_leaf_reason)(platform);
        let mut delivered = 0;
        for round in 1..=STORM_ROUNDS {
            for device in [&s.a, &s.b] {
                device
                    .edu
                    .start_dma(Direction::ToRam, IOVA_FAR, 0, DMA_LEN, false)
                    .map_err(|err| format!("round {round}: start: {err:?}"))?;
            }
            for device in [&s.a, &s.b] {
                device
                    .edu
                    .wait_dma()
                    .map_err(|err| format!("round {round}: wait: {err:?}"))?;
            }
            if round % DRAIN_EVERY == 0 {
                for fault in s.faults()? {
                    let from_the_storm = (fault.requester == s.a.id || fault.requester == s.b.id)
                        && fault.access == Access::Write
                        && fault.iova & !0xFFF == IOVA_FAR
                        && fault.reason == reason;
                    let a_loss_report = matches!(fault.reason, iommu::FaultReason::Other(_));
                    ensure!(
                        from_the_storm || a_loss_report,
                        "round {round}: a record the storm did not cause: {fault:x?}"
                    );
                    delivered += usize::from(from_the_storm);
                }
            }
        }
        ensure!(
            delivered <= 2 * STORM_ROUNDS,
            "{delivered} faults delivered for {} faulting DMAs",
            2 * STORM_ROUNDS
        );
        ensure!(
            !s.records_faults() || delivered > 0,
            "a unit that records faults delivered none of the storm's"
        );
        for (device, page) in [(&s.a, &page_a), (&s.b, &page_b)] {
            dma(device, Direction::ToRam, IOVA_READBACK)?;
            ensure!(
                !holds(page, UNTOUCHED),
                "a device's mapped DMA did not land after the storm"
            );
        }
        s.expect_no_fault("mapped DMA after the storm")?;
        println!(
            "{}: {} faulting DMAs in a storm, {delivered} delivered, none invented; both devices work",
            s.probe.vendor,
            2 * STORM_ROUNDS
        );
        Ok(())
    })
}

// ---- hung hardware --------------------------------------------------------------

/// The hardware stops processing its queue behind the driver's back (the
/// probe's `hang`). The unmap's flush must come back with
/// `IommuError::Timeout` within its 100 ms bound, not hang the kernel, and keep
/// what the unmap unlinked until an invalidation succeeds; once the hardware
/// works again the caller's retry of the same flush succeeds, the unmap is
/// seen by the next DMA, and the unit maps again. How each hardware rejects a
/// command is its own test (`robust_*.rs`).
fn a_flush_on_hung_hardware_times_out(platform: &Platform) -> TestResult {
    use os_services::Clock;
    scenario(platform, |s| {
        let (domain, page) = s.copy_through(0x6B, IOVA_SOURCE, IOVA_REUSE)?;
        dma(&s.a, Direction::ToDevice, IOVA_SOURCE)?;
        dma(&s.a, Direction::ToRam, IOVA_REUSE)?;
        ensure!(holds(&page, 0x6B), "DMA before the hang did not land");
        // The whole region of the last-level table: the unmap unlinks it.
        let gather = s.unmap_unflushed(domain, IOVA_REUSE, LAST_LEVEL_SPAN)?;
        let free_unmapped = frames::free_count();
        (s.probe.hang)(platform)?;
        let started = crate::time::CLOCK.now_ns();
        let hung = s.unit(|unit| unit.flush(domain, &gather));
        let waited_ms = (crate::time::CLOCK.now_ns() - started) / 1_000_000;
        let unhung = (s.probe.unhang)(platform);
        let hung = hung?;
        unhung?;
        ensure_eq!(hung, Err(IommuError::Timeout), "flush on hung hardware");
        ensure!(
            (100..1000).contains(&waited_ms),
            "the bounded wait took {waited_ms} ms"
        );
        ensure_eq!(
            frames::free_count(),
            free_unmapped,
            "table pages freed although their invalidation failed"
        );
        s.flush(domain, &gather)?;
        ensure!(
            frames::free_count() > free_unmapped,
            "the retried flush released no table page"
        );
        s.faults()?;
        refill(&page, UNTOUCHED);
        dma(&s.a, Direction::ToRam, IOVA_REUSE)?;
        ensure!(
            holds(&page, UNTOUCHED),
            "the unmap was not invalidated after recovery"
        );
        let reason = (s.probe.no_leaf_reason)(platform);
        s.expect_fault("after recovery", s.a.id, IOVA_REUSE, Access::Write, reason)?;
        s.map(domain, IOVA_REUSE, page.phys, 4096, READ_WRITE)?;
        dma(&s.a, Direction::ToRam, IOVA_REUSE)?;
        ensure!(holds(&page, 0x6B), "DMA after recovery did not land");
        println!(
            "{}: hung hardware: the flush gave up after {waited_ms} ms, the retry worked",
            s.probe.vendor
        );
        Ok(())
    })
}
