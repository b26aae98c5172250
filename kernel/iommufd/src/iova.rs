//! IOVA space of one IOAS: the usable ranges (allowed minus reserved) and the free
//! holes inside them, indexed twice so that automatic allocation never scans.
//!
//! Holes are kept maximal (adjacent free usable space is always merged), so the hole
//! set is a function of (usable ranges, areas): undoing a take with a release gives
//! back exactly the same structure.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use iommu::IovaRange;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IovaSpace {
    /// Usable ranges, keyed by `last`, value `start`; disjoint and non-adjacent.
    usable: BTreeMap<u64, u64>,
    /// Free holes inside usable ranges, keyed by `last`, value `start`.
    holes: BTreeMap<u64, u64>,
    /// The same holes by `(last - start, start)`: size-ordered for allocation.
    by_size: BTreeSet<(u64, u64)>,
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
        let mut space = Self::default();
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

    pub fn hole_count(&self) -> usize {
        self.holes.len()
    }

    /// The free holes in address order (for tests and models).
    pub fn holes(&self) -> impl Iterator<Item = IovaRange> + '_ {
        self.holes
            .iter()
            .map(|(&last, &start)| IovaRange { start, last })
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
        self.remove_hole(start, last);
        if start < at {
            self.insert_hole(start, at - 1);
        }
        if at_last < last {
            self.insert_hole(at_last + 1, last);
        }
    }

    /// Marks `range` occupied (a fixed-IOVA area); parts outside holes are ignored.
    pub fn take(&mut self, range: IovaRange) {
        let touched: Vec<(u64, u64)> = self
            .holes
            .range(range.start..)
            .map(|(&last, &start)| (start, last))
            .take_while(|(start, _)| *start <= range.last)
            .collect();
        for (start, last) in touched {
            self.split(start, last, start.max(range.start), last.min(range.last));
        }
    }

    /// Returns the usable part of `range` (an area being removed) to the holes.
    pub fn release(&mut self, range: IovaRange) {
        let pieces: Vec<(u64, u64)> = self
            .usable
            .range(range.start..)
            .map(|(&last, &start)| (start, last))
            .take_while(|(start, _)| *start <= range.last)
            .map(|(start, last)| (start.max(range.start), last.min(range.last)))
            .collect();
        for (mut start, mut last) in pieces {
            if let Some(before) = start.checked_sub(1)
                && let Some(&left) = self.holes.get(&before)
            {
                self.remove_hole(left, before);
                start = left;
            }
            if let Some(after) = last.checked_add(1)
                && let Some((&right_last, &right)) = self.holes.range(after..).next()
                && right == after
            {
                self.remove_hole(right, right_last);
                last = right_last;
            }
            self.insert_hole(start, last);
        }
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
}
