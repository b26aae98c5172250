//! The IOMMU units the kernel drives: each vendor module finds its units in
//! the firmware tables, brings them up and hands them out behind the
//! `iommu::IommuUnit` contract.

#[cfg(target_arch = "x86_64")]
pub mod amdvi;
#[cfg(target_arch = "aarch64")]
pub mod smmuv3;
#[cfg(target_arch = "x86_64")]
pub mod vtd;

use alloc::boxed::Box;
use alloc::vec::Vec;

use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    MsiMessage, MsiRoute, NestedInvalidation, Prot, ReservedRegion, UnitId, UnitInfo,
};

use crate::platform::Platform;

/// The platform's IOMMU units behind the contract, for the iommufd core.
pub struct PlatformUnits {
    /// Every unit, in firmware order: `UnitId(i)` is `units[i]`.
    pub units: Vec<Box<dyn IommuUnit + Send + Sync>>,
    /// The unit that translates a PCI function and its name there; `None`
    /// when no unit translates it.
    pub endpoint: EndpointOf,
    /// The id a device's requests arrive with when firmware says it is
    /// another's (AMD-Vi IVHD alias entries); `None` elsewhere.
    pub firmware_alias: fn(&'static Platform, UnitId, DeviceId) -> Option<DeviceId>,
}

/// Which unit translates a PCI function, and its name there.
pub type EndpointOf = fn(&'static Platform, pci::Bdf) -> Option<(UnitId, DeviceId)>;

/// [`PlatformUnits::firmware_alias`] of units whose firmware names no aliases.
pub fn no_firmware_alias(_: &'static Platform, _: UnitId, _: DeviceId) -> Option<DeviceId> {
    None
}

/// Brings up (or takes over) every IOMMU unit of the platform; `None` when it
/// has none.
pub fn platform_units(platform: &'static Platform) -> Option<PlatformUnits> {
    match &platform.firmware {
        #[cfg(target_arch = "x86_64")]
        crate::platform::Firmware::Acpi(info) => {
            if info.dmar.is_some() {
                fn with_vtd(index: usize, f: &mut dyn FnMut(&mut dyn IommuUnit)) {
                    let _ = vtd::with_unit_at(crate::platform::get(), index, |unit| f(unit));
                }
                fn with_vtd_shared(index: usize, f: &mut dyn FnMut(&dyn IommuUnit)) {
                    let _ = vtd::with_unit_shared_at(index, |unit| f(unit));
                }
                return Some(PlatformUnits {
                    units: shared_units(with_vtd, with_vtd_shared)?,
                    endpoint: vtd::endpoint,
                    firmware_alias: no_firmware_alias,
                });
            }
            if info.ivrs.is_some() {
                fn with_amdvi(index: usize, f: &mut dyn FnMut(&mut dyn IommuUnit)) {
                    let _ = amdvi::with_unit_at(crate::platform::get(), index, |unit| f(unit));
                }
                fn with_amdvi_shared(index: usize, f: &mut dyn FnMut(&dyn IommuUnit)) {
                    let _ = amdvi::with_unit_shared_at(index, |unit| f(unit));
                }
                return Some(PlatformUnits {
                    units: shared_units(with_amdvi, with_amdvi_shared)?,
                    endpoint: amdvi::endpoint,
                    firmware_alias: amdvi::firmware_alias,
                });
            }
            None
        }
        #[cfg(target_arch = "aarch64")]
        crate::platform::Firmware::DeviceTree(tree) => {
            if tree.smmus.is_empty() {
                return None;
            }
            // The glue drives the device tree's first SMMU only (see
            // `smmuv3::with_unit`).
            fn with_smmu(index: usize, f: &mut dyn FnMut(&mut dyn IommuUnit)) {
                if index == 0 {
                    let _ = smmuv3::with_unit(crate::platform::get(), |unit| f(unit));
                }
            }
            fn with_smmu_shared(index: usize, f: &mut dyn FnMut(&dyn IommuUnit)) {
                if index == 0 {
                    let _ = smmuv3::with_unit_shared(|unit| f(unit));
                }
            }
            Some(PlatformUnits {
                units: shared_units(with_smmu, with_smmu_shared)?,
                endpoint: |platform, bdf| {
                    smmuv3::stream_id(platform, bdf).map(|sid| (UnitId(0), DeviceId(sid)))
                },
                firmware_alias: no_firmware_alias,
            })
        }
    }
}

/// A [`Shared`] handle on each unit `with` reaches, from index 0 up to the
/// first it does not; `None` when it reaches none.
fn shared_units(
    with: WithUnit,
    with_shared: WithUnitShared,
) -> Option<Vec<Box<dyn IommuUnit + Send + Sync>>> {
    let units: Vec<Box<dyn IommuUnit + Send + Sync>> = (0..)
        .map_while(|index| Shared::new(with, with_shared, index))
        .map(|shared| Box::new(shared) as Box<dyn IommuUnit + Send + Sync>)
        .collect();
    (!units.is_empty()).then_some(units)
}

/// Fault interrupts the platform's IOMMU has raised since boot. Their
/// handlers only count: draining the records needs the unit, which only
/// thread context may lock (see `iommufd_service::dispatch_pending_faults`).
/// QEMU's AMD-Vi writes no event log, so it raises none.
pub fn fault_signals() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        vtd::fault_events()
    }
    #[cfg(target_arch = "aarch64")]
    {
        smmuv3::event_interrupts()
    }
}

/// Runs a closure on unit `index` that lives in its driver glue's static, if
/// it is up.
type WithUnit = fn(usize, &mut dyn FnMut(&mut dyn IommuUnit));

/// [`WithUnit`] through a shared reference (the glue's lock taken for
/// reading), for the calls several CPUs make at once.
type WithUnitShared = fn(usize, &mut dyn FnMut(&dyn IommuUnit));

/// The core's handle on a unit. Every vendor's units live in their driver
/// glue's static, brought up on first use (`vtd::with_unit_at`,
/// `amdvi::with_unit_at`, `smmuv3::with_unit`): the iommufd core and the tests
/// that drive the hardware directly reach the same instance through the same
/// lock. Every call goes through `with` (exclusive) or `with_shared` (the
/// `&self` ones), which run the closure on the unit when it is up.
struct Shared {
    with: WithUnit,
    with_shared: WithUnitShared,
    index: usize,
    /// What the unit said at bring-up: the answer while it is not up.
    info: UnitInfo,
    hw_info: HwInfo,
}

impl Shared {
    fn new(with: WithUnit, with_shared: WithUnitShared, index: usize) -> Option<Self> {
        let mut found = None;
        with(index, &mut |unit| {
            found = Some((unit.info(), unit.hw_info()))
        });
        let (info, hw_info) = found?;
        Some(Shared {
            with,
            with_shared,
            index,
            info,
            hw_info,
        })
    }

    /// Runs `f` on the unit; `absent` when it is not there.
    fn call<R>(&self, absent: R, mut f: impl FnMut(&mut dyn IommuUnit) -> R) -> R {
        let mut result = None;
        (self.with)(self.index, &mut |unit| result = Some(f(unit)));
        result.unwrap_or(absent)
    }

    /// Runs `f` on the unit through a shared reference; `absent` when it
    /// is not up.
    fn call_shared<R>(&self, absent: R, mut f: impl FnMut(&dyn IommuUnit) -> R) -> R {
        let mut result = None;
        (self.with_shared)(self.index, &mut |unit| result = Some(f(unit)));
        result.unwrap_or(absent)
    }
}

impl IommuUnit for Shared {
    fn info(&self) -> UnitInfo {
        // Asked of the unit: its page sizes follow the granule of the domains
        // it allocates from now on (SMMUv3 `set_granule`).
        self.call_shared(self.info.clone(), |unit| unit.info())
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<ReservedRegion> {
        self.call_shared(Vec::new(), |unit| unit.reserved_regions(device))
    }

    fn hw_info(&self) -> HwInfo {
        self.hw_info
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| unit.alloc_domain(kind))
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.free_domain(domain)
        })
    }

    fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.map(domain, iova, phys, len, prot)
        })
    }

    fn unmap(&mut self, domain: DomainHandle, iova: u64, len: u64) -> Result<Gather, IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.unmap(domain, iova, len)
        })
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.flush(domain, gather)
        })
    }

    fn shares_mapping(&self) -> bool {
        self.call_shared(false, |unit| unit.shares_mapping())
    }

    unsafe fn map_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        self.call_shared(Err(IommuError::Unsupported), |unit| {
            // SAFETY: the caller keeps the contract; forwarded.
            unsafe { unit.map_shared(domain, iova, phys, len, prot) }
        })
    }

    unsafe fn unmap_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        self.call_shared(Err(IommuError::Unsupported), |unit| {
            // SAFETY: the caller keeps the contract; forwarded.
            unsafe { unit.unmap_shared(domain, iova, len) }
        })
    }

    fn flush_shared(&self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        self.call_shared(Err(IommuError::Unsupported), |unit| {
            unit.flush_shared(domain, gather)
        })
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.attach(device, domain)
        })
    }

    fn detach(&mut self, device: DeviceId) {
        self.call((), |unit| unit.detach(device));
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        self.call(0, |unit| unit.drain_faults(out))
    }

    fn invalidate_nested(
        &mut self,
        domain: DomainHandle,
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        self.call((0, Err(IommuError::Unsupported)), |unit| {
            unit.invalidate_nested(domain, requests)
        })
    }

    fn dirty_tracking(&self) -> bool {
        self.call_shared(false, |unit| unit.dirty_tracking())
    }

    fn set_dirty_tracking(&mut self, domain: DomainHandle, enable: bool) -> Result<(), IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.set_dirty_tracking(domain, enable)
        })
    }

    fn read_dirty(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.read_dirty(domain, iova, len, keep, &mut *dirty)
        })
    }

    fn invalidate_viommu(
        &mut self,
        parent: DomainHandle,
        vdevices: &[(u64, DeviceId)],
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        self.call((0, Err(IommuError::Unsupported)), |unit| {
            unit.invalidate_viommu(parent, vdevices, requests)
        })
    }

    fn route_msi(
        &mut self,
        device: DeviceId,
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.route_msi(device, message)
        })
    }

    fn route_msi_from_buses(
        &mut self,
        device: DeviceId,
        buses: (u8, u8),
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        self.call(Err(IommuError::Unsupported), |unit| {
            unit.route_msi_from_buses(device, buses, message)
        })
    }

    fn unroute_msi(&mut self, route: MsiRoute) {
        self.call((), |unit| unit.unroute_msi(route))
    }

    fn isolates_msi(&self) -> bool {
        self.call_shared(false, |unit| unit.isolates_msi())
    }
}
