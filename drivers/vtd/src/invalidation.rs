//! Which IOTLB invalidation a page-table change needs (VT-d 3.4 §6.5.2.3
//! IOTLB invalidate, §6.5.2.4 PASID-based IOTLB invalidate): a pure
//! function from the `Gather` an unmap (or a caching-mode map) produced to
//! the one invalidation that covers it, tested on its own as SMMUv3's and
//! AMD-Vi's `plan` are. The unit turns the plan into a queued descriptor or
//! register writes (`unit.rs`, `invalidate_range`).

use iommu::Gather;

const PAGE_SHIFT: u32 = 12;

/// What the unit can invalidate: CAP.PSI and CAP.MAMV (§11.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationCaps {
    /// CAP.PSI: page-selective IOTLB invalidation.
    pub page_selective: bool,
    /// CAP.MAMV: the largest address mask a page-selective invalidation takes.
    pub max_address_mask: u32,
}

/// The invalidation a gather needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbPlan {
    /// Nothing changed.
    Nothing,
    /// The naturally aligned block of 2^`mask` pages at `address`; with
    /// `leaf_only` (IH) when no table page was freed, so the unit may keep
    /// its paging-structure caches.
    PageSelective {
        /// The block's first IOVA.
        address: u64,
        /// log2 of its pages (AM).
        mask: u8,
        /// IH: only leaf entries changed.
        leaf_only: bool,
    },
    /// Every entry of the domain: the range needs a mask past CAP.MAMV, or
    /// the unit has no page-selective invalidation.
    Domain,
}

/// The invalidation covering `gather`.
pub fn plan(gather: &Gather, caps: InvalidationCaps) -> IotlbPlan {
    if gather.is_empty() {
        return IotlbPlan::Nothing;
    }
    match page_selective_mask(gather.start, gather.last) {
        Some((address, mask))
            if caps.page_selective && u32::from(mask) <= caps.max_address_mask =>
        {
            IotlbPlan::PageSelective {
                address,
                mask,
                leaf_only: !gather.freed_tables,
            }
        }
        _ => IotlbPlan::Domain,
    }
}

/// The (address, mask) of the smallest naturally aligned 2^mask-page block
/// covering `[start, last]` (§6.5.2.3: ADDR aligned to 2^AM pages).
pub fn page_selective_mask(start: u64, last: u64) -> Option<(u64, u8)> {
    if last < start {
        return None;
    }
    let first_page = start >> PAGE_SHIFT;
    let last_page = last >> PAGE_SHIFT;
    let differing = first_page ^ last_page;
    let mask = (u64::BITS - differing.leading_zeros()) as u8;
    let base_page = if mask >= 64 {
        0
    } else {
        (first_page >> mask) << mask
    };
    Some((base_page << PAGE_SHIFT, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: InvalidationCaps = InvalidationCaps {
        page_selective: true,
        max_address_mask: 18,
    };

    #[test]
    fn a_gather_becomes_one_invalidation() {
        let mut gather = Gather::default();
        assert_eq!(plan(&gather, QEMU), IotlbPlan::Nothing);
        // Two pages 28 KiB apart: the 8-page block around them, leaves only.
        gather.add_leaf(0x10_0000, 4096);
        gather.add_leaf(0x10_7000, 4096);
        assert_eq!(
            plan(&gather, QEMU),
            IotlbPlan::PageSelective {
                address: 0x10_0000,
                mask: 3,
                leaf_only: true
            }
        );
        // A freed table page clears IH: the paging-structure caches go too.
        gather.freed_tables = true;
        assert!(matches!(
            plan(&gather, QEMU),
            IotlbPlan::PageSelective {
                leaf_only: false,
                ..
            }
        ));
        // Without PSI, or past MAMV, the whole domain.
        let no_psi = InvalidationCaps {
            page_selective: false,
            ..QEMU
        };
        assert_eq!(plan(&gather, no_psi), IotlbPlan::Domain);
        let mut wide = Gather::default();
        wide.add_leaf(0, 4096);
        wide.add_leaf(1 << 40, 4096);
        assert_eq!(plan(&wide, QEMU), IotlbPlan::Domain);
    }
}
