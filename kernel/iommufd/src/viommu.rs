//! vIOMMUs and vDEVICEs (Linux `drivers/iommu/iommufd/viommu.c`): a task's
//! virtual IOMMU over a NEST_PARENT HWPT. The task binds its devices to
//! virtual ids (what its own driver of the virtual IOMMU calls them: SMMUv3
//! virtual StreamIDs), allocates nested HWPTs over the vIOMMU, and
//! invalidates with the hardware's own commands naming virtual ids, which the
//! unit translates to physical ones through the bindings here and refuses
//! for any other id. A vEVENTQ (Linux `iommufd/eventq.c`) hands the task the
//! faults of its own stage 1 as its virtual IOMMU would have reported them.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use abi::{Errno, VeventFlags, VeventqType, ViommuType};
use iommu::{DeviceId, GuestEvent, IommuUnit, NestedFormat, NestedInvalidation, UnitId};

use crate::{HwptKind, Iommufd, ObjId, Object, Owner, OwnerId, Resource, Services, errno};

#[derive(Debug)]
pub(crate) struct Viommu {
    pub(crate) unit: UnitId,
    /// The NEST_PARENT HWPT (stage 2) it runs over; referenced while it lives.
    pub(crate) parent: ObjId,
    /// Virtual id → the vDEVICE binding it.
    pub(crate) vdevices: BTreeMap<u64, ObjId>,
    /// Nested HWPTs allocated over it.
    pub(crate) nested: u32,
    /// Its vEVENTQ, if the task made one (one per vIOMMU).
    pub(crate) veventq: Option<ObjId>,
}

/// Sequence numbers wrap at 2^31, as Linux's (`iommufd_veventq`).
const SEQUENCE_MASK: u32 = 0x7FFF_FFFF;

#[derive(Debug)]
pub(crate) struct Veventq {
    pub(crate) viommu: ObjId,
    depth: usize,
    /// Oldest first: (sequence, the event, or `None` for a LOST_EVENTS mark
    /// standing where events were dropped).
    events: VecDeque<(u32, Option<GuestEvent>)>,
    /// Events queued, not counting a LOST_EVENTS mark.
    held: usize,
    next_sequence: u32,
}

impl Veventq {
    /// Queues `event`; when the queue is full, drops it and leaves one
    /// LOST_EVENTS mark at the end, with the sequence of the first dropped:
    /// the next event delivered shows by its sequence how many were lost.
    fn push(&mut self, event: GuestEvent) {
        let sequence = self.next_sequence;
        self.next_sequence = (sequence + 1) & SEQUENCE_MASK;
        if self.held < self.depth {
            self.events.push_back((sequence, Some(event)));
            self.held += 1;
        } else if !matches!(self.events.back(), Some((_, None))) {
            self.events.push_back((sequence, None));
        }
    }

    /// The bytes of the oldest events that fit in `capacity` (a header each,
    /// then the record unless it is a LOST_EVENTS mark) and how many they are.
    fn peek(&self, capacity: usize) -> (Vec<u8>, usize) {
        let mut bytes = Vec::new();
        let mut count = 0;
        for &(sequence, event) in &self.events {
            let record = event.map(|GuestEvent::ArmSmmuV3 { evt }| abi::VeventArmSmmuV3 { evt });
            let size = size_of::<abi::VeventHeader>()
                + record.map_or(0, |_| size_of::<abi::VeventArmSmmuV3>());
            if bytes.len() + size > capacity {
                break;
            }
            let flags = match record {
                Some(_) => VeventFlags::empty(),
                None => VeventFlags::LOST_EVENTS,
            };
            let header = abi::VeventHeader {
                flags: flags.bits(),
                sequence,
            };
            bytes.extend_from_slice(abi::as_bytes(&header));
            if let Some(record) = &record {
                bytes.extend_from_slice(abi::as_bytes(record));
            }
            count += 1;
        }
        (bytes, count)
    }

    /// Whether anything is queued.
    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Drops the `count` oldest events (delivered).
    fn consume(&mut self, count: usize) {
        for (_, event) in self.events.drain(..count.min(self.events.len())) {
            if event.is_some() {
                self.held -= 1;
            }
        }
    }
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
            veventq: None,
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

    /// Linux `iommufd_veventq_alloc`: the vIOMMU's event queue, `depth`
    /// events deep. `EINVAL` for a depth of 0 or above
    /// [`abi::VEVENTQ_MAX_DEPTH`], `EOPNOTSUPP` for a type the vIOMMU does not
    /// speak, `EEXIST` when it has one already.
    pub fn veventq_alloc(
        &mut self,
        owner: OwnerId,
        viommu_id: ObjId,
        veventq_type: u32,
        depth: u32,
    ) -> Result<ObjId, Errno> {
        let o = self.owner(owner)?;
        let viommu = o.viommu(viommu_id)?;
        if depth == 0 || depth > abi::VEVENTQ_MAX_DEPTH {
            return Err(Errno::EINVAL);
        }
        if veventq_type != VeventqType::ArmSmmuV3 as u32 {
            return Err(Errno::EOPNOTSUPP);
        }
        if viommu.veventq.is_some() {
            return Err(Errno::EEXIST);
        }
        o.peek_id()?;
        self.admit(owner, Resource::ObjectSlot)?;
        self.services.charge(Resource::ObjectSlot)?;
        let o = self.owner_mut(owner)?;
        let id = o.insert(Object::Veventq(Veventq {
            viommu: viommu_id,
            depth: depth as usize,
            events: VecDeque::new(),
            held: 0,
            next_sequence: 0,
        }));
        if let Ok(viommu) = o.viommu_mut(viommu_id) {
            viommu.veventq = Some(id);
        }
        Ok(id)
    }

    /// The bytes `veventq_read` copies out for a buffer of `capacity` bytes
    /// and how many events they are; `EMSGSIZE` when events are queued but
    /// the first does not fit. Nothing leaves the queue until
    /// [`Self::veventq_consume`] (a reader whose buffer faults loses none).
    pub(crate) fn veventq_peek(
        &self,
        owner: OwnerId,
        id: ObjId,
        capacity: usize,
    ) -> Result<(Vec<u8>, usize), Errno> {
        let queue = self.owner(owner)?.veventq(id)?;
        let (bytes, count) = queue.peek(capacity);
        if count == 0 && !queue.is_empty() {
            return Err(Errno::EMSGSIZE);
        }
        Ok((bytes, count))
    }

    /// Takes the oldest events that fit in `capacity` bytes, as
    /// `veventq_read` copies them out: the bytes and how many events.
    pub fn veventq_read(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        capacity: usize,
    ) -> Result<(Vec<u8>, usize), Errno> {
        let (bytes, count) = self.veventq_peek(owner, id, capacity)?;
        self.veventq_consume(owner, id, count)?;
        Ok((bytes, count))
    }

    /// Drops the `count` oldest events of a vEVENTQ (delivered).
    pub(crate) fn veventq_consume(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        count: usize,
    ) -> Result<(), Errno> {
        self.owner_mut(owner)?.veventq_mut(id)?.consume(count);
        Ok(())
    }

    /// Removes a vEVENTQ: what it held is gone with it.
    pub(crate) fn destroy_veventq(&mut self, owner: OwnerId, id: ObjId) {
        let Some(o) = self.owners.get_mut(&owner) else {
            return;
        };
        if let Some(Object::Veventq(queue)) = o.remove(id)
            && let Ok(viommu) = o.viommu_mut(queue.viommu)
        {
            viommu.veventq = None;
        }
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

/// Hands a fault of device `dev` of `o` to its vIOMMU's vEVENTQ, naming the
/// device by its virtual id, when the device is attached to a nested HWPT
/// over a vIOMMU that has one and binds it; `false` when not (the fault goes
/// to the HWPT's fault queue instead).
pub(crate) fn route_guest_event(o: &mut Owner, dev: ObjId, event: GuestEvent) -> bool {
    let target = (|| {
        let hwpt = o.device(dev).ok()?.attached?;
        let HwptKind::Nested {
            viommu: Some(viommu_id),
            ..
        } = o.hwpt(hwpt).ok()?.kind
        else {
            return None;
        };
        let viommu = o.viommu(viommu_id).ok()?;
        let queue = viommu.veventq?;
        let virt_id = viommu
            .vdevices
            .iter()
            .find(|&(_, &vdevice)| o.vdevice(vdevice).is_ok_and(|v| v.device == dev))
            .map(|(&virt_id, _)| virt_id)?;
        Some((queue, virt_id))
    })();
    let Some((queue, virt_id)) = target else {
        return false;
    };
    match o.veventq_mut(queue) {
        Ok(queue) => {
            queue.push(event.for_virtual_id(virt_id));
            true
        }
        Err(_) => false,
    }
}
