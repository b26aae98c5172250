//! Test doubles: a software IOMMU unit that implements the `iommu` contract with a
//! shadow IOTLB, fake task memory, and a fail-the-Nth-allocation gate.
//!
//! The unit records every map, unmap, flush and attach. Its IOTLB caches a
//! translation as soon as it is mapped (the most hostile device), so a missing or
//! late flush shows up as a stale entry, and the fake memory checks on every
//! unpin that no IOTLB still translates to the pages being released.

use crate::{OwnerId, PAGE_SIZE, PhysRun, Resource, Services};
use abi::Errno;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use iommu::{
    Access, DeviceId, DomainHandle, DomainKind, FaultReason, FaultRecord, Gather, GuestEvent,
    HwInfo, IommuError, IommuUnit, IovaRange, NestedData, NestedFormat, NestedInvalidation,
    NestingInfo, Prot, ReservedKind, ReservedRegion, UnitId, UnitInfo, UnitKind,
};

/// Fails exactly the Nth gated allocation after `arm(n)` (as Linux `fail_nth`).
#[derive(Clone, Debug, Default)]
pub struct FailGate(Rc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    calls: Cell<u64>,
    fail_at: Cell<Option<u64>>,
    tripped: Cell<bool>,
}

impl FailGate {
    /// A gate that fails nothing until armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts calls from now and fails the `n`th (1-based).
    pub fn arm(&self, n: u64) {
        self.0.calls.set(0);
        self.0.fail_at.set(Some(n));
        self.0.tripped.set(false);
    }

    /// Counts calls from now without failing any.
    pub fn count(&self) {
        self.0.calls.set(0);
        self.0.fail_at.set(None);
        self.0.tripped.set(false);
    }

    /// Gated calls since the last `arm` or `count`.
    pub fn calls(&self) -> u64 {
        self.0.calls.get()
    }

    /// Whether the armed failure happened.
    pub fn tripped(&self) -> bool {
        self.0.tripped.get()
    }

    /// One gated allocation: false when it must fail.
    pub fn allow(&self) -> bool {
        let n = self.0.calls.get() + 1;
        self.0.calls.set(n);
        if self.0.fail_at.get() == Some(n) {
            self.0.tripped.set(true);
            return false;
        }
        true
    }
}

/// A cached translation: a leaf of `size` bytes at `iova` → `phys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leaf {
    phys: u64,
    size: u64,
    prot: Prot,
}

/// The shadow IOTLB, shared with [`FakeMemory`] so that unpin can check it.
#[derive(Debug, Default)]
pub struct Shadow {
    /// (domain, leaf iova) → leaf, as cached by the "device".
    iotlb: BTreeMap<(u32, u64), Leaf>,
}

impl Shadow {
    fn holds_phys(&self, start: u64, len: u64) -> bool {
        self.iotlb
            .values()
            .any(|l| l.phys < start + len && start < l.phys + l.size)
    }
}

/// Everything the unit is asked to do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `alloc_domain` returned this domain.
    AllocDomain(DomainHandle),
    /// `free_domain` of this domain.
    FreeDomain(DomainHandle),
    /// `map` of `len` bytes at `iova` to `phys`.
    Map {
        /// The domain.
        domain: DomainHandle,
        /// The first IOVA.
        iova: u64,
        /// Where it goes.
        phys: u64,
        /// How many bytes.
        len: u64,
    },
    /// `unmap` of `len` bytes at `iova`.
    Unmap {
        /// The domain.
        domain: DomainHandle,
        /// The first IOVA.
        iova: u64,
        /// How many bytes.
        len: u64,
    },
    /// `flush` of what `gather` covers.
    Flush {
        /// The domain.
        domain: DomainHandle,
        /// What the unmaps (or maps) before it changed.
        gather: Gather,
    },
    /// `attach` of `device` to `domain`.
    Attach {
        /// The device.
        device: DeviceId,
        /// The domain.
        domain: DomainHandle,
    },
    /// `detach` of `device`.
    Detach {
        /// The device.
        device: DeviceId,
    },
    /// `invalidate_nested` carried out `count` requests.
    InvalidateNested {
        /// The nested domain.
        domain: DomainHandle,
        /// Requests carried out.
        count: usize,
    },
    /// One vIOMMU command carried out: over `parent`, naming `device` (the
    /// physical id its virtual one was translated to) or none.
    InvalidateViommu {
        /// The vIOMMU's parent domain.
        parent: DomainHandle,
        /// The device the command named, if any.
        device: Option<DeviceId>,
    },
}

/// Counters of the invalidation traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `map` calls.
    pub maps: u64,
    /// `unmap` calls.
    pub unmaps: u64,
    /// IOTLB invalidations by range (one per non-empty flush).
    pub range_invalidations: u64,
    /// Completion waits (one per flush).
    pub syncs: u64,
}

/// How a software unit presents itself.
#[derive(Clone, Debug)]
pub struct SoftConfig {
    /// What `info` reports.
    pub info: UnitInfo,
    /// What `reserved_regions` reports for every device.
    pub reserved: Vec<ReservedRegion>,
    /// What `hw_info` reports.
    pub hw_info: HwInfo,
    /// Its paging domains track the pages their devices write (a model of
    /// VT-d SSADS, AMD-Vi HD, SMMUv3 HTTU).
    pub dirty_tracking: bool,
}

impl SoftConfig {
    /// VT-d-like: 48-bit aperture, 4K/2M/1G, the x86 interrupt window reserved,
    /// VT-d first-stage nesting.
    pub fn vtd_like() -> Self {
        Self {
            info: UnitInfo {
                name: "soft-vtd",
                kind: UnitKind::Software,
                aperture: IovaRange {
                    start: 0,
                    last: (1 << 48) - 1,
                },
                page_sizes: (1 << 12) | (1 << 21) | (1 << 30),
                nesting: Some(NestingInfo {
                    format: NestedFormat::VtdS1,
                }),
            },
            reserved: alloc::vec![ReservedRegion {
                range: IovaRange {
                    start: 0xfee0_0000,
                    last: 0xfeef_ffff,
                },
                kind: ReservedKind::Msi,
            }],
            hw_info: HwInfo::IntelVtd {
                cap: 0x00d2_0082_2004_0462,
                ecap: 0xf0_0f5a,
            },
            dirty_tracking: false,
        }
    }

    /// SMMUv3-like: 44-bit aperture, 4K/2M/1G, an MSI doorbell page reserved,
    /// SMMUv3 nesting.
    pub fn smmu_like() -> Self {
        Self {
            info: UnitInfo {
                name: "soft-smmu",
                kind: UnitKind::Software,
                aperture: IovaRange {
                    start: 0,
                    last: (1 << 44) - 1,
                },
                page_sizes: (1 << 12) | (1 << 21) | (1 << 30),
                nesting: Some(NestingInfo {
                    format: NestedFormat::ArmSmmuV3,
                }),
            },
            reserved: alloc::vec![ReservedRegion {
                range: IovaRange {
                    start: 0x0800_0000,
                    last: 0x0800_ffff,
                },
                kind: ReservedKind::Msi,
            }],
            hw_info: HwInfo::ArmSmmuV3 {
                idr: [0x0f0c_f0af, 0, 0, 0, 0, 0x75],
                iidr: 0x43b,
                aidr: 0x2,
            },
            dirty_tracking: false,
        }
    }

    /// Only 64 KiB pages and a 32-bit aperture, no nesting, no reserved regions.
    pub fn small_64k() -> Self {
        Self {
            info: UnitInfo {
                name: "soft-64k",
                kind: UnitKind::Software,
                aperture: IovaRange {
                    start: 0,
                    last: u32::MAX as u64,
                },
                page_sizes: 1 << 16,
                nesting: None,
            },
            reserved: Vec::new(),
            hw_info: HwInfo::None,
            dirty_tracking: false,
        }
    }
}

#[derive(Debug)]
struct Domain {
    kind: DomainKind,
    leaves: BTreeMap<u64, Leaf>,
    /// Table pages below the root, keyed (level, index), with the leaves under them.
    tables: BTreeMap<(u8, u64), u32>,
    devices: u32,
    children: u32,
    /// Dirty tracking on (`set_dirty_tracking`).
    tracking: bool,
    /// Leaves written through since their dirty state was cleared (the D
    /// bits in memory), by leaf IOVA.
    dirty: alloc::collections::BTreeSet<u64>,
    /// Leaves whose IOTLB entry knows them dirty: a write through such an
    /// entry sets nothing in memory (hardware updates D only when its cached
    /// entry is clean), until a flush drops the entry.
    dirty_cached: alloc::collections::BTreeSet<u64>,
}

/// Table levels (4 KiB granule, 9 bits per level) a leaf of `size` needs below the
/// root: a 4 KiB leaf needs levels 1-3, a 2 MiB one 2-3, a 1 GiB one 3.
fn table_keys(iova: u64, size: u64) -> impl Iterator<Item = (u8, u64)> {
    let first_level = match size {
        s if s >= 1 << 30 => 3,
        s if s >= 1 << 21 => 2,
        _ => 1,
    };
    (first_level..=3u8).map(move |level| (level, iova >> (12 + 9 * level as u32)))
}

/// A software IOMMU unit implementing the [`IommuUnit`] contract.
#[derive(Debug)]
pub struct SoftUnit {
    id: UnitId,
    config: SoftConfig,
    gate: FailGate,
    domains: BTreeMap<u32, Domain>,
    next_domain: u32,
    /// Devices absent from the map are blocked.
    attached: BTreeMap<DeviceId, DomainHandle>,
    shadow: Rc<RefCell<Shadow>>,
    stale_uses: u64,
    table_pages: u64,
    pending_faults: Vec<FaultRecord>,
    /// Whether to append to `log` (off in benchmarks).
    pub logging: bool,
    /// Every call, in order (while `logging`).
    pub log: Vec<Event>,
    /// Counters of the calls.
    pub stats: Stats,
    /// Makes the next `attach` fail with `Invalid` (tests of rollback).
    pub fail_next_attach: bool,
    /// Makes every `attach` of this device fail with `Invalid` (rollback
    /// of a device's aliases).
    pub fail_attach_of: Option<DeviceId>,
    /// Makes flushes fail with `Timeout` (tests of quarantine).
    pub fail_flush: bool,
    /// Makes the next `unmap` fail with `Invalid`, unmapping nothing.
    pub fail_next_unmap: bool,
    /// Whether the shadow IOTLB caches every new translation at once (the
    /// hostile device; off only in benchmarks of the core's own cost).
    pub prefetch: bool,
}

impl SoftUnit {
    /// A unit `id` as `config` describes it, whose table allocations go
    /// through `gate`.
    pub fn new(id: UnitId, config: SoftConfig, gate: FailGate) -> Self {
        Self {
            id,
            config,
            gate,
            domains: BTreeMap::new(),
            next_domain: 1,
            attached: BTreeMap::new(),
            shadow: Rc::default(),
            stale_uses: 0,
            table_pages: 0,
            pending_faults: Vec::new(),
            logging: true,
            log: Vec::new(),
            stats: Stats::default(),
            fail_next_attach: false,
            fail_attach_of: None,
            fail_flush: false,
            fail_next_unmap: false,
            prefetch: true,
        }
    }

    /// The shadow IOTLB, for [`FakeMemory::watch`].
    pub fn shadow(&self) -> Rc<RefCell<Shadow>> {
        self.shadow.clone()
    }

    fn record(&mut self, event: Event) {
        if self.logging {
            self.log.push(event);
        }
    }

    /// Live domains (excluding none: blocked/identity ones count too).
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Live table pages below the roots.
    pub fn table_pages(&self) -> u64 {
        self.table_pages
    }

    /// Leaves mapped in all domains.
    pub fn leaf_count(&self) -> usize {
        self.domains.values().map(|d| d.leaves.len()).sum()
    }

    /// The domain a device is in, `None` when blocked.
    pub fn device_domain(&self, device: DeviceId) -> Option<DomainHandle> {
        self.attached.get(&device).copied()
    }

    /// The IOVA → physical translation of a domain's page table (not the IOTLB).
    pub fn lookup(&self, domain: DomainHandle, iova: u64) -> Option<(u64, Prot)> {
        let d = self.domains.get(&domain.0)?;
        let (&at, leaf) = d.leaves.range(..=iova).next_back()?;
        (iova - at < leaf.size).then_some((leaf.phys + (iova - at), leaf.prot))
    }

    /// IOTLB entries that no longer match the page table: a flush is owed.
    pub fn stale_entries(&self) -> usize {
        self.shadow
            .borrow()
            .iotlb
            .iter()
            .filter(|&(&(domain, iova), leaf)| {
                self.domains.get(&domain).and_then(|d| d.leaves.get(&iova)) != Some(leaf)
            })
            .count()
    }

    /// Translations used after their unmap and before the flush.
    pub fn stale_uses(&self) -> u64 {
        self.stale_uses
    }

    /// A DMA by `device` at `iova`: the translated address, or a fault recorded
    /// for `drain_faults`. Uses (and fills) the IOTLB like hardware.
    pub fn dma(&mut self, device: DeviceId, iova: u64, access: Access) -> Option<u64> {
        let fault = |reason| FaultRecord {
            unit: self.id,
            requester: device,
            iova,
            access,
            reason,
            vendor_code: 0,
            guest_event: None,
        };
        let Some(domain) = self.attached.get(&device).copied() else {
            self.pending_faults.push(fault(FaultReason::Blocked));
            return None;
        };
        let cached = {
            let shadow = self.shadow.borrow();
            shadow
                .iotlb
                .range((domain.0, 0)..=(domain.0, iova))
                .next_back()
                .filter(|&(&(_, at), leaf)| iova - at < leaf.size)
                .map(|(&(_, at), leaf)| (at, *leaf))
        };
        let (at, leaf) = match cached {
            Some((at, leaf)) => {
                if self.domains.get(&domain.0).and_then(|d| d.leaves.get(&at)) != Some(&leaf) {
                    self.stale_uses += 1;
                }
                (at, leaf)
            }
            None => {
                let found = self.domains.get(&domain.0).and_then(|d| {
                    let (&at, leaf) = d.leaves.range(..=iova).next_back()?;
                    (iova - at < leaf.size).then_some((at, *leaf))
                });
                let Some((at, leaf)) = found else {
                    self.pending_faults.push(fault(FaultReason::NotPresent));
                    return None;
                };
                self.shadow.borrow_mut().iotlb.insert((domain.0, at), leaf);
                (at, leaf)
            }
        };
        let allowed = match access {
            Access::Read => leaf.prot.read,
            Access::Write => leaf.prot.write,
            Access::Execute => false,
        };
        if !allowed {
            self.pending_faults.push(fault(FaultReason::Permission));
            return None;
        }
        if access == Access::Write
            && let Some(d) = self.domains.get_mut(&domain.0)
            && d.tracking
            && d.dirty_cached.insert(at)
        {
            d.dirty.insert(at);
        }
        Some(leaf.phys + (iova - at))
    }

    /// Queues a fault as if the hardware had reported it.
    pub fn inject_fault(&mut self, requester: DeviceId, iova: u64, access: Access) {
        self.pending_faults.push(FaultRecord {
            unit: self.id,
            requester,
            iova,
            access,
            reason: FaultReason::NotPresent,
            vendor_code: 0,
            guest_event: None,
        });
    }

    /// Queues a fault of a task-owned stage 1, with the record a guest's
    /// SMMUv3 would have written (F_TRANSLATION of `requester` at `iova`).
    pub fn inject_guest_fault(&mut self, requester: DeviceId, iova: u64) {
        const F_TRANSLATION: u64 = 0x10;
        self.pending_faults.push(FaultRecord {
            unit: self.id,
            requester,
            iova,
            access: Access::Write,
            reason: FaultReason::NotPresent,
            vendor_code: F_TRANSLATION as u32,
            guest_event: Some(GuestEvent::ArmSmmuV3 {
                evt: [F_TRANSLATION | u64::from(requester.0) << 32, 0, iova, 0],
            }),
        });
    }

    fn remove_leaves(&mut self, domain: u32, iova: u64, len: u64, gather: &mut Gather) {
        let Some(d) = self.domains.get_mut(&domain) else {
            return;
        };
        let last = iova + (len - 1);
        while let Some((&at, &leaf)) = d.leaves.range(iova..=last).next() {
            d.leaves.remove(&at);
            d.dirty.remove(&at);
            d.dirty_cached.remove(&at);
            gather.add_leaf(at, leaf.size);
            // Emptied tables are freed at once, so that a rolled-back map leaves
            // exactly the table pages there were before.
            for key in table_keys(at, leaf.size) {
                if let Some(count) = d.tables.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        d.tables.remove(&key);
                        self.table_pages -= 1;
                        gather.freed_tables = true;
                    }
                }
            }
        }
    }
}

impl IommuUnit for SoftUnit {
    fn info(&self) -> UnitInfo {
        self.config.info.clone()
    }

    fn reserved_regions(&self, _device: DeviceId) -> Vec<ReservedRegion> {
        self.config.reserved.clone()
    }

    fn hw_info(&self) -> HwInfo {
        self.config.hw_info
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        match kind {
            DomainKind::NestParent if self.config.info.nesting.is_none() => {
                return Err(IommuError::Unsupported);
            }
            DomainKind::Nested { parent, data } => {
                if self.config.info.nesting.map(|n| n.format) != Some(data.format()) {
                    return Err(IommuError::Unsupported);
                }
                let parent_ok = self
                    .domains
                    .get(&parent.0)
                    .is_some_and(|p| p.kind == DomainKind::NestParent);
                let data_ok = match data {
                    NestedData::VtdS1 {
                        pgtbl_addr,
                        addr_width,
                        ..
                    } => pgtbl_addr % PAGE_SIZE == 0 && matches!(addr_width, 48 | 57),
                    NestedData::ArmSmmuV3 { ste } => ste[0] & 1 == 1,
                    NestedData::AmdViV2 { dte } => dte[0] & 1 == 1,
                };
                if !parent_ok || !data_ok {
                    return Err(IommuError::Invalid);
                }
            }
            _ => {}
        }
        if !self.gate.allow() {
            return Err(IommuError::NoMemory);
        }
        if let DomainKind::Nested { parent, .. } = kind
            && let Some(p) = self.domains.get_mut(&parent.0)
        {
            p.children += 1;
        }
        let handle = DomainHandle(self.next_domain);
        self.next_domain += 1;
        self.domains.insert(
            handle.0,
            Domain {
                kind,
                leaves: BTreeMap::new(),
                tables: BTreeMap::new(),
                devices: 0,
                children: 0,
                tracking: false,
                dirty: Default::default(),
                dirty_cached: Default::default(),
            },
        );
        self.record(Event::AllocDomain(handle));
        Ok(handle)
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let d = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        if d.devices != 0 || d.children != 0 {
            return Err(IommuError::Busy);
        }
        // Freeing invalidates everything tagged with the domain (below): a
        // unit whose invalidations fail cannot free it, and keeps it, tables
        // and cached translations included.
        if self.fail_flush {
            return Err(IommuError::Timeout);
        }
        let Some(d) = self.domains.remove(&domain.0) else {
            return Err(IommuError::Invalid);
        };
        self.table_pages -= d.tables.len() as u64;
        if let DomainKind::Nested { parent, .. } = d.kind
            && let Some(p) = self.domains.get_mut(&parent.0)
        {
            p.children -= 1;
        }
        // Freeing a domain invalidates everything tagged with it.
        self.shadow
            .borrow_mut()
            .iotlb
            .retain(|&(dom, _), _| dom != domain.0);
        self.stats.range_invalidations += 1;
        self.stats.syncs += 1;
        self.record(Event::FreeDomain(domain));
        Ok(())
    }

    fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        let min = self.config.info.min_page_size();
        let d = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        if !matches!(d.kind, DomainKind::Paging | DomainKind::NestParent)
            || len == 0
            || !(iova | phys | len).is_multiple_of(min)
        {
            return Err(IommuError::Invalid);
        }
        let last = iova.checked_add(len - 1).ok_or(IommuError::Invalid)?;
        let aperture = self.config.info.aperture;
        if !aperture.contains(&IovaRange { start: iova, last }) {
            return Err(IommuError::Invalid);
        }
        if d.leaves
            .range(..=last)
            .next_back()
            .is_some_and(|(&at, l)| at + (l.size - 1) >= iova)
        {
            return Err(IommuError::Invalid);
        }
        self.record(Event::Map {
            domain,
            iova,
            phys,
            len,
        });
        self.stats.maps += 1;
        let sizes = self.config.info.page_sizes;
        let mut done = 0;
        while done < len {
            let (at, pa, rest) = (iova + done, phys + done, len - done);
            let size = (0..64)
                .rev()
                .map(|bit| 1u64 << bit)
                .find(|&s| sizes & s != 0 && s <= rest && (at | pa).is_multiple_of(s))
                .unwrap_or(min);
            let Some(d) = self.domains.get_mut(&domain.0) else {
                return Err(IommuError::Invalid);
            };
            let mut referenced = 0;
            for key in table_keys(at, size) {
                match d.tables.get_mut(&key) {
                    Some(count) => *count += 1,
                    None if self.gate.allow() => {
                        d.tables.insert(key, 1);
                        self.table_pages += 1;
                    }
                    None => break,
                }
                referenced += 1;
            }
            if referenced != table_keys(at, size).count() {
                for key in table_keys(at, size).take(referenced) {
                    if let Some(count) = d.tables.get_mut(&key) {
                        *count -= 1;
                        if *count == 0 {
                            d.tables.remove(&key);
                            self.table_pages -= 1;
                        }
                    }
                }
                if done != 0 {
                    let mut g = Gather::default();
                    self.remove_leaves(domain.0, iova, done, &mut g);
                    // Caches may hold the undone leaves: drop them as a flush would.
                    let mut shadow = self.shadow.borrow_mut();
                    shadow
                        .iotlb
                        .retain(|&(dom, a), _| dom != domain.0 || a < iova || a > last);
                }

                return Err(IommuError::NoMemory);
            }
            let leaf = Leaf {
                phys: pa,
                size,
                prot,
            };
            d.leaves.insert(at, leaf);
            if self.prefetch {
                // The hostile device: it caches every new translation at once.
                self.shadow.borrow_mut().iotlb.insert((domain.0, at), leaf);
            }
            done += size;
        }
        Ok(Gather::default())
    }

    fn unmap(&mut self, domain: DomainHandle, iova: u64, len: u64) -> Result<Gather, IommuError> {
        self.record(Event::Unmap { domain, iova, len });
        self.stats.unmaps += 1;
        if core::mem::take(&mut self.fail_next_unmap) {
            return Err(IommuError::Invalid);
        }
        let mut gather = Gather::default();
        if len != 0 {
            self.remove_leaves(domain.0, iova, len, &mut gather);
        }
        Ok(gather)
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        self.record(Event::Flush {
            domain,
            gather: *gather,
        });
        if self.fail_flush {
            return Err(IommuError::Timeout);
        }
        if !gather.is_empty() {
            self.stats.range_invalidations += 1;
            let (start, last) = (gather.start, gather.last);
            // Leaves are at most 1 GiB: only entries from there on can overlap.
            let from = (domain.0, start.saturating_sub((1 << 30) - 1));
            let mut shadow = self.shadow.borrow_mut();
            while let Some(key) = shadow
                .iotlb
                .range(from..=(domain.0, last))
                .find(|&(&(_, at), leaf)| at + (leaf.size - 1) >= start)
                .map(|(k, _)| *k)
            {
                shadow.iotlb.remove(&key);
            }
            if let Some(d) = self.domains.get_mut(&domain.0) {
                d.dirty_cached.retain(|&at| at < start || at > last);
            }
        }
        self.stats.syncs += 1;
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        if core::mem::take(&mut self.fail_next_attach) || self.fail_attach_of == Some(device) {
            return Err(IommuError::Invalid);
        }
        if !self.domains.contains_key(&domain.0) {
            return Err(IommuError::Invalid);
        }
        if !self.gate.allow() {
            return Err(IommuError::NoMemory);
        }
        if let Some(old) = self.attached.insert(device, domain)
            && let Some(d) = self.domains.get_mut(&old.0)
        {
            d.devices -= 1;
        }
        if let Some(d) = self.domains.get_mut(&domain.0) {
            d.devices += 1;
        }
        self.record(Event::Attach { device, domain });
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) {
        if let Some(old) = self.attached.remove(&device)
            && let Some(d) = self.domains.get_mut(&old.0)
        {
            d.devices -= 1;
        }
        self.record(Event::Detach { device });
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        let n = self.pending_faults.len();
        out.append(&mut self.pending_faults);
        n
    }

    fn invalidate_nested(
        &mut self,
        domain: DomainHandle,
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        let mut done = 0;
        let mut result = Ok(());
        for r in requests {
            let ok = match r {
                NestedInvalidation::VtdS1 { npages, .. } => *npages != 0,
                NestedInvalidation::ArmSmmuV3 { cmd } | NestedInvalidation::AmdViV2 { cmd } => {
                    cmd[0] != 0
                }
            };
            if !ok {
                result = Err(IommuError::Invalid);
                break;
            }
            done += 1;
        }
        self.record(Event::InvalidateNested {
            domain,
            count: done,
        });
        (done, result)
    }

    fn dirty_tracking(&self) -> bool {
        self.config.dirty_tracking
    }

    fn set_dirty_tracking(&mut self, domain: DomainHandle, enable: bool) -> Result<(), IommuError> {
        if !self.config.dirty_tracking {
            return Err(IommuError::Unsupported);
        }
        let d = self.domains.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
        d.tracking = enable;
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
        if !self.config.dirty_tracking {
            return Err(IommuError::Unsupported);
        }
        let d = self.domains.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
        let last = iova + (len - 1);
        let mut gather = Gather::default();
        let written: Vec<u64> = d.dirty.iter().copied().collect();
        for at in written {
            let Some(leaf) = d.leaves.get(&at) else {
                continue;
            };
            if at + (leaf.size - 1) < iova || at > last {
                continue;
            }
            dirty(at, leaf.size);
            if !keep {
                d.dirty.remove(&at);
                gather.add_leaf(at, leaf.size);
            }
        }
        Ok(gather)
    }

    /// A soft vIOMMU command names a device by the virtual id in the upper
    /// half of its first word (0: none), as SMMUv3's CFGI_CD does.
    fn invalidate_viommu(
        &mut self,
        parent: DomainHandle,
        vdevices: &[(u64, DeviceId)],
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        let mut done = 0;
        for request in requests {
            let NestedInvalidation::ArmSmmuV3 { cmd } = request else {
                return (done, Err(IommuError::Invalid));
            };
            let virtual_id = cmd[0] >> 32;
            let device = match virtual_id {
                0 => None,
                _ => match vdevices.iter().find(|&&(virt, _)| virt == virtual_id) {
                    Some(&(_, device)) => Some(device),
                    None => return (done, Err(IommuError::Refused)),
                },
            };
            self.record(Event::InvalidateViommu { parent, device });
            done += 1;
        }
        (done, Ok(()))
    }
}

/// Fake task memory: every owner's VA below `limit` is backed; physical addresses
/// are `owner << 40 | va`, with adjacent pages swapped in `scattered` mode so that
/// a pinned range comes back as many runs.
#[derive(Debug)]
pub struct FakeMemory {
    gate: FailGate,
    /// Every virtual address below it is backed; above, `pin` is `EFAULT`.
    pub limit: u64,
    /// Adjacent pages swapped: a pinned range comes back as many runs.
    pub scattered: bool,
    /// (owner, va) → (length, times pinned).
    pinned: BTreeMap<(OwnerId, u64), (u64, u64)>,
    watched: Vec<Rc<RefCell<Shadow>>>,
    /// Unpins of pages an IOTLB still translated to: must stay 0.
    pub violations: u64,
    /// `pin` calls that succeeded.
    pub pins: u64,
    /// `unpin` calls.
    pub unpins: u64,
}

impl FakeMemory {
    /// Memory below 2^39 for every owner, whose pins go through `gate`.
    pub fn new(gate: FailGate) -> Self {
        Self {
            gate,
            limit: 1 << 39,
            scattered: false,
            pinned: BTreeMap::new(),
            watched: Vec::new(),
            violations: 0,
            pins: 0,
            unpins: 0,
        }
    }

    /// Checks unpins against this unit's IOTLB.
    pub fn watch(&mut self, shadow: Rc<RefCell<Shadow>>) {
        self.watched.push(shadow);
    }

    /// Ranges pinned now.
    pub fn pinned_ranges(&self) -> usize {
        self.pinned.len()
    }

    /// Whether some live pin still covers the physical page `phys`.
    fn still_pinned(&self, phys: u64) -> bool {
        let owner = OwnerId(phys >> 40);
        let low = phys & ((1 << 40) - 1);
        let va = if self.scattered { low ^ PAGE_SIZE } else { low };
        self.pinned
            .range((owner, 0)..=(owner, va))
            .any(|(&(_, start), &(len, _))| va - start < len)
    }

    /// The physical address behind `owner`'s `va`.
    pub fn phys_of(&self, owner: OwnerId, va: u64) -> u64 {
        let va = if self.scattered { va ^ PAGE_SIZE } else { va };
        (owner.0 << 40) | va
    }
}

impl Services for FakeMemory {
    fn pin(
        &mut self,
        owner: OwnerId,
        va: u64,
        len: u64,
        _write: bool,
        runs: &mut Vec<PhysRun>,
    ) -> Result<(), Errno> {
        // The `Services` contract: the core pins whole pages, even under a
        // byte-granular area.
        assert!(
            va.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE) && len > 0,
            "pin of a partial page: {va:#x}+{len:#x}"
        );
        let end = va.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > self.limit {
            return Err(Errno::EFAULT);
        }
        if !self.gate.allow() {
            return Err(Errno::ENOMEM);
        }
        if self.scattered {
            runs.extend((0..len / PAGE_SIZE).map(|i| PhysRun {
                phys: self.phys_of(owner, va + i * PAGE_SIZE),
                len: PAGE_SIZE,
            }));
        } else {
            runs.push(PhysRun {
                phys: self.phys_of(owner, va),
                len,
            });
        }
        let entry = self.pinned.entry((owner, va)).or_insert((len, 0));
        entry.0 = entry.0.max(len);
        entry.1 += 1;
        self.pins += 1;
        Ok(())
    }

    fn unpin(&mut self, owner: OwnerId, va: u64, _len: u64, runs: &[PhysRun]) {
        if let Some((_, count)) = self.pinned.get_mut(&(owner, va)) {
            *count -= 1;
            if *count == 0 {
                self.pinned.remove(&(owner, va));
            }
        }
        self.unpins += 1;
        // A violation is an IOTLB entry reaching a page that no pin holds any more
        // (the same memory may legitimately be pinned by several ranges).
        let mut violations = 0;
        for shadow in &self.watched {
            let shadow = shadow.borrow();
            for run in runs {
                for page in (run.phys..run.phys + run.len).step_by(PAGE_SIZE as usize) {
                    if shadow.holds_phys(page, PAGE_SIZE) && !self.still_pinned(page) {
                        violations += 1;
                    }
                }
            }
        }
        self.violations += violations;
    }

    fn charge(&mut self, _resource: Resource) -> Result<(), Errno> {
        if self.gate.allow() {
            Ok(())
        } else {
            Err(Errno::ENOMEM)
        }
    }
}

/// A core over software units sharing one fail gate, with the fake memory
/// watching every unit's IOTLB.
pub type SoftCore = crate::Iommufd<SoftUnit, FakeMemory>;

/// Builds a [`SoftCore`] with one unit per config; returns it and the gate.
pub fn soft_core(configs: &[SoftConfig]) -> (SoftCore, FailGate) {
    let gate = FailGate::new();
    let mut memory = FakeMemory::new(gate.clone());
    let units: Vec<SoftUnit> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| SoftUnit::new(UnitId(i as u32), c.clone(), gate.clone()))
        .collect();
    for u in &units {
        memory.watch(u.shadow());
    }
    (crate::Iommufd::new(units, memory), gate)
}
