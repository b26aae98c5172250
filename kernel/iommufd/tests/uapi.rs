//! The syscall half end to end: argument structs in task memory, copied in with
//! the size rule, results copied back.

use abi::{Command, Errno, Pod, as_bytes};
use iommu::{Access, DeviceId, UnitId};
use iommufd::testing::{SoftConfig, SoftCore, soft_core};
use iommufd::{OwnerId, UserMemory};

const O: OwnerId = OwnerId(1);
const BASE: u64 = 0x7000_0000;
const ARG: u64 = BASE;
const BUF: u64 = BASE + 0x1000;

/// One flat region of task memory; everything else faults.
struct Task {
    bytes: Vec<u8>,
}

impl Task {
    fn new() -> Self {
        Self {
            bytes: vec![0; 0x4000],
        }
    }

    fn range(&self, va: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
        let start = va.checked_sub(BASE).ok_or(Errno::EFAULT)? as usize;
        let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > self.bytes.len() {
            return Err(Errno::EFAULT);
        }
        Ok(start..end)
    }

    fn put<T: Pod>(&mut self, va: u64, value: &T) {
        let r = self.range(va, size_of::<T>()).unwrap();
        self.bytes[r].copy_from_slice(as_bytes(value));
    }

    fn put_bytes(&mut self, va: u64, data: &[u8]) {
        let r = self.range(va, data.len()).unwrap();
        self.bytes[r].copy_from_slice(data);
    }

    fn get<T: Pod + Default>(&self, va: u64) -> T {
        let mut value = T::default();
        let r = self.range(va, size_of::<T>()).unwrap();
        // SAFETY: `T: Pod` (repr(C) integers, no padding), so any bytes are a
        // valid `T`, and the slice covers exactly the value's own storage.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut((&mut value as *mut T).cast::<u8>(), size_of::<T>())
        };
        bytes.copy_from_slice(&self.bytes[r]);
        value
    }
}

impl UserMemory for Task {
    fn read(&mut self, _: OwnerId, va: u64, out: &mut [u8]) -> Result<(), Errno> {
        let r = self.range(va, out.len())?;
        out.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, _: OwnerId, va: u64, data: &[u8]) -> Result<(), Errno> {
        let r = self.range(va, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

fn ioctl(fd: &mut SoftCore, task: &mut Task, cmd: Command) -> Result<(), Errno> {
    fd.ioctl(task, O, cmd, ARG).expect("core command")
}

fn alloc_ioas(fd: &mut SoftCore, task: &mut Task) -> u32 {
    task.put(
        ARG,
        &abi::IoasAlloc {
            size: 12,
            ..Default::default()
        },
    );
    ioctl(fd, task, Command::IoasAlloc).unwrap();
    task.get::<abi::IoasAlloc>(ARG).out_ioas_id
}

#[test]
fn uapi_size_rule_applies_to_every_command() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let mut task = Task::new();
    // Shorter than the mandatory part.
    task.put(
        ARG,
        &abi::IoasAlloc {
            size: 8,
            ..Default::default()
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::IoasAlloc),
        Err(Errno::EINVAL)
    );
    // Longer with a non-zero unknown tail.
    task.put(
        ARG,
        &abi::IoasAlloc {
            size: 20,
            ..Default::default()
        },
    );
    task.put_bytes(ARG + 16, &[1]);
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::IoasAlloc),
        Err(Errno::E2BIG)
    );
    // Longer with a zero tail: fine, and the tail is left alone.
    task.put_bytes(ARG + 16, &[0]);
    assert_eq!(ioctl(&mut fd, &mut task, Command::IoasAlloc), Ok(()));
    assert_eq!(task.get::<abi::IoasAlloc>(ARG).out_ioas_id, 1);
    // A page is the most a struct may claim, zero tail or not.
    for (size, expected) in [
        (4096, Ok(())),
        (4097, Err(Errno::E2BIG)),
        (u32::MAX, Err(Errno::E2BIG)),
    ] {
        task.put(
            ARG,
            &abi::IoasAlloc {
                size,
                ..Default::default()
            },
        );
        assert_eq!(
            ioctl(&mut fd, &mut task, Command::IoasAlloc),
            expected,
            "size {size}"
        );
    }
    // Unknown flags.
    task.put(
        ARG,
        &abi::IoasAlloc {
            size: 12,
            flags: 1,
            out_ioas_id: 0,
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::IoasAlloc),
        Err(Errno::EOPNOTSUPP)
    );
    // A bad argument pointer.
    assert_eq!(
        fd.ioctl(&mut task, O, Command::IoasAlloc, 0x10),
        Some(Err(Errno::EFAULT))
    );
    assert_eq!(fd.object_count(O), 2);
    // The kernel's own commands are not the core's.
    assert!(fd.ioctl(&mut task, O, Command::DeviceOpen, ARG).is_none());
}

#[test]
fn uapi_map_unmap_and_iova_ranges_round_trip() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let mut task = Task::new();
    let ioas = alloc_ioas(&mut fd, &mut task);
    let dev = fd.bind_device(O, UnitId(0), DeviceId(3)).unwrap();
    task.put(
        ARG,
        &abi::DeviceAttach {
            size: 24,
            dev_id: dev,
            pt_id: ioas,
            ..Default::default()
        },
    );
    ioctl(&mut fd, &mut task, Command::DeviceAttach).unwrap();
    let hwpt = task.get::<abi::DeviceAttach>(ARG).out_hwpt_id;
    assert_eq!(fd.device_hwpt(O, dev), Ok(Some(hwpt)));

    let flags = (abi::MapFlags::READABLE | abi::MapFlags::WRITEABLE).bits();
    task.put(
        ARG,
        &abi::IoasMap {
            size: 40,
            flags,
            ioas_id: ioas,
            user_va: 0x20_0000,
            length: 0x2000,
            ..Default::default()
        },
    );
    ioctl(&mut fd, &mut task, Command::IoasMap).unwrap();
    let iova = task.get::<abi::IoasMap>(ARG).iova;
    assert_ne!(iova, 0);
    assert!(
        fd.unit_mut(UnitId(0))
            .unwrap()
            .dma(DeviceId(3), iova, Access::Write)
            .is_some()
    );

    // Too small an array: EMSGSIZE with the count written back, after the
    // entries that fit (Linux's selftest checks them).
    task.put(BUF, &abi::IovaRangeEntry::default());
    task.put(BUF + 16, &abi::IovaRangeEntry::default());
    task.put(
        ARG,
        &abi::IoasIovaRanges {
            size: 32,
            ioas_id: ioas,
            num_iovas: 1,
            allowed_iovas: BUF,
            ..Default::default()
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::IoasIovaRanges),
        Err(Errno::EMSGSIZE)
    );
    assert_eq!(task.get::<abi::IoasIovaRanges>(ARG).num_iovas, 2);
    let first = task.get::<abi::IovaRangeEntry>(BUF);
    assert_eq!((first.start, first.last), (0, 0xfedf_ffff));
    assert_eq!(
        task.get::<abi::IovaRangeEntry>(BUF + 16),
        abi::IovaRangeEntry::default(),
        "an entry past num_iovas written"
    );
    task.put(
        ARG,
        &abi::IoasIovaRanges {
            size: 32,
            ioas_id: ioas,
            num_iovas: 2,
            allowed_iovas: BUF,
            ..Default::default()
        },
    );
    ioctl(&mut fd, &mut task, Command::IoasIovaRanges).unwrap();
    let out = task.get::<abi::IoasIovaRanges>(ARG);
    assert_eq!((out.num_iovas, out.out_iova_alignment), (2, 0x1000));
    assert_eq!(task.get::<abi::IovaRangeEntry>(BUF + 16).start, 0xfef0_0000);

    task.put(
        ARG,
        &abi::IoasUnmap {
            size: 24,
            ioas_id: ioas,
            iova: 0,
            length: u64::MAX,
        },
    );
    ioctl(&mut fd, &mut task, Command::IoasUnmap).unwrap();
    assert_eq!(task.get::<abi::IoasUnmap>(ARG).length, 0x2000);
    assert_eq!(fd.pinned_ranges(), 0);
}

#[test]
fn uapi_failed_copy_out_undoes_the_allocation() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    // A struct that claims to be longer than the task memory holds past its end.
    let mut task = Task::new();
    let at = BASE + 0x4000 - 12;
    task.put(
        at,
        &abi::IoasAlloc {
            size: 12,
            ..Default::default()
        },
    );
    assert_eq!(fd.ioctl(&mut task, O, Command::IoasAlloc, at), Some(Ok(())));
    assert_eq!(fd.object_count(O), 1);
    // Memory that can be read but the write-back faults: a read-only task.
    struct ReadOnly(Task);
    impl UserMemory for ReadOnly {
        fn read(&mut self, o: OwnerId, va: u64, out: &mut [u8]) -> Result<(), Errno> {
            self.0.read(o, va, out)
        }
        fn write(&mut self, _: OwnerId, _: u64, _: &[u8]) -> Result<(), Errno> {
            Err(Errno::EFAULT)
        }
    }
    let mut ro = ReadOnly(task);
    assert_eq!(
        fd.ioctl(&mut ro, O, Command::IoasAlloc, at),
        Some(Err(Errno::EFAULT))
    );
    assert_eq!(fd.object_count(O), 1, "the unannounced IOAS was destroyed");
}

#[test]
fn uapi_get_hw_info_prefix_and_zeroed_tail() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let mut task = Task::new();
    let dev = fd.bind_device(O, UnitId(0), DeviceId(3)).unwrap();
    task.put_bytes(BUF, &[0xAA; 40]);
    task.put(
        ARG,
        &abi::GetHwInfo {
            size: 40,
            dev_id: dev,
            data_len: 32,
            data_uptr: BUF,
            ..Default::default()
        },
    );
    ioctl(&mut fd, &mut task, Command::GetHwInfo).unwrap();
    let out = task.get::<abi::GetHwInfo>(ARG);
    assert_eq!(out.out_data_type, abi::HwInfoType::IntelVtd as u32);
    assert_eq!(out.data_len, 24);
    // Linux's bits: 0 dirty tracking, 1/2 PASID exec/priv; nesting is ours,
    // above them. No PASIDs for the device.
    assert_eq!(out.out_capabilities, 1 << 32);
    assert_eq!(
        out.out_capabilities & 0b111,
        0,
        "Linux's bits 0..=2 claimed"
    );
    assert_eq!(out.out_max_pasid_log2, 0);
    assert_eq!(task.bytes[0x1000 + 24..0x1000 + 32], [0; 8]);
    assert_eq!(
        task.bytes[0x1000 + 32..0x1000 + 40],
        [0xAA; 8],
        "beyond data_len untouched"
    );
    let cap = task.get::<abi::HwInfoVtd>(BUF).cap_reg;
    let iommu::HwInfo::IntelVtd { cap: want, .. } = SoftConfig::vtd_like().hw_info else {
        unreachable!()
    };
    assert_eq!(cap, want);
}

/// Issue 17: HWPT_ALLOC has Linux's 48-byte layout (`fault_id` and a
/// reserved word after `data_uptr`) and still takes the 40-byte first
/// version; DIRTY_TRACKING where no unit tracks is EOPNOTSUPP and a fault id
/// ENOENT (no fault queue object exists), as Linux answers them.
#[test]
fn uapi_hwpt_alloc_has_linux_layout_and_refuses_what_it_lacks() {
    assert_eq!(core::mem::size_of::<abi::HwptAlloc>(), 48);
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let mut task = Task::new();
    let ioas = alloc_ioas(&mut fd, &mut task);
    let dev = fd.bind_device(O, UnitId(0), DeviceId(3)).unwrap();
    let alloc = |flags: abi::HwptAllocFlags, size: u32| abi::HwptAlloc {
        size,
        flags: flags.bits(),
        dev_id: dev,
        pt_id: ioas,
        ..Default::default()
    };
    for (flags, errno) in [
        (abi::HwptAllocFlags::DIRTY_TRACKING, Errno::EOPNOTSUPP),
        (abi::HwptAllocFlags::FAULT_ID_VALID, Errno::ENOENT),
    ] {
        task.put(ARG, &alloc(flags, 48));
        assert_eq!(ioctl(&mut fd, &mut task, Command::HwptAlloc), Err(errno));
    }
    task.put(
        ARG,
        &abi::HwptAlloc {
            reserved2: 1,
            ..alloc(abi::HwptAllocFlags::empty(), 48)
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::HwptAlloc),
        Err(Errno::EOPNOTSUPP)
    );
    for size in [40, 48] {
        task.put(ARG, &alloc(abi::HwptAllocFlags::empty(), size));
        ioctl(&mut fd, &mut task, Command::HwptAlloc).unwrap();
        assert_ne!(
            task.get::<abi::HwptAlloc>(ARG).out_hwpt_id,
            0,
            "size {size}"
        );
    }
}

/// Issue 17: `IOMMU_OPTION` as Linux answers it: HUGE_PAGES of an IOAS read
/// and written (values other than 0 and 1 `EINVAL`, a non-IOAS object
/// `ENOENT`), RLIMIT_MODE read as 0 and not settable (`EPERM`), unknown
/// options and ops `EOPNOTSUPP`, reserved bits `EOPNOTSUPP`.
#[test]
fn uapi_option_huge_pages_and_rlimit_mode() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let mut task = Task::new();
    let ioas = alloc_ioas(&mut fd, &mut task);
    let option = |option_id: u32, op: abi::OptionOp, object_id: u32, val64: u64| abi::IommuOption {
        size: 24,
        option_id,
        op: op as u16,
        object_id,
        val64,
        ..Default::default()
    };
    let huge = abi::OptionId::HugePages as u32;
    let call = |fd: &mut SoftCore, task: &mut Task, arg: abi::IommuOption| {
        task.put(ARG, &arg);
        let result = ioctl(fd, task, Command::Option);
        (result, task.get::<abi::IommuOption>(ARG).val64)
    };
    assert_eq!(
        call(
            &mut fd,
            &mut task,
            option(huge, abi::OptionOp::Get, ioas, 7)
        ),
        (Ok(()), 1)
    );
    assert_eq!(
        call(
            &mut fd,
            &mut task,
            option(huge, abi::OptionOp::Set, ioas, 0)
        )
        .0,
        Ok(())
    );
    assert_eq!(
        call(
            &mut fd,
            &mut task,
            option(huge, abi::OptionOp::Get, ioas, 7)
        ),
        (Ok(()), 0)
    );
    assert_eq!(
        call(
            &mut fd,
            &mut task,
            option(huge, abi::OptionOp::Set, ioas, 2)
        )
        .0,
        Err(Errno::EINVAL)
    );
    assert_eq!(
        call(
            &mut fd,
            &mut task,
            option(huge, abi::OptionOp::Get, ioas + 100, 0)
        )
        .0,
        Err(Errno::ENOENT)
    );
    let rlimit = abi::OptionId::RlimitMode as u32;
    assert_eq!(
        call(&mut fd, &mut task, option(rlimit, abi::OptionOp::Get, 0, 7)),
        (Ok(()), 0)
    );
    assert_eq!(
        call(&mut fd, &mut task, option(rlimit, abi::OptionOp::Set, 0, 1)).0,
        Err(Errno::EPERM)
    );
    assert_eq!(
        call(&mut fd, &mut task, option(9, abi::OptionOp::Get, 0, 0)).0,
        Err(Errno::EOPNOTSUPP)
    );
    let mut bad_op = option(huge, abi::OptionOp::Get, ioas, 0);
    bad_op.op = 5;
    assert_eq!(call(&mut fd, &mut task, bad_op).0, Err(Errno::EOPNOTSUPP));
    let mut reserved = option(huge, abi::OptionOp::Get, ioas, 0);
    reserved.reserved = 1;
    assert_eq!(call(&mut fd, &mut task, reserved).0, Err(Errno::EOPNOTSUPP));
}

#[test]
fn uapi_nested_hwpt_invalidate_and_fault_read() {
    let (mut fd, _) = soft_core(&[SoftConfig::vtd_like()]);
    let mut task = Task::new();
    let ioas = alloc_ioas(&mut fd, &mut task);
    let dev = fd.bind_device(O, UnitId(0), DeviceId(3)).unwrap();
    task.put(
        ARG,
        &abi::HwptAlloc {
            size: 40,
            flags: abi::HwptAllocFlags::NEST_PARENT.bits(),
            dev_id: dev,
            pt_id: ioas,
            ..Default::default()
        },
    );
    ioctl(&mut fd, &mut task, Command::HwptAlloc).unwrap();
    let parent = task.get::<abi::HwptAlloc>(ARG).out_hwpt_id;

    task.put(
        BUF,
        &abi::HwptVtdS1 {
            flags: 0,
            pgtbl_addr: 0x9000,
            addr_width: 48,
            reserved: 0,
        },
    );
    let nested_arg = abi::HwptAlloc {
        size: 40,
        dev_id: dev,
        pt_id: parent,
        data_type: 1,
        data_len: 24,
        data_uptr: BUF,
        ..Default::default()
    };
    task.put(
        ARG,
        &abi::HwptAlloc {
            data_len: 16,
            ..nested_arg
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::HwptAlloc),
        Err(Errno::EINVAL),
        "short vendor data"
    );
    task.put(
        ARG,
        &abi::HwptAlloc {
            data_type: 77,
            ..nested_arg
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::HwptAlloc),
        Err(Errno::EOPNOTSUPP)
    );
    task.put(ARG, &nested_arg);
    ioctl(&mut fd, &mut task, Command::HwptAlloc).unwrap();
    let nested = task.get::<abi::HwptAlloc>(ARG).out_hwpt_id;

    for (i, npages) in [1u64, 0, 3].iter().enumerate() {
        task.put(
            BUF + 24 * i as u64,
            &abi::InvalidateVtdS1 {
                addr: 0,
                npages: *npages,
                flags: 0,
                reserved: 0,
            },
        );
    }
    task.put(
        ARG,
        &abi::HwptInvalidate {
            size: 32,
            hwpt_id: nested,
            data_uptr: BUF,
            data_type: 0,
            entry_len: 24,
            entry_num: 3,
            reserved: 0,
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::HwptInvalidate),
        Err(Errno::EINVAL)
    );
    assert_eq!(task.get::<abi::HwptInvalidate>(ARG).entry_num, 1);

    task.put(
        ARG,
        &abi::DeviceAttach {
            size: 24,
            dev_id: dev,
            pt_id: nested,
            ..Default::default()
        },
    );
    ioctl(&mut fd, &mut task, Command::DeviceAttach).unwrap();
    fd.unit_mut(UnitId(0))
        .unwrap()
        .inject_fault(DeviceId(3), 0x5000, Access::Write);
    fd.dispatch_faults();
    // Records the task cannot take stay queued: EFAULT consumes nothing.
    task.put(
        ARG,
        &abi::FaultRead {
            size: 32,
            hwpt_id: nested,
            num: 2,
            record_len: 48,
            records_uptr: 1 << 40,
            ..Default::default()
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::FaultRead),
        Err(Errno::EFAULT),
        "records into unmapped memory"
    );
    // Records longer than the kernel's get a zeroed tail.
    task.put_bytes(BUF, &[0xAA; 96]);
    task.put(
        ARG,
        &abi::FaultRead {
            size: 32,
            hwpt_id: nested,
            num: 2,
            record_len: 48,
            records_uptr: BUF,
            ..Default::default()
        },
    );
    ioctl(&mut fd, &mut task, Command::FaultRead).unwrap();
    let out = task.get::<abi::FaultRead>(ARG);
    assert_eq!((out.num, out.out_dropped), (1, 0));
    let rec = task.get::<abi::FaultRecord>(BUF);
    assert_eq!((rec.iova, rec.requester, rec.dev_id), (0x5000, 3, dev));
    assert_eq!(task.bytes[0x1000 + 40..0x1000 + 48], [0; 8]);
    assert_eq!(
        task.bytes[0x1000 + 48..0x1000 + 56],
        [0xAA; 8],
        "second slot untouched"
    );
    task.put(
        ARG,
        &abi::FaultRead {
            size: 32,
            hwpt_id: nested,
            num: 2,
            record_len: 16,
            records_uptr: BUF,
            ..Default::default()
        },
    );
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::FaultRead),
        Err(Errno::EINVAL),
        "record shorter than mandatory"
    );

    task.put(
        ARG,
        &abi::DeviceDetach {
            size: 8,
            dev_id: dev,
        },
    );
    ioctl(&mut fd, &mut task, Command::DeviceDetach).unwrap();
    task.put(
        ARG,
        &abi::Destroy {
            size: 8,
            id: nested,
        },
    );
    ioctl(&mut fd, &mut task, Command::Destroy).unwrap();
    task.put(ARG, &abi::Destroy { size: 8, id: ioas });
    assert_eq!(
        ioctl(&mut fd, &mut task, Command::Destroy),
        Err(Errno::EBUSY),
        "parent HWPT holds it"
    );
}
