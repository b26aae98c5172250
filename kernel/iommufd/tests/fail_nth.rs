//! Fail-every-allocation test (Linux `iommufd_fail_nth` style). Every allocation
//! point of the core (object slots, IOVA index nodes, areas, reservations, pin
//! records), of the software unit (domains, table pages, attach) and of the fake
//! task memory (pins) goes through one gate. For each operation of a scenario and
//! each N, the Nth allocation fails: the operation must return ENOMEM, leave the
//! state exactly as before with no object, page-table page or pin leaked, and then
//! succeed when retried.

use abi::{Errno, HwptAllocFlags};
use iommu::{DeviceId, IovaRange, NestedData, Prot, UnitId};
use iommufd::OwnerId;
use iommufd::testing::{FailGate, SoftConfig, SoftCore, soft_core};

const O: OwnerId = OwnerId(1);
const RW: Prot = Prot {
    read: true,
    write: true,
};
const DEV_A: DeviceId = DeviceId(1);
const DEV_B: DeviceId = DeviceId(2);

/// Ids are deterministic (lowest free first), so the scenario names them.
const IOAS1: u32 = 1;
const A: u32 = 2;
const B: u32 = 3;
const IOAS2: u32 = 5;
const PARENT: u32 = 7;
const NESTED: u32 = 8;

type Op = fn(&mut SoftCore) -> Result<(), Errno>;

fn scenario() -> Vec<(&'static str, Op)> {
    vec![
        ("ioas_alloc", |fd| {
            fd.ioas_alloc(O).map(|id| assert_eq!(id, IOAS1))
        }),
        ("bind_a", |fd| {
            fd.bind_device(O, UnitId(0), DEV_A)
                .map(|id| assert_eq!(id, A))
        }),
        ("bind_b", |fd| {
            fd.bind_device(O, UnitId(1), DEV_B)
                .map(|id| assert_eq!(id, B))
        }),
        ("map_fixed", |fd| {
            fd.ioas_map(O, IOAS1, 0x10_0000, 0x4000, Some(0x10_0000), RW)
                .map(drop)
        }),
        ("attach_fills_new_domain", |fd| {
            fd.device_attach(O, A, IOAS1).map(drop)
        }),
        ("map_auto_2m", |fd| {
            fd.ioas_map(O, IOAS1, 0x20_0000, 0x20_0000, None, RW)
                .map(drop)
        }),
        ("ioas_alloc_2", |fd| {
            fd.ioas_alloc(O).map(|id| assert_eq!(id, IOAS2))
        }),
        ("attach_b", |fd| fd.device_attach(O, B, IOAS2).map(drop)),
        ("copy", |fd| {
            fd.ioas_copy(O, IOAS1, 0x10_0000, 0x4000, IOAS2, None, RW)
                .map(drop)
        }),
        ("hwpt_nest_parent", |fd| {
            fd.hwpt_alloc(O, A, IOAS2, HwptAllocFlags::NEST_PARENT, None)
                .map(|id| assert_eq!(id, PARENT))
        }),
        ("hwpt_nested", |fd| {
            let data = NestedData::VtdS1 {
                flags: 0,
                pgtbl_addr: 0x8000,
                addr_width: 48,
            };
            fd.hwpt_alloc(O, A, PARENT, HwptAllocFlags::empty(), Some(data))
                .map(|id| assert_eq!(id, NESTED))
        }),
        ("map_scattered_two_domains", |fd| {
            fd.services_mut().scattered = true;
            let r = fd.ioas_map(O, IOAS2, 0x80_0000, 0x8000, None, RW).map(drop);
            fd.services_mut().scattered = false;
            r
        }),
        ("replace_to_new_auto", |fd| {
            fd.device_replace(O, A, IOAS2).map(drop)
        }),
        ("replace_to_nested", |fd| {
            fd.device_replace(O, A, NESTED).map(drop)
        }),
        ("allow_iovas", |fd| {
            fd.ioas_allow_iovas(
                O,
                IOAS1,
                &[IovaRange {
                    start: 0x100_0000,
                    last: 0x1ff_ffff,
                }],
            )
        }),
        ("map_fixed_2", |fd| {
            fd.ioas_map(O, IOAS1, 0x30_0000, 0x3000, Some(0x4000_0000), RW)
                .map(drop)
        }),
        ("detach_b", |fd| fd.device_detach(O, B)),
        ("attach_b_to_ioas1", |fd| {
            fd.device_attach(O, B, IOAS1).map(drop)
        }),
    ]
}

/// Domains, table pages, leaves, and where devices A and B are.
type UnitCounts = (
    usize,
    u64,
    usize,
    Option<iommu::DomainHandle>,
    Option<iommu::DomainHandle>,
);

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    digest: String,
    units: Vec<UnitCounts>,
    pinned: usize,
    live_pins: u64,
}

fn snapshot(fd: &SoftCore) -> Snapshot {
    Snapshot {
        digest: fd.state_digest(),
        units: fd
            .units()
            .iter()
            .map(|u| {
                (
                    u.domain_count(),
                    u.table_pages(),
                    u.leaf_count(),
                    u.device_domain(DEV_A),
                    u.device_domain(DEV_B),
                )
            })
            .collect(),
        pinned: fd.services().pinned_ranges(),
        live_pins: fd.services().pins - fd.services().unpins,
    }
}

fn fresh(prefix: &[(&str, Op)]) -> (SoftCore, FailGate) {
    let (mut fd, gate) = soft_core(&[SoftConfig::vtd_like(), SoftConfig::smmu_like()]);
    for (name, op) in prefix {
        op(&mut fd).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    (fd, gate)
}

fn clean(fd: &SoftCore) {
    for u in fd.units() {
        assert_eq!(u.stale_entries(), 0);
        assert_eq!(u.stale_uses(), 0);
    }
    assert_eq!(fd.services().violations, 0);
}

#[test]
fn fail_nth_every_allocation_returns_enomem_and_changes_nothing() {
    let ops = scenario();
    let mut total_points = 0;
    for i in 0..ops.len() {
        let (name, op) = ops[i];
        let calls = {
            let (mut fd, gate) = fresh(&ops[..i]);
            gate.count();
            op(&mut fd).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            gate.calls()
        };
        assert!(calls > 0 || name == "detach_b", "{name} allocates nothing?");
        for n in 1..=calls {
            let (mut fd, gate) = fresh(&ops[..i]);
            let before = snapshot(&fd);
            gate.arm(n);
            let result = op(&mut fd);
            assert!(gate.tripped(), "{name}: allocation {n} not reached");
            assert_eq!(result, Err(Errno::ENOMEM), "{name}: failing allocation {n}");
            assert_eq!(
                snapshot(&fd),
                before,
                "{name}: state changed after failing allocation {n}"
            );
            clean(&fd);
            gate.count();
            op(&mut fd).unwrap_or_else(|e| panic!("{name} retry after {n}: {e:?}"));
            clean(&fd);
            total_points += 1;
        }
    }
    assert!(
        total_points > 40,
        "only {total_points} allocation points exercised"
    );
    // The whole scenario tears down to nothing.
    let (mut fd, _) = fresh(&ops);
    fd.teardown(O);
    assert_eq!(fd.object_count(O), 0);
    assert_eq!(fd.pinned_ranges(), 0);
    for u in fd.units() {
        assert_eq!(u.domain_count(), 0);
        assert_eq!(u.table_pages(), 0);
        assert_eq!(u.device_domain(DEV_A), None);
        assert_eq!(u.device_domain(DEV_B), None);
    }
    assert_eq!(fd.services().pins, fd.services().unpins);
    clean(&fd);
}
