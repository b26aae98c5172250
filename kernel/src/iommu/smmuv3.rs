//! The SMMUv3 of the aarch64 `virt` machine: found in the device tree, brought
//! up on first use (so that the foundation tests, which DMA at physical
//! addresses, run before any stream is blocked), and shared behind a lock.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use firmware::devicetree::SmmuV3;
use iommu::{IommuUnit, IovaRange, UnitId};
use os_services::mmio::Mmio;
use smmuv3::{Smmu, SmmuUnit, StreamTableFormat};

use crate::memory::dma::DMA;
use crate::platform::{Firmware, Platform};
use crate::time::CLOCK;

/// The unit, once brought up.
pub struct Shared(pub SmmuUnit<'static>);

// SAFETY: the kernel runs on one CPU and touches the unit only from thread
// context under `UNIT`'s lock; the register block (the only !Send part) is
// identity-mapped device memory valid from any context.
unsafe impl Send for Shared {}

static UNIT: spin::Mutex<Option<Shared>> = spin::Mutex::new(None);

/// The doorbell page: GICv2m MSI_SETSPI_NS at offset 0x40 of the frame, or
/// the ITS's GITS_TRANSLATER.
const MSI_FRAME_PAGE: u64 = 0x1000;

/// The first SMMUv3 the device tree describes.
pub fn description(platform: &Platform) -> Option<&SmmuV3> {
    let Firmware::DeviceTree(tree) = &platform.firmware;
    tree.smmus.first()
}

/// The StreamID of PCI function `bdf`, through the host's `iommu-map`, if it
/// is behind the SMMU [`description`] returns.
pub fn stream_id(platform: &Platform, bdf: pci::Bdf) -> Option<u32> {
    let Firmware::DeviceTree(tree) = &platform.firmware;
    let smmu = description(platform)?;
    let (phandle, sid) = tree.pcie_host()?.iommu_for_rid(bdf.requester_id())?;
    (smmu.phandle == Some(phandle)).then_some(sid)
}

/// The MSI doorbell page PCI devices write to: the GICv2m frame, or the ITS
/// page holding GITS_TRANSLATER (its second 64 KiB frame) on GICv3. MSI
/// writes go through the SMMU, so every domain of a signalling device maps it.
pub fn msi_doorbell(platform: &Platform) -> Option<IovaRange> {
    let Firmware::DeviceTree(tree) = &platform.firmware;
    let gic = tree.gic.as_ref()?;
    let page = match (gic.v2m_frames.first(), gic.its.first()) {
        (Some(frame), _) => frame.base,
        (None, Some(its)) => its.base + (crate::arch::gic::ITS_TRANSLATER & !(MSI_FRAME_PAGE - 1)),
        (None, None) => return None,
    };
    IovaRange::from_len(page, MSI_FRAME_PAGE)
}

/// Brings the SMMU up (again) with a fresh stream table of `format`; any
/// previous instance is shut down and its memory returned first.
pub fn bring_up(platform: &Platform, format: StreamTableFormat) -> Result<(), String> {
    let description = description(platform).ok_or("no SMMUv3 in the device tree")?;
    let mut unit = UNIT.lock();
    // Dropping the old instance disables it before freeing its tables.
    drop(unit.take());
    let base = NonNull::new(description.base as *mut u8).ok_or("SMMU at address 0")?;
    let len = (description.size as usize).min(smmuv3::regs::REGISTER_SPAN);
    // SAFETY: the SMMU's registers lie in the first GiB, which the aarch64 boot
    // tables map as Device memory for the kernel's lifetime; only this unit
    // touches them.
    let regs = unsafe { Mmio::new(base, len) };
    let smmu = Smmu::new(regs, &CLOCK, &DMA, format).map_err(|err| format!("bring-up: {err:?}"))?;
    *unit = Some(Shared(SmmuUnit::new(
        smmu,
        &DMA,
        UnitId(0),
        msi_doorbell(platform),
    )));
    Ok(())
}

/// Set by the event queue interrupt; the owner drains in thread context (the
/// handler cannot take the unit's lock: it may interrupt its holder).
pub static EVENTS_PENDING: AtomicBool = AtomicBool::new(false);
/// Set by the global error interrupt.
pub static GERROR_PENDING: AtomicBool = AtomicBool::new(false);

/// Event queue interrupts since boot (the iommufd service drains on a change).
static EVENT_INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn on_eventq() {
    EVENT_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    EVENTS_PENDING.store(true, Ordering::SeqCst);
}

/// Event queue interrupts the SMMU raised since boot.
pub fn event_interrupts() -> usize {
    EVENT_INTERRUPTS.load(Ordering::SeqCst)
}

fn on_gerror() {
    GERROR_PENDING.store(true, Ordering::SeqCst);
}

/// The GIC INTIDs of the event queue and global error lines.
pub fn interrupt_ids(platform: &Platform) -> Option<(u32, u32)> {
    let description = description(platform)?;
    Some((
        description.eventq.and_then(|irq| irq.intid())?,
        description.gerror.and_then(|irq| irq.intid())?,
    ))
}

/// Routes the wired event queue and global error interrupts (QEMU's SMMU has
/// no MSI, docs/QEMU.md §3) to the kernel and enables them in the SMMU.
pub fn enable_interrupts(platform: &Platform) -> Result<(u32, u32), String> {
    let description = description(platform).ok_or("no SMMUv3")?;
    let (eventq, gerror) = interrupt_ids(platform).ok_or("SMMU interrupts not described")?;
    let edge = |irq: Option<firmware::devicetree::GicInterrupt>| irq.is_some_and(|i| i.is_edge());
    crate::irq::enable_spi(eventq, edge(description.eventq), on_eventq)
        .map_err(|err| format!("eventq SPI: {err:?}"))?;
    crate::irq::enable_spi(gerror, edge(description.gerror), on_gerror)
        .map_err(|err| format!("gerror SPI: {err:?}"))?;
    with_unit(platform, |unit| unit.hardware.enable_interrupts(true, true))?
        .map_err(|err| format!("IRQ_CTRL: {err:?}"))?;
    Ok((eventq, gerror))
}

/// Runs `f` on the unit, bringing it up first (format chosen by the driver)
/// if nothing did yet.
pub fn with_unit<R>(
    platform: &Platform,
    f: impl FnOnce(&mut SmmuUnit<'static>) -> R,
) -> Result<R, String> {
    if UNIT.lock().is_none() {
        bring_up(platform, StreamTableFormat::Auto)?;
    }
    let mut unit = UNIT.lock();
    let shared = unit.as_mut().ok_or("SMMU not up")?;
    Ok(f(&mut shared.0))
}

/// The cost of one unmap + flush of `2^k` 4 KiB pages, measured on the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapCost {
    pub pages: u64,
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
            .map_err(|err| format!("4K: {err:?}"))?;
        let domain = unit
            .alloc_domain(iommu::DomainKind::Paging)
            .map_err(|err| format!("alloc: {err:?}"))?;
        let mut costs = Vec::new();
        let mut failure = None;
        for &k in ks {
            let len = 4096u64 << k;
            // A fresh 4 MiB-aligned slot per size: no table left over from a
            // smaller size forces 4 KiB leaves on a block-sized range.
            let iova = FIGURES_IOVA + (u64::from(k) << 22);
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
                failure = Some(format!("map 2^{k}: {err:?}"));
                break;
            }
            let before = unit.hardware.counters();
            let gather = unit.unmap(domain, iova, len);
            if let Err(err) = unit.flush(domain, &gather) {
                failure = Some(format!("flush 2^{k}: {err:?}"));
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
        freed.map_err(|err| format!("free: {err:?}"))?;
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
    println!(
        "smmuv3 @ {:#x}: eventq SPI {:?}, gerror SPI {:?}",
        description.base,
        description.eventq.and_then(|irq| irq.intid()),
        description.gerror.and_then(|irq| irq.intid())
    );
    let result = with_unit(platform, |unit| {
        let features = *unit.hardware.features();
        println!(
            "  IDR0-5 {:08x?} IIDR {:#x} AIDR {:#x}; stage 1 {}, stage 2 {}, RIL {}, {} stream table over {} SID bits",
            features.idr,
            features.iidr,
            features.aidr,
            features.stage1(),
            features.stage2(),
            features.range_invalidation(),
            if unit.hardware.is_two_level() {
                "2-level"
            } else {
                "linear"
            },
            unit.hardware.sid_bits()
        );
        println!(
            "  reserved: {:?}",
            unit.reserved_regions(iommu::DeviceId(0))
        );
        println!("  counters: {:?}", unit.hardware.counters());
    });
    if let Err(why) = result {
        println!("  smmuv3: {why}");
        return;
    }
    match unmap_costs(platform, &[0, 1, 4, 5, 9]) {
        Ok(costs) => {
            for cost in costs {
                println!(
                    "  unmap {:>3} pages: {} TLBI + {} CMD_SYNC ({} MMIO writes); without RIL {} TLBI{}",
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
