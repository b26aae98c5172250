//! HWPTs and devices: allocation, attach/replace/detach, nested invalidation,
//! hardware info.

use crate::fill::Piece;
use crate::{
    FaultQueue, Hwpt, HwptKind, Iommufd, ObjId, Object, OwnerId, Reservation, Resource, ResvOwner,
    Services, errno,
};
use abi::{Errno, HwCapabilities, HwInfoType, HwptAllocFlags, HwptDataType, InvalidateDataType};
use alloc::vec::Vec;
use iommu::{
    DeviceId, DomainHandle, DomainKind, HwInfo, IommuError, IommuUnit, IovaRange, NestedData,
    NestedInvalidation, Prot, UnitId,
};

/// Decodes `hwpt_alloc` vendor data: `None` for a paging HWPT. Unknown type →
/// `EOPNOTSUPP`, short data → `EINVAL`, non-zero unknown tail → `E2BIG`, unknown
/// flags or reserved bits → `EOPNOTSUPP`.
pub fn decode_hwpt_data(data_type: u32, data: &[u8]) -> Result<Option<NestedData>, Errno> {
    Ok(Some(match HwptDataType::from_raw(data_type)? {
        HwptDataType::None if data.is_empty() => return Ok(None),
        HwptDataType::None => return Err(Errno::EINVAL),
        HwptDataType::VtdS1 => {
            let d: abi::HwptVtdS1 = abi::decode(data)?;
            NestedData::VtdS1 {
                flags: d.flags,
                pgtbl_addr: d.pgtbl_addr,
                addr_width: d.addr_width,
            }
        }
        HwptDataType::ArmSmmuV3 => {
            let d: abi::HwptArmSmmuV3 = abi::decode(data)?;
            NestedData::ArmSmmuV3 { ste: d.ste }
        }
        HwptDataType::AmdViV2 => {
            let d: abi::HwptAmdViV2 = abi::decode(data)?;
            NestedData::AmdViV2 { dte: d.dte }
        }
    }))
}

/// Decodes `entry_num` invalidation entries of `entry_len` bytes from `data`,
/// stopping at the first bad one: the decoded prefix and the error, if any.
pub fn decode_invalidations(
    data_type: u32,
    entry_len: u32,
    entry_num: u32,
    data: &[u8],
) -> (Vec<NestedInvalidation>, Result<(), Errno>) {
    let mut out = Vec::new();
    let kind = match InvalidateDataType::from_raw(data_type) {
        Ok(kind) => kind,
        Err(e) => return (out, Err(e)),
    };
    let needed = (entry_len as usize).checked_mul(entry_num as usize);
    if entry_len == 0 || needed.is_none_or(|n| data.len() < n) {
        return (out, Err(Errno::EINVAL));
    }
    for raw in data
        .chunks_exact(entry_len as usize)
        .take(entry_num as usize)
    {
        let entry = match kind {
            InvalidateDataType::VtdS1 => {
                abi::decode::<abi::InvalidateVtdS1>(raw).map(|e| NestedInvalidation::VtdS1 {
                    addr: e.addr,
                    npages: e.npages,
                    flags: e.flags,
                })
            }
            InvalidateDataType::ArmSmmuV3 => abi::decode::<abi::InvalidateArmSmmuV3>(raw)
                .map(|e| NestedInvalidation::ArmSmmuV3 { cmd: e.cmd }),
            InvalidateDataType::AmdViV2 => abi::decode::<abi::InvalidateAmdViV2>(raw)
                .map(|e| NestedInvalidation::AmdViV2 { cmd: e.cmd }),
        };
        match entry {
            Ok(e) => out.push(e),
            Err(e) => return (out, Err(e)),
        }
    }
    (out, Ok(()))
}

/// What `get_hw_info` reports besides the bytes it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwInfoReply {
    /// Which vendor's registers the data holds.
    pub data_type: HwInfoType,
    /// Length of the kernel's data (the caller's buffer got a prefix or a zeroed tail).
    pub data_len: u32,
    /// Linux's `out_capabilities` bits (and NESTING at bit 32).
    pub capabilities: HwCapabilities,
    /// log2 of the PASIDs the device may use: 0, since no device is given
    /// PASIDs here (Linux reports 0 for a device without the PASID capability).
    pub max_pasid_log2: u8,
}

/// The IOVA outside a unit's aperture, reserved while a domain of it is in use.
fn aperture_complement(aperture: IovaRange) -> Vec<IovaRange> {
    let mut out = Vec::new();
    if aperture.start > 0 {
        out.push(IovaRange {
            start: 0,
            last: aperture.start - 1,
        });
    }
    if aperture.last < u64::MAX {
        out.push(IovaRange {
            start: aperture.last + 1,
            last: u64::MAX,
        });
    }
    out
}

enum Target {
    Existing(ObjId),
    NewAuto,
}

/// A paging domain to create for an IOAS (automatic or explicit).
struct NewPaging {
    owner: OwnerId,
    unit: UnitId,
    ioas: ObjId,
    id: ObjId,
    kind: HwptKind,
    reservations: Vec<Reservation>,
    fill: Vec<(Piece, Prot)>,
    alignment: u64,
    min_page: u64,
}

impl<U: IommuUnit, S: Services> Iommufd<U, S> {
    /// Checks that a new paging domain of `unit` fits the IOAS: its aperture and
    /// page size must not conflict with areas or allowed ranges (`EADDRINUSE`).
    fn plan_paging(
        &self,
        owner: OwnerId,
        ioas_id: ObjId,
        unit: UnitId,
        kind_for: impl FnOnce(ObjId) -> HwptKind,
        extra: &[Reservation],
    ) -> Result<NewPaging, Errno> {
        let o = self.owner(owner)?;
        let ioas = o.ioas(ioas_id)?;
        let id = o.peek_id()?;
        let info = self.units[unit.0 as usize].info();
        let mut reservations: Vec<Reservation> = aperture_complement(info.aperture)
            .into_iter()
            .map(|range| Reservation {
                range,
                owner: ResvOwner::Hwpt(id),
            })
            .collect();
        reservations.extend_from_slice(extra);
        if reservations
            .iter()
            .any(|r| ioas.overlaps_area(r.range) || ioas.overlaps_allowed(r.range))
        {
            return Err(Errno::EADDRINUSE);
        }
        let min_page = info.min_page_size();
        let alignment = ioas.alignment.max(min_page);
        // Every area must stay mappable: its IOVA, length and user page
        // offset aligned to the new page size (Linux
        // `iopt_check_iova_alignment`), so a byte-granular area made without
        // domains keeps them out.
        let page_offset = |a: &crate::Area| {
            self.pages
                .get(a.pages)
                .map_or(0, |p| p.user_address(a.offset) % crate::PAGE_SIZE)
        };
        if ioas
            .areas
            .iter()
            .any(|(&s, a)| !crate::ioas::area_fits(alignment, s, a.last - s + 1, page_offset(a)))
        {
            return Err(Errno::EADDRINUSE);
        }
        let fill = ioas
            .areas
            .iter()
            .map(|(&s, a)| {
                (
                    Piece {
                        iova: s,
                        len: a.last - s + 1,
                        pages: a.pages,
                        offset: a.offset,
                    },
                    a.prot,
                )
            })
            .collect();
        Ok(NewPaging {
            owner,
            unit,
            ioas: ioas_id,
            id,
            kind: kind_for(id),
            reservations,
            fill,
            alignment,
            min_page,
        })
    }

    /// Allocates the domain and fills it with every area, all or nothing.
    fn build_paging(&mut self, plan: &NewPaging, kind: DomainKind) -> Result<DomainHandle, Errno> {
        let domain = self.units[plan.unit.0 as usize]
            .alloc_domain(kind)
            .map_err(errno)?;
        let huge_pages = self
            .owner(plan.owner)
            .and_then(|o| o.ioas(plan.ioas))
            .is_ok_and(|ioas| ioas.huge_pages);
        for (i, (piece, prot)) in plan.fill.iter().enumerate() {
            if let Err((e, _)) = self.map_all(&[(plan.unit, domain)], &[*piece], *prot, huge_pages)
            {
                self.teardown_domain(plan, domain, plan.fill[..i].iter().map(|(p, _)| *p));
                return Err(e);
            }
        }
        Ok(domain)
    }

    /// Unmaps `pieces`, flushes, and frees a domain nobody is attached to. The
    /// areas behind the pieces stay, so their pages stay pinned either way.
    fn teardown_domain(
        &mut self,
        plan: &NewPaging,
        domain: DomainHandle,
        pieces: impl Iterator<Item = Piece>,
    ) {
        let pieces: Vec<Piece> = pieces.collect();
        let _ = self.unmap_pieces(plan.unit, domain, &pieces);
        self.free_or_lose_domain(plan.owner, plan.ioas, plan.unit, domain);
    }

    /// Frees a domain; when the unit cannot (the invalidation that must come
    /// first failed), the domain may still translate to every page of `ioas`
    /// (its tables are kept by the driver): the IOAS loses it, and from then
    /// on quarantines the pages it lets go instead of unpinning them.
    pub(crate) fn free_or_lose_domain(
        &mut self,
        owner: OwnerId,
        ioas: ObjId,
        unit: UnitId,
        domain: DomainHandle,
    ) {
        if self.units[unit.0 as usize].free_domain(domain).is_ok() {
            return;
        }
        self.lost_domains += 1;
        if let Ok(ioas) = self.owner_mut(owner).and_then(|o| o.ioas_mut(ioas)) {
            ioas.lost_domains += 1;
        }
    }

    /// Records a built paging domain as a HWPT of its IOAS.
    fn commit_paging(&mut self, owner: OwnerId, plan: NewPaging, domain: DomainHandle) -> ObjId {
        let o = self.owners.entry(owner).or_default();
        let id = o.insert(Object::Hwpt(Hwpt {
            kind: plan.kind,
            unit: plan.unit,
            domain,
            min_page: plan.min_page,
            devices: 0,
            children: 0,
            faults: FaultQueue::new(),
            dirty_tracking: false,
        }));
        debug_assert_eq!(id, plan.id);
        if let Ok(ioas) = o.ioas_mut(plan.ioas) {
            ioas.domains.push(id);
            let mut handles = ioas.handles.to_vec();
            handles.push((plan.unit, domain));
            ioas.handles = handles.into();
            ioas.alignment = plan.alignment;
            ioas.reserved.extend(plan.reservations);
            ioas.rebuild();
        }
        id
    }

    /// Allocates a HWPT for device `dev_id`'s unit: a paging one over IOAS `pt_id`
    /// (`NEST_PARENT` to allow nesting), or with `data` a nested one over the
    /// NEST_PARENT HWPT `pt_id`.
    pub fn hwpt_alloc(
        &mut self,
        owner: OwnerId,
        dev_id: ObjId,
        pt_id: ObjId,
        flags: HwptAllocFlags,
        data: Option<NestedData>,
    ) -> Result<ObjId, Errno> {
        let o = self.owner(owner)?;
        let unit = o.device(dev_id)?.unit;
        let info = self.units[unit.0 as usize].info();
        let pt = o.objects.get(&pt_id).ok_or(Errno::ENOENT)?;
        // Dirty tracking needs the unit's (Linux: EOPNOTSUPP without
        // IOMMU_CAP_DIRTY_TRACKING), and no fault queue object exists to
        // name (Linux `iommufd_get_fault`: ENOENT).
        let dirty_tracking = flags.contains(HwptAllocFlags::DIRTY_TRACKING);
        if dirty_tracking && !self.units[unit.0 as usize].dirty_tracking() {
            return Err(Errno::EOPNOTSUPP);
        }
        if flags.contains(HwptAllocFlags::FAULT_ID_VALID) {
            return Err(Errno::ENOENT);
        }
        let Some(data) = data else {
            if !matches!(pt, Object::Ioas(_)) {
                return Err(Errno::EINVAL);
            }
            let nest_parent = flags.contains(HwptAllocFlags::NEST_PARENT);
            if nest_parent && info.nesting.is_none() {
                return Err(Errno::EOPNOTSUPP);
            }
            let plan = self.plan_paging(
                owner,
                pt_id,
                unit,
                |_| HwptKind::Paging {
                    ioas: pt_id,
                    auto: false,
                    nest_parent,
                },
                &[],
            )?;
            self.admit(owner, Resource::ObjectSlot)?;
            self.admit(owner, Resource::Domain)?;
            self.services.charge(Resource::ObjectSlot)?;
            self.services.charge(Resource::Reservation)?;
            self.services.charge(Resource::IovaNode)?;
            let kind = if nest_parent {
                DomainKind::NestParent
            } else {
                DomainKind::Paging
            };
            let domain = self.build_paging(&plan, kind)?;
            let id = self.commit_paging(owner, plan, domain);
            if let Ok(hwpt) = self.owner_mut(owner).and_then(|o| o.hwpt_mut(id)) {
                hwpt.dirty_tracking = dirty_tracking;
            }
            return Ok(id);
        };
        // Over a vIOMMU: its parent is the stage 2, and it holds the
        // reference the nested HWPT would otherwise hold on the parent.
        let (parent_id, viommu) = match pt {
            Object::Hwpt(_) => (pt_id, None),
            Object::Viommu(v) if v.unit == unit => (v.parent, Some(pt_id)),
            _ => return Err(Errno::EINVAL),
        };
        let parent = o.hwpt(parent_id)?;
        if !matches!(
            parent.kind,
            HwptKind::Paging {
                nest_parent: true,
                ..
            }
        ) {
            return Err(Errno::EINVAL);
        }
        if !flags.is_empty() {
            return Err(Errno::EOPNOTSUPP);
        }
        if parent.unit != unit {
            return Err(Errno::EINVAL);
        }
        if info.nesting.map(|n| n.format) != Some(data.format()) {
            return Err(Errno::EOPNOTSUPP);
        }
        let parent_domain = parent.domain;
        let min_page = parent.min_page;
        o.peek_id()?;
        self.admit(owner, Resource::ObjectSlot)?;
        self.admit(owner, Resource::Domain)?;
        self.services.charge(Resource::ObjectSlot)?;
        let domain = self.units[unit.0 as usize]
            .alloc_domain(DomainKind::Nested {
                parent: parent_domain,
                data,
            })
            .map_err(errno)?;
        let o = self.owners.entry(owner).or_default();
        let id = o.insert(Object::Hwpt(Hwpt {
            kind: HwptKind::Nested {
                parent: parent_id,
                viommu,
            },
            unit,
            domain,
            min_page,
            devices: 0,
            children: 0,
            faults: FaultQueue::new(),
            dirty_tracking: false,
        }));
        match viommu {
            Some(viommu) => {
                if let Ok(viommu) = o.viommu_mut(viommu) {
                    viommu.nested += 1;
                }
            }
            None => {
                if let Ok(parent) = o.hwpt_mut(parent_id) {
                    parent.children += 1;
                }
            }
        }
        Ok(id)
    }

    /// Removes a HWPT nothing references and frees its domain.
    pub(crate) fn destroy_hwpt(&mut self, owner: OwnerId, id: ObjId) {
        let Some(o) = self.owners.get_mut(&owner) else {
            return;
        };
        let Some(Object::Hwpt(hwpt)) = o.remove(id) else {
            return;
        };
        // The IOAS whose pages the domain may reach: its own, or its parent's.
        let mut reached = None;
        match hwpt.kind {
            HwptKind::Paging { ioas, .. } => {
                reached = Some(ioas);
                let Ok(i) = o.ioas(ioas) else { return };
                let others: Vec<ObjId> = i.domains.iter().copied().filter(|&d| d != id).collect();
                let alignment = others
                    .iter()
                    .filter_map(|&d| o.hwpt(d).ok().map(|h| h.min_page))
                    .fold(1, u64::max);
                if let Ok(i) = o.ioas_mut(ioas) {
                    i.domains = others;
                    i.handles = i
                        .handles
                        .iter()
                        .copied()
                        .filter(|&(u, d)| (u, d) != (hwpt.unit, hwpt.domain))
                        .collect();
                    i.alignment = alignment;
                    i.reserved.retain(|r| r.owner != ResvOwner::Hwpt(id));
                    i.rebuild();
                }
            }
            HwptKind::Nested { parent, viommu } => {
                match viommu {
                    Some(viommu) => {
                        if let Ok(v) = o.viommu_mut(viommu) {
                            v.nested -= 1;
                        }
                    }
                    None => {
                        if let Ok(p) = o.hwpt_mut(parent) {
                            p.children -= 1;
                        }
                    }
                }
                if let Ok(p) = o.hwpt(parent)
                    && let HwptKind::Paging { ioas, .. } = p.kind
                {
                    reached = Some(ioas);
                }
            }
        }
        match reached {
            Some(ioas) => self.free_or_lose_domain(owner, ioas, hwpt.unit, hwpt.domain),
            None => {
                let freed = self.units[hwpt.unit.0 as usize].free_domain(hwpt.domain);
                debug_assert!(freed.is_ok(), "a domain over no IOAS keeps nothing");
            }
        }
    }

    /// Attaches a detached device to an IOAS (reusing its compatible automatic HWPT
    /// or creating one filled with every area) or to a HWPT. Returns the HWPT.
    /// An attached device: `EBUSY` when it is already there, `EINVAL` anywhere
    /// else (use replace), as Linux; `EADDRINUSE` if the device's
    /// reserved regions or the unit's aperture conflict with areas or allowed
    /// ranges. Nothing moves on error.
    pub fn device_attach(
        &mut self,
        owner: OwnerId,
        dev_id: ObjId,
        pt_id: ObjId,
    ) -> Result<ObjId, Errno> {
        self.attach_to(owner, dev_id, pt_id, false)
    }

    /// Moves an attached device to another IOAS or HWPT in one step; on error it
    /// stays where it was and nothing changes. `EINVAL` while another function
    /// of its group is attached: the unit cannot move one without the other
    /// (Linux moves the whole group; here the others detach first).
    pub fn device_replace(
        &mut self,
        owner: OwnerId,
        dev_id: ObjId,
        pt_id: ObjId,
    ) -> Result<ObjId, Errno> {
        self.attach_to(owner, dev_id, pt_id, true)
    }

    /// Blocks the device's DMA (never bypass) and drops its HWPT reference (an
    /// automatic HWPT goes with its last device). `EINVAL` if not attached.
    pub fn device_detach(&mut self, owner: OwnerId, dev_id: ObjId) -> Result<(), Errno> {
        let o = self.owner(owner)?;
        let dev = o.device(dev_id)?;
        let Some(current) = dev.attached else {
            return Err(Errno::EINVAL);
        };
        let unit = dev.unit;
        let ids: Vec<DeviceId> = dev.ids().collect();
        // An id an attached function of its group holds stays in the group's
        // domain.
        let (_, held) = o.attached_mates(dev_id, unit, &ids);
        for requester in ids.into_iter().filter(|id| !held.contains(id)) {
            self.units[unit.0 as usize].detach(requester);
        }
        self.owner_mut(owner)?.device_mut(dev_id)?.attached = None;
        self.release_attachment(owner, dev_id, current, true);
        Ok(())
    }

    /// The HWPT a device is attached to, if any.
    pub fn device_hwpt(&self, owner: OwnerId, dev_id: ObjId) -> Result<Option<ObjId>, Errno> {
        Ok(self.owner(owner)?.device(dev_id)?.attached)
    }

    fn attach_to(
        &mut self,
        owner: OwnerId,
        dev_id: ObjId,
        pt_id: ObjId,
        replace: bool,
    ) -> Result<ObjId, Errno> {
        let o = self.owner(owner)?;
        let device = o.device(dev_id)?;
        let (unit, requester, current) = (device.unit, device.requester, device.attached);
        let ids: Vec<DeviceId> = device.ids().collect();
        match (replace, current) {
            // As Linux: attaching where the device already is (its HWPT, or an
            // IOAS that HWPT maps) is EBUSY; anywhere else it is EINVAL, and
            // moving a device is `replace`'s job.
            (false, Some(cur)) => {
                let here = pt_id == cur
                    || matches!(o.hwpt(cur), Ok(Hwpt { kind: HwptKind::Paging { ioas, .. }, .. }) if *ioas == pt_id);
                return Err(if here { Errno::EBUSY } else { Errno::EINVAL });
            }
            (true, None) => return Err(Errno::EINVAL),
            _ => {}
        }
        // The unit cannot tell the functions of one group apart: while one
        // is attached, the others may only join its HWPT, and the group
        // moves only as a whole (detach the others first).
        let (group_hwpt, group_ids) = o.attached_mates(dev_id, unit, &ids);
        if group_hwpt.is_some() && replace {
            return Err(Errno::EINVAL);
        }
        let (target, ioas_id) = match o.objects.get(&pt_id).ok_or(Errno::ENOENT)? {
            Object::Ioas(ioas) => {
                let reuse = ioas.domains.iter().copied().find(|&h| {
                    o.hwpt(h).is_ok_and(|h| {
                        h.unit == unit && matches!(h.kind, HwptKind::Paging { auto: true, .. })
                    })
                });
                (reuse.map_or(Target::NewAuto, Target::Existing), pt_id)
            }
            Object::Hwpt(h) => {
                if h.unit != unit {
                    return Err(Errno::EINVAL);
                }
                (Target::Existing(pt_id), o.hwpt_ioas(pt_id)?)
            }
            Object::Device(_) | Object::Viommu(_) | Object::Vdevice(_) | Object::Veventq(_) => {
                return Err(Errno::EINVAL);
            }
        };
        if let (Target::Existing(t), Some(c)) = (&target, current)
            && *t == c
        {
            return Ok(c);
        }
        if let Some(group) = group_hwpt
            && !matches!(target, Target::Existing(t) if t == group)
        {
            return Err(Errno::EINVAL);
        }
        let current_ioas = current.map(|c| o.hwpt_ioas(c)).transpose()?;
        let moves_ioas = current_ioas != Some(ioas_id);
        let device_resv: Vec<Reservation> = if moves_ioas {
            self.units[unit.0 as usize]
                .reserved_regions(requester)
                .into_iter()
                .map(|r| Reservation {
                    range: r.range,
                    owner: ResvOwner::Device(dev_id),
                })
                .collect()
        } else {
            Vec::new()
        };
        let plan = match target {
            Target::NewAuto => Some(self.plan_paging(
                owner,
                ioas_id,
                unit,
                |_| HwptKind::Paging {
                    ioas: ioas_id,
                    auto: true,
                    nest_parent: false,
                },
                &device_resv,
            )?),
            Target::Existing(_) => {
                let ioas = o.ioas(ioas_id)?;
                if device_resv
                    .iter()
                    .any(|r| ioas.overlaps_area(r.range) || ioas.overlaps_allowed(r.range))
                {
                    return Err(Errno::EADDRINUSE);
                }
                None
            }
        };
        if plan.is_some() {
            self.admit(owner, Resource::ObjectSlot)?;
            self.admit(owner, Resource::Domain)?;
            self.services.charge(Resource::ObjectSlot)?;
        }
        if plan.is_some() || !device_resv.is_empty() {
            self.services.charge(Resource::Reservation)?;
            self.services.charge(Resource::IovaNode)?;
        }
        let (target_id, domain) = match (&target, &plan) {
            (Target::Existing(t), _) => (*t, self.owner(owner)?.hwpt(*t)?.domain),
            (Target::NewAuto, Some(plan)) => {
                (plan.id, self.build_paging(plan, DomainKind::Paging)?)
            }
            (Target::NewAuto, None) => return Err(Errno::EINVAL),
        };
        let previous = match current {
            Some(c) => Some(self.owner(owner)?.hwpt(c)?.domain),
            None => None,
        };
        let ids: Vec<DeviceId> = ids
            .into_iter()
            .filter(|id| !group_ids.contains(id))
            .collect();
        if let Err(e) = attach_every_id(&mut self.units[unit.0 as usize], &ids, domain, previous) {
            if let Some(plan) = &plan {
                let pieces: Vec<Piece> = plan.fill.iter().map(|(p, _)| *p).collect();
                self.teardown_domain(plan, domain, pieces.into_iter());
            }
            return Err(errno(e));
        }
        match plan {
            Some(plan) => {
                self.commit_paging(owner, plan, domain);
            }
            None if !device_resv.is_empty() => {
                let ioas = self.owner_mut(owner)?.ioas_mut(ioas_id)?;
                ioas.reserved.extend(device_resv);
                ioas.rebuild();
            }
            None => {}
        }
        let o = self.owner_mut(owner)?;
        o.hwpt_mut(target_id)?.devices += 1;
        o.device_mut(dev_id)?.attached = Some(target_id);
        if let Some(old) = current {
            self.release_attachment(owner, dev_id, old, moves_ioas);
        }
        Ok(target_id)
    }

    /// Drops a device's reference to `old` (its previous HWPT), its reservations in
    /// the old IOAS when it left it, and an automatic HWPT left without devices.
    fn release_attachment(&mut self, owner: OwnerId, dev_id: ObjId, old: ObjId, drop_resv: bool) {
        let Some(o) = self.owners.get_mut(&owner) else {
            return;
        };
        let Ok(old_ioas) = o.hwpt_ioas(old) else {
            return;
        };
        let Ok(h) = o.hwpt_mut(old) else { return };
        h.devices -= 1;
        let remove = h.devices == 0 && matches!(h.kind, HwptKind::Paging { auto: true, .. });
        if drop_resv && let Ok(ioas) = o.ioas_mut(old_ioas) {
            ioas.reserved
                .retain(|r| r.owner != ResvOwner::Device(dev_id));
            ioas.rebuild();
        }
        if remove {
            self.destroy_hwpt(owner, old);
        }
    }

    /// Carries out invalidations of a nested HWPT's task-owned tables; returns how
    /// many were processed and the first error.
    pub fn hwpt_invalidate(
        &mut self,
        owner: OwnerId,
        hwpt_id: ObjId,
        requests: &[NestedInvalidation],
    ) -> (u32, Result<(), Errno>) {
        if self
            .owner(owner)
            .is_ok_and(|o| matches!(o.objects.get(&hwpt_id), Some(Object::Viommu(_))))
        {
            return self.viommu_invalidate(owner, hwpt_id, requests);
        }
        let hwpt = match self.owner(owner).and_then(|o| o.hwpt(hwpt_id)) {
            Ok(h) => h,
            Err(e) => return (0, Err(e)),
        };
        if !matches!(hwpt.kind, HwptKind::Nested { .. }) {
            return (0, Err(Errno::EINVAL));
        }
        let (unit, domain) = (hwpt.unit, hwpt.domain);
        let (done, result) = self.units[unit.0 as usize].invalidate_nested(domain, requests);
        (
            u32::try_from(done).unwrap_or(u32::MAX),
            result.map_err(errno),
        )
    }

    /// Copies the raw registers of the unit behind `dev_id` into `out` (a prefix
    /// when shorter, zeroed tail when longer).
    pub fn get_hw_info(
        &mut self,
        owner: OwnerId,
        dev_id: ObjId,
        out: &mut [u8],
    ) -> Result<HwInfoReply, Errno> {
        let unit = self.owner(owner)?.device(dev_id)?.unit;
        let u = &self.units[unit.0 as usize];
        let mut capabilities = HwCapabilities::empty();
        if u.info().nesting.is_some() {
            capabilities |= HwCapabilities::NESTING;
        }
        // Only where the hardware reports it and the driver drives it.
        if u.dirty_tracking() {
            capabilities |= HwCapabilities::DIRTY_TRACKING;
        }
        let (data_type, written) = match u.hw_info() {
            HwInfo::IntelVtd { cap, ecap } => (
                HwInfoType::IntelVtd,
                abi::copy_out(
                    &abi::HwInfoVtd {
                        flags: 0,
                        reserved: 0,
                        cap_reg: cap,
                        ecap_reg: ecap,
                    },
                    out,
                ),
            ),
            HwInfo::ArmSmmuV3 { idr, iidr, aidr } => (
                HwInfoType::ArmSmmuV3,
                abi::copy_out(
                    &abi::HwInfoArmSmmuV3 {
                        flags: 0,
                        reserved: 0,
                        idr,
                        iidr,
                        aidr,
                    },
                    out,
                ),
            ),
            HwInfo::AmdVi { efr, efr2 } => (
                HwInfoType::AmdVi,
                abi::copy_out(&abi::HwInfoAmdVi { efr, efr2 }, out),
            ),
            HwInfo::None => (HwInfoType::None, abi::copy_out_bytes(&[], out)),
        };
        let data_len = match data_type {
            HwInfoType::IntelVtd => core::mem::size_of::<abi::HwInfoVtd>(),
            HwInfoType::ArmSmmuV3 => core::mem::size_of::<abi::HwInfoArmSmmuV3>(),
            HwInfoType::AmdVi => core::mem::size_of::<abi::HwInfoAmdVi>(),
            HwInfoType::None => 0,
        };
        debug_assert!(written <= data_len);
        Ok(HwInfoReply {
            data_type,
            data_len: data_len as u32,
            capabilities,
            max_pasid_log2: 0,
        })
    }
}

/// Puts every id of a device (`ids`, its requester first) into `domain`, all
/// or nothing: on an error the ids already moved go back to `previous` (or
/// are blocked, when the device had no domain or the way back fails too).
fn attach_every_id<U: IommuUnit>(
    unit: &mut U,
    ids: &[DeviceId],
    domain: DomainHandle,
    previous: Option<DomainHandle>,
) -> Result<(), IommuError> {
    for (done, &id) in ids.iter().enumerate() {
        if let Err(error) = unit.attach(id, domain) {
            for &moved in &ids[..done] {
                let back = previous.map_or(Err(IommuError::Invalid), |old| unit.attach(moved, old));
                if back.is_err() {
                    unit.detach(moved);
                }
            }
            return Err(error);
        }
    }
    Ok(())
}
