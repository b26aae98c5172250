//! The system call layer: one dispatch table for both architectures.
//!
//! `arch::user` decodes the number and six arguments from the trapped
//! registers (convention in `abi::syscall`); [`dispatch`] looks the number up
//! in [`TABLE`] and runs the handler in ordinary kernel context with the
//! task's address space active. Every pointer and length is checked against
//! the task's own pages before use (`EFAULT` otherwise), and user memory is
//! reached through the kernel's identity map of the frames behind it, never
//! through the user address, so a bad argument cannot fault the kernel.

use alloc::string::String;

use abi::Errno;
use abi::syscall as nr;

use crate::task::{Access, Sink, Task};

/// What the scheduler does after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume the task with this result in its return register.
    Return(i64),
    /// Run the other tasks first (the call returns 0).
    Yield,
    /// End the task.
    Exit(i32),
    /// Take the task off the CPU until its device interrupts or the wait
    /// times out (`irq_wait`); the other tasks run meanwhile.
    WaitForInterrupt(InterruptWait),
}

/// A task blocked in `irq_wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptWait {
    pub dev_id: u32,
    /// `arch::now_ns` time after which the call fails with `ETIMEDOUT`.
    pub deadline_ns: u64,
}

impl InterruptWait {
    /// The call's result once the task may run again, or `None` while it
    /// still waits.
    pub fn poll(&self, owner: u64) -> Option<i64> {
        match crate::iommufd_service::collect_interrupts(owner, self.dev_id) {
            Ok(0) if crate::arch::now_ns() < self.deadline_ns => None,
            Ok(0) => Some(Errno::ETIMEDOUT.to_syscall_return()),
            Ok(count) => Some(count as i64),
            Err(errno) => Some(errno.to_syscall_return()),
        }
    }
}

/// Everything a handler may touch.
pub struct Call<'a, 'b> {
    pub task: &'a mut Task,
    pub index: usize,
    pub sink: &'a mut Sink<'b>,
}

type Handler = fn(&mut Call, &[u64; nr::MAX_ARGS]) -> Result<Action, Errno>;

/// The dispatch table: (number, name, handler). The iommufd calls
/// (`abi::syscall::DESTROY..=DEVICE_DETACH`) go to `crate::iommufd_service`
/// before this table is consulted.
pub static TABLE: &[(u64, &str, Handler)] = &[
    (nr::WRITE, "write", write),
    (nr::EXIT, "exit", exit),
    (nr::YIELD, "yield", yield_now),
    (nr::MEM_ALLOC, "mem_alloc", mem_alloc),
    (nr::MEM_FREE, "mem_free", mem_free),
    (nr::IRQ_WAIT, "irq_wait", irq_wait),
    (nr::CLOCK, "clock", clock),
    (nr::LIMITS, "limits", limits),
];

/// Runs system call `number` for task `index`.
pub fn dispatch(
    task: &mut Task,
    index: usize,
    sink: &mut Sink,
    number: u64,
    args: &[u64; nr::MAX_ARGS],
) -> Action {
    // What the kernel allocates for the call is the task's (memory::heap).
    let charged = crate::memory::charge_to(Some(task.owner));
    let action = dispatch_charged(task, index, sink, number, args);
    crate::memory::charge_to(charged);
    action
}

/// Whether call `number` may leave the kernel holding more heap for the
/// task: refused (ENOMEM) while the task holds its heap quota. `destroy`
/// and `mem_free` give back; the rest keep nothing (`write` output is the
/// kernel's, bounded by `task::MAX_KEPT_OUTPUT`).
fn may_grow_the_heap(number: u64) -> bool {
    number == nr::MEM_ALLOC
        || abi::Command::from_number(number).is_some_and(|command| command != abi::Command::Destroy)
}

fn dispatch_charged(
    task: &mut Task,
    index: usize,
    sink: &mut Sink,
    number: u64,
    args: &[u64; nr::MAX_ARGS],
) -> Action {
    // Rust's collections cannot fail one allocation at a time, so a task
    // holding its quota is refused before the call allocates anything.
    if may_grow_the_heap(number) && crate::memory::heap_charges::over_quota(task.owner) {
        return Action::Return(Errno::ENOMEM.to_syscall_return());
    }
    if abi::Command::from_number(number).is_some() {
        return match crate::iommufd_service::call(task, number, args[0]) {
            Ok(()) => Action::Return(0),
            Err(errno) => Action::Return(errno.to_syscall_return()),
        };
    }
    let Some((_, _, handler)) = TABLE.iter().find(|(n, _, _)| *n == number) else {
        return Action::Return(Errno::ENOSYS.to_syscall_return());
    };
    let mut call = Call { task, index, sink };
    match handler(&mut call, args) {
        Ok(action) => action,
        Err(errno) => Action::Return(errno.to_syscall_return()),
    }
}

/// Largest single `write` (bytes): more is `EINVAL` rather than a long stall.
pub const MAX_WRITE: u64 = 64 * 1024;

fn write(call: &mut Call, args: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    let (address, len) = (args[0], args[1]);
    // The range is checked before the size cap, so a bad pointer with a huge
    // length is a fault, as Linux reports it.
    call.task.space.user_range(address, len, Access::READ)?;
    if len > MAX_WRITE {
        return Err(Errno::EINVAL);
    }
    let bytes = call.task.copy_from_user(address, len)?;
    // The run keeps the text after the task is gone: the kernel's.
    let text = crate::memory::uncharged(|| String::from_utf8_lossy(&bytes).into_owned());
    call.sink.write(call.index, text);
    Ok(Action::Return(len as i64))
}

fn exit(_: &mut Call, args: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    Ok(Action::Exit(args[0] as u32 as i32))
}

fn yield_now(_: &mut Call, _: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    Ok(Action::Yield)
}

fn mem_alloc(call: &mut Call, args: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    let address = call.task.allocate(args[0])?;
    Ok(Action::Return(address as i64))
}

fn mem_free(call: &mut Call, args: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    call.task.free(args[0], args[1])?;
    Ok(Action::Return(0))
}

/// Answers at once what the scheduler's poll would (pending interrupts, an
/// error, or a timeout of 0 expired), else takes the task off the CPU.
fn irq_wait(call: &mut Call, args: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    let dev_id = u32::try_from(args[0]).map_err(|_| Errno::EINVAL)?;
    let timeout_ns = args[1].min(nr::IRQ_WAIT_MAX_NS);
    let wait = InterruptWait {
        dev_id,
        deadline_ns: crate::arch::now_ns().saturating_add(timeout_ns),
    };
    Ok(match wait.poll(call.task.owner) {
        Some(result) => Action::Return(result),
        None => Action::WaitForInterrupt(wait),
    })
}

fn clock(_: &mut Call, _: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    // Nanoseconds since boot fit an i64 for 292 years.
    Ok(Action::Return(crate::arch::now_ns() as i64))
}

fn limits(call: &mut Call, args: &[u64; nr::MAX_ARGS]) -> Result<Action, Errno> {
    let (address, len) = (args[0], args[1]);
    let owner = call.task.owner;
    let [objects, areas, domains] = crate::iommufd_service::holdings(owner);
    let (cpu_ns, memory_pages) = call.task.cpu_and_memory();
    let report = abi::TaskLimits {
        objects,
        areas,
        domains,
        dma_pages: abi::Limit {
            limit: crate::memory::dma::limit() as u64,
            used: crate::memory::dma::charged_pages(owner) as u64,
        },
        heap_bytes: abi::Limit {
            limit: crate::memory::heap_charges::quota() as u64,
            used: crate::memory::heap_charges::charged(owner) as u64,
        },
        memory_pages,
        cpu_ns,
    };
    let bytes = abi::as_bytes(&report);
    let written = bytes.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    call.task.copy_to_user(address, &bytes[..written])?;
    Ok(Action::Return(bytes.len() as i64))
}
