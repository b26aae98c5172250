//! The `IommuUnit` contract over one VT-d instance (`hardware.rs`): domains
//! and their domain ids, which device is attached where, RMRR identity
//! maps, MSI routes. The instance does what this layer decides.
//!
//! Policy stays with the caller: the unit only does what it is told, keeps
//! every device it was not told about blocked, and bounds every wait on the
//! hardware by a timeout that turns into an error.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    IovaRange, MsiMessage, MsiRoute, NestedInvalidation, Prot, ReservedKind, ReservedRegion,
    UnitId, UnitInfo, UnitKind,
};

use iommu_kit::{IdAllocator, TakenId};

use crate::discovery::UnitDescription;
use crate::hardware::{Environment, Error, Hardware, Mode, Options, Registers, Translation};
use crate::interrupt::{Irte, SourceCheck, remappable_msi_address};
use crate::paging::DomainTable;
use crate::regs::Global;

/// The x86 interrupt-message window, never translated as DMA (VT-d 3.4 §3.15).
const INTERRUPT_WINDOW: IovaRange = IovaRange {
    start: 0xFEE0_0000,
    last: 0xFEEF_FFFF,
};

struct Domain<'a> {
    did: u16,
    translation: Translation,
    devices: usize,
    table: Option<Box<dyn DomainTable + 'a>>,
    /// RMRR ranges already identity-mapped into `table`.
    direct: Vec<IovaRange>,
    /// A flush of this domain failed: what it should have invalidated may
    /// still be cached, so the next flush invalidates the whole domain before
    /// any unlinked table page is freed.
    owes_full_invalidation: AtomicBool,
    /// Dirty tracking is on: every device attached gets SSADE.
    dirty_tracking: bool,
}

/// The route of an MSI that goes through no IRTE (remapping off).
const UNREMAPPED_ROUTE: MsiRoute = MsiRoute(u64::MAX);

/// One VT-d remapping unit behind the contract.
pub struct Vtd<'a, R: Registers> {
    id: UnitId,
    /// The instance; declared first so that it is dropped first: translation
    /// goes off before the domains' tables are freed.
    pub hardware: Hardware<'a, R>,
    domains: BTreeMap<u32, Domain<'a>>,
    attached: BTreeMap<u16, u32>,
    next_handle: u32,
    /// Domain ids (CAP.ND); a freed one is invalidated before it is handed
    /// out again.
    dids: IdAllocator,
    /// Devices (source id, old domain id) whose detach invalidation failed:
    /// the context cache and IOTLB may still hold their old translation. No
    /// device is attached, no domain freed and no flush reported complete
    /// until these invalidations have been made good ([`Vtd::settle`]).
    stale_devices: Vec<(u16, u16)>,
}

impl<'a, R: Registers> Vtd<'a, R> {
    /// Brings up every unit firmware describes, in order (`UnitId` = index),
    /// each with no domain and every device blocked: a unit left as firmware
    /// left it lets the DMA of the devices behind it go wherever firmware
    /// pointed it (Linux `init_dmars` brings up every DRHD). All or nothing:
    /// when one fails, those already up are dropped (parked, blocking) and the
    /// index of the one that failed comes back with its error.
    pub fn bring_up_all(
        units: impl IntoIterator<Item = (R, UnitDescription)>,
        env: Environment<'a>,
        options: Options,
    ) -> Result<Vec<Self>, (usize, Error)> {
        iommu::bring_up_each(
            units,
            || Error::Unsupported("more units than a UnitId names"),
            |id, (regs, description)| Self::new(id, regs, env, description, options),
        )
    }

    /// Brings the unit up (see [`Hardware::new`]) with no domain and every
    /// device blocked.
    pub fn new(
        id: UnitId,
        regs: R,
        env: Environment<'a>,
        description: UnitDescription,
        options: Options,
    ) -> Result<Self, Error> {
        let hardware = Hardware::new(regs, env, description, options)?;
        // DID 0 is reserved under caching mode (§6.1); skip it always.
        let dids = IdAllocator::new(1..=hardware.cap().domain_count().min(1 << 16) - 1);
        Ok(Self {
            id,
            hardware,
            domains: BTreeMap::new(),
            attached: BTreeMap::new(),
            next_handle: 1,
            stale_devices: Vec::new(),
            dids,
        })
    }

    /// Identity-maps the device's RMRRs (VT-d 3.4 §8.4) into a paging
    /// domain, once per domain and range.
    fn map_direct_regions(&mut self, sid: u16, handle: u32) -> Result<(), IommuError> {
        let ranges: Vec<IovaRange> = self
            .hardware
            .description
            .reserved
            .iter()
            .filter(|region| region.requester == sid)
            .map(|region| region.range)
            .collect();
        let domain = self.domains.get_mut(&handle).ok_or(IommuError::Invalid)?;
        let Some(table) = domain.table.as_mut() else {
            return Ok(());
        };
        for range in ranges {
            if domain.direct.contains(&range) {
                continue;
            }
            let read_write = Prot {
                read: true,
                write: true,
            };
            // SAFETY: `&mut self`: no other call runs on the table.
            unsafe {
                table.map(
                    range.start,
                    range.start,
                    range.last - range.start + 1,
                    read_write,
                )
            }?;
            domain.direct.push(range);
        }
        Ok(())
    }

    /// Physical address of a paging domain's top-level I/O page table.
    pub fn domain_table_root(&self, domain: DomainHandle) -> Option<u64> {
        let table = self.domains.get(&domain.0)?.table.as_ref()?;
        Some(table.root())
    }

    /// The hardware's walk of `domain`'s table for `iova`, level by level
    /// (for the demo and debugging); `false` for a domain without a table.
    pub fn walk_mapping(
        &self,
        domain: DomainHandle,
        iova: u64,
        visit: &mut dyn FnMut(&io_page_table::WalkStep),
    ) -> bool {
        match self.domains.get(&domain.0).and_then(|d| d.table.as_ref()) {
            Some(table) => {
                table.walk_to(iova, visit);
                true
            }
            None => false,
        }
    }

    /// The domain id the hardware sees for `domain`.
    pub fn domain_id(&self, domain: DomainHandle) -> Option<u16> {
        self.domains.get(&domain.0).map(|domain| domain.did)
    }

    /// Invalidates the IOTLB for `gather` in `domain` (the work `flush` does).
    /// Table pages that unmaps unlinked are freed only after it completed.
    ///
    /// A failed flush is made good by the next one, which invalidates the
    /// whole domain: the range of the failed one was never confirmed, and the
    /// pages its unmap unlinked are freed only after that.
    pub fn invalidate(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), Error> {
        self.settle()?;
        self.invalidate_shared(domain, gather)
    }

    /// [`Vtd::invalidate`] through a shared reference, beside other CPUs'
    /// flushes: it frees only the table pages unmaps inside `gather`
    /// unlinked ([`iommu_kit::Unlinked`]). A detach whose invalidation is
    /// still owed (only `&mut self` can repeat it) fails it.
    pub fn invalidate_shared(&self, domain: DomainHandle, gather: &Gather) -> Result<(), Error> {
        if !self.stale_devices.is_empty() {
            return Err(Error::Timeout("a detach's invalidation is still owed"));
        }
        let entry = self.domains.get(&domain.0).ok_or(Error::Invalid)?;
        let owed = entry.owes_full_invalidation.swap(false, Ordering::AcqRel);
        let unlinked = entry.table.as_ref().and_then(|table| table.unlinked());
        // Taken before the invalidation is queued: a batch unlinked later
        // waits for a flush issued after it.
        let taken = unlinked.map(|batches| match owed {
            true => batches.take_all(),
            false => batches.take_covered(gather),
        });
        let result = if owed {
            self.hardware.invalidate_domain(entry.did)
        } else {
            self.hardware.invalidate_range(entry.did, gather)
        };
        if let Err(error) = result {
            if owed || !gather.is_empty() {
                entry.owes_full_invalidation.store(true, Ordering::Release);
            }
            if let (Some(batches), Some(taken)) = (unlinked, taken) {
                batches.restore(taken);
            }
            return Err(error);
        }
        if let (Some(table), Some(taken)) = (entry.table.as_ref(), taken) {
            taken.release(|freed| table.release(freed));
        }
        Ok(())
    }

    /// With remapping on, the MSI goes through a fresh IRTE that accepts only
    /// the requesters `source` names; without it the message is unchanged.
    fn route_msi_checked(
        &mut self,
        source: SourceCheck,
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        if self.hardware.interrupts.is_none() {
            return Ok((UNREMAPPED_ROUTE, message));
        }
        let index = self
            .hardware
            .alloc_interrupt()
            .ok_or(IommuError::NoMemory)?;
        let entry = Irte::remapped_from(message.x86_vector(), message.x86_destination(), source);
        if let Err(error) = self.hardware.set_interrupt(index, entry) {
            let _ = self.hardware.free_interrupt(index);
            return Err(error.into());
        }
        if let Some(table) = self.hardware.interrupts.as_mut() {
            table.routes.insert(index);
        }
        let message = MsiMessage {
            address: remappable_msi_address(index),
            data: 0,
        };
        Ok((MsiRoute(u64::from(index)), message))
    }

    /// Repeats the invalidations of failed detaches (context cache, PASID
    /// cache, IOTLB of the old domain, §6.5.3.3) until they complete.
    fn settle(&mut self) -> Result<(), Error> {
        while let Some(&(sid, did)) = self.stale_devices.last() {
            self.hardware.invalidate_device(sid, did)?;
            self.stale_devices.pop();
        }
        Ok(())
    }

    /// A domain id for a new domain, and whether it was used before: a freed
    /// one, after a domain-selective IOTLB invalidation removed whatever the
    /// hardware still caches under it (§6.5.2.3), or else the lowest id never
    /// handed out. `NoMemory` once CAP.ND's ids are all live.
    fn take_domain_id(&mut self) -> Result<TakenId, IommuError> {
        let taken = self.dids.take().ok_or(IommuError::NoMemory)?;
        if taken.recycled
            && let Err(error) = self.hardware.invalidate_domain(taken.id as u16)
        {
            self.dids.untake(taken);
            return Err(error.into());
        }
        Ok(taken)
    }

    /// The translation and table of a new domain of `kind` (checked by the caller).
    fn build_domain(
        &mut self,
        kind: DomainKind,
    ) -> Result<(Translation, Option<Box<dyn DomainTable + 'a>>), IommuError> {
        Ok(match kind {
            DomainKind::Blocked => (Translation::Blocked, None),
            DomainKind::Identity if self.hardware.ecap().pass_through() => {
                (Translation::PassThrough, None)
            }
            DomainKind::Paging | DomainKind::NestParent => {
                let table: Box<dyn DomainTable + 'a> = match self.hardware.env.new_table {
                    Some(factory) => {
                        factory(self.hardware.table_format()).ok_or(IommuError::Unsupported)?
                    }
                    None => crate::paging::new_table(
                        self.hardware.table_format(),
                        self.hardware.cap(),
                        self.hardware.page_walks_snoop(),
                        self.hardware.description.output_bits,
                        self.hardware.env.dma,
                        self.hardware.env.flush_cache,
                    )?,
                };
                (Translation::Paging(table.root()), Some(table))
            }
            _ => return Err(IommuError::Unsupported),
        })
    }
}

impl<'a, R: Registers> IommuUnit for Vtd<'a, R> {
    fn info(&self) -> UnitInfo {
        let width = match self.hardware.address_width {
            1 => 39,
            _ => 48,
        }
        .min(self.hardware.cap().max_guest_address_width());
        // The leaves io-page-table will use for this unit's format: second
        // stage per CAP.SLLPS, first stage 2 MiB always and 1 GiB per CAP.FS1GP.
        let mut page_sizes = 1u64 << 12;
        let (large_2m, large_1g) = match self.hardware.mode() {
            Mode::ScalableFirstStage => (true, self.hardware.cap().first_stage_1g_pages()),
            _ => {
                let sllps = self.hardware.cap().second_stage_large_pages();
                (sllps & 1 != 0, sllps & 2 != 0)
            }
        };
        if large_2m {
            page_sizes |= 1 << 21;
        }
        if large_1g {
            page_sizes |= 1 << 30;
        }
        UnitInfo {
            name: "intel-vtd",
            kind: UnitKind::IntelVtd,
            aperture: IovaRange {
                start: 0,
                last: (1u64 << width) - 1,
            },
            page_sizes,
            nesting: None,
        }
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<ReservedRegion> {
        let mut regions = alloc::vec![ReservedRegion {
            range: INTERRUPT_WINDOW,
            kind: ReservedKind::Msi,
        }];
        regions.extend(
            self.hardware
                .description
                .reserved
                .iter()
                .filter(|region| u32::from(region.requester) == device.0)
                .map(|region| ReservedRegion {
                    range: region.range,
                    kind: ReservedKind::Direct,
                }),
        );
        regions
    }

    fn hw_info(&self) -> HwInfo {
        HwInfo::IntelVtd {
            cap: self.hardware.cap().0,
            ecap: self.hardware.ecap().0,
        }
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        match kind {
            DomainKind::Blocked | DomainKind::Paging | DomainKind::NestParent => {}
            DomainKind::Identity if self.hardware.ecap().pass_through() => {}
            _ => return Err(IommuError::Unsupported),
        }
        let taken = self.take_domain_id()?;
        let (translation, table) = match self.build_domain(kind) {
            Ok(built) => built,
            Err(error) => {
                self.dids.untake(taken);
                return Err(error);
            }
        };
        // The allocator's range ends below 2^16.
        let did = taken.id as u16;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.domains.insert(
            handle,
            Domain {
                did,
                translation,
                devices: 0,
                table,
                direct: Vec::new(),
                owes_full_invalidation: AtomicBool::new(false),
                dirty_tracking: false,
            },
        );
        Ok(DomainHandle(handle))
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        if entry.devices != 0 {
            return Err(IommuError::Busy);
        }
        // A device whose detach was never confirmed may still walk it.
        self.settle()?;
        if let Some(removed) = self.domains.remove(&domain.0) {
            if let Some(table) = removed.table.as_ref()
                && let Some(unlinked) = table.unlinked()
            {
                // No device walks it any more, and its domain id is
                // invalidated before another domain gets it, so nothing can
                // still use the unlinked pages.
                unlinked.take_all().release(|freed| table.release(freed));
            }
            self.dids.free(u32::from(removed.did));
        }
        Ok(())
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        Ok(self.invalidate(domain, gather)?)
    }

    fn shares_mapping(&self) -> bool {
        true
    }

    /// Under caching mode the returned gather names the new range (a
    /// not-present → present change must be invalidated, §6.1), with IH = 0:
    /// the map may have made directory entries present, whose not-present
    /// form the paging-structure caches may hold (§6.5.2.3 IH; Linux
    /// `__mapping_notify_one` passes ih = 0). Otherwise the gather is empty and
    /// the following `flush` costs nothing.
    unsafe fn map_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        let table = entry.table.as_ref().ok_or(IommuError::Invalid)?;
        // SAFETY: the caller keeps concurrent ranges disjoint.
        let gather = unsafe { table.map(iova, phys, len, prot) }?;
        if self.hardware.cap().caching_mode() {
            return Ok(Gather {
                freed_tables: !gather.is_empty(),
                ..gather
            });
        }
        self.hardware.flush_write_buffer()?;
        Ok(Gather::default())
    }

    unsafe fn unmap_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        match entry.table.as_ref() {
            // SAFETY: the caller keeps concurrent ranges disjoint.
            Some(table) => unsafe { table.unmap(iova, len) },
            // Blocking and identity domains map nothing.
            None => Ok(Gather::default()),
        }
    }

    fn flush_shared(&self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        Ok(self.invalidate_shared(domain, gather)?)
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        let sid = self.hardware.requester(device)?;
        let target = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        let (did, translation) = (target.did, target.translation);
        let previous = self.attached.get(&sid).copied();
        if previous == Some(domain.0) {
            return Ok(());
        }
        // Without it, a stale context entry of this very device could outlive
        // the attach (a not-present → present change is not invalidated).
        self.settle()?;
        // Everything that can fail for want of memory happens before the
        // switch, so that a failure leaves the device where it was; the RMRRs
        // are mapped first so that the device never runs without them.
        self.map_direct_regions(sid, domain.0)?;
        self.hardware.context_table((sid >> 8) as u8)?;
        if self.hardware.mode().is_scalable() && translation != Translation::Blocked {
            self.hardware.pasid_tables(sid)?;
        }
        if let Some(old) = previous.and_then(|handle| self.domains.get(&handle)) {
            let (old_did, old_translation) = (old.did, old.translation);
            if old_translation != Translation::Blocked
                && let Err(error) = self.hardware.block(sid, old_did)
            {
                // Blocked in memory, maybe not in the caches: detached, with
                // the invalidation owed.
                self.stale_devices.push((sid, old_did));
                self.attached.remove(&sid);
                if let Some(old) = previous.and_then(|handle| self.domains.get_mut(&handle)) {
                    old.devices -= 1;
                }
                return Err(error.into());
            }
        }
        let tracking = self
            .domains
            .get(&domain.0)
            .is_some_and(|d| d.dirty_tracking);
        let installed = self.hardware.install(sid, did, translation).and_then(|()| {
            if tracking {
                self.hardware.set_second_stage_dirty(sid, did, true)
            } else {
                Ok(())
            }
        });
        if let Err(error) = installed {
            // Stay blocked rather than half-attached.
            self.detach(device);
            return Err(error.into());
        }
        if let Some(old) = previous.and_then(|handle| self.domains.get_mut(&handle)) {
            old.devices -= 1;
        }
        if let Some(new) = self.domains.get_mut(&domain.0) {
            new.devices += 1;
        }
        self.attached.insert(sid, domain.0);
        Ok(())
    }

    /// Scalable second stage with ECAP.SLADS, tables from io-page-table.
    fn dirty_tracking(&self) -> bool {
        self.hardware.mode() == Mode::ScalableSecondStage
            && self.hardware.ecap().second_stage_access_dirty()
    }

    /// SSADE in the PASID entry of every device attached now, and of every
    /// device attached later (Linux `intel_iommu_set_dirty_tracking`).
    fn set_dirty_tracking(&mut self, domain: DomainHandle, enable: bool) -> Result<(), IommuError> {
        if !self.dirty_tracking() {
            return Err(IommuError::Unsupported);
        }
        let entry = self.domains.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
        if !matches!(entry.translation, Translation::Paging(_)) {
            return Err(IommuError::Invalid);
        }
        entry.dirty_tracking = enable;
        let did = entry.did;
        let devices: Vec<u16> = self
            .attached
            .iter()
            .filter(|&(_, &handle)| handle == domain.0)
            .map(|(&sid, _)| sid)
            .collect();
        for sid in devices {
            self.hardware.set_second_stage_dirty(sid, did, enable)?;
        }
        Ok(())
    }

    fn read_dirty(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, IommuError> {
        if !self.dirty_tracking() {
            return Err(IommuError::Unsupported);
        }
        let entry = self.domains.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
        let table = entry.table.as_mut().ok_or(IommuError::Invalid)?;
        table.read_dirty(iova, len, keep, dirty)
    }

    fn detach(&mut self, device: DeviceId) {
        let Ok(sid) = self.hardware.requester(device) else {
            return;
        };
        let Some(handle) = self.attached.remove(&sid) else {
            return;
        };
        if let Some(domain) = self.domains.get_mut(&handle) {
            domain.devices -= 1;
            let (did, translation) = (domain.did, domain.translation);
            // The entry is non-present whatever the invalidation returns; if it
            // failed, the caches may still hold the old translation until
            // `settle` repeats it, which everything that could make that
            // translation dangerous waits for.
            if translation != Translation::Blocked && self.hardware.block(sid, did).is_err() {
                self.stale_devices.push((sid, did));
            }
        }
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        let mut raw = Vec::new();
        self.hardware.drain_raw_faults(&mut raw);
        out.extend(raw.iter().map(|fault| fault.to_record(self.id)));
        raw.len()
    }

    fn invalidate_nested(
        &mut self,
        _domain: DomainHandle,
        _requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (0, Err(IommuError::Unsupported))
    }

    /// With remapping on, the MSI goes through a fresh IRTE that verifies the
    /// requester (§9.10 SVT) and the device sends the remappable format
    /// (§5.1.5.2). With remapping off, compatibility-format MSIs are not
    /// translated (§5.1.2.1) and `message` is returned as it is.
    fn route_msi(
        &mut self,
        device: DeviceId,
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        let requester = u16::try_from(device.0).map_err(|_| IommuError::Invalid)?;
        self.route_msi_checked(SourceCheck::Requester(requester), message)
    }

    /// SVT "verify bus" (§9.10): behind a PCIe-to-PCI bridge the MSI may
    /// carry the function's own id or the bridge's alias (Linux `set_msi_sid`).
    fn route_msi_from_buses(
        &mut self,
        device: DeviceId,
        (first, last): (u8, u8),
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        u16::try_from(device.0).map_err(|_| IommuError::Invalid)?;
        if first > last {
            return Err(IommuError::Invalid);
        }
        self.route_msi_checked(SourceCheck::Buses { first, last }, message)
    }

    /// Remapping on and compatibility format blocked (GSTS.IRES set, CFIS
    /// clear, §5.1.2.1): a device raises only its IRTEs, which verify its
    /// source-id.
    fn isolates_msi(&self) -> bool {
        let status = self.hardware.status();
        self.hardware.interrupts.is_some()
            && status.contains(Global::INTERRUPT_REMAPPING)
            && !status.contains(Global::COMPATIBILITY_FORMAT)
    }

    fn unroute_msi(&mut self, route: MsiRoute) {
        let Ok(index) = u16::try_from(route.0) else {
            return;
        };
        let routed = self
            .hardware
            .interrupts
            .as_mut()
            .is_some_and(|table| table.routes.remove(&index));
        if routed {
            // A failed invalidation leaves the entry non-present in memory.
            let _ = self.hardware.free_interrupt(index);
        }
    }
}
