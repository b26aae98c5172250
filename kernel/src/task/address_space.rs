//! A task's address space: its own top-level table, sharing every kernel
//! entry of the boot tables (present but not user-accessible: x86 US=0,
//! aarch64 AP=00 + UXN on the boot map), with the user region (top-level slot
//! 1, `abi::syscall::USER_BASE..USER_END`) mapped from 4 KiB pages the space
//! owns. Both architectures use 4-level tables of 512 entries with 4 KiB
//! pages (x86-64 4-level paging, SDM Vol. 3A §4.5; VMSAv8-64 with a 4 KiB
//! granule and 48-bit VA, ARM ARM D8.2), so the walk is shared and only the
//! entry encodings come from `arch::user`.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use abi::Errno;
use abi::syscall::{PAGE_SIZE, USER_BASE, USER_END};

use super::Access;
use crate::arch::user as arch;
use crate::memory::frames::{self, Frames};

const ENTRIES: usize = 512;
const LEVELS: u32 = 4;
const PAGE_SHIFT: u32 = 12;
const INDEX_BITS: u32 = 9;
/// The top-level slot of the user region.
const USER_SLOT: usize = (USER_BASE >> (PAGE_SHIFT + INDEX_BITS * (LEVELS - 1))) as usize;

/// A mapped user page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub phys: u64,
    pub access: Access,
}

pub struct AddressSpace {
    root: u64,
    /// Every intermediate table below the root, freed with the space.
    tables: Vec<u64>,
    /// Every user page, by virtual address; the space owns their frames.
    pages: BTreeMap<u64, Page>,
    /// Device registers mapped into the space, by virtual address. The space
    /// does not own them (they are never freed), and they are not in `pages`,
    /// so the kernel never copies from or to them on a task's behalf.
    devices: BTreeMap<u64, u64>,
}

fn table(phys: u64) -> *mut u64 {
    phys as *mut u64
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (PAGE_SHIFT + INDEX_BITS * (LEVELS - 1 - level))) as usize) & (ENTRIES - 1)
}

fn free_frame(phys: u64) {
    frames::free(Frames { phys, count: 1 });
}

impl AddressSpace {
    /// A space with the kernel's mappings (copied from `kernel_root`) and an
    /// empty user region.
    pub fn new(kernel_root: u64) -> Result<Self, Errno> {
        let root = frames::alloc().ok_or(Errno::ENOMEM)?.phys;
        // SAFETY: both are 4 KiB tables in identity-mapped RAM; `root` is a
        // fresh frame nobody else uses, `kernel_root` is only read.
        unsafe {
            core::ptr::copy_nonoverlapping(table(kernel_root), table(root), ENTRIES);
            if arch::entry_present(*table(root).add(USER_SLOT)) {
                free_frame(root);
                panic!("the kernel's tables use the user slot");
            }
        }
        Ok(AddressSpace {
            root,
            tables: Vec::new(),
            pages: BTreeMap::new(),
            devices: BTreeMap::new(),
        })
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    /// The page mapped at `va` (page-aligned), if any.
    pub fn page(&self, va: u64) -> Option<Page> {
        self.pages.get(&va).copied()
    }

    /// Maps a fresh zeroed frame at `va` (page-aligned, in the user region,
    /// not yet mapped) and returns its physical address.
    pub fn map_new(&mut self, va: u64, access: Access) -> Result<u64, Errno> {
        self.map_frame(va, access, || frames::alloc().map(|frame| frame.phys))
    }

    /// Maps the zeroed frame `frame` gives at `va` (page-aligned, in the user
    /// region, not yet mapped) and returns its physical address; the frame
    /// is the space's from then on. `frame` is asked only once the page can
    /// be mapped (its leaf table exists): on `Err` nothing was taken.
    pub fn map_frame(
        &mut self,
        va: u64,
        access: Access,
        frame: impl FnOnce() -> Option<u64>,
    ) -> Result<u64, Errno> {
        if !va.is_multiple_of(PAGE_SIZE)
            || !(USER_BASE..USER_END).contains(&va)
            || self.pages.contains_key(&va)
        {
            return Err(Errno::EINVAL);
        }
        let leaf_table = self.leaf_table(va)?;
        let phys = frame().ok_or(Errno::ENOMEM)?;
        // SAFETY: `leaf_table` is a table of this space; the slot is free
        // (`pages` has no entry for `va`).
        unsafe { *table(leaf_table).add(index(va, LEVELS - 1)) = arch::page_entry(phys, access) };
        self.pages.insert(va, Page { phys, access });
        Ok(phys)
    }

    /// Maps the device registers at `phys` (a page) at `va`, uncached.
    pub fn map_device(&mut self, va: u64, phys: u64) -> Result<(), Errno> {
        if !va.is_multiple_of(PAGE_SIZE)
            || !phys.is_multiple_of(PAGE_SIZE)
            || !(USER_BASE..USER_END).contains(&va)
            || self.pages.contains_key(&va)
            || self.devices.contains_key(&va)
        {
            return Err(Errno::EINVAL);
        }
        let leaf_table = self.leaf_table(va)?;
        // SAFETY: `leaf_table` is a table of this space and the slot is free.
        unsafe { *table(leaf_table).add(index(va, LEVELS - 1)) = arch::device_page_entry(phys) };
        self.devices.insert(va, phys);
        Ok(())
    }

    /// Removes the mapping at `va` and returns its frame, which the caller
    /// frees once stale translations are flushed.
    pub fn unmap(&mut self, va: u64) -> Option<u64> {
        let page = self.pages.remove(&va)?;
        self.clear_leaf(va);
        Some(page.phys)
    }

    /// Removes the device page mapped at `va` and returns its physical
    /// address. The caller flushes the TLB before the page may be handed to
    /// anybody else (another task's device window).
    pub fn unmap_device(&mut self, va: u64) -> Option<u64> {
        let phys = self.devices.remove(&va)?;
        self.clear_leaf(va);
        Some(phys)
    }

    /// Clears the leaf entry of `va`, a page this space maps (every level
    /// of its walk is present).
    fn clear_leaf(&mut self, va: u64) {
        let mut level_table = self.root;
        for level in 0..LEVELS - 1 {
            // SAFETY: the walk follows tables of this space (the page exists,
            // so every level is present).
            let entry = unsafe { *table(level_table).add(index(va, level)) };
            level_table = arch::entry_address(entry);
        }
        // SAFETY: the leaf slot of a page this space mapped.
        unsafe { *table(level_table).add(index(va, LEVELS - 1)) = 0 };
    }

    /// The last-level table for `va`, creating the levels on the way.
    fn leaf_table(&mut self, va: u64) -> Result<u64, Errno> {
        let mut level_table = self.root;
        for level in 0..LEVELS - 1 {
            // SAFETY: `level_table` is a table of this space.
            let slot = unsafe { table(level_table).add(index(va, level)) };
            // SAFETY: as above.
            let entry = unsafe { *slot };
            level_table = if arch::entry_present(entry) {
                arch::entry_address(entry)
            } else {
                let next = frames::alloc().ok_or(Errno::ENOMEM)?.phys;
                self.tables.push(next);
                // SAFETY: as above; the new table is zeroed (no entries).
                unsafe { *slot = arch::table_entry(next) };
                next
            };
        }
        Ok(level_table)
    }

    /// Checks that `[va, va + len)` lies in user pages with `access` and
    /// returns its pieces as (physical address, length), page by page.
    pub fn user_range(
        &self,
        va: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<(u64, usize)>, Errno> {
        let end = va.checked_add(len).ok_or(Errno::EFAULT)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if va < USER_BASE || end > USER_END {
            return Err(Errno::EFAULT);
        }
        let mut pieces = Vec::new();
        let mut at = va;
        while at < end {
            let page_va = at & !(PAGE_SIZE - 1);
            let page = self.page(page_va).ok_or(Errno::EFAULT)?;
            if !page.access.allows(access) {
                return Err(Errno::EFAULT);
            }
            let piece_end = (page_va + PAGE_SIZE).min(end);
            pieces.push((page.phys + (at - page_va), (piece_end - at) as usize));
            at = piece_end;
        }
        Ok(pieces)
    }
}

impl Drop for AddressSpace {
    /// Returns every frame. The space must not be the active one.
    fn drop(&mut self) {
        debug_assert_ne!(
            arch::current_root(),
            self.root,
            "dropping the active address space"
        );
        for page in self.pages.values() {
            free_frame(page.phys);
        }
        for &table in &self.tables {
            free_frame(table);
        }
        free_frame(self.root);
    }
}
