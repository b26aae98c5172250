//! Golden encodings: entries built by hand from the spec text, compared bit for bit.

use io_page_table::heap::{HeapTableAlloc, PHYS_BASE};
use io_page_table::{
    AmdV1, AmdV1Config, ArmConfig, ArmLpae, Coherence, EntryKind, Format, Granule, MapError,
    PageTable, Prot, Stage, UnmapError, VtdSecondStage, VtdSsConfig, X86_64, X86Config,
};

fn table<F: Format>(f: F) -> PageTable<F, HeapTableAlloc> {
    PageTable::new(f, HeapTableAlloc::new(), Coherence::Coherent).unwrap()
}

/// (level, iova, pte) of every present entry.
fn entries<F: Format>(pt: &PageTable<F, HeapTableAlloc>) -> Vec<(u32, u64, u64)> {
    let mut v = Vec::new();
    pt.walk(|e| v.push((e.level, e.iova, e.pte)));
    v
}

fn vtd(levels: u32, sllps: u8, snoop: bool) -> VtdSecondStage {
    VtdSecondStage::new(VtdSsConfig {
        levels,
        sllps,
        snoop,
        output_bits: 48,
    })
    .unwrap()
}

// The heap allocator hands out fake physical pages from PHYS_BASE in order.
const T1: u64 = PHYS_BASE + 0x1000;
const T2: u64 = PHYS_BASE + 0x2000;
const T3: u64 = PHYS_BASE + 0x3000;

#[test]
fn vtd_second_stage_4k_leaf_and_links() {
    let mut pt = table(vtd(4, 0b11, true));
    assert_eq!(pt.root_phys(), PHYS_BASE);
    assert_eq!(pt.format().context_aw(), 2);
    pt.map(
        0x1000,
        0x1234_5000,
        0x1000,
        Prot::READ | Prot::WRITE | Prot::CACHE,
    )
    .unwrap();
    // §9.8: non-leaf R|W (bits 1:0) + address; leaf R|W|SNP(bit 11) + address.
    assert_eq!(
        entries(&pt),
        vec![
            (3, 0, T1 | 0b11),
            (2, 0, T2 | 0b11),
            (1, 0, T3 | 0b11),
            (0, 0x1000, 0x1234_5000 | 0x800 | 0b11)
        ]
    );
    // Read-only, no CACHE: R only, no SNP.
    pt.map(0x2000, 0x8000, 0x1000, Prot::READ).unwrap();
    assert_eq!(pt.lookup(0x2000).unwrap().pte, 0x8001);
    // Write-only is expressible.
    pt.map(0x3000, 0x9000, 0x1000, Prot::WRITE).unwrap();
    assert_eq!(pt.lookup(0x3000).unwrap().pte, 0x9002);
}

#[test]
fn vtd_second_stage_large_leaves_follow_sllps() {
    let mut pt = table(vtd(4, 0b11, false));
    pt.map(0x4000_0000, 0x8000_0000, 0x4000_0000, Prot::RW)
        .unwrap();
    // 1 GiB leaf in the level-2 (PDPTE) slot: R|W|PS(bit 7).
    assert_eq!(
        entries(&pt),
        vec![(3, 0, T1 | 3), (2, 0x4000_0000, 0x8000_0000 | 0x83)]
    );
    let mut pt = table(vtd(3, 0b01, false));
    pt.map(0x4000_0000, 0x8000_0000, 0x4000_0000, Prot::RW)
        .unwrap();
    // No 1 GiB pages: 512 × 2 MiB leaves under one new table.
    let e = entries(&pt);
    assert_eq!(e.len(), 513);
    assert_eq!(e[1], (1, 0x4000_0000, 0x8000_0000 | 0x83));
    assert_eq!(e[512], (1, 0x7fe0_0000, 0xbfe0_0000 | 0x83));
    assert_eq!(pt.page_sizes(), 0x1000 | 0x20_0000);
}

#[test]
fn x86_64_first_stage_bits() {
    let f = X86_64::new(X86Config {
        levels: 4,
        user: true,
        nx: true,
        leaf_1g: true,
        output_bits: 52,
    })
    .unwrap();
    assert_eq!(f.vtd_flpm(), 0);
    let mut pt = table(f);
    pt.map(0x1000, 0x5000, 0x1000, Prot::RW).unwrap();
    // SDM Table 4-19/4-20: links P|RW|US|A = 0x27; 4K leaf P|RW|US|A|D = 0x67.
    assert_eq!(
        entries(&pt),
        vec![
            (3, 0, T1 | 0x27),
            (2, 0, T2 | 0x27),
            (1, 0, T3 | 0x27),
            (0, 0x1000, 0x5067)
        ]
    );
    pt.map(0x2000, 0x6000, 0x1000, Prot::READ | Prot::NOEXEC)
        .unwrap();
    // Read-only: P|US|A, NX (bit 63).
    assert_eq!(pt.lookup(0x2000).unwrap().pte, 0x8000_0000_0000_6025);
    pt.map(0x20_0000, 0x40_0000, 0x20_0000, Prot::RW).unwrap();
    // 2 MiB leaf: + PS (0x80).
    assert_eq!(pt.lookup(0x20_0000).unwrap().pte, 0x40_00e7);
    pt.map(0x3000, 0xfee0_0000, 0x1000, Prot::WRITE | Prot::MMIO)
        .unwrap();
    // MMIO: PCD|PWT (0x18).
    assert_eq!(pt.lookup(0x3000).unwrap().pte, 0xfee0_007f);
    // The upper canonical half is not addressable.
    assert_eq!(
        pt.map(0x8000_0000_0000, 0, 0x1000, Prot::RW),
        Err(MapError::IovaOutOfRange)
    );
}

#[test]
fn x86_64_without_user_bit() {
    let f = X86_64::new(X86Config {
        levels: 5,
        user: false,
        nx: false,
        leaf_1g: false,
        output_bits: 52,
    })
    .unwrap();
    assert_eq!(f.vtd_flpm(), 1);
    let mut pt = table(f);
    pt.map(
        0x4000_0000,
        0x4000_0000,
        0x4000_0000,
        Prot::RW | Prot::NOEXEC,
    )
    .unwrap();
    // No 1 GiB leaves: the first entry is a 2 MiB leaf, links without US, no NX.
    let e = entries(&pt);
    assert_eq!(e[0], (4, 0, T1 | 0x23));
    assert_eq!(e[3], (1, 0x4000_0000, 0x4000_0000 | 0xe3));
}

#[test]
fn amd_v1_bits() {
    let f = AmdV1::new(AmdV1Config {
        levels: 3,
        output_bits: 52,
        nl7_pages: false,
    })
    .unwrap();
    assert_eq!(f.dte_mode(), 3);
    let mut pt = table(f);
    pt.map(0x1000, 0x7000, 0x1000, Prot::RW | Prot::CACHE)
        .unwrap();
    // §2.2.3: PDE = PR | NextLevel<<9 | addr | IR(61) | IW(62); PTE NL=0, FC(60).
    assert_eq!(
        entries(&pt),
        vec![
            (2, 0, T1 | 0x6000_0000_0000_0401),
            (1, 0, T2 | 0x6000_0000_0000_0201),
            (0, 0x1000, 0x7000 | 0x7000_0000_0000_0001),
        ]
    );
    pt.map(0x4000_0000, 0xc000_0000, 0x4000_0000, Prot::READ)
        .unwrap();
    // 1 GiB page: a level-3 PTE with NL=0, IR only.
    assert_eq!(pt.lookup(0x4000_0000).unwrap().pte, 0x2000_0000_c000_0001);
    assert_eq!(pt.lookup(0x4000_0000).unwrap().leaf_size, 1 << 30);
}

#[test]
fn amd_v1_level_limits() {
    // Mode 1: one 512-entry table, 2 MiB of IOVA.
    let mut pt = table(
        AmdV1::new(AmdV1Config {
            levels: 1,
            output_bits: 52,
            nl7_pages: false,
        })
        .unwrap(),
    );
    assert_eq!(
        pt.map(0x20_0000, 0, 0x1000, Prot::RW),
        Err(MapError::IovaOutOfRange)
    );
    pt.map(0x1f_f000, 0x3000, 0x1000, Prot::RW).unwrap();
    assert_eq!(pt.lookup(0x1f_f000).unwrap().pte, 0x6000_0000_0000_3001);
    // Mode 6 covers all 64 bits.
    let mut pt = table(
        AmdV1::new(AmdV1Config {
            levels: 6,
            output_bits: 52,
            nl7_pages: false,
        })
        .unwrap(),
    );
    pt.map(0xffff_ffff_ffff_f000, 0x3000, 0x1000, Prot::RW)
        .unwrap();
    assert_eq!(pt.iova_to_phys(0xffff_ffff_ffff_f123), Some(0x3123));
    let un = pt
        .unmap(0x8000_0000_0000_0000, 0x8000_0000_0000_0000)
        .unwrap();
    assert_eq!(un.bytes, 0x1000);
    assert_eq!(un.freed.len(), 5);
    pt.release(un.freed);
    assert_eq!(pt.allocator().live_pages(), 1);
}

#[test]
fn amd_v1_next_level_7_pages() {
    let mut pt = table(
        AmdV1::new(AmdV1Config {
            levels: 3,
            output_bits: 52,
            nl7_pages: true,
        })
        .unwrap(),
    );
    // 4K, 8K..1M, 2M, 4M..512M, 1G, 2G..256G: every power of two from 4 KiB up
    // to half of the 512 GiB that three levels cover.
    assert_eq!(pt.page_sizes(), 0x7f_ffff_f000);
    // 32 KiB at 0x1234_8000: §2.2.3 NL=7 (0xe00), address bits 13:12 set and bit
    // 14 clear encode the size, IR | IW | PR; replicated in all eight entries.
    pt.map(0x10_8000, 0x1234_8000, 0x8000, Prot::RW).unwrap();
    let pte = 0x6000_0000_1234_be01;
    let leaves: Vec<_> = entries(&pt).into_iter().filter(|e| e.0 == 0).collect();
    assert_eq!(
        leaves,
        (0..8)
            .map(|i| (0, 0x10_8000 + i * 0x1000, pte))
            .collect::<Vec<_>>()
    );
    let t = pt.lookup(0x10_d123).unwrap();
    assert_eq!(
        (t.phys, t.leaf_iova, t.leaf_size),
        (0x1234_d123, 0x10_8000, 0x8000)
    );
    // Beside it: 8 KiB has bit 12 clear; 4 MiB at level 2 sets bits 20:12.
    pt.map(0x10_2000, 0x5000_2000, 0x2000, Prot::READ).unwrap();
    assert_eq!(pt.lookup(0x10_3000).unwrap().pte, 0x2000_0000_5000_2e01);
    pt.map(0x80_0000, 0x4040_0000, 0x40_0000, Prot::WRITE)
        .unwrap();
    assert_eq!(pt.lookup(0x9f_f000).unwrap().pte, 0x4000_0000_405f_fe01);
    assert_eq!(pt.iova_to_phys(0x9f_f123), Some(0x405f_f123));
    // A page is never cut, from either end; whole, it goes at once.
    let cut = UnmapError::SplitsLeaf {
        leaf_iova: 0x10_8000,
        leaf_size: 0x8000,
    };
    assert_eq!(pt.unmap(0x10_8000, 0x4000), Err(cut));
    assert_eq!(pt.unmap(0x10_c000, 0x4000), Err(cut));
    assert_eq!(pt.unmap(0x10_9000, 0x1000), Err(cut));
    let un = pt.unmap(0x10_8000, 0x8000).unwrap();
    assert_eq!(
        (un.bytes, un.gather.start, un.gather.last),
        (0x8000, 0x10_8000, 0x10_ffff)
    );
    // Invalidation granule: the entry size, as an IOMMU may cache it per entry.
    assert_eq!(un.gather.leaf_sizes, 0x1000);
    assert_eq!(pt.iova_to_phys(0x10_8000), None);
    // IOVA and output an odd number of pages apart: no two pages align together,
    // so plain PTEs.
    pt.map(0x20_1000, 0x4000, 0x3000, Prot::RW).unwrap();
    assert_eq!(pt.lookup(0x20_2000).unwrap().pte, 0x6000_0000_0000_5001);
}

#[test]
fn arm_contiguous_runs() {
    let f = ArmLpae::new(ArmConfig {
        stage: Stage::Stage1,
        granule: Granule::K4,
        input_bits: 48,
        output_bits: 44,
        contiguous: true,
    })
    .unwrap();
    let mut pt = table(f);
    // D8.6.1 with the 4K granule: 16 pages (64K), 16 blocks of 2M (32M) and of
    // 1G (16G), beside the plain 4K, 2M and 1G.
    assert_eq!(
        pt.page_sizes(),
        (1 << 12) | (1 << 16) | (1 << 21) | (1 << 25) | (1 << 30) | (1 << 34)
    );
    // 64 KiB + 4 KiB at 0x7_0000 -> 0x9_0000: a run of 16 pages, each with its
    // own output address, the Contiguous bit (52) beside the bits of
    // arm_stage1_4k_bits' cached RW page (0xf43), then one plain page.
    pt.map(0x7_0000, 0x9_0000, 0x1_1000, Prot::RW | Prot::CACHE)
        .unwrap();
    let leaves: Vec<_> = entries(&pt).into_iter().filter(|e| e.0 == 0).collect();
    let mut expected: Vec<_> = (0..16)
        .map(|i| (0, 0x7_0000 + i * 0x1000, 0x0010_0000_0009_0f43 + i * 0x1000))
        .collect();
    expected.push((0, 0x8_0000, 0xa_0f43));
    assert_eq!(leaves, expected);
    let t = pt.lookup(0x7_f000).unwrap();
    assert_eq!(
        (t.phys, t.leaf_iova, t.leaf_size),
        (0x9_f000, 0x7_0000, 0x1_0000)
    );
    assert_eq!(pt.lookup(0x8_0000).unwrap().leaf_size, 0x1000);
    assert_eq!(
        pt.unmap(0x7_8000, 0x9000),
        Err(UnmapError::SplitsLeaf {
            leaf_iova: 0x7_0000,
            leaf_size: 0x1_0000
        })
    );
    // Output 64K-misaligned: no run.
    pt.map(0x10_0000, 0x1_1000, 0x1_0000, Prot::RW).unwrap();
    assert_eq!(pt.lookup(0x10_0000).unwrap().pte & (1 << 52), 0);
    // 32 MiB of 2 MiB blocks: one run at level 1.
    pt.map(0x200_0000, 0x400_0000, 0x200_0000, Prot::RW)
        .unwrap();
    let t = pt.lookup(0x3ff_f000).unwrap();
    assert_eq!(
        (t.level, t.leaf_size, t.pte),
        (1, 0x200_0000, 0x0010_0000_05e0_0e45)
    );
    let un = pt.unmap(0x7_0000, 0x1_1000).unwrap();
    assert_eq!((un.bytes, un.gather.leaf_sizes), (0x1_1000, 0x1000));
}

fn arm(stage: Stage, granule: Granule, input_bits: u32) -> ArmLpae {
    ArmLpae::new(ArmConfig {
        stage,
        granule,
        input_bits,
        output_bits: 44,
        contiguous: false,
    })
    .unwrap()
}

#[test]
fn arm_stage1_4k_bits() {
    let f = arm(Stage::Stage1, Granule::K4, 48);
    let s1 = f.stage1_fields();
    assert_eq!((s1.t0sz, s1.tg0, s1.ips), (16, 0b00, 0b100));
    assert_eq!(s1.mair, 0x0004_44ff);
    assert_eq!(f.start_level(), 0);
    let mut pt = table(f);
    pt.map(0x1000, 0x8000, 0x1000, Prot::RW | Prot::CACHE)
        .unwrap();
    // D8.3: table 0b11; page 0b11 | AttrIndx 0 | AP[1]=1 (0x40) | SH=IS (0x300) |
    // AF (0x400) | nG (0x800).
    assert_eq!(
        entries(&pt),
        vec![
            (3, 0, T1 | 3),
            (2, 0, T2 | 3),
            (1, 0, T3 | 3),
            (0, 0x1000, 0x8f43)
        ]
    );
    pt.map(0x2000, 0x9000, 0x1000, Prot::READ).unwrap();
    // Read-only AP[2] (0x80), non-cacheable AttrIndx 1 (0x4), SH=OS (0x200).
    assert_eq!(pt.lookup(0x2000).unwrap().pte, 0x9ec7);
    pt.map(
        0x3000,
        0x0802_0000,
        0x1000,
        Prot::WRITE | Prot::MMIO | Prot::NOEXEC,
    )
    .unwrap();
    // MSI doorbell: Device AttrIndx 2 (0x8), PXN|UXN (bits 53, 54).
    assert_eq!(pt.lookup(0x3000).unwrap().pte, 0x0060_0000_0802_0e4b);
    pt.map(0x20_0000, 0x40_0000, 0x20_0000, Prot::RW | Prot::CACHE)
        .unwrap();
    // 2 MiB block: type 0b01.
    assert_eq!(pt.lookup(0x20_0000).unwrap().pte, 0x40_0f41);
}

#[test]
fn arm_stage2_bits_and_fields() {
    let f = arm(Stage::Stage2, Granule::K4, 44);
    let s2 = f.stage2_fields();
    // 44-bit IPA, 4K: 4 levels from level 0 (32 root entries, no concatenation), SL0=2.
    assert_eq!((s2.t0sz, s2.sl0, s2.tg, s2.ps), (20, 2, 0b00, 0b100));
    let mut pt = table(f);
    pt.map(0x1000, 0x8000, 0x1000, Prot::RW | Prot::CACHE)
        .unwrap();
    // D8.3 stage 2: page 0b11 | MemAttr 0b1111 (0x3c) | S2AP RW (0xc0) | SH IS (0x300) | AF.
    assert_eq!(pt.lookup(0x1000).unwrap().pte, 0x87ff);
    pt.map(
        0x2000,
        0x9000,
        0x1000,
        Prot::WRITE | Prot::MMIO | Prot::NOEXEC,
    )
    .unwrap();
    // Write-only, Device-nGnRE MemAttr 0b0001 (0x4), SH OS, XN (bit 54).
    assert_eq!(pt.lookup(0x2000).unwrap().pte, 0x0040_0000_0000_9687);
}

#[test]
fn arm_granules_levels_and_concatenation() {
    // 16K, 48-bit stage 2: level 0 would have 2 entries ⇒ 2 concatenated level-1 tables.
    let f = arm(Stage::Stage2, Granule::K16, 48);
    assert_eq!(f.start_level(), 1);
    assert_eq!(f.geometry().top_bits, 12);
    assert_eq!(f.geometry().table_bytes(2), 0x8000);
    assert_eq!(f.stage2_fields().sl0, 2);
    assert_eq!(f.stage2_fields().tg, 0b10);
    // Same for stage 1: 4 levels from level 0 (T0SZ 16, TG0 16K = 0b10).
    let f = arm(Stage::Stage1, Granule::K16, 48);
    assert_eq!((f.start_level(), f.stage1_fields().tg0), (0, 0b10));
    // 64K, 48 bits: levels 1..3, 512 MiB blocks, TG 0b01.
    let f = arm(Stage::Stage2, Granule::K64, 48);
    assert_eq!(
        (f.start_level(), f.stage2_fields().sl0, f.stage2_fields().tg),
        (1, 2, 0b01)
    );
    assert_eq!(f.geometry().page_sizes(), (1 << 16) | (1 << 29));
    let mut pt = table(f);
    pt.map(0x2000_0000, 0x4000_0000, 0x2000_0000, Prot::RW)
        .unwrap();
    assert_eq!(pt.lookup(0x2000_0000).unwrap().leaf_size, 1 << 29);
    assert_eq!(pt.lookup(0x2000_0000).unwrap().pte & 3, 0b01);
    pt.map(0x1_0000, 0x5_0000, 0x1_0000, Prot::RW).unwrap();
    assert_eq!(
        pt.lookup(0x1_0000).unwrap().pte & 0xffff_ffff_0003,
        0x5_0003
    );
    // A 4K-aligned but not 64K-aligned request is refused.
    assert_eq!(
        pt.map(0x1000, 0, 0x1000, Prot::RW),
        Err(MapError::Misaligned)
    );
}

#[test]
fn map_refuses_overlap_and_unmap_refuses_split() {
    let mut pt = table(vtd(4, 0b11, false));
    pt.map(0x20_0000, 0x20_0000, 0x20_0000, Prot::RW).unwrap();
    assert_eq!(
        pt.map(0x1f_f000, 0, 0x2000, Prot::RW),
        Err(MapError::AlreadyMapped { iova: 0x20_0000 })
    );
    assert_eq!(
        pt.unmap(0x20_0000, 0x1000),
        Err(UnmapError::SplitsLeaf {
            leaf_iova: 0x20_0000,
            leaf_size: 0x20_0000
        })
    );
    assert_eq!(
        pt.unmap(0x1f_f000, 0x2000),
        Err(UnmapError::SplitsLeaf {
            leaf_iova: 0x20_0000,
            leaf_size: 0x20_0000
        })
    );
    let un = pt.unmap(0, 0x60_0000).unwrap();
    assert_eq!(un.bytes, 0x20_0000);
    assert_eq!(un.gather.start, 0x20_0000);
    assert_eq!(un.gather.last, 0x3f_ffff);
    assert_eq!(un.gather.leaf_sizes, 0x20_0000);
    assert!(!un.gather.freed_tables);
    pt.release(un.freed);
}

#[test]
fn map_prefers_largest_leaf_and_descends_existing_tables() {
    let mut pt = table(vtd(4, 0b11, false));
    // Misaligned phys for 2M: 4K leaves only.
    pt.map(0x20_0000, 0x1000, 0x20_0000, Prot::RW).unwrap();
    assert_eq!(pt.lookup(0x20_0000).unwrap().leaf_size, 0x1000);
    let un = pt.unmap(0x20_0000, 0x20_0000).unwrap();
    assert!(un.gather.freed_tables);
    assert_eq!(un.gather.leaf_sizes, 0x1000);
    assert_eq!(un.freed.len(), 1);
    pt.release(un.freed);
    // Now aligned: one 2 MiB leaf where the table was.
    pt.map(0x20_0000, 0x40_0000, 0x20_0000, Prot::RW).unwrap();
    assert_eq!(pt.lookup(0x20_0000).unwrap().leaf_size, 0x20_0000);
    // An empty table left by a partial unmap is descended into, not overwritten.
    pt.map(0x40_0000, 0x40_0000, 0x1000, Prot::RW).unwrap();
    let un = pt.unmap(0x40_0000, 0x1000).unwrap();
    pt.release(un.freed);
    pt.map(0x40_0000, 0x80_0000, 0x20_0000, Prot::RW).unwrap();
    assert_eq!(pt.lookup(0x40_0000).unwrap().leaf_size, 0x1000);
    assert_eq!(pt.iova_to_phys(0x5f_f123), Some(0x9f_f123));
}

#[test]
fn non_coherent_cleans_and_coherent_does_not() {
    let mut pt = PageTable::new(
        vtd(4, 0, false),
        HeapTableAlloc::with_device_view(),
        Coherence::NonCoherent,
    )
    .unwrap();
    pt.map(0x1000, 0x2000, 0x3000, Prot::RW).unwrap();
    assert!(pt.allocator().cleaned_bytes() >= 3 * 4096 + 3 * 8);
    let leaf_pte = pt.lookup(0x1000).unwrap().pte;
    let mut leaf_table = 0;
    pt.walk(|e| {
        if let (1, EntryKind::Table(t)) = (e.level, e.kind) {
            leaf_table = t;
        }
    });
    assert_eq!(pt.allocator().device_read(leaf_table + 8), leaf_pte);
    let mut pt = table(vtd(4, 0, false));
    pt.map(0x1000, 0x2000, 0x3000, Prot::RW).unwrap();
    assert_eq!(pt.allocator().cleaned_bytes(), 0);
}

#[test]
fn allocation_failure_at_every_call_changes_nothing() {
    let mut pt = table(vtd(4, 0b01, false));
    pt.map(0x4000_0000, 0, 0x1000, Prot::RW).unwrap();
    let before = {
        let mut s = String::new();
        pt.dump(&mut s).unwrap();
        s
    };
    // The range lies in the empty first GiB: a level-1 and a level-0 table are needed.
    for k in 0..2 {
        pt.allocator_mut().fail_at(Some(k));
        assert_eq!(
            pt.map(0x3fe0_0000, 0x1000, 0x20_0000, Prot::RW),
            Err(MapError::NoMemory)
        );
        let mut s = String::new();
        pt.dump(&mut s).unwrap();
        assert_eq!(s, before);
        assert_eq!(pt.allocator().live_pages(), 4);
    }
    pt.allocator_mut().fail_at(None);
    let pages = pt.allocator().live_pages();
    pt.map(0x3fe0_0000, 0x1000, 0x20_0000, Prot::RW).unwrap();
    assert_eq!(pt.allocator().live_pages(), pages + 2);
}

#[test]
fn argument_errors() {
    let mut pt = table(vtd(3, 0, false));
    assert_eq!(pt.map(0, 0, 0, Prot::RW), Err(MapError::ZeroLength));
    assert_eq!(
        pt.map(0x800, 0, 0x1000, Prot::RW),
        Err(MapError::Misaligned)
    );
    assert_eq!(
        pt.map(0, 0x800, 0x1000, Prot::RW),
        Err(MapError::Misaligned)
    );
    assert_eq!(
        pt.map(0, 0, 0x1000, Prot::NOEXEC),
        Err(MapError::InvalidProt)
    );
    assert_eq!(
        pt.map(0, 0, 0x1000, Prot::RW | Prot::CACHE | Prot::MMIO),
        Err(MapError::InvalidProt)
    );
    assert_eq!(
        pt.map(1 << 39, 0, 0x1000, Prot::RW),
        Err(MapError::IovaOutOfRange)
    );
    assert_eq!(
        pt.map(0, 1 << 48, 0x1000, Prot::RW),
        Err(MapError::PhysOutOfRange)
    );
    assert_eq!(
        pt.map(u64::MAX - 0xfff, 0, 0x2000, Prot::RW),
        Err(MapError::IovaOutOfRange)
    );
    assert_eq!(pt.unmap(0, 0), Err(UnmapError::ZeroLength));
    assert_eq!(pt.unmap(1 << 39, 0x1000), Err(UnmapError::IovaOutOfRange));
    // A single page takes its own shortcut; its errors come in the order any
    // range's do (the IOVA's before the output address's).
    assert_eq!(
        pt.map(1 << 39, 0x800, 0x1000, Prot::RW),
        Err(MapError::IovaOutOfRange)
    );
    assert_eq!(
        pt.map(0x800, 1 << 48, 0x1000, Prot::RW),
        Err(MapError::Misaligned)
    );
    assert_eq!(
        pt.map(0x1000, 1 << 48, 0x1000, Prot::NOEXEC),
        Err(MapError::PhysOutOfRange)
    );
    assert_eq!(pt.unmap(0x800, 0x1000), Err(UnmapError::Misaligned));
    assert_eq!(
        pt.unmap(u64::MAX - 0xfff, 0x1000),
        Err(UnmapError::IovaOutOfRange)
    );
    assert_eq!(pt.allocator().live_pages(), 1);
}

#[test]
fn table_memory_for_1gib_of_4k_pages() {
    let f = X86_64::new(X86Config {
        levels: 4,
        user: true,
        nx: false,
        leaf_1g: true,
        output_bits: 52,
    })
    .unwrap();
    let mut pt = table(f);
    // 4 KiB-aligned but not 2 MiB-aligned phys: 2^18 leaves of 4 KiB.
    pt.map(0x40_0000_0000, 0x1000, 1 << 30, Prot::RW).unwrap();
    // 512 leaf tables + one page directory + one PDPT, beside the root: 2.0078 MiB.
    assert_eq!(pt.allocator().live_pages(), 1 + 514);
    assert_eq!(pt.table_pages(), 515);
    let un = pt.unmap(0x40_0000_0000, 1 << 30).unwrap();
    assert_eq!(un.bytes, 1 << 30);
    assert_eq!(un.gather.leaf_sizes, 0x1000);
    // The PDPT's only entry is the unmapped GiB: it spans 512 GiB, so it stays.
    assert_eq!(un.freed.len(), 513);
    pt.release(un.freed);
    assert_eq!(pt.allocator().live_pages(), 2);
}

#[test]
fn freed_leaf_table_is_not_reused_by_the_fast_path() {
    let mut pt = table(vtd(4, 0b11, false));
    pt.map(0x20_0000, 0x1000, 0x1000, Prot::RW).unwrap(); // creates the leaf table
    pt.map(0x20_1000, 0x2000, 0x1000, Prot::RW).unwrap(); // single-table fast path
    let un = pt.unmap(0x20_0000, 0x20_0000).unwrap(); // covers it: unlinked
    assert_eq!(un.freed.len(), 1);
    pt.release(un.freed);
    pt.map(0x20_3000, 0x3000, 0x1000, Prot::RW).unwrap();
    assert_eq!(pt.iova_to_phys(0x20_3000), Some(0x3000));
    let mut leaves = 0;
    pt.walk(|e| leaves += usize::from(matches!(e.kind, EntryKind::Leaf(_))));
    assert_eq!(leaves, 1);
}

#[test]
fn freed_upper_tables_are_not_reused_by_the_fast_path() {
    let mut pt = table(vtd(4, 0b11, false));
    pt.map(0x4000_0000, 0x1000, 0x1000, Prot::RW).unwrap(); // page directory + leaf table
    pt.map(0x4000_1000, 0x2000, 0x1000, Prot::RW).unwrap(); // fast path: walk cached
    let un = pt.unmap(0x4000_0000, 0x4000_0000).unwrap(); // the whole GiB: both unlinked
    assert_eq!(un.freed.len(), 2);
    pt.release(un.freed);
    // One call over two leaf tables of another GiB takes the freed pages back for
    // a new page directory and its first leaf table.
    pt.map(0x8000_0000, 0x10_0000, 0x20_1000, Prot::RW).unwrap();
    // A walk starting at the cached (freed, now reused) page directory would land
    // in the other GiB's second leaf table.
    pt.map(0x4020_0000, 0x3000, 0x1000, Prot::RW).unwrap();
    assert_eq!(pt.iova_to_phys(0x4020_0000), Some(0x3000));
    assert_eq!(pt.iova_to_phys(0x8020_0000), Some(0x30_0000));
    assert_eq!(pt.iova_to_phys(0x4000_0000), None);
    let mut leaves = 0;
    pt.walk(|e| leaves += usize::from(matches!(e.kind, EntryKind::Leaf(_))));
    assert_eq!(leaves, 513 + 1);
}

#[test]
fn tables_can_move_between_threads() {
    fn assert_send<T: Send>(_: &T) {}
    let mut pt = table(vtd(4, 0b11, false));
    assert_send(&pt);
    pt.map(0x1000, 0x1000, 0x1000, Prot::RW).unwrap();
    let pt = std::thread::spawn(move || {
        let mut pt = pt;
        pt.map(0x2000, 0x2000, 0x1000, Prot::RW).unwrap();
        pt
    })
    .join()
    .unwrap();
    assert_eq!(pt.iova_to_phys(0x2000), Some(0x2000));
    let boxed: Box<dyn io_page_table::IoPageTable + Send> = Box::new(pt);
    assert_eq!(boxed.iova_to_phys(0x1000), Some(0x1000));
}

/// The hardware's walk, level by level: a 4 KiB leaf is reached through
/// three tables, a 2 MiB leaf through two, and an IOVA nothing maps ends at
/// the first empty entry; each step names the entry's bits that are set.
#[test]
fn walk_to_shows_each_level_the_iommu_reads() {
    use io_page_table::{StepKind, WalkStep};
    let mut pt = table(vtd(4, 0b01, false));
    pt.map(0x4020_1000, 0x8000_3000, 0x1000, Prot::RW).unwrap();
    pt.map(0x4060_0000, 0x9000_0000, 0x20_0000, Prot::READ)
        .unwrap();
    let steps = |iova| {
        let mut v: Vec<WalkStep> = Vec::new();
        pt.walk_to(iova, |step| v.push(*step));
        v
    };
    let small = steps(0x4020_1234);
    assert_eq!(
        small.iter().map(|s| s.level).collect::<Vec<_>>(),
        [3, 2, 1, 0]
    );
    assert!(matches!(small[0].kind, StepKind::Table { .. }));
    assert_eq!(small[0].index, 0);
    assert_eq!(small[1].index, 1, "bits 38:30 of 0x4020_1234");
    assert_eq!(small[3].index, 1, "bits 20:12");
    assert_eq!(
        small[3].kind,
        StepKind::Leaf {
            phys: 0x8000_3000,
            size: 0x1000
        }
    );
    let set: Vec<&str> = small[3]
        .bits
        .iter()
        .filter(|(_, mask)| small[3].entry & mask != 0)
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(set, ["R", "W"]);
    // Each step reads the table the step before linked.
    for pair in small.windows(2) {
        assert_eq!(
            pair[0].kind,
            StepKind::Table {
                next: pair[1].table
            }
        );
    }
    let large = steps(0x4060_0000);
    assert_eq!(large.len(), 3);
    assert_eq!(
        large[2].kind,
        StepKind::Leaf {
            phys: 0x9000_0000,
            size: 0x20_0000
        }
    );
    let absent = steps(0x7000_0000);
    assert_eq!(absent.last().unwrap().kind, StepKind::Empty);
    assert!(steps(1 << 50).is_empty(), "beyond the table");
}

#[test]
fn a_cursor_never_takes_a_new_table_for_a_dropped_one_at_the_same_root() {
    let mut cursor = io_page_table::WalkCursor::new();
    let first = table(vtd(4, 0, false));
    // The first map builds the tables; the second walks them, so the
    // cursor ends holding the leaf table.
    for (iova, phys) in [(0x20_0000, 0x1000), (0x20_1000, 0x2000)] {
        // SAFETY: one caller, so no other call touches the range.
        unsafe { first.map_with(&mut cursor, iova, phys, 0x1000, Prot::RW) }.unwrap();
    }
    let root = first.root_phys();
    drop(first);
    // Each heap allocator hands out the same first page: the new table's root
    // is where the dropped one's was, at the same number of unlinks (none).
    let second = table(vtd(4, 0, false));
    assert_eq!(second.root_phys(), root);
    // The cursor's leaf table was the dropped table's: the new table must get
    // tables of its own, not an entry in freed memory.
    // SAFETY: as above.
    unsafe { second.map_with(&mut cursor, 0x20_2000, 0x3000, 0x1000, Prot::RW) }.unwrap();
    assert_eq!(second.iova_to_phys(0x20_2000), Some(0x3000));
    assert_eq!(second.allocator().live_pages(), 4);
}

/// The physical address of the level-`level` table `pt`'s walk to `iova` reads.
fn table_on_walk<F: io_page_table::Format>(
    pt: &PageTable<F, HeapTableAlloc>,
    iova: u64,
    level: u32,
) -> u64 {
    let mut table = None;
    pt.walk_to(iova, |step| {
        if step.level == level {
            table = Some(step.table);
        }
    });
    table.expect("the walk reads that level")
}

#[test]
fn a_cursor_forgets_the_level_1_tables_it_remembered_once_an_unmap_unlinks_them() {
    let mut cursor = io_page_table::WalkCursor::new();
    let pt = table(vtd(4, 0, false));
    const GIB: u64 = 1 << 30;
    // Two pages in the first GiB (the second map walks the tables the
    // first built), then one in the second GiB: the cursor remembers the
    // first GiB's level-1 table beside its last walk.
    for (iova, phys) in [(0x20_0000, 0x1000), (0x20_1000, 0x1000), (GIB, 0x2000)] {
        // SAFETY: one caller, so no other call touches the range.
        unsafe { pt.map_with(&mut cursor, iova, phys, 0x1000, Prot::RW) }.unwrap();
    }
    let first_level_1 = table_on_walk(&pt, 0x20_0000, 1);
    // The first GiB goes whole: its level-1 table is unlinked and freed.
    // SAFETY: as above.
    let unmapped = unsafe { pt.unmap_shared(0, GIB) }.unwrap();
    assert_eq!(unmapped.freed.len(), 2);
    pt.release(unmapped.freed);
    // The third GiB's new tables reuse the freed pages, its level-1 table
    // the first GiB's: a walk for the first GiB through the remembered
    // table would now land in the third GiB.
    for (iova, phys) in [(2 * GIB + 0x40_1000, 0x3000), (GIB + 0x1000, 0x4000)] {
        // SAFETY: as above.
        unsafe { pt.map_with(&mut cursor, iova, phys, 0x1000, Prot::RW) }.unwrap();
    }
    assert_eq!(table_on_walk(&pt, 2 * GIB, 1), first_level_1);
    // From the second GiB's walk, the first GiB's would start at the
    // remembered level-1 table: it must not.
    // SAFETY: as above.
    unsafe { pt.map_with(&mut cursor, 0x40_0000, 0x5000, 0x1000, Prot::RW) }.unwrap();
    assert_eq!(pt.iova_to_phys(0x40_0000), Some(0x5000));
    assert_eq!(pt.iova_to_phys(2 * GIB + 0x40_0000), None);
    assert_eq!(pt.allocator().live_pages(), 8);
}

#[test]
fn a_new_leaf_table_is_written_whole_before_it_is_linked() {
    let mut pt = PageTable::new(
        vtd(4, 0, false),
        HeapTableAlloc::with_device_view(),
        Coherence::NonCoherent,
    )
    .unwrap();
    // A leaf table made and unlinked again: its page goes back poisoned.
    pt.map(0x20_0000, 0x1000, 0x1000, Prot::RW).unwrap();
    let unmapped = pt.unmap(0x20_0000, 0x20_0000).unwrap();
    assert_eq!(unmapped.freed.len(), 1);
    pt.release(unmapped.freed);
    let pages = pt.allocator().live_pages();
    // The next leaf table comes from that page, not zeroed: every entry must
    // be written, the two leaves and zero around them, as the CPU and a
    // walker that does not snoop see it.
    pt.map(0x30_0000, 0x7000_0000, 0x2000, Prot::RW).unwrap();
    assert_eq!(pt.allocator().live_pages(), pages + 1);
    let mut leaf_table = None;
    pt.walk(|e| {
        if let (1, EntryKind::Table(t)) = (e.level, e.kind) {
            leaf_table = Some(t);
        }
    });
    let leaf_table = leaf_table.unwrap();
    let alloc = pt.allocator();
    for i in 0..512u64 {
        let (cpu, device) = (
            alloc.cpu_read(leaf_table + 8 * i),
            alloc.device_read(leaf_table + 8 * i),
        );
        assert_eq!(cpu, device, "entry {i} not cleaned");
        match i {
            0x100 | 0x101 => assert_eq!(cpu & !0xFFF, 0x7000_0000 + (i - 0x100) * 0x1000),
            _ => assert_eq!(cpu, 0, "entry {i}"),
        }
    }
}
