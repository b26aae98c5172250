//! VT-d: what map and unmap cost in invalidation descriptors, wait
//! descriptors, MMIO writes and cache lines written back.

use alloc::string::String;

use crate::iommu::vtd::{Unit, with_unit};
use crate::platform::Platform;

/// Prints what the driver costs per operation (the demo's VT-d figures):
/// invalidation descriptors, wait descriptors and MMIO writes per map and
/// per unmap of an aligned 2^k-page range in a paging domain.
pub fn demo(platform: &Platform) {
    if let Err(err) = with_unit(platform, demo_on) {
        println!("vtd: {err}");
    }
}

fn demo_on(unit: &mut Unit) {
    use ::iommu::IommuUnit;
    let ::iommu::HwInfo::IntelVtd { cap, ecap } = unit.hw_info() else {
        return;
    };
    let mode = match unit.hardware.mode() {
        vtd::Mode::Legacy => "legacy mode (root -> context -> second-stage tables)",
        vtd::Mode::ScalableSecondStage => {
            "scalable mode, second-stage tables (root -> context -> PASID entry -> tables)"
        }
        vtd::Mode::ScalableFirstStage => "scalable mode, first-stage tables in the x86-64 format",
    };
    println!(
        "  the unit: {mode}; CAP {cap:#018x} ECAP {ecap:#018x}; caching mode {}; invalidations through the {}",
        if unit.hardware.cap().caching_mode() {
            "on (not-present entries may be cached: maps are invalidated too)"
        } else {
            "off"
        },
        if unit.hardware.uses_queued_invalidation() {
            "invalidation queue"
        } else {
            "registers"
        }
    );
    match crate::figures::walk::lesson(unit, |unit, domain, iova, visit| {
        unit.walk_mapping(domain, iova, visit)
    }) {
        Ok(text) => print!("{text}"),
        Err(why) => println!("  the mapping lesson failed: {why}"),
    }
    println!(
        "  what map and unmap cost, per page mapped and per unmap of the whole range (invalidation descriptors / wait descriptors / MMIO writes / cache lines written back):"
    );
    for k in [0u32, 4, 9] {
        match costs(unit, k) {
            Ok((map, unmap)) => {
                let pages = 1u64 << k;
                println!(
                    "    {:>3} pages: per map {}/{}/{}/{}, unmap {}/{}/{}/{}",
                    pages,
                    map.invalidations / pages,
                    map.waits / pages,
                    map.mmio_writes / pages,
                    map.cache_lines / pages,
                    unmap.invalidations,
                    unmap.waits,
                    unmap.mmio_writes,
                    unmap.cache_lines
                );
            }
            Err(why) => println!("    {} pages: {why}", 1u64 << k),
        }
    }
}

/// What mapping an aligned `2^k`-page range page by page (each map flushed)
/// and unmapping it in one go cost, in a scratch paging domain.
pub fn costs(unit: &mut Unit, k: u32) -> Result<(vtd::Counters, vtd::Counters), String> {
    use ::iommu::IommuUnit;
    let domain = unit
        .alloc_domain(::iommu::DomainKind::Paging)
        .map_err(|err| alloc::format!("paging domain: {}", crate::figures::error_words(err)))?;
    let frame = crate::memory::frames::alloc().ok_or("no frame")?;
    let prot = ::iommu::Prot {
        read: true,
        write: false,
    };
    let pages = 1u64 << k;
    let iova = 0x4000_0000;
    let before = unit.hardware.counters();
    let mut mapped = Ok(());
    for page in 0..pages {
        mapped = unit
            .map(domain, iova + page * 4096, frame.phys, 4096, prot)
            .and_then(|gather| unit.flush(domain, &gather));
        if mapped.is_err() {
            break;
        }
    }
    let map = unit.hardware.counters().since(&before);
    let before = unit.hardware.counters();
    let flushed = unit
        .unmap(domain, iova, pages * 4096)
        .and_then(|gather| unit.flush(domain, &gather));
    let unmap = unit.hardware.counters().since(&before);
    let freed = unit.free_domain(domain);
    crate::memory::frames::free(frame);
    mapped.map_err(|err| alloc::format!("map: {}", crate::figures::error_words(err)))?;
    flushed.map_err(|err| alloc::format!("flush: {}", crate::figures::error_words(err)))?;
    freed.map_err(|err| alloc::format!("free: {}", crate::figures::error_words(err)))?;
    Ok((map, unmap))
}
