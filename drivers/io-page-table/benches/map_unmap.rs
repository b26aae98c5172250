//! `cargo bench -p io-page-table`: this crate against the naive per-page walk and
//! the `x86_64` crate's `OffsetPageTable`, on host memory. Results and targets are
//! tabulated in BENCHMARKS.md at the repository root.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use io_page_table::heap::HeapTableAlloc;
use io_page_table::{
    Coherence, Format, PageTable, Prot, VtdSecondStage, VtdSsConfig, WalkCursor, X86_64, X86Config,
};
use support::{Naive, X86Crate};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// Where the benchmarks map: 1 GiB-aligned, away from zero.
const BASE: u64 = 0x40_0000_0000;
/// A physical address that is 4 KiB but not 2 MiB aligned: forces 4 KiB leaves.
const PHYS_4K: u64 = 0x1_0000_1000;

type Table<F> = PageTable<F, HeapTableAlloc>;

/// Hands `result` to the optimizer as read in full, by reference, and gives
/// it back to be checked. Every timed call of every row, this crate's and the
/// baselines', observes its whole result this way, once, as a caller that
/// keeps it would. (`black_box(result)` by value would copy it too, which no
/// caller does: for an `unmap`'s 48-byte result that copy was about a
/// quarter of the one-page row's instructions, and the naive walk's `bool`
/// paid nothing alike.)
#[inline(always)]
fn observed<T>(result: T) -> T {
    black_box(&result);
    result
}

fn x86() -> Table<X86_64> {
    let f = X86_64::new(X86Config {
        levels: 4,
        user: true,
        nx: false,
        leaf_1g: true,
        output_bits: 52,
    })
    .unwrap();
    PageTable::new(f, HeapTableAlloc::new(), Coherence::Coherent).unwrap()
}

fn vtd(sllps: u8) -> Table<VtdSecondStage> {
    let f = VtdSecondStage::new(VtdSsConfig {
        levels: 4,
        sllps,
        snoop: false,
        output_bits: 48,
    })
    .unwrap();
    PageTable::new(f, HeapTableAlloc::new(), Coherence::Coherent).unwrap()
}

fn unmap_release<F: Format>(pt: &mut Table<F>, iova: u64, len: u64) {
    let un = pt.unmap(iova, len).unwrap();
    pt.release(un.freed);
}

/// Unmaps `[iova, iova + len)` without freeing any table: every 2 MiB table is
/// cut in two pieces, so no unmap covers it whole.
fn unmap_keep_tables<F: Format>(pt: &mut Table<F>, iova: u64, len: u64) {
    let mut at = iova;
    while at < iova + len {
        let chunk = (M2 - (at & (M2 - 1))).min(iova + len - at);
        if chunk == M2 {
            for (a, l) in [(at, M2 - K4), (at + M2 - K4, K4)] {
                let un = pt.unmap(a, l).unwrap();
                pt.release(un.freed);
            }
        } else {
            let un = pt.unmap(at, chunk).unwrap();
            pt.release(un.freed);
        }
        at += chunk;
    }
}

/// Runs `op(k)` for `iters` operations in batches of `batch`, timing only the ops;
/// `undo(k)` restores the state between batches, untimed.
fn batched<S>(
    state: &mut S,
    iters: u64,
    batch: u64,
    op: impl Fn(&mut S, u64),
    undo: impl Fn(&mut S, u64),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = batch.min(iters - done);
        let start = Instant::now();
        for k in 0..n {
            op(state, k);
        }
        total += start.elapsed();
        for k in 0..n {
            undo(state, k);
        }
        done += n;
    }
    total
}

/// `ops` one-page unmaps at `BASE`, 256 at a time (the 2 MiB there mapped);
/// the maps that undo them are untimed.
fn time_unmaps(pt: &mut Table<X86_64>, ops: u64) -> Duration {
    batched(
        pt,
        ops,
        256,
        |pt, k| {
            let un = observed(pt.unmap(BASE + k * K4, K4)).unwrap();
            debug_assert!(un.freed.is_empty());
        },
        |pt, k| {
            pt.map(BASE + k * K4, PHYS_4K + k * K4, K4, Prot::RW)
                .unwrap();
        },
    )
}

/// [`time_unmaps`] for the naive walk (pages 1 to 256 after `BASE` mapped).
fn time_naive_unmaps(n: &mut Naive, ops: u64) -> Duration {
    batched(
        n,
        ops,
        256,
        |n, k| assert!(observed(n.unmap_4k(BASE + (k + 1) * K4))),
        |n, k| {
            n.map_4k(BASE + (k + 1) * K4, k * K4);
        },
    )
}

/// `ops` one-page maps at the scattered `pages`, a pass over them at a time
/// (their tables made); the unmaps that undo them are untimed.
fn time_scattered_maps(pt: &mut Table<X86_64>, pages: &[u64], ops: u64) -> Duration {
    batched(
        pt,
        ops,
        pages.len() as u64,
        |pt, k| {
            observed(pt.map(BASE + pages[k as usize] * K4, PHYS_4K, K4, Prot::RW)).unwrap();
        },
        |pt, k| unmap_release(pt, BASE + pages[k as usize] * K4, K4),
    )
}

/// [`time_scattered_maps`] for the naive walk.
fn time_naive_scattered_maps(n: &mut Naive, pages: &[u64], ops: u64) -> Duration {
    batched(
        n,
        ops,
        pages.len() as u64,
        |n, k| assert!(observed(n.map_4k(BASE + pages[k as usize] * K4, 0))),
        |n, k| {
            n.unmap_4k(BASE + pages[k as usize] * K4);
        },
    )
}

/// `times` maps of 1 GiB of 4 KiB pages at `BASE`; `undo` (untimed) takes
/// each back: keeping the tables (warm) or releasing them (new tables).
fn time_maps_1g(pt: &mut Table<X86_64>, times: u64, undo: fn(&mut Table<X86_64>)) -> Duration {
    batched(
        pt,
        times,
        1,
        |pt, _| {
            observed(pt.map(BASE, PHYS_4K, G1, Prot::RW)).unwrap();
        },
        |pt, _| undo(pt),
    )
}

/// [`time_maps_1g`]'s undo for warm tables.
fn keep_tables_1g(pt: &mut Table<X86_64>) {
    unmap_keep_tables(pt, BASE, G1);
}

/// [`time_maps_1g`]'s undo for new tables.
fn release_tables_1g(pt: &mut Table<X86_64>) {
    unmap_release(pt, BASE, G1);
}

/// A group with short warm-up and measurement, so the whole run takes minutes.
fn quick<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200))
        .sample_size(20);
    g
}

fn map_1x4k(c: &mut Criterion) {
    let mut g = quick(c, "map_1x4k");
    g.bench_function("crate", |b| {
        let mut pt = x86();
        pt.map(BASE, PHYS_4K, M2, Prot::RW).unwrap();
        unmap_keep_tables(&mut pt, BASE, M2);
        b.iter_custom(|iters| {
            batched(
                &mut pt,
                iters,
                256,
                |pt, k| {
                    observed(pt.map(BASE + k * K4, PHYS_4K + k * K4, K4, Prot::RW)).unwrap();
                },
                |pt, k| unmap_release(pt, BASE + k * K4, K4),
            )
        })
    });
    g.bench_function("naive", |b| {
        let mut n = Naive::new();
        n.map_4k(BASE, 0);
        b.iter_custom(|iters| {
            batched(
                &mut n,
                iters,
                256,
                |n, k| assert!(observed(n.map_4k(BASE + (k + 1) * K4, k * K4))),
                |n, k| {
                    n.unmap_4k(BASE + (k + 1) * K4);
                },
            )
        })
    });
    g.bench_function("x86_64_crate", |b| {
        let mut x = X86Crate::new(64);
        x.map_4k(BASE, 0);
        b.iter_custom(|iters| {
            batched(
                &mut x,
                iters,
                256,
                |x, k| x.map_4k(BASE + (k + 1) * K4, k * K4),
                |x, k| x.unmap_4k(BASE + (k + 1) * K4),
            )
        })
    });
    g.finish();
}

fn unmap_1x4k(c: &mut Criterion) {
    let mut g = quick(c, "unmap_1x4k");
    g.bench_function("crate", |b| {
        let mut pt = x86();
        pt.map(BASE, PHYS_4K, M2, Prot::RW).unwrap();
        b.iter_custom(|iters| time_unmaps(&mut pt, iters))
    });
    g.bench_function("naive", |b| {
        let mut n = Naive::new();
        for k in 0..257 {
            n.map_4k(BASE + k * K4, k * K4);
        }
        b.iter_custom(|iters| time_naive_unmaps(&mut n, iters))
    });
    g.bench_function("x86_64_crate", |b| {
        let mut x = X86Crate::new(64);
        for k in 0..257 {
            x.map_4k(BASE + k * K4, k * K4);
        }
        b.iter_custom(|iters| {
            batched(
                &mut x,
                iters,
                256,
                |x, k| x.unmap_4k(BASE + (k + 1) * K4),
                |x, k| x.map_4k(BASE + (k + 1) * K4, k * K4),
            )
        })
    });
    g.finish();
}

/// 256 × 4 KiB = 1 MiB; batches use 16 distinct, warm 1 MiB regions.
const R256: u64 = 256 * K4;

fn map_256x4k(c: &mut Criterion) {
    let mut g = quick(c, "map_256x4k");
    g.bench_function("crate", |b| {
        let mut pt = x86();
        pt.map(BASE, PHYS_4K, 16 * R256, Prot::RW).unwrap();
        unmap_keep_tables(&mut pt, BASE, 16 * R256);
        b.iter_custom(|iters| {
            batched(
                &mut pt,
                iters,
                16,
                |pt, k| {
                    observed(pt.map(BASE + k * R256, PHYS_4K, R256, Prot::RW)).unwrap();
                },
                |pt, k| unmap_release(pt, BASE + k * R256, R256),
            )
        })
    });
    g.bench_function("crate_per_page", |b| {
        let mut pt = x86();
        pt.map(BASE, PHYS_4K, 16 * R256, Prot::RW).unwrap();
        unmap_keep_tables(&mut pt, BASE, 16 * R256);
        b.iter_custom(|iters| {
            batched(
                &mut pt,
                iters,
                16,
                |pt, k| {
                    for p in 0..256 {
                        pt.map(BASE + k * R256 + p * K4, PHYS_4K + p * K4, K4, Prot::RW)
                            .unwrap();
                    }
                },
                |pt, k| unmap_release(pt, BASE + k * R256, R256),
            )
        })
    });
    g.bench_function("naive", |b| {
        let mut n = Naive::new();
        for k in 0..16 * 256 {
            n.map_4k(BASE + k * K4, k * K4);
        }
        for k in 0..16 * 256 {
            n.unmap_4k(BASE + k * K4);
        }
        b.iter_custom(|iters| {
            batched(
                &mut n,
                iters,
                16,
                |n, k| {
                    for p in 0..256 {
                        assert!(observed(n.map_4k(BASE + k * R256 + p * K4, p * K4)));
                    }
                },
                |n, k| {
                    for p in 0..256 {
                        n.unmap_4k(BASE + k * R256 + p * K4);
                    }
                },
            )
        })
    });
    g.bench_function("x86_64_crate", |b| {
        let mut x = X86Crate::new(64);
        for k in 0..16 * 256 {
            x.map_4k(BASE + k * K4, k * K4);
        }
        for k in 0..16 * 256 {
            x.unmap_4k(BASE + k * K4);
        }
        b.iter_custom(|iters| {
            batched(
                &mut x,
                iters,
                16,
                |x, k| {
                    for p in 0..256 {
                        x.map_4k(BASE + k * R256 + p * K4, p * K4);
                    }
                },
                |x, k| {
                    for p in 0..256 {
                        x.unmap_4k(BASE + k * R256 + p * K4);
                    }
                },
            )
        })
    });
    g.finish();
}

fn unmap_256x4k(c: &mut Criterion) {
    let mut g = quick(c, "unmap_256x4k");
    g.bench_function("crate", |b| {
        let mut pt = x86();
        pt.map(BASE, PHYS_4K, 16 * R256, Prot::RW).unwrap();
        b.iter_custom(|iters| {
            batched(
                &mut pt,
                iters,
                16,
                |pt, k| {
                    let un = observed(pt.unmap(BASE + k * R256, R256)).unwrap();
                    debug_assert!(un.freed.is_empty());
                },
                |pt, k| {
                    pt.map(BASE + k * R256, PHYS_4K, R256, Prot::RW).unwrap();
                },
            )
        })
    });
    g.bench_function("naive", |b| {
        let mut n = Naive::new();
        for k in 0..16 * 256 {
            n.map_4k(BASE + k * K4, k * K4);
        }
        b.iter_custom(|iters| {
            batched(
                &mut n,
                iters,
                16,
                |n, k| {
                    for p in 0..256 {
                        assert!(observed(n.unmap_4k(BASE + k * R256 + p * K4)));
                    }
                },
                |n, k| {
                    for p in 0..256 {
                        n.map_4k(BASE + k * R256 + p * K4, p * K4);
                    }
                },
            )
        })
    });
    g.bench_function("x86_64_crate", |b| {
        let mut x = X86Crate::new(64);
        for k in 0..16 * 256 {
            x.map_4k(BASE + k * K4, k * K4);
        }
        b.iter_custom(|iters| {
            batched(
                &mut x,
                iters,
                16,
                |x, k| {
                    for p in 0..256 {
                        x.unmap_4k(BASE + k * R256 + p * K4);
                    }
                },
                |x, k| {
                    for p in 0..256 {
                        x.map_4k(BASE + k * R256 + p * K4, p * K4);
                    }
                },
            )
        })
    });
    g.finish();
}

fn map_1g(c: &mut Criterion) {
    let mut g = quick(c, "map_1g");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    g.bench_function("crate_4k_warm", |b| {
        let mut pt = x86();
        pt.map(BASE, PHYS_4K, G1, Prot::RW).unwrap();
        unmap_keep_tables(&mut pt, BASE, G1);
        b.iter_custom(|iters| time_maps_1g(&mut pt, iters, keep_tables_1g))
    });
    g.bench_function("crate_4k_cold", |b| {
        let mut pt = x86();
        b.iter_custom(|iters| time_maps_1g(&mut pt, iters, release_tables_1g))
    });
    g.bench_function("naive_4k_warm", |b| {
        let mut n = Naive::new();
        for p in 0..G1 / K4 {
            n.map_4k(BASE + p * K4, p * K4);
        }
        for p in 0..G1 / K4 {
            n.unmap_4k(BASE + p * K4);
        }
        b.iter_custom(|iters| {
            batched(
                &mut n,
                iters,
                1,
                |n, _| {
                    for p in 0..G1 / K4 {
                        assert!(observed(n.map_4k(BASE + p * K4, p * K4)));
                    }
                },
                |n, _| {
                    for p in 0..G1 / K4 {
                        n.unmap_4k(BASE + p * K4);
                    }
                },
            )
        })
    });
    // The floors a 1 GiB map of 4 KiB pages cannot beat ([`store_floor`],
    // issue 20's; [`check_and_store_floor`], any map that refuses overlaps).
    let floors: [(&str, Floor); 2] = [
        ("store_floor", store_floor),
        ("check_and_store_floor", check_and_store_floor),
    ];
    for (name, floor) in floors {
        g.bench_function(name, |b| {
            let mut leaves = vec![0u64; (G1 / K4) as usize].into_boxed_slice();
            b.iter_custom(|iters| (0..iters).map(|_| time_floor(&mut leaves, floor)).sum())
        });
    }
    g.bench_function("x86_64_crate_4k_warm", |b| {
        let mut x = X86Crate::new(600);
        for p in 0..G1 / K4 {
            x.map_4k(BASE + p * K4, p * K4);
        }
        for p in 0..G1 / K4 {
            x.unmap_4k(BASE + p * K4);
        }
        b.iter_custom(|iters| {
            batched(
                &mut x,
                iters,
                1,
                |x, _| {
                    for p in 0..G1 / K4 {
                        x.map_4k(BASE + p * K4, p * K4);
                    }
                },
                |x, _| {
                    for p in 0..G1 / K4 {
                        x.unmap_4k(BASE + p * K4);
                    }
                },
            )
        })
    });
    g.finish();

    let mut g = quick(c, "map_1g_promoted");
    g.bench_function("crate_512x2m", |b| {
        let mut pt = vtd(0b01);
        let before = pt.allocator().live_pages();
        pt.map(BASE, 0, G1, Prot::RW).unwrap();
        let mut leaves = 0;
        pt.walk(|e| leaves += usize::from(matches!(e.kind, io_page_table::EntryKind::Leaf(_))));
        assert_eq!((leaves, pt.allocator().live_pages() - before), (512, 2));
        let undo = |pt: &mut Table<VtdSecondStage>, _| {
            for (a, l) in [(BASE, G1 - M2), (BASE + G1 - M2, M2)] {
                let un = pt.unmap(a, l).unwrap();
                pt.release(un.freed);
            }
        };
        undo(&mut pt, 0);
        b.iter_custom(|iters| {
            batched(
                &mut pt,
                iters,
                1,
                |pt, _| {
                    observed(pt.map(BASE, 0, G1, Prot::RW)).unwrap();
                },
                undo,
            )
        })
    });
    g.bench_function("crate_1x1g", |b| {
        let mut pt = vtd(0b11);
        pt.map(BASE, 0, G1, Prot::RW).unwrap();
        assert_eq!(pt.lookup(BASE).unwrap().leaf_size, G1);
        unmap_release(&mut pt, BASE, G1);
        b.iter_custom(|iters| {
            batched(
                &mut pt,
                iters,
                64,
                |pt, k| {
                    observed(pt.map(BASE + k * G1, 0, G1, Prot::RW)).unwrap();
                },
                |pt, k| unmap_release(pt, BASE + k * G1, G1),
            )
        })
    });
    g.finish();
}

/// 4096 distinct pages scattered over 4 GiB (deterministic xorshift).
fn scattered() -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 4096 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        seen.insert(state % (4 * G1 / K4));
    }
    let mut pages: Vec<u64> = seen.into_iter().collect();
    // Shuffle the order too.
    for i in (1..pages.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pages.swap(i, (state % (i as u64 + 1)) as usize);
    }
    pages
}

fn map_random(c: &mut Criterion) {
    let pages = scattered();
    let mut g = quick(c, "map_random_4k");
    g.bench_function("crate", |b| {
        let mut pt = x86();
        for &p in &pages {
            pt.map(BASE + p * K4, PHYS_4K, K4, Prot::RW).unwrap();
        }
        for &p in &pages {
            unmap_release(&mut pt, BASE + p * K4, K4);
        }
        b.iter_custom(|iters| time_scattered_maps(&mut pt, &pages, iters))
    });
    g.bench_function("naive", |b| {
        let mut n = Naive::new();
        for &p in &pages {
            n.map_4k(BASE + p * K4, 0);
            n.unmap_4k(BASE + p * K4);
        }
        b.iter_custom(|iters| time_naive_scattered_maps(&mut n, &pages, iters))
    });
    g.finish();
}

/// Map+unmap of one 4 KiB page, repeated by 1, 2 and 4 threads at once on
/// disjoint ranges of one table (each thread its own 2 MiB block, whose leaf
/// table exists, so no thread allocates), each with its own walk cursor
/// (`map_with`, as a CPU would). The time is per operation pair
/// across all threads: with N cores free, N threads should take 1/N of it.
fn threads_map_unmap_4k(c: &mut Criterion) {
    let mut g = quick(c, "threads_map_unmap_4k");
    for threads in [1u64, 2, 4] {
        g.bench_function(format!("{threads}_threads"), |b| {
            let pt = x86();
            prepare_thread_blocks(&pt, threads);
            b.iter_custom(|iters| map_unmap_from_threads(&pt, threads, iters))
        });
    }
    g.finish();
}

/// The store floor: the 262,144 leaf entries of 1 GiB of 4 KiB pages
/// written in order with 8-byte volatile stores, nothing else (issue 20
/// asks the map to stay within 2x of it, in the same run).
fn store_floor(leaves: &mut [u64]) {
    for (p, entry) in leaves.iter_mut().enumerate() {
        // SAFETY: a live element of the slice, naturally aligned.
        unsafe { core::ptr::write_volatile(entry, (p as u64 * K4) | 0x3) };
    }
}

/// The floor of a map that refuses to overwrite: [`store_floor`] after a
/// read of every entry checking that it is empty, the least any map must
/// do that leaves nothing behind when a page of the range is mapped.
/// On this machine's VM a read of an entry costs about what its store does
/// (a store that writes a whole cache line seems not to read it first).
fn check_and_store_floor(leaves: &mut [u64]) {
    let any = leaves.iter().fold(0, |any, &entry| any | entry);
    assert_eq!(any, 0, "the floor's entries are empty");
    store_floor(leaves);
}

/// A floor of the 1 GiB map: what it does to the 262,144 leaf entries.
type Floor = fn(&mut [u64]);

/// One run of `floor` over `leaves`, emptied first (untimed).
fn time_floor(leaves: &mut [u64], floor: Floor) -> Duration {
    leaves.fill(0);
    let start = Instant::now();
    floor(leaves);
    start.elapsed()
}

/// Gives each of `threads` threads its own 2 MiB block of `pt` whose leaf
/// table exists, so that no thread allocates.
fn prepare_thread_blocks(pt: &Table<X86_64>, threads: u64) {
    for t in 0..threads {
        let block = BASE + t * M2;
        // SAFETY: no other call runs yet.
        unsafe { pt.map_shared(block, PHYS_4K, K4, Prot::RW) }.unwrap();
        // SAFETY: as above.
        let unmapped = unsafe { pt.unmap_shared(block, K4) }.unwrap();
        pt.release(unmapped.freed);
    }
}

/// `pairs` map+unmap pairs of one 4 KiB page shared out over `threads`
/// threads, each in its block ([`prepare_thread_blocks`]) with its own walk
/// cursor (`map_with`, as a CPU would); the time they took, scaled to
/// exactly `pairs`.
fn map_unmap_from_threads(pt: &Table<X86_64>, threads: u64, pairs: u64) -> Duration {
    let per_thread = pairs.div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let block = BASE + t * M2;
                let mut cursor = WalkCursor::new();
                for k in 0..per_thread {
                    let iova = block + (k % 512) * K4;
                    // SAFETY: thread `t` alone uses block `t`.
                    let mapped = unsafe { pt.map_with(&mut cursor, iova, PHYS_4K, K4, Prot::RW) };
                    observed(mapped).unwrap();
                    // SAFETY: as above.
                    let unmapped = unsafe { pt.unmap_with(&mut cursor, iova, K4) };
                    let unmapped = observed(unmapped).unwrap();
                    debug_assert!(unmapped.freed.is_empty());
                }
            });
        }
    });
    start
        .elapsed()
        .mul_f64(pairs as f64 / (per_thread * threads) as f64)
}

/// How many alternating pairs [`issue_20_ratios`] times per row.
const PAIRS: usize = 41;

/// Times `ours` and `theirs` one after the other, `PAIRS` times, and prints
/// the median of the per-pair ratios `ours / theirs` with their spread.
/// On a shared VM the machine's speed drifts by up to 2x between criterion's
/// rows, which run seconds apart: a pair measured back to back sees the
/// same machine, so its ratio keeps what the rows compare.
fn paired_ratio(
    name: &str,
    goal: &str,
    mut ours: impl FnMut() -> Duration,
    mut theirs: impl FnMut() -> Duration,
) {
    let mut ratios: Vec<f64> = (0..PAIRS)
        .map(|pair| {
            // Alternate which side goes first, so neither always meets the
            // caches the other left.
            let (a, b) = if pair % 2 == 0 {
                let a = ours();
                (a, theirs())
            } else {
                let b = theirs();
                (ours(), b)
            };
            a.as_secs_f64() / b.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "issue 20 paired: {name}: {:.2}x (middle half {:.2}x-{:.2}x, {PAIRS} pairs; goal {goal})",
        ratios[PAIRS / 2],
        ratios[PAIRS / 4],
        ratios[3 * PAIRS / 4],
    );
}

/// Issue 20's ratios (and the check-and-store floor's), each from pairs of
/// back-to-back timings ([`paired_ratio`]) of the same operations as the
/// criterion rows.
fn issue_20_ratios(_: &mut Criterion) {
    // Unmap of one 4 KiB page, 16 batches of 256, against the naive walk.
    let mut pt = x86();
    pt.map(BASE, PHYS_4K, M2, Prot::RW).unwrap();
    let mut naive = Naive::new();
    for k in 0..257 {
        naive.map_4k(BASE + k * K4, k * K4);
    }
    paired_ratio(
        "unmap 1x4K / naive",
        "<= 1.0x",
        || time_unmaps(&mut pt, 4096),
        || time_naive_unmaps(&mut naive, 4096),
    );

    // Map of 4096 pages scattered over 4 GiB, against the naive walk.
    let pages = scattered();
    let mut pt = x86();
    let mut naive = Naive::new();
    for &p in &pages {
        pt.map(BASE + p * K4, PHYS_4K, K4, Prot::RW).unwrap();
        unmap_release(&mut pt, BASE + p * K4, K4);
        naive.map_4k(BASE + p * K4, 0);
        naive.unmap_4k(BASE + p * K4);
    }
    let count = pages.len() as u64;
    paired_ratio(
        "scattered 4K map / naive",
        "<= 1.0x",
        || time_scattered_maps(&mut pt, &pages, count),
        || time_naive_scattered_maps(&mut naive, &pages, count),
    );

    // Map of 1 GiB of 4 KiB pages over warm tables, against the floors.
    let mut pt = x86();
    pt.map(BASE, PHYS_4K, G1, Prot::RW).unwrap();
    unmap_keep_tables(&mut pt, BASE, G1);
    let mut leaves = vec![0u64; (G1 / K4) as usize].into_boxed_slice();
    let mut map_1g = || time_maps_1g(&mut pt, 1, keep_tables_1g);
    paired_ratio(
        "map 1 GiB of 4K / store floor",
        "<= 2x",
        &mut map_1g,
        || time_floor(&mut leaves, store_floor),
    );
    paired_ratio(
        "map 1 GiB of 4K / check-and-store floor",
        "none; what checking costs",
        &mut map_1g,
        || time_floor(&mut leaves, check_and_store_floor),
    );

    // The same map into fresh IOVA space: every table made in the call.
    let mut pt = x86();
    paired_ratio(
        "map 1 GiB of 4K, new tables / store floor",
        "<= 2x",
        || time_maps_1g(&mut pt, 1, release_tables_1g),
        || time_floor(&mut leaves, store_floor),
    );

    // Map+unmap pairs from 1 and from 2 threads: the ratio of the times per
    // pair is the 2 threads' throughput over the 1 thread's. Each timing
    // runs for some 20 ms, so that the second thread's start (it may wait
    // for the scheduler to move it to the other core) weighs little, as in
    // criterion's samples.
    let pt = x86();
    prepare_thread_blocks(&pt, 2);
    paired_ratio(
        "map+unmap 4K, 2 threads' throughput / 1 thread's",
        ">= 1.7x",
        || map_unmap_from_threads(&pt, 1, 2_000_000),
        || map_unmap_from_threads(&pt, 2, 2_000_000),
    );
}

/// Not a timing: table memory for 1 GiB of contiguous 4 KiB pages.
fn table_memory(_: &mut Criterion) {
    let mut pt = x86();
    let before = pt.allocator().live_pages();
    pt.map(BASE, PHYS_4K, G1, Prot::RW).unwrap();
    let added = pt.allocator().live_pages() - before;
    println!(
        "table memory for 1 GiB of 4 KiB pages (x86-64 4-level): {added} pages added = {:.4} MiB ({} pages = {:.4} MiB with the root)",
        (added * 4096) as f64 / (1 << 20) as f64,
        added + before,
        ((added + before) * 4096) as f64 / (1 << 20) as f64,
    );
}

criterion_group!(
    benches,
    map_1x4k,
    map_256x4k,
    unmap_1x4k,
    unmap_256x4k,
    map_1g,
    map_random,
    threads_map_unmap_4k,
    issue_20_ratios,
    table_memory
);
criterion_main!(benches);
