//! `cargo xtask test`: host tests, then every configuration booted in test mode.

use std::time::Duration;

use qemu_tests::{Failure, Summary, TestOptions, Workspace};

use crate::boots::{self, Booted};
use crate::cli::TestArgs;
use crate::error::Error;
use crate::shell::{self, step};

/// How one configuration ended, for the closing table.
enum Verdict {
    Passed(Summary),
    Failed(Box<Failure>),
}

/// The package whose integration tests boot QEMU.
const BOOT_TEST_PACKAGE: &str = "qemu-tests";
/// Crates with `loom` models of their lock-free protocols: unit tests in a
/// module named `loom_model`, built only with `--cfg loom`.
const LOOM_PACKAGES: &[&str] = &["io-page-table", "iommu-kit", "work-sharing"];
/// The name every loom model's module has, the tests' filter.
const LOOM_MODULE: &str = "loom_model";

pub fn test(ws: &Workspace, args: TestArgs) -> Result<(), Error> {
    if args.list {
        return list(ws, &args);
    }
    let mut failures = Vec::new();
    if args.host {
        match &args.filter {
            Some(filter) => step(format!(
                "host tests whose name contains {filter:?}: every default workspace member (qemu-tests: its library only), then the loom models"
            )),
            None => step(
                "host tests: every default workspace member (qemu-tests: its library only), then the loom models (--cfg loom)",
            ),
        }
        for mut command in host_test_commands(ws, args.filter.as_deref()) {
            if let Err(error) = shell::run(&mut command) {
                failures.push(format!("host tests: {error}"));
            }
        }
    }
    if args.boot
        && let Err(error) = boot_tests(ws, &args, &mut failures)
    {
        failures.push(error.to_string());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(format!("FAILED: {}", failures.join("; "))))
    }
}

/// `cargo test` over the default members, except that qemu-tests contributes only
/// its library's unit tests (its integration tests boot QEMU); with `filter`,
/// only the tests whose name contains it (libtest's own name filter).
fn host_test_commands(ws: &Workspace, filter: Option<&str>) -> Vec<std::process::Command> {
    let mut all_but_boots = ws.cargo(["test", "--workspace"]);
    for package in &ws.packages {
        if !package.default_member || package.name == BOOT_TEST_PACKAGE {
            all_but_boots.args(["--exclude", &package.name]);
        }
    }
    let boot_library = ws.cargo(["test", "--package", BOOT_TEST_PACKAGE, "--lib"]);
    let mut commands = vec![all_but_boots, boot_library];
    if let Some(filter) = filter {
        for command in &mut commands {
            command.args(["--", filter]);
        }
    }
    commands.extend(loom_commands(ws, filter));
    commands
}

/// The loom models: each package's library rebuilt with `--cfg loom` (in its
/// own target directory, so the normal build is not thrown away) and
/// optimised, since a model runs its closure once per interleaving.
fn loom_commands(ws: &Workspace, filter: Option<&str>) -> Vec<std::process::Command> {
    let target_dir = ws.target_dir.join("loom");
    LOOM_PACKAGES
        .iter()
        .map(|package| {
            let mut command = ws.cargo(["test", "--release", "--lib", "--package", package]);
            command
                .arg("--target-dir")
                .arg(&target_dir)
                .env("RUSTFLAGS", "--cfg loom")
                .args(["--", filter.unwrap_or(LOOM_MODULE)]);
            command
        })
        .collect()
}

/// `--list`: the host tests (`host PACKAGE TEST`, from libtest's own
/// `--list`), then every selected configuration's in-kernel tests (`CONFIG
/// TEST`). The in-kernel set depends only on the architecture: it is read
/// out of each kernel ELF's test registry (`qemu_tests::static_tests`), or,
/// should that fail, named by one boot per architecture in list mode
/// (`-append list`, nothing run); whether a test applies is decided when it
/// runs.
fn list(ws: &Workspace, args: &TestArgs) -> Result<(), Error> {
    let mut host = 0;
    if args.host {
        step("host tests (libtest --list of every default workspace member)");
        for package in ws.packages.iter().filter(|package| package.default_member) {
            let mut command = ws.cargo(["test", "--quiet", "--package", &package.name]);
            if package.name == BOOT_TEST_PACKAGE {
                command.arg("--lib");
            }
            command.args(["--", "--list", "--format", "terse"]);
            if let Some(filter) = &args.filter {
                command.arg(filter);
            }
            let output = command
                .output()
                .map_err(|e| Error::Other(format!("cannot run cargo: {e}")))?;
            if !output.status.success() {
                return Err(Error::Failed(format!(
                    "listing the tests of {} failed:\n{}",
                    package.name,
                    String::from_utf8_lossy(&output.stderr)
                )));
            }
            for name in String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.strip_suffix(": test"))
            {
                println!("host {} {name}", package.name);
                host += 1;
            }
        }
    }
    let mut in_kernel = 0;
    let mut configurations = 0;
    if args.boot {
        let configs = boots::select(&args.configs)?;
        let kernels = boots::build_kernels(ws, &configs);
        let mut cmdline = qemu_tests::KernelCmdline::new("list");
        if let Some(filter) = &args.filter {
            cmdline = cmdline.option("filter", filter).map_err(Error::Usage)?;
        }
        for arch in qemu_tests::Arch::ALL {
            let Some(first) = configs.iter().find(|config| config.arch == arch) else {
                continue;
            };
            let kernel = kernels[&arch]
                .as_ref()
                .map_err(|why| Error::Failed(format!("the {arch} kernel did not build: {why}")))?;
            let names = match qemu_tests::static_tests::in_kernel_tests(kernel) {
                Some(names) => {
                    step(format!(
                        "in-kernel tests of the {arch} kernel (its registry read from the ELF, no boot)"
                    ));
                    names
                        .into_iter()
                        .filter(|name| args.filter.as_deref().is_none_or(|f| name.contains(f)))
                        .collect()
                }
                None => {
                    step(format!(
                        "in-kernel tests of the {arch} kernel (the ELF's registry unreadable: booting {} with -append {cmdline:?})",
                        first.name
                    ));
                    let options = qemu_tests::BootOptions {
                        cmdline: cmdline.to_string(),
                        timeout: args.timeout.unwrap_or(qemu_tests::DEFAULT_TIMEOUT),
                        extra_args: Vec::new(),
                        log_dir: ws.log_dir(),
                    };
                    let outcome = qemu_tests::boot(first, kernel, &options);
                    if outcome.exit != qemu_tests::Exit::Code(0) {
                        return Err(Error::Failed(format!(
                            "the list boot of {} ended with {:?}; its log: {}",
                            first.name,
                            outcome.exit,
                            outcome.log_path.display()
                        )));
                    }
                    outcome.report.listed
                }
            };
            for config in configs.iter().filter(|config| config.arch == arch) {
                configurations += 1;
                for name in &names {
                    println!("{} {name}", config.name);
                    in_kernel += 1;
                }
            }
        }
    }
    step(format!(
        "{host} host tests; {in_kernel} in-kernel tests over {configurations} configurations \
         (an in-kernel test decides when it runs whether the configuration has its hardware, \
         and reports \"not applicable\" where it does not)"
    ));
    Ok(())
}

/// qemu-tests' integration tests other than the per-configuration boots (crash
/// reporting, the harness itself); `xtask` boots the configurations itself.
fn other_qemu_tests(ws: &Workspace) -> Result<(), Error> {
    step("other QEMU tests: qemu-tests' integration tests besides the per-configuration boots");
    let mut command = ws.cargo(["test", "--package", BOOT_TEST_PACKAGE, "--test", "*"]);
    command.args(["--", "--skip", "qemu_boot::"]);
    shell::run(&mut command)
}

fn boot_tests(ws: &Workspace, args: &TestArgs, failures: &mut Vec<String>) -> Result<(), Error> {
    let configs = boots::select(&args.configs)?;
    if let Some(jobs) = args.jobs {
        qemu_tests::set_parallel_qemus(jobs);
    }
    let options = TestOptions {
        filter: args.filter.clone(),
        seed: args.seed,
        timeout: args.timeout.unwrap_or(qemu_tests::DEFAULT_TIMEOUT),
    };
    let cmdline = options.cmdline().map_err(Error::Usage)?.to_string();
    let kernels = boots::build_kernels(ws, &configs);
    // Only a full run needs them; they go first so that the closing line of the
    // per-configuration boots ends the output.
    let full_run = args.configs.is_empty() && args.filter.is_none() && args.seed.is_none();
    if full_run && let Err(error) = other_qemu_tests(ws) {
        failures.push(format!("other QEMU tests: {error}"));
    }
    step(format!(
        "boot tests: {} configuration{}, {} at a time, timeout {} s, kernel command line {:?}, logs in {}",
        configs.len(),
        if configs.len() == 1 { "" } else { "s" },
        qemu_tests::parallel_qemus(),
        options.timeout.as_secs(),
        cmdline,
        ws.log_dir().display()
    ));
    let total = configs.len();
    let mut verdicts: Vec<Option<Verdict>> = configs.iter().map(|_| None).collect();
    let mut suites: Vec<qemu_tests::junit::Suite> = configs
        .iter()
        .map(|config| qemu_tests::junit::Suite {
            name: config.name.to_string(),
            ..Default::default()
        })
        .collect();
    boots::boot_all(
        ws.log_dir(),
        &configs,
        &kernels,
        &cmdline,
        options.timeout,
        |index, config, booted| {
            let verdict = match booted {
                Booted::NotRun(why) => Verdict::Failed(Box::new(Failure {
                    config: config.name,
                    problems: vec![why.clone()],
                    outcome: None,
                })),
                Booted::Ran(outcome) => {
                    match qemu_tests::judge((**outcome).clone(), options.min_tests(config)) {
                        Ok((summary, _)) => Verdict::Passed(summary),
                        Err(failure) => Verdict::Failed(Box::new(failure)),
                    }
                }
            };
            let elapsed = match booted {
                Booted::Ran(outcome) => outcome.elapsed,
                Booted::NotRun(_) => Duration::ZERO,
            };
            let suite = &mut suites[index];
            suite.elapsed = elapsed;
            if let Booted::Ran(outcome) = booted {
                suite.tests = outcome.report.tests.clone();
                suite.log = outcome.log_path.display().to_string();
            }
            if let Verdict::Failed(failure) = &verdict {
                suite.problems = failure.problems.clone();
            }
            println!(
                "[{:>2}/{total}] {:<14} {}  ({:.1} s)",
                index + 1,
                config.name,
                one_line(&verdict, booted),
                elapsed.as_secs_f64()
            );
            verdicts[index] = Some(verdict);
        },
    );

    let verdicts: Vec<Verdict> = verdicts.into_iter().flatten().collect();
    if let Some(path) = &args.junit {
        std::fs::write(path, qemu_tests::junit::render(&suites)).map_err(|e| {
            Error::Other(format!(
                "cannot write the JUnit XML to {}: {e}",
                path.display()
            ))
        })?;
        step(format!("JUnit XML of the boot tests: {}", path.display()));
    }
    for verdict in &verdicts {
        if let Verdict::Failed(failure) = verdict {
            println!("\n{failure}");
        }
    }
    step("boot test summary");
    let (mut passed, mut failed, mut skipped, mut broken) = (0u64, 0u64, 0u64, Vec::new());
    for (config, verdict) in configs.iter().zip(&verdicts) {
        match verdict {
            Verdict::Passed(summary) => {
                passed += u64::from(summary.passed);
                skipped += u64::from(summary.skipped);
                println!("  ok      {:<14} {summary}", config.name);
            }
            Verdict::Failed(failure) => {
                let counted = failure
                    .outcome
                    .as_ref()
                    .map(|outcome| outcome.report.summary_or_count())
                    .unwrap_or_default();
                passed += u64::from(counted.passed);
                skipped += u64::from(counted.skipped);
                // A config that failed without a failing test (panic, hang, too few
                // tests, bad exit) still counts as one failure.
                failed += u64::from(counted.failed.max(1));
                broken.push(config.name);
                println!(
                    "  FAILED  {:<14} {}",
                    config.name,
                    failure.problems.first().map_or("", String::as_str)
                );
            }
        }
    }
    if let Some(filter) = args.filter.as_deref()
        && passed == 0
        && failed == 0
    {
        if skipped == 0 {
            failed = 1;
            broken.push("(filter)");
            println!("  FAILED  the filter \"{filter}\" matched no test in any configuration");
        } else {
            println!(
                "  note    the filter \"{filter}\" matched only tests that do not apply to these configurations"
            );
        }
    }
    if skipped == 0 {
        println!("qemu-tests: {passed} passed, {failed} failed");
    } else {
        println!("qemu-tests: {passed} passed, {failed} failed, {skipped} skipped");
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "boot tests failed: {}",
            broken.join(", ")
        )))
    }
}

fn one_line(verdict: &Verdict, booted: &Booted) -> String {
    match verdict {
        Verdict::Passed(summary) => format!("ok      {summary}"),
        Verdict::Failed(failure) => {
            let closing = match booted {
                Booted::Ran(outcome) => outcome
                    .report
                    .summary
                    .map(|summary| format!("{summary}; "))
                    .unwrap_or_default(),
                Booted::NotRun(_) => String::new(),
            };
            format!(
                "FAILED  {closing}{}",
                failure.problems.first().map_or("", String::as_str)
            )
        }
    }
}
