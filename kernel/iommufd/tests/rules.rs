//! One test per rule of the iommufd object model (issue 4), error paths included.
//! Every test ends with `invariants`: no stale IOTLB entry, no stale translation
//! used, no page unpinned while an IOTLB still translated to it.

use abi::{Errno, HwptAllocFlags};
use iommu::{Access, DeviceId, IovaRange, NestedData, NestedInvalidation, Prot, UnitId};
use iommufd::testing::{Event, SoftConfig, SoftCore, soft_core};
use iommufd::{FAULT_QUEUE_DEPTH, OwnerId, decode_hwpt_data, decode_invalidations};

const O: OwnerId = OwnerId(1);
const RW: Prot = Prot {
    read: true,
    write: true,
};
const DEV_A: DeviceId = DeviceId(0x10);
const DEV_B: DeviceId = DeviceId(0x18);
const DEV_C: DeviceId = DeviceId(0x20);
const U0: UnitId = UnitId(0);
const U1: UnitId = UnitId(1);
const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;

fn vtd() -> SoftCore {
    soft_core(&[SoftConfig::vtd_like()]).0
}

fn r(start: u64, last: u64) -> IovaRange {
    IovaRange { start, last }
}

fn invariants(fd: &SoftCore) {
    for u in fd.units() {
        assert_eq!(
            u.stale_entries(),
            0,
            "IOTLB holds a translation the table lost"
        );
        assert_eq!(u.stale_uses(), 0, "a stale translation was used");
    }
    assert_eq!(
        fd.services().violations,
        0,
        "pages unpinned before their flush"
    );
}

/// An IOAS with device A (unit 0) attached through an automatic HWPT.
fn attached() -> (SoftCore, u32, u32, u32) {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let hwpt = fd.device_attach(O, dev, ioas).unwrap();
    (fd, ioas, dev, hwpt)
}

// ---- object table ----

#[test]
fn an_owner_past_its_limits_gets_enospc_and_the_others_go_on() {
    let (mut fd, ioas, _, _) = attached();
    // O holds an IOAS, a device and an automatic HWPT: three objects.
    fd.set_limits(iommufd::Limits {
        objects: 4,
        areas: 2,
        domains: usize::MAX,
    });
    let extra = fd.ioas_alloc(O).unwrap();
    let before = fd.state_digest();
    assert_eq!(fd.ioas_alloc(O), Err(Errno::ENOSPC));
    assert_eq!(fd.bind_device(O, U0, DEV_B), Err(Errno::ENOSPC));
    assert_eq!(fd.state_digest(), before, "a refused call changed nothing");
    // Another owner is not affected.
    assert_eq!(fd.ioas_alloc(OwnerId(2)).unwrap(), 1);
    // Areas: two, then ENOSPC for maps and copies alike.
    let first = fd.ioas_map(O, ioas, 0x8000, K4, None, RW).unwrap();
    let second = fd.ioas_map(O, ioas, 0x9000, K4, None, RW).unwrap();
    let before = fd.state_digest();
    assert_eq!(
        fd.ioas_map(O, ioas, 0xA000, K4, None, RW),
        Err(Errno::ENOSPC)
    );
    assert_eq!(
        fd.ioas_copy(O, ioas, second, K4, extra, None, RW),
        Err(Errno::ENOSPC)
    );
    assert_eq!(fd.state_digest(), before);
    assert_eq!(fd.area_count(O), 2);
    // What is given back can be taken again.
    fd.ioas_unmap(O, ioas, second, K4).unwrap();
    let third = fd.ioas_map(O, ioas, 0xA000, K4, None, RW).unwrap();
    // An IOAS destroyed with its areas gives them back too.
    fd.ioas_unmap(O, ioas, third, K4).unwrap();
    fd.ioas_copy(O, ioas, first, K4, extra, None, RW).unwrap();
    assert_eq!(fd.area_count(O), 2);
    fd.destroy(O, extra).unwrap();
    assert_eq!(fd.area_count(O), 1);
    fd.ioas_alloc(O).unwrap();
    invariants(&fd);
}

/// Each HWPT holds a hardware domain id of the unit's finite space: an
/// owner at its domain limit is refused a new one, explicit, nested or
/// automatic, while other objects and other owners go on.
#[test]
fn an_owner_at_its_domain_limit_gets_enospc_for_every_kind_of_hwpt() {
    let (mut fd, ioas, dev, _) = attached();
    fd.set_limits(iommufd::Limits {
        domains: 2,
        ..iommufd::Limits::DEFAULT
    });
    let parent = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::NEST_PARENT, None)
        .unwrap();
    assert_eq!(fd.domain_count(O), 2);
    let before = fd.state_digest();
    assert_eq!(
        fd.hwpt_alloc(O, dev, ioas, HwptAllocFlags::empty(), None),
        Err(Errno::ENOSPC)
    );
    assert_eq!(
        fd.hwpt_alloc(O, dev, parent, HwptAllocFlags::empty(), Some(vtd_s1())),
        Err(Errno::ENOSPC)
    );
    let second_ioas = fd.ioas_alloc(O).unwrap();
    let second_dev = fd.bind_device(O, U0, DEV_B).unwrap();
    let digest = fd.state_digest();
    assert_eq!(
        fd.device_attach(O, second_dev, second_ioas),
        Err(Errno::ENOSPC),
        "an automatic HWPT is a domain too"
    );
    assert_eq!(fd.state_digest(), digest);
    assert_ne!(fd.state_digest(), before);
    // Another owner is not affected; a destroyed domain can be taken again.
    let other = fd.ioas_alloc(OwnerId(2)).unwrap();
    let other_dev = fd.bind_device(OwnerId(2), U0, DEV_C).unwrap();
    fd.device_attach(OwnerId(2), other_dev, other).unwrap();
    fd.destroy(O, parent).unwrap();
    fd.device_attach(O, second_dev, second_ioas).unwrap();
    invariants(&fd);
}

/// A device whose DMA may carry other ids (its own behind a bridge that
/// usually takes its requests over): they are claimed with it, and every
/// attach, replace and detach programs all of them, all or nothing.
#[test]
fn every_alias_of_a_device_is_claimed_and_programmed_with_it() {
    const OWN_ID: DeviceId = DeviceId(0x211);
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd
        .bind_device_with_aliases(O, U0, DEV_A, &[OWN_ID, DEV_A, OWN_ID])
        .unwrap();
    assert_eq!(fd.device_holder(U0, OWN_ID), Some((O, dev)));
    assert_eq!(
        fd.bind_device(OwnerId(2), U0, OWN_ID),
        Err(Errno::EBUSY),
        "an alias is claimed with its device"
    );
    let hwpt = fd.device_attach(O, dev, ioas).unwrap();
    let unit = fd.unit_mut(U0).unwrap();
    let domain = unit.device_domain(DEV_A);
    assert!(domain.is_some());
    assert_eq!(
        unit.device_domain(OWN_ID),
        domain,
        "the alias is in the domain"
    );

    // A replace whose alias cannot move leaves every id where it was.
    let other = fd.ioas_alloc(O).unwrap();
    fd.unit_mut(U0).unwrap().fail_attach_of = Some(OWN_ID);
    let before = fd.state_digest();
    assert!(fd.device_replace(O, dev, other).is_err());
    assert_eq!(fd.state_digest(), before);
    let unit = fd.unit_mut(U0).unwrap();
    assert_eq!(unit.device_domain(DEV_A), domain, "the requester went back");
    assert_eq!(unit.device_domain(OWN_ID), domain);
    unit.fail_attach_of = None;

    let moved = fd.device_replace(O, dev, other).unwrap();
    assert_ne!(moved, hwpt);
    let unit = fd.unit_mut(U0).unwrap();
    assert_eq!(unit.device_domain(OWN_ID), unit.device_domain(DEV_A));
    assert_ne!(unit.device_domain(DEV_A), domain);

    fd.device_detach(O, dev).unwrap();
    let unit = fd.unit_mut(U0).unwrap();
    assert_eq!(unit.device_domain(DEV_A), None);
    assert_eq!(unit.device_domain(OWN_ID), None, "the alias is blocked too");

    // An attach whose alias cannot be programmed blocks what it moved.
    fd.unit_mut(U0).unwrap().fail_attach_of = Some(OWN_ID);
    assert!(fd.device_attach(O, dev, ioas).is_err());
    assert_eq!(fd.unit_mut(U0).unwrap().device_domain(DEV_A), None);
    fd.unit_mut(U0).unwrap().fail_attach_of = None;

    fd.destroy(O, dev).unwrap();
    assert_eq!(fd.device_holder(U0, OWN_ID), None);
    fd.bind_device(OwnerId(2), U0, OWN_ID).unwrap();
    invariants(&fd);
}

#[test]
fn object_ids_start_at_1_per_owner_and_reuse_the_lowest_free() {
    let mut fd = vtd();
    assert_eq!(fd.ioas_alloc(O).unwrap(), 1);
    assert_eq!(fd.ioas_alloc(O).unwrap(), 2);
    assert_eq!(fd.ioas_alloc(OwnerId(2)).unwrap(), 1);
    assert_eq!(fd.ioas_alloc(O).unwrap(), 3);
    fd.destroy(O, 1).unwrap();
    assert_eq!(fd.ioas_alloc(O).unwrap(), 1);
    fd.destroy(O, 3).unwrap();
    fd.destroy(O, 2).unwrap();
    assert_eq!(fd.ioas_alloc(O).unwrap(), 2);
}

#[test]
fn destroy_unknown_id_is_enoent() {
    let mut fd = vtd();
    assert_eq!(fd.destroy(O, 1), Err(Errno::ENOENT));
    fd.ioas_alloc(O).unwrap();
    assert_eq!(fd.destroy(O, 7), Err(Errno::ENOENT));
    assert_eq!(fd.destroy(OwnerId(9), 1), Err(Errno::ENOENT));
}

#[test]
fn destroy_ioas_with_attached_device_is_ebusy() {
    let (mut fd, ioas, dev, hwpt) = attached();
    assert_eq!(fd.destroy(O, ioas), Err(Errno::EBUSY));
    assert_eq!(fd.destroy(O, hwpt), Err(Errno::EBUSY));
    fd.device_detach(O, dev).unwrap();
    // The automatic HWPT went with its last device.
    assert_eq!(fd.destroy(O, hwpt), Err(Errno::ENOENT));
    fd.destroy(O, ioas).unwrap();
    invariants(&fd);
}

#[test]
fn destroy_ioas_with_explicit_hwpt_is_ebusy() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let hwpt = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::empty(), None)
        .unwrap();
    assert_eq!(fd.destroy(O, ioas), Err(Errno::EBUSY));
    fd.destroy(O, hwpt).unwrap();
    fd.destroy(O, ioas).unwrap();
}

#[test]
fn destroy_hwpt_with_nested_children_is_ebusy() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let parent = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::NEST_PARENT, None)
        .unwrap();
    let nested = fd
        .hwpt_alloc(O, dev, parent, HwptAllocFlags::empty(), Some(vtd_s1()))
        .unwrap();
    assert_eq!(fd.destroy(O, parent), Err(Errno::EBUSY));
    fd.device_attach(O, dev, nested).unwrap();
    assert_eq!(fd.destroy(O, nested), Err(Errno::EBUSY));
    fd.device_detach(O, dev).unwrap();
    fd.destroy(O, nested).unwrap();
    fd.destroy(O, parent).unwrap();
    assert_eq!(fd.units()[0].domain_count(), 0);
}

#[test]
fn destroy_attached_device_is_ebusy_and_detached_device_is_released() {
    let (mut fd, _ioas, dev, _) = attached();
    assert_eq!(fd.destroy(O, dev), Err(Errno::EBUSY));
    fd.device_detach(O, dev).unwrap();
    fd.destroy(O, dev).unwrap();
    assert_eq!(fd.device_holder(U0, DEV_A), None);
    // Released: another owner may bind it now.
    assert!(fd.bind_device(OwnerId(2), U0, DEV_A).is_ok());
}

/// A requester id another owner holds is EBUSY; one the same owner holds
/// is a function of a group it owns already, which joins the group (the
/// kernel keeps one function from being opened twice). Until this rule
/// came, the same owner got EBUSY too, and could not use the second
/// function of a group it held.
#[test]
fn bind_device_claimed_by_another_owner_is_ebusy() {
    let mut fd = vtd();
    assert_eq!(fd.device_holder(U0, DEV_A), None);
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    assert_eq!(fd.device_holder(U0, DEV_A), Some((O, dev)));
    assert_eq!(fd.bind_device(OwnerId(2), U0, DEV_A), Err(Errno::EBUSY));
    let mate = fd.bind_device(O, U0, DEV_A).unwrap();
    assert_ne!(mate, dev);
    assert_eq!(fd.device_holder(U0, DEV_A), Some((O, dev)));
    assert_eq!(fd.bind_device(O, UnitId(5), DEV_B), Err(Errno::EINVAL));
}

/// The functions of one group (one requester id, as behind a PCIe-to-PCI
/// bridge) held by one owner (Linux `iommufd_group`): while one is
/// attached, another joins only its HWPT (EINVAL elsewhere), only the
/// group's last attached function takes the shared id out of the domain,
/// replace of a function with attached mates is EINVAL (the group moves as
/// a whole), and the claim passes to the function that remains.
#[test]
fn functions_of_one_group_share_its_hwpt_and_leave_it_last_out() {
    const OWN_A: DeviceId = DeviceId(0x209);
    const OWN_B: DeviceId = DeviceId(0x211);
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let other_ioas = fd.ioas_alloc(O).unwrap();
    let a = fd.bind_device_with_aliases(O, U0, DEV_A, &[OWN_A]).unwrap();
    let hwpt = fd.device_attach(O, a, ioas).unwrap();
    let domain = fd.unit_mut(U0).unwrap().device_domain(DEV_A);
    assert!(domain.is_some());
    // The second function joins without taking the shared id out.
    let b = fd.bind_device_with_aliases(O, U0, DEV_A, &[OWN_B]).unwrap();
    assert_eq!(fd.unit_mut(U0).unwrap().device_domain(DEV_A), domain);
    assert_eq!(fd.unit_mut(U0).unwrap().device_domain(OWN_B), None);
    assert_eq!(fd.device_holder(U0, OWN_B), Some((O, b)));
    assert_eq!(
        fd.bind_device(OwnerId(2), U0, OWN_B),
        Err(Errno::EBUSY),
        "another owner gets no function of the group"
    );
    let before = fd.state_digest();
    assert_eq!(fd.device_attach(O, b, other_ioas), Err(Errno::EINVAL));
    assert_eq!(fd.state_digest(), before);
    assert_eq!(fd.device_attach(O, b, ioas), Ok(hwpt));
    assert_eq!(fd.unit_mut(U0).unwrap().device_domain(OWN_B), domain);
    assert_eq!(fd.device_replace(O, b, other_ioas), Err(Errno::EINVAL));
    // Out one by one: the shared id stays until the last leaves.
    fd.device_detach(O, a).unwrap();
    let unit = fd.unit_mut(U0).unwrap();
    assert_eq!(
        unit.device_domain(DEV_A),
        domain,
        "b still needs the shared id"
    );
    assert_eq!(unit.device_domain(OWN_A), None);
    fd.destroy(O, a).unwrap();
    assert_eq!(
        fd.device_holder(U0, DEV_A),
        Some((O, b)),
        "the claim passed to b"
    );
    // Alone now, b may move.
    let moved = fd.device_replace(O, b, other_ioas).unwrap();
    assert_ne!(moved, hwpt);
    fd.device_detach(O, b).unwrap();
    let unit = fd.unit_mut(U0).unwrap();
    assert_eq!(unit.device_domain(DEV_A), None);
    assert_eq!(unit.device_domain(OWN_B), None);
    fd.destroy(O, b).unwrap();
    assert_eq!(fd.device_holder(U0, DEV_A), None);
    invariants(&fd);
}

#[test]
fn teardown_owner_destroys_leaf_first_and_leaves_nothing() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let ioas2 = fd.ioas_alloc(O).unwrap();
    let a = fd.bind_device(O, U0, DEV_A).unwrap();
    let b = fd.bind_device(O, U0, DEV_B).unwrap();
    let parent = fd
        .hwpt_alloc(O, a, ioas2, HwptAllocFlags::NEST_PARENT, None)
        .unwrap();
    let nested = fd
        .hwpt_alloc(O, a, parent, HwptAllocFlags::empty(), Some(vtd_s1()))
        .unwrap();
    fd.device_attach(O, a, ioas).unwrap();
    fd.device_attach(O, b, nested).unwrap();
    let iova = fd.ioas_map(O, ioas, 0x10_0000, 4 * K4, None, RW).unwrap();
    fd.ioas_copy(O, ioas, iova, 4 * K4, ioas2, None, RW)
        .unwrap();
    fd.ioas_map(O, ioas2, 0x40_0000, M2, None, RW).unwrap();
    // Another owner's state must survive.
    let other = fd.ioas_alloc(OwnerId(2)).unwrap();
    fd.ioas_map(OwnerId(2), other, 0, K4, None, RW).unwrap();

    fd.teardown(O);
    assert_eq!(fd.object_count(O), 0);
    assert_eq!(fd.units()[0].device_domain(DEV_A), None);
    assert_eq!(fd.units()[0].device_domain(DEV_B), None);
    assert_eq!(fd.units()[0].domain_count(), 0);
    assert_eq!(fd.units()[0].table_pages(), 0);
    assert_eq!(fd.pinned_ranges(), 1);
    assert_eq!(fd.services().pinned_ranges(), 1);
    assert_eq!(fd.object_count(OwnerId(2)), 1);
    invariants(&fd);
    fd.teardown(OwnerId(2));
    assert_eq!(fd.services().pinned_ranges(), 0);
    assert_eq!(fd.pinned_ranges(), 0);
}

// ---- IOAS ranges ----

#[test]
fn ioas_iova_ranges_report_aperture_minus_reserved_and_alignment() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let empty = fd.ioas_iova_ranges(O, ioas).unwrap();
    assert_eq!(empty.ranges, [IovaRange::FULL]);
    // Byte granular without domains, as Linux's `iova_alignment` 1.
    assert_eq!(empty.alignment, 1);
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    fd.device_attach(O, dev, ioas).unwrap();
    let ranges = fd.ioas_iova_ranges(O, ioas).unwrap();
    assert_eq!(
        ranges.ranges,
        [r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)]
    );
    assert_eq!(ranges.alignment, K4);
}

#[test]
fn ioas_iova_ranges_too_small_array_is_emsgsize_after_the_first_entries() {
    let (fd, ioas, _, _) = attached();
    let ranges = fd.ioas_iova_ranges(O, ioas).unwrap();
    let mut small = [abi::IovaRangeEntry::default(); 1];
    assert_eq!(ranges.copy_to(&mut small), Err(Errno::EMSGSIZE));
    assert_eq!(ranges.ranges.len(), 2);
    // Linux's selftest checks that the entries that fit were written.
    assert_eq!((small[0].start, small[0].last), (0, 0xfedf_ffff));
    let mut big = [abi::IovaRangeEntry::default(); 3];
    assert_eq!(ranges.copy_to(&mut big), Ok(2));
    assert_eq!(big[1].start, 0xfef0_0000);
}

#[test]
fn ioas_iova_alignment_is_the_largest_smallest_page_of_attached_units() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like(), SoftConfig::small_64k()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    let a = fd.bind_device(O, U0, DEV_A).unwrap();
    let b = fd.bind_device(O, U1, DEV_B).unwrap();
    fd.device_attach(O, a, ioas).unwrap();
    fd.device_attach(O, b, ioas).unwrap();
    let ranges = fd.ioas_iova_ranges(O, ioas).unwrap();
    assert_eq!(ranges.alignment, 0x1_0000);
    // The 64K unit's 32-bit aperture bounds the usable space.
    assert_eq!(ranges.ranges.last().unwrap().last, u32::MAX as u64);
    assert_eq!(
        fd.ioas_map(O, ioas, 0, K4, None, RW),
        Err(Errno::EINVAL),
        "length below the IOVA alignment"
    );
    fd.device_detach(O, b).unwrap();
    assert_eq!(fd.ioas_iova_ranges(O, ioas).unwrap().alignment, K4);
}

#[test]
fn allow_iovas_intersecting_reserved_is_eaddrinuse() {
    let (mut fd, ioas, _, _) = attached();
    let before = fd.state_digest();
    assert_eq!(
        fd.ioas_allow_iovas(O, ioas, &[r(0x1000, 0xffff), r(0xfe00_0000, 0xfeff_ffff)]),
        Err(Errno::EADDRINUSE)
    );
    assert_eq!(fd.state_digest(), before);
}

#[test]
fn allow_iovas_empty_or_overlapping_is_einval_atomically() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    fd.ioas_allow_iovas(O, ioas, &[r(0x10_0000, 0x1f_ffff)])
        .unwrap();
    let before = fd.state_digest();
    assert_eq!(
        fd.ioas_allow_iovas(O, ioas, &[r(0x2000, 0x1000)]),
        Err(Errno::EINVAL)
    );
    // One byte is no range either (Linux: start >= last).
    assert_eq!(
        fd.ioas_allow_iovas(O, ioas, &[r(0x2000, 0x2000)]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fd.ioas_allow_iovas(O, ioas, &[r(0x1000, 0x2fff), r(0x2000, 0x3fff)]),
        Err(Errno::EINVAL)
    );
    assert_eq!(fd.state_digest(), before);
    // The report is what fixed maps may use: the allowed ranges bound only
    // automatic allocation (Linux reports the holes of the reserved ranges).
    assert_eq!(
        fd.ioas_iova_ranges(O, ioas).unwrap().ranges,
        [IovaRange::FULL]
    );
}

#[test]
fn allow_iovas_bound_automatic_allocation() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    fd.ioas_allow_iovas(O, ioas, &[r(0x30_0000, 0x30_3fff)])
        .unwrap();
    let a = fd.ioas_map(O, ioas, 0, 2 * K4, None, RW).unwrap();
    let b = fd.ioas_map(O, ioas, 0, 2 * K4, None, RW).unwrap();
    assert_eq!([a.min(b), a.max(b)], [0x30_0000, 0x30_2000]);
    assert_eq!(fd.ioas_map(O, ioas, 0, K4, None, RW), Err(Errno::ENOSPC));
    // A fixed IOVA outside the allowed ranges is still fine (Linux semantics).
    assert_eq!(fd.ioas_map(O, ioas, 0, K4, Some(0x1000), RW), Ok(0x1000));
    // Empty set: everything allowed again.
    fd.ioas_allow_iovas(O, ioas, &[]).unwrap();
    assert!(fd.ioas_map(O, ioas, 0, K4, None, RW).is_ok());
}

// ---- map ----

/// Linux `iopt_alloc_iova`: an automatic IOVA is aligned to the length
/// rounded up to a power of two (3 pages: 4-page alignment), capped by the
/// user address's own alignment, so that large leaves stay possible.
#[test]
fn automatic_iovas_round_the_length_up_capped_by_the_user_address() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let three = fd.ioas_map(O, ioas, 0, 3 * K4, None, RW).unwrap();
    assert_eq!(three % (4 * K4), 0, "{three:#x}");
    let m2 = 0x20_0000;
    let aligned = fd.ioas_map(O, ioas, m2, m2, None, RW).unwrap();
    assert_eq!(aligned % m2, 0, "{aligned:#x}");
    // In an empty IOAS the lowest 4 KiB-aligned IOVA is taken: 0x1000.
    let other = fd.ioas_alloc(O).unwrap();
    let capped = fd.ioas_map(O, other, m2 + K4, m2, None, RW).unwrap();
    assert_eq!(capped, K4, "aligned past what the user address allows");
}

/// Linux `IOMMU_OPTION_HUGE_PAGES`: with huge pages off an IOAS's domains get
/// only their smallest page (the unit is handed one page per map call, as
/// Linux's `batch_iommu_map_small`); turning it off once a domain maps an area
/// is `EINVAL` (`iopt_disable_large_pages`); on again is always fine.
#[test]
fn huge_pages_off_maps_only_base_pages() {
    let (mut fd, ioas, _, _) = attached();
    let m2 = 0x20_0000;
    let map_lengths = |fd: &mut SoftCore| -> Vec<u64> {
        let unit = fd.unit_mut(U0).unwrap();
        let lengths = unit
            .log
            .iter()
            .filter_map(|event| match event {
                Event::Map { len, .. } => Some(*len),
                _ => None,
            })
            .collect();
        unit.log.clear();
        lengths
    };
    assert_eq!(fd.ioas_option_huge_pages(O, ioas, None), Ok(true));
    assert_eq!(fd.ioas_option_huge_pages(O, ioas, Some(false)), Ok(false));
    map_lengths(&mut fd);
    let small = fd.ioas_map(O, ioas, m2, m2, None, RW).unwrap();
    let lengths = map_lengths(&mut fd);
    assert_eq!(lengths.len(), 512);
    assert!(
        lengths.iter().all(|&len| len == K4),
        "a large page with huge pages off"
    );
    assert_eq!(
        fd.ioas_option_huge_pages(O, ioas, Some(false)),
        Ok(false),
        "setting the current value changes nothing"
    );
    assert_eq!(fd.ioas_option_huge_pages(O, ioas, Some(true)), Ok(true));
    assert_eq!(
        fd.ioas_option_huge_pages(O, ioas, Some(false)),
        Err(Errno::EINVAL),
        "off while a domain maps an area"
    );
    fd.ioas_map(O, ioas, 2 * m2, m2, None, RW).unwrap();
    assert_eq!(map_lengths(&mut fd), [m2], "large pages again once on");
    fd.ioas_unmap(O, ioas, small, m2).unwrap();
}

#[test]
fn map_fixed_unaligned_iova_is_einval() {
    let (mut fd, ioas, _, _) = attached();
    assert_eq!(
        fd.ioas_map(O, ioas, 0, K4, Some(0x1800), RW),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fd.ioas_map(O, ioas, 0x800, K4, None, RW),
        Err(Errno::EINVAL)
    );
    assert_eq!(fd.ioas_map(O, ioas, 0, 0x800, None, RW), Err(Errno::EINVAL));
    assert_eq!(fd.ioas_map(O, ioas, 0, 0, None, RW), Err(Errno::EINVAL));
}

#[test]
fn map_without_read_or_write_is_einval() {
    let (mut fd, ioas, _, _) = attached();
    assert_eq!(
        fd.ioas_map(O, ioas, 0, K4, None, Prot::default()),
        Err(Errno::EINVAL)
    );
}

#[test]
fn map_fixed_wrapping_is_eoverflow() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    assert_eq!(
        fd.ioas_map(O, ioas, 0, 2 * K4, Some(u64::MAX - 0xfff), RW),
        Err(Errno::EOVERFLOW)
    );
}

#[test]
fn map_fixed_in_reserved_range_is_einval() {
    let (mut fd, ioas, _, _) = attached();
    assert_eq!(
        fd.ioas_map(O, ioas, 0, 2 * K4, Some(0xfedf_f000), RW),
        Err(Errno::EINVAL)
    );
    // Outside the aperture is reserved too.
    assert_eq!(
        fd.ioas_map(O, ioas, 0, K4, Some(1 << 48), RW),
        Err(Errno::EINVAL)
    );
}

#[test]
fn map_fixed_overlapping_area_is_eexist() {
    let (mut fd, ioas, _, _) = attached();
    fd.ioas_map(O, ioas, 0, 4 * K4, Some(0x10_0000), RW)
        .unwrap();
    assert_eq!(
        fd.ioas_map(O, ioas, 0, 2 * K4, Some(0x10_3000), RW),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fd.ioas_map(O, ioas, 0, 2 * K4, Some(0x0f_f000), RW),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fd.ioas_map(O, ioas, 0, K4, Some(0x10_4000), RW),
        Ok(0x10_4000)
    );
}

#[test]
fn map_of_unbacked_user_memory_is_efault_and_leaves_nothing() {
    let (mut fd, ioas, _, _) = attached();
    let before = fd.state_digest();
    assert_eq!(
        fd.ioas_map(O, ioas, 1 << 39, K4, None, RW),
        Err(Errno::EFAULT)
    );
    assert_eq!(fd.state_digest(), before);
}

#[test]
fn map_auto_iova_is_never_zero_and_naturally_aligned() {
    let (mut fd, ioas, _, _) = attached();
    let a = fd.ioas_map(O, ioas, 0, K4, None, RW).unwrap();
    assert_ne!(a, 0);
    let b = fd.ioas_map(O, ioas, 0, M2, None, RW).unwrap();
    assert_eq!(b % M2, 0);
    let c = fd.ioas_map(O, ioas, 0, 3 * K4, None, RW).unwrap();
    assert_eq!(c % (2 * K4), 0);
    // The 2 MiB mapping became one 2 MiB leaf.
    let domain = fd.units()[0].device_domain(DEV_A).unwrap();
    assert!(fd.units()[0].log.iter().any(|e| matches!(e,
        Event::Map { domain: d, iova, len, .. } if *d == domain && *iova == b && *len == M2)));
    assert_eq!(fd.units()[0].leaf_count(), 1 + 1 + 3);
    invariants(&fd);
}

#[test]
fn map_auto_iova_avoids_reserved_and_reports_enospc_when_nothing_fits() {
    let (mut fd, ioas, _, _) = attached();
    fd.ioas_allow_iovas(O, ioas, &[r(0xfed0_0000, 0xfedf_ffff)])
        .unwrap();
    let a = fd.ioas_map(O, ioas, 0, 0x10_0000, None, RW).unwrap();
    assert_eq!(a, 0xfed0_0000);
    assert_eq!(fd.ioas_map(O, ioas, 0, K4, None, RW), Err(Errno::ENOSPC));
}

#[test]
fn map_is_all_or_nothing_across_every_domain() {
    let (mut fd, gate) = soft_core(&[SoftConfig::vtd_like(), SoftConfig::smmu_like()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    let a = fd.bind_device(O, U0, DEV_A).unwrap();
    let b = fd.bind_device(O, U1, DEV_B).unwrap();
    fd.device_attach(O, a, ioas).unwrap();
    fd.device_attach(O, b, ioas).unwrap();
    // Count the gated allocations of a map into fresh table pages, then fail
    // the last one (the second domain's last table page) for a map elsewhere.
    gate.count();
    fd.ioas_map(O, ioas, 0, K4, Some(1 << 40), RW).unwrap();
    let calls = gate.calls();
    fd.ioas_unmap(O, ioas, 1 << 40, K4).unwrap();
    let before = fd.state_digest();
    let tables = [fd.units()[0].table_pages(), fd.units()[1].table_pages()];
    gate.arm(calls);
    assert_eq!(
        fd.ioas_map(O, ioas, 0, K4, Some(2 << 40), RW),
        Err(Errno::ENOMEM)
    );
    assert!(gate.tripped());
    assert_eq!(
        [fd.units()[0].table_pages(), fd.units()[1].table_pages()],
        tables
    );
    assert_eq!(fd.state_digest(), before);
    assert_eq!(fd.units()[0].leaf_count(), 0);
    assert_eq!(fd.units()[1].leaf_count(), 0);
    assert_eq!(fd.services().pinned_ranges(), 0);
    invariants(&fd);
}

// ---- unmap ----

#[test]
fn unmap_removes_whole_areas_and_a_cut_is_enoent() {
    let (mut fd, ioas, _, _) = attached();
    fd.ioas_map(O, ioas, 0, 4 * K4, Some(0x10_0000), RW)
        .unwrap();
    fd.ioas_map(O, ioas, 0, 4 * K4, Some(0x10_4000), RW)
        .unwrap();
    assert_eq!(fd.ioas_unmap(O, ioas, 0x10_1000, K4), Err(Errno::ENOENT));
    assert_eq!(
        fd.ioas_unmap(O, ioas, 0x10_0000, 5 * K4),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fd.ioas_unmap(O, ioas, 0x0f_f000, 2 * K4),
        Err(Errno::ENOENT)
    );
    assert_eq!(fd.ioas_areas(O, ioas).unwrap().len(), 2);
    // A range covering both whole areas (and the hole before) unmaps both.
    assert_eq!(
        fd.ioas_unmap(O, ioas, 0x0f_0000, 0x1_0000 + 8 * K4),
        Ok(8 * K4)
    );
    assert!(fd.ioas_areas(O, ioas).unwrap().is_empty());
    invariants(&fd);
}

#[test]
fn unmap_of_nothing_is_enoent_and_bad_ranges_are_rejected() {
    let (mut fd, ioas, _, _) = attached();
    assert_eq!(fd.ioas_unmap(O, ioas, 0x10_0000, K4), Err(Errno::ENOENT));
    assert_eq!(fd.ioas_unmap(O, ioas, 0x10_0000, 0), Err(Errno::EINVAL));
    assert_eq!(fd.ioas_unmap(O, ioas, u64::MAX, 2), Err(Errno::EOVERFLOW));
}

#[test]
fn unmap_looks_the_ioas_up_before_it_checks_the_range_as_linux() {
    let (mut fd, ioas, _, _) = attached();
    let missing = ioas + 100;
    assert_eq!(fd.ioas_unmap(O, missing, 0x10_0000, 0), Err(Errno::ENOENT));
    assert_eq!(fd.ioas_unmap(O, missing, u64::MAX, 2), Err(Errno::ENOENT));
}

#[test]
fn unmap_all_succeeds_on_empty_ioas_and_returns_bytes() {
    let (mut fd, ioas, _, _) = attached();
    assert_eq!(fd.ioas_unmap(O, ioas, 0, u64::MAX), Ok(0));
    fd.ioas_map(O, ioas, 0, 4 * K4, None, RW).unwrap();
    fd.ioas_map(O, ioas, 0, M2, None, RW).unwrap();
    assert_eq!(fd.ioas_unmap(O, ioas, 0, u64::MAX), Ok(4 * K4 + M2));
    assert_eq!(fd.services().pinned_ranges(), 0);
    assert_eq!(fd.units()[0].leaf_count(), 0);
    invariants(&fd);
}

#[test]
fn unmap_releases_pages_only_after_the_flush_completed() {
    let (mut fd, ioas, _, _) = attached();
    let iova = fd.ioas_map(O, ioas, 0x5000, 8 * K4, None, RW).unwrap();
    // The device used the mapping: it is in the IOTLB.
    assert!(
        fd.unit_mut(U0)
            .unwrap()
            .dma(DEV_A, iova, Access::Write)
            .is_some()
    );
    fd.ioas_unmap(O, ioas, iova, 8 * K4).unwrap();
    let log = &fd.units()[0].log;
    let unmap_at = log
        .iter()
        .rposition(|e| matches!(e, Event::Unmap { .. }))
        .unwrap();
    let flush_at = log
        .iter()
        .rposition(|e| matches!(e, Event::Flush { .. }))
        .unwrap();
    assert!(flush_at > unmap_at);
    assert_eq!(fd.services().unpins, 1);
    // After the unmap the device faults instead of reaching the freed pages.
    assert_eq!(
        fd.unit_mut(U0).unwrap().dma(DEV_A, iova, Access::Write),
        None
    );
    invariants(&fd);
}

/// Issue 16, freeing after a failed invalidation: a domain the unit cannot
/// free (the invalidation that must come first fails) keeps its tables and
/// whatever the IOTLB caches, so every page it maps stays pinned for good,
/// even when another IOAS shares the pages and lets go of them last.
#[test]
fn a_domain_the_unit_cannot_free_keeps_every_page_it_maps_pinned() {
    let (mut fd, ioas, _, _) = attached();
    let iova = fd.ioas_map(O, ioas, 0, K4, None, RW).unwrap();
    let other = fd.ioas_alloc(O).unwrap();
    fd.ioas_copy(O, ioas, iova, K4, other, None, RW).unwrap();
    fd.unit_mut(U0).unwrap().fail_flush = true;
    fd.teardown(O);
    assert_eq!(fd.lost_domains(), 1);
    assert_eq!(fd.services().unpins, 0, "a lost domain's page was unpinned");
    assert_eq!(fd.services().violations, 0);
    assert_eq!(fd.quarantined_ranges(), 1);
}

/// Quarantined pages shared with another IOAS stay quarantined when the
/// other IOAS lets go of them last.
#[test]
fn quarantined_pages_stay_quarantined_whoever_releases_them_last() {
    let (mut fd, ioas, _, _) = attached();
    let iova = fd.ioas_map(O, ioas, 0, K4, None, RW).unwrap();
    let other = fd.ioas_alloc(O).unwrap();
    let copy = fd.ioas_copy(O, ioas, iova, K4, other, None, RW).unwrap();
    fd.unit_mut(U0).unwrap().fail_flush = true;
    assert_eq!(fd.ioas_unmap(O, ioas, iova, K4), Err(Errno::EIO));
    fd.unit_mut(U0).unwrap().fail_flush = false;
    assert_eq!(fd.ioas_unmap(O, other, copy, K4), Ok(K4));
    assert_eq!(fd.services().unpins, 0, "unpinned by the other IOAS");
    assert_eq!(fd.quarantined_ranges(), 1);
}

/// Issue 16: an unmap the unit refuses unmaps nothing (the contract), so the
/// mapping is still there and its pages must never be released (they used to
/// be unpinned after an empty gather's "flush").
#[test]
fn an_unmap_the_unit_refuses_keeps_the_pages_pinned() {
    let (mut fd, ioas, _, _) = attached();
    let iova = fd.ioas_map(O, ioas, 0, K4, None, RW).unwrap();
    fd.unit_mut(U0).unwrap().fail_next_unmap = true;
    assert_eq!(fd.ioas_unmap(O, ioas, iova, K4), Err(Errno::EIO));
    assert_eq!(fd.services().unpins, 0, "unpinned while still mapped");
    assert_eq!(fd.quarantined_ranges(), 1);
    assert_eq!(fd.services().violations, 0);
}

#[test]
fn unmap_with_failed_flush_is_eio_and_quarantines_the_pages() {
    let (mut fd, ioas, _, _) = attached();
    let iova = fd.ioas_map(O, ioas, 0, K4, None, RW).unwrap();
    fd.unit_mut(U0).unwrap().fail_flush = true;
    assert_eq!(fd.ioas_unmap(O, ioas, iova, K4), Err(Errno::EIO));
    assert_eq!(
        fd.services().unpins,
        0,
        "never released after a failed flush"
    );
    assert_eq!(fd.quarantined_ranges(), 1);
    assert_eq!(fd.services().violations, 0);
}

#[test]
fn unmap_of_aligned_power_of_two_range_is_one_range_invalidation_and_one_sync() {
    for k in 12..=30u32 {
        let (mut fd, ioas, _, _) = attached();
        let len = 1u64 << k;
        let iova = fd.ioas_map(O, ioas, 0, len, None, RW).unwrap();
        assert_eq!(iova % len, 0);
        let before = fd.units()[0].stats;
        fd.ioas_unmap(O, ioas, iova, len).unwrap();
        let after = fd.units()[0].stats;
        assert_eq!(
            after.range_invalidations - before.range_invalidations,
            1,
            "k={k}"
        );
        assert_eq!(after.syncs - before.syncs, 1, "k={k}");
        invariants(&fd);
    }
}

// ---- copy ----

#[test]
fn copy_shares_the_pinned_pages() {
    let (mut fd, ioas, _, _) = attached();
    let dst = fd.ioas_alloc(O).unwrap();
    let src = fd.ioas_map(O, ioas, 0x8000, 4 * K4, None, RW).unwrap();
    let d = fd.ioas_copy(O, ioas, src, 4 * K4, dst, None, RW).unwrap();
    assert_ne!(d, 0);
    assert_eq!(fd.services().pins, 1);
    fd.ioas_unmap(O, ioas, src, 4 * K4).unwrap();
    assert_eq!(fd.services().unpins, 0, "the copy still holds the pages");
    fd.ioas_unmap(O, dst, d, 4 * K4).unwrap();
    assert_eq!(fd.services().unpins, 1);
    invariants(&fd);
}

#[test]
fn copy_maps_the_same_physical_pages_into_the_destination_domain() {
    let (mut fd, ioas, _, _) = attached();
    let dst = fd.ioas_alloc(O).unwrap();
    let b = fd.bind_device(O, U0, DEV_B).unwrap();
    fd.device_attach(O, b, dst).unwrap();
    fd.ioas_map(O, ioas, 0x8000, 2 * K4, Some(0x10_0000), RW)
        .unwrap();
    fd.ioas_map(O, ioas, 0x20_0000, 2 * K4, Some(0x10_2000), RW)
        .unwrap();
    // A sub-range spanning both areas.
    let d = fd
        .ioas_copy(O, ioas, 0x10_1000, 2 * K4, dst, Some(0x50_0000), RW)
        .unwrap();
    assert_eq!(d, 0x50_0000);
    let pa = fd.unit_mut(U0).unwrap().dma(DEV_B, 0x50_0000, Access::Read);
    let pb = fd.unit_mut(U0).unwrap().dma(DEV_B, 0x50_1000, Access::Read);
    let mem = fd.services();
    assert_eq!(pa, Some(mem.phys_of(O, 0x9000)));
    assert_eq!(pb, Some(mem.phys_of(O, 0x20_0000)));
    invariants(&fd);
}

#[test]
fn copy_of_a_source_range_with_a_hole_is_enoent() {
    let (mut fd, ioas, _, _) = attached();
    let dst = fd.ioas_alloc(O).unwrap();
    fd.ioas_map(O, ioas, 0, K4, Some(0x10_0000), RW).unwrap();
    fd.ioas_map(O, ioas, 0, K4, Some(0x10_2000), RW).unwrap();
    let before = fd.state_digest();
    assert_eq!(
        fd.ioas_copy(O, ioas, 0x10_0000, 3 * K4, dst, None, RW),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fd.ioas_copy(O, ioas, 0x20_0000, K4, dst, None, RW),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fd.ioas_copy(O, ioas, 0x10_0000, 2 * K4, dst, None, RW),
        Err(Errno::ENOENT)
    );
    assert_eq!(fd.state_digest(), before);
}

/// Linux `iopt_insert_area`: a copy's areas keep the page offset of their
/// user bytes, which must be aligned to the destination's alignment. A
/// destination with a domain refuses a copy from off a page boundary; one
/// without takes it, and then refuses the domain (`EADDRINUSE`) until the
/// area goes.
#[test]
fn copy_from_an_iova_off_a_page_boundary_needs_a_byte_granular_destination() {
    let (mut fd, ioas, _, _) = attached();
    fd.ioas_map(O, ioas, 0x8000, 2 * K4, Some(0x10_0000), RW)
        .unwrap();
    let with_domain = fd.ioas_alloc(O).unwrap();
    let b = fd.bind_device(O, U0, DEV_B).unwrap();
    fd.device_attach(O, b, with_domain).unwrap();
    let before = fd.state_digest();
    assert_eq!(
        fd.ioas_copy(O, ioas, 0x10_0001, K4, with_domain, None, RW),
        Err(Errno::EINVAL)
    );
    assert_eq!(fd.state_digest(), before);
    fd.device_detach(O, b).unwrap();
    let bare = fd.ioas_alloc(O).unwrap();
    let iova = fd
        .ioas_copy(O, ioas, 0x10_0001, K4, bare, None, RW)
        .unwrap();
    // The automatic IOVA keeps the user bytes' page offset (0x8001).
    assert_eq!(iova % K4, 1);
    let before = fd.state_digest();
    assert_eq!(fd.device_attach(O, b, bare), Err(Errno::EADDRINUSE));
    assert_eq!(fd.state_digest(), before);
    fd.ioas_unmap(O, bare, iova, K4).unwrap();
    fd.device_attach(O, b, bare).unwrap();
    invariants(&fd);
}

/// Linux's io_pagetable without domains has `iova_alignment` 1: any
/// length and user address maps (its selftest maps lengths 1 to
/// 2 * PAGE - 1); the pages under an area are pinned whole, and an
/// automatic IOVA keeps the user address's page offset (`iopt_alloc_iova`
/// ORs `page_offset` in). Unmapping gives every page back.
#[test]
fn an_ioas_without_domains_maps_any_byte_range_and_pins_whole_pages() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    for len in [1, 2, K4 - 1, K4, K4 + 1, 2 * K4 - 1] {
        for offset in [0, 1, K4 - 1] {
            let va = 0x40_0000 + offset;
            let iova = fd.ioas_map(O, ioas, va, len, None, RW).unwrap();
            assert_eq!(iova % K4, offset, "len {len:#x} at {va:#x}");
            let pages = (offset + len).div_ceil(K4);
            assert_eq!(fd.pinned_bytes(), pages * K4, "len {len:#x} at {va:#x}");
            assert_eq!(fd.ioas_areas(O, ioas).unwrap(), [(iova, len)]);
            assert_eq!(fd.ioas_unmap(O, ioas, iova, len), Ok(len));
            assert_eq!(fd.pinned_bytes(), 0);
            assert_eq!(fd.services().pinned_ranges(), 0);
        }
    }
    // Byte-adjacent fixed areas sharing an IOVA page are fine without a
    // domain, and each is its own area.
    fd.ioas_map(O, ioas, 0x8000, 1, Some(0x10_0000), RW)
        .unwrap();
    fd.ioas_map(O, ioas, 0x9001, K4 - 1, Some(0x10_0001), RW)
        .unwrap();
    assert_eq!(
        fd.ioas_map(O, ioas, 0x8000, 1, Some(0x10_0000), RW),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fd.ioas_areas(O, ioas).unwrap(),
        [(0x10_0000, 1), (0x10_0001, K4 - 1)]
    );
    assert_eq!(fd.ioas_unmap(O, ioas, 0x10_0000, K4), Ok(K4));
    invariants(&fd);
}

/// Linux `iopt_check_iova_alignment`: a domain joins an IOAS only if every
/// area's IOVA, length and page offset suit its smallest page, so a
/// byte-granular area keeps it out (`EADDRINUSE`, nothing changed); once
/// the domain is in, the IOAS reports its page size as the alignment and a
/// map that is not whole pages is `EINVAL`. When the last domain leaves,
/// the IOAS is byte granular again.
#[test]
fn a_domain_cannot_join_an_ioas_holding_a_sub_page_area() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let iova = fd.ioas_map(O, ioas, 0x8000, 1, None, RW).unwrap();
    let before = fd.state_digest();
    assert_eq!(fd.device_attach(O, dev, ioas), Err(Errno::EADDRINUSE));
    assert_eq!(fd.state_digest(), before);
    fd.ioas_unmap(O, ioas, iova, 1).unwrap();
    // A whole-page area from an address off a page boundary keeps it out too.
    let iova = fd.ioas_map(O, ioas, 0x8001, K4, None, RW).unwrap();
    assert_eq!(fd.device_attach(O, dev, ioas), Err(Errno::EADDRINUSE));
    fd.ioas_unmap(O, ioas, iova, K4).unwrap();
    fd.device_attach(O, dev, ioas).unwrap();
    assert_eq!(fd.ioas_iova_ranges(O, ioas).unwrap().alignment, K4);
    for (va, len) in [(0x8000, 1), (0x8000, K4 + 1), (0x8001, K4)] {
        assert_eq!(
            fd.ioas_map(O, ioas, va, len, None, RW),
            Err(Errno::EINVAL),
            "{va:#x}+{len:#x}"
        );
    }
    assert_eq!(
        fd.ioas_map(O, ioas, 0x8000, K4, Some(0x10_0001), RW),
        Err(Errno::EINVAL)
    );
    let mapped = fd.ioas_map(O, ioas, 0x8000, K4, None, RW).unwrap();
    assert_eq!(
        fd.units()[0].lookup(fd.units()[0].device_domain(DEV_A).unwrap(), mapped),
        Some((fd.services().phys_of(O, 0x8000), RW))
    );
    fd.ioas_unmap(O, ioas, mapped, K4).unwrap();
    fd.device_detach(O, dev).unwrap();
    assert_eq!(fd.ioas_iova_ranges(O, ioas).unwrap().alignment, 1);
    invariants(&fd);
}

// ---- attach / replace / detach ----

#[test]
fn attach_to_ioas_reuses_the_compatible_automatic_hwpt() {
    let (mut fd, ioas, _, hwpt) = attached();
    let b = fd.bind_device(O, U0, DEV_B).unwrap();
    assert_eq!(fd.device_attach(O, b, ioas), Ok(hwpt));
    assert_eq!(fd.units()[0].domain_count(), 1);
    assert_eq!(
        fd.units()[0].device_domain(DEV_A),
        fd.units()[0].device_domain(DEV_B)
    );
}

#[test]
fn attach_of_a_new_domain_fills_it_with_every_mapping() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let iova = fd.ioas_map(O, ioas, 0x3000, 2 * K4, None, RW).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    fd.device_attach(O, dev, ioas).unwrap();
    let phys = fd.unit_mut(U0).unwrap().dma(DEV_A, iova + K4, Access::Read);
    assert_eq!(phys, Some(fd.services().phys_of(O, 0x4000)));
    invariants(&fd);
}

#[test]
fn attach_when_reserved_region_conflicts_with_an_area_is_eaddrinuse() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    fd.ioas_map(O, ioas, 0, K4, Some(0xfee0_0000), RW).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let before = fd.state_digest();
    assert_eq!(fd.device_attach(O, dev, ioas), Err(Errno::EADDRINUSE));
    assert_eq!(fd.state_digest(), before);
    assert_eq!(fd.units()[0].device_domain(DEV_A), None);
    assert_eq!(fd.units()[0].domain_count(), 0);
}

#[test]
fn attach_when_aperture_conflicts_with_an_area_is_eaddrinuse() {
    let (mut fd, _) = soft_core(&[SoftConfig::smmu_like()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    fd.ioas_map(O, ioas, 0, K4, Some(1 << 45), RW).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    assert_eq!(fd.device_attach(O, dev, ioas), Err(Errno::EADDRINUSE));
    assert_eq!(fd.units()[0].domain_count(), 0);
}

#[test]
fn attach_when_reserved_region_conflicts_with_allowed_ranges_is_eaddrinuse() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    fd.ioas_allow_iovas(O, ioas, &[r(0xfe00_0000, 0xfeff_ffff)])
        .unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    assert_eq!(fd.device_attach(O, dev, ioas), Err(Errno::EADDRINUSE));
}

#[test]
fn attach_of_an_attached_device_is_ebusy_where_it_is_and_einval_elsewhere() {
    let (mut fd, ioas, dev, hwpt) = attached();
    assert_eq!(fd.device_attach(O, dev, ioas), Err(Errno::EBUSY));
    assert_eq!(fd.device_attach(O, dev, hwpt), Err(Errno::EBUSY));
    // Linux's iommufd_hw_pagetable_attach: a device in another HWPT is EINVAL.
    let other = fd.ioas_alloc(O).unwrap();
    assert_eq!(fd.device_attach(O, dev, other), Err(Errno::EINVAL));
    assert_eq!(fd.device_replace(O, dev, other).map(|_| ()), Ok(()));
}

#[test]
fn attach_to_a_hwpt_of_another_unit_is_einval() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like(), SoftConfig::smmu_like()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    let a = fd.bind_device(O, U0, DEV_A).unwrap();
    let b = fd.bind_device(O, U1, DEV_B).unwrap();
    let hwpt = fd.device_attach(O, a, ioas).unwrap();
    assert_eq!(fd.device_attach(O, b, hwpt), Err(Errno::EINVAL));
    assert_eq!(fd.device_attach(O, b, a), Err(Errno::EINVAL));
    assert_eq!(fd.device_attach(O, b, 99), Err(Errno::ENOENT));
}

#[test]
fn attach_failure_in_hardware_moves_nothing() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    fd.ioas_map(O, ioas, 0, 4 * K4, None, RW).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let before = fd.state_digest();
    fd.unit_mut(U0).unwrap().fail_next_attach = true;
    assert_eq!(fd.device_attach(O, dev, ioas), Err(Errno::EINVAL));
    assert_eq!(fd.state_digest(), before);
    assert_eq!(fd.units()[0].domain_count(), 0);
    assert_eq!(fd.units()[0].table_pages(), 0);
    invariants(&fd);
}

#[test]
fn replace_switches_the_device_atomically() {
    let (mut fd, ioas, dev, old) = attached();
    let iova = fd.ioas_map(O, ioas, 0, K4, None, RW).unwrap();
    let ioas2 = fd.ioas_alloc(O).unwrap();
    let iova2 = fd.ioas_map(O, ioas2, 0x7000, K4, None, RW).unwrap();
    let new = fd.device_replace(O, dev, ioas2).unwrap();
    assert_ne!(new, old);
    assert_eq!(fd.device_hwpt(O, dev), Ok(Some(new)));
    // The old automatic HWPT went away with its last device; the old IOAS lost
    // the device's reserved regions.
    assert_eq!(fd.destroy(O, old), Err(Errno::ENOENT));
    assert_eq!(
        fd.ioas_iova_ranges(O, ioas).unwrap().ranges,
        [IovaRange::FULL]
    );
    // No bypass window: the log shows a direct attach, no detach in between.
    let log = &fd.units()[0].log;
    assert!(
        !log.iter()
            .rev()
            .take(6)
            .any(|e| matches!(e, Event::Detach { .. }))
    );
    let phys = fd.unit_mut(U0).unwrap().dma(DEV_A, iova2, Access::Read);
    assert_eq!(phys, Some(fd.services().phys_of(O, 0x7000)));
    if iova != iova2 {
        assert_eq!(
            fd.unit_mut(U0).unwrap().dma(DEV_A, iova, Access::Read),
            None
        );
    }
    invariants(&fd);
}

#[test]
fn replace_failure_changes_nothing() {
    let (mut fd, _ioas, dev, old) = attached();
    let ioas2 = fd.ioas_alloc(O).unwrap();
    fd.ioas_map(O, ioas2, 0, K4, Some(0xfee0_0000), RW).unwrap();
    let before = fd.state_digest();
    let domain = fd.units()[0].device_domain(DEV_A);
    assert_eq!(fd.device_replace(O, dev, ioas2), Err(Errno::EADDRINUSE));
    let ioas3 = fd.ioas_alloc(O).unwrap();
    let before3 = fd.state_digest();
    fd.unit_mut(U0).unwrap().fail_next_attach = true;
    assert_eq!(fd.device_replace(O, dev, ioas3), Err(Errno::EINVAL));
    assert_eq!(fd.state_digest(), before3);
    fd.destroy(O, ioas3).unwrap();
    assert_eq!(fd.state_digest(), before);
    assert_eq!(fd.device_hwpt(O, dev), Ok(Some(old)));
    assert_eq!(fd.units()[0].device_domain(DEV_A), domain);
    assert_eq!(fd.units()[0].domain_count(), 1);
}

#[test]
fn replace_of_a_detached_device_is_einval() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    assert_eq!(fd.device_replace(O, dev, ioas), Err(Errno::EINVAL));
}

#[test]
fn detach_leaves_the_device_blocked_never_bypassing() {
    let (mut fd, ioas, dev, _) = attached();
    let iova = fd.ioas_map(O, ioas, 0, K4, None, RW).unwrap();
    fd.device_detach(O, dev).unwrap();
    assert_eq!(fd.units()[0].device_domain(DEV_A), None);
    assert_eq!(
        fd.unit_mut(U0).unwrap().dma(DEV_A, iova, Access::Read),
        None
    );
    assert_eq!(fd.device_detach(O, dev), Err(Errno::EINVAL));
    // Freshly bound devices start blocked too.
    fd.bind_device(O, U0, DEV_B).unwrap();
    assert_eq!(fd.units()[0].device_domain(DEV_B), None);
    assert!(fd.units()[0].log.contains(&Event::Detach { device: DEV_B }));
    invariants(&fd);
}

// ---- HWPT ----

fn vtd_s1() -> NestedData {
    NestedData::VtdS1 {
        flags: 0,
        pgtbl_addr: 0x1234_5000,
        addr_width: 48,
    }
}

#[test]
fn hwpt_paging_from_ioas_is_filled_and_mirrors_later_maps() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    fd.ioas_map(O, ioas, 0, K4, Some(0x1000), RW).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let hwpt = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::empty(), None)
        .unwrap();
    fd.ioas_map(O, ioas, 0, K4, Some(0x2000), RW).unwrap();
    assert_eq!(fd.units()[0].leaf_count(), 2);
    fd.device_attach(O, dev, hwpt).unwrap();
    assert!(
        fd.unit_mut(U0)
            .unwrap()
            .dma(DEV_A, 0x2000, Access::Read)
            .is_some()
    );
    // The explicit HWPT survives detach.
    fd.device_detach(O, dev).unwrap();
    fd.destroy(O, hwpt).unwrap();
    invariants(&fd);
}

#[test]
fn hwpt_alloc_on_wrong_object_is_einval_or_enoent() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    assert_eq!(
        fd.hwpt_alloc(O, dev, dev, HwptAllocFlags::empty(), None),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fd.hwpt_alloc(O, dev, 77, HwptAllocFlags::empty(), None),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fd.hwpt_alloc(O, ioas, ioas, HwptAllocFlags::empty(), None),
        Err(Errno::ENOENT)
    );
}

#[test]
fn hwpt_nest_parent_on_a_unit_without_nesting_is_eopnotsupp() {
    let (mut fd, _) = soft_core(&[SoftConfig::small_64k()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    assert_eq!(
        fd.hwpt_alloc(O, dev, ioas, HwptAllocFlags::NEST_PARENT, None),
        Err(Errno::EOPNOTSUPP)
    );
}

#[test]
fn hwpt_nested_over_nest_parent_with_vendor_data() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let plain = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::empty(), None)
        .unwrap();
    let parent = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::NEST_PARENT, None)
        .unwrap();
    assert_eq!(
        fd.hwpt_alloc(O, dev, plain, HwptAllocFlags::empty(), Some(vtd_s1())),
        Err(Errno::EINVAL),
        "parent without NEST_PARENT"
    );
    assert_eq!(
        fd.hwpt_alloc(O, dev, parent, HwptAllocFlags::NEST_PARENT, Some(vtd_s1())),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        fd.hwpt_alloc(
            O,
            dev,
            parent,
            HwptAllocFlags::empty(),
            Some(NestedData::ArmSmmuV3 { ste: [1, 0] })
        ),
        Err(Errno::EOPNOTSUPP),
        "format the unit does not nest"
    );
    assert_eq!(
        fd.hwpt_alloc(
            O,
            dev,
            parent,
            HwptAllocFlags::empty(),
            Some(NestedData::VtdS1 {
                flags: 0,
                pgtbl_addr: 0x1000,
                addr_width: 39
            })
        ),
        Err(Errno::EINVAL),
        "vendor data the driver rejects"
    );
    let nested = fd
        .hwpt_alloc(O, dev, parent, HwptAllocFlags::empty(), Some(vtd_s1()))
        .unwrap();
    fd.device_attach(O, dev, nested).unwrap();
    assert_eq!(fd.device_hwpt(O, dev), Ok(Some(nested)));
}

#[test]
fn hwpt_vendor_data_unknown_type_is_eopnotsupp_and_short_data_einval() {
    let data = abi::HwptVtdS1 {
        flags: 0,
        pgtbl_addr: 0x5000,
        addr_width: 48,
        reserved: 0,
    };
    let bytes = abi::as_bytes(&data);
    assert_eq!(decode_hwpt_data(42, bytes), Err(Errno::EOPNOTSUPP));
    assert_eq!(decode_hwpt_data(1, &bytes[..16]), Err(Errno::EINVAL));
    assert_eq!(decode_hwpt_data(0, bytes), Err(Errno::EINVAL));
    assert_eq!(decode_hwpt_data(0, &[]), Ok(None));
    assert_eq!(
        decode_hwpt_data(1, bytes),
        Ok(Some(NestedData::VtdS1 {
            flags: 0,
            pgtbl_addr: 0x5000,
            addr_width: 48
        }))
    );
    let mut long = bytes.to_vec();
    long.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(decode_hwpt_data(1, &long), Err(Errno::E2BIG));
}

#[test]
fn hwpt_invalidate_reports_how_many_entries_were_processed() {
    let mut fd = vtd();
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let parent = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::NEST_PARENT, None)
        .unwrap();
    let nested = fd
        .hwpt_alloc(O, dev, parent, HwptAllocFlags::empty(), Some(vtd_s1()))
        .unwrap();
    let entry = |npages| abi::InvalidateVtdS1 {
        addr: 0x1000,
        npages,
        flags: 0,
        reserved: 0,
    };
    let mut raw = Vec::new();
    for n in [1, 2, 0, 4] {
        raw.extend_from_slice(abi::as_bytes(&entry(n)));
    }
    let (reqs, decoded) = decode_invalidations(0, 24, 4, &raw);
    assert_eq!(decoded, Ok(()));
    assert_eq!(
        fd.hwpt_invalidate(O, nested, &reqs),
        (2, Err(Errno::EINVAL))
    );
    assert_eq!(fd.hwpt_invalidate(O, nested, &reqs[..2]), (2, Ok(())));
    assert_eq!(
        fd.hwpt_invalidate(O, parent, &reqs[..1]),
        (0, Err(Errno::EINVAL)),
        "only nested HWPTs have task-owned tables"
    );
    // Decode stops at a bad entry and reports the prefix.
    let mut bad = raw.clone();
    bad[24 + 20] = 1; // reserved field of the second entry
    let (reqs, decoded) = decode_invalidations(0, 24, 4, &bad);
    assert_eq!((reqs.len(), decoded), (1, Err(Errno::EOPNOTSUPP)));
    assert_eq!(
        decode_invalidations(7, 24, 4, &raw).1,
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(decode_invalidations(0, 16, 1, &raw).1, Err(Errno::EINVAL));
    assert_eq!(decode_invalidations(0, 24, 5, &raw).1, Err(Errno::EINVAL));
    assert_eq!(
        decode_invalidations(0, 24, 1, &raw).0,
        [NestedInvalidation::VtdS1 {
            addr: 0x1000,
            npages: 1,
            flags: 0
        }]
    );
}

// ---- hardware info ----

#[test]
fn get_hw_info_copies_out_a_prefix_or_zeroes_the_tail() {
    let mut fd = vtd();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let mut full = [0xAAu8; 32];
    let reply = fd.get_hw_info(O, dev, &mut full).unwrap();
    assert_eq!(reply.data_type, abi::HwInfoType::IntelVtd);
    assert_eq!(reply.data_len, 24);
    assert!(reply.capabilities.contains(abi::HwCapabilities::NESTING));
    let iommu::HwInfo::IntelVtd { cap, ecap } = SoftConfig::vtd_like().hw_info else {
        unreachable!()
    };
    assert_eq!(full[8..16], cap.to_ne_bytes());
    assert_eq!(full[16..24], ecap.to_ne_bytes());
    assert_eq!(full[24..], [0; 8]);
    let mut short = [0xAAu8; 12];
    fd.get_hw_info(O, dev, &mut short).unwrap();
    assert_eq!(short, full[..12]);
    assert_eq!(fd.get_hw_info(O, 99, &mut short), Err(Errno::ENOENT));

    let (mut fd, _) = soft_core(&[SoftConfig::smmu_like()]);
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let mut buf = [0u8; 40];
    let reply = fd.get_hw_info(O, dev, &mut buf).unwrap();
    assert_eq!(reply.data_type, abi::HwInfoType::ArmSmmuV3);
    assert_eq!(reply.data_len, 40);
    assert_eq!(buf[8..12], 0x0f0c_f0afu32.to_ne_bytes());

    let mut amd = SoftConfig::small_64k();
    amd.hw_info = iommu::HwInfo::AmdVi {
        efr: 0x1122_3344_5566_7788,
        efr2: 0x99,
    };
    let (mut fd, _) = soft_core(&[amd]);
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let mut buf = [0xAAu8; 20];
    let reply = fd.get_hw_info(O, dev, &mut buf).unwrap();
    assert_eq!(reply.data_type, abi::HwInfoType::AmdVi);
    assert_eq!(reply.data_len, 16);
    assert!(reply.capabilities.is_empty());
    assert_eq!(buf[..8], 0x1122_3344_5566_7788u64.to_ne_bytes());
    assert_eq!(buf[8..16], 0x99u64.to_ne_bytes());
    assert_eq!(buf[16..], [0; 4]);
}

// ---- faults ----

#[test]
fn faults_land_in_the_queue_of_the_attached_hwpt() {
    let (mut fd, _ioas, dev, hwpt) = attached();
    assert_eq!(
        fd.unit_mut(U0)
            .unwrap()
            .dma(DEV_A, 0xdead_0000, Access::Write),
        None
    );
    // A fault from a device nobody holds is not routed to anyone.
    fd.unit_mut(U0)
        .unwrap()
        .inject_fault(DeviceId(0x99), 0x1000, Access::Read);
    assert_eq!(fd.dispatch_faults(), 1);
    assert_eq!(fd.unrouted_faults(), 1);
    let mut out = [abi::FaultRecord::default(); 4];
    let reply = fd.fault_read(O, hwpt, &mut out).unwrap();
    assert_eq!((reply.num, reply.dropped), (1, 0));
    assert_eq!(out[0].iova, 0xdead_0000);
    assert_eq!(out[0].requester, DEV_A.0);
    assert_eq!(out[0].unit, 0);
    assert_eq!(out[0].dev_id, dev);
    assert_eq!(out[0].access, abi::FaultAccess::WRITE.bits());
    assert_eq!(out[0].reason, abi::FaultReasonCode::NotPresent as u32);
    assert_eq!(fd.fault_read(O, hwpt, &mut out).unwrap().num, 0);
}

#[test]
fn fault_queue_full_counts_drops_and_says_so_in_the_next_record() {
    let (mut fd, _ioas, _dev, hwpt) = attached();
    let extra = 5;
    for i in 0..(FAULT_QUEUE_DEPTH as u64 + extra) {
        fd.unit_mut(U0)
            .unwrap()
            .inject_fault(DEV_A, i * K4, Access::Read);
    }
    fd.dispatch_faults();
    let mut out = vec![abi::FaultRecord::default(); FAULT_QUEUE_DEPTH + 8];
    let reply = fd.fault_read(O, hwpt, &mut out).unwrap();
    assert_eq!(reply.num as usize, FAULT_QUEUE_DEPTH);
    assert_eq!(reply.dropped, extra as u32);
    assert!(
        out[..FAULT_QUEUE_DEPTH]
            .iter()
            .all(|r| r.dropped_before == 0)
    );
    fd.unit_mut(U0)
        .unwrap()
        .inject_fault(DEV_A, 0x77_7000, Access::Read);
    fd.dispatch_faults();
    let reply = fd.fault_read(O, hwpt, &mut out).unwrap();
    assert_eq!((reply.num, reply.dropped), (1, 0));
    assert_eq!(out[0].iova, 0x77_7000);
    assert_eq!(out[0].dropped_before, extra as u32);
}

// ---- scattered pages ----

#[test]
fn map_of_scattered_pages_maps_each_run() {
    let (mut fd, ioas, _, _) = attached();
    fd.services_mut().scattered = true;
    let iova = fd.ioas_map(O, ioas, 0x10_0000, 4 * K4, None, RW).unwrap();
    for i in 0..4 {
        let pa = fd
            .unit_mut(U0)
            .unwrap()
            .dma(DEV_A, iova + i * K4, Access::Read);
        assert_eq!(pa, Some(fd.services().phys_of(O, 0x10_0000 + i * K4)));
    }
    fd.ioas_unmap(O, ioas, 0, u64::MAX).unwrap();
    invariants(&fd);
}

// ---- the test double itself ----

#[test]
fn shadow_iotlb_flags_a_translation_used_or_released_without_flush() {
    use iommu::{DomainKind, IommuUnit};
    use iommufd::Services;
    use iommufd::testing::{FailGate, FakeMemory, SoftUnit};
    let gate = FailGate::new();
    let mut unit = SoftUnit::new(U0, SoftConfig::vtd_like(), gate.clone());
    let mut mem = FakeMemory::new(gate);
    mem.watch(unit.shadow());
    let mut runs = Vec::new();
    mem.pin(O, 0x1000, K4, true, &mut runs).unwrap();
    let d = unit.alloc_domain(DomainKind::Paging).unwrap();
    unit.attach(DEV_A, d).unwrap();
    unit.map(d, 0x5000, runs[0].phys, K4, RW).unwrap();
    let g = unit.unmap(d, 0x5000, K4).unwrap();
    assert_eq!(unit.stale_entries(), 1);
    assert!(unit.dma(DEV_A, 0x5000, Access::Read).is_some());
    assert_eq!(unit.stale_uses(), 1);
    mem.unpin(O, 0x1000, K4, &runs);
    assert_eq!(mem.violations, 1);
    unit.flush(d, &g).unwrap();
    assert_eq!(unit.stale_entries(), 0);
    assert_eq!(unit.dma(DEV_A, 0x5000, Access::Read), None);
}

#[test]
fn abi_map_flags_give_permission_and_fixed_iova() {
    use abi::MapFlags;
    let (prot, fixed) = iommufd::map_flags(MapFlags::READABLE | MapFlags::FIXED_IOVA);
    assert_eq!(
        prot,
        Prot {
            read: true,
            write: false
        }
    );
    assert!(fixed);
    let (prot, fixed) = iommufd::map_flags(MapFlags::WRITEABLE);
    assert!(prot.write && !prot.read && !fixed);
}

#[test]
fn boxed_units_of_different_drivers_share_one_core() {
    use iommu::IommuUnit;
    use iommufd::testing::{FailGate, FakeMemory, SoftUnit};
    let gate = FailGate::new();
    let units: Vec<Box<dyn IommuUnit>> = vec![
        Box::new(SoftUnit::new(U0, SoftConfig::vtd_like(), gate.clone())),
        Box::new(SoftUnit::new(U1, SoftConfig::smmu_like(), gate.clone())),
    ];
    let mut fd = iommufd::Iommufd::new(units, FakeMemory::new(gate));
    let ioas = fd.ioas_alloc(O).unwrap();
    let a = fd.bind_device(O, U0, DEV_A).unwrap();
    let b = fd.bind_device(O, U1, DEV_B).unwrap();
    let ha = fd.device_attach(O, a, ioas).unwrap();
    let hb = fd.device_attach(O, b, ioas).unwrap();
    assert_ne!(ha, hb, "one automatic HWPT per unit");
    assert!(fd.ioas_map(O, ioas, 0, K4, None, RW).is_ok());
    fd.teardown(O);
    assert_eq!(fd.pinned_ranges(), 0);
}
