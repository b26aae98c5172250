//! The physical frame allocator: a `frame_bitmap::FrameBitmap` over RAM, one
//! bit per 4 KiB frame, behind a lock. Frames are handed out zeroed.

use frame_bitmap::FrameBitmap;
use spin::Mutex;

use crate::boot_info::MemoryRegion;

pub const FRAME_SIZE: usize = 4096;
/// Highest physical address the allocator manages: the end of the boot
/// identity map on both architectures (the kernel reaches a frame through
/// that map to zero it). RAM above it, as QEMU gives with `-m` over ~2 GiB,
/// is ignored rather than handed out unreachable.
const MAX_PHYS: u64 = 4 << 30;
const WORDS: usize = (MAX_PHYS / FRAME_SIZE as u64 / 64) as usize;

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

static FRAMES: Mutex<FrameBitmap<WORDS>> = Mutex::new(FrameBitmap::new());

/// Frames wholly inside `region`.
fn frames_within(region: MemoryRegion) -> core::ops::Range<usize> {
    let first = region.base.div_ceil(FRAME_SIZE as u64);
    let end = region.end() / FRAME_SIZE as u64;
    first as usize..end.max(first) as usize
}

/// Frames `region` touches at all.
fn frames_touching(region: MemoryRegion) -> core::ops::Range<usize> {
    let first = region.base / FRAME_SIZE as u64;
    let end = region.end().div_ceil(FRAME_SIZE as u64);
    first as usize..end as usize
}

/// Marks `ram` free, then every `reserved` region taken again.
pub fn init(ram: impl Iterator<Item = MemoryRegion>, reserved: impl Iterator<Item = MemoryRegion>) {
    let mut bitmap = FRAMES.lock();
    for region in ram {
        bitmap.add_free(frames_within(region));
    }
    for region in reserved {
        bitmap.reserve(frames_touching(region));
    }
}

/// Frames only the kernel heap may take (32 MiB): what tasks' memory, IO
/// page tables and device structures use up, the heap can still grow into,
/// so a task that exhausts RAM gets ENOMEM from its own calls while the
/// kernel's allocations go on; with half the first arena it backs the heap
/// quotas of five tasks at the default (see `heap`).
pub const HEAP_RESERVE: usize = 8192;

/// Allocates `count` contiguous zeroed frames whose start is aligned to
/// `align` bytes (a power of two, at least [`FRAME_SIZE`]), leaving the
/// heap's reserve alone.
pub fn alloc_contiguous(count: usize, align: usize) -> Option<Frames> {
    take(count, align, HEAP_RESERVE, Zeroed::Yes)
}

/// [`alloc_contiguous`] without the zeroing, for memory its user writes
/// whole before anything reads it: the frames hold what they last held.
pub fn alloc_contiguous_uninit(count: usize, align: usize) -> Option<Frames> {
    take(count, align, HEAP_RESERVE, Zeroed::No)
}

/// Whether [`take`] zeroes what it hands out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zeroed {
    Yes,
    No,
}

/// Allocates `count` contiguous zeroed frames from all free frames, the
/// heap's reserve included: for heap arenas, and for tests that must reach
/// every frame.
pub fn alloc_from_reserve(count: usize) -> Option<Frames> {
    take(count, FRAME_SIZE, 0, Zeroed::Yes)
}

fn take(count: usize, align: usize, keep_free: usize, zeroed: Zeroed) -> Option<Frames> {
    if !align.is_power_of_two() {
        return None;
    }
    let first = {
        let mut bitmap = FRAMES.lock();
        if bitmap.free_count() < count.checked_add(keep_free)? {
            return None;
        }
        bitmap.alloc(count, (align / FRAME_SIZE).max(1))?
    };
    let frames = Frames {
        phys: (first * FRAME_SIZE) as u64,
        count,
    };
    if zeroed == Zeroed::Yes {
        // SAFETY: the frames were free RAM and are now owned by this allocation;
        // memory is identity-mapped, so the range is valid writable memory.
        unsafe { core::ptr::write_bytes(frames.as_mut_ptr(), 0, frames.len()) };
    }
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
    if let Err(err) = FRAMES.lock().free(first, frames.count) {
        panic!("double free of frame {:#x}", err.frame * FRAME_SIZE);
    }
}

/// The end of the boot identity map: every frame handed out lies below it.
pub const MANAGED_LIMIT: u64 = MAX_PHYS;

/// Physical address of the highest free frame.
pub fn highest_free() -> Option<u64> {
    FRAMES
        .lock()
        .last_free()
        .map(|frame| (frame * FRAME_SIZE) as u64)
}

/// Frames withheld from the free pool for good because a device may still
/// reach them (see `Task::withhold_pinned`).
static WITHHELD: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Keeps `count` frames out of the free pool forever: they are not freed,
/// only counted, so that leak checks can tell them from a leak.
pub fn withhold(count: usize) {
    WITHHELD.fetch_add(count, core::sync::atomic::Ordering::Relaxed);
}

/// Frames withheld so far ([`withhold`]).
pub fn withheld() -> usize {
    WITHHELD.load(core::sync::atomic::Ordering::Relaxed)
}

/// Number of free frames: the leak check of every test that allocates.
pub fn free_count() -> usize {
    FRAMES.lock().free_count()
}
