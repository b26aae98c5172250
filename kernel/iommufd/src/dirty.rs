//! Dirty tracking (Linux `iommufd_hwpt_set_dirty_tracking`,
//! `iommufd_hwpt_get_dirty_bitmap` → `iopt_read_and_clear_dirty_data`): the
//! unit's hardware records which pages its devices write through a paging
//! HWPT; a task reads that as a bitmap, clearing it or not.

use alloc::vec;
use alloc::vec::Vec;

use abi::{DIRTY_BITMAP_MAX_BITS, Errno};
use iommu::IommuUnit;

use crate::{HwptKind, Iommufd, ObjId, OwnerId, PAGE_SIZE, Services, errno};

/// What `hwpt_get_dirty_bitmap` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyRange {
    /// The first IOVA (a multiple of `page_size`).
    pub iova: u64,
    /// How many bytes (a multiple of `page_size`).
    pub length: u64,
    /// A power of two, at least [`PAGE_SIZE`]: one bit each.
    pub page_size: u64,
    /// Read without clearing (`NO_CLEAR`).
    pub keep: bool,
}

impl DirtyRange {
    /// Bits the bitmap has: `EINVAL` for a page size that is no power of two
    /// or below 4 KiB, a range not made of whole pages or empty, or more than
    /// [`DIRTY_BITMAP_MAX_BITS`] pages (Linux `iommufd_check_iova_range`).
    pub fn bits(&self) -> Result<u64, Errno> {
        let page = self.page_size;
        if !page.is_power_of_two()
            || page < PAGE_SIZE
            || self.length == 0
            || (self.iova | self.length) & (page - 1) != 0
            || self.iova.checked_add(self.length - 1).is_none()
        {
            return Err(Errno::EINVAL);
        }
        let bits = self.length / page;
        if bits > DIRTY_BITMAP_MAX_BITS {
            return Err(Errno::EINVAL);
        }
        Ok(bits)
    }
}

impl<U: IommuUnit, S: Services> Iommufd<U, S> {
    /// The paging HWPT `hwpt_id` of `owner` allocated with `DIRTY_TRACKING`
    /// (`EINVAL` for any other HWPT: it has no dirty state to read).
    fn dirty_hwpt(
        &self,
        owner: OwnerId,
        hwpt_id: ObjId,
    ) -> Result<(usize, iommu::DomainHandle, u64), Errno> {
        let hwpt = self.owner(owner)?.hwpt(hwpt_id)?;
        if !hwpt.dirty_tracking || !matches!(hwpt.kind, HwptKind::Paging { .. }) {
            return Err(Errno::EINVAL);
        }
        Ok((hwpt.unit.0 as usize, hwpt.domain, hwpt.min_page))
    }

    /// Linux `iommufd_hwpt_set_dirty_tracking`.
    pub fn hwpt_set_dirty_tracking(
        &mut self,
        owner: OwnerId,
        hwpt_id: ObjId,
        enable: bool,
    ) -> Result<(), Errno> {
        let (unit, domain, _) = self.dirty_hwpt(owner, hwpt_id)?;
        self.units[unit]
            .set_dirty_tracking(domain, enable)
            .map_err(errno)
    }

    /// Linux `iommufd_hwpt_get_dirty_bitmap`: the bitmap of `range` (bit `n`:
    /// the page at `iova + n * page_size` was written), in 64-bit words. A
    /// leaf reported dirty sets the bit of every page it overlaps (a 2 MiB
    /// leaf sets 512 bits of 4 KiB). Unless `keep`, the dirty state is cleared
    /// and the IOTLB flushed over what was cleared before this returns, so
    /// that every later write is recorded (`EIO` when that flush fails).
    pub fn hwpt_get_dirty_bitmap(
        &mut self,
        owner: OwnerId,
        hwpt_id: ObjId,
        range: DirtyRange,
    ) -> Result<Vec<u64>, Errno> {
        let bits = range.bits()?;
        let (unit, domain, min_page) = self.dirty_hwpt(owner, hwpt_id)?;
        // The unit reads whole pages of its own: widen to them.
        let start = range.iova & !(min_page - 1);
        let end = (range.iova + (range.length - 1)) | (min_page - 1);
        let mut bitmap = vec![0u64; bits.div_ceil(64) as usize];
        let last = range.iova + (range.length - 1);
        let gather = self.units[unit]
            .read_dirty(
                domain,
                start,
                end - start + 1,
                range.keep,
                &mut |leaf, size| {
                    let from = leaf.max(range.iova);
                    let to = (leaf + (size - 1)).min(last);
                    if from > to {
                        return;
                    }
                    for page in
                        (from - range.iova) / range.page_size..=(to - range.iova) / range.page_size
                    {
                        bitmap[(page / 64) as usize] |= 1 << (page % 64);
                    }
                },
            )
            .map_err(errno)?;
        if !range.keep && !gather.is_empty() {
            self.units[unit].flush(domain, &gather).map_err(errno)?;
        }
        Ok(bitmap)
    }
}
