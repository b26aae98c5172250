//! One live AMD-Vi IOMMU: bring-up, the command buffer, the event log, the device
//! table, interrupt remapping tables and domains, behind `iommu::IommuUnit`.
//!
//! Bring-up order (AMD IOMMU §2.1 and §3.4): with the IOMMU disabled, program the
//! device table (every entry blocked), the command buffer and the event log, then set
//! CmdBufEn + EventLogEn + IommuEn and invalidate everything the IOMMU might have
//! cached. Every wait on the hardware is bounded (`os_services::wait_until`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};
use core::time::Duration;

use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    IovaRange, MsiMessage, MsiRoute, NestedInvalidation, Prot, ReservedKind, ReservedRegion,
    UnitId, UnitInfo, UnitKind,
};
use os_services::mmio::Mmio;
use os_services::{Clock, DmaMemory, DmaRegion, wait_until};

use crate::command::{Command, Opcode, PageRange};
use crate::device_table::{Dte, Interrupts};
use crate::discovery::UnitDescription;
use crate::fault::{self, Event, RawEvent};
use crate::interrupt::{Irte32, Target};
use crate::regs::{
    self, CapabilityHeader, Control, DeviceTableBase, ExtendedFeatures, RingBase, Status,
};
use crate::ring::{ENTRY_SIZE, Ring};

const PAGE_SIZE: usize = 4096;
/// 256 entries = one 4 KiB page for both rings (the minimum, §3.4.2/§3.4.3).
const RING_LOG2: u32 = 8;
/// How long a COMPLETION_WAIT may take before the command buffer counts as stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a Control-register change may take to show in Status.
const STATUS_TIMEOUT: Duration = Duration::from_millis(10);
/// The x86 interrupt window never translated as DMA (§2.1.3, 0xFEE0_0000-0xFEEF_FFFF).
const MSI_WINDOW: IovaRange = IovaRange {
    start: 0xFEE0_0000,
    last: 0xFEEF_FFFF,
};
/// DomainIDs this driver hands out. QEMU 10.0.2 treats DTE quad 1 bit 8 as reserved
/// (docs/QEMU.md §2), so IDs stay below 256 and 0 is never used.
const DOMAIN_IDS: core::ops::RangeInclusive<u16> = 1..=255;
/// Entries of a per-device interrupt remapping table (IntTabLen = 8).
const IRT_LOG2: u8 = 8;
/// Fault records a domain's queue (and the unit's queue of unowned faults) holds
/// until software drains it: a device faulting in a loop must not grow the heap
/// without bound. Records beyond this are counted in `Counters::dropped_faults`.
pub const FAULT_QUEUE_CAPACITY: usize = 1024;

/// Why the unit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitError {
    NoMemory,
    /// The EFR says the IOMMU cannot do what the driver needs.
    Unsupported,
    /// The command buffer did not complete a COMPLETION_WAIT in time; the pending
    /// commands were discarded and the buffer restarted. `stopped` is whether the
    /// IOMMU had halted command processing (CmdBufRun=0), `illegal_at` the address of
    /// the command the event log named as illegal, if it did.
    CommandTimeout {
        stopped: bool,
        illegal_at: Option<u64>,
    },
    /// The event log reported an ILLEGAL_COMMAND_ERROR for the command at this
    /// physical address (found after the batch completed).
    IllegalCommand {
        address: u64,
    },
    /// A Control-register change never showed in Status.
    StatusTimeout {
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

/// What the driver has done to the hardware, for the figures and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub commands: u64,
    pub completion_waits: u64,
    pub invalidate_devtab_entry: u64,
    pub invalidate_iommu_pages: u64,
    pub invalidate_interrupt_table: u64,
    pub invalidate_all: u64,
    /// Writes of COMMAND_TAIL (one per submitted batch).
    pub tail_writes: u64,
    /// Every MMIO register write.
    pub mmio_writes: u64,
    pub events: u64,
    pub event_overflows: u64,
    pub command_errors: u64,
    /// Fault records discarded because their queue held `FAULT_QUEUE_CAPACITY`.
    pub dropped_faults: u64,
}

impl Counters {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            commands: self.commands - earlier.commands,
            completion_waits: self.completion_waits - earlier.completion_waits,
            invalidate_devtab_entry: self.invalidate_devtab_entry - earlier.invalidate_devtab_entry,
            invalidate_iommu_pages: self.invalidate_iommu_pages - earlier.invalidate_iommu_pages,
            invalidate_interrupt_table: self.invalidate_interrupt_table
                - earlier.invalidate_interrupt_table,
            invalidate_all: self.invalidate_all - earlier.invalidate_all,
            tail_writes: self.tail_writes - earlier.tail_writes,
            mmio_writes: self.mmio_writes - earlier.mmio_writes,
            events: self.events - earlier.events,
            event_overflows: self.event_overflows - earlier.event_overflows,
            command_errors: self.command_errors - earlier.command_errors,
            dropped_faults: self.dropped_faults - earlier.dropped_faults,
        }
    }
}

/// Page-table levels of paging domains: 4 levels translate 48-bit IOVAs (§2.2.3).
const PAGING_LEVELS: u32 = 4;
/// Output address bits of v1 leaves (§2.2.3: addresses in bits 51:12).
const OUTPUT_BITS: u32 = 52;

type V1Table = io_page_table::PageTable<io_page_table::AmdV1, crate::paging::DmaTableAlloc>;

enum DomainBacking {
    Blocked,
    /// IOVA = physical address (DTE Mode 0 with IR/IW), for the kernel only.
    Identity,
    Paging {
        table: alloc::boxed::Box<V1Table>,
        /// Table pages unlinked by `unmap`, released after the next `flush`.
        unlinked: Vec<io_page_table::FreedTables>,
    },
}

struct Domain {
    id: u16,
    backing: DomainBacking,
    devices: BTreeSet<u16>,
    faults: Vec<FaultRecord>,
}

/// A device's interrupt remapping table.
struct InterruptTable {
    region: DmaRegion,
    /// The indexes device MSI routes hold ([`IommuUnit::route_msi`]).
    routes: BTreeSet<u16>,
}

/// The live unit.
pub struct AmdVi {
    id: UnitId,
    regs: Mmio,
    dma: &'static (dyn DmaMemory + Sync),
    /// Where new paging domains take their table pages (normally `dma`).
    table_dma: &'static (dyn DmaMemory + Sync),
    clock: &'static (dyn Clock + Sync),
    description: UnitDescription,
    capability: CapabilityHeader,
    efr: ExtendedFeatures,
    efr2: u64,
    device_table: DmaRegion,
    device_table_entries: u32,
    command_buffer: DmaRegion,
    command_ring: Ring,
    command_tail: u32,
    event_log: DmaRegion,
    event_ring: Ring,
    event_head: u64,
    /// One page: the COMPLETION_WAIT store target at offset 0.
    completion: DmaRegion,
    sequence: u64,
    control: Control,
    counters: Counters,
    domains: BTreeMap<u32, Domain>,
    next_handle: u32,
    attached: BTreeMap<u16, u32>,
    interrupt_tables: BTreeMap<u16, InterruptTable>,
    /// Faults from requesters in no domain, and command-side events.
    unowned_faults: Vec<FaultRecord>,
    unit_events: Vec<Event>,
}

// SAFETY: the unit owns its register block and DMA regions exclusively; the kernel
// keeps it behind a lock, so it is only ever used from one CPU at a time.
unsafe impl Send for AmdVi {}

fn write_volatile_u64(region: &DmaRegion, offset: usize, value: u64) {
    assert!(offset.is_multiple_of(8) && offset + 8 <= region.len);
    // SAFETY: in bounds and aligned (checked); the region is device-visible memory
    // owned by this unit, written with volatile stores so the IOMMU sees each store.
    unsafe { core::ptr::write_volatile(region.virt.add(offset).cast::<u64>(), value) }
}

fn read_volatile_u64(region: &DmaRegion, offset: usize) -> u64 {
    assert!(offset.is_multiple_of(8) && offset + 8 <= region.len);
    // SAFETY: as for `write_volatile_u64`; the IOMMU may have written the word.
    unsafe { core::ptr::read_volatile(region.virt.add(offset).cast::<u64>()) }
}

impl AmdVi {
    /// Brings up the IOMMU `description` names, whose registers `regs` maps, with every
    /// requester blocked. `capability` is the first dword of its PCI capability block
    /// (NpCache lives there).
    pub fn new(
        id: UnitId,
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
        let alloc = |len| dma.alloc(len, PAGE_SIZE).ok_or(UnitError::NoMemory);
        let device_table = alloc(table_bytes)?;
        let command_ring = Ring::new(RING_LOG2);
        let event_ring = Ring::new(RING_LOG2);
        let command_buffer = alloc(command_ring.bytes() as usize)?;
        let event_log = alloc(event_ring.bytes() as usize)?;
        let completion = alloc(PAGE_SIZE)?;
        let mut unit = AmdVi {
            id,
            regs,
            dma,
            table_dma: dma,
            clock,
            device_table_entries: (table_bytes / core::mem::size_of::<Dte>()) as u32,
            description,
            capability,
            efr,
            efr2,
            device_table,
            command_buffer,
            command_ring,
            command_tail: 0,
            event_log,
            event_ring,
            event_head: 0,
            completion,
            sequence: 0,
            control: Control::empty(),
            counters: Counters::default(),
            domains: BTreeMap::new(),
            next_handle: 1,
            attached: BTreeMap::new(),
            interrupt_tables: BTreeMap::new(),
            unowned_faults: Vec::new(),
            unit_events: Vec::new(),
        };
        unit.bring_up()?;
        Ok(unit)
    }

    fn write_reg(&mut self, reg: os_services::mmio::Reg64, value: u64) {
        self.counters.mmio_writes += 1;
        self.regs.write64(reg, value);
    }

    fn status(&self) -> Status {
        Status::from_bits_retain(self.regs.read64(regs::STATUS))
    }

    fn set_control(&mut self, control: Control) {
        self.control = control;
        self.write_reg(regs::CONTROL, control.bits());
    }

    fn wait_status(&self, expected: Status, set: bool) -> Result<(), UnitError> {
        let regs = &self.regs;
        wait_until(self.clock, STATUS_TIMEOUT, || {
            let status = Status::from_bits_retain(regs.read64(regs::STATUS));
            (status.contains(expected) == set).then_some(())
        })
        .map_err(|_| UnitError::StatusTimeout { expected })
    }

    fn bring_up(&mut self) -> Result<(), UnitError> {
        // Whatever firmware left running stops first.
        self.set_control(Control::empty());

        for index in 0..self.device_table_entries {
            self.store_dte(index as u16, self.blocked_dte(index as u16));
        }
        let pages = (self.device_table.len / PAGE_SIZE) as u64;
        let base = DeviceTableBase::new(self.device_table.phys, pages).ok_or(UnitError::Invalid)?;
        // 64-bit writes: QEMU latches a base only when its high dword is written.
        self.write_reg(regs::DEVICE_TABLE_BASE, base.0);
        let cmd = RingBase::new(self.command_buffer.phys, RING_LOG2).ok_or(UnitError::Invalid)?;
        self.write_reg(regs::COMMAND_BUFFER_BASE, cmd.0);
        self.write_reg(regs::COMMAND_HEAD, 0);
        self.write_reg(regs::COMMAND_TAIL, 0);
        self.command_tail = 0;
        let evt = RingBase::new(self.event_log.phys, RING_LOG2).ok_or(UnitError::Invalid)?;
        self.write_reg(regs::EVENT_LOG_BASE, evt.0);
        self.write_reg(regs::EVENT_HEAD, 0);
        self.write_reg(regs::EVENT_TAIL, 0);
        self.event_head = 0;
        self.write_reg(
            regs::STATUS,
            (Status::EVENT_OVERFLOW | Status::EVENT_LOG_INT | Status::COM_WAIT_INT).bits(),
        );

        self.set_control(Control::CMD_BUF_EN | Control::EVENT_LOG_EN | Control::IOMMU_EN);
        self.wait_status(Status::CMD_BUF_RUN, true)?;

        // Nothing cached from before this driver may survive.
        if self.efr.invalidate_all() {
            self.run(&[Command::invalidate_all()])
        } else {
            let commands: Vec<Command> = (0..self.device_table_entries as u16)
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

    /// The DTE of a requester in no domain: blocked, with firmware's pass bits.
    fn blocked_dte(&self, device_id: u16) -> Dte {
        let setting = self
            .description
            .requesters
            .binary_search_by_key(&device_id, |r| r.device_id)
            .map(|i| self.description.requesters[i].setting)
            .unwrap_or_default();
        Dte::blocked().with_firmware_setting(setting)
    }

    /// Writes a DTE so that the IOMMU never sees a torn mix that grants more than
    /// either the old or the new entry: quad 0 (V, TV, Mode, root, IR/IW) first
    /// becomes "blocked", then quads 1-3 change, then quad 0 takes its final value.
    fn store_dte(&mut self, device_id: u16, dte: Dte) {
        let offset = usize::from(device_id) * core::mem::size_of::<Dte>();
        let table = self.device_table;
        write_volatile_u64(&table, offset, Dte::blocked().0[0]);
        fence(Ordering::SeqCst);
        for quad in [1, 2, 3] {
            write_volatile_u64(&table, offset + quad * 8, dte.0[quad]);
        }
        fence(Ordering::SeqCst);
        write_volatile_u64(&table, offset, dte.0[0]);
        fence(Ordering::SeqCst);
    }

    /// The DTE currently in the table.
    pub fn dte(&self, device_id: u16) -> Option<Dte> {
        if u32::from(device_id) >= self.device_table_entries {
            return None;
        }
        let offset = usize::from(device_id) * core::mem::size_of::<Dte>();
        let mut dte = Dte::default();
        for (quad, value) in dte.0.iter_mut().enumerate() {
            *value = read_volatile_u64(&self.device_table, offset + quad * 8);
        }
        Some(dte)
    }

    fn count(&mut self, command: &Command) {
        self.counters.commands += 1;
        match command.opcode() {
            Some(Opcode::CompletionWait) => self.counters.completion_waits += 1,
            Some(Opcode::InvalidateDevtabEntry) => self.counters.invalidate_devtab_entry += 1,
            Some(Opcode::InvalidateIommuPages) => self.counters.invalidate_iommu_pages += 1,
            Some(Opcode::InvalidateInterruptTable) => self.counters.invalidate_interrupt_table += 1,
            Some(Opcode::InvalidateIommuAll) => self.counters.invalidate_all += 1,
            _ => {}
        }
    }

    /// Runs `commands` followed by a COMPLETION_WAIT, with one COMMAND_TAIL write, and
    /// waits (bounded) for the store. Errors the event log reports for the batch are
    /// surfaced; a stuck buffer is restarted and reported.
    pub fn run(&mut self, commands: &[Command]) -> Result<(), UnitError> {
        self.sequence += 1;
        let sequence = self.sequence;
        let wait = Command::completion_wait(self.completion.phys, sequence);
        let total = commands.len() as u32 + 1;
        if total > self.command_ring.entries() - 1 {
            return Err(UnitError::Invalid);
        }
        // Room for the whole batch (the previous one has completed, so this only
        // waits when the hardware is slow to advance its head pointer).
        let ring = self.command_ring;
        let tail = self.command_tail;
        let regs = &self.regs;
        wait_until(self.clock, COMMAND_TIMEOUT, || {
            let head = regs.read64(regs::COMMAND_HEAD) & regs::RING_POINTER_MASK;
            let head = ring.index(head).ok()?;
            (ring.free(head, tail) >= total).then_some(())
        })
        .map_err(|_| UnitError::CommandTimeout {
            stopped: !self.status().contains(Status::CMD_BUF_RUN),
            illegal_at: None,
        })?;

        let first_slot = self.command_buffer.phys + self.command_ring.pointer(self.command_tail);
        for command in commands.iter().chain(core::iter::once(&wait)) {
            let offset = self.command_ring.pointer(self.command_tail) as usize;
            write_volatile_u64(&self.command_buffer, offset, command.0[0]);
            write_volatile_u64(&self.command_buffer, offset + 8, command.0[1]);
            self.command_tail = self.command_ring.next(self.command_tail);
            self.count(command);
        }
        // The commands must be in memory before the IOMMU learns of them.
        fence(Ordering::SeqCst);
        self.counters.tail_writes += 1;
        let tail_pointer = self.command_ring.pointer(self.command_tail);
        self.write_reg(regs::COMMAND_TAIL, tail_pointer);

        let completion = self.completion;
        let done = wait_until(self.clock, COMMAND_TIMEOUT, || {
            (read_volatile_u64(&completion, 0) == sequence).then_some(())
        });
        let batch = first_slot..first_slot + u64::from(total * ENTRY_SIZE);
        if done.is_err() {
            return Err(self.recover_command_buffer(batch));
        }
        // An IOMMU that keeps going after an illegal command (QEMU does) still logs it.
        // Only events logged for this batch count: ring slots are reused.
        let seen = self.unit_events.len();
        self.poll_events();
        let illegal = self.unit_events[seen..]
            .iter()
            .find_map(|event| match *event {
                Event::IllegalCommand { address } if batch.contains(&address) => Some(address),
                _ => None,
            });
        match illegal {
            Some(address) => {
                self.counters.command_errors += 1;
                Err(UnitError::IllegalCommand { address })
            }
            None => Ok(()),
        }
    }

    /// §2.4 / §2.5.6: after ILLEGAL_COMMAND_ERROR or COMMAND_HARDWARE_ERROR the IOMMU
    /// stops fetching commands (Status.CmdBufRun=0) with COMMAND_HEAD on the bad
    /// entry. Recovery: read the log, disable the buffer, drop every pending command
    /// (head = tail) and enable it again. The caller's batch did not complete.
    fn recover_command_buffer(&mut self, batch: core::ops::Range<u64>) -> UnitError {
        self.counters.command_errors += 1;
        let stopped = !self.status().contains(Status::CMD_BUF_RUN);
        let seen = self.unit_events.len();
        self.poll_events();
        let illegal_at = self.unit_events[seen..]
            .iter()
            .find_map(|event| match *event {
                Event::IllegalCommand { address } | Event::CommandHardwareError { address, .. }
                    if batch.contains(&address) =>
                {
                    Some(address)
                }
                _ => None,
            });
        let running = self.control;
        self.set_control(running - Control::CMD_BUF_EN);
        let _ = self.wait_status(Status::CMD_BUF_RUN, false);
        let tail_pointer = self.command_ring.pointer(self.command_tail);
        self.write_reg(regs::COMMAND_HEAD, tail_pointer);
        self.set_control(running);
        let _ = self.wait_status(Status::CMD_BUF_RUN, true);
        UnitError::CommandTimeout {
            stopped,
            illegal_at,
        }
    }

    /// Reads new event-log entries: device faults go to the owning domain's queue
    /// (or the unit's when the requester is in no domain), other events to the unit's
    /// event list. Handles EventOverflow (§2.5: drain, clear, restart logging).
    pub fn poll_events(&mut self) -> usize {
        let status = self.status();
        let tail = self.regs.read64(regs::EVENT_TAIL) & regs::RING_POINTER_MASK;
        let log = self.event_log;
        let Ok((events, head)) = fault::drain(self.event_ring, self.event_head, tail, |index| {
            let offset = index as usize * ENTRY_SIZE as usize;
            RawEvent([
                read_volatile_u64(&log, offset),
                read_volatile_u64(&log, offset + 8),
            ])
        }) else {
            return 0;
        };
        let count = events.len();
        if head != self.event_head {
            self.event_head = head;
            self.write_reg(regs::EVENT_HEAD, head);
        }
        self.counters.events += count as u64;
        for event in events {
            self.route_event(event);
        }
        if status.contains(Status::EVENT_OVERFLOW) {
            self.counters.event_overflows += 1;
            let running = self.control;
            self.set_control(running - Control::EVENT_LOG_EN);
            let _ = self.wait_status(Status::EVENT_LOG_RUN, false);
            self.write_reg(regs::STATUS, Status::EVENT_OVERFLOW.bits());
            self.set_control(running);
        }
        count
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
            self.counters.dropped_faults += 1;
        }
    }

    /// Events that are not device faults (command errors, counters), oldest first.
    pub fn take_unit_events(&mut self) -> Vec<Event> {
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

    /// Finds out whether this IOMMU writes its event log: submits a reserved-opcode
    /// command, which must produce ILLEGAL_COMMAND_ERROR (§2.5.6), and looks for the
    /// event. The command buffer keeps working either way (recovered if it stopped).
    /// QEMU 10.0.2 never logs (docs/QEMU.md §2): `Ok(false)` there.
    pub fn probe_event_log(&mut self) -> Result<bool, UnitError> {
        match self.run(&[Command::illegal()]) {
            Err(UnitError::IllegalCommand { .. }) => Ok(true),
            Err(UnitError::CommandTimeout { illegal_at, .. }) => Ok(illegal_at.is_some()),
            Ok(()) => Ok(false),
            Err(other) => Err(other),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn description(&self) -> &UnitDescription {
        &self.description
    }

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
        self.device_table.phys
    }

    /// Physical address of the event log (§2.5).
    pub fn event_log_phys(&self) -> u64 {
        self.event_log.phys
    }

    /// Physical address of the COMPLETION_WAIT store page.
    pub fn completion_phys(&self) -> u64 {
        self.completion.phys
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

    pub fn command_buffer_phys(&self) -> u64 {
        self.command_buffer.phys
    }

    fn device_id(&self, device: DeviceId) -> Result<u16, IommuError> {
        let id = u16::try_from(device.0).map_err(|_| IommuError::Invalid)?;
        if u32::from(id) >= self.device_table_entries || !self.description.translates(id) {
            return Err(IommuError::Invalid);
        }
        Ok(id)
    }

    /// Installs `dte` for `device_id`, preserving its interrupt fields, and
    /// invalidates the cached copy (INVALIDATE_DEVTAB_ENTRY + COMPLETION_WAIT).
    fn install_dma_config(
        &mut self,
        device_id: u16,
        dte: Dte,
        extra: &[Command],
    ) -> Result<(), UnitError> {
        let current = self.dte(device_id).ok_or(UnitError::Invalid)?;
        let mut dte = dte;
        dte.0[2] = current.0[2];
        self.store_dte(device_id, dte);
        let mut commands = Vec::with_capacity(1 + extra.len());
        commands.push(Command::invalidate_devtab_entry(device_id));
        commands.extend_from_slice(extra);
        self.run(&commands)
    }

    /// Remaps `device_id`'s interrupts: IRTE `index` delivers to `target`. Allocates
    /// the device's table on first use; INVALIDATE_INTERRUPT_TABLE after the change.
    pub fn remap_interrupt(
        &mut self,
        device_id: u16,
        index: u16,
        target: Target,
    ) -> Result<(), UnitError> {
        if index >= 1 << IRT_LOG2 || u32::from(device_id) >= self.device_table_entries {
            return Err(UnitError::Invalid);
        }
        let irte = Irte32::remapped(target).ok_or(UnitError::Invalid)?;
        if !self.interrupt_tables.contains_key(&device_id) {
            let len = (1usize << IRT_LOG2) * core::mem::size_of::<Irte32>();
            let region = self.dma.alloc(len, PAGE_SIZE).ok_or(UnitError::NoMemory)?;
            self.interrupt_tables.insert(
                device_id,
                InterruptTable {
                    region,
                    routes: BTreeSet::new(),
                },
            );
        }
        let table = self.interrupt_tables[&device_id].region;
        self.write_irte(&table, index, irte);
        let current = self.dte(device_id).ok_or(UnitError::Invalid)?;
        let dte = current
            .with_interrupts(Interrupts::Remapped {
                table: table.phys,
                log2_len: IRT_LOG2,
            })
            .map_err(|_| UnitError::Invalid)?;
        self.store_dte(device_id, dte);
        self.run(&[
            Command::invalidate_devtab_entry(device_id),
            Command::invalidate_interrupt_table(device_id),
        ])
    }

    /// Clears IRTE `index` (RemapEn=0: the interrupt is target-aborted).
    pub fn disable_interrupt(&mut self, device_id: u16, index: u16) -> Result<(), UnitError> {
        let table = self
            .interrupt_tables
            .get(&device_id)
            .ok_or(UnitError::Invalid)?
            .region;
        if index >= 1 << IRT_LOG2 {
            return Err(UnitError::Invalid);
        }
        self.write_irte(&table, index, Irte32::DISABLED);
        self.run(&[Command::invalidate_interrupt_table(device_id)])
    }

    /// Blocks all of `device_id`'s interrupts again and frees its table.
    pub fn block_interrupts(&mut self, device_id: u16) -> Result<(), UnitError> {
        let current = self.dte(device_id).ok_or(UnitError::Invalid)?;
        let dte = current
            .with_interrupts(Interrupts::Blocked)
            .map_err(|_| UnitError::Invalid)?;
        self.store_dte(device_id, dte);
        let result = self.run(&[
            Command::invalidate_devtab_entry(device_id),
            Command::invalidate_interrupt_table(device_id),
        ]);
        if result.is_ok()
            && let Some(table) = self.interrupt_tables.remove(&device_id)
        {
            self.dma.free(table.region);
        }
        result
    }

    fn write_irte(&self, table: &DmaRegion, index: u16, irte: Irte32) {
        let offset = usize::from(index) * core::mem::size_of::<Irte32>();
        assert!(offset + 4 <= table.len);
        // SAFETY: in bounds (checked), 4-byte aligned, in the unit's own table memory.
        unsafe { core::ptr::write_volatile(table.virt.add(offset).cast::<u32>(), irte.0) };
        fence(Ordering::SeqCst);
    }

    /// Identity-maps the IVMD unity ranges (§5.2.3) that apply to `device_id` in a
    /// paging `domain`; what NpCache requires to be invalidated is returned.
    fn map_unity_ranges(
        &mut self,
        device_id: u16,
        domain: DomainHandle,
    ) -> Result<Gather, IommuError> {
        let np_cache = self.np_cache();
        let ranges: Vec<_> = self
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
                Ok(gather) if np_cache && !gather.is_empty() => {
                    owed.add_leaf(gather.start, 4096);
                    owed.add_leaf(gather.last & !0xFFF, 4096);
                }
                Ok(_) => {}
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

fn page_prot(prot: Prot) -> Result<io_page_table::Prot, IommuError> {
    let mut out = io_page_table::Prot::empty();
    if prot.read {
        out |= io_page_table::Prot::READ;
    }
    if prot.write {
        out |= io_page_table::Prot::WRITE;
    }
    if out.is_empty() {
        return Err(IommuError::Invalid);
    }
    Ok(out)
}

impl IommuUnit for AmdVi {
    fn info(&self) -> UnitInfo {
        UnitInfo {
            name: "amd-vi",
            kind: UnitKind::AmdVi,
            // Paging domains use PAGING_LEVELS-level tables (§2.2.3: 9 bits a level
            // above the 12-bit page offset), within what EFR.HATS allows.
            aperture: IovaRange {
                start: 0,
                last: {
                    let levels = PAGING_LEVELS.min(u32::from(self.efr.host_levels().unwrap_or(4)));
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
                self.description
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
            efr: self.efr.0,
            efr2: self.efr2,
        }
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        let backing = match kind {
            DomainKind::Blocked => DomainBacking::Blocked,
            DomainKind::Identity => DomainBacking::Identity,
            DomainKind::Paging => {
                let format = io_page_table::AmdV1::new(io_page_table::AmdV1Config {
                    levels: PAGING_LEVELS,
                    output_bits: OUTPUT_BITS,
                    // Pages between the native sizes, as Linux's v1 tables
                    // (QEMU decodes Next Level 7).
                    nl7_pages: true,
                })
                .map_err(|_| IommuError::Unsupported)?;
                let table = io_page_table::PageTable::new(
                    format,
                    crate::paging::DmaTableAlloc::new(self.table_dma),
                    io_page_table::Coherence::Coherent,
                )
                .map_err(|_| IommuError::NoMemory)?;
                DomainBacking::Paging {
                    table: alloc::boxed::Box::new(table),
                    unlinked: Vec::new(),
                }
            }
            _ => return Err(IommuError::Unsupported),
        };
        let used: BTreeSet<u16> = self.domains.values().map(|d| d.id).collect();
        let id = DOMAIN_IDS
            .clone()
            .find(|id| !used.contains(id))
            .ok_or(IommuError::NoMemory)?;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.domains.insert(
            handle,
            Domain {
                id,
                backing,
                devices: BTreeSet::new(),
                faults: Vec::new(),
            },
        );
        Ok(DomainHandle(handle))
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        if !entry.devices.is_empty() {
            return Err(IommuError::Busy);
        }
        // Dropping the table frees its pages: no device uses them any more, and the
        // last detach invalidated the domain's IOTLB entries (PDE included).
        if let Some(removed) = self.domains.remove(&domain.0)
            && let DomainBacking::Paging {
                mut table,
                unlinked,
            } = removed.backing
        {
            for freed in unlinked {
                table.release(freed);
            }
        }
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
        let np_cache = self.np_cache();
        let entry = self.domains.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
        let DomainBacking::Paging { table, .. } = &mut entry.backing else {
            return Err(IommuError::Invalid);
        };
        let gather = table
            .map(iova, phys, len, page_prot(prot)?)
            .map_err(|err| match err {
                io_page_table::MapError::NoMemory => IommuError::NoMemory,
                _ => IommuError::Invalid,
            })?;
        // Without NpCache the IOMMU never caches a not-present entry, so a new mapping
        // owes no invalidation (§3.2.1).
        Ok(if np_cache { gather } else { Gather::default() })
    }

    fn unmap(&mut self, domain: DomainHandle, iova: u64, len: u64) -> Gather {
        match self.domains.get_mut(&domain.0).map(|d| &mut d.backing) {
            Some(DomainBacking::Paging { table, unlinked }) => match table.unmap(iova, len) {
                Ok(unmapped) => {
                    unlinked.push(unmapped.freed);
                    unmapped.gather
                }
                // A range no successful map created: nothing changed.
                Err(_) => Gather::default(),
            },
            _ => Gather::default(),
        }
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        let id = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?.id;
        if let Some(command) = crate::invalidation::plan(id, gather) {
            self.run(&[command]).map_err(IommuError::from)?;
        }
        // The IOMMU no longer walks tables unlinked before this flush.
        if let Some(Domain {
            backing: DomainBacking::Paging { table, unlinked },
            ..
        }) = self.domains.get_mut(&domain.0)
        {
            for freed in unlinked.drain(..) {
                table.release(freed);
            }
        }
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        let device_id = self.device_id(device)?;
        let unity_gather = self.map_unity_ranges(device_id, domain)?;
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        let new_id = entry.id;
        let dte = match &entry.backing {
            DomainBacking::Blocked => self.blocked_dte(device_id),
            DomainBacking::Identity => Dte::identity(entry.id),
            DomainBacking::Paging { table, .. } => Dte::translated(
                table.root_phys(),
                table.format().dte_mode(),
                entry.id,
                true,
                true,
            )
            .map_err(|_| IommuError::Invalid)?,
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
        let before = self.dte(device_id).ok_or(IommuError::Invalid)?;
        if let Err(err) = self.install_dma_config(device_id, dte, &extra) {
            // The device stays where it was: the old entry goes back (best effort:
            // the command buffer has just failed).
            self.store_dte(device_id, before);
            let _ = self.run(&[Command::invalidate_devtab_entry(device_id)]);
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
        let Ok(device_id) = self.device_id(device) else {
            return;
        };
        let previous = self.attached.remove(&device_id);
        let mut extra = Vec::new();
        if let Some(old) = previous.and_then(|h| self.domains.get_mut(&h)) {
            old.devices.remove(&device_id);
            extra.push(Command::invalidate_iommu_pages(
                old.id,
                PageRange::ALL,
                true,
            ));
        }
        let blocked = self.blocked_dte(device_id);
        // The DTE is blocked in memory whatever the command buffer does; a failed
        // invalidation shows up in the counters and the unit's events.
        let _ = self.install_dma_config(device_id, blocked, &extra);
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
        let device_id = self.device_id(device)?;
        let held = self.interrupt_tables.get(&device_id).map(|t| &t.routes);
        let index = (0..1u16 << IRT_LOG2)
            .find(|index| held.is_none_or(|held| !held.contains(index)))
            .ok_or(IommuError::NoMemory)?;
        let target = crate::interrupt::target_of_compat_msi(message.address, message.data);
        let (address, data) = crate::interrupt::remappable_msi(index).ok_or(IommuError::Invalid)?;
        self.remap_interrupt(device_id, index, target)?;
        if let Some(table) = self.interrupt_tables.get_mut(&device_id) {
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
        let Some(table) = self.interrupt_tables.get_mut(&device_id) else {
            return;
        };
        if !table.routes.remove(&index) {
            return;
        }
        // The entry or DTE is back to aborting in memory even if the
        // invalidation fails; that shows up in the unit's counters.
        if table.routes.is_empty() {
            let _ = self.block_interrupts(device_id);
        } else {
            let _ = self.disable_interrupt(device_id, index);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
