//! A table-page allocator over the global heap, for host tests and benchmarks
//! (also usable by other crates' host tests).
//!
//! Pages are carved from 2 MiB chunks and given *fake* physical addresses
//! (`PHYS_BASE + chunk × 2 MiB + offset`), so code that confuses physical and
//! virtual addresses fails here instead of passing by luck. It counts live pages,
//! can fail the n-th allocation, poisons freed pages, and can keep a "device view"
//! of every table that is only updated by `clean_for_device`, to check that a
//! non-coherent table publishes every change it makes.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use spin::Mutex;

use crate::table_alloc::TableAlloc;

const CHUNK_SHIFT: u32 = 21;
const CHUNK_BYTES: usize = 1 << CHUNK_SHIFT;
/// Chunks one allocator can hold (8 GiB of table pages): the directory is
/// fixed so that `phys_to_virt` never races with its growth.
const MAX_CHUNKS: usize = 4096;
/// First fake physical address handed out (4 GiB: above any 32-bit confusion).
pub const PHYS_BASE: u64 = 0x1_0000_0000;
/// Byte written over freed pages, so a walk through a freed table misbehaves visibly.
pub const POISON: u8 = 0xa5;
/// `fail_at` value meaning "no injected failure".
const NEVER: usize = usize::MAX;

/// The allocator's bookkeeping, changed only under its lock.
struct Free {
    /// Offset of the next unused byte of the newest chunk.
    bump: usize,
    /// Chunks in the directory.
    chunks: usize,
    /// Freed pages by size, handed out again before the bump moves.
    pages: BTreeMap<usize, Vec<u64>>,
}

/// Heap-backed [`TableAlloc`] with counters and fault injection. Every method
/// takes `&self` and may be called from several threads at once: allocation
/// and freeing under a spin lock, `phys_to_virt` lock-free through a fixed
/// directory of chunks that are never moved or released before the drop.
pub struct HeapTableAlloc {
    /// Chunk `i` covers fake physical `PHYS_BASE + i × 2 MiB`; null until made.
    memory: Box<[AtomicPtr<u8>]>,
    /// The device's view of each chunk, for non-coherent simulation.
    shadow: Option<Box<[AtomicPtr<u8>]>>,
    free: Mutex<Free>,
    live_pages: AtomicUsize,
    allocs: AtomicUsize,
    fail_at: AtomicUsize,
    cleaned_bytes: AtomicUsize,
}

impl Default for HeapTableAlloc {
    fn default() -> Self {
        Self::new()
    }
}

fn directory() -> Box<[AtomicPtr<u8>]> {
    (0..MAX_CHUNKS)
        .map(|_| AtomicPtr::new(ptr::null_mut()))
        .collect()
}

impl HeapTableAlloc {
    /// An allocator for coherent tables.
    pub fn new() -> Self {
        Self::with_shadow(None)
    }

    fn with_shadow(shadow: Option<Box<[AtomicPtr<u8>]>>) -> Self {
        Self {
            memory: directory(),
            shadow,
            free: Mutex::new(Free {
                bump: CHUNK_BYTES,
                chunks: 0,
                pages: BTreeMap::new(),
            }),
            live_pages: AtomicUsize::new(0),
            allocs: AtomicUsize::new(0),
            fail_at: AtomicUsize::new(NEVER),
            cleaned_bytes: AtomicUsize::new(0),
        }
    }

    /// An allocator that also keeps the device's view of memory, updated only by
    /// `clean_for_device` (read it with [`Self::device_read`]).
    pub fn with_device_view() -> Self {
        Self::with_shadow(Some(directory()))
    }

    /// Makes the allocation call with index `n` (0-based, counting every call
    /// from now on, successful or not) fail; `None` disables injection.
    pub fn fail_at(&mut self, n: Option<usize>) {
        let now = self.allocs.load(Ordering::Relaxed);
        self.fail_at
            .store(n.map_or(NEVER, |n| now + n), Ordering::Relaxed);
    }

    /// Table pages currently allocated.
    pub fn live_pages(&self) -> usize {
        self.live_pages.load(Ordering::Relaxed)
    }

    /// Allocation calls so far (including failed ones).
    pub fn alloc_calls(&self) -> usize {
        self.allocs.load(Ordering::Relaxed)
    }

    /// Bytes passed to `clean_for_device` so far.
    pub fn cleaned_bytes(&self) -> usize {
        self.cleaned_bytes.load(Ordering::Relaxed)
    }

    /// Reads the 8 bytes at `phys` as the CPU sees them.
    pub fn cpu_read(&self, phys: u64) -> u64 {
        // SAFETY: `locate` returns a pointer inside a live chunk; table entries are
        // 8-byte aligned because every page is.
        unsafe { self.locate(phys).cast::<u64>().read_volatile() }
    }

    /// Reads the 8 bytes at `phys` as a non-snooping device would: the last
    /// cleaned value (or the CPU's view when there is no device view).
    pub fn device_read(&self, phys: u64) -> u64 {
        let Some(shadow) = &self.shadow else {
            return self.cpu_read(phys);
        };
        let (chunk, offset) = split(phys);
        let base = shadow[chunk].load(Ordering::Acquire);
        // SAFETY: the offset is inside the chunk's shadow (same size as the chunk).
        unsafe { base.add(offset).cast::<u64>().read() }
    }

    #[inline(always)]
    fn locate(&self, phys: u64) -> NonNull<u8> {
        let (chunk, offset) = split(phys);
        let base = self.memory[chunk].load(Ordering::Acquire);
        // SAFETY: `phys` lies in a page this allocator handed out, so its chunk
        // exists and the offset (below CHUNK_BYTES) is inside it.
        unsafe { NonNull::new_unchecked(base.add(offset)) }
    }

    /// A page of `bytes`, recycled or fresh: zeroed when `zeroed`, else as
    /// freed (poisoned) or poisoned.
    fn alloc_page(&self, bytes: usize, zeroed: bool) -> Option<u64> {
        let call = self.allocs.fetch_add(1, Ordering::Relaxed);
        if self.fail_at.load(Ordering::Relaxed) == call
            || !bytes.is_power_of_two()
            || bytes > CHUNK_BYTES / 2
        {
            return None;
        }
        let mut free = self.free.lock();
        if let Some(phys) = free.pages.get_mut(&bytes).and_then(Vec::pop) {
            drop(free);
            if zeroed {
                let virt = self.locate(phys);
                // SAFETY: the page is ours now (it was freed to us) and `bytes` long.
                unsafe { virt.as_ptr().write_bytes(0, bytes) };
            }
            self.live_pages.fetch_add(1, Ordering::Relaxed);
            return Some(phys);
        }
        let mut offset = free.bump.next_multiple_of(bytes);
        if offset + bytes > CHUNK_BYTES {
            self.new_chunk(&mut free)?;
            offset = 0;
        }
        free.bump = offset + bytes;
        self.live_pages.fetch_add(1, Ordering::Relaxed);
        let chunk = (free.chunks - 1) as u64;
        let phys = PHYS_BASE + (chunk << CHUNK_SHIFT) + offset as u64;
        drop(free);
        if !zeroed {
            // Fresh pages are zero; one asked for as it comes gets poison,
            // so that a table that relies on zeroes there shows it.
            // SAFETY: the page is ours now and `bytes` long.
            unsafe { self.locate(phys).as_ptr().write_bytes(POISON, bytes) };
        }
        Some(phys)
    }

    fn chunk_layout() -> Layout {
        // A 2 MiB, 64 KiB-aligned block: every table size up to 1 MiB fits aligned.
        match Layout::from_size_align(CHUNK_BYTES, 1 << 16) {
            Ok(layout) => layout,
            Err(_) => unreachable!("constant layout is valid"),
        }
    }

    /// Adds a chunk to the directory (under the lock).
    fn new_chunk(&self, free: &mut Free) -> Option<()> {
        if free.chunks == MAX_CHUNKS {
            return None;
        }
        let layout = Self::chunk_layout();
        // SAFETY: the layout has a non-zero size.
        let memory = unsafe { alloc_zeroed(layout) };
        if memory.is_null() {
            return None;
        }
        if let Some(shadow) = &self.shadow {
            // SAFETY: as above.
            let view = unsafe { alloc_zeroed(layout) };
            if view.is_null() {
                // SAFETY: allocated just now with this layout, never shared.
                unsafe { dealloc(memory, layout) };
                return None;
            }
            shadow[free.chunks].store(view, Ordering::Release);
        }
        // Release: a thread that learns a page's address from a table entry
        // finds the chunk published.
        self.memory[free.chunks].store(memory, Ordering::Release);
        free.chunks += 1;
        free.bump = 0;
        Some(())
    }
}

/// The chunk index and byte offset of fake physical address `phys`.
#[inline(always)]
fn split(phys: u64) -> (usize, usize) {
    let offset = (phys - PHYS_BASE) as usize;
    (offset >> CHUNK_SHIFT, offset & (CHUNK_BYTES - 1))
}

// SAFETY: `alloc_table`'s pages are zeroed (fresh chunks come from
// `alloc_zeroed`, recycled pages are cleared in `alloc_page`), and only
// `alloc_table_uninit`'s are not; aligned to their size (chunks are 64 KiB
// aligned in memory and 2 MiB aligned in the fake physical space, and the bump
// offset is rounded up to the size, so both views are aligned for every size up
// to 64 KiB, and the physical view for sizes up to 1 MiB); exclusive until freed
// (the lock hands each page to one caller); and reachable through
// `phys_to_virt` because chunks are never moved or released before the
// allocator is dropped.
unsafe impl TableAlloc for HeapTableAlloc {
    fn alloc_table(&self, bytes: usize) -> Option<u64> {
        self.alloc_page(bytes, true)
    }

    /// A recycled page as it was freed (poisoned), or a fresh one: a table
    /// that links a page before writing every entry of it walks into poison.
    fn alloc_table_uninit(&self, bytes: usize) -> Option<u64> {
        self.alloc_page(bytes, false)
    }

    unsafe fn free_table(&self, phys: u64, bytes: usize) {
        let virt = self.locate(phys);
        // SAFETY: the caller returns a page it got from `alloc_table(bytes)`,
        // which nobody reaches any more.
        unsafe { virt.as_ptr().write_bytes(POISON, bytes) };
        self.free.lock().pages.entry(bytes).or_default().push(phys);
        self.live_pages.fetch_sub(1, Ordering::Relaxed);
    }

    #[inline(always)]
    fn phys_to_virt(&self, phys: u64) -> NonNull<u8> {
        self.locate(phys)
    }

    fn clean_for_device(&self, virt: NonNull<u8>, bytes: usize) {
        self.cleaned_bytes.fetch_add(bytes, Ordering::Relaxed);
        let Some(shadow) = &self.shadow else { return };
        let addr = virt.as_ptr() as usize;
        for (memory, view) in self.memory.iter().zip(shadow.iter()) {
            let base = memory.load(Ordering::Acquire);
            if base.is_null() {
                return;
            }
            let base = base as usize;
            if addr >= base && addr + bytes <= base + CHUNK_BYTES {
                let view = view.load(Ordering::Acquire);
                // SAFETY: both ranges lie inside same-sized, distinct allocations.
                unsafe { ptr::copy_nonoverlapping(virt.as_ptr(), view.add(addr - base), bytes) };
                return;
            }
        }
    }
}

impl Drop for HeapTableAlloc {
    fn drop(&mut self) {
        let layout = Self::chunk_layout();
        let views = self.shadow.iter().flat_map(|s| s.iter());
        for chunk in self.memory.iter().chain(views) {
            let memory = chunk.load(Ordering::Relaxed);
            if !memory.is_null() {
                // SAFETY: each chunk (and view) was allocated with this layout
                // and nothing reaches it after the drop.
                unsafe { dealloc(memory, layout) };
            }
        }
    }
}
