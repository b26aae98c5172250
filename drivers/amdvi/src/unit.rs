//! The `IommuUnit` contract over one AMD-Vi instance (`hardware.rs`): domains and
//! their DomainIDs and page tables, which device is attached where, IVMD unity
//! maps, MSI routes, and the fault queues that device faults are routed to.
//! The instance does what this layer decides.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    IovaRange, MsiMessage, MsiRoute, NestedInvalidation, Prot, ReservedKind, ReservedRegion,
    UnitId, UnitInfo, UnitKind,
};
use iommu_kit::{IdAllocator, Unlinked};
use os_services::mmio::Mmio;
use os_services::{Clock, DmaMemory};

use crate::command::{Command, PageRange};
use crate::device_table::Dte;
use crate::discovery::UnitDescription;
use crate::fault::Event;
use crate::hardware::{Hardware, UnitError};
use crate::paging;

use crate::regs::CapabilityHeader;

/// The x86 interrupt window never translated as DMA (§2.1.3, 0xFEE0_0000-0xFEEF_FFFF).
const MSI_WINDOW: IovaRange = IovaRange {
    start: 0xFEE0_0000,
    last: 0xFEEF_FFFF,
};
/// DomainIDs this driver hands out. QEMU 10.0.2 treats DTE quad 1 bit 8 as reserved
/// (docs/QEMU.md §2), so IDs stay below 256 and 0 is never used.
const DOMAIN_IDS: core::ops::RangeInclusive<u32> = 1..=255;
/// Fault records a domain's queue (and the unit's queue of unowned faults) holds
/// until software drains it: a device faulting in a loop must not grow the heap
/// without bound. Records beyond this are counted in `Counters::dropped_faults`.
pub const FAULT_QUEUE_CAPACITY: usize = 1024;
// What the instance reads between two routings fits two full queues.
const _: () = assert!(crate::hardware::EVENT_BACKLOG >= 2 * FAULT_QUEUE_CAPACITY);

enum DomainBacking {
    Blocked,
    /// IOVA = physical address (DTE Mode 0 with IR/IW), for the kernel only.
    Identity,
    Paging {
        table: alloc::boxed::Box<paging::V1Table>,
        /// Table pages unlinked by `unmap`, released by the flush that
        /// covers them.
        unlinked: Unlinked,
    },
}

struct Domain {
    id: u16,
    backing: DomainBacking,
    devices: BTreeSet<u16>,
    faults: Vec<FaultRecord>,
    /// A flush of this domain failed: what it should have invalidated may
    /// still be cached, so the next flush invalidates every page (and PDE)
    /// before any unlinked table page is freed.
    owes_full_invalidation: AtomicBool,
    /// Dirty tracking is on: every device attached gets HAD.
    dirty_tracking: bool,
}

/// One AMD-Vi IOMMU behind the contract.
pub struct AmdVi {
    id: UnitId,
    /// The instance (registers, device table, command buffer, event log).
    pub hardware: Hardware,
    /// Where new paging domains take their table pages (normally the
    /// instance's own memory).
    table_dma: &'static (dyn DmaMemory + Sync),
    domains: BTreeMap<u32, Domain>,
    domain_ids: IdAllocator,
    next_handle: u32,
    attached: BTreeMap<u16, u32>,
    /// Faults from requesters in no domain, and command-side events.
    unowned_faults: Vec<FaultRecord>,
    unit_events: Vec<Event>,
    /// Devices (DeviceID, domain id) whose DTE change was never confirmed
    /// (the command buffer failed): the IOMMU may still hold the entry and
    /// the translations it led to. No device is attached, no domain freed and
    /// no flush reported complete until they are invalidated ([`AmdVi::settle`]).
    stale_devices: Vec<(u16, u16)>,
}

// SAFETY: the unit owns its instance and its domains' table pages exclusively.
// Through `&self` several CPUs only map, unmap and flush: the tables take
// disjoint ranges concurrently (`io_page_table::PageTable::map_shared`), the
// unlinked pages and the owed invalidations are behind a lock and an atomic,
// and the instance is `Sync` (see `Hardware`).
unsafe impl Send for AmdVi {}
// SAFETY: as for `Send`.
unsafe impl Sync for AmdVi {}

impl AmdVi {
    /// Repeats the invalidations of DTE changes that failed (the entry and
    /// every page of the domain it named, with PDE, §2.4.2, §2.4.3) until
    /// they complete.
    fn settle(&mut self) -> Result<(), UnitError> {
        while let Some(&(device_id, domain_id)) = self.stale_devices.last() {
            self.hardware.run(&[
                Command::invalidate_devtab_entry(device_id),
                Command::invalidate_iommu_pages(domain_id, PageRange::ALL, true),
            ])?;
            self.stale_devices.pop();
        }
        Ok(())
    }

    /// Brings up every IOMMU the IVRS describes, in order (`UnitId` = index),
    /// each with every requester blocked: an IOMMU left as firmware left it
    /// lets the DMA behind it go wherever firmware pointed it (Linux
    /// `init_iommu_all` brings up every IVHD). All or nothing: when one fails,
    /// those already up are dropped and the index of the one that failed comes
    /// back with its error.
    pub fn bring_up_all(
        units: impl IntoIterator<Item = (UnitDescription, Mmio, CapabilityHeader)>,
        dma: &'static (dyn DmaMemory + Sync),
        clock: &'static (dyn Clock + Sync),
    ) -> Result<Vec<Self>, (usize, UnitError)> {
        iommu::bring_up_each(
            units,
            || UnitError::Unsupported,
            |id, (description, regs, capability)| {
                Self::new(id, description, regs, capability, dma, clock)
            },
        )
    }

    /// Brings up the IOMMU `description` names, whose registers `regs` maps, with every
    /// requester blocked (see [`Hardware::new`]).
    pub fn new(
        id: UnitId,
        description: UnitDescription,
        regs: Mmio,
        capability: CapabilityHeader,
        dma: &'static (dyn DmaMemory + Sync),
        clock: &'static (dyn Clock + Sync),
    ) -> Result<Self, UnitError> {
        Ok(AmdVi {
            id,
            hardware: Hardware::new(description, regs, capability, dma, clock)?,
            table_dma: dma,
            domains: BTreeMap::new(),
            domain_ids: IdAllocator::new(DOMAIN_IDS),
            next_handle: 1,
            attached: BTreeMap::new(),
            unowned_faults: Vec::new(),
            stale_devices: Vec::new(),
            unit_events: Vec::new(),
        })
    }

    /// Reads new event-log entries: device faults go to the owning domain's queue
    /// (or the unit's when the requester is in no domain), other events to the
    /// unit's event list.
    pub fn poll_events(&mut self) -> usize {
        let read = self.hardware.poll_events();
        self.route_pending_events();
        read
    }

    /// Routes what the instance has read from its log (during command runs
    /// too) to the domains' fault queues and the unit's event list.
    fn route_pending_events(&mut self) {
        for event in self.hardware.take_events() {
            self.route_event(event);
        }
    }

    fn route_event(&mut self, event: Event) {
        let Some(record) = event.fault_record(self.id) else {
            self.unit_events.push(event);
            return;
        };
        let owner = event
            .device_id()
            .and_then(|device| self.attached.get(&device))
            .and_then(|handle| self.domains.get_mut(handle));
        let queue = match owner {
            Some(domain) => &mut domain.faults,
            None => &mut self.unowned_faults,
        };
        if queue.len() < FAULT_QUEUE_CAPACITY {
            queue.push(record);
        } else {
            self.hardware.counters.add(|c| c.dropped_faults += 1);
        }
    }

    /// Events that are not device faults (command errors, counters), oldest first.
    pub fn take_unit_events(&mut self) -> Vec<Event> {
        self.route_pending_events();
        core::mem::take(&mut self.unit_events)
    }

    /// Moves the fault records queued for `domain` into `out`.
    pub fn drain_domain_faults(
        &mut self,
        domain: DomainHandle,
        out: &mut Vec<FaultRecord>,
    ) -> usize {
        self.poll_events();
        match self.domains.get_mut(&domain.0) {
            Some(d) => {
                let n = d.faults.len();
                out.append(&mut d.faults);
                n
            }
            None => 0,
        }
    }

    /// Physical address of a paging domain's root table page (§2.2.3).
    pub fn page_table_root(&self, domain: DomainHandle) -> Option<u64> {
        match &self.domains.get(&domain.0)?.backing {
            DomainBacking::Paging { table, .. } => Some(table.root_phys()),
            _ => None,
        }
    }

    /// Sets where paging domains allocated from now on take their table pages and
    /// returns the previous source. A domain keeps the source it was created with
    /// (its pages go back there), so `memory` must hand out the same kind of
    /// memory as the unit's own `DmaMemory` (tests pass a wrapper that refuses
    /// after a budget, to exhaust table pages on demand).
    pub fn set_table_memory(
        &mut self,
        memory: &'static (dyn DmaMemory + Sync),
    ) -> &'static (dyn DmaMemory + Sync) {
        core::mem::replace(&mut self.table_dma, memory)
    }

    /// Identity-maps the IVMD unity ranges (§5.2.3) that apply to `device_id` in a
    /// paging `domain`; what NpCache requires to be invalidated is returned.
    fn map_unity_ranges(
        &mut self,
        device_id: u16,
        domain: DomainHandle,
    ) -> Result<Gather, IommuError> {
        let np_cache = self.hardware.np_cache();
        let ranges: Vec<_> = self
            .hardware
            .description
            .unity
            .iter()
            .filter(|unity| unity.applies_to(device_id))
            .copied()
            .collect();
        let mut owed = Gather::default();
        let Some(Domain {
            backing: DomainBacking::Paging { table, .. },
            ..
        }) = self.domains.get_mut(&domain.0)
        else {
            return Ok(owed);
        };
        for unity in ranges {
            let mut prot = io_page_table::Prot::empty();
            prot.set(io_page_table::Prot::READ, unity.read);
            prot.set(io_page_table::Prot::WRITE, unity.write);
            if prot.is_empty() {
                continue;
            }
            let len = unity.last - unity.start + 1;
            match table.map(unity.start, unity.start, len, prot) {
                Ok(gather) => {
                    let gather = crate::invalidation::owed_by_map(np_cache, gather);
                    if !gather.is_empty() {
                        owed.add_leaf(gather.start, 4096);
                        owed.add_leaf(gather.last & !0xFFF, 4096);
                        owed.freed_tables = true;
                    }
                }
                // Another device of the domain already has it.
                Err(io_page_table::MapError::AlreadyMapped { .. }) => {}
                Err(io_page_table::MapError::NoMemory) => return Err(IommuError::NoMemory),
                Err(_) => return Err(IommuError::Invalid),
            }
        }
        Ok(owed)
    }

    /// Translates `iova` through `domain`'s page table (for tests and debugging).
    pub fn iova_to_phys(&self, domain: DomainHandle, iova: u64) -> Option<u64> {
        match &self.domains.get(&domain.0)?.backing {
            DomainBacking::Paging { table, .. } => table.iova_to_phys(iova),
            DomainBacking::Blocked => None,
            DomainBacking::Identity => Some(iova),
        }
    }

    /// The hardware's walk of `domain`'s table for `iova`, level by level
    /// (for the demo and debugging); `false` for a domain without a table.
    pub fn walk_mapping(
        &self,
        domain: DomainHandle,
        iova: u64,
        visit: &mut dyn FnMut(&io_page_table::WalkStep),
    ) -> bool {
        match self.domains.get(&domain.0).map(|d| &d.backing) {
            Some(DomainBacking::Paging { table, .. }) => {
                table.walk_to(iova, visit);
                true
            }
            _ => false,
        }
    }

    /// The leaf of `domain`'s page table that translates `iova`: its raw PTE,
    /// level and size (for tests and debugging).
    pub fn translation(
        &self,
        domain: DomainHandle,
        iova: u64,
    ) -> Option<io_page_table::Translation> {
        match &self.domains.get(&domain.0)?.backing {
            DomainBacking::Paging { table, .. } => table.lookup(iova),
            _ => None,
        }
    }
}

impl IommuUnit for AmdVi {
    fn info(&self) -> UnitInfo {
        UnitInfo {
            name: "amd-vi",
            kind: UnitKind::AmdVi,
            // Paging domains use paging::PAGING_LEVELS-level tables (§2.2.3: 9 bits a level
            // above the 12-bit page offset), within what EFR.HATS allows.
            aperture: IovaRange {
                start: 0,
                last: {
                    let levels = paging::PAGING_LEVELS
                        .min(u32::from(self.hardware.efr.host_levels().unwrap_or(4)));
                    (1u64 << (12 + 9 * levels)) - 1
                },
            },
            // v1 leaves at 4 KiB, 2 MiB and 1 GiB (§2.2.3, NextLevel=0 at levels 1-3).
            page_sizes: (1 << 12) | (1 << 21) | (1 << 30),
            nesting: None,
        }
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<ReservedRegion> {
        let mut regions = alloc::vec![ReservedRegion {
            range: MSI_WINDOW,
            kind: ReservedKind::Msi,
        }];
        if let Ok(id) = u16::try_from(device.0) {
            regions.extend(
                self.hardware
                    .description
                    .unity
                    .iter()
                    .filter(|unity| unity.applies_to(id))
                    .map(|unity| ReservedRegion {
                        range: IovaRange {
                            start: unity.start,
                            last: unity.last,
                        },
                        kind: ReservedKind::Direct,
                    }),
            );
        }
        regions
    }

    fn hw_info(&self) -> HwInfo {
        HwInfo::AmdVi {
            efr: self.hardware.efr.0,
            efr2: self.hardware.efr2,
        }
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        let backing = match kind {
            DomainKind::Blocked => DomainBacking::Blocked,
            DomainKind::Identity => DomainBacking::Identity,
            DomainKind::Paging => DomainBacking::Paging {
                table: alloc::boxed::Box::new(paging::new_table(self.table_dma)?),
                unlinked: Unlinked::default(),
            },
            _ => return Err(IommuError::Unsupported),
        };
        // A freed id is clean: the last detach from its domain invalidated
        // everything cached under it (`detach`), so recycling costs nothing.
        let id = self.domain_ids.take().ok_or(IommuError::NoMemory)?.id as u16;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.domains.insert(
            handle,
            Domain {
                id,
                backing,
                devices: BTreeSet::new(),
                faults: Vec::new(),
                owes_full_invalidation: AtomicBool::new(false),
                dirty_tracking: false,
            },
        );
        Ok(DomainHandle(handle))
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        if !entry.devices.is_empty() {
            return Err(IommuError::Busy);
        }
        // A device whose detach was never confirmed may still walk it.
        self.settle()?;
        // Dropping the table frees its pages: no device uses them any more, and the
        // last detach invalidated the domain's IOTLB entries (PDE included).
        if let Some(removed) = self.domains.remove(&domain.0) {
            self.domain_ids.free(u32::from(removed.id));
            if let DomainBacking::Paging { table, unlinked } = removed.backing {
                unlinked.take_all().release(|freed| table.release(freed));
            }
        }
        Ok(())
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        self.settle()?;
        self.flush_shared(domain, gather)
    }

    fn shares_mapping(&self) -> bool {
        true
    }

    unsafe fn map_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        let np_cache = self.hardware.np_cache();
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        let DomainBacking::Paging { table, .. } = &entry.backing else {
            return Err(IommuError::Invalid);
        };
        // SAFETY: the caller keeps concurrent ranges disjoint.
        let gather = unsafe { table.map_shared(iova, phys, len, paging::page_prot(prot)?) }
            .map_err(|err| match err {
                io_page_table::MapError::NoMemory => IommuError::NoMemory,
                _ => IommuError::Invalid,
            })?;
        Ok(crate::invalidation::owed_by_map(np_cache, gather))
    }

    unsafe fn unmap_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        match self.domains.get(&domain.0).map(|d| &d.backing) {
            Some(DomainBacking::Paging { table, unlinked }) => {
                // A range no successful map created changes nothing; the
                // caller must see it, or it would release what is still mapped.
                // SAFETY: the caller keeps concurrent ranges disjoint.
                let unmapped =
                    unsafe { table.unmap_shared(iova, len) }.map_err(|_| IommuError::Invalid)?;
                unlinked.push(&unmapped.gather, unmapped.freed);
                Ok(unmapped.gather)
            }
            // Blocking and identity domains map nothing.
            Some(_) => Ok(Gather::default()),
            None => Err(IommuError::Invalid),
        }
    }

    /// A failed flush is made good by the next one, which invalidates every
    /// page of the domain: the failed range was never confirmed, and the pages
    /// its unmap unlinked are freed only after that. A DTE change whose
    /// invalidation is still owed (only `&mut self` repeats it) fails it.
    fn flush_shared(&self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        if !self.stale_devices.is_empty() {
            return Err(IommuError::Timeout);
        }
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        let owed = entry.owes_full_invalidation.swap(false, Ordering::AcqRel);
        let unlinked = match &entry.backing {
            DomainBacking::Paging { table, unlinked } => Some((table, unlinked)),
            _ => None,
        };
        // Taken before the command is queued: a batch unlinked later waits
        // for a flush issued after it.
        let taken = unlinked.map(|(_, batches)| match owed {
            true => batches.take_all(),
            false => batches.take_covered(gather),
        });
        let command = if owed {
            Some(Command::invalidate_iommu_pages(
                entry.id,
                PageRange::ALL,
                true,
            ))
        } else {
            crate::invalidation::plan(entry.id, gather)
        };
        let result = match command {
            Some(command) => self.hardware.run(&[command]),
            None => Ok(()),
        };
        if let Err(error) = result {
            if owed || !gather.is_empty() {
                entry.owes_full_invalidation.store(true, Ordering::Release);
            }
            if let (Some((_, batches)), Some(taken)) = (unlinked, taken) {
                batches.restore(taken);
            }
            return Err(error.into());
        }
        // The IOMMU no longer walks the tables taken above.
        if let (Some((table, _)), Some(taken)) = (unlinked, taken) {
            taken.release(|freed| table.release(freed));
        }
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        let device_id = self.hardware.requester(device)?;
        self.settle()?;
        let unity_gather = self.map_unity_ranges(device_id, domain)?;
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        let new_id = entry.id;
        let dte = match &entry.backing {
            DomainBacking::Blocked => self.hardware.blocked_dte(device_id),
            DomainBacking::Identity => Dte::identity(entry.id),
            DomainBacking::Paging { table, .. } => Dte::translated(
                table.root_phys(),
                table.format().dte_mode(),
                entry.id,
                true,
                true,
            )
            .map_err(|_| IommuError::Invalid)?
            .with_host_access_dirty(entry.dirty_tracking),
        };
        // The IOTLB of QEMU 10.0.2 is keyed by requester, not domain: the previous
        // domain's translations for this device must go too (harmless on hardware).
        let previous = self.attached.get(&device_id).copied();
        let mut extra = Vec::new();
        if let Some(old) = previous.and_then(|h| self.domains.get(&h)) {
            extra.push(Command::invalidate_iommu_pages(
                old.id,
                PageRange::ALL,
                true,
            ));
        }
        if let Some(command) = crate::invalidation::plan(new_id, &unity_gather) {
            extra.push(command);
        }
        let before = self.hardware.dte(device_id).ok_or(IommuError::Invalid)?;
        if let Err(err) = self.hardware.install_dma_config(device_id, dte, &extra) {
            // The device stays where it was: the old entry goes back (best effort:
            // the command buffer has just failed).
            // The IOMMU may have fetched the new entry meanwhile: until that
            // is invalidated, the new domain counts as reachable too.
            self.hardware.store_dte(device_id, before);
            self.stale_devices.push((device_id, new_id));
            let _ = self.settle();
            return Err(err.into());
        }
        if let Some(old) = previous.and_then(|h| self.domains.get_mut(&h)) {
            old.devices.remove(&device_id);
        }
        if let Some(new) = self.domains.get_mut(&domain.0) {
            new.devices.insert(device_id);
        }
        self.attached.insert(device_id, domain.0);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) {
        let Ok(device_id) = self.hardware.requester(device) else {
            return;
        };
        let previous = self.attached.remove(&device_id);
        let mut extra = Vec::new();
        let mut old_id = None;
        if let Some(old) = previous.and_then(|h| self.domains.get_mut(&h)) {
            old.devices.remove(&device_id);
            old_id = Some(old.id);
            extra.push(Command::invalidate_iommu_pages(
                old.id,
                PageRange::ALL,
                true,
            ));
        }
        let blocked = self.hardware.blocked_dte(device_id);
        // The DTE is blocked in memory whatever the command buffer does; if
        // the invalidation failed, the IOMMU may still use the old entry until
        // `settle` repeats it, which everything that could make that
        // dangerous waits for.
        if self
            .hardware
            .install_dma_config(device_id, blocked, &extra)
            .is_err()
            && let Some(old_id) = old_id
        {
            self.stale_devices.push((device_id, old_id));
        }
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        self.poll_events();
        let mut n = self.unowned_faults.len();
        out.append(&mut self.unowned_faults);
        for domain in self.domains.values_mut() {
            n += domain.faults.len();
            out.append(&mut domain.faults);
        }
        n
    }

    /// EFR HDSup: the IOMMU sets D in the v1 leaves it writes through.
    fn dirty_tracking(&self) -> bool {
        self.hardware.extended_features().host_dirty()
    }

    /// HAD in the DTE of every device attached now (and of every device
    /// attached later), each DTE invalidated, then every page of the domain,
    /// so that no IOTLB entry cached before keeps a write from being
    /// recorded (Linux `amd_iommu_set_dirty_tracking`).
    fn set_dirty_tracking(&mut self, domain: DomainHandle, enable: bool) -> Result<(), IommuError> {
        if !self.dirty_tracking() {
            return Err(IommuError::Unsupported);
        }
        self.settle()?;
        let entry = self.domains.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
        if !matches!(entry.backing, DomainBacking::Paging { .. }) {
            return Err(IommuError::Invalid);
        }
        entry.dirty_tracking = enable;
        let (domain_id, devices) = (entry.id, entry.devices.clone());
        for device_id in devices {
            let dte = self
                .hardware
                .dte(device_id)
                .ok_or(IommuError::Invalid)?
                .with_host_access_dirty(enable);
            self.hardware.install_dma_config(device_id, dte, &[])?;
        }
        self.hardware.run(&[Command::invalidate_iommu_pages(
            domain_id,
            PageRange::ALL,
            true,
        )])?;
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
        let DomainBacking::Paging { table, .. } = &mut entry.backing else {
            return Err(IommuError::Invalid);
        };
        table
            .read_dirty(iova, len, keep, &mut *dirty)
            .map_err(|_| IommuError::Invalid)
    }

    fn invalidate_nested(
        &mut self,
        _domain: DomainHandle,
        _requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (0, Err(IommuError::Unsupported))
    }

    /// The MSI goes through the lowest free IRTE of the device's own
    /// interrupt remapping table (§2.2.5), which names the vector and
    /// destination of `message`; the device sends the index as its data.
    /// Functions that share the DeviceID (behind a PCIe-to-PCI bridge, an
    /// IVHD alias) share the table and get one index each.
    fn route_msi(
        &mut self,
        device: DeviceId,
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        let device_id = self.hardware.requester(device)?;
        let held = self
            .hardware
            .interrupt_tables
            .get(&device_id)
            .map(|t| &t.routes);
        let index = (0..1u16 << crate::hardware::IRT_LOG2)
            .find(|index| held.is_none_or(|held| !held.contains(index)))
            .ok_or(IommuError::NoMemory)?;
        let target = crate::interrupt::target_of_compat_msi(message.address, message.data);
        let (address, data) = crate::interrupt::remappable_msi(index).ok_or(IommuError::Invalid)?;
        self.hardware.remap_interrupt(device_id, index, target)?;
        if let Some(table) = self.hardware.interrupt_tables.get_mut(&device_id) {
            table.routes.insert(index);
        }
        let route = MsiRoute(u64::from(device_id) << 16 | u64::from(index));
        Ok((route, MsiMessage { address, data }))
    }

    /// Every routed device has its own interrupt table and passes nothing
    /// through untranslated (`Dte::with_interrupts`), and the interrupt
    /// window of an unrouted one aborts (IntCtl=abort).
    fn isolates_msi(&self) -> bool {
        true
    }

    /// The route's IRTE is disabled; the last route of a DeviceID blocks its
    /// interrupts again (IntCtl=abort) and frees the table.
    fn unroute_msi(&mut self, route: MsiRoute) {
        let (Ok(device_id), Ok(index)) = (
            u16::try_from(route.0 >> 16),
            u16::try_from(route.0 & 0xFFFF),
        ) else {
            return;
        };
        let Some(table) = self.hardware.interrupt_tables.get_mut(&device_id) else {
            return;
        };
        if !table.routes.remove(&index) {
            return;
        }
        // The entry or DTE is back to aborting in memory even if the
        // invalidation fails; that shows up in the unit's counters.
        if table.routes.is_empty() {
            let _ = self.hardware.block_interrupts(device_id);
        } else {
            let _ = self.hardware.disable_interrupt(device_id, index);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
