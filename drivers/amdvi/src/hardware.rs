//! The hardware instance of one AMD-Vi IOMMU: its register block, device table,
//! command buffer, event log and interrupt remapping tables (AMD IOMMU §2, §3.4).
//! Command submission lives with the commands in `command.rs`, the event-log
//! reader in `fault.rs`, the interrupt remapping tables in `interrupt.rs`; the
//! domains and the `IommuUnit` contract over this instance in `unit.rs`.
//!
//! Bring-up order (AMD IOMMU §2.1 and §3.4): with the IOMMU disabled, program the
//! device table (every entry blocked), the command buffer and the event log, then set
//! CmdBufEn + EventLogEn + IommuEn and invalidate everything the IOMMU might have
//! cached. Every wait on the hardware is bounded (`os_services::wait_until`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::time::Duration;

use iommu::{DeviceId, IommuError};
use iommu_kit::{DmaBuffer, SharedRing, SlotRing, Tally};
use os_services::mmio::Mmio;
use os_services::{Clock, DmaMemory, wait_until};

use crate::command::Command;
use crate::device_table::Dte;
use crate::discovery::UnitDescription;
use crate::fault::Event;
use crate::regs::{
    self, CapabilityHeader, Control, DeviceTableBase, ExtendedFeatures, RingBase, Status,
};

mod device_table;
mod faults;
mod interrupts;
mod queue;

pub(crate) const PAGE_SIZE: usize = 4096;
/// 256 entries = one 4 KiB page for both rings (the minimum, §3.4.2/§3.4.3).
pub(crate) const RING_LOG2: u32 = 8;
/// How long a COMPLETION_WAIT may take before the command buffer counts as stuck.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// How long an event-log entry the tail already covers may read as zero
/// (erratum 732, below).
pub(crate) const EVENT_ENTRY_TIMEOUT: Duration = Duration::from_millis(1);
/// How long a Control-register change may take to show in Status.
pub(crate) const STATUS_TIMEOUT: Duration = Duration::from_millis(10);
/// Entries of a per-device interrupt remapping table (IntTabLen = 8).
pub(crate) const IRT_LOG2: u8 = 8;
/// Events read from the log that the unit has not taken yet, at most: the
/// unit takes them whenever it looks for faults, so this bounds only a unit
/// that never does.
pub(crate) const EVENT_BACKLOG: usize = 2048;

/// Why the unit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitError {
    /// Out of memory for a table or buffer.
    NoMemory,
    /// The EFR says the IOMMU cannot do what the driver needs.
    Unsupported,
    /// The command buffer did not complete a COMPLETION_WAIT in time; the pending
    /// commands were discarded and the buffer restarted. `stopped` is whether the
    /// IOMMU had halted command processing (CmdBufRun=0), `illegal_at` the address of
    /// the command the event log named as illegal, if it did.
    CommandTimeout {
        /// CmdBufRun was clear.
        stopped: bool,
        /// The command the event log named as illegal.
        illegal_at: Option<u64>,
    },
    /// The event log reported an ILLEGAL_COMMAND_ERROR for the command at this
    /// physical address (found after the batch completed).
    IllegalCommand {
        /// Where the command sat.
        address: u64,
    },
    /// A Control-register change never showed in Status.
    StatusTimeout {
        /// The bits that never showed.
        expected: Status,
    },
    /// A pointer register held an impossible value.
    BadRingPointer(u64),
    /// A device or table field is out of range.
    Invalid,
}

impl From<UnitError> for IommuError {
    fn from(err: UnitError) -> Self {
        match err {
            UnitError::NoMemory => IommuError::NoMemory,
            UnitError::Unsupported => IommuError::Unsupported,
            UnitError::Invalid => IommuError::Invalid,
            _ => IommuError::Timeout,
        }
    }
}

iommu_kit::counters! {
    /// What the driver has done to the hardware, for the figures and for tests.
    pub struct Counters {
        /// Commands submitted.
        pub commands,
        /// COMPLETION_WAIT commands.
        pub completion_waits,
        /// Batches whose wait was another submitter's COMPLETION_WAIT,
        /// queued after them (several CPUs' commands, one wait).
        pub shared_waits,
        /// INVALIDATE_DEVTAB_ENTRY commands.
        pub invalidate_devtab_entry,
        /// INVALIDATE_IOMMU_PAGES commands.
        pub invalidate_iommu_pages,
        /// INVALIDATE_INTERRUPT_TABLE commands.
        pub invalidate_interrupt_table,
        /// INVALIDATE_IOMMU_ALL commands.
        pub invalidate_all,
        /// Writes of COMMAND_TAIL (one per submitted batch).
        pub tail_writes,
        /// Every MMIO register write.
        pub mmio_writes,
        /// Event log entries read.
        pub events,
        /// Times the event log overflowed (Status.EventOverflow).
        pub event_overflows,
        /// Command batches that failed (timeout or illegal command).
        pub command_errors,
        /// Fault records discarded because their queue held `FAULT_QUEUE_CAPACITY`.
        pub dropped_faults,
    }
}

/// A device's interrupt remapping table.
pub(crate) struct InterruptTable {
    region: DmaBuffer,
    /// The indexes device MSI routes hold ([`iommu::IommuUnit::route_msi`]).
    pub(crate) routes: BTreeSet<u16>,
}

/// The hardware instance of one AMD-Vi IOMMU. It does what it is told (write
/// this DTE, run these commands, read the event log) and knows nothing of
/// domains; [`crate::unit::AmdVi`] decides.
pub struct Hardware {
    regs: Mmio,
    dma: &'static (dyn DmaMemory + Sync),
    clock: &'static (dyn Clock + Sync),
    pub(crate) description: UnitDescription,
    capability: CapabilityHeader,
    pub(crate) efr: ExtendedFeatures,
    pub(crate) efr2: u64,
    device_table: DmaBuffer,
    pub(crate) device_table_entries: u32,
    pub(crate) command_buffer: DmaBuffer,
    pub(crate) command_ring: SlotRing,
    /// Positions of the command buffer shared by its submitters (claims,
    /// the tail published, the head observed).
    pub(crate) command_queue: SharedRing,
    event_log: DmaBuffer,
    event_ring: SlotRing,
    /// One page of COMPLETION_WAIT store targets: a quadword per command
    /// slot, so that each submitter's wait stores to a word of its own.
    pub(crate) completion: DmaBuffer,
    /// CONTROL as last written; held across a sequence that turns a part
    /// off and on again (recovering the command buffer or the event log),
    /// so that CPUs doing so at once do not undo each other.
    control: spin::Mutex<Control>,
    pub(crate) counters: Tally<Counters>,
    pub(crate) interrupt_tables: BTreeMap<u16, InterruptTable>,
    /// The event log's head and the events read from it: several CPUs
    /// read the log (each after its own batch), one at a time.
    event_log_state: spin::Mutex<EventLogState>,
    /// Held while the command buffer is repaired (a bad command skipped, or
    /// everything pending dropped), one CPU at a time; holds the number of
    /// the first event a later skip may rely on.
    command_recovery: spin::Mutex<u64>,
    /// Addresses of bad commands skipped, until the caller whose batch
    /// holds one collects it as its error.
    skipped_commands: spin::Mutex<Vec<u64>>,
}

/// What the driver knows of the event log.
#[derive(Default)]
struct EventLogState {
    /// The log's head as last written.
    head: u64,
    /// Events read from the log and not yet taken by the unit (which routes
    /// device faults to their domains); at most [`EVENT_BACKLOG`].
    backlog: Vec<Event>,
    /// Events ever put in the backlog: the first of `backlog` is number
    /// `added - backlog.len()`, which lets a submitter find the events
    /// read since it published its batch, whoever read them.
    added: u64,
}

// SAFETY: the instance owns its register block and DMA regions exclusively.
// What several CPUs reach through `&self` (the command buffer's positions,
// counters, CONTROL and the event log) is behind atomics or locks; the DMA
// regions are only written at slots a caller claimed.
unsafe impl Send for Hardware {}
// SAFETY: as for `Send`.
unsafe impl Sync for Hardware {}

impl Hardware {
    /// Brings up the IOMMU `description` names, whose registers `regs` maps, with every
    /// requester blocked. `capability` is the first dword of its PCI capability block
    /// (NpCache lives there).
    pub fn new(
        description: UnitDescription,
        regs: Mmio,
        capability: CapabilityHeader,
        dma: &'static (dyn DmaMemory + Sync),
        clock: &'static (dyn Clock + Sync),
    ) -> Result<Self, UnitError> {
        let efr = ExtendedFeatures(regs.read64(regs::EXTENDED_FEATURE));
        let efr2 = regs.read64(regs::EXTENDED_FEATURE_2);
        let entries = (u32::from(description.max_device_id()) + 1).max(1);
        let table_bytes =
            (entries as usize * core::mem::size_of::<Dte>()).next_multiple_of(PAGE_SIZE);
        let alloc = |len| DmaBuffer::alloc(dma, len, PAGE_SIZE).ok_or(UnitError::NoMemory);
        let device_table = alloc(table_bytes)?;
        let command_ring = SlotRing::new(RING_LOG2, regs::ENTRY_SIZE);
        let event_ring = SlotRing::new(RING_LOG2, regs::ENTRY_SIZE);
        let command_buffer = alloc(command_ring.bytes() as usize)?;
        let event_log = alloc(event_ring.bytes() as usize)?;
        let completion = alloc(PAGE_SIZE)?;
        let mut unit = Hardware {
            regs,
            dma,
            clock,
            device_table_entries: (table_bytes / core::mem::size_of::<Dte>()) as u32,
            description,
            capability,
            efr,
            efr2,
            device_table,
            command_buffer,
            command_ring,
            command_queue: SharedRing::one_slot_free(command_ring.slots()),
            event_log,
            event_ring,
            completion,
            control: spin::Mutex::new(Control::empty()),
            counters: Tally::default(),
            interrupt_tables: BTreeMap::new(),
            event_log_state: spin::Mutex::new(EventLogState::default()),
            command_recovery: spin::Mutex::new(0),
            skipped_commands: spin::Mutex::new(Vec::new()),
        };
        unit.bring_up()?;
        Ok(unit)
    }

    pub(crate) fn write_reg(&self, reg: os_services::mmio::Reg64, value: u64) {
        self.counters.add(|c| c.mmio_writes += 1);
        self.regs.write64(reg, value);
    }

    pub(crate) fn status(&self) -> Status {
        Status::from_bits_retain(self.regs.read64(regs::STATUS))
    }

    pub(crate) fn set_control(&mut self, control: Control) {
        *self.control.get_mut() = control;
        self.write_reg(regs::CONTROL, control.bits());
    }

    /// Turns `part` of CONTROL off, waits for `running` to clear, runs
    /// `stopped`, and turns it on again (waiting for `running` when `rerun`):
    /// one such sequence at a time.
    pub(crate) fn pause(
        &self,
        part: Control,
        running: Status,
        rerun: bool,
        stopped: impl FnOnce(),
    ) {
        let control = self.control.lock();
        self.write_reg(regs::CONTROL, (*control - part).bits());
        let _ = self.wait_status(running, false);
        stopped();
        self.write_reg(regs::CONTROL, control.bits());
        if rerun {
            let _ = self.wait_status(running, true);
        }
    }

    pub(crate) fn wait_status(&self, expected: Status, set: bool) -> Result<(), UnitError> {
        let regs = &self.regs;
        wait_until(self.clock, STATUS_TIMEOUT, || {
            let status = Status::from_bits_retain(regs.read64(regs::STATUS));
            (status.contains(expected) == set).then_some(())
        })
        .map_err(|_| UnitError::StatusTimeout { expected })
    }

    pub(crate) fn bring_up(&mut self) -> Result<(), UnitError> {
        // Whatever firmware left running stops first, and an exclusion range it
        // left would let DMA to that range bypass every domain (§3.4.5).
        self.set_control(Control::empty());
        self.write_reg(regs::EXCLUSION_BASE, 0);
        self.write_reg(regs::EXCLUSION_LIMIT, 0);

        for index in 0..self.device_table_entries {
            self.store_dte(index as u16, self.blocked_dte(index as u16));
        }
        let pages = (self.device_table.len() / PAGE_SIZE) as u64;
        let base =
            DeviceTableBase::new(self.device_table.phys(), pages).ok_or(UnitError::Invalid)?;
        // 64-bit writes: QEMU latches a base only when its high dword is written.
        self.write_reg(regs::DEVICE_TABLE_BASE, base.0);
        let cmd = RingBase::new(self.command_buffer.phys(), RING_LOG2).ok_or(UnitError::Invalid)?;
        self.write_reg(regs::COMMAND_BUFFER_BASE, cmd.0);
        self.write_reg(regs::COMMAND_HEAD, 0);
        self.write_reg(regs::COMMAND_TAIL, 0);
        self.command_queue.restart();
        let evt = RingBase::new(self.event_log.phys(), RING_LOG2).ok_or(UnitError::Invalid)?;
        self.write_reg(regs::EVENT_LOG_BASE, evt.0);
        self.write_reg(regs::EVENT_HEAD, 0);
        self.write_reg(regs::EVENT_TAIL, 0);
        self.event_log_state.get_mut().head = 0;
        self.write_reg(
            regs::STATUS,
            (Status::EVENT_OVERFLOW | Status::EVENT_LOG_INT | Status::COM_WAIT_INT).bits(),
        );

        // Coherent: the driver writes its tables with ordinary cached stores and
        // never writes lines back, so the IOMMU must snoop (Linux
        // `iommu_init_flags` sets it too).
        self.set_control(
            Control::CMD_BUF_EN
                | Control::EVENT_LOG_EN
                | Control::IOMMU_EN
                | Control::COHERENT
                | Control::INV_TIMEOUT_10MS,
        );
        self.wait_status(Status::CMD_BUF_RUN, true)?;

        // Nothing cached from before this driver may survive. Without IASup that
        // is two commands per device, far more than the ring holds: `run`
        // submits them in ring-sized batches.
        if self.efr.invalidate_all() {
            self.run(&[Command::invalidate_all()])
        } else {
            let commands: Vec<Command> = (0..self.device_table_entries)
                .map(|d| d as u16)
                .flat_map(|d| {
                    [
                        Command::invalidate_devtab_entry(d),
                        Command::invalidate_interrupt_table(d),
                    ]
                })
                .collect();
            self.run(&commands)
        }
    }

    /// The work done since bring-up.
    pub fn counters(&self) -> Counters {
        self.counters.read()
    }

    /// What firmware said about the unit.
    pub fn description(&self) -> &UnitDescription {
        &self.description
    }

    /// The IOMMU Control Register as the unit holds it now (§3.4.4).
    pub fn control(&self) -> regs::Control {
        regs::Control::from_bits_retain(self.regs.read64(regs::CONTROL))
    }

    /// The Extended Feature Register.
    pub fn extended_features(&self) -> ExtendedFeatures {
        self.efr
    }

    /// Capability header NpCache: not-present entries may be cached, so a new mapping
    /// must be invalidated too (§3.2.1).
    pub fn np_cache(&self) -> bool {
        self.capability.np_cache()
    }

    /// Physical address of the COMPLETION_WAIT store word and the command buffer (for
    /// tests that check where the IOMMU wrote).
    /// Physical address of the device table (§2.2.2), e.g. as a DMA target a
    /// hostile device must not reach.
    pub fn device_table_phys(&self) -> u64 {
        self.device_table.phys()
    }

    /// Physical address of the event log (§2.5).
    pub fn event_log_phys(&self) -> u64 {
        self.event_log.phys()
    }

    /// Physical address of the COMPLETION_WAIT store page.
    pub fn completion_phys(&self) -> u64 {
        self.completion.phys()
    }

    /// Physical address of the command buffer.
    pub fn command_buffer_phys(&self) -> u64 {
        self.command_buffer.phys()
    }

    pub(crate) fn requester(&self, device: DeviceId) -> Result<u16, IommuError> {
        let id = u16::try_from(device.0).map_err(|_| IommuError::Invalid)?;
        if u32::from(id) >= self.device_table_entries || !self.description.translates(id) {
            return Err(IommuError::Invalid);
        }
        Ok(id)
    }

    /// Events read from the log since the last call, oldest first.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        core::mem::take(&mut self.event_log_state.get_mut().backlog)
    }

    /// The number the next event put in the backlog will have.
    pub(crate) fn events_added(&self) -> u64 {
        self.event_log_state.lock().added
    }

    /// The first event of the backlog, from event number `since` on, that
    /// `found` picks (it gets each event with its number): what it made of it.
    pub(crate) fn find_event_since<T>(
        &self,
        since: u64,
        mut found: impl FnMut(u64, &Event) -> Option<T>,
    ) -> Option<T> {
        let state = self.event_log_state.lock();
        let first = state.added - state.backlog.len() as u64;
        let skip = since.saturating_sub(first) as usize;
        let mut numbered = state.backlog.iter().enumerate().skip(skip);
        numbered.find_map(|(index, event)| found(first + index as u64, event))
    }
}
