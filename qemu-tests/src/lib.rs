//! Boots every QEMU configuration in test mode and checks the kernel's report.
//!
//! This library is also the one place that knows the configurations and how to run
//! them: `cargo xtask` calls it, and `tests/boot.rs` turns each configuration into
//! one `#[test]`, so `cargo test -p qemu-tests` boots them all on its own.
//!
//! A boot passes when QEMU exits with status 0, the kernel did not panic, its
//! closing line says `N passed, 0 failed` and N is at least the number of tests the
//! configuration is known to have ([`MIN_TESTS`]). Every serial log is kept under
//! `target/qemu-logs/<config>.log`.

mod boot;
mod config;
pub mod junit;
pub mod monitor;
mod report;
pub mod static_tests;
pub mod symbolize;
mod verdict;
mod workspace;

pub use boot::{
    BootOptions, BootOutcome, DEFAULT_PARALLEL_QEMUS, DEFAULT_TIMEOUT, Exit, boot, build_kernel,
    build_kernel_with, kernel_for, parallel_qemus, set_parallel_qemus, workspace,
};
pub use config::{
    Arch, CONFIGS, Config, DEFAULT_RUN_CONFIG, MIN_TESTS, config, config_names, shell_quote,
};
pub use report::{BenchSample, Report, Summary, TestOutcome, TestResult};
pub use verdict::{Failure, KernelCmdline, TestOptions, judge, problems, run_boot_test};
pub use workspace::{Package, Profile, Workspace, cargo};
