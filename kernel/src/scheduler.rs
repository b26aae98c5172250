//! The scheduler: runs spawned tasks on the one CPU, round-robin and
//! run-to-trap, until each has exited or been killed; then gives back what
//! it held, devices and iommufd objects first.
//!
//! [`run_tasks`] keeps a FIFO of runnable tasks; the task at its head runs
//! until it makes a system call, faults or uses up its time slice
//! ([`TIME_SLICE_MS`]; the slice covers the kernel's time for its calls; a
//! one-shot timer: the local APIC timer on x86_64, the EL1 virtual timer on
//! aarch64). Most calls return to the same task at once; `yield` and the end
//! of a slice move it to the back of the queue; `exit` and a fault end it;
//! `irq_wait` takes it off the queue until its device's interrupt arrives or
//! the wait times out (when every task waits, the CPU sleeps until an
//! interrupt). A task that runs longer than its CPU budget ([`Limits`]) or
//! makes more than [`SYSCALL_BUDGET`] calls is killed, so a runaway program
//! cannot hang the kernel or a test. Without a timer scheduling falls back to
//! cooperative. It sits above the system calls and the iommufd service it
//! drives; tasks themselves (`crate::task`) know nothing of it.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::arch::user as arch;
use crate::task::{
    DEFAULT_CPU_MS, Exit, Output, Report, Run, Sink, SpawnError, Task, Trap, kernel_root, programs,
};

/// System calls one task may make in one [`run`].
pub const SYSCALL_BUDGET: u64 = 1_000_000;
/// How long a task runs before the others get their turn (by default).
pub const TIME_SLICE_MS: u64 = 10;
/// Longest sleep while every task waits in `irq_wait` (the deadlines' grain).
const IDLE_TICK_MS: u64 = 1;

/// Resource limits of one [`run_limited`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// CPU time (in user mode, interrupts included) one task may use.
    pub cpu_ms: u64,
    /// How long a task runs before the next one gets its turn.
    pub slice_ms: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        cpu_ms: DEFAULT_CPU_MS,
        slice_ms: TIME_SLICE_MS,
    };
}

/// Whether running tasks can be preempted on this machine.
pub fn preemption_available() -> bool {
    arch::preemption_available()
}

/// Starts the programs `names` (in that order) and runs them until every
/// one has exited or been killed; every frame they used is free again when
/// this returns.
pub fn run(names: &[&str], output: Output) -> Result<Run, SpawnError> {
    run_limited(names, output, Limits::DEFAULT)
}

/// [`run`] with explicit limits.
pub fn run_limited(names: &[&str], output: Output, limits: Limits) -> Result<Run, SpawnError> {
    let kernel_root = kernel_root();
    let mut tasks = Vec::new();
    for name in names {
        tasks.push(Some(Task::spawn(name, kernel_root)?));
    }
    Ok(run_tasks(tasks, output, kernel_root, limits))
}

/// Runs already-spawned tasks to completion.
pub fn run_tasks(
    mut tasks: Vec<Option<Task>>,
    output: Output,
    kernel_root: u64,
    limits: Limits,
) -> Run {
    let mut result = Run {
        reports: tasks
            .iter()
            .flatten()
            .map(|task| Report {
                name: task.name,
                exit: Exit::Code(0),
                output: String::new(),
            })
            .collect(),
        transcript: Vec::new(),
    };
    for task in tasks.iter_mut().flatten() {
        task.cpu_budget_ns = limits.cpu_ms.saturating_mul(1_000_000);
    }
    let mut queue: VecDeque<usize> = (0..tasks.len()).collect();
    let mut waiting: Vec<(usize, crate::syscall::InterruptWait)> = Vec::new();
    let mut sink = Sink {
        mode: output,
        run: &mut result,
    };
    loop {
        crate::iommufd_service::dispatch_pending_faults();
        waiting.retain(|&(index, wait)| {
            let Some(task) = tasks[index].as_mut() else {
                return false;
            };
            let Some(result) = wait.poll(task.owner) else {
                return true;
            };
            task.context.set_syscall_result(result);
            queue.push_back(index);
            false
        });
        let Some(index) = queue.pop_front() else {
            if waiting.is_empty() {
                break;
            }
            // Everybody waits for a device: sleep until an interrupt.
            arch::idle(IDLE_TICK_MS);
            continue;
        };
        let Some(task) = tasks[index].as_mut() else {
            continue;
        };
        // SAFETY: the task's root copies the kernel entries of the boot tables.
        unsafe { arch::switch_root(task.space.root()) };
        // The slice is the task's whole turn, the time the kernel spends on
        // its system calls included: a call never grants a fresh slice, and
        // that time counts against its CPU budget too.
        let slice_ns = limits.slice_ms.saturating_mul(1_000_000);
        let turn_started = crate::arch::now_ns();
        let mut started = turn_started;
        let ended = loop {
            let now = crate::arch::now_ns();
            task.cpu_ns += now.saturating_sub(started);
            started = now;
            if task.cpu_ns > limits.cpu_ms.saturating_mul(1_000_000) {
                break Some(Exit::Killed(format!(
                    "task {} killed: used more than {} ms of CPU time",
                    task.name, limits.cpu_ms
                )));
            }
            let spent = now.saturating_sub(turn_started);
            if spent >= slice_ns {
                queue.push_back(index);
                break None;
            }
            arch::arm_preemption(slice_ns - spent);
            arch::run(&mut task.context);
            arch::disarm_preemption();
            match task.context.trap() {
                Trap::Preempted => {
                    queue.push_back(index);
                    break None;
                }
                Trap::Syscall { number, args } => {
                    task.syscalls += 1;
                    if task.syscalls > SYSCALL_BUDGET {
                        break Some(Exit::Killed(format!(
                            "task {} killed: more than {SYSCALL_BUDGET} system calls",
                            task.name
                        )));
                    }
                    match crate::syscall::dispatch(task, index, &mut sink, number, &args) {
                        crate::syscall::Action::Return(value) => {
                            task.context.set_syscall_result(value)
                        }
                        crate::syscall::Action::Yield => {
                            task.context.set_syscall_result(0);
                            queue.push_back(index);
                            break None;
                        }
                        crate::syscall::Action::Exit(code) => break Some(Exit::Code(code)),
                        crate::syscall::Action::WaitForInterrupt(wait) => {
                            waiting.push((index, wait));
                            break None;
                        }
                    }
                }
                Trap::Fault {
                    what,
                    address,
                    code,
                    pc,
                } => {
                    let address = address.map_or(String::new(), |a| format!(" at {a:#x}"));
                    break Some(Exit::Killed(format!(
                        "task {} killed: {what}{address} (pc {pc:#x}, code {code:#x})",
                        task.name
                    )));
                }
            }
        };
        task.cpu_ns += crate::arch::now_ns().saturating_sub(started);
        // SAFETY: the boot tables map the kernel.
        unsafe { arch::switch_root(kernel_root) };
        if let Some(exit) = ended {
            if let Exit::Killed(line) = &exit {
                sink.report(index, line.clone());
            }
            sink.run.reports[index].exit = exit;
            // Its iommufd objects go first (devices blocked, pinned pages
            // released after the IOTLB flush); dropping the task then returns
            // its memory and tables.
            if let Some(task) = tasks[index].as_mut() {
                crate::iommufd_service::release(task);
                let withheld = task.withhold_pinned();
                if withheld > 0 {
                    sink.report(
                        index,
                        format!(
                            "kernel: {withheld} frames of {} kept for good: a device may still reach them",
                            task.name
                        ),
                    );
                }
                let owner = task.owner;
                tasks[index] = None;
                // What the kernel still holds for it is the kernel's now.
                crate::memory::heap_charges::reparent(owner);
            }
        }
    }
    result
}

/// The demo of `tasks=a,b` on the command line: runs the named programs
/// together with their output on the console, then reports how each ended.
/// Returns the number of problems (unknown program, leaked frames).
pub fn demo(list: &str) -> usize {
    let names: Vec<&str> = list.split(',').filter(|name| !name.is_empty()).collect();
    if names.is_empty() {
        return 0;
    }
    crate::iommufd_service::prepare();
    let frames_before = crate::memory::frames::free_count();
    println!("tasks: starting {}", names.join(", "));
    let run = match run(&names, Output::Console) {
        Ok(run) => run,
        Err(err) => {
            let known: Vec<&str> = programs::names().collect();
            println!(
                "tasks: cannot start: {err:?} (programs: {})",
                known.join(", ")
            );
            return 1;
        }
    };
    for report in &run.reports {
        match &report.exit {
            Exit::Code(code) => println!("tasks: {} exited with code {code}", report.name),
            Exit::Killed(_) => println!("tasks: {} was killed", report.name),
        }
    }
    let frames_after = crate::memory::frames::free_count();
    if frames_after != frames_before {
        println!(
            "tasks: {} frames not returned",
            frames_before.abs_diff(frames_after)
        );
        return 1;
    }
    println!("tasks: all frames returned ({frames_after} free)");
    0
}
