//! The hardware instance of one VT-d remapping unit (VT-d 3.4): bring-up
//! (§10.4.4 GCMD discipline), root and context tables (chapter 9), and the
//! register file behind typed accessors. Queue submission lives with the
//! descriptors in `command.rs`, fault draining in `fault.rs`, the
//! interrupt-remapping table in `interrupt.rs`; the domains and the
//! `IommuUnit` contract over this instance in `unit.rs`.
//!
//! Every wait on the hardware is bounded by a timeout that turns into an
//! error.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use core::time::Duration;

use iommu::{DeviceId, IommuError};
use iommu_kit::{CacheClean, DmaBuffer, Tally};
use os_services::mmio::{Mmio, Reg32, Reg64};
use os_services::{Clock, DmaMemory, wait_until};

use crate::command::{Descriptor, Ring};
use crate::discovery::UnitDescription;
use crate::paging::{TableFactory, TableFormat};
use crate::regs::{self, Cap, Ecap, Global, TableMode};

mod device_table;
mod faults;
mod interrupts;
mod queue;
#[cfg(test)]
pub(crate) use queue::Queued;

/// How long any one hardware handshake may take before it is an error.
pub(crate) const HARDWARE_TIMEOUT: Duration = Duration::from_millis(100);
pub(crate) const PAGE: usize = 4096;

/// Register access; [`Mmio`] in the kernel, a model of the hardware in tests.
pub trait Registers {
    /// Reads a 32-bit register.
    fn read32(&self, reg: Reg32) -> u32;
    /// Writes a 32-bit register.
    fn write32(&self, reg: Reg32, value: u32);
    /// Reads a 64-bit register.
    fn read64(&self, reg: Reg64) -> u64;
    /// Writes a 64-bit register.
    fn write64(&self, reg: Reg64, value: u64);
}

impl Registers for Mmio {
    fn read32(&self, reg: Reg32) -> u32 {
        Mmio::read32(self, reg)
    }
    fn write32(&self, reg: Reg32, value: u32) {
        Mmio::write32(self, reg, value)
    }
    fn read64(&self, reg: Reg64) -> u64 {
        Mmio::read64(self, reg)
    }
    fn write64(&self, reg: Reg64, value: u64) {
        Mmio::write64(self, reg, value)
    }
}

/// The OS services a unit uses.
#[derive(Clone, Copy)]
pub struct Environment<'a> {
    /// Where the unit's structures and tables come from.
    pub dma: &'a (dyn DmaMemory + Sync),
    /// What bounds every hardware wait.
    pub clock: &'a (dyn Clock + Sync),
    /// Writes CPU cache lines covering `[virt, virt + len)` back to memory;
    /// called after table updates when walks do not snoop (ECAP.C = 0).
    pub flush_cache: fn(*const u8, usize),
    /// Where paging domains get their tables: `None` = `io-page-table` in
    /// pages from `dma` (a factory replaces it in tests).
    pub new_table: Option<TableFactory>,
    /// Physical address of a zeroed 4 KiB page that outlives every unit and
    /// that nobody writes: where a dropped unit parks its root table and
    /// interrupt remapping table pointers, so that translation stays on and
    /// blocks everything (no entry is present) instead of letting DMA and
    /// interrupts bypass. `None`: a dropped unit turns translation off.
    pub parking_page: Option<u64>,
}

/// Why the unit refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A bounded hardware wait expired; names the handshake.
    Timeout(&'static str),
    /// FSTS.IQE: the hardware rejected a queued descriptor.
    QueueError,
    /// Out of memory for a structure or table.
    NoMemory,
    /// The hardware lacks something the driver needs.
    Unsupported(&'static str),
    /// The request does not fit the unit.
    Invalid,
}

impl From<Error> for IommuError {
    fn from(error: Error) -> Self {
        match error {
            Error::Timeout(_) | Error::QueueError => IommuError::Timeout,
            Error::NoMemory => IommuError::NoMemory,
            Error::Unsupported(_) => IommuError::Unsupported,
            Error::Invalid => IommuError::Invalid,
        }
    }
}

/// Which translation structures the unit runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Root → context → second-stage tables (VT-d 3.4 §3.4.2).
    Legacy,
    /// Scalable mode, RID_PASID entry with PGTT = second stage (§3.4.3).
    ScalableSecondStage,
    /// Scalable mode, RID_PASID entry with PGTT = first stage (x86-64 format).
    ScalableFirstStage,
}

impl Mode {
    /// Root, context and PASID entries in the scalable-mode formats.
    pub fn is_scalable(self) -> bool {
        self != Mode::Legacy
    }
}

iommu_kit::counters! {
    /// Work done by the unit, for the figures: invalidation descriptors (or
    /// register-based invalidations), wait descriptors and MMIO writes.
    pub struct Counters {
        /// Invalidation descriptors (or register-based invalidations).
        pub invalidations,
        /// Wait descriptors.
        pub waits,
        /// Submissions whose wait was another submitter's wait descriptor,
        /// queued after them (several CPUs' invalidations, one wait).
        pub shared_waits,
        /// Register writes.
        pub mmio_writes,
        /// CPU cache lines of the unit's own structures (queue slots, root,
        /// context, PASID entries, IRTEs) written back for a walker that
        /// does not snoop (ECAP.C = 0): only the bytes the driver wrote. The
        /// page tables' lines are `io-page-table`'s, cleaned per changed run.
        pub cache_lines,
    }
}

iommu_kit::counters! {
    /// What fault draining saw, for the robustness figures: records moved out
    /// of the recording registers, and how often FSTS.PFO said that faults
    /// arrived while every record was full (VT-d 3.4 §7.1.3: those faults are
    /// lost; the hardware does not say how many).
    pub struct FaultStats {
        /// Fault records moved out of the recording registers.
        pub records,
        /// Times FSTS.PFO said faults were lost.
        pub overflows,
    }
}

/// A zeroed, page-aligned DMA allocation the unit's structures live in.
pub(crate) type Page = DmaBuffer;

/// A page (or `len` bytes of pages) for a structure of the unit.
pub(crate) fn alloc_page(env: &Environment<'_>, len: usize) -> Result<Page, Error> {
    DmaBuffer::alloc(env.dma, len, PAGE).ok_or(Error::NoMemory)
}

/// The status word of the harmless wait that replaces a rejected
/// descriptor: the last of the status page, past every slot's own word.
pub(crate) const UNPOLLED_STATUS_OFFSET: usize = PAGE - core::mem::size_of::<u32>();

/// How the unit invalidates its caches.
pub(crate) enum Invalidator {
    /// Queued invalidation (VT-d 3.4 §6.5.2): ring, and the page of wait
    /// descriptors' status words (one a slot, [`Ring::status_offset`], and
    /// one nobody polls, [`UNPOLLED_STATUS_OFFSET`]).
    Queue {
        ring_page: Page,
        ring: Ring,
        status: Page,
    },
    /// Register-based invalidation (§6.5.1) when ECAP.QI is absent.
    Registers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Translation {
    Blocked,
    PassThrough,
    /// Through the domain's table with this root.
    Paging(u64),
}

/// Per-device scalable-mode structures: PASID directory and the table
/// holding the RID_PASID entry.
pub(crate) struct PasidTables {
    directory: Page,
    table: Page,
}

/// Interrupt-remapping table state.
pub(crate) struct InterruptTable {
    page: Page,
    used: Vec<bool>,
    /// The IRTE indexes of device MSI routes ([`IommuUnit::route_msi`]);
    /// only these are freed by `unroute_msi`.
    pub(crate) routes: BTreeSet<u16>,
}

/// What bring-up should enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Use queued invalidation when ECAP.QI offers it.
    pub queued_invalidation: bool,
    /// Enable interrupt remapping when ECAP.IR offers it.
    pub interrupt_remapping: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queued_invalidation: true,
            interrupt_remapping: true,
        }
    }
}

/// The hardware instance of one VT-d remapping unit: its registers, root
/// and context tables, PASID structures, invalidation queue, interrupt
/// remapping table and fault recording registers. It does what it is told
/// (install this translation for that requester, invalidate this range) and
/// knows nothing of domains; [`crate::unit::Vtd`] decides.
pub struct Hardware<'a, R: Registers> {
    regs: R,
    pub(crate) env: Environment<'a>,
    cap: Cap,
    ecap: Ecap,
    mode: Mode,
    pub(crate) description: UnitDescription,
    /// AW code of second-stage tables (§9.3: 1 = 3-level, 2 = 4-level).
    pub(crate) address_width: u8,
    root: Page,
    context_tables: BTreeMap<u8, Page>,
    pasid_tables: BTreeMap<u16, PasidTables>,
    invalidator: Invalidator,
    pub(crate) interrupts: Option<InterruptTable>,
    counters: Tally<Counters>,
    fault_stats: FaultStats,
    /// Held across one register-based command (CCMD, IOTLB registers, a GCMD
    /// write and its GSTS wait): those registers take one command at a time,
    /// and several CPUs may flush at once.
    register_sequence: spin::Mutex<()>,
    /// Held while a rejected descriptor is replaced (FSTS.IQE), so that
    /// CPUs that saw the same stop repair it once.
    queue_recovery: spin::Mutex<()>,
    /// Positions of rejected descriptors, until the caller whose claim
    /// holds one collects it as its error.
    rejected: spin::Mutex<Vec<u64>>,
}

impl<'a, R: Registers> Hardware<'a, R> {
    /// Brings the unit up: root table, invalidation queue, global
    /// invalidation, interrupt remapping, then translation with every device
    /// blocked (no context entry is present).
    pub fn new(
        regs: R,
        env: Environment<'a>,
        description: UnitDescription,
        options: Options,
    ) -> Result<Self, Error> {
        let cap = Cap(regs.read64(regs::CAP));
        let ecap = Ecap(regs.read64(regs::ECAP));
        let mode = if ecap.scalable_mode() && ecap.second_stage() {
            Mode::ScalableSecondStage
        } else if ecap.scalable_mode() && ecap.first_stage() {
            Mode::ScalableFirstStage
        } else {
            Mode::Legacy
        };
        // Prefer 4-level (48-bit) tables, else 3-level (39-bit): SAGAW bit n ⇔ AW code n.
        let address_width = if cap.sagaw() & 0b100 != 0 {
            2
        } else if cap.sagaw() & 0b010 != 0 {
            1
        } else if mode == Mode::ScalableFirstStage {
            2
        } else {
            return Err(Error::Unsupported(
                "no 3- or 4-level second stage in CAP.SAGAW",
            ));
        };
        let root = alloc_page(&env, PAGE)?;
        let mut unit = Self {
            regs,
            env,
            cap,
            ecap,
            mode,
            description,
            address_width,
            root,
            context_tables: BTreeMap::new(),
            pasid_tables: BTreeMap::new(),
            invalidator: Invalidator::Registers,
            interrupts: None,
            counters: Tally::default(),
            fault_stats: FaultStats::default(),
            register_sequence: spin::Mutex::new(()),
            queue_recovery: spin::Mutex::new(()),
            rejected: spin::Mutex::new(Vec::new()),
        };
        unit.bring_up(options)?;
        Ok(unit)
    }

    pub(crate) fn bring_up(&mut self, options: Options) -> Result<(), Error> {
        // Start from a known state if firmware (or a parked unit) left anything
        // on. Translation stays on if it is: turning it off would let DMA
        // bypass until the new root is in place (the root pointer may change
        // under it, the global invalidation below drops what was cached).
        // Interrupt remapping stays on too if it will be wanted again.
        let status = self.status();
        let keep_remapping = options.interrupt_remapping && self.ecap.interrupt_remapping();
        for enable in [Global::INTERRUPT_REMAPPING, Global::QUEUED_INVALIDATION] {
            if status.contains(enable) && !(enable == Global::INTERRUPT_REMAPPING && keep_remapping)
            {
                self.global_command(enable, false)?;
            }
        }
        let table_mode = if self.mode.is_scalable() {
            TableMode::Scalable
        } else {
            TableMode::Legacy
        };
        // Context tables (all entries non-present) for the buses of the listed
        // devices, so that a blocked device reports "context not present".
        let mut buses: Vec<u8> = self
            .description
            .devices
            .iter()
            .map(|sid| (sid >> 8) as u8)
            .collect();
        buses.sort_unstable();
        buses.dedup();
        for bus in buses {
            self.context_table(bus)?;
        }
        self.flush_cache(self.root);
        self.write64(
            regs::RTADDR,
            regs::root_table_address(self.root.phys(), table_mode),
        );
        self.global_command(Global::ROOT_TABLE_POINTER, true)?;

        if options.queued_invalidation && self.ecap.queued_invalidation() {
            // 256-bit descriptors only where PASID-based ones are needed.
            let wide = self.mode.is_scalable();
            let ring_page = alloc_page(&self.env, PAGE)?;
            let status = alloc_page(&self.env, PAGE)?;
            self.write64(regs::IQT, 0);
            self.write64(regs::IQA, regs::queue_address(ring_page.phys(), wide, 0));
            self.invalidator = Invalidator::Queue {
                ring_page,
                ring: Ring::new(PAGE, wide),
                status,
            };
            self.global_command(Global::QUEUED_INVALIDATION, true)?;
        } else if self.mode.is_scalable() {
            // Scalable mode has no register-based invalidation (§6.5): the
            // PASID-cache and PASID-based IOTLB exist only as descriptors.
            return Err(Error::Unsupported(
                "scalable mode without queued invalidation",
            ));
        }
        self.invalidate_all()?;

        if options.interrupt_remapping && self.ecap.interrupt_remapping() {
            self.enable_interrupt_remapping()?;
        }
        // Stale records from before bring-up are not ours to report.
        self.drain_raw_faults(&mut Vec::new());
        if !self.status().contains(Global::TRANSLATION) {
            self.global_command(Global::TRANSLATION, true)?;
        }
        Ok(())
    }

    /// Points the root table and the interrupt remapping table at `parking`
    /// (a zeroed page: no root, context or interrupt entry is present) and
    /// drops everything cached, with translation and remapping left on: every
    /// DMA and remappable interrupt is blocked, and none of this unit's
    /// structures is reachable any more (VT-d 3.4 §6.5: SRTP / SIRTP, then
    /// global context-cache, IOTLB and interrupt-entry-cache invalidation).
    fn park(&mut self, parking: u64) -> Result<(), Error> {
        let table_mode = if self.mode.is_scalable() {
            TableMode::Scalable
        } else {
            TableMode::Legacy
        };
        self.write64(regs::RTADDR, regs::root_table_address(parking, table_mode));
        self.global_command(Global::ROOT_TABLE_POINTER, true)?;
        if self.interrupts.is_some() {
            self.write64(
                regs::IRTA,
                regs::irt_address(parking, false, crate::interrupt::TABLE_ENTRIES_LOG2),
            );
            self.global_command(Global::IRT_POINTER, true)?;
        }
        self.invalidate_all()?;
        if self.interrupts.is_some() {
            self.submit(&[Descriptor::interrupt_entry_cache(None)])?;
        }
        Ok(())
    }

    pub(crate) fn write32(&self, reg: Reg32, value: u32) {
        self.counters.add(|c| c.mmio_writes += 1);
        self.regs.write32(reg, value);
    }

    pub(crate) fn write64(&self, reg: Reg64, value: u64) {
        self.counters.add(|c| c.mmio_writes += 1);
        self.regs.write64(reg, value);
    }

    pub(crate) fn status(&self) -> Global {
        Global::from_bits_retain(self.regs.read32(regs::GSTS))
    }

    pub(crate) fn wait<T>(
        &self,
        what: &'static str,
        done: impl FnMut() -> Option<T>,
    ) -> Result<T, Error> {
        wait_until(self.env.clock, HARDWARE_TIMEOUT, done).map_err(|_| Error::Timeout(what))
    }

    /// Writes GCMD the way §11.4.4 requires: the current enables preserved,
    /// one-shot bits never copied back from GSTS, one change at a time, and
    /// waits (bounded) for GSTS to confirm.
    pub(crate) fn global_command(&self, command: Global, on: bool) -> Result<(), Error> {
        let _sequence = self.register_sequence.lock();
        let value = Global::command(self.status(), command, on);
        self.write32(regs::GCMD, value.bits());
        let regs = &self.regs;
        let done = move || {
            let status = Global::from_bits_retain(regs.read32(regs::GSTS));
            let complete = if command == Global::WRITE_BUFFER_FLUSH {
                !status.contains(Global::WRITE_BUFFER_FLUSH)
            } else if on {
                status.contains(command)
            } else {
                !status.intersects(command)
            };
            complete.then_some(())
        };
        wait_until(self.env.clock, HARDWARE_TIMEOUT, done).map_err(|_| {
            Error::Timeout(match command {
                Global::TRANSLATION => "GSTS.TES",
                Global::ROOT_TABLE_POINTER => "GSTS.RTPS",
                Global::QUEUED_INVALIDATION => "GSTS.QIES",
                Global::INTERRUPT_REMAPPING => "GSTS.IRES",
                Global::IRT_POINTER => "GSTS.IRTPS",
                Global::WRITE_BUFFER_FLUSH => "GSTS.WBFS",
                _ => "GSTS",
            })
        })
    }

    /// §6.8: flush the write buffer after table updates when CAP.RWBF asks for it.
    pub(crate) fn flush_write_buffer(&self) -> Result<(), Error> {
        if self.cap.required_write_buffer_flush() {
            self.global_command(Global::WRITE_BUFFER_FLUSH, true)?;
        }
        Ok(())
    }

    /// Whether walks of the domains' page tables snoop the CPU caches: ECAP.C
    /// in legacy mode; in scalable mode ECAP.SMPWC, with PWSNP set in every
    /// PASID entry that points at a table (VT-d 3.4 §3.6, §9.6; Linux
    /// `iommu_paging_structure_coherency`). Otherwise every table write is
    /// cleaned to memory.
    pub fn page_walks_snoop(&self) -> bool {
        if self.mode.is_scalable() {
            self.ecap.scalable_page_walk_coherent()
        } else {
            self.ecap.coherent()
        }
    }

    /// The cache maintenance writes to the root, context, PASID and
    /// interrupt tables and the queue need: none when those reads snoop
    /// (ECAP.C, in both modes).
    pub(crate) fn clean(&self) -> Option<CacheClean> {
        (!self.ecap.coherent()).then_some(self.env.flush_cache)
    }

    /// Writes back a whole new structure page (once, when it is linked).
    pub(crate) fn flush_cache(&mut self, page: Page) {
        self.clean_range(page, 0, page.len());
    }

    /// Writes back `len` bytes at `offset` of `page` that the driver wrote.
    pub(crate) fn clean_range(&self, page: Page, offset: usize, len: usize) {
        let lines = page.clean(offset, len, self.clean());
        self.counters.add(|c| c.cache_lines += lines as u64);
    }

    /// Publishes an entry (`DmaBuffer::publish`) and counts what it cleaned.
    pub(crate) fn publish(&mut self, page: Page, offset: usize, words: &[u64], hold: Option<u64>) {
        let lines = page.publish(offset, words, 0, hold, self.clean());
        self.counters.add(|c| c.cache_lines += lines as u64);
    }

    /// The table format paging domains of this unit use.
    pub fn table_format(&self) -> TableFormat {
        match self.mode {
            Mode::ScalableFirstStage => TableFormat::FirstStage,
            _ => TableFormat::SecondStage {
                levels: self.address_width + 2,
            },
        }
    }

    /// GSTS as the hardware reports it now.
    pub fn global_status(&self) -> Global {
        self.status()
    }

    /// CAP and ECAP read from the registers again (to check what `hw_info` cached).
    pub fn read_capabilities(&self) -> (u64, u64) {
        (self.regs.read64(regs::CAP), self.regs.read64(regs::ECAP))
    }

    /// The work done since bring-up.
    pub fn counters(&self) -> Counters {
        self.counters.read()
    }

    /// Records drained and overflows seen since bring-up.
    pub fn fault_stats(&self) -> FaultStats {
        self.fault_stats
    }

    /// Physical addresses of the unit's own in-memory structures (root and
    /// context tables, PASID structures, invalidation queue and its status
    /// page, interrupt-remapping table), named, so that tests can aim a
    /// device at them.
    pub fn structure_pages(&self) -> Vec<(&'static str, u64)> {
        let mut pages = alloc::vec![("root table", self.root.phys())];
        pages.extend(
            self.context_tables
                .values()
                .map(|table| ("context table", table.phys())),
        );
        for tables in self.pasid_tables.values() {
            pages.push(("PASID directory", tables.directory.phys()));
            pages.push(("PASID table", tables.table.phys()));
        }
        if let Invalidator::Queue {
            ring_page, status, ..
        } = &self.invalidator
        {
            pages.push(("invalidation queue", ring_page.phys()));
            pages.push(("invalidation wait status", status.phys()));
        }
        if let Some(table) = &self.interrupts {
            pages.push(("interrupt-remapping table", table.page.phys()));
        }
        pages
    }

    /// Which table formats the unit uses.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The capability register (§11.4.2).
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The extended capability register (§11.4.3).
    pub fn ecap(&self) -> Ecap {
        self.ecap
    }

    /// Invalidations go through the queue (ECAP.QI), not the registers.
    pub fn uses_queued_invalidation(&self) -> bool {
        matches!(self.invalidator, Invalidator::Queue { .. })
    }

    /// GSTS.IRES: interrupts are remapped.
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.interrupts.is_some()
    }

    pub(crate) fn requester(&self, device: DeviceId) -> Result<u16, Error> {
        let sid = u16::try_from(device.0).map_err(|_| Error::Invalid)?;
        if self.description.covers(sid) {
            Ok(sid)
        } else {
            Err(Error::Invalid)
        }
    }
}

impl<R: Registers> Drop for Hardware<'_, R> {
    fn drop(&mut self) {
        // No walk may touch the tables freed below: parked, the unit blocks
        // everything with nothing of ours reachable; without a parking page,
        // translation and remapping go off (DMA then bypasses).
        let translating = self.status().contains(Global::TRANSLATION);
        match self.env.parking_page {
            Some(parking) if translating => {
                if self.park(parking).is_err() {
                    // The hardware may still walk our structures: they stay,
                    // leaked, rather than freed under it.
                    return;
                }
            }
            _ => {
                let _ = self.global_command(Global::TRANSLATION, false);
                if self.interrupts.is_some() {
                    let _ = self.global_command(Global::INTERRUPT_REMAPPING, false);
                }
            }
        }
        if self.uses_queued_invalidation() {
            let _ = self.global_command(Global::QUEUED_INVALIDATION, false);
        }
        let env = self.env;
        for (_, table) in core::mem::take(&mut self.context_tables) {
            table.free(env.dma);
        }
        for (_, tables) in core::mem::take(&mut self.pasid_tables) {
            tables.directory.free(env.dma);
            tables.table.free(env.dma);
        }
        if let Some(table) = self.interrupts.take() {
            table.page.free(env.dma);
        }
        if let Invalidator::Queue {
            ring_page, status, ..
        } = self.invalidator
        {
            ring_page.free(env.dma);
            status.free(env.dma);
        }
        self.root.free(env.dma);
    }
}
