//! The iommufd system calls: the kernel's half of `iommufd::uapi`.
//!
//! One `iommufd::Iommufd` core serves every task; a task is an owner
//! (`OwnerId`) with its own object table. The core reaches the calling task
//! through [`TaskAccess`]: its memory for copying arguments in and out
//! (`UserMemory`) and its `mem_alloc` pages for pinning (`Services`). When a
//! task ends, [`release`] tears its objects down (devices detached first,
//! pinned pages released after the IOTLB flush) before its memory is freed.
//!
//! The IOMMU units join the core with `device_open` (claiming a PCI device and
//! mapping its BARs into the task), which comes next; until then `device_list`
//! and `device_open` answer ENOSYS and the IOAS calls work on areas alone.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;

use abi::{Command, Errno};
use iommufd::uapi::UserMemory;
use iommufd::{Iommufd, OwnerId, PhysRun, Services};

use crate::task::Task;

/// The unit type the core holds: any driver behind the contract.
type Unit = Box<dyn iommu::IommuUnit + Send>;

/// The task a call (or a teardown) is working for, set for its duration.
#[derive(Default)]
pub struct TaskAccess {
    task: Option<NonNull<Task>>,
}

// SAFETY: the pointer is set only while the single CPU runs one call for that
// task (with the core's lock held) and cleared before the lock is released.
unsafe impl Send for TaskAccess {}

impl TaskAccess {
    fn with_task<R>(&mut self, f: impl FnOnce(&mut Task) -> R) -> Result<R, Errno> {
        let mut task = self.task.ok_or(Errno::EFAULT)?;
        // SAFETY: see `Send`: the task outlives the call that set the pointer,
        // and no other reference to it is live while the core runs.
        Ok(f(unsafe { task.as_mut() }))
    }
}

impl Services for TaskAccess {
    fn pin(
        &mut self,
        _owner: OwnerId,
        va: u64,
        len: u64,
        write: bool,
        runs: &mut Vec<PhysRun>,
    ) -> Result<(), Errno> {
        let _ = write; // mem_alloc memory is always writable
        let frames = self.with_task(|task| task.pin(va, len))??;
        for phys in frames {
            match runs.last_mut() {
                Some(run) if run.phys + run.len == phys => run.len += abi::syscall::PAGE_SIZE,
                _ => runs.push(PhysRun {
                    phys,
                    len: abi::syscall::PAGE_SIZE,
                }),
            }
        }
        Ok(())
    }

    fn unpin(&mut self, _owner: OwnerId, va: u64, len: u64, _runs: &[PhysRun]) {
        // A range the core pinned is always unpinnable; an error here would be
        // a core bug, and the task's memory is then freed with the task anyway.
        let _ = self.with_task(|task| task.unpin(va, len));
    }
}

impl UserMemory for TaskAccess {
    fn read(&mut self, _owner: OwnerId, va: u64, out: &mut [u8]) -> Result<(), Errno> {
        let bytes =
            self.with_task(|task| crate::syscall::copy_from_user(task, va, out.len() as u64))??;
        out.copy_from_slice(&bytes);
        Ok(())
    }

    fn write(&mut self, _owner: OwnerId, va: u64, data: &[u8]) -> Result<(), Errno> {
        self.with_task(|task| crate::syscall::copy_to_user(task, va, data))?
    }
}

type Core = Iommufd<Unit, TaskAccess>;

static CORE: spin::Mutex<Option<Core>> = spin::Mutex::new(None);

fn with_core<R>(task: &mut Task, f: impl FnOnce(&mut Core, OwnerId) -> R) -> R {
    let mut guard = CORE.lock();
    let core = guard.get_or_insert_with(|| Iommufd::new(Vec::new(), TaskAccess::default()));
    core.services_mut().task = Some(NonNull::from(&mut *task));
    let owner = OwnerId(task.owner);
    let result = f(core, owner);
    core.services_mut().task = None;
    result
}

/// Runs iommufd command `number` with the argument struct at `arg`.
pub fn call(task: &mut Task, number: u64, arg: u64) -> Result<(), Errno> {
    let command = Command::from_number(number).ok_or(Errno::ENOSYS)?;
    with_core(task, |core, owner| {
        // The core needs the task for memory and pinning through two traits;
        // both go through the same pointer, one access at a time.
        let mut memory = TaskAccess {
            task: core.services_mut().task,
        };
        core.ioctl(&mut memory, owner, command, arg)
    })
    .unwrap_or(Err(Errno::ENOSYS))
}

/// Tears down everything `task` owns in the core (before its memory goes).
pub fn release(task: &mut Task) {
    with_core(task, |core, owner| core.teardown(owner));
}

/// Objects the core holds for the task with owner id `owner` (leak checks).
pub fn object_count(owner: u64) -> usize {
    CORE.lock()
        .as_ref()
        .map_or(0, |core| core.object_count(OwnerId(owner)))
}

/// Bytes of task memory pinned for DMA, over all tasks (leak checks).
pub fn pinned_bytes() -> u64 {
    CORE.lock().as_ref().map_or(0, |core| core.pinned_bytes())
}
