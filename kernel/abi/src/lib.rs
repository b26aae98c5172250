//! The user/kernel ABI of the iommufd syscalls: errno codes, the size-versioned
//! `#[repr(C)]` argument structs and the copy-in/out rule they obey.
//!
//! Shared by the kernel (which validates every argument with [`copy_in`]) and by user
//! programs (which build the structs). Nothing here allocates.
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

mod args;
mod errno;
pub mod names;
pub mod syscall;
mod version;

pub use args::*;
pub use errno::Errno;
pub use version::{
    AbiStruct, MAX_SIZE, Pod, as_bytes, check_size, copy_in, copy_out, copy_out_bytes, decode,
    read_size,
};

/// Exit code of a bundled test program that found no device of the kind it
/// needs (no edu behind an IOMMU, say): the kernel's tests read it as "not
/// applicable here", not as a failure.
pub const NO_DEVICE_EXIT_CODE: i32 = 77;

/// The iommufd syscalls. Numbers are reserved here; the kernel's syscall layer
/// assigns the dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Command {
    /// Linux `IOMMU_DESTROY`: frees an object ([`Destroy`]).
    Destroy = 0x80,
    /// Linux `IOMMU_IOAS_ALLOC`.
    IoasAlloc = 0x81,
    /// Linux `IOMMU_IOAS_IOVA_RANGES`.
    IoasIovaRanges = 0x82,
    /// Linux `IOMMU_IOAS_ALLOW_IOVAS`.
    IoasAllowIovas = 0x83,
    /// Linux `IOMMU_IOAS_MAP`.
    IoasMap = 0x84,
    /// Linux `IOMMU_IOAS_UNMAP`.
    IoasUnmap = 0x85,
    /// Linux `IOMMU_IOAS_COPY`.
    IoasCopy = 0x86,
    /// Linux `IOMMU_HWPT_ALLOC`.
    HwptAlloc = 0x87,
    /// Linux `IOMMU_HWPT_INVALIDATE`.
    HwptInvalidate = 0x88,
    /// Linux `IOMMU_GET_HW_INFO`.
    GetHwInfo = 0x89,
    /// Reads a HWPT's fault records (Linux reads a fault queue's file).
    FaultRead = 0x8a,
    /// Lists the PCI functions and whether a task may open them.
    DeviceList = 0x8b,
    /// Opens a PCI function: binds it to the task (VFIO's `VFIO_DEVICE_BIND_IOMMUFD`), BAR 0 mapped.
    DeviceOpen = 0x8c,
    /// Attaches a device to an IOAS or HWPT (VFIO's `VFIO_DEVICE_ATTACH_IOMMUFD_PT`).
    DeviceAttach = 0x8d,
    /// Moves an attached device to another IOAS or HWPT in one step.
    DeviceReplace = 0x8e,
    /// Detaches a device: it is blocked again (VFIO's `VFIO_DEVICE_DETACH_IOMMUFD_PT`).
    DeviceDetach = 0x8f,
    /// Linux `IOMMU_OPTION` ([`IommuOption`]); after `irq_wait`'s number.
    Option = 0x91,
    /// Linux `IOMMU_VIOMMU_ALLOC` ([`ViommuAlloc`]).
    ViommuAlloc = 0x92,
    /// Linux `IOMMU_VDEVICE_ALLOC` ([`VdeviceAlloc`]).
    VdeviceAlloc = 0x93,
    /// Linux `IOMMU_VEVENTQ_ALLOC` ([`VeventqAlloc`]).
    VeventqAlloc = 0x94,
    /// What Linux does with `read()` on the vEVENTQ's file ([`VeventqRead`]):
    /// no file descriptors here.
    VeventqRead = 0x95,
    /// Linux `IOMMU_HWPT_SET_DIRTY_TRACKING` ([`HwptSetDirtyTracking`]).
    HwptSetDirtyTracking = 0x96,
    /// Linux `IOMMU_HWPT_GET_DIRTY_BITMAP` ([`HwptGetDirtyBitmap`]).
    HwptGetDirtyBitmap = 0x97,
}

impl Command {
    /// Every command, in number order.
    pub const ALL: [Command; 23] = [
        Command::Destroy,
        Command::IoasAlloc,
        Command::IoasIovaRanges,
        Command::IoasAllowIovas,
        Command::IoasMap,
        Command::IoasUnmap,
        Command::IoasCopy,
        Command::HwptAlloc,
        Command::HwptInvalidate,
        Command::GetHwInfo,
        Command::FaultRead,
        Command::DeviceList,
        Command::DeviceOpen,
        Command::DeviceAttach,
        Command::DeviceReplace,
        Command::DeviceDetach,
        Command::Option,
        Command::ViommuAlloc,
        Command::VdeviceAlloc,
        Command::VeventqAlloc,
        Command::VeventqRead,
        Command::HwptSetDirtyTracking,
        Command::HwptGetDirtyBitmap,
    ];

    /// The command whose syscall number is `number`.
    pub fn from_number(number: u64) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|command| *command as u64 == number)
    }
}
