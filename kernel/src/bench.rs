//! Bench mode (`-append bench`): counters measured inside QEMU, printed as
//! `bench NAME VALUE UNIT` lines that `cargo xtask bench` collects. Timing
//! under TCG says little about hardware; counts (commands, descriptors, MMIO
//! writes per operation) are the figures that carry over.

use alloc::format;

use crate::memory::frames;
use crate::platform::Platform;

/// One counter group: runs and reports its figures.
pub struct Bench {
    pub name: &'static str,
    pub run: fn(&Platform),
}

/// Prints one figure in the format the host collects.
pub fn report(name: &str, value: f64, unit: &str) {
    println!("bench {name} {value:.1} {unit}");
}

/// Every bench group, in the order they run.
pub static ALL: &[Bench] = &[
    Bench {
        name: "frames",
        run: frames_alloc_free,
    },
    Bench {
        name: "edu",
        run: edu_dma_latency,
    },
    #[cfg(target_arch = "x86_64")]
    Bench {
        name: "vtd",
        run: vtd_costs,
    },
    #[cfg(target_arch = "x86_64")]
    Bench {
        name: "amdvi",
        run: amdvi_command_counts,
    },
    #[cfg(target_arch = "aarch64")]
    Bench {
        name: "smmuv3",
        run: smmuv3_unmap_counts,
    },
];

/// Runs every group whose name contains `filter` (all without one).
pub fn run_all(platform: &Platform, filter: Option<&str>) -> usize {
    for bench in ALL
        .iter()
        .filter(|bench| filter.is_none_or(|filter| bench.name.contains(filter)))
    {
        (bench.run)(platform);
    }
    0
}

const FRAME_ROUNDS: u32 = 10_000;

fn frames_alloc_free(_: &Platform) {
    let start = crate::arch::now_ns();
    for _ in 0..FRAME_ROUNDS {
        if let Some(frame) = frames::alloc() {
            frames::free(frame);
        }
    }
    let elapsed = crate::arch::now_ns() - start;
    report(
        "frames::alloc_free_4k",
        elapsed as f64 / f64::from(FRAME_ROUNDS),
        "ns",
    );
}

fn edu_dma_latency(platform: &Platform) {
    let Some(device) = crate::devices::edus().next() else {
        return;
    };
    let Ok(edu) = crate::devices::open_edu(platform, device) else {
        return;
    };
    let Some(frame) = frames::alloc() else { return };
    let start = crate::arch::now_ns();
    let done = edu.dma(edu::Direction::ToDevice, frame.phys, 0, edu::BUFFER_SIZE);
    let elapsed = crate::arch::now_ns() - start;
    frames::free(frame);
    if done.is_ok() {
        // QEMU completes every edu transfer 100 ms of virtual time after it starts.
        report("edu::dma_4k_to_device", elapsed as f64 / 1e6, "ms");
    }
}

/// VT-d: invalidation descriptors and cache lines of the unit's own
/// structures written back (`vtd::Counters::cache_lines`) per map and per
/// unmap of 1, 16 and 512 pages.
#[cfg(target_arch = "x86_64")]
fn vtd_costs(platform: &Platform) {
    for k in [0u32, 4, 9] {
        let Ok(Ok((map, unmap))) =
            crate::iommu::vtd::with_unit(platform, |unit| crate::figures::vtd::costs(unit, k))
        else {
            return;
        };
        let pages = 1u64 << k;
        report(
            &format!("vtd::map_{pages}_pages_invalidations"),
            map.invalidations as f64,
            "descs",
        );
        report(
            &format!("vtd::map_{pages}_pages_cache_lines"),
            map.cache_lines as f64,
            "lines",
        );
        report(
            &format!("vtd::unmap_{pages}_pages_invalidations"),
            unmap.invalidations as f64,
            "descs",
        );
        report(
            &format!("vtd::unmap_{pages}_pages_cache_lines"),
            unmap.cache_lines as f64,
            "lines",
        );
    }
}

/// AMD-Vi: commands, tail writes and MMIO writes per attach, map, unmap and
/// detach of 16 aligned pages.
#[cfg(target_arch = "x86_64")]
fn amdvi_command_counts(platform: &Platform) {
    use crate::figures::amdvi::command_figures;
    use crate::iommu::amdvi::{device_id, unit};
    use iommu::{DomainKind, IommuUnit};
    let Ok(unit) = unit(platform) else {
        return;
    };
    let Some(device) = crate::devices::edus()
        .next()
        .and_then(|edu| device_id(platform, edu.function.bdf))
    else {
        return;
    };
    let mut unit = unit.write();
    let Ok(domain) = unit.alloc_domain(DomainKind::Paging) else {
        return;
    };
    let figures = command_figures(&mut unit, device, domain);
    let _ = unit.free_domain(domain);
    let Ok(figures) = figures else { return };
    for (what, cost) in figures {
        let name = match what.split(' ').next().unwrap_or(what) {
            op @ ("map" | "unmap") => format!("amdvi::{op}_16_pages"),
            op => format!("amdvi::{op}"),
        };
        report(
            &format!("{name}_commands"),
            cost.commands as f64,
            "commands",
        );
        report(
            &format!("{name}_tail_writes"),
            cost.tail_writes as f64,
            "writes",
        );
        report(
            &format!("{name}_mmio_writes"),
            cost.mmio_writes as f64,
            "writes",
        );
    }
}

/// SMMUv3: commands and MMIO writes per unmap of 1, 16 and 512 pages.
#[cfg(target_arch = "aarch64")]
fn smmuv3_unmap_counts(platform: &Platform) {
    use crate::figures::smmuv3::unmap_costs;
    use crate::iommu::smmuv3::description;
    if description(platform).is_none() {
        return;
    }
    let Ok(costs) = unmap_costs(platform, &[0, 4, 9]) else {
        return;
    };
    for cost in costs {
        report(
            &format!("smmuv3::map_{}_pages_commands", cost.pages),
            cost.map_commands as f64,
            "cmds",
        );
        let name = format!("smmuv3::unmap_{}_pages", cost.pages);
        report(&format!("{name}_commands"), cost.commands as f64, "cmds");
        report(
            &format!("{name}_mmio_writes"),
            cost.mmio_writes as f64,
            "writes",
        );
        report(
            &format!("{name}_tlbi_without_ril"),
            cost.tlbi_without_ril as f64,
            "cmds",
        );
    }
}
