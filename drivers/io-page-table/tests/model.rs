//! Model-based property tests: random map/unmap sequences against a plain model,
//! checked through the independent reference walkers after every step.

mod common;

use std::collections::BTreeMap;

use common::{ArmStage, Malformed, RefLeaf};
use io_page_table::heap::HeapTableAlloc;
use io_page_table::{
    AmdV1, AmdV1Config, ArmConfig, ArmLpae, Coherence, Format, Granule, MapError, PageTable, Prot,
    Stage, UnmapError, VtdSecondStage, VtdSsConfig, X86_64, X86Config,
};
use proptest::prelude::*;

type RefWalk = Box<dyn Fn(&HeapTableAlloc, u64, u64) -> Result<Option<RefLeaf>, Malformed>>;

/// One format configuration under test.
struct Subject<F: Format> {
    pt: PageTable<F, HeapTableAlloc>,
    walk: RefWalk,
    /// Model: IOVA range start → (length, phys, prot). Ranges never overlap.
    model: BTreeMap<u64, (u64, u64, Prot)>,
    /// Whether the format can refuse reads (VT-d SS, AMD v1, ARM S2).
    exact_read: bool,
    /// Whether the format can express write-only (VT-d SS, AMD, ARM S2).
    write_only: bool,
}

#[derive(Clone, Debug)]
enum Op {
    /// Map at unit-based offsets (scaled by the format's level sizes).
    Map {
        at: [u64; UNITS],
        len: [u64; UNITS],
        delta: [u64; UNITS],
        prot: u8,
    },
    Unmap {
        at: [u64; UNITS],
        len: [u64; UNITS],
    },
    /// Unmap the n-th model range exactly.
    UnmapRange {
        n: usize,
    },
    /// Unmap the whole level-1 slot around the n-th model range's start (frees
    /// its leaf table).
    UnmapSlot {
        n: usize,
    },
    /// Map with the allocator failing at every call in turn.
    MapFailing {
        at: [u64; UNITS],
        len: [u64; UNITS],
        delta: [u64; UNITS],
    },
}

/// Offsets and lengths are sums of these units: the smallest page, the smallest
/// contiguous run of them (the page again where there is none), the level-1 and
/// the level-2 entry.
const UNITS: usize = 4;

fn units<F: Format>(pt: &PageTable<F, HeapTableAlloc>) -> [u64; UNITS] {
    let g = pt.geometry();
    let level_size = |level: u32| 1u64 << g.shift(level.min(g.levels.saturating_sub(1))).min(40);
    let page = level_size(0);
    let between = pt.page_sizes() & !((page << 1) - 1) & (level_size(1) - 1);
    let run = if between == 0 {
        page
    } else {
        1 << between.trailing_zeros()
    };
    [page, run, level_size(1), level_size(2)]
}

fn scale(u: &[u64; UNITS], k: &[u64; UNITS]) -> u64 {
    u.iter()
        .zip(k)
        .fold(0u64, |sum, (u, k)| sum.wrapping_add(u.wrapping_mul(*k)))
}

fn prot_of(p: u8) -> Prot {
    match p % 5 {
        0 => Prot::RW,
        1 => Prot::READ,
        2 => Prot::WRITE | Prot::CACHE,
        3 => Prot::RW | Prot::NOEXEC,
        _ => Prot::READ | Prot::MMIO,
    }
}

/// Every present entry (level, iova, raw) and the live page count.
fn snapshot<F: Format>(pt: &PageTable<F, HeapTableAlloc>) -> (Vec<(u32, u64, u64)>, usize) {
    let mut v = Vec::new();
    pt.walk(|e| v.push((e.level, e.iova, e.pte)));
    (v, pt.allocator().live_pages())
}

impl<F: Format> Subject<F> {
    fn new(
        format: F,
        coherence: Coherence,
        walk: RefWalk,
        exact_read: bool,
        write_only: bool,
    ) -> Self {
        let alloc = match coherence {
            Coherence::Coherent => HeapTableAlloc::new(),
            Coherence::NonCoherent => HeapTableAlloc::with_device_view(),
        };
        let pt = PageTable::new(format, alloc, coherence).unwrap();
        Subject {
            pt,
            walk,
            model: BTreeMap::new(),
            exact_read,
            write_only,
        }
    }

    fn overlaps(&self, iova: u64, last: u64) -> bool {
        self.model
            .range(..=last)
            .next_back()
            .is_some_and(|(&start, &(len, _, _))| start + (len - 1) >= iova)
    }

    fn ref_walk(&self, iova: u64) -> Option<RefLeaf> {
        (self.walk)(self.pt.allocator(), self.pt.root_phys(), iova)
            .unwrap_or_else(|m| panic!("malformed at {iova:#x}: {m:?}"))
    }

    fn apply(&mut self, op: &Op) {
        let u = units(&self.pt);
        let g = *self.pt.geometry();
        let max_iova = g.max_iova();
        match op {
            Op::Map {
                at,
                len,
                delta,
                prot,
            } => {
                let iova = scale(&u, at) & max_iova;
                let len = scale(&u, len).max(u[0]);
                let phys = iova.wrapping_add(scale(&u, delta)) & g.max_phys() & !(u[0] - 1);
                self.map_checked(iova, phys, len, prot_of(*prot));
            }
            Op::MapFailing { at, len, delta } => {
                let iova = scale(&u, at) & max_iova;
                let len = scale(&u, len).max(u[0]);
                let phys = iova.wrapping_add(scale(&u, delta)) & g.max_phys() & !(u[0] - 1);
                // Fail the first allocations one by one, then ever later ones.
                let points = (0..4).chain((2..20).map(|e| (1usize << e) - 1));
                for k in points {
                    self.pt_alloc_fail(Some(k));
                    let before = snapshot(&self.pt);
                    let r = self.pt.map(iova, phys, len, Prot::RW);
                    if r == Err(MapError::NoMemory) {
                        assert_eq!(
                            snapshot(&self.pt),
                            before,
                            "partial state after allocation failure {k}"
                        );
                        continue;
                    }
                    // Undo whatever happened and redo through the checked path.
                    if r.is_ok() {
                        let un = self.pt.unmap(iova, len).unwrap();
                        self.pt.release(un.freed);
                    }
                    break;
                }
                self.pt_alloc_fail(None);
                self.map_checked(iova, phys, len, Prot::RW);
            }
            Op::Unmap { at, len } => {
                let iova = scale(&u, at) & max_iova;
                let len = scale(&u, len).max(u[0]);
                self.unmap_checked(iova, len);
            }
            Op::UnmapSlot { n } => {
                if self.model.is_empty() {
                    return;
                }
                let (&iova, _) = self.model.iter().nth(n % self.model.len()).unwrap();
                let size = u[2].max(u[0]);
                self.unmap_checked(iova & !(size - 1), size);
            }
            Op::UnmapRange { n } => {
                if self.model.is_empty() {
                    return;
                }
                let (&iova, &(len, _, _)) = self.model.iter().nth(n % self.model.len()).unwrap();
                self.unmap_checked(iova, len);
            }
        }
    }

    fn pt_alloc_fail(&mut self, k: Option<usize>) {
        self.pt.allocator_mut().fail_at(k);
    }

    fn map_checked(&mut self, iova: u64, phys: u64, len: u64, prot: Prot) {
        let g = *self.pt.geometry();
        let before = snapshot(&self.pt);
        let result = self.pt.map(iova, phys, len, prot);
        let last = iova.checked_add(len - 1);
        let expected_ok = match last {
            None => false,
            Some(last) => {
                last <= g.max_iova()
                    && phys.checked_add(len - 1).is_some_and(|p| p <= g.max_phys())
                    && !self.overlaps(iova, last)
            }
        };
        match result {
            Ok(gather) => {
                assert!(
                    expected_ok,
                    "map {iova:#x}+{len:#x} succeeded over {:?}",
                    self.model
                );
                assert_eq!((gather.start, gather.last), (iova, iova + (len - 1)));
                self.model.insert(iova, (len, phys, prot));
                self.check_range(iova, len);
            }
            Err(e) => {
                assert!(
                    !expected_ok,
                    "map {iova:#x}+{len:#x} -> {phys:#x} failed: {e:?}"
                );
                if let MapError::AlreadyMapped { iova: at } = e {
                    let page = u64::from(1u32) << g.granule_shift;
                    assert!(self.overlaps(at, at + (page - 1)));
                    // The first conflict: nothing mapped before it in the range.
                    assert!(at == iova || !self.overlaps(iova, at - 1), "{e:?}");
                }
                assert_eq!(
                    snapshot(&self.pt),
                    before,
                    "map error {e:?} changed the tables"
                );
            }
        }
        self.check_all();
    }

    fn unmap_checked(&mut self, iova: u64, len: u64) {
        let g = *self.pt.geometry();
        let before = snapshot(&self.pt);
        let result = self.pt.unmap(iova, len);
        let Some(last) = iova.checked_add(len - 1).filter(|&l| l <= g.max_iova()) else {
            assert_eq!(result.unwrap_err(), UnmapError::IovaOutOfRange);
            return;
        };
        // The reference walker says whether a leaf straddles either end.
        let split = [iova, last].iter().find_map(|&a| {
            self.ref_walk(a)
                .filter(|l| l.leaf_iova < iova || l.leaf_iova + (l.size - 1) > last)
        });
        match (result, split) {
            (
                Err(UnmapError::SplitsLeaf {
                    leaf_iova,
                    leaf_size,
                }),
                Some(l),
            ) => {
                assert_eq!((leaf_iova, leaf_size), (l.leaf_iova, l.size));
                assert_eq!(
                    snapshot(&self.pt),
                    before,
                    "refused unmap changed the tables"
                );
            }
            (Ok(un), None) => {
                // Cut the model.
                let mut expected = 0;
                let hits: Vec<u64> = self
                    .model
                    .range(..=last)
                    .filter(|&(&s, &(l, _, _))| s + (l - 1) >= iova)
                    .map(|(&s, _)| s)
                    .collect();
                for s in hits {
                    let (l, p, prot) = self.model.remove(&s).unwrap();
                    let cut_lo = s.max(iova);
                    let cut_hi = (s + (l - 1)).min(last);
                    expected += cut_hi - cut_lo + 1;
                    if s < cut_lo {
                        self.model.insert(s, (cut_lo - s, p, prot));
                    }
                    if cut_hi < s + (l - 1) {
                        self.model.insert(
                            cut_hi + 1,
                            (s + (l - 1) - cut_hi, p + (cut_hi + 1 - s), prot),
                        );
                    }
                }
                assert_eq!(un.bytes, expected, "unmap {iova:#x}+{len:#x}");
                if un.bytes > 0 {
                    assert!(
                        un.gather.start >= iova && un.gather.last <= last,
                        "{:?}",
                        un.gather
                    );
                    assert!(un.gather.leaf_sizes & self.pt.page_sizes() != 0);
                } else {
                    assert!(un.gather.leaf_sizes == 0);
                }
                if !un.freed.is_empty() {
                    assert!(un.gather.freed_tables);
                }
                // The freed pages are still readable (not yet released): the old
                // tree stays intact for in-flight walks until the flush.
                self.pt.release(un.freed);
                self.check_range(iova, len);
            }
            (r, s) => panic!("unmap {iova:#x}+{len:#x}: got {r:?}, reference leaf {s:?}"),
        }
        self.check_all();
    }

    /// Pages of the range (a sample) agree with the model.
    fn check_range(&self, iova: u64, len: u64) {
        let gran = 1u64 << self.pt.geometry().granule_shift;
        let pages = len / gran;
        let mut samples = vec![
            0,
            1,
            pages / 2,
            pages.saturating_sub(1),
            pages.saturating_sub(2),
        ];
        samples.retain(|&p| p < pages);
        for p in samples {
            self.check_page(iova + p * gran);
        }
        if iova >= gran {
            self.check_page(iova - gran);
        }
        if let Some(after) = iova
            .checked_add(len)
            .filter(|&a| a <= self.pt.geometry().max_iova())
        {
            self.check_page(after);
        }
    }

    fn check_page(&self, iova: u64) {
        let expect = self
            .model
            .range(..=iova)
            .next_back()
            .filter(|&(&s, &(l, _, _))| s + (l - 1) >= iova)
            .map(|(&s, &(_, p, prot))| (p + (iova - s), prot));
        let got = self.ref_walk(iova);
        match (expect, got) {
            (None, None) => {}
            (Some((phys, prot)), Some(leaf)) => {
                assert_eq!(leaf.phys, phys, "iova {iova:#x}");
                assert_eq!(self.pt.iova_to_phys(iova), Some(phys));
                let want_w = prot.contains(Prot::WRITE);
                let want_r = prot.contains(Prot::READ) || !self.write_only;
                assert_eq!(leaf.write, want_w, "write permission at {iova:#x}");
                if self.exact_read {
                    assert_eq!(leaf.read, want_r, "read permission at {iova:#x}");
                }
            }
            (e, g) => panic!("iova {iova:#x}: model {e:?}, reference walker {g:?}"),
        }
    }

    /// Every model range's ends and middle translate; leaf bytes total the model.
    fn check_all(&self) {
        let mut leaf_bytes = 0u64;
        self.pt.walk(|e| {
            if matches!(e.kind, io_page_table::EntryKind::Leaf(_)) {
                leaf_bytes += e.size;
            }
        });
        let model_bytes: u64 = self.model.values().map(|&(l, _, _)| l).sum();
        assert_eq!(leaf_bytes, model_bytes, "mapped bytes");
        let gran = 1u64 << self.pt.geometry().granule_shift;
        for (&s, &(l, _, _)) in &self.model {
            self.check_page(s);
            self.check_page(s + (l - gran));
            self.check_page(s + (l / gran / 2) * gran);
        }
    }

    /// Unmap everything: only the root may remain.
    fn finish(mut self) {
        let g = *self.pt.geometry();
        let half = (g.max_iova() >> 1) + 1;
        for start in [0, half] {
            let un = self.pt.unmap(start, half).unwrap();
            self.pt.release(un.freed);
        }
        assert_eq!(self.pt.allocator().live_pages(), 1, "table pages leaked");
        assert_eq!(self.pt.table_pages(), 1);
        self.model.clear();
        self.check_all();
    }
}

fn op() -> impl Strategy<Value = Op> {
    let at = [0u64..6, 0u64..3, 0u64..4, 0u64..3];
    // Whole top-unit lengths (1 GiB at 4K) are rare: with a misaligned phys they
    // are 2^18 leaves, slow to check in a debug build.
    let big = prop_oneof![12 => Just(0u64), 1 => Just(1u64)];
    let len = (0u64..5, 0u64..3, 0u64..3, big).prop_map(|(a, r, b, c)| [a, r, b, c]);
    let delta = [0u64..3, 0u64..2, 0u64..2, 0u64..2];
    prop_oneof![
        4 => (at.clone(), len.clone(), delta.clone(), any::<u8>())
            .prop_map(|(at, len, delta, prot)| Op::Map { at, len, delta, prot }),
        2 => (at.clone(), len.clone()).prop_map(|(at, len)| Op::Unmap { at, len }),
        2 => any::<usize>().prop_map(|n| Op::UnmapRange { n }),
        1 => any::<usize>().prop_map(|n| Op::UnmapSlot { n }),
        1 => (at, len, delta).prop_map(|(at, len, delta)| Op::MapFailing { at, len, delta }),
    ]
}

fn run<F: Format>(mut s: Subject<F>, ops: &[Op]) {
    for op in ops {
        s.apply(op);
    }
    s.finish();
}

fn vtd(levels: u32, coherence: Coherence) -> Subject<VtdSecondStage> {
    let f = VtdSecondStage::new(VtdSsConfig {
        levels,
        sllps: 0b11,
        snoop: true,
        output_bits: 48,
    })
    .unwrap();
    Subject::new(
        f,
        coherence,
        Box::new(move |a, root, iova| common::vtd_ss(&|p| a.device_read(p), root, levels, iova)),
        true,
        true,
    )
}

fn x86(levels: u32, coherence: Coherence) -> Subject<X86_64> {
    let f = X86_64::new(X86Config {
        levels,
        user: true,
        nx: true,
        leaf_1g: true,
        output_bits: 52,
    })
    .unwrap();
    Subject::new(
        f,
        coherence,
        Box::new(move |a, root, iova| common::x86(&|p| a.device_read(p), root, levels, true, iova)),
        false,
        false,
    )
}

fn amd(levels: u32, nl7_pages: bool, coherence: Coherence) -> Subject<AmdV1> {
    let f = AmdV1::new(AmdV1Config {
        levels,
        output_bits: 52,
        nl7_pages,
    })
    .unwrap();
    Subject::new(
        f,
        coherence,
        Box::new(move |a, root, iova| common::amd_v1(&|p| a.device_read(p), root, levels, iova)),
        true,
        true,
    )
}

fn arm(
    stage: Stage,
    granule: Granule,
    input_bits: u32,
    contiguous: bool,
    coherence: Coherence,
) -> Subject<ArmLpae> {
    let f = ArmLpae::new(ArmConfig {
        stage,
        granule,
        input_bits,
        output_bits: 44,
        contiguous,
    })
    .unwrap();
    let (s, tg, t0sz, sl0) = match stage {
        Stage::Stage1 => {
            let fl = f.stage1_fields();
            (ArmStage::S1, fl.tg0, fl.t0sz, 0)
        }
        Stage::Stage2 => {
            let fl = f.stage2_fields();
            (ArmStage::S2, fl.tg, fl.t0sz, fl.sl0)
        }
    };
    Subject::new(
        f,
        coherence,
        Box::new(move |a, root, iova| {
            common::arm(&|p| a.device_read(p), root, s, tg, t0sz, sl0, iova)
        }),
        stage == Stage::Stage2,
        stage == Stage::Stage2,
    )
}

fn coherence(nc: bool) -> Coherence {
    if nc {
        Coherence::NonCoherent
    } else {
        Coherence::Coherent
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn vtd_second_stage(levels in 3u32..=5, nc in any::<bool>(), ops in prop::collection::vec(op(), 1..20)) {
        run(vtd(levels, coherence(nc)), &ops);
    }

    #[test]
    fn x86_64_format(levels in 4u32..=5, nc in any::<bool>(), ops in prop::collection::vec(op(), 1..20)) {
        run(x86(levels, coherence(nc)), &ops);
    }

    #[test]
    fn amd_v1_format(levels in 1u32..=6, nl7 in any::<bool>(), nc in any::<bool>(),
                     ops in prop::collection::vec(op(), 1..20)) {
        run(amd(levels, nl7, coherence(nc)), &ops);
    }

    #[test]
    fn arm_lpae(s2 in any::<bool>(), g in 0u8..3, ias in prop::sample::select(vec![32u32, 39, 40, 44, 48]),
                contiguous in any::<bool>(), nc in any::<bool>(),
                ops in prop::collection::vec(op(), 1..20)) {
        let granule = [Granule::K4, Granule::K16, Granule::K64][g as usize];
        let stage = if s2 { Stage::Stage2 } else { Stage::Stage1 };
        run(arm(stage, granule, ias, contiguous, coherence(nc)), &ops);
    }
}

/// A fixed sequence through the model harness: a fast-path map after the leaf
/// table it last used was freed must walk again.
#[test]
fn fast_path_after_freed_table() {
    let map = |a0, a1| Op::Map {
        at: [a0, 0, a1, 0],
        len: [1, 0, 0, 0],
        delta: [0, 0, 0, 0],
        prot: 0,
    };
    let ops = [map(1, 1), map(2, 1), Op::UnmapSlot { n: 0 }, map(3, 1)];
    run(vtd(4, Coherence::Coherent), &ops);
    run(
        arm(
            Stage::Stage1,
            Granule::K16,
            48,
            false,
            Coherence::NonCoherent,
        ),
        &ops,
    );
}
