//! The SMMU behind the `iommu` driver contract: domains, attach/detach through
//! STEs, fault routing to the owning domain.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use io_page_table::{MapError, Prot as PtProt};
use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    IovaRange, NestedData, NestedFormat, NestedInvalidation, NestingInfo, Prot, ReservedKind,
    ReservedRegion, UnitId, UnitInfo, UnitKind,
};
use iommu_kit::{DmaBuffer, IdAllocator, Unlinked};
use os_services::DmaMemory;

use crate::command::Command;
use crate::device_table::cd::{Cd, Stage1Config};
use crate::device_table::ste::{Stage2Config, Ste};
use crate::fault::{DEFAULT_FAULT_CAPACITY, Fault, FaultQueue, fault_record};
use crate::hardware::{Error, Smmu};
use crate::invalidation::{self, InvalidationCaps, TlbTag};
use crate::nesting;
use crate::paging::{self, PagingStage, STAGE1_INPUT_BITS, Table, granule_of};
use crate::regs::{Granule, Idr0, StallModel, Walk};

/// What a domain translates with.
enum DomainState<'a> {
    Blocked,
    Identity,
    /// Stage 1: a CD with `asid` pointing at `table`.
    Stage1 {
        asid: u16,
        cd: DmaBuffer,
        table: Table<'a>,
        pending: Unlinked,
    },
    /// Stage 2 under `vmid`; `nest_parent` when nested domains may use it.
    Stage2 {
        vmid: u16,
        nest_parent: bool,
        table: Table<'a>,
        pending: Unlinked,
    },
    /// A task-owned stage 1 (CD at IPA `cd_ipa`) over `parent`'s stage 2.
    Nested {
        parent: DomainHandle,
        cd_ipa: u64,
    },
}

struct Domain<'a> {
    state: DomainState<'a>,
    /// StreamIDs attached.
    streams: Vec<u32>,
    /// Faults of this domain's streams, drained and not yet taken.
    faults: FaultQueue,
    /// A flush of this domain failed: the next one invalidates the whole
    /// context before any unlinked table page is freed.
    owes_full_invalidation: AtomicBool,
}

/// One SMMUv3 as an [`IommuUnit`].
pub struct SmmuUnit<'a> {
    /// The instance (registers, queues, stream table).
    pub hardware: Smmu<'a>,
    id: UnitId,
    dma: &'a (dyn DmaMemory + Sync),
    /// By handle. Boxed, so that a free slot keeps a pointer's room rather
    /// than a whole domain's (one owner's many domains below another's
    /// would otherwise keep their room after they are freed).
    domains: Vec<Option<Box<Domain<'a>>>>,
    /// ASIDs and VMIDs, as wide as IDR0.ASID16/VMID16 allow (0 stays
    /// reserved). A freed domain's TLB entries are invalidated when it is
    /// freed, so a recycled id is clean.
    asids: IdAllocator,
    vmids: IdAllocator,
    /// Granule of new paging domains.
    granule: Granule,
    attached: BTreeMap<u32, DomainHandle>,
    /// The MSI doorbell page devices write to (GICv2m frame / ITS translater).
    msi_doorbell: Option<IovaRange>,
    /// Faults of streams that belong to no domain.
    unowned: FaultQueue,
    /// Faults each domain keeps between two takes.
    fault_capacity: usize,
}

impl<'a> SmmuUnit<'a> {
    /// The contract over `smmu`, its domains' tables from `dma`, reporting
    /// as unit `id`; `msi_doorbell` (the ITS's GITS_TRANSLATER page) is
    /// mapped in every domain and reported reserved.
    pub fn new(
        smmu: Smmu<'a>,
        dma: &'a (dyn DmaMemory + Sync),
        id: UnitId,
        msi_doorbell: Option<IovaRange>,
    ) -> Self {
        let idr0 = smmu.features().idr0();
        let granule = smmu
            .features()
            .idr5()
            .granules()
            .next()
            .unwrap_or(Granule::K4);
        Self {
            hardware: smmu,
            id,
            dma,
            domains: Vec::new(),
            asids: IdAllocator::new(1..=id_limit(idr0.contains(Idr0::ASID16))),
            vmids: IdAllocator::new(1..=id_limit(idr0.contains(Idr0::VMID16))),
            granule,
            attached: BTreeMap::new(),
            msi_doorbell,
            unowned: FaultQueue::new(DEFAULT_FAULT_CAPACITY),
            fault_capacity: DEFAULT_FAULT_CAPACITY,
        }
    }

    /// How many faults each domain (and the unowned sink) keeps until its
    /// owner takes them; more are counted in the `Lost` record.
    pub fn set_fault_capacity(&mut self, capacity: usize) {
        self.fault_capacity = capacity;
        for domain in self.domains.iter_mut().flatten() {
            domain.faults.set_capacity(capacity);
        }
        self.unowned.set_capacity(capacity);
    }

    /// Faults one domain's queue holds.
    pub fn fault_capacity(&self) -> usize {
        self.fault_capacity
    }

    /// Where new domains get their table pages and CDs from (existing
    /// domains keep theirs): lets a test inject allocation failures.
    pub fn set_dma(&mut self, dma: &'a (dyn DmaMemory + Sync)) {
        self.dma = dma;
    }

    /// Physical addresses of a paging domain's root table and, for stage 1,
    /// its CD: memory no device may reach.
    pub fn table_phys(&self, handle: DomainHandle) -> Option<(u64, Option<u64>)> {
        match &self.domain(handle).ok()?.state {
            DomainState::Stage1 { cd, table, .. } => Some((table.root_phys(), Some(cd.phys()))),
            DomainState::Stage2 { table, .. } => Some((table.root_phys(), None)),
            _ => None,
        }
    }

    /// The hardware's walk of a paging domain's table for `iova`, level by
    /// level (for the demo and debugging); `false` for a domain without one.
    pub fn walk_mapping(
        &self,
        handle: DomainHandle,
        iova: u64,
        visit: &mut dyn FnMut(&io_page_table::WalkStep),
    ) -> bool {
        match self.domain(handle).map(|d| &d.state) {
            Ok(DomainState::Stage1 { table, .. } | DomainState::Stage2 { table, .. }) => {
                table.walk_to(iova, visit);
                true
            }
            _ => false,
        }
    }

    /// The leaf of a paging domain's table that translates `iova`: its raw
    /// descriptor, level and size (for tests and debugging).
    pub fn translation(
        &self,
        handle: DomainHandle,
        iova: u64,
    ) -> Option<io_page_table::Translation> {
        match &self.domain(handle).ok()?.state {
            DomainState::Stage1 { table, .. } | DomainState::Stage2 { table, .. } => {
                table.lookup(iova)
            }
            _ => None,
        }
    }

    fn domain(&self, handle: DomainHandle) -> Result<&Domain<'a>, IommuError> {
        self.domains
            .get(handle.0 as usize)
            .and_then(Option::as_deref)
            .ok_or(IommuError::Invalid)
    }

    fn domain_mut(&mut self, handle: DomainHandle) -> Result<&mut Domain<'a>, IommuError> {
        self.domains
            .get_mut(handle.0 as usize)
            .and_then(Option::as_deref_mut)
            .ok_or(IommuError::Invalid)
    }

    fn stage2_config(&self, vmid: u16, table: &Table<'a>) -> Stage2Config {
        let config = table.format();
        Stage2Config {
            vmid,
            root: table.root_phys(),
            granule: granule_of(config.config().granule),
            ias_bits: config.config().input_bits,
            start_level: config.start_level(),
            ps_encoding: self.hardware.features().idr5().oas_encoding(),
        }
    }

    /// The STE that puts a stream into `handle`, with stage-1 stalls forbidden
    /// where the SMMU lets an STE do so.
    fn ste_for(&self, handle: DomainHandle) -> Result<Ste, IommuError> {
        let ste = self
            .ste_without_stall_policy(handle)?
            .with_walk(self.hardware.walk());
        Ok(match self.hardware.features().idr0().stall_model() {
            StallModel::StallOrTerminate => ste.with_stalls_disabled(),
            StallModel::TerminateOnly | StallModel::StallForced => ste,
        })
    }

    fn ste_without_stall_policy(&self, handle: DomainHandle) -> Result<Ste, IommuError> {
        let ste = match &self.domain(handle)?.state {
            DomainState::Blocked => Ste::abort(),
            DomainState::Identity => Ste::bypass(),
            DomainState::Stage1 { cd, .. } => Ste::translate(Some(cd.phys()), None)?,
            DomainState::Stage2 { vmid, table, .. } => {
                Ste::translate(None, Some(&self.stage2_config(*vmid, table)))?
            }
            DomainState::Nested { parent, cd_ipa } => {
                let DomainState::Stage2 { vmid, table, .. } = &self.domain(*parent)?.state else {
                    return Err(IommuError::Invalid);
                };
                Ste::translate(Some(*cd_ipa), Some(&self.stage2_config(*vmid, table)))?
            }
        };
        Ok(ste)
    }

    /// Granule of paging domains allocated from now on (one IDR5 offers).
    pub fn set_granule(&mut self, granule: Granule) -> Result<(), IommuError> {
        if !self.hardware.features().idr5().supports(granule) {
            return Err(IommuError::Unsupported);
        }
        self.granule = granule;
        Ok(())
    }

    /// The granule paging domains are made with.
    pub fn granule(&self) -> Granule {
        self.granule
    }

    /// The stage plain paging domains use: stage 1 when implemented (like
    /// Linux), else stage 2.
    pub fn paging_stage(&self) -> PagingStage {
        if self.hardware.features().stage1() {
            PagingStage::Stage1
        } else {
            PagingStage::Stage2
        }
    }

    fn new_table(&self, stage: PagingStage) -> Result<Table<'a>, IommuError> {
        paging::new_table(
            self.hardware.features(),
            stage,
            self.granule,
            self.dma,
            self.msi_doorbell,
            self.hardware.clean(),
        )
    }

    fn alloc_stage1(&mut self) -> Result<DomainState<'a>, IommuError> {
        if !self.hardware.features().stage1() {
            return Err(IommuError::Unsupported);
        }
        let table = self.new_table(PagingStage::Stage1)?;
        let asid = self.asids.take().ok_or(IommuError::NoMemory)?.id as u16;
        let fields = table.format().stage1_fields();
        let cd = Cd::stage1(&Stage1Config {
            asid,
            root: table.root_phys(),
            granule: self.granule,
            ias_bits: STAGE1_INPUT_BITS,
            ips_encoding: u32::from(fields.ips),
            mair: fields.mair,
        })
        .map(|cd| cd.with_walk(self.hardware.walk()))
        .map(|cd| {
            if self.hardware.features().hardware_dirty() {
                cd.with_hardware_dirty()
            } else {
                cd
            }
        })
        .map_err(|_| IommuError::Invalid);
        let region = DmaBuffer::alloc(self.dma, 64, 64);
        let (cd, region) = match (cd, region) {
            (Ok(cd), Some(region)) => (cd, region),
            (cd, region) => {
                // Nothing was published: the ASID and the CD page go back.
                self.asids.free(u32::from(asid));
                if let Some(region) = region {
                    region.free(self.dma);
                }
                return Err(cd.err().unwrap_or(IommuError::NoMemory));
            }
        };
        // V (word 0) last: the SMMU never sees a valid torn CD (§3.21.3).
        region.publish(0, &cd.0, 0, None, self.hardware.clean());
        Ok(DomainState::Stage1 {
            asid,
            cd: region,
            table,
            pending: Unlinked::default(),
        })
    }

    fn alloc_stage2(&mut self, nest_parent: bool) -> Result<DomainState<'a>, IommuError> {
        if !self.hardware.features().stage2() {
            return Err(IommuError::Unsupported);
        }
        let table = self.new_table(PagingStage::Stage2)?;
        let vmid = self.vmids.take().ok_or(IommuError::NoMemory)?.id as u16;
        Ok(DomainState::Stage2 {
            vmid,
            nest_parent,
            table,
            pending: Unlinked::default(),
        })
    }

    /// Validates a guest STE (SMMUv3 §5.2): valid, Config = stage-1 translate,
    /// linear single CD (S1Fmt = 0, S1CDMax = 0: QEMU has no substreams).
    /// Whether tasks may own stage 1 over a kernel stage 2: both stages, and
    /// an SMMU that snoops. A non-coherent one would read a task's CD and
    /// tables from DRAM, and a task cannot clean its own cache lines (EL0
    /// cache maintenance is off), so it would walk whatever DRAM still held.
    fn nests(&self) -> bool {
        let features = self.hardware.features();
        features.stage1() && features.stage2() && self.hardware.walk() == Walk::Coherent
    }

    fn alloc_nested(
        &mut self,
        parent: DomainHandle,
        ste: [u64; 2],
    ) -> Result<DomainState<'a>, IommuError> {
        match &self.domain(parent)?.state {
            DomainState::Stage2 {
                nest_parent: true, ..
            } => {}
            _ => return Err(IommuError::Invalid),
        }
        let cd_ipa = nesting::guest_cd_address(ste).ok_or(IommuError::Invalid)?;
        Ok(DomainState::Nested { parent, cd_ipa })
    }

    /// Counts of commands the last `flush` issued are in [`Smmu::counters`].
    fn tlb_tag(&self, domain: DomainHandle) -> Result<(TlbTag, Granule), IommuError> {
        match &self.domain(domain)?.state {
            DomainState::Stage1 { asid, table, .. } => Ok((
                TlbTag::Stage1 {
                    asid: *asid,
                    vmid: 0,
                },
                granule_of(table.format().config().granule),
            )),
            DomainState::Stage2 {
                vmid,
                nest_parent,
                table,
                ..
            } => Ok((
                TlbTag::Stage2 {
                    vmid: *vmid,
                    nest_parent: *nest_parent,
                },
                granule_of(table.format().config().granule),
            )),
            _ => Err(IommuError::Invalid),
        }
    }

    /// The domain `sid` is attached to.
    pub fn domain_of(&self, sid: u32) -> Option<DomainHandle> {
        self.attached.get(&sid).copied()
    }

    /// Drains the event queue and files each fault with the domain that owns
    /// its stream.
    pub fn collect_faults(&mut self) {
        let overflows_before = self.hardware.counters().event_overflows;
        self.hardware.drain_events();
        // Any other global error is acknowledged (and counted) here too.
        self.hardware.handle_global_errors();
        for fault in self.hardware.take_faults() {
            let owner = self.attached.get(&fault.event.sid).copied();
            match owner.and_then(|h| self.domains.get_mut(h.0 as usize)?.as_mut()) {
                Some(domain) => domain.faults.push(fault),
                None => self.unowned.push(fault),
            }
        }
        // The SMMU does not say whose records it discarded: every domain with
        // a stream attached may have lost some, so each owner is told.
        let overflows = self.hardware.counters().event_overflows - overflows_before;
        if overflows > 0 {
            let times = u32::try_from(overflows).unwrap_or(u32::MAX);
            for domain in self.domains.iter_mut().flatten() {
                if let Some(&sid) = domain.streams.first() {
                    domain.faults.note_overflows(times, sid);
                }
            }
        }
    }

    /// Takes the coalesced faults of `domain` (with their event counts).
    pub fn take_domain_faults(&mut self, domain: DomainHandle) -> Vec<Fault> {
        self.collect_faults();
        self.domain_mut(domain)
            .map(|d| d.faults.take())
            .unwrap_or_default()
    }

    /// Takes the coalesced faults of streams no domain owns.
    pub fn take_unowned_faults(&mut self) -> Vec<Fault> {
        self.collect_faults();
        self.unowned.take()
    }
}

/// The largest ASID or VMID: 16 bits where IDR0 says so, else 8 (§6.3.1).
fn id_limit(sixteen_bits: bool) -> u32 {
    if sixteen_bits {
        u16::MAX.into()
    } else {
        u8::MAX.into()
    }
}

impl<'a> IommuUnit for SmmuUnit<'a> {
    /// What paging domains allocated now take: the input range of the paging
    /// stage's tables (a map beyond it is refused) and the leaf sizes of the
    /// current granule.
    fn info(&self) -> UnitInfo {
        let stage = self.paging_stage();
        let features = self.hardware.features();
        let page_sizes = paging::page_sizes(features, stage, self.granule).unwrap_or(1 << 12);
        UnitInfo {
            name: "arm-smmu-v3",
            kind: UnitKind::ArmSmmuV3,
            aperture: IovaRange {
                start: 0,
                last: (1u64 << paging::input_bits(stage)) - 1,
            },
            page_sizes,
            nesting: self.nests().then_some(NestingInfo {
                format: NestedFormat::ArmSmmuV3,
            }),
        }
    }

    fn reserved_regions(&self, _device: DeviceId) -> Vec<ReservedRegion> {
        self.msi_doorbell
            .map(|range| {
                vec![ReservedRegion {
                    range,
                    kind: ReservedKind::Msi,
                }]
            })
            .unwrap_or_default()
    }

    fn hw_info(&self) -> HwInfo {
        let features = self.hardware.features();
        HwInfo::ArmSmmuV3 {
            idr: features.idr,
            iidr: features.iidr,
            aidr: features.aidr,
        }
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        let state = match kind {
            DomainKind::Blocked => DomainState::Blocked,
            DomainKind::Identity => DomainState::Identity,
            DomainKind::Paging => match self.paging_stage() {
                PagingStage::Stage1 => self.alloc_stage1()?,
                PagingStage::Stage2 => self.alloc_stage2(false)?,
            },
            DomainKind::NestParent if !self.nests() => return Err(IommuError::Unsupported),
            DomainKind::NestParent => self.alloc_stage2(true)?,
            DomainKind::Nested {
                parent,
                data: NestedData::ArmSmmuV3 { ste },
            } => self.alloc_nested(parent, ste)?,
            DomainKind::Nested { .. } => return Err(IommuError::Unsupported),
        };
        let domain = Box::new(Domain {
            state,
            streams: Vec::new(),
            faults: FaultQueue::new(self.fault_capacity),
            owes_full_invalidation: AtomicBool::new(false),
        });
        let index = match self.domains.iter().position(Option::is_none) {
            Some(free) => {
                self.domains[free] = Some(domain);
                free
            }
            None => {
                self.domains.push(Some(domain));
                self.domains.len() - 1
            }
        };
        Ok(DomainHandle(index as u32))
    }

    fn free_domain(&mut self, handle: DomainHandle) -> Result<(), IommuError> {
        if !self.domain(handle)?.streams.is_empty() {
            return Err(IommuError::Busy);
        }
        let is_parent_of = |d: &Domain<'a>| matches!(d.state, DomainState::Nested { parent, .. } if parent == handle);
        if self.domains.iter().flatten().any(|d| is_parent_of(d)) {
            return Err(IommuError::Busy);
        }
        // Nothing is attached, but the TLB may still hold the domain's tags:
        // drop them before the ASID/VMID and the tables can be reused.
        let wide = match &self.domain(handle)?.state {
            DomainState::Stage1 { asid, .. } => Some(Command::TlbiNhAsid {
                vmid: 0,
                asid: *asid,
            }),
            DomainState::Stage2 { vmid, .. } => Some(Command::TlbiS12Vmall { vmid: *vmid }),
            _ => None,
        };
        if let Some(command) = wide {
            self.hardware.execute(&[command])?;
        }
        if let Some(domain) = self.domains[handle.0 as usize].take() {
            match domain.state {
                DomainState::Stage1 {
                    asid,
                    cd,
                    table,
                    pending,
                } => {
                    pending.take_all().release(|freed| table.release(freed));
                    cd.free(self.dma);
                    // Its TLB entries went with the TLBI above.
                    self.asids.free(u32::from(asid));
                }
                DomainState::Stage2 {
                    vmid,
                    table,
                    pending,
                    ..
                } => {
                    pending.take_all().release(|freed| table.release(freed));
                    self.vmids.free(u32::from(vmid));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
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
        let mut flags = PtProt::CACHE | PtProt::NOEXEC;
        flags.set(PtProt::READ, prot.read);
        flags.set(PtProt::WRITE, prot.write);
        let table = match &self.domain(domain)?.state {
            DomainState::Stage1 { table, .. } | DomainState::Stage2 { table, .. } => table,
            _ => return Err(IommuError::Invalid),
        };
        // SAFETY: the caller keeps concurrent ranges disjoint.
        let gather =
            unsafe { table.map_shared(iova, phys, len, flags) }.map_err(|err| match err {
                MapError::NoMemory => IommuError::NoMemory,
                _ => IommuError::Invalid,
            })?;
        // A map only fills entries that were invalid (it never replaces a
        // table), and an SMMU caches no translation that faulted (SMMUv3
        // §3.21.2: no TLB entry for a Translation fault), so nothing is owed:
        // as Linux's `arm_smmu_map_pages`, which issues no TLBI. A map that
        // freed table pages would owe a walk-cache invalidation.
        Ok(if gather.freed_tables {
            gather
        } else {
            Gather::default()
        })
    }

    unsafe fn unmap_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        match &self.domain(domain)?.state {
            DomainState::Stage1 { table, pending, .. }
            | DomainState::Stage2 { table, pending, .. } => {
                // A range that would cut a block or a contiguous run changes
                // nothing; the caller must see it, or it would release what
                // is still mapped.
                // SAFETY: the caller keeps concurrent ranges disjoint.
                let unmapped =
                    unsafe { table.unmap_shared(iova, len) }.map_err(|_| IommuError::Invalid)?;
                pending.push(&unmapped.gather, unmapped.freed);
                Ok(unmapped.gather)
            }
            // Blocking, identity and nested domains map nothing themselves.
            _ => Ok(Gather::default()),
        }
    }

    /// Each caller's TLBIs carry their own CMD_SYNC and it waits for that
    /// one alone (`Smmu::execute`); the table pages freed are those unmaps
    /// inside `gather` unlinked before the TLBIs were queued.
    fn flush_shared(&self, handle: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        let domain = self.domain(handle)?;
        if gather.is_empty() && !domain.owes_full_invalidation.load(Ordering::Acquire) {
            return Ok(());
        }
        let (tag, granule) = self.tlb_tag(handle)?;
        let caps = InvalidationCaps {
            range: self.hardware.features().range_invalidation(),
            granule,
        };
        let owed = domain.owes_full_invalidation.swap(false, Ordering::AcqRel);
        let (table, pending) = match &domain.state {
            DomainState::Stage1 { table, pending, .. }
            | DomainState::Stage2 { table, pending, .. } => (Some(table), Some(pending)),
            _ => (None, None),
        };
        // Taken before the TLBIs are queued: a batch unlinked later waits for
        // a flush issued after it.
        let taken = pending.map(|pending| match owed {
            true => pending.take_all(),
            false => pending.take_covered(gather),
        });
        let commands = if owed {
            invalidation::plan_everything(tag)
        } else {
            invalidation::plan(tag, caps, gather)
        };
        if let Some((Command::Sync, invalidations)) = commands.split_last()
            && let Err(error) = self.hardware.execute(invalidations)
        {
            // The range was never confirmed: the next flush covers everything.
            domain.owes_full_invalidation.store(true, Ordering::Release);
            if let (Some(pending), Some(taken)) = (pending, taken) {
                pending.restore(taken);
            }
            return Err(error.into());
        }
        if let (Some(table), Some(taken)) = (table, taken) {
            taken.release(|freed| table.release(freed));
        }
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        let sid = device.0;
        let ste = self.ste_for(domain)?;
        if let Err(err) = self.hardware.write_ste(sid, &ste) {
            if matches!(err, Error::Timeout(_) | Error::CommandRejected { .. }) {
                // The STE in memory may be the old, the new or the abort one,
                // and the SMMU may have cached any of them: fail closed. The
                // stream aborts, and the SMMU is told so before any later
                // command completes (or at `Smmu::restart`); it belongs to no
                // domain, so neither domain is handed to it by mistake, and
                // neither can be freed before the queue works again (its TLBI
                // would fail).
                self.hardware.abort_ste_after_failure(sid);
                if let Some(old) = self.attached.remove(&sid)
                    && let Ok(old) = self.domain_mut(old)
                {
                    old.streams.retain(|&s| s != sid);
                }
            }
            return Err(err.into());
        }
        if let Some(old) = self.attached.insert(sid, domain)
            && let Ok(old) = self.domain_mut(old)
        {
            old.streams.retain(|&s| s != sid);
        }
        self.domain_mut(domain)?.streams.push(sid);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) {
        let sid = device.0;
        // Abort (V = 1, Config = 0) is silent, unlike the V = 0 of a stream
        // never attached: a detached device is expected to be quiet. If the
        // update failed half-way, the stream aborts all the same, and the SMMU
        // is told so before any later command completes, the TLBI that must
        // precede freeing the old domain included.
        if self.hardware.write_ste(sid, &Ste::abort()).is_err() {
            self.hardware.abort_ste_after_failure(sid);
        }
        if let Some(old) = self.attached.remove(&sid)
            && let Ok(old) = self.domain_mut(old)
        {
            old.streams.retain(|&s| s != sid);
        }
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        self.collect_faults();
        let before = out.len();
        let id = self.id;
        for domain in self.domains.iter_mut().flatten() {
            out.extend(domain.faults.take().iter().map(|f| fault_record(id, f)));
        }
        out.extend(self.unowned.take().iter().map(|f| fault_record(id, f)));
        out.len() - before
    }

    fn invalidate_nested(
        &mut self,
        domain: DomainHandle,
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        let vmid = match self.domain(domain).map(|d| &d.state) {
            Ok(DomainState::Nested { parent, .. }) => {
                match self.domain(*parent).map(|d| &d.state) {
                    Ok(DomainState::Stage2 { vmid, .. }) => *vmid,
                    _ => return (0, Err(IommuError::Invalid)),
                }
            }
            _ => return (0, Err(IommuError::Invalid)),
        };
        let streams = self
            .domain(domain)
            .map(|d| d.streams.clone())
            .unwrap_or_default();
        let mut done = 0;
        for request in requests {
            let NestedInvalidation::ArmSmmuV3 { cmd } = request else {
                return (done, Err(IommuError::Invalid));
            };
            let commands = match nesting::confine_guest_command(*cmd, vmid, &streams) {
                Some(commands) => commands,
                None => return (done, Err(IommuError::Invalid)),
            };
            let result = self.hardware.execute_raw(&commands);
            if let Err(err) = result {
                return (done, Err(err.into()));
            }
            done += 1;
        }
        (done, Ok(()))
    }

    /// HTTU with dirty state (IDR0.HTTU = 0b10), for stage-1 paging domains:
    /// their CDs set HA and HD and their writable leaves carry DBM.
    fn dirty_tracking(&self) -> bool {
        self.hardware.features().hardware_dirty() && self.paging_stage() == PagingStage::Stage1
    }

    /// Always on where the SMMU tracks: a stage-1 domain's CD has HD from
    /// its allocation, so there is nothing to switch (Linux
    /// `arm_smmu_set_dirty_tracking` likewise returns at once).
    fn set_dirty_tracking(&mut self, domain: DomainHandle, enable: bool) -> Result<(), IommuError> {
        let _ = enable;
        if !self.dirty_tracking() {
            return Err(IommuError::Unsupported);
        }
        match self.domain(domain).map(|d| &d.state) {
            Ok(DomainState::Stage1 { .. }) => Ok(()),
            _ => Err(IommuError::Invalid),
        }
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
        let entry = self.domain_mut(domain)?;
        let DomainState::Stage1 { table, .. } = &mut entry.state else {
            return Err(IommuError::Invalid);
        };
        table
            .read_dirty(iova, len, keep, &mut *dirty)
            .map_err(|_| IommuError::Invalid)
    }

    /// The commands are translated up to the first one refused, those are
    /// issued with one CMD_SYNC, and the count says how many took effect.
    fn invalidate_viommu(
        &mut self,
        parent: DomainHandle,
        vdevices: &[(u64, DeviceId)],
        requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        let vmid = match self.domain(parent).map(|d| &d.state) {
            Ok(DomainState::Stage2 { vmid, .. }) => *vmid,
            _ => return (0, Err(IommuError::Invalid)),
        };
        let mut commands = Vec::with_capacity(requests.len());
        let mut refused = Ok(());
        for request in requests {
            let translated = match request {
                NestedInvalidation::ArmSmmuV3 { cmd } => {
                    nesting::translate_viommu_command(*cmd, vmid, vdevices)
                }
                _ => Err(IommuError::Invalid),
            };
            match translated {
                Ok(command) => commands.push(command),
                Err(err) => {
                    refused = Err(err);
                    break;
                }
            }
        }
        if commands.is_empty() {
            return (0, refused);
        }
        match self.hardware.execute_raw(&commands) {
            Ok(()) => (commands.len(), refused),
            Err(err) => (0, Err(err.into())),
        }
    }
}
