//! The `iommu::IommuUnit` contract, checked the same way on every IOMMU
//! (`iommu::contract::*`, over the probe in `unit_probe.rs`): what the unit
//! reports about itself, and that a refused request changes nothing.
//! `drivers/iommu/src/lib.rs` states each rule; these tests hold every driver
//! to it on the hardware QEMU emulates.

use alloc::format;

use edu::Direction;
use iommu::{DeviceId, HwInfo, IommuError, ReservedKind};

use super::unit_probe::*;
use crate::platform::Platform;
use crate::testing::{Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "iommu::contract::the_unit_reports_its_aperture_page_sizes_registers_and_msi_window",
        run: the_unit_reports_itself,
    },
    Test {
        name: "iommu::contract::a_domain_with_a_device_attached_is_busy_until_the_detach",
        run: an_attached_domain_is_busy,
    },
    Test {
        name: "iommu::contract::a_device_the_unit_does_not_know_is_refused",
        run: an_unknown_device_is_refused,
    },
    Test {
        name: "iommu::contract::a_map_over_a_mapping_is_refused_and_the_first_stays",
        run: a_map_over_a_mapping_is_refused,
    },
    Test {
        name: "iommu::contract::a_map_outside_the_aperture_is_refused",
        run: a_map_outside_the_aperture_is_refused,
    },
    Test {
        name: "iommu::contract::unmapping_what_was_never_mapped_changes_nothing",
        run: unmapping_nothing_changes_nothing,
    },
];

const IOVA: u64 = 0x0070_0000;

fn the_unit_reports_itself(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let (info, hw_info, regions) =
            s.unit(|unit| (unit.info(), unit.hw_info(), unit.reserved_regions(s.a.id)))?;
        ensure!(
            info.page_sizes & 0x1000 != 0,
            "no 4 KiB pages: {:#x}",
            info.page_sizes
        );
        ensure!(
            info.aperture.start == 0 && info.aperture.last >= 0xFFFF_FFFF,
            "aperture {:x?} does not cover the low 4 GiB",
            info.aperture
        );
        let registers_named = match hw_info {
            HwInfo::IntelVtd { cap, ecap } => s.probe.vendor == "VT-d" && cap != 0 && ecap != 0,
            HwInfo::AmdVi { efr, .. } => s.probe.vendor == "AMD-Vi" && efr != 0,
            HwInfo::ArmSmmuV3 { idr, .. } => s.probe.vendor == "SMMUv3" && idr[0] != 0,
            _ => false,
        };
        ensure!(registers_named, "{}: hw_info {hw_info:x?}", s.probe.vendor);
        // Every device can signal: the MSI window (x86) or doorbell (Arm) is
        // reserved, inside the aperture, never handed out as IOVA.
        let msi = regions
            .iter()
            .find(|region| region.kind == ReservedKind::Msi);
        let msi = msi.ok_or_else(|| format!("no MSI region among {regions:x?}"))?;
        ensure!(
            info.aperture.start <= msi.range.start && msi.range.last <= info.aperture.last,
            "MSI region {:x?} outside the aperture {:x?}",
            msi.range,
            info.aperture
        );
        Ok(())
    })
}

fn an_attached_domain_is_busy(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        s.attach(s.a.id, domain)?;
        let busy = s.unit(|unit| unit.free_domain(domain))?;
        ensure_eq!(busy, Err(IommuError::Busy), "free of an attached domain");
        // Still there: it carries DMA.
        let source = s.frame(0x31)?;
        s.map(domain, IOVA, source.phys, 4096, READ_ONLY)?;
        dma(&s.a, Direction::ToDevice, IOVA)?;
        s.expect_no_fault("DMA in the domain that refused to go")?;
        s.detach(s.a.id)?;
        s.free_domain(domain)
    })
}

fn an_unknown_device_is_refused(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let stranger = DeviceId(u32::MAX);
        let refused = s.unit(|unit| unit.attach(stranger, domain))?;
        ensure_eq!(
            refused,
            Err(IommuError::Invalid),
            "attach of an unknown device"
        );
        // The domain is not in use: it goes.
        s.free_domain(domain)
    })
}

fn a_map_over_a_mapping_is_refused(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let first = s.frame(0x11)?;
        let second = s.frame(0x22)?;
        let target = s.frame(UNTOUCHED)?;
        s.map(domain, IOVA, first.phys, 4096, READ_ONLY)?;
        s.map(domain, IOVA + 0x1000, target.phys, 4096, READ_WRITE)?;
        let refused = s.unit(|unit| unit.map(domain, IOVA, second.phys, 4096, READ_ONLY))?;
        ensure_eq!(
            refused.map(|_| ()),
            Err(IommuError::Invalid),
            "map over a mapping"
        );
        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToDevice, IOVA)?;
        dma(&s.a, Direction::ToRam, IOVA + 0x1000)?;
        ensure!(holds(&target, 0x11), "the refused map replaced the first");
        s.expect_no_fault("DMA through the first mapping")
    })
}

fn a_map_outside_the_aperture_is_refused(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let page = s.frame(0)?;
        let last = s.unit(|unit| unit.info().aperture.last)?;
        let Some(beyond) = last.checked_add(1) else {
            return Ok(());
        };
        let refused = s.unit(|unit| unit.map(domain, beyond, page.phys, 4096, READ_WRITE))?;
        ensure_eq!(
            refused.map(|_| ()),
            Err(IommuError::Invalid),
            format!("map at {beyond:#x}, past the aperture")
        );
        Ok(())
    })
}

fn unmapping_nothing_changes_nothing(platform: &Platform) -> TestResult {
    scenario(platform, |s| {
        let domain = s.paging_domain()?;
        let page = s.frame(0x44)?;
        s.map(domain, IOVA, page.phys, 4096, READ_ONLY)?;
        let gather = s
            .unit(|unit| unit.unmap(domain, IOVA + 0x10_0000, 4096))?
            .map_err(|err| format!("unmap of nothing: {err:?}"))?;
        ensure!(gather.is_empty(), "an unmap of nothing changed {gather:x?}");
        s.attach(s.a.id, domain)?;
        dma(&s.a, Direction::ToDevice, IOVA)?;
        s.expect_no_fault("DMA through the mapping beside the empty unmap")
    })
}
