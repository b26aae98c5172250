//! The iommufd system calls from a user task (issue: user tasks and the
//! syscall layer): the IOAS rules through real syscalls, and teardown at exit.

use crate::iommufd_service;
use crate::memory::frames;
use crate::platform::Platform;
use crate::task::Exit;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[Test {
    name: "iommufd::ioas_rules_hold_through_syscalls_and_exit_releases_everything",
    run: ioas_rules_hold_through_syscalls_and_exit_releases_everything,
}];

fn ioas_rules_hold_through_syscalls_and_exit_releases_everything(_: &Platform) -> TestResult {
    iommufd_service::prepare();
    let frames_before = frames::free_count();
    let pinned_before = iommufd_service::pinned_bytes();
    let program = super::spawn_program("ioas-semantics", 0)?;
    let owner = program.owner;
    let run = super::run_captured(alloc::vec![program]);
    let report = run.reports.first().ok_or("no report")?;
    ensure_eq!(
        report.exit,
        Exit::Code(0),
        alloc::format!("exit (failed check); it said {:?}", report.output)
    );
    // Where an IOMMU translates an edu, the rows that need a device ran too.
    let expected = if iommufd_service::unit_hw_info().is_some() {
        "59 checks held (with a device)"
    } else {
        "49 checks held (no translated edu here"
    };
    ensure!(
        report.output.contains(expected),
        "expected {expected:?} in {:?}",
        report.output
    );
    released_everything(owner, pinned_before, frames_before)?;
    Ok(Outcome::Passed)
}

/// After task `owner` ended: it holds no iommufd object, nothing it pinned is
/// still pinned, and every frame is back.
pub(super) fn released_everything(
    owner: u64,
    pinned_before: u64,
    frames_before: usize,
) -> Result<(), alloc::string::String> {
    ensure_eq!(
        iommufd_service::object_count(owner),
        0,
        "objects left after the task exited"
    );
    ensure_eq!(
        iommufd_service::pinned_bytes(),
        pinned_before,
        "pinned bytes after the task exited"
    );
    ensure_eq!(
        iommufd_service::open_devices(owner),
        0,
        "devices still open for the task (interrupt, window)"
    );
    ensure_eq!(
        frames::free_count(),
        frames_before,
        "free frames after the run"
    );
    Ok(())
}
