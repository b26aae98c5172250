//! One SMMUv3 instance: bring-up, the stream table, the command and event
//! queues, global errors.
//!
//! Bring-up follows SMMUv3 §3.21 / §6.3.9 (and Hafnium's order): global bypass
//! turned into abort first so that no stream ever bypasses, then the queues,
//! then the tables, then SMMUEN; every CR0 change is acknowledged through
//! CR0ACK within a bound.

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};
use core::time::Duration;

use os_services::mmio::Mmio;
use os_services::{Clock, DmaMemory, DmaRegion, wait_until};

use crate::command::{Command, RawCommand};
use crate::device_table::ste::{L1Std, Ste, StreamConfig};
use crate::fault::{Coalescer, Event, Fault, RawEvent};
use crate::queue::{self, QueueIndex};
use crate::regs::{self, CommandError, Cr0, Cr2, Gbpa, Gerror, Idr0, Idr1, Idr3, Idr5, IrqCtrl};

/// Bound on every register acknowledgement and command completion.
const HW_TIMEOUT: Duration = Duration::from_millis(100);

/// Queue sizes the driver uses at most (entries, log2): small, fixed, enough
/// for the batches the driver issues.
const CMDQ_LOG2_MAX: u32 = 8;
const EVENTQ_LOG2_MAX: u32 = 7;
const CMD_BYTES: usize = 16;
const EVENT_BYTES: usize = 32;
const STE_BYTES: usize = 64;

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
    Linear { sid_bits: u32 },
    /// Two-level over every StreamID IDR1.SIDSIZE allows.
    TwoLevel,
}

/// What the ID registers say (SMMUv3 §6.3.1-§6.3.8), decoded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub idr: [u32; 6],
    pub iidr: u32,
    pub aidr: u32,
}

impl Features {
    pub fn idr0(&self) -> Idr0 {
        Idr0::from_bits_retain(self.idr[0])
    }
    pub fn idr1(&self) -> Idr1 {
        Idr1(self.idr[1])
    }
    pub fn idr3(&self) -> Idr3 {
        Idr3::from_bits_retain(self.idr[3])
    }
    pub fn idr5(&self) -> Idr5 {
        Idr5(self.idr[5])
    }
    pub fn stage1(&self) -> bool {
        self.idr0().contains(Idr0::S1P)
    }
    pub fn stage2(&self) -> bool {
        self.idr0().contains(Idr0::S2P)
    }
    pub fn range_invalidation(&self) -> bool {
        self.idr3().contains(Idr3::RIL)
    }
}

/// Why the driver failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The ID registers describe something the driver cannot drive.
    Unsupported(&'static str),
    NoMemory,
    /// A register acknowledgement or command completion did not arrive.
    Timeout(&'static str),
    /// The SMMU rejected a command (CMDQ_CONS.ERR); the queue was recovered.
    CommandRejected {
        error: CommandError,
        opcode: u8,
    },
    /// The StreamID is outside the stream table.
    BadStreamId(u32),
    /// An STE or CD could not be encoded.
    Encoding,
}

/// Plain counters of the work the driver did, for the figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every command written to the queue, CMD_SYNC included.
    pub commands: u64,
    pub syncs: u64,
    pub tlbi: u64,
    pub cfgi: u64,
    /// MMIO register writes (PROD doorbells, CONS updates, control registers).
    pub mmio_writes: u64,
    /// Commands the SMMU rejected (CERROR) and the driver skipped.
    pub command_errors: u64,
    /// Event records read from the event queue.
    pub events: u64,
    /// Times the event queue overflowed (PROD.OVFLG or GERROR.EVENTQ_ABT_ERR).
    pub event_overflows: u64,
    /// Global errors seen (any GERROR bit).
    pub global_errors: u64,
}

/// A device-visible region with bounds-checked 64-bit access.
struct Region(DmaRegion);

impl Region {
    fn alloc(dma: &dyn DmaMemory, len: usize) -> Result<Self, Error> {
        let align = len.next_power_of_two().max(4096);
        dma.alloc(len, align).map(Region).ok_or(Error::NoMemory)
    }

    fn word(&self, index: usize) -> *mut u64 {
        assert!(
            (index + 1) * 8 <= self.0.len,
            "DMA region access out of bounds"
        );
        // SAFETY: in bounds (checked above) of a region this driver owns;
        // regions are frame aligned, so the pointer is 8-byte aligned.
        unsafe { self.0.virt.cast::<u64>().add(index) }
    }

    fn write(&self, index: usize, value: u64) {
        // SAFETY: `word` returns an aligned in-bounds pointer into owned memory;
        // volatile because the SMMU reads it behind the compiler's back.
        unsafe { core::ptr::write_volatile(self.word(index), value) }
    }

    fn read(&self, index: usize) -> u64 {
        // SAFETY: as in `write`; the SMMU writes event records here.
        unsafe { core::ptr::read_volatile(self.word(index)) }
    }
}

struct Queue {
    region: Region,
    log2: u32,
    prod: QueueIndex,
    cons: QueueIndex,
}

enum StreamTable {
    Linear {
        region: Region,
        sid_bits: u32,
    },
    TwoLevel {
        l1: Region,
        sid_bits: u32,
        l2: Vec<Option<Region>>,
    },
}

impl StreamTable {
    fn sid_bits(&self) -> u32 {
        match self {
            StreamTable::Linear { sid_bits, .. } | StreamTable::TwoLevel { sid_bits, .. } => {
                *sid_bits
            }
        }
    }

    fn is_two_level(&self) -> bool {
        matches!(self, StreamTable::TwoLevel { .. })
    }
}

/// Where in the stream table the STE of a StreamID lives.
struct SteSlot<'r> {
    region: &'r Region,
    first_word: usize,
}

impl SteSlot<'_> {
    fn read(&self) -> Ste {
        let mut ste = Ste::default();
        for (i, word) in ste.0.iter_mut().enumerate() {
            *word = self.region.read(self.first_word + i);
        }
        ste
    }
    fn write_word(&self, i: usize, value: u64) {
        self.region.write(self.first_word + i, value)
    }
}

/// Which STE words the SMMU reads for a configuration (SMMUv3 §5.2 and the
/// "used bits" rule of hitless updates, §3.21.3): a word it does not read may
/// change at any time.
fn used_words(ste: &Ste) -> u8 {
    if !ste.is_valid() {
        return 0b1;
    }
    match ste.config() {
        Some(StreamConfig::Abort) | None => 0b1,
        Some(StreamConfig::Bypass) | Some(StreamConfig::Stage1) => 0b11,
        Some(StreamConfig::Stage2) | Some(StreamConfig::Nested) => 0b1111,
    }
}

/// The steps of an STE update: which words to write, then whether a
/// single-word switch suffices (hitless) or an abort step is needed first.
#[derive(Debug, PartialEq, Eq)]
pub enum SteUpdate {
    /// Write the unused words, then this one word: one CFGI_STE + CMD_SYNC.
    Hitless { switch_word: Option<usize> },
    /// Word 0 to "abort", sync, every other word, word 0, sync.
    ThroughAbort,
}

/// Decides how to move a live STE from `current` to `target` without a
/// window in which it bypasses or uses a torn mix of both.
pub fn plan_ste_update(current: &Ste, target: &Ste) -> SteUpdate {
    let used = used_words(current);
    let differing: Vec<usize> = (0..8)
        .filter(|&i| used & (1 << i) != 0 && current.0[i] != target.0[i])
        .collect();
    match differing.as_slice() {
        [] => SteUpdate::Hitless { switch_word: None },
        [one] => SteUpdate::Hitless {
            switch_word: Some(*one),
        },
        _ => SteUpdate::ThroughAbort,
    }
}

/// One SMMUv3 with its queues and stream table in memory.
pub struct Smmu<'a> {
    regs: Mmio,
    clock: &'a dyn Clock,
    dma: &'a dyn DmaMemory,
    features: Features,
    cmdq: Queue,
    eventq: Queue,
    strtab: StreamTable,
    counters: Counters,
    coalescer: Coalescer,
    /// Faults drained and not yet taken by the owner.
    faults: Vec<Fault>,
    last_command_error: Option<CommandError>,
    enabled: bool,
    /// Interrupts the owner enabled, restored by [`Smmu::restart`].
    irq: IrqCtrl,
}

impl<'a> Smmu<'a> {
    /// Reads the ID registers and brings the SMMU up with every stream
    /// invalid (aborting, reported as C_BAD_STE).
    pub fn new(
        regs: Mmio,
        clock: &'a dyn Clock,
        dma: &'a dyn DmaMemory,
        format: StreamTableFormat,
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
        let cmdq = Queue {
            region: Region::alloc(dma, CMD_BYTES << cmdq_log2)?,
            log2: cmdq_log2,
            prod: QueueIndex::new(cmdq_log2),
            cons: QueueIndex::new(cmdq_log2),
        };
        let eventq = Queue {
            region: Region::alloc(dma, EVENT_BYTES << eventq_log2)?,
            log2: eventq_log2,
            prod: QueueIndex::new(eventq_log2),
            cons: QueueIndex::new(eventq_log2),
        };
        let mut smmu = Smmu {
            regs,
            clock,
            dma,
            features,
            cmdq,
            eventq,
            strtab,
            counters: Counters::default(),
            coalescer: Coalescer::new(),
            faults: Vec::new(),
            last_command_error: None,
            enabled: false,
            irq: IrqCtrl::empty(),
        };
        smmu.bring_up()?;
        Ok(smmu)
    }

    fn linear(dma: &dyn DmaMemory, sid_bits: u32) -> Result<StreamTable, Error> {
        // Zeroed memory is V = 0 everywhere: every stream aborts and reports.
        Ok(StreamTable::Linear {
            region: Region::alloc(dma, STE_BYTES << sid_bits)?,
            sid_bits,
        })
    }

    fn two_level(dma: &dyn DmaMemory, sid_bits: u32) -> Result<StreamTable, Error> {
        let l1_entries = 1usize << sid_bits.saturating_sub(TWO_LEVEL_SPLIT);
        // Zeroed L1 descriptors have Span = 0: invalid, no level-2 table.
        Ok(StreamTable::TwoLevel {
            l1: Region::alloc(dma, l1_entries * core::mem::size_of::<L1Std>())?,
            sid_bits,
            l2: (0..l1_entries).map(|_| None).collect(),
        })
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn is_two_level(&self) -> bool {
        self.strtab.is_two_level()
    }

    /// StreamIDs the stream table covers.
    pub fn sid_bits(&self) -> u32 {
        self.strtab.sid_bits()
    }

    pub fn last_command_error(&self) -> Option<CommandError> {
        self.last_command_error
    }

    fn write32(&mut self, reg: os_services::mmio::Reg32, value: u32) {
        self.counters.mmio_writes += 1;
        self.regs.write32(reg, value);
    }

    fn write64(&mut self, reg: os_services::mmio::Reg64, value: u64) {
        self.counters.mmio_writes += 1;
        self.regs.write64(reg, value);
    }

    /// Writes CR0 and waits for CR0ACK to mirror it (§6.3.10).
    fn set_cr0(&mut self, value: Cr0) -> Result<(), Error> {
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
        self.write32(regs::CR1, regs::cr1::coherent());
        self.write32(regs::CR2, (Cr2::RECINVSID | Cr2::PTM).bits());
        // Whatever GERROR holds from before is stale: acknowledge it.
        let active = self.regs.read32(regs::GERROR) ^ self.regs.read32(regs::GERRORN);
        if active != 0 {
            let acked = self.regs.read32(regs::GERRORN) ^ active;
            self.write32(regs::GERRORN, acked);
        }

        // Queues.
        let cmdq_base = (self.cmdq.region.0.phys & regs::QUEUE_BASE_ADDR_MASK)
            | regs::BASE_ALLOCATE_HINT
            | u64::from(self.cmdq.log2);
        self.write64(regs::CMDQ_BASE, cmdq_base);
        self.write32(regs::CMDQ_PROD, 0);
        self.write32(regs::CMDQ_CONS, 0);
        let eventq_base = (self.eventq.region.0.phys & regs::QUEUE_BASE_ADDR_MASK)
            | regs::BASE_ALLOCATE_HINT
            | u64::from(self.eventq.log2);
        self.write64(regs::EVENTQ_BASE, eventq_base);
        self.write32(regs::EVENTQ_PROD, 0);
        self.write32(regs::EVENTQ_CONS, 0);

        // Tables.
        let (base, cfg) = match &self.strtab {
            StreamTable::Linear { region, sid_bits } => (
                region.0.phys,
                regs::StrtabBaseCfg::new(regs::StrtabBaseCfg::FMT_LINEAR, *sid_bits, 0),
            ),
            StreamTable::TwoLevel { l1, sid_bits, .. } => (
                l1.0.phys,
                regs::StrtabBaseCfg::new(
                    regs::StrtabBaseCfg::FMT_TWO_LEVEL,
                    *sid_bits,
                    TWO_LEVEL_SPLIT,
                ),
            ),
        };
        fence(Ordering::SeqCst);
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
        self.cmdq.prod = QueueIndex::new(self.cmdq.log2);
        self.cmdq.cons = QueueIndex::new(self.cmdq.log2);
        self.eventq.prod = QueueIndex::new(self.eventq.log2);
        self.eventq.cons = QueueIndex::new(self.eventq.log2);
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
        self.cmdq.region.0.phys
    }

    /// Physical address of the event queue.
    pub fn event_queue_phys(&self) -> u64 {
        self.eventq.region.0.phys
    }

    /// Physical address of the STE of `sid`, if its table exists.
    pub fn ste_phys(&self, sid: u32) -> Option<u64> {
        if sid >= 1 << self.strtab.sid_bits() {
            return None;
        }
        let (region, index) = match &self.strtab {
            StreamTable::Linear { region, .. } => (region, sid as usize),
            StreamTable::TwoLevel { l2, .. } => (
                l2.get((sid >> TWO_LEVEL_SPLIT) as usize)?.as_ref()?,
                sid as usize & ((1 << TWO_LEVEL_SPLIT) - 1),
            ),
        };
        Some(region.0.phys + (index * STE_BYTES) as u64)
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

    fn refresh_cmdq_cons(&mut self) -> u32 {
        let raw = self.regs.read32(regs::CMDQ_CONS);
        self.cmdq.cons = QueueIndex::from_register(self.cmdq.log2, raw);
        raw
    }

    /// Writes commands into the queue and rings the doorbell once; waits
    /// (bounded) for room when the queue is full.
    pub fn submit(&mut self, commands: &[Command]) -> Result<(), Error> {
        let raw: Vec<RawCommand> = commands.iter().map(Command::encode).collect();
        for command in commands {
            self.counters.commands += 1;
            match command {
                Command::Sync => self.counters.syncs += 1,
                Command::CfgiSte { .. }
                | Command::CfgiSteRange { .. }
                | Command::CfgiCd { .. }
                | Command::CfgiCdAll { .. } => self.counters.cfgi += 1,
                _ => self.counters.tlbi += 1,
            }
        }
        self.submit_raw(&raw)
    }

    /// Submits pre-encoded commands (also used for user-provided nested
    /// invalidations and to provoke CERROR in tests).
    pub fn submit_raw(&mut self, commands: &[RawCommand]) -> Result<(), Error> {
        for command in commands {
            if queue::is_full(self.cmdq.prod, self.cmdq.cons) {
                self.refresh_cmdq_cons();
                if queue::is_full(self.cmdq.prod, self.cmdq.cons) {
                    // Let the SMMU consume what is there before adding more.
                    self.ring_cmdq();
                    self.wait_cmdq_drained()?;
                }
            }
            let slot = self.cmdq.prod.slot();
            self.cmdq.region.write(slot * 2, command.0[0]);
            self.cmdq.region.write(slot * 2 + 1, command.0[1]);
            self.cmdq.prod = self.cmdq.prod.next();
        }
        self.ring_cmdq();
        Ok(())
    }

    fn ring_cmdq(&mut self) {
        // The entries must be visible to the SMMU before the doorbell.
        fence(Ordering::SeqCst);
        let prod = self.cmdq.prod.register();
        self.write32(regs::CMDQ_PROD, prod);
    }

    /// Issues CMD_SYNC and waits (bounded) for the SMMU to consume everything
    /// up to it. A rejected command is skipped (CERROR recovery, §7.1) and
    /// reported after the queue has drained.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.submit(&[Command::Sync])?;
        self.wait_cmdq_drained()
    }

    /// Submits `commands` and a CMD_SYNC behind one doorbell write, then waits
    /// for completion as [`Smmu::sync`] does (command batching).
    pub fn execute(&mut self, commands: &[Command]) -> Result<(), Error> {
        let mut batch = Vec::with_capacity(commands.len() + 1);
        batch.extend_from_slice(commands);
        batch.push(Command::Sync);
        self.submit(&batch)?;
        self.wait_cmdq_drained()
    }

    fn wait_cmdq_drained(&mut self) -> Result<(), Error> {
        let mut rejected = None;
        let start = self.clock.now_ns();
        let bound = HW_TIMEOUT.as_nanos() as u64;
        loop {
            let raw = self.refresh_cmdq_cons();
            if queue::is_empty(self.cmdq.prod, self.cmdq.cons) {
                break;
            }
            if self.active_gerror().contains(Gerror::CMDQ_ERR) {
                rejected = Some(self.recover_command_error(raw));
                continue;
            }
            if self.clock.now_ns().saturating_sub(start) > bound {
                return Err(Error::Timeout("CMD_SYNC"));
            }
            self.clock.relax();
        }
        match rejected {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// SMMU_GBPA as read back (§6.3.14).
    pub fn gbpa(&self) -> Gbpa {
        Gbpa::from_bits_retain(self.regs.read32(regs::GBPA))
    }

    /// SMMU_CR0ACK as read back (§6.3.10).
    pub fn cr0ack(&self) -> Cr0 {
        Cr0::from_bits_retain(self.regs.read32(regs::CR0ACK))
    }

    /// GERROR bits that are active: different from GERRORN (§6.3.18).
    pub fn active_gerror(&self) -> Gerror {
        Gerror::from_bits_retain(self.regs.read32(regs::GERROR) ^ self.regs.read32(regs::GERRORN))
    }

    fn ack_gerror(&mut self, bits: Gerror) {
        let gerrorn = self.regs.read32(regs::GERRORN) ^ bits.bits();
        self.write32(regs::GERRORN, gerrorn);
    }

    /// The command at CONS was rejected: overwrite it with a CMD_SYNC (which
    /// cannot fail) and acknowledge, so that the queue resumes (§7.1).
    fn recover_command_error(&mut self, cons_raw: u32) -> Error {
        let error = CommandError::from_cons(cons_raw);
        let slot = self.cmdq.cons.slot();
        let opcode = (self.cmdq.region.read(slot * 2) & 0xFF) as u8;
        let replacement = Command::Sync.encode();
        self.cmdq.region.write(slot * 2, replacement.0[0]);
        self.cmdq.region.write(slot * 2 + 1, replacement.0[1]);
        fence(Ordering::SeqCst);
        self.counters.command_errors += 1;
        self.counters.global_errors += 1;
        self.last_command_error = Some(error);
        self.ack_gerror(Gerror::CMDQ_ERR);
        Error::CommandRejected { error, opcode }
    }

    /// Handles global errors other than CMDQ_ERR (which `sync` recovers):
    /// acknowledges them and returns what was active.
    pub fn handle_global_errors(&mut self) -> Gerror {
        let active = self.active_gerror() - Gerror::CMDQ_ERR;
        if !active.is_empty() {
            self.counters.global_errors += 1;
            if active.contains(Gerror::EVENTQ_ABT_ERR) {
                self.counters.event_overflows += 1;
            }
            self.ack_gerror(active);
        }
        active
    }

    /// The STE slot of `sid`, creating its level-2 table on demand.
    fn ste_slot(&mut self, sid: u32) -> Result<SteSlot<'_>, Error> {
        if sid >= 1 << self.strtab.sid_bits() {
            return Err(Error::BadStreamId(sid));
        }
        let mut new_l2 = None;
        if let StreamTable::TwoLevel { l2, .. } = &self.strtab {
            let index = (sid >> TWO_LEVEL_SPLIT) as usize;
            if l2[index].is_none() {
                new_l2 = Some(index);
            }
        }
        if let Some(index) = new_l2 {
            // A zeroed level-2 table (every STE V = 0), published through its
            // L1 descriptor only once complete.
            let table = Region::alloc(self.dma, STE_BYTES << TWO_LEVEL_SPLIT)?;
            let desc = L1Std::new(table.0.phys, TWO_LEVEL_SPLIT).ok_or(Error::Encoding)?;
            fence(Ordering::SeqCst);
            if let StreamTable::TwoLevel { l1, l2, .. } = &mut self.strtab {
                l1.write(index, desc.0);
                l2[index] = Some(table);
            }
            // The L1 descriptor is configuration the SMMU may cache.
            self.submit(&[Command::CfgiSteRange {
                sid: sid & !((1 << TWO_LEVEL_SPLIT) - 1),
                range: (TWO_LEVEL_SPLIT - 1) as u8,
            }])?;
        }
        let slot = match &self.strtab {
            StreamTable::Linear { region, .. } => SteSlot {
                region,
                first_word: sid as usize * 8,
            },
            StreamTable::TwoLevel { l2, .. } => {
                let index = (sid >> TWO_LEVEL_SPLIT) as usize;
                let region = l2[index].as_ref().ok_or(Error::NoMemory)?;
                SteSlot {
                    region,
                    first_word: (sid as usize & ((1 << TWO_LEVEL_SPLIT) - 1)) * 8,
                }
            }
        };
        Ok(slot)
    }

    /// The STE currently installed for `sid`.
    pub fn read_ste(&mut self, sid: u32) -> Result<Ste, Error> {
        Ok(self.ste_slot(sid)?.read())
    }

    /// Installs `target` as the STE of `sid` so that the stream never sees a
    /// torn or bypassing entry (§3.21.3), then makes the SMMU refetch it
    /// (CFGI_STE + CMD_SYNC).
    pub fn write_ste(&mut self, sid: u32, target: &Ste) -> Result<(), Error> {
        let current = self.ste_slot(sid)?.read();
        let cfgi = Command::CfgiSte { sid, leaf: true };
        match plan_ste_update(&current, target) {
            SteUpdate::Hitless { switch_word } => {
                let used = used_words(&current);
                {
                    let slot = self.ste_slot(sid)?;
                    for i in (0..8).filter(|i| used & (1 << i) == 0) {
                        slot.write_word(i, target.0[i]);
                    }
                    fence(Ordering::SeqCst);
                    if let Some(i) = switch_word {
                        slot.write_word(i, target.0[i]);
                    }
                }
                self.execute(&[cfgi])
            }
            SteUpdate::ThroughAbort => {
                {
                    let slot = self.ste_slot(sid)?;
                    slot.write_word(0, Ste::abort().0[0]);
                }
                self.execute(&[cfgi])?;
                {
                    let slot = self.ste_slot(sid)?;
                    for i in 1..8 {
                        slot.write_word(i, target.0[i]);
                    }
                    fence(Ordering::SeqCst);
                    slot.write_word(0, target.0[0]);
                }
                self.execute(&[cfgi])
            }
        }
    }

    /// Writes the abort configuration into word 0 of the STE of `sid` without
    /// telling the SMMU (no CFGI_STE): for when the command queue is hung
    /// and an STE update may have stopped half-way. Abort reads only word 0
    /// (§5.2), so the entry is whole whatever the other words hold.
    pub fn abort_ste_unsynced(&mut self, sid: u32) {
        if let Some(phys) = self.ste_phys(sid) {
            let slot = match &self.strtab {
                StreamTable::Linear { region, .. } => Some(region),
                StreamTable::TwoLevel { l2, .. } => l2
                    .get((sid >> TWO_LEVEL_SPLIT) as usize)
                    .and_then(Option::as_ref),
            };
            if let Some(region) = slot {
                let word = ((phys - region.0.phys) / 8) as usize;
                fence(Ordering::SeqCst);
                region.write(word, Ste::abort().0[0]);
                fence(Ordering::SeqCst);
            }
        }
    }

    /// Reads every pending event record, coalesces them into faults and
    /// detects overflow (§7.4 EVENTQ_PROD.OVFLG; QEMU reports a full queue as
    /// GERROR.EVENTQ_ABT_ERR). Returns the number of records read.
    pub fn drain_events(&mut self) -> usize {
        let prod_raw = self.regs.read32(regs::EVENTQ_PROD);
        let prod = QueueIndex::from_register(self.eventq.log2, prod_raw);
        let mut read = 0;
        while !queue::is_empty(prod, self.eventq.cons) {
            let slot = self.eventq.cons.slot();
            let mut raw = RawEvent::default();
            for (i, word) in raw.0.iter_mut().enumerate() {
                *word = self.eventq.region.read(slot * 4 + i);
            }
            self.coalescer.push(Event::decode(&raw), &mut self.faults);
            self.eventq.cons = self.eventq.cons.next();
            read += 1;
        }
        self.coalescer.finish(&mut self.faults);
        self.counters.events += read as u64;
        // Acknowledge an overflow by copying OVFLG into OVACKFLG.
        const OVERFLOW: u32 = 1 << 31;
        let cons_raw = self.regs.read32(regs::EVENTQ_CONS);
        if (prod_raw ^ cons_raw) & OVERFLOW != 0 {
            self.counters.event_overflows += 1;
        }
        let value = self.eventq.cons.register() | (prod_raw & OVERFLOW);
        if read > 0 || (prod_raw ^ cons_raw) & OVERFLOW != 0 {
            self.write32(regs::EVENTQ_CONS, value);
        }
        if self.active_gerror().contains(Gerror::EVENTQ_ABT_ERR) {
            self.handle_global_errors();
        }
        read
    }

    /// Takes the faults drained so far.
    pub fn take_faults(&mut self) -> Vec<Fault> {
        core::mem::take(&mut self.faults)
    }

    /// Takes the drained faults of the StreamIDs `owns` accepts, leaving the others.
    pub fn take_faults_where(&mut self, mut owns: impl FnMut(u32) -> bool) -> Vec<Fault> {
        let (mine, rest) = core::mem::take(&mut self.faults)
            .into_iter()
            .partition(|fault| owns(fault.event.sid));
        self.faults = rest;
        mine
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
        dma.free(self.cmdq.region.0);
        dma.free(self.eventq.region.0);
        match &mut self.strtab {
            StreamTable::Linear { region, .. } => dma.free(region.0),
            StreamTable::TwoLevel { l1, l2, .. } => {
                dma.free(l1.0);
                for table in l2.iter_mut().filter_map(Option::take) {
                    dma.free(table.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_table::ste::Stage2Config;
    use crate::regs::Granule;

    fn s2(vmid: u16) -> Ste {
        Ste::translate(
            None,
            Some(&Stage2Config {
                vmid,
                root: 0x4000_0000,
                granule: Granule::K4,
                ias_bits: 40,
                start_level: 1,
                ps_encoding: 4,
            }),
        )
        .unwrap()
    }

    #[test]
    fn from_invalid_or_abort_is_one_switch_of_word_0() {
        let target = Ste::translate(Some(0x4000_0040), None).unwrap();
        assert_eq!(
            plan_ste_update(&Ste::INVALID, &target),
            SteUpdate::Hitless {
                switch_word: Some(0)
            }
        );
        assert_eq!(
            plan_ste_update(&Ste::abort(), &s2(1)),
            SteUpdate::Hitless {
                switch_word: Some(0)
            }
        );
    }

    #[test]
    fn to_abort_is_one_switch_and_between_domains_goes_through_abort() {
        assert_eq!(
            plan_ste_update(&s2(1), &Ste::abort()),
            SteUpdate::ThroughAbort,
            "word 1 and 2 differ as well"
        );
        assert_eq!(
            plan_ste_update(&Ste::bypass(), &Ste::abort()),
            SteUpdate::ThroughAbort
        );
        // Same config, only the VMID (word 2) changes: hitless.
        assert_eq!(
            plan_ste_update(&s2(1), &s2(2)),
            SteUpdate::Hitless {
                switch_word: Some(2)
            }
        );
        // Stage 1 with a new CD pointer: word 0 only.
        let a = Ste::translate(Some(0x4000_0040), None).unwrap();
        let b = Ste::translate(Some(0x4000_0080), None).unwrap();
        assert_eq!(
            plan_ste_update(&a, &b),
            SteUpdate::Hitless {
                switch_word: Some(0)
            }
        );
        assert_eq!(
            plan_ste_update(&a, &a),
            SteUpdate::Hitless { switch_word: None }
        );
    }
}
