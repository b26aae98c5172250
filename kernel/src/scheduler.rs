//! The scheduler: runs spawned tasks round-robin and run-to-trap, on the
//! calling CPU and on as many others as [`Limits::cpus`] allows, until each
//! has exited or been killed; then gives back what it held, devices and
//! iommufd objects first.
//!
//! [`run_tasks`] keeps a FIFO of runnable tasks shared by the CPUs of the
//! run: the secondary CPUs sleep in [`serve_secondary_cpu`] until a run is
//! offered (`work_sharing::Offer`; a reschedule IPI wakes them), take a
//! seat if one is left, and leave when no task is. Each CPU takes the task
//! at the head, which runs until it makes a system call, faults or uses up
//! its time slice ([`TIME_SLICE_MS`]; the slice covers the kernel's time for
//! its calls; a one-shot timer: the local APIC timer on x86_64, the EL1
//! virtual timer on aarch64). Most calls return to the same task at once;
//! `yield` and the end of a slice move it to the back of the queue; `exit`
//! and a fault end it; `irq_wait` takes it off the queue until its device's
//! interrupt arrives or the wait times out (a CPU with nothing to run
//! sleeps until an interrupt or its next tick). A task that runs longer
//! than its CPU budget ([`Limits`]) or makes more than [`SYSCALL_BUDGET`]
//! calls is killed, so a runaway program cannot hang the kernel or a test.
//! Without a timer scheduling falls back to cooperative. It sits above the
//! system calls and the iommufd service it drives; tasks themselves
//! (`crate::task`) know nothing of it.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use work_sharing::Offer;

use crate::cpu_activity::{self, Activity};

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
    /// How many CPUs may run the tasks at once (at most the CPUs online):
    /// the calling CPU and up to `cpus - 1` others.
    pub cpus: usize,
}

impl Limits {
    /// Every CPU online, the default budget and slice. Runs whose tasks
    /// must take their first turns in spawn order ask for one CPU. (Until
    /// the x86 local APIC ran in x2APIC mode, runs used one CPU by default:
    /// QEMU's multi-threaded TCG lost xAPIC MMIO accesses, QEMU.md §6
    /// item 5.)
    pub const DEFAULT: Limits = Limits {
        cpu_ms: DEFAULT_CPU_MS,
        slice_ms: TIME_SLICE_MS,
        cpus: ALL_CPUS,
    };
}

/// [`Limits::cpus`] for "every CPU online".
pub const ALL_CPUS: usize = usize::MAX;

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

/// One run's tasks, shared by the CPUs that work on it. A task is in
/// exactly one place: its slot in `tasks` (queued or waiting) or on the CPU
/// running it, which took it out of the slot.
struct RunState {
    tasks: Vec<Option<Task>>,
    /// Runnable tasks, by index, in the order they get their turn.
    queue: VecDeque<usize>,
    /// Tasks in `irq_wait`, with what they wait for.
    waiting: Vec<(usize, crate::syscall::InterruptWait)>,
    /// Tasks that have not ended.
    live: usize,
    /// Tasks running on some CPU now, and the most there ever were at once.
    running: usize,
    most_running: usize,
    /// The CPUs (by index, one bit each) that ran a turn of this run.
    cpus_used: u64,
}

struct SharedRun {
    limits: Limits,
    kernel_root: u64,
    mode: Output,
    state: spin::Mutex<RunState>,
    result: spin::Mutex<Run>,
    /// Set once the CPUs are seated (or the wait for them ended): no CPU
    /// takes a task before, so a short run still spreads over all of them
    /// rather than finishing on the first CPU awake.
    started: AtomicBool,
}

/// How long a run waits for the CPUs it offered seats to.
const SEATING_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(1);

/// Where the CPU that starts a run lends it to the others: the run lives on
/// its stack, and `work_sharing::Offer` makes sure no helper is still inside
/// it when it returns (see that crate for the protocol and its model).
static OFFER: Offer<SharedRun> = Offer::new();

/// How a run went on several CPUs, for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parallelism {
    /// The CPUs (one bit per index) that ran a turn.
    pub cpus_used: u64,
    /// The most tasks running at one moment.
    pub most_running: usize,
}

/// What the last multi-CPU run recorded.
static LAST_PARALLELISM: spin::Mutex<Parallelism> = spin::Mutex::new(Parallelism {
    cpus_used: 0,
    most_running: 0,
});

/// How the last run with [`Limits::cpus`] above 1 used the CPUs.
pub fn last_parallelism() -> Parallelism {
    *LAST_PARALLELISM.lock()
}

/// Runs already-spawned tasks to completion, on this CPU and on up to
/// `limits.cpus - 1` others.
pub fn run_tasks(
    mut tasks: Vec<Option<Task>>,
    output: Output,
    kernel_root: u64,
    limits: Limits,
) -> Run {
    let result = Run {
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
    let helpers = limits
        .cpus
        .min(crate::arch::online_cpus())
        .saturating_sub(1);
    let live = tasks.iter().flatten().count();
    let run = SharedRun {
        limits,
        kernel_root,
        mode: output,
        state: spin::Mutex::new(RunState {
            queue: (0..tasks.len()).filter(|&i| tasks[i].is_some()).collect(),
            tasks,
            waiting: Vec::new(),
            live,
            running: 0,
            most_running: 0,
            cpus_used: 0,
        }),
        result: spin::Mutex::new(result),
        started: AtomicBool::new(helpers == 0),
    };
    if helpers == 0 {
        work(&run);
    } else {
        OFFER.lend(
            &run,
            helpers as u32,
            |run| {
                // Every secondary CPU is asleep between runs: waking as many
                // as there are seats fills them.
                for cpu in 1..=helpers {
                    crate::arch::wake_cpu(cpu);
                }
                let _ = os_services::wait_until(&crate::time::CLOCK, SEATING_TIMEOUT, || {
                    (OFFER.seats_left() == 0).then_some(())
                });
                run.started.store(true, Ordering::SeqCst);
                work(run);
            },
            core::hint::spin_loop,
        );
        if let Err(cpu) = crate::arch::cpu_stacks_intact() {
            panic!("CPU {cpu} ran past the bottom of its stack");
        }
        let state = run.state.lock();
        *LAST_PARALLELISM.lock() = Parallelism {
            cpus_used: state.cpus_used,
            most_running: state.most_running,
        };
    }
    run.result.into_inner()
}

/// A secondary CPU's life once it is up: sleeps until a run is offered,
/// joins it if there is a seat, works on it until its tasks are done.
pub fn serve_secondary_cpu() -> ! {
    let mut seen = 0;
    loop {
        cpu_activity::set(Activity::Asleep);
        crate::arch::sleep_unless(|| OFFER.generation() != seen);
        seen = OFFER.generation();
        OFFER.join(work);
    }
}

/// How one turn of a task ended.
enum TurnEnd {
    /// It can run again: back to the queue.
    Ready,
    /// It waits for its device's interrupt.
    Waits(crate::syscall::InterruptWait),
    /// It exited or was killed.
    Ended(Exit),
}

/// One CPU's part of a run: takes the next runnable task, runs its turn,
/// puts it back, until no task is left.
fn work(run: &SharedRun) {
    let mut sink = Sink {
        mode: run.mode,
        run: &run.result,
    };
    let cpu_bit = 1u64 << crate::arch::current_cpu_index();
    cpu_activity::set(Activity::Seated);
    while !run.started.load(Ordering::SeqCst) {
        core::hint::spin_loop();
    }
    loop {
        crate::iommufd_service::dispatch_pending_faults();
        let next = {
            let mut state = run.state.lock();
            if state.live == 0 {
                return;
            }
            let RunState {
                tasks,
                queue,
                waiting,
                ..
            } = &mut *state;
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
            let next = state
                .queue
                .pop_front()
                .and_then(|index| Some((index, state.tasks[index].take()?)));
            if next.is_some() {
                state.running += 1;
                state.most_running = state.most_running.max(state.running);
                state.cpus_used |= cpu_bit;
            }
            next
        };
        let Some((index, mut task)) = next else {
            // Nothing to run here: every task waits for a device or runs
            // on another CPU. Sleep until an interrupt (a tick at most).
            cpu_activity::set(Activity::Idle);
            arch::idle(IDLE_TICK_MS);
            continue;
        };
        cpu_activity::set(Activity::RunningTask);
        let end = run_turn(&mut task, index, &mut sink, run);
        match end {
            TurnEnd::Ready | TurnEnd::Waits(_) => {
                let mut state = run.state.lock();
                state.tasks[index] = Some(task);
                state.running -= 1;
                match end {
                    TurnEnd::Waits(wait) => state.waiting.push((index, wait)),
                    _ => state.queue.push_back(index),
                }
            }
            TurnEnd::Ended(exit) => {
                cpu_activity::set(Activity::Finishing);
                finish(task, index, exit, &mut sink);
                let mut state = run.state.lock();
                state.running -= 1;
                state.live -= 1;
            }
        }
    }
}

/// Runs `task` for one turn on this CPU: until its slice is used, it
/// yields, waits, exits or is killed.
fn run_turn(task: &mut Task, index: usize, sink: &mut Sink, run: &SharedRun) -> TurnEnd {
    let limits = run.limits;
    // SAFETY: the task's root copies the kernel entries of the boot tables.
    unsafe { arch::switch_root(task.space.root()) };
    // The slice is the task's whole turn, the time the kernel spends on
    // its system calls included: a call never grants a fresh slice, and
    // that time counts against its CPU budget too.
    let slice_ns = limits.slice_ms.saturating_mul(1_000_000);
    let turn_started = crate::arch::now_ns();
    let mut started = turn_started;
    let end = loop {
        let now = crate::arch::now_ns();
        task.cpu_ns += now.saturating_sub(started);
        started = now;
        if task.cpu_ns > limits.cpu_ms.saturating_mul(1_000_000) {
            break TurnEnd::Ended(Exit::Killed(format!(
                "task {} killed: used more than {} ms of CPU time",
                task.name, limits.cpu_ms
            )));
        }
        let spent = now.saturating_sub(turn_started);
        if spent >= slice_ns {
            break TurnEnd::Ready;
        }
        arch::arm_preemption(slice_ns - spent);
        arch::run(&mut task.context);
        arch::disarm_preemption();
        match task.context.trap() {
            Trap::Preempted => break TurnEnd::Ready,
            Trap::Syscall { number, args } => {
                task.syscalls += 1;
                if task.syscalls > SYSCALL_BUDGET {
                    break TurnEnd::Ended(Exit::Killed(format!(
                        "task {} killed: more than {SYSCALL_BUDGET} system calls",
                        task.name
                    )));
                }
                match crate::syscall::dispatch(task, index, sink, number, &args) {
                    crate::syscall::Action::Return(value) => task.context.set_syscall_result(value),
                    crate::syscall::Action::Yield => {
                        task.context.set_syscall_result(0);
                        break TurnEnd::Ready;
                    }
                    crate::syscall::Action::Exit(code) => break TurnEnd::Ended(Exit::Code(code)),
                    crate::syscall::Action::WaitForInterrupt(wait) => break TurnEnd::Waits(wait),
                }
            }
            Trap::Fault {
                what,
                address,
                code,
                pc,
            } => {
                let address = address.map_or(String::new(), |a| format!(" at {a:#x}"));
                break TurnEnd::Ended(Exit::Killed(format!(
                    "task {} killed: {what}{address} (pc {pc:#x}, code {code:#x})",
                    task.name
                )));
            }
        }
    };
    task.cpu_ns += crate::arch::now_ns().saturating_sub(started);
    // SAFETY: the boot tables map the kernel.
    unsafe { arch::switch_root(run.kernel_root) };
    end
}

/// Records how task `index` ended and gives back what it held: its iommufd
/// objects first (devices blocked, pinned pages released after the IOTLB
/// flush); dropping the task then returns its memory and tables.
fn finish(mut task: Task, index: usize, exit: Exit, sink: &mut Sink) {
    if let Exit::Killed(line) = &exit {
        sink.report(index, line.clone());
    }
    sink.run.lock().reports[index].exit = exit;
    crate::iommufd_service::release(&mut task);
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
    drop(task);
    // What the kernel still holds for it is the kernel's now.
    crate::memory::heap_charges::reparent(owner);
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
