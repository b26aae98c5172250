//! A walk cursor: the table pages one caller's last single-table walk went
//! through, so that its next walk for a nearby IOVA starts at the deepest
//! table the two share instead of at the root (what an IOMMU's
//! paging-structure caches do for its own walks).
//!
//! A cursor belongs to one caller (one CPU), never to the table, so callers
//! on several CPUs never share or contend for it. Tables a cursor names can
//! only disappear through an unmap that unlinks them, or with their table;
//! every such unmap gives the table a new stamp, stamps are unique over all
//! tables (a new table may reuse a dropped one's root page), and a cursor
//! that saw another stamp starts again from the root. The stamp is read with
//! acquire ordering and replaced with release after the unlink, so a walk
//! ordered after the unmap (as the `_shared` contract requires for an
//! overlapping range) sees the new one.

use crate::format::{Geometry, MAX_LEVELS};

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
        table_level_of_bit: &[u8; 64],
        iova: u64,
        root_entries: impl FnOnce() -> usize,
    ) -> (u32, usize) {
        if self.stamp != stamp {
            self.stamp = stamp;
            self.tables[top as usize] = root_entries();
            self.deepest = top;
        }
        // The highest bit in which `iova` and the cached walk differ decides
        // which of the cached tables still span both; `| 1` makes equal IOVAs
        // bit 0.
        let differing_bit = 63 - ((iova ^ self.iova) | 1).leading_zeros();
        let shared = u32::from(table_level_of_bit[differing_bit as usize]);
        let level = shared.max(self.deepest);
        (level, self.tables[level as usize])
    }

    /// The entries of the leaf table of the last walk, if that walk reached
    /// one in the table now at `stamp` and `iova` lies in its span (the IOVA
    /// bits from `leaf_table_shift` up equal): the whole walk of a
    /// single-page call next to the last one, with nothing to record.
    #[inline(always)]
    pub(crate) fn same_leaf_table(
        &self,
        stamp: u64,
        leaf_table_shift: u32,
        iova: u64,
    ) -> Option<usize> {
        // One test of everything that must hold, not three branches: this
        // runs before every one-page map and unmap.
        let differs = (self.stamp ^ stamp)
            | u64::from(self.deepest)
            | ((iova ^ self.iova) >> leaf_table_shift);
        (differs == 0).then_some(self.tables[0])
    }

    /// Sets the table (its entries' CPU address) at `level` on the current walk.
    #[inline(always)]
    pub(crate) fn set(&mut self, level: u32, table: usize) {
        self.tables[level as usize] = table;
    }

    /// Ends a walk for `iova` that reached `tables[level..]`: the tables
    /// below its start were `set` on the way down, those from the start up
    /// are the ones `start` returned, so all of them hold for `iova`.
    #[inline(always)]
    pub(crate) fn record(&mut self, iova: u64, level: u32) {
        self.iova = iova;
        self.deepest = level;
    }
}

/// `table_level_of_bit[b]`: the lowest level whose tables span IOVA bit `b`
/// (the root for bits above every non-root table's span).
pub(crate) fn table_level_of_bit(geo: &Geometry) -> [u8; 64] {
    let top = geo.levels - 1;
    let mut levels = [top as u8; 64];
    for (bit, level) in levels.iter_mut().enumerate() {
        // A level-l table spans the bits below the shift of level l + 1.
        if let Some(l) = (0..top).find(|&l| geo.shift(l + 1) > bit as u32) {
            *level = l as u8;
        }
    }
    levels
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
        let bits = table_level_of_bit(&x86_4level());
        let mut cursor = WalkCursor::new();
        // The root's entries, at the CPU address the table gives for them.
        assert_eq!(cursor.start(0x1000, 3, &bits, 0, || 0xa000), (3, 0xa000));
        assert_eq!(
            cursor.start(0x1000, 3, &bits, 0x7fff_ffff_f000, || 0xa000),
            (3, 0xa000)
        );
    }

    #[test]
    fn a_walk_is_reused_as_far_as_the_iovas_share_tables() {
        let bits = table_level_of_bit(&x86_4level());
        let mut cursor = WalkCursor::new();
        let iova = 0x40_1234_5000;
        cursor.start(0x1000, 3, &bits, iova, || 0x1000);
        cursor.set(2, 0x2000);
        cursor.set(1, 0x3000);
        cursor.set(0, 0x4000);
        cursor.record(iova, 0);
        let mut start = |at| cursor.start(0x1000, 3, &bits, at, || 0x1000);
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
        let bits = table_level_of_bit(&x86_4level());
        let mut cursor = WalkCursor::new();
        let iova = 0x40_1234_5000;
        assert_eq!(cursor.same_leaf_table(0x1000, 21, iova), None);
        cursor.start(0x1000, 3, &bits, iova, || 0x1000);
        cursor.set(2, 0x2000);
        cursor.record(iova, 2);
        // The walk stopped above the leaf table (a hole on the way).
        assert_eq!(cursor.same_leaf_table(0x1000, 21, iova), None);
        cursor.set(1, 0x3000);
        cursor.set(0, 0x4000);
        cursor.record(iova, 0);
        assert_eq!(
            cursor.same_leaf_table(0x1000, 21, iova ^ 0x1f_f000),
            Some(0x4000)
        );
        assert_eq!(cursor.same_leaf_table(0x1000, 21, iova ^ 0x20_0000), None);
        assert_eq!(cursor.same_leaf_table(0x1001, 21, iova), None);
        assert_eq!(cursor.same_leaf_table(0x9000, 21, iova), None);
    }

    #[test]
    fn another_stamp_starts_over_at_the_root() {
        let bits = table_level_of_bit(&x86_4level());
        let mut cursor = WalkCursor::new();
        cursor.start(0x1000, 3, &bits, 0, || 0x1000);
        cursor.set(2, 0x2000);
        cursor.record(0, 2);
        assert_eq!(cursor.start(0x1000, 3, &bits, 0, || 0x1000), (2, 0x2000));
        // An unmap unlinked tables since: nothing cached holds.
        assert_eq!(cursor.start(0x1001, 3, &bits, 0, || 0x1000), (3, 0x1000));
        cursor.set(2, 0x2000);
        cursor.record(0, 2);
        // Another table's walk.
        assert_eq!(cursor.start(0x9001, 3, &bits, 0, || 0x9000), (3, 0x9000));
    }
}
