//! A walk cursor: the table pages one caller's last single-table walk went
//! through, so that its next walk for a nearby IOVA starts at the deepest
//! table the two share instead of at the root (what an IOMMU's
//! paging-structure caches do for its own walks).
//!
//! A cursor belongs to one caller (one CPU), never to the table, so callers
//! on several CPUs never share or contend for it. Tables a cursor names can
//! only disappear through an unmap that unlinks them; every such unmap bumps
//! the table's unlink generation, and a cursor that saw another generation
//! (or another table) starts again from the root. The generation is read
//! with acquire ordering and bumped with release after the unlink, so a
//! walk ordered after the unmap (as the `_shared` contract requires for an
//! overlapping range) sees the bump.

use crate::format::{Geometry, MAX_LEVELS};

/// One caller's cache of the tables of its last walk, for
/// [`crate::PageTable::map_with`] and [`crate::PageTable::unmap_with`].
#[derive(Clone, Debug)]
pub struct WalkCursor {
    /// The root and unlink generation the cached tables belong to.
    root: u64,
    generation: u64,
    iova: u64,
    /// `tables[l]`: the level-`l` table holding `iova`'s entry, for every
    /// level from `deepest` up to the root.
    tables: [u64; MAX_LEVELS],
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
            root: 0,
            generation: 0,
            iova: 0,
            tables: [0; MAX_LEVELS],
            deepest: 0,
        }
    }

    /// The deepest cached table holding `iova`'s entry, `(level, table)`,
    /// once the cursor is known to describe table `root` at `generation`
    /// (else it starts over from the root, level `top`).
    #[inline(always)]
    pub(crate) fn start(
        &mut self,
        root: u64,
        generation: u64,
        top: u32,
        table_level_of_bit: &[u8; 64],
        iova: u64,
    ) -> (u32, u64) {
        if self.root != root || self.generation != generation {
            self.root = root;
            self.generation = generation;
            self.tables[top as usize] = root;
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

    /// Sets the table at `level` on the current walk.
    #[inline(always)]
    pub(crate) fn set(&mut self, level: u32, table: u64) {
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
        assert_eq!(cursor.start(0x1000, 0, 3, &bits, 0), (3, 0x1000));
        assert_eq!(
            cursor.start(0x1000, 0, 3, &bits, 0x7fff_ffff_f000),
            (3, 0x1000)
        );
    }

    #[test]
    fn a_walk_is_reused_as_far_as_the_iovas_share_tables() {
        let bits = table_level_of_bit(&x86_4level());
        let mut cursor = WalkCursor::new();
        let iova = 0x40_1234_5000;
        cursor.start(0x1000, 0, 3, &bits, iova);
        cursor.set(2, 0x2000);
        cursor.set(1, 0x3000);
        cursor.set(0, 0x4000);
        cursor.record(iova, 0);
        let mut start = |at| cursor.start(0x1000, 0, 3, &bits, at);
        // Same 2 MiB: the leaf table. Same 1 GiB: the page directory. Same
        // 512 GiB: the PDPT. Elsewhere: the root.
        assert_eq!(start(iova), (0, 0x4000));
        assert_eq!(start(iova ^ 0x1f_f000), (0, 0x4000));
        assert_eq!(start(iova ^ 0x20_0000), (1, 0x3000));
        assert_eq!(start(iova ^ 0x4000_0000), (2, 0x2000));
        assert_eq!(start(iova ^ 0x80_0000_0000), (3, 0x1000));
    }

    #[test]
    fn another_generation_or_table_starts_over_at_the_root() {
        let bits = table_level_of_bit(&x86_4level());
        let mut cursor = WalkCursor::new();
        cursor.start(0x1000, 0, 3, &bits, 0);
        cursor.set(2, 0x2000);
        cursor.record(0, 2);
        assert_eq!(cursor.start(0x1000, 0, 3, &bits, 0), (2, 0x2000));
        // An unmap unlinked tables since: nothing cached holds.
        assert_eq!(cursor.start(0x1000, 1, 3, &bits, 0), (3, 0x1000));
        cursor.set(2, 0x2000);
        cursor.record(0, 2);
        // Another table's walk.
        assert_eq!(cursor.start(0x9000, 1, 3, &bits, 0), (3, 0x9000));
    }
}
