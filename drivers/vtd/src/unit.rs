//! One VT-d remapping unit: bring-up, domains and device contexts,
//! invalidation (queued or register-based), fault draining and interrupt
//! remapping.
//!
//! Policy stays with the caller: the unit only does what it is told, keeps
//! every device it was not told about blocked, and bounds every wait on the
//! hardware by a timeout that turns into an error.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};
use core::time::Duration;

use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    IovaRange, MsiMessage, MsiRoute, NestedInvalidation, Prot, ReservedKind, ReservedRegion,
    UnitId, UnitInfo, UnitKind,
};
use os_services::mmio::{Mmio, Reg32, Reg64};
use os_services::{Clock, DmaMemory, wait_until};

use crate::command::{Descriptor, PasidGranularity, Ring};
use crate::device_table::{
    ContextEntry, PASID_TABLE_ENTRIES, PasidDirectoryEntry, PasidEntry, RID_PASID, RootEntry,
    ScalableContextEntry, ScalableRootEntry, TranslationType, scalable_context_slot,
};
use crate::discovery::UnitDescription;
use crate::fault::{Fault, RECORD_VALID_TOP};
use crate::interrupt::{Irte, TABLE_ENTRIES_LOG2, remappable_msi_address};
use crate::invalidation::{self, InvalidationCaps, IotlbPlan};
use crate::paging::{DomainTable, TableFactory, TableFormat};
use crate::regs::{self, Cap, Ecap, FaultControl, FaultStatus, Global, Granularity, TableMode};

/// How long any one hardware handshake may take before it is an error.
const HARDWARE_TIMEOUT: Duration = Duration::from_millis(100);
const PAGE: usize = 4096;
/// The x86 interrupt-message window, never translated as DMA (VT-d 3.4 §3.15).
const INTERRUPT_WINDOW: IovaRange = IovaRange {
    start: 0xFEE0_0000,
    last: 0xFEEF_FFFF,
};

/// Register access; [`Mmio`] in the kernel, a model of the hardware in tests.
pub trait Registers {
    fn read32(&self, reg: Reg32) -> u32;
    fn write32(&self, reg: Reg32, value: u32);
    fn read64(&self, reg: Reg64) -> u64;
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
    pub dma: &'a (dyn DmaMemory + Sync),
    pub clock: &'a (dyn Clock + Sync),
    /// Writes CPU cache lines covering `[virt, virt + len)` back to memory;
    /// called after table updates when walks do not snoop (ECAP.C = 0).
    pub flush_cache: fn(*const u8, usize),
    /// Where paging domains get their tables: `None` = `io-page-table` in
    /// pages from `dma` (a factory replaces it in tests).
    pub new_table: Option<TableFactory>,
}

/// Why the unit refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A bounded hardware wait expired; names the handshake.
    Timeout(&'static str),
    /// FSTS.IQE: the hardware rejected a queued descriptor.
    QueueError,
    NoMemory,
    /// The hardware lacks something the driver needs.
    Unsupported(&'static str),
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
    pub fn is_scalable(self) -> bool {
        self != Mode::Legacy
    }
}

/// Work done by the unit, for the figures: invalidation descriptors (or
/// register-based invalidations), wait descriptors and MMIO writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub invalidations: u64,
    pub waits: u64,
    pub mmio_writes: u64,
}

/// What fault draining saw, for the robustness figures: records moved out
/// of the recording registers, and how often FSTS.PFO said that faults
/// arrived while every record was full (VT-d 3.4 §7.1.3: those faults are
/// lost; the hardware does not say how many).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub records: u64,
    pub overflows: u64,
}

impl Counters {
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            invalidations: self.invalidations - earlier.invalidations,
            waits: self.waits - earlier.waits,
            mmio_writes: self.mmio_writes - earlier.mmio_writes,
        }
    }
}

/// A zeroed, page-aligned DMA allocation, kept as plain numbers so that the
/// unit stays `Send` (the kernel holds it behind a lock).
#[derive(Clone, Copy, Debug)]
struct Page {
    phys: u64,
    virt: usize,
    len: usize,
}

impl Page {
    fn alloc(env: &Environment<'_>, len: usize) -> Result<Self, Error> {
        let region = env.dma.alloc(len, PAGE).ok_or(Error::NoMemory)?;
        Ok(Self {
            phys: region.phys,
            virt: region.virt as usize,
            len: region.len,
        })
    }

    fn free(self, env: &Environment<'_>) {
        env.dma.free(os_services::DmaRegion {
            phys: self.phys,
            virt: self.virt as *mut u8,
            len: self.len,
        });
    }

    fn write<T: Copy>(&self, offset: usize, value: T) {
        assert!(offset + size_of::<T>() <= self.len && offset.is_multiple_of(align_of::<T>()));
        // SAFETY: the allocation is ours, mapped and at least `len` bytes; the
        // offset is checked above. Volatile: the hardware reads it.
        unsafe { core::ptr::write_volatile((self.virt + offset) as *mut T, value) }
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        assert!(offset + size_of::<T>() <= self.len && offset.is_multiple_of(align_of::<T>()));
        // SAFETY: as in `write`; the hardware may have written it.
        unsafe { core::ptr::read_volatile((self.virt + offset) as *const T) }
    }
}

/// How the unit invalidates its caches.
enum Invalidator {
    /// Queued invalidation (VT-d 3.4 §6.5.2): ring, a status word for wait
    /// descriptors and the next status value.
    Queue {
        ring_page: Page,
        ring: Ring,
        status: Page,
        sequence: u32,
    },
    /// Register-based invalidation (§6.5.1) when ECAP.QI is absent.
    Registers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Translation {
    Blocked,
    PassThrough,
    /// Through the domain's table with this root.
    Paging(u64),
}

struct Domain<'a> {
    did: u16,
    translation: Translation,
    devices: usize,
    table: Option<Box<dyn DomainTable + 'a>>,
    /// RMRR ranges already identity-mapped into `table`.
    direct: Vec<IovaRange>,
}

/// Per-device scalable-mode structures: PASID directory and the table
/// holding the RID_PASID entry.
struct PasidTables {
    directory: Page,
    table: Page,
}

/// Interrupt-remapping table state.
struct InterruptTable {
    page: Page,
    used: Vec<bool>,
    /// The IRTE indexes of device MSI routes ([`IommuUnit::route_msi`]);
    /// only these are freed by `unroute_msi`.
    routes: BTreeSet<u16>,
}

/// The route of an MSI that goes through no IRTE (remapping off).
const UNREMAPPED_ROUTE: MsiRoute = MsiRoute(u64::MAX);

/// One VT-d remapping unit.
pub struct Vtd<'a, R: Registers> {
    id: UnitId,
    regs: R,
    env: Environment<'a>,
    cap: Cap,
    ecap: Ecap,
    mode: Mode,
    description: UnitDescription,
    /// AW code of second-stage tables (§9.3: 1 = 3-level, 2 = 4-level).
    address_width: u8,
    root: Page,
    context_tables: BTreeMap<u8, Page>,
    pasid_tables: BTreeMap<u16, PasidTables>,
    invalidator: Invalidator,
    domains: BTreeMap<u32, Domain<'a>>,
    attached: BTreeMap<u16, u32>,
    next_handle: u32,
    /// The lowest domain id never handed out (u32: it may reach 2^16).
    next_did: u32,
    /// Ids of freed domains; each is invalidated before it is handed out again.
    free_dids: Vec<u16>,
    interrupts: Option<InterruptTable>,
    counters: Counters,
    fault_stats: FaultStats,
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

impl<'a, R: Registers> Vtd<'a, R> {
    /// Brings the unit up: root table, invalidation queue, global
    /// invalidation, interrupt remapping, then translation with every device
    /// blocked (no context entry is present).
    pub fn new(
        id: UnitId,
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
        let root = Page::alloc(&env, PAGE)?;
        let mut unit = Self {
            id,
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
            domains: BTreeMap::new(),
            attached: BTreeMap::new(),
            next_handle: 1,
            // DID 0 is reserved under caching mode (§6.1); skip it always.
            next_did: 1,
            free_dids: Vec::new(),
            interrupts: None,
            counters: Counters::default(),
            fault_stats: FaultStats::default(),
        };
        unit.bring_up(options)?;
        Ok(unit)
    }

    fn bring_up(&mut self, options: Options) -> Result<(), Error> {
        // Start from a known state if firmware left anything on.
        let status = self.status();
        for enable in [
            Global::TRANSLATION,
            Global::INTERRUPT_REMAPPING,
            Global::QUEUED_INVALIDATION,
        ] {
            if status.contains(enable) {
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
            regs::root_table_address(self.root.phys, table_mode),
        );
        self.global_command(Global::ROOT_TABLE_POINTER, true)?;

        if options.queued_invalidation && self.ecap.queued_invalidation() {
            // 256-bit descriptors only where PASID-based ones are needed.
            let wide = self.mode.is_scalable();
            let ring_page = Page::alloc(&self.env, PAGE)?;
            let status = Page::alloc(&self.env, PAGE)?;
            self.write64(regs::IQT, 0);
            self.write64(regs::IQA, regs::queue_address(ring_page.phys, wide, 0));
            self.invalidator = Invalidator::Queue {
                ring_page,
                ring: Ring::new(PAGE, wide),
                status,
                sequence: 0,
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
        self.global_command(Global::TRANSLATION, true)?;
        Ok(())
    }

    fn enable_interrupt_remapping(&mut self) -> Result<(), Error> {
        if matches!(self.invalidator, Invalidator::Registers) {
            // §6.5.2: interrupt-entry-cache invalidation exists only as a descriptor.
            return Err(Error::Unsupported(
                "interrupt remapping without queued invalidation",
            ));
        }
        let entries = 1usize << TABLE_ENTRIES_LOG2;
        let page = Page::alloc(&self.env, entries * size_of::<Irte>())?;
        self.flush_cache(page);
        self.write64(
            regs::IRTA,
            regs::irt_address(page.phys, false, TABLE_ENTRIES_LOG2),
        );
        self.interrupts = Some(InterruptTable {
            page,
            used: alloc::vec![false; entries],
            routes: BTreeSet::new(),
        });
        self.global_command(Global::IRT_POINTER, true)?;
        self.submit(&[Descriptor::interrupt_entry_cache(None)])?;
        self.global_command(Global::INTERRUPT_REMAPPING, true)?;
        // Compatibility-format interrupts bypass the table (§5.1.2.1): they
        // are blocked only while GSTS.CFIS is clear, which firmware may have
        // left set (Linux `iommu_enable_irq_remapping` clears it too). QEMU
        // does not model CFI: it reports CFIS clear and still lets them pass.
        if self.status().contains(Global::COMPATIBILITY_FORMAT) {
            self.global_command(Global::COMPATIBILITY_FORMAT, false)?;
        }
        Ok(())
    }

    // ---- registers --------------------------------------------------------

    fn write32(&mut self, reg: Reg32, value: u32) {
        self.counters.mmio_writes += 1;
        self.regs.write32(reg, value);
    }

    fn write64(&mut self, reg: Reg64, value: u64) {
        self.counters.mmio_writes += 1;
        self.regs.write64(reg, value);
    }

    fn status(&self) -> Global {
        Global::from_bits_retain(self.regs.read32(regs::GSTS))
    }

    fn wait<T>(&self, what: &'static str, done: impl FnMut() -> Option<T>) -> Result<T, Error> {
        wait_until(self.env.clock, HARDWARE_TIMEOUT, done).map_err(|_| Error::Timeout(what))
    }

    /// Writes GCMD the way §11.4.4 requires: the current enables preserved,
    /// one-shot bits never copied back from GSTS, one change at a time, and
    /// waits (bounded) for GSTS to confirm.
    fn global_command(&mut self, command: Global, on: bool) -> Result<(), Error> {
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
    fn flush_write_buffer(&mut self) -> Result<(), Error> {
        if self.cap.required_write_buffer_flush() {
            self.global_command(Global::WRITE_BUFFER_FLUSH, true)?;
        }
        Ok(())
    }

    fn flush_cache(&self, page: Page) {
        if !self.ecap.coherent() {
            (self.env.flush_cache)(page.virt as *const u8, page.len);
        }
    }

    // ---- invalidation -------------------------------------------------------

    /// Queues `descriptors` plus one wait descriptor, moves the tail once and
    /// waits (bounded) for the status write.
    fn submit(&mut self, descriptors: &[Descriptor]) -> Result<(), Error> {
        let Invalidator::Queue {
            ring_page,
            ring,
            status,
            sequence,
        } = &mut self.invalidator
        else {
            return Err(Error::Unsupported("queued invalidation"));
        };
        let head = ring.head_slot(self.regs.read64(regs::IQH));
        if ring.free(head) < descriptors.len() + 1 {
            return Err(Error::Timeout("invalidation queue full"));
        }
        *sequence = sequence.wrapping_add(1);
        let token = *sequence;
        let wait = Descriptor::wait(status.phys, token);
        for descriptor in descriptors.iter().chain(core::iter::once(&wait)) {
            let offset = ring.tail() * ring.slot_bytes();
            let words = if ring.is_wide() { 4 } else { 2 };
            for (index, word) in descriptor.0[..words].iter().enumerate() {
                ring_page.write(offset + index * 8, *word);
            }
            ring.advance();
        }
        let tail = ring.tail_register();
        let status = *status;
        let ring_page = *ring_page;
        self.counters.invalidations += descriptors.len() as u64;
        self.counters.waits += 1;
        if !self.ecap.coherent() {
            (self.env.flush_cache)(ring_page.virt as *const u8, ring_page.len);
        }
        fence(Ordering::SeqCst);
        self.write64(regs::IQT, tail);
        let regs = &self.regs;
        let result = wait_until(self.env.clock, HARDWARE_TIMEOUT, || {
            if status.read::<u32>(0) == token {
                return Some(Ok(()));
            }
            let faults = FaultStatus::from_bits_retain(regs.read32(regs::FSTS));
            faults
                .contains(FaultStatus::QUEUE_ERROR)
                .then_some(Err(Error::QueueError))
        });
        match result {
            Ok(Err(Error::QueueError)) => {
                self.recover_queue();
                Err(Error::QueueError)
            }
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout("invalidation wait")),
        }
    }

    /// After FSTS.IQE the hardware stops at the rejected descriptor (§6.5.2.10):
    /// replace it with a harmless wait, then clear IQE so that the queue runs
    /// again from there. The wait writes the failed submission's own token
    /// (nobody waits for it any more): QEMU rejects a wait descriptor with
    /// neither SW nor IF, which would stop the queue again at the same slot.
    fn recover_queue(&mut self) {
        let Invalidator::Queue {
            ring_page,
            ring,
            status,
            sequence,
        } = &self.invalidator
        else {
            return;
        };
        let slot = ring.head_slot(self.regs.read64(regs::IQH));
        let offset = slot * ring.slot_bytes();
        let harmless = Descriptor::wait(status.phys, *sequence);
        let words = if ring.is_wide() { 4 } else { 2 };
        for (index, word) in harmless.0[..words].iter().enumerate() {
            ring_page.write(offset + index * 8, *word);
        }
        let ring_page = *ring_page;
        self.flush_cache(ring_page);
        fence(Ordering::SeqCst);
        self.write32(regs::FSTS, FaultStatus::QUEUE_ERROR.bits());
    }

    /// Queues raw descriptors plus a wait, like every invalidation does;
    /// tests inject malformed ones through this to provoke FSTS.IQE.
    pub fn submit_raw(&mut self, descriptors: &[Descriptor]) -> Result<(), Error> {
        self.submit(descriptors)
    }

    /// Register-based context-cache invalidation (§6.5.1.1).
    fn register_context_invalidation(
        &mut self,
        granularity: Granularity,
        did: u16,
        sid: u16,
    ) -> Result<(), Error> {
        self.counters.invalidations += 1;
        self.write64(regs::CCMD, regs::context_command(granularity, did, sid));
        let regs = &self.regs;
        let done = || (regs.read64(regs::CCMD) & regs::CCMD_BUSY == 0).then_some(());
        self.wait("CCMD", done)
    }

    /// Register-based IOTLB invalidation (§6.5.1.2).
    fn register_iotlb_invalidation(
        &mut self,
        granularity: Granularity,
        did: u16,
        address: u64,
        mask: u8,
        leaf_only: bool,
    ) -> Result<(), Error> {
        self.counters.invalidations += 1;
        if granularity == Granularity::Selective {
            self.write64(
                regs::iva(self.ecap),
                regs::invalidate_address(address, mask, leaf_only),
            );
        }
        self.write64(
            regs::iotlb(self.ecap),
            regs::iotlb_command(granularity, did),
        );
        let register = regs::iotlb(self.ecap);
        let regs = &self.regs;
        let done = || (regs.read64(register) & regs::IOTLB_BUSY == 0).then_some(());
        self.wait("IOTLB invalidation register", done)
    }

    fn invalidate_all(&mut self) -> Result<(), Error> {
        match self.invalidator {
            Invalidator::Queue { .. } => self.submit(&[
                Descriptor::context_cache(Granularity::Global, 0, 0),
                Descriptor::iotlb(Granularity::Global, 0, 0, 0, false),
            ]),
            Invalidator::Registers => {
                self.register_context_invalidation(Granularity::Global, 0, 0)?;
                self.register_iotlb_invalidation(Granularity::Global, 0, 0, 0, false)
            }
        }
    }

    /// After a device's context (and, in scalable mode, its RID_PASID entry)
    /// changed from present with `did`: context cache, PASID cache, IOTLB
    /// (§6.5.3.3 / §6.5.3.4 guidance).
    fn invalidate_device(&mut self, sid: u16, did: u16) -> Result<(), Error> {
        match self.invalidator {
            Invalidator::Queue { .. } => {
                let mut descriptors =
                    alloc::vec![Descriptor::context_cache(Granularity::Selective, did, sid)];
                match self.mode {
                    Mode::Legacy => {}
                    Mode::ScalableSecondStage | Mode::ScalableFirstStage => {
                        descriptors.push(Descriptor::pasid_cache(did, RID_PASID))
                    }
                }
                descriptors.push(self.domain_iotlb_descriptor(did));
                self.submit(&descriptors)
            }
            Invalidator::Registers => {
                self.register_context_invalidation(Granularity::Selective, did, sid)?;
                self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
            }
        }
    }

    /// Domain-wide IOTLB invalidation in the form the mode needs: first-stage
    /// entries are tagged by PASID and need the PASID-based descriptor.
    fn domain_iotlb_descriptor(&self, did: u16) -> Descriptor {
        match self.mode {
            Mode::ScalableFirstStage => {
                Descriptor::pasid_iotlb(PasidGranularity::Pasid, did, RID_PASID, 0, 0, false)
            }
            _ => Descriptor::iotlb(Granularity::Domain, did, 0, 0, false),
        }
    }

    /// Under caching mode a not-present → present context change must be
    /// invalidated too, with DID 0 for the context cache (§6.1).
    fn invalidate_new_context(&mut self, sid: u16, did: u16) -> Result<(), Error> {
        if !self.cap.caching_mode() {
            return self.flush_write_buffer();
        }
        match self.invalidator {
            Invalidator::Queue { .. } => {
                let mut descriptors =
                    alloc::vec![Descriptor::context_cache(Granularity::Selective, 0, sid)];
                if self.mode.is_scalable() {
                    descriptors.push(Descriptor::pasid_cache(did, RID_PASID));
                }
                descriptors.push(self.domain_iotlb_descriptor(did));
                self.submit(&descriptors)
            }
            Invalidator::Registers => {
                self.register_context_invalidation(Granularity::Selective, 0, sid)?;
                self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
            }
        }
    }

    /// IOTLB invalidation covering `gather` in domain `did`: one page-selective
    /// invalidation with the smallest address mask that covers the range,
    /// domain-selective past CAP.MAMV or without CAP.PSI (§6.5.2.3).
    fn invalidate_range(&mut self, did: u16, gather: &Gather) -> Result<(), Error> {
        let caps = InvalidationCaps {
            page_selective: self.cap.page_selective_invalidation(),
            max_address_mask: self.cap.max_address_mask(),
        };
        match (&self.invalidator, invalidation::plan(gather, caps)) {
            (_, IotlbPlan::Nothing) => Ok(()),
            (
                Invalidator::Queue { .. },
                IotlbPlan::PageSelective {
                    address,
                    mask,
                    leaf_only,
                },
            ) => {
                let descriptor = match self.mode {
                    Mode::ScalableFirstStage => Descriptor::pasid_iotlb(
                        PasidGranularity::Page,
                        did,
                        RID_PASID,
                        address,
                        mask,
                        leaf_only,
                    ),
                    _ => Descriptor::iotlb(Granularity::Selective, did, address, mask, leaf_only),
                };
                self.submit(&[descriptor])
            }
            (Invalidator::Queue { .. }, IotlbPlan::Domain) => {
                let descriptor = self.domain_iotlb_descriptor(did);
                self.submit(&[descriptor])
            }
            (
                Invalidator::Registers,
                IotlbPlan::PageSelective {
                    address,
                    mask,
                    leaf_only,
                },
            ) => self.register_iotlb_invalidation(
                Granularity::Selective,
                did,
                address,
                mask,
                leaf_only,
            ),
            (Invalidator::Registers, IotlbPlan::Domain) => {
                self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
            }
        }
    }

    // ---- contexts -----------------------------------------------------------

    fn context_table(&mut self, bus: u8) -> Result<Page, Error> {
        if let Some(page) = self.context_tables.get(&bus) {
            return Ok(*page);
        }
        // Scalable mode: lower (devfn 0-127) and upper (128-255) tables.
        let pages = if self.mode.is_scalable() { 2 } else { 1 };
        let table = Page::alloc(&self.env, pages * PAGE)?;
        self.flush_cache(table);
        let offset = usize::from(bus) * size_of::<RootEntry>();
        if self.mode.is_scalable() {
            let entry = ScalableRootEntry::new(table.phys, table.phys + PAGE as u64);
            self.root.write(offset + 8, entry.high);
            self.root.write(offset, entry.low);
        } else {
            let entry = RootEntry::new(table.phys);
            self.root.write(offset + 8, entry.high);
            self.root.write(offset, entry.low);
        }
        self.flush_cache(self.root);
        self.context_tables.insert(bus, table);
        Ok(table)
    }

    /// Byte offset of `devfn`'s context entry in its bus's table allocation.
    fn context_offset(&self, devfn: u8) -> usize {
        if self.mode.is_scalable() {
            let (upper, index) = scalable_context_slot(devfn);
            usize::from(upper) * PAGE + index * size_of::<ScalableContextEntry>()
        } else {
            usize::from(devfn) * size_of::<ContextEntry>()
        }
    }

    fn pasid_tables(&mut self, sid: u16) -> Result<(Page, Page), Error> {
        if let Some(tables) = self.pasid_tables.get(&sid) {
            return Ok((tables.directory, tables.table));
        }
        let directory = Page::alloc(&self.env, PAGE)?;
        let table = match Page::alloc(&self.env, PASID_TABLE_ENTRIES * size_of::<PasidEntry>()) {
            Ok(table) => table,
            Err(error) => {
                directory.free(&self.env);
                return Err(error);
            }
        };
        // RID_PASID (0) lives in directory slot 0.
        directory.write(0, PasidDirectoryEntry::new(table.phys).0);
        self.flush_cache(directory);
        self.pasid_tables
            .insert(sid, PasidTables { directory, table });
        Ok((directory, table))
    }

    /// Makes `sid`'s context non-present (the blocked state) and invalidates
    /// what the old domain `did` may have cached.
    fn block(&mut self, sid: u16, did: u16) -> Result<(), Error> {
        let [bus, devfn] = sid.to_be_bytes();
        let table = self.context_table(bus)?;
        let offset = self.context_offset(devfn);
        // Clearing P (first word) alone is atomic for the hardware.
        table.write::<u64>(offset, 0);
        self.flush_cache(table);
        self.invalidate_device(sid, did)?;
        if let Some(tables) = self.pasid_tables.get(&sid) {
            tables.table.write::<u64>(0, 0);
            self.flush_cache(tables.table);
        }
        Ok(())
    }

    /// Points `sid`'s context at `translation` with domain id `did`; the
    /// context must be non-present (blocked) now.
    fn install(&mut self, sid: u16, did: u16, translation: Translation) -> Result<(), Error> {
        if translation == Translation::Blocked {
            return Ok(());
        }
        if translation == Translation::PassThrough && !self.ecap.pass_through() {
            return Err(Error::Unsupported("ECAP.PT"));
        }
        let [bus, devfn] = sid.to_be_bytes();
        let table = self.context_table(bus)?;
        let offset = self.context_offset(devfn);
        if self.mode.is_scalable() {
            let (directory, pasid_table) = self.pasid_tables(sid)?;
            let entry = match (translation, self.mode) {
                (Translation::Paging(root), Mode::ScalableFirstStage) => {
                    PasidEntry::first_stage(root, self.address_width, did)
                }
                (Translation::Paging(root), _) => {
                    PasidEntry::second_stage(root, self.address_width, did)
                }
                _ => PasidEntry::pass_through(self.address_width, did),
            };
            // Present bit (word 0) last.
            for (index, word) in entry.words.iter().enumerate().rev() {
                pasid_table.write(index * 8, *word);
            }
            self.flush_cache(pasid_table);
            let context = ScalableContextEntry::new(directory.phys, 0);
            for (index, word) in context.words.iter().enumerate().rev() {
                table.write(offset + index * 8, *word);
            }
        } else {
            let entry = match translation {
                Translation::Paging(root) => {
                    ContextEntry::new(TranslationType::Translated, root, self.address_width, did)
                }
                _ => ContextEntry::new(TranslationType::PassThrough, 0, self.address_width, did),
            };
            table.write(offset + 8, entry.high);
            fence(Ordering::SeqCst);
            table.write(offset, entry.low);
        }
        self.flush_cache(table);
        self.invalidate_new_context(sid, did)
    }

    /// Identity-maps the device's RMRRs (VT-d 3.4 §8.4) into a paging
    /// domain, once per domain and range.
    fn map_direct_regions(&mut self, sid: u16, handle: u32) -> Result<(), IommuError> {
        let ranges: Vec<IovaRange> = self
            .description
            .reserved
            .iter()
            .filter(|region| region.requester == sid)
            .map(|region| region.range)
            .collect();
        let domain = self.domains.get_mut(&handle).ok_or(IommuError::Invalid)?;
        let Some(table) = domain.table.as_mut() else {
            return Ok(());
        };
        for range in ranges {
            if domain.direct.contains(&range) {
                continue;
            }
            let read_write = Prot {
                read: true,
                write: true,
            };
            table.map(
                range.start,
                range.start,
                range.last - range.start + 1,
                read_write,
            )?;
            domain.direct.push(range);
        }
        Ok(())
    }

    // ---- faults -------------------------------------------------------------

    /// Moves every pending fault record into `out` (raw), clears the records
    /// and the overflow bit so that the hardware records again.
    pub fn drain_raw_faults(&mut self, out: &mut Vec<Fault>) -> usize {
        let before = out.len();
        let status = FaultStatus::from_bits_retain(self.regs.read32(regs::FSTS));
        if status.contains(FaultStatus::PENDING) {
            let count = self.cap.fault_record_count();
            let first = status.first_record() % count;
            for step in 0..count {
                let index = (first + step) % count;
                let high = self.regs.read64(regs::fault_record_high(self.cap, index));
                let low = self.regs.read64(regs::fault_record_low(self.cap, index));
                let Some(fault) = Fault::decode(low, high) else {
                    continue;
                };
                out.push(fault);
                self.write32(regs::fault_record_top(self.cap, index), RECORD_VALID_TOP);
            }
        }
        let sticky = status & FaultStatus::OVERFLOW;
        if !sticky.is_empty() {
            self.fault_stats.overflows += 1;
            self.write32(regs::FSTS, sticky.bits());
        }
        self.fault_stats.records += (out.len() - before) as u64;
        out.len() - before
    }

    /// Routes the fault event (§7.3) to an MSI and unmasks it (FECTL.IM resets to 1).
    pub fn enable_fault_interrupt(&mut self, address: u64, data: u32) {
        self.write32(regs::FEDATA, data);
        self.write32(regs::FEADDR, address as u32);
        self.write32(regs::FEUADDR, (address >> 32) as u32);
        self.write32(regs::FECTL, 0);
    }

    pub fn fault_control(&self) -> FaultControl {
        FaultControl::from_bits_retain(self.regs.read32(regs::FECTL))
    }

    // ---- interrupt remapping ---------------------------------------------

    /// Takes a free interrupt-remapping table index.
    pub fn alloc_interrupt(&mut self) -> Option<u16> {
        let table = self.interrupts.as_mut()?;
        let index = table.used.iter().position(|used| !used)?;
        table.used[index] = true;
        Some(index as u16)
    }

    /// Writes IRTE `index` and invalidates its interrupt-entry-cache entry.
    pub fn set_interrupt(&mut self, index: u16, entry: Irte) -> Result<(), Error> {
        let table = self
            .interrupts
            .as_ref()
            .ok_or(Error::Unsupported("interrupt remapping"))?;
        let page = table.page;
        if !table.used.get(usize::from(index)).copied().unwrap_or(false) {
            return Err(Error::Invalid);
        }
        let offset = usize::from(index) * size_of::<Irte>();
        // Not present while the entry is half written (§9.10).
        page.write::<u64>(offset, 0);
        page.write(offset + 8, entry.high);
        fence(Ordering::SeqCst);
        page.write(offset, entry.low);
        self.flush_cache(page);
        self.submit(&[Descriptor::interrupt_entry_cache(Some(index))])
    }

    /// Makes IRTE `index` non-present (interrupts through it are blocked and
    /// reported) and invalidates it; the index stays allocated.
    pub fn clear_interrupt(&mut self, index: u16) -> Result<(), Error> {
        self.set_interrupt(index, Irte::default())
    }

    /// Frees an index after clearing it.
    pub fn free_interrupt(&mut self, index: u16) -> Result<(), Error> {
        self.clear_interrupt(index)?;
        if let Some(table) = self.interrupts.as_mut() {
            table.used[usize::from(index)] = false;
        }
        Ok(())
    }

    // ---- accessors ----------------------------------------------------------

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

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Records drained and overflows seen since bring-up.
    pub fn fault_stats(&self) -> FaultStats {
        self.fault_stats
    }

    /// FSTS as the hardware reports it now.
    pub fn fault_status(&self) -> FaultStatus {
        FaultStatus::from_bits_retain(self.regs.read32(regs::FSTS))
    }

    /// Physical addresses of the unit's own in-memory structures (root and
    /// context tables, PASID structures, invalidation queue and its status
    /// page, interrupt-remapping table), named, so that tests can aim a
    /// device at them.
    pub fn structure_pages(&self) -> Vec<(&'static str, u64)> {
        let mut pages = alloc::vec![("root table", self.root.phys)];
        pages.extend(
            self.context_tables
                .values()
                .map(|table| ("context table", table.phys)),
        );
        for tables in self.pasid_tables.values() {
            pages.push(("PASID directory", tables.directory.phys));
            pages.push(("PASID table", tables.table.phys));
        }
        if let Invalidator::Queue {
            ring_page, status, ..
        } = &self.invalidator
        {
            pages.push(("invalidation queue", ring_page.phys));
            pages.push(("invalidation wait status", status.phys));
        }
        if let Some(table) = &self.interrupts {
            pages.push(("interrupt-remapping table", table.page.phys));
        }
        pages
    }

    /// Physical address of a paging domain's top-level I/O page table.
    pub fn domain_table_root(&self, domain: DomainHandle) -> Option<u64> {
        let table = self.domains.get(&domain.0)?.table.as_ref()?;
        Some(table.root())
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn cap(&self) -> Cap {
        self.cap
    }

    pub fn ecap(&self) -> Ecap {
        self.ecap
    }

    pub fn uses_queued_invalidation(&self) -> bool {
        matches!(self.invalidator, Invalidator::Queue { .. })
    }

    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.interrupts.is_some()
    }

    /// The domain id the hardware sees for `domain`.
    pub fn domain_id(&self, domain: DomainHandle) -> Option<u16> {
        self.domains.get(&domain.0).map(|domain| domain.did)
    }

    /// Invalidates the IOTLB for `gather` in `domain` (the work `flush` does).
    /// Table pages that unmaps unlinked are freed only after it completed.
    pub fn invalidate(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), Error> {
        let did = self.domain_id(domain).ok_or(Error::Invalid)?;
        self.invalidate_range(did, gather)?;
        if let Some(table) = self
            .domains
            .get_mut(&domain.0)
            .and_then(|entry| entry.table.as_mut())
        {
            table.release_unlinked();
        }
        Ok(())
    }

    /// A domain id for a new domain, and whether it was used before: a freed
    /// one, after a domain-selective IOTLB invalidation removed whatever the
    /// hardware still caches under it (§6.5.2.3), or else the lowest id never
    /// handed out. `NoMemory` once CAP.ND's ids are all live.
    fn take_domain_id(&mut self) -> Result<(u16, bool), IommuError> {
        if let Some(did) = self.free_dids.pop() {
            let invalidated = match self.invalidator {
                Invalidator::Queue { .. } => {
                    let descriptor = self.domain_iotlb_descriptor(did);
                    self.submit(&[descriptor])
                }
                Invalidator::Registers => {
                    self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
                }
            };
            if let Err(error) = invalidated {
                self.free_dids.push(did);
                return Err(error.into());
            }
            return Ok((did, true));
        }
        let limit = self.cap.domain_count().min(1 << 16);
        let did = u16::try_from(self.next_did)
            .ok()
            .filter(|_| self.next_did < limit)
            .ok_or(IommuError::NoMemory)?;
        self.next_did += 1;
        Ok((did, false))
    }

    /// The translation and table of a new domain of `kind` (checked by the caller).
    fn build_domain(
        &mut self,
        kind: DomainKind,
    ) -> Result<(Translation, Option<Box<dyn DomainTable + 'a>>), IommuError> {
        Ok(match kind {
            DomainKind::Blocked => (Translation::Blocked, None),
            DomainKind::Identity if self.ecap.pass_through() => (Translation::PassThrough, None),
            DomainKind::Paging | DomainKind::NestParent => {
                let table: Box<dyn DomainTable + 'a> = match self.env.new_table {
                    Some(factory) => factory(self.table_format()).ok_or(IommuError::Unsupported)?,
                    None => crate::paging::new_table(
                        self.table_format(),
                        self.cap,
                        self.ecap,
                        self.env.dma,
                        self.env.flush_cache,
                    )?,
                };
                (Translation::Paging(table.root()), Some(table))
            }
            _ => return Err(IommuError::Unsupported),
        })
    }

    fn requester(&self, device: DeviceId) -> Result<u16, Error> {
        let sid = u16::try_from(device.0).map_err(|_| Error::Invalid)?;
        if self.description.covers(sid) {
            Ok(sid)
        } else {
            Err(Error::Invalid)
        }
    }
}

impl<'a, R: Registers> IommuUnit for Vtd<'a, R> {
    fn info(&self) -> UnitInfo {
        let width = match self.address_width {
            1 => 39,
            _ => 48,
        }
        .min(self.cap.max_guest_address_width());
        // The leaves io-page-table will use for this unit's format: second
        // stage per CAP.SLLPS, first stage 2 MiB always and 1 GiB per CAP.FS1GP.
        let mut page_sizes = 1u64 << 12;
        let (large_2m, large_1g) = match self.mode {
            Mode::ScalableFirstStage => (true, self.cap.first_stage_1g_pages()),
            _ => {
                let sllps = self.cap.second_stage_large_pages();
                (sllps & 1 != 0, sllps & 2 != 0)
            }
        };
        if large_2m {
            page_sizes |= 1 << 21;
        }
        if large_1g {
            page_sizes |= 1 << 30;
        }
        UnitInfo {
            name: "intel-vtd",
            kind: UnitKind::IntelVtd,
            aperture: IovaRange {
                start: 0,
                last: (1u64 << width) - 1,
            },
            page_sizes,
            nesting: None,
        }
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<ReservedRegion> {
        let mut regions = alloc::vec![ReservedRegion {
            range: INTERRUPT_WINDOW,
            kind: ReservedKind::Msi,
        }];
        regions.extend(
            self.description
                .reserved
                .iter()
                .filter(|region| u32::from(region.requester) == device.0)
                .map(|region| ReservedRegion {
                    range: region.range,
                    kind: ReservedKind::Direct,
                }),
        );
        regions
    }

    fn hw_info(&self) -> HwInfo {
        HwInfo::IntelVtd {
            cap: self.cap.0,
            ecap: self.ecap.0,
        }
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        match kind {
            DomainKind::Blocked | DomainKind::Paging | DomainKind::NestParent => {}
            DomainKind::Identity if self.ecap.pass_through() => {}
            _ => return Err(IommuError::Unsupported),
        }
        let (did, recycled) = self.take_domain_id()?;
        let built = self.build_domain(kind);
        let (translation, table) = match built {
            Ok(built) => built,
            Err(error) => {
                if recycled {
                    self.free_dids.push(did);
                } else {
                    self.next_did -= 1;
                }
                return Err(error);
            }
        };
        let handle = self.next_handle;
        self.next_handle += 1;
        self.domains.insert(
            handle,
            Domain {
                did,
                translation,
                devices: 0,
                table,
                direct: Vec::new(),
            },
        );
        Ok(DomainHandle(handle))
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let entry = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        if entry.devices != 0 {
            return Err(IommuError::Busy);
        }
        if let Some(mut removed) = self.domains.remove(&domain.0) {
            if let Some(table) = removed.table.as_mut() {
                // No device walks it any more, and its domain id is
                // invalidated before another domain gets it, so nothing can
                // still use the unlinked pages.
                table.release_unlinked();
            }
            self.free_dids.push(removed.did);
        }
        Ok(())
    }

    /// Under caching mode the returned gather names the new range (a
    /// not-present → present change must be invalidated, §6.1); otherwise it
    /// is empty and the following `flush` costs nothing.
    fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        let entry = self.domains.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
        let table = entry.table.as_mut().ok_or(IommuError::Invalid)?;
        let gather = table.map(iova, phys, len, prot)?;
        if self.cap.caching_mode() {
            return Ok(gather);
        }
        self.flush_write_buffer()?;
        Ok(Gather::default())
    }

    fn unmap(&mut self, domain: DomainHandle, iova: u64, len: u64) -> Gather {
        match self
            .domains
            .get_mut(&domain.0)
            .and_then(|entry| entry.table.as_mut())
        {
            Some(table) => table.unmap(iova, len),
            None => Gather::default(),
        }
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        Ok(self.invalidate(domain, gather)?)
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        let sid = self.requester(device)?;
        let target = self.domains.get(&domain.0).ok_or(IommuError::Invalid)?;
        let (did, translation) = (target.did, target.translation);
        let previous = self.attached.get(&sid).copied();
        if previous == Some(domain.0) {
            return Ok(());
        }
        // Everything that can fail for want of memory happens before the
        // switch, so that a failure leaves the device where it was; the RMRRs
        // are mapped first so that the device never runs without them.
        self.map_direct_regions(sid, domain.0)?;
        self.context_table((sid >> 8) as u8)?;
        if self.mode.is_scalable() && translation != Translation::Blocked {
            self.pasid_tables(sid)?;
        }
        if let Some(old) = previous.and_then(|handle| self.domains.get(&handle)) {
            let (old_did, old_translation) = (old.did, old.translation);
            if old_translation != Translation::Blocked {
                self.block(sid, old_did)?;
            }
        }
        if let Err(error) = self.install(sid, did, translation) {
            // Stay blocked rather than half-attached.
            self.detach(device);
            return Err(error.into());
        }
        if let Some(old) = previous.and_then(|handle| self.domains.get_mut(&handle)) {
            old.devices -= 1;
        }
        if let Some(new) = self.domains.get_mut(&domain.0) {
            new.devices += 1;
        }
        self.attached.insert(sid, domain.0);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) {
        let Ok(sid) = self.requester(device) else {
            return;
        };
        let Some(handle) = self.attached.remove(&sid) else {
            return;
        };
        if let Some(domain) = self.domains.get_mut(&handle) {
            domain.devices -= 1;
            let (did, translation) = (domain.did, domain.translation);
            if translation != Translation::Blocked {
                // The entry is non-present whatever the invalidation returns; a
                // timeout here leaves at worst stale cached translations that
                // the next global invalidation removes.
                let _ = self.block(sid, did);
            }
        }
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        let mut raw = Vec::new();
        self.drain_raw_faults(&mut raw);
        out.extend(raw.iter().map(|fault| fault.to_record(self.id)));
        raw.len()
    }

    fn invalidate_nested(
        &mut self,
        _domain: DomainHandle,
        _requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (0, Err(IommuError::Unsupported))
    }

    /// With remapping on, the MSI goes through a fresh IRTE that verifies the
    /// requester (§9.10 SVT) and the device sends the remappable format
    /// (§5.1.5.2). With remapping off, compatibility-format MSIs are not
    /// translated (§5.1.2.1) and `message` is returned as it is.
    fn route_msi(
        &mut self,
        device: DeviceId,
        message: MsiMessage,
    ) -> Result<(MsiRoute, MsiMessage), IommuError> {
        let requester = u16::try_from(device.0).map_err(|_| IommuError::Invalid)?;
        if self.interrupts.is_none() {
            return Ok((UNREMAPPED_ROUTE, message));
        }
        let index = self.alloc_interrupt().ok_or(IommuError::NoMemory)?;
        let entry = Irte::remapped(message.x86_vector(), message.x86_destination(), requester);
        if let Err(error) = self.set_interrupt(index, entry) {
            let _ = self.free_interrupt(index);
            return Err(error.into());
        }
        if let Some(table) = self.interrupts.as_mut() {
            table.routes.insert(index);
        }
        let message = MsiMessage {
            address: remappable_msi_address(index),
            data: 0,
        };
        Ok((MsiRoute(u64::from(index)), message))
    }

    /// Remapping on and compatibility format blocked (GSTS.IRES set, CFIS
    /// clear, §5.1.2.1): a device raises only its IRTEs, which verify its
    /// source-id.
    fn isolates_msi(&self) -> bool {
        let status = self.status();
        self.interrupts.is_some()
            && status.contains(Global::INTERRUPT_REMAPPING)
            && !status.contains(Global::COMPATIBILITY_FORMAT)
    }

    fn unroute_msi(&mut self, route: MsiRoute) {
        let Ok(index) = u16::try_from(route.0) else {
            return;
        };
        let routed = self
            .interrupts
            .as_mut()
            .is_some_and(|table| table.routes.remove(&index));
        if routed {
            // A failed invalidation leaves the entry non-present in memory.
            let _ = self.free_interrupt(index);
        }
    }
}

impl<R: Registers> Drop for Vtd<'_, R> {
    fn drop(&mut self) {
        // Translation and remapping off first, so no walk touches freed tables.
        let _ = self.global_command(Global::TRANSLATION, false);
        if self.interrupts.is_some() {
            let _ = self.global_command(Global::INTERRUPT_REMAPPING, false);
        }
        if self.uses_queued_invalidation() {
            let _ = self.global_command(Global::QUEUED_INVALIDATION, false);
        }
        let env = self.env;
        for (_, table) in core::mem::take(&mut self.context_tables) {
            table.free(&env);
        }
        for (_, tables) in core::mem::take(&mut self.pasid_tables) {
            tables.directory.free(&env);
            tables.table.free(&env);
        }
        if let Some(table) = self.interrupts.take() {
            table.page.free(&env);
        }
        if let Invalidator::Queue {
            ring_page, status, ..
        } = self.invalidator
        {
            ring_page.free(&env);
            status.free(&env);
        }
        self.root.free(&env);
    }
}
