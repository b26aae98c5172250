//! The per-format accessors the one walk algorithm needs, and the formats.
//!
//! Levels are numbered from the leaf up, as in Linux's generic page table: level 0
//! holds the smallest pages, level `levels - 1` is the root. (ARM numbers the other
//! way: ARM level 3 is our level 0.)

pub mod amd_v1;
pub mod arm;
pub mod vtd_ss;
pub mod x86_64;

use crate::error::MapError;
use crate::prot::Prot;

/// Deepest tree any format builds (AMD-Vi v1 mode 6).
pub const MAX_LEVELS: usize = 6;

/// The shape of a format's tree, fixed at configuration time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the smallest page and of every non-root table page.
    pub granule_shift: u32,
    /// Index bits of every non-root level (table entries = 2^bits).
    pub bits_per_level: u32,
    /// Number of levels, root included.
    pub levels: u32,
    /// Index bits of the root level (fewer for a partial top, more for ARM stage-2
    /// concatenated roots).
    pub top_bits: u32,
    /// Bitmap of levels at which a leaf may be placed (bit 0 = smallest page).
    pub leaf_levels: u32,
    /// Usable IOVA bits: IOVAs are `< 2^iova_bits` (64 means all).
    pub iova_bits: u32,
    /// Output (physical) address bits the format is configured for.
    pub output_bits: u32,
}

impl Geometry {
    /// log2 of the span of one entry at `level`.
    #[inline(always)]
    pub const fn shift(&self, level: u32) -> u32 {
        self.granule_shift + self.bits_per_level * level
    }

    /// Index bits of a table at `level`.
    #[inline(always)]
    pub const fn index_bits(&self, level: u32) -> u32 {
        if level + 1 == self.levels {
            self.top_bits
        } else {
            self.bits_per_level
        }
    }

    /// Bytes to allocate for a table at `level`: a whole granule at least.
    pub const fn table_bytes(&self, level: u32) -> usize {
        let entries_bytes = 8usize << self.index_bits(level);
        let granule = 1usize << self.granule_shift;
        if entries_bytes > granule {
            entries_bytes
        } else {
            granule
        }
    }

    /// Whether a leaf may sit at `level`.
    #[inline(always)]
    pub const fn leaf_allowed(&self, level: u32) -> bool {
        self.leaf_levels & (1 << level) != 0
    }

    /// Bitmap of the leaf sizes (bit n = 2^n bytes), Linux's `pgsize_bitmap`.
    pub const fn page_sizes(&self) -> u64 {
        let mut sizes = 0;
        let mut level = 0;
        while level < self.levels {
            if self.leaf_allowed(level) {
                sizes |= 1u64 << self.shift(level);
            }
            level += 1;
        }
        sizes
    }

    /// Largest valid IOVA.
    pub const fn max_iova(&self) -> u64 {
        low_mask(self.iova_bits)
    }

    /// Largest valid output address.
    pub const fn max_phys(&self) -> u64 {
        low_mask(self.output_bits)
    }
}

/// `2^bits - 1`, saturating at 64 bits.
pub(crate) const fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Bits `[hi:lo]` set.
pub(crate) const fn bits(hi: u32, lo: u32) -> u64 {
    low_mask(hi + 1) & !low_mask(lo)
}

/// The small per-format accessors. The algorithm only ever stores entries it made
/// with these, and treats an all-zero entry as empty (zero is non-present in every
/// format), so a non-zero entry is either a table link or a leaf.
pub trait Format {
    /// Short name for dumps ("vtd-ss", "x86-64", "amd-v1", "arm-s1", "arm-s2").
    const NAME: &'static str;

    /// The format's valid/present bit, where it has one: set in every entry the
    /// format makes, so counting live entries is summing it.
    const VALID: Option<u64> = None;

    /// The tree's shape.
    fn geometry(&self) -> Geometry;

    /// The bits of a leaf at `level` other than the output address, for `prot`
    /// (already checked to contain READ or WRITE and not both CACHE and MMIO).
    fn leaf_attrs(&self, level: u32, prot: Prot) -> Result<u64, MapError>;

    /// The bits of an entry at `level` linking a table, other than its address.
    fn table_attrs(&self, level: u32) -> u64;

    /// Whether the non-zero entry `pte` at `level` links a table (else it is a leaf).
    fn is_table(&self, level: u32, pte: u64) -> bool;

    /// Physical address of the table linked by the table entry `pte`.
    fn table_addr(&self, pte: u64) -> u64;

    /// Output address of the leaf `pte` at `level` (the leaf's first byte; for an
    /// entry of a run, this entry's first byte or the run's).
    fn leaf_addr(&self, level: u32, pte: u64) -> u64;

    /// The contiguous runs a leaf at `level` may take: bit `k` set means `2^k`
    /// entries, aligned in the table and in both address spaces, together hold
    /// one leaf of `2^k` times the level's size (ARM contiguous hint, AMD-Vi
    /// Next Level 7 pages). Runs are whole leaves: never split, always written
    /// and cleared entry by entry.
    fn leaf_runs(&self, level: u32) -> u32 {
        let _ = level;
        0
    }

    /// One entry of a run of `2^k` entries at `level` whose leaf starts at output
    /// address `run_phys`; this entry's part of it starts at `entry_phys`.
    /// `attrs` came from [`Format::leaf_attrs`] for the same level. Only called
    /// for a `k` that [`Format::leaf_runs`] offers.
    fn run_entry(&self, level: u32, k: u32, run_phys: u64, entry_phys: u64, attrs: u64) -> u64 {
        let _ = (level, k, run_phys);
        entry_phys | attrs
    }

    /// log2 of the number of entries in the run the leaf `pte` at `level`
    /// belongs to (0: a leaf on its own).
    fn leaf_run(&self, level: u32, pte: u64) -> u32 {
        let _ = (level, pte);
        0
    }

    /// The single-bit attributes of the entry `pte` at `level` a reader
    /// wants named (a walk shown level by level): (name, mask) for each; the
    /// caller prints those set. The address and multi-bit fields are not
    /// listed.
    fn entry_bits(&self, level: u32, pte: u64) -> &'static [(&'static str, u64)] {
        let _ = (level, pte);
        &[]
    }

    /// Hardware dirty tracking: whether the leaf `pte` at `level` was written
    /// through since its dirty state was last cleared (VT-d second-stage D,
    /// AMD-Vi v1 D, x86-64 D, ARM DBM with write permission). A format
    /// without dirty state says no.
    fn leaf_dirty(&self, level: u32, pte: u64) -> bool {
        let _ = (level, pte);
        false
    }

    /// The leaf `pte` with its dirty state cleared: what the hardware marks
    /// dirty again on the next write through it.
    fn clean_leaf(&self, level: u32, pte: u64) -> u64 {
        let _ = level;
        pte
    }

    /// The leaf `pte` as the hardware leaves it after a write through it
    /// (what a model of the hardware does; the driver never writes this).
    fn written_leaf(&self, level: u32, pte: u64) -> u64 {
        let _ = level;
        pte
    }
}
