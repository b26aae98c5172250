//! The IOAS rules through real system calls: every success and error code of
//! ioas_alloc / iova_ranges / map / unmap / copy / destroy and the
//! size-versioning rule, on this task's own memory. It exits while still
//! holding an IOAS with a mapping, so the kernel's teardown is exercised too.
//! Exit code 0 = every check held; otherwise the number of the failed check.
#![no_std]
#![no_main]

use user_programs::abi::{
    Command, DirtyTrackingFlags, Errno, GetHwInfo, HwCapabilities, HwptAlloc, HwptAllocFlags,
    HwptGetDirtyBitmap, HwptSetDirtyTracking, IoasAlloc, IoasAllowIovas, IoasCopy, IoasIovaRanges,
    IommuOption, IovaRangeEntry, MapFlags, OptionId, OptionOp, VeventqType, ViommuType,
};
use user_programs::edu::{self, Edu};
use user_programs::iommu::{
    arg_size, destroy, device_attach, device_detach, hwpt_alloc, invalidate_arm_smmuv3,
    ioas_alignment, ioas_alloc, ioas_map, ioas_unmap, vdevice_alloc, veventq_alloc, veventq_read,
    viommu_alloc,
};
use user_programs::{entry, iommufd, mem_alloc, mem_free, println};

entry!(main);

const PAGE: u64 = 4096;

/// Fails check `number` unless `got` equals `expected`.
fn expect<T: PartialEq + core::fmt::Debug>(
    number: i32,
    what: &str,
    got: T,
    expected: T,
) -> Result<(), i32> {
    if got == expected {
        Ok(())
    } else {
        println!("check {number} ({what}): got {got:?}, expected {expected:?}");
        Err(number)
    }
}

fn run() -> Result<(), i32> {
    let first = ioas_alloc().map_err(|_| 1)?;
    let second = ioas_alloc().map_err(|_| 2)?;
    expect(
        3,
        "object ids start at 1 and differ",
        first != 0 && second != first,
        true,
    )?;

    // iova_ranges: reported, with EMSGSIZE and the count when the array is too small.
    let mut ranges = [IovaRangeEntry::default(); 4];
    let mut arg = IoasIovaRanges {
        size: arg_size::<IoasIovaRanges>(),
        ioas_id: first,
        num_iovas: 0,
        allowed_iovas: ranges.as_mut_ptr() as u64,
        ..Default::default()
    };
    expect(
        4,
        "iova_ranges into a zero-length array",
        iommufd(Command::IoasIovaRanges, &mut arg),
        Err(Errno::EMSGSIZE),
    )?;
    expect(5, "count reported with EMSGSIZE", arg.num_iovas >= 1, true)?;
    arg.num_iovas = ranges.len() as u32;
    expect(
        6,
        "iova_ranges",
        iommufd(Command::IoasIovaRanges, &mut arg),
        Ok(()),
    )?;
    // No domain is attached: byte granular, as Linux's io_pagetable.
    expect(7, "alignment without a domain", arg.out_iova_alignment, 1)?;

    let pages = 8;
    let buffer = mem_alloc(pages).map_err(|_| 8)? as u64;
    let fixed = 0x10_0000;
    expect(
        9,
        "fixed map",
        ioas_map(first, buffer, 2 * PAGE, Some(fixed)),
        Ok(fixed),
    )?;
    expect(
        10,
        "overlapping map",
        ioas_map(first, buffer, PAGE, Some(fixed + PAGE)),
        Err(Errno::EEXIST),
    )?;
    // Byte granular: one byte from an odd address at an odd IOVA (Linux's
    // selftest maps lengths of 1 to 2 pages - 1 into an IOAS without domains).
    let odd = fixed + 4 * PAGE + 1;
    expect(
        11,
        "one-byte map at an odd IOVA",
        ioas_map(first, buffer + 1, 1, Some(odd)),
        Ok(odd),
    )?;
    expect(
        37,
        "unmap of the one-byte area",
        ioas_unmap(first, odd, 1),
        Ok(1),
    )?;
    expect(
        12,
        "wrapping IOVA",
        ioas_map(first, buffer, 2 * PAGE, Some(u64::MAX - PAGE + 1)),
        Err(Errno::EOVERFLOW),
    )?;
    expect(
        13,
        "kernel memory as the source",
        ioas_map(first, 0x20_0000, PAGE, None),
        Err(Errno::EFAULT),
    )?;
    let auto = ioas_map(first, buffer + 4 * PAGE, 4 * PAGE, None).map_err(|_| 14)?;
    expect(
        15,
        "automatic IOVA: not 0, naturally aligned",
        auto != 0 && auto % (4 * PAGE) == 0,
        true,
    )?;

    // SAFETY: the call must fail (pinned); nothing is freed.
    expect(
        16,
        "freeing pinned memory",
        unsafe { mem_free(buffer as *mut u8, pages) },
        Err(Errno::EBUSY),
    )?;
    expect(
        17,
        "unmap cutting an area",
        ioas_unmap(first, fixed, PAGE),
        Err(Errno::ENOENT),
    )?;
    expect(
        18,
        "unmap of a whole area",
        ioas_unmap(first, fixed, 2 * PAGE),
        Ok(2 * PAGE),
    )?;
    expect(
        19,
        "unmap of nothing",
        ioas_unmap(first, fixed, 2 * PAGE),
        Err(Errno::ENOENT),
    )?;

    // copy shares the pages into the other IOAS; a hole in the source is ENOENT.
    let mut copy = IoasCopy {
        size: arg_size::<IoasCopy>(),
        flags: (MapFlags::READABLE | MapFlags::FIXED_IOVA).bits(),
        dst_ioas_id: second,
        src_ioas_id: first,
        length: 4 * PAGE,
        dst_iova: 0x20_0000,
        src_iova: auto,
    };
    expect(20, "copy", iommufd(Command::IoasCopy, &mut copy), Ok(()))?;
    copy.src_iova = fixed;
    copy.dst_iova = 0x40_0000;
    expect(
        21,
        "copy from a hole",
        iommufd(Command::IoasCopy, &mut copy),
        Err(Errno::ENOENT),
    )?;
    expect(
        22,
        "unmap everything",
        ioas_unmap(second, 0, u64::MAX),
        Ok(4 * PAGE),
    )?;
    expect(
        23,
        "unmap everything of an empty IOAS",
        ioas_unmap(second, 0, u64::MAX),
        Ok(0),
    )?;
    expect(24, "destroy", destroy(second), Ok(()))?;
    expect(25, "destroy twice", destroy(second), Err(Errno::ENOENT))?;
    expect(26, "destroy id 0", destroy(0), Err(Errno::ENOENT))?;

    // The size rule: shorter than the struct, longer with a non-zero tail, unknown flags.
    let mut short = IoasAlloc {
        size: 4,
        ..Default::default()
    };
    expect(
        27,
        "short struct",
        iommufd(Command::IoasAlloc, &mut short),
        Err(Errno::EINVAL),
    )?;
    let mut long = [0u32; 4];
    long[0] = 16;
    long[3] = 1;
    expect(
        28,
        "long struct with a non-zero tail",
        iommufd(Command::IoasAlloc, &mut long),
        Err(Errno::E2BIG),
    )?;
    let mut flagged = IoasAlloc {
        size: arg_size::<IoasAlloc>(),
        flags: 1,
        ..Default::default()
    };
    expect(
        29,
        "unknown flags",
        iommufd(Command::IoasAlloc, &mut flagged),
        Err(Errno::EOPNOTSUPP),
    )?;
    // SAFETY: a pointer into the kernel: the kernel must refuse it, not use it.
    let bad = unsafe { &mut *(0x20_0000 as *mut IoasAlloc) };
    expect(
        30,
        "argument struct in kernel memory",
        iommufd(Command::IoasAlloc, bad),
        Err(Errno::EFAULT),
    )?;

    // IOMMU_OPTION_HUGE_PAGES (Linux's struct iommu_option): on by default,
    // off on an IOAS no domain maps, and a map still works with it off.
    let option = |op: OptionOp, object_id: u32, val64: u64| IommuOption {
        size: arg_size::<IommuOption>(),
        option_id: OptionId::HugePages as u32,
        op: op as u16,
        object_id,
        val64,
        ..Default::default()
    };
    let third = ioas_alloc().map_err(|_| 31)?;
    let mut get = option(OptionOp::Get, third, 7);
    expect(
        31,
        "huge pages on by default",
        iommufd(Command::Option, &mut get).map(|()| get.val64),
        Ok(1),
    )?;
    let mut off = option(OptionOp::Set, third, 0);
    expect(
        32,
        "huge pages off",
        iommufd(Command::Option, &mut off),
        Ok(()),
    )?;
    let mut bad = option(OptionOp::Set, third, 2);
    expect(
        33,
        "huge pages = 2",
        iommufd(Command::Option, &mut bad),
        Err(Errno::EINVAL),
    )?;
    let fresh = mem_alloc(2).map_err(|_| 34)? as u64;
    expect(
        34,
        "map with huge pages off",
        ioas_map(third, fresh, 2 * PAGE, None).map(|iova| iova != 0),
        Ok(true),
    )?;

    // Dirty tracking names a HWPT (an IOAS is none), with whole pages of a
    // power-of-two size (Linux `iommufd_check_iova_range`).
    let mut tracking = HwptSetDirtyTracking {
        size: arg_size::<HwptSetDirtyTracking>(),
        flags: DirtyTrackingFlags::ENABLE.bits(),
        hwpt_id: third,
        ..Default::default()
    };
    expect(
        35,
        "dirty tracking of an IOAS",
        iommufd(Command::HwptSetDirtyTracking, &mut tracking),
        Err(Errno::ENOENT),
    )?;
    let mut bitmap = [0u64; 1];
    let mut get = HwptGetDirtyBitmap {
        size: arg_size::<HwptGetDirtyBitmap>(),
        hwpt_id: third,
        iova: 0,
        length: PAGE,
        page_size: PAGE + 1,
        data: bitmap.as_mut_ptr() as u64,
        ..Default::default()
    };
    expect(
        36,
        "dirty bitmap with a page size no power of two",
        iommufd(Command::HwptGetDirtyBitmap, &mut get),
        Err(Errno::EINVAL),
    )?;

    allowed_ranges(fresh)?;
    virtual_objects_answer_only_to_their_own_ids(third)?;
    let (held, device_checks) = match with_a_device(fresh)? {
        true => (59, "with a device"),
        false => (49, "no translated edu here: the device rows were skipped"),
    };

    // Leave `first` with its automatic mapping: the kernel tears it down at exit.
    println!(
        "ioas-semantics: {held} checks held ({device_checks}); exiting with an IOAS still mapping {} pages",
        4
    );
    Ok(())
}

/// `IOAS_ALLOW_IOVAS` (Linux `iommufd_ioas_allow_iovas`): `start >= last` or
/// overlapping ranges are EINVAL; allowed ranges bound automatic IOVAs only,
/// so `IOAS_IOVA_RANGES` still reports everything and a fixed IOVA outside
/// them maps; an empty list lifts them.
fn allowed_ranges(buffer: u64) -> Result<(), i32> {
    let ioas = ioas_alloc().map_err(|_| 38)?;
    let allow = |ranges: &[IovaRangeEntry]| {
        let mut arg = IoasAllowIovas {
            size: arg_size::<IoasAllowIovas>(),
            ioas_id: ioas,
            num_iovas: ranges.len() as u32,
            allowed_iovas: ranges.as_ptr() as u64,
            ..Default::default()
        };
        iommufd(Command::IoasAllowIovas, &mut arg)
    };
    let range = |start: u64, last: u64| IovaRangeEntry { start, last };
    expect(
        38,
        "allow_iovas with start == last",
        allow(&[range(0x8000_0000, 0x8000_0000)]),
        Err(Errno::EINVAL),
    )?;
    expect(
        39,
        "allow_iovas with overlapping ranges",
        allow(&[
            range(0x8000_0000, 0x8fff_ffff),
            range(0x8fff_f000, 0x9fff_ffff),
        ]),
        Err(Errno::EINVAL),
    )?;
    let window = range(0x8000_0000, 0x8fff_ffff);
    expect(40, "allow_iovas", allow(&[window]), Ok(()))?;
    let auto = ioas_map(ioas, buffer, PAGE, None).map_err(|_| 41)?;
    expect(
        41,
        "an automatic IOVA inside the allowed range",
        (window.start..=window.last).contains(&auto),
        true,
    )?;
    let mut entries = [IovaRangeEntry::default(); 2];
    let mut ranges = IoasIovaRanges {
        size: arg_size::<IoasIovaRanges>(),
        ioas_id: ioas,
        num_iovas: entries.len() as u32,
        allowed_iovas: entries.as_mut_ptr() as u64,
        ..Default::default()
    };
    expect(
        42,
        "iova_ranges still reports what is not reserved",
        iommufd(Command::IoasIovaRanges, &mut ranges).map(|()| (ranges.num_iovas, entries[0])),
        Ok((1, range(0, u64::MAX))),
    )?;
    expect(
        43,
        "a fixed IOVA outside the allowed range",
        ioas_map(ioas, buffer, PAGE, Some(0x10_0000)),
        Ok(0x10_0000),
    )?;
    expect(44, "allow_iovas with no range", allow(&[]), Ok(()))?;
    expect(45, "destroy", destroy(ioas), Ok(()))
}

/// The vIOMMU rows on any configuration: an IOAS id is no vIOMMU, vEVENTQ
/// or HWPT, so each call that names one is ENOENT (Linux
/// `iommufd_get_object` with the wrong type), with nothing carried out.
fn virtual_objects_answer_only_to_their_own_ids(ioas: u32) -> Result<(), i32> {
    expect(
        56,
        "vdevice_alloc naming an IOAS as the vIOMMU",
        vdevice_alloc(ioas, ioas, 1),
        Err(Errno::ENOENT),
    )?;
    expect(
        57,
        "veventq_alloc naming an IOAS as the vIOMMU",
        veventq_alloc(ioas, VeventqType::ArmSmmuV3 as u32, 4),
        Err(Errno::ENOENT),
    )?;
    let mut buffer = [0u8; 64];
    expect(
        58,
        "veventq_read of an IOAS",
        veventq_read(ioas, &mut buffer),
        Err(Errno::ENOENT),
    )?;
    const CMD_SYNC: [u64; 2] = [0x46, 0];
    expect(
        59,
        "hwpt_invalidate of an IOAS",
        invalidate_arm_smmuv3(ioas, &[CMD_SYNC]),
        (0, Err(Errno::ENOENT)),
    )
}

/// The rows that need a device (the first edu an IOMMU translates; none on
/// the configurations without one): `GET_HW_INFO`'s Linux layout,
/// `HWPT_ALLOC`'s two versions and refusals, a domain keeping a sub-page
/// area out and raising the alignment, `IOAS_IOVA_RANGES` writing the first
/// entries before EMSGSIZE, `VIOMMU_ALLOC` over a HWPT that is no
/// NEST_PARENT. `false` when there is no such device.
fn with_a_device(buffer: u64) -> Result<bool, i32> {
    let Some(address) = edu::find_translated(0).map_err(|_| 46)? else {
        return Ok(false);
    };
    let edu = Edu::open(address).map_err(|_| 46)?;
    let mut info = GetHwInfo {
        size: arg_size::<GetHwInfo>(),
        dev_id: edu.id,
        ..Default::default()
    };
    expect(
        46,
        "get_hw_info: no PASID, no dirty tracking under QEMU",
        iommufd(Command::GetHwInfo, &mut info).map(|()| {
            let linux_bits = HwCapabilities::DIRTY_TRACKING
                | HwCapabilities::PCI_PASID_EXEC
                | HwCapabilities::PCI_PASID_PRIV;
            (
                info.out_max_pasid_log2,
                info.out_capabilities & linux_bits.bits(),
            )
        }),
        Ok((0, 0)),
    )?;
    let ioas = ioas_alloc().map_err(|_| 47)?;
    expect(
        47,
        "hwpt_alloc with DIRTY_TRACKING",
        hwpt_alloc(HwptAllocFlags::DIRTY_TRACKING, edu.id, ioas, None),
        Err(Errno::EOPNOTSUPP),
    )?;
    let mut faulting = HwptAlloc {
        size: arg_size::<HwptAlloc>(),
        flags: HwptAllocFlags::FAULT_ID_VALID.bits(),
        dev_id: edu.id,
        pt_id: ioas,
        fault_id: 1,
        ..Default::default()
    };
    expect(
        48,
        "hwpt_alloc with FAULT_ID_VALID (no fault objects)",
        iommufd(Command::HwptAlloc, &mut faulting),
        Err(Errno::ENOENT),
    )?;
    // Linux's first version of the struct ends before fault_id: 40 bytes.
    let mut first_version = HwptAlloc {
        size: 40,
        dev_id: edu.id,
        pt_id: ioas,
        ..Default::default()
    };
    expect(
        49,
        "hwpt_alloc, 40-byte first version",
        iommufd(Command::HwptAlloc, &mut first_version).map(|()| first_version.out_hwpt_id != 0),
        Ok(true),
    )?;
    expect(
        49,
        "destroy that HWPT",
        destroy(first_version.out_hwpt_id),
        Ok(()),
    )?;
    let byte = ioas_map(ioas, buffer + 1, 1, None).map_err(|_| 50)?;
    expect(
        50,
        "a device cannot join an IOAS holding a one-byte area",
        device_attach(edu.id, ioas),
        Err(Errno::EADDRINUSE),
    )?;
    expect(
        50,
        "unmap of the one-byte area",
        ioas_unmap(ioas, byte, 1),
        Ok(1),
    )?;
    let hwpt = device_attach(edu.id, ioas).map_err(|_| 51)?;
    let alignment = ioas_alignment(ioas).map_err(|_| 51)?;
    expect(
        51,
        "the domain's page is the alignment now",
        alignment >= PAGE && alignment.is_power_of_two(),
        true,
    )?;
    expect(
        52,
        "one-byte map with a domain",
        ioas_map(ioas, buffer, 1, None),
        Err(Errno::EINVAL),
    )?;
    // The reserved ranges (the MSI window, the unit's holes) leave at least
    // two: a one-entry array gets the first before EMSGSIZE.
    let mut all = [IovaRangeEntry::default(); 8];
    let mut full = IoasIovaRanges {
        size: arg_size::<IoasIovaRanges>(),
        ioas_id: ioas,
        num_iovas: all.len() as u32,
        allowed_iovas: all.as_mut_ptr() as u64,
        ..Default::default()
    };
    iommufd(Command::IoasIovaRanges, &mut full).map_err(|_| 53)?;
    let mut one = [IovaRangeEntry::default(); 1];
    let mut short = IoasIovaRanges {
        num_iovas: 1,
        allowed_iovas: one.as_mut_ptr() as u64,
        ..full
    };
    expect(
        53,
        "iova_ranges into a one-entry array",
        (
            full.num_iovas >= 2,
            iommufd(Command::IoasIovaRanges, &mut short),
            short.num_iovas,
            one[0],
        ),
        (true, Err(Errno::EMSGSIZE), full.num_iovas, all[0]),
    )?;
    expect(
        54,
        "viommu_alloc over a HWPT that is no NEST_PARENT",
        viommu_alloc(edu.id, hwpt, ViommuType::ArmSmmuV3 as u32),
        Err(Errno::EINVAL),
    )?;
    expect(55, "detach", device_detach(edu.id), Ok(()))?;
    expect(
        55,
        "byte granular again without the domain",
        ioas_alignment(ioas),
        Ok(1),
    )?;
    Ok(true)
}

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}
