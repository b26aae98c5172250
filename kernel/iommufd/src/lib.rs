//! Hardware-independent iommufd object model: IOAS, HWPT, devices, IOVA allocation,
//! pinning, faults.
//!
//! The semantics are Linux iommufd's (`drivers/iommu/iommufd/`), with the device
//! attach calls Linux leaves to VFIO. Every operation is all-or-nothing: it either
//! completes or returns an [`Errno`] with the state exactly as before (the fail-nth
//! tests check this at every allocation point). Hardware is reached only through
//! the [`iommu::IommuUnit`] contract; task memory only through [`Services`].
//!
//! Objects live in a per-owner (per-task) table with `u32` ids from 1, the lowest
//! free id first (as Linux's xarray allocation).
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

mod dirty;
mod fault;
mod fill;
mod hwpt;
mod ioas;
pub mod iova;
pub mod testing;
pub mod uapi;
mod units;
mod viommu;

use abi::Errno;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use iommu::{DeviceId, DomainHandle, Gather, IommuError, IommuUnit, IovaRange, Prot, UnitId};
use iova::IovaSpace;

pub use dirty::DirtyRange;
pub use fault::FaultReadReply;
pub use fill::{PendingMap, PendingUnmap};
pub use hwpt::{HwInfoReply, decode_hwpt_data, decode_invalidations};
pub use ioas::IovaRanges;
pub use uapi::{Begun, Pending, UserMemory};
pub use units::{FillTicket, Units};

/// An object id in an owner's table.
pub type ObjId = u32;

/// The task (or other principal) whose object table an operation works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerId(pub u64);

/// A physically contiguous piece of pinned memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRun {
    /// The bus address of the first byte.
    pub phys: u64,
    /// Its length in bytes (whole pages).
    pub len: u64,
}

/// The core's own allocation points, charged through [`Services::charge`] before
/// the allocation happens (so that a refusal leaves nothing half-done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A new object in an owner's table.
    ObjectSlot,
    /// Nodes of the IOVA hole index (a split, or a rebuild).
    IovaNode,
    /// A new area in an IOAS.
    Area,
    /// Reserved-range entries of an IOAS.
    Reservation,
    /// The record of a pinned range.
    PinnedPages,
    /// A hardware domain (a HWPT): a domain id, ASID or VMID of the unit's
    /// finite space, and its page tables.
    Domain,
}

/// What one owner may make the core hold. Every object and every area costs
/// kernel memory, so an owner past a limit gets `ENOSPC` and the others go on
/// (Linux accounts the same memory to the caller's memory cgroup instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Objects in the owner's table (IOASes, HWPTs, devices).
    pub objects: usize,
    /// Areas over all of the owner's IOASes.
    pub areas: usize,
    /// HWPTs (hardware domains, each with a domain id / ASID / VMID of the
    /// unit's finite space: 256 on an SMMU with 8-bit ASIDs), automatic
    /// ones included, so that one owner cannot take every id.
    pub domains: usize,
}

impl Limits {
    /// Far above what a program that does its work needs (the demo and the
    /// tests hold tens), low enough that a few owners at their limits fit in
    /// the kernel heap.
    pub const DEFAULT: Limits = Limits {
        objects: 1024,
        areas: 8192,
        domains: 64,
    };
    /// No limit at all (tests).
    pub const UNLIMITED: Limits = Limits {
        objects: usize::MAX,
        areas: usize::MAX,
        domains: usize::MAX,
    };
}

/// What the kernel provides: pinning of task memory and an allocation gate.
pub trait Services {
    /// Pins `[va, va + len)` of `owner`'s address space (page aligned) and appends
    /// its physical pages, in order, to `runs` (an empty, recycled buffer).
    /// `write` asks for writable memory. `EFAULT` when not mapped (or not
    /// writable), `ENOMEM` when out of memory; on error nothing stays pinned.
    fn pin(
        &mut self,
        owner: OwnerId,
        va: u64,
        len: u64,
        write: bool,
        runs: &mut Vec<PhysRun>,
    ) -> Result<(), Errno>;

    /// Releases a range pinned by `pin`; called only after every IOTLB that could
    /// hold a translation to it has been flushed.
    fn unpin(&mut self, owner: OwnerId, va: u64, len: u64, runs: &[PhysRun]);

    /// Asks whether the core may allocate for `resource` (quota or fault
    /// injection); `Err(ENOMEM)` refuses.
    fn charge(&mut self, resource: Resource) -> Result<(), Errno> {
        let _ = resource;
        Ok(())
    }
}

/// The granule of pinning. Areas are byte granular (the IOVA alignment of an
/// IOAS without domains is 1, as Linux's); the pages under them are pinned
/// whole.
pub const PAGE_SIZE: u64 = 4096;

/// Records a HWPT's fault queue holds before it drops (and counts) new ones.
pub const FAULT_QUEUE_DEPTH: usize = 32;

/// The permission and the fixed-IOVA choice of `ioas_map`/`ioas_copy` flags:
/// `(prot, fixed)`.
pub fn map_flags(flags: abi::MapFlags) -> (Prot, bool) {
    (
        Prot {
            read: flags.contains(abi::MapFlags::READABLE),
            write: flags.contains(abi::MapFlags::WRITEABLE),
        },
        flags.contains(abi::MapFlags::FIXED_IOVA),
    )
}

/// The errno a driver error becomes at the syscall boundary.
pub fn errno(e: IommuError) -> Errno {
    match e {
        IommuError::NoMemory => Errno::ENOMEM,
        IommuError::Unsupported => Errno::EOPNOTSUPP,
        IommuError::Invalid => Errno::EINVAL,
        IommuError::Busy => Errno::EBUSY,
        IommuError::Timeout => Errno::EIO,
        // Linux `arm_vsmmu_convert_user_cmd`: -EIO.
        IommuError::Refused => Errno::EIO,
    }
}

/// Adds `other` to `into` (one gather may cover several unmaps of one call).
fn merge_gather(into: &mut Gather, other: &Gather) {
    if other.is_empty() {
        return;
    }
    if into.is_empty() {
        *into = *other;
        return;
    }
    into.start = into.start.min(other.start);
    into.last = into.last.max(other.last);
    into.leaf_sizes |= other.leaf_sizes;
    into.freed_tables |= other.freed_tables;
}

/// Slots per chunk of [`PagesTable`].
const PAGES_CHUNK: usize = 64;

/// Pinned ranges by id, in reusable slots (no tree walk on the map/unmap
/// path). The slots come in chunks that are freed when they empty, so the
/// room one owner's ranges took does not outlive them because another
/// owner's range sits at a higher id.
#[derive(Default)]
struct PagesTable {
    chunks: Vec<Option<alloc::boxed::Box<PagesChunk>>>,
    /// No chunk below this one has a free slot.
    first_free_chunk: usize,
    live: usize,
}

struct PagesChunk {
    slots: [Option<Pages>; PAGES_CHUNK],
    live: usize,
}

impl PagesTable {
    fn insert(&mut self, pages: Pages) -> u64 {
        self.live += 1;
        let mut index = self.first_free_chunk;
        while self.chunks.get(index).is_some_and(|chunk| {
            chunk
                .as_ref()
                .is_some_and(|chunk| chunk.live == PAGES_CHUNK)
        }) {
            index += 1;
        }
        self.first_free_chunk = index;
        if index == self.chunks.len() {
            self.chunks.push(None);
        }
        let chunk = self.chunks[index].get_or_insert_with(|| {
            alloc::boxed::Box::new(PagesChunk {
                slots: [const { None }; PAGES_CHUNK],
                live: 0,
            })
        });
        let slot = chunk
            .slots
            .iter()
            .position(Option::is_none)
            .expect("a chunk below PAGES_CHUNK live entries has a free slot");
        chunk.slots[slot] = Some(pages);
        chunk.live += 1;
        (index * PAGES_CHUNK + slot) as u64
    }

    fn slot(id: u64) -> (usize, usize) {
        let id = id as usize;
        (id / PAGES_CHUNK, id % PAGES_CHUNK)
    }

    fn get(&self, id: u64) -> Option<&Pages> {
        let (chunk, slot) = Self::slot(id);
        self.chunks.get(chunk)?.as_ref()?.slots[slot].as_ref()
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Pages> {
        let (chunk, slot) = Self::slot(id);
        self.chunks.get_mut(chunk)?.as_mut()?.slots[slot].as_mut()
    }

    fn remove(&mut self, id: u64) -> Option<Pages> {
        let (index, slot) = Self::slot(id);
        let chunk = self.chunks.get_mut(index)?.as_mut()?;
        let pages = chunk.slots[slot].take()?;
        chunk.live -= 1;
        self.live -= 1;
        // The first chunk stays (until `trim`): a table that empties and
        // fills again on every map and unmap must not allocate each time.
        if chunk.live == 0 && index != 0 {
            self.chunks[index] = None;
            while self.chunks.last().is_some_and(Option::is_none) {
                self.chunks.pop();
            }
        }
        self.first_free_chunk = self.first_free_chunk.min(index);
        Some(pages)
    }

    fn len(&self) -> usize {
        self.live
    }

    /// Gives back the first chunk when it is empty, and the room of the
    /// chunk list itself once it has shrunk.
    fn trim(&mut self) {
        if self
            .chunks
            .first()
            .is_some_and(|chunk| chunk.as_ref().is_some_and(|c| c.live == 0))
        {
            self.chunks[0] = None;
        }
        while self.chunks.last().is_some_and(Option::is_none) {
            self.chunks.pop();
        }
        self.chunks.shrink_to_fit();
    }

    fn values(&self) -> impl Iterator<Item = &Pages> {
        self.chunks
            .iter()
            .flatten()
            .flat_map(|chunk| chunk.slots.iter().flatten())
    }
}

impl core::fmt::Debug for PagesTable {
    /// The live ranges only: which slot a range sits in is not state.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

/// Spare run buffers kept for reuse by later pins.
const SPARE_RUN_BUFFERS: usize = 64;

/// Pinned pages shared by the areas that map them (`copy` shares).
#[derive(Debug)]
struct Pages {
    owner: OwnerId,
    /// The user's range, byte granular: `[va, va + len)`.
    va: u64,
    len: u64,
    runs: Vec<PhysRun>,
    refs: u32,
    /// A device may still reach these pages through one of their users (a
    /// failed flush, a lost domain): when the last reference goes they are
    /// quarantined, whichever user lets go last.
    doomed: bool,
}

impl Pages {
    /// The whole pages `[va, va + len)` lies in, which are what is pinned
    /// (Linux pins whole pages under a byte-granular area too).
    fn pinned(&self) -> (u64, u64) {
        page_span(self.va, self.len)
    }

    /// Where byte 0 of the range lies in the pinned runs.
    fn head(&self) -> u64 {
        self.va % PAGE_SIZE
    }

    /// The user address of byte `offset` of the range.
    fn user_address(&self, offset: u64) -> u64 {
        self.va.wrapping_add(offset)
    }
}

/// The whole pages `[va, va + len)` lies in, as (start, length); `len` > 0
/// and `va + len - 1` must not overflow.
pub(crate) fn page_span(va: u64, len: u64) -> (u64, u64) {
    let start = va & !(PAGE_SIZE - 1);
    let last = (va + (len - 1)) | (PAGE_SIZE - 1);
    (start, last - start + 1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Area {
    last: u64,
    pages: u64,
    /// Byte offset of the area's first IOVA in its pages.
    offset: u64,
    prot: Prot,
    /// A map is still filling the domains (`PendingMap`): the area may not
    /// be unmapped, copied from or destroyed with its IOAS yet (`EBUSY`).
    filling: bool,
}

/// An IOAS's areas by first IOVA, counted into its owner's total as they
/// come and go: every map checks the owner's area limit
/// ([`Limits::areas`]), and summing every IOAS there cost more than the rest
/// of a one-page map's bookkeeping.
#[derive(Debug, Default)]
struct AreaTree {
    tree: BTreeMap<u64, Area>,
    /// The owner's areas over all its IOASes. It changes only through `&mut`
    /// of one of them, which only the core's exclusive borrow reaches, so a
    /// load and a store suffice (no locked read-modify-write); atomic only
    /// because several IOASes hold it.
    owner_total: Arc<AtomicUsize>,
}

impl AreaTree {
    fn new(owner_total: Arc<AtomicUsize>) -> Self {
        Self {
            tree: BTreeMap::new(),
            owner_total,
        }
    }

    fn add_to_total(&self, delta: isize) {
        let total = self.owner_total.load(Ordering::Relaxed);
        self.owner_total
            .store(total.wrapping_add_signed(delta), Ordering::Relaxed);
    }

    fn insert(&mut self, start: u64, area: Area) {
        if self.tree.insert(start, area).is_none() {
            self.add_to_total(1);
        }
    }

    fn remove(&mut self, start: &u64) -> Option<Area> {
        let area = self.tree.remove(start)?;
        self.add_to_total(-1);
        Some(area)
    }

    fn get_mut(&mut self, start: &u64) -> Option<&mut Area> {
        self.tree.get_mut(start)
    }
}

impl core::ops::Deref for AreaTree {
    type Target = BTreeMap<u64, Area>;

    fn deref(&self) -> &Self::Target {
        &self.tree
    }
}

impl Drop for AreaTree {
    fn drop(&mut self) {
        self.add_to_total(-(self.tree.len() as isize));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResvOwner {
    /// The outside of a HWPT's unit aperture.
    Hwpt(ObjId),
    /// A device's reserved regions while it is attached.
    Device(ObjId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reservation {
    range: IovaRange,
    owner: ResvOwner,
}

#[derive(Debug)]
struct Ioas {
    areas: AreaTree,
    /// Sorted, disjoint; empty means everything.
    allowed: Vec<IovaRange>,
    reserved: Vec<Reservation>,
    space: IovaSpace,
    /// Paging HWPTs (automatic and explicit) that mirror every area.
    domains: Vec<ObjId>,
    /// The same HWPTs' (unit, domain), shared so that a map takes no copy.
    handles: Arc<[(UnitId, DomainHandle)]>,
    alignment: u64,
    /// Domains of this IOAS the unit could not free (the invalidation that
    /// must precede it failed): they may still map every area, so the pages
    /// this IOAS lets go are quarantined, never unpinned.
    lost_domains: u32,
    /// Whether mappings may use pages above each domain's smallest size
    /// (`IOMMU_OPTION_HUGE_PAGES`, on by default).
    huge_pages: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HwptKind {
    Paging {
        ioas: ObjId,
        auto: bool,
        nest_parent: bool,
    },
    Nested {
        /// The NEST_PARENT HWPT whose stage 2 it runs over.
        parent: ObjId,
        /// The vIOMMU it was allocated over, if any (which then holds the
        /// reference on `parent`).
        viommu: Option<ObjId>,
    },
}

#[derive(Debug)]
struct FaultQueue {
    records: VecDeque<abi::FaultRecord>,
    /// Dropped since the last record that was queued.
    dropped: u32,
}

#[derive(Debug)]
struct Hwpt {
    kind: HwptKind,
    unit: UnitId,
    domain: DomainHandle,
    min_page: u64,
    devices: u32,
    children: u32,
    faults: FaultQueue,
    /// Allocated with `DIRTY_TRACKING`: the unit may track its writes.
    dirty_tracking: bool,
}

#[derive(Debug)]
struct Device {
    unit: UnitId,
    /// The id the unit sees the function's DMA with.
    requester: DeviceId,
    /// Other ids its DMA may carry (Linux `pci_for_each_dma_alias`: its own
    /// id behind a bridge that usually takes its requests over, bridges on
    /// the way): claimed, programmed and blocked together with `requester`.
    aliases: Vec<DeviceId>,
    attached: Option<ObjId>,
    /// vDEVICEs that bind it to a virtual id (each keeps it from being
    /// destroyed, as in Linux).
    vdevices: u32,
}

impl Device {
    /// Every id the device's DMA may carry, `requester` first.
    fn ids(&self) -> impl Iterator<Item = DeviceId> + '_ {
        core::iter::once(self.requester).chain(self.aliases.iter().copied())
    }
}

#[derive(Debug)]
enum Object {
    /// Boxed: an IOAS carries its IOVA caches.
    Ioas(alloc::boxed::Box<Ioas>),
    Hwpt(Hwpt),
    Device(Device),
    Viommu(viommu::Viommu),
    Vdevice(viommu::Vdevice),
    Veventq(viommu::Veventq),
}

#[derive(Debug, Default)]
struct Owner {
    objects: BTreeMap<ObjId, Object>,
    free_ids: BTreeSet<ObjId>,
    next_id: ObjId,
    /// Areas over all its IOASes (their [`AreaTree`]s keep it).
    areas: Arc<AtomicUsize>,
}

impl Owner {
    fn peek_id(&self) -> Result<ObjId, Errno> {
        match self.free_ids.first() {
            Some(id) => Ok(*id),
            None if self.next_id == ObjId::MAX => Err(Errno::ENOSPC),
            None => Ok(self.next_id.max(1)),
        }
    }

    /// Inserts `object` under the id `peek_id` returned.
    fn insert(&mut self, object: Object) -> ObjId {
        let id = match self.free_ids.pop_first() {
            Some(id) => id,
            None => {
                self.next_id = self.next_id.max(1);
                let id = self.next_id;
                self.next_id += 1;
                id
            }
        };
        self.objects.insert(id, object);
        id
    }

    fn remove(&mut self, id: ObjId) -> Option<Object> {
        let object = self.objects.remove(&id)?;
        if id + 1 == self.next_id {
            self.next_id = id;
            while let Some(&last) = self.free_ids.last() {
                if last + 1 != self.next_id {
                    break;
                }
                self.free_ids.pop_last();
                self.next_id = last;
            }
        } else {
            self.free_ids.insert(id);
        }
        Some(object)
    }

    fn area_count(&self) -> usize {
        self.areas.load(Ordering::Relaxed)
    }

    fn domain_count(&self) -> usize {
        self.objects
            .values()
            .filter(|object| matches!(object, Object::Hwpt(_)))
            .count()
    }

    fn ioas(&self, id: ObjId) -> Result<&Ioas, Errno> {
        match self.objects.get(&id) {
            Some(Object::Ioas(i)) => Ok(&**i),
            _ => Err(Errno::ENOENT),
        }
    }

    fn ioas_mut(&mut self, id: ObjId) -> Result<&mut Ioas, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Ioas(i)) => Ok(&mut **i),
            _ => Err(Errno::ENOENT),
        }
    }

    fn hwpt(&self, id: ObjId) -> Result<&Hwpt, Errno> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(h)) => Ok(h),
            _ => Err(Errno::ENOENT),
        }
    }

    fn hwpt_mut(&mut self, id: ObjId) -> Result<&mut Hwpt, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Hwpt(h)) => Ok(h),
            _ => Err(Errno::ENOENT),
        }
    }

    fn viommu(&self, id: ObjId) -> Result<&viommu::Viommu, Errno> {
        match self.objects.get(&id) {
            Some(Object::Viommu(v)) => Ok(v),
            _ => Err(Errno::ENOENT),
        }
    }

    fn viommu_mut(&mut self, id: ObjId) -> Result<&mut viommu::Viommu, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Viommu(v)) => Ok(v),
            _ => Err(Errno::ENOENT),
        }
    }

    fn veventq(&self, id: ObjId) -> Result<&viommu::Veventq, Errno> {
        match self.objects.get(&id) {
            Some(Object::Veventq(q)) => Ok(q),
            _ => Err(Errno::ENOENT),
        }
    }

    fn veventq_mut(&mut self, id: ObjId) -> Result<&mut viommu::Veventq, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Veventq(q)) => Ok(q),
            _ => Err(Errno::ENOENT),
        }
    }

    fn vdevice(&self, id: ObjId) -> Result<&viommu::Vdevice, Errno> {
        match self.objects.get(&id) {
            Some(Object::Vdevice(v)) => Ok(v),
            _ => Err(Errno::ENOENT),
        }
    }

    fn device(&self, id: ObjId) -> Result<&Device, Errno> {
        match self.objects.get(&id) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(Errno::ENOENT),
        }
    }

    /// The other devices of this owner on `unit` that share one of `ids`
    /// (one isolation group: the unit cannot tell their DMA apart): the
    /// HWPT the attached ones are in, and every id those attached hold.
    fn attached_mates(
        &self,
        except: ObjId,
        unit: UnitId,
        ids: &[DeviceId],
    ) -> (Option<ObjId>, Vec<DeviceId>) {
        let mut hwpt = None;
        let mut held = Vec::new();
        for (&id, object) in &self.objects {
            let Object::Device(mate) = object else {
                continue;
            };
            let Some(attached) = mate.attached else {
                continue;
            };
            if id == except || mate.unit != unit || !mate.ids().any(|i| ids.contains(&i)) {
                continue;
            }
            hwpt = Some(attached);
            held.extend(mate.ids());
        }
        (hwpt, held)
    }

    /// Another device of this owner on `unit` that holds `requester`.
    fn other_holder(&self, except: ObjId, unit: UnitId, requester: DeviceId) -> Option<ObjId> {
        self.objects.iter().find_map(|(&id, object)| match object {
            Object::Device(d)
                if id != except && d.unit == unit && d.ids().any(|i| i == requester) =>
            {
                Some(id)
            }
            _ => None,
        })
    }

    fn device_mut(&mut self, id: ObjId) -> Result<&mut Device, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(Errno::ENOENT),
        }
    }

    /// The IOAS whose areas a HWPT translates (its own, or its parent's).
    fn hwpt_ioas(&self, id: ObjId) -> Result<ObjId, Errno> {
        match self.hwpt(id)?.kind {
            HwptKind::Paging { ioas, .. } => Ok(ioas),
            HwptKind::Nested { parent, .. } => self.hwpt_ioas(parent),
        }
    }
}

/// The iommufd core: every owner's objects over the kernel's IOMMU units.
pub struct Iommufd<U: IommuUnit, S: Services> {
    units: Units<U>,
    services: S,
    owners: BTreeMap<OwnerId, Owner>,
    pages: PagesTable,
    spare_runs: Vec<Vec<PhysRun>>,
    /// Which owner's device object holds each (unit, requester).
    claimed: BTreeMap<(UnitId, DeviceId), (OwnerId, ObjId)>,
    /// Pages whose IOTLB flush failed: never released (a device may still reach them).
    quarantined: Vec<Pages>,
    /// Domains the units could not free (see `Ioas::lost_domains`).
    lost_domains: u64,
    unrouted_faults: u64,
    fault_scratch: Vec<iommu::FaultRecord>,
    limits: Limits,
}

impl<U: IommuUnit, S: Services> Iommufd<U, S> {
    /// A core over `units` (indexed by `UnitId`).
    pub fn new(units: Vec<U>, services: S) -> Self {
        Self {
            units: Units::new(units),
            services,
            owners: BTreeMap::new(),
            pages: PagesTable::default(),
            spare_runs: Vec::new(),
            claimed: BTreeMap::new(),
            quarantined: Vec::new(),
            lost_domains: 0,
            unrouted_faults: 0,
            fault_scratch: Vec::new(),
            limits: Limits::DEFAULT,
        }
    }

    /// What each owner may hold from now on (holdings above a lowered limit
    /// stay; only new ones are refused).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The limits every owner is held to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Areas `owner` holds over all its IOASes.
    pub fn area_count(&self, owner: OwnerId) -> usize {
        self.owners.get(&owner).map_or(0, Owner::area_count)
    }

    /// HWPTs (hardware domains) `owner` holds.
    pub fn domain_count(&self, owner: OwnerId) -> usize {
        self.owners.get(&owner).map_or(0, Owner::domain_count)
    }

    /// `ENOSPC` when `owner` already holds as many of `resource` as its
    /// [`Limits`] allow (objects and areas; the rest is bounded by those).
    fn admit(&self, owner: OwnerId, resource: Resource) -> Result<(), Errno> {
        let Some(o) = self.owners.get(&owner) else {
            return Ok(());
        };
        let full = match resource {
            Resource::ObjectSlot => o.objects.len() >= self.limits.objects,
            Resource::Area => o.area_count() >= self.limits.areas,
            Resource::Domain => o.domain_count() >= self.limits.domains,
            _ => false,
        };
        if full { Err(Errno::ENOSPC) } else { Ok(()) }
    }

    /// The units, by [`UnitId`].
    pub fn units(&self) -> &Units<U> {
        &self.units
    }

    /// The unit `unit`, to drive directly (tests, the kernel's own use).
    pub fn unit_mut(&mut self, unit: UnitId) -> Option<&mut U> {
        self.units.get_mut(unit.0 as usize)
    }

    /// The kernel services the core calls.
    pub fn services(&self) -> &S {
        &self.services
    }

    /// The kernel services, mutably.
    pub fn services_mut(&mut self) -> &mut S {
        &mut self.services
    }

    /// Objects `owner` holds.
    pub fn object_count(&self, owner: OwnerId) -> usize {
        self.owners.get(&owner).map_or(0, |o| o.objects.len())
    }

    /// Distinct pinned ranges alive (shared ranges count once).
    pub fn pinned_ranges(&self) -> usize {
        self.pages.len()
    }

    /// Bytes pinned in all owners.
    pub fn pinned_bytes(&self) -> u64 {
        self.pages.values().map(|p| p.pinned().1).sum()
    }

    /// Pinned ranges kept forever because their IOTLB flush failed.
    pub fn quarantined_ranges(&self) -> usize {
        self.quarantined.len()
    }

    /// Domains a unit could not free because the invalidation that must come
    /// first failed; their IOAS quarantines its pages from then on.
    pub fn lost_domains(&self) -> u64 {
        self.lost_domains
    }

    /// Faults that arrived for devices no task holds (or that are blocked).
    pub fn unrouted_faults(&self) -> u64 {
        self.unrouted_faults
    }

    /// A textual image of the whole object state, for tests that check an
    /// operation failed without changing anything.
    pub fn state_digest(&self) -> alloc::string::String {
        alloc::format!(
            "{:?}|{:?}|{:?}|{:?}",
            self.owners,
            self.pages,
            self.claimed,
            self.quarantined
        )
    }

    fn owner(&self, owner: OwnerId) -> Result<&Owner, Errno> {
        self.owners.get(&owner).ok_or(Errno::ENOENT)
    }

    fn owner_mut(&mut self, owner: OwnerId) -> Result<&mut Owner, Errno> {
        self.owners.get_mut(&owner).ok_or(Errno::ENOENT)
    }

    fn unit(&mut self, unit: UnitId) -> &mut U {
        &mut self.units[unit.0 as usize]
    }

    /// Binds a device behind `unit` to `owner` (the kernel's `device_open`):
    /// a device object in blocked state. `EBUSY` if another owner holds it;
    /// a device whose requester id this owner holds already (a function of
    /// the same group) joins that group (see [`Self::device_attach`]).
    pub fn bind_device(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        requester: DeviceId,
    ) -> Result<ObjId, Errno> {
        self.bind_device_with_aliases(owner, unit, requester, &[])
    }

    /// [`Self::bind_device`] for a device whose DMA may also carry the ids
    /// `aliases`: they are claimed with it (`EBUSY` if any owner holds one),
    /// and every attach, detach and release programs them as it programs
    /// `requester`, so none of them is ever left translating for somebody
    /// else (Linux programs every alias the same way).
    pub fn bind_device_with_aliases(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        requester: DeviceId,
        aliases: &[DeviceId],
    ) -> Result<ObjId, Errno> {
        if unit.0 as usize >= self.units.len() {
            return Err(Errno::EINVAL);
        }
        let mut extra: Vec<DeviceId> = Vec::new();
        for &alias in aliases {
            if alias != requester && !extra.contains(&alias) {
                extra.push(alias);
            }
        }
        let device = Device {
            unit,
            requester,
            aliases: extra,
            attached: None,
            vdevices: 0,
        };
        let ids: Vec<DeviceId> = device.ids().collect();
        // An id another owner holds makes the device theirs to share; one
        // this owner holds already puts the device in that group (Linux
        // `iommufd_group`): the group is owned as a whole.
        if ids.iter().any(|&id| {
            self.claimed
                .get(&(unit, id))
                .is_some_and(|&(holder, _)| holder != owner)
        }) {
            return Err(Errno::EBUSY);
        }
        self.owners.get(&owner).map_or(Ok(1), |o| o.peek_id())?;
        self.admit(owner, Resource::ObjectSlot)?;
        self.services.charge(Resource::ObjectSlot)?;
        let fresh: Vec<DeviceId> = ids
            .into_iter()
            .filter(|&id| !self.claimed.contains_key(&(unit, id)))
            .collect();
        // A freshly bound device must not inherit anybody's translation; the
        // ids its group already holds stay where the group is.
        for &id in &fresh {
            self.unit(unit).detach(id);
        }
        let obj = self
            .owners
            .entry(owner)
            .or_default()
            .insert(Object::Device(device));
        for id in fresh {
            self.claimed.insert((unit, id), (owner, obj));
        }
        Ok(obj)
    }

    /// Who holds `requester` of `unit` (the owner and its device object id),
    /// if some owner bound it.
    pub fn device_holder(&self, unit: UnitId, requester: DeviceId) -> Option<(OwnerId, ObjId)> {
        self.claimed.get(&(unit, requester)).copied()
    }

    /// Destroys an object that nothing references: `EBUSY` while an IOAS has HWPTs,
    /// a HWPT has devices or nested children, or a device is attached.
    pub fn destroy(&mut self, owner: OwnerId, id: ObjId) -> Result<(), Errno> {
        let o = self.owner(owner)?;
        match o.objects.get(&id).ok_or(Errno::ENOENT)? {
            Object::Ioas(ioas) => {
                if !ioas.domains.is_empty() {
                    return Err(Errno::EBUSY);
                }
                self.destroy_ioas(owner, id)
            }
            Object::Hwpt(hwpt) => {
                if hwpt.devices != 0 || hwpt.children != 0 {
                    return Err(Errno::EBUSY);
                }
                self.destroy_hwpt(owner, id);
                Ok(())
            }
            Object::Veventq(_) => {
                self.destroy_veventq(owner, id);
                Ok(())
            }
            Object::Viommu(viommu) => {
                if !viommu.vdevices.is_empty() || viommu.nested != 0 || viommu.veventq.is_some() {
                    return Err(Errno::EBUSY);
                }
                self.destroy_viommu(owner, id);
                Ok(())
            }
            Object::Vdevice(_) => {
                self.destroy_vdevice(owner, id);
                Ok(())
            }
            Object::Device(device) => {
                if device.attached.is_some() || device.vdevices != 0 {
                    return Err(Errno::EBUSY);
                }
                let unit = device.unit;
                // An id the rest of its group still holds stays claimed, by
                // one of them.
                let claims: Vec<(DeviceId, Option<ObjId>)> = device
                    .ids()
                    .filter(|&requester| self.claimed.get(&(unit, requester)) == Some(&(owner, id)))
                    .map(|requester| (requester, o.other_holder(id, unit, requester)))
                    .collect();
                for (requester, mate) in claims {
                    match mate {
                        Some(mate) => self.claimed.insert((unit, requester), (owner, mate)),
                        None => self.claimed.remove(&(unit, requester)),
                    };
                }
                self.owner_mut(owner)?.remove(id);
                Ok(())
            }
        }
    }

    /// Destroys everything `owner` holds, leaf first: devices are detached
    /// (blocked) and released, then nested HWPTs, paging HWPTs, IOASes (whose
    /// pages are unpinned). Nothing of the owner remains.
    pub fn teardown(&mut self, owner: OwnerId) {
        let Some(o) = self.owners.get(&owner) else {
            return;
        };
        let ids: Vec<(ObjId, u8)> = o
            .objects
            .iter()
            .map(|(&id, obj)| {
                let rank = match obj {
                    Object::Vdevice(_) | Object::Veventq(_) => 0,
                    Object::Device(_) => 1,
                    Object::Hwpt(Hwpt {
                        kind: HwptKind::Nested { .. },
                        ..
                    }) => 2,
                    Object::Viommu(_) => 3,
                    Object::Hwpt(_) => 4,
                    Object::Ioas(_) => 5,
                };
                (id, rank)
            })
            .collect();
        for rank in 0..6 {
            for &(id, r) in &ids {
                if r != rank {
                    continue;
                }
                if rank == 1 {
                    // Detach cannot fail; an already detached device is fine.
                    let _ = self.device_detach(owner, id);
                }
                // Automatic HWPTs vanish with their last device; skip ids gone.
                if self
                    .owners
                    .get(&owner)
                    .is_some_and(|o| o.objects.contains_key(&id))
                {
                    let destroyed = self.destroy(owner, id);
                    debug_assert!(destroyed.is_ok(), "leaf-first teardown left a reference");
                }
            }
        }
        self.owners.remove(&owner);
        self.trim();
    }

    /// Gives back what the core keeps for reuse (spare run buffers, the
    /// fault scratch space, room for pinned ranges no longer held), so that
    /// what an owner's calls made it allocate does not outlive the owner.
    pub fn trim(&mut self) {
        // An emptied BTreeMap keeps its root node until it is dropped.
        if self.owners.is_empty() {
            self.owners = BTreeMap::new();
        }
        if self.claimed.is_empty() {
            self.claimed = BTreeMap::new();
        }
        self.spare_runs = Vec::new();
        self.fault_scratch = Vec::new();
        self.pages.trim();
    }

    /// Drops one reference to pinned pages, unpinning them at the last one. Only
    /// call after the IOTLB flush covering every mapping of them completed.
    fn put_pages(&mut self, pages: u64) {
        let Some(p) = self.pages.get_mut(pages) else {
            debug_assert!(false, "area without pages");
            return;
        };
        p.refs -= 1;
        if p.refs == 0 && p.doomed {
            if let Some(p) = self.pages.remove(pages) {
                self.quarantined.push(p);
            }
        } else if p.refs == 0
            && let Some(mut p) = self.pages.remove(pages)
        {
            let (va, len) = p.pinned();
            self.services.unpin(p.owner, va, len, &p.runs);
            if self.spare_runs.len() < SPARE_RUN_BUFFERS {
                p.runs.clear();
                self.spare_runs.push(p.runs);
            }
        }
    }

    /// Drops one reference to pages a device may still reach (their flush
    /// failed, or a domain mapping them was lost): they are kept forever once
    /// the last reference goes, even if another user's release is the last.
    fn quarantine_pages(&mut self, pages: u64) {
        if let Some(p) = self.pages.get_mut(pages) {
            p.doomed = true;
        }
        self.put_pages(pages);
    }
}

/// Calls `f(phys, len)` for the pieces of `runs` covering `[offset, offset + len)`.
fn for_each_piece(
    runs: &[PhysRun],
    mut offset: u64,
    mut len: u64,
    mut f: impl FnMut(u64, u64) -> Result<(), IommuError>,
) -> Result<(), IommuError> {
    for run in runs {
        if len == 0 {
            break;
        }
        if offset >= run.len {
            offset -= run.len;
            continue;
        }
        let piece = (run.len - offset).min(len);
        f(run.phys + offset, piece)?;
        len -= piece;
        offset = 0;
    }
    Ok(())
}

#[cfg(test)]
mod pages_table_tests {
    use super::*;

    fn pages(va: u64) -> Pages {
        Pages {
            owner: OwnerId(1),
            va,
            len: 4096,
            runs: Vec::new(),
            refs: 1,
            doomed: false,
        }
    }

    /// One owner's many ranges below another's: once they go, their
    /// chunks go too, and freed ids are reused lowest first.
    #[test]
    fn emptied_chunks_are_freed_and_ids_reused_from_the_bottom() {
        let mut table = PagesTable::default();
        let hog: Vec<u64> = (0..3 * PAGES_CHUNK as u64)
            .map(|n| table.insert(pages(n)))
            .collect();
        let other = table.insert(pages(u64::MAX));
        assert_eq!(other, 3 * PAGES_CHUNK as u64);
        for &id in &hog {
            assert_eq!(table.remove(id).map(|p| p.va), Some(id));
        }
        // The first chunk stays for reuse; the hog's others are gone.
        assert_eq!(table.chunks.iter().flatten().count(), 2);
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(other).map(|p| p.va), Some(u64::MAX));
        assert_eq!(table.insert(pages(7)), 0);
        table.remove(other);
        table.remove(0);
        assert_eq!(table.values().count(), 0);
        // The first chunk stays for the next insert, until a trim.
        assert_eq!(table.chunks.len(), 1);
        table.trim();
        assert!(table.chunks.is_empty());
    }
}
