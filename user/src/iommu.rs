//! Typed wrappers over the iommufd calls the programs make most, for the
//! common case (every field they do not name left at its default). The raw
//! call with a hand-built struct stays available as [`crate::iommufd`], for
//! programs that test the kernel with odd structs.

use abi::{
    Command, Destroy, DeviceAttach, DeviceDetach, Errno, FaultRead, FaultRecord, HwptAlloc,
    HwptAllocFlags, HwptDataType, HwptInvalidate, InvalidateArmSmmuV3, InvalidateDataType,
    IoasAlloc, IoasIovaRanges, IoasMap, IoasUnmap, MapFlags, VdeviceAlloc, VeventqAlloc,
    VeventqRead, ViommuAlloc,
};

use crate::iommufd;

/// The `size` field of argument struct `T`: its full length.
pub fn arg_size<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// A new, empty IOAS.
pub fn ioas_alloc() -> Result<u32, Errno> {
    let mut alloc = IoasAlloc {
        size: arg_size::<IoasAlloc>(),
        ..Default::default()
    };
    iommufd(Command::IoasAlloc, &mut alloc)?;
    Ok(alloc.out_ioas_id)
}

/// Destroys object `id`.
pub fn destroy(id: u32) -> Result<(), Errno> {
    let mut destroy = Destroy {
        size: arg_size::<Destroy>(),
        id,
    };
    iommufd(Command::Destroy, &mut destroy)
}

/// Maps `len` bytes of task memory at `va` into `ioas`, readable and
/// writable by the device, at `iova` or where the kernel chooses; returns
/// the IOVA.
pub fn ioas_map(ioas: u32, va: u64, len: u64, iova: Option<u64>) -> Result<u64, Errno> {
    let mut flags = MapFlags::READABLE | MapFlags::WRITEABLE;
    if iova.is_some() {
        flags |= MapFlags::FIXED_IOVA;
    }
    let mut map = IoasMap {
        size: arg_size::<IoasMap>(),
        flags: flags.bits(),
        ioas_id: ioas,
        user_va: va,
        length: len,
        iova: iova.unwrap_or(0),
        ..Default::default()
    };
    iommufd(Command::IoasMap, &mut map)?;
    Ok(map.iova)
}

/// The IOVA alignment `ioas` reports (`IOAS_IOVA_RANGES`'s
/// `out_iova_alignment`): every map's IOVA, length and user page offset are
/// multiples of it, the largest smallest page of the domains attached (1
/// without domains: byte granular, as Linux).
pub fn ioas_alignment(ioas: u32) -> Result<u64, Errno> {
    let mut ranges = IoasIovaRanges {
        size: arg_size::<IoasIovaRanges>(),
        ioas_id: ioas,
        ..Default::default()
    };
    // No room for the ranges: EMSGSIZE, with the alignment filled in.
    match iommufd(Command::IoasIovaRanges, &mut ranges) {
        Ok(()) | Err(Errno::EMSGSIZE) => Ok(ranges.out_iova_alignment),
        Err(errno) => Err(errno),
    }
}

/// Unmaps the whole areas inside `[iova, iova + len)` of `ioas`
/// (`(0, u64::MAX)`: all of them); returns the bytes unmapped.
pub fn ioas_unmap(ioas: u32, iova: u64, len: u64) -> Result<u64, Errno> {
    let mut unmap = IoasUnmap {
        size: arg_size::<IoasUnmap>(),
        ioas_id: ioas,
        iova,
        length: len,
    };
    iommufd(Command::IoasUnmap, &mut unmap)?;
    Ok(unmap.length)
}

/// A HWPT for device `dev_id` over IOAS or parent HWPT `pt_id`: a paging
/// one without `vendor` data, a nested one with (its type and bytes).
pub fn hwpt_alloc(
    flags: HwptAllocFlags,
    dev_id: u32,
    pt_id: u32,
    vendor: Option<(u32, &[u8])>,
) -> Result<u32, Errno> {
    let (data_type, data) = vendor.unwrap_or((HwptDataType::None as u32, &[]));
    let mut alloc = HwptAlloc {
        size: arg_size::<HwptAlloc>(),
        flags: flags.bits(),
        dev_id,
        pt_id,
        data_type,
        data_len: data.len() as u32,
        data_uptr: data.as_ptr() as u64,
        ..Default::default()
    };
    iommufd(Command::HwptAlloc, &mut alloc)?;
    Ok(alloc.out_hwpt_id)
}

/// Attaches device `dev_id` to IOAS or HWPT `pt_id`; returns the HWPT it
/// ended up in (an automatic one for an IOAS).
pub fn device_attach(dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
    attach_or_replace(Command::DeviceAttach, dev_id, pt_id)
}

/// Moves an attached device to IOAS or HWPT `pt_id` in one step; returns
/// its new HWPT.
pub fn device_replace(dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
    attach_or_replace(Command::DeviceReplace, dev_id, pt_id)
}

fn attach_or_replace(command: Command, dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
    let mut attach = DeviceAttach {
        size: arg_size::<DeviceAttach>(),
        dev_id,
        pt_id,
        ..Default::default()
    };
    iommufd(command, &mut attach)?;
    Ok(attach.out_hwpt_id)
}

/// Puts the device back into the blocked state.
pub fn device_detach(dev_id: u32) -> Result<(), Errno> {
    let mut detach = DeviceDetach {
        size: arg_size::<DeviceDetach>(),
        dev_id,
    };
    iommufd(Command::DeviceDetach, &mut detach)
}

/// Reads the fault records queued for HWPT `hwpt` into `records`; returns
/// how many it wrote.
pub fn fault_read(hwpt: u32, records: &mut [FaultRecord]) -> Result<usize, Errno> {
    let mut read = FaultRead {
        size: arg_size::<FaultRead>(),
        hwpt_id: hwpt,
        num: records.len() as u32,
        record_len: arg_size::<FaultRecord>(),
        records_uptr: records.as_mut_ptr() as u64,
        ..Default::default()
    };
    iommufd(Command::FaultRead, &mut read)?;
    Ok((read.num as usize).min(records.len()))
}

/// Every byte of `memory` equals `value`, read with volatile loads (a device
/// may have written it behind the compiler's back).
pub fn all_bytes_are(memory: &[u8], value: u8) -> bool {
    // SAFETY: each pointer comes from a live element of the slice.
    memory
        .iter()
        .all(|byte| unsafe { core::ptr::read_volatile(byte) } == value)
}

/// A vIOMMU of `viommu_type` ([`abi::ViommuType`]) over the NEST_PARENT HWPT
/// `hwpt_id`, for device `dev_id`'s unit.
pub fn viommu_alloc(dev_id: u32, hwpt_id: u32, viommu_type: u32) -> Result<u32, Errno> {
    let mut alloc = ViommuAlloc {
        size: arg_size::<ViommuAlloc>(),
        viommu_type,
        dev_id,
        hwpt_id,
        ..Default::default()
    };
    iommufd(Command::ViommuAlloc, &mut alloc)?;
    Ok(alloc.out_viommu_id)
}

/// Binds device `dev_id` to `virt_id` in vIOMMU `viommu_id`.
pub fn vdevice_alloc(viommu_id: u32, dev_id: u32, virt_id: u64) -> Result<u32, Errno> {
    let mut alloc = VdeviceAlloc {
        size: arg_size::<VdeviceAlloc>(),
        viommu_id,
        dev_id,
        virt_id,
        ..Default::default()
    };
    iommufd(Command::VdeviceAlloc, &mut alloc)?;
    Ok(alloc.out_vdevice_id)
}

/// Hands SMMUv3 commands to HWPT or vIOMMU `id` (`hwpt_invalidate`);
/// returns how many it carried out, and its error if it stopped early.
pub fn invalidate_arm_smmuv3(id: u32, commands: &[[u64; 2]]) -> (u32, Result<(), Errno>) {
    let mut entries = [InvalidateArmSmmuV3::default(); 8];
    let count = commands.len().min(entries.len());
    for (entry, command) in entries.iter_mut().zip(commands) {
        entry.cmd = *command;
    }
    let mut invalidate = HwptInvalidate {
        size: arg_size::<HwptInvalidate>(),
        hwpt_id: id,
        data_uptr: entries.as_ptr() as u64,
        data_type: InvalidateDataType::ArmSmmuV3 as u32,
        entry_len: arg_size::<InvalidateArmSmmuV3>(),
        entry_num: count as u32,
        ..Default::default()
    };
    let result = iommufd(Command::HwptInvalidate, &mut invalidate);
    (invalidate.entry_num, result)
}

/// A vEVENTQ of `veventq_type` ([`abi::VeventqType`]), `depth` events deep,
/// for vIOMMU `viommu_id`.
pub fn veventq_alloc(viommu_id: u32, veventq_type: u32, depth: u32) -> Result<u32, Errno> {
    let mut alloc = VeventqAlloc {
        size: arg_size::<VeventqAlloc>(),
        viommu_id,
        veventq_type,
        veventq_depth: depth,
        ..Default::default()
    };
    iommufd(Command::VeventqAlloc, &mut alloc)?;
    Ok(alloc.out_veventq_id)
}

/// Reads whole events of vEVENTQ `id` into `buffer`; returns the bytes
/// written (0: none pending).
pub fn veventq_read(id: u32, buffer: &mut [u8]) -> Result<usize, Errno> {
    let mut read = VeventqRead {
        size: arg_size::<VeventqRead>(),
        veventq_id: id,
        data_uptr: buffer.as_mut_ptr() as u64,
        data_len: buffer.len() as u32,
        ..Default::default()
    };
    iommufd(Command::VeventqRead, &mut read)?;
    Ok(read.data_len as usize)
}
