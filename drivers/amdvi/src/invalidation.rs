//! Which invalidation a page-table change needs (AMD IOMMU §2.4.3
//! INVALIDATE_IOMMU_PAGES): a pure function from the `Gather` an unmap (or a
//! map the unit may have cached as not present) produced to the one command
//! that covers it, tested on its own as SMMUv3's `plan` and VT-d's are.

use iommu::Gather;

use crate::command::{Command, PageRange};

/// The INVALIDATE_IOMMU_PAGES command covering `gather` in `domain_id`, or
/// none when nothing changed: the naturally aligned range around the
/// leaves (S = 1 for more than a page), PDE set when tables were freed, and
/// every page when only tables were (their span is not known leaf by leaf).
pub fn plan(domain_id: u16, gather: &Gather) -> Option<Command> {
    if gather.is_empty() {
        return None;
    }
    let range = if gather.leaf_sizes == 0 {
        PageRange::ALL
    } else {
        PageRange::covering(gather.start, gather.last)
    };
    Some(Command::invalidate_iommu_pages(
        domain_id,
        range,
        gather.freed_tables,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_to_invalidation() {
        let mut gather = Gather::default();
        assert_eq!(plan(3, &gather), None);
        // An aligned 2^k-page unmap is one command with S=1.
        gather.add_leaf(0x10_0000, 4096);
        gather.add_leaf(0x10_7000, 4096);
        let cmd = plan(3, &gather).unwrap();
        assert_eq!(cmd.0, [0x3000_0003_0000_0000, 0x10_3001]);
        // Freed tables set PDE.
        gather.freed_tables = true;
        assert_eq!(plan(3, &gather).unwrap().0[1], 0x10_3003);
        let tables_only = Gather {
            freed_tables: true,
            ..Gather::default()
        };
        assert_eq!(
            plan(3, &tables_only).unwrap().0[1],
            crate::command::ALL_PAGES_ADDRESS | 0x3
        );
    }
}
