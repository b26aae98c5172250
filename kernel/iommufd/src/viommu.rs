//! vIOMMUs and vDEVICEs (Linux `drivers/iommu/iommufd/viommu.c`): a task's
//! virtual IOMMU over a NEST_PARENT HWPT. The task binds its devices to
//! virtual ids (what its own driver of the virtual IOMMU calls them: SMMUv3
//! virtual StreamIDs), allocates nested HWPTs over the vIOMMU, and
//! invalidates with the hardware's own commands naming virtual ids, which the
//! unit translates to physical ones through the bindings here and refuses
//! for any other id.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use abi::{Errno, ViommuType};
use iommu::{DeviceId, IommuUnit, NestedFormat, NestedInvalidation, UnitId};

use crate::{HwptKind, Iommufd, ObjId, Object, OwnerId, Resource, Services, errno};

#[derive(Debug)]
pub(crate) struct Viommu {
    pub(crate) unit: UnitId,
    /// The NEST_PARENT HWPT (stage 2) it runs over; referenced while it lives.
    pub(crate) parent: ObjId,
    /// Virtual id → the vDEVICE binding it.
    pub(crate) vdevices: BTreeMap<u64, ObjId>,
    /// Nested HWPTs allocated over it.
    pub(crate) nested: u32,
}

#[derive(Debug)]
pub(crate) struct Vdevice {
    pub(crate) viommu: ObjId,
    pub(crate) device: ObjId,
    pub(crate) virt_id: u64,
}

/// The nesting format a vIOMMU type speaks.
fn format_of(viommu_type: u32) -> Result<NestedFormat, Errno> {
    match viommu_type {
        t if t == ViommuType::ArmSmmuV3 as u32 => Ok(NestedFormat::ArmSmmuV3),
        _ => Err(Errno::EOPNOTSUPP),
    }
}

impl<U: IommuUnit, S: Services> Iommufd<U, S> {
    /// Linux `iommufd_viommu_alloc_ioctl`: a vIOMMU of `viommu_type` over the
    /// NEST_PARENT HWPT `hwpt_id` of device `dev_id`'s unit. `EINVAL` when
    /// the HWPT is no nest parent or of another unit, `EOPNOTSUPP` when the
    /// unit does not nest in the type's format.
    pub fn viommu_alloc(
        &mut self,
        owner: OwnerId,
        dev_id: ObjId,
        hwpt_id: ObjId,
        viommu_type: u32,
    ) -> Result<ObjId, Errno> {
        let o = self.owner(owner)?;
        let unit = o.device(dev_id)?.unit;
        let parent = o.hwpt(hwpt_id)?;
        if !matches!(
            parent.kind,
            HwptKind::Paging {
                nest_parent: true,
                ..
            }
        ) || parent.unit != unit
        {
            return Err(Errno::EINVAL);
        }
        let format = format_of(viommu_type)?;
        if self.units[unit.0 as usize].info().nesting.map(|n| n.format) != Some(format) {
            return Err(Errno::EOPNOTSUPP);
        }
        o.peek_id()?;
        self.admit(owner, Resource::ObjectSlot)?;
        self.services.charge(Resource::ObjectSlot)?;
        let o = self.owner_mut(owner)?;
        let id = o.insert(Object::Viommu(Viommu {
            unit,
            parent: hwpt_id,
            vdevices: BTreeMap::new(),
            nested: 0,
        }));
        if let Ok(parent) = o.hwpt_mut(hwpt_id) {
            parent.children += 1;
        }
        Ok(id)
    }

    /// Linux `iommufd_vdevice_alloc_ioctl`: binds device `dev_id` to
    /// `virt_id` in vIOMMU `viommu_id`. `EINVAL` for a device of another
    /// unit or an id wider than the type's (SMMUv3 StreamIDs: 32 bits),
    /// `EEXIST` when the id or the device is bound already.
    pub fn vdevice_alloc(
        &mut self,
        owner: OwnerId,
        viommu_id: ObjId,
        dev_id: ObjId,
        virt_id: u64,
    ) -> Result<ObjId, Errno> {
        let o = self.owner(owner)?;
        let viommu = o.viommu(viommu_id)?;
        let device = o.device(dev_id)?;
        if device.unit != viommu.unit || u32::try_from(virt_id).is_err() {
            return Err(Errno::EINVAL);
        }
        let bound = viommu.vdevices.contains_key(&virt_id)
            || viommu
                .vdevices
                .values()
                .any(|&v| o.vdevice(v).is_ok_and(|v| v.device == dev_id));
        if bound {
            return Err(Errno::EEXIST);
        }
        o.peek_id()?;
        self.admit(owner, Resource::ObjectSlot)?;
        self.services.charge(Resource::ObjectSlot)?;
        let o = self.owner_mut(owner)?;
        let id = o.insert(Object::Vdevice(Vdevice {
            viommu: viommu_id,
            device: dev_id,
            virt_id,
        }));
        if let Ok(viommu) = o.viommu_mut(viommu_id) {
            viommu.vdevices.insert(virt_id, id);
        }
        if let Ok(device) = o.device_mut(dev_id) {
            device.vdevices += 1;
        }
        Ok(id)
    }

    /// `hwpt_invalidate` on a vIOMMU (Linux `iommufd_hwpt_invalidate` with a
    /// vIOMMU id): the unit carries out the commands, translating the virtual
    /// ids they name through the vIOMMU's vDEVICEs.
    pub(crate) fn viommu_invalidate(
        &mut self,
        owner: OwnerId,
        viommu_id: ObjId,
        requests: &[NestedInvalidation],
    ) -> (u32, Result<(), Errno>) {
        let bound = self.owner(owner).and_then(|o| {
            let viommu = o.viommu(viommu_id)?;
            let parent = o.hwpt(viommu.parent)?.domain;
            let vdevices: Vec<(u64, DeviceId)> = viommu
                .vdevices
                .iter()
                .filter_map(|(&virt_id, &vdevice)| {
                    let device = o.vdevice(vdevice).ok()?.device;
                    Some((virt_id, o.device(device).ok()?.requester))
                })
                .collect();
            Ok((viommu.unit, parent, vdevices))
        });
        let (unit, parent, vdevices) = match bound {
            Ok(bound) => bound,
            Err(e) => return (0, Err(e)),
        };
        let (done, result) =
            self.units[unit.0 as usize].invalidate_viommu(parent, &vdevices, requests);
        (
            u32::try_from(done).unwrap_or(u32::MAX),
            result.map_err(errno),
        )
    }

    /// Removes a vIOMMU nothing references and lets go of its parent.
    pub(crate) fn destroy_viommu(&mut self, owner: OwnerId, id: ObjId) {
        let Some(o) = self.owners.get_mut(&owner) else {
            return;
        };
        if let Some(Object::Viommu(viommu)) = o.remove(id)
            && let Ok(parent) = o.hwpt_mut(viommu.parent)
        {
            parent.children -= 1;
        }
    }

    /// Removes a vDEVICE: its virtual id names nothing from then on.
    pub(crate) fn destroy_vdevice(&mut self, owner: OwnerId, id: ObjId) {
        let Some(o) = self.owners.get_mut(&owner) else {
            return;
        };
        let Some(Object::Vdevice(vdevice)) = o.remove(id) else {
            return;
        };
        if let Ok(viommu) = o.viommu_mut(vdevice.viommu) {
            viommu.vdevices.remove(&vdevice.virt_id);
        }
        if let Ok(device) = o.device_mut(vdevice.device) {
            device.vdevices -= 1;
        }
    }
}
