//! Issue 20: several CPUs map and unmap through one core at once. The core
//! sits behind one lock, as in the kernel; `IOAS_MAP` and `IOAS_UNMAP` drop
//! it for their page-table writes and flushes (`Iommufd::ioas_map_begin`,
//! `PendingMap::run`, `Iommufd::ioas_map_finish`), holding fill tickets on
//! the unit, and anything that needs the unit exclusively waits for them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi::{Errno, HwptAllocFlags};
use iommu::{
    DeviceId, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit,
    IovaRange, NestedInvalidation, Prot, ReservedRegion, UnitId, UnitInfo, UnitKind,
};
use iommufd::{Iommufd, OwnerId, PhysRun, Resource, Services};

const PAGE: u64 = 0x1000;
const RW: Prot = Prot {
    read: true,
    write: true,
};

/// A map call held at its start until the test lets it go.
struct Hold {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

/// A unit whose tables several threads fill at once: each domain a map of
/// page → physical address behind a lock taken per page-table write (what a
/// real table's compare-exchange does for disjoint ranges).
#[derive(Default)]
struct SharedUnit {
    tables: Mutex<BTreeMap<u32, BTreeMap<u64, u64>>>,
    next_domain: u32,
    attached: BTreeMap<DeviceId, u32>,
    fills_now: AtomicUsize,
    most_fills: AtomicUsize,
    hold: Mutex<Option<Hold>>,
}

impl SharedUnit {
    fn translate(&self, domain: u32, iova: u64) -> Option<u64> {
        self.tables.lock().unwrap()[&domain].get(&iova).copied()
    }

    fn leaves(&self) -> usize {
        self.tables
            .lock()
            .unwrap()
            .values()
            .map(BTreeMap::len)
            .sum()
    }
}

impl IommuUnit for SharedUnit {
    fn info(&self) -> UnitInfo {
        UnitInfo {
            name: "shared-soft",
            kind: UnitKind::Software,
            aperture: IovaRange {
                start: 0,
                last: (1 << 48) - 1,
            },
            page_sizes: PAGE,
            nesting: None,
        }
    }

    fn reserved_regions(&self, _: DeviceId) -> Vec<ReservedRegion> {
        Vec::new()
    }

    fn hw_info(&self) -> HwInfo {
        HwInfo::None
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        if kind != DomainKind::Paging {
            return Err(IommuError::Unsupported);
        }
        self.next_domain += 1;
        self.tables
            .get_mut()
            .unwrap()
            .insert(self.next_domain, BTreeMap::new());
        Ok(DomainHandle(self.next_domain))
    }

    fn free_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let tables = self.tables.get_mut().unwrap();
        match tables.remove(&domain.0) {
            Some(_) => Ok(()),
            None => Err(IommuError::Invalid),
        }
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        self.flush_shared(domain, gather)
    }

    fn shares_mapping(&self) -> bool {
        true
    }

    unsafe fn map_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        _prot: Prot,
    ) -> Result<Gather, IommuError> {
        let now = self.fills_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_fills.fetch_max(now, Ordering::SeqCst);
        let hold = self.hold.lock().unwrap().take();
        if let Some(hold) = hold {
            hold.entered.send(()).unwrap();
            hold.release.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let mut result = Ok(Gather::default());
        for offset in (0..len).step_by(PAGE as usize) {
            let mut tables = self.tables.lock().unwrap();
            let Some(table) = tables.get_mut(&domain.0) else {
                result = Err(IommuError::Invalid);
                break;
            };
            assert!(
                table.insert(iova + offset, phys + offset).is_none(),
                "two fills wrote one IOVA"
            );
        }
        self.fills_now.fetch_sub(1, Ordering::SeqCst);
        result
    }

    unsafe fn unmap_shared(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        let mut gather = Gather::default();
        for offset in (0..len).step_by(PAGE as usize) {
            let mut tables = self.tables.lock().unwrap();
            let table = tables.get_mut(&domain.0).ok_or(IommuError::Invalid)?;
            if table.remove(&(iova + offset)).is_some() {
                gather.add_leaf(iova + offset, PAGE);
            }
        }
        Ok(gather)
    }

    fn flush_shared(&self, _: DomainHandle, _: &Gather) -> Result<(), IommuError> {
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        self.attached.insert(device, domain.0);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) {
        self.attached.remove(&device);
    }

    fn drain_faults(&mut self, _: &mut Vec<FaultRecord>) -> usize {
        0
    }

    fn invalidate_nested(
        &mut self,
        _: DomainHandle,
        _: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (0, Err(IommuError::Unsupported))
    }
}

/// Task memory where `va` of owner `o` is physical `o << 40 | va`; counts pins.
#[derive(Default)]
struct Memory {
    pinned: i64,
}

impl Services for Memory {
    fn pin(
        &mut self,
        owner: OwnerId,
        va: u64,
        len: u64,
        _: bool,
        runs: &mut Vec<PhysRun>,
    ) -> Result<(), Errno> {
        runs.push(PhysRun {
            phys: owner.0 << 40 | va,
            len,
        });
        self.pinned += 1;
        Ok(())
    }

    fn unpin(&mut self, _: OwnerId, _: u64, _: u64, _: &[PhysRun]) {
        self.pinned -= 1;
    }

    fn charge(&mut self, _: Resource) -> Result<(), Errno> {
        Ok(())
    }
}

type Core = Iommufd<SharedUnit, Memory>;

/// An IOAS of `owner` with device `device` attached: its domain's handle.
fn attached_ioas(core: &mut Core, owner: OwnerId, device: u32) -> (u32, u32) {
    let ioas = core.ioas_alloc(owner).unwrap();
    let dev = core
        .bind_device(owner, UnitId(0), DeviceId(device))
        .unwrap();
    let hwpt = core
        .hwpt_alloc(owner, dev, ioas, HwptAllocFlags::empty(), None)
        .unwrap();
    core.device_attach(owner, dev, hwpt).unwrap();
    let domain = core.units()[0].attached[&DeviceId(device)];
    (ioas, domain)
}

/// One map the way the kernel makes it: its page-table work without the lock.
fn map_unlocked(core: &Mutex<Core>, owner: OwnerId, ioas: u32, va: u64, len: u64) -> u64 {
    let mut pending = core
        .lock()
        .unwrap()
        .ioas_map_begin(owner, ioas, va, len, None, RW)
        .unwrap();
    pending.run();
    core.lock().unwrap().ioas_map_finish(pending).unwrap()
}

fn unmap_unlocked(core: &Mutex<Core>, owner: OwnerId, ioas: u32, iova: u64, len: u64) -> u64 {
    let mut pending = core
        .lock()
        .unwrap()
        .ioas_unmap_begin(owner, ioas, iova, len)
        .unwrap();
    pending.run();
    core.lock().unwrap().ioas_unmap_finish(pending).unwrap()
}

#[test]
fn a_map_filling_its_tables_holds_no_lock_others_need() {
    let (a, b) = (OwnerId(1), OwnerId(2));
    let mut core = Core::new(vec![SharedUnit::default()], Memory::default());
    let (ioas_a, domain_a) = attached_ioas(&mut core, a, 0x10);
    let (ioas_b, domain_b) = attached_ioas(&mut core, b, 0x18);
    let (entered, entered_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *core.units()[0].hold.lock().unwrap() = Some(Hold {
        entered,
        release: release_rx,
    });
    let core = Arc::new(Mutex::new(core));
    let filler = {
        let core = Arc::clone(&core);
        std::thread::spawn(move || map_unlocked(&core, a, ioas_a, 0x10_0000, 4 * PAGE))
    };
    // A's fill is inside the unit now, its tickets held.
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    {
        let mut core = core.lock().expect("the core's lock is free during a fill");
        core.units().reset_most_fills();
        let iova = core
            .ioas_map(b, ioas_b, 0x20_0000, 2 * PAGE, None, RW)
            .unwrap();
        assert_eq!(
            core.units()[0].translate(domain_b, iova + PAGE),
            Some(b.0 << 40 | 0x20_1000)
        );
        assert_eq!(core.ioas_unmap(b, ioas_b, iova, 2 * PAGE), Ok(2 * PAGE));
        assert_eq!(core.units().most_fills(), 2, "B's fills ran beside A's");
        assert_eq!(
            core.ioas_unmap(a, ioas_a, 0, u64::MAX),
            Err(Errno::EBUSY),
            "a filling area was unmapped"
        );
    }
    release.send(()).unwrap();
    let iova_a = filler.join().unwrap();
    let mut core = Arc::try_unwrap(core).ok().unwrap().into_inner().unwrap();
    assert_eq!(
        core.units()[0].translate(domain_a, iova_a),
        Some(a.0 << 40 | 0x10_0000)
    );
    assert_eq!(core.ioas_unmap(a, ioas_a, 0, u64::MAX), Ok(4 * PAGE));
    core.teardown(a);
    core.teardown(b);
    assert_eq!(core.units()[0].leaves(), 0);
    assert_eq!(core.services().pinned, 0);
}

#[test]
fn changing_a_unit_waits_for_the_fills_on_it() {
    let a = OwnerId(1);
    let mut core = Core::new(vec![SharedUnit::default()], Memory::default());
    let (ioas, _) = attached_ioas(&mut core, a, 0x10);
    let (entered, entered_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *core.units()[0].hold.lock().unwrap() = Some(Hold {
        entered,
        release: release_rx,
    });
    let core = Arc::new(Mutex::new(core));
    let filler = {
        let core = Arc::clone(&core);
        std::thread::spawn(move || map_unlocked(&core, a, ioas, 0x10_0000, PAGE))
    };
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // A second IOAS's HWPT needs `alloc_domain`, through `&mut` unit.
    let allocated = Arc::new(AtomicBool::new(false));
    let changer = {
        let (core, allocated) = (Arc::clone(&core), Arc::clone(&allocated));
        std::thread::spawn(move || {
            let mut core = core.lock().unwrap();
            let dev = core.bind_device(a, UnitId(0), DeviceId(0x18)).unwrap();
            let other = core.ioas_alloc(a).unwrap();
            core.hwpt_alloc(a, dev, other, HwptAllocFlags::empty(), None)
                .unwrap();
            allocated.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !allocated.load(Ordering::SeqCst),
        "the unit changed under a fill"
    );
    release.send(()).unwrap();
    changer.join().unwrap();
    filler.join().unwrap();
    assert!(allocated.load(Ordering::SeqCst));
}

/// Four threads map, check and unmap their own buffers in one IOAS at once,
/// at IOVAs the core picks; at the end nothing is mapped or pinned.
#[test]
fn four_threads_map_and_unmap_one_ioas_at_once() {
    let owner = OwnerId(1);
    let mut core = Core::new(vec![SharedUnit::default()], Memory::default());
    let (ioas, domain) = attached_ioas(&mut core, owner, 0x10);
    let core = Arc::new(Mutex::new(core));
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let core = Arc::clone(&core);
            std::thread::spawn(move || {
                for round in 0..200u64 {
                    let va = 0x100_0000 * (thread + 1) + round * 4 * PAGE;
                    let iova = map_unlocked(&core, owner, ioas, va, 4 * PAGE);
                    let seen = core.lock().unwrap().units()[0].translate(domain, iova + PAGE);
                    assert_eq!(seen, Some(owner.0 << 40 | (va + PAGE)));
                    assert_eq!(unmap_unlocked(&core, owner, ioas, iova, 4 * PAGE), 4 * PAGE);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut core = Arc::try_unwrap(core).ok().unwrap().into_inner().unwrap();
    assert_eq!(core.area_count(owner), 0);
    assert_eq!(core.units()[0].leaves(), 0);
    println!(
        "most fills in one unit at once: {} (the core's count: {})",
        core.units()[0].most_fills.load(Ordering::SeqCst),
        core.units().most_fills()
    );
    core.teardown(owner);
    assert_eq!(core.services().pinned, 0);
}
