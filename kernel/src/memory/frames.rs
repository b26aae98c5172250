//! The physical frame allocator: a bitmap over RAM, one bit per 4 KiB frame.
//!
//! A bitmap (rather than a free list) gives contiguous, aligned runs for
//! device structures (IOMMU tables of 16/64 KiB, queues, DMA buffers) and an
//! exact count of free frames, which the tests use to prove that nothing leaks.

use spin::Mutex;

use crate::boot_info::MemoryRegion;

pub const FRAME_SIZE: usize = 4096;
/// Highest physical address the allocator manages (QEMU runs with 256 MiB to
/// a few GiB; RAM above this is ignored, not misused).
const MAX_PHYS: u64 = 8 << 30;
const MAX_FRAMES: usize = (MAX_PHYS / FRAME_SIZE as u64) as usize;
const WORDS: usize = MAX_FRAMES / 64;

/// A run of physically contiguous frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frames {
    pub phys: u64,
    pub count: usize,
}

impl Frames {
    pub fn len(&self) -> usize {
        self.count * FRAME_SIZE
    }

    /// The kernel address of the first byte (memory is identity-mapped).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.phys as *mut u8
    }
}

struct Bitmap {
    /// Bit set = frame is free.
    free: [u64; WORDS],
    free_count: usize,
    /// Where the next search starts, so that allocation is next-fit.
    cursor: usize,
}

static FRAMES: Mutex<Bitmap> = Mutex::new(Bitmap {
    free: [0; WORDS],
    free_count: 0,
    cursor: 0,
});

impl Bitmap {
    fn is_free(&self, frame: usize) -> bool {
        self.free[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: usize, free: bool) {
        let bit = 1u64 << (frame % 64);
        let was_free = self.free[frame / 64] & bit != 0;
        if free && !was_free {
            self.free[frame / 64] |= bit;
            self.free_count += 1;
        } else if !free && was_free {
            self.free[frame / 64] &= !bit;
            self.free_count -= 1;
        }
    }

    fn frames_of(region: MemoryRegion) -> core::ops::Range<usize> {
        let first = region
            .base
            .div_ceil(FRAME_SIZE as u64)
            .min(MAX_FRAMES as u64);
        let end = (region.end() / FRAME_SIZE as u64).min(MAX_FRAMES as u64);
        first as usize..end.max(first) as usize
    }

    fn frames_touching(region: MemoryRegion) -> core::ops::Range<usize> {
        let first = (region.base / FRAME_SIZE as u64).min(MAX_FRAMES as u64);
        let end = region
            .end()
            .div_ceil(FRAME_SIZE as u64)
            .min(MAX_FRAMES as u64);
        first as usize..end.max(first) as usize
    }

    /// The first free frame at or after `from`, a word at a time.
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

    /// The first taken frame in `from..to`, a word at a time.
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

    fn find_run(&self, count: usize, align_frames: usize) -> Option<usize> {
        let search = |from: usize| {
            let mut start = from;
            loop {
                start = self.next_free(start)?.next_multiple_of(align_frames);
                if start + count > MAX_FRAMES {
                    return None;
                }
                match self.next_taken(start, start + count) {
                    None => return Some(start),
                    Some(taken) => start = taken + 1,
                }
            }
        };
        search(self.cursor).or_else(|| search(0))
    }
}

/// Marks `ram` free, then every `reserved` region taken again.
pub fn init(ram: impl Iterator<Item = MemoryRegion>, reserved: impl Iterator<Item = MemoryRegion>) {
    let mut bitmap = FRAMES.lock();
    for region in ram {
        for frame in Bitmap::frames_of(region) {
            bitmap.set(frame, true);
        }
    }
    for region in reserved {
        for frame in Bitmap::frames_touching(region) {
            bitmap.set(frame, false);
        }
    }
}

/// Allocates `count` contiguous zeroed frames whose start is aligned to
/// `align` bytes (a power of two, at least [`FRAME_SIZE`]).
pub fn alloc_contiguous(count: usize, align: usize) -> Option<Frames> {
    if count == 0 || !align.is_power_of_two() {
        return None;
    }
    let align_frames = (align / FRAME_SIZE).max(1);
    let mut bitmap = FRAMES.lock();
    let start = bitmap.find_run(count, align_frames)?;
    for frame in start..start + count {
        bitmap.set(frame, false);
    }
    bitmap.cursor = start + count;
    drop(bitmap);
    let frames = Frames {
        phys: (start * FRAME_SIZE) as u64,
        count,
    };
    // SAFETY: the frames were free RAM and are now owned by this allocation;
    // memory is identity-mapped, so the range is valid writable memory.
    unsafe { core::ptr::write_bytes(frames.as_mut_ptr(), 0, frames.len()) };
    Some(frames)
}

/// Allocates one zeroed frame.
pub fn alloc() -> Option<Frames> {
    alloc_contiguous(1, FRAME_SIZE)
}

/// Returns frames obtained from [`alloc_contiguous`].
///
/// Panics on a double free: that is a kernel bug that would otherwise hand
/// the same memory to two owners.
pub fn free(frames: Frames) {
    let first = (frames.phys / FRAME_SIZE as u64) as usize;
    let mut bitmap = FRAMES.lock();
    for frame in first..first + frames.count {
        assert!(
            !bitmap.is_free(frame),
            "double free of frame {:#x}",
            frame * FRAME_SIZE
        );
        bitmap.set(frame, true);
    }
}

/// Number of free frames: the leak check of every test that allocates.
pub fn free_count() -> usize {
    FRAMES.lock().free_count
}
