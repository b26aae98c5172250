//! One SMMUv3 instance: bring-up, the stream table, the command and event
//! queues, global errors.
//!
//! Bring-up follows SMMUv3 §3.21 / §6.3.9 (and Hafnium's order): global bypass
//! turned into abort first so that no stream ever bypasses, then the queues,
//! then the tables, then SMMUEN; every CR0 change is acknowledged through
//! CR0ACK within a bound.

use alloc::vec::Vec;
use core::time::Duration;
use os_services::barrier::dma_wmb;

use core::sync::atomic::{AtomicBool, Ordering};
use iommu_kit::{CacheClean, CacheMaintenance, DmaBuffer, SharedRing, Tally, WrapIndex};
use os_services::mmio::Mmio;
use os_services::{Clock, DmaMemory, wait_until};

use crate::command::Command;
use crate::device_table::ste::L1Std;
use crate::fault::{Coalescer, Fault};
use crate::regs::{
    self, CommandError, Cr0, Cr2, Gbpa, Gerror, Idr0, Idr1, Idr3, Idr5, IrqCtrl, Walk,
};

mod device_table;
mod faults;
mod queue;

/// Bound on every register acknowledgement and command completion.
pub(crate) const HW_TIMEOUT: Duration = Duration::from_millis(100);

/// Queue sizes the driver uses at most (entries, log2): small, fixed, enough
/// for the batches the driver issues.
const CMDQ_LOG2_MAX: u32 = 8;
const EVENTQ_LOG2_MAX: u32 = 7;
pub(crate) const CMD_BYTES: usize = 16;
pub(crate) const EVENT_BYTES: usize = 32;
pub(crate) const STE_BYTES: usize = 64;

/// StreamID bits resolved by one level-2 stream table (256 STEs = 16 KiB).
pub const TWO_LEVEL_SPLIT: u32 = 8;
/// The largest linear table the driver builds automatically: 256 STEs.
pub const LINEAR_MAX_SID_BITS: u32 = 8;

/// Which stream table format to build (SMMUv3 §3.3 stream table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTableFormat {
    /// Linear when IDR1.SIDSIZE fits [`LINEAR_MAX_SID_BITS`], else two-level.
    Auto,
    /// Linear over the first `sid_bits` StreamIDs.
    Linear {
        /// StreamID bits the table covers.
        sid_bits: u32,
    },
    /// Two-level over every StreamID IDR1.SIDSIZE allows.
    TwoLevel,
}

/// What the ID registers say (SMMUv3 §6.3.1-§6.3.8), decoded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// SMMU_IDR0 to SMMU_IDR5.
    pub idr: [u32; 6],
    /// SMMU_IIDR: implementer and revision.
    pub iidr: u32,
    /// SMMU_AIDR: the architecture version.
    pub aidr: u32,
}

impl Features {
    /// SMMU_IDR0 decoded.
    pub fn idr0(&self) -> Idr0 {
        Idr0::from_bits_retain(self.idr[0])
    }
    /// SMMU_IDR1 decoded.
    pub fn idr1(&self) -> Idr1 {
        Idr1(self.idr[1])
    }
    /// SMMU_IDR3 decoded.
    pub fn idr3(&self) -> Idr3 {
        Idr3::from_bits_retain(self.idr[3])
    }
    /// SMMU_IDR5 decoded.
    pub fn idr5(&self) -> Idr5 {
        Idr5(self.idr[5])
    }
    /// IDR0.S1P: stage-1 translation.
    pub fn stage1(&self) -> bool {
        self.idr0().contains(Idr0::S1P)
    }
    /// `IDR0.HTTU[7:6]` = 0b10 (or above): the SMMU updates the access flag and
    /// the dirty state of stage-1 leaves (Linux `IDR0_HTTU_ACCESS_DIRTY`).
    pub fn hardware_dirty(&self) -> bool {
        const HTTU_SHIFT: u32 = 6;
        const HTTU_ACCESS_DIRTY: u32 = 0b10;
        (self.idr[0] >> HTTU_SHIFT) & 0b11 >= HTTU_ACCESS_DIRTY
    }
    /// IDR0.S2P: stage-2 translation.
    pub fn stage2(&self) -> bool {
        self.idr0().contains(Idr0::S2P)
    }
    /// IDR3.RIL: range invalidation.
    pub fn range_invalidation(&self) -> bool {
        self.idr3().contains(Idr3::RIL)
    }
}

/// Why the driver failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The ID registers describe something the driver cannot drive.
    Unsupported(&'static str),
    /// Out of memory for a table or queue.
    NoMemory,
    /// A register acknowledgement or command completion did not arrive.
    Timeout(&'static str),
    /// The SMMU rejected a command (CMDQ_CONS.ERR); the queue was recovered.
    CommandRejected {
        /// CMDQ_CONS.ERR.
        error: CommandError,
        /// The rejected command's opcode.
        opcode: u8,
    },
    /// The StreamID is outside the stream table.
    BadStreamId(u32),
    /// An STE or CD could not be encoded.
    Encoding,
}

iommu_kit::counters! {
    /// Plain counters of the work the driver did, for the figures.
    pub struct Counters {
        /// Every command written to the queue, CMD_SYNC included.
        pub commands,
        /// CMD_SYNCs.
        pub syncs,
        /// Batches whose wait was another submitter's CMD_SYNC, queued after
        /// them (several CPUs' commands, one sync).
        pub shared_syncs,
        /// TLBI commands.
        pub tlbi,
        /// CFGI commands.
        pub cfgi,
        /// MMIO register writes (PROD doorbells, CONS updates, control registers).
        pub mmio_writes,
        /// Commands the SMMU rejected (CERROR) and the driver skipped.
        pub command_errors,
        /// Event records read from the event queue.
        pub events,
        /// Times the event queue overflowed (PROD.OVFLG or GERROR.EVENTQ_ABT_ERR).
        pub event_overflows,
        /// Global errors seen (any GERROR bit).
        pub global_errors,
        /// Times the SMMU entered Service Failure Mode and was turned off.
        pub service_failures,
    }
}

/// A device-visible region for a queue or table, aligned to its size.
pub(crate) fn alloc_region(dma: &dyn DmaMemory, len: usize) -> Result<DmaBuffer, Error> {
    let align = len.next_power_of_two().max(4096);
    DmaBuffer::alloc(dma, len, align).ok_or(Error::NoMemory)
}

pub(crate) struct Queue {
    region: DmaBuffer,
    log2: u32,
    prod: WrapIndex,
    cons: WrapIndex,
}

/// The command queue (§3.5): its memory, and the positions its submitters
/// share ([`SharedRing`] with the wrap-bit convention: PROD and CONS count
/// modulo twice the entries).
pub(crate) struct CommandQueue {
    region: DmaBuffer,
    log2: u32,
    positions: SharedRing,
}

impl CommandQueue {
    fn new(region: DmaBuffer, log2: u32) -> Self {
        Self {
            region,
            log2,
            positions: SharedRing::wrap_bit(1 << log2),
        }
    }
}

pub(crate) enum StreamTable {
    Linear {
        region: DmaBuffer,
        sid_bits: u32,
    },
    TwoLevel {
        l1: DmaBuffer,
        sid_bits: u32,
        l2: Vec<Option<DmaBuffer>>,
    },
}

impl StreamTable {
    pub(crate) fn sid_bits(&self) -> u32 {
        match self {
            StreamTable::Linear { sid_bits, .. } | StreamTable::TwoLevel { sid_bits, .. } => {
                *sid_bits
            }
        }
    }

    pub(crate) fn is_two_level(&self) -> bool {
        matches!(self, StreamTable::TwoLevel { .. })
    }
}

/// One SMMUv3 with its queues and stream table in memory.
pub struct Smmu<'a> {
    regs: Mmio,
    clock: &'a (dyn Clock + Sync),
    dma: &'a (dyn DmaMemory + Sync),
    features: Features,
    cmdq: CommandQueue,
    eventq: Queue,
    strtab: StreamTable,
    counters: Tally<Counters>,
    coalescer: Coalescer,
    /// Faults drained and not yet taken by the owner.
    faults: Vec<Fault>,
    last_command_error: spin::Mutex<Option<CommandError>>,
    /// Rejected commands skipped (§7.1), by position, until the caller
    /// whose commands they were collects them as its error.
    rejections: spin::Mutex<Vec<(u64, Error)>>,
    /// An STE was abandoned half-way and its CFGI_STE could not be queued:
    /// the next submission starts with CFGI_ALL.
    owes_cfgi_all: AtomicBool,
    /// Held while a rejected command is replaced (CERROR, §7.1), so that
    /// CPUs that saw the same GERROR.CMDQ_ERR repair it once.
    cmdq_recovery: spin::Mutex<()>,
    enabled: bool,
    /// Interrupts the owner enabled, restored by [`Smmu::restart`].
    irq: IrqCtrl,
    /// Whether the SMMU snoops (IDR0.COHACC), and if not, how the driver
    /// makes what it writes visible and what the SMMU wrote readable.
    walk: Walk,
    maintenance: Option<CacheMaintenance>,
}

impl<'a> Smmu<'a> {
    /// Reads the ID registers and brings the SMMU up with every stream
    /// invalid (aborting, reported as C_BAD_STE). `maintenance` is the CPU
    /// cache maintenance an SMMU that does not snoop (IDR0.COHACC = 0) needs;
    /// without it such an SMMU is refused.
    pub fn new(
        regs: Mmio,
        clock: &'a (dyn Clock + Sync),
        dma: &'a (dyn DmaMemory + Sync),
        format: StreamTableFormat,
        maintenance: Option<CacheMaintenance>,
    ) -> Result<Self, Error> {
        let features = Features {
            idr: [
                regs.read32(regs::IDR0),
                regs.read32(regs::IDR1),
                regs.read32(regs::IDR2),
                regs.read32(regs::IDR3),
                regs.read32(regs::IDR4),
                regs.read32(regs::IDR5),
            ],
            iidr: regs.read32(regs::IIDR),
            aidr: regs.read32(regs::AIDR),
        };
        let idr0 = features.idr0();
        let idr1 = features.idr1();
        if !idr0.aarch64_tables() {
            return Err(Error::Unsupported(
                "no AArch64 translation tables (IDR0.TTF)",
            ));
        }
        if !features.stage1() && !features.stage2() {
            return Err(Error::Unsupported(
                "neither stage 1 nor stage 2 (IDR0.S1P/S2P)",
            ));
        }
        if idr1.tables_preset() || idr1.queues_preset() {
            return Err(Error::Unsupported("preset tables or queues (IDR1)"));
        }
        let walk = if idr0.contains(Idr0::COHACC) {
            Walk::Coherent
        } else {
            Walk::NonCoherent
        };
        // Forced stalls (§6.3.1 STALL_MODEL = 0b10): every faulting
        // transaction would wait for a CMD_RESUME that nothing here sends.
        if idr0.stall_model() == crate::regs::StallModel::StallForced {
            return Err(Error::Unsupported(
                "forced stalls (IDR0.STALL_MODEL = 0b10): no stall is ever resumed here",
            ));
        }
        if walk == Walk::NonCoherent && maintenance.is_none() {
            return Err(Error::Unsupported(
                "a non-coherent SMMU (IDR0.COHACC = 0) without cache maintenance",
            ));
        }
        let sid_bits_hw = idr1.sid_bits();
        let strtab = match format {
            StreamTableFormat::Linear { sid_bits } => Self::linear(dma, sid_bits.min(sid_bits_hw))?,
            StreamTableFormat::TwoLevel if idr0.two_level_stream_table() => {
                Self::two_level(dma, sid_bits_hw)?
            }
            StreamTableFormat::TwoLevel => {
                return Err(Error::Unsupported(
                    "two-level stream tables (IDR0.ST_LEVEL)",
                ));
            }
            StreamTableFormat::Auto => {
                if sid_bits_hw <= LINEAR_MAX_SID_BITS || !idr0.two_level_stream_table() {
                    Self::linear(dma, sid_bits_hw.min(LINEAR_MAX_SID_BITS))?
                } else {
                    Self::two_level(dma, sid_bits_hw)?
                }
            }
        };
        let cmdq_log2 = idr1.cmdq_log2().min(CMDQ_LOG2_MAX);
        let eventq_log2 = idr1.eventq_log2().min(EVENTQ_LOG2_MAX);
        let cmdq = CommandQueue::new(alloc_region(dma, CMD_BYTES << cmdq_log2)?, cmdq_log2);
        let eventq = Queue {
            region: alloc_region(dma, EVENT_BYTES << eventq_log2)?,
            log2: eventq_log2,
            prod: WrapIndex::new(eventq_log2),
            cons: WrapIndex::new(eventq_log2),
        };
        let mut smmu = Smmu {
            regs,
            clock,
            dma,
            features,
            cmdq,
            eventq,
            strtab,
            counters: Tally::default(),
            coalescer: Coalescer::new(),
            faults: Vec::new(),
            last_command_error: spin::Mutex::new(None),
            rejections: spin::Mutex::new(Vec::new()),
            owes_cfgi_all: AtomicBool::new(false),
            cmdq_recovery: spin::Mutex::new(()),
            walk,
            maintenance,
            enabled: false,
            irq: IrqCtrl::empty(),
        };
        smmu.publish_new_structures();
        smmu.bring_up()?;
        Ok(smmu)
    }

    /// A non-coherent SMMU reads DRAM: the zeroed stream table (V = 0, or
    /// Span = 0, everywhere) and command queue are written back before it may
    /// look, and the event queue's lines are written back and dropped, so
    /// that no dirty CPU line of it can later overwrite a record.
    fn publish_new_structures(&self) {
        let clean = self.clean();
        let table = match &self.strtab {
            StreamTable::Linear { region, .. } => region,
            StreamTable::TwoLevel { l1, .. } => l1,
        };
        table.clean(0, table.len(), clean);
        self.cmdq.region.clean(0, self.cmdq.region.len(), clean);
        self.invalidate(&self.eventq.region, 0, self.eventq.region.len());
    }

    fn linear(dma: &dyn DmaMemory, sid_bits: u32) -> Result<StreamTable, Error> {
        // Zeroed memory is V = 0 everywhere: every stream aborts and reports.
        Ok(StreamTable::Linear {
            region: alloc_region(dma, STE_BYTES << sid_bits)?,
            sid_bits,
        })
    }

    fn two_level(dma: &dyn DmaMemory, sid_bits: u32) -> Result<StreamTable, Error> {
        let l1_entries = 1usize << sid_bits.saturating_sub(TWO_LEVEL_SPLIT);
        // Zeroed L1 descriptors have Span = 0: invalid, no level-2 table.
        Ok(StreamTable::TwoLevel {
            l1: alloc_region(dma, l1_entries * core::mem::size_of::<L1Std>())?,
            sid_bits,
            l2: (0..l1_entries).map(|_| None).collect(),
        })
    }

    /// The ID registers.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// How the SMMU's accesses meet the CPU caches (IDR0.COHACC).
    pub fn walk(&self) -> Walk {
        self.walk
    }

    /// The cache clean memory the SMMU reads needs after a CPU write: none
    /// when it snoops.
    pub fn clean(&self) -> Option<CacheClean> {
        match self.walk {
            Walk::Coherent => None,
            Walk::NonCoherent => self.maintenance.map(|m| m.clean),
        }
    }

    /// Drops the CPU's copies of `len` bytes at `offset` in `region` before
    /// reading what the SMMU wrote there (nothing to do when it snoops).
    pub(crate) fn invalidate(&self, region: &DmaBuffer, offset: usize, len: usize) {
        if let (Walk::NonCoherent, Some(maintenance)) = (self.walk, self.maintenance) {
            region.invalidate(offset, len, Some(maintenance.invalidate));
        }
    }

    /// The work done since bring-up.
    pub fn counters(&self) -> Counters {
        self.counters.read()
    }

    /// The stream table has two levels.
    pub fn is_two_level(&self) -> bool {
        self.strtab.is_two_level()
    }

    /// StreamIDs the stream table covers.
    pub fn sid_bits(&self) -> u32 {
        self.strtab.sid_bits()
    }

    /// The last command the SMMU rejected, and why.
    pub fn last_command_error(&self) -> Option<CommandError> {
        *self.last_command_error.lock()
    }

    pub(crate) fn write32(&self, reg: os_services::mmio::Reg32, value: u32) {
        self.counters.add(|c| c.mmio_writes += 1);
        self.regs.write32(reg, value);
    }

    pub(crate) fn write64(&self, reg: os_services::mmio::Reg64, value: u64) {
        self.counters.add(|c| c.mmio_writes += 1);
        self.regs.write64(reg, value);
    }

    /// Writes CR0 and waits for CR0ACK to mirror it (§6.3.10).
    pub(crate) fn set_cr0(&mut self, value: Cr0) -> Result<(), Error> {
        self.write32(regs::CR0, value.bits());
        let regs = &self.regs;
        wait_until(self.clock, HW_TIMEOUT, || {
            (regs.read32(regs::CR0ACK) == value.bits()).then_some(())
        })
        .map_err(|_| Error::Timeout("CR0ACK"))
    }

    /// Sets GBPA and waits for the SMMU to clear UPDATE (§6.3.14).
    fn set_gbpa(&mut self, value: Gbpa) -> Result<(), Error> {
        let regs = &self.regs;
        wait_until(self.clock, HW_TIMEOUT, || {
            (!Gbpa::from_bits_retain(regs.read32(regs::GBPA)).contains(Gbpa::UPDATE)).then_some(())
        })
        .map_err(|_| Error::Timeout("GBPA.UPDATE before write"))?;
        self.write32(regs::GBPA, (value | Gbpa::UPDATE).bits());
        let regs = &self.regs;
        wait_until(self.clock, HW_TIMEOUT, || {
            (!Gbpa::from_bits_retain(regs.read32(regs::GBPA)).contains(Gbpa::UPDATE)).then_some(())
        })
        .map_err(|_| Error::Timeout("GBPA.UPDATE"))
    }

    fn bring_up(&mut self) -> Result<(), Error> {
        // Unknown traffic must never bypass, not even while SMMUEN is off.
        self.set_gbpa(Gbpa::ABORT)?;
        self.set_cr0(Cr0::empty())?;
        // Interrupts off until the owner installs handlers.
        self.write32(regs::IRQ_CTRL, 0);
        self.write32(regs::CR1, regs::cr1::for_walk(self.walk));
        self.write32(regs::CR2, (Cr2::RECINVSID | Cr2::PTM).bits());
        // Whatever GERROR holds from before is stale: acknowledge it.
        let active = self.regs.read32(regs::GERROR) ^ self.regs.read32(regs::GERRORN);
        if active != 0 {
            let acked = self.regs.read32(regs::GERRORN) ^ active;
            self.write32(regs::GERRORN, acked);
        }

        // Queues.
        let cmdq_base = (self.cmdq.region.phys() & regs::QUEUE_BASE_ADDR_MASK)
            | regs::BASE_ALLOCATE_HINT
            | u64::from(self.cmdq.log2);
        self.write64(regs::CMDQ_BASE, cmdq_base);
        self.write32(regs::CMDQ_PROD, 0);
        self.write32(regs::CMDQ_CONS, 0);
        let eventq_base = (self.eventq.region.phys() & regs::QUEUE_BASE_ADDR_MASK)
            | regs::BASE_ALLOCATE_HINT
            | u64::from(self.eventq.log2);
        self.write64(regs::EVENTQ_BASE, eventq_base);
        self.write32(regs::EVENTQ_PROD, 0);
        self.write32(regs::EVENTQ_CONS, 0);

        // Tables.
        let (base, cfg) = match &self.strtab {
            StreamTable::Linear { region, sid_bits } => (
                region.phys(),
                regs::StrtabBaseCfg::new(regs::StrtabBaseCfg::FMT_LINEAR, *sid_bits, 0),
            ),
            StreamTable::TwoLevel { l1, sid_bits, .. } => (
                l1.phys(),
                regs::StrtabBaseCfg::new(
                    regs::StrtabBaseCfg::FMT_TWO_LEVEL,
                    *sid_bits,
                    TWO_LEVEL_SPLIT,
                ),
            ),
        };
        dma_wmb();
        self.write64(
            regs::STRTAB_BASE,
            (base & regs::STRTAB_BASE_ADDR_MASK) | regs::BASE_ALLOCATE_HINT,
        );
        self.write32(regs::STRTAB_BASE_CFG, cfg.0);

        // Command queue on, then drop whatever configuration and TLB entries
        // a previous owner left cached.
        self.set_cr0(Cr0::CMDQEN)?;
        self.submit(&[Command::CFGI_ALL])?;
        if self.features.stage2() {
            self.submit(&[Command::TlbiS12Vmall { vmid: 0 }])?;
        }
        self.submit(&[Command::TlbiNsnhAll])?;
        self.sync()?;

        self.set_cr0(Cr0::CMDQEN | Cr0::EVENTQEN)?;
        self.set_cr0(Cr0::CMDQEN | Cr0::EVENTQEN | Cr0::SMMUEN)?;
        self.enabled = true;
        Ok(())
    }

    /// Turns translation off (traffic then aborts through GBPA) and the queues.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        self.enabled = false;
        self.set_cr0(Cr0::empty())
    }

    /// Recovers from a hung or disabled SMMU (a command that never completed,
    /// queues turned off): turns it off, rewinds both queues and brings it up
    /// again over the same stream table, so every installed STE and domain
    /// stays valid (CFGI_ALL makes the SMMU refetch them). Commands pending
    /// in the old queue are discarded: the caller retries what failed.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.enabled = false;
        self.set_cr0(Cr0::empty())?;
        self.cmdq.positions.restart();
        self.rejections.get_mut().clear();
        self.eventq.prod = WrapIndex::new(self.eventq.log2);
        self.eventq.cons = WrapIndex::new(self.eventq.log2);
        self.bring_up()?;
        if !self.irq.is_empty() {
            let irq = self.irq;
            self.enable_interrupts(
                irq.contains(IrqCtrl::EVENTQ_IRQEN),
                irq.contains(IrqCtrl::GERROR_IRQEN),
            )?;
        }
        Ok(())
    }

    /// Physical address of the command queue (memory no device may reach).
    pub fn command_queue_phys(&self) -> u64 {
        self.cmdq.region.phys()
    }

    /// Physical address of the event queue.
    pub fn event_queue_phys(&self) -> u64 {
        self.eventq.region.phys()
    }

    /// Enables the wired interrupts (§6.3.16): event queue and global errors.
    pub fn enable_interrupts(&mut self, eventq: bool, gerror: bool) -> Result<(), Error> {
        let mut value = IrqCtrl::empty();
        value.set(IrqCtrl::EVENTQ_IRQEN, eventq);
        value.set(IrqCtrl::GERROR_IRQEN, gerror);
        self.irq = value;
        self.write32(regs::IRQ_CTRL, value.bits());
        let regs = &self.regs;
        wait_until(self.clock, HW_TIMEOUT, || {
            (regs.read32(regs::IRQ_CTRLACK) == value.bits()).then_some(())
        })
        .map_err(|_| Error::Timeout("IRQ_CTRLACK"))
    }

    /// SMMU_GBPA as read back (§6.3.14).
    pub fn gbpa(&self) -> Gbpa {
        Gbpa::from_bits_retain(self.regs.read32(regs::GBPA))
    }

    /// SMMU_CR0ACK as read back (§6.3.10).
    pub fn cr0ack(&self) -> Cr0 {
        Cr0::from_bits_retain(self.regs.read32(regs::CR0ACK))
    }

    pub(crate) fn ack_gerror(&self, bits: Gerror) {
        let gerrorn = self.regs.read32(regs::GERRORN) ^ bits.bits();
        self.write32(regs::GERRORN, gerrorn);
    }
}

impl Drop for Smmu<'_> {
    fn drop(&mut self) {
        // The SMMU must stop reading the tables and queues before they are
        // freed; if it does not acknowledge, leak them rather than free memory
        // a device may still read.
        if self.set_cr0(Cr0::empty()).is_err() {
            return;
        }
        let dma = self.dma;
        self.cmdq.region.free(dma);
        self.eventq.region.free(dma);
        match &mut self.strtab {
            StreamTable::Linear { region, .. } => region.free(dma),
            StreamTable::TwoLevel { l1, l2, .. } => {
                l1.free(dma);
                for table in l2.iter_mut().filter_map(Option::take) {
                    table.free(dma);
                }
            }
        }
    }
}

/// What the contract's callers see of the instance's errors.
impl From<Error> for iommu::IommuError {
    fn from(err: Error) -> Self {
        match err {
            Error::NoMemory => iommu::IommuError::NoMemory,
            Error::Timeout(_) => iommu::IommuError::Timeout,
            Error::Unsupported(_) => iommu::IommuError::Unsupported,
            Error::BadStreamId(_) | Error::Encoding | Error::CommandRejected { .. } => {
                iommu::IommuError::Invalid
            }
        }
    }
}
