//! User tasks: ring 3 / EL0 programs embedded in the kernel, their isolation
//! from the kernel, the basic system calls and cooperative yielding. Every
//! test checks that all frames the tasks used come back.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::memory::frames;
use crate::platform::Platform;
use static_elf::ElfError;

use crate::task::{self, Exit, Output, Run, SpawnError};
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "tasks::hello_writes_and_exits_zero",
        run: hello_writes_and_exits_zero,
    },
    Test {
        name: "smp::four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once",
        run: four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once,
    },
    Test {
        name: "tasks::reading_kernel_memory_kills_the_task_and_the_kernel_goes_on",
        run: reading_kernel_memory_kills_the_task,
    },
    Test {
        name: "tasks::executing_kernel_code_kills_the_task",
        run: executing_kernel_code_kills_the_task,
    },
    Test {
        name: "tasks::undefined_instruction_kills_the_task",
        run: undefined_instruction_kills_the_task,
    },
    Test {
        name: "tasks::bad_pointers_and_numbers_are_error_codes",
        run: bad_pointers_and_numbers_are_error_codes,
    },
    Test {
        name: "tasks::memory_alloc_free_round_trip",
        run: memory_alloc_free_round_trip,
    },
    Test {
        name: "tasks::freed_memory_is_unmapped",
        run: freed_memory_is_unmapped,
    },
    Test {
        name: "tasks::two_tasks_take_turns_through_yield",
        run: two_tasks_take_turns_through_yield,
    },
    Test {
        name: "tasks::same_address_in_two_tasks_is_two_pages",
        run: same_address_in_two_tasks_is_two_pages,
    },
    Test {
        name: "tasks::pinned_memory_cannot_be_freed",
        run: pinned_memory_cannot_be_freed,
    },
    Test {
        name: "tasks::a_spinning_task_is_preempted_and_killed_at_its_budget",
        run: a_spinning_task_is_preempted_and_killed_at_its_budget,
    },
    Test {
        name: "tasks::idle_wakes_when_its_tick_fires_before_the_wait",
        run: idle_wakes_when_its_tick_fires_before_the_wait,
    },
    Test {
        name: "tasks::malformed_images_are_rejected",
        run: malformed_images_are_rejected,
    },
    Test {
        name: "tasks::unknown_program_is_an_error",
        run: unknown_program_is_an_error,
    },
];

/// The kernel image's first page (`linker/<arch>.ld`), where the programs that
/// attack the kernel aim.
#[cfg(target_arch = "x86_64")]
const KERNEL_IMAGE: u64 = 0x20_0000;
#[cfg(target_arch = "aarch64")]
const KERNEL_IMAGE: u64 = 0x4020_0000;

/// Runs `names` with captured output and checks that every frame returns.
fn run_checked(names: &[&str]) -> Result<Run, String> {
    let before = frames::free_count();
    let run =
        crate::scheduler::run(names, Output::Capture).map_err(|err| format!("spawn: {err:?}"))?;
    ensure_eq!(frames::free_count(), before, "free frames after the run");
    Ok(run)
}

fn single(name: &str) -> Result<(Exit, String, Run), String> {
    let run = run_checked(&[name])?;
    let report = run.reports.first().ok_or("no report")?.clone();
    Ok((report.exit, report.output, run))
}

fn killed_line(exit: &Exit) -> Result<&str, String> {
    match exit {
        Exit::Killed(line) => Ok(line),
        Exit::Code(code) => Err(format!("exited with code {code} instead of being killed")),
    }
}

fn hello_writes_and_exits_zero(_: &Platform) -> TestResult {
    let (exit, output, _) = single("hello")?;
    ensure_eq!(exit, Exit::Code(0), "exit");
    ensure_eq!(output.as_str(), "hello from user mode\n", "output");
    Ok(Outcome::Passed)
}

/// After a killed task, a fresh one must still run normally.
fn kernel_still_runs_tasks() -> Result<(), String> {
    let (exit, output, _) = single("hello")?;
    ensure_eq!(exit, Exit::Code(0), "hello after the kill");
    ensure!(
        output.contains("hello"),
        "hello after the kill wrote {output:?}"
    );
    Ok(())
}

fn reading_kernel_memory_kills_the_task(_: &Platform) -> TestResult {
    let (exit, output, run) = single("touch-kernel")?;
    let line = killed_line(&exit)?;
    ensure!(
        !output.contains("not protected"),
        "the task read kernel memory: {output:?}"
    );
    ensure!(
        line.contains(&format!("at {KERNEL_IMAGE:#x}")),
        "report does not name the address: {line:?}"
    );
    ensure!(
        run.transcript.iter().any(|(_, text)| text == line),
        "the report line is not in the transcript"
    );
    kernel_still_runs_tasks()?;
    Ok(Outcome::Passed)
}

fn executing_kernel_code_kills_the_task(_: &Platform) -> TestResult {
    let (exit, output, _) = single("jump-kernel")?;
    let line = killed_line(&exit)?;
    ensure!(
        !output.contains("ran in user mode"),
        "kernel code ran: {output:?}"
    );
    ensure!(
        line.contains(&format!("{KERNEL_IMAGE:#x}")),
        "report does not name the kernel address: {line:?}"
    );
    kernel_still_runs_tasks()?;
    Ok(Outcome::Passed)
}

fn undefined_instruction_kills_the_task(_: &Platform) -> TestResult {
    let (exit, output, _) = single("undefined")?;
    let line = killed_line(&exit)?;
    ensure!(!output.contains("did not trap"), "no trap: {output:?}");
    ensure!(
        line.contains("undefined instruction") || line.contains("invalid opcode"),
        "report does not say why: {line:?}"
    );
    kernel_still_runs_tasks()?;
    Ok(Outcome::Passed)
}

fn bad_pointers_and_numbers_are_error_codes(_: &Platform) -> TestResult {
    // The program opens a device: the IOMMU unit and its per-device
    // structures exist before the frame count starts.
    crate::iommufd_service::prepare();
    let (exit, output, _) = single("bad-args")?;
    ensure_eq!(
        exit,
        Exit::Code(0),
        "exit (number of the first failed check)"
    );
    ensure!(
        output.contains("write from kernel memory: EFAULT"),
        "output: {output:?}"
    );
    ensure!(
        output.contains("unknown system call: ENOSYS"),
        "output: {output:?}"
    );
    ensure!(
        output.contains("irq_wait on a device the task never opened: ENOENT"),
        "output: {output:?}"
    );
    // Where an IOMMU translates an edu, a device_open whose result cannot be
    // written back leaves the device free.
    if crate::iommufd_service::unit_hw_info().is_some() {
        ensure!(
            output.contains("device_open with a read-only argument struct: EFAULT")
                && output.contains("device_open with a read-only argument left"),
            "output: {output:?}"
        );
    }
    ensure!(
        output.ends_with("valid\n"),
        "the final valid write is missing: {output:?}"
    );
    Ok(Outcome::Passed)
}

fn memory_alloc_free_round_trip(_: &Platform) -> TestResult {
    let (exit, output, _) = single("memory")?;
    ensure_eq!(
        exit,
        Exit::Code(0),
        "exit (number of the first failed check)"
    );
    ensure!(output.contains("freed 5 pages"), "output: {output:?}");
    Ok(Outcome::Passed)
}

fn freed_memory_is_unmapped(_: &Platform) -> TestResult {
    let (exit, output, _) = single("use-after-free")?;
    let line = killed_line(&exit)?;
    ensure!(
        !output.contains("still mapped"),
        "freed memory stayed writable: {output:?}"
    );
    let heap = format!("{:#x}", task::HEAP_BASE);
    ensure!(
        line.contains(&format!("at {heap}")),
        "report does not name the freed page {heap}: {line:?}"
    );
    Ok(Outcome::Passed)
}

fn two_tasks_take_turns_through_yield(_: &Platform) -> TestResult {
    // One CPU and slices far longer than the programs run: only `yield`
    // switches tasks, so the order is exact.
    let before = frames::free_count();
    let limits = crate::scheduler::Limits {
        slice_ms: 60_000,
        cpus: 1,
        ..crate::scheduler::Limits::DEFAULT
    };
    let run = crate::scheduler::run_limited(&["ping", "pong"], Output::Capture, limits)
        .map_err(|err| format!("spawn: {err:?}"))?;
    ensure_eq!(frames::free_count(), before, "free frames after the run");
    for report in &run.reports {
        ensure_eq!(report.exit, Exit::Code(0), report.name);
    }
    // A line may arrive in several writes; merge each task's consecutive writes.
    let mut turns: Vec<(usize, String)> = Vec::new();
    for (index, text) in &run.transcript {
        match turns.last_mut() {
            Some((last, turn)) if last == index => turn.push_str(text),
            _ => turns.push((*index, text.clone())),
        }
    }
    let order: Vec<&str> = turns.iter().map(|(_, text)| text.as_str()).collect();
    let expected = [
        "ping 0\n", "pong 0\n", "ping 1\n", "pong 1\n", "ping 2\n", "pong 2\n",
    ];
    ensure_eq!(order.as_slice(), expected.as_slice(), "interleaving");
    Ok(Outcome::Passed)
}

fn same_address_in_two_tasks_is_two_pages(_: &Platform) -> TestResult {
    const MARKERS: [u8; 2] = [0xA5, 0x5A];
    let before = frames::free_count();
    let mut tasks = Vec::new();
    for marker in MARKERS {
        tasks.push(super::spawn_program("private", u64::from(marker))?);
    }
    let run = super::run_captured(tasks);
    ensure_eq!(frames::free_count(), before, "free frames after the run");
    for (report, marker) in run.reports.iter().zip(MARKERS) {
        ensure_eq!(report.exit, Exit::Code(0), report.name);
        ensure!(
            report
                .output
                .trim_end()
                .ends_with(&format!("kept {marker:#x}")),
            "task output {:?}",
            report.output
        );
    }
    let address = |output: &str| output.split_whitespace().nth(1).map(String::from);
    let (a, b) = (&run.reports[0].output, &run.reports[1].output);
    ensure!(
        address(a).is_some() && address(a) == address(b),
        "the tasks did not use the same address: {a:?} / {b:?}"
    );
    Ok(Outcome::Passed)
}

/// The hook `ioas_map` will use: only `mem_alloc` memory can be pinned, and
/// pinned memory cannot be freed until unpinned, not even by the task's end:
/// memory the iommufd core did not unpin at exit is memory it quarantined (a
/// device may still reach it), so its frames are withheld for good (issue 16:
/// they used to go back to the pool with the rest).
fn pinned_memory_cannot_be_freed(_: &Platform) -> TestResult {
    use abi::Errno;
    const PAGE: u64 = abi::syscall::PAGE_SIZE;
    let before = frames::free_count();
    let withheld = frames::withheld();
    {
        let mut task = task::Task::spawn("hello", task::kernel_root())
            .map_err(|err| format!("spawn: {err:?}"))?;
        let first = task
            .allocate(2)
            .map_err(|err| format!("allocate: {err:?}"))?;
        let second = task
            .allocate(1)
            .map_err(|err| format!("allocate: {err:?}"))?;
        let pinned = task
            .pin(first + PAGE, PAGE)
            .map_err(|err| format!("pin: {err:?}"))?;
        ensure_eq!(pinned.len(), 1, "frames pinned");
        ensure!(
            pinned[0] % PAGE == 0 && pinned[0] != 0,
            "frame {:#x}",
            pinned[0]
        );
        ensure_eq!(task.free(first, 2), Err(Errno::EBUSY), "free while pinned");
        // The guard page between allocations is not task memory.
        ensure_eq!(
            task.pin(first, 4 * PAGE),
            Err(Errno::EFAULT),
            "pin across the guard"
        );
        ensure_eq!(
            task.pin(first + 1, PAGE),
            Err(Errno::EINVAL),
            "unaligned pin"
        );
        ensure_eq!(
            task.pin(abi::syscall::USER_BASE, PAGE),
            Err(Errno::EFAULT),
            "pin program code"
        );
        ensure_eq!(task.unpin(first + PAGE, PAGE), Ok(()), "unpin");
        ensure_eq!(
            task.unpin(first + PAGE, PAGE),
            Err(Errno::EINVAL),
            "second unpin"
        );
        ensure_eq!(task.free(first, 2), Ok(()), "free after unpin");
        ensure_eq!(
            task.pin(second, PAGE).map(|f| f.len()),
            Ok(1),
            "pin left pinned at exit"
        );
        // Dropping the task (as an exit or a kill does) returns everything
        // but the pinned page.
    }
    ensure_eq!(frames::withheld() - withheld, 1, "frames withheld");
    ensure_eq!(frames::free_count(), before - 1, "free frames");
    Ok(Outcome::Passed)
}

/// The scheduler's idle arms the timer and waits for an interrupt. A tick due at
/// once (0 ms) fires between the two: the wait must still end, however the
/// tick was handled (a one-shot tick handled before the wait used to leave the
/// CPU waiting for good, seen as rare hangs of the two-task tests under load).
fn idle_wakes_when_its_tick_fires_before_the_wait(_: &Platform) -> TestResult {
    if !crate::scheduler::preemption_available() {
        return Ok(Outcome::NotApplicable(
            "no timer interrupt to wake the idle CPU",
        ));
    }
    for _ in 0..100 {
        crate::arch::user::idle(0);
    }
    Ok(Outcome::Passed)
}

fn a_spinning_task_is_preempted_and_killed_at_its_budget(_: &Platform) -> TestResult {
    if !crate::scheduler::preemption_available() {
        return Ok(Outcome::NotApplicable("no timer interrupt for preemption"));
    }
    const BUDGET_MS: u64 = 200;
    let before = frames::free_count();
    let started = crate::arch::now_ns();
    // The spinner goes first and one CPU runs both: `hello` only runs if
    // the spinner is preempted.
    let run = crate::scheduler::run_limited(
        &["spin", "hello"],
        Output::Capture,
        crate::scheduler::Limits {
            cpu_ms: BUDGET_MS,
            cpus: 1,
            ..crate::scheduler::Limits::DEFAULT
        },
    )
    .map_err(|err| format!("spawn: {err:?}"))?;
    let elapsed_ms = (crate::arch::now_ns() - started) / 1_000_000;
    ensure_eq!(frames::free_count(), before, "free frames after the run");
    let line = killed_line(&run.reports[0].exit)?;
    ensure!(
        line.contains("CPU time"),
        "spin was killed for another reason: {line:?}"
    );
    ensure_eq!(run.reports[1].exit, Exit::Code(0), "hello");
    ensure_eq!(
        run.reports[1].output.as_str(),
        "hello from user mode\n",
        "hello's output"
    );
    // hello ran while spin was still alive: its line comes before the kill report.
    let position = |needle: &str| {
        run.transcript
            .iter()
            .position(|(_, text)| text.contains(needle))
    };
    ensure!(
        position("hello from user mode") < position("killed"),
        "hello only ran after the spinner died: {:?}",
        run.transcript
    );
    ensure!(
        (BUDGET_MS..20 * BUDGET_MS).contains(&elapsed_ms),
        "the run took {elapsed_ms} ms for a {BUDGET_MS} ms budget"
    );
    Ok(Outcome::Passed)
}

fn malformed_images_are_rejected(_: &Platform) -> TestResult {
    let image = task::programs::find("hello").ok_or("hello is not embedded")?;
    let before = frames::free_count();
    let spawn =
        |bytes: &[u8]| match task::Task::spawn_image("malformed", bytes, task::kernel_root()) {
            Ok(_) => Err(String::from("accepted")),
            Err(SpawnError::Elf(err)) => Ok(err),
            Err(other) => Err(format!("{other:?}")),
        };
    let patched = |offset: usize, bytes: &[u8]| {
        let mut copy = image.to_vec();
        copy[offset..offset + bytes.len()].copy_from_slice(bytes);
        copy
    };
    let phoff = u64::from_le_bytes(image[32..40].try_into().map_err(|_| "phoff")?) as usize;
    // The first program header is the code segment (user/link.ld).
    let first_vaddr = phoff + 16;
    let first_filesz = phoff + 32;
    let first_flags = phoff + 4;
    let cases: Vec<(&str, Vec<u8>, ElfError)> = alloc::vec![
        (
            "truncated header",
            image[..40].to_vec(),
            ElfError::Truncated
        ),
        ("bad magic", patched(0, b"\x7fELG"), ElfError::BadMagic),
        ("32-bit class", patched(4, &[1]), ElfError::WrongFormat),
        (
            "wrong machine",
            patched(18, &3u16.to_le_bytes()),
            ElfError::WrongMachine(3)
        ),
        (
            "shared object",
            patched(16, &3u16.to_le_bytes()),
            ElfError::NotExecutable(3)
        ),
        (
            "bad phentsize",
            patched(54, &32u16.to_le_bytes()),
            ElfError::BadHeaderSize
        ),
        (
            "program headers past the end",
            patched(32, &(image.len() as u64).to_le_bytes()),
            ElfError::BadProgramHeaderTable,
        ),
        (
            "segment in kernel space",
            patched(first_vaddr, &KERNEL_IMAGE.to_le_bytes()),
            ElfError::SegmentOutsideImage,
        ),
        (
            "segment wrapping the address space",
            patched(first_vaddr, &(u64::MAX - 0xFFF).to_le_bytes()),
            ElfError::SegmentOutsideImage,
        ),
        (
            "file size beyond the file",
            patched(first_filesz, &u64::MAX.to_le_bytes()),
            ElfError::FileSizeExceedsMemorySize,
        ),
        (
            "segment bytes past the end of the file",
            patched(phoff + 8, &(image.len() as u64).to_le_bytes()),
            ElfError::SegmentOutsideFile,
        ),
        (
            "writable code",
            patched(first_flags, &7u32.to_le_bytes()),
            ElfError::WritableAndExecutable
        ),
        (
            "entry outside the code",
            patched(24, &0x1000u64.to_le_bytes()),
            ElfError::BadEntry
        ),
    ];
    for (what, bytes, expected) in cases {
        ensure_eq!(spawn(&bytes), Ok(expected), what);
    }
    ensure_eq!(frames::free_count(), before, "free frames");
    Ok(Outcome::Passed)
}

fn unknown_program_is_an_error(_: &Platform) -> TestResult {
    let before = frames::free_count();
    // The first program is spawned before the unknown name is found: its
    // memory must come back too.
    match crate::scheduler::run(&["hello", "no-such-program"], Output::Capture) {
        Err(SpawnError::UnknownProgram(name)) => {
            ensure_eq!(name.as_str(), "no-such-program", "name")
        }
        Err(other) => return Err(format!("unexpected error {other:?}")),
        Ok(_) => return Err(String::from("an unknown program was started")),
    }
    ensure_eq!(frames::free_count(), before, "free frames");
    Ok(Outcome::Passed)
}

/// Rounds of map/unmap each `ioas-churn` task makes.
const CHURN_ROUNDS: u64 = 400;
/// Tasks (and CPUs) of the SMP run.
const SMP_TASKS: usize = 4;

/// Issue 20: four tasks on four CPUs at once. Where IOMMUs translate the
/// edus, one `edu-dma` task per edu (map, DMA both ways, unmap, DMA blocked,
/// fault read) runs beside `ioas-churn` tasks, each mapping and unmapping in
/// its own IOAS and checking every answer against its model. The scheduler
/// must have run them on four CPUs with several running at one moment, and
/// afterwards everything is back (objects, charges, pinned pages, frames).
fn four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once(_: &Platform) -> TestResult {
    let online = crate::arch::online_cpus();
    if online < 2 {
        return Ok(Outcome::NotApplicable("one CPU online"));
    }
    crate::iommufd_service::prepare();
    // A first run of each edu's driver lets its unit build what it keeps
    // per device for good (VT-d scalable mode's PASID tables), outside the
    // measured run; edus no IOMMU translates take no part.
    let mut edus = 0;
    for index in 0..2 {
        let warm_up = super::spawn_program("edu-dma", index)?;
        let run = super::run_captured(alloc::vec![warm_up]);
        match &run.reports[0].exit {
            Exit::Code(0) => edus += 1,
            Exit::Code(super::NO_DEVICE) => break,
            other => {
                return Err(format!(
                    "edu-dma {index} warm-up: {other:?}; it said {:?}",
                    run.reports[0].output
                ));
            }
        }
    }
    let baseline = super::Baseline::now();
    let mut tasks = Vec::new();
    for index in 0..edus {
        tasks.push(super::spawn_program("edu-dma", index)?);
    }
    while tasks.len() < SMP_TASKS {
        tasks.push(super::spawn_program("ioas-churn", CHURN_ROUNDS)?);
    }
    let owners: Vec<u64> = tasks.iter().map(|task| task.owner).collect();
    crate::iommufd_service::take_most_fills();
    // One CPU a task, no more: on a machine with more CPUs than tasks, the
    // run must keep to its limit (tasks change CPUs between turns, so a run
    // on every CPU would spread them over more).
    let run = super::run_captured_with(
        tasks,
        crate::scheduler::Limits {
            cpus: SMP_TASKS,
            ..crate::scheduler::Limits::DEFAULT
        },
    );
    for report in &run.reports {
        ensure_eq!(
            report.exit,
            Exit::Code(0),
            format!("{} exit; it said {:?}", report.name, report.output)
        );
        if report.name == "ioas-churn" {
            ensure!(
                report
                    .output
                    .contains(&format!("{CHURN_ROUNDS} operations matched the model")),
                "unexpected output {:?}",
                report.output
            );
        }
    }
    let parallelism = crate::scheduler::last_parallelism();
    let cpus = online.min(SMP_TASKS);
    ensure_eq!(
        parallelism.cpus_used.count_ones() as usize,
        cpus,
        format!("CPUs that ran a turn ({:#b})", parallelism.cpus_used)
    );
    ensure!(
        parallelism.most_running >= 2,
        "never two tasks running at once ({parallelism:?})"
    );
    if let Err(cpu) = crate::arch::cpu_stacks_intact() {
        return Err(format!("CPU {cpu} ran past the bottom of its stack"));
    }
    let deepest = (1..online)
        .map(crate::arch::cpu_stack_used)
        .max()
        .unwrap_or(0);
    // Only a figure: whether two CPUs' fills meet depends on timing.
    let fills = crate::iommufd_service::take_most_fills();
    println!(
        "    smp: {edus} DMA tasks; the deepest secondary CPU stack used {deepest} bytes; \
         at most {fills} map/unmap fills ran on one unit at once"
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}
