//! The in-kernel test runner.
//!
//! Tests are plain functions registered in [`crate::tests::ALL`]. Each returns
//! `Ok`, a failure with its reason, or "not applicable here" with the reason
//! (for hardware that this configuration does not have: never counted as
//! passed). Output follows libtest's shape so that the host can check it:
//! `running N tests`, `test NAME ... ok|FAILED: why|ignored, not applicable: why`
//! and a closing `N passed, M failed, K skipped`.

use alloc::string::String;

use crate::cmdline::Cmdline;
use crate::platform::Platform;

/// What one test concluded.
pub enum Outcome {
    Passed,
    /// The configuration lacks the hardware the test is about.
    #[cfg_attr(
        target_arch = "x86_64",
        allow(
            dead_code,
            reason = "only the aarch64 MSI test and the IOMMU groups report it"
        )
    )]
    NotApplicable(&'static str),
}

/// A test's result: `Err` carries the failure reason.
pub type TestResult = Result<Outcome, String>;

/// A registered test. `repr(C)`: the host reads the registry out of the
/// kernel ELF to list the tests without booting (`qemu_tests::static_tests`),
/// so the field order is fixed.
#[repr(C)]
pub struct Test {
    pub name: &'static str,
    pub run: fn(&Platform) -> TestResult,
}

/// Fails the current test with a formatted reason when the condition is false.
macro_rules! ensure {
    ($cond:expr, $($reason:tt)*) => {
        if !$cond {
            return Err(alloc::format!($($reason)*));
        }
    };
}

/// Fails the current test unless both sides are equal, showing both.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $what:expr) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(alloc::format!("{}: {:?} != {:?}", $what, left, right));
        }
    }};
}

/// The `seed=` of the command line, for randomised tests.
static SEED: spin::Once<Option<u64>> = spin::Once::new();

/// The seed the command line gave, if any.
pub fn seed() -> Option<u64> {
    SEED.get().copied().flatten()
}

/// The test running now, for the panic report.
static RUNNING: spin::Mutex<Option<&'static str>> = spin::Mutex::new(None);

/// The name of the test running now, if any (read by the panic handler).
pub fn running_test() -> Option<&'static str> {
    RUNNING.try_lock().and_then(|running| *running)
}

/// Names every test the filter selects, one `listed NAME` line each, then
/// `N listed`; runs none (whether one applies is decided when it runs).
/// Returns 0: nothing failed.
pub fn list_all(groups: &[&[Test]], cmdline: &Cmdline) -> usize {
    let mut listed = 0;
    for test in groups.iter().flat_map(|group| group.iter()) {
        if cmdline
            .filter
            .is_none_or(|filter| test.name.contains(filter))
        {
            println!("listed {}", test.name);
            listed += 1;
        }
    }
    println!("{listed} listed");
    0
}

/// Runs every test the filter selects; returns the number that failed.
pub fn run_all(groups: &[&[Test]], cmdline: &Cmdline, platform: &Platform) -> usize {
    SEED.call_once(|| cmdline.seed);
    let selected = || {
        groups
            .iter()
            .flat_map(|group| group.iter())
            .filter(move |test| {
                cmdline
                    .filter
                    .is_none_or(|filter| test.name.contains(filter))
            })
    };
    println!("running {} tests", selected().count());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for test in selected() {
        // The verdict line is printed whole after the test, so that anything
        // the test prints lands above it instead of splitting it; a panic
        // names the running test instead.
        *RUNNING.lock() = Some(test.name);
        let result = (test.run)(platform);
        *RUNNING.lock() = None;
        match result {
            Ok(Outcome::Passed) => {
                passed += 1;
                println!("test {} ... ok", test.name);
            }
            Ok(Outcome::NotApplicable(why)) => {
                skipped += 1;
                println!("test {} ... ignored, not applicable: {why}", test.name);
            }
            Err(why) => {
                failed += 1;
                println!("test {} ... FAILED: {why}", test.name);
            }
        }
    }
    for (repairs, what) in crate::arch::emulator_repairs() {
        if repairs > 0 {
            println!("note: {repairs} {what} (QEMU.md §6)");
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    failed
}
