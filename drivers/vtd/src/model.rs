//! A register-level model of a VT-d unit for the host tests (`tests.rs`):
//! it records every GCMD write and every descriptor the driver queues, and a
//! shadow of what a worst-case implementation may cache (context entries,
//! RID_PASID entries, IOTLB entries, not-present entries under caching
//! mode), so a missing invalidation shows as a stale entry.

extern crate std;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use iommu_kit::fakes::{SyncCell, SyncRefCell};

use iommu::{Gather, IommuError, Prot, UnitId};
use iommu_kit::fakes::{HostDma, SteppingClock, maintenance};
use os_services::mmio::{Reg32, Reg64};

use crate::command::{Descriptor, DescriptorType};
use crate::device_table::{ContextEntry, PasidEntry};
use crate::discovery::UnitDescription;
use crate::hardware::{Environment, Options, Registers};
use crate::paging::{DomainTable, TableFormat};
use crate::regs::{self, Cap, Ecap, Global};
use crate::unit::Vtd;

pub(crate) const CAP_DEFAULT: u64 = 0x00d2_008c_222f_0606;
pub(crate) const CAP_CACHING_MODE: u64 = 0x00d2_008c_222f_0686;
pub(crate) const CAP_RWBF: u64 = CAP_DEFAULT | (1 << 4);
pub(crate) const ECAP_LEGACY: u64 = 0x0000_0000_00f0_0f4a;
pub(crate) const ECAP_NO_QI: u64 = ECAP_LEGACY & !(1 << 1) & !ECAP_IR;
/// ECAP.IR (bit 3): interrupt remapping.
pub(crate) const ECAP_IR: u64 = 1 << 3;
pub(crate) const ECAP_SCALABLE_SL: u64 = 0x0000_4800_80f0_0f4a;
pub(crate) const ECAP_SCALABLE_FL: u64 = 0x0000_8800_00f0_0f4a;

pub(crate) const EDU_A: u16 = 0x20;
pub(crate) const EDU_B: u16 = 0x28;

pub(crate) fn no_flush(_: *const u8, _: usize) {}

/// Root address the fake tables report (never walked: the model does no DMA).
pub(crate) const FAKE_ROOT: u64 = 0x0123_4000;

std::thread_local! {
    /// Live model tables by root: page → phys. Shared with the shadow cache model.
    pub(crate) static TABLES: RefCell<std::collections::BTreeMap<u64, std::collections::BTreeMap<u64, u64>>> =
        const { RefCell::new(std::collections::BTreeMap::new()) };
    /// The root the next model table gets.
    pub(crate) static NEXT_ROOT: Cell<u64> = const { Cell::new(FAKE_ROOT) };
}

/// A reference model of a page table: page → phys in [`TABLES`]; gathers as
/// a real table reports them. Stands in for io-page-table's formats.
pub(crate) struct ModelTable {
    pub(crate) root: u64,
}

impl Drop for ModelTable {
    fn drop(&mut self) {
        TABLES.with(|tables| tables.borrow_mut().remove(&self.root));
    }
}

pub(crate) fn with_pages<T>(
    root: u64,
    f: impl FnOnce(&mut std::collections::BTreeMap<u64, u64>) -> T,
) -> T {
    TABLES.with(|tables| f(tables.borrow_mut().entry(root).or_default()))
}

std::thread_local! {
    /// Every map call any model table saw: (iova, phys, len).
    pub(crate) static MAPPED: RefCell<Vec<(u64, u64, u64)>> = const { RefCell::new(Vec::new()) };
}

impl DomainTable for ModelTable {
    fn root(&self) -> u64 {
        self.root
    }

    unsafe fn map(
        &self,
        iova: u64,
        phys: u64,
        len: u64,
        _prot: Prot,
    ) -> Result<Gather, IommuError> {
        MAPPED.with(|mapped| mapped.borrow_mut().push((iova, phys, len)));
        let mut gather = Gather::default();
        for offset in (0..len).step_by(4096) {
            if with_pages(self.root, |pages| {
                pages.insert(iova + offset, phys + offset)
            })
            .is_some()
            {
                return Err(IommuError::Invalid);
            }
            gather.add_leaf(iova + offset, 4096);
        }
        Ok(gather)
    }

    unsafe fn unmap(&self, iova: u64, len: u64) -> Result<Gather, IommuError> {
        let mut gather = Gather::default();
        for offset in (0..len).step_by(4096) {
            if with_pages(self.root, |pages| pages.remove(&(iova + offset))).is_some() {
                gather.add_leaf(iova + offset, 4096);
            }
        }
        Ok(gather)
    }
}

pub(crate) fn model_table(format: TableFormat) -> Option<alloc::boxed::Box<dyn DomainTable>> {
    // Only 4-level second stage and first stage exist on the modelled unit.
    matches!(
        format,
        TableFormat::SecondStage { levels: 4 } | TableFormat::FirstStage
    )
    .then(|| {
        let root = NEXT_ROOT.with(|next| next.replace(next.get() + 0x1000));
        with_pages(root, |_| ());
        alloc::boxed::Box::new(ModelTable { root }) as alloc::boxed::Box<dyn DomainTable>
    })
}

/// A register-level model of a VT-d unit, close to QEMU 10.0.2's behaviour.
pub(crate) struct Model {
    pub(crate) cap: u64,
    pub(crate) ecap: u64,
    pub(crate) gsts: SyncCell<u32>,
    pub(crate) gcmd_writes: SyncRefCell<Vec<u32>>,
    pub(crate) iqa: SyncCell<u64>,
    pub(crate) iqh: SyncCell<u64>,
    pub(crate) descriptors: SyncRefCell<Vec<Descriptor>>,
    pub(crate) register_invalidations: SyncRefCell<Vec<(usize, u64)>>,
    /// When set, wait descriptors never write their status (a hung unit).
    pub(crate) stalled: SyncCell<bool>,
    pub(crate) fault: SyncCell<(u64, u64)>,
    pub(crate) other: SyncRefCell<std::collections::BTreeMap<usize, u64>>,
    /// What a worst-case implementation may hold in its caches.
    pub(crate) shadow: SyncRefCell<Shadow>,
    /// FSTS PFO / IQE.
    pub(crate) fsts_sticky: SyncCell<u32>,
    /// The unit does not snoop (ECAP.C = 0, and SMPWC = 0 in scalable mode):
    /// it reads root, context and PASID entries and page tables from memory,
    /// which holds only what the driver wrote back
    /// (`maintenance::read_as_device`), not from the CPU's caches.
    pub(crate) reads_memory: SyncCell<bool>,
    /// Held while the queue is processed: threads whose doorbells come one
    /// after the other (as CPUs publish in claim order) are served in turn.
    pub(crate) processing: std::sync::Mutex<()>,
}

/// What a unit that reads memory finds in a line the driver never wrote
/// back: whatever the memory held before, here every bit set (present, with
/// an address nobody gave it).
pub(crate) const NEVER_WRITTEN_BACK: u64 = u64::MAX;

impl Model {
    pub(crate) fn new(cap: u64, ecap: u64) -> Self {
        Self {
            cap,
            ecap,
            gsts: SyncCell::new(0),
            gcmd_writes: SyncRefCell::new(Vec::new()),
            iqa: SyncCell::new(0),
            iqh: SyncCell::new(0),
            descriptors: SyncRefCell::new(Vec::new()),
            register_invalidations: SyncRefCell::new(Vec::new()),
            stalled: SyncCell::new(false),
            fault: SyncCell::new((0, 0)),
            other: SyncRefCell::new(Default::default()),
            fsts_sticky: SyncCell::new(0),
            reads_memory: SyncCell::new(false),
            processing: std::sync::Mutex::new(()),
            shadow: SyncRefCell::new(Shadow {
                scalable: Ecap(ecap).scalable_mode(),
                ..Shadow::default()
            }),
        }
    }

    pub(crate) fn wide(&self) -> bool {
        self.iqa.get() & regs::IQA_WIDE != 0
    }

    pub(crate) fn process_queue(&self, tail: u64) {
        let _processing = self
            .processing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let base = self.iqa.get() & !0xFFF;
        let slot = if self.wide() { 32 } else { 16 };
        let slots = 4096 / slot;
        let mut head = self.iqh.get() / slot;
        let tail = tail / slot;
        // Like QEMU: nothing is fetched while IQE is set.
        while head != tail && self.fsts_sticky.get() & 0x10 == 0 {
            let address = base + head * slot;
            let mut words = [0u64; 4];
            for (index, word) in words.iter_mut().enumerate().take(slot as usize / 8) {
                // SAFETY: the queue page is host memory the driver allocated (phys == virt).
                *word =
                    unsafe { core::ptr::read_volatile((address + index as u64 * 8) as *const u64) };
            }
            let descriptor = Descriptor(words);
            if descriptor.kind().is_none() {
                // Unknown type: IQE, and the head stays on the bad descriptor.
                self.fsts_sticky.set(self.fsts_sticky.get() | 0x10);
                break;
            }
            if descriptor.kind() == Some(DescriptorType::Wait) {
                assert_ne!(words[0] & 0x30, 0x30, "QEMU aborts on a wait with SW|IF");
                if words[0] & 0x30 == 0 {
                    // Like QEMU 10.0.2: a wait with neither SW nor IF is invalid.
                    self.fsts_sticky.set(self.fsts_sticky.get() | 0x10);
                    break;
                }
                if words[0] & 0x20 != 0 && !self.stalled.get() {
                    // SAFETY: the status word is host memory the driver allocated.
                    unsafe {
                        core::ptr::write_volatile(words[1] as *mut u32, (words[0] >> 32) as u32)
                    };
                }
            }
            self.shadow.borrow_mut().apply(&descriptor);
            self.descriptors.borrow_mut().push(descriptor);
            head = (head + 1) % slots;
        }
        self.iqh.set(head * slot);
    }

    pub(crate) fn queue_enabled(&self) -> bool {
        self.gsts.get() & Global::QUEUED_INVALIDATION.bits() != 0
    }

    pub(crate) fn take_descriptors(&self) -> Vec<Descriptor> {
        core::mem::take(&mut *self.descriptors.borrow_mut())
    }
}

impl Registers for &Model {
    fn read32(&self, reg: Reg32) -> u32 {
        match reg {
            regs::GSTS => self.gsts.get(),
            regs::FSTS => {
                let pending = if self.fault.get().1 & (1 << 63) != 0 {
                    0x2
                } else {
                    0
                };
                pending | self.fsts_sticky.get()
            }
            Reg32(offset) => *self.other.borrow().get(&offset).unwrap_or(&0) as u32,
        }
    }

    fn write32(&self, reg: Reg32, value: u32) {
        iommu_kit::fakes::trace::mmio(reg.0);
        match reg {
            regs::GCMD => {
                self.gcmd_writes.borrow_mut().push(value);
                let command = Global::from_bits_retain(value);
                let mut status = Global::from_bits_retain(value) & Global::PERSISTENT;
                if command.contains(Global::ROOT_TABLE_POINTER)
                    || Global::from_bits_retain(self.gsts.get())
                        .contains(Global::ROOT_TABLE_POINTER)
                {
                    // QEMU keeps RTPS set once a root pointer was set.
                    status |= Global::ROOT_TABLE_POINTER;
                }
                if command.contains(Global::IRT_POINTER)
                    || Global::from_bits_retain(self.gsts.get()).contains(Global::IRT_POINTER)
                {
                    status |= Global::IRT_POINTER;
                }
                // §11.4.10.1: IQH reads zero while queued invalidation is off.
                if !status.contains(Global::QUEUED_INVALIDATION) {
                    self.iqh.set(0);
                }
                self.gsts.set(status.bits());
            }
            regs::FSTS => {
                // PFO and IQE are write-1-to-clear.
                self.fsts_sticky
                    .set(self.fsts_sticky.get() & !(value & 0x71));
            }
            Reg32(0x22C) => {
                if value & (1 << 31) != 0 {
                    let (low, high) = self.fault.get();
                    self.fault.set((low, high & !(1 << 63)));
                }
            }
            Reg32(offset) => {
                self.other.borrow_mut().insert(offset, u64::from(value));
            }
        }
    }

    fn read64(&self, reg: Reg64) -> u64 {
        match reg {
            regs::CAP => self.cap,
            regs::ECAP => self.ecap,
            regs::IQH => self.iqh.get(),
            Reg64(0x220) => self.fault.get().0,
            Reg64(0x228) => self.fault.get().1,
            Reg64(offset) => *self.other.borrow().get(&offset).unwrap_or(&0),
        }
    }

    fn write64(&self, reg: Reg64, value: u64) {
        iommu_kit::fakes::trace::mmio(reg.0);
        match reg {
            regs::IQA => self.iqa.set(value),
            // Nothing is fetched while queued invalidation is off.
            regs::IQT if self.queue_enabled() => self.process_queue(value),
            regs::CCMD | Reg64(0xF8) => {
                self.register_invalidations
                    .borrow_mut()
                    .push((reg.0, value));
                // QEMU ignores register-based invalidation while QI is on, and
                // the busy bit then never clears.
                let stored = if self.queue_enabled() {
                    value
                } else {
                    value & !(1 << 63)
                };
                self.other.borrow_mut().insert(reg.0, stored);
            }
            Reg64(offset) => {
                self.other.borrow_mut().insert(offset, value);
            }
        }
    }
}

pub(crate) struct Rig {
    pub(crate) dma: HostDma,
    pub(crate) clock: SteppingClock,
    /// The zeroed page a dropped unit parks on (from its own allocator, so
    /// that `dma.live()` counts only the unit's structures).
    pub(crate) parking: iommu_kit::DmaBuffer,
    _parking_dma: &'static HostDma,
}

impl Rig {
    pub(crate) fn new() -> Self {
        NEXT_ROOT.with(|next| next.set(FAKE_ROOT));
        let parking_dma: &'static HostDma = std::boxed::Box::leak(std::boxed::Box::default());
        Self {
            parking: iommu_kit::DmaBuffer::alloc(parking_dma, 4096, 4096).unwrap(),
            _parking_dma: parking_dma,
            dma: HostDma::default(),
            // Every read advances time by 1 µs, so a 100 ms bound is 100 000 polls.
            clock: SteppingClock::new(1_000),
        }
    }

    pub(crate) fn env(&self) -> Environment<'_> {
        Environment {
            dma: &self.dma,
            clock: &self.clock,
            flush_cache: no_flush,
            new_table: Some(model_table),
            parking_page: Some(self.parking.phys()),
        }
    }

    pub(crate) fn unit<'a>(&'a self, model: &'a Model) -> Vtd<'a, &'a Model> {
        Vtd::new(
            UnitId(0),
            model,
            self.env(),
            description(),
            Options::default(),
        )
        .unwrap()
    }
}

pub(crate) fn description() -> UnitDescription {
    UnitDescription {
        segment: 0,
        register_base: 0xFED9_0000,
        register_size: 4096,
        include_all: false,
        devices: vec![EDU_A, EDU_B],
        bridges: vec![],
        bridge_buses: vec![],
        reserved: vec![],
        output_bits: 48,
    }
}

pub(crate) fn kinds(descriptors: &[Descriptor]) -> Vec<DescriptorType> {
    descriptors.iter().filter_map(Descriptor::kind).collect()
}

impl Model {
    /// The 8 bytes at `address` as the unit reads them: the CPU's view,
    /// or memory's when it does not snoop ([`Model::reads_memory`]).
    pub(crate) fn fetch(&self, address: u64) -> u64 {
        if self.reads_memory.get() {
            maintenance::read_as_device(address).unwrap_or(NEVER_WRITTEN_BACK)
        } else {
            // SAFETY: host memory the driver allocated (phys == virt), reached
            // only through entries the driver made present.
            unsafe { core::ptr::read_volatile(address as *const u64) }
        }
    }

    /// The root table entry word for `sid` (legacy: the low word; scalable:
    /// the lower or upper context-table pointer by devfn), and the slot of
    /// `sid` in the table it names.
    fn root_entry(&self, sid: u16) -> (u64, u64) {
        let root = *self.other.borrow().get(&0x20).unwrap() & !0xFFF;
        let [bus, devfn] = sid.to_be_bytes();
        let entry = root + u64::from(bus) * 16;
        if self.scalable() && devfn >= 128 {
            (self.fetch(entry + 8), u64::from(devfn - 128))
        } else {
            (self.fetch(entry), u64::from(devfn))
        }
    }

    /// Reads the (legacy) context entry of `sid` through RTADDR → root → context.
    pub(crate) fn context_entry(&self, sid: u16) -> ContextEntry {
        let (root_entry, slot) = self.root_entry(sid);
        if root_entry & 1 == 0 {
            return ContextEntry::default();
        }
        let context = (root_entry & !0xFFF) + slot * 16;
        ContextEntry {
            low: self.fetch(context),
            high: self.fetch(context + 8),
        }
    }

    /// Reads the RID_PASID entry of `sid` in scalable mode.
    pub(crate) fn rid_pasid_entry(&self, sid: u16) -> PasidEntry {
        let (root_entry, slot) = self.root_entry(sid);
        if root_entry & 1 == 0 {
            return PasidEntry::default();
        }
        let context_low = self.fetch((root_entry & !0xFFF) + slot * 32);
        if context_low & 1 == 0 {
            // Context not present: the device is blocked before any PASID lookup.
            return PasidEntry::default();
        }
        let directory = self.fetch(context_low & !0xFFF);
        if directory & 1 == 0 {
            return PasidEntry::default();
        }
        let pasid_table = directory & !0xFFF;
        PasidEntry {
            words: core::array::from_fn(|word| self.fetch(pasid_table + word as u64 * 8)),
        }
    }

    /// A device writes through `sid`'s translation at `iova` (scalable second
    /// stage, real tables): with SSADE in its PASID entry the walker sets the
    /// leaf's D bit (§9.8), unless its IOTLB entry knows the leaf dirty
    /// already. `false` when nothing translates `iova`.
    pub(crate) fn dma_write(&self, sid: u16, iova: u64) -> bool {
        const D: u64 = 1 << 9;
        let entry = self.rid_pasid_entry(sid);
        let Some(View {
            did,
            root: Some(root),
        }) = self.truth(sid)
        else {
            return false;
        };
        let Some(leaf) = self.leaf_table_of(root, iova) else {
            return false;
        };
        let slot = leaf + ((iova >> 12) & 0x1FF) * 8;
        if self.fetch(slot) & 3 == 0 {
            return false;
        }
        let page = iova & !0xFFF;
        if entry.second_stage_dirty() && self.shadow.borrow_mut().dirty_cached.insert((did, page)) {
            // SAFETY: a leaf entry of a table of a domain attached now
            // (host memory, phys == virt); the walker's update is atomic.
            let pte = unsafe { core::sync::atomic::AtomicU64::from_ptr(slot as *mut u64) };
            pte.fetch_or(D, core::sync::atomic::Ordering::AcqRel);
        }
        true
    }

    /// The leaf table that maps the 2 MiB region of `iova` in the 4-level
    /// tables at `root`, as the unit's walk finds it now (VT-d 3.4 §9.7 first
    /// stage: present is bit 0; §9.8 second stage: R or W); `None` where an
    /// entry on the way is not present or maps a large page.
    pub(crate) fn leaf_table_of(&self, root: u64, iova: u64) -> Option<u64> {
        const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
        const PAGE_SIZE_BIT: u64 = 1 << 7;
        let first_stage = Ecap(self.ecap).first_stage();
        let mut table = root;
        for shift in [39, 30, 21] {
            let entry = self.fetch(table + ((iova >> shift) & 0x1FF) * 8);
            let present = if first_stage {
                entry & 1 != 0
            } else {
                entry & 3 != 0
            };
            if !present || entry & PAGE_SIZE_BIT != 0 {
                return None;
            }
            table = entry & ADDRESS;
        }
        Some(table)
    }
}

// ---- shadow model of the hardware caches ----------------------------------
//
// A worst-case VT-d keeps whatever it once walked: context entries by
// requester, RID_PASID entries by (requester, DID), translations by (DID,
// page), and under caching mode not-present entries too. Only invalidation
// descriptors remove them, each exactly as far as its granularity reaches
// (a type-2 IOTLB invalidation does not touch first-stage entries, §6.5.2.3).
// After every driver operation each cached item must equal what the tables
// in memory say: a stale item is a missing invalidation QEMU would not show.

/// What a context (legacy) or RID_PASID entry (scalable) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) did: u16,
    /// Table root, or `None` for pass-through.
    pub(crate) root: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Shadow {
    pub(crate) scalable: bool,
    /// Legacy: requester → cached context (`None` = cached not-present).
    /// Scalable: requester → cached context present bit, as a view with DID 0.
    pub(crate) contexts: std::collections::BTreeMap<u16, Option<View>>,
    /// Scalable: (requester, DID) → cached RID_PASID entry.
    pub(crate) pasids: std::collections::BTreeMap<(u16, u16), View>,
    /// (DID, page) → (root, phys or cached not-present, first-stage tag).
    pub(crate) iotlb: std::collections::BTreeMap<(u16, u64), (u64, Option<u64>, bool)>,
    /// Paging-structure caches (§6.2.4.2, the PDE cache): (DID, 2 MiB
    /// region) → (root, the leaf table the walk found, or a cached
    /// not-present directory entry under caching mode). Only for domains with
    /// real (io-page-table) tables, which the model walks (§9.8, §9.9).
    pub(crate) walks: std::collections::BTreeMap<(u16, u64), (u64, Option<u64>)>,
    /// IOTLB entries that know their leaf dirty (DID, page): a write through
    /// one sets no D bit in memory (§9.8: D is set when the cached entry is
    /// clean) until an IOTLB invalidation drops it.
    pub(crate) dirty_cached: std::collections::BTreeSet<(u16, u64)>,
    /// The interrupt-entry cache (§6.5.2.7): IRTE index -> the entry as
    /// fetched (128 bits), until an IEC descriptor covers the index.
    pub(crate) irtes: std::collections::BTreeMap<u16, [u64; 2]>,
}

/// What an IOTLB (§6.5.2.3) or PASID-based IOTLB (§6.5.2.4) descriptor
/// drops from the caches.
struct IotlbScope {
    /// `None`: every domain (global).
    did: Option<u16>,
    /// `None`: every page of the domain; else [start, end).
    pages: Option<(u64, u64)>,
    /// IH: only leaf entries changed, the paging-structure caches may stay.
    leaf_only: bool,
    /// A (second-stage) IOTLB descriptor below global granularity leaves the
    /// first-stage entries, which only PASID-based ones reach.
    spares_first_stage: bool,
}

impl IotlbScope {
    fn of(descriptor: &Descriptor, granularity: u64, did: u16) -> Option<Self> {
        let high = descriptor.0[1];
        let pages = || {
            let mask = high & 0x3F;
            let start = high & !0xFFF;
            (start, start + (4096u64 << mask))
        };
        let pasid_based = descriptor.kind() == Some(DescriptorType::PasidIotlb);
        let (did, pages) = match (pasid_based, granularity) {
            (false, 1) => (None, None),
            (_, 2) => (Some(did), None),
            (_, 3) => (Some(did), Some(pages())),
            _ => return None,
        };
        Some(Self {
            spares_first_stage: !pasid_based && did.is_some(),
            did,
            pages,
            leaf_only: high & (1 << 6) != 0,
        })
    }

    fn covers_page(&self, did: u16, page: u64) -> bool {
        self.did.is_none_or(|scope| scope == did)
            && self
                .pages
                .is_none_or(|(start, end)| (start..end).contains(&page))
    }

    /// The paging-structure cache entry of a 2 MiB region: dropped unless IH
    /// says only leaves changed.
    fn covers_region(&self, did: u16, region: u64) -> bool {
        self.did.is_none_or(|scope| scope == did)
            && self.pages.is_none_or(|(start, end)| {
                !self.leaf_only && start < (region + 1) << 21 && region << 21 < end
            })
    }
}

impl Shadow {
    pub(crate) fn apply(&mut self, descriptor: &Descriptor) {
        let low = descriptor.0[0];
        let granularity = (low >> 4) & 3;
        let did = (low >> 16) as u16;
        match descriptor.kind() {
            Some(DescriptorType::ContextCache) => match granularity {
                1 => self.contexts.clear(),
                3 => {
                    let sid = (low >> 32) as u16;
                    let matches = match self.contexts.get(&sid) {
                        // Scalable-mode context entries carry no DID (it is
                        // in the PASID entry): the requester alone selects.
                        Some(Some(view)) if self.scalable => true,
                        Some(Some(view)) => view.did == did,
                        // Not-present entries are tagged with DID 0 (§6.1).
                        Some(None) => did == 0,
                        None => false,
                    };
                    if matches {
                        self.contexts.remove(&sid);
                    }
                }
                _ => panic!("unexpected context-cache granularity {granularity}"),
            },
            Some(DescriptorType::Iotlb | DescriptorType::PasidIotlb) => {
                let Some(scope) = IotlbScope::of(descriptor, granularity, did) else {
                    return;
                };
                self.dirty_cached
                    .retain(|&(entry_did, page)| !scope.covers_page(entry_did, page));
                self.walks
                    .retain(|&(entry_did, region), _| !scope.covers_region(entry_did, region));
                self.iotlb
                    .retain(|&(entry_did, page), &mut (_, _, first_stage)| {
                        !(scope.covers_page(entry_did, page)
                            && !(scope.spares_first_stage && first_stage))
                    });
            }
            Some(DescriptorType::InterruptEntryCache) => {
                // §6.5.2.7: G (bit 4) index-selective over 2^IM entries
                // from IIDX; else global.
                if low & (1 << 4) == 0 {
                    self.irtes.clear();
                } else {
                    let mask = (low >> 27) & 0x1F;
                    let first = ((low >> 32) as u16 as u64) & !((1 << mask) - 1);
                    let span = first..first + (1 << mask);
                    self.irtes
                        .retain(|&index, _| !span.contains(&u64::from(index)));
                }
            }
            Some(DescriptorType::PasidCache) => {
                self.pasids.retain(|&(_, entry_did), _| entry_did != did);
            }
            _ => {}
        }
    }
}

pub(crate) const SHADOW_PAGES: [u64; 4] = [0x10_0000, 0x10_1000, 0x10_2000, 0x20_0000];

impl Model {
    pub(crate) fn scalable(&self) -> bool {
        Ecap(self.ecap).scalable_mode()
    }

    pub(crate) fn caching(&self) -> bool {
        Cap(self.cap).caching_mode()
    }

    /// The context-present bit of `sid` in memory (scalable mode).
    pub(crate) fn scalable_context_present(&self, sid: u16) -> bool {
        // A present context leads to a present RID_PASID entry in this driver
        // (written first); a cleared context hides it.
        self.rid_pasid_entry(sid) != PasidEntry::default()
    }

    /// What memory says about `sid` now.
    pub(crate) fn truth(&self, sid: u16) -> Option<View> {
        if self.scalable() {
            let entry = self.rid_pasid_entry(sid);
            if !entry.is_present() {
                return None;
            }
            let root = match (entry.words[0] >> 6) & 7 {
                1 => Some(entry.words[2] & !0xFFF),
                2 => Some(entry.words[0] & !0xFFF),
                _ => None,
            };
            Some(View {
                did: entry.did(),
                root,
            })
        } else {
            let entry = self.context_entry(sid);
            if !entry.is_present() {
                return None;
            }
            let pass_through = (entry.low >> 2) & 3 == 2;
            Some(View {
                did: entry.did(),
                root: (!pass_through).then_some(entry.low & !0xFFF),
            })
        }
    }

    /// The hardware walks everything reachable now and caches it: every
    /// page of [`SHADOW_PAGES`] through every device, and the first IRTEs.
    pub(crate) fn fill(&self, devices: &[u16]) {
        for index in 0..8 {
            self.interrupt(index);
        }
        for &sid in devices {
            for page in SHADOW_PAGES {
                self.translate(sid, page);
            }
        }
    }

    /// What the unit uses for requests of `sid`: the cached context (and,
    /// in scalable mode, RID_PASID) entry, else memory's, which it caches
    /// (a not-present one only under caching mode, §6.1). `None`: blocked.
    fn view_of(&self, sid: u16) -> Option<View> {
        let caching = self.caching();
        if self.scalable() {
            let cached = self.shadow.borrow().contexts.get(&sid).copied();
            let present = cached.map_or_else(
                || {
                    let present = self.scalable_context_present(sid);
                    if present || caching {
                        let view = present.then_some(View { did: 0, root: None });
                        self.shadow.borrow_mut().contexts.insert(sid, view);
                    }
                    present
                },
                |view| view.is_some(),
            );
            if !present {
                return None;
            }
            let cached = self
                .shadow
                .borrow()
                .pasids
                .iter()
                .find(|((requester, _), _)| *requester == sid)
                .map(|(_, view)| *view);
            cached.or_else(|| {
                let view = self.truth(sid)?;
                self.shadow
                    .borrow_mut()
                    .pasids
                    .insert((sid, view.did), view);
                Some(view)
            })
        } else {
            let cached = self.shadow.borrow().contexts.get(&sid).copied();
            cached.unwrap_or_else(|| {
                let truth = self.truth(sid);
                if truth.is_some() || caching {
                    self.shadow.borrow_mut().contexts.insert(sid, truth);
                }
                truth
            })
        }
    }

    /// The physical page `page` goes to in the 4-level tables at `root` as
    /// the unit's walk finds it now, large pages included (§9.7, §9.8).
    fn page_in_tables(&self, root: u64, page: u64) -> Option<u64> {
        const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
        const PAGE_SIZE_BIT: u64 = 1 << 7;
        let present_bits = if Ecap(self.ecap).first_stage() { 1 } else { 3 };
        let mut table = root;
        for shift in [39, 30, 21, 12] {
            let entry = self.fetch(table + ((page >> shift) & 0x1FF) * 8);
            if entry & present_bits == 0 {
                return None;
            }
            if shift == 12 || (shift < 39 && entry & PAGE_SIZE_BIT != 0) {
                let size = 1u64 << shift;
                return Some((entry & ADDRESS & !(size - 1)) | (page & (size - 1) & !0xFFF));
            }
            table = entry & ADDRESS;
        }
        None
    }

    /// The page `page` goes to in the domain at `root`: a model table's
    /// record, or the real tables' walk.
    fn page_in_memory(&self, root: u64, page: u64) -> Option<u64> {
        let model = TABLES.with(|tables| {
            tables
                .borrow()
                .get(&root)
                .map(|pages| pages.get(&page).copied())
        });
        model.unwrap_or_else(|| self.page_in_tables(root, page))
    }

    /// Where a request of `sid` to `iova` goes, answered as the unit
    /// answers it: context and PASID entries from their caches, the page
    /// from the IOTLB, else by a walk that starts at the leaf table the
    /// paging-structure cache names; each level's result is cached (a
    /// not-present one only under caching mode). `None`: blocked or not
    /// mapped; pass-through answers `iova`'s own page.
    pub(crate) fn translate(&self, sid: u16, iova: u64) -> Option<u64> {
        let caching = self.caching();
        let view = self.view_of(sid)?;
        let page = iova & !0xFFF;
        let Some(root) = view.root else {
            return Some(page);
        };
        if let Some(&(_, phys, _)) = self.shadow.borrow().iotlb.get(&(view.did, page)) {
            return phys;
        }
        let model_table = TABLES.with(|tables| tables.borrow().contains_key(&root));
        let phys = if model_table {
            self.page_in_memory(root, page)
        } else {
            let region = (view.did, page >> 21);
            let cached = self
                .shadow
                .borrow()
                .walks
                .get(&region)
                .map(|&(_, leaf)| leaf);
            let leaf = cached.unwrap_or_else(|| {
                let leaf = self.leaf_table_of(root, page);
                if leaf.is_some() || caching {
                    self.shadow.borrow_mut().walks.insert(region, (root, leaf));
                }
                leaf
            });
            match (cached, leaf) {
                // A cached not-present directory: the walk stops there.
                (Some(None), _) => None,
                (_, Some(leaf)) => {
                    let entry = self.fetch(leaf + ((page >> 12) & 0x1FF) * 8);
                    let present_bits = if Ecap(self.ecap).first_stage() { 1 } else { 3 };
                    (entry & present_bits != 0).then_some(entry & 0x000F_FFFF_FFFF_F000)
                }
                // No leaf table: a large page, or nothing.
                (_, None) => self.page_in_tables(root, page),
            }
        };
        if phys.is_some() || caching {
            let first_stage = Ecap(self.ecap).first_stage();
            self.shadow
                .borrow_mut()
                .iotlb
                .insert((view.did, page), (root, phys, first_stage));
        }
        phys
    }

    /// IRTE `index` in the table IRTA names now; `None` past its end.
    fn irte_in_memory(&self, index: u16) -> Option<[u64; 2]> {
        let irta = Registers::read64(&self, regs::IRTA);
        let entries = 2u64 << (irta & 0xF);
        if irta & !0xFFF == 0 || u64::from(index) >= entries {
            return None;
        }
        let at = (irta & !0xFFF) + u64::from(index) * 16;
        Some([self.fetch(at), self.fetch(at + 8)])
    }

    /// The IRTE an MSI remapped through `index` uses: from the
    /// interrupt-entry cache, or fetched into it (§9.10).
    pub(crate) fn interrupt(&self, index: u16) -> Option<[u64; 2]> {
        if let Some(irte) = self.shadow.borrow().irtes.get(&index) {
            return Some(*irte);
        }
        let irte = self.irte_in_memory(index)?;
        self.shadow.borrow_mut().irtes.insert(index, irte);
        Some(irte)
    }

    /// Every cached item still agrees with memory.
    pub(crate) fn check_no_stale_cache(&self, devices: &[u16]) -> Result<(), std::string::String> {
        let shadow = self.shadow.borrow();
        for (&index, &cached) in &shadow.irtes {
            let memory = self.irte_in_memory(index);
            if memory != Some(cached) {
                return Err(std::format!(
                    "stale interrupt-entry cache entry {index}: cached {cached:x?}, memory {memory:x?}"
                ));
            }
        }
        for &sid in devices {
            if let Some(cached) = shadow.contexts.get(&sid) {
                let memory = if self.scalable() {
                    self.scalable_context_present(sid)
                        .then_some(View { did: 0, root: None })
                } else {
                    self.truth(sid)
                };
                if *cached != memory {
                    return Err(std::format!(
                        "stale context of {sid:#x}: cached {cached:?}, memory {memory:?}"
                    ));
                }
            }
        }
        for (&(sid, did), view) in &shadow.pasids {
            if self.truth(sid) != Some(*view) {
                return Err(std::format!(
                    "stale PASID entry of {sid:#x} (DID {did}): cached {view:?}, memory {:?}",
                    self.truth(sid)
                ));
            }
        }
        // A walk cached for tables no attached device uses any more is
        // unreachable until its DID comes back, which is invalidated first.
        let roots_in_use: Vec<u64> = devices
            .iter()
            .filter_map(|&sid| self.truth(sid)?.root)
            .collect();
        for (&(did, region), &(root, leaf)) in &shadow.walks {
            if !roots_in_use.contains(&root) {
                continue;
            }
            let memory = self.leaf_table_of(root, region << 21);
            if memory != leaf {
                return Err(std::format!(
                    "stale paging-structure cache entry DID {did} region {:#x}: cached {leaf:x?}, memory {memory:x?}",
                    region << 21
                ));
            }
        }
        for (&(did, page), &(root, phys, _)) in &shadow.iotlb {
            let model_table = TABLES.with(|tables| tables.borrow().contains_key(&root));
            // A freed table's DID is never reused without an invalidation:
            // its entries are unreachable, and its memory may be gone.
            if !model_table && !roots_in_use.contains(&root) {
                continue;
            }
            let memory = self.page_in_memory(root, page);
            if memory != phys {
                return Err(std::format!(
                    "stale IOTLB entry DID {did} page {page:#x}: cached {phys:x?}, memory {memory:x?}"
                ));
            }
        }
        Ok(())
    }
}
