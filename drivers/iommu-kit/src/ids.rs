//! Domain ids: the tag the hardware puts on everything it caches for a domain
//! (VT-d DID, AMD-Vi DomainID, SMMUv3 ASID and VMID).
//!
//! A freed id may still tag cached translations, so it is handed out again
//! only as *recycled*: the driver must invalidate everything under it first
//! (VT-d 3.4 §6.5.2.3 domain-selective IOTLB; SMMUv3 §4.4 TLBI_NH_ASID /
//! TLBI_S12_VMALL; AMD IOMMU §2.4.3 INVALIDATE_IOMMU_PAGES with S=1 over all
//! addresses) or have done so when it freed the id.

use alloc::vec::Vec;
use core::ops::RangeInclusive;

/// An id just taken, and whether it was used before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TakenId {
    /// The id.
    pub id: u32,
    /// The id tagged an earlier domain: invalidate under it before use,
    /// unless that was done when it was freed.
    pub recycled: bool,
}

/// Hands out ids from a range: freed ones first (most recent first), then the
/// lowest never handed out. Bounded by the range, which the driver takes from
/// the hardware (CAP.ND, IDR0.ASID16/VMID16, the DTE's DomainID width).
#[derive(Clone, Debug)]
pub struct IdAllocator {
    first: u32,
    last: u32,
    next: u32,
    free: Vec<u32>,
}

impl IdAllocator {
    /// Hands out the ids of `range`.
    pub fn new(range: RangeInclusive<u32>) -> Self {
        Self {
            first: *range.start(),
            last: *range.end(),
            next: *range.start(),
            free: Vec::new(),
        }
    }

    /// An id, or `None` when every id of the range is live.
    pub fn take(&mut self) -> Option<TakenId> {
        if let Some(id) = self.free.pop() {
            return Some(TakenId { id, recycled: true });
        }
        if self.next > self.last {
            return None;
        }
        let id = self.next;
        self.next += 1;
        Some(TakenId {
            id,
            recycled: false,
        })
    }

    /// Gives back an id whose domain is gone.
    pub fn free(&mut self, id: u32) {
        debug_assert!((self.first..self.next).contains(&id));
        self.free.push(id);
    }

    /// Undoes a [`take`](Self::take) whose domain was never created, so that a
    /// failed allocation leaves the allocator as it was.
    pub fn untake(&mut self, taken: TakenId) {
        if !taken.recycled && taken.id + 1 == self.next {
            self.next -= 1;
        } else {
            self.free.push(taken.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_run_out_at_the_end_of_the_range_and_come_back_recycled() {
        let mut ids = IdAllocator::new(1..=3);
        let taken: Vec<TakenId> = (0..3).map(|_| ids.take().unwrap()).collect();
        assert_eq!(
            taken.iter().map(|t| (t.id, t.recycled)).collect::<Vec<_>>(),
            [(1, false), (2, false), (3, false)]
        );
        assert_eq!(ids.take(), None);
        ids.free(2);
        assert_eq!(
            ids.take(),
            Some(TakenId {
                id: 2,
                recycled: true
            })
        );
    }

    #[test]
    fn untake_leaves_the_allocator_as_it_was() {
        let mut ids = IdAllocator::new(1..=255);
        let fresh = ids.take().unwrap();
        ids.untake(fresh);
        assert_eq!(ids.take(), Some(fresh));
        ids.free(fresh.id);
        let recycled = ids.take().unwrap();
        assert!(recycled.recycled);
        ids.untake(recycled);
        assert_eq!(ids.take(), Some(recycled));
    }
}
