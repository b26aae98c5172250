//! Issue 17, dirty tracking: each format's hardware dirty state, read and
//! cleared by `PageTable::read_dirty`, against a model of the walker that
//! marks the leaf a device writes through (`PageTable::mark_written`: VT-d
//! second-stage D with SSADE, AMD-Vi v1 D with HD, x86-64 D, ARM DBM with
//! HTTU). QEMU 10 emulates no dirty bits, so this is where it is proven.

use io_page_table::heap::{HeapTableAlloc, PHYS_BASE};
use io_page_table::{
    AmdV1, AmdV1Config, ArmConfig, ArmLpae, Coherence, Format, Granule, PageTable, Prot, Stage,
    VtdSecondStage, VtdSsConfig, X86_64, X86Config,
};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
/// Where the test maps: a 2 MiB leaf at BASE, 4 KiB pages after it.
const BASE: u64 = 0x4000_0000;

fn table<F: Format>(f: F) -> PageTable<F, HeapTableAlloc> {
    PageTable::new(f, HeapTableAlloc::new(), Coherence::Coherent).unwrap()
}

/// The dirty leaves `[BASE, BASE + 4 MiB)` reports, as (iova, size).
fn dirty<F: Format>(pt: &mut PageTable<F, HeapTableAlloc>, keep: bool) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    pt.read_dirty(BASE, 2 * M2, keep, |iova, size| out.push((iova, size)))
        .unwrap();
    out
}

/// Maps a 2 MiB leaf and four 4 KiB pages (one read-only), has the device
/// write through the big leaf and two pages, and checks what a read with and
/// without clearing reports, and that a cleared leaf is marked again by the
/// next write.
fn tracks<F: Format>(mut pt: PageTable<F, HeapTableAlloc>, new_leaves_dirty: bool) {
    let phys = PHYS_BASE + 0x1000_0000;
    pt.map(BASE, phys, M2, Prot::RW).unwrap();
    pt.map(BASE + M2, phys + M2, 3 * K4, Prot::RW).unwrap();
    pt.map(BASE + M2 + 3 * K4, phys + M2 + 3 * K4, K4, Prot::READ)
        .unwrap();
    let mapped_writable = vec![
        (BASE, M2),
        (BASE + M2, K4),
        (BASE + M2 + K4, K4),
        (BASE + M2 + 2 * K4, K4),
    ];
    if new_leaves_dirty {
        // ARM DBM, as Linux: a new writable leaf starts writable-dirty.
        assert_eq!(dirty(&mut pt, false), mapped_writable);
    }
    assert_eq!(dirty(&mut pt, true), vec![], "nothing written yet");
    // Writes: in the middle of the 2 MiB leaf, and two of the pages.
    assert!(pt.mark_written(BASE + 0x12_3000));
    assert!(pt.mark_written(BASE + M2));
    assert!(pt.mark_written(BASE + M2 + 2 * K4));
    let written = vec![(BASE, M2), (BASE + M2, K4), (BASE + M2 + 2 * K4, K4)];
    // Read without clearing: reported, and reported again.
    assert_eq!(dirty(&mut pt, true), written);
    assert_eq!(dirty(&mut pt, true), written, "NO_CLEAR keeps the state");
    // Read and clear: reported once, with a gather over the cleared leaves.
    let mut seen = Vec::new();
    let gather = pt
        .read_dirty(BASE, 2 * M2, false, |iova, size| seen.push((iova, size)))
        .unwrap();
    assert_eq!(seen, written);
    assert!(
        !gather.is_empty(),
        "cleared leaves owe an IOTLB invalidation"
    );
    assert_eq!((gather.start, gather.last), (BASE, BASE + M2 + 3 * K4 - 1));
    assert_eq!(dirty(&mut pt, true), vec![], "cleared");
    // A range that covers part of the 2 MiB leaf reports the whole leaf.
    assert!(pt.mark_written(BASE + M2 - K4));
    let mut partial = Vec::new();
    pt.read_dirty(BASE + 0x10_0000, K4, true, |iova, size| {
        partial.push((iova, size))
    })
    .unwrap();
    assert_eq!(partial, vec![(BASE, M2)]);
    // The translations are untouched by all of it.
    assert_eq!(pt.iova_to_phys(BASE + 0x12_3456), Some(phys + 0x12_3456));
    assert_eq!(
        pt.iova_to_phys(BASE + M2 + 2 * K4),
        Some(phys + M2 + 2 * K4)
    );
}

#[test]
fn vtd_second_stage_d_bit() {
    tracks(
        table(
            VtdSecondStage::new(VtdSsConfig {
                levels: 4,
                sllps: 0b11,
                snoop: true,
                output_bits: 48,
            })
            .unwrap(),
        ),
        false,
    );
}

#[test]
fn amd_v1_d_bit() {
    tracks(
        table(
            AmdV1::new(AmdV1Config {
                levels: 4,
                output_bits: 52,
                nl7_pages: false,
            })
            .unwrap(),
        ),
        false,
    );
}

#[test]
fn x86_64_first_stage_d_bit() {
    let format = X86_64::new(X86Config {
        levels: 4,
        user: true,
        nx: false,
        leaf_1g: true,
        output_bits: 52,
    })
    .unwrap();
    tracks(table(format.with_hardware_dirty()), false);
    // Without hardware dirty management leaves are mapped dirty up front (so
    // the walker never writes D) and report nothing.
    let mut pt = table(format);
    pt.map(BASE, PHYS_BASE, K4, Prot::RW).unwrap();
    assert!(pt.mark_written(BASE));
    assert_eq!(dirty(&mut pt, true), vec![]);
}

#[test]
fn arm_dbm_in_both_stages() {
    for stage in [Stage::Stage1, Stage::Stage2] {
        let format = ArmLpae::new(ArmConfig {
            stage,
            granule: Granule::K4,
            input_bits: 48,
            output_bits: 48,
            contiguous: false,
        })
        .unwrap();
        tracks(table(format.with_hardware_dirty()), true);
        // Without DBM a writable leaf is plainly writable: no dirty state.
        let mut pt = table(format);
        pt.map(BASE, PHYS_BASE, K4, Prot::RW).unwrap();
        assert!(pt.mark_written(BASE));
        assert_eq!(dirty(&mut pt, true), vec![], "{stage:?}");
    }
}
