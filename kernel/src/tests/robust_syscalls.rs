//! The syscall fuzzer (robustness issue): a task makes 10,000 seeded calls
//! (about half of them iommufd calls on IOASes) with valid, boundary and
//! garbage arguments and checks every answer against its model; the kernel
//! checks that it survived and that every frame, object and pin came back.

use alloc::format;

use crate::memory::frames;
use crate::platform::Platform;
use crate::task::Exit;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[Test {
    name: "robust::syscalls::fuzzer_agrees_with_its_model_and_leaks_nothing",
    run: fuzzer_agrees_with_its_model_and_leaks_nothing,
}];

/// Seed used when the command line gives none (`seed=N` replays another).
const DEFAULT_SEED: u64 = 0x1005_eed5_f022_5eed;

fn fuzzer_agrees_with_its_model_and_leaks_nothing(_: &Platform) -> TestResult {
    let seed = crate::testing::seed().unwrap_or(DEFAULT_SEED);
    // The iommufd core (and the IOMMU unit behind it) exists before counting.
    crate::iommufd_service::prepare();
    let frames_before = frames::free_count();
    let pinned_before = crate::iommufd_service::pinned_bytes();
    let fuzzer = super::spawn_program("syscall-fuzz", seed)?;
    let owner = fuzzer.owner;
    let run = super::run_captured(alloc::vec![fuzzer]);
    let report = run.reports.first().ok_or("no report")?;
    println!("syscall fuzzer: seed {seed:#x} (replay with `cargo xtask test --seed {seed}`)");
    ensure_eq!(
        report.exit,
        Exit::Code(0),
        format!("fuzzer exit; it said {:?}", report.output)
    );
    ensure!(
        report.output.contains("10000 calls") && report.output.contains(" iommufd)"),
        "fuzzer output: {:?}",
        report.output
    );
    // The summary line (the fuzzed writes before it print random bytes).
    if let Some(at) = report.output.rfind("syscall-fuzz: seed") {
        println!("    {}", report.output[at..].trim_end());
    }
    super::iommufd_syscalls::released_everything(owner, pinned_before, frames_before)?;
    fuzz_at_the_limits(seed)
}

/// Limits the model reaches (it holds up to 4 IOASes of 8 areas each).
const SMALL_LIMITS: iommufd::Limits = iommufd::Limits {
    objects: 3,
    areas: 10,
    ..iommufd::Limits::DEFAULT
};

/// A second run, with limits the fuzzer runs into: it finds them by trying,
/// then expects ENOSPC whenever its model is at one (and nothing else).
fn fuzz_at_the_limits(seed: u64) -> TestResult {
    let frames_before = frames::free_count();
    let pinned_before = crate::iommufd_service::pinned_bytes();
    let fuzzer = super::spawn_program("syscall-fuzz", seed ^ 0x5A5A)?;
    let owner = fuzzer.owner;
    let limits = crate::iommufd_service::set_limits(SMALL_LIMITS);
    let run = super::run_captured(alloc::vec![fuzzer]);
    crate::iommufd_service::set_limits(limits);
    let report = run.reports.first().ok_or("no report")?;
    ensure_eq!(
        report.exit,
        Exit::Code(0),
        format!("fuzzer at small limits; it said {:?}", report.output)
    );
    let found = format!(
        "limits: Some({}) objects, Some({}) areas",
        SMALL_LIMITS.objects, SMALL_LIMITS.areas
    );
    ensure!(
        report.output.contains(&found),
        "the fuzzer did not find the limits: {:?}",
        report.output
    );
    super::iommufd_syscalls::released_everything(owner, pinned_before, frames_before)?;
    Ok(Outcome::Passed)
}
