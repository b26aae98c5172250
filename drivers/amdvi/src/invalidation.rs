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

/// What a map owes: nothing unless the IOMMU caches not-present entries
/// (capability header NpCache, §3.2.1); with it, the range the map made
/// present at every level, the directories included (PDE = 1), since a walk
/// may have cached a not-present directory entry the map has now filled
/// (Linux `domain_flush_np_cache`, whose `build_inv_address` always sets PDE).
pub fn owed_by_map(np_cache: bool, gather: Gather) -> Gather {
    if !np_cache || gather.is_empty() {
        return Gather::default();
    }
    Gather {
        freed_tables: true,
        ..gather
    }
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

    #[test]
    fn a_map_owes_directories_only_under_np_cache() {
        let mut gather = Gather::default();
        gather.add_leaf(0x20_0000, 4096);
        assert_eq!(owed_by_map(false, gather), Gather::default());
        let owed = owed_by_map(true, gather);
        assert_eq!((owed.start, owed.last), (0x20_0000, 0x20_0FFF));
        assert_eq!(plan(3, &owed).unwrap().0[1], 0x20_0002, "PDE");
        assert_eq!(owed_by_map(true, Gather::default()), Gather::default());
    }
}
