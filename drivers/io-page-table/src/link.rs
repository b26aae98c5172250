//! Linking a new table under an entry that another CPU may be linking at the
//! same moment.
//!
//! Two callers mapping disjoint ranges both find an entry empty when their
//! ranges share the table it would link. Each prepares a table of its own
//! (zeroed, or a leaf table already holding its leaves) and tries to link it
//! with a compare-exchange from empty; one wins, the
//! other adopts the winner's table and gives its own page back, which no one
//! has seen (Linux `generic_pt` `pt_table_install64`, io-pgtable-arm
//! `arm_lpae_install_table`). No lock is taken, and the tables above are
//! never rewritten.
//!
//! Orderings, for the CPUs: the winning exchange is a release and every read
//! that may follow a link ([`FOLLOW`]) an acquire, so a CPU that reaches a
//! table through its link sees it as prepared (or as its writers left it),
//! never the bytes the page held before it was allocated. The loser's failed
//! exchange is an acquire too: it goes on into the winner's table. The IOMMU
//! is outside this model: the `dma_wmb` before the exchange orders the
//! prepared entries for it.
//!
//! The `loom` model at the end of this file checks the protocol under every
//! interleaving the memory model allows:
//! `RUSTFLAGS="--cfg loom" cargo test -p io-page-table --lib --release link`
//! (`cargo xtask test` runs it).

use core::sync::atomic::Ordering;

/// The ordering of every read that may go on through a table link.
pub(crate) const FOLLOW: Ordering = Ordering::Acquire;

/// A table entry as this protocol uses it: the table's own words
/// (`core::sync::atomic::AtomicU64` over the page), loom's in the model.
pub(crate) trait EntryWord {
    /// `AtomicU64::compare_exchange`.
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

impl EntryWord for core::sync::atomic::AtomicU64 {
    #[inline(always)]
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        core::sync::atomic::AtomicU64::compare_exchange(self, current, new, success, failure)
    }
}

/// What [`link_or_adopt`] left in the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Linked {
    /// Our link: the new table is in the tree.
    Ours,
    /// Another caller's entry, found in place of empty: the caller's new
    /// table was not linked and is still its own.
    Theirs(u64),
}

/// Links `link` (a table entry pointing at a new, prepared, device-visible
/// table) into the empty `entry`, unless another caller got there first.
#[inline(always)]
pub(crate) fn link_or_adopt(entry: &impl EntryWord, link: u64) -> Linked {
    match entry.compare_exchange(0, link, Ordering::Release, FOLLOW) {
        Ok(_) => Linked::Ours,
        Err(present) => Linked::Theirs(present),
    }
}

#[cfg(all(test, loom))]
mod loom_model {
    //! Two mappers race to link the table under one root entry while a third
    //! thread (another CPU's lookup) follows whatever link it finds.
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU64;
    use loom::thread;

    impl EntryWord for AtomicU64 {
        fn compare_exchange(
            &self,
            current: u64,
            new: u64,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u64, u64> {
            AtomicU64::compare_exchange(self, current, new, success, failure)
        }
    }

    /// Entries per model table: one leaf slot per mapper.
    const ENTRIES: usize = 2;
    /// What a recycled page holds until it is zeroed (the heap allocator's poison).
    const POISON: u64 = 0xa5a5_a5a5_a5a5_a5a5;
    const LINK_BIT: u64 = 1 << 63;
    const LEAF_BIT: u64 = 1 << 62;

    /// Page 0 is the root; pages 1 and 2 are each mapper's candidate table,
    /// recycled (poisoned) memory until its mapper zeroes it.
    struct Memory {
        pages: [[AtomicU64; ENTRIES]; 3],
    }

    impl Memory {
        fn new() -> Self {
            let page = |fill: u64| [AtomicU64::new(fill), AtomicU64::new(fill)];
            Self {
                pages: [page(0), page(POISON), page(POISON)],
            }
        }
    }

    /// A mapper: allocate (zero) its page, link or adopt, write its leaf into
    /// whichever table is linked. Returns the page it must free, if any.
    fn map(memory: &Memory, mapper: usize) -> Option<usize> {
        let own = mapper + 1;
        for entry in &memory.pages[own] {
            entry.store(0, Ordering::Relaxed);
        }
        let (table, unused) = match link_or_adopt(&memory.pages[0][0], LINK_BIT | own as u64) {
            Linked::Ours => (own, None),
            Linked::Theirs(link) => ((link & !LINK_BIT) as usize, Some(own)),
        };
        memory.pages[table][mapper].store(LEAF_BIT | mapper as u64, Ordering::Relaxed);
        unused
    }

    #[test]
    fn racing_links_keep_one_table_both_leaves_and_no_stale_bytes() {
        loom::model(|| {
            let memory = Arc::new(Memory::new());
            let mappers: [_; 2] = core::array::from_fn(|mapper| {
                let memory = memory.clone();
                thread::spawn(move || map(&memory, mapper))
            });
            let walker = {
                let memory = memory.clone();
                thread::spawn(move || {
                    let link = memory.pages[0][0].load(FOLLOW);
                    if link != 0 {
                        let table = (link & !LINK_BIT) as usize;
                        for entry in &memory.pages[table] {
                            let seen = entry.load(Ordering::Relaxed);
                            assert_ne!(seen, POISON, "a linked table showed its old bytes");
                        }
                    }
                })
            };
            let unused: [_; 2] = mappers.map(|m| m.join().unwrap());
            walker.join().unwrap();

            let link = memory.pages[0][0].load(Ordering::Relaxed);
            let table = (link & !LINK_BIT) as usize;
            assert!(table == 1 || table == 2);
            // Exactly the loser's page comes back, and it is not the linked one.
            let freed: alloc::vec::Vec<usize> = unused.into_iter().flatten().collect();
            assert_eq!(freed.len(), 1);
            assert_ne!(freed[0], table);
            for mapper in 0..2 {
                let leaf = memory.pages[table][mapper].load(Ordering::Relaxed);
                assert_eq!(leaf, LEAF_BIT | mapper as u64, "a leaf was lost");
            }
        });
    }
}
