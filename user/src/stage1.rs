//! A task's own SMMUv3 stage 1 (nesting, SMMUv3 §3.3.2 and §5.4): table
//! pages and Context Descriptors in the task's memory, addressed by IPA
//! (their IOVA in the NEST_PARENT HWPT's IOAS, which the kernel's stage 2
//! translates). What the `nested` and `viommu` programs share.

use core::cell::Cell;
use core::ops::Range;
use core::ptr::NonNull;

use io_page_table::{ArmLpae, PageTable, TableAlloc};

/// Bytes of a page of the pool.
pub const PAGE: u64 = 4096;
/// Most pages a pool may have.
pub const MAX_POOL_PAGES: usize = 64;

/// Pages of the task's memory (`mem_alloc`) that hold its stage 1, its CDs
/// and the data its devices reach.
pub struct Pool {
    va: *mut u8,
    pages: usize,
}

impl Pool {
    /// `pages` fresh pages (at most [`MAX_POOL_PAGES`]).
    pub fn alloc(pages: usize) -> Result<Self, abi::Errno> {
        if pages > MAX_POOL_PAGES {
            return Err(abi::Errno::EINVAL);
        }
        Ok(Self {
            va: crate::mem_alloc(pages)?,
            pages,
        })
    }

    /// The task address of the first page (what `ioas_map` maps).
    pub fn address(&self) -> u64 {
        self.va as u64
    }

    /// Page `index` of the pool.
    pub fn page(&self, index: usize) -> &'static mut [u8] {
        assert!(
            index < self.pages,
            "page {index} of a pool of {}",
            self.pages
        );
        // SAFETY: the pool is `pages` writable pages mem_alloc gave this task,
        // never freed while the program runs, and `index` is one of them.
        unsafe {
            core::slice::from_raw_parts_mut(self.va.add(index * PAGE as usize), PAGE as usize)
        }
    }
}

/// Stage-1 table pages from one range of a pool, addressed by IPA.
pub struct PoolTables {
    va: *mut u8,
    ipa: u64,
    pages: Range<usize>,
    used: [Cell<bool>; MAX_POOL_PAGES],
}

impl PoolTables {
    /// Tables from pages `pages` of `pool`, which the parent IOAS maps at
    /// `ipa`.
    pub fn new(pool: &Pool, ipa: u64, pages: Range<usize>) -> Self {
        assert!(pages.end <= pool.pages, "tables beyond the pool");
        Self {
            va: pool.va,
            ipa,
            pages,
            used: [const { Cell::new(false) }; MAX_POOL_PAGES],
        }
    }
}

// SAFETY: every page handed out is a zeroed page of this task's pool, used by
// nothing else until it is freed; phys_to_virt maps an IPA inside the pool
// back to its task address; the SMMU walks coherently (the kernel refuses
// nesting on an SMMU that does not snoop).
unsafe impl TableAlloc for PoolTables {
    fn alloc_table(&self, bytes: usize) -> Option<u64> {
        if bytes != PAGE as usize {
            return None;
        }
        let index = self.pages.clone().find(|&i| !self.used[i].get())?;
        self.used[index].set(true);
        // SAFETY: `index` is a page of the pool `new` was given.
        unsafe {
            core::ptr::write_bytes(self.va.add(index * PAGE as usize), 0, PAGE as usize);
        }
        Some(self.ipa + index as u64 * PAGE)
    }

    unsafe fn free_table(&self, phys: u64, _bytes: usize) {
        self.used[((phys - self.ipa) / PAGE) as usize].set(false);
    }

    fn phys_to_virt(&self, phys: u64) -> NonNull<u8> {
        // SAFETY: `phys` lies in the pool (the table only asks about pages it
        // was given), so the offset stays inside the pool's mapping.
        let va = unsafe { self.va.add((phys - self.ipa) as usize) };
        NonNull::new(va).unwrap_or(NonNull::dangling())
    }
}

/// Writes the CD of stage-1 `table` with `asid` into pool page `at` (4 KiB
/// granule, 48-bit input); `Err` when the CD cannot encode it.
pub fn write_cd(
    pool: &Pool,
    at: usize,
    table: &PageTable<ArmLpae, PoolTables>,
    asid: u16,
) -> Result<(), smmuv3::CdError> {
    let fields = table.format().stage1_fields();
    let cd = smmuv3::Cd::stage1(&smmuv3::Stage1Config {
        asid,
        root: table.root_phys(),
        granule: smmuv3::Granule::K4,
        ias_bits: 48,
        ips_encoding: u32::from(fields.ips),
        mair: fields.mair,
    })?;
    let words = pool.page(at).as_mut_ptr().cast::<u64>();
    for (index, word) in cd.0.iter().enumerate() {
        // SAFETY: the CD page is this task's, 8-byte aligned, 4 KiB long.
        unsafe { words.add(index).write_volatile(*word) };
    }
    Ok(())
}
