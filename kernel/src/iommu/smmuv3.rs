//! The SMMUv3 of the aarch64 `virt` machine: found in the device tree, brought
//! up on first use (so that the foundation tests, which DMA at physical
//! addresses, run before any stream is blocked), and shared behind a lock.

use alloc::format;
use alloc::string::String;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use iommu::{IovaRange, UnitId};
use os_services::mmio::Mmio;
use smmuv3::discovery::{self, UnitDescription};
use smmuv3::{Smmu, SmmuUnit, StreamTableFormat};

use crate::memory::dma::DMA;
use crate::platform::{Firmware, Platform};
use crate::time::CLOCK;

/// The unit, once brought up.
pub struct Shared(pub SmmuUnit<'static>);

/// Written to change the unit (or bring it up), read by the CPUs that map,
/// unmap and flush at once.
static UNIT: spin::RwLock<Option<Shared>> = spin::RwLock::new(None);

/// Runs `f` on the unit through a shared reference, beside other CPUs'
/// shared calls; `None` when it is not up.
pub fn with_unit_shared<R>(f: impl FnOnce(&SmmuUnit<'static>) -> R) -> Option<R> {
    UNIT.read().as_ref().map(|shared| f(&shared.0))
}

/// The first SMMUv3 the device tree describes, as its driver checked it
/// (`smmuv3::discovery`); `None` without one or when the driver refuses it.
pub fn description(platform: &Platform) -> Option<UnitDescription> {
    let Firmware::DeviceTree(tree) = &platform.firmware;
    discovery::first_unit(tree).ok()
}

/// The StreamID of PCI function `bdf`, through the host's `iommu-map`, if it
/// is behind the SMMU [`description`] returns.
pub fn stream_id(platform: &Platform, bdf: pci::Bdf) -> Option<u32> {
    let Firmware::DeviceTree(tree) = &platform.firmware;
    description(platform)?.stream_id(tree, bdf.requester_id())
}

/// The MSI doorbell page PCI devices write to (`smmuv3::discovery::msi_doorbell`).
pub fn msi_doorbell(platform: &Platform) -> Option<IovaRange> {
    let Firmware::DeviceTree(tree) = &platform.firmware;
    discovery::msi_doorbell(tree)
}

/// Brings the SMMU up (again) with a fresh stream table of `format`; any
/// previous instance is shut down and its memory returned first.
pub fn bring_up(platform: &Platform, format: StreamTableFormat) -> Result<(), String> {
    let description = description(platform).ok_or("no SMMUv3 in the device tree")?;
    let mut unit = UNIT.write();
    // Dropping the old instance disables it before freeing its tables.
    drop(unit.take());
    let base = NonNull::new(description.register_base as *mut u8).ok_or("SMMU at address 0")?;
    let len = description.register_size;
    // SAFETY: the SMMU's registers lie in the first GiB, which the aarch64 boot
    // tables map as Device memory for the kernel's lifetime; only this unit
    // touches them.
    let regs = unsafe { Mmio::new(base, len) };
    // Used only if the SMMU does not snoop (IDR0.COHACC = 0; QEMU's does).
    let maintenance = iommu_kit::CacheMaintenance {
        clean: crate::arch::cache::clean_to_poc,
        invalidate: crate::arch::cache::clean_invalidate_to_poc,
    };
    let smmu = Smmu::new(regs, &CLOCK, &DMA, format, Some(maintenance))
        .map_err(|err| format!("bring-up: {err:?}"))?;
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
    Some((description.eventq.intid()?, description.gerror.intid()?))
}

/// Routes the wired event queue and global error interrupts (QEMU's SMMU has
/// no MSI, docs/QEMU.md §3) to the kernel and enables them in the SMMU.
pub fn enable_interrupts(platform: &Platform) -> Result<(u32, u32), String> {
    let description = description(platform).ok_or("no SMMUv3")?;
    let (eventq, gerror) = interrupt_ids(platform).ok_or("SMMU interrupts not described")?;
    let edge = |irq: firmware::devicetree::GicInterrupt| irq.is_edge();
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
    if UNIT.read().is_none() {
        bring_up(platform, StreamTableFormat::Auto)?;
    }
    let mut unit = UNIT.write();
    let shared = unit.as_mut().ok_or("SMMU not up")?;
    Ok(f(&mut shared.0))
}
