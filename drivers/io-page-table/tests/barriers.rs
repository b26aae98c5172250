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
