//! AMD-Vi on this machine: finds the IOMMU in the ACPI IVRS, brings it up once (every
//! requester blocked) and hands it out behind a lock. Policy only; the hardware
//! access lives in the `amdvi` crate.

use core::ptr::NonNull;

use ::iommu::{DeviceId, UnitId};
use amdvi::regs::{self, CapabilityHeader};
use amdvi::{AmdVi, DiscoveryError, UnitError};
use os_services::mmio::Mmio;
use pci::{Bdf, ConfigSpace};

use crate::platform::{Firmware, Platform};

/// Why this machine has no usable AMD-Vi unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absent {
    /// No IVRS: not an AMD-Vi machine (e.g. the VT-d configurations).
    NoIvrs,
    /// The IVRS is there but unusable.
    Discovery(DiscoveryError),
    /// The IOMMU's PCI function does not carry the IOMMU capability (§3.2.1).
    NoCapability,
    /// Bring-up failed.
    BringUp(UnitError),
}

static UNIT: spin::Once<Result<spin::Mutex<AmdVi>, Absent>> = spin::Once::new();

/// The machine's first AMD-Vi unit, brought up on first use.
pub fn unit(platform: &Platform) -> Result<&'static spin::Mutex<AmdVi>, Absent> {
    UNIT.call_once(|| bring_up(platform).map(spin::Mutex::new))
        .as_ref()
        .map_err(|absent| *absent)
}

/// Runs `f` on the unit (brought up on first use), as `vtd::with_unit` and
/// `smmuv3::with_unit` do for theirs.
pub fn with_unit<R>(
    platform: &Platform,
    f: impl FnOnce(&mut AmdVi) -> R,
) -> Result<R, alloc::string::String> {
    let unit = unit(platform).map_err(|absent| alloc::format!("no AMD-Vi unit: {absent:?}"))?;
    Ok(f(&mut unit.lock()))
}

fn bring_up(platform: &Platform) -> Result<AmdVi, Absent> {
    let Firmware::Acpi(info) = &platform.firmware;
    let ivrs = info.ivrs.as_ref().ok_or(Absent::NoIvrs)?;
    let description = amdvi::discovery::describe(ivrs)
        .map_err(Absent::Discovery)?
        .swap_remove(0);
    let config = &platform.pci.ecam;
    let bdf = Bdf::from_requester_id(description.iommu_device_id);
    let capability = CapabilityHeader(config.read32(bdf, description.capability_offset));
    if capability.cap_id() != CapabilityHeader::CAP_ID
        || capability.cap_type() != CapabilityHeader::CAP_TYPE_IOMMU
    {
        return Err(Absent::NoCapability);
    }
    let base = NonNull::new(description.mmio_base as *mut u8)
        .ok_or(Absent::Discovery(DiscoveryError::BadBase(0)))?;
    // SAFETY: the IVHD names this 16 KiB block as the IOMMU's registers; the x86
    // boot page tables map it uncached (identity, above 0xB000_0000), and only this
    // unit touches it.
    let regs = unsafe { Mmio::new(base, regs::MMIO_SIZE) };
    AmdVi::new(
        UnitId(0),
        description,
        regs,
        capability,
        &crate::memory::dma::DMA,
        &crate::time::CLOCK,
    )
    .map_err(Absent::BringUp)
}

/// The AMD-Vi DeviceID of a PCI function of segment 0: its requester ID
/// (AMD IOMMU §2.2.1), whether a unit translates it or not.
pub fn device_id_of(bdf: Bdf) -> DeviceId {
    DeviceId(u32::from(bdf.requester_id()))
}

/// The AMD-Vi DeviceID of a PCI function (segment 0), if the unit the IVRS
/// describes translates it (its IVHD device entries name it, AMD IOMMU
/// §5.2.2.2): a function the table leaves out is not behind this unit.
pub fn device_id(platform: &Platform, bdf: Bdf) -> Option<DeviceId> {
    let id = bdf.requester_id();
    description(platform)
        .is_some_and(|unit| unit.translates(id))
        .then(|| device_id_of(bdf))
}

/// The DeviceID `device`'s requests arrive with when an IVHD alias entry
/// names another (AMD IOMMU §5.2.2.2): that one is programmed with it.
pub fn firmware_alias(platform: &Platform, device: DeviceId) -> Option<DeviceId> {
    let id = u16::try_from(device.0).ok()?;
    description(platform)?
        .alias_of(id)
        .map(|alias| DeviceId(u32::from(alias)))
}

/// The unit the IVRS describes. The table does not change: it is described
/// once, not for every function asked.
fn description(platform: &Platform) -> Option<&'static amdvi::discovery::UnitDescription> {
    static DESCRIPTION: spin::Once<Option<amdvi::discovery::UnitDescription>> = spin::Once::new();
    DESCRIPTION
        .call_once(|| {
            let Firmware::Acpi(info) = &platform.firmware;
            let ivrs = info.ivrs.as_ref()?;
            amdvi::discovery::describe(ivrs).ok()?.into_iter().next()
        })
        .as_ref()
}
