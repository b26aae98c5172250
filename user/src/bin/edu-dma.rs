//! A user-space driver for QEMU's edu device: finds a translated edu with
//! `device_list`, opens it (its BAR 0 is mapped into this task), builds an
//! IOAS, attaches the device, maps a buffer of its own memory and runs DMA
//! both ways through IOVAs; then unmaps, shows that a DMA to the old IOVA no
//! longer reaches memory, and reads the fault record the IOMMU reported.
//! Every DMA completion is awaited with `irq_wait`: the edu raises its MSI
//! when a transfer ends, and the kernel routes it (through the IOMMU's
//! interrupt remapping where it has one) to this task.
//!
//! The task's argument picks which translated edu (0 = the first).
//!
//! Exit codes: 0 = every step held, 77 = no such edu behind an IOMMU here,
//! otherwise the number of the step that failed.
#![no_std]
#![no_main]

use user_programs::abi::{
    self, Command, Errno, FaultRecord, GetHwInfo, HwInfoAmdVi, HwInfoArmSmmuV3, HwInfoType,
    HwInfoVtd, HwptAllocFlags, IoasUnmap,
};
use user_programs::edu::{self, Edu};
use user_programs::iommu::{
    arg_size, device_attach, fault_read, hwpt_alloc, ioas_alignment, ioas_alloc, ioas_map,
};
use user_programs::{Steps, argument, entry, iommufd, irq_wait, mem_alloc, println};

entry!(main);

const STEPS: Steps = Steps("edu-dma");

const PAGE: usize = 4096;
const NO_DEVICE: i32 = user_programs::abi::NO_DEVICE_EXIT_CODE;
/// The wait that shows `irq_wait` times out when nothing is pending.
const QUIET_WAIT_NS: u64 = 20_000_000;

fn run() -> Result<(), i32> {
    let Some(address) = STEPS.check(1, "device_list", edu::find_translated(argument() as usize))?
    else {
        println!("edu-dma: no edu behind an IOMMU here");
        return Err(NO_DEVICE);
    };
    let opened = Edu::open(address);
    println!("edu-dma: device_list: {address} {}", edu::holder(address));
    let edu = STEPS.check(2, "device_open", opened)?;
    println!(
        "edu-dma: opened edu {address} as device {}, BAR 0 at {:#x}",
        edu.id,
        edu.registers() as u64
    );

    // The native path: the unit's raw identification registers.
    let mut raw = [0u8; 64];
    let mut info = GetHwInfo {
        size: arg_size::<GetHwInfo>(),
        dev_id: edu.id,
        data_len: raw.len() as u32,
        data_uptr: raw.as_mut_ptr() as u64,
        ..Default::default()
    };
    STEPS.check(14, "get_hw_info", iommufd(Command::GetHwInfo, &mut info))?;
    print_hw_info(
        info.out_data_type,
        &raw[..(info.data_len as usize).min(raw.len())],
    );

    // No unit here tracks dirty pages yet: the capability is absent and the
    // flag refused with Linux's errno (issue 17).
    if info.out_capabilities & abi::HwCapabilities::DIRTY_TRACKING.bits() != 0 {
        println!("edu-dma: get_hw_info claims dirty tracking");
        return Err(16);
    }

    let ioas = STEPS.check(3, "ioas_alloc", ioas_alloc())?;
    let dirty = hwpt_alloc(HwptAllocFlags::DIRTY_TRACKING, edu.id, ioas, None);
    if dirty != Err(Errno::EOPNOTSUPP) {
        println!("edu-dma: a dirty-tracking HWPT said {dirty:?}, not EOPNOTSUPP");
        return Err(16);
    }
    let hwpt = STEPS.check(4, "device_attach", device_attach(edu.id, ioas))?;

    // Nothing raised yet: a poll and a short wait both time out.
    let quiet = (irq_wait(edu.id, 0), irq_wait(edu.id, QUIET_WAIT_NS));
    if quiet != (Err(Errno::ETIMEDOUT), Err(Errno::ETIMEDOUT)) {
        println!("edu-dma: irq_wait with nothing pending said {quiet:?}");
        return Err(15);
    }
    println!(
        "edu-dma: irq_wait with nothing pending timed out ({} ms)",
        QUIET_WAIT_NS / 1_000_000
    );

    // Every map is a multiple of the IOAS alignment (the smallest page of
    // the attached domain: 4 KiB, or e.g. 64 KiB on an SMMUv3 granule that
    // size): two such spans, the source page at the start of the first,
    // the destination at the start of the second.
    let span = STEPS
        .check(5, "ioas_iova_ranges", ioas_alignment(ioas))?
        .max(PAGE as u64) as usize;
    let buffer = STEPS.check(5, "mem_alloc", mem_alloc(2 * span / PAGE))?;
    let iova = STEPS.check(
        6,
        "ioas_map",
        ioas_map(ioas, buffer as u64, 2 * span as u64, None),
    )?;
    println!(
        "edu-dma: {} pages of task memory at IOVA {iova:#x}",
        2 * span / PAGE
    );

    // SAFETY: mem_alloc mapped 2 * span writable bytes at `buffer`.
    let memory = unsafe { core::slice::from_raw_parts_mut(buffer, 2 * span) };
    let (source, destination) = memory.split_at_mut(span);
    let (source, destination) = (&mut source[..PAGE], &mut destination[..PAGE]);
    for (index, byte) in source.iter_mut().enumerate() {
        *byte = (index % 253) as u8 ^ 0x5A;
    }
    STEPS.check(7, "DMA", edu.dma(iova, false))?;
    STEPS.check(8, "DMA", edu.dma(iova + span as u64, true))?;
    // SAFETY: volatile reads: the device wrote this memory.
    let same = (0..PAGE).all(|i| unsafe { core::ptr::read_volatile(&destination[i]) } == source[i]);
    if !same {
        println!("edu-dma: the page read back differs from the page written");
        return Err(9);
    }
    println!("edu-dma: 4096 bytes task -> device -> task through the IOMMU: identical");
    println!("edu-dma: each DMA completion arrived as one interrupt through irq_wait");

    let mut unmap = IoasUnmap {
        size: arg_size::<IoasUnmap>(),
        ioas_id: ioas,
        iova,
        length: 2 * span as u64,
    };
    STEPS.check(10, "ioas_unmap", iommufd(Command::IoasUnmap, &mut unmap))?;
    destination.fill(0xEE);
    STEPS.check(11, "DMA", edu.dma(iova + span as u64, true))?;
    // SAFETY: as above.
    let untouched = (0..PAGE).all(|i| unsafe { core::ptr::read_volatile(&destination[i]) } == 0xEE);
    if !untouched {
        println!("edu-dma: a DMA to the unmapped IOVA reached memory");
        return Err(12);
    }
    println!(
        "edu-dma: after unmap, a DMA to IOVA {:#x} was blocked (memory unchanged)",
        iova + span as u64
    );

    let mut records = [FaultRecord::default(); 4];
    let read = STEPS.check(13, "fault_read", fault_read(hwpt, &mut records))?;
    match records[..read].first() {
        Some(record) => {
            // The unit's own code, by the name its spec gives it.
            let unit_code = abi::names::vendor_reason(info.out_data_type, record.vendor_reason)
                .unwrap_or("not in this program's table");
            println!(
                "edu-dma: fault records: {read}; first: IOVA {:#x}, a {} by requester {:#x}, refused: {} ({} {:#x}: {unit_code})",
                record.iova,
                abi::names::access(record.access),
                record.requester,
                abi::names::reason(record.reason),
                abi::names::vendor_code_kind(info.out_data_type),
                record.vendor_reason,
            );
        }
        None => println!("edu-dma: fault records: 0"),
    }
    println!("edu-dma: done");
    Ok(())
}

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// Prints the unit's identification registers by their spec names.
fn print_hw_info(data_type: u32, data: &[u8]) {
    if data_type == HwInfoType::IntelVtd as u32
        && let Ok(vtd) = abi::decode::<HwInfoVtd>(data)
    {
        println!(
            "edu-dma: hw info: VT-d CAP {:#018x} ECAP {:#018x}",
            vtd.cap_reg, vtd.ecap_reg
        );
    } else if data_type == HwInfoType::ArmSmmuV3 as u32
        && let Ok(smmu) = abi::decode::<HwInfoArmSmmuV3>(data)
    {
        println!(
            "edu-dma: hw info: SMMUv3 IDR0 {:#010x} IDR1 {:#010x} IDR3 {:#010x} IDR5 {:#010x} IIDR {:#010x} AIDR {:#x}",
            smmu.idr[0], smmu.idr[1], smmu.idr[3], smmu.idr[5], smmu.iidr, smmu.aidr
        );
    } else if data_type == HwInfoType::AmdVi as u32
        && let Ok(amd) = abi::decode::<HwInfoAmdVi>(data)
    {
        println!(
            "edu-dma: hw info: AMD-Vi EFR {:#018x} EFR2 {:#018x}",
            amd.efr, amd.efr2
        );
    } else {
        println!(
            "edu-dma: hw info type {data_type} ({} bytes) not decoded",
            data.len()
        );
    }
}
