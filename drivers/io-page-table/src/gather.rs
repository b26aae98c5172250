//! The invalidation gather: what one `map`/`unmap` call changed, so that the IOMMU
//! driver can issue exactly the IOTLB invalidation that covers it (one per call,
//! as Linux's `iommu_iotlb_gather`).

/// The IOVA range and leaf sizes touched by one page-table operation.
///
/// `leaf_sizes` is a bitmap of page sizes (bit `n` set means a leaf of `1 << n`
/// bytes was removed or changed), which lets a driver pick its invalidation
/// granule (VT-d address mask, SMMUv3 TG/TTL, AMD-Vi S bit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gather {
    /// First IOVA covered (inclusive).
    pub start: u64,
    /// Last IOVA covered (inclusive), so that a range ending at `u64::MAX` fits.
    pub last: u64,
    /// Bitmap of leaf sizes seen, bit `n` = `1 << n` bytes.
    pub leaf_sizes: u64,
    /// Whether the walk caches must be invalidated too (e.g. AMD-Vi PDE=1,
    /// VT-d IH=0, SMMUv3 non-leaf TLBI): table pages were unlinked, or (VT-d
    /// caching mode) a map may have made directory entries present.
    pub freed_tables: bool,
}

impl Gather {
    /// True when nothing was touched and no invalidation is owed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.leaf_sizes == 0 && !self.freed_tables
    }

    /// Records a leaf of `size` bytes (a power of two) at `iova`.
    #[inline]
    pub fn add_leaf(&mut self, iova: u64, size: u64) {
        debug_assert!(size.is_power_of_two());
        let last = iova + (size - 1);
        if self.is_empty() {
            self.start = iova;
            self.last = last;
        } else {
            self.start = self.start.min(iova);
            self.last = self.last.max(last);
        }
        self.leaf_sizes |= size;
    }

    /// Number of bytes the covered range spans (saturating for the full 2^64 range).
    #[inline]
    pub fn span(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            (self.last - self.start).saturating_add(1)
        }
    }

    /// The smallest leaf size seen, or `None` for an empty gather.
    #[inline]
    pub fn min_leaf_size(&self) -> Option<u64> {
        (self.leaf_sizes != 0).then(|| 1u64 << self.leaf_sizes.trailing_zeros())
    }
}

impl Gather {
    /// Records that the table covering `[start, last]` was unlinked: the walk
    /// caches for that range must go too.
    #[inline]
    pub fn add_freed_table(&mut self, start: u64, last: u64) {
        if self.is_empty() {
            self.start = start;
            self.last = last;
        } else {
            self.start = self.start.min(start);
            self.last = self.last.max(last);
        }
        self.freed_tables = true;
    }
}
