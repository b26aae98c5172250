//! The one walk algorithm, generic over [`Format`] and [`TableAlloc`].
//!
//! `map` is two passes so that no error can leave anything behind: a read-only
//! *plan* pass checks that nothing in the range is mapped and counts the table
//! pages the install will need; all of them are then allocated up front (any
//! failure frees them again, with the tables untouched); the *install* pass
//! cannot fail. A new leaf table is written whole (its leaves, zero around
//! them) before it is linked, so its page need not be zeroed first and no
//! walker ever sees it half filled; a new table above it is linked zeroed and
//! filled entry by entry. `unmap` checks its two boundary leaves first, then clears.
//!
//! Several CPUs may map and unmap disjoint ranges of one table at once
//! ([`PageTable::map_shared`], [`PageTable::unmap_shared`]): each writes only
//! the entries of its own range, and the entries that link tables shared by
//! several ranges are only ever read with acquire loads and written from empty
//! by compare-exchange (the `link` module). An unmap unlinks a table only when its
//! whole span lies in the unmap's range, so no disjoint caller can be inside
//! it; a table that merely becomes empty stays linked for the same reason.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use os_services::barrier::dma_wmb;

use crate::cursor::{CursorShape, WalkCursor};
use crate::error::{AllocError, MapError, UnmapError};
use crate::format::{Format, Geometry, MAX_LEVELS};
use crate::gather::Gather;
use crate::link::{FOLLOW, Linked, link_or_adopt};
use crate::prot::Prot;
use crate::run_clear::{clear_counting, pair_stores_are_atomic};
use crate::table_alloc::{Coherence, TableAlloc};

impl Unmapped {
    /// An unmap that found nothing to remove.
    fn nothing() -> Self {
        Self {
            bytes: 0,
            gather: Gather::default(),
            freed: FreedTables::default(),
        }
    }
}

/// Table pages unlinked by an `unmap`. The hardware may still walk them until the
/// caller has invalidated the IOMMU's caches for the unmap's [`Gather`]; only then
/// hand them to [`PageTable::release`].
#[must_use = "freed table pages must be released after the IOTLB flush, or they leak"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FreedTables {
    /// `None` for the common unmap that unlinks nothing: one word instead of a
    /// `Vec`'s three, since every `unmap` returns one and a single-page unmap
    /// spends a good part of its time moving its result. The second
    /// allocation this costs is made only by the rare unmap that unlinks.
    #[expect(
        clippy::box_collection,
        reason = "one word in every unmap's result, against an extra allocation in a rare one"
    )]
    pages: Option<Box<Vec<u64>>>,
}

impl FreedTables {
    fn from_pages(pages: Vec<u64>) -> Self {
        Self {
            pages: (!pages.is_empty()).then(|| Box::new(pages)),
        }
    }

    /// Number of table pages waiting for release.
    #[inline]
    pub fn len(&self) -> usize {
        self.pages().len()
    }

    /// True when nothing waits for release.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pages.is_none()
    }

    /// Physical addresses of the pages.
    #[inline]
    pub fn pages(&self) -> &[u64] {
        self.pages.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// What an `unmap` removed.
#[must_use = "the gather must be flushed and the freed tables released"]
#[derive(Debug, PartialEq, Eq)]
pub struct Unmapped {
    /// Bytes of leaves removed (holes in the range count nothing).
    pub bytes: u64,
    /// The invalidation the caller owes before reusing the IOVAs or the freed tables.
    pub gather: Gather,
    /// Table pages to [`PageTable::release`] after that invalidation.
    pub freed: FreedTables,
}

/// One entry found by [`PageTable::walk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkEntry {
    /// Level of the entry (0 = smallest pages).
    pub level: u32,
    /// First IOVA the entry covers.
    pub iova: u64,
    /// Bytes the entry covers.
    pub size: u64,
    /// Bytes of the leaf the entry is part of: `size`, or the whole run for an
    /// entry of a contiguous run (ARM contiguous hint, AMD-Vi Next Level 7).
    pub leaf_size: u64,
    /// The raw entry.
    pub pte: u64,
    /// What it points to.
    pub kind: EntryKind,
}

/// A present entry: a link to a table, or a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Links the table page at this physical address.
    Table(u64),
    /// Maps `size` bytes at this physical address (this entry's part of its
    /// leaf, for an entry of a run).
    Leaf(u64),
}

/// A translation found by [`PageTable::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address the IOVA translates to.
    pub phys: u64,
    /// First IOVA of the leaf holding it.
    pub leaf_iova: u64,
    /// Size of that leaf (a whole run, for an entry of one).
    pub leaf_size: u64,
    /// Level of that leaf.
    pub level: u32,
    /// The raw leaf entry.
    pub pte: u64,
}

/// One level of a walk ([`PageTable::walk_to`]): which entry of which table
/// the IOMMU reads there, and what it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkStep {
    /// The level (0 holds the smallest pages).
    pub level: u32,
    /// Physical address of the table read.
    pub table: u64,
    /// The entry's index in it.
    pub index: usize,
    /// The raw entry.
    pub entry: u64,
    /// What the entry is.
    pub kind: StepKind,
    /// The format's single-bit attributes of this entry, by name: (name,
    /// mask); those whose mask is set in `entry` are set.
    pub bits: &'static [(&'static str, u64)],
}

/// What one entry of a walk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// It links the next level's table.
    Table {
        /// Physical address of that table.
        next: u64,
    },
    /// A leaf: the walk ends here.
    Leaf {
        /// Output address of the leaf's first byte.
        phys: u64,
        /// The leaf's size (a whole run, for an entry of one).
        size: u64,
    },
    /// Nothing is mapped: the walk ends in a fault.
    Empty,
}

/// An IO page table of format `F` whose pages come from `A`.
pub struct PageTable<F: Format, A: TableAlloc> {
    format: F,
    alloc: A,
    geo: Geometry,
    root: u64,
    coherence: Coherence,
    /// What every call checks against, computed once from `geo`.
    limits: Limits,
    /// The cursor of the exclusive (`&mut self`) methods; nothing else
    /// touches it.
    own_cursor: UnsafeCell<WalkCursor>,
    /// This table at this unlink generation, as cursors know it: a fresh
    /// [`new_stamp`] at construction and after every unmap that unlinks
    /// tables, so a cursor that saw another one starts over from the root.
    stamp: AtomicU64,
}

// SAFETY: every field but `own_cursor` is `Sync` when `F` and `A` are, and
// `own_cursor` is reached only from methods that take `&mut self`, so no two
// threads ever touch it at once.
unsafe impl<F: Format + Sync, A: TableAlloc + Sync> Sync for PageTable<F, A> {}

/// Where table stamps come from: unique over every table of the program, so
/// that a cursor never takes a table created where a dropped one was (same
/// root page) for the one it walked, nor one generation for another.
static STAMPS: AtomicU64 = AtomicU64::new(1);

/// A stamp never handed out before (0, a new cursor's, never is).
fn new_stamp() -> u64 {
    STAMPS.fetch_add(1, Ordering::Relaxed)
}

/// The geometry's values on the hot paths, precomputed so that a single-page
/// `map` or `unmap` spends its instructions on the tables, not on the shape.
struct Limits {
    granule_mask: u64,
    max_iova: u64,
    max_phys: u64,
    /// log2 of the span of a level-1 entry, i.e. of one level-0 table, and
    /// that span less one.
    leaf_table_shift: u32,
    leaf_table_mask: u64,
    /// Per level: the shift and mask that extract the entry index from an IOVA.
    index_shift: [u32; MAX_LEVELS],
    index_mask: [u64; MAX_LEVELS],
    /// Per level: [`Format::leaf_runs`], less the runs longer than the level's
    /// tables.
    runs: [u32; MAX_LEVELS],
    /// Whether runs of entries may be cleared two to a store.
    pair_stores: bool,
    /// What walk cursors need of the geometry.
    cursor_shape: CursorShape,
}

impl Limits {
    fn new(geo: &Geometry, format: &impl Format) -> Self {
        let mut index_shift = [0; MAX_LEVELS];
        let mut index_mask = [0; MAX_LEVELS];
        let mut runs = [0; MAX_LEVELS];
        for level in 0..geo.levels {
            index_shift[level as usize] = geo.shift(level);
            index_mask[level as usize] = low(geo.index_bits(level));
            // Bit 0 would be a run of one: a plain leaf.
            let fits = (low(geo.index_bits(level) + 1) as u32) & !1;
            runs[level as usize] = format.leaf_runs(level) & fits;
        }
        Self {
            granule_mask: low(geo.granule_shift),
            max_iova: geo.max_iova(),
            max_phys: geo.max_phys(),
            leaf_table_shift: geo.shift(1),
            leaf_table_mask: low(geo.shift(1)),
            index_shift,
            index_mask,
            runs,
            pair_stores: pair_stores_are_atomic(),
            cursor_shape: CursorShape::new(geo),
        }
    }
}

/// The new tables a map needs, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NewTables {
    /// Tables above level 0: allocated zeroed, linked, then filled.
    upper: usize,
    /// Level-0 tables: filled whole, then linked.
    leaf: usize,
}

impl NewTables {
    const NONE: Self = Self { upper: 0, leaf: 0 };

    /// One new table at `level`.
    fn one_at(level: u32) -> Self {
        if level == 0 {
            Self { upper: 0, leaf: 1 }
        } else {
            Self { upper: 1, leaf: 0 }
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            upper: self.upper.saturating_add(other.upper),
            leaf: self.leaf.saturating_add(other.leaf),
        }
    }

    fn times(self, n: usize) -> Self {
        Self {
            upper: self.upper.saturating_mul(n),
            leaf: self.leaf.saturating_mul(n),
        }
    }
}

/// The pages [`NewTables`] asked for, allocated before the install.
struct Stash {
    upper: Vec<u64>,
    leaf: Vec<u64>,
}

/// Bytes/leaf accounting of one `unmap`.
struct Clearing {
    bytes: u64,
    gather: Gather,
    freed: Vec<u64>,
}

impl<F: Format, A: TableAlloc> PageTable<F, A> {
    /// An empty table (a zeroed root) of `format`, with pages from `alloc`.
    pub fn new(format: F, alloc: A, coherence: Coherence) -> Result<Self, AllocError> {
        let geo = format.geometry();
        let top = geo.levels - 1;
        let root = alloc.alloc_table(geo.table_bytes(top)).ok_or(AllocError)?;
        let limits = Limits::new(&geo, &format);
        let table = Self {
            format,
            alloc,
            geo,
            root,
            coherence,
            limits,
            own_cursor: UnsafeCell::new(WalkCursor::new()),
            stamp: AtomicU64::new(new_stamp()),
        };
        table.clean_table(root, top);
        Ok(table)
    }

    /// Physical address of the root table (to program into the context entry,
    /// PASID entry, DTE, CD.TTB0 or STE.S2TTB).
    pub fn root_phys(&self) -> u64 {
        self.root
    }

    /// Number of levels, root included.
    pub fn levels(&self) -> u32 {
        self.geo.levels
    }

    /// The format and its hardware-facing configuration values.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// The tree's shape.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Bitmap of leaf sizes this table uses (bit n = 2^n bytes), runs included.
    pub fn page_sizes(&self) -> u64 {
        let mut sizes = self.geo.page_sizes();
        for level in 0..self.geo.levels {
            let mut runs = self.limits.runs[level as usize];
            while runs != 0 {
                let k = runs.trailing_zeros();
                sizes |= 1u64 << (self.geo.shift(level) + k);
                runs &= runs - 1;
            }
        }
        sizes
    }

    /// The table-page allocator (host tests read its counters).
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// The table-page allocator, mutably (e.g. to inject failures in tests). Pages
    /// can only be freed through its `unsafe` method, so the tree stays sound.
    pub fn allocator_mut(&mut self) -> &mut A {
        &mut self.alloc
    }

    /// Whether table changes are cleaned from the CPU caches.
    pub fn coherence(&self) -> Coherence {
        self.coherence
    }

    // ---- memory access -------------------------------------------------------

    #[inline(always)]
    fn entries(&self, table: u64) -> *mut u64 {
        self.alloc.phys_to_virt(table).as_ptr().cast::<u64>()
    }

    /// Entry `idx` of table `t` as an atomic word.
    #[inline(always)]
    fn entry<'t>(t: *mut u64, idx: usize) -> &'t AtomicU64 {
        // SAFETY: `t` is a live table page from the allocator (it is the root or was
        // linked by this crate) and every caller bounds `idx` by the table's entry
        // count; the page is 8-byte aligned. The page outlives every use: tables
        // are freed only by `release` or the drop, after every walk through them
        // (the `_shared` methods' contract), and every CPU access to an entry
        // another caller may touch is atomic.
        unsafe { AtomicU64::from_ptr(t.add(idx)) }
    }

    /// Reads an entry; acquire, since the walk may go on through it.
    #[inline(always)]
    fn read(t: *mut u64, idx: usize) -> u64 {
        Self::entry(t, idx).load(FOLLOW)
    }

    /// Writes an entry of the caller's own range (a leaf, or zero). One
    /// aligned 64-bit store, as the IOMMU expects; the driver's barrier before
    /// its invalidation orders it for the walker.
    #[inline(always)]
    fn write(t: *mut u64, idx: usize, pte: u64) {
        Self::entry(t, idx).store(pte, Ordering::Relaxed)
    }

    /// Cleans entries `lo..=hi` of table `t` for a non-snooping walker.
    #[inline(always)]
    fn clean(&self, t: *mut u64, lo: usize, hi: usize) {
        if self.coherence == Coherence::NonCoherent && lo <= hi {
            // SAFETY: `lo` is within the table (see `read`).
            let start = unsafe { t.add(lo) };
            if let Some(virt) = NonNull::new(start.cast::<u8>()) {
                self.alloc.clean_for_device(virt, (hi - lo + 1) * 8);
            }
        }
    }

    fn clean_table(&self, table: u64, level: u32) {
        if self.coherence == Coherence::NonCoherent {
            let bytes = self.geo.table_bytes(level);
            self.alloc
                .clean_for_device(self.alloc.phys_to_virt(table), bytes);
        }
    }

    /// [`Limits::runs`] at `level`, known to be none without a load for a
    /// format whose [`Format::leaf_runs`] is constantly none (x86-64, VT-d).
    #[inline(always)]
    fn runs(&self, level: u32) -> u32 {
        if self.format.leaf_runs(level) == 0 {
            return 0;
        }
        self.limits.runs[level as usize]
    }

    #[inline(always)]
    fn index(&self, iova: u64, level: u32) -> usize {
        let level = level as usize;
        ((iova >> self.limits.index_shift[level]) & self.limits.index_mask[level]) as usize
    }

    // ---- argument checks -----------------------------------------------------

    /// Last IOVA of `[iova, iova + len)`, if the range is valid.
    fn iova_last(&self, iova: u64, len: u64) -> Result<u64, RangeError> {
        if len == 0 {
            return Err(RangeError::Zero);
        }
        if (iova | len) & self.limits.granule_mask != 0 {
            return Err(RangeError::Misaligned);
        }
        let last = iova.checked_add(len - 1).ok_or(RangeError::OutOfRange)?;
        if last > self.limits.max_iova {
            return Err(RangeError::OutOfRange);
        }
        Ok(last)
    }

    // ---- map -----------------------------------------------------------------

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` with `prot`, using the
    /// largest leaves that alignment and the format allow.
    ///
    /// Refuses (changing nothing) if any page in the range is already mapped. The
    /// returned gather covers the range and the leaf sizes written: IOMMUs that
    /// cache non-present entries (VT-d caching mode) need it flushed.
    #[inline]
    pub fn map(&mut self, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<Gather, MapError> {
        let cursor = self.own_cursor.get();
        // SAFETY: `&mut self`: no other call runs on this table, and only
        // `&mut self` methods reach `own_cursor`.
        unsafe { self.map_inner(Some(&mut *cursor), iova, phys, len, prot) }
    }

    /// [`Self::map_shared`] with the caller's own [`WalkCursor`] (one per
    /// CPU): a walk near the caller's last one starts at the deepest table
    /// they share.
    ///
    /// # Safety
    ///
    /// As [`Self::map_shared`].
    #[inline]
    pub unsafe fn map_with(
        &self,
        cursor: &mut WalkCursor,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, MapError> {
        // SAFETY: forwarded.
        unsafe { self.map_inner(Some(cursor), iova, phys, len, prot) }
    }

    /// [`Self::map`] through a shared reference, for several CPUs mapping and
    /// unmapping one table at once without a lock. New tables are linked by
    /// compare-exchange (the loser's page goes back to the allocator, never
    /// seen); leaves are written by the one caller whose range holds them.
    ///
    /// # Safety
    ///
    /// While this call runs, no other call on this table may touch an IOVA of
    /// `[iova, iova + len)`: no `map_shared` or `unmap_shared` of an
    /// overlapping range, no [`Self::read_dirty`] of one. The caller keeps
    /// concurrent ranges disjoint (iommufd's area tree does, as Linux's
    /// `iopt` does for `iommu_map`): an unmap that unlinks a table while this
    /// call walks it would have this call write into a freed page.
    #[inline]
    pub unsafe fn map_shared(
        &self,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, MapError> {
        // SAFETY: forwarded.
        unsafe { self.map_inner(None, iova, phys, len, prot) }
    }

    /// The map of every face: the walk from `cursor`, or from the root.
    ///
    /// # Safety
    ///
    /// As [`Self::map_shared`].
    #[inline(always)]
    unsafe fn map_inner(
        &self,
        cursor: Option<&mut WalkCursor>,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, MapError> {
        if len == self.limits.granule_mask + 1 {
            return self.map_page(cursor, iova, phys, prot);
        }
        let last = self.iova_last(iova, len).map_err(|e| match e {
            RangeError::Zero => MapError::ZeroLength,
            RangeError::Misaligned => MapError::Misaligned,
            RangeError::OutOfRange => MapError::IovaOutOfRange,
        })?;
        if phys & self.limits.granule_mask != 0 {
            return Err(MapError::Misaligned);
        }
        match phys.checked_add(len - 1) {
            Some(phys_last) if phys_last <= self.limits.max_phys => {}
            _ => return Err(MapError::PhysOutOfRange),
        }
        if !prot.intersects(Prot::RW) || prot.contains(Prot::CACHE | Prot::MMIO) {
            return Err(MapError::InvalidProt);
        }
        if let Some(done) = self.map_within_leaf_table(cursor, iova, phys, last, prot) {
            return done;
        }
        self.map_general(iova, phys, last, prot)
    }

    /// `map` of one page, the most common call of all: the general path's
    /// checks in its order, but only those a page needs (both limits are the
    /// last byte of a whole page, so an aligned page starting at or below them
    /// fits, and a page never leaves its leaf table).
    #[inline(always)]
    fn map_page(
        &self,
        cursor: Option<&mut WalkCursor>,
        iova: u64,
        phys: u64,
        prot: Prot,
    ) -> Result<Gather, MapError> {
        let limits = &self.limits;
        if iova & limits.granule_mask != 0 {
            return Err(MapError::Misaligned);
        }
        if iova > limits.max_iova {
            return Err(MapError::IovaOutOfRange);
        }
        if phys & limits.granule_mask != 0 {
            return Err(MapError::Misaligned);
        }
        if phys > limits.max_phys {
            return Err(MapError::PhysOutOfRange);
        }
        if !prot.intersects(Prot::RW) || prot.contains(Prot::CACHE | Prot::MMIO) {
            return Err(MapError::InvalidProt);
        }
        match self.leaf_table_at(cursor, iova) {
            Ok(t) => {
                let bits = self.format.leaf_attrs(0, prot)?;
                self.map_one_leaf(t, iova, phys | bits)
            }
            Err(()) => self.map_general(iova, phys, iova + limits.granule_mask, prot),
        }
    }

    /// Writes the smallest leaf `pte` for `iova` into its empty entry of the
    /// leaf table whose entries are `t`.
    #[inline(always)]
    fn map_one_leaf(&self, t: *mut u64, iova: u64, pte: u64) -> Result<Gather, MapError> {
        let idx = self.index(iova, 0);
        if Self::read(t, idx) != 0 {
            return Err(MapError::AlreadyMapped { iova });
        }
        Self::write(t, idx, pte);
        self.clean(t, idx, idx);
        let page = self.limits.granule_mask + 1;
        Ok(Gather {
            start: iova,
            last: iova + (page - 1),
            leaf_sizes: page,
            freed_tables: false,
        })
    }

    /// Plan, preallocate, install.
    fn map_general(&self, iova: u64, phys: u64, last: u64, prot: Prot) -> Result<Gather, MapError> {
        let mut attrs = [0u64; MAX_LEVELS];
        for level in 0..self.geo.levels {
            if self.geo.leaf_allowed(level) {
                attrs[level as usize] = self.format.leaf_attrs(level, prot)?;
            }
        }

        let top = self.geo.levels - 1;
        let needed = self
            .plan(self.root, top, iova, phys, last)
            .map_err(|conflict| MapError::AlreadyMapped { iova: conflict })?;

        let mut stash = self.allocate(needed)?;

        let mut gather = Gather {
            start: iova,
            last,
            leaf_sizes: 0,
            freed_tables: false,
        };
        self.install(
            self.root,
            top,
            iova,
            phys,
            last,
            &attrs,
            &mut stash,
            &mut gather,
        );
        // Left over when another caller linked a table the plan counted: never
        // linked, so no walker has seen them.
        self.free_unlinked(stash);
        Ok(gather)
    }

    /// Every table page a map will link, allocated up front: upper tables
    /// zeroed (their entries are filled one by one after the link), leaf
    /// tables as they come ([`Self::fill_new_leaf_table`] writes each whole
    /// before linking it). Nothing is kept when one allocation fails.
    fn allocate(&self, needed: NewTables) -> Result<Stash, MapError> {
        let mut stash = Stash {
            upper: Vec::new(),
            leaf: Vec::new(),
        };
        let bytes = 1usize << self.geo.granule_shift;
        // `count` pages from `alloc` into `pages`; false at the first refusal.
        let fill = |pages: &mut Vec<u64>, count: usize, alloc: fn(&A, usize) -> Option<u64>| {
            if pages.try_reserve_exact(count).is_err() {
                return false;
            }
            for _ in 0..count {
                match alloc(&self.alloc, bytes) {
                    Some(page) => pages.push(page),
                    None => return false,
                }
            }
            true
        };
        if !fill(&mut stash.upper, needed.upper, A::alloc_table)
            || !fill(&mut stash.leaf, needed.leaf, A::alloc_table_uninit)
        {
            self.free_unlinked(stash);
            return Err(MapError::NoMemory);
        }
        // Handed out by `pop`: reversed so tables are linked in allocation order.
        stash.upper.reverse();
        stash.leaf.reverse();
        // New upper tables must reach memory zeroed before any link to them
        // does, as the IOMMU sees memory: a device barrier, not a CPU fence
        // (`dmb oshst` on aarch64: the SMMU is outside the CPUs' inner
        // shareable domain; Linux `__arm_lpae_init_pte` → `dma_wmb`).
        if !stash.upper.is_empty() {
            for &page in &stash.upper {
                self.clean_table(page, 0);
            }
            dma_wmb();
        }
        Ok(stash)
    }

    /// Gives back table pages no walker has seen (never linked).
    fn free_unlinked(&self, stash: Stash) {
        let bytes = 1usize << self.geo.granule_shift;
        for page in stash.upper.into_iter().chain(stash.leaf) {
            // SAFETY: the page came from `alloc_table(bytes)` or
            // `alloc_table_uninit(bytes)` in `allocate` and was never linked.
            unsafe { self.alloc.free_table(page, bytes) };
        }
    }

    /// Writes every entry of the new leaf table `table` for the level-1
    /// slot holding `[iova, last]`: the leaves of the range, zero around
    /// them. Before its link, no walker can see the table, so plain stores;
    /// after this, it is cleaned for a non-snooping walker and may be linked.
    fn fill_new_leaf_table(&self, table: u64, iova: u64, phys: u64, last: u64, attrs: u64) {
        let t = self.entries(table);
        let shift = self.geo.granule_shift;
        let first = self.index(iova, 0);
        let count = ((last - iova) >> shift) as usize + 1;
        let entries = 1usize << self.geo.index_bits(0);
        for i in (0..first).chain(first + count..entries) {
            // SAFETY: `i` is inside the table page, which only this call can reach.
            unsafe { t.add(i).write(0) };
        }
        self.write_leaves(t, 0, first, count, iova, phys, attrs);
        self.clean_table(table, 0);
    }

    /// The entries of the level-0 table holding `[iova, last]`, when the range
    /// lies inside one level-1 slot smaller than it (so only smallest leaves can
    /// be used) and the walk there meets only table links. `Err(())` when the
    /// walk meets a hole or a leaf first.
    #[inline(always)]
    fn leaf_table_of(
        &self,
        cursor: Option<&mut WalkCursor>,
        iova: u64,
        last: u64,
    ) -> Option<Result<*mut u64, ()>> {
        let span_shift = self.limits.leaf_table_shift;
        if iova >> span_shift != last >> span_shift || last - iova >= self.limits.leaf_table_mask {
            return None;
        }
        Some(self.leaf_table_at(cursor, iova))
    }

    /// The entries of the level-0 table holding `iova`, reached through table
    /// links only (`Err(())` at a hole or a leaf on the way): from `cursor`'s
    /// last leaf table when `iova` lies in it, else from the deepest table
    /// the cursor shares with `iova`, else from the root.
    #[inline(always)]
    fn leaf_table_at(&self, cursor: Option<&mut WalkCursor>, iova: u64) -> Result<*mut u64, ()> {
        let Some(cursor) = cursor else {
            let top = self.geo.levels - 1;
            return self.descend_to_leaf_table(top, self.entries(self.root), iova, None);
        };
        let stamp = self.stamp.load(Ordering::Acquire);
        if let Some(t) = cursor.same_leaf_table(stamp, &self.limits.cursor_shape, iova) {
            return Ok(t as *mut u64);
        }
        self.walk_from_cursor(cursor, stamp, iova)
    }

    /// [`Self::leaf_table_at`] past the cursor's leaf table. Inlined: out of
    /// line, the call cost a scattered one-page map more (about 14
    /// instructions) than it saved a sequential one (2 to 5).
    #[inline(always)]
    fn walk_from_cursor(
        &self,
        cursor: &mut WalkCursor,
        stamp: u64,
        iova: u64,
    ) -> Result<*mut u64, ()> {
        let top = self.geo.levels - 1;
        let shape = &self.limits.cursor_shape;
        let root_entries = || self.entries(self.root) as usize;
        let (level, t) = cursor.start(stamp, top, shape, iova, root_entries);
        self.descend_to_leaf_table(level, t as *mut u64, iova, Some(cursor))
    }

    /// [`Self::leaf_table_of`]'s walk from the entries `t` of a level-`level`
    /// table down to the level-0 table of `iova`, recording it in `cursor` if
    /// there is one.
    #[inline(always)]
    fn descend_to_leaf_table(
        &self,
        mut level: u32,
        mut t: *mut u64,
        iova: u64,
        mut cursor: Option<&mut WalkCursor>,
    ) -> Result<*mut u64, ()> {
        while level > 0 {
            let pte = Self::read(t, self.index(iova, level));
            if pte == 0 || !self.format.is_table(level, pte) {
                if let Some(cursor) = cursor {
                    cursor.record(&self.limits.cursor_shape, iova, level);
                }
                return Err(());
            }
            t = self.entries(self.format.table_addr(pte));
            level -= 1;
            if let Some(cursor) = cursor.as_deref_mut() {
                cursor.set(&self.limits.cursor_shape, iova, level, t as usize);
            }
        }
        if let Some(cursor) = cursor {
            cursor.record(&self.limits.cursor_shape, iova, 0);
        }
        Ok(t)
    }

    /// Single-walk `map` of several smallest leaves in a table that exists
    /// already (one page takes [`Self::map_page`]). `None`: take the general
    /// path.
    #[inline(always)]
    fn map_within_leaf_table(
        &self,
        cursor: Option<&mut WalkCursor>,
        iova: u64,
        phys: u64,
        last: u64,
        prot: Prot,
    ) -> Option<Result<Gather, MapError>> {
        let Some(Ok(t)) = self.leaf_table_of(cursor, iova, last) else {
            return None;
        };
        let shift = self.geo.granule_shift;
        let first = self.index(iova, 0);
        let count = ((last - iova) >> shift) as usize + 1;
        let bits = match self.format.leaf_attrs(0, prot) {
            Ok(bits) => bits,
            Err(e) => return Some(Err(e)),
        };
        if !Self::all_empty(t, first, count) {
            let taken = (first..first + count).find(|&i| Self::read(t, i) != 0)?;
            let at = iova + (((taken - first) as u64) << shift);
            return Some(Err(MapError::AlreadyMapped { iova: at }));
        }
        self.write_leaves(t, 0, first, count, iova, phys, bits);
        self.clean(t, first, first + count - 1);
        Some(Ok(Gather {
            start: iova,
            last,
            leaf_sizes: 1 << shift,
            freed_tables: false,
        }))
    }

    /// Whether entries `from..from + count` of `t` are all zero (plain loads that
    /// the compiler may widen: only "all zero or not" is asked).
    #[inline(always)]
    fn all_empty(t: *mut u64, from: usize, count: usize) -> bool {
        let mut any = 0;
        for i in from..from + count {
            // SAFETY: as in `read`; callers bound the range by the table size.
            any |= unsafe { t.add(i).read() };
        }
        any == 0
    }

    /// Writes leaves into the empty entries `idx..idx + count` of `t` at `level`,
    /// mapping `iova` onward to `phys` onward: as runs wherever the format has
    /// them and the addresses are aligned for one, else one leaf an entry.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn write_leaves(
        &self,
        t: *mut u64,
        level: u32,
        idx: usize,
        count: usize,
        iova: u64,
        phys: u64,
        attrs: u64,
    ) {
        let shift = self.limits.index_shift[level as usize];
        let runs = self.runs(level);
        if runs == 0 {
            let mut pte = phys | attrs;
            for i in idx..idx + count {
                // SAFETY: as in `write`. Plain stores so that long runs
                // vectorize; the slots are empty (no live translation depends
                // on their order), and vector stores of 64-bit lanes still
                // write each aligned entry in one piece.
                unsafe { t.add(i).write(pte) };
                pte = pte.wrapping_add(1 << shift);
            }
            return;
        }
        let mut done = 0;
        while done < count {
            let offset = (done as u64) << shift;
            let run_phys = phys.wrapping_add(offset);
            // The longest run both addresses are aligned for that still fits.
            let aligned = ((iova.wrapping_add(offset) | run_phys) >> shift).trailing_zeros();
            let fits = (count - done).ilog2();
            let k = match runs & (low(aligned.min(fits) + 1) as u32) {
                0 => 0,
                usable => usable.ilog2(),
            };
            for j in 0..1usize << k {
                let entry_phys = run_phys.wrapping_add((j as u64) << shift);
                let pte = if k == 0 {
                    entry_phys | attrs
                } else {
                    self.format.run_entry(level, k, run_phys, entry_phys, attrs)
                };
                // SAFETY: as above.
                unsafe { t.add(idx + done + j).write(pte) };
            }
            done += 1 << k;
        }
    }

    /// Whether a leaf at `level` may start at `iova` for `phys` (the caller checks
    /// that the whole slot is covered).
    #[inline(always)]
    fn leafable(&self, level: u32, iova: u64, phys: u64) -> bool {
        self.geo.leaf_allowed(level) && (iova | phys) & low(self.geo.shift(level)) == 0
    }

    /// Read-only pass: `Err(iova)` if something in `[iova, last]` under `table`
    /// is mapped, else the number of table pages `install` will allocate.
    fn plan(
        &self,
        table: u64,
        level: u32,
        mut iova: u64,
        mut phys: u64,
        last: u64,
    ) -> Result<NewTables, u64> {
        let t = self.entries(table);
        let shift = self.geo.shift(level);
        let mask = low(shift);
        let mut idx = self.index(iova, level);
        if level == 0 {
            let count = ((last - iova) >> shift) as usize + 1;
            // Branch-free scan first: the common answer is "all empty".
            if !Self::all_empty(t, idx, count) {
                for i in 0..count {
                    if Self::read(t, idx + i) != 0 {
                        return Err(iova + ((i as u64) << shift));
                    }
                }
            }
            return Ok(NewTables::NONE);
        }
        let mut needed = NewTables::NONE;
        let entries = 1usize << self.geo.index_bits(level);
        loop {
            let remaining = last - iova;
            if self.leafable(level, iova, phys) && remaining >= mask {
                // Whole aligned slots that are all empty become leaves: no tables.
                let whole = (remaining >> shift) + u64::from(remaining & mask == mask);
                let run = whole.min((entries - idx) as u64) as usize;
                if Self::all_empty(t, idx, run) {
                    let advance = (run as u64) << shift;
                    if iova.wrapping_add(advance).wrapping_sub(1) == last {
                        return Ok(needed);
                    }
                    iova = iova.wrapping_add(advance);
                    phys = phys.wrapping_add(advance);
                    idx += run;
                    continue;
                }
            }
            let slot_last = iova | mask;
            let chunk_last = slot_last.min(last);
            let pte = Self::read(t, idx);
            if pte == 0 {
                needed = needed.plus(self.slot_cost(level, iova, phys, chunk_last));
            } else if self.format.is_table(level, pte) {
                needed = needed.plus(self.plan(
                    self.format.table_addr(pte),
                    level - 1,
                    iova,
                    phys,
                    chunk_last,
                )?);
            } else {
                return Err(iova);
            }
            if chunk_last == last {
                return Ok(needed);
            }
            phys += chunk_last - iova + 1;
            iova = chunk_last + 1;
            idx += 1;
        }
    }

    /// Tables `install` allocates for `[iova, last]` inside one empty slot at `level`.
    fn slot_cost(&self, level: u32, iova: u64, phys: u64, last: u64) -> NewTables {
        let full =
            iova & low(self.geo.shift(level)) == 0 && last == iova | low(self.geo.shift(level));
        if full && self.leafable(level, iova, phys) {
            NewTables::NONE
        } else {
            NewTables::one_at(level - 1).plus(self.new_tables(level - 1, iova, phys, last))
        }
    }

    /// Tables needed below a new, empty table at `level` to map `[iova, last]`.
    /// Closed form: every interior slot of a level costs the same, because
    /// leafability only depends on `phys - iova` there.
    fn new_tables(&self, level: u32, iova: u64, phys: u64, last: u64) -> NewTables {
        if level == 0 {
            return NewTables::NONE;
        }
        let shift = self.geo.shift(level);
        let mask = low(shift);
        let first_slot = iova >> shift;
        let last_slot = last >> shift;
        let mut needed = self.slot_cost(level, iova, phys, (iova | mask).min(last));
        if last_slot > first_slot {
            let tail = last_slot << shift;
            needed = needed.plus(self.slot_cost(level, tail, phys + (tail - iova), last));
            let interior = last_slot - first_slot - 1;
            if interior > 0 {
                let start = (first_slot + 1) << shift;
                let each = self.slot_cost(level, start, phys + (start - iova), start | mask);
                needed = needed.plus(each.times(interior as usize));
            }
        }
        needed
    }

    /// Infallible pass: writes the leaves of `[iova, last]` under `table`, linking
    /// tables from `stash` where `plan` said they were needed.
    #[allow(clippy::too_many_arguments)]
    fn install(
        &self,
        table: u64,
        level: u32,
        mut iova: u64,
        mut phys: u64,
        last: u64,
        attrs: &[u64; MAX_LEVELS],
        stash: &mut Stash,
        gather: &mut Gather,
    ) {
        let t = self.entries(table);
        let shift = self.geo.shift(level);
        let size = 1u64 << shift;
        let mask = size - 1;
        let leaf_bits = attrs[level as usize];
        let entries = 1usize << self.geo.index_bits(level);
        let first_idx = self.index(iova, level);
        let mut idx = first_idx;
        loop {
            let remaining = last - iova;
            if self.leafable(level, iova, phys) && remaining >= mask {
                // A run of whole, aligned slots: leaves, except where a table
                // already sits (plan checked it is free of leaves in the range).
                let whole = (remaining >> shift) + u64::from(remaining & mask == mask);
                let run = (whole.min((entries - idx) as u64)) as usize;
                let mut wrote_leaf = false;
                if level == 0 || Self::all_empty(t, idx, run) {
                    // No tables below level 0 (plan found these slots empty),
                    // or no tables in this run: leaves only.
                    self.write_leaves(t, level, idx, run, iova, phys, leaf_bits);
                    let advance = (run as u64) << shift;
                    iova = iova.wrapping_add(advance);
                    phys = phys.wrapping_add(advance);
                    gather.leaf_sizes |= size;
                    idx += run;
                    if iova.wrapping_sub(size) | mask == last {
                        break;
                    }
                    continue;
                }
                let mut i = idx;
                while i < idx + run {
                    let pte = Self::read(t, i);
                    if pte == 0 {
                        // A stretch of empty slots between tables: leaves.
                        let empty = (i..idx + run)
                            .take_while(|&j| Self::read(t, j) == 0)
                            .count();
                        self.write_leaves(t, level, i, empty, iova, phys, leaf_bits);
                        wrote_leaf = true;
                        let advance = (empty as u64) << shift;
                        iova = iova.wrapping_add(advance);
                        phys = phys.wrapping_add(advance);
                        i += empty;
                        continue;
                    }
                    let child = self.format.table_addr(pte);
                    self.install(
                        child,
                        level - 1,
                        iova,
                        phys,
                        iova | mask,
                        attrs,
                        stash,
                        gather,
                    );
                    iova = iova.wrapping_add(size);
                    phys = phys.wrapping_add(size);
                    i += 1;
                }
                if wrote_leaf {
                    gather.leaf_sizes |= size;
                }
                idx += run;
                if (iova.wrapping_sub(size)) | mask == last {
                    break;
                }
                continue;
            }
            let chunk_last = (iova | mask).min(last);
            let pte = Self::read(t, idx);
            // The table to install into, `None` when a new leaf table
            // already holds the range's part.
            let below = if pte == 0 && level == 1 {
                let Some(fresh) = stash.leaf.pop() else {
                    debug_assert!(false, "plan undercounted leaf tables");
                    break;
                };
                self.fill_new_leaf_table(fresh, iova, phys, chunk_last, attrs[0]);
                // Whole before its link: the release exchange shows it so to
                // the CPUs, this barrier to the IOMMU.
                dma_wmb();
                let link = fresh | self.format.table_attrs(level);
                match link_or_adopt(Self::entry(t, idx), link) {
                    Linked::Ours => {
                        gather.leaf_sizes |= 1 << self.geo.granule_shift;
                        None
                    }
                    Linked::Theirs(theirs) => {
                        // Another caller's range shares the slot: ours goes
                        // into its table, entry by entry.
                        stash.leaf.push(fresh);
                        Some(theirs)
                    }
                }
            } else if pte == 0 {
                let Some(fresh) = stash.upper.pop() else {
                    debug_assert!(false, "plan undercounted tables");
                    break;
                };
                let link = fresh | self.format.table_attrs(level);
                match link_or_adopt(Self::entry(t, idx), link) {
                    Linked::Ours => Some(link),
                    Linked::Theirs(theirs) => {
                        stash.upper.push(fresh);
                        Some(theirs)
                    }
                }
            } else {
                Some(pte)
            };
            if let Some(present) = below {
                if !self.format.is_table(level, present) {
                    // Only a caller mapping an overlapping range could have
                    // put a leaf here since the plan: the `_shared` contract
                    // forbids it.
                    debug_assert!(false, "a concurrent map overlapped this one");
                    break;
                }
                let child = self.format.table_addr(present);
                self.install(
                    child,
                    level - 1,
                    iova,
                    phys,
                    chunk_last,
                    attrs,
                    stash,
                    gather,
                );
            }
            idx += 1;
            if chunk_last == last {
                break;
            }
            phys += chunk_last - iova + 1;
            iova = chunk_last + 1;
        }
        self.clean(t, first_idx, idx - 1);
    }

    // ---- unmap ---------------------------------------------------------------

    /// Unmaps every leaf in `[iova, iova + len)`; holes are skipped. A range
    /// starting or ending inside a leaf is refused (nothing changes): leaves are
    /// never split. Table pages whose whole span lies in the range are unlinked
    /// and returned in [`Unmapped::freed`].
    #[inline]
    pub fn unmap(&mut self, iova: u64, len: u64) -> Result<Unmapped, UnmapError> {
        let cursor = self.own_cursor.get();
        // SAFETY: as in `map`.
        unsafe { self.unmap_inner(Some(&mut *cursor), iova, len) }
    }

    /// [`Self::unmap_shared`] with the caller's own [`WalkCursor`].
    ///
    /// # Safety
    ///
    /// As [`Self::map_shared`].
    #[inline]
    pub unsafe fn unmap_with(
        &self,
        cursor: &mut WalkCursor,
        iova: u64,
        len: u64,
    ) -> Result<Unmapped, UnmapError> {
        // SAFETY: forwarded.
        unsafe { self.unmap_inner(Some(cursor), iova, len) }
    }

    /// [`Self::unmap`] through a shared reference, beside other callers'
    /// `map_shared` and `unmap_shared` of other ranges.
    ///
    /// # Safety
    ///
    /// As [`Self::map_shared`]: while this call runs, no other call on this
    /// table may touch an IOVA of `[iova, iova + len)`.
    #[inline]
    pub unsafe fn unmap_shared(&self, iova: u64, len: u64) -> Result<Unmapped, UnmapError> {
        // SAFETY: forwarded.
        unsafe { self.unmap_inner(None, iova, len) }
    }

    /// The unmap of every face.
    ///
    /// # Safety
    ///
    /// As [`Self::map_shared`].
    #[inline(always)]
    unsafe fn unmap_inner(
        &self,
        cursor: Option<&mut WalkCursor>,
        iova: u64,
        len: u64,
    ) -> Result<Unmapped, UnmapError> {
        if len == self.limits.granule_mask + 1 {
            return self.unmap_page(cursor, iova);
        }
        let last = self.iova_last(iova, len).map_err(|e| match e {
            RangeError::Zero => UnmapError::ZeroLength,
            RangeError::Misaligned => UnmapError::Misaligned,
            RangeError::OutOfRange => UnmapError::IovaOutOfRange,
        })?;
        match self.leaf_table_of(cursor, iova, last) {
            // Nothing mapped on the way: nothing to do.
            Some(Err(())) if self.lookup(iova).is_none() => return Ok(Unmapped::nothing()),
            Some(Ok(t)) => {
                // Only smallest leaves here, no table covered; only runs of
                // them can be cut.
                if self.runs(0) != 0 {
                    self.refuse_cut_runs(t, iova, last)?;
                }
                return Ok(self.clear_leaf_run(t, iova, last));
            }
            _ => {}
        }
        self.unmap_general(iova, last)
    }

    /// `unmap` of one page: [`Self::map_page`]'s shortcut.
    #[inline(always)]
    fn unmap_page(
        &self,
        cursor: Option<&mut WalkCursor>,
        iova: u64,
    ) -> Result<Unmapped, UnmapError> {
        let limits = &self.limits;
        if iova & limits.granule_mask != 0 {
            return Err(UnmapError::Misaligned);
        }
        if iova > limits.max_iova {
            return Err(UnmapError::IovaOutOfRange);
        }
        let last = iova + limits.granule_mask;
        match self.leaf_table_at(cursor, iova) {
            Ok(t) => {
                // A page of a run would cut it.
                if self.runs(0) != 0 {
                    self.refuse_cut_runs(t, iova, last)?;
                }
                Ok(self.clear_one_leaf(t, iova))
            }
            // Nothing mapped on the way: nothing to do.
            Err(()) if self.lookup(iova).is_none() => Ok(Unmapped::nothing()),
            Err(()) => self.unmap_general(iova, last),
        }
    }

    /// Clears `iova`'s smallest leaf, if there is one, in the leaf table whose
    /// entries are `t`.
    #[inline(always)]
    fn clear_one_leaf(&self, t: *mut u64, iova: u64) -> Unmapped {
        let idx = self.index(iova, 0);
        if Self::read(t, idx) == 0 {
            return Unmapped::nothing();
        }
        Self::write(t, idx, 0);
        self.clean(t, idx, idx);
        let page = self.limits.granule_mask + 1;
        Unmapped {
            bytes: page,
            gather: Gather {
                start: iova,
                last: iova + (page - 1),
                leaf_sizes: page,
                freed_tables: false,
            },
            freed: FreedTables::default(),
        }
    }

    /// Clears the level-0 entries for `[iova, last]` (several pages; one takes
    /// [`Self::unmap_page`]) in the table whose entries are `t`: find the
    /// first and last leaf, then zero everything between with single 64-bit
    /// stores (a live entry must never be seen half cleared).
    #[inline(always)]
    fn clear_leaf_run(&self, t: *mut u64, iova: u64, last: u64) -> Unmapped {
        let shift = self.geo.granule_shift;
        let first = self.index(iova, 0);
        let end = first + ((last - iova) >> shift) as usize + 1;
        let Some(lo) = (first..end).find(|&i| Self::read(t, i) != 0) else {
            return Unmapped::nothing();
        };
        let hi = (lo..end).rfind(|&i| Self::read(t, i) != 0).unwrap_or(lo);
        // SAFETY: `t` is a live table page of this tree, `hi < end` is within it,
        // and the entries are the caller's own range, which no other call writes.
        let leaves = unsafe { clear_counting(t, lo, hi, self.limits.pair_stores, F::VALID) };
        self.clean(t, lo, hi);
        let base = iova - ((first as u64) << shift);
        Unmapped {
            bytes: leaves << shift,
            gather: Gather {
                start: base + ((lo as u64) << shift),
                last: base + ((hi as u64) << shift) + low(shift),
                leaf_sizes: 1 << shift,
                freed_tables: false,
            },
            freed: FreedTables::default(),
        }
    }

    /// The level-0 runs of the table whose entries are `t` holding either end
    /// of `[iova, last]` must lie inside it.
    fn refuse_cut_runs(&self, t: *mut u64, iova: u64, last: u64) -> Result<(), UnmapError> {
        for at in [iova, last] {
            let pte = Self::read(t, self.index(at, 0));
            if pte != 0 {
                let (leaf_shift, _) = self.leaf_extent(0, pte);
                refuse_cut(at & !low(leaf_shift), 1 << leaf_shift, iova, last)?;
            }
        }
        Ok(())
    }

    /// Boundary checks, then a clearing walk from the root.
    #[inline(never)]
    fn unmap_general(&self, iova: u64, last: u64) -> Result<Unmapped, UnmapError> {
        for at in [iova, last] {
            if let Some(leaf) = self.lookup(at) {
                refuse_cut(leaf.leaf_iova, leaf.leaf_size, iova, last)?;
            }
        }
        let mut acc = Clearing {
            bytes: 0,
            gather: Gather::default(),
            freed: Vec::new(),
        };
        self.clear(self.root, self.geo.levels - 1, iova, last, false, &mut acc);
        if !acc.freed.is_empty() {
            // Release, after the unlinks: a cursor that reads the new
            // stamp forgets the tables they removed.
            self.stamp.store(new_stamp(), Ordering::Release);
        }
        Ok(Unmapped {
            bytes: acc.bytes,
            gather: acc.gather,
            freed: FreedTables::from_pages(acc.freed),
        })
    }

    /// Clears `[iova, last]` under `table`. `doomed`: the table itself is being
    /// unlinked, so its entries need not be written.
    fn clear(
        &self,
        table: u64,
        level: u32,
        mut iova: u64,
        last: u64,
        doomed: bool,
        acc: &mut Clearing,
    ) {
        let t = self.entries(table);
        let shift = self.geo.shift(level);
        let size = 1u64 << shift;
        let mask = size - 1;
        let first_idx = self.index(iova, level);
        let mut idx = first_idx;
        if level == 0 {
            let count = ((last - iova) >> shift) as usize + 1;
            let mut first_leaf = None;
            let mut last_leaf = 0;
            let mut cleared = 0u64;
            for i in first_idx..first_idx + count {
                if Self::read(t, i) != 0 {
                    cleared += 1;
                    first_leaf.get_or_insert(i);
                    last_leaf = i;
                    if !doomed {
                        Self::write(t, i, 0);
                    }
                }
            }
            if let Some(first) = first_leaf {
                let base = iova - ((first_idx as u64) << shift);
                acc.gather.add_leaf(base + ((first as u64) << shift), size);
                acc.gather
                    .add_leaf(base + ((last_leaf as u64) << shift), size);
                acc.bytes += cleared << shift;
                if !doomed {
                    self.clean(t, first, last_leaf);
                }
            }
            return;
        }
        let (mut lo, mut hi) = (usize::MAX, 0usize);
        loop {
            let slot_start = iova & !mask;
            let slot_last = iova | mask;
            let chunk_last = slot_last.min(last);
            let pte = Self::read(t, idx);
            if pte != 0 {
                if self.format.is_table(level, pte) {
                    let child = self.format.table_addr(pte);
                    let covered = iova == slot_start && chunk_last == slot_last;
                    self.clear(child, level - 1, iova, chunk_last, covered, acc);
                    if covered {
                        if !doomed {
                            Self::write(t, idx, 0);
                            lo = lo.min(idx);
                            hi = hi.max(idx);
                        }
                        acc.freed.push(child);
                        acc.gather.add_freed_table(slot_start, slot_last);
                    }
                } else {
                    acc.bytes += size;
                    acc.gather.add_leaf(slot_start, size);
                    if !doomed {
                        Self::write(t, idx, 0);
                        lo = lo.min(idx);
                        hi = hi.max(idx);
                    }
                }
            }
            if chunk_last == last {
                break;
            }
            iova = chunk_last + 1;
            idx += 1;
        }
        if lo <= hi {
            self.clean(t, lo, hi);
        }
    }

    /// Returns table pages from an earlier `unmap`, once the caller has completed
    /// the IOTLB / walk-cache invalidation for its gather.
    pub fn release(&self, freed: FreedTables) {
        let bytes = 1usize << self.geo.granule_shift;
        for &page in freed.pages() {
            // SAFETY: the page was a non-root table of this tree (granule-sized),
            // unlinked by `unmap`, and the caller has flushed the IOMMU since.
            unsafe { self.alloc.free_table(page, bytes) };
        }
    }

    // ---- lookups and walks ---------------------------------------------------

    /// The leaf translating `iova`, if any.
    pub fn lookup(&self, iova: u64) -> Option<Translation> {
        if iova > self.geo.max_iova() {
            return None;
        }
        let mut table = self.root;
        let mut level = self.geo.levels - 1;
        loop {
            let pte = Self::read(self.entries(table), self.index(iova, level));
            if pte == 0 {
                return None;
            }
            if level > 0 && self.format.is_table(level, pte) {
                table = self.format.table_addr(pte);
                level -= 1;
                continue;
            }
            let (shift, base) = self.leaf_extent(level, pte);
            return Some(Translation {
                phys: base + (iova & low(shift)),
                leaf_iova: iova & !low(shift),
                leaf_size: 1u64 << shift,
                level,
                pte,
            });
        }
    }

    /// The leaf that the leaf entry `pte` at `level` is part of: log2 of its size
    /// (a whole run, for an entry of one) and its first output byte.
    #[inline(always)]
    fn leaf_extent(&self, level: u32, pte: u64) -> (u32, u64) {
        let shift = self.geo.shift(level) + self.format.leaf_run(level, pte);
        (shift, self.format.leaf_addr(level, pte) & !low(shift))
    }

    /// The physical address `iova` translates to, if mapped.
    pub fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        self.lookup(iova).map(|t| t.phys)
    }

    /// The IOMMU's walk for `iova`, one [`WalkStep`] per level read, from
    /// the root down to the leaf or the empty entry that ends it (nothing
    /// for an IOVA beyond the table).
    pub fn walk_to(&self, iova: u64, mut visit: impl FnMut(&WalkStep)) {
        if iova > self.geo.max_iova() {
            return;
        }
        let mut table = self.root;
        let mut level = self.geo.levels - 1;
        loop {
            let index = self.index(iova, level);
            let entry = Self::read(self.entries(table), index);
            let kind = if entry == 0 {
                StepKind::Empty
            } else if level > 0 && self.format.is_table(level, entry) {
                StepKind::Table {
                    next: self.format.table_addr(entry),
                }
            } else {
                let (shift, base) = self.leaf_extent(level, entry);
                StepKind::Leaf {
                    phys: base,
                    size: 1u64 << shift,
                }
            };
            visit(&WalkStep {
                level,
                table,
                index,
                entry,
                kind,
                bits: self.format.entry_bits(level, entry),
            });
            match kind {
                StepKind::Table { next } => {
                    table = next;
                    level -= 1;
                }
                _ => return,
            }
        }
    }

    /// Calls `visit` for every present entry, depth first in IOVA order (a table
    /// entry before its contents).
    pub fn walk(&self, mut visit: impl FnMut(&WalkEntry)) {
        self.walk_table(self.root, self.geo.levels - 1, 0, &mut visit);
    }

    fn walk_table(&self, table: u64, level: u32, base: u64, visit: &mut impl FnMut(&WalkEntry)) {
        let t = self.entries(table);
        let shift = self.geo.shift(level);
        for idx in 0..1usize << self.geo.index_bits(level) {
            let pte = Self::read(t, idx);
            if pte == 0 {
                continue;
            }
            let iova = base + ((idx as u64) << shift);
            let table_link = level > 0 && self.format.is_table(level, pte);
            let (kind, leaf_size) = if table_link {
                (EntryKind::Table(self.format.table_addr(pte)), 1u64 << shift)
            } else {
                let (leaf_shift, leaf_base) = self.leaf_extent(level, pte);
                let part = leaf_base + (iova & low(leaf_shift));
                (EntryKind::Leaf(part), 1u64 << leaf_shift)
            };
            visit(&WalkEntry {
                level,
                iova,
                size: 1u64 << shift,
                leaf_size,
                pte,
                kind,
            });
            if let EntryKind::Table(child) = kind {
                self.walk_table(child, level - 1, iova, visit);
            }
        }
    }

    // ---- dirty tracking --------------------------------------------------------

    /// Reads the hardware dirty state of every leaf overlapping `[iova, iova +
    /// len)` (VT-d second-stage D with SSADE, AMD-Vi v1 D with HD, x86-64 D,
    /// ARM DBM with HTTU), calling `dirty(leaf_iova, leaf_size)` once for each
    /// leaf written through since its state was cleared, and unless `keep`
    /// clears that state. Each clear is a compare-exchange of the entry, since
    /// the walker sets dirty bits at any time and a plain store could lose
    /// one. Returns the gather of the cleared leaves: the IOTLB may hold a
    /// leaf's dirty state, so it must be invalidated before the next write
    /// through it is sure to be recorded (Linux `iommu_iotlb_sync` after
    /// `read_and_clear_dirty`). A range error is the one `unmap` gives.
    pub fn read_dirty(
        &self,
        iova: u64,
        len: u64,
        keep: bool,
        mut dirty: impl FnMut(u64, u64),
    ) -> Result<Gather, UnmapError> {
        let last = self.iova_last(iova, len).map_err(|e| match e {
            RangeError::Zero => UnmapError::ZeroLength,
            RangeError::Misaligned => UnmapError::Misaligned,
            RangeError::OutOfRange => UnmapError::IovaOutOfRange,
        })?;
        let mut gather = Gather::default();
        let mut reported = None;
        self.dirty_table(
            self.root,
            self.geo.levels - 1,
            0,
            (iova, last),
            keep,
            &mut |leaf_iova, size| {
                // The entries of a run are one leaf: reported once.
                if reported != Some(leaf_iova) {
                    reported = Some(leaf_iova);
                    dirty(leaf_iova, size);
                }
            },
            &mut gather,
        );
        Ok(gather)
    }

    #[allow(clippy::too_many_arguments)]
    fn dirty_table(
        &self,
        table: u64,
        level: u32,
        base: u64,
        (first, last): (u64, u64),
        keep: bool,
        dirty: &mut impl FnMut(u64, u64),
        gather: &mut Gather,
    ) {
        let t = self.entries(table);
        let shift = self.geo.shift(level);
        for idx in 0..1usize << self.geo.index_bits(level) {
            let entry_iova = base + ((idx as u64) << shift);
            let entry_last = entry_iova + (low(shift));
            if entry_last < first || entry_iova > last {
                continue;
            }
            let pte = Self::read(t, idx);
            if pte == 0 {
                continue;
            }
            if level > 0 && self.format.is_table(level, pte) {
                let child = self.format.table_addr(pte);
                self.dirty_table(
                    child,
                    level - 1,
                    entry_iova,
                    (first, last),
                    keep,
                    dirty,
                    gather,
                );
                continue;
            }
            if !self.format.leaf_dirty(level, pte) {
                continue;
            }
            let (leaf_shift, _) = self.leaf_extent(level, pte);
            let leaf_iova = entry_iova & !low(leaf_shift);
            dirty(leaf_iova, 1u64 << leaf_shift);
            if keep {
                continue;
            }
            // The walker updates entries only with atomic read-modify-writes.
            let _ = Self::entry(t, idx).fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(self.format.clean_leaf(level, now))
            });
            self.clean(t, idx, idx);
            gather.add_leaf(leaf_iova, 1u64 << leaf_shift);
        }
    }

    /// What the hardware does to the leaf entry translating `iova` when a
    /// device writes through it with dirty tracking on (a model's job, for
    /// tests; the driver never calls it). `false` when nothing maps `iova`.
    pub fn mark_written(&mut self, iova: u64) -> bool {
        if iova > self.geo.max_iova() {
            return false;
        }
        let mut table = self.root;
        let mut level = self.geo.levels - 1;
        loop {
            let t = self.entries(table);
            let idx = self.index(iova, level);
            let pte = Self::read(t, idx);
            if pte == 0 {
                return false;
            }
            if level > 0 && self.format.is_table(level, pte) {
                table = self.format.table_addr(pte);
                level -= 1;
                continue;
            }
            Self::write(t, idx, self.format.written_leaf(level, pte));
            return true;
        }
    }

    /// Writes the tree, one present entry a line, indented by depth.
    pub fn dump(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        writeln!(
            out,
            "{} page table: root {:#x}, {} levels",
            F::NAME,
            self.root,
            self.geo.levels
        )?;
        let top = self.geo.levels - 1;
        let mut result = Ok(());
        self.walk(|e| {
            if result.is_err() {
                return;
            }
            let indent = 2 * (top - e.level + 1) as usize;
            result = match e.kind {
                EntryKind::Table(phys) => writeln!(
                    out,
                    "{:indent$}L{} {:#x} +{:#x} table {:#x} pte {:#018x}",
                    "", e.level, e.iova, e.size, phys, e.pte
                ),
                EntryKind::Leaf(phys) if e.leaf_size != e.size => writeln!(
                    out,
                    "{:indent$}L{} {:#x} +{:#x} -> {:#x} pte {:#018x} (run of {:#x})",
                    "", e.level, e.iova, e.size, phys, e.pte, e.leaf_size
                ),
                EntryKind::Leaf(phys) => writeln!(
                    out,
                    "{:indent$}L{} {:#x} +{:#x} -> {:#x} pte {:#018x}",
                    "", e.level, e.iova, e.size, phys, e.pte
                ),
            };
        });
        result
    }

    /// Number of table pages in the tree, root included.
    pub fn table_pages(&self) -> usize {
        let mut pages = 1;
        self.walk(|e| {
            if matches!(e.kind, EntryKind::Table(_)) {
                pages += 1;
            }
        });
        pages
    }

    fn free_subtree(&mut self, table: u64, level: u32) {
        if level > 0 {
            let t = self.entries(table);
            for idx in 0..1usize << self.geo.index_bits(level) {
                let pte = Self::read(t, idx);
                if pte != 0 && self.format.is_table(level, pte) {
                    self.free_subtree(self.format.table_addr(pte), level - 1);
                }
            }
        }
        // SAFETY: every page of the tree came from `alloc_table(table_bytes)`; the
        // table is being dropped, so the caller has detached it from the hardware.
        unsafe { self.alloc.free_table(table, self.geo.table_bytes(level)) };
    }
}

impl<F: Format, A: TableAlloc> fmt::Debug for PageTable<F, A> {
    /// The header only; [`PageTable::dump`] prints the tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable")
            .field("format", &F::NAME)
            .field("root", &format_args!("{:#x}", self.root))
            .field("levels", &self.geo.levels)
            .field("coherence", &self.coherence)
            .finish()
    }
}

impl<F: Format, A: TableAlloc> Drop for PageTable<F, A> {
    /// Frees every table page. The owner must have detached the table from all
    /// devices and flushed the IOMMU first.
    fn drop(&mut self) {
        self.free_subtree(self.root, self.geo.levels - 1);
    }
}

/// Refuses an unmap of `[iova, last]` that would cut the leaf at
/// `[leaf_iova, leaf_iova + leaf_size)`, which holds one of its ends.
fn refuse_cut(leaf_iova: u64, leaf_size: u64, iova: u64, last: u64) -> Result<(), UnmapError> {
    if leaf_iova < iova || leaf_iova + (leaf_size - 1) > last {
        return Err(UnmapError::SplitsLeaf {
            leaf_iova,
            leaf_size,
        });
    }
    Ok(())
}

enum RangeError {
    Zero,
    Misaligned,
    OutOfRange,
}

/// `2^shift - 1`.
#[inline(always)]
const fn low(shift: u32) -> u64 {
    crate::format::low_mask(shift)
}
