//! VT-d: what map and unmap cost in invalidation descriptors, wait
//! descriptors and MMIO writes.

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
    println!(
        "vtd: {:?} mode, CAP {cap:#018x} ECAP {ecap:#018x}, caching mode {}, {} invalidation",
        unit.hardware.mode(),
        unit.hardware.cap().caching_mode(),
        if unit.hardware.uses_queued_invalidation() {
            "queued"
        } else {
            "register"
        }
    );
    let Ok(domain) = unit.alloc_domain(::iommu::DomainKind::Paging) else {
        return println!("vtd: no paging domain");
    };
    let Some(frame) = crate::memory::frames::alloc() else {
        return println!("vtd: no frame");
    };
    let prot = ::iommu::Prot {
        read: true,
        write: false,
    };
    for k in [0u32, 4, 9] {
        let pages = 1u64 << k;
        let iova = 0x4000_0000;
        let before = unit.hardware.counters();
        for page in 0..pages {
            if let Ok(gather) = unit.map(domain, iova + page * 4096, frame.phys, 4096, prot) {
                let _ = unit.flush(domain, &gather);
            }
        }
        let map = unit.hardware.counters().since(&before);
        let before = unit.hardware.counters();
        let gather = unit.unmap(domain, iova, pages * 4096);
        let flushed = unit.flush(domain, &gather);
        let unmap = unit.hardware.counters().since(&before);
        println!(
            "vtd: 2^{k:<2} pages: per map {}/{}/{} (invalidations/waits/MMIO writes), unmap {}/{}/{} {:?}",
            map.invalidations / pages,
            map.waits / pages,
            map.mmio_writes / pages,
            unmap.invalidations,
            unmap.waits,
            unmap.mmio_writes,
            flushed
        );
    }
    let _ = unit.free_domain(domain);
    crate::memory::frames::free(frame);
}
