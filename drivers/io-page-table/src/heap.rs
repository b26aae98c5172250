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
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ptr::NonNull;

use crate::table_alloc::TableAlloc;

const CHUNK_SHIFT: u32 = 21;
const CHUNK_BYTES: usize = 1 << CHUNK_SHIFT;
/// First fake physical address handed out (4 GiB: above any 32-bit confusion).
pub const PHYS_BASE: u64 = 0x1_0000_0000;
/// Byte written over freed pages, so a walk through a freed table misbehaves visibly.
pub const POISON: u8 = 0xa5;

struct Chunk {
    memory: NonNull<u8>,
    /// The device's view for non-coherent simulation (only with `device_view`).
    shadow: Option<NonNull<u8>>,
}

/// Heap-backed [`TableAlloc`] with counters and fault injection.
pub struct HeapTableAlloc {
    chunks: Vec<Chunk>,
    bump: usize,
    free: BTreeMap<usize, Vec<u64>>,
    live_pages: usize,
    allocs: usize,
    fail_at: Option<usize>,
    device_view: bool,
    cleaned_bytes: Cell<usize>,
}

impl Default for HeapTableAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapTableAlloc {
    /// An allocator for coherent tables.
    pub fn new() -> Self {
        Self {
            chunks: Vec::new(),
            bump: CHUNK_BYTES,
            free: BTreeMap::new(),
            live_pages: 0,
            allocs: 0,
            fail_at: None,
            device_view: false,
            cleaned_bytes: Cell::new(0),
        }
    }

    /// An allocator that also keeps the device's view of memory, updated only by
    /// `clean_for_device` (read it with [`Self::device_read`]).
    pub fn with_device_view() -> Self {
        let mut alloc = Self::new();
        alloc.device_view = true;
        alloc
    }

    /// Makes the allocation call with index `n` (0-based, counting every call
    /// from now on, successful or not) fail; `None` disables injection.
    pub fn fail_at(&mut self, n: Option<usize>) {
        self.fail_at = n.map(|n| self.allocs + n);
    }

    /// Table pages currently allocated.
    pub fn live_pages(&self) -> usize {
        self.live_pages
    }

    /// Allocation calls so far (including failed ones).
    pub fn alloc_calls(&self) -> usize {
        self.allocs
    }

    /// Bytes passed to `clean_for_device` so far.
    pub fn cleaned_bytes(&self) -> usize {
        self.cleaned_bytes.get()
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
        let off = phys - PHYS_BASE;
        let chunk = &self.chunks[(off >> CHUNK_SHIFT) as usize];
        match chunk.shadow {
            // SAFETY: the offset is inside the chunk's shadow (same size as the chunk).
            Some(shadow) => unsafe {
                shadow
                    .as_ptr()
                    .add((off as usize) & (CHUNK_BYTES - 1))
                    .cast::<u64>()
                    .read()
            },
            None => self.cpu_read(phys),
        }
    }

    fn locate(&self, phys: u64) -> NonNull<u8> {
        let off = phys - PHYS_BASE;
        let chunk = &self.chunks[(off >> CHUNK_SHIFT) as usize];
        // SAFETY: the offset is below CHUNK_BYTES, inside the chunk's allocation.
        unsafe { chunk.memory.add((off as usize) & (CHUNK_BYTES - 1)) }
    }

    fn chunk_layout() -> Layout {
        // A 2 MiB, 64 KiB-aligned block: every table size up to 1 MiB fits aligned.
        match Layout::from_size_align(CHUNK_BYTES, 1 << 16) {
            Ok(layout) => layout,
            Err(_) => unreachable!("constant layout is valid"),
        }
    }

    fn new_chunk(&mut self) -> Option<()> {
        let layout = Self::chunk_layout();
        // SAFETY: the layout has a non-zero size.
        let memory = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        let shadow = if self.device_view {
            // SAFETY: as above.
            Some(NonNull::new(unsafe { alloc_zeroed(layout) })?)
        } else {
            None
        };
        self.chunks.push(Chunk { memory, shadow });
        self.bump = 0;
        Some(())
    }
}

// SAFETY: pages are zeroed (fresh chunks come from `alloc_zeroed`, recycled
// pages are cleared in `alloc_table`); aligned to their size (chunks are 64 KiB
// aligned in memory and 2 MiB aligned in the fake physical space, and the bump
// offset is rounded up to the size, so both views are aligned for every size up
// to 64 KiB, and the physical view for sizes up to 1 MiB); exclusive until freed;
// and reachable through `phys_to_virt` because chunks are never released before
// the allocator is dropped.
unsafe impl TableAlloc for HeapTableAlloc {
    fn alloc_table(&mut self, bytes: usize) -> Option<u64> {
        let call = self.allocs;
        self.allocs += 1;
        if self.fail_at == Some(call) || !bytes.is_power_of_two() || bytes > CHUNK_BYTES / 2 {
            return None;
        }
        if let Some(phys) = self.free.get_mut(&bytes).and_then(Vec::pop) {
            let virt = self.locate(phys);
            // SAFETY: the page is ours (it was freed to us) and `bytes` long.
            unsafe { virt.as_ptr().write_bytes(0, bytes) };
            self.live_pages += 1;
            return Some(phys);
        }
        let mut offset = self.bump.next_multiple_of(bytes);
        if offset + bytes > CHUNK_BYTES {
            self.new_chunk()?;
            offset = 0;
        }
        self.bump = offset + bytes;
        self.live_pages += 1;
        let chunk = (self.chunks.len() - 1) as u64;
        Some(PHYS_BASE + (chunk << CHUNK_SHIFT) + offset as u64)
    }

    unsafe fn free_table(&mut self, phys: u64, bytes: usize) {
        let virt = self.locate(phys);
        // SAFETY: the caller returns a page it got from `alloc_table(bytes)`.
        unsafe { virt.as_ptr().write_bytes(POISON, bytes) };
        self.free.entry(bytes).or_default().push(phys);
        self.live_pages -= 1;
    }

    fn phys_to_virt(&self, phys: u64) -> NonNull<u8> {
        self.locate(phys)
    }

    fn clean_for_device(&self, virt: NonNull<u8>, bytes: usize) {
        self.cleaned_bytes.set(self.cleaned_bytes.get() + bytes);
        for chunk in &self.chunks {
            let Some(shadow) = chunk.shadow else { continue };
            let base = chunk.memory.as_ptr() as usize;
            let addr = virt.as_ptr() as usize;
            if addr >= base && addr + bytes <= base + CHUNK_BYTES {
                // SAFETY: both ranges lie inside same-sized, distinct allocations.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        virt.as_ptr(),
                        shadow.as_ptr().add(addr - base),
                        bytes,
                    )
                };
                return;
            }
        }
    }
}

// SAFETY: the allocator exclusively owns its chunks (the raw pointers are the
// only handles to them), so moving it to another thread moves that ownership.
unsafe impl Send for HeapTableAlloc {}

impl Drop for HeapTableAlloc {
    fn drop(&mut self) {
        let layout = Self::chunk_layout();
        for chunk in &self.chunks {
            // SAFETY: each chunk (and shadow) was allocated with this layout.
            unsafe {
                dealloc(chunk.memory.as_ptr(), layout);
                if let Some(shadow) = chunk.shadow {
                    dealloc(shadow.as_ptr(), layout);
                }
            }
        }
    }
}
