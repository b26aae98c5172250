//! Native IO page-table formats of VT-d, AMD-Vi and ARM SMMUv3: one walk algorithm,
//! per-format accessors (after Linux's `drivers/iommu/generic_pt`).
//!
//! # Formats
//! | type | tables of | configured by |
//! |------|-----------|---------------|
//! | [`VtdSecondStage`] | VT-d second stage, 3/4/5 levels, R/W/SNP, 2M/1G by SLLPS | [`VtdSsConfig`] |
//! | [`X86_64`] | VT-d first stage, AMD-Vi v2: x86-64 4/5-level | [`X86Config`] |
//! | [`AmdV1`] | AMD-Vi v1 host tables, 1..6 levels | [`AmdV1Config`] |
//! | [`ArmLpae`] | SMMUv3 stage 1/2, 4K/16K/64K granules | [`ArmConfig`] |
//!
//! The hardware-facing values come from the format: [`PageTable::root_phys`],
//! [`PageTable::levels`], [`VtdSecondStage::context_aw`], [`X86_64::vtd_flpm`],
//! [`AmdV1::dte_mode`], [`ArmLpae::stage1_fields`] (T0SZ, TG0, IPS, MAIR),
//! [`ArmLpae::stage2_fields`] (S2T0SZ, S2SL0, S2TG, S2PS), [`ArmLpae::walk_attrs`].
//!
//! ARM memory types follow one MAIR convention ([`ArmLpae::mair`]): AttrIndx 0 =
//! Normal write-back (`Prot::CACHE`), 1 = Normal non-cacheable (default), 2 =
//! Device-nGnRE (`Prot::MMIO`, e.g. an MSI doorbell). Stage 2 writes the matching
//! MemAttr directly. x86-64 leaves and links preset A (and D on writable leaves) so
//! the walker never writes back; `X86Config::user` sets US everywhere (QEMU's VT-d
//! first stage requires it).
//!
//! Levels are numbered from the leaf: level 0 holds the smallest pages (ARM
//! level 3, AMD level 1).
//!
//! # Use
//! ```
//! use io_page_table::{PageTable, Prot, Coherence, heap::HeapTableAlloc};
//! use io_page_table::format::vtd_ss::{VtdSecondStage, VtdSsConfig, SLLPS_2M};
//!
//! let format = VtdSecondStage::new(VtdSsConfig { levels: 4, sllps: SLLPS_2M, snoop: false, output_bits: 48 })?;
//! let mut pt = PageTable::new(format, HeapTableAlloc::new(), Coherence::Coherent).expect("root page");
//! pt.map(0x20_0000, 0x4000_0000, 0x20_0000, Prot::RW)?;            // one 2 MiB leaf
//! assert_eq!(pt.iova_to_phys(0x20_1234), Some(0x4000_1234));
//! let unmapped = pt.unmap(0x20_0000, 0x20_0000).expect("whole leaf");
//! assert_eq!(unmapped.bytes, 0x20_0000);
//! // ... flush the IOTLB for `unmapped.gather`, then:
//! pt.release(unmapped.freed);
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```
//!
//! # Semantics
//! - `map` uses the largest leaf that the alignment of `iova` and `phys`, the
//!   remaining length and the format allow; it never overwrites: any mapped page in
//!   the range refuses the whole call. Errors (including the allocator running
//!   out) leave the tables bit for bit unchanged: a read-only plan pass counts the
//!   table pages needed and they are all allocated before anything is written.
//! - `unmap` removes whole leaves only, skipping holes; a range that starts or ends
//!   inside a leaf is refused. Tables whose whole span lies inside the range are
//!   unlinked and handed back in [`Unmapped::freed`] to [`PageTable::release`] after
//!   the caller's flush. As in Linux, a table that merely becomes empty stays
//!   (it is reused by the next map there, and freed by a covering unmap or drop).
//! - Non-coherent walkers: with [`Coherence::NonCoherent`] every modified range of
//!   entries (and every new table, before it is linked) goes through
//!   [`TableAlloc::clean_for_device`]. The driver's own barrier before its
//!   invalidation command orders the cleaned lines with the IOMMU.
//! - `map` and `unmap` inside one existing leaf table (the common small case)
//!   walk once, starting at the deepest table the caller's last such walk
//!   shares with them ([`WalkCursor`]: the table's own for the `&mut` methods,
//!   the caller's for [`PageTable::map_with`]/[`PageTable::unmap_with`], none
//!   for the `_shared` ones, which walk from the root); a single page in the
//!   leaf table of that last walk needs no walk at all; everything else plans
//!   from the root. An unmap that unlinks tables gives the table a new stamp
//!   (unique over all tables) that every cursor checks. Leaves are written
//!   with single aligned 64-bit stores
//!   (vectorised only for empty slots), so the IOMMU never sees half an entry.
//! - Several CPUs at once: [`PageTable::map_shared`] and
//!   [`PageTable::unmap_shared`] take `&self`, for callers that keep their
//!   concurrent ranges disjoint (the `unsafe` contract; iommufd's area tree
//!   does). No lock: a new table is linked by compare-exchange from empty,
//!   the loser adopts the winner's table and frees its own unseen page
//!   (Linux `generic_pt`); the protocol is model-checked with `loom`. The
//!   [`TableAlloc`] is shared by those callers, so its methods take `&self`.
//! - Contiguous runs: where the format offers them ([`ArmConfig::contiguous`],
//!   [`AmdV1Config::nl7_pages`]), an aligned run of `2^k` entries holds one leaf
//!   (ARM Contiguous bit: each entry keeps its own output address; AMD-Vi Next
//!   Level 7: the same PTE in every entry, the size in its address field). `map`
//!   takes the longest run that alignment allows below the level's own leaf;
//!   runs are leaves for every rule above (never cut, [`Translation::leaf_size`]
//!   is the run's); [`PageTable::page_sizes`] lists their sizes. A gather reports
//!   a run's entries at their entry size, since an IOMMU may have cached them
//!   entry by entry.
//! - Not implemented: AMD-Vi level skipping, ARM 52-bit output addresses,
//!   splitting of large leaves (never done, by design).
//! - Table pages come only from the [`TableAlloc`] and are reached only through
//!   its `phys_to_virt`: nothing assumes an identity map.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod cursor;
pub mod error;
pub mod format;
pub mod gather;
pub mod heap;
mod link;
pub mod prot;
mod run_clear;
pub mod table;
pub mod table_alloc;

pub use cursor::WalkCursor;
pub use error::{AllocError, ConfigError, MapError, UnmapError};
pub use format::amd_v1::{AmdV1, AmdV1Config};
pub use format::arm::{ArmConfig, ArmLpae, Granule, Stage};
pub use format::vtd_ss::{VtdSecondStage, VtdSsConfig};
pub use format::x86_64::{X86_64, X86Config};
pub use format::{Format, Geometry};
pub use gather::Gather;
pub use prot::Prot;
pub use table::{
    EntryKind, FreedTables, PageTable, StepKind, Translation, Unmapped, WalkEntry, WalkStep,
};
pub use table_alloc::{Coherence, TableAlloc};

/// The object-safe face of a [`PageTable`], for owners that hold tables of
/// different formats (`Box<dyn IoPageTable>`).
pub trait IoPageTable {
    /// See [`PageTable::map`].
    fn map(&mut self, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<Gather, MapError>;
    /// See [`PageTable::unmap`].
    fn unmap(&mut self, iova: u64, len: u64) -> Result<Unmapped, UnmapError>;
    /// See [`PageTable::release`].
    fn release(&mut self, freed: FreedTables);
    /// See [`PageTable::iova_to_phys`].
    fn iova_to_phys(&self, iova: u64) -> Option<u64>;
    /// See [`PageTable::root_phys`].
    fn root_phys(&self) -> u64;
    /// See [`PageTable::levels`].
    fn levels(&self) -> u32;
    /// See [`PageTable::page_sizes`].
    fn page_sizes(&self) -> u64;
    /// See [`PageTable::dump`].
    fn dump(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result;
    /// See [`PageTable::read_dirty`].
    fn read_dirty(
        &mut self,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, UnmapError>;
    /// See [`PageTable::mark_written`] (models of the walker only).
    fn mark_written(&mut self, iova: u64) -> bool;
    /// See [`PageTable::walk_to`].
    fn walk_to(&self, iova: u64, visit: &mut dyn FnMut(&WalkStep));
}

impl<F: Format, A: TableAlloc> IoPageTable for PageTable<F, A> {
    fn map(&mut self, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<Gather, MapError> {
        PageTable::map(self, iova, phys, len, prot)
    }
    fn unmap(&mut self, iova: u64, len: u64) -> Result<Unmapped, UnmapError> {
        PageTable::unmap(self, iova, len)
    }
    fn release(&mut self, freed: FreedTables) {
        PageTable::release(self, freed)
    }
    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        PageTable::iova_to_phys(self, iova)
    }
    fn root_phys(&self) -> u64 {
        PageTable::root_phys(self)
    }
    fn levels(&self) -> u32 {
        PageTable::levels(self)
    }
    fn page_sizes(&self) -> u64 {
        PageTable::page_sizes(self)
    }
    fn dump(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        PageTable::dump(self, out)
    }
    fn read_dirty(
        &mut self,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, UnmapError> {
        PageTable::read_dirty(self, iova, len, keep, dirty)
    }
    fn mark_written(&mut self, iova: u64) -> bool {
        PageTable::mark_written(self, iova)
    }
    fn walk_to(&self, iova: u64, visit: &mut dyn FnMut(&WalkStep)) {
        PageTable::walk_to(self, iova, visit)
    }
}
