//! A software model of an AMD-Vi IOMMU for host tests of [`crate::unit`]: registers in
//! ordinary memory, and a "hardware step" that runs whenever the driver waits (the
//! model is the driver's [`Clock`], and `wait_until` calls `relax` while polling).
//!
//! The step implements the spec's behaviour where QEMU 10.0.2 differs or shows
//! nothing: commands are fetched from COMMAND_HEAD to COMMAND_TAIL; an illegal
//! command is logged as ILLEGAL_COMMAND_ERROR and (optionally, as real hardware does)
//! halts the buffer with CmdBufRun=0; the event log overflows with EventOverflow=1 and
//! EventLogRun=0 until software restarts it.
//!
//! It caches what the spec lets an IOMMU cache, each until the command that names it
//! (§2.4): DTEs until INVALIDATE_DEVTAB_ENTRY; translations (the IOTLB) and the
//! page-directory entries a walk passed (the PDE cache) until INVALIDATE_IOMMU_PAGES
//! covers them, the PDE cache only with PDE = 1; not-present entries too when the
//! capability header says NpCache (§3.2.1); IRTEs until INVALIDATE_INTERRUPT_TABLE; all
//! of it until INVALIDATE_IOMMU_ALL. DMA and interrupts are answered from the caches,
//! and [`Model::check_no_stale_cache`] says whether any cached item disagrees with
//! memory: a missing invalidation that QEMU, which caches far less, would not show.
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
use iommu_kit::fakes::{HostDma, SteppingClock};
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
    /// Not-present entries are cached too (capability header NpCache).
    pub np_cache: bool,
    /// The IOTLB: (DomainID, 4 KiB page) -> what a walk found.
    pub iotlb: BTreeMap<(u16, u64), Translation>,
    /// The PDE cache: (DomainID, 2 MiB region) -> the level-1 table a walk
    /// reached through the directories (`None`: a not-present directory).
    pub pde_cache: BTreeMap<(u16, u64), Directory>,
    /// The interrupt remapping cache: (DeviceID, index) -> the 32-bit IRTE.
    pub irte_cache: BTreeMap<(u16, u16), u32>,
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

/// An IOTLB entry: the table it was walked in, and the leaf it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub root: u64,
    pub levels: u64,
    pub leaf: Option<Leaf>,
}

/// A present leaf as the IOMMU cached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Where the entry sits (for the D bit).
    pub slot: u64,
    /// The physical page the 4 KiB page goes to.
    pub phys: u64,
    /// The IOMMU has set D through this entry and will not set it again
    /// (§2.2.7.2) until the entry is invalidated.
    pub dirty_known: bool,
}

/// A PDE-cache entry of a 2 MiB region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directory {
    pub root: u64,
    pub levels: u64,
    pub level1: Option<u64>,
}

/// What one walk found: the leaf, and (when it went through directories to a
/// level-1 table or to a not-present directory) what the PDE cache may keep.
struct Walk {
    leaf: Option<Leaf>,
    level1: Option<Option<u64>>,
}

/// §2.2.3 page-table entries.
mod pte {
    pub const PR: u64 = 1;
    pub const D: u64 = 1 << 6;
    pub const NEXT_LEVEL_SHIFT: u32 = 9;
    pub const NEXT_LEVEL_MASK: u64 = 7;
    /// Next Level 7: a leaf whose size the address field encodes (§2.2.3).
    pub const NEXT_LEVEL_SIZED: u64 = 7;
    pub const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
}

const PAGE: u64 = 4096;
const REGION_SHIFT: u32 = 21;

pub struct Model {
    regs: usize,
    pub state: Mutex<State>,
    /// The driver's time: one microsecond a poll, each thread its own.
    time: SteppingClock,
}

// SAFETY: the register memory is reached with single volatile word accesses
// (the driver's, from whichever test thread calls it) and by `step`, which
// runs under the state's lock, one thread at a time.
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
            time: SteppingClock::new(1_000),
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

    /// Walks from `table` at `level` down to the leaf of `iova` in memory.
    fn walk_from(mut table: u64, level: u64, iova: u64) -> Walk {
        let mut level1 = None;
        for level in (1..=level).rev() {
            if level == 1 {
                level1 = Some(Some(table));
            }
            let shift = 12 + 9 * (level - 1);
            let slot = table + ((iova >> shift) & 0x1FF) * 8;
            let entry = Self::read_phys(slot);
            if entry & pte::PR == 0 {
                return Walk {
                    leaf: None,
                    level1: level1.or((level > 1).then_some(None)),
                };
            }
            let next_level = (entry >> pte::NEXT_LEVEL_SHIFT) & pte::NEXT_LEVEL_MASK;
            if next_level == 0 || next_level == pte::NEXT_LEVEL_SIZED || level == 1 {
                let size = if next_level == pte::NEXT_LEVEL_SIZED {
                    // The first zero address bit at or above 12 is bit n: 2^(n+1) bytes.
                    2 << (entry & pte::ADDRESS | (PAGE - 1)).trailing_ones()
                } else {
                    1u64 << shift
                };
                let phys = (entry & pte::ADDRESS & !(size - 1)) | (iova & (size - 1) & !(PAGE - 1));
                return Walk {
                    leaf: Some(Leaf {
                        slot,
                        phys,
                        dirty_known: false,
                    }),
                    level1,
                };
            }
            table = entry & pte::ADDRESS;
        }
        Walk { leaf: None, level1 }
    }

    /// The DTE the IOMMU uses for `device_id`: cached, or fetched now.
    fn dte_for(&self, device_id: u16) -> Dte {
        let cached = self
            .state
            .lock()
            .unwrap()
            .dte_cache
            .get(&device_id)
            .copied();
        cached.unwrap_or_else(|| self.fetch_dte(device_id))
    }

    /// Where a DMA of `device_id` to `iova` goes, answered as the IOMMU
    /// answers it: from the IOTLB, else by a walk that starts at a cached
    /// level-1 table when the PDE cache has one, whose results it caches.
    /// `None`: the DTE translates nothing, or no present leaf maps `iova`.
    pub fn translate(&self, device_id: u16, iova: u64) -> Option<Leaf> {
        let dte = self.dte_for(device_id);
        let levels = u64::from(dte.mode());
        if !dte.valid() || !dte.translation_valid() || !(1..=6).contains(&levels) {
            return None;
        }
        let (domain, root, page) = (dte.domain(), dte.root(), iova & !(PAGE - 1));
        let mut s = self.state.lock().unwrap();
        if let Some(cached) = s.iotlb.get(&(domain, page)) {
            return cached.leaf;
        }
        let region = iova >> REGION_SHIFT;
        let walk = match s.pde_cache.get(&(domain, region)) {
            Some(directory) => match directory.level1 {
                Some(table) => Self::walk_from(table, 1, iova),
                None => Walk {
                    leaf: None,
                    level1: Some(None),
                },
            },
            None => Self::walk_from(root, levels, iova),
        };
        let np_cache = s.np_cache;
        if let Some(level1) = walk.level1
            && (level1.is_some() || np_cache)
        {
            s.pde_cache.entry((domain, region)).or_insert(Directory {
                root,
                levels,
                level1,
            });
        }
        if walk.leaf.is_some() || np_cache {
            s.iotlb.insert(
                (domain, page),
                Translation {
                    root,
                    levels,
                    leaf: walk.leaf,
                },
            );
        }
        walk.leaf
    }

    /// A device writes at `iova`: translated as [`Model::translate`] does,
    /// and when its DTE enables HAD the IOMMU sets the D bit of the v1 leaf
    /// it wrote through (§2.2.7.2), unless its IOTLB entry already knows the
    /// leaf dirty. `false` when nothing translates `iova`.
    pub fn dma_write(&self, device_id: u16, iova: u64) -> bool {
        let Some(leaf) = self.translate(device_id, iova) else {
            return false;
        };
        let dte = self.dte_for(device_id);
        if dte.host_access_dirty() && !leaf.dirty_known {
            // SAFETY: a leaf of a table the driver allocated from HostDma
            // (phys == virt); the IOMMU's update is atomic.
            let entry = unsafe { core::sync::atomic::AtomicU64::from_ptr(leaf.slot as *mut u64) };
            entry.fetch_or(pte::D, core::sync::atomic::Ordering::AcqRel);
            let key = (dte.domain(), iova & !(PAGE - 1));
            if let Some(Translation {
                leaf: Some(cached), ..
            }) = self.state.lock().unwrap().iotlb.get_mut(&key)
            {
                cached.dirty_known = true;
            }
        }
        true
    }

    /// The 32-bit IRTE a device's MSI with `index` goes through (§2.2.5),
    /// from the interrupt remapping cache or fetched into it; `None` when
    /// the DTE does not remap its interrupts.
    pub fn interrupt(&self, device_id: u16, index: u16) -> Option<u32> {
        let dte = self.dte_for(device_id);
        if !dte.remaps_interrupts() {
            return None;
        }
        let mut s = self.state.lock().unwrap();
        let irte = *s
            .irte_cache
            .entry((device_id, index))
            .or_insert_with(|| Self::irte_in_memory(&dte, index));
        Some(irte)
    }

    /// The 32-bit IRTE `index` of a remapping DTE's table as memory holds it.
    fn irte_in_memory(dte: &Dte, index: u16) -> u32 {
        let at = dte.interrupt_table() + u64::from(index) * 4;
        // SAFETY: the DTE's interrupt table, allocated by the driver from
        // HostDma (phys == virt); 4-byte aligned.
        unsafe { core::ptr::read_volatile(at as *const u32) }
    }

    /// Every translated DTE in the device table now: DomainID -> (root, levels).
    fn live_domains(&self) -> BTreeMap<u16, Vec<(u64, u64)>> {
        let base = self.reg(regs::DEVICE_TABLE_BASE);
        let entries = ((base & 0x1FF) + 1) * PAGE / 32;
        let mut live: BTreeMap<u16, Vec<(u64, u64)>> = BTreeMap::new();
        for device_id in 0..entries.min(1 << 16) {
            let dte = self.dte_in_memory(device_id as u16);
            let levels = u64::from(dte.mode());
            if dte.valid() && dte.translation_valid() && (1..=6).contains(&levels) {
                live.entry(dte.domain())
                    .or_default()
                    .push((dte.root(), levels));
            }
        }
        live
    }

    /// Every cached translation, directory and IRTE still agrees with memory.
    /// A cached item of a DomainID no DTE names is unreachable and may stay;
    /// one whose DomainID a DTE now names with another table was never
    /// invalidated before the id was reused.
    pub fn check_no_stale_cache(&self) -> Result<(), std::string::String> {
        let live = self.live_domains();
        let s = self.state.lock().unwrap();
        let reached = |domain: u16, root: u64, levels: u64| -> Result<bool, std::string::String> {
            match live.get(&domain) {
                None => Ok(false),
                Some(tables) if tables.contains(&(root, levels)) => Ok(true),
                Some(tables) => Err(std::format!(
                    "DomainID {domain} reused for {tables:x?} while entries of table {root:#x} are cached"
                )),
            }
        };
        for (&(domain, page), cached) in &s.iotlb {
            if !reached(domain, cached.root, cached.levels)? {
                continue;
            }
            let memory = Self::walk_from(cached.root, cached.levels, page).leaf;
            let cached_phys = cached.leaf.map(|leaf| leaf.phys);
            if memory.map(|leaf| leaf.phys) != cached_phys {
                return Err(std::format!(
                    "stale IOTLB entry DomainID {domain} page {page:#x}: cached {cached_phys:x?}, memory {:x?}",
                    memory.map(|leaf| leaf.phys)
                ));
            }
            if let Some(leaf) = cached.leaf
                && leaf.dirty_known
                && Self::read_phys(leaf.slot) & pte::D == 0
            {
                return Err(std::format!(
                    "IOTLB entry DomainID {domain} page {page:#x} still knows a cleared leaf dirty"
                ));
            }
        }
        for (&(domain, region), cached) in &s.pde_cache {
            if !reached(domain, cached.root, cached.levels)? {
                continue;
            }
            let memory = Self::walk_from(cached.root, cached.levels, region << REGION_SHIFT).level1;
            if memory != Some(cached.level1) {
                return Err(std::format!(
                    "stale PDE-cache entry DomainID {domain} region {:#x}: cached {:x?}, memory {memory:x?}",
                    region << REGION_SHIFT,
                    cached.level1
                ));
            }
        }
        for (&(device_id, index), &irte) in &s.irte_cache {
            let dte = self.dte_in_memory(device_id);
            let memory = dte
                .remaps_interrupts()
                .then(|| Self::irte_in_memory(&dte, index));
            if memory != Some(irte) {
                return Err(std::format!(
                    "stale IRTE {index} of DeviceID {device_id:#x}: cached {irte:#x}, memory {memory:x?}"
                ));
            }
        }
        Ok(())
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
                    Some(Opcode::InvalidateIommuPages) => {
                        let (domain, q1) = (command.domain(), command.0[1]);
                        let (first, last) = crate::command::PageRange {
                            address: q1 & !(PAGE - 1),
                            s: q1 & 1 != 0,
                        }
                        .span();
                        let with_directories = q1 & 2 != 0;
                        s.iotlb.retain(|&(entry_domain, page), _| {
                            entry_domain != domain || !(first..=last).contains(&page)
                        });
                        if with_directories {
                            s.pde_cache.retain(|&(entry_domain, region), _| {
                                let start = region << REGION_SHIFT;
                                let end = start + (1 << REGION_SHIFT) - 1;
                                entry_domain != domain || end < first || last < start
                            });
                        }
                    }
                    Some(Opcode::InvalidateInterruptTable) => {
                        let id = command.device_id();
                        s.irte_cache.retain(|&(device_id, _), _| device_id != id);
                    }
                    Some(Opcode::InvalidateIommuAll) => {
                        s.dte_cache.clear();
                        s.iotlb.clear();
                        s.pde_cache.clear();
                        s.irte_cache.clear();
                    }
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
        self.time.now_ns()
    }

    fn relax(&self) {
        self.step();
        self.time.relax();
    }
}
