//! vIOMMU and vDEVICE objects (issue 17, Linux `iommufd/viommu.c` and its
//! selftest `iommufd_viommu`): allocation rules, the references they hold,
//! nested HWPTs over a vIOMMU, and invalidations that name virtual ids.

use abi::{Errno, HwptAllocFlags, ViommuType};
use iommu::{DeviceId, NestedData, NestedInvalidation, UnitId};
use iommufd::OwnerId;
use iommufd::testing::{Event, SoftConfig, SoftCore, soft_core};

const O: OwnerId = OwnerId(1);
const OTHER: OwnerId = OwnerId(2);
const DEV_A: DeviceId = DeviceId(0x10);
const DEV_B: DeviceId = DeviceId(0x18);
const U0: UnitId = UnitId(0);
const U1: UnitId = UnitId(1);
const SMMUV3: u32 = ViommuType::ArmSmmuV3 as u32;
const GUEST_STE: NestedData = NestedData::ArmSmmuV3 {
    ste: [0x4123_4000 | (0b101 << 1) | 1, 0],
};

/// A core over an SMMUv3-like unit and a VT-d-like one, an IOAS, device A on
/// the first and its NEST_PARENT HWPT.
fn setup() -> (SoftCore, u32, u32, u32) {
    let (mut fd, _) = soft_core(&[SoftConfig::smmu_like(), SoftConfig::vtd_like()]);
    let ioas = fd.ioas_alloc(O).unwrap();
    let dev = fd.bind_device(O, U0, DEV_A).unwrap();
    let parent = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::NEST_PARENT, None)
        .unwrap();
    (fd, ioas, dev, parent)
}

/// A command naming virtual id `virt` (0: none) in the soft unit's format.
fn command(virt: u64) -> NestedInvalidation {
    NestedInvalidation::ArmSmmuV3 {
        cmd: [0x05 | virt << 32, 0],
    }
}

#[test]
fn a_viommu_needs_a_nest_parent_of_the_devices_unit_that_nests_in_its_format() {
    let (mut fd, ioas, dev, parent) = setup();
    let plain = fd
        .hwpt_alloc(O, dev, ioas, HwptAllocFlags::empty(), None)
        .unwrap();
    assert_eq!(fd.viommu_alloc(O, dev, plain, SMMUV3), Err(Errno::EINVAL));
    assert_eq!(fd.viommu_alloc(O, dev, ioas, SMMUV3), Err(Errno::ENOENT));
    assert_eq!(fd.viommu_alloc(O, dev, parent, 0), Err(Errno::EOPNOTSUPP));
    assert_eq!(fd.viommu_alloc(O, dev, parent, 77), Err(Errno::EOPNOTSUPP));
    assert_eq!(
        fd.viommu_alloc(OTHER, dev, parent, SMMUV3),
        Err(Errno::ENOENT)
    );
    // A device of another unit cannot name this unit's parent.
    let on_vtd = fd.bind_device(O, U1, DEV_B).unwrap();
    assert_eq!(
        fd.viommu_alloc(O, on_vtd, parent, SMMUV3),
        Err(Errno::EINVAL)
    );
    let viommu = fd.viommu_alloc(O, dev, parent, SMMUV3).unwrap();
    // It holds its parent.
    assert_eq!(fd.destroy(O, parent), Err(Errno::EBUSY));
    fd.destroy(O, viommu).unwrap();
    fd.destroy(O, parent).unwrap();
}

#[test]
fn a_vdevice_binds_one_device_to_one_virtual_id_and_holds_both() {
    let (mut fd, _, dev, parent) = setup();
    let viommu = fd.viommu_alloc(O, dev, parent, SMMUV3).unwrap();
    let dev_b = fd.bind_device(O, U0, DEV_B).unwrap();
    let vdev = fd.vdevice_alloc(O, viommu, dev, 0x100).unwrap();
    assert_eq!(
        fd.vdevice_alloc(O, viommu, dev_b, 0x100),
        Err(Errno::EEXIST)
    );
    assert_eq!(fd.vdevice_alloc(O, viommu, dev, 0x200), Err(Errno::EEXIST));
    assert_eq!(
        fd.vdevice_alloc(O, viommu, dev_b, 1 << 32),
        Err(Errno::EINVAL),
        "a StreamID is 32 bits"
    );
    let vdev_b = fd.vdevice_alloc(O, viommu, dev_b, 0x200).unwrap();
    // The vDEVICE keeps its device and its vIOMMU.
    assert_eq!(fd.destroy(O, dev), Err(Errno::EBUSY));
    assert_eq!(fd.destroy(O, viommu), Err(Errno::EBUSY));
    fd.destroy(O, vdev).unwrap();
    fd.destroy(O, dev).unwrap();
    // The freed virtual id can be bound again, once the device is free too.
    assert_eq!(
        fd.vdevice_alloc(O, viommu, dev_b, 0x100),
        Err(Errno::EEXIST)
    );
    fd.destroy(O, vdev_b).unwrap();
    fd.vdevice_alloc(O, viommu, dev_b, 0x100).unwrap();
}

#[test]
fn nested_hwpts_over_a_viommu_run_over_its_parent_and_hold_the_viommu() {
    let (mut fd, _, dev, parent) = setup();
    let viommu = fd.viommu_alloc(O, dev, parent, SMMUV3).unwrap();
    assert_eq!(
        fd.hwpt_alloc(O, dev, viommu, HwptAllocFlags::empty(), None),
        Err(Errno::EINVAL),
        "a vIOMMU takes nested HWPTs only"
    );
    let nested = fd
        .hwpt_alloc(O, dev, viommu, HwptAllocFlags::empty(), Some(GUEST_STE))
        .unwrap();
    fd.device_attach(O, dev, nested).unwrap();
    assert_eq!(fd.destroy(O, viommu), Err(Errno::EBUSY));
    fd.device_detach(O, dev).unwrap();
    fd.destroy(O, nested).unwrap();
    fd.destroy(O, viommu).unwrap();
    fd.destroy(O, parent).unwrap();
}

#[test]
fn viommu_invalidations_name_virtual_ids_the_task_bound_and_no_other() {
    let (mut fd, _, dev, parent) = setup();
    let viommu = fd.viommu_alloc(O, dev, parent, SMMUV3).unwrap();
    let dev_b = fd.bind_device(O, U0, DEV_B).unwrap();
    fd.vdevice_alloc(O, viommu, dev, 0x100).unwrap();
    fd.vdevice_alloc(O, viommu, dev_b, 0x200).unwrap();
    fd.unit_mut(U0).unwrap().log.clear();
    assert_eq!(
        fd.hwpt_invalidate(
            O,
            viommu,
            &[command(0x200), command(0), command(0x300), command(0x100)]
        ),
        (2, Err(Errno::EIO)),
        "a virtual id nobody bound stops the batch (Linux: EIO)"
    );
    let translated: Vec<Option<DeviceId>> = fd.units()[0]
        .log
        .iter()
        .filter_map(|event| match event {
            Event::InvalidateViommu { device, .. } => Some(*device),
            _ => None,
        })
        .collect();
    assert_eq!(translated, [Some(DEV_B), None]);
    // Another owner's vIOMMU id names nothing.
    assert_eq!(
        fd.hwpt_invalidate(OTHER, viommu, &[command(0x100)]),
        (0, Err(Errno::ENOENT))
    );
}

#[test]
fn teardown_takes_viommus_and_vdevices_down_leaf_first() {
    let (mut fd, _, dev, parent) = setup();
    let viommu = fd.viommu_alloc(O, dev, parent, SMMUV3).unwrap();
    fd.vdevice_alloc(O, viommu, dev, 0x100).unwrap();
    let nested = fd
        .hwpt_alloc(O, dev, viommu, HwptAllocFlags::empty(), Some(GUEST_STE))
        .unwrap();
    fd.device_attach(O, dev, nested).unwrap();
    fd.teardown(O);
    assert_eq!(fd.object_count(O), 0);
    assert_eq!(fd.domain_count(O), 0);
}

/// A guest-format fault of `device` at `iova`, as the soft unit reports one.
fn guest_fault(fd: &mut SoftCore, device: DeviceId, iova: u64) {
    fd.unit_mut(U0).unwrap().inject_guest_fault(device, iova);
    fd.dispatch_faults();
}

/// The events a read of `capacity` bytes returns: (flags, sequence, record).
fn read_events(
    fd: &mut SoftCore,
    queue: u32,
    capacity: usize,
) -> Vec<(u32, u32, Option<[u64; 4]>)> {
    let (bytes, count) = fd.veventq_read(O, queue, capacity).unwrap();
    let mut events = Vec::new();
    let mut at = 0;
    for _ in 0..count {
        let flags = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let sequence = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        at += 8;
        let record = (flags & 1 == 0).then(|| {
            let word = |i: usize| {
                u64::from_le_bytes(bytes[at + 8 * i..at + 8 * i + 8].try_into().unwrap())
            };
            let evt = [word(0), word(1), word(2), word(3)];
            at += 32;
            evt
        });
        events.push((flags, sequence, record));
    }
    events
}

#[test]
fn a_veventq_delivers_stage1_faults_with_the_virtual_id_in_order_and_marks_losses() {
    let (mut fd, _, dev, parent) = setup();
    let viommu = fd.viommu_alloc(O, dev, parent, SMMUV3).unwrap();
    fd.vdevice_alloc(O, viommu, dev, 0x100).unwrap();
    let nested = fd
        .hwpt_alloc(O, dev, viommu, HwptAllocFlags::empty(), Some(GUEST_STE))
        .unwrap();
    fd.device_attach(O, dev, nested).unwrap();
    let smmuv3 = abi::VeventqType::ArmSmmuV3 as u32;
    assert_eq!(fd.veventq_alloc(O, viommu, smmuv3, 0), Err(Errno::EINVAL));
    assert_eq!(fd.veventq_alloc(O, viommu, 9, 2), Err(Errno::EOPNOTSUPP));
    let queue = fd.veventq_alloc(O, viommu, smmuv3, 2).unwrap();
    assert_eq!(fd.veventq_alloc(O, viommu, smmuv3, 2), Err(Errno::EEXIST));
    assert_eq!(fd.destroy(O, viommu), Err(Errno::EBUSY));
    // Three faults into a queue of two: two records and a LOST_EVENTS mark.
    for iova in [0x1000, 0x2000, 0x3000] {
        guest_fault(&mut fd, DEV_A, iova);
    }
    // A buffer too small for the first event takes nothing.
    assert_eq!(fd.veventq_read(O, queue, 8), Err(Errno::EMSGSIZE));
    let events = read_events(&mut fd, queue, 4096);
    assert_eq!(events.len(), 3);
    for (index, iova) in [0x1000u64, 0x2000].into_iter().enumerate() {
        let (flags, sequence, record) = events[index];
        assert_eq!((flags, sequence), (0, index as u32));
        let evt = record.unwrap();
        assert_eq!(evt[0] >> 32, 0x100, "the virtual StreamID, not {DEV_A:?}");
        assert_eq!(evt[2], iova);
    }
    assert_eq!(
        events[2],
        (1, 2, None),
        "LOST_EVENTS with the first lost sequence"
    );
    // The next event's sequence shows the loss; the queue has room again.
    guest_fault(&mut fd, DEV_A, 0x4000);
    let events = read_events(&mut fd, queue, 4096);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].0, events[0].1), (0, 3));
    assert!(read_events(&mut fd, queue, 4096).is_empty());
    // Faults of the kernel's own tables (no guest record) stay in the HWPT's queue.
    fd.unit_mut(U0)
        .unwrap()
        .inject_fault(DEV_A, 0x5000, iommu::Access::Read);
    fd.dispatch_faults();
    assert!(read_events(&mut fd, queue, 4096).is_empty());
    fd.teardown(O);
    assert_eq!(fd.object_count(O), 0);
}
