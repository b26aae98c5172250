//! System call numbers and the register convention, for the whole planned ABI.
//!
//! # Register convention
//!
//! | arch    | trap instruction | number | arguments 0..=5            | result |
//! |---------|------------------|--------|----------------------------|--------|
//! | x86_64  | `int 0xF0` (an interrupt gate with DPL 3) | `rax` | `rdi rsi rdx r10 r8 r9` | `rax` |
//! | aarch64 | `svc #0`         | `x8`   | `x0 x1 x2 x3 x4 x5`        | `x0`   |
//!
//! A result `>= 0` is success (its meaning depends on the call); a negative
//! result is a negated [`crate::Errno`] (Linux numbering). Every other
//! general-purpose register is preserved across the call. An unknown number
//! returns `-ENOSYS`.
//!
//! The iommufd calls (`0x80..`) take a pointer to their size-versioned
//! argument struct in argument 0 (see [`crate::copy_in`]); their numbers are
//! those of [`crate::Command`].

/// The x86_64 interrupt vector of the syscall gate: outside the range the
/// kernel hands out for device interrupts and below the spurious vector.
pub const X86_SYSCALL_VECTOR: u8 = 0xF0;

/// The first address of the task's part of the address space (PML4 / L0
/// index 1); programs are linked here. Everything below belongs to the kernel.
pub const USER_BASE: u64 = 0x80_0000_0000;
/// One past the last user address (the end of PML4 / L0 index 1).
pub const USER_END: u64 = 0x100_0000_0000;
/// The page size of every memory call.
pub const PAGE_SIZE: u64 = 4096;

/// `write(buf: *const u8, len: usize) -> len`: writes bytes to the console.
pub const WRITE: u64 = 1;
/// `exit(code: i32) -> !`: ends the task; its memory returns to the kernel.
pub const EXIT: u64 = 2;
/// `yield() -> 0`: lets the other runnable tasks run first.
pub const YIELD: u64 = 3;
/// `mem_alloc(pages: usize) -> address`: maps `pages` zeroed pages of fresh
/// memory, readable and writable, at an address the kernel chooses. This is
/// the only memory a task may later map for DMA.
pub const MEM_ALLOC: u64 = 4;
/// `mem_free(address: usize, pages: usize) -> 0`: unmaps and frees exactly one
/// earlier allocation (address and size as returned/requested).
pub const MEM_FREE: u64 = 5;
/// `clock() -> ns`: nanoseconds of a monotonic clock since boot, so that a
/// task waits for an event with a time bound rather than a count of turns
/// (which a loaded machine makes meaningless).
pub const CLOCK: u64 = 6;
/// `limits(buf: *mut TaskLimits, len: usize) -> size`: what the kernel lets
/// the task hold and what it holds now ([`crate::TaskLimits`], like Linux's
/// `prlimit` and `getrusage` in one). Writes the first `min(len, size)`
/// bytes of the struct and returns its full size, so an older program reads
/// the fields it knows and a newer one learns how many there are.
pub const LIMITS: u64 = 7;

/// The iommufd calls (`ioctl(IOMMU_*)` in Linux): argument 0 points to the
/// call's struct. Numbers equal [`crate::Command`].
pub const DESTROY: u64 = 0x80;
/// System call number of [`Command::IoasAlloc`](crate::Command::IoasAlloc).
pub const IOAS_ALLOC: u64 = 0x81;
/// System call number of [`Command::IoasIovaRanges`](crate::Command::IoasIovaRanges).
pub const IOAS_IOVA_RANGES: u64 = 0x82;
/// System call number of [`Command::IoasAllowIovas`](crate::Command::IoasAllowIovas).
pub const IOAS_ALLOW_IOVAS: u64 = 0x83;
/// System call number of [`Command::IoasMap`](crate::Command::IoasMap).
pub const IOAS_MAP: u64 = 0x84;
/// System call number of [`Command::IoasUnmap`](crate::Command::IoasUnmap).
pub const IOAS_UNMAP: u64 = 0x85;
/// System call number of [`Command::IoasCopy`](crate::Command::IoasCopy).
pub const IOAS_COPY: u64 = 0x86;
/// System call number of [`Command::HwptAlloc`](crate::Command::HwptAlloc).
pub const HWPT_ALLOC: u64 = 0x87;
/// System call number of [`Command::HwptInvalidate`](crate::Command::HwptInvalidate).
pub const HWPT_INVALIDATE: u64 = 0x88;
/// System call number of [`Command::GetHwInfo`](crate::Command::GetHwInfo).
pub const GET_HW_INFO: u64 = 0x89;
/// System call number of [`Command::FaultRead`](crate::Command::FaultRead).
pub const FAULT_READ: u64 = 0x8a;
/// System call number of [`Command::DeviceList`](crate::Command::DeviceList).
pub const DEVICE_LIST: u64 = 0x8b;
/// System call number of [`Command::DeviceOpen`](crate::Command::DeviceOpen).
pub const DEVICE_OPEN: u64 = 0x8c;
/// System call number of [`Command::DeviceAttach`](crate::Command::DeviceAttach).
pub const DEVICE_ATTACH: u64 = 0x8d;
/// System call number of [`Command::DeviceReplace`](crate::Command::DeviceReplace).
pub const DEVICE_REPLACE: u64 = 0x8e;
/// System call number of [`Command::DeviceDetach`](crate::Command::DeviceDetach).
pub const DEVICE_DETACH: u64 = 0x8f;
/// `irq_wait(device_id: u32, timeout_ns: u64) -> interrupts`: the number of
/// interrupts the task's opened device raised since the previous `irq_wait`
/// on it returned (or since `device_open`); blocks, while there are none,
/// until one arrives or `timeout_ns` passes (`ETIMEDOUT`; 0 only polls; the
/// kernel caps the wait at [`IRQ_WAIT_MAX_NS`]). `ENOENT`: not a device the
/// task opened; `ENODEV`: the device has no MSI.
pub const IRQ_WAIT: u64 = 0x90;
/// `option(arg: *mut IommuOption)`: Linux's `IOMMU_OPTION`.
pub const OPTION: u64 = 0x91;
/// `viommu_alloc(arg: *mut ViommuAlloc)`: Linux's `IOMMU_VIOMMU_ALLOC`.
pub const VIOMMU_ALLOC: u64 = 0x92;
/// `vdevice_alloc(arg: *mut VdeviceAlloc)`: Linux's `IOMMU_VDEVICE_ALLOC`.
pub const VDEVICE_ALLOC: u64 = 0x93;
/// `veventq_alloc(arg: *mut VeventqAlloc)`: Linux's `IOMMU_VEVENTQ_ALLOC`.
pub const VEVENTQ_ALLOC: u64 = 0x94;
/// `veventq_read(arg: *mut VeventqRead)`: `read()` of Linux's vEVENTQ file.
pub const VEVENTQ_READ: u64 = 0x95;
/// `hwpt_set_dirty_tracking(arg: *mut HwptSetDirtyTracking)`: Linux's
/// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
pub const HWPT_SET_DIRTY_TRACKING: u64 = 0x96;
/// `hwpt_get_dirty_bitmap(arg: *mut HwptGetDirtyBitmap)`: Linux's
/// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
pub const HWPT_GET_DIRTY_BITMAP: u64 = 0x97;
/// Longest single `irq_wait` (a longer timeout is cut to this).
pub const IRQ_WAIT_MAX_NS: u64 = 10_000_000_000;

/// Number of arguments a call may take.
pub const MAX_ARGS: usize = 6;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    #[test]
    fn iommufd_numbers_equal_the_command_numbers() {
        let pairs = [
            (DESTROY, Command::Destroy),
            (IOAS_ALLOC, Command::IoasAlloc),
            (IOAS_IOVA_RANGES, Command::IoasIovaRanges),
            (IOAS_ALLOW_IOVAS, Command::IoasAllowIovas),
            (IOAS_MAP, Command::IoasMap),
            (IOAS_UNMAP, Command::IoasUnmap),
            (IOAS_COPY, Command::IoasCopy),
            (HWPT_ALLOC, Command::HwptAlloc),
            (HWPT_INVALIDATE, Command::HwptInvalidate),
            (GET_HW_INFO, Command::GetHwInfo),
            (FAULT_READ, Command::FaultRead),
            (DEVICE_LIST, Command::DeviceList),
            (DEVICE_OPEN, Command::DeviceOpen),
            (DEVICE_ATTACH, Command::DeviceAttach),
            (DEVICE_REPLACE, Command::DeviceReplace),
            (DEVICE_DETACH, Command::DeviceDetach),
            (OPTION, Command::Option),
            (VIOMMU_ALLOC, Command::ViommuAlloc),
            (VDEVICE_ALLOC, Command::VdeviceAlloc),
            (VEVENTQ_ALLOC, Command::VeventqAlloc),
            (VEVENTQ_READ, Command::VeventqRead),
            (HWPT_SET_DIRTY_TRACKING, Command::HwptSetDirtyTracking),
            (HWPT_GET_DIRTY_BITMAP, Command::HwptGetDirtyBitmap),
        ];
        for (number, command) in pairs {
            assert_eq!(number, command as u64);
        }
    }

    #[test]
    fn user_region_is_one_top_level_slot() {
        // 4-level tables with 4 KiB pages: a top-level slot spans 512 GiB.
        assert_eq!(USER_BASE, 1 << 39);
        assert_eq!(USER_END - USER_BASE, 1 << 39);
    }
}
