//! A bitmap of physical frames, one bit per frame (set = free).
//!
//! A bitmap rather than a free list because device structures need aligned,
//! physically contiguous runs (IOMMU tables of 16/64 KiB, queues, DMA buffers),
//! and because the exact free count is how every kernel test proves that
//! nothing leaked. Allocation is next-fit from a cursor and scans a 64-bit
//! word at a time. The bitmap knows frame numbers only; the kernel turns them
//! into addresses.
#![no_std]

use core::ops::Range;

/// Freeing a frame that is already free: a bug that would hand the same
/// memory to two owners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoubleFree {
    pub frame: usize,
}

/// A bitmap over `WORDS * 64` frames.
pub struct FrameBitmap<const WORDS: usize> {
    free: [u64; WORDS],
    free_count: usize,
    cursor: usize,
}

impl<const WORDS: usize> Default for FrameBitmap<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> FrameBitmap<WORDS> {
    /// Frames the bitmap can describe.
    pub const CAPACITY: usize = WORDS * 64;

    /// A bitmap with every frame taken.
    pub const fn new() -> Self {
        FrameBitmap {
            free: [0; WORDS],
            free_count: 0,
            cursor: 0,
        }
    }

    pub fn free_count(&self) -> usize {
        self.free_count
    }

    /// The highest free frame, if any.
    pub fn last_free(&self) -> Option<usize> {
        let (word, bits) = self
            .free
            .iter()
            .enumerate()
            .rev()
            .find(|(_, bits)| **bits != 0)?;
        Some(word * 64 + 63 - bits.leading_zeros() as usize)
    }

    pub fn is_free(&self, frame: usize) -> bool {
        frame < Self::CAPACITY && self.free[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: usize, free: bool) {
        let bit = 1u64 << (frame % 64);
        let word = &mut self.free[frame / 64];
        let was_free = *word & bit != 0;
        if free && !was_free {
            *word |= bit;
            self.free_count += 1;
        } else if !free && was_free {
            *word &= !bit;
            self.free_count -= 1;
        }
    }

    fn clamp(&self, frames: Range<usize>) -> Range<usize> {
        frames.start.min(Self::CAPACITY)..frames.end.min(Self::CAPACITY)
    }

    /// Marks `frames` free (RAM the firmware reported); frames past the
    /// capacity are ignored.
    pub fn add_free(&mut self, frames: Range<usize>) {
        for frame in self.clamp(frames) {
            self.set(frame, true);
        }
    }

    /// Marks `frames` taken (reserved ranges, the kernel image).
    pub fn reserve(&mut self, frames: Range<usize>) {
        for frame in self.clamp(frames) {
            self.set(frame, false);
        }
    }

    /// The first free frame at or after `from`.
    fn next_free(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        let mut bits = *self.free.get(word)? & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            bits = *self.free.get(word)?;
        }
    }

    /// The first taken frame in `from..to` (`to <= CAPACITY`).
    fn next_taken(&self, from: usize, to: usize) -> Option<usize> {
        let mut word = from / 64;
        let mut bits = !self.free[word] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                let frame = word * 64 + bits.trailing_zeros() as usize;
                return (frame < to).then_some(frame);
            }
            word += 1;
            if word * 64 >= to {
                return None;
            }
            bits = !self.free[word];
        }
    }

    fn find_run(&self, from: usize, count: usize, align: usize) -> Option<usize> {
        let mut start = from;
        loop {
            start = self.next_free(start)?.checked_next_multiple_of(align)?;
            if start.checked_add(count)? > Self::CAPACITY {
                return None;
            }
            match self.next_taken(start, start + count) {
                None => return Some(start),
                Some(taken) => start = taken + 1,
            }
        }
    }

    /// Takes `count` contiguous free frames whose first frame number is a
    /// multiple of `align` (a power of two); returns the first frame.
    pub fn alloc(&mut self, count: usize, align: usize) -> Option<usize> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let start = self
            .find_run(self.cursor, count, align)
            .or_else(|| self.find_run(0, count, align))?;
        for frame in start..start + count {
            self.set(frame, false);
        }
        self.cursor = start + count;
        Some(start)
    }

    /// Returns `count` frames from `start`. Nothing changes on a double free.
    pub fn free(&mut self, start: usize, count: usize) -> Result<(), DoubleFree> {
        let end = start
            .checked_add(count)
            .filter(|&end| end <= Self::CAPACITY)
            .ok_or(DoubleFree { frame: start })?;
        if let Some(frame) = (start..end).find(|&frame| self.is_free(frame)) {
            return Err(DoubleFree { frame });
        }
        for frame in start..end {
            self.set(frame, true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::BTreeSet;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    type Small = FrameBitmap<4>;

    #[test]
    fn alloc_respects_alignment_and_skips_taken_frames() {
        let mut bitmap = Small::new();
        bitmap.add_free(0..256);
        bitmap.reserve(3..4);
        assert_eq!(bitmap.free_count(), 255);
        assert_eq!(bitmap.alloc(2, 1), Some(0));
        // Frames 2 is free but 3 is taken: a run of 2 starts at 4.
        assert_eq!(bitmap.alloc(2, 1), Some(4));
        assert_eq!(bitmap.alloc(16, 16), Some(16));
        // Crossing a word boundary.
        assert_eq!(bitmap.alloc(70, 64), Some(64));
        assert_eq!(bitmap.free_count(), 255 - 2 - 2 - 16 - 70);
    }

    #[test]
    fn last_free_finds_the_highest_free_frame() {
        let mut bitmap = Small::new();
        assert_eq!(bitmap.last_free(), None);
        bitmap.add_free(5..130);
        assert_eq!(bitmap.last_free(), Some(129));
        bitmap.reserve(100..130);
        assert_eq!(bitmap.last_free(), Some(99));
    }

    #[test]
    fn exhaustion_and_wraparound() {
        let mut bitmap = Small::new();
        bitmap.add_free(10..20);
        assert_eq!(bitmap.alloc(11, 1), None);
        assert_eq!(bitmap.alloc(10, 1), Some(10));
        assert_eq!(bitmap.alloc(1, 1), None);
        bitmap.free(12, 1).unwrap();
        // The cursor is past the end; the search wraps to find frame 12.
        assert_eq!(bitmap.alloc(1, 1), Some(12));
    }

    #[test]
    fn double_free_is_refused_and_changes_nothing() {
        let mut bitmap = Small::new();
        bitmap.add_free(0..8);
        let first = bitmap.alloc(4, 1).unwrap();
        bitmap.free(first + 2, 2).unwrap();
        assert_eq!(bitmap.free(first, 4), Err(DoubleFree { frame: first + 2 }));
        assert!(!bitmap.is_free(first));
        assert_eq!(bitmap.free_count(), 6);
        assert_eq!(bitmap.free(250, 10), Err(DoubleFree { frame: 250 }));
    }

    #[test]
    fn zero_count_and_bad_alignment_allocate_nothing() {
        let mut bitmap = Small::new();
        bitmap.add_free(0..256);
        assert_eq!(bitmap.alloc(0, 1), None);
        assert_eq!(bitmap.alloc(1, 3), None);
        assert_eq!(bitmap.free_count(), 256);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc { count: usize, align_log2: u32 },
        Free { index: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..40, 0u32..6).prop_map(|(count, align_log2)| Op::Alloc { count, align_log2 }),
            any::<usize>().prop_map(|index| Op::Free { index }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a set of free frames: allocations are free, aligned and
        /// disjoint, an allocation fails only when no such run exists, and the
        /// count always matches.
        #[test]
        fn matches_a_set_model(holes in proptest::collection::vec(0usize..256, 0..40), ops in proptest::collection::vec(op(), 1..60)) {
            let mut bitmap = Small::new();
            bitmap.add_free(0..256);
            let mut model: BTreeSet<usize> = (0..256).collect();
            for hole in holes {
                bitmap.reserve(hole..hole + 1);
                model.remove(&hole);
            }
            let mut live: Vec<(usize, usize)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc { count, align_log2 } => {
                        let align = 1 << align_log2;
                        let possible = (0..256usize).step_by(align).any(|start| (start..start + count).all(|f| model.contains(&f)));
                        match bitmap.alloc(count, align) {
                            Some(start) => {
                                prop_assert_eq!(start % align, 0);
                                for frame in start..start + count {
                                    prop_assert!(model.remove(&frame), "frame {} handed out twice", frame);
                                }
                                live.push((start, count));
                            }
                            None => prop_assert!(!possible, "no run of {} found although one exists", count),
                        }
                    }
                    Op::Free { index } if !live.is_empty() => {
                        let (start, count) = live.swap_remove(index % live.len());
                        prop_assert_eq!(bitmap.free(start, count), Ok(()));
                        model.extend(start..start + count);
                    }
                    Op::Free { .. } => {}
                }
                prop_assert_eq!(bitmap.free_count(), model.len());
            }
        }
    }
}
