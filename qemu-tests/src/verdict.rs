//! Judging a test-mode boot: what must hold for a configuration to pass.

use std::fmt;
use std::time::Duration;

use crate::boot::{BootOptions, BootOutcome, Exit, boot, kernel_for, workspace};
use crate::config::{Arch, Config};
use crate::report::Summary;

/// The kernel command line: a mode word and `key=value` options, space-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCmdline(Vec<String>);

impl KernelCmdline {
    /// `mode` is `demo`, `test` or `bench`.
    pub fn new(mode: &str) -> KernelCmdline {
        KernelCmdline(vec![mode.to_string()])
    }

    /// Adds `key=value`; a value with whitespace would split into two words.
    pub fn option(mut self, key: &str, value: &str) -> Result<KernelCmdline, String> {
        if value.is_empty() || value.contains(char::is_whitespace) {
            return Err(format!(
                "{key}={value:?}: the kernel command line is space-separated, so the value must be one non-empty word"
            ));
        }
        self.0.push(format!("{key}={value}"));
        Ok(self)
    }
}

impl fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// What a test-mode boot is asked to do.
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// `filter=SUBSTR`: only tests whose name contains it.
    pub filter: Option<String>,
    /// `seed=N`.
    pub seed: Option<u64>,
    pub timeout: Duration,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            filter: None,
            seed: None,
            timeout: crate::boot::DEFAULT_TIMEOUT,
        }
    }
}

impl TestOptions {
    /// Options from `QEMU_TESTS_FILTER`, `QEMU_TESTS_SEED` and `QEMU_TESTS_TIMEOUT`
    /// (seconds), for `cargo test -p qemu-tests`.
    pub fn from_env() -> Result<TestOptions, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str| -> Result<Option<u64>, String> {
            var(name)
                .map(|v| v.parse().map_err(|e| format!("{name}={v}: {e}")))
                .transpose()
        };
        Ok(TestOptions {
            filter: var("QEMU_TESTS_FILTER"),
            seed: number("QEMU_TESTS_SEED")?,
            timeout: number("QEMU_TESTS_TIMEOUT")?
                .map_or(crate::boot::DEFAULT_TIMEOUT, Duration::from_secs),
        })
    }

    pub fn cmdline(&self) -> Result<KernelCmdline, String> {
        let mut cmdline = KernelCmdline::new("test");
        if let Some(filter) = &self.filter {
            cmdline = cmdline.option("filter", filter)?;
        }
        if let Some(seed) = self.seed {
            cmdline = cmdline.option("seed", &seed.to_string())?;
        }
        Ok(cmdline)
    }

    /// Without a filter, a configuration must pass at least its known number of
    /// tests; a filter may legitimately match none of them.
    pub fn min_tests(&self, config: &Config) -> u32 {
        if self.filter.is_some() {
            0
        } else {
            config.min_tests()
        }
    }
}

/// A configuration that failed, with everything needed to see why.
#[derive(Clone, Debug)]
pub struct Failure {
    pub config: &'static str,
    pub problems: Vec<String>,
    /// The boot, when there was one.
    pub outcome: Option<Box<BootOutcome>>,
}

const LOG_TAIL_LINES: usize = 30;

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration {} failed:", self.config)?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        let Some(outcome) = &self.outcome else {
            return Ok(());
        };
        writeln!(
            f,
            "  rerun: cargo xtask run --config {} --cmdline {}",
            self.config,
            crate::config::shell_quote(&outcome.cmdline)
        )?;
        writeln!(f, "  qemu:  {}", outcome.command_line)?;
        writeln!(
            f,
            "--- last {LOG_TAIL_LINES} lines of {} ---",
            outcome.log_path.display()
        )?;
        for line in tail(&outcome.serial, LOG_TAIL_LINES) {
            writeln!(f, "{line}")?;
        }
        if let Some(backtraces) = crate::symbolize::symbolized(&outcome.serial, &outcome.kernel) {
            writeln!(f, "---")?;
            write!(f, "{backtraces}")?;
        }
        if !outcome.stderr.trim().is_empty() {
            writeln!(f, "--- QEMU stderr ---")?;
            for line in tail(&outcome.stderr, LOG_TAIL_LINES) {
                writeln!(f, "{line}")?;
            }
        }
        write!(f, "---")
    }
}

impl std::error::Error for Failure {}

fn tail(text: &str, count: usize) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(count);
    lines.into_iter().skip(skip)
}

/// Everything wrong with a test-mode boot; empty means it passed.
pub fn problems(outcome: &BootOutcome, min_tests: u32) -> Vec<String> {
    let report = &outcome.report;
    let mut problems = Vec::new();
    // QEMU that fails (a bad option, a missing firmware file) exits before
    // the kernel prints a byte: its own complaint is the news, not the kernel.
    let kernel_silent = outcome.serial.trim().is_empty();
    match &outcome.exit {
        Exit::Code(0) => {}
        Exit::Code(code) if kernel_silent => {
            problems.push(qemu_failed_to_start(*code, &outcome.stderr))
        }
        Exit::Code(code) => problems.push(describe_exit_code(outcome.config.arch, *code)),
        Exit::Killed(how) => problems.push(format!("QEMU ended without a status: {how}")),
        Exit::TimedOut(after) => problems.push(format!(
            "timed out after {} s (hung, killed){}",
            after.as_secs(),
            report
                .unfinished
                .as_ref()
                .map(|test| format!(" inside test {test}"))
                .unwrap_or_default()
        )),
        Exit::NotStarted(why) => problems.push(why.clone()),
    }
    if let Some(panic) = &report.panic {
        let inside = report
            .unfinished
            .as_ref()
            .map(|test| format!(" in test {test}"))
            .unwrap_or_default();
        problems.push(format!("kernel panic{inside}: {panic}"));
    }
    for test in report.failed_tests() {
        if let crate::report::TestOutcome::Failed(why) = &test.outcome {
            problems.push(format!("test {} FAILED: {why}", test.name));
        }
    }
    match report.summary {
        None => {
            if matches!(outcome.exit, Exit::Code(_)) && !kernel_silent {
                problems
                    .push("the kernel never printed its closing `N passed, M failed` line".into());
            }
        }
        Some(summary) => {
            let Summary { passed, failed, .. } = summary;
            if failed != 0 {
                problems.push(format!("the kernel reported {summary}"));
            }
            if passed < min_tests {
                problems.push(format!(
                    "only {passed} tests passed; {} is known to have at least {min_tests}",
                    outcome.config.name
                ));
            }
            let lines = report.tests.len() as u64;
            if summary.total() != lines {
                problems.push(format!(
                    "the closing line counts {} tests but the log has {lines} test lines",
                    summary.total()
                ));
            }
            if let Some(announced) = report.announced
                && u64::from(announced) != summary.total()
            {
                problems.push(format!(
                    "the kernel announced {announced} tests but finished {}",
                    summary.total()
                ));
            }
        }
    }
    problems
}

/// QEMU exited with `code` before the kernel printed anything: what QEMU
/// said about it (its first line on stderr).
fn qemu_failed_to_start(code: i32, stderr: &str) -> String {
    let said = stderr
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("nothing on stderr");
    format!("QEMU failed before the kernel printed anything (status {code}): {said}")
}

fn describe_exit_code(arch: Arch, code: i32) -> String {
    match arch {
        // isa-debug-exit turns the kernel's value v into (v << 1) | 1.
        Arch::X86_64 if code % 2 == 1 => format!(
            "QEMU exited with status {code}: the kernel reported failure (isa-debug-exit value {})",
            code >> 1
        ),
        Arch::X86_64 => format!("QEMU exited with status {code} (QEMU itself failed?)"),
        Arch::Aarch64 => format!("QEMU exited with status {code}: the kernel exited non-zero"),
    }
}

/// Builds the kernel (once per process), boots `config` in test mode and judges the
/// result. On success returns the kernel's closing line.
pub fn run_boot_test(
    config: &'static Config,
    options: &TestOptions,
) -> Result<(Summary, BootOutcome), Failure> {
    let fail = |problem: String| Failure {
        config: config.name,
        problems: vec![problem],
        outcome: None,
    };
    let cmdline = options.cmdline().map_err(fail)?;
    let ws = workspace().map_err(fail)?;
    let kernel = kernel_for(config.arch).map_err(fail)?;
    let outcome = boot(
        config,
        &kernel,
        &BootOptions {
            cmdline: cmdline.to_string(),
            timeout: options.timeout,
            extra_args: Vec::new(),
            log_dir: ws.log_dir(),
        },
    );
    judge(outcome, options.min_tests(config))
}

/// Passes the boot if [`problems`] finds none.
pub fn judge(outcome: BootOutcome, min_tests: u32) -> Result<(Summary, BootOutcome), Failure> {
    let problems = problems(&outcome, min_tests);
    match outcome.report.summary {
        Some(summary) if problems.is_empty() => Ok((summary, outcome)),
        _ => Err(Failure {
            config: outcome.config.name,
            problems,
            outcome: Some(Box::new(outcome)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(passed: u32, failed: u32, skipped: u32) -> Summary {
        Summary {
            passed,
            failed,
            skipped,
        }
    }
    use crate::config::config;
    use crate::report::Report;
    use std::path::PathBuf;

    fn outcome(name: &str, exit: Exit, serial: &str) -> BootOutcome {
        BootOutcome {
            config: config(name).unwrap(),
            cmdline: "test".into(),
            command_line: "qemu-system-x86_64 ...".into(),
            exit,
            elapsed: Duration::from_secs(1),
            serial: serial.into(),
            stderr: String::new(),
            log_path: PathBuf::from("target/qemu-logs/x.log"),
            kernel: PathBuf::from("target/x86_64-unknown-none/release/kernel"),
            report: Report::parse(serial),
        }
    }

    const GOOD: &str = "running 2 tests\ntest a ... ok\ntest b ... ok\n2 passed, 0 failed\n";

    #[test]
    fn a_clean_run_passes() {
        let (closing, _) = judge(outcome("vtd", Exit::Code(0), GOOD), 2).unwrap();
        assert_eq!(closing, summary(2, 0, 0));
    }

    #[test]
    fn too_few_tests_fail() {
        let failure = judge(outcome("vtd", Exit::Code(0), GOOD), 3).unwrap_err();
        assert_eq!(
            failure.problems,
            ["only 2 tests passed; vtd is known to have at least 3"]
        );
    }

    #[test]
    fn zero_tests_fail_unless_filtered() {
        let empty = "running 0 tests\n0 passed, 0 failed\n";
        assert!(judge(outcome("none-arm", Exit::Code(0), empty), 1).is_err());
        assert!(judge(outcome("none-arm", Exit::Code(0), empty), 0).is_ok());
    }

    #[test]
    fn a_failed_test_names_itself_and_the_exit_code_is_decoded() {
        let log = "running 2 tests\ntest a ... ok\ntest b ... FAILED: 3 != 4\n1 passed, 1 failed\n";
        let failure = judge(outcome("none-x86", Exit::Code(3), log), 1).unwrap_err();
        assert_eq!(
            failure.problems,
            [
                "QEMU exited with status 3: the kernel reported failure (isa-debug-exit value 1)",
                "test b FAILED: 3 != 4",
                "the kernel reported 1 passed, 1 failed",
            ]
        );
    }

    #[test]
    fn a_qemu_that_fails_to_start_is_reported_with_its_own_message() {
        let mut failed = outcome("vtd", Exit::Code(1), "");
        failed.stderr =
            "qemu-system-x86_64: -device frob: 'frob' is not a valid device model name\n".into();
        let failure = judge(failed, 1).unwrap_err();
        assert_eq!(
            failure.problems,
            [
                "QEMU failed before the kernel printed anything (status 1): \
              qemu-system-x86_64: -device frob: 'frob' is not a valid device model name"
            ]
        );
    }

    #[test]
    fn exit_zero_does_not_hide_a_failure_line() {
        let log = "running 1 tests\ntest b ... FAILED: no\n0 passed, 1 failed\n";
        assert!(judge(outcome("none-arm", Exit::Code(0), log), 0).is_err());
    }

    #[test]
    fn a_panic_fails_with_the_log_tail_in_the_message() {
        let log = "running 2 tests\ntest a ... ok\ntest b ... KERNEL PANIC: at x.rs:1: oops\n";
        let failure = judge(outcome("smmuv3", Exit::Code(1), log), 1).unwrap_err();
        assert!(
            failure
                .problems
                .contains(&"kernel panic in test b: at x.rs:1: oops".to_string())
        );
        assert!(failure.problems.contains(
            &"the kernel never printed its closing `N passed, M failed` line".to_string()
        ));
        let message = failure.to_string();
        assert!(
            message.contains("test b ... KERNEL PANIC: at x.rs:1: oops"),
            "{message}"
        );
        assert!(
            message.contains("cargo xtask run --config smmuv3 --cmdline test"),
            "{message}"
        );
    }

    #[test]
    fn a_timeout_fails_and_names_the_hung_test() {
        let log = "running 2 tests\ntest a ... ok\ntest dma::forever ...";
        let failure = judge(
            outcome("vtd", Exit::TimedOut(Duration::from_secs(180)), log),
            1,
        )
        .unwrap_err();
        assert_eq!(
            failure.problems,
            ["timed out after 180 s (hung, killed) inside test dma::forever"]
        );
    }

    #[test]
    fn skipped_tests_are_accounted_for_but_never_count_as_passed() {
        let log = "running 3 tests\ntest a ... ok\ntest b ... ok\ntest c ... ignored, not applicable: no IOMMU\n\
                   2 passed, 0 failed, 1 skipped\n";
        let (summary, _) = judge(outcome("none-x86", Exit::Code(0), log), 2).unwrap();
        assert_eq!(summary.to_string(), "2 passed, 0 failed, 1 skipped");
        let failure = judge(outcome("none-x86", Exit::Code(0), log), 3).unwrap_err();
        assert_eq!(
            failure.problems,
            ["only 2 tests passed; none-x86 is known to have at least 3"]
        );
    }

    #[test]
    fn a_summary_that_disagrees_with_the_lines_fails() {
        let log = "running 3 tests\ntest a ... ok\n3 passed, 0 failed\n";
        let failure = judge(outcome("vtd", Exit::Code(0), log), 1).unwrap_err();
        assert_eq!(
            failure.problems,
            ["the closing line counts 3 tests but the log has 1 test lines"]
        );
    }

    #[test]
    fn test_cmdline_carries_filter_and_seed() {
        let options = TestOptions {
            filter: Some("dma".into()),
            seed: Some(7),
            ..TestOptions::default()
        };
        assert_eq!(
            options.cmdline().unwrap().to_string(),
            "test filter=dma seed=7"
        );
        assert_eq!(
            TestOptions::default().cmdline().unwrap().to_string(),
            "test"
        );
        let spaced = TestOptions {
            filter: Some("a b".into()),
            ..TestOptions::default()
        };
        assert!(spaced.cmdline().is_err());
    }
}
