//! Several threads mapping and unmapping disjoint ranges of one table at
//! once through `map_shared`/`unmap_shared`, checked at the end against what
//! each thread says it left mapped, through the spec-written reference walker.
//!
//! The ranges are laid out to make the threads race where the algorithm is
//! lock-free: every round starts in a fresh 1 GiB region whose directory all
//! threads try to link at once, one 2 MiB block per round is shared page by
//! page (its leaf table too), and each thread unmaps its own blocks whole, so
//! their leaf tables are unlinked and freed while the others map next door.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use io_page_table::heap::HeapTableAlloc;
use io_page_table::{Coherence, PageTable, Prot, WalkCursor, X86_64, X86Config};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// Just below a 512 GiB boundary: the rounds cross it, so the threads also
/// race to link a new page-directory-pointer table.
const BASE: u64 = 0x80_0000_0000 - 4 * G1;
const THREADS: usize = 4;
const ROUNDS: u64 = 150;
/// Blocks of 2 MiB each thread owns per round (block `t + THREADS * i`).
const OWN_BLOCKS: u64 = 3;
/// The block all threads share page by page (page `THREADS * k + t`).
const SHARED_BLOCK: u64 = 511;

type Table = PageTable<X86_64, HeapTableAlloc>;

fn table() -> Table {
    let format = X86_64::new(X86Config {
        levels: 4,
        user: true,
        nx: false,
        leaf_1g: true,
        output_bits: 52,
    })
    .unwrap();
    PageTable::new(format, HeapTableAlloc::new(), Coherence::Coherent).unwrap()
}

/// Each thread's output addresses are its own, so a page mapped by the wrong
/// thread (or to the wrong place) shows.
fn phys_of(thread: usize, iova: u64) -> u64 {
    ((thread as u64 + 1) << 40) + (iova & 0xff_ffff_f000)
}

/// Releases the threads of a round together: each spins (yielding, since
/// there may be fewer cores than threads) until all have arrived. A thread
/// that fails never blocks the others: they need only its arrival.
fn start_together(arrived: &AtomicUsize) {
    arrived.fetch_add(1, Ordering::AcqRel);
    while arrived.load(Ordering::Acquire) < THREADS {
        std::thread::yield_now();
    }
}

/// One thread's round in the 1 GiB `region`; returns the page it left
/// mapped: (IOVA, phys).
fn round(pt: &Table, thread: usize, region: u64, arrived: &AtomicUsize) -> (u64, u64) {
    start_together(arrived);
    // The shared block: this thread's pages of it, one call each.
    let shared = region + SHARED_BLOCK * M2;
    let mine: Vec<u64> = (0..16)
        .map(|k| shared + (THREADS as u64 * k + thread as u64) * K4)
        .collect();
    for &iova in &mine {
        // SAFETY: the pages of the shared block are split by thread.
        unsafe { pt.map_shared(iova, phys_of(thread, iova), K4, Prot::RW) }.unwrap();
    }
    // Own blocks: a run of pages at the start of each, through this
    // thread's own walk cursor.
    let mut cursor = WalkCursor::new();
    let blocks = (0..OWN_BLOCKS).map(|i| region + (thread as u64 + THREADS as u64 * i) * M2);
    for (i, block) in blocks.clone().enumerate() {
        let len = ((region / G1) % 7 + 1 + i as u64) * K4;
        // SAFETY: block `t + THREADS * i` belongs to thread `t` alone.
        unsafe { pt.map_with(&mut cursor, block, phys_of(thread, block), len, Prot::RW) }.unwrap();
        for page in 0..len / K4 {
            let iova = block + page * K4;
            assert_eq!(pt.iova_to_phys(iova), Some(phys_of(thread, iova)));
        }
    }
    for &iova in &mine {
        assert_eq!(pt.iova_to_phys(iova), Some(phys_of(thread, iova)));
    }
    // Unmap the own blocks whole: their leaf tables are unlinked and freed
    // (and may be handed to another thread at once). The cursor, which knew
    // the last one, must not walk into it: map a page there again, see it,
    // and free that table too.
    for block in blocks {
        // The block's first page alone: the cursor now names its leaf table.
        // SAFETY: as above.
        let first = unsafe { pt.unmap_with(&mut cursor, block, K4) }.unwrap();
        assert_eq!((first.bytes, first.freed.len()), (K4, 0));
        // SAFETY: as above.
        let unmapped = unsafe { pt.unmap_with(&mut cursor, block, M2) }.unwrap();
        assert_eq!(unmapped.freed.len(), 1, "the block's leaf table");
        pt.release(unmapped.freed);
        let again = block + 5 * K4;
        // SAFETY: as above.
        unsafe { pt.map_with(&mut cursor, again, phys_of(thread, again), K4, Prot::RW) }.unwrap();
        assert_eq!(pt.iova_to_phys(again), Some(phys_of(thread, again)));
        // SAFETY: as above.
        let unmapped = unsafe { pt.unmap_with(&mut cursor, block, M2) }.unwrap();
        assert_eq!(unmapped.freed.len(), 1, "the new leaf table");
        pt.release(unmapped.freed);
    }
    // Keep one page of the shared block, unmap the rest one by one.
    for &iova in &mine[1..] {
        // SAFETY: as above.
        let unmapped = unsafe { pt.unmap_shared(iova, K4) }.unwrap();
        assert_eq!(unmapped.bytes, K4);
        assert!(unmapped.freed.is_empty());
    }
    (mine[0], phys_of(thread, mine[0]))
}

#[test]
fn threads_mapping_disjoint_ranges_lose_nothing_and_leak_nothing() {
    for _ in 0..2 {
        let pt = table();
        let mut kept = BTreeMap::new();
        for r in 0..ROUNDS {
            let region = BASE + r * G1;
            let arrived = AtomicUsize::new(0);
            std::thread::scope(|s| {
                let threads: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (pt, arrived) = (&pt, &arrived);
                        s.spawn(move || round(pt, t, region, arrived))
                    })
                    .collect();
                kept.extend(threads.into_iter().map(|t| t.join().unwrap()));
            });
        }

        // The tree holds exactly the kept pages, as the hardware would walk it.
        let mut leaves = BTreeMap::new();
        pt.walk(|entry| {
            if let io_page_table::EntryKind::Leaf(phys) = entry.kind {
                leaves.insert(entry.iova, phys);
            }
        });
        assert_eq!(leaves, kept);
        let read = |phys: u64| pt.allocator().cpu_read(phys);
        for (&iova, &phys) in &kept {
            let leaf = common::x86(&read, pt.root_phys(), 4, true, iova).unwrap();
            assert_eq!(leaf.map(|l| l.phys), Some(phys));
        }
        // Every page allocated is in the tree (no loser's table leaked, none
        // linked twice): the root, a PDPT per 512 GiB, a directory and the
        // shared block's leaf table per round.
        let pdpts = ((BASE + ROUNDS * G1 - 1) >> 39) - (BASE >> 39) + 1;
        let expected = 1 + pdpts as usize + 2 * ROUNDS as usize;
        assert_eq!(pt.table_pages(), expected);
        assert_eq!(pt.allocator().live_pages(), expected);
    }
}

#[test]
fn a_shared_table_is_sync_and_its_exclusive_face_still_works() {
    fn assert_sync<T: Sync + Send>() {}
    assert_sync::<Table>();
    let mut pt = table();
    pt.map(BASE, 0x1000_0000, M2, Prot::RW).unwrap();
    let unmapped = pt.unmap(BASE, M2).unwrap();
    pt.release(unmapped.freed);
}
