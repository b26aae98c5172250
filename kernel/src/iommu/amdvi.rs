//! AMD-Vi on this machine: finds the IOMMUs in the ACPI IVRS, brings every one of
//! them up once (every requester blocked: an IOMMU left as firmware left it would
//! let the DMA behind it go wherever firmware pointed it) and hands each out behind
//! a lock. Policy only; the hardware access lives in the `amdvi` crate.

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

/// Every IOMMU the IVRS describes, in table order (`UnitId` = index), each
/// behind its own lock (written to change the unit, read by the CPUs that
/// map, unmap and flush at once); brought up together on first use.
type Units = alloc::vec::Vec<spin::RwLock<AmdVi>>;

static UNITS: spin::Once<Result<Units, Absent>> = spin::Once::new();

/// The machine's AMD-Vi units, brought up on first use. All or nothing: a unit
/// that fails leaves the machine without AMD-Vi (those already up are dropped,
/// which blocks their DMA again), since the devices behind it could not be isolated.
pub fn units(platform: &Platform) -> Result<&'static [spin::RwLock<AmdVi>], Absent> {
    UNITS
        .call_once(|| {
            let units = descriptions(platform)?
                .iter()
                .map(|description| unit_parts(platform, description.clone()))
                .collect::<Result<alloc::vec::Vec<_>, Absent>>()?;
            let units = AmdVi::bring_up_all(units, &crate::memory::dma::DMA, &crate::time::CLOCK)
                .map_err(|(_, err)| Absent::BringUp(err))?;
            Ok(units.into_iter().map(spin::RwLock::new).collect())
        })
        .as_ref()
        .map(|units| units.as_slice())
        .map_err(|absent| *absent)
}

/// The machine's first AMD-Vi unit, which the unit-level tests drive.
pub fn unit(platform: &Platform) -> Result<&'static spin::RwLock<AmdVi>, Absent> {
    units(platform)?
        .first()
        .ok_or(Absent::Discovery(DiscoveryError::NoIommu))
}

/// Runs `f` on unit `index` (every unit brought up on first use), as
/// `vtd::with_unit_at` does for its.
pub fn with_unit_at<R>(
    platform: &Platform,
    index: usize,
    f: impl FnOnce(&mut AmdVi) -> R,
) -> Result<R, alloc::string::String> {
    let units = units(platform).map_err(|absent| alloc::format!("no AMD-Vi unit: {absent:?}"))?;
    let unit = units
        .get(index)
        .ok_or_else(|| alloc::format!("no AMD-Vi unit {index} in the IVRS"))?;
    Ok(f(&mut unit.write()))
}

/// Runs `f` on unit `index` through a shared reference, beside other CPUs'
/// shared calls; `None` when the units are not up (or there is no such).
pub fn with_unit_shared_at<R>(index: usize, f: impl FnOnce(&AmdVi) -> R) -> Option<R> {
    let units = UNITS.get()?.as_ref().ok()?;
    Some(f(&units.get(index)?.read()))
}

/// [`with_unit_at`] the first unit, as `vtd::with_unit` and
/// `smmuv3::with_unit` do for theirs.
pub fn with_unit<R>(
    platform: &Platform,
    f: impl FnOnce(&mut AmdVi) -> R,
) -> Result<R, alloc::string::String> {
    with_unit_at(platform, 0, f)
}

/// What bringing up the IOMMU `description` names takes: its description, its
/// registers and its capability header, checked.
fn unit_parts(
    platform: &Platform,
    description: amdvi::discovery::UnitDescription,
) -> Result<(amdvi::discovery::UnitDescription, Mmio, CapabilityHeader), Absent> {
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
    Ok((description, regs, capability))
}

/// The AMD-Vi DeviceID of a PCI function of segment 0: its requester ID
/// (AMD IOMMU §2.2.1), whether a unit translates it or not.
pub fn device_id_of(bdf: Bdf) -> DeviceId {
    DeviceId(u32::from(bdf.requester_id()))
}

/// The unit that translates a PCI function (segment 0) and its DeviceID there:
/// the IVHD whose device entries name it (AMD IOMMU §5.2.2.2, see
/// `amdvi::discovery::unit_for`). `None`: no IOMMU translates it.
pub fn endpoint(platform: &Platform, bdf: Bdf) -> Option<(UnitId, DeviceId)> {
    let units = descriptions(platform).ok()?;
    let unit = amdvi::discovery::unit_for(units, 0, bdf.requester_id())?;
    Some((UnitId(u32::try_from(unit).ok()?), device_id_of(bdf)))
}

/// The DeviceID of a PCI function if the first unit translates it (the
/// unit-level tests drive unit 0).
pub fn device_id(platform: &Platform, bdf: Bdf) -> Option<DeviceId> {
    endpoint(platform, bdf)
        .filter(|&(unit, _)| unit == UnitId(0))
        .map(|(_, id)| id)
}

/// The DeviceID `device`'s requests arrive with when an IVHD alias entry of
/// the unit translating it names another (AMD IOMMU §5.2.2.2): that one is
/// programmed with it.
pub fn firmware_alias(platform: &Platform, unit: UnitId, device: DeviceId) -> Option<DeviceId> {
    let id = u16::try_from(device.0).ok()?;
    descriptions(platform)
        .ok()?
        .get(unit.0 as usize)?
        .alias_of(id)
        .map(|alias| DeviceId(u32::from(alias)))
}

/// The units the IVRS describes. The table does not change: it is described
/// once, not for every function asked.
fn descriptions(
    platform: &Platform,
) -> Result<&'static [amdvi::discovery::UnitDescription], Absent> {
    static DESCRIPTIONS: spin::Once<
        Result<alloc::vec::Vec<amdvi::discovery::UnitDescription>, Absent>,
    > = spin::Once::new();
    DESCRIPTIONS
        .call_once(|| {
            let Firmware::Acpi(info) = &platform.firmware;
            let ivrs = info.ivrs.as_ref().ok_or(Absent::NoIvrs)?;
            amdvi::discovery::describe(ivrs).map_err(Absent::Discovery)
        })
        .as_ref()
        .map(|units| units.as_slice())
        .map_err(|absent| *absent)
}
