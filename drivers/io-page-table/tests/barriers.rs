//! Issue 16, ordering: what a walker outside the CPU sees. A new table's
//! zeroes reach memory before the entry that links it, behind a device write
//! barrier (`os_services::barrier::dma_wmb`), not a CPU fence that orders
//! only for other CPUs (`dmb ish` on aarch64).

use std::cell::Cell;

use io_page_table::heap::HeapTableAlloc;
use io_page_table::{ArmConfig, ArmLpae, Coherence, Granule, PageTable, Prot, Stage};
use os_services::observe::{self, Barrier, Observed};

std::thread_local! {
    static WRITE_BARRIERS: Cell<usize> = const { Cell::new(0) };
}

fn count(observed: Observed) {
    if observed == Observed::Barrier(Barrier::DmaWmb) {
        WRITE_BARRIERS.with(|n| n.set(n.get() + 1));
    }
}

#[test]
fn hw_new_tables_are_linked_behind_a_device_write_barrier() {
    let format = ArmLpae::new(ArmConfig {
        stage: Stage::Stage1,
        granule: Granule::K4,
        input_bits: 48,
        output_bits: 48,
        contiguous: false,
    })
    .unwrap();
    let mut pt = PageTable::new(format, HeapTableAlloc::new(), Coherence::Coherent).unwrap();
    observe::observe(Some(count));
    WRITE_BARRIERS.with(|n| n.set(0));
    // An empty table: levels 2, 1 and 0 are new.
    pt.map(0x4000_0000, 0x8000_0000, 0x1000, Prot::RW).unwrap();
    let linked = WRITE_BARRIERS.with(Cell::get);
    // The same table again: nothing new is linked.
    pt.map(0x4000_1000, 0x8000_1000, 0x1000, Prot::RW).unwrap();
    let again = WRITE_BARRIERS.with(Cell::get) - linked;
    observe::observe(None);
    assert!(linked >= 1, "new tables linked without a device barrier");
    assert_eq!(again, 0, "a barrier for a map that linked nothing");
}

/// Issue 16, ARM contiguous runs (ARM ARM D8.6.1): the 16 entries of a run
/// cannot be written at once, so an SMMU walking in between sees a mixed run,
/// which the architecture calls misprogramming: it may make a TLB entry for
/// the whole run from any one present entry (or report a TLB conflict). That
/// is harmless exactly when every entry, standing for its whole run, gives
/// each page the translation it finally has: this checks it for every entry
/// and page of runs of pages and of blocks, so any subset of the writes (any
/// order the SMMU may observe them in) translates nothing wrongly. A map only
/// fills invalid entries, which the SMMU never caches (SMMUv3 §3.21.2), so no
/// older translation can conflict either.
#[test]
fn hw_every_entry_of_a_contiguous_run_stands_for_the_run_correctly() {
    use io_page_table::{EntryKind, WalkEntry};
    let format = ArmLpae::new(ArmConfig {
        stage: Stage::Stage2,
        granule: Granule::K4,
        input_bits: 40,
        output_bits: 44,
        contiguous: true,
    })
    .unwrap();
    let mut pt = PageTable::new(format, HeapTableAlloc::new(), Coherence::Coherent).unwrap();
    // A run of 16 pages (64 KiB) and a run of 16 blocks (32 MiB).
    pt.map(0x1_0000, 0x4_0001_0000, 0x1_0000, Prot::RW).unwrap();
    pt.map(0x4000_0000, 0x8_0000_0000, 0x200_0000, Prot::RW)
        .unwrap();
    let mut leaves: Vec<WalkEntry> = Vec::new();
    pt.walk(|entry| {
        if matches!(entry.kind, EntryKind::Leaf(_)) {
            leaves.push(*entry);
        }
    });
    let runs: Vec<&WalkEntry> = leaves.iter().filter(|e| e.leaf_size > e.size).collect();
    assert_eq!(runs.len(), 32, "two runs of 16 entries");
    for entry in &runs {
        let EntryKind::Leaf(phys) = entry.kind else {
            unreachable!()
        };
        let run_start = entry.iova & !(entry.leaf_size - 1);
        let run_phys = phys - (entry.iova - run_start);
        for page in (0..entry.leaf_size).step_by(entry.size as usize) {
            let implied = run_phys + page;
            let finally = pt.iova_to_phys(run_start + page);
            assert_eq!(
                Some(implied),
                finally,
                "entry {:#x} stands for {:#x} wrongly",
                entry.iova,
                run_start + page
            );
        }
        // The same attributes in every entry: only the output address differs.
        let attributes = |pte: u64| pte & !(((1u64 << 44) - 1) & !0xFFF);
        let first = runs
            .iter()
            .find(|e| e.iova & !(e.leaf_size - 1) == run_start)
            .unwrap();
        assert_eq!(attributes(entry.pte), attributes(first.pte));
    }
}
