//! Device-visible memory for drivers, from the frame allocator, charged to
//! the task it is allocated for.
//!
//! IO page tables and device structures (context tables, stream-table
//! levels, interrupt tables) grow with what a task maps and opens, and they
//! come out of the same frames every task needs. So while the iommufd
//! service works for a task ([`super::charge_to`]), every region allocated here is
//! charged to that task, up to its limit ([`set_limit`]): past it the
//! allocation fails, the driver reports it (`IommuError::NoMemory`) and the
//! task's call fails with ENOMEM, while the other tasks go on. A region is
//! uncharged when it is freed, whoever frees it.

use alloc::collections::BTreeMap;

use os_services::{DmaMemory, DmaRegion};

use super::frames::{self, FRAME_SIZE, Frames};

/// The kernel's implementation of [`DmaMemory`]: zeroed, physically
/// contiguous frames; identity-mapped, so phys == virt.
pub struct KernelDma;

pub static DMA: KernelDma = KernelDma;

/// Pages one task may hold by default (16 MiB).
pub const DEFAULT_LIMIT_PAGES: usize = 4096;

struct Charges {
    limit: usize,
    per_owner: BTreeMap<u64, usize>,
    /// Every charged region: its owner and its pages.
    regions: BTreeMap<u64, (u64, usize)>,
}

static CHARGES: spin::Mutex<Charges> = spin::Mutex::new(Charges {
    limit: DEFAULT_LIMIT_PAGES,
    per_owner: BTreeMap::new(),
    regions: BTreeMap::new(),
});

/// Sets how many pages one task may hold; returns the old limit.
pub fn set_limit(pages: usize) -> usize {
    core::mem::replace(&mut CHARGES.lock().limit, pages)
}

/// How many pages one task may hold.
pub fn limit() -> usize {
    CHARGES.lock().limit
}

/// Pages charged to `owner` now (leak checks and tests).
pub fn charged_pages(owner: u64) -> usize {
    CHARGES.lock().per_owner.get(&owner).copied().unwrap_or(0)
}

impl KernelDma {
    /// Frames for `len` bytes, charged to the task the service works for:
    /// `take` gets them (zeroed or not) once the charge fits.
    fn charged(
        &self,
        len: usize,
        align: usize,
        take: fn(usize, usize) -> Option<Frames>,
    ) -> Option<DmaRegion> {
        let count = len.div_ceil(FRAME_SIZE).max(1);
        let mut charges = CHARGES.lock();
        let owner = Some(super::current_owner()).filter(|&owner| owner != 0);
        if let Some(owner) = owner {
            let held = charges.per_owner.get(&owner).copied().unwrap_or(0);
            if held.saturating_add(count) > charges.limit {
                return None;
            }
        }
        let frames = take(count, align.max(FRAME_SIZE))?;
        if let Some(owner) = owner {
            *charges.per_owner.entry(owner).or_default() += count;
            charges.regions.insert(frames.phys, (owner, count));
        }
        Some(DmaRegion {
            phys: frames.phys,
            virt: frames.as_mut_ptr(),
            len: frames.len(),
        })
    }
}

impl DmaMemory for KernelDma {
    fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.charged(len, align, frames::alloc_contiguous)
    }

    /// Frames as another task or the kernel left them: only for IO page
    /// tables that `io-page-table` writes whole before linking.
    fn alloc_uninit(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.charged(len, align, frames::alloc_contiguous_uninit)
    }

    fn free(&self, region: DmaRegion) {
        {
            let mut charges = CHARGES.lock();
            if let Some((owner, pages)) = charges.regions.remove(&region.phys)
                && let Some(held) = charges.per_owner.get_mut(&owner)
            {
                *held = held.saturating_sub(pages);
                if *held == 0 {
                    charges.per_owner.remove(&owner);
                }
            }
        }
        frames::free(Frames {
            phys: region.phys,
            count: region.len / FRAME_SIZE,
        });
    }

    fn phys_to_virt(&self, phys: u64) -> *mut u8 {
        phys as *mut u8
    }
}
