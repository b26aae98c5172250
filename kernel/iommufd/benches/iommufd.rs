//! Benchmarks of the iommufd core (quick settings): IOVA allocation on the fast
//! path and with 10^6 live ranges, and a 4 KiB map+unmap through the whole core on
//! the software unit. Figures go to `kernel/iommufd/BENCHMARKS.md`.

use criterion::{Criterion, criterion_group};
use io_page_table::format::vtd_ss::{SLLPS_1G, SLLPS_2M};
use io_page_table::heap::HeapTableAlloc;
use io_page_table::{
    Coherence, FreedTables, MapError, PageTable, Prot as PtProt, VtdSecondStage, VtdSsConfig,
};
use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    IovaRange, NestedInvalidation, Prot, ReservedRegion, UnitId, UnitInfo,
};
use iommufd::iova::IovaSpace;
use iommufd::testing::{SoftConfig, soft_core};
use iommufd::{Iommufd, OwnerId, PhysRun, Services};
use std::hint::black_box;
use std::time::Duration;

const PAGE: u64 = 0x1000;
const LIVE: u64 = 1_000_000;

/// Allocates and frees `len` bytes (naturally aligned) in a loop.
fn alloc_free(c: &mut Criterion, name: &str, space: &mut IovaSpace, len: u64) {
    c.bench_function(name, |b| {
        b.iter(|| {
            let iova = space.alloc(black_box(len), len).unwrap();
            space.release(IovaRange {
                start: iova,
                last: iova + len - 1,
            });
            iova
        })
    });
}

fn iova_fast_path(c: &mut Criterion) {
    let mut cached = IovaSpace::build(&[IovaRange::FULL], std::iter::empty());
    alloc_free(c, "iova_alloc_free_4k_cached", &mut cached, PAGE);
    let mut tree = IovaSpace::build(&[IovaRange::FULL], std::iter::empty());
    tree.set_caching(false);
    alloc_free(c, "iova_alloc_free_4k_tree_only", &mut tree, PAGE);
}

/// 2 * 10^6 pages allocated back to back, every other one freed: 10^6 live
/// ranges and 10^6 single-page holes in the hole index.
fn fragmented(usable_last: u64) -> IovaSpace {
    let mut space = IovaSpace::build(
        &[IovaRange {
            start: PAGE,
            last: usable_last,
        }],
        std::iter::empty(),
    );
    space.set_caching(false);
    let iovas: Vec<u64> = (0..2 * LIVE)
        .map(|_| space.alloc(PAGE, PAGE).unwrap())
        .collect();
    for iova in iovas.iter().step_by(2) {
        space.release(IovaRange {
            start: *iova,
            last: iova + PAGE - 1,
        });
    }
    assert!(space.hole_count() as u64 >= LIVE);
    space
}

fn iova_million_live(c: &mut Criterion) {
    // Only single-page holes: every allocation searches the size index for one.
    let mut tight = fragmented((2 * LIVE + 1) * PAGE - 1);
    alloc_free(
        c,
        "iova_alloc_free_4k_1e6_live_tree_tight",
        &mut tight,
        PAGE,
    );
    // A 64 KiB request skips 10^6 small holes in O(log n).
    let mut roomy = fragmented(u64::MAX);
    alloc_free(
        c,
        "iova_alloc_free_64k_1e6_live_tree_roomy",
        &mut roomy,
        16 * PAGE,
    );
    roomy.set_caching(true);
    alloc_free(
        c,
        "iova_alloc_free_64k_1e6_live_cached",
        &mut roomy,
        16 * PAGE,
    );
}

fn map_unmap_4k(c: &mut Criterion) {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let owner = OwnerId(1);
    let ioas = fd.ioas_alloc(owner).unwrap();
    let dev = fd.bind_device(owner, UnitId(0), DeviceId(1)).unwrap();
    fd.device_attach(owner, dev, ioas).unwrap();
    let unit = fd.unit_mut(UnitId(0)).unwrap();
    unit.logging = false;
    unit.prefetch = false;
    let rw = Prot {
        read: true,
        write: true,
    };
    c.bench_function("core_map_unmap_4k_soft_unit", |b| {
        b.iter(|| {
            let iova = fd
                .ioas_map(owner, ioas, black_box(0x10_0000), PAGE, None, rw)
                .unwrap();
            fd.ioas_unmap(owner, ioas, iova, PAGE).unwrap()
        })
    });
    let stats = fd.units()[0].stats;
    assert_eq!(stats.unmaps, stats.range_invalidations);

    let mut fd = Iommufd::new(vec![VtdTableUnit::new()], IdentityPins);
    let ioas = fd.ioas_alloc(owner).unwrap();
    let dev = fd.bind_device(owner, UnitId(0), DeviceId(1)).unwrap();
    fd.device_attach(owner, dev, ioas).unwrap();
    c.bench_function("core_map_unmap_4k_vtd_table", |b| {
        b.iter(|| {
            let iova = fd
                .ioas_map(owner, ioas, black_box(0x10_0000), PAGE, None, rw)
                .unwrap();
            fd.ioas_unmap(owner, ioas, iova, PAGE).unwrap()
        })
    });
}

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = quick();
    targets = iova_fast_path, iova_million_live, map_unmap_4k
}

/// CPU time this thread has run, in ns (Linux schedstat), so that figures taken on
/// a machine shared with other jobs are not inflated by time spent preempted.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Runs `op` `n` times and prints CPU ns per call.
fn cpu_per_op(name: &str, n: u64, mut op: impl FnMut()) {
    let Some(start) = thread_cpu_ns() else {
        return;
    };
    for _ in 0..n {
        op();
    }
    if let Some(end) = thread_cpu_ns() {
        println!(
            "cpu-time {name}: {:.1} ns/op",
            (end - start) as f64 / n as f64
        );
    }
}

fn cpu_report() {
    // `CPU_REPORT=iova|core` runs one half only, `CPU_REPORT=counting` only
    // the counting unit's row, and `CPU_REPORT_OPS=n` sets the operations
    // per row (for profiling, e.g. under callgrind).
    let only = std::env::var("CPU_REPORT").unwrap_or_default();
    let n = std::env::var("CPU_REPORT_OPS")
        .ok()
        .and_then(|ops| ops.parse().ok())
        .unwrap_or(2_000_000);
    if only.is_empty() || only == "iova" {
        iova_cpu_report(n);
    }
    if only.is_empty() || only == "core" {
        core_cpu_report(n);
    }
    if only.is_empty() || only == "core" || only == "counting" {
        core_only_cpu_report(n);
    }
    if only.is_empty() || only == "core" {
        vtd_table_cpu_report(n);
    }
}

/// Times 100 000 allocations alone (the frees afterwards are not timed).
fn alloc_only(name: &str, space: &mut IovaSpace, len: u64) {
    let mut taken = Vec::with_capacity(100_000);
    cpu_per_op(name, 100_000, || {
        taken.push(space.alloc(black_box(len), len).unwrap())
    });
    for iova in taken {
        space.release(IovaRange {
            start: iova,
            last: iova + len - 1,
        });
    }
}

fn iova_cpu_report(n: u64) {
    let mut cached = IovaSpace::build(&[IovaRange::FULL], std::iter::empty());
    cpu_per_op("iova_alloc_free_4k_cached", n, || {
        let iova = cached.alloc(black_box(PAGE), PAGE).unwrap();
        cached.release(IovaRange {
            start: iova,
            last: iova + PAGE - 1,
        });
    });
    let mut tree = IovaSpace::build(&[IovaRange::FULL], std::iter::empty());
    tree.set_caching(false);
    cpu_per_op("iova_alloc_free_4k_tree_only", n, || {
        let iova = tree.alloc(black_box(PAGE), PAGE).unwrap();
        tree.release(IovaRange {
            start: iova,
            last: iova + PAGE - 1,
        });
    });
    let mut tight = fragmented((2 * LIVE + 1) * PAGE - 1);
    cpu_per_op("iova_alloc_free_4k_1e6_live_tree_tight", n / 4, || {
        let iova = tight.alloc(black_box(PAGE), PAGE).unwrap();
        tight.release(IovaRange {
            start: iova,
            last: iova + PAGE - 1,
        });
    });
    alloc_only("iova_alloc_only_4k_1e6_live_tree_tight", &mut tight, PAGE);
    drop(tight);
    let mut roomy = fragmented(u64::MAX);
    cpu_per_op("iova_alloc_free_64k_1e6_live_tree_roomy", n / 4, || {
        let iova = roomy.alloc(black_box(16 * PAGE), 16 * PAGE).unwrap();
        roomy.release(IovaRange {
            start: iova,
            last: iova + 16 * PAGE - 1,
        });
    });
    alloc_only(
        "iova_alloc_only_64k_1e6_live_tree_roomy",
        &mut roomy,
        16 * PAGE,
    );
    roomy.set_caching(true);
    cpu_per_op("iova_alloc_free_64k_1e6_live_cached", n, || {
        let iova = roomy.alloc(black_box(16 * PAGE), 16 * PAGE).unwrap();
        roomy.release(IovaRange {
            start: iova,
            last: iova + 16 * PAGE - 1,
        });
    });
}

fn core_cpu_report(n: u64) {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let owner = OwnerId(1);
    let ioas = fd.ioas_alloc(owner).unwrap();
    let dev = fd.bind_device(owner, UnitId(0), DeviceId(1)).unwrap();
    fd.device_attach(owner, dev, ioas).unwrap();
    let unit = fd.unit_mut(UnitId(0)).unwrap();
    unit.logging = false;
    unit.prefetch = false;
    let rw = Prot {
        read: true,
        write: true,
    };
    cpu_per_op("core_map_unmap_4k_soft_unit", n / 4, || {
        let iova = fd
            .ioas_map(owner, ioas, black_box(0x10_0000), PAGE, None, rw)
            .unwrap();
        fd.ioas_unmap(owner, ioas, iova, PAGE).unwrap();
    });
}

/// A unit that keeps no table: isolates the core's own cost (IOVA, areas, pins,
/// gather and flush emission) from the software unit's BTreeMap page table.
struct CountingUnit {
    flushes: u64,
}

impl IommuUnit for CountingUnit {
    fn info(&self) -> UnitInfo {
        SoftConfig::vtd_like().info
    }
    fn reserved_regions(&self, _: DeviceId) -> Vec<ReservedRegion> {
        Vec::new()
    }
    fn hw_info(&self) -> HwInfo {
        HwInfo::None
    }
    fn alloc_domain(&mut self, _: DomainKind) -> Result<DomainHandle, IommuError> {
        Ok(DomainHandle(1))
    }
    fn free_domain(&mut self, _: DomainHandle) -> Result<(), IommuError> {
        Ok(())
    }
    fn map(
        &mut self,
        _: DomainHandle,
        _: u64,
        _: u64,
        _: u64,
        _: Prot,
    ) -> Result<Gather, IommuError> {
        Ok(Gather::default())
    }
    fn unmap(&mut self, _: DomainHandle, iova: u64, len: u64) -> Result<Gather, IommuError> {
        let mut g = Gather::default();
        g.add_leaf(iova, len);
        Ok(g)
    }
    fn flush(&mut self, _: DomainHandle, _: &Gather) -> Result<(), IommuError> {
        self.flushes += 1;
        Ok(())
    }
    fn attach(&mut self, _: DeviceId, _: DomainHandle) -> Result<(), IommuError> {
        Ok(())
    }
    fn detach(&mut self, _: DeviceId) {}
    fn drain_faults(&mut self, _: &mut Vec<FaultRecord>) -> usize {
        0
    }
    fn invalidate_nested(
        &mut self,
        _: DomainHandle,
        _: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (0, Ok(()))
    }
}

/// A unit over a real VT-d second-stage table (`io-page-table`), one domain: the
/// page-table cost a hardware driver pays, minus MMIO. Tables freed by an unmap
/// are released at the flush, as the contract requires.
struct VtdTableUnit {
    table: PageTable<VtdSecondStage, HeapTableAlloc>,
    freed: Vec<FreedTables>,
    flushes: u64,
}

impl VtdTableUnit {
    fn new() -> Self {
        let format = VtdSecondStage::new(VtdSsConfig {
            levels: 4,
            sllps: SLLPS_2M | SLLPS_1G,
            snoop: false,
            output_bits: 48,
        })
        .expect("valid VT-d config");
        Self {
            table: PageTable::new(format, HeapTableAlloc::new(), Coherence::Coherent)
                .expect("root table"),
            freed: Vec::new(),
            flushes: 0,
        }
    }
}

impl IommuUnit for VtdTableUnit {
    fn info(&self) -> UnitInfo {
        SoftConfig::vtd_like().info
    }
    fn reserved_regions(&self, _: DeviceId) -> Vec<ReservedRegion> {
        Vec::new()
    }
    fn hw_info(&self) -> HwInfo {
        HwInfo::None
    }
    fn alloc_domain(&mut self, _: DomainKind) -> Result<DomainHandle, IommuError> {
        Ok(DomainHandle(1))
    }
    fn free_domain(&mut self, _: DomainHandle) -> Result<(), IommuError> {
        Ok(())
    }
    fn map(
        &mut self,
        _: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        let mut p = PtProt::empty();
        p.set(PtProt::READ, prot.read);
        p.set(PtProt::WRITE, prot.write);
        // Hardware without caching of non-present entries owes no flush on map.
        self.table
            .map(iova, phys, len, p)
            .map(|_| Gather::default())
            .map_err(|e| match e {
                MapError::NoMemory => IommuError::NoMemory,
                _ => IommuError::Invalid,
            })
    }
    fn unmap(&mut self, _: DomainHandle, iova: u64, len: u64) -> Result<Gather, IommuError> {
        let unmapped = self.table.unmap(iova, len).expect("whole mapped range");
        self.freed.push(unmapped.freed);
        Ok(unmapped.gather)
    }
    fn flush(&mut self, _: DomainHandle, _: &Gather) -> Result<(), IommuError> {
        self.flushes += 1;
        for freed in self.freed.drain(..) {
            self.table.release(freed);
        }
        Ok(())
    }
    fn attach(&mut self, _: DeviceId, _: DomainHandle) -> Result<(), IommuError> {
        Ok(())
    }
    fn detach(&mut self, _: DeviceId) {}
    fn drain_faults(&mut self, _: &mut Vec<FaultRecord>) -> usize {
        0
    }
    fn invalidate_nested(
        &mut self,
        _: DomainHandle,
        _: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (0, Ok(()))
    }
}

fn vtd_table_cpu_report(n: u64) {
    let mut fd = Iommufd::new(vec![VtdTableUnit::new()], IdentityPins);
    let owner = OwnerId(1);
    let ioas = fd.ioas_alloc(owner).unwrap();
    let dev = fd.bind_device(owner, UnitId(0), DeviceId(1)).unwrap();
    fd.device_attach(owner, dev, ioas).unwrap();
    let rw = Prot {
        read: true,
        write: true,
    };
    cpu_per_op("core_map_unmap_4k_vtd_table", n, || {
        let iova = fd
            .ioas_map(owner, ioas, black_box(0x10_0000), PAGE, None, rw)
            .unwrap();
        fd.ioas_unmap(owner, ioas, iova, PAGE).unwrap();
    });
    assert_eq!(fd.units()[0].flushes, n);
}

/// Pins by identity without bookkeeping.
struct IdentityPins;

impl Services for IdentityPins {
    fn pin(
        &mut self,
        _: OwnerId,
        va: u64,
        len: u64,
        _: bool,
        runs: &mut Vec<PhysRun>,
    ) -> Result<(), abi::Errno> {
        runs.push(PhysRun { phys: va, len });
        Ok(())
    }
    fn unpin(&mut self, _: OwnerId, _: u64, _: u64, _: &[PhysRun]) {}
}

fn core_only_cpu_report(n: u64) {
    let mut fd = Iommufd::new(vec![CountingUnit { flushes: 0 }], IdentityPins);
    let owner = OwnerId(1);
    let ioas = fd.ioas_alloc(owner).unwrap();
    let dev = fd.bind_device(owner, UnitId(0), DeviceId(1)).unwrap();
    fd.device_attach(owner, dev, ioas).unwrap();
    let rw = Prot {
        read: true,
        write: true,
    };
    cpu_per_op("core_map_unmap_4k_counting_unit", n, || {
        let iova = fd
            .ioas_map(owner, ioas, black_box(0x10_0000), PAGE, None, rw)
            .unwrap();
        fd.ioas_unmap(owner, ioas, iova, PAGE).unwrap();
    });
    assert_eq!(fd.units()[0].flushes, n);
}

fn main() {
    // `--test` / `--list` (CI smoke runs, xtask discovery) skip the CPU-time report.
    let quick_mode = std::env::args().any(|a| a == "--test" || a == "--list");
    if !quick_mode {
        cpu_report();
    }
    if std::env::var_os("CPU_REPORT").is_some() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
