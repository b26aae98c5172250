//! IOVA space of one IOAS: the usable ranges (allowed minus reserved) and the free
//! holes inside them, indexed twice so that automatic allocation never scans.
//!
//! Holes are kept maximal (adjacent free usable space is always merged), so the hole
//! set is a function of (usable ranges, areas).
//!
//! In front of the hole index sit small per-size caches of freed, naturally aligned
//! power-of-two ranges (as Linux's IOVA "rcache" magazines): a map/unmap cycle of
//! the same size then costs a push and a pop instead of a split and a merge. The
//! cached ranges are free space like the holes; [`IovaSpace::holes`] and equality
//! see the merged view, and the caches are drained into the holes whenever the
//! holes alone cannot satisfy a request, so an allocation fails only when nothing
//! anywhere fits.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use iommu::IovaRange;

/// Smallest and largest cached size, as log2 of bytes (4 KiB to 4 MiB).
const CACHE_MIN_ORDER: u32 = 12;
const CACHE_MAX_ORDER: u32 = 22;
const CACHE_BINS: usize = (CACHE_MAX_ORDER - CACHE_MIN_ORDER + 1) as usize;
/// Ranges each size cache holds.
const CACHE_DEPTH: usize = 16;

#[derive(Clone, Copy, Debug, Default)]
struct Magazine {
    len: usize,
    iovas: [u64; CACHE_DEPTH],
}

/// The free IOVA of an IOAS: its holes, indexed by end and by size for
/// O(log n) allocation of an aligned run, and a small cache of recently
/// freed naturally aligned runs.
#[derive(Clone, Default)]
pub struct IovaSpace {
    /// Usable ranges, keyed by `last`, value `start`; disjoint and non-adjacent.
    usable: BTreeMap<u64, u64>,
    /// Free holes inside usable ranges, keyed by `last`, value `start`.
    holes: BTreeMap<u64, u64>,
    /// The same holes by `(last - start, start)`: size-ordered for allocation.
    by_size: BTreeSet<(u64, u64)>,
    /// Per-order caches of free, naturally aligned ranges (not in `holes`).
    cache: [Magazine; CACHE_BINS],
    caching: bool,
    /// `(start, last)` of the usable range the last cached release fell in
    /// (empty at first). Usable ranges never change after `build`, so it stays
    /// true, and the fast path skips the tree lookup while it holds.
    usable_hint: (u64, u64),
}

impl PartialEq for IovaSpace {
    fn eq(&self, other: &Self) -> bool {
        self.usable == other.usable && self.holes().eq(other.holes())
    }
}

impl Eq for IovaSpace {}

impl core::fmt::Debug for IovaSpace {
    /// The semantic state: usable ranges and the merged free space.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IovaSpace")
            .field("usable", &self.usable)
            .field("free", &self.holes().collect::<Vec<_>>())
            .finish()
    }
}

/// The cache bin of a range that may be cached: a power-of-two length in the
/// cached sizes, aligned to it, not at IOVA 0.
fn bin(start: u64, len: u64) -> Option<usize> {
    let order = len.trailing_zeros();
    (len.is_power_of_two()
        && (CACHE_MIN_ORDER..=CACHE_MAX_ORDER).contains(&order)
        && start != 0
        && start.is_multiple_of(len))
    .then(|| (order - CACHE_MIN_ORDER) as usize)
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// Where an aligned block of `len_m1 + 1` bytes fits in `[start, last]`, never at 0.
fn fit(start: u64, last: u64, len_m1: u64, align: u64) -> Option<u64> {
    let at = align_up(start.max(1), align)?;
    (at.checked_add(len_m1)? <= last).then_some(at)
}

impl IovaSpace {
    /// A space whose usable ranges are `usable` (sorted, disjoint) and whose
    /// occupied ranges are `occupied` (sorted, disjoint).
    pub fn build(usable: &[IovaRange], occupied: impl Iterator<Item = IovaRange> + Clone) -> Self {
        let mut space = Self {
            caching: true,
            usable_hint: (1, 0),
            ..Self::default()
        };
        for r in usable {
            space.usable.insert(r.last, r.start);
        }
        for r in usable {
            let mut cursor = Some(r.start);
            for area in occupied.clone() {
                let Some(c) = cursor else { break };
                if area.last < c {
                    continue;
                }
                if area.start > r.last {
                    break;
                }
                if area.start > c {
                    space.insert_hole(c, area.start - 1);
                }
                cursor = area.last.checked_add(1);
            }
            if let Some(c) = cursor
                && c <= r.last
            {
                space.insert_hole(c, r.last);
            }
        }
        space
    }

    /// Turns the size caches off (benchmarks of the hole index alone).
    pub fn set_caching(&mut self, on: bool) {
        self.drain_cache();
        self.caching = on;
    }

    /// Entries of the hole index (cached ranges not included).
    pub fn hole_count(&self) -> usize {
        self.holes.len()
    }

    /// The free space in address order, maximal ranges (cached ranges merged in).
    pub fn holes(&self) -> impl Iterator<Item = IovaRange> + '_ {
        let mut free: Vec<IovaRange> = self
            .holes
            .iter()
            .map(|(&last, &start)| IovaRange { start, last })
            .collect();
        for (b, m) in self.cache.iter().enumerate() {
            let len = 1u64 << (b as u32 + CACHE_MIN_ORDER);
            free.extend(m.iovas[..m.len].iter().map(|&start| IovaRange {
                start,
                last: start + (len - 1),
            }));
        }
        free.sort_unstable();
        let mut merged: Vec<IovaRange> = Vec::with_capacity(free.len());
        for r in free {
            match merged.last_mut() {
                Some(prev) if prev.last.checked_add(1) == Some(r.start) => prev.last = r.last,
                _ => merged.push(r),
            }
        }
        merged.into_iter()
    }

    /// Moves every cached range back into the hole index.
    fn drain_cache(&mut self) {
        for b in 0..CACHE_BINS {
            let len = 1u64 << (b as u32 + CACHE_MIN_ORDER);
            while self.cache[b].len > 0 {
                self.cache[b].len -= 1;
                let start = self.cache[b].iovas[self.cache[b].len];
                self.release_to_holes(start, start + (len - 1));
            }
        }
    }

    /// Moves the cached ranges that intersect `range` back into the hole index.
    fn evict_cached(&mut self, range: IovaRange) {
        for b in 0..CACHE_BINS {
            let len = 1u64 << (b as u32 + CACHE_MIN_ORDER);
            let mut i = 0;
            while i < self.cache[b].len {
                let start = self.cache[b].iovas[i];
                if start <= range.last && range.start <= start + (len - 1) {
                    let m = &mut self.cache[b];
                    m.len -= 1;
                    m.iovas[i] = m.iovas[m.len];
                    self.release_to_holes(start, start + (len - 1));
                } else {
                    i += 1;
                }
            }
        }
    }

    fn insert_hole(&mut self, start: u64, last: u64) {
        self.holes.insert(last, start);
        self.by_size.insert((last - start, start));
    }

    fn remove_hole(&mut self, start: u64, last: u64) {
        self.holes.remove(&last);
        self.by_size.remove(&(last - start, start));
    }

    /// Allocates `len` bytes aligned to `align` (a power of two), never at IOVA 0.
    ///
    /// Finds the smallest hole of at least `len + align` bytes (which always fits)
    /// in O(log n); only when none exists does it try the holes of `len` to
    /// `len + align` bytes, which fit depending on their alignment.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        if align == len
            && let Some(b) = bin(len, len)
        {
            let m = &mut self.cache[b];
            if m.len > 0 {
                m.len -= 1;
                return Some(m.iovas[m.len]);
            }
        }
        if let Some(at) = self.alloc_from_holes(len, align) {
            return Some(at);
        }
        if self.cache.iter().any(|m| m.len > 0) {
            self.drain_cache();
            return self.alloc_from_holes(len, align);
        }
        None
    }

    fn alloc_from_holes(&mut self, len: u64, align: u64) -> Option<u64> {
        let len_m1 = len.checked_sub(1)?;
        let need = len_m1.checked_add(align);
        let sure = need.and_then(|need| self.by_size.range((need, 0)..).next().copied());
        let (start, last, at) = match sure {
            Some((size, start)) => (
                start,
                start + size,
                fit(start, start + size, len_m1, align)?,
            ),
            None => self
                .by_size
                .range((len_m1, 0)..)
                .take_while(|(size, _)| need.is_none_or(|need| *size < need))
                .find_map(|&(size, start)| {
                    fit(start, start + size, len_m1, align).map(|at| (start, start + size, at))
                })?,
        };
        self.split(start, last, at, at + len_m1);
        Some(at)
    }

    /// Removes `[at, at_last]` from the hole `[start, last]` that contains it.
    fn split(&mut self, start: u64, last: u64, at: u64, at_last: u64) {
        self.by_size.remove(&(last - start, start));
        if at_last < last {
            // The tail keeps the hole's `last` key: update it in place.
            if let Some(s) = self.holes.get_mut(&last) {
                *s = at_last + 1;
            }
            self.by_size.insert((last - (at_last + 1), at_last + 1));
        } else {
            self.holes.remove(&last);
        }
        if start < at {
            self.insert_hole(start, at - 1);
        }
    }

    /// Marks `range` occupied (a fixed-IOVA area); parts outside holes are ignored.
    pub fn take(&mut self, range: IovaRange) {
        self.evict_cached(range);
        while let Some((&last, &start)) = self.holes.range(range.start..).next() {
            if start > range.last {
                break;
            }
            self.split(start, last, start.max(range.start), last.min(range.last));
        }
    }

    /// Returns the usable part of `range` (an area being removed) to the free space.
    pub fn release(&mut self, range: IovaRange) {
        let len = range.last.wrapping_sub(range.start).wrapping_add(1);
        if self.caching
            && let Some(b) = bin(range.start, len)
            && self.cache[b].len < CACHE_DEPTH
            && self.inside_usable(range)
        {
            let m = &mut self.cache[b];
            m.iovas[m.len] = range.start;
            m.len += 1;
            return;
        }
        let mut from = range.start;
        while let Some((&last, &start)) = self.usable.range(from..).next() {
            if start > range.last {
                break;
            }
            self.release_to_holes(start.max(range.start), last.min(range.last));
            match last.checked_add(1) {
                Some(next) if last < range.last => from = next,
                _ => break,
            }
        }
    }

    /// Whether `range` lies inside one usable range (the hint first).
    fn inside_usable(&mut self, range: IovaRange) -> bool {
        let (start, last) = self.usable_hint;
        if start <= range.start && range.last <= last {
            return true;
        }
        match self.usable.range(range.start..).next() {
            Some((&last, &start)) if start <= range.start && range.last <= last => {
                self.usable_hint = (start, last);
                true
            }
            _ => false,
        }
    }

    /// Inserts the free `[start, last]` into the hole index, merging neighbours.
    fn release_to_holes(&mut self, mut start: u64, last: u64) {
        if let Some(before) = start.checked_sub(1)
            && let Some(&left) = self.holes.get(&before)
        {
            self.remove_hole(left, before);
            start = left;
        }
        if let Some(after) = last.checked_add(1)
            && let Some((&right_last, right)) = self.holes.range_mut(after..).next()
            && *right == after
        {
            // Grow the right neighbour downwards: its `last` key stays.
            *right = start;
            self.by_size.remove(&(right_last - after, after));
            self.by_size.insert((right_last - start, start));
            return;
        }
        self.insert_hole(start, last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, last: u64) -> IovaRange {
        IovaRange { start, last }
    }

    #[test]
    fn iova_auto_alloc_is_never_zero_and_aligned() {
        let mut s = IovaSpace::build(&[IovaRange::FULL], core::iter::empty());
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x1000));
        assert_eq!(s.alloc(0x20_0000, 0x20_0000), Some(0x20_0000));
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x2000));
    }

    #[test]
    fn iova_auto_alloc_enospc_when_nothing_fits() {
        let mut s = IovaSpace::build(&[r(0x1000, 0x2fff)], core::iter::empty());
        assert_eq!(s.alloc(0x2000, 0x2000), None);
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x1000));
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x2000));
        assert_eq!(s.alloc(0x1000, 0x1000), None);
    }

    #[test]
    fn iova_take_and_release_restore_the_same_holes() {
        let mut s = IovaSpace::build(&[r(0, 0xffff), r(0x2_0000, 0x2_ffff)], core::iter::empty());
        let before = s.clone();
        s.take(r(0x8000, 0x2_0fff));
        assert_eq!(
            s.holes().collect::<Vec<_>>(),
            [r(0, 0x7fff), r(0x2_1000, 0x2_ffff)]
        );
        s.release(r(0x8000, 0x2_0fff));
        assert_eq!(s, before);
    }

    #[test]
    fn iova_build_subtracts_occupied() {
        let s = IovaSpace::build(
            &[r(0, 0xffff)],
            [r(0x1000, 0x1fff), r(0x8000, 0xffff)].into_iter(),
        );
        assert_eq!(
            s.holes().collect::<Vec<_>>(),
            [r(0, 0xfff), r(0x2000, 0x7fff)]
        );
    }

    #[test]
    fn iova_fallback_finds_tight_aligned_hole() {
        // Only a hole of exactly the size, aligned: found by the exact fallback.
        let s0 = IovaSpace::build(&[r(0x1_0000, 0x1_ffff)], core::iter::empty());
        let mut s = s0.clone();
        assert_eq!(s.alloc(0x1_0000, 0x1_0000), Some(0x1_0000));
        assert_eq!(s.hole_count(), 0);
    }

    #[test]
    fn iova_cache_reuses_freed_ranges_and_drains_before_enospc() {
        let mut s = IovaSpace::build(&[r(0x1000, 0x4fff)], core::iter::empty());
        let a = s.alloc(0x1000, 0x1000).unwrap();
        let b = s.alloc(0x1000, 0x1000).unwrap();
        s.release(r(a, a + 0xfff));
        s.release(r(b, b + 0xfff));
        // Cached, yet the free space reads as one merged range.
        assert_eq!(s.holes().collect::<Vec<_>>(), [r(0x1000, 0x4fff)]);
        assert_eq!(s.alloc(0x1000, 0x1000), Some(b));
        s.release(r(b, b + 0xfff));
        // A 16 KiB request needs the cached pages back in the hole index.
        assert_eq!(s.alloc(0x4000, 0x1000), Some(0x1000));
        assert_eq!(s.alloc(0x1000, 0x1000), None);
    }

    #[test]
    fn iova_cache_never_hands_out_zero_or_evicted_ranges() {
        let mut s = IovaSpace::build(&[IovaRange::FULL], core::iter::empty());
        s.take(r(0, 0xfff));
        s.release(r(0, 0xfff));
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x1000));
        s.release(r(0x1000, 0x1fff));
        // A fixed take over the cached page evicts it.
        s.take(r(0x1000, 0x1fff));
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x2000));
    }
}

#[cfg(test)]
mod model {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    const PAGE: u64 = 0x1000;

    #[derive(Clone, Debug)]
    enum Op {
        Alloc { pages: u64 },
        Take { page: u64, pages: u64 },
        Release { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..20).prop_map(|pages| Op::Alloc { pages }),
            2 => (0u64..300, 1u64..10).prop_map(|(page, pages)| Op::Take { page, pages }),
            3 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        ]
    }

    /// `usable` minus `used`, merged.
    fn free(usable: &[IovaRange], used: &[IovaRange]) -> Vec<IovaRange> {
        let mut out = vec![];
        for u in usable {
            let mut cursor = u.start;
            let mut inside: Vec<&IovaRange> = used.iter().filter(|r| r.intersects(u)).collect();
            inside.sort();
            for r in inside {
                if r.start > cursor {
                    out.push(IovaRange {
                        start: cursor,
                        last: r.start - 1,
                    });
                }
                cursor = cursor.max(r.last + 1);
            }
            if cursor <= u.last {
                out.push(IovaRange {
                    start: cursor,
                    last: u.last,
                });
            }
        }
        let mut merged: Vec<IovaRange> = vec![];
        for r in out {
            match merged.last_mut() {
                Some(p) if p.last + 1 == r.start => p.last = r.last,
                _ => merged.push(r),
            }
        }
        merged
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn iova_space_matches_brute_force(
            cuts in proptest::collection::vec((0u64..300, 1u64..40), 1..4),
            caching in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let mut usable: Vec<IovaRange> = cuts
                .iter()
                .map(|&(p, n)| IovaRange { start: p * PAGE, last: (p + n) * PAGE - 1 })
                .collect();
            usable.sort();
            usable.dedup_by(|b, a| {
                if b.start <= a.last + 1 {
                    a.last = a.last.max(b.last);
                    true
                } else {
                    false
                }
            });
            let mut s = IovaSpace::build(&usable, core::iter::empty());
            s.set_caching(caching);
            let mut used: Vec<IovaRange> = vec![];
            for op in ops {
                match op {
                    Op::Alloc { pages } => {
                        let len = pages * PAGE;
                        let align = 1u64 << (63 - len.leading_zeros());
                        let fits = free(&usable, &used).iter().any(|h| {
                            let at = h.start.max(1).div_ceil(align) * align;
                            at + len - 1 <= h.last
                        });
                        match s.alloc(len, align) {
                            Some(at) => {
                                prop_assert!(fits);
                                prop_assert!(at != 0 && at % align == 0);
                                let r = IovaRange { start: at, last: at + len - 1 };
                                prop_assert!(free(&usable, &used).iter().any(|h| h.contains(&r)));
                                used.push(r);
                            }
                            None => prop_assert!(!fits, "ENOSPC although a hole fits"),
                        }
                    }
                    Op::Take { page, pages } => {
                        let r = IovaRange { start: page * PAGE, last: (page + pages) * PAGE - 1 };
                        if used.iter().all(|u| !u.intersects(&r)) {
                            s.take(r);
                            used.push(r);
                        }
                    }
                    Op::Release { pick } => {
                        if !used.is_empty() {
                            let r = used.swap_remove(pick % used.len());
                            s.release(r);
                        }
                    }
                }
                prop_assert_eq!(s.holes().collect::<Vec<_>>(), free(&usable, &used));
            }
        }
    }
}
