//! Which TLB invalidation commands cover a page-table change (SMMUv3 §4.4
//! TLB invalidation, §3.17 TLB tagging by ASID/VMID).
//!
//! One `unmap` yields one [`Gather`]; this turns it into the fewest commands:
//! ranged TLBIs when IDR3.RIL, otherwise one TLBI per leaf up to a threshold
//! and one ASID- or VMID-wide invalidation beyond it (as Linux's
//! `arm_smmu_tlb_inv_range_domain` does), then one CMD_SYNC.

use alloc::vec::Vec;

use io_page_table::Gather;

use crate::command::{Command, split_range};
use crate::regs::Granule;

/// Per-leaf TLBIs above this count are replaced by one context-wide one.
pub const PER_LEAF_LIMIT: u64 = 16;

/// How the TLB entries of a domain are tagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbTag {
    /// Stage-1 entries of `asid` (under `vmid`, which is 0 for stage-1-only
    /// streams; QEMU tags by VMID whenever stage 2 is implemented).
    Stage1 {
        /// The ASID.
        asid: u16,
        /// The VMID.
        vmid: u16,
    },
    /// Stage-2 entries of `vmid`; `nest_parent` also drops the combined
    /// stage-1+2 entries of nested streams over it (their IOVA -> PA entries
    /// cannot be found by IPA).
    Stage2 {
        /// The VMID.
        vmid: u16,
        /// Nested domains use this one as their stage 2.
        nest_parent: bool,
    },
}

/// What the hardware offers for invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationCaps {
    /// IDR3.RIL: TLBI by range.
    pub range: bool,
    /// The domain's translation granule (the TG of ranged commands).
    pub granule: Granule,
}

/// The commands (ending in CMD_SYNC) that make the TLB forget everything of
/// the context `tag`: after a flush that failed, whose range was never
/// confirmed.
pub fn plan_everything(tag: TlbTag) -> Vec<Command> {
    let mut commands = alloc::vec![match tag {
        TlbTag::Stage1 { asid, vmid } => Command::TlbiNhAsid { vmid, asid },
        TlbTag::Stage2 { vmid, .. } => Command::TlbiS12Vmall { vmid },
    }];
    commands.push(Command::Sync);
    commands
}

/// The commands (ending in CMD_SYNC) that make the TLB forget `gather` in the
/// context `tag`; empty when nothing changed.
pub fn plan(tag: TlbTag, caps: InvalidationCaps, gather: &Gather) -> Vec<Command> {
    let mut commands = Vec::new();
    if gather.is_empty() {
        return commands;
    }
    // Freed tables: walk caches hold non-leaf entries too.
    let leaf = !gather.freed_tables;
    let page = caps.granule.size();
    let start = gather.start & !(page - 1);
    let end = gather.last.saturating_add(1).next_multiple_of(page);
    let span = end - start;
    let by_address = |addr: u64, range| match tag {
        TlbTag::Stage1 { asid, vmid } => Command::TlbiNhVa {
            vmid,
            asid,
            addr,
            leaf,
            range,
        },
        TlbTag::Stage2 { vmid, .. } => Command::TlbiS2Ipa {
            vmid,
            addr,
            leaf,
            range,
        },
    };
    let context_wide = match tag {
        TlbTag::Stage1 { asid, vmid } => Command::TlbiNhAsid { vmid, asid },
        TlbTag::Stage2 { vmid, .. } => Command::TlbiS12Vmall { vmid },
    };
    if caps.range {
        commands.extend(
            split_range(caps.granule, start, span)
                .map(|(addr, range)| by_address(addr, Some(range))),
        );
    } else {
        // One command per leaf of the smallest size seen (a larger leaf is
        // invalidated by any address inside it).
        let step = gather.min_leaf_size().unwrap_or(page).max(page);
        let leaves = span.div_ceil(step);
        if leaves <= PER_LEAF_LIMIT && !gather.freed_tables {
            commands.extend((0..leaves).map(|i| by_address(start + i * step, None)));
        } else {
            commands.push(context_wide);
        }
    }
    let vmall_issued = commands
        .iter()
        .any(|c| matches!(c, Command::TlbiS12Vmall { .. }));
    if let TlbTag::Stage2 {
        vmid,
        nest_parent: true,
    } = tag
        && !vmall_issued
    {
        commands.push(Command::TlbiNhAll { vmid });
    }
    commands.push(Command::Sync);
    commands
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TlbiRange;

    fn gather(start: u64, len: u64, leaf: u64) -> Gather {
        let mut g = Gather::default();
        let mut iova = start;
        while iova < start + len {
            g.add_leaf(iova, leaf);
            iova += leaf;
        }
        g
    }

    const S1: TlbTag = TlbTag::Stage1 { asid: 1, vmid: 0 };
    const RIL_4K: InvalidationCaps = InvalidationCaps {
        range: true,
        granule: Granule::K4,
    };
    const NO_RIL_4K: InvalidationCaps = InvalidationCaps {
        range: false,
        granule: Granule::K4,
    };

    #[test]
    fn aligned_power_of_two_unmap_is_one_range_tlbi_and_one_sync() {
        for k in 0..10 {
            let pages = 1u64 << k;
            let commands = plan(S1, RIL_4K, &gather(0x40_0000, pages << 12, 4096));
            assert_eq!(commands.len(), 2, "2^{k} pages: {commands:?}");
            assert_eq!(
                commands[0],
                Command::TlbiNhVa {
                    vmid: 0,
                    asid: 1,
                    addr: 0x40_0000,
                    leaf: true,
                    range: Some(TlbiRange {
                        granule: Granule::K4,
                        num: 0,
                        scale: k as u8,
                    })
                }
            );
            assert_eq!(commands[1], Command::Sync);
        }
    }

    #[test]
    fn without_ril_one_tlbi_per_leaf_up_to_the_limit_then_asid_wide() {
        let few = plan(S1, NO_RIL_4K, &gather(0x1000, 4 << 12, 4096));
        assert_eq!(few.len(), 5);
        assert!(
            few[..4]
                .iter()
                .all(|c| matches!(c, Command::TlbiNhVa { range: None, .. }))
        );
        let many = plan(S1, NO_RIL_4K, &gather(0, (PER_LEAF_LIMIT + 1) << 12, 4096));
        assert_eq!(
            many,
            [Command::TlbiNhAsid { vmid: 0, asid: 1 }, Command::Sync]
        );
        // A 2 MiB block is one leaf: one TLBI.
        let block = plan(S1, NO_RIL_4K, &gather(0x20_0000, 0x20_0000, 0x20_0000));
        assert_eq!(block.len(), 2);
    }

    #[test]
    fn stage2_uses_ipa_commands_and_nest_parents_drop_stage1_entries() {
        let s2 = plan(
            TlbTag::Stage2 {
                vmid: 3,
                nest_parent: false,
            },
            RIL_4K,
            &gather(0x8000, 0x1000, 4096),
        );
        assert!(matches!(
            s2[0],
            Command::TlbiS2Ipa {
                vmid: 3,
                addr: 0x8000,
                ..
            }
        ));
        assert_eq!(s2.len(), 2);
        let parent = plan(
            TlbTag::Stage2 {
                vmid: 3,
                nest_parent: true,
            },
            RIL_4K,
            &gather(0x8000, 0x1000, 4096),
        );
        assert_eq!(parent.len(), 3);
        assert_eq!(parent[1], Command::TlbiNhAll { vmid: 3 });
    }

    #[test]
    fn empty_gather_needs_nothing() {
        assert!(plan(S1, RIL_4K, &Gather::default()).is_empty());
    }

    /// A shadow TLB: cached leaves (ASID, start, size).
    fn apply(tlb: &mut Vec<(u16, u64, u64)>, command: &Command) {
        tlb.retain(|&(asid, start, size)| {
            let hit = match *command {
                Command::TlbiNhAsid { asid: a, .. } => a == asid,
                Command::TlbiNhVa {
                    asid: a,
                    addr,
                    range,
                    ..
                } => {
                    let (first, len) = match range {
                        Some(r) => (addr, r.pages() << r.granule.shift()),
                        None => (addr, 1),
                    };
                    a == asid && first < start + size && start < first + len
                }
                _ => false,
            };
            !hit
        });
    }

    /// The leaves the generator keeps: slot n is a 4 KiB page at
    /// n * 2 MiB + n * 4 KiB or the 2 MiB block n; overlapping ones are dropped.
    fn leaves_of(slots: &std::collections::BTreeSet<(u64, bool)>) -> Vec<(u64, u64)> {
        let mut kept: Vec<(u64, u64)> = Vec::new();
        for &(slot, block) in slots {
            let (iova, size) = if block {
                (slot << 21, 1u64 << 21)
            } else {
                ((slot << 21) + (slot << 12), 4096)
            };
            if !kept.iter().any(|&(s, z)| s < iova + size && iova < s + z) {
                kept.push((iova, size));
            }
        }
        kept
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Against a shadow TLB holding every leaf of the gather (and the same
        /// leaves under another ASID): after the planned commands no leaf of
        /// the range survives, and the other ASID is untouched.
        #[test]
        fn plan_leaves_no_stale_leaf(
            slots in proptest::collection::btree_set((0u64..64, proptest::bool::ANY), 1..24),
            ril in proptest::bool::ANY,
        ) {
            let leaves = leaves_of(&slots);
            let mut gather = Gather::default();
            let mut tlb = Vec::new();
            for &(iova, size) in &leaves {
                gather.add_leaf(iova, size);
                tlb.push((1, iova, size));
                tlb.push((2, iova, size));
            }
            let caps = InvalidationCaps { range: ril, granule: Granule::K4 };
            let commands = plan(S1, caps, &gather);
            proptest::prop_assert_eq!(commands.last(), Some(&Command::Sync));
            for command in &commands {
                apply(&mut tlb, command);
            }
            proptest::prop_assert!(tlb.iter().all(|&(asid, _, _)| asid == 2), "stale: {:?}", tlb);
            proptest::prop_assert_eq!(tlb.len(), leaves.len());
        }
    }
}
