//! The kernel heap: `linked_list_allocator` arenas that grow from free
//! frames, every allocation charged to the task the kernel works for.
//!
//! The first arena lives in the kernel image's .bss, so the heap exists
//! before the firmware has told us where RAM is (the device tree must be
//! parsed first, and parsing allocates). When no arena can serve a request,
//! the heap takes a run of frames for a new one, and gives a grown arena back
//! once it is empty again. The frame allocator keeps a reserve only the heap
//! may take ([`super::frames::HEAP_RESERVE`]), so tasks that use up RAM with
//! their own memory cannot make a kernel allocation fail.
//!
//! Rust's collections cannot report a failed allocation, so the heap does
//! not refuse a task's allocation one by one. Instead every allocation made
//! during a task's system call ([`super::charge_to`]) is charged to it
//! (a small header records the owner), and the system-call layer refuses a
//! task that already holds its quota ([`over_quota`]) with ENOMEM before the
//! call allocates anything. One call allocates a bounded amount (its
//! argument struct is at most a page, its work is bounded by the iommufd
//! limits), so a task never holds much more than its quota, and the quotas
//! of the tasks the kernel runs fit in the heap's reserve.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::NonNull;

use super::frames::{self, FRAME_SIZE, Frames};

const FIRST_ARENA_SIZE: usize = 16 << 20;
/// Most arenas at once (the first included).
const MAX_ARENAS: usize = 32;
/// Smallest arena the heap grows by (1 MiB), so that a run of small
/// allocations does not take a frame run each.
const MIN_GROWTH_FRAMES: usize = 256;
/// Bytes in front of every allocation: the owner it is charged to. At least
/// the alignment of the request, so the caller's pointer stays aligned.
const HEADER: usize = 16;
/// Owners with a charge at once (tasks alive, or gone with allocations
/// still held for them); past it an allocation is the kernel's.
const MAX_OWNERS: usize = 64;
/// Bytes of heap one task may hold by default (8 MiB: a task at both
/// iommufd limits holds about 6 MB; at 4 MiB it was refused after 5,500 of
/// its 8,192 areas).
pub const DEFAULT_QUOTA: usize = 8 << 20;
/// What the quotas of the tasks alive at once may add up to: the heap's
/// frame reserve and half the first arena, the other half being the
/// kernel's own (its device list, core state, the output it keeps).
const COMMITTABLE: usize = frames::HEAP_RESERVE * FRAME_SIZE + FIRST_ARENA_SIZE / 2;

#[repr(C, align(4096))]
struct FirstArena(UnsafeCell<[u8; FIRST_ARENA_SIZE]>);

// SAFETY: the space is handed to the allocator once and only reached through it.
unsafe impl Sync for FirstArena {}

static FIRST_ARENA: FirstArena = FirstArena(UnsafeCell::new([0; FIRST_ARENA_SIZE]));

struct Arenas {
    /// Arena 0 is the first (static) one; an empty slot has size 0.
    arenas: [linked_list_allocator::Heap; MAX_ARENAS],
    /// The frames behind each grown arena.
    frames: [Option<Frames>; MAX_ARENAS],
    /// (owner, bytes) for each owner with a charge; owner 0 marks a free slot.
    charges: [(u64, usize); MAX_OWNERS],
    quota: usize,
    /// Bytes the accounts of gone tasks still held ([`reparent`]).
    reparented: usize,
    /// The quotas of the tasks alive ([`HeapCommitment`]).
    committed: usize,
}

// SAFETY: the arenas' raw pointers point into memory owned by the heap
// (the static arena or frames it took), reached only under the lock.
unsafe impl Send for Arenas {}

pub struct KernelHeap(spin::Mutex<Arenas>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(spin::Mutex::new(Arenas {
    arenas: [const { linked_list_allocator::Heap::empty() }; MAX_ARENAS],
    frames: [None; MAX_ARENAS],
    charges: [(0, 0); MAX_OWNERS],
    quota: DEFAULT_QUOTA,
    reparented: 0,
    committed: 0,
}));

/// The layout asked of an arena for `layout`: the header in front.
fn with_header(layout: Layout) -> Option<(Layout, usize)> {
    let header = HEADER.max(layout.align());
    let inner = Layout::from_size_align(layout.size().checked_add(header)?, header).ok()?;
    Some((inner, header))
}

impl Arenas {
    fn allocate(&mut self, inner: Layout) -> Option<NonNull<u8>> {
        self.arenas
            .iter_mut()
            .filter(|arena| arena.size() > 0)
            .find_map(|arena| arena.allocate_first_fit(inner).ok())
            .or_else(|| self.grow(inner))
    }

    /// Takes frames for a new arena big enough for `inner`, and allocates
    /// from it.
    fn grow(&mut self, inner: Layout) -> Option<NonNull<u8>> {
        let slot = self.arenas.iter().position(|arena| arena.size() == 0)?;
        // Room for the request at its alignment and the allocator's hole
        // bookkeeping.
        let bytes = inner
            .size()
            .checked_add(inner.align())?
            .checked_add(FRAME_SIZE)?;
        let count = bytes.div_ceil(FRAME_SIZE).max(MIN_GROWTH_FRAMES);
        let run = frames::alloc_from_reserve(count)?;
        // SAFETY: the frames were free RAM and now belong to this arena
        // alone until `release_if_empty` gives them back; identity-mapped.
        unsafe { self.arenas[slot].init(run.as_mut_ptr(), run.len()) };
        self.frames[slot] = Some(run);
        self.arenas[slot].allocate_first_fit(inner).ok()
    }

    fn arena_of(&self, address: *mut u8) -> Option<usize> {
        self.arenas.iter().position(|arena| {
            arena.size() > 0 && arena.bottom() <= address && address < arena.top()
        })
    }

    /// Gives a grown arena's frames back once nothing is allocated from it.
    fn release_if_empty(&mut self, slot: usize) {
        if self.arenas[slot].used() != 0 {
            return;
        }
        if let Some(run) = self.frames[slot].take() {
            self.arenas[slot] = linked_list_allocator::Heap::empty();
            frames::free(run);
        }
    }

    fn charge(&mut self, owner: u64, bytes: usize) -> u64 {
        if owner == 0 {
            return 0;
        }
        let slot = match self.charges.iter().position(|&(o, _)| o == owner) {
            Some(slot) => slot,
            None => match self.charges.iter().position(|&(o, _)| o == 0) {
                Some(slot) => {
                    self.charges[slot] = (owner, 0);
                    slot
                }
                None => return 0,
            },
        };
        self.charges[slot].1 += bytes;
        owner
    }

    fn uncharge(&mut self, owner: u64, bytes: usize) {
        if let Some(entry) = self
            .charges
            .iter_mut()
            .find(|(o, _)| *o == owner && owner != 0)
        {
            entry.1 = entry.1.saturating_sub(bytes);
            if entry.1 == 0 {
                *entry = (0, 0);
            }
        }
    }

    fn charged(&self, owner: u64) -> usize {
        self.charges
            .iter()
            .find(|&&(o, _)| o == owner && owner != 0)
            .map_or(0, |&(_, bytes)| bytes)
    }
}

// SAFETY: every pointer handed out comes from an arena's `allocate_first_fit`
// for a layout at least as large and as aligned as asked (the header in
// front), and `dealloc` gives the same inner layout back to the arena that
// holds the pointer.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((inner, header)) = with_header(layout) else {
            return core::ptr::null_mut();
        };
        let owner = super::current_owner();
        let mut arenas = self.0.lock();
        let Some(base) = arenas.allocate(inner) else {
            return core::ptr::null_mut();
        };
        let charged = arenas.charge(owner, inner.size());
        // SAFETY: `base` starts `inner.size() >= header >= 8` bytes we own,
        // aligned to at least 16; the caller's part starts `header` bytes on.
        unsafe {
            base.as_ptr().cast::<u64>().write(charged);
            base.as_ptr().add(header)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((inner, header)) = with_header(layout) else {
            return;
        };
        // SAFETY: `ptr` came from `alloc` with this layout, so the header
        // sits `header` bytes before it.
        let (base, owner) = unsafe {
            let base = ptr.sub(header);
            (base, base.cast::<u64>().read())
        };
        let mut arenas = self.0.lock();
        let Some(slot) = arenas.arena_of(base) else {
            drop(arenas);
            panic!("heap: free of {ptr:p}, which no arena holds");
        };
        // SAFETY: `base` was allocated from this arena with `inner`.
        unsafe { arenas.arenas[slot].deallocate(NonNull::new_unchecked(base), inner) };
        arenas.uncharge(owner, inner.size());
        if slot != 0 {
            arenas.release_if_empty(slot);
        }
    }
}

pub fn init() {
    let mut arenas = HEAP.0.lock();
    if arenas.arenas[0].size() == 0 {
        // SAFETY: FIRST_ARENA is used for nothing else, and the size check
        // makes sure it is handed over only once.
        unsafe { arenas.arenas[0].init(FIRST_ARENA.0.get().cast::<u8>(), FIRST_ARENA_SIZE) };
    }
}

/// Bytes currently allocated from the heap, headers included (leak checks).
pub fn used() -> usize {
    HEAP.0.lock().arenas.iter().map(|arena| arena.used()).sum()
}

/// Frames the heap took for grown arenas (so leak checks of frames can
/// tell the heap's growth from a leak).
pub fn grown_frames() -> usize {
    HEAP.0
        .lock()
        .frames
        .iter()
        .flatten()
        .map(|run| run.count)
        .sum()
}

/// Heap bytes charged to `owner` now.
pub fn charged(owner: u64) -> usize {
    HEAP.0.lock().charged(owner)
}

/// Ends `owner`'s account (its task is gone): what is still charged to it
/// is kernel memory from now on, as Linux reparents a removed cgroup's
/// kernel memory. Returns those bytes: room that kernel structures (an
/// emptied map's root node, a list's capacity) kept after the task's
/// objects went; tests bound it.
pub fn reparent(owner: u64) -> usize {
    let mut arenas = HEAP.0.lock();
    let bytes = arenas.charged(owner);
    arenas.uncharge(owner, bytes);
    arenas.reparented += bytes;
    bytes
}

/// Bytes reparented to the kernel so far, over all tasks gone.
pub fn reparented() -> usize {
    HEAP.0.lock().reparented
}

/// Whether `owner` holds its heap quota or more: its next call that
/// allocates is refused.
pub fn over_quota(owner: u64) -> bool {
    let arenas = HEAP.0.lock();
    arenas.charged(owner) >= arenas.quota
}

/// The heap quota of every task (bytes).
pub fn quota() -> usize {
    HEAP.0.lock().quota
}

/// Sets the heap quota of every task; returns the old one.
pub fn set_quota(bytes: usize) -> usize {
    core::mem::replace(&mut HEAP.0.lock().quota, bytes)
}

/// A task's quota, set aside for it while it lives: a task is started only
/// when the heap can back its whole quota besides those of the tasks
/// already alive, so that no task's calls, within their quotas, can run the
/// heap out (and a kernel allocation would panic).
#[derive(Debug)]
pub struct HeapCommitment(usize);

impl HeapCommitment {
    /// Sets the current quota aside; `None` when the tasks alive leave no
    /// room for it.
    pub fn take() -> Option<HeapCommitment> {
        let mut arenas = HEAP.0.lock();
        let quota = arenas.quota;
        let committed = arenas.committed.checked_add(quota)?;
        if committed > COMMITTABLE {
            return None;
        }
        arenas.committed = committed;
        Some(HeapCommitment(quota))
    }
}

impl Drop for HeapCommitment {
    fn drop(&mut self) {
        let mut arenas = HEAP.0.lock();
        arenas.committed = arenas.committed.saturating_sub(self.0);
    }
}
