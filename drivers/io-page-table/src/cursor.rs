//! A walk cursor: the table pages one caller's last single-table walk went
//! through, so that its next walk for a nearby IOVA starts at the deepest
//! table the two share instead of at the root, and the level-1 tables of
//! its recent walks, so that a walk elsewhere in a recently used span starts
//! just above the leaf table (what an IOMMU's paging-structure caches do for
//! its own walks).
//!
//! A cursor belongs to one caller (one CPU), never to the table, so callers
//! on several CPUs never share or contend for it. Tables a cursor names can
//! only disappear through an unmap that unlinks them, or with their table;
//! every such unmap gives the table a new stamp, stamps are unique over all
//! tables (a new table may reuse a dropped one's root page), and a cursor
//! that saw another stamp forgets everything and starts again from the root.
//! A table that is linked stays linked until such an unmap, so a table a
//! cursor saw under the current stamp is still where it saw it. The stamp is
//! read with acquire ordering and replaced with release after the unlink, so
//! a walk ordered after the unmap (as the `_shared` contract requires for an
//! overlapping range) sees the new one.

use crate::format::{Geometry, MAX_LEVELS};

/// How many level-1 tables a cursor remembers beside its last walk's: a
/// direct-mapped cache by span, enough for the few GiB a device's buffers
/// usually lie in (a level-1 table spans 1 GiB with 4 KiB pages).
const PARENT_SLOTS: usize = 8;

/// An IOVA no table starts at (bit 0 is never set in a table's span start,
/// a span being at least a page): the mark of an empty cache entry.
const NO_TABLE: u64 = 1;

/// What a cursor needs of a table's geometry, computed once per table.
#[derive(Clone, Debug)]
pub(crate) struct CursorShape {
    /// `table_level_of_bit[b]`: the lowest level whose tables span IOVA bit
    /// `b` (the root for bits above every non-root table's span).
    table_level_of_bit: [u8; 64],
    /// The IOVA bits that name a leaf table's span (a level-1 entry's): an
    /// IOVA masked with them is where its leaf table's span starts.
    leaf_table_bits: u64,
    /// log2 of a level-1 table's span (a level-2 entry's), and the IOVA bits
    /// that name it.
    parent_shift: u32,
    parent_bits: u64,
}

impl CursorShape {
    pub(crate) fn new(geo: &Geometry) -> Self {
        let top = geo.levels - 1;
        let mut table_level_of_bit = [top as u8; 64];
        for (bit, level) in table_level_of_bit.iter_mut().enumerate() {
            // A level-l table spans the bits below the shift of level l + 1.
            if let Some(l) = (0..top).find(|&l| geo.shift(l + 1) > bit as u32) {
                *level = l as u8;
            }
        }
        let parent_shift = geo.shift(2).min(63);
        Self {
            table_level_of_bit,
            leaf_table_bits: !((1u64 << geo.shift(1).min(63)) - 1),
            parent_shift,
            parent_bits: !((1u64 << parent_shift) - 1),
        }
    }
}

/// One entry of [`WalkCursor::parents`].
#[derive(Clone, Copy, Debug)]
struct ParentSlot {
    /// Where the table's span starts, or [`NO_TABLE`].
    iova: u64,
    /// The CPU address of the table's entries.
    entries: usize,
}

const EMPTY_PARENT: ParentSlot = ParentSlot {
    iova: NO_TABLE,
    entries: 0,
};

/// One caller's cache of the tables of its last walk, for
/// [`crate::PageTable::map_with`] and [`crate::PageTable::unmap_with`].
#[derive(Clone, Debug)]
pub struct WalkCursor {
    /// The stamp (table and unlink generation) the cached tables belong to.
    stamp: u64,
    iova: u64,
    /// `tables[l]`: the CPU address of the entries of the level-`l` table
    /// holding `iova`'s entry, for every level from `deepest` up to the
    /// root. CPU addresses, not physical ones, so that a walk resumed here
    /// reads the entry at once instead of translating the table's address
    /// again (the allocator's `phys_to_virt` may be a lookup). Plain
    /// integers, never dereferenced by the cursor: the table does, under the
    /// stamp check that proves them live.
    tables: [usize; MAX_LEVELS],
    deepest: u32,
    /// The IOVA the leaf table `tables[0]` starts at, when the last walk
    /// reached one; else [`NO_TABLE`]. Kept beside `iova` and `deepest` so
    /// that the test a single-page call makes first is one compare of a
    /// masked IOVA.
    leaf_table_iova: u64,
    /// Level-1 tables recent walks went through, each in the slot its span
    /// picks: a walk that would start two levels above its leaf table
    /// starts one level above it when its span is here.
    parents: [ParentSlot; PARENT_SLOTS],
}

impl Default for WalkCursor {
    fn default() -> Self {
        Self::new()
    }
}

impl WalkCursor {
    /// A cursor that knows nothing yet: its first walk starts at the root.
    pub const fn new() -> Self {
        Self {
            stamp: 0,
            iova: 0,
            tables: [0; MAX_LEVELS],
            deepest: 0,
            leaf_table_iova: NO_TABLE,
            parents: [EMPTY_PARENT; PARENT_SLOTS],
        }
    }

    /// The deepest cached table holding `iova`'s entry, `(level, entries)`,
    /// once the cursor is known to describe the table now at `stamp` (else
    /// it starts over from the root, level `top`, whose entries
    /// `root_entries` gives).
    #[inline(always)]
    pub(crate) fn start(
        &mut self,
        stamp: u64,
        top: u32,
        shape: &CursorShape,
        iova: u64,
        root_entries: impl FnOnce() -> usize,
    ) -> (u32, usize) {
        if self.stamp != stamp {
            self.stamp = stamp;
            self.tables[top as usize] = root_entries();
            self.deepest = top;
            self.leaf_table_iova = NO_TABLE;
            self.parents = [EMPTY_PARENT; PARENT_SLOTS];
        }
        // The highest bit in which `iova` and the cached walk differ decides
        // which of the cached tables still span both; `| 1` makes equal IOVAs
        // bit 0.
        let differing_bit = 63 - ((iova ^ self.iova) | 1).leading_zeros();
        let shared = u32::from(shape.table_level_of_bit[differing_bit as usize]);
        let level = shared.max(self.deepest);
        // Only from level 2: then `tables[2..]` hold for `iova` too, so
        // starting at a remembered level-1 table keeps every cached level
        // above the walk's start true for it.
        if level == 2 {
            let slot = self.parents[Self::parent_slot(shape, iova)];
            if slot.iova == iova & shape.parent_bits {
                self.tables[1] = slot.entries;
                return (1, slot.entries);
            }
        }
        (level, self.tables[level as usize])
    }

    #[inline(always)]
    fn parent_slot(shape: &CursorShape, iova: u64) -> usize {
        (iova >> shape.parent_shift) as usize % PARENT_SLOTS
    }

    /// The entries of the leaf table of the last walk, if that walk reached
    /// one in the table now at `stamp` and `iova` lies in its span: the whole
    /// walk of a single-page call next to the last one, with nothing to
    /// record.
    #[inline(always)]
    pub(crate) fn same_leaf_table(
        &self,
        stamp: u64,
        shape: &CursorShape,
        iova: u64,
    ) -> Option<usize> {
        // One test of everything that must hold, not three branches: this
        // runs before every one-page map and unmap.
        let differs =
            (self.stamp ^ stamp) | ((iova & shape.leaf_table_bits) ^ self.leaf_table_iova);
        (differs == 0).then_some(self.tables[0])
    }

    /// Sets the table (its entries' CPU address) at `level` on the current
    /// walk for `iova`; a level-1 table is remembered for its span too.
    #[inline(always)]
    pub(crate) fn set(&mut self, shape: &CursorShape, iova: u64, level: u32, table: usize) {
        self.tables[level as usize] = table;
        if level == 1 {
            self.parents[Self::parent_slot(shape, iova)] = ParentSlot {
                iova: iova & shape.parent_bits,
                entries: table,
            };
        }
    }

    /// Ends a walk for `iova` that reached `tables[level..]`: the tables
    /// below its start were `set` on the way down, those from the start up
    /// are the ones `start` returned, so all of them hold for `iova`.
    #[inline(always)]
    pub(crate) fn record(&mut self, shape: &CursorShape, iova: u64, level: u32) {
        self.iova = iova;
        self.deepest = level;
        self.leaf_table_iova = if level == 0 {
            iova & shape.leaf_table_bits
        } else {
            NO_TABLE
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86_4level() -> Geometry {
        Geometry {
            granule_shift: 12,
            bits_per_level: 9,
            levels: 4,
            top_bits: 9,
            leaf_levels: 0b111,
            iova_bits: 47,
            output_bits: 52,
        }
    }

    #[test]
    fn a_new_cursor_starts_at_the_root() {
        let shape = CursorShape::new(&x86_4level());
        let mut cursor = WalkCursor::new();
        // The root's entries, at the CPU address the table gives for them.
        assert_eq!(cursor.start(0x1000, 3, &shape, 0, || 0xa000), (3, 0xa000));
        assert_eq!(
            cursor.start(0x1000, 3, &shape, 0x7fff_ffff_f000, || 0xa000),
            (3, 0xa000)
        );
    }

    #[test]
    fn a_walk_is_reused_as_far_as_the_iovas_share_tables() {
        let shape = CursorShape::new(&x86_4level());
        let mut cursor = WalkCursor::new();
        let iova = 0x40_1234_5000;
        cursor.start(0x1000, 3, &shape, iova, || 0x1000);
        cursor.set(&shape, iova, 2, 0x2000);
        cursor.set(&shape, iova, 1, 0x3000);
        cursor.set(&shape, iova, 0, 0x4000);
        cursor.record(&shape, iova, 0);
        let mut start = |at| cursor.start(0x1000, 3, &shape, at, || 0x1000);
        // Same 2 MiB: the leaf table. Same 1 GiB: the page directory. Same
        // 512 GiB: the PDPT. Elsewhere: the root.
        assert_eq!(start(iova), (0, 0x4000));
        assert_eq!(start(iova ^ 0x1f_f000), (0, 0x4000));
        assert_eq!(start(iova ^ 0x20_0000), (1, 0x3000));
        assert_eq!(start(iova ^ 0x4000_0000), (2, 0x2000));
        assert_eq!(start(iova ^ 0x80_0000_0000), (3, 0x1000));
    }

    #[test]
    fn only_a_walk_that_reached_the_leaf_table_of_the_same_span_is_reused_whole() {
        let shape = CursorShape::new(&x86_4level());
        let mut cursor = WalkCursor::new();
        let iova = 0x40_1234_5000;
        assert_eq!(cursor.same_leaf_table(0x1000, &shape, iova), None);
        cursor.start(0x1000, 3, &shape, iova, || 0x1000);
        cursor.set(&shape, iova, 2, 0x2000);
        cursor.record(&shape, iova, 2);
        // The walk stopped above the leaf table (a hole on the way).
        assert_eq!(cursor.same_leaf_table(0x1000, &shape, iova), None);
        cursor.set(&shape, iova, 1, 0x3000);
        cursor.set(&shape, iova, 0, 0x4000);
        cursor.record(&shape, iova, 0);
        assert_eq!(
            cursor.same_leaf_table(0x1000, &shape, iova ^ 0x1f_f000),
            Some(0x4000)
        );
        assert_eq!(
            cursor.same_leaf_table(0x1000, &shape, iova ^ 0x20_0000),
            None
        );
        assert_eq!(cursor.same_leaf_table(0x1001, &shape, iova), None);
        assert_eq!(cursor.same_leaf_table(0x9000, &shape, iova), None);
    }

    #[test]
    fn another_stamp_starts_over_at_the_root() {
        let shape = CursorShape::new(&x86_4level());
        let mut cursor = WalkCursor::new();
        cursor.start(0x1000, 3, &shape, 0, || 0x1000);
        cursor.set(&shape, 0, 2, 0x2000);
        cursor.record(&shape, 0, 2);
        assert_eq!(cursor.start(0x1000, 3, &shape, 0, || 0x1000), (2, 0x2000));
        // An unmap unlinked tables since: nothing cached holds.
        assert_eq!(cursor.start(0x1001, 3, &shape, 0, || 0x1000), (3, 0x1000));
        cursor.set(&shape, 0, 2, 0x2000);
        cursor.record(&shape, 0, 2);
        // Another table's walk.
        assert_eq!(cursor.start(0x9001, 3, &shape, 0, || 0x9000), (3, 0x9000));
    }

    /// A cursor that walked `iova` down to its leaf table (root 0x1000,
    /// then 0x2000, 0x3000, 0x4000).
    fn walked_to_leaf(shape: &CursorShape, iova: u64) -> WalkCursor {
        let mut cursor = WalkCursor::new();
        cursor.start(0x1000, 3, shape, iova, || 0x1000);
        cursor.set(shape, iova, 2, 0x2000);
        cursor.set(shape, iova, 1, 0x3000);
        cursor.set(shape, iova, 0, 0x4000);
        cursor.record(shape, iova, 0);
        cursor
    }

    #[test]
    fn a_walk_elsewhere_in_a_remembered_span_starts_at_its_level_1_table() {
        let shape = CursorShape::new(&x86_4level());
        let first = 0x40_1234_5000;
        let mut cursor = walked_to_leaf(&shape, first);
        // Another GiB of the same level-2 table: walk from there.
        let other = first + 0x4000_0000;
        assert_eq!(
            cursor.start(0x1000, 3, &shape, other, || 0x1000),
            (2, 0x2000)
        );
        cursor.set(&shape, other, 1, 0x5000);
        cursor.set(&shape, other, 0, 0x6000);
        cursor.record(&shape, other, 0);
        // Back in the first GiB, in another leaf table: its level-1 table
        // is remembered, and becomes the cursor's level-1 table for the walk.
        let back = first + 0x20_0000;
        assert_eq!(
            cursor.start(0x1000, 3, &shape, back, || 0x1000),
            (1, 0x3000)
        );
        cursor.set(&shape, back, 0, 0x7000);
        cursor.record(&shape, back, 0);
        assert_eq!(cursor.same_leaf_table(0x1000, &shape, back), Some(0x7000));
        // And the other GiB's is remembered too.
        let again = other + 0x40_0000;
        assert_eq!(
            cursor.start(0x1000, 3, &shape, again, || 0x1000),
            (1, 0x5000)
        );
    }

    #[test]
    fn a_remembered_level_1_table_is_not_taken_above_level_2_or_across_stamps() {
        let shape = CursorShape::new(&x86_4level());
        let first = 0x40_1234_5000;
        let mut cursor = walked_to_leaf(&shape, first);
        // Another level-2 table's walk, stopped at a hole in it.
        let far = first + 0x80_0000_0000;
        assert_eq!(cursor.start(0x1000, 3, &shape, far, || 0x1000), (3, 0x1000));
        cursor.set(&shape, far, 2, 0x8000);
        cursor.record(&shape, far, 2);
        // From `far`, the first span differs above level 2: levels 2 up
        // would not hold for it, so the walk starts at the root.
        let near_first = first + 0x20_0000;
        assert_eq!(
            cursor.start(0x1000, 3, &shape, near_first, || 0x1000),
            (3, 0x1000)
        );
        // A new stamp forgets every remembered table.
        let mut cursor = walked_to_leaf(&shape, first);
        let other = first + 0x4000_0000;
        assert_eq!(
            cursor.start(0x1001, 3, &shape, other, || 0x1000),
            (3, 0x1000)
        );
        cursor.set(&shape, other, 2, 0x2000);
        cursor.record(&shape, other, 2);
        assert_eq!(
            cursor.start(0x1001, 3, &shape, near_first, || 0x1000),
            (2, 0x2000)
        );
    }
}
