//! The driver against a software model of an SMMUv3 register block: the
//! model runs whenever the driver polls (through the clock's `relax`), mirrors
//! CR0 into CR0ACK, applies GBPA updates, consumes the command queue (logging
//! every command and rejecting unknown opcodes with CERROR_ILL, SMMUv3 §7.1)
//! and lets the test inject event records.
//!
//! Like the hardware it caches what §16.2 lets it cache, each until the
//! command that names it: STEs until a CFGI_STE or CFGI_STE_RANGE (§4.3.1,
//! §4.3.2), CDs until a CFGI_CD or CFGI_CD_ALL of their StreamID or a
//! CFGI_STE that names it (§4.3.3: CDs are cached per StreamID), TLB entries
//! of both stages (tagged VMID and ASID, one per leaf, whatever its size)
//! until a TLBI whose scope covers them, and the walk caches (which last-level
//! table a region uses) only until a non-leaf TLBI (§4.4). Invalid entries are
//! never cached (§3.21.2). DMA is answered from the caches
//! ([`Model::translate`]), and [`Model::check_no_stale_cache`] says whether a
//! cached item disagrees with memory. It can stop consuming commands after a
//! given number, as a queue that hangs between a CFGI and its CMD_SYNC does.

use iommu_kit::fakes::{SteppingClock, SyncCell, SyncRefCell};
use std::boxed::Box;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

use crate::Smmu;
use crate::command::opcode;
use crate::hardware::StreamTableFormat;
use crate::regs::{self, Cr0, Gbpa, Gerror};
use iommu_kit::fakes::{HostDma, maintenance};
use os_services::Clock;
use os_services::mmio::Mmio;

/// QEMU's stage-1+2 SMMU identification (docs/QEMU.md §3).
pub(crate) const IDR: [u32; 6] = [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74];

/// The register block and the model's state.
pub(crate) struct Model {
    pub(crate) regs: *mut u8,
    pub(crate) log: SyncRefCell<Vec<[u64; 2]>>,
    /// Opcodes the model rejects with CERROR_ILL.
    pub(crate) illegal: u8,
    /// STEs as last fetched, by StreamID.
    pub(crate) ste_cache: SyncRefCell<BTreeMap<u32, [u64; 8]>>,
    /// CDs (SubstreamID 0) as last fetched, by the StreamID that located them.
    pub(crate) cd_cache: SyncRefCell<BTreeMap<u32, [u64; 8]>>,
    /// The TLB: one entry per cached leaf, by (context, leaf base address).
    pub(crate) tlb: SyncRefCell<BTreeMap<(Context, u64), TlbEntry>>,
    /// The walk caches: (context, region) -> the last-level table that maps
    /// the region (one table's reach).
    pub(crate) walks: SyncRefCell<BTreeMap<(Context, u64), WalkEntry>>,
    /// How many more commands the queue consumes before it hangs (`None`:
    /// no limit).
    pub(crate) commands_until_hang: SyncCell<Option<usize>>,
    /// The SMMU does not snoop (IDR0.COHACC = 0): it reads the stream table
    /// and the command queue from memory, which holds only what the driver
    /// wrote back (`maintenance::read_as_device`), not from the CPU's caches.
    pub(crate) reads_memory: SyncCell<bool>,
    /// Held while the model takes a step: threads that poll at once (as
    /// CPUs waiting for their own CMD_SYNC do) step it one at a time.
    pub(crate) stepping: std::sync::Mutex<()>,
}

// SAFETY: the register block is the test's, reached with single volatile
// word accesses; every other field is behind a lock, and `step` (which reads
// and writes registers in sequence) runs one thread at a time.
unsafe impl Send for Model {}
// SAFETY: as for `Send`.
unsafe impl Sync for Model {}

/// A TLB tag (§4.4): the VMID, and the ASID for stage-1 entries (`None`
/// for stage-2 entries, which stage-1 TLBIs do not reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Context {
    pub(crate) vmid: u16,
    pub(crate) asid: Option<u16>,
}

/// The tables a context translates through: root, input bits and granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tables {
    pub(crate) root: u64,
    pub(crate) input_bits: u32,
    pub(crate) granule_bits: u32,
    /// The level the walk starts at; its table may be concatenated (stage 2).
    pub(crate) start_level: u32,
}

impl Tables {
    fn stride(&self) -> u32 {
        self.granule_bits - 3
    }
    /// The stage-1 start level (ARM ARM D8.2: 4 - levels, no concatenation).
    fn stage1_start(input_bits: u32, granule_bits: u32) -> u32 {
        4 - (input_bits - granule_bits).div_ceil(granule_bits - 3)
    }
    fn shift(&self, level: u32) -> u32 {
        self.granule_bits + self.stride() * (3 - level)
    }
    /// How much input one last-level table covers.
    fn region_shift(&self) -> u32 {
        self.shift(2)
    }
}

/// A cached leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub(crate) base: u64,
    pub(crate) size: u64,
    /// Where the descriptor sits (for DBM).
    pub(crate) slot: u64,
    /// Output address of `base`.
    pub(crate) output: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TlbEntry {
    pub(crate) tables: Tables,
    pub(crate) leaf: Leaf,
    /// A write made the leaf writable-dirty through this entry: the entry
    /// lets further writes pass without looking at the descriptor again.
    pub(crate) dirty_known: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalkEntry {
    pub(crate) tables: Tables,
    pub(crate) table: u64,
}

/// What one walk through memory found.
struct Walk {
    leaf: Option<Leaf>,
    last_table: Option<u64>,
}

/// ARM ARM D8.3 descriptors (4, 16 and 64 KiB granules, 48-bit output).
mod descriptor {
    pub const VALID: u64 = 1 << 0;
    /// Table (levels 0-2) or page (level 3).
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    pub const OUTPUT: u64 = ((1 << 48) - 1) & !0xFFF;
    /// Stage 1 `AP[2]`: read-only, or writable-clean with DBM.
    pub const AP_RDONLY: u64 = 1 << 7;
    pub const DBM: u64 = 1 << 51;
}

/// The STE and CD fields the model reads (§5.2, §5.4).
mod config {
    pub const STE_VALID: u64 = 1 << 0;
    pub const STE_CONFIG_SHIFT: u32 = 1;
    pub const CONFIG_STAGE1: u64 = 0b101;
    pub const CONFIG_STAGE2: u64 = 0b110;
    pub const STE_CD_POINTER: u64 = ((1 << 52) - 1) & !0x3F;
    pub const STE_S2VMID: u64 = 0xFFFF;
    pub const STE_S2T0SZ_SHIFT: u32 = 32;
    pub const STE_S2SL0_SHIFT: u32 = 38;
    pub const STE_S2TG_SHIFT: u32 = 46;
    pub const STE_S2TTB: u64 = ((1 << 52) - 1) & !0xF;
    pub const CD_T0SZ: u64 = 0x3F;
    pub const CD_TG0_SHIFT: u32 = 6;
    pub const CD_VALID: u64 = 1 << 31;
    pub const CD_HD: u64 = 1 << 42;
    pub const CD_ASID_SHIFT: u32 = 48;
    pub const CD_TTB0: u64 = ((1 << 52) - 1) & !0xF;

    /// TG0 / S2TG encoding: 0 = 4K, 1 = 64K, 2 = 16K.
    pub fn granule_bits(tg: u64) -> u32 {
        match tg & 0b11 {
            1 => 16,
            2 => 14,
            _ => 12,
        }
    }
}

/// What an SMMU that reads memory finds in a line the driver never wrote
/// back: whatever the memory held before, here every bit set.
pub(crate) const NEVER_WRITTEN_BACK: u64 = u64::MAX;

impl Model {
    pub(crate) fn read(&self, offset: usize) -> u32 {
        // SAFETY: offsets are inside the 128 KiB block the test owns.
        unsafe { self.regs.add(offset).cast::<u32>().read_volatile() }
    }
    pub(crate) fn write(&self, offset: usize, value: u32) {
        // SAFETY: as above.
        unsafe { self.regs.add(offset).cast::<u32>().write_volatile(value) }
    }
    pub(crate) fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as above.
        unsafe { self.regs.add(offset).cast::<u64>().read_volatile() }
    }

    /// The 8 bytes at `address` as the SMMU reads them: the CPU's view, or
    /// memory's when it does not snoop ([`Model::reads_memory`]).
    pub(crate) fn fetch(&self, address: u64) -> u64 {
        if self.reads_memory.get() {
            maintenance::read_as_device(address).unwrap_or(NEVER_WRITTEN_BACK)
        } else {
            // SAFETY: memory the driver allocated (phys == virt), reached only
            // through addresses it programmed.
            unsafe { core::ptr::read_volatile(address as *const u64) }
        }
    }

    /// The STE of `sid` in memory, found through STRTAB_BASE(_CFG) as the
    /// SMMU finds it (§3.3: linear, or an L1STD and its level-2 table).
    pub(crate) fn ste_in_memory(&self, sid: u32) -> [u64; 8] {
        let base = self.read64(regs::STRTAB_BASE.0) & regs::STRTAB_BASE_ADDR_MASK;
        let cfg = self.read(regs::STRTAB_BASE_CFG.0);
        let two_level = (cfg >> 16) & 0b11 == regs::StrtabBaseCfg::FMT_TWO_LEVEL;
        let split = (cfg >> 6) & 0x1F;
        let at = if two_level {
            let l1 = self.fetch(base + u64::from(sid >> split) * 8);
            if l1 & 0x1F == 0 {
                return [0; 8];
            }
            (l1 & regs::STRTAB_BASE_ADDR_MASK) + u64::from(sid & ((1 << split) - 1)) * 64
        } else {
            base + u64::from(sid) * 64
        };
        core::array::from_fn(|word| self.fetch(at + word as u64 * 8))
    }

    /// Walks `tables` in memory down to the leaf of `iova`, or from
    /// `last_table` when the walk cache names it.
    fn walk(&self, tables: Tables, iova: u64, last_table: Option<u64>) -> Walk {
        let (mut table, first) = match last_table {
            Some(table) => (table, 3),
            None => (tables.root, tables.start_level),
        };
        let mut found_last = last_table;
        for level in first..=3 {
            if level == 3 {
                found_last = Some(table);
            }
            let shift = tables.shift(level);
            let bits = if level == tables.start_level && last_table.is_none() {
                tables.input_bits - shift
            } else {
                tables.stride()
            };
            let slot = table + ((iova >> shift) & ((1 << bits) - 1)) * 8;
            let entry = self.fetch(slot);
            if entry & descriptor::VALID == 0 {
                break;
            }
            let leaf = level == 3 || entry & descriptor::TABLE_OR_PAGE == 0;
            if leaf {
                let size = 1u64 << shift;
                let base = iova & !(size - 1);
                return Walk {
                    leaf: Some(Leaf {
                        base,
                        size,
                        slot,
                        output: entry & descriptor::OUTPUT & !(size - 1),
                    }),
                    last_table: found_last,
                };
            }
            table = entry & descriptor::OUTPUT & !((1 << tables.granule_bits) - 1);
        }
        Walk {
            leaf: None,
            last_table: found_last,
        }
    }

    /// The CD stream `sid` uses, cached or fetched now.
    fn cd_for(&self, sid: u32, pointer: u64) -> [u64; 8] {
        if let Some(cd) = self.cd_cache.borrow().get(&sid) {
            return *cd;
        }
        let cd: [u64; 8] = core::array::from_fn(|word| self.fetch(pointer + word as u64 * 8));
        self.cd_cache.borrow_mut().insert(sid, cd);
        cd
    }

    /// The context and tables an STE (and, for stage 1, its CD) translate
    /// through; `None` for abort, bypass, nesting and an invalid CD.
    fn context_of(
        &self,
        ste: &[u64; 8],
        cd: impl FnOnce(u64) -> [u64; 8],
    ) -> Option<(Context, Tables, u64)> {
        if ste[0] & config::STE_VALID == 0 {
            return None;
        }
        let vmid = (ste[2] & config::STE_S2VMID) as u16;
        match (ste[0] >> config::STE_CONFIG_SHIFT) & 0b111 {
            config::CONFIG_STAGE1 => {
                let cd = cd(ste[0] & config::STE_CD_POINTER);
                if cd[0] & config::CD_VALID == 0 {
                    return None;
                }
                let input_bits = 64 - (cd[0] & config::CD_T0SZ) as u32;
                let granule_bits = config::granule_bits(cd[0] >> config::CD_TG0_SHIFT);
                let tables = Tables {
                    root: cd[1] & config::CD_TTB0 & !((1 << granule_bits) - 1),
                    input_bits,
                    granule_bits,
                    start_level: Tables::stage1_start(input_bits, granule_bits),
                };
                let asid = (cd[0] >> config::CD_ASID_SHIFT) as u16;
                Some((
                    Context {
                        vmid,
                        asid: Some(asid),
                    },
                    tables,
                    cd[0],
                ))
            }
            config::CONFIG_STAGE2 => {
                let granule_bits = config::granule_bits(ste[2] >> config::STE_S2TG_SHIFT);
                let sl0 = ((ste[2] >> config::STE_S2SL0_SHIFT) & 0b11) as u32;
                // VTCR.SL0 (ARM ARM D8.2): counted up from level 2 (4K) or 3.
                let deepest = if granule_bits == 12 { 2 } else { 3 };
                let tables = Tables {
                    root: ste[3] & config::STE_S2TTB,
                    input_bits: 64 - ((ste[2] >> config::STE_S2T0SZ_SHIFT) & 0x3F) as u32,
                    granule_bits,
                    start_level: deepest - sl0.min(deepest),
                };
                Some((Context { vmid, asid: None }, tables, 0))
            }
            _ => None,
        }
    }

    /// Where a transaction of `sid` to `iova` goes, answered as the SMMU
    /// answers it: STE and CD from their caches (fetched on a miss), the
    /// leaf from the TLB by tag and address (whatever tables the context
    /// names now), else by a walk that starts at the walk cache's table when
    /// it has one for the region; what the walk finds is cached. Stage 1 and
    /// stage 2 alone; `None` for everything else and for a fault.
    pub(crate) fn translate(&self, sid: u32, iova: u64) -> Option<TlbEntry> {
        let ste = self.fetch_ste_cached(sid);
        let (context, tables, _) = self.context_of(&ste, |pointer| self.cd_for(sid, pointer))?;
        let hit = self
            .tlb
            .borrow()
            .range((context, 0)..=(context, iova))
            .next_back()
            .filter(|(_, entry)| iova - entry.leaf.base < entry.leaf.size)
            .map(|(_, entry)| *entry);
        if hit.is_some() {
            return hit;
        }
        let region = (context, iova >> tables.region_shift());
        let cached_table = self.walks.borrow().get(&region).map(|walk| walk.table);
        let walk = self.walk(tables, iova, cached_table);
        if let Some(table) = walk.last_table {
            self.walks
                .borrow_mut()
                .entry(region)
                .or_insert(WalkEntry { tables, table });
        }
        let entry = TlbEntry {
            tables,
            leaf: walk.leaf?,
            dirty_known: false,
        };
        self.tlb
            .borrow_mut()
            .insert((context, entry.leaf.base), entry);
        Some(entry)
    }

    /// A device writes at `iova` through the translation of `sid`: with
    /// CD.HD, a writable-clean leaf (DBM with `AP[2]` set) becomes
    /// writable-dirty (`AP[2]` cleared, ARM ARM D8.4.6), unless the TLB entry
    /// used already knows it dirty. `false` when nothing translates `iova`.
    pub(crate) fn dma_write(&self, sid: u32, iova: u64) -> bool {
        let Some(entry) = self.translate(sid, iova) else {
            return false;
        };
        let ste = self.fetch_ste_cached(sid);
        let Some((context, _, cd0)) = self.context_of(&ste, |pointer| self.cd_for(sid, pointer))
        else {
            return false;
        };
        let descriptor = self.fetch(entry.leaf.slot);
        if cd0 & config::CD_HD != 0 && descriptor & descriptor::DBM != 0 && !entry.dirty_known {
            // SAFETY: a leaf of a table the driver allocated (host memory,
            // phys == virt); the SMMU's update is an atomic one.
            let slot =
                unsafe { core::sync::atomic::AtomicU64::from_ptr(entry.leaf.slot as *mut u64) };
            slot.fetch_and(!descriptor::AP_RDONLY, core::sync::atomic::Ordering::AcqRel);
            if let Some(cached) = self.tlb.borrow_mut().get_mut(&(context, entry.leaf.base)) {
                cached.dirty_known = true;
            }
        }
        true
    }

    fn fetch_ste_cached(&self, sid: u32) -> [u64; 8] {
        let cached = self.ste_cache.borrow().get(&sid).copied();
        cached.unwrap_or_else(|| self.fetch_ste(sid))
    }

    /// Every cached CD, TLB entry and walk agrees with memory, for the
    /// streams in `sids`: a CD with the one the STE in memory locates, a TLB
    /// entry or walk whose tag a stream uses now with what that stream's
    /// tables say now. Entries of tags no stream uses are unreachable until
    /// the tag is used again, and then they count.
    pub(crate) fn check_no_stale_cache(&self, sids: &[u32]) -> Result<(), std::string::String> {
        if let Some(sid) = self.stale_stes().first() {
            return Err(std::format!("stale STE of StreamID {sid}"));
        }
        let mut live = Vec::new();
        for &sid in sids {
            let ste = self.ste_in_memory(sid);
            let memory_cd = |pointer: u64| -> [u64; 8] {
                core::array::from_fn(|word| self.fetch(pointer + word as u64 * 8))
            };
            if let Some(cached) = self.cd_cache.borrow().get(&sid)
                && (ste[0] >> config::STE_CONFIG_SHIFT) & 0b111 == config::CONFIG_STAGE1
                && memory_cd(ste[0] & config::STE_CD_POINTER) != *cached
            {
                return Err(std::format!("stale CD of StreamID {sid}"));
            }
            if let Some((context, tables, _)) = self.context_of(&ste, memory_cd) {
                live.push((context, tables));
            }
        }
        for (&(context, base), cached) in self.tlb.borrow().iter() {
            for &(_, tables) in live.iter().filter(|(live, _)| *live == context) {
                let memory = self.walk(tables, base, None).leaf;
                let same = memory.is_some_and(|leaf| {
                    leaf.output + (base - leaf.base) == cached.leaf.output
                        && leaf.base <= base
                        && base + cached.leaf.size <= leaf.base + leaf.size
                });
                if !same {
                    return Err(std::format!(
                        "stale TLB entry {context:?} at {base:#x} (size {:#x}): cached output {:#x}, memory {memory:x?}",
                        cached.leaf.size,
                        cached.leaf.output
                    ));
                }
                if cached.dirty_known && self.fetch(cached.leaf.slot) & descriptor::AP_RDONLY != 0 {
                    return Err(std::format!(
                        "TLB entry {context:?} at {base:#x} still knows a cleared leaf dirty"
                    ));
                }
            }
        }
        for (&(context, region), cached) in self.walks.borrow().iter() {
            for &(_, tables) in live.iter().filter(|(live, _)| *live == context) {
                let at = region << tables.region_shift();
                let memory = self.walk(tables, at, None).last_table;
                if memory != Some(cached.table) {
                    return Err(std::format!(
                        "stale walk-cache entry {context:?} region {at:#x}: cached table {:#x}, memory {memory:x?}",
                        cached.table
                    ));
                }
            }
        }
        Ok(())
    }

    /// Drops the TLB entries (and, unless `leaf`, the walks) of the contexts
    /// `matches` selects that overlap `[start, end)`.
    fn invalidate_tlb(&self, matches: impl Fn(Context) -> bool, start: u64, end: u64, leaf: bool) {
        self.tlb.borrow_mut().retain(|&(context, base), entry| {
            !(matches(context) && base < end && start < base + entry.leaf.size)
        });
        if !leaf {
            self.walks.borrow_mut().retain(|&(context, region), entry| {
                let shift = entry.tables.region_shift();
                let (first, last) = (region << shift, ((region + 1) << shift) - 1);
                !(matches(context) && first < end && start <= last)
            });
        }
    }

    /// Applies a TLBI (§4.4) to the TLB and walk caches.
    fn apply_tlbi(&self, command: [u64; 2]) {
        let vmid = (command[0] >> 32) as u16;
        let asid = (command[0] >> 48) as u16;
        let stage1 = move |c: Context| c.vmid == vmid && c.asid.is_some();
        let by_address = || {
            let addr = command[1] & !0xFFF;
            let leaf = command[1] & 1 != 0;
            let tg = (command[1] >> 10) & 0b11;
            let end = if tg == 0 {
                addr + 1
            } else {
                let granule = [0, 12, 14, 16][tg as usize];
                let num = (command[0] >> 12) & 0x1F;
                let scale = (command[0] >> 20) & 0x1F;
                addr + (((num + 1) << scale) << granule)
            };
            (addr, end, leaf)
        };
        match (command[0] & 0xFF) as u8 {
            opcode::TLBI_NH_ALL => self.invalidate_tlb(stage1, 0, u64::MAX, false),
            opcode::TLBI_NH_ASID => {
                self.invalidate_tlb(|c| stage1(c) && c.asid == Some(asid), 0, u64::MAX, false)
            }
            opcode::TLBI_NH_VA => {
                let (start, end, leaf) = by_address();
                self.invalidate_tlb(|c| stage1(c) && c.asid == Some(asid), start, end, leaf)
            }
            opcode::TLBI_NH_VAA => {
                let (start, end, leaf) = by_address();
                self.invalidate_tlb(stage1, start, end, leaf)
            }
            opcode::TLBI_S2_IPA => {
                let (start, end, leaf) = by_address();
                self.invalidate_tlb(|c| c.vmid == vmid && c.asid.is_none(), start, end, leaf)
            }
            opcode::TLBI_S12_VMALL => self.invalidate_tlb(|c| c.vmid == vmid, 0, u64::MAX, false),
            opcode::TLBI_NSNH_ALL => self.invalidate_tlb(|_| true, 0, u64::MAX, false),
            _ => {}
        }
    }

    /// The SMMU fetches the STE of `sid` (a transaction arrived) and keeps it.
    pub(crate) fn fetch_ste(&self, sid: u32) -> [u64; 8] {
        let ste = self.ste_in_memory(sid);
        self.ste_cache.borrow_mut().insert(sid, ste);
        ste
    }

    /// StreamIDs whose cached STE is not the one in memory.
    pub(crate) fn stale_stes(&self) -> Vec<u32> {
        let cache = self.ste_cache.borrow().clone();
        cache
            .into_iter()
            .filter(|(sid, ste)| self.ste_in_memory(*sid) != *ste)
            .map(|(sid, _)| sid)
            .collect()
    }

    /// A CFGI drops the named STEs and the CDs cached through them (§4.3.1);
    /// a cached stream is live (a device keeps issuing), so its STE is
    /// fetched again at once.
    fn invalidate_stes(&self, command: [u64; 2]) {
        let sid = (command[0] >> 32) as u32;
        let span = match (command[0] & 0xFF) as u8 {
            opcode::CFGI_STE => 1,
            _ => 2u64 << (command[1] & 0x1F),
        };
        let first = u64::from(sid) & !(span - 1);
        let named: Vec<u32> = self
            .ste_cache
            .borrow()
            .keys()
            .copied()
            .filter(|&cached| (first..first + span).contains(&u64::from(cached)))
            .collect();
        self.cd_cache
            .borrow_mut()
            .retain(|&sid, _| !(first..first + span).contains(&u64::from(sid)));
        for sid in named {
            self.fetch_ste(sid);
        }
    }

    pub(crate) fn step(&self) {
        let _stepping = self
            .stepping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.write(regs::CR0ACK.0, self.read(regs::CR0.0));
        self.write(regs::IRQ_CTRLACK.0, self.read(regs::IRQ_CTRL.0));
        self.write(regs::GBPA.0, self.read(regs::GBPA.0) & !Gbpa::UPDATE.bits());
        let cr0 = Cr0::from_bits_retain(self.read(regs::CR0.0));
        let pending = self.read(regs::GERROR.0) ^ self.read(regs::GERRORN.0);
        if !cr0.contains(Cr0::CMDQEN) || pending & Gerror::CMDQ_ERR.bits() != 0 {
            return;
        }
        let base = self.read64(regs::CMDQ_BASE.0);
        let log2 = (base & 0x1F) as u32;
        let entries = (base & regs::QUEUE_BASE_ADDR_MASK) as *const u64;
        let wrap_mask = (2u32 << log2) - 1;
        let prod = self.read(regs::CMDQ_PROD.0) & wrap_mask;
        let mut cons = self.read(regs::CMDQ_CONS.0) & wrap_mask;
        while cons != prod {
            match self.commands_until_hang.get() {
                Some(0) => break,
                Some(left) => self.commands_until_hang.set(Some(left - 1)),
                None => {}
            }
            let slot = (cons & ((1 << log2) - 1)) as usize;
            let command = [
                self.fetch(entries as u64 + slot as u64 * 16),
                self.fetch(entries as u64 + slot as u64 * 16 + 8),
            ];
            if (command[0] & 0xFF) as u8 == self.illegal {
                // CERROR_ILL in CONS.ERR, CMDQ_ERR toggled, queue stopped.
                self.write(regs::CMDQ_CONS.0, cons | (1 << 24));
                self.write(
                    regs::GERROR.0,
                    self.read(regs::GERROR.0) ^ Gerror::CMDQ_ERR.bits(),
                );
                return;
            }
            if matches!(
                (command[0] & 0xFF) as u8,
                opcode::CFGI_STE | opcode::CFGI_STE_RANGE
            ) {
                self.invalidate_stes(command);
            }
            match (command[0] & 0xFF) as u8 {
                // §4.3.3, §4.3.4: only SubstreamID 0 is cached here.
                opcode::CFGI_CD if (command[0] >> 12) & 0xF_FFFF == 0 => {
                    self.cd_cache
                        .borrow_mut()
                        .remove(&((command[0] >> 32) as u32));
                }
                opcode::CFGI_CD_ALL => {
                    self.cd_cache
                        .borrow_mut()
                        .remove(&((command[0] >> 32) as u32));
                }
                _ => self.apply_tlbi(command),
            }
            self.log.borrow_mut().push(command);
            cons = (cons + 1) & wrap_mask;
        }
        self.write(regs::CMDQ_CONS.0, cons);
    }

    /// Places an event record at EVENTQ_PROD and advances it.
    pub(crate) fn inject_event(&self, record: [u64; 4]) {
        let base = self.read64(regs::EVENTQ_BASE.0);
        let log2 = (base & 0x1F) as u32;
        let entries = (base & regs::QUEUE_BASE_ADDR_MASK) as *mut u64;
        let prod = self.read(regs::EVENTQ_PROD.0);
        let slot = (prod & ((1 << log2) - 1)) as usize;
        for (i, word) in record.iter().enumerate() {
            // SAFETY: the event queue lies in memory the driver allocated.
            unsafe { *entries.add(slot * 4 + i) = *word };
        }
        let next = ((prod & ((2 << log2) - 1)) + 1) & ((2 << log2) - 1);
        self.write(regs::EVENTQ_PROD.0, next | (prod & (1 << 31)));
    }
}

/// A clock whose polls run the model: one microsecond a poll, each thread
/// its own.
pub(crate) struct ModelClock {
    pub(crate) time: SteppingClock,
    pub(crate) model: Arc<Model>,
}

impl Clock for ModelClock {
    fn now_ns(&self) -> u64 {
        self.time.now_ns()
    }
    fn relax(&self) {
        self.model.step();
        self.time.relax();
    }
}

pub(crate) struct Rig {
    pub(crate) _regs: Vec<u64>,
    pub(crate) model: Arc<Model>,
    pub(crate) clock: &'static ModelClock,
    pub(crate) dma: &'static HostDma,
}

pub(crate) fn rig() -> Rig {
    let mut regs = vec![0u64; regs::REGISTER_SPAN / 8];
    let base = regs.as_mut_ptr().cast::<u8>();
    let model = Arc::new(Model {
        regs: base,
        log: SyncRefCell::new(Vec::new()),
        illegal: 0x7F,
        ste_cache: SyncRefCell::new(BTreeMap::new()),
        cd_cache: SyncRefCell::new(BTreeMap::new()),
        tlb: SyncRefCell::new(BTreeMap::new()),
        walks: SyncRefCell::new(BTreeMap::new()),
        commands_until_hang: SyncCell::new(None),
        reads_memory: SyncCell::new(false),
        stepping: std::sync::Mutex::new(()),
    });
    for (i, value) in IDR.iter().enumerate() {
        model.write(i * 4, *value);
    }
    model.write(regs::GBPA.0, 0x1000);
    let clock = Box::leak(Box::new(ModelClock {
        time: SteppingClock::new(1_000),
        model: model.clone(),
    }));
    let dma = Box::leak(Box::new(HostDma::default()));
    Rig {
        _regs: regs,
        model,
        clock,
        dma,
    }
}

pub(crate) fn smmu(rig: &Rig, format: StreamTableFormat) -> Smmu<'static> {
    smmu_with(rig, format, None).expect("bring-up")
}

/// An SMMU over the rig's registers with `maintenance` (for a model whose
/// IDR0 says it does not snoop).
pub(crate) fn smmu_with(
    rig: &Rig,
    format: StreamTableFormat,
    maintenance: Option<iommu_kit::CacheMaintenance>,
) -> Result<Smmu<'static>, crate::Error> {
    // SAFETY: the block is the rig's heap buffer, alive as long as the rig,
    // and only the driver and the model touch it.
    let mmio = unsafe { Mmio::new(NonNull::new(rig.model.regs).unwrap(), regs::REGISTER_SPAN) };
    Smmu::new(mmio, rig.clock, rig.dma, format, maintenance)
}

pub(crate) fn opcodes(log: &[[u64; 2]]) -> Vec<u8> {
    log.iter().map(|c| (c[0] & 0xFF) as u8).collect()
}
