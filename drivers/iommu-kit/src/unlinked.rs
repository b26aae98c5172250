//! Table pages that unmaps unlinked, held until an invalidation that covers
//! them has completed, for domains that several CPUs unmap from at once.
//!
//! An IOMMU may keep walking a table page it read before the unmap unlinked it
//! (VT-d 3.4 §6.5.2.3 paging-structure caches, SMMUv3 §3.21.2 walk caches,
//! AMD IOMMU §2.2.7.1 PDE cache): the page goes back to the allocator only
//! after an invalidation of its range with the walk caches (VT-d IH = 0,
//! SMMUv3 non-leaf TLBI, AMD-Vi PDE = 1) has completed. With one caller at a
//! time, "after the next flush" would do; with several, CPU A's flush must not
//! free the pages CPU B unlinked for a range A never invalidated. So each
//! batch keeps the range its unmap reported (the gather, which covers every
//! table it unlinked: `io_page_table::Gather::add_freed_table`), and a flush
//! releases only the batches inside the range it invalidated, taken before
//! its invalidation was queued (Linux frees them through the gather of the
//! very unmap that unlinked them: `iommu_iotlb_gather`'s freelist).

use alloc::vec::Vec;

use io_page_table::{FreedTables, Gather};

/// A batch of unlinked pages: `io_page_table::FreedTables` (which only an
/// unmap makes).
pub trait Batch {
    /// Whether it holds no page.
    fn is_empty(&self) -> bool;
}

impl Batch for FreedTables {
    fn is_empty(&self) -> bool {
        FreedTables::is_empty(self)
    }
}

/// The unlinked table pages of one domain, by the range whose invalidation
/// frees them.
pub struct Unlinked<T = FreedTables> {
    batches: spin::Mutex<Vec<(Gather, T)>>,
}

impl<T> Default for Unlinked<T> {
    fn default() -> Self {
        Self {
            batches: spin::Mutex::new(Vec::new()),
        }
    }
}

/// Batches a flush took out, to release once its invalidation completed or
/// to put back when it failed.
#[must_use = "release the batches after the invalidation, or put them back"]
pub struct Taken<T = FreedTables>(Vec<(Gather, T)>);

impl<T: Batch> Unlinked<T> {
    /// Keeps `freed`, which an unmap reporting `gather` unlinked.
    pub fn push(&self, gather: &Gather, freed: T) {
        if !freed.is_empty() {
            self.batches.lock().push((*gather, freed));
        }
    }

    /// Takes the batches whose range lies inside what invalidating `gather`
    /// covers; to be called before that invalidation is queued.
    pub fn take_covered(&self, gather: &Gather) -> Taken<T> {
        if gather.is_empty() {
            return Taken(Vec::new());
        }
        let mut batches = self.batches.lock();
        let (covered, kept) = core::mem::take(&mut *batches)
            .into_iter()
            .partition(|(range, _)| gather.start <= range.start && range.last <= gather.last);
        *batches = kept;
        Taken(covered)
    }

    /// Takes every batch: before an invalidation of the whole domain.
    pub fn take_all(&self) -> Taken<T> {
        Taken(core::mem::take(&mut *self.batches.lock()))
    }

    /// Puts batches back after their invalidation failed.
    pub fn restore(&self, taken: Taken<T>) {
        self.batches.lock().extend(taken.0);
    }

    /// How many batches wait.
    pub fn len(&self) -> usize {
        self.batches.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Taken<T> {
    /// Hands each batch to `release` (the table's `release`).
    pub fn release(self, mut release: impl FnMut(T)) {
        for (_, freed) in self.0 {
            release(freed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(start: u64, last: u64) -> Gather {
        let mut gather = Gather::default();
        gather.add_freed_table(start, last);
        gather
    }

    impl Batch for Vec<u64> {
        fn is_empty(&self) -> bool {
            <[u64]>::is_empty(self)
        }
    }

    fn freed(pages: &[u64]) -> Vec<u64> {
        pages.to_vec()
    }

    fn released(taken: Taken<Vec<u64>>) -> Vec<u64> {
        let mut pages = Vec::new();
        taken.release(|freed| pages.extend(freed));
        pages
    }

    #[test]
    fn a_flush_releases_only_the_batches_inside_its_range() {
        let unlinked = Unlinked::<Vec<u64>>::default();
        unlinked.push(&gather(0x20_0000, 0x3f_ffff), freed(&[1]));
        unlinked.push(&gather(0x40_0000, 0x5f_ffff), freed(&[2]));
        unlinked.push(&gather(0x1f_f000, 0x40_0fff), freed(&[3]));
        let taken = unlinked.take_covered(&gather(0x20_0000, 0x3f_ffff));
        assert_eq!(released(taken), [1]);
        assert_eq!(unlinked.len(), 2);
        assert_eq!(released(unlinked.take_all()), [2, 3]);
        assert!(unlinked.is_empty());
    }

    #[test]
    fn a_failed_flush_puts_its_batches_back_and_empty_ones_are_not_kept() {
        let unlinked = Unlinked::<Vec<u64>>::default();
        unlinked.push(&gather(0, 0xfff), freed(&[]));
        assert!(unlinked.is_empty());
        unlinked.push(&gather(0, 0x1f_ffff), freed(&[7]));
        let taken = unlinked.take_covered(&gather(0, u64::MAX));
        assert!(unlinked.is_empty());
        unlinked.restore(taken);
        assert!(released(unlinked.take_covered(&Gather::default())).is_empty());
        assert_eq!(released(unlinked.take_all()), [7]);
    }
}
