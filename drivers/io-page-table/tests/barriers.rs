//! Issue 16, ordering: what a walker outside the CPU sees. A new table's
//! contents (an upper table's zeroes, a leaf table's leaves and zeroes) reach
//! memory before the entry that links it, behind a device write barrier
//! (`os_services::barrier::dma_wmb`), not a CPU fence that orders only for
//! other CPUs (`dmb ish` on aarch64).

use std::cell::Cell;

use io_page_table::heap::HeapTableAlloc;
use io_page_table::{ArmConfig, ArmLpae, Coherence, Granule, PageTable, Prot, Stage};
use os_services::observe::{self, Barrier, Observed};

std::thread_local! {
    static WRITE_BARRIERS: Cell<usize> = const { Cell::new(0) };
}

/// The one observer of this test binary (the hook is the process's, and
/// the tests run on several threads at once): it records per thread and is
/// never taken away, so no test's removal cuts another's recording short.
fn on_observed(observed: Observed) {
    if observed != Observed::Barrier(Barrier::DmaWmb) {
        return;
    }
    WRITE_BARRIERS.with(|n| n.set(n.get() + 1));
    leaf_before_link();
}

/// The SMMU's stage-1 format, 4 KiB granule, 48-bit input and output.
fn arm_stage1_4k() -> ArmLpae {
    ArmLpae::new(ArmConfig {
        stage: Stage::Stage1,
        granule: Granule::K4,
        input_bits: 48,
        output_bits: 48,
        contiguous: false,
    })
    .unwrap()
}

#[test]
fn hw_new_tables_are_linked_behind_a_device_write_barrier() {
    let format = arm_stage1_4k();
    let mut pt = PageTable::new(format, HeapTableAlloc::new(), Coherence::Coherent).unwrap();
    observe::observe(Some(on_observed));
    WRITE_BARRIERS.with(|n| n.set(0));
    // An empty table: levels 2, 1 and 0 are new.
    pt.map(0x4000_0000, 0x8000_0000, 0x1000, Prot::RW).unwrap();
    let linked = WRITE_BARRIERS.with(Cell::get);
    // The same table again: nothing new is linked.
    pt.map(0x4000_1000, 0x8000_1000, 0x1000, Prot::RW).unwrap();
    let again = WRITE_BARRIERS.with(Cell::get) - linked;
    assert!(linked >= 1, "new tables linked without a device barrier");
    assert_eq!(again, 0, "a barrier for a map that linked nothing");
}

std::thread_local! {
    /// The allocator of the table under test, for [`leaf_before_link`].
    static WATCHED: Cell<*const HeapTableAlloc> = const { Cell::new(std::ptr::null()) };
    /// At each device write barrier: (the new leaf table holds the leaf,
    /// the level-1 entry links it).
    static SEEN: std::cell::RefCell<Vec<(bool, bool)>> = const { std::cell::RefCell::new(Vec::new()) };
}

// The heap allocator hands out pages from PHYS_BASE in order: the root, then
// this map's level-2 and level-1 tables (allocated first, zeroed), then its
// leaf table.
const LEVEL_1_TABLE: u64 = io_page_table::heap::PHYS_BASE + 0x2000;
const LEAF_TABLE: u64 = io_page_table::heap::PHYS_BASE + 0x3000;
/// The page this test maps (entry 0 of the leaf table, entry 0 of level 1)
/// and where to.
const IOVA: u64 = 0x80_0000_0000;
const PHYS: u64 = 0x8000_0000;

/// At a device write barrier on a thread that watches a table: records
/// whether its new leaf table holds the leaf and whether it is linked.
fn leaf_before_link() {
    let alloc = WATCHED.with(Cell::get);
    if alloc.is_null() {
        return;
    }
    // SAFETY: the test below sets it, on its own thread, to an allocator
    // that outlives the map, which holds the table only through a shared
    // reference while this runs, and clears it after.
    let alloc = unsafe { &*alloc };
    // The leaf's output address (bits 47:12), not just any bits: the page
    // comes poisoned.
    let leaf = alloc.cpu_read(LEAF_TABLE) & 0xFFFF_FFFF_F000 == PHYS;
    let link = alloc.cpu_read(LEVEL_1_TABLE) & !0xFFF == LEAF_TABLE;
    SEEN.with(|seen| seen.borrow_mut().push((leaf, link)));
}

/// A new leaf table is written whole, then a device write barrier, then its
/// link (`PageTable` fills a new leaf table before linking it): an IOMMU
/// that follows the link finds the leaf, never the page's old bytes.
#[test]
fn hw_a_new_leaf_table_is_filled_behind_a_device_write_barrier_before_its_link() {
    let format = arm_stage1_4k();
    let pt = PageTable::new(format, HeapTableAlloc::new(), Coherence::Coherent).unwrap();
    WATCHED.with(|w| w.set(pt.allocator()));
    SEEN.with(|seen| seen.borrow_mut().clear());
    observe::observe(Some(on_observed));
    // SAFETY: one caller.
    unsafe { pt.map_shared(IOVA, PHYS, 0x1000, Prot::RW) }.unwrap();
    WATCHED.with(|w| w.set(std::ptr::null()));
    let seen = SEEN.with(|seen| seen.borrow().clone());
    // The barrier for the zeroed upper tables comes before anything is
    // written; the leaf table's comes after its leaf and before its link.
    assert!(seen.contains(&(true, false)), "barriers saw {seen:?}");
    assert!(
        !seen.contains(&(false, true)),
        "linked before filled: {seen:?}"
    );
    assert_eq!(pt.lookup(IOVA).map(|t| t.leaf_size), Some(0x1000));
    assert_eq!(pt.allocator().cpu_read(LEVEL_1_TABLE) & !0xFFF, LEAF_TABLE);
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
