//! Dirty tracking through the core (issue 17, Linux
//! `IOMMU_HWPT_SET_DIRTY_TRACKING`, `IOMMU_HWPT_GET_DIRTY_BITMAP` and their
//! selftest `iommufd_dirty_tracking`): against the soft unit, which sets a
//! leaf's D bit when a device writes through it, but not while its IOTLB
//! entry remembers the leaf dirty, so that a clear not followed by a flush
//! loses writes.

use abi::{Errno, HwCapabilities, HwptAllocFlags};
use iommu::{Access, DeviceId, Prot, UnitId};
use iommufd::testing::{SoftConfig, SoftCore, soft_core};
use iommufd::{DirtyRange, OwnerId};

const O: OwnerId = OwnerId(1);
const DEV: DeviceId = DeviceId(0x10);
const U0: UnitId = UnitId(0);
const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const RW: Prot = Prot {
    read: true,
    write: true,
};
/// A 2 MiB-aligned IOVA (and user address): a 2 MiB leaf, then 4 KiB pages.
const BASE: u64 = 0x4000_0000;

fn tracking_unit() -> SoftConfig {
    SoftConfig {
        dirty_tracking: true,
        ..SoftConfig::vtd_like()
    }
}

/// A core over a tracking unit, device bound, an IOAS with 2 MiB + 16 KiB
/// mapped at BASE, and a dirty-tracking HWPT the device is attached to.
fn setup() -> (SoftCore, u32) {
    let (mut fd, _) = soft_core(&[tracking_unit()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV).unwrap();
    fd.ioas_map(O, ioas, BASE, M2 + 4 * K4, Some(BASE), RW)
        .unwrap();
    let hwpt = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::DIRTY_TRACKING, None)
        .unwrap();
    fd.device_attach(O, dev, hwpt).unwrap();
    (fd, hwpt)
}

fn write(fd: &mut SoftCore, iova: u64) {
    assert!(
        fd.unit_mut(U0)
            .unwrap()
            .dma(DEV, iova, Access::Write)
            .is_some()
    );
}

/// The set bits of the bitmap of `[BASE, BASE + 2 MiB + 16 KiB)` in 4 KiB pages.
fn dirty_pages(fd: &mut SoftCore, hwpt: u32, keep: bool) -> Vec<u64> {
    let bitmap = fd
        .hwpt_get_dirty_bitmap(
            O,
            hwpt,
            DirtyRange {
                iova: BASE,
                length: M2 + 4 * K4,
                page_size: K4,
                keep,
            },
        )
        .unwrap();
    (0..(M2 + 4 * K4) / K4)
        .filter(|&page| bitmap[(page / 64) as usize] & (1 << (page % 64)) != 0)
        .collect()
}

#[test]
fn the_capability_and_the_flag_exist_only_where_the_unit_tracks() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like(), tracking_unit()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    let plain = fd.bind_device(O, U0, DEV).unwrap();
    let tracking = fd.bind_device(O, UnitId(1), DeviceId(0x18)).unwrap();
    let mut raw = [0u8; 32];
    let caps = |fd: &mut SoftCore, dev, raw: &mut [u8; 32]| {
        HwCapabilities::from_bits_retain(fd.get_hw_info(O, dev, raw).unwrap().capabilities.bits())
    };
    assert!(!caps(&mut fd, plain, &mut raw).contains(HwCapabilities::DIRTY_TRACKING));
    assert!(caps(&mut fd, tracking, &mut raw).contains(HwCapabilities::DIRTY_TRACKING));
    assert_eq!(
        fd.hwpt_alloc(O, plain, ioas, HwptAllocFlags::DIRTY_TRACKING, None),
        Err(Errno::EOPNOTSUPP)
    );
    let without_flag = fd
        .hwpt_alloc(O, tracking, ioas, HwptAllocFlags::empty(), None)
        .unwrap();
    assert_eq!(
        fd.hwpt_set_dirty_tracking(O, without_flag, true),
        Err(Errno::EINVAL),
        "a HWPT allocated without DIRTY_TRACKING has no dirty state"
    );
    let with_flag = fd
        .hwpt_alloc(O, tracking, ioas, HwptAllocFlags::DIRTY_TRACKING, None)
        .unwrap();
    fd.hwpt_set_dirty_tracking(O, with_flag, true).unwrap();
    for (page_size, length) in [(K4 + 1, K4), (0x800, K4), (K4, 0), (K4, K4 + 0x800)] {
        let range = DirtyRange {
            iova: BASE,
            length,
            page_size,
            keep: false,
        };
        assert_eq!(
            fd.hwpt_get_dirty_bitmap(O, with_flag, range),
            Err(Errno::EINVAL),
            "page size {page_size:#x}, length {length:#x}"
        );
    }
}

#[test]
fn written_pages_are_reported_huge_leaves_whole_and_cleared_unless_kept() {
    let (mut fd, hwpt) = setup();
    // Not tracking yet: writes leave no trace.
    write(&mut fd, BASE + M2);
    fd.hwpt_set_dirty_tracking(O, hwpt, true).unwrap();
    assert_eq!(dirty_pages(&mut fd, hwpt, false), Vec::<u64>::new());
    // One write inside the 2 MiB leaf marks all of it; two 4 KiB pages.
    write(&mut fd, BASE + 0x12_3456);
    write(&mut fd, BASE + M2 + K4);
    write(&mut fd, BASE + M2 + 3 * K4 + 8);
    let mut expected: Vec<u64> = (0..M2 / K4).collect();
    expected.extend([M2 / K4 + 1, M2 / K4 + 3]);
    assert_eq!(dirty_pages(&mut fd, hwpt, true), expected, "NO_CLEAR");
    assert_eq!(dirty_pages(&mut fd, hwpt, true), expected, "still there");
    assert_eq!(
        dirty_pages(&mut fd, hwpt, false),
        expected,
        "read and cleared"
    );
    assert_eq!(dirty_pages(&mut fd, hwpt, false), Vec::<u64>::new());
    // A write after the clear is recorded: the clear flushed the IOTLB
    // entries that remembered the leaves dirty.
    write(&mut fd, BASE + M2 + K4);
    assert_eq!(dirty_pages(&mut fd, hwpt, false), vec![M2 / K4 + 1]);
    // Off again: writes leave no trace.
    fd.hwpt_set_dirty_tracking(O, hwpt, false).unwrap();
    write(&mut fd, BASE);
    assert_eq!(dirty_pages(&mut fd, hwpt, false), Vec::<u64>::new());
}

#[test]
fn a_bitmap_of_larger_pages_sets_a_bit_per_page_touched() {
    let (mut fd, hwpt) = setup();
    fd.hwpt_set_dirty_tracking(O, hwpt, true).unwrap();
    write(&mut fd, BASE + M2 + 2 * K4);
    // 64 KiB pages: the write falls in page 32 of the range.
    let bitmap = fd
        .hwpt_get_dirty_bitmap(
            O,
            hwpt,
            DirtyRange {
                iova: BASE,
                length: 4 * M2,
                page_size: 0x1_0000,
                keep: false,
            },
        )
        .unwrap();
    assert_eq!(bitmap, vec![1 << 32, 0]);
}
