//! A software walk cache: the table pages the last fast-path walk went through,
//! so that the next walk for a nearby IOVA starts at the deepest table they share
//! instead of at the root (what an IOMMU's paging-structure caches do for its own
//! walks). Only `unmap` unlinks tables, and it empties the cache when it may.

use crate::format::{Geometry, MAX_LEVELS};

/// The tables of one walk: `tables[l]` is the level-`l` table holding the entry
/// for `iova`, for every level from `deepest` up to the root.
pub(crate) struct WalkCache {
    iova: u64,
    tables: [u64; MAX_LEVELS],
    deepest: u32,
    top: u32,
    /// `table_level_of_bit[b]`: the lowest level whose tables span IOVA bit `b`
    /// (the root for bits above every non-root table's span).
    table_level_of_bit: [u8; 64],
}

impl WalkCache {
    /// A cache holding only the root.
    pub(crate) fn new(geo: &Geometry, root: u64) -> Self {
        let top = geo.levels - 1;
        let mut table_level_of_bit = [top as u8; 64];
        for (bit, level) in table_level_of_bit.iter_mut().enumerate() {
            // A level-l table spans the bits below the shift of level l + 1.
            if let Some(l) = (0..top).find(|&l| geo.shift(l + 1) > bit as u32) {
                *level = l as u8;
            }
        }
        let mut tables = [0; MAX_LEVELS];
        tables[top as usize] = root;
        Self {
            iova: 0,
            tables,
            deepest: top,
            top,
            table_level_of_bit,
        }
    }

    /// The deepest cached table holding `iova`'s entry: `(level, table)`.
    #[inline(always)]
    pub(crate) fn start(&self, iova: u64) -> (u32, u64) {
        // The highest bit in which `iova` and the cached walk differ decides which
        // of the cached tables still span both; `| 1` makes equal IOVAs bit 0.
        let differing_bit = 63 - ((iova ^ self.iova) | 1).leading_zeros();
        let shared = u32::from(self.table_level_of_bit[differing_bit as usize]);
        let level = shared.max(self.deepest);
        (level, self.tables[level as usize])
    }

    /// Ends a walk for `iova` that reached `tables[level..]`: the tables below
    /// its start were `set` on the way down, those from the start up are the
    /// ones `start` returned, so all of them hold for `iova`.
    #[inline(always)]
    pub(crate) fn record(&mut self, iova: u64, level: u32) {
        self.iova = iova;
        self.deepest = level;
    }

    /// Sets the table at `level` on the current walk.
    #[inline(always)]
    pub(crate) fn set(&mut self, level: u32, table: u64) {
        self.tables[level as usize] = table;
    }

    /// Forgets everything below the root (tables may have been unlinked).
    #[inline(always)]
    pub(crate) fn forget(&mut self) {
        self.deepest = self.top;
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
    fn empty_cache_starts_at_the_root() {
        let cache = WalkCache::new(&x86_4level(), 0x1000);
        assert_eq!(cache.start(0), (3, 0x1000));
        assert_eq!(cache.start(0x7fff_ffff_f000), (3, 0x1000));
    }

    #[test]
    fn a_walk_is_reused_as_far_as_the_iovas_share_tables() {
        let mut cache = WalkCache::new(&x86_4level(), 0x1000);
        let iova = 0x40_1234_5000;
        cache.set(2, 0x2000);
        cache.set(1, 0x3000);
        cache.set(0, 0x4000);
        cache.record(iova, 0);
        // Same 2 MiB: the leaf table. Same 1 GiB: the page directory. Same
        // 512 GiB: the PDPT. Elsewhere: the root.
        assert_eq!(cache.start(iova), (0, 0x4000));
        assert_eq!(cache.start(iova ^ 0x1f_f000), (0, 0x4000));
        assert_eq!(cache.start(iova ^ 0x20_0000), (1, 0x3000));
        assert_eq!(cache.start(iova ^ 0x2000_0000), (1, 0x3000));
        assert_eq!(cache.start(iova ^ 0x4000_0000), (2, 0x2000));
        assert_eq!(cache.start(iova ^ 0x40_0000_0000), (2, 0x2000));
        assert_eq!(cache.start(iova ^ 0x80_0000_0000), (3, 0x1000));
    }

    #[test]
    fn a_walk_that_stopped_early_is_reused_only_down_to_where_it_stopped() {
        let mut cache = WalkCache::new(&x86_4level(), 0x1000);
        cache.set(2, 0x2000);
        cache.record(0x40_0000_0000, 2);
        assert_eq!(cache.start(0x40_0000_0000), (2, 0x2000));
        cache.forget();
        assert_eq!(cache.start(0x40_0000_0000), (3, 0x1000));
    }

    #[test]
    fn a_one_level_table_is_always_its_root() {
        let geo = Geometry {
            levels: 1,
            leaf_levels: 1,
            iova_bits: 21,
            ..x86_4level()
        };
        let mut cache = WalkCache::new(&geo, 0x1000);
        assert_eq!(cache.start(0x1f_f000), (0, 0x1000));
        cache.record(0x1000, 0);
        assert_eq!(cache.start(0), (0, 0x1000));
    }
}
