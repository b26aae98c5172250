//! A software model of an AMD-Vi IOMMU for host tests of [`crate::unit`]: registers in
//! ordinary memory, and a "hardware step" that runs whenever the driver waits (the
//! model is the driver's [`Clock`], and `wait_until` calls `relax` while polling).
//!
//! The step implements the spec's behaviour where QEMU 10.0.2 differs or shows
//! nothing: commands are fetched from COMMAND_HEAD to COMMAND_TAIL; an illegal
//! command is logged as ILLEGAL_COMMAND_ERROR and (optionally, as real hardware does)
//! halts the buffer with CmdBufRun=0; DTEs are cached until INVALIDATE_DEVTAB_ENTRY;
//! the event log overflows with EventOverflow=1 and EventLogRun=0 until software
//! restarts it.
//!
//! A [`Variant`] makes it the IOMMU a test needs: without IASup, with an exclusion
//! range firmware left enabled, with event entries that reach memory after the tail
//! (erratum 732). Device-table reads snoop only with Control.Coherent: without it
//! the model reads what DRAM holds, and this driver never writes a line back, so
//! that is the zeroed memory the allocator handed out.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use std::boxed::Box;
use std::sync::{LazyLock, Mutex};

use iommu_kit::SlotRing;
use iommu_kit::fakes::HostDma;
use os_services::{Clock, DmaMemory};

use crate::command::{Command, Opcode};
use crate::device_table::Dte;
use crate::fault::RawEvent;
use crate::regs::{self, Control, ExclusionBase, Status};

/// Host memory standing in for physical memory (phys == virt), shared by the
/// model and the unit it serves.
pub static HOST_DMA: LazyLock<HostDma> = LazyLock::new(HostDma::default);

/// The features of the modelled IOMMU a test varies.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    /// The Extended Feature Register.
    pub efr: u64,
    /// An exclusion range (base, limit) firmware left enabled for every device.
    pub firmware_exclusion: Option<(u64, u64)>,
    /// Event-log entries reach memory one step after EVENT_TAIL covered them
    /// (AMD erratum 732).
    pub late_event_entries: bool,
}

impl Default for Variant {
    /// QEMU 10.0.2's AMD-Vi: IASup and the rest of its EFR, nothing left by firmware.
    fn default() -> Self {
        Self {
            efr: 0x29d3,
            firmware_exclusion: None,
            late_event_entries: false,
        }
    }
}

#[derive(Default)]
pub struct State {
    pub now: u64,
    /// Index of the next command to fetch.
    pub head: u32,
    pub halt_on_illegal: bool,
    /// The command processor does nothing (a hung IOMMU).
    pub stalled: bool,
    pub halted: bool,
    /// Every command fetched, in order.
    pub executed: Vec<Command>,
    /// The DTE cache: DeviceID -> the entry as last fetched.
    pub dte_cache: BTreeMap<u16, Dte>,
    status: u64,
    previous_control: u64,
    event_tail: u32,
    /// Events waiting to be logged at the next step.
    pub pending_events: Vec<RawEvent>,
    pub dropped_events: usize,
    head_written: u64,
    late_event_entries: bool,
    /// Entries whose slot EVENT_TAIL already covers, written at the next step.
    unwritten_events: Vec<(u64, RawEvent)>,
}

pub struct Model {
    regs: usize,
    pub state: Mutex<State>,
}

// SAFETY: the register memory is only touched by the test thread (the driver and the
// model's step both run inside the driver's calls).
unsafe impl Sync for Model {}
unsafe impl Send for Model {}

impl Model {
    /// A leaked model of `variant` and the register block the driver maps.
    pub fn with(variant: Variant) -> (&'static Model, core::ptr::NonNull<u8>) {
        let regs = HOST_DMA.alloc(regs::MMIO_SIZE, 4096).unwrap();
        let model = Box::leak(Box::new(Model {
            regs: regs.virt as usize,
            state: Mutex::new(State {
                late_event_entries: variant.late_event_entries,
                ..State::default()
            }),
        }));
        model.set_reg(regs::EXTENDED_FEATURE, variant.efr);
        if let Some((base, limit)) = variant.firmware_exclusion {
            let enabled = ExclusionBase::EX_EN | ExclusionBase::ALLOW;
            model.set_reg(regs::EXCLUSION_BASE, base | enabled.bits());
            model.set_reg(regs::EXCLUSION_LIMIT, limit);
        }
        (model, core::ptr::NonNull::new(regs.virt).unwrap())
    }

    /// The Control register as the driver last wrote it.
    pub fn control(&self) -> Control {
        Control::from_bits_retain(self.reg(regs::CONTROL))
    }

    /// Whether a DMA to `address` bypasses translation through the exclusion
    /// range (§3.4.5; every device here, as firmware sets Allow).
    pub fn excluded(&self, address: u64) -> bool {
        let base = ExclusionBase::from_bits_retain(self.reg(regs::EXCLUSION_BASE));
        let limit = self.reg(regs::EXCLUSION_LIMIT) | 0xFFF;
        let start = (base & ExclusionBase::BASE).bits();
        base.contains(ExclusionBase::EX_EN) && (start..=limit).contains(&address)
    }

    fn reg(&self, reg: os_services::mmio::Reg64) -> u64 {
        // SAFETY: offsets are the driver's register constants, inside the block.
        unsafe { core::ptr::read_volatile((self.regs + reg.0) as *const u64) }
    }

    fn set_reg(&self, reg: os_services::mmio::Reg64, value: u64) {
        // SAFETY: as for `reg`.
        unsafe { core::ptr::write_volatile((self.regs + reg.0) as *mut u64, value) }
    }

    fn read_phys(addr: u64) -> u64 {
        // SAFETY: host "physical" addresses are pointers into HostDma allocations.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }

    fn write_phys(addr: u64, value: u64) {
        // SAFETY: as for `read_phys`.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }

    fn dte_in_memory(&self, device_id: u16) -> Dte {
        let base = self.reg(regs::DEVICE_TABLE_BASE) & regs::BASE_ADDRESS_MASK;
        let at = base + u64::from(device_id) * 32;
        Dte([0, 8, 16, 24].map(|o| Self::read_phys(at + o)))
    }

    /// A device writes at `iova`: the IOMMU translates through the DTE it has
    /// cached (fetching it if it has none) and, when that DTE enables HAD,
    /// sets the D bit of the v1 leaf it wrote through (§2.2.7.2). `false`
    /// when nothing translates `iova`.
    pub fn dma_write(&self, device_id: u16, iova: u64) -> bool {
        const PR: u64 = 1;
        const D: u64 = 1 << 6;
        const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
        let cached = self
            .state
            .lock()
            .unwrap()
            .dte_cache
            .get(&device_id)
            .copied();
        let dte = cached.unwrap_or_else(|| self.fetch_dte(device_id));
        let levels = (dte.0[0] >> 9) & 7;
        if dte.0[0] & 0b11 != 0b11 || !(1..=6).contains(&levels) {
            return false;
        }
        let mut table = dte.0[0] & ADDRESS;
        for level in (1..=levels).rev() {
            let slot = table + ((iova >> (12 + 9 * (level - 1))) & 0x1FF) * 8;
            let pte = Self::read_phys(slot);
            if pte & PR == 0 {
                return false;
            }
            let next_level = (pte >> 9) & 7;
            if next_level == 0 || next_level == 7 || level == 1 {
                if dte.host_access_dirty() {
                    // SAFETY: a leaf of a table the driver allocated from
                    // HostDma (phys == virt); the IOMMU's update is atomic.
                    let entry =
                        unsafe { core::sync::atomic::AtomicU64::from_ptr(slot as *mut u64) };
                    entry.fetch_or(D, core::sync::atomic::Ordering::AcqRel);
                }
                return true;
            }
            table = pte & ADDRESS;
        }
        false
    }

    /// The IOMMU fetches a device's DTE (e.g. on a DMA) into its cache, and
    /// says what it fetched. Without Control.Coherent the read does not snoop:
    /// it sees DRAM, which never got the lines the CPU wrote (zeros).
    pub fn fetch_dte(&self, device_id: u16) -> Dte {
        let control = Control::from_bits_retain(self.reg(regs::CONTROL));
        let dte = if control.contains(Control::COHERENT) {
            self.dte_in_memory(device_id)
        } else {
            Dte([0; 4])
        };
        self.state.lock().unwrap().dte_cache.insert(device_id, dte);
        dte
    }

    /// Devices whose cached DTE differs from memory (a missing invalidation).
    pub fn stale_dtes(&self) -> Vec<u16> {
        let cache = self.state.lock().unwrap().dte_cache.clone();
        cache
            .into_iter()
            .filter(|(id, dte)| self.dte_in_memory(*id) != *dte)
            .map(|(id, _)| id)
            .collect()
    }

    /// Queues an event for the next step.
    pub fn raise_event(&self, event: RawEvent) {
        self.state.lock().unwrap().pending_events.push(event);
    }

    /// One hardware step.
    pub fn step(&self) {
        let mut s = self.state.lock().unwrap();
        // STATUS: software writes are write-1-to-clear.
        let seen = self.reg(regs::STATUS);
        if seen != s.status {
            s.status &= !seen;
        }
        let control = Control::from_bits_retain(self.reg(regs::CONTROL));
        let previous = Control::from_bits_retain(s.previous_control);
        s.previous_control = control.bits();
        let on = control.contains(Control::IOMMU_EN);
        let cmd_on = on && control.contains(Control::CMD_BUF_EN);
        // Software may rewrite COMMAND_HEAD only while the buffer is stopped (disabled
        // or halted); a rewrite with the buffer enabled again restarts it.
        let head_register = self.reg(regs::COMMAND_HEAD);
        if !cmd_on || (s.halted && head_register != s.head_written) {
            s.halted = false;
            let ring = SlotRing::new(8, regs::ENTRY_SIZE);
            s.head = ring.index(self.reg(regs::COMMAND_HEAD)).unwrap_or(0);
        }
        let evt_on = on && control.contains(Control::EVENT_LOG_EN);
        if evt_on && !previous.contains(Control::EVENT_LOG_EN) {
            s.event_tail = SlotRing::new(8, regs::ENTRY_SIZE)
                .index(self.reg(regs::EVENT_TAIL))
                .unwrap_or(0);
        }
        let overflow = s.status & Status::EVENT_OVERFLOW.bits() != 0;
        let logging = evt_on && !(overflow && previous.contains(Control::EVENT_LOG_EN));
        let mut status = Status::from_bits_retain(s.status);
        status.set(Status::CMD_BUF_RUN, cmd_on && !s.halted);
        status.set(Status::EVENT_LOG_RUN, logging);
        s.status = status.bits();

        if cmd_on && !s.halted && !s.stalled {
            let ring = SlotRing::new(8, regs::ENTRY_SIZE);
            let base = self.reg(regs::COMMAND_BUFFER_BASE) & regs::BASE_ADDRESS_MASK;
            let tail = ring.index(self.reg(regs::COMMAND_TAIL)).unwrap_or(0);
            while s.head != tail {
                let at = base + ring.pointer(s.head);
                let command = Command([Self::read_phys(at), Self::read_phys(at + 8)]);
                s.executed.push(command);
                match command.opcode() {
                    Some(Opcode::CompletionWait) => {
                        Self::write_phys(command.0[0] & 0x000F_FFFF_FFFF_FFF8, command.0[1])
                    }
                    Some(Opcode::InvalidateDevtabEntry) => {
                        let id = command.device_id();
                        if s.dte_cache.contains_key(&id) {
                            let fresh = self.dte_in_memory(id);
                            s.dte_cache.insert(id, fresh);
                        }
                    }
                    Some(Opcode::InvalidateIommuAll) => s.dte_cache.clear(),
                    Some(_) => {}
                    None => {
                        s.pending_events.push(RawEvent::encode(
                            5,
                            0,
                            0,
                            crate::fault::EventFlags::empty(),
                            at,
                        ));
                        if s.halt_on_illegal {
                            s.halted = true;
                            let status = s.status & !Status::CMD_BUF_RUN.bits();
                            s.status = status;
                            break;
                        }
                    }
                }
                s.head = ring.next(s.head);
            }
            let head = ring.pointer(s.head);
            s.head_written = head;
            self.set_reg(regs::COMMAND_HEAD, head);
        }

        for (at, event) in core::mem::take(&mut s.unwritten_events) {
            Self::write_phys(at, event.0[0]);
            Self::write_phys(at + 8, event.0[1]);
        }
        let pending = core::mem::take(&mut s.pending_events);
        for event in pending {
            let ring = SlotRing::new(8, regs::ENTRY_SIZE);
            let head = ring.index(self.reg(regs::EVENT_HEAD)).unwrap_or(0);
            let running = s.status & Status::EVENT_LOG_RUN.bits() != 0;
            if !running {
                s.dropped_events += 1;
                continue;
            }
            if ring.next(s.event_tail) == head {
                s.dropped_events += 1;
                s.status |= Status::EVENT_OVERFLOW.bits();
                s.status &= !Status::EVENT_LOG_RUN.bits();
                continue;
            }
            let base = self.reg(regs::EVENT_LOG_BASE) & regs::BASE_ADDRESS_MASK;
            let at = base + u64::from(s.event_tail * regs::ENTRY_SIZE);
            if s.late_event_entries {
                s.unwritten_events.push((at, event));
            } else {
                Self::write_phys(at, event.0[0]);
                Self::write_phys(at + 8, event.0[1]);
            }
            s.event_tail = ring.next(s.event_tail);
            self.set_reg(regs::EVENT_TAIL, ring.pointer(s.event_tail));
        }
        let status = s.status;
        self.set_reg(regs::STATUS, status);
    }

    /// Commands executed since the last call.
    pub fn take_executed(&self) -> Vec<Command> {
        core::mem::take(&mut self.state.lock().unwrap().executed)
    }
}

impl Clock for Model {
    fn now_ns(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.now += 1_000;
        s.now
    }

    fn relax(&self) {
        self.step();
    }
}
