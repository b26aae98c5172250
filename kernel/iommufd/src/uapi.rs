//! The syscall layer's hardware-independent half: copies a command's argument
//! struct in from the task with the size-versioning rule, calls the core, and
//! copies the results out (Linux `iommufd_ucmd` semantics). The kernel provides
//! only [`UserMemory`] (and handles `device_list` / `device_open`, which need its
//! PCI view).

use crate::fill::{PendingMap, PendingUnmap};
use crate::{Iommufd, ObjId, OwnerId, Services, decode_hwpt_data, decode_invalidations, map_flags};
use abi::{AbiStruct, Command, Errno, HwptAllocFlags, Pod};
use alloc::vec;
use alloc::vec::Vec;
use core::mem::size_of;
use iommu::{IommuUnit, IovaRange};

/// Access to a task's memory by its virtual addresses; `EFAULT` when a byte is not
/// mapped with the needed permission.
pub trait UserMemory {
    /// Copies `out.len()` bytes from `owner`'s address `va`.
    fn read(&mut self, owner: OwnerId, va: u64, out: &mut [u8]) -> Result<(), Errno>;
    /// Copies `data` to `owner`'s address `va`.
    fn write(&mut self, owner: OwnerId, va: u64, data: &[u8]) -> Result<(), Errno>;
}

/// Largest count of array elements one call moves (ranges, invalidations, faults).
pub const MAX_ARRAY_ENTRIES: u32 = 4096;
/// Largest element / vendor-data / hw-info buffer, in bytes.
pub const MAX_ELEMENT_BYTES: u32 = 256;

/// Most bytes one `veventq_read` copies (a bigger buffer takes this much).
const MAX_VEVENTQ_READ: usize = 16 << 10;

/// A copied-in argument and where it goes back.
struct Arg<T> {
    va: u64,
    /// The caller's `size`.
    size: u32,
    value: T,
}

/// Reads the struct at `va`: `size` first, then the known prefix, then checks that
/// any longer tail is zero.
fn copy_in<T: AbiStruct, M: UserMemory>(
    mem: &mut M,
    owner: OwnerId,
    va: u64,
) -> Result<Arg<T>, Errno> {
    let mut head = [0u8; 4];
    mem.read(owner, va, &mut head)?;
    let size = u32::from_ne_bytes(head);
    abi::check_size::<T>(size)?;
    let known = (size as usize).min(size_of::<T>());
    let mut raw = vec![0u8; known];
    mem.read(owner, va, &mut raw)?;
    check_zero_tail(mem, owner, va, known as u64, u64::from(size))?;
    Ok(Arg {
        va,
        size,
        value: abi::decode(&raw)?,
    })
}

/// `E2BIG` unless the user bytes `[va + from, va + to)` are all zero.
fn check_zero_tail<M: UserMemory>(
    mem: &mut M,
    owner: OwnerId,
    va: u64,
    from: u64,
    to: u64,
) -> Result<(), Errno> {
    let mut chunk = [0u8; 64];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(chunk.len());
        let addr = va.checked_add(at).ok_or(Errno::EFAULT)?;
        mem.read(owner, addr, &mut chunk[..n])?;
        if chunk[..n].iter().any(|b| *b != 0) {
            return Err(Errno::E2BIG);
        }
        at += n as u64;
    }
    Ok(())
}

/// Writes the (updated) struct back: as many bytes as both sides know.
fn copy_back<T: Pod, M: UserMemory>(
    mem: &mut M,
    owner: OwnerId,
    arg: &Arg<T>,
) -> Result<(), Errno> {
    let bytes = abi::as_bytes(&arg.value);
    let n = (arg.size as usize).min(bytes.len());
    mem.write(owner, arg.va, &bytes[..n])
}

/// Reads `count` elements of `len` bytes each from `va`.
fn read_array<M: UserMemory>(
    mem: &mut M,
    owner: OwnerId,
    va: u64,
    len: u32,
    count: u32,
) -> Result<Vec<u8>, Errno> {
    if count > MAX_ARRAY_ENTRIES || len > MAX_ELEMENT_BYTES {
        return Err(Errno::EINVAL);
    }
    let mut raw = vec![0u8; len as usize * count as usize];
    if !raw.is_empty() {
        mem.read(owner, va, &mut raw)?;
    }
    Ok(raw)
}

/// A command begun under the caller's lock ([`Iommufd::ioctl_begin`]).
pub enum Begun<U> {
    /// It ran to the end.
    Done(Result<(), Errno>),
    /// Its page-table writes and flushes are to run without the lock
    /// ([`Pending::run`]), then [`Iommufd::ioctl_finish`] under it.
    Pending(Pending<U>),
}

/// An `IOAS_MAP` or `IOAS_UNMAP` between its two halves under the lock.
pub struct Pending<U> {
    step: Step<U>,
}

enum Step<U> {
    Map {
        arg: Arg<abi::IoasMap>,
        map: PendingMap<U>,
    },
    Unmap {
        arg: Arg<abi::IoasUnmap>,
        unmap: PendingUnmap<U>,
    },
}

impl<U: IommuUnit> Pending<U> {
    /// The page-table writes and flushes; needs no lock.
    pub fn run(&mut self) {
        match &mut self.step {
            Step::Map { map, .. } => map.run(),
            Step::Unmap { unmap, .. } => unmap.run(),
        }
    }
}

impl<U: IommuUnit, S: Services> Iommufd<U, S> {
    /// Runs one iommufd command whose argument struct is at task address `arg`.
    /// Returns `None` for the commands the kernel handles itself (`DeviceList`,
    /// `DeviceOpen`).
    pub fn ioctl<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        command: Command,
        arg: u64,
    ) -> Option<Result<(), Errno>> {
        Some(match self.ioctl_begin(mem, owner, command, arg)? {
            Begun::Done(result) => result,
            Begun::Pending(mut pending) => {
                pending.run();
                self.ioctl_finish(mem, owner, pending)
            }
        })
    }

    /// [`Self::ioctl`] in two halves around the page-table work of
    /// `IOAS_MAP` and `IOAS_UNMAP`, so that the caller can drop its lock
    /// while [`Pending::run`] writes tables and waits for flushes (several
    /// CPUs then map and unmap at once). Every other command runs whole.
    pub fn ioctl_begin<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        command: Command,
        arg: u64,
    ) -> Option<Begun<U>> {
        let begun = match command {
            Command::IoasMap => self.begin_map(mem, owner, arg),
            Command::IoasUnmap => self.begin_unmap(mem, owner, arg),
            _ => return Some(Begun::Done(self.ioctl_whole(mem, owner, command, arg)?)),
        };
        Some(match begun {
            Ok(pending) => Begun::Pending(pending),
            Err(e) => Begun::Done(Err(e)),
        })
    }

    /// The second half of a command [`Self::ioctl_begin`] left pending,
    /// after [`Pending::run`] (run here if it was not): the bookkeeping and
    /// the results copied out.
    pub fn ioctl_finish<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        pending: Pending<U>,
    ) -> Result<(), Errno> {
        match pending.step {
            Step::Map { mut arg, map } => {
                let (ioas, length) = (arg.value.ioas_id, arg.value.length);
                arg.value.iova = self.ioas_map_finish(map)?;
                let iova = arg.value.iova;
                copy_back(mem, owner, &arg).inspect_err(|_| {
                    let _ = self.ioas_unmap(owner, ioas, iova, length);
                })
            }
            Step::Unmap { mut arg, unmap } => {
                arg.value.length = self.ioas_unmap_finish(unmap)?;
                copy_back(mem, owner, &arg)
            }
        }
    }

    fn ioctl_whole<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        command: Command,
        arg: u64,
    ) -> Option<Result<(), Errno>> {
        Some(match command {
            Command::Destroy => self.cmd_destroy(mem, owner, arg),
            Command::IoasAlloc => self.cmd_ioas_alloc(mem, owner, arg),
            Command::IoasIovaRanges => self.cmd_iova_ranges(mem, owner, arg),
            Command::IoasAllowIovas => self.cmd_allow_iovas(mem, owner, arg),
            Command::IoasMap | Command::IoasUnmap => unreachable!("begun in two halves"),
            Command::IoasCopy => self.cmd_copy(mem, owner, arg),
            Command::HwptAlloc => self.cmd_hwpt_alloc(mem, owner, arg),
            Command::HwptInvalidate => self.cmd_hwpt_invalidate(mem, owner, arg),
            Command::GetHwInfo => self.cmd_get_hw_info(mem, owner, arg),
            Command::FaultRead => self.cmd_fault_read(mem, owner, arg),
            Command::DeviceAttach => self.cmd_attach(mem, owner, arg, false),
            Command::DeviceReplace => self.cmd_attach(mem, owner, arg, true),
            Command::DeviceDetach => self.cmd_detach(mem, owner, arg),
            Command::Option => self.cmd_option(mem, owner, arg),
            Command::ViommuAlloc => self.cmd_viommu_alloc(mem, owner, arg),
            Command::VdeviceAlloc => self.cmd_vdevice_alloc(mem, owner, arg),
            Command::VeventqAlloc => self.cmd_veventq_alloc(mem, owner, arg),
            Command::VeventqRead => self.cmd_veventq_read(mem, owner, arg),
            Command::HwptSetDirtyTracking => self.cmd_set_dirty_tracking(mem, owner, arg),
            Command::HwptGetDirtyBitmap => self.cmd_get_dirty_bitmap(mem, owner, arg),
            Command::DeviceList | Command::DeviceOpen => return None,
        })
    }

    fn cmd_destroy<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let a: Arg<abi::Destroy> = copy_in(mem, owner, arg)?;
        self.destroy(owner, a.value.id)
    }

    /// Copies a new object's id out; a failed copy destroys the object again so
    /// that the task never holds an id it did not learn.
    fn publish<T: Pod, M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: &Arg<T>,
        id: ObjId,
    ) -> Result<(), Errno> {
        copy_back(mem, owner, arg).inspect_err(|_| {
            let _ = self.destroy(owner, id);
        })
    }

    fn cmd_ioas_alloc<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::IoasAlloc> = copy_in(mem, owner, arg)?;
        let id = self.ioas_alloc(owner)?;
        a.value.out_ioas_id = id;
        self.publish(mem, owner, &a, id)
    }

    fn cmd_iova_ranges<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::IoasIovaRanges> = copy_in(mem, owner, arg)?;
        let ranges = self.ioas_iova_ranges(owner, a.value.ioas_id)?;
        let capacity = a.value.num_iovas as usize;
        a.value.num_iovas = u32::try_from(ranges.ranges.len()).map_err(|_| Errno::EOVERFLOW)?;
        a.value.out_iova_alignment = ranges.alignment;
        // As many as fit are written, then EMSGSIZE if that was not all (Linux).
        for (i, r) in ranges.ranges.iter().take(capacity).enumerate() {
            let entry = abi::IovaRangeEntry {
                start: r.start,
                last: r.last,
            };
            let va = a.value.allowed_iovas + (i * size_of::<abi::IovaRangeEntry>()) as u64;
            mem.write(owner, va, abi::as_bytes(&entry))?;
        }
        copy_back(mem, owner, &a)?;
        if ranges.ranges.len() > capacity {
            return Err(Errno::EMSGSIZE);
        }
        Ok(())
    }

    fn cmd_allow_iovas<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let a: Arg<abi::IoasAllowIovas> = copy_in(mem, owner, arg)?;
        let len = size_of::<abi::IovaRangeEntry>() as u32;
        let raw = read_array(mem, owner, a.value.allowed_iovas, len, a.value.num_iovas)?;
        let ranges = raw
            .chunks_exact(len as usize)
            .map(|c| {
                abi::decode::<abi::IovaRangeEntry>(c).map(|e| IovaRange {
                    start: e.start,
                    last: e.last,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.ioas_allow_iovas(owner, a.value.ioas_id, &ranges)
    }

    fn begin_map<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<Pending<U>, Errno> {
        let arg: Arg<abi::IoasMap> = copy_in(mem, owner, arg)?;
        let (prot, fixed) = map_flags(abi::MapFlags::from_bits_retain(arg.value.flags));
        let v = arg.value;
        let map = self.ioas_map_begin(
            owner,
            v.ioas_id,
            v.user_va,
            v.length,
            fixed.then_some(v.iova),
            prot,
        )?;
        Ok(Pending {
            step: Step::Map { arg, map },
        })
    }

    fn begin_unmap<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<Pending<U>, Errno> {
        let arg: Arg<abi::IoasUnmap> = copy_in(mem, owner, arg)?;
        let v = arg.value;
        let unmap = self.ioas_unmap_begin(owner, v.ioas_id, v.iova, v.length)?;
        Ok(Pending {
            step: Step::Unmap { arg, unmap },
        })
    }

    fn cmd_copy<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::IoasCopy> = copy_in(mem, owner, arg)?;
        let (prot, fixed) = map_flags(abi::MapFlags::from_bits_retain(a.value.flags));
        let v = a.value;
        let iova = self.ioas_copy(
            owner,
            v.src_ioas_id,
            v.src_iova,
            v.length,
            v.dst_ioas_id,
            fixed.then_some(v.dst_iova),
            prot,
        )?;
        a.value.dst_iova = iova;
        copy_back(mem, owner, &a).inspect_err(|_| {
            let _ = self.ioas_unmap(owner, v.dst_ioas_id, iova, v.length);
        })
    }

    fn cmd_hwpt_alloc<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::HwptAlloc> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let data = read_array(mem, owner, v.data_uptr, v.data_len, 1)?;
        let nested = decode_hwpt_data(v.data_type, &data)?;
        let flags = HwptAllocFlags::from_bits_retain(v.flags);
        let id = self.hwpt_alloc(owner, v.dev_id, v.pt_id, flags, nested)?;
        a.value.out_hwpt_id = id;
        self.publish(mem, owner, &a, id)
    }

    fn cmd_viommu_alloc<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::ViommuAlloc> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let id = self.viommu_alloc(owner, v.dev_id, v.hwpt_id, v.viommu_type)?;
        a.value.out_viommu_id = id;
        self.publish(mem, owner, &a, id)
    }

    fn cmd_vdevice_alloc<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::VdeviceAlloc> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let id = self.vdevice_alloc(owner, v.viommu_id, v.dev_id, v.virt_id)?;
        a.value.out_vdevice_id = id;
        self.publish(mem, owner, &a, id)
    }

    fn cmd_veventq_alloc<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::VeventqAlloc> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let id = self.veventq_alloc(owner, v.viommu_id, v.veventq_type, v.veventq_depth)?;
        a.value.out_veventq_id = id;
        // No file descriptors here: the queue is read by its id.
        a.value.out_veventq_fd = id;
        self.publish(mem, owner, &a, id)
    }

    /// `read()` of Linux's vEVENTQ file: whole events only, consumed only
    /// once they reached the task.
    fn cmd_veventq_read<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::VeventqRead> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let capacity = (v.data_len as usize).min(MAX_VEVENTQ_READ);
        let (bytes, count) = self.veventq_peek(owner, v.veventq_id, capacity)?;
        if !bytes.is_empty() {
            mem.write(owner, v.data_uptr, &bytes)?;
        }
        a.value.data_len = bytes.len() as u32;
        copy_back(mem, owner, &a)?;
        self.veventq_consume(owner, v.veventq_id, count)
    }

    fn cmd_set_dirty_tracking<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let a: Arg<abi::HwptSetDirtyTracking> = copy_in(mem, owner, arg)?;
        let enable = abi::DirtyTrackingFlags::from_bits_retain(a.value.flags)
            .contains(abi::DirtyTrackingFlags::ENABLE);
        self.hwpt_set_dirty_tracking(owner, a.value.hwpt_id, enable)
    }

    /// The bits already set in the task's bitmap stay set (Linux's
    /// `iova_bitmap` only sets bits). The state is read (and cleared) only
    /// once the bitmap is known to be writable, so a bad pointer loses none.
    fn cmd_get_dirty_bitmap<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let a: Arg<abi::HwptGetDirtyBitmap> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let range = crate::DirtyRange {
            iova: v.iova,
            length: v.length,
            page_size: v.page_size,
            keep: abi::DirtyBitmapFlags::from_bits_retain(v.flags)
                .contains(abi::DirtyBitmapFlags::NO_CLEAR),
        };
        let words = range.bits()?.div_ceil(64) as usize;
        let mut user = vec![0u8; words * 8];
        mem.read(owner, v.data, &mut user)?;
        mem.write(owner, v.data, &user)?;
        let bitmap = self.hwpt_get_dirty_bitmap(owner, v.hwpt_id, range)?;
        for (chunk, word) in user.chunks_exact_mut(8).zip(&bitmap) {
            let merged = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])) | word;
            chunk.copy_from_slice(&merged.to_le_bytes());
        }
        mem.write(owner, v.data, &user)
    }

    fn cmd_hwpt_invalidate<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::HwptInvalidate> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let raw = read_array(mem, owner, v.data_uptr, v.entry_len, v.entry_num)?;
        let (requests, decoded) = decode_invalidations(v.data_type, v.entry_len, v.entry_num, &raw);
        let (done, result) = if requests.is_empty() && decoded.is_err() {
            (0, Ok(()))
        } else {
            self.hwpt_invalidate(owner, v.hwpt_id, &requests)
        };
        a.value.entry_num = done;
        copy_back(mem, owner, &a)?;
        result.and(decoded)
    }

    fn cmd_get_hw_info<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::GetHwInfo> = copy_in(mem, owner, arg)?;
        if a.value.data_len > MAX_ELEMENT_BYTES {
            return Err(Errno::EINVAL);
        }
        let mut data = vec![0u8; a.value.data_len as usize];
        let reply = self.get_hw_info(owner, a.value.dev_id, &mut data)?;
        if !data.is_empty() {
            mem.write(owner, a.value.data_uptr, &data)?;
        }
        a.value.data_len = reply.data_len;
        a.value.out_data_type = reply.data_type as u32;
        a.value.out_capabilities = reply.capabilities.bits();
        a.value.out_max_pasid_log2 = reply.max_pasid_log2;
        copy_back(mem, owner, &a)
    }

    /// Linux `iommufd_option`: HUGE_PAGES of an IOAS (`iommufd_ioas_option`),
    /// RLIMIT_MODE of the whole context (0, per user; setting it needs a
    /// privilege no task has here: `EPERM`, as Linux without
    /// `CAP_SYS_RESOURCE`). An unknown option or op is `EOPNOTSUPP`.
    fn cmd_option<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::IommuOption> = copy_in(mem, owner, arg)?;
        let v = a.value;
        let set = match v.op {
            op if op == abi::OptionOp::Set as u16 => Some(v.val64),
            op if op == abi::OptionOp::Get as u16 => None,
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let value = match v.option_id {
            id if id == abi::OptionId::RlimitMode as u32 => {
                if v.object_id != 0 {
                    return Err(Errno::EINVAL);
                }
                match set {
                    None => 0,
                    Some(_) => return Err(Errno::EPERM),
                }
            }
            id if id == abi::OptionId::HugePages as u32 => {
                let set = match set {
                    None => None,
                    Some(0) => Some(false),
                    Some(1) => Some(true),
                    Some(_) => return Err(Errno::EINVAL),
                };
                u64::from(self.ioas_option_huge_pages(owner, v.object_id, set)?)
            }
            _ => return Err(Errno::EOPNOTSUPP),
        };
        if set.is_none() {
            a.value.val64 = value;
            copy_back(mem, owner, &a)?;
        }
        Ok(())
    }

    fn cmd_fault_read<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::FaultRead> = copy_in(mem, owner, arg)?;
        let v = a.value;
        if (v.record_len as usize) < <abi::FaultRecord as AbiStruct>::MIN_SIZE {
            return Err(Errno::EINVAL);
        }
        if v.record_len > MAX_ELEMENT_BYTES || v.num > MAX_ARRAY_ENTRIES {
            return Err(Errno::EINVAL);
        }
        let mut records = vec![abi::FaultRecord::default(); v.num as usize];
        // Records leave the queue only once the task has them all: a
        // buffer that faults part-way (EFAULT) loses nothing.
        let reply = self.fault_peek(owner, v.hwpt_id, &mut records)?;
        let mut slot = vec![0u8; v.record_len as usize];
        for (i, r) in records.iter().take(reply.num as usize).enumerate() {
            abi::copy_out(r, &mut slot);
            let va = v.records_uptr + i as u64 * u64::from(v.record_len);
            mem.write(owner, va, &slot)?;
        }
        a.value.num = reply.num;
        a.value.out_dropped = reply.dropped;
        copy_back(mem, owner, &a)?;
        self.fault_consume(owner, v.hwpt_id, reply.num as usize)
    }

    fn cmd_attach<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
        replace: bool,
    ) -> Result<(), Errno> {
        let mut a: Arg<abi::DeviceAttach> = copy_in(mem, owner, arg)?;
        let hwpt = if replace {
            self.device_replace(owner, a.value.dev_id, a.value.pt_id)?
        } else {
            self.device_attach(owner, a.value.dev_id, a.value.pt_id)?
        };
        a.value.out_hwpt_id = hwpt;
        copy_back(mem, owner, &a)
    }

    fn cmd_detach<M: UserMemory>(
        &mut self,
        mem: &mut M,
        owner: OwnerId,
        arg: u64,
    ) -> Result<(), Errno> {
        let a: Arg<abi::DeviceDetach> = copy_in(mem, owner, arg)?;
        self.device_detach(owner, a.value.dev_id)
    }
}
