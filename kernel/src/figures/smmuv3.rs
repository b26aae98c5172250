//! SMMUv3: what an unmap costs in TLBI commands, CMD_SYNCs and MMIO writes,
//! with and without range invalidation.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use iommu::IommuUnit;

use crate::iommu::smmuv3::{description, with_unit};
use crate::platform::Platform;

/// The cost of one unmap + flush of `2^k` 4 KiB pages, measured on the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapCost {
    pub pages: u64,
    /// Commands the map of the same range and its flush issued (none: a map
    /// owes no invalidation on an SMMU).
    pub map_commands: u64,
    pub tlbi: u64,
    pub syncs: u64,
    pub commands: u64,
    pub mmio_writes: u64,
    /// What the same unmap would cost without IDR3.RIL (the driver's plan).
    pub tlbi_without_ril: u64,
    /// Whether that plan is one ASID/VMID-wide invalidation.
    pub context_wide_without_ril: bool,
}

/// IOVA of the figures' scratch mappings.
const FIGURES_IOVA: u64 = 0x6000_0000;

/// Maps and unmaps aligned `2^k`-page ranges (k in `ks`) in a scratch
/// stage-1/stage-2 domain and counts the commands each unmap + flush issued.
pub fn unmap_costs(platform: &Platform, ks: &[u32]) -> Result<Vec<UnmapCost>, String> {
    let largest = ks.iter().copied().max().unwrap_or(0);
    let run = crate::memory::frames::alloc_contiguous(1 << largest, 4096 << largest)
        .ok_or("no memory for the scratch range")?;
    let result = with_unit(platform, |unit| -> Result<Vec<UnmapCost>, String> {
        unit.set_granule(smmuv3::Granule::K4)
            .map_err(|err| format!("4K: {}", crate::figures::error_words(err)))?;
        let domain = unit
            .alloc_domain(iommu::DomainKind::Paging)
            .map_err(|err| format!("alloc: {}", crate::figures::error_words(err)))?;
        let mut costs = Vec::new();
        let mut failure = None;
        for &k in ks {
            let len = 4096u64 << k;
            // A fresh 4 MiB-aligned slot per size: no table left over from a
            // smaller size forces 4 KiB leaves on a block-sized range.
            let iova = FIGURES_IOVA + (u64::from(k) << 22);
            let before_map = unit.hardware.counters();
            let mapped = unit
                .map(
                    domain,
                    iova,
                    run.phys,
                    len,
                    iommu::Prot {
                        read: true,
                        write: true,
                    },
                )
                .and_then(|gather| unit.flush(domain, &gather));
            if let Err(err) = mapped {
                failure = Some(format!("map 2^{k}: {}", crate::figures::error_words(err)));
                break;
            }
            let map_commands = unit.hardware.counters().since(&before_map).commands;
            let before = unit.hardware.counters();
            let gather = match unit.unmap(domain, iova, len) {
                Ok(gather) => gather,
                Err(err) => {
                    failure = Some(format!("unmap 2^{k}: {}", crate::figures::error_words(err)));
                    break;
                }
            };
            if let Err(err) = unit.flush(domain, &gather) {
                failure = Some(format!("flush 2^{k}: {}", crate::figures::error_words(err)));
                break;
            }
            let after = unit.hardware.counters();
            let tag = match unit.paging_stage() {
                smmuv3::paging::PagingStage::Stage1 => {
                    smmuv3::invalidation::TlbTag::Stage1 { asid: 1, vmid: 0 }
                }
                smmuv3::paging::PagingStage::Stage2 => smmuv3::invalidation::TlbTag::Stage2 {
                    vmid: 1,
                    nest_parent: false,
                },
            };
            let without_ril = smmuv3::invalidation::plan(
                tag,
                smmuv3::invalidation::InvalidationCaps {
                    range: false,
                    granule: smmuv3::Granule::K4,
                },
                &gather,
            );
            costs.push(UnmapCost {
                pages: 1 << k,
                map_commands,
                tlbi: after.tlbi - before.tlbi,
                syncs: after.syncs - before.syncs,
                commands: after.commands - before.commands,
                mmio_writes: after.mmio_writes - before.mmio_writes,
                tlbi_without_ril: without_ril.len() as u64 - 1,
                context_wide_without_ril: matches!(
                    without_ril.first(),
                    Some(smmuv3::Command::TlbiNhAsid { .. } | smmuv3::Command::TlbiS12Vmall { .. })
                ),
            });
        }
        let freed = unit.free_domain(domain);
        if let Some(why) = failure {
            return Err(why);
        }
        freed.map_err(|err| format!("free: {}", crate::figures::error_words(err)))?;
        Ok(costs)
    });
    crate::memory::frames::free(run);
    result?
}

/// What the demo shows: the unit, its ID registers and the command counts.
pub fn demo(platform: &Platform) {
    let Some(description) = description(platform) else {
        println!("smmuv3: none in this machine");
        return;
    };
    let intid = |irq: Option<u32>| irq.map_or(String::from("none"), |id| format!("{id}"));
    println!(
        "  the unit: registers at {:#x}, event queue interrupt {}, global error interrupt {}",
        description.register_base,
        intid(description.eventq.intid()),
        intid(description.gerror.intid())
    );
    let result = with_unit(platform, |unit| {
        let features = *unit.hardware.features();
        let idr: Vec<String> = features.idr.iter().map(|r| format!("{r:#010x}")).collect();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        println!(
            "  IDR0-5 {} IIDR {:#x} AIDR {:#x}; stage 1 {}, stage 2 {}, range invalidation {}, a {} stream table over {} StreamID bits",
            idr.join(" "),
            features.iidr,
            features.aidr,
            yes_no(features.stage1()),
            yes_no(features.stage2()),
            yes_no(features.range_invalidation()),
            if unit.hardware.is_two_level() {
                "2-level"
            } else {
                "linear"
            },
            unit.hardware.sid_bits()
        );
        for region in unit.reserved_regions(iommu::DeviceId(0)) {
            println!(
                "  reserved IOVA {:#x}-{:#x}: {}",
                region.range.start,
                region.range.last,
                match region.kind {
                    iommu::ReservedKind::Msi => "the MSI doorbell, mapped in every domain",
                    iommu::ReservedKind::Direct => "memory firmware keeps DMA going to",
                    iommu::ReservedKind::Reserved => "a hole the hardware cannot translate",
                }
            );
        }
        match crate::figures::walk::lesson(unit, |unit, domain, iova, visit| {
            unit.walk_mapping(domain, iova, visit)
        }) {
            Ok(text) => print!("{text}"),
            Err(why) => println!("  the mapping lesson failed: {why}"),
        }
    });
    if let Err(why) = result {
        println!("  smmuv3: {why}");
        return;
    }
    match unmap_costs(platform, &[0, 1, 4, 5, 9]) {
        Ok(costs) => {
            println!(
                "  what an unmap costs (a map costs nothing: an SMMU never caches an invalid entry):"
            );
            for cost in costs {
                println!(
                    "    {:>3} pages: {} TLBI + {} CMD_SYNC ({} MMIO writes); without range invalidation {} TLBI{}",
                    cost.pages,
                    cost.tlbi,
                    cost.syncs,
                    cost.mmio_writes,
                    cost.tlbi_without_ril,
                    if cost.context_wide_without_ril {
                        " (ASID/VMID-wide)"
                    } else {
                        ""
                    }
                );
            }
        }
        Err(why) => println!("  unmap figures: {why}"),
    }
}
