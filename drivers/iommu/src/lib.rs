//! The contract every IOMMU driver implements: units, domains, attach, flush, faults,
//! raw hardware info.
//!
//! A *unit* is one IOMMU instance (a VT-d DRHD, an SMMUv3, an AMD-Vi IVHD). It owns
//! *domains* (translation contexts) that the caller names by [`DomainHandle`], and
//! places each device it translates in exactly one domain. Everything here is
//! hardware-independent; registers and in-memory formats live in the drivers.
//!
//! Rules every implementation keeps:
//! - A device is never bypassed: before its first attach and after `detach` it is
//!   in the blocking state, and `attach` switches domains without a bypass window.
//! - `map` and `unmap` change only the page table and return the [`Gather`] of what
//!   they changed; the IOTLB is invalidated only by `flush`, which returns once the
//!   invalidation has completed (range invalidation plus sync). Callers release the
//!   memory behind an unmapped range only after that flush.
//! - `unmap` of a range that a successful `map` created never allocates, so it
//!   cannot fail.
//!
//! # The caller's side, against a toy unit
//!
//! A unit that keeps its translations in a map stands in for the hardware
//! here; the order of calls is the one every caller follows (the iommufd
//! core, the kernel's tests): a domain, the device attached, a map, and
//! after an unmap the flush *before* the memory is given back.
//!
//! ```
//! use std::collections::BTreeMap;
//! use iommu::*;
//!
//! /// Translations by (domain, page); a "hardware" that caches nothing.
//! #[derive(Default)]
//! struct Toy {
//!     pages: BTreeMap<(u32, u64), u64>,
//!     domains: u32,
//!     attached: BTreeMap<DeviceId, DomainHandle>,
//! }
//!
//! impl IommuUnit for Toy {
//!     fn info(&self) -> UnitInfo {
//!         UnitInfo { name: "toy", kind: UnitKind::Software, aperture: IovaRange::FULL,
//!                    page_sizes: 0x1000, nesting: None }
//!     }
//!     fn reserved_regions(&self, _: DeviceId) -> Vec<ReservedRegion> { Vec::new() }
//!     fn hw_info(&self) -> HwInfo { HwInfo::None }
//!     fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
//!         match kind {
//!             DomainKind::Paging => { self.domains += 1; Ok(DomainHandle(self.domains)) }
//!             _ => Err(IommuError::Unsupported),
//!         }
//!     }
//!     fn free_domain(&mut self, _: DomainHandle) -> Result<(), IommuError> { Ok(()) }
//!     fn map(&mut self, d: DomainHandle, iova: u64, phys: u64, len: u64, _: Prot)
//!         -> Result<Gather, IommuError> {
//!         for page in (0..len).step_by(0x1000) {
//!             self.pages.insert((d.0, iova + page), phys + page);
//!         }
//!         Ok(Gather::default()) // nothing cached that a map could make stale
//!     }
//!     fn unmap(&mut self, d: DomainHandle, iova: u64, len: u64) -> Result<Gather, IommuError> {
//!         let mut gather = Gather::default();
//!         for page in (0..len).step_by(0x1000) {
//!             self.pages.remove(&(d.0, iova + page)).ok_or(IommuError::Invalid)?;
//!             gather.add_leaf(iova + page, 0x1000);
//!         }
//!         Ok(gather)
//!     }
//!     fn flush(&mut self, _: DomainHandle, _: &Gather) -> Result<(), IommuError> { Ok(()) }
//!     fn attach(&mut self, dev: DeviceId, d: DomainHandle) -> Result<(), IommuError> {
//!         self.attached.insert(dev, d);
//!         Ok(())
//!     }
//!     fn detach(&mut self, dev: DeviceId) { self.attached.remove(&dev); }
//!     fn drain_faults(&mut self, _: &mut Vec<FaultRecord>) -> usize { 0 }
//!     fn invalidate_nested(&mut self, _: DomainHandle, _: &[NestedInvalidation])
//!         -> (usize, Result<(), IommuError>) { (0, Err(IommuError::Unsupported)) }
//! }
//!
//! let mut unit = Toy::default();
//! let device = DeviceId(0x20);
//! let domain = unit.alloc_domain(DomainKind::Paging)?;
//! unit.attach(device, domain)?;
//! let rw = Prot { read: true, write: true };
//! let iova = 0x10_0000;
//! assert_eq!(iova % unit.info().min_page_size(), 0);
//! let gather = unit.map(domain, iova, 0x8000_0000, 0x2000, rw)?;
//! unit.flush(domain, &gather)?; // empty here; not on VT-d caching mode
//! let gather = unit.unmap(domain, iova, 0x2000)?;
//! assert_eq!((gather.start, gather.last), (iova, iova + 0x1fff));
//! unit.flush(domain, &gather)?; // only now may the pages go back
//! unit.detach(device); // blocked, never bypassed
//! unit.free_domain(domain)?;
//! # Ok::<(), IommuError>(())
//! ```
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;

pub use io_page_table::Gather;

/// Index of a unit in the kernel's unit list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(pub u32);

/// Brings up one unit per description, in firmware order, each named by its
/// index ([`UnitId`]); all or nothing: the first failure comes back with the
/// index of the description at fault, and the units already up are dropped
/// (a driver's drop leaves its unit blocking). `too_many` is the error for an
/// index a `UnitId` cannot name.
pub fn bring_up_each<D, T, E>(
    descriptions: impl IntoIterator<Item = D>,
    too_many: impl Fn() -> E,
    mut bring_up: impl FnMut(UnitId, D) -> Result<T, E>,
) -> Result<Vec<T>, (usize, E)> {
    descriptions
        .into_iter()
        .enumerate()
        .map(|(index, description)| {
            let id = u32::try_from(index)
                .map(UnitId)
                .map_err(|_| (index, too_many()))?;
            bring_up(id, description).map_err(|err| (index, err))
        })
        .collect()
}

/// The requester a unit sees in DMA transactions: PCI requester id (segment, bus,
/// devfn) on VT-d and AMD-Vi, StreamID on SMMUv3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// A domain allocated by a unit; meaningful only to that unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainHandle(pub u32);

/// An inclusive IOVA range, so that a range ending at `u64::MAX` is expressible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IovaRange {
    /// The first IOVA.
    pub start: u64,
    /// The last IOVA (inclusive).
    pub last: u64,
}

impl IovaRange {
    /// The range `[start, start + len)`, or `None` when empty or wrapping.
    pub fn from_len(start: u64, len: u64) -> Option<Self> {
        let last = start.checked_add(len.checked_sub(1)?)?;
        Some(Self { start, last })
    }

    /// Every IOVA.
    pub const FULL: Self = Self {
        start: 0,
        last: u64::MAX,
    };

    /// Some IOVA lies in both.
    pub fn intersects(&self, other: &Self) -> bool {
        self.start <= other.last && other.start <= self.last
    }

    /// Every IOVA of `other` lies in this range.
    pub fn contains(&self, other: &Self) -> bool {
        self.start <= other.start && other.last <= self.last
    }
}

/// Which hardware architecture a unit implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// Intel VT-d (a DRHD).
    IntelVtd,
    /// ARM SMMUv3.
    ArmSmmuV3,
    /// AMD-Vi (an IVHD).
    AmdVi,
    /// A unit implemented in software (test doubles).
    Software,
}

/// Why a range of IOVA cannot hold user mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservedKind {
    /// Interrupt window: x86 0xFEE0_0000..=0xFEEF_FFFF, ARM MSI doorbell (ITS
    /// GITS_TRANSLATER page).
    Msi,
    /// Firmware-mandated identity mapping the device keeps using (VT-d RMRR,
    /// AMD-Vi IVMD).
    Direct,
    /// Simply unusable (hardware hole).
    Reserved,
}

/// An IOVA range no user mapping may use, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedRegion {
    /// The IOVAs.
    pub range: IovaRange,
    /// Why they are reserved.
    pub kind: ReservedKind,
}

/// The vendor format of a task-owned first-stage table that a nested domain uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedFormat {
    /// VT-d first-stage table (x86-64 format) behind a scalable-mode PASID entry.
    VtdS1,
    /// SMMUv3 stage-1 context descriptor table named by a guest STE.
    ArmSmmuV3,
    /// AMD-Vi v2 (guest) table named by a guest DTE.
    AmdViV2,
}

/// What a unit offers for nesting; `None` in [`UnitInfo::nesting`] when it cannot nest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestingInfo {
    /// The format of the stage-1 tables a task owns.
    pub format: NestedFormat,
}

/// What a unit reports at discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// A short name for reports ("vtd", "smmuv3", ...).
    pub name: &'static str,
    /// Which architecture.
    pub kind: UnitKind,
    /// Input addresses the unit translates; everything outside is reserved.
    pub aperture: IovaRange,
    /// Supported leaf sizes, bit `n` = `1 << n` bytes (never 0).
    pub page_sizes: u64,
    /// What it offers for nesting, if it nests.
    pub nesting: Option<NestingInfo>,
}

impl UnitInfo {
    /// The smallest leaf the unit maps: the IOVA alignment it imposes.
    pub fn min_page_size(&self) -> u64 {
        1u64 << self.page_sizes.trailing_zeros()
    }
}

/// Task-owned first-stage configuration of a nested domain, decoded from the user's
/// vendor data; the driver validates the fields against its hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedData {
    /// VT-d scalable-mode first stage: root table address, address width, flags
    /// (VT-d 3.4 §9.6 PASID entry, first-stage fields).
    VtdS1 {
        /// Linux's `IOMMU_VTD_S1_*` flags (SRE, EAFE, WPE).
        flags: u64,
        /// The first-stage table's root (a guest physical address: an IOVA
        /// of the parent).
        pgtbl_addr: u64,
        /// 48 or 57 (4- or 5-level tables).
        addr_width: u32,
    },
    /// SMMUv3 guest STE words 0-1 (SMMUv3 §5.2 STE: Config, S1ContextPtr, S1CDMax).
    ArmSmmuV3 {
        /// The two words, as the guest wrote them.
        ste: [u64; 2],
    },
    /// AMD-Vi guest DTE (AMD IOMMU §2.2.2.1 DTE: GV, GLX, GCR3 root pointer).
    AmdViV2 {
        /// The four words, as the guest wrote them.
        dte: [u64; 4],
    },
}

impl NestedData {
    /// The format this data configures.
    pub fn format(&self) -> NestedFormat {
        match self {
            Self::VtdS1 { .. } => NestedFormat::VtdS1,
            Self::ArmSmmuV3 { .. } => NestedFormat::ArmSmmuV3,
            Self::AmdViV2 { .. } => NestedFormat::AmdViV2,
        }
    }
}

/// One user-requested invalidation of a nested (task-owned) table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedInvalidation {
    /// VT-d first-stage IOTLB invalidation of `npages` 4 KiB pages from `addr`
    /// (`npages == u64::MAX` means all); flags bit 0 = leaf only.
    VtdS1 {
        /// The first IOVA (4 KiB aligned).
        addr: u64,
        /// How many pages.
        npages: u64,
        /// Bit 0: only leaf entries changed.
        flags: u32,
    },
    /// One SMMUv3 command (SMMUv3 §4.4 TLBI/CFGI commands), as the guest wrote it.
    ArmSmmuV3 {
        /// The command's two doublewords.
        cmd: [u64; 2],
    },
    /// One AMD-Vi INVALIDATE_IOMMU_PAGES command (AMD IOMMU §2.4.3).
    AmdViV2 {
        /// The command's two quadwords.
        cmd: [u64; 2],
    },
}

/// What kind of domain to allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// A kernel-owned page table the caller fills with `map`/`unmap`.
    Paging,
    /// A paging domain that nested domains may use as their second stage.
    NestParent,
    /// A task-owned first stage over `parent` (a `NestParent` domain of this unit).
    Nested {
        /// The `NestParent` domain that is its second stage.
        parent: DomainHandle,
        /// The task's stage-1 configuration.
        data: NestedData,
    },
    /// Translates nothing: every DMA faults.
    Blocked,
    /// IOVA = physical address (kernel use only, never handed to tasks).
    Identity,
}

/// Permission of a mapping; at least one of `read`/`write`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prot {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

/// The access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A DMA read.
    Read,
    /// A DMA write.
    Write,
    /// An instruction fetch (a device that executes from memory).
    Execute,
}

/// Why a translation failed, in the vendors' common terms; the raw code is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// No valid leaf for the IOVA (VT-d F_PTE not present, SMMUv3 F_TRANSLATION,
    /// AMD-Vi IO_PAGE_FAULT with PR=0).
    NotPresent,
    /// The leaf forbids the access (VT-d write/read fault, SMMUv3 F_PERMISSION).
    Permission,
    /// The IOVA is outside the domain's address size (SMMUv3 F_ADDR_SIZE, VT-d AW).
    AddressSize,
    /// The device is blocked or its context/STE/DTE is invalid.
    Blocked,
    /// Anything else, with the vendor's raw reason code.
    Other(u32),
}

/// One translation fault drained from a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// The unit that reported it.
    pub unit: UnitId,
    /// The device whose request faulted (its requester id or StreamID).
    pub requester: DeviceId,
    /// The address the device used.
    pub iova: u64,
    /// What it tried.
    pub access: Access,
    /// Why it failed.
    pub reason: FaultReason,
    /// The unit's own code for it, whatever `reason` says: the VT-d fault
    /// reason (§7.1.3), the SMMUv3 event type (§7.3), the AMD-Vi event code
    /// (§2.5); 0 from a software unit. What a report names by the spec.
    pub vendor_code: u32,
    /// The record in the hardware's own format, when a guest driver of a
    /// vIOMMU would see it (a fault of a task-owned stage 1): what a vEVENTQ
    /// delivers. `None` for faults of the kernel's own tables.
    pub guest_event: Option<GuestEvent>,
}

/// A fault record as a vIOMMU's guest driver reads it from its own event
/// queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// SMMUv3 §7.3 event record, four doublewords.
    ArmSmmuV3 {
        /// The record's four doublewords.
        evt: [u64; 4],
    },
}

impl GuestEvent {
    /// The record with the device named by `virtual_id` (the id its vDEVICE
    /// binds) instead of its physical one. SMMUv3 §7.3: `StreamID[63:32]` of
    /// doubleword 0 (Linux `arm_vmaster_report_event`).
    pub fn for_virtual_id(self, virtual_id: u64) -> Self {
        const STREAM_ID: u64 = 0xFFFF_FFFF << 32;
        match self {
            GuestEvent::ArmSmmuV3 { mut evt } => {
                evt[0] = (evt[0] & !STREAM_ID) | ((virtual_id << 32) & STREAM_ID);
                GuestEvent::ArmSmmuV3 { evt }
            }
        }
    }
}

/// Raw identification registers, as the hardware reports them, for `get_hw_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwInfo {
    /// VT-d 3.4 §11.4.2 CAP_REG and §11.4.3 ECAP_REG.
    IntelVtd {
        /// CAP_REG.
        cap: u64,
        /// ECAP_REG.
        ecap: u64,
    },
    /// SMMUv3 §6.3.1-6.3.6 SMMU_IDR0-5, §6.3.7 SMMU_IIDR, §6.3.8 SMMU_AIDR.
    ArmSmmuV3 {
        /// SMMU_IDR0 to SMMU_IDR5.
        idr: [u32; 6],
        /// SMMU_IIDR.
        iidr: u32,
        /// SMMU_AIDR.
        aidr: u32,
    },
    /// AMD IOMMU §3.4.12 Extended Feature Register and EFR2.
    AmdVi {
        /// The Extended Feature Register.
        efr: u64,
        /// Extended Feature Register 2.
        efr2: u64,
    },
    /// Nothing to report (software units).
    None,
}

/// A route of [`IommuUnit::route_msi`], for [`IommuUnit::unroute_msi`]: what
/// it means is the unit's (VT-d: an IRTE index; AMD-Vi: a DeviceID and an
/// index of its interrupt table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRoute(pub u64);

/// A message-signalled interrupt as a device writes it: `data` to `address`
/// (PCI Local Bus 3.0 §6.8 MSI capability).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Where the device writes.
    pub address: u64,
    /// What it writes.
    pub data: u32,
}

impl MsiMessage {
    /// x86 compatibility format (Intel SDM Vol. 3A §11.11.1-2): the vector, in
    /// data bits 7:0.
    pub fn x86_vector(&self) -> u8 {
        self.data as u8
    }

    /// x86 compatibility format: the destination APIC ID, in address bits 19:12.
    pub fn x86_destination(&self) -> u8 {
        (self.address >> 12) as u8
    }
}

/// Why a driver refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// Out of memory for tables, domain ids or queue slots.
    NoMemory,
    /// The unit cannot do this (domain kind, nesting format, page size).
    Unsupported,
    /// The request is malformed for this unit (bad vendor data, unaligned range,
    /// unknown device, domain of another unit).
    Invalid,
    /// The domain is still in use (attached devices or nested children).
    Busy,
    /// The hardware did not complete in time (invalidation or command timeout).
    Timeout,
    /// A user command the unit will not carry out for this caller: a virtual
    /// id it never bound (no vDEVICE of that id in its vIOMMU), or an opcode
    /// a vIOMMU does not take.
    Refused,
}

/// One IOMMU instance. The core calls it with `&mut self` under its own lock,
/// and (where [`IommuUnit::shares_mapping`]) maps, unmaps and flushes through
/// `&self` from several CPUs at once outside it.
pub trait IommuUnit {
    /// What the unit is and what it translates (asked live: the page sizes
    /// may change, e.g. with the SMMUv3 granule).
    fn info(&self) -> UnitInfo;

    /// Reserved regions that apply to `device` behind this unit (unit-wide ones
    /// such as the interrupt window included).
    fn reserved_regions(&self, device: DeviceId) -> Vec<ReservedRegion>;

    /// The raw identification registers, for `get_hw_info`.
    fn hw_info(&self) -> HwInfo;

    /// A new domain of `kind` with nothing attached; `Unsupported` for a
    /// kind the unit cannot make, `NoMemory` when out of tables or ids.
    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError>;

    /// Frees a domain no device is attached to and no nested domain uses. The
    /// driver invalidates every cached translation tagged with the domain (its
    /// tables may still map pages the caller keeps pinned) before reusing its tag.
    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError>;

    /// Maps `[iova, iova + len)` to the physically contiguous `[phys, phys + len)`.
    /// All or nothing: on error nothing of this call stays mapped. `iova`, `phys`
    /// and `len` are multiples of the smallest page size. The returned gather is
    /// what must be flushed before the mapping is reliably seen: empty unless the
    /// hardware may cache non-present entries (VT-d caching mode).
    ///
    /// The default is [`Self::map_shared`] (through `&mut self` no other call
    /// runs, so its contract holds): units that share their mapping calls
    /// write them once.
    fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        // SAFETY: `&mut self`: no other call runs on the unit.
        unsafe { self.map_shared(domain, iova, phys, len, prot) }
    }

    /// Unmaps `[iova, iova + len)`, which must consist of whole ranges earlier
    /// mapped; returns what changed (for one `flush`). An error (a range that
    /// would cut a larger page, a bad domain) means nothing was unmapped: what
    /// was mapped there still is, and the caller must not release it.
    ///
    /// The default is [`Self::unmap_shared`], as for [`Self::map`].
    fn unmap(&mut self, domain: DomainHandle, iova: u64, len: u64) -> Result<Gather, IommuError> {
        // SAFETY: `&mut self`: no other call runs on the unit.
        unsafe { self.unmap_shared(domain, iova, len) }
    }

    /// Invalidates the IOTLB for `gather` in `domain` and waits for completion.
    /// Table pages that earlier unmaps unlinked may be released from here on.
    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError>;

    /// Whether [`Self::map_shared`], [`Self::unmap_shared`] and
    /// [`Self::flush_shared`] work on this unit: several CPUs may then map,
    /// unmap and flush at once through `&self`. A unit without them (the
    /// default) is only used through `&mut self`.
    fn shares_mapping(&self) -> bool {
        false
    }

    /// [`Self::map`] through a shared reference, beside other CPUs' shared
    /// calls (never beside a `&mut self` one: the borrow says so).
    ///
    /// # Safety
    ///
    /// While it runs, no other shared call on `domain` may touch an IOVA of
    /// `[iova, iova + len)`: concurrent ranges of one domain are disjoint
    /// (iommufd's areas keep them so, as Linux's `iopt` does for
    /// `iommu_map`). The page tables underneath rely on it
    /// (`io_page_table::PageTable::map_shared`).
    unsafe fn map_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        let _ = (domain, iova, phys, len, prot);
        Err(IommuError::Unsupported)
    }

    /// [`Self::unmap`] through a shared reference. The table pages it
    /// unlinks are freed by the shared or exclusive flush whose gather
    /// covers the one returned here, after its invalidation completed.
    ///
    /// # Safety
    ///
    /// As [`Self::map_shared`]: no concurrent shared call on `domain`
    /// touches `[iova, iova + len)`.
    unsafe fn unmap_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        let _ = (domain, iova, len);
        Err(IommuError::Unsupported)
    }

    /// [`Self::flush`] through a shared reference: invalidates `gather` in
    /// `domain` and waits for that invalidation alone (other CPUs' commands
    /// on the same queue complete on their own), then frees the table pages
    /// that unmaps inside `gather` unlinked before it.
    fn flush_shared(&self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        let _ = (domain, gather);
        Err(IommuError::Unsupported)
    }

    /// Puts `device` into `domain`, replacing its current domain without passing
    /// through bypass. On error the device stays where it was.
    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError>;

    /// Puts `device` into the blocking state (never bypass); cannot fail.
    fn detach(&mut self, device: DeviceId);

    /// Moves pending fault records into `out`; returns how many were added.
    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize;

    /// Carries out user-requested invalidations of nested `domain`'s task-owned
    /// tables in order, stopping at the first error; returns how many completed.
    fn invalidate_nested(
        &mut self,
        domain: DomainHandle,
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>);

    /// Whether the unit tracks the pages its paging domains' devices write,
    /// in hardware (Linux `IOMMU_CAP_DIRTY_TRACKING`): VT-d ECAP.SSADS, AMD-Vi
    /// EFR HDSup, SMMUv3 IDR0.HTTU = 0b10, with the driver's support.
    fn dirty_tracking(&self) -> bool {
        false
    }

    /// Starts or stops hardware dirty tracking of paging `domain` (Linux
    /// `iommu_dirty_ops::set_dirty_tracking`).
    fn set_dirty_tracking(&mut self, domain: DomainHandle, enable: bool) -> Result<(), IommuError> {
        let _ = (domain, enable);
        Err(IommuError::Unsupported)
    }

    /// Calls `dirty(leaf_iova, leaf_size)` for each leaf of `domain` in
    /// `[iova, iova + len)` written through since its dirty state was last
    /// cleared, and unless `keep` clears that state (Linux
    /// `read_and_clear_dirty`). The returned gather must be flushed before a
    /// later read can trust that every write since was recorded: the IOTLB
    /// may remember a leaf as dirty already.
    fn read_dirty(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, IommuError> {
        let _ = (domain, iova, len, keep, dirty);
        Err(IommuError::Unsupported)
    }

    /// Carries out a vIOMMU's invalidation commands in order, stopping at the
    /// first error; returns how many completed. `parent` is the vIOMMU's
    /// NEST_PARENT domain (its stage 2: what confines the commands), and
    /// `vdevices` maps each virtual id the task bound to the device it names
    /// (SMMUv3: virtual StreamID → StreamID); a command naming any other
    /// virtual id is refused with [`IommuError::Refused`] (Linux
    /// `arm_vsmmu_cache_invalidate`). Units without a vIOMMU refuse all.
    fn invalidate_viommu(
        &mut self,
        parent: DomainHandle,
        vdevices: &[(u64, DeviceId)],
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        let _ = (parent, vdevices, requests);
        (0, Err(IommuError::Unsupported))
    }

    /// [`Self::route_msi`] for a function whose MSIs may carry any requester
    /// id on buses `first..=last` (behind a PCIe-to-PCI bridge, which may
    /// forward its own id or the function's): the route accepts MSIs from
    /// those buses. Units that do not check MSIs by requester id route as
    /// `route_msi` does (the default).
    fn route_msi_from_buses(
        &mut self,
        device: DeviceId,
        buses: (u8, u8),
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        let _ = buses;
        self.route_msi(device, message)
    }

    /// Interrupt remapping: makes an MSI that `device` sends deliver the
    /// interrupt that `message` (what the kernel would program without
    /// remapping) names, and returns the route and the message to program
    /// instead. A device may have several routes: functions that share a
    /// requester id (behind a PCIe-to-PCI bridge) each get their own. A unit
    /// that does not remap interrupts returns `message` unchanged (SMMUv3: an
    /// MSI is a DMA write to the doorbell page, which the driver maps in
    /// every domain).
    fn route_msi(
        &mut self,
        device: DeviceId,
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        let _ = device;
        Ok((MsiRoute(0), message))
    }

    /// Ends a route [`Self::route_msi`] made: where the unit remaps
    /// interrupts, the message is blocked again and its entry freed.
    fn unroute_msi(&mut self, route: MsiRoute) {
        let _ = route;
    }

    /// Whether the unit's interrupt remapping isolates the MSIs of the
    /// devices it routes: such a device raises only the interrupt its route
    /// names, nothing of its own choosing (Linux `IRQ_DOMAIN_FLAG_ISOLATED_MSI`,
    /// which VFIO requires unless `allow_unsafe_interrupts`). A unit that
    /// does not remap interrupts says no; the platform's interrupt controller
    /// may still isolate them (a GICv3 ITS).
    fn isolates_msi(&self) -> bool {
        false
    }
}

/// A boxed unit is a unit, so that the kernel can hold units of different
/// drivers behind `Box<dyn IommuUnit + Send>`.
impl<T: IommuUnit + ?Sized> IommuUnit for alloc::boxed::Box<T> {
    fn info(&self) -> UnitInfo {
        (**self).info()
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<ReservedRegion> {
        (**self).reserved_regions(device)
    }

    fn hw_info(&self) -> HwInfo {
        (**self).hw_info()
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        (**self).alloc_domain(kind)
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        (**self).free_domain(domain)
    }

    fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        (**self).map(domain, iova, phys, len, prot)
    }

    fn unmap(&mut self, domain: DomainHandle, iova: u64, len: u64) -> Result<Gather, IommuError> {
        (**self).unmap(domain, iova, len)
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        (**self).flush(domain, gather)
    }

    fn shares_mapping(&self) -> bool {
        (**self).shares_mapping()
    }

    unsafe fn map_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        // SAFETY: the caller keeps the contract; forwarded.
        unsafe { (**self).map_shared(domain, iova, phys, len, prot) }
    }

    unsafe fn unmap_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        // SAFETY: the caller keeps the contract; forwarded.
        unsafe { (**self).unmap_shared(domain, iova, len) }
    }

    fn flush_shared(&self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        (**self).flush_shared(domain, gather)
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        (**self).attach(device, domain)
    }

    fn detach(&mut self, device: DeviceId) {
        (**self).detach(device)
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        (**self).drain_faults(out)
    }

    fn invalidate_nested(
        &mut self,
        domain: DomainHandle,
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (**self).invalidate_nested(domain, requests)
    }

    fn invalidate_viommu(
        &mut self,
        parent: DomainHandle,
        vdevices: &[(u64, DeviceId)],
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (**self).invalidate_viommu(parent, vdevices, requests)
    }

    fn dirty_tracking(&self) -> bool {
        (**self).dirty_tracking()
    }

    fn set_dirty_tracking(&mut self, domain: DomainHandle, enable: bool) -> Result<(), IommuError> {
        (**self).set_dirty_tracking(domain, enable)
    }

    fn read_dirty(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, IommuError> {
        (**self).read_dirty(domain, iova, len, keep, dirty)
    }

    fn route_msi(
        &mut self,
        device: DeviceId,
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        (**self).route_msi(device, message)
    }

    fn route_msi_from_buses(
        &mut self,
        device: DeviceId,
        buses: (u8, u8),
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        (**self).route_msi_from_buses(device, buses, message)
    }

    fn unroute_msi(&mut self, route: MsiRoute) {
        (**self).unroute_msi(route)
    }

    fn isolates_msi(&self) -> bool {
        (**self).isolates_msi()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_named_by_their_index_and_brought_up_all_or_nothing() {
        let up = bring_up_each(
            ["a", "b"],
            || "too many",
            |id, name| Ok::<_, &str>((id, name)),
        );
        assert_eq!(up, Ok(alloc::vec![(UnitId(0), "a"), (UnitId(1), "b")]));
        let failed = bring_up_each(
            ["a", "bad", "c"],
            || "too many",
            |id, name| {
                if name == "bad" {
                    Err("refused")
                } else {
                    Ok(id)
                }
            },
        );
        assert_eq!(failed, Err((1, "refused")));
    }

    #[test]
    fn iova_range_from_len_rejects_empty_and_wrapping() {
        assert_eq!(IovaRange::from_len(0, 0), None);
        assert_eq!(IovaRange::from_len(u64::MAX, 2), None);
        assert_eq!(
            IovaRange::from_len(u64::MAX, 1),
            Some(IovaRange {
                start: u64::MAX,
                last: u64::MAX
            })
        );
        assert_eq!(
            IovaRange::from_len(0x1000, 0x1000).map(|r| r.last),
            Some(0x1fff)
        );
    }

    #[test]
    fn iova_range_intersects_and_contains() {
        let a = IovaRange {
            start: 10,
            last: 20,
        };
        let b = IovaRange {
            start: 20,
            last: 30,
        };
        let c = IovaRange {
            start: 21,
            last: 30,
        };
        assert!(a.intersects(&b));
        assert!(!a.intersects(&c));
        assert!(IovaRange::FULL.contains(&a));
        assert!(!a.contains(&b));
    }

    #[test]
    fn min_page_size_is_lowest_bit() {
        let info = UnitInfo {
            name: "x",
            kind: UnitKind::Software,
            aperture: IovaRange::FULL,
            page_sizes: (1 << 12) | (1 << 21),
            nesting: None,
        };
        assert_eq!(info.min_page_size(), 4096);
    }
}
