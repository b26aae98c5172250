//! The kernel survives any task (the `hostile` hogs): a task that takes all
//! it may gets ENOSPC and the other tasks go on; a task that makes system
//! calls without end still gives the CPU away when its slice is over.

use alloc::format;
use alloc::string::String;

use super::Baseline;
use crate::platform::Platform;
use crate::task::Exit;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "survival::a_task_at_its_limits_gets_enospc_and_the_others_go_on",
        run: a_task_at_its_limits_gets_enospc_and_the_others_go_on,
    },
    Test {
        name: "survival::a_task_at_its_heap_quota_gets_enomem_and_the_others_go_on",
        run: a_task_at_its_heap_quota_gets_enomem_and_the_others_go_on,
    },
    Test {
        name: "survival::a_task_at_its_domain_limit_gets_enospc_and_the_others_go_on",
        run: a_task_at_its_domain_limit_gets_enospc_and_the_others_go_on,
    },
    Test {
        name: "survival::tasks_start_only_while_the_heap_can_back_their_quotas",
        run: tasks_start_only_while_the_heap_can_back_their_quotas,
    },
    Test {
        name: "survival::the_heap_grows_from_free_frames_and_into_its_reserve",
        run: the_heap_grows_from_free_frames_and_into_its_reserve,
    },
    Test {
        name: "survival::system_calls_never_grant_a_fresh_time_slice",
        run: system_calls_never_grant_a_fresh_time_slice,
    },
    Test {
        name: "survival::page_table_pages_are_charged_to_the_task_that_maps",
        run: page_table_pages_are_charged_to_the_task_that_maps,
    },
    Test {
        name: "survival::the_cpu_budget_counts_the_time_of_system_calls",
        run: the_cpu_budget_counts_the_time_of_system_calls,
    },
    Test {
        name: "survival::a_heap_quota_reached_at_any_step_leaves_nothing_behind",
        run: a_heap_quota_reached_at_any_step_leaves_nothing_behind,
    },
    Test {
        name: "survival::a_failed_page_allocation_at_any_step_leaves_nothing_behind",
        run: a_failed_page_allocation_at_any_step_leaves_nothing_behind,
    },
];

/// The hogs of the `hostile` program (its argument's top byte).
const HOG_LIMITS: u64 = 14;
const HOG_SYSCALLS: u64 = 15;
const HOG_TABLES: u64 = 16;
const HOG_KERNEL_TIME: u64 = 17;
const FAIL_NTH: u64 = 18;
const HOG_HEAP: u64 = 19;
const HOG_DOMAINS: u64 = 20;
/// The heap hog's quota in the test: reached long before the object limit.
const HEAP_HOG_QUOTA: usize = 64 * 1024;
/// More pages than opening, attaching and four sparse maps take anywhere.
const FAIL_NTH_MOST_PAGES: usize = 40;
/// The table hog's page limit in the test: small, so that it runs quickly.
const TABLE_HOG_PAGES: usize = 96;

/// Where `text` first appears in the run's transcript.
fn position(run: &crate::task::Run, text: &str) -> Option<usize> {
    run.transcript
        .iter()
        .position(|(_, line)| line.contains(text))
}

/// Runs hostile `attack` on edu 0 beside `edu-dma` on edu `worker_edu`,
/// with `during` set up around the run (a limit lowered, say) and undone
/// after; checks that the hog exits 0 and the worker finishes (0, or 77
/// where no IOMMU translates an edu), then that everything is given back.
/// Returns the hog's output for the caller's own checks.
fn hog_beside_edu_dma(
    attack: u64,
    worker_edu: u64,
    during: impl FnOnce() -> alloc::boxed::Box<dyn FnOnce()>,
) -> Result<String, String> {
    let baseline = Baseline::now();
    let hog = super::spawn_hostile(attack, 0)?;
    let worker = super::spawn_program("edu-dma", worker_edu)?;
    let owners = [hog.owner, worker.owner];
    let undo = during();
    let run = super::run_captured(alloc::vec![hog, worker]);
    undo();
    let (hog, worker) = (&run.reports[0], &run.reports[1]);
    ensure_eq!(hog.exit, Exit::Code(0), format!("hog: {:?}", hog.output));
    let worker_done = if crate::iommufd_service::unit_hw_info().is_some() {
        Exit::Code(0)
    } else {
        Exit::Code(77)
    };
    ensure_eq!(
        worker.exit,
        worker_done,
        format!("edu-dma beside the hog: {:?}", worker.output)
    );
    baseline.check(&owners)?;
    Ok(hog.output.clone())
}

/// Nothing to set up around a hog's run.
fn nothing() -> alloc::boxed::Box<dyn FnOnce()> {
    alloc::boxed::Box::new(|| {})
}

/// The count after `marker` in `output` ("ENOMEM after 37 maps": 37).
fn count_after(output: &str, marker: &str) -> Result<usize, String> {
    output
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| format!("no {marker:?} in {output:?}"))
}

fn a_task_at_its_limits_gets_enospc_and_the_others_go_on(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let limits = iommufd::Limits::DEFAULT;
    let output = hog_beside_edu_dma(HOG_LIMITS, 0, nothing)?;
    for line in [
        format!("ENOSPC after {} IOASes", limits.objects),
        format!("ENOSPC after {} areas", limits.areas),
    ] {
        ensure!(output.contains(&line), "no {line:?} in {output:?}");
    }
    Ok(Outcome::Passed)
}

/// The heap quota bounds what a task's calls make the kernel hold: the hog
/// is refused with ENOMEM once it holds its quota, sees that in `limits`,
/// gets an IOAS again after one `destroy`, and the other task's DMA works
/// meanwhile; nothing stays charged.
fn a_task_at_its_heap_quota_gets_enomem_and_the_others_go_on(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    let output = hog_beside_edu_dma(HOG_HEAP, 0, || {
        let quota = crate::memory::heap_charges::set_quota(HEAP_HOG_QUOTA);
        alloc::boxed::Box::new(move || {
            crate::memory::heap_charges::set_quota(quota);
        })
    })?;
    let ioases = count_after(&output, "ENOMEM after ")?;
    ensure!(
        ioases > 0 && ioases < iommufd::Limits::DEFAULT.objects,
        "refused after {ioases} IOASes with a quota of {HEAP_HOG_QUOTA} bytes"
    );
    ensure!(
        output.contains("an IOAS again after one destroy"),
        "the hog did not recover: {output:?}"
    );
    Ok(Outcome::Passed)
}

/// Hardware domain ids are a finite space of the unit: a task that
/// allocates HWPTs without end is refused (ENOSPC) at its domain limit, as
/// `limits` reports, and the other task still gets a domain for its DMA.
fn a_task_at_its_domain_limit_gets_enospc_and_the_others_go_on(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    if crate::iommufd_service::unit_hw_info().is_none() {
        return Ok(Outcome::NotApplicable("no IOMMU: no domains"));
    }
    let output = hog_beside_edu_dma(HOG_DOMAINS, 1, nothing)?;
    let line = format!("ENOSPC after {} HWPTs", iommufd::Limits::DEFAULT.domains);
    ensure!(output.contains(&line), "no {line:?} in {output:?}");
    Ok(Outcome::Passed)
}

/// Every live task's heap quota is set aside: spawning stops (out of
/// memory) once the quotas of the tasks alive fill what the heap can back,
/// and starts again when a task is gone, so that no set of tasks, each
/// within its quota, can run the heap out.
fn tasks_start_only_while_the_heap_can_back_their_quotas(_: &Platform) -> TestResult {
    let free_before = crate::memory::frames::free_count();
    let mut alive = alloc::vec::Vec::new();
    let refused = loop {
        ensure!(alive.len() < 64, "64 tasks alive and no refusal");
        match crate::task::Task::spawn("hello", crate::task::kernel_root()) {
            Ok(task) => alive.push(task),
            Err(err) => break err,
        }
    };
    let count = alive.len();
    ensure!(
        matches!(refused, crate::task::SpawnError::OutOfMemory),
        "refused for another reason: {refused:?}"
    );
    let quota = crate::memory::heap_charges::quota();
    ensure!(
        count >= 4 && count * quota <= 48 << 20,
        "{count} tasks of {quota} bytes each before the refusal"
    );
    alive.pop();
    let again = crate::task::Task::spawn("hello", crate::task::kernel_root())
        .map_err(|err| format!("no task after one went: {err:?}"))?;
    drop(again);
    drop(alive);
    ensure_eq!(
        crate::memory::frames::free_count(),
        free_before,
        "free frames"
    );
    Ok(Outcome::Passed)
}

/// Kernel allocations past the first arena take frames, even when the
/// frames outside the heap's reserve are gone (as a task's memory can take
/// them), and the frames come back when the allocations go.
fn the_heap_grows_from_free_frames_and_into_its_reserve(_: &Platform) -> TestResult {
    use crate::memory::frames;
    const CHUNK: usize = 1 << 20;
    let free_before = frames::free_count();
    let used_before = crate::memory::heap_used();
    // Everyone else's frames taken, one frame at a time (no run is needed).
    let mut taken = alloc::vec::Vec::new();
    taken
        .try_reserve_exact(free_before)
        .map_err(|_| "no room to list the frames")?;
    while let Some(frame) = frames::alloc() {
        taken.push(frame);
    }
    let left = frames::free_count();
    let result = (|| -> TestResult {
        ensure_eq!(left, frames::HEAP_RESERVE, "frames left to the heap");
        // Chunks until the first arena is full and the heap has grown
        // into the reserve, and one more.
        let mut chunks = alloc::vec::Vec::new();
        while crate::memory::heap_charges::grown_frames() == 0 {
            ensure!(
                chunks.len() < 64,
                "64 MiB of chunks and the heap never grew"
            );
            chunks.push(alloc::vec![chunks.len() as u8; CHUNK]);
        }
        chunks.push(alloc::vec![chunks.len() as u8; CHUNK]);
        ensure!(
            chunks
                .iter()
                .enumerate()
                .all(|(n, chunk)| chunk.iter().all(|&b| b == n as u8)),
            "heap memory corrupted"
        );
        drop(chunks);
        ensure_eq!(
            crate::memory::heap_charges::grown_frames(),
            0,
            "grown arenas kept after their allocations went"
        );
        ensure_eq!(frames::free_count(), left, "frames after the heap shrank");
        Ok(Outcome::Passed)
    })();
    for frame in taken.drain(..) {
        frames::free(frame);
    }
    drop(taken);
    ensure_eq!(crate::memory::heap_used(), used_before, "heap bytes in use");
    ensure_eq!(frames::free_count(), free_before, "free frames");
    result
}

fn system_calls_never_grant_a_fresh_time_slice(_: &Platform) -> TestResult {
    if !crate::scheduler::preemption_available() {
        return Ok(Outcome::NotApplicable("no preemption timer"));
    }
    let baseline = Baseline::now();
    let hog = super::spawn_hostile(HOG_SYSCALLS, 0)?;
    let other = super::spawn_program("hello", 0)?;
    let owners = [hog.owner, other.owner];
    // One CPU: the other task runs only if the hog's slice ends (with a CPU
    // of its own it would run anyway and prove nothing).
    let run = super::run_captured_on_one_cpu(alloc::vec![hog, other]);
    ensure_eq!(
        run.reports[0].exit,
        Exit::Code(0),
        format!("hog: {:?}", run.reports[0].output)
    );
    ensure_eq!(run.reports[1].exit, Exit::Code(0), "hello");
    let hog_done = position(&run, "syscall hog done").ok_or("the hog never finished")?;
    let hello = position(&run, "hello from user mode").ok_or("hello never ran")?;
    ensure!(
        hello < hog_done,
        "the other task ran only after the hog's {} calls",
        300_000
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

/// A task whose mappings need a page-table page each is refused (ENOMEM)
/// once its pages reach its limit, well before the frames run out, and the
/// other task's DMA still works; every page is uncharged at the end.
fn page_table_pages_are_charged_to_the_task_that_maps(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    if crate::iommufd_service::unit_hw_info().is_none() {
        return Ok(Outcome::NotApplicable("no IOMMU: no page tables to charge"));
    }
    let output = hog_beside_edu_dma(HOG_TABLES, 1, || {
        let limit = crate::memory::dma::set_limit(TABLE_HOG_PAGES);
        alloc::boxed::Box::new(move || {
            crate::memory::dma::set_limit(limit);
        })
    })?;
    let maps = count_after(&output, "ENOMEM after ")?;
    // Each map 2 MiB from the last needs a leaf table of its own; the
    // levels above and the device structures take a few more.
    ensure!(
        maps < TABLE_HOG_PAGES && maps + 8 >= TABLE_HOG_PAGES / 2,
        "refused after {maps} maps with a limit of {TABLE_HOG_PAGES} pages"
    );
    Ok(Outcome::Passed)
}

/// A task that spends its time in system calls is killed by its CPU budget
/// as surely as one that spins in user mode: alone on the CPU, it dies after
/// about its budget of wall time. (A guard, not a before-and-after proof:
/// since every struct is capped at a page, no call keeps the kernel long
/// enough for the old user-time-only charge to differ by the 10x margin.)
fn the_cpu_budget_counts_the_time_of_system_calls(_: &Platform) -> TestResult {
    const BUDGET_MS: u64 = 100;
    crate::iommufd_service::prepare();
    let baseline = Baseline::now();
    let hog = super::spawn_hostile(HOG_KERNEL_TIME, 0)?;
    let owners = [hog.owner];
    let started = crate::arch::now_ns();
    let run = super::run_captured_with(
        alloc::vec![hog],
        crate::scheduler::Limits {
            cpu_ms: BUDGET_MS,
            ..crate::scheduler::Limits::DEFAULT
        },
    );
    let ran_ms = (crate::arch::now_ns() - started) / 1_000_000;
    let Exit::Killed(why) = &run.reports[0].exit else {
        return Err(format!("the hog was not killed: {:?}", run.reports[0]));
    };
    ensure!(why.contains("CPU time"), "killed for another reason: {why}");
    ensure!(
        ran_ms < 10 * BUDGET_MS,
        "a {BUDGET_MS} ms budget let the hog run {ran_ms} ms"
    );
    baseline.check(&owners)?;
    Ok(Outcome::Passed)
}

/// Fail-nth over the kernel's own device structures and IO page tables: a
/// task opens its edu, attaches it and maps four sparse pages with a page
/// limit of 0, 1, 2, ... pages, so that the allocation that fails moves
/// through every step (device-table, context-table or interrupt-table
/// pages at open and attach, page-table pages at each map). Each run must
/// end with ENOMEM or success and give back every frame, object, pin,
/// handler and charged page.
fn a_failed_page_allocation_at_any_step_leaves_nothing_behind(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    if crate::iommufd_service::unit_hw_info().is_none() {
        return Ok(Outcome::NotApplicable("no IOMMU: nothing to allocate"));
    }
    let limit = crate::memory::dma::set_limit(0);
    let result = (|| -> TestResult {
        let mut stops: alloc::vec::Vec<String> = alloc::vec::Vec::new();
        for pages in 0..=FAIL_NTH_MOST_PAGES {
            crate::memory::dma::set_limit(pages);
            let baseline = Baseline::now();
            let task = super::spawn_hostile(FAIL_NTH, 0)?;
            let owner = task.owner;
            let run = super::run_captured(alloc::vec![task]);
            let report = &run.reports[0];
            ensure_eq!(
                report.exit,
                Exit::Code(0),
                format!("with {pages} pages: {:?}", report.output)
            );
            // Charged pages included.
            baseline.check(&[owner])?;
            if report.output.contains("every step done") {
                // The failing allocation moved through the device's own
                // structures (a scrub domain at open, the domain at attach)
                // and the page tables of the maps.
                for step in ["stopped at device_", "stopped at ioas_map"] {
                    ensure!(
                        stops.iter().any(|stop| stop.contains(step)),
                        "no run {step}: {stops:?}"
                    );
                }
                return Ok(Outcome::Passed);
            }
            stops.push(report.output.clone());
        }
        Err(format!(
            "{FAIL_NTH_MOST_PAGES} pages were not enough: {:?}",
            stops.last()
        ))
    })();
    crate::memory::dma::set_limit(limit);
    result
}

/// Heap quota steps of [`a_heap_quota_reached_at_any_step_leaves_nothing_behind`].
const HEAP_STEP: usize = 512;
const HEAP_MOST: usize = 256 * 1024;

/// Fail-nth over the kernel heap: the `FAIL_NTH` program (open, attach,
/// four maps) runs with a heap quota of 1 byte, then [`HEAP_STEP`] bytes
/// more each time, so the call refused for the quota moves through every
/// step: each run ends in ENOMEM or success, with every frame, object,
/// pin, handler and heap byte given back.
fn a_heap_quota_reached_at_any_step_leaves_nothing_behind(_: &Platform) -> TestResult {
    crate::iommufd_service::prepare();
    if crate::iommufd_service::unit_hw_info().is_none() {
        return Ok(Outcome::NotApplicable("no IOMMU: no device to open"));
    }
    let mut stops: alloc::vec::Vec<String> = alloc::vec::Vec::new();
    let mut quota = 1;
    while quota <= HEAP_MOST {
        let baseline = Baseline::now();
        let task = super::spawn_hostile(FAIL_NTH, 0)?;
        let owner = task.owner;
        let old = crate::memory::heap_charges::set_quota(quota);
        let run = super::run_captured(alloc::vec![task]);
        crate::memory::heap_charges::set_quota(old);
        let report = &run.reports[0];
        ensure_eq!(
            report.exit,
            Exit::Code(0),
            format!("with a quota of {quota} bytes: {:?}", report.output)
        );
        baseline.check(&[owner])?;
        if report.output.contains("every step done") {
            // device_open comes first, when the task holds nothing yet: a
            // quota refuses only a task that already holds it.
            for step in [
                "stopped at ioas_alloc",
                "stopped at device_attach",
                "stopped at mem_alloc",
                "stopped at ioas_map",
            ] {
                ensure!(
                    stops.iter().any(|stop| stop.contains(step)),
                    "no run {step}: {stops:?}"
                );
            }
            return Ok(Outcome::Passed);
        }
        if stops.last() != Some(&report.output) {
            stops.push(report.output.clone());
        }
        quota += HEAP_STEP;
    }
    Err(format!(
        "{HEAP_MOST} bytes were not enough: {:?}",
        stops.last()
    ))
}
