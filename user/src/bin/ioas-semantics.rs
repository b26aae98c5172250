//! The IOAS rules through real system calls: every success and error code of
//! ioas_alloc / iova_ranges / map / unmap / copy / destroy and the
//! size-versioning rule, on this task's own memory. It exits while still
//! holding an IOAS with a mapping, so the kernel's teardown is exercised too.
//! Exit code 0 = every check held; otherwise the number of the failed check.
#![no_std]
#![no_main]

use user_programs::abi::{
    Command, DirtyTrackingFlags, Errno, HwptGetDirtyBitmap, HwptSetDirtyTracking, IoasAlloc,
    IoasCopy, IoasIovaRanges, IommuOption, IovaRangeEntry, MapFlags, OptionId, OptionOp,
};
use user_programs::iommu::{arg_size, destroy, ioas_alloc, ioas_map, ioas_unmap};
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

    // Leave `first` with its automatic mapping: the kernel tears it down at exit.
    println!(
        "ioas-semantics: 37 checks held; exiting with an IOAS still mapping {} pages",
        4
    );
    Ok(())
}

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}
