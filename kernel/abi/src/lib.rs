//! The user/kernel ABI of the iommufd syscalls: errno codes, the size-versioned
//! `#[repr(C)]` argument structs and the copy-in/out rule they obey.
//!
//! Shared by the kernel (which validates every argument with [`copy_in`]) and by user
//! programs (which build the structs). Nothing here allocates.
#![no_std]

#[cfg(test)]
extern crate std;

mod args;
mod errno;
pub mod syscall;
mod version;

pub use args::*;
pub use errno::Errno;
pub use version::{
    AbiStruct, MAX_SIZE, Pod, as_bytes, check_size, copy_in, copy_out, copy_out_bytes, decode,
    read_size,
};

/// The iommufd syscalls. Numbers are reserved here; the kernel's syscall layer
/// assigns the dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Command {
    Destroy = 0x80,
    IoasAlloc = 0x81,
    IoasIovaRanges = 0x82,
    IoasAllowIovas = 0x83,
    IoasMap = 0x84,
    IoasUnmap = 0x85,
    IoasCopy = 0x86,
    HwptAlloc = 0x87,
    HwptInvalidate = 0x88,
    GetHwInfo = 0x89,
    FaultRead = 0x8a,
    DeviceList = 0x8b,
    DeviceOpen = 0x8c,
    DeviceAttach = 0x8d,
    DeviceReplace = 0x8e,
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
