//! The DMA matrix, written once for every IOMMU: what a device can and cannot
//! reach through the platform's unit, proven by edu DMA. Every scenario drives
//! the unit through the `iommu::IommuUnit` contract, so the same test (same
//! name) runs on VT-d, AMD-Vi and SMMUv3 and a reader compares the vendors on
//! one scenario. What the contract cannot say is the per-vendor [`Probe`]'s:
//! how the unit names a device, which fault a DMA that finds no leaf reports,
//! whether a blocked device's DMA is reported at all (`unit_probe.rs`).
//!
//! Every scenario checks that the frames it used all came back.

use alloc::format;

use edu::Direction;
use iommu::{Access, DomainKind, FaultReason};

use super::unit_probe::*;
use crate::memory::frames::{self, Frames};
use crate::platform::Platform;
use crate::testing::{Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "iommu::dma::an_unattached_device_is_blocked",
        run: an_unattached_device_is_blocked,
    },
    Test {
        name: "iommu::dma::a_blocked_domain_keeps_dma_blocked",
        run: a_blocked_domain_keeps_dma_blocked,
    },
    Test {
        name: "iommu::dma::an_identity_domain_passes_dma_at_physical_addresses_until_detach",
        run: an_identity_domain_passes_dma_until_detach,
    },
    Test {
        name: "iommu::dma::a_mapped_iova_carries_dma_both_ways",
        run: a_mapped_iova_carries_dma_both_ways,
    },
    Test {
        name: "iommu::dma::an_unmapped_iova_is_blocked_and_reported",
        run: an_unmapped_iova_is_blocked_and_reported,
    },
    Test {
        name: "iommu::dma::a_device_write_into_a_read_only_mapping_is_blocked_and_reported",
        run: a_device_write_into_a_read_only_mapping_is_blocked,
    },
    Test {
        name: "iommu::dma::an_unmap_blocks_dma_once_flushed_and_not_before",
        run: an_unmap_blocks_dma_once_flushed,
    },
    Test {
        name: "iommu::dma::remapping_an_iova_is_seen_by_the_next_dma",
        run: remapping_an_iova_is_seen_by_the_next_dma,
    },
    Test {
        name: "iommu::dma::two_devices_in_two_domains_cannot_reach_each_other",
        run: two_devices_in_two_domains_cannot_reach_each_other,
    },
    Test {
        name: "iommu::dma::detach_blocks_dma",
        run: detach_blocks_dma,
    },
    Test {
        name: "iommu::dma::a_2mib_mapping_carries_dma_at_an_offset_inside_it",
        run: a_2mib_mapping_carries_dma_at_an_offset,
    },
    Test {
        name: "iommu::dma::an_iova_above_4gib_works",
        run: an_iova_above_4gib_works,
    },
];

// ---- the scenarios ------------------------------------------------------------

/// A device in no domain reaches nothing, not even memory at its physical
/// address (the state every device is in after bring-up).
fn an_unattached_device_is_blocked(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let target = s.frame(UNTOUCHED)?;
        dma(&s.a, Direction::ToRam, target.phys)?;
        ensure!(
            holds(&target, UNTOUCHED),
            "an unattached device wrote memory"
        );
        s.expect_blocked("unattached", s.a.id, target.phys)
    })
}

fn a_blocked_domain_keeps_dma_blocked(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let target = s.frame(UNTOUCHED)?;
        let Some(blocked) = s.domain(DomainKind::Blocked)? else {
            return Err(format!("{}: no blocked domain", s.probe.vendor));
        };
        s.attach(s.a.id, blocked)?;
        dma(&s.a, Direction::ToRam, target.phys)?;
        ensure!(
            holds(&target, UNTOUCHED),
            "DMA through a blocked domain landed"
        );
        s.expect_blocked("blocked domain", s.a.id, target.phys)?;
        s.detach(s.a.id)?;
        dma(&s.a, Direction::ToRam, target.phys)?;
        ensure!(holds(&target, UNTOUCHED), "DMA after detach landed");
        s.expect_blocked("detached", s.a.id, target.phys)
    })
}

fn an_identity_domain_passes_dma_until_detach(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let Some(identity) = s.domain(DomainKind::Identity)? else {
            // VT-d without ECAP.PT has none; QEMU's offers it.
            return Err(format!("{}: no identity domain", s.probe.vendor));
        };
        let source = s.frame(0x21)?;
        let target = s.frame(UNTOUCHED)?;
        s.attach(s.a.id, identity)?;
        dma(&s.a, Direction::ToDevice, source.phys)?;
        dma(&s.a, Direction::ToRam, target.phys)?;
        ensure!(
            holds(&target, 0x21),
            "DMA at physical addresses did not land"
        );
        s.expect_no_fault("identity DMA")?;
        s.detach(s.a.id)?;
        refill(&target, UNTOUCHED);
        dma(&s.a, Direction::ToRam, target.phys)?;
        ensure!(holds(&target, UNTOUCHED), "DMA after detach landed");
        s.expect_blocked("after detach", s.a.id, target.phys)
    })
}

fn a_mapped_iova_carries_dma_both_ways(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let (_, target) = s.copy_through(0x10, IOVA_IN, IOVA_OUT)?;
        dma(&s.a, Direction::ToDevice, IOVA_IN)?;
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(
            holds(&target, 0x10),
            "bytes read at IOVA_IN did not land at IOVA_OUT"
        );
        s.expect_no_fault("mapped DMA")
    })
}

fn an_unmapped_iova_is_blocked_and_reported(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        // The page next to the hole is mapped: a stray write would land there.
        let neighbour = s.frame(UNTOUCHED)?;
        s.map(domain, IOVA_HOLE + 4096, neighbour.phys, 4096, READ_WRITE)?;
        s.attach(s.a.id, domain)?;
        let reason = (s.probe.no_leaf_reason)(platform);
        dma(&s.a, Direction::ToRam, IOVA_HOLE)?;
        ensure!(
            holds(&neighbour, UNTOUCHED),
            "a write to a hole changed memory"
        );
        s.expect_fault("write to a hole", s.a.id, IOVA_HOLE, Access::Write, reason)?;
        dma(&s.a, Direction::ToDevice, IOVA_HOLE)?;
        s.expect_fault("read from a hole", s.a.id, IOVA_HOLE, Access::Read, reason)
    })
}

/// A fresh mapping, never used before the write: QEMU 10.0.2's SMMUv3 does
/// not record the permission fault of a stage-2 IOTLB hit (docs/QEMU.md §3).
fn a_device_write_into_a_read_only_mapping_is_blocked(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let page = s.frame(UNTOUCHED)?;
        s.map(domain, IOVA_IN, page.phys, 4096, READ_ONLY)?;
        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToRam, IOVA_IN)?;
        ensure!(holds(&page, UNTOUCHED), "a device wrote a read-only page");
        s.expect_fault(
            "write to read-only",
            s.a.id,
            IOVA_IN,
            Access::Write,
            FaultReason::Permission,
        )
    })
}

/// The claim "after unmap and flush a device cannot reach the page" is only
/// shown if the unit cached the translation: so first the control, a DMA
/// between the unmap and its flush that the cached translation still
/// carries (every unit QEMU emulates keeps one), then the flush and a DMA
/// that must be blocked.
fn an_unmap_blocks_dma_once_flushed(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let (domain, target) = s.copy_through(0x44, IOVA_IN, IOVA_OUT)?;
        dma(&s.a, Direction::ToDevice, IOVA_IN)?;
        // This DMA puts the translation into the IOTLB.
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(holds(&target, 0x44), "mapped DMA did not land");
        let gather = s.unmap_unflushed(domain, IOVA_OUT, 4096)?;
        refill(&target, UNTOUCHED);
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(
            holds(&target, 0x44),
            "the unit did not use its cached translation before the flush, so this run \
             cannot show that the flush is what blocks"
        );
        refill(&target, UNTOUCHED);
        s.flush(domain, &gather)?;
        s.faults()?;
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(holds(&target, UNTOUCHED), "DMA after unmap + flush landed");
        let reason = (s.probe.no_leaf_reason)(platform);
        s.expect_fault("after the flush", s.a.id, IOVA_OUT, Access::Write, reason)
    })
}

fn remapping_an_iova_is_seen_by_the_next_dma(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let (domain, target) = s.copy_through(0x10, IOVA_IN, IOVA_OUT)?;
        let new = s.frame(0x32)?;
        dma(&s.a, Direction::ToDevice, IOVA_IN)?;
        s.unmap(domain, IOVA_IN, 4096)?;
        s.map(domain, IOVA_IN, new.phys, 4096, READ_ONLY)?;
        dma(&s.a, Direction::ToDevice, IOVA_IN)?;
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(
            holds(&target, 0x32),
            "the DMA after remapping read the old page: {:x?}",
            &bytes_at(&target, 0)[..8]
        );
        s.expect_no_fault("remapped DMA")
    })
}

fn two_devices_in_two_domains_cannot_reach_each_other(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain_a = s.paging_domain()?;
        let domain_b = s.paging_domain()?;
        let page_a = s.frame(UNTOUCHED)?;
        let page_b = s.frame(UNTOUCHED)?;
        s.map(domain_a, IOVA_OUT, page_a.phys, 4096, READ_WRITE)?;
        s.map(domain_b, IOVA_IN, page_b.phys, 4096, READ_WRITE)?;
        s.attach(s.a.id, domain_a)?;
        s.attach(s.b.id, domain_b)?;
        // b aims at a's IOVA: it is not in b's domain.
        dma(&s.b, Direction::ToRam, IOVA_OUT)?;
        ensure!(holds(&page_a, UNTOUCHED), "device b wrote device a's page");
        let reason = (s.probe.no_leaf_reason)(platform);
        s.expect_fault("b into a", s.b.id, IOVA_OUT, Access::Write, reason)?;
        // a's own DMA still lands.
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(!holds(&page_a, UNTOUCHED), "a's own DMA did not land");
        ensure!(holds(&page_b, UNTOUCHED), "a's DMA reached b's page");
        s.expect_no_fault("a's own DMA")
    })
}

fn detach_blocks_dma(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let target = s.frame(UNTOUCHED)?;
        s.map(domain, IOVA_OUT, target.phys, 4096, READ_WRITE)?;
        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(!holds(&target, UNTOUCHED), "mapped DMA did not land");
        s.detach(s.a.id)?;
        refill(&target, 0x66);
        dma(&s.a, Direction::ToRam, IOVA_OUT)?;
        ensure!(holds(&target, 0x66), "DMA after detach landed");
        s.expect_blocked("after detach", s.a.id, IOVA_OUT)
    })
}

fn a_2mib_mapping_carries_dma_at_an_offset(platform: &Platform) -> TestResult {
    const OFFSET: u64 = 0x12_3000;
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let source = s.frame(0x10)?;
        let block = frames::alloc_contiguous((BLOCK / 4096) as usize, BLOCK as usize)
            .ok_or("no 2 MiB block")?;
        s.frames.push(Frames {
            phys: block.phys,
            count: block.count,
        });
        s.map(domain, IOVA_IN, source.phys, 4096, READ_ONLY)?;
        let gather = s.map(domain, IOVA_BLOCK, block.phys, BLOCK, READ_WRITE)?;
        // Where the map owes an invalidation (VT-d under caching mode,
        // AMD-Vi with NpCache), its gather names the leaf: a 2 MiB block
        // wherever the unit offers 2 MiB pages.
        let offers_block = s.unit(|unit| unit.info().page_sizes & BLOCK != 0)?;
        ensure!(
            gather.is_empty() || !offers_block || gather.leaf_sizes & BLOCK != 0,
            "2 MiB mapping not one block: leaf sizes {:#x}",
            gather.leaf_sizes
        );
        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToDevice, IOVA_IN)?;
        dma(&s.a, Direction::ToRam, IOVA_BLOCK + OFFSET)?;
        let landed = bytes_at(&block, OFFSET as usize);
        ensure!(
            landed.iter().all(|&byte| byte == 0x10),
            "DMA at offset {OFFSET:#x} of the 2 MiB mapping did not land: {:x?}",
            &landed[..8]
        );
        s.unmap(domain, IOVA_BLOCK, BLOCK)?;
        s.expect_no_fault("2 MiB DMA")
    })
}

fn an_iova_above_4gib_works(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let source = s.frame(0x10)?;
        let target = s.frame(UNTOUCHED)?;
        s.map(domain, IOVA_HIGH, source.phys, 4096, READ_ONLY)?;
        s.map(domain, IOVA_HIGH + 0x1000, target.phys, 4096, READ_WRITE)?;
        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToDevice, IOVA_HIGH)?;
        dma(&s.a, Direction::ToRam, IOVA_HIGH + 0x1000)?;
        ensure!(
            holds(&target, 0x10),
            "DMA through an IOVA above 4 GiB did not land"
        );
        s.expect_no_fault("DMA above 4 GiB")
    })
}
