//! The argument structs of the iommufd syscalls. Each starts with `size: u32`; user
//! pointers are `u64` so the layout is the same for every task ABI. Field order and
//! meaning follow Linux `include/uapi/linux/iommufd.h` where Linux has the call;
//! the attach calls that Linux leaves to VFIO are ours.

use crate::Errno;
use crate::version::AbiStruct;
use bitflags::bitflags;
use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Implements `Pod` for a struct and asserts its size (which proves no padding
/// when the size equals the sum of its fields).
/// The size of each ABI struct, asserted at compile time: a change of layout
/// is a change of the ABI. (That none has padding, and that every bit pattern
/// is a valid value, the `zerocopy` derives prove.)
macro_rules! sizes {
    ($($ty:ty = $size:expr),* $(,)?) => {$(
        const _: () = assert!(size_of::<$ty>() == $size);
    )*};
}

fn reserved_zero(fields: &[u64]) -> Result<(), Errno> {
    if fields.iter().any(|f| *f != 0) {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(())
}

fn known_flags(flags: u32, known: u32) -> Result<(), Errno> {
    if flags & !known != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(())
}

/// An inclusive IOVA range element (`iova_ranges`, `allow_iovas`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IovaRangeEntry {
    /// The first IOVA.
    pub start: u64,
    /// The last IOVA (inclusive).
    pub last: u64,
}

/// `ioas_alloc`: creates an empty IOAS.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IoasAlloc {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// No flags are defined: must be 0.
    pub flags: u32,
    /// Out: the new IOAS.
    pub out_ioas_id: u32,
}

/// `destroy`: destroys any destroyable object by id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Destroy {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The object.
    pub id: u32,
}

/// `ioas_iova_ranges`: reports the usable IOVA ranges and the alignment.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IoasIovaRanges {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// In: capacity of `allowed_iovas`; out: the number of ranges (also on EMSGSIZE).
    pub num_iovas: u32,
    /// Must be zero.
    pub reserved: u32,
    /// User pointer to an array of [`IovaRangeEntry`].
    pub allowed_iovas: u64,
    /// Out: what every map's IOVA, length and user page offset must be a multiple of (1 with no domain attached).
    pub out_iova_alignment: u64,
}

/// `ioas_allow_iovas`: replaces the set of IOVA ranges automatic allocation may use.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IoasAllowIovas {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// Entries in the array.
    pub num_iovas: u32,
    /// Must be zero.
    pub reserved: u32,
    /// User pointer to an array of [`IovaRangeEntry`].
    pub allowed_iovas: u64,
}

bitflags! {
    /// Flags of `ioas_map` and `ioas_copy`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MapFlags: u32 {
        /// `iova` is an input; otherwise the kernel chooses and returns it.
        const FIXED_IOVA = 1 << 0;
        /// The device may write.
        const WRITEABLE = 1 << 1;
        /// The device may read.
        const READABLE = 1 << 2;
    }
}

/// `ioas_map`: pins `[user_va, user_va + length)` and maps it at `iova`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IoasMap {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// [`MapFlags`].
    pub flags: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// Must be zero.
    pub reserved: u32,
    /// The task's address of the first byte (any byte, with no domain attached).
    pub user_va: u64,
    /// Length in bytes.
    pub length: u64,
    /// In with `FIXED_IOVA`, out otherwise.
    pub iova: u64,
}

/// `ioas_unmap`: removes whole areas in `[iova, iova + length)`; (0, u64::MAX) is all.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IoasUnmap {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The IOAS.
    pub ioas_id: u32,
    /// The first IOVA (0 with `length` = `u64::MAX`: everything).
    pub iova: u64,
    /// In: bytes to unmap; out: bytes unmapped.
    pub length: u64,
}

/// `ioas_copy`: maps the pages behind a source range into another IOAS.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IoasCopy {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// [`MapFlags`].
    pub flags: u32,
    /// The IOAS to copy into.
    pub dst_ioas_id: u32,
    /// The IOAS to copy from.
    pub src_ioas_id: u32,
    /// Length in bytes.
    pub length: u64,
    /// In with `FIXED_IOVA`, out otherwise.
    pub dst_iova: u64,
    /// The first IOVA in the source.
    pub src_iova: u64,
}

bitflags! {
    /// Flags of `hwpt_alloc`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct HwptAllocFlags: u32 {
        /// The HWPT may be the parent (second stage) of nested HWPTs.
        const NEST_PARENT = 1 << 0;
        /// Track DMA writes in the page tables' dirty bits (Linux
        /// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`); `EOPNOTSUPP` where the unit
        /// does not report [`HwCapabilities::DIRTY_TRACKING`].
        const DIRTY_TRACKING = 1 << 1;
        /// `fault_id` names a fault queue object (Linux
        /// `IOMMU_HWPT_FAULT_ID_VALID`); none exists here yet, so `ENOENT`.
        const FAULT_ID_VALID = 1 << 2;
    }
}

/// Vendor data type of `hwpt_alloc` (Linux `enum iommu_hwpt_data_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HwptDataType {
    /// A paging HWPT over an IOAS; no data.
    None = 0,
    /// [`HwptVtdS1`].
    VtdS1 = 1,
    /// [`HwptArmSmmuV3`].
    ArmSmmuV3 = 2,
    /// [`HwptAmdViV2`].
    AmdViV2 = 3,
}

impl HwptDataType {
    /// The type `raw` names; `EOPNOTSUPP` for a value it does not know.
    pub fn from_raw(raw: u32) -> Result<Self, Errno> {
        Ok(match raw {
            0 => Self::None,
            1 => Self::VtdS1,
            2 => Self::ArmSmmuV3,
            3 => Self::AmdViV2,
            _ => return Err(Errno::EOPNOTSUPP),
        })
    }
}

/// `hwpt_alloc`: a paging HWPT over the IOAS `pt_id`, or a nested HWPT over the
/// NEST_PARENT HWPT `pt_id`, for device `dev_id`'s unit.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwptAlloc {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// [`HwptAllocFlags`].
    pub flags: u32,
    /// The device: its id from `device_open`.
    pub dev_id: u32,
    /// The IOAS or HWPT to build on.
    pub pt_id: u32,
    /// Out: the new HWPT.
    pub out_hwpt_id: u32,
    /// Must be zero.
    pub reserved: u32,
    /// [`HwptDataType`].
    pub data_type: u32,
    /// Length of the data in bytes.
    pub data_len: u32,
    /// User address of the data.
    pub data_uptr: u64,
    /// The fault queue object, with [`HwptAllocFlags::FAULT_ID_VALID`].
    pub fault_id: u32,
    /// Must be zero.
    pub reserved2: u32,
}

/// Invalidation entry type of `hwpt_invalidate` (Linux
/// `enum iommu_hwpt_invalidate_data_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum InvalidateDataType {
    /// [`InvalidateVtdS1`].
    VtdS1 = 0,
    /// [`InvalidateArmSmmuV3`].
    ArmSmmuV3 = 1,
    /// [`InvalidateAmdViV2`].
    AmdViV2 = 2,
}

impl InvalidateDataType {
    /// The type `raw` names; `EOPNOTSUPP` for a value it does not know.
    pub fn from_raw(raw: u32) -> Result<Self, Errno> {
        Ok(match raw {
            0 => Self::VtdS1,
            1 => Self::ArmSmmuV3,
            2 => Self::AmdViV2,
            _ => return Err(Errno::EOPNOTSUPP),
        })
    }
}

/// `hwpt_invalidate`: an array of `entry_num` entries of `entry_len` bytes each.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwptInvalidate {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The HWPT.
    pub hwpt_id: u32,
    /// User address of the array of entries.
    pub data_uptr: u64,
    /// [`InvalidateDataType`].
    pub data_type: u32,
    /// Size of one entry in bytes.
    pub entry_len: u32,
    /// In: entries passed; out: entries processed (also on error).
    pub entry_num: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// Raw hardware info type of `get_hw_info` (Linux `enum iommu_hw_info_type` values,
/// AMD as in Linux 6.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HwInfoType {
    /// No registers to report (no IOMMU, or a software unit).
    None = 0,
    /// [`HwInfoVtd`].
    IntelVtd = 1,
    /// [`HwInfoArmSmmuV3`].
    ArmSmmuV3 = 2,
    /// [`HwInfoAmdVi`].
    AmdVi = 3,
}

bitflags! {
    /// Capabilities `get_hw_info` reports besides the raw registers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct HwCapabilities: u64 {
        /// The unit tracks DMA writes in its page tables (Linux
        /// `IOMMU_HW_CAP_DIRTY_TRACKING`).
        const DIRTY_TRACKING = 1 << 0;
        /// The device may issue PASID-tagged instruction fetches (Linux
        /// `IOMMU_HW_CAP_PCI_PASID_EXEC`).
        const PCI_PASID_EXEC = 1 << 1;
        /// The device may issue PASID-tagged privileged requests (Linux
        /// `IOMMU_HW_CAP_PCI_PASID_PRIV`).
        const PCI_PASID_PRIV = 1 << 2;
        /// Not in Linux (which has a program try a NEST_PARENT HWPT): the unit
        /// can nest. Above the 32 bits Linux may grow into.
        const NESTING = 1 << 32;
    }
}

/// `viommu_alloc` (Linux `struct iommu_viommu_alloc`): a virtual IOMMU of
/// `type` over the NEST_PARENT HWPT `hwpt_id` (its stage 2) for the unit of
/// device `dev_id`. Nested HWPTs are allocated over it (`hwpt_alloc` with
/// `pt_id` = the vIOMMU), devices are bound to virtual ids on it
/// (`vdevice_alloc`), and `hwpt_invalidate` on it takes the vendor's own
/// invalidation commands, naming virtual ids.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ViommuAlloc {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// Must be zero (none defined).
    pub flags: u32,
    /// [`ViommuType`].
    pub viommu_type: u32,
    /// The device: its id from `device_open`.
    pub dev_id: u32,
    /// The HWPT.
    pub hwpt_id: u32,
    /// Out: the new vIOMMU.
    pub out_viommu_id: u32,
}

/// Linux `enum iommu_viommu_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ViommuType {
    /// An SMMUv3 as its guest driver sees it: commands name virtual
    /// StreamIDs, invalidations are [`InvalidateArmSmmuV3`] entries.
    ArmSmmuV3 = 1,
}

/// `vdevice_alloc` (Linux `struct iommu_vdevice_alloc`): binds device
/// `dev_id` to `virt_id` in vIOMMU `viommu_id` (SMMUv3: the virtual
/// StreamID the task's commands name it by).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VdeviceAlloc {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The vIOMMU.
    pub viommu_id: u32,
    /// The device: its id from `device_open`.
    pub dev_id: u32,
    /// Out: the new vDEVICE.
    pub out_vdevice_id: u32,
    /// The device's id in the vIOMMU (for SMMUv3, its virtual StreamID).
    pub virt_id: u64,
}

/// `veventq_alloc` (Linux `struct iommu_veventq_alloc`): a queue of
/// `veventq_depth` events of `veventq_type` for vIOMMU `viommu_id`: the
/// faults of the task's own stage 1 of every device bound to the vIOMMU, in
/// the hardware's format, naming the devices by their virtual ids.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VeventqAlloc {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// Must be zero (none defined).
    pub flags: u32,
    /// The vIOMMU.
    pub viommu_id: u32,
    /// [`VeventqType`].
    pub veventq_type: u32,
    /// Events the queue holds (1 to [`VEVENTQ_MAX_DEPTH`]).
    pub veventq_depth: u32,
    /// Out: the new vEVENTQ (a file descriptor in Linux, an object id here).
    pub out_veventq_id: u32,
    /// Linux's file descriptor to `read()`; here the id again, for
    /// `veventq_read`.
    pub out_veventq_fd: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// Deepest vEVENTQ a task may ask for.
pub const VEVENTQ_MAX_DEPTH: u32 = 1024;

/// Linux `enum iommu_veventq_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum VeventqType {
    /// [`VeventArmSmmuV3`] records.
    ArmSmmuV3 = 1,
}

/// `veventq_read`: copies whole events, oldest first, into `data_uptr`
/// (`data_len` bytes; out: the bytes written, 0 when none is pending). Each
/// is a [`VeventHeader`] and, unless it is a LOST_EVENTS header, the record.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VeventqRead {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The vEVENTQ.
    pub veventq_id: u32,
    /// User address of the data.
    pub data_uptr: u64,
    /// Length of the data in bytes.
    pub data_len: u32,
    /// Must be zero.
    pub reserved: u32,
}

bitflags! {
    /// Linux `IOMMU_VEVENTQ_FLAG_*`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VeventFlags: u32 {
        /// Events were lost here (the queue was full): the sequence numbers
        /// skip them; no record follows this header.
        const LOST_EVENTS = 1 << 0;
    }
}

/// Linux `struct iommufd_vevent_header`: before every event read.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VeventHeader {
    /// [`VeventFlags`].
    pub flags: u32,
    /// Counts every event of the queue, delivered or lost (wraps at 2^31,
    /// as Linux's).
    pub sequence: u32,
}

/// Linux `struct iommu_vevent_arm_smmuv3`: an SMMUv3 §7.3 event record, its
/// StreamID replaced by the virtual one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VeventArmSmmuV3 {
    /// The event record's four doublewords (SMMUv3 §7.3).
    pub evt: [u64; 4],
}

/// `hwpt_set_dirty_tracking` (Linux `struct iommu_hwpt_set_dirty_tracking`):
/// starts or stops the hardware's dirty tracking of a paging HWPT allocated
/// with [`HwptAllocFlags::DIRTY_TRACKING`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwptSetDirtyTracking {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// [`DirtyTrackingFlags`].
    pub flags: u32,
    /// The HWPT.
    pub hwpt_id: u32,
    /// Must be zero.
    pub reserved: u32,
}

bitflags! {
    /// Linux `enum iommufd_hwpt_set_dirty_tracking_flags`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DirtyTrackingFlags: u32 {
        /// On (clear: off).
        const ENABLE = 1 << 0;
    }
}

/// `hwpt_get_dirty_bitmap` (Linux `struct iommu_hwpt_get_dirty_bitmap`): sets
/// bit `n` of the bitmap at `data` for every page of `page_size` bytes at
/// `iova + n * page_size` written through since the last read that cleared
/// (bits already set stay set), and clears the state unless
/// [`DirtyBitmapFlags::NO_CLEAR`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwptGetDirtyBitmap {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The HWPT.
    pub hwpt_id: u32,
    /// [`DirtyBitmapFlags`].
    pub flags: u32,
    /// Must be zero.
    pub reserved: u32,
    /// The first IOVA (a multiple of `page_size`).
    pub iova: u64,
    /// How many bytes (a multiple of `page_size`).
    pub length: u64,
    /// A power of two, at least 4 KiB; `iova` and `length` are multiples.
    pub page_size: u64,
    /// User pointer to the bitmap: `length / page_size` bits, in 64-bit words.
    pub data: u64,
}

/// Most bits one `hwpt_get_dirty_bitmap` covers (a wider range is
/// `EINVAL`): 128 KiB of bitmap.
pub const DIRTY_BITMAP_MAX_BITS: u64 = 1 << 20;

bitflags! {
    /// Linux `enum iommufd_hwpt_get_dirty_bitmap_flags`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DirtyBitmapFlags: u32 {
        /// Read without clearing.
        const NO_CLEAR = 1 << 0;
    }
}

/// `option` (Linux `struct iommu_option`): reads or changes one option of the
/// task's iommufd (`object_id` 0) or of one object.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IommuOption {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// [`OptionId`].
    pub option_id: u32,
    /// [`OptionOp`].
    pub op: u16,
    /// Must be zero.
    pub reserved: u16,
    /// The object the option applies to (an IOAS; 0 for a global option).
    pub object_id: u32,
    /// In for [`OptionOp::Set`], out for [`OptionOp::Get`].
    pub val64: u64,
}

/// Linux `enum iommufd_option`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum OptionId {
    /// How pinned pages are accounted (0: per user). Object 0.
    RlimitMode = 0,
    /// Whether an IOAS's mappings may use pages above the base size (1, the
    /// default) or only the base size (0). Object: the IOAS.
    HugePages = 1,
}

/// Linux `enum iommufd_option_ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum OptionOp {
    /// Sets the option to `val64`.
    Set = 0,
    /// Reads the option into `val64`.
    Get = 1,
}

/// `get_hw_info`: the raw registers of the unit behind `dev_id`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GetHwInfo {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// Must be zero (none defined).
    pub flags: u32,
    /// The device: its id from `device_open`.
    pub dev_id: u32,
    /// In: length of the user buffer; out: length of the kernel's data.
    pub data_len: u32,
    /// User address of the data.
    pub data_uptr: u64,
    /// [`HwInfoType`].
    pub out_data_type: u32,
    /// log2 of the PASIDs the device may use (0: none), as Linux.
    pub out_max_pasid_log2: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
    /// [`HwCapabilities`].
    pub out_capabilities: u64,
}

bitflags! {
    /// The access of a fault record.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FaultAccess: u32 {
        /// A DMA read.
        const READ = 1 << 0;
        /// A DMA write.
        const WRITE = 1 << 1;
        /// An instruction fetch.
        const EXEC = 1 << 2;
    }
}

/// Why a fault record was generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FaultReasonCode {
    /// No valid leaf for the IOVA.
    NotPresent = 1,
    /// The leaf forbids the access.
    Permission = 2,
    /// The IOVA is outside the domain's address size.
    AddressSize = 3,
    /// The device is blocked, or its context, STE or DTE is invalid.
    Blocked = 4,
    /// Vendor-specific: `FaultRecord::vendor_reason` holds the raw code.
    Other = 5,
}

/// One element of the array `fault_read` fills.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FaultRecord {
    /// The address the device used.
    pub iova: u64,
    /// Requester id / StreamID as the unit saw it.
    pub requester: u32,
    /// Index of the unit that reported it.
    pub unit: u32,
    /// The device object of the requester.
    pub dev_id: u32,
    /// [`FaultAccess`].
    pub access: u32,
    /// [`FaultReasonCode`].
    pub reason: u32,
    /// The unit's own reason code (VT-d fault reason, SMMUv3 event type, AMD-Vi event code).
    pub vendor_reason: u32,
    /// Records dropped because the queue was full since the previous delivered record.
    pub dropped_before: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `fault_read`: moves up to `num` records of the HWPT's fault queue to the user.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FaultRead {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The HWPT.
    pub hwpt_id: u32,
    /// In: capacity; out: records written.
    pub num: u32,
    /// Bytes per record in the user array (size-versioned like a struct).
    pub record_len: u32,
    /// User address of the array of [`FaultRecord`]s.
    pub records_uptr: u64,
    /// Records dropped and not yet reported in a delivered record.
    pub out_dropped: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `device_attach` and `device_replace`: put `dev_id` behind an IOAS or a HWPT.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceAttach {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// Must be zero (none defined).
    pub flags: u32,
    /// The device: its id from `device_open`.
    pub dev_id: u32,
    /// IOAS or HWPT id.
    pub pt_id: u32,
    /// The HWPT the device ended up in (an automatic one for an IOAS).
    pub out_hwpt_id: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `device_detach`: blocks the device's DMA.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceDetach {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// The device: its id from `device_open`.
    pub dev_id: u32,
}

/// `device_list`: the devices a task may open.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceList {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// In: capacity; out: number of devices (also on EMSGSIZE).
    pub num: u32,
    /// User pointer to an array of [`DeviceListEntry`].
    pub entries_uptr: u64,
}

bitflags! {
    /// What `device_list` says about a function.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DeviceListFlags: u32 {
        /// Another task has opened it.
        const CLAIMED = 1 << 0;
        /// A unit translates it (otherwise it cannot be opened).
        const TRANSLATED = 1 << 1;
        /// The calling task has opened it.
        const OPENED = 1 << 2;
        /// The kernel does not hand it to tasks (`device_open` fails); the
        /// bits below (or a missing TRANSLATED) say why.
        const REFUSED = 1 << 3;
        /// A host bridge or a bridge to other buses.
        const BRIDGE = 1 << 4;
        /// The IOMMU's own PCI function.
        const IOMMU_FUNCTION = 1 << 5;
        /// Firmware keeps DMA going to memory it names (VT-d RMRR, AMD-Vi IVMD).
        const FIRMWARE_DMA = 1 << 6;
        /// BAR 0 is smaller than a page, so its page holds other registers too.
        const SHARED_PAGE = 1 << 7;
        /// Its isolation group holds other functions (a multi-function device
        /// without ACS), and groups are not handed out whole.
        const SHARED_GROUP = 1 << 8;
        /// It signals MSIs and nothing isolates them (no interrupt
        /// remapping, a GICv2m doorbell): refused unless the kernel command
        /// line says `allow_unsafe_interrupts`.
        const UNSAFE_INTERRUPTS = 1 << 9;
    }
}

/// `device_open`: claims the PCI function at `pci_address` for the calling
/// task (exclusively, in the blocked state) and maps its BAR 0 into the task,
/// uncached.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceOpen {
    /// Size of this struct in bytes, as the caller built it (the size rule of [`crate::copy_in`]).
    pub size: u32,
    /// No flags are defined: must be 0.
    pub flags: u32,
    /// PCI segment << 16 | bus << 8 | devfn, as `device_list` reports it.
    pub pci_address: u32,
    /// Out: the device's id for the other calls.
    pub out_dev_id: u32,
    /// Where BAR 0 is mapped in the task (0 when the function has none).
    pub out_bar0_va: u64,
    /// Out: the size of BAR 0, mapped into the task.
    pub out_bar0_len: u64,
}

/// One element of `device_list`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceListEntry {
    /// PCI segment << 16 | bus << 8 | devfn.
    pub pci_address: u32,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id.
    pub device_id: u16,
    /// Index of the unit translating it.
    pub unit: u32,
    /// [`DeviceListFlags`].
    pub flags: u32,
}

/// One resource of [`TaskLimits`]: what the task may hold, and holds now.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Limit {
    /// How many the task may hold.
    pub limit: u64,
    /// How many it holds now.
    pub used: u64,
}

/// `limits`: the resources the kernel holds for the calling task, each
/// limited per task (set on the kernel command line). Reaching one makes
/// that task's calls fail (ENOSPC for objects and areas, ENOMEM for memory)
/// and nothing else.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TaskLimits {
    /// iommufd objects (IOAS, HWPT, device, fault objects).
    pub objects: Limit,
    /// IOAS areas over all the task's IOASes.
    pub areas: Limit,
    /// HWPTs: hardware domains, each holding a domain id / ASID / VMID.
    pub domains: Limit,
    /// Pages of IO page tables and device structures the task's mappings
    /// and devices take.
    pub dma_pages: Limit,
    /// Kernel heap the task's calls make the kernel hold (bytes).
    pub heap_bytes: Limit,
    /// Pages of `mem_alloc` memory.
    pub memory_pages: Limit,
    /// CPU time, the kernel's time for the task's calls included (ns).
    pub cpu_ns: Limit,
}

/// VT-d nested first stage (`HwptDataType::VtdS1`): VT-d 3.4 §9.6 PASID entry
/// first-stage fields.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwptVtdS1 {
    /// Bit 0: SRE, bit 1: EAFE, bit 2: WPE (as Linux `IOMMU_VTD_S1_*`).
    pub flags: u64,
    /// Physical (guest-physical) address of the first-stage root table.
    pub pgtbl_addr: u64,
    /// 48 or 57.
    pub addr_width: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// SMMUv3 nested stage 1 (`HwptDataType::ArmSmmuV3`): STE words 0-1 (SMMUv3 §5.2).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwptArmSmmuV3 {
    /// STE words 0 and 1 as the guest driver wrote them (SMMUv3 §5.2).
    pub ste: [u64; 2],
}

/// AMD-Vi nested v2 table (`HwptDataType::AmdViV2`): guest DTE (AMD IOMMU §2.2.2.1).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwptAmdViV2 {
    /// The guest DTE's four words (AMD IOMMU §2.2.2.1).
    pub dte: [u64; 4],
}

/// VT-d first-stage invalidation entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InvalidateVtdS1 {
    /// The first IOVA (4 KiB aligned).
    pub addr: u64,
    /// Number of 4 KiB pages; `u64::MAX` for all.
    pub npages: u64,
    /// Bit 0: leaf only.
    pub flags: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// SMMUv3 invalidation entry: one command (SMMUv3 §4.4).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InvalidateArmSmmuV3 {
    /// The command as the guest driver wrote it.
    pub cmd: [u64; 2],
}

/// AMD-Vi invalidation entry: one INVALIDATE_IOMMU_PAGES command (AMD IOMMU §2.4.3).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InvalidateAmdViV2 {
    /// The command as the guest driver wrote it.
    pub cmd: [u64; 2],
}

/// `get_hw_info` data for VT-d (`HwInfoType::IntelVtd`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwInfoVtd {
    /// Linux's `IOMMU_HW_INFO_VTD_*` flags: none reported here.
    pub flags: u32,
    /// Must be zero.
    pub reserved: u32,
    /// VT-d 3.4 §11.4.2 CAP_REG.
    pub cap_reg: u64,
    /// VT-d 3.4 §11.4.3 ECAP_REG.
    pub ecap_reg: u64,
}

/// `get_hw_info` data for SMMUv3 (`HwInfoType::ArmSmmuV3`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwInfoArmSmmuV3 {
    /// Must be zero (none defined).
    pub flags: u32,
    /// Must be zero.
    pub reserved: u32,
    /// SMMUv3 §6.3.1-6.3.6 SMMU_IDR0..5.
    pub idr: [u32; 6],
    /// SMMUv3 §6.3.7 SMMU_IIDR.
    pub iidr: u32,
    /// SMMUv3 §6.3.8 SMMU_AIDR.
    pub aidr: u32,
}

/// `get_hw_info` data for AMD-Vi (`HwInfoType::AmdVi`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HwInfoAmdVi {
    /// AMD IOMMU §3.4.12 Extended Feature Register.
    pub efr: u64,
    /// Extended Feature 2 Register.
    pub efr2: u64,
}

sizes! {
    IovaRangeEntry = 16,
    IoasAlloc = 12,
    Destroy = 8,
    IoasIovaRanges = 32,
    IoasAllowIovas = 24,
    IoasMap = 40,
    IoasUnmap = 24,
    IoasCopy = 40,
    HwptAlloc = 48,
    HwptInvalidate = 32,
    GetHwInfo = 40,
    IommuOption = 24,
    ViommuAlloc = 24,
    VdeviceAlloc = 24,
    VeventqAlloc = 32,
    VeventqRead = 24,
    VeventHeader = 8,
    VeventArmSmmuV3 = 32,
    HwptSetDirtyTracking = 16,
    HwptGetDirtyBitmap = 48,
    FaultRecord = 40,
    FaultRead = 32,
    DeviceAttach = 24,
    DeviceDetach = 8,
    DeviceList = 16,
    DeviceOpen = 32,
    DeviceListEntry = 16,
    Limit = 16,
    TaskLimits = 112,
    HwptVtdS1 = 24,
    HwptArmSmmuV3 = 16,
    HwptAmdViV2 = 32,
    InvalidateVtdS1 = 24,
    InvalidateArmSmmuV3 = 16,
    InvalidateAmdViV2 = 16,
    HwInfoVtd = 24,
    HwInfoArmSmmuV3 = 40,
    HwInfoAmdVi = 16,
}

impl AbiStruct for IovaRangeEntry {}
impl AbiStruct for Destroy {}
impl AbiStruct for IoasUnmap {}
impl AbiStruct for DeviceDetach {}
impl AbiStruct for DeviceList {}
impl AbiStruct for DeviceListEntry {}
impl AbiStruct for HwptArmSmmuV3 {}
impl AbiStruct for HwptAmdViV2 {}
impl AbiStruct for InvalidateArmSmmuV3 {}
impl AbiStruct for InvalidateAmdViV2 {}
impl AbiStruct for HwInfoVtd {}
impl AbiStruct for HwInfoArmSmmuV3 {}
impl AbiStruct for HwInfoAmdVi {}

impl AbiStruct for DeviceOpen {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, 0)
    }
}

impl AbiStruct for IoasAlloc {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, 0)
    }
}

impl AbiStruct for IoasIovaRanges {
    fn validate(&self) -> Result<(), Errno> {
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for IoasAllowIovas {
    fn validate(&self) -> Result<(), Errno> {
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for IoasMap {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, MapFlags::all().bits())?;
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for IoasCopy {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, MapFlags::all().bits())
    }
}

impl AbiStruct for HwptAlloc {
    /// The first version had no `fault_id` (Linux grew the struct the same way).
    const MIN_SIZE: usize = 40;

    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, HwptAllocFlags::all().bits())?;
        reserved_zero(&[self.reserved.into(), self.reserved2.into()])
    }
}

impl AbiStruct for HwptInvalidate {
    fn validate(&self) -> Result<(), Errno> {
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for ViommuAlloc {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, 0)
    }
}

impl AbiStruct for VdeviceAlloc {}

impl AbiStruct for VeventqAlloc {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, 0)?;
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for VeventqRead {
    fn validate(&self) -> Result<(), Errno> {
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for HwptSetDirtyTracking {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, DirtyTrackingFlags::all().bits())?;
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for HwptGetDirtyBitmap {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, DirtyBitmapFlags::all().bits())?;
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for VeventHeader {}
impl AbiStruct for VeventArmSmmuV3 {}

impl AbiStruct for IommuOption {
    fn validate(&self) -> Result<(), Errno> {
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for GetHwInfo {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, 0)?;
        reserved_zero(&self.reserved.map(u64::from))
    }
}

impl AbiStruct for FaultRecord {
    fn validate(&self) -> Result<(), Errno> {
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for FaultRead {
    fn validate(&self) -> Result<(), Errno> {
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for DeviceAttach {
    fn validate(&self) -> Result<(), Errno> {
        known_flags(self.flags, 0)?;
        reserved_zero(&[self.reserved.into()])
    }
}

impl AbiStruct for HwptVtdS1 {
    fn validate(&self) -> Result<(), Errno> {
        /// SRE | EAFE | WPE.
        const KNOWN: u64 = 0b111;
        reserved_zero(&[self.flags & !KNOWN, self.reserved.into()])
    }
}

impl AbiStruct for InvalidateVtdS1 {
    fn validate(&self) -> Result<(), Errno> {
        /// Leaf only.
        const KNOWN: u32 = 0b1;
        known_flags(self.flags, KNOWN)?;
        reserved_zero(&[self.reserved.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{as_bytes, copy_in, decode};

    #[test]
    fn abi_ioas_map_unknown_flag_is_eopnotsupp() {
        let m = IoasMap {
            size: 40,
            flags: 1 << 3,
            ..Default::default()
        };
        assert_eq!(copy_in::<IoasMap>(as_bytes(&m)), Err(Errno::EOPNOTSUPP));
    }

    #[test]
    fn abi_ioas_map_nonzero_reserved_is_eopnotsupp() {
        let m = IoasMap {
            size: 40,
            reserved: 1,
            ..Default::default()
        };
        assert_eq!(copy_in::<IoasMap>(as_bytes(&m)), Err(Errno::EOPNOTSUPP));
    }

    #[test]
    fn abi_ioas_map_round_trips() {
        let m = IoasMap {
            size: 40,
            flags: (MapFlags::READABLE | MapFlags::FIXED_IOVA).bits(),
            ioas_id: 3,
            reserved: 0,
            user_va: 0x1000,
            length: 0x2000,
            iova: 0x4000,
        };
        assert_eq!(copy_in::<IoasMap>(as_bytes(&m)), Ok(m));
    }

    #[test]
    fn abi_hwpt_vtd_s1_unknown_flag_is_eopnotsupp() {
        let d = HwptVtdS1 {
            flags: 1 << 5,
            ..Default::default()
        };
        assert_eq!(decode::<HwptVtdS1>(as_bytes(&d)), Err(Errno::EOPNOTSUPP));
    }

    #[test]
    fn abi_vendor_data_short_is_einval() {
        let d = HwptArmSmmuV3 { ste: [1, 2] };
        assert_eq!(
            decode::<HwptArmSmmuV3>(&as_bytes(&d)[..8]),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn abi_data_type_unknown_is_eopnotsupp() {
        assert_eq!(HwptDataType::from_raw(9), Err(Errno::EOPNOTSUPP));
        assert_eq!(InvalidateDataType::from_raw(9), Err(Errno::EOPNOTSUPP));
        assert_eq!(HwptDataType::from_raw(2), Ok(HwptDataType::ArmSmmuV3));
    }
}
