//! One test per QEMU configuration: boot the kernel in test mode and judge its report.
//!
//! `QEMU_TESTS_FILTER`, `QEMU_TESTS_SEED` and `QEMU_TESTS_TIMEOUT` (seconds) adjust
//! every boot. The serial logs stay in `target/qemu-logs/`.

macro_rules! boot_tests {
    ($($test:ident => $config:literal),* $(,)?) => {
        /// `cargo xtask test` boots the configurations itself (with progress lines),
        /// then runs qemu-tests' other integration tests with `--skip qemu_boot::`:
        /// keep the per-configuration boots, and only them, in this module.
        mod qemu_boot {
            $(
                #[test]
                fn $test() {
                    super::boot_and_check($config);
                }
            )*
        }

        const TESTED: &[&str] = &[$($config),*];
    };
}

boot_tests! {
    none_x86 => "none-x86",
    vtd => "vtd",
    vtd_cm => "vtd-cm",
    vtd_sm => "vtd-sm",
    vtd_fs => "vtd-fs",
    vtd_bridge => "vtd-bridge",
    amdvi => "amdvi",
    none_arm => "none-arm",
    smmuv3 => "smmuv3",
    smmuv3_s2 => "smmuv3-s2",
    smmuv3_nested => "smmuv3-nested",
    smmuv3_bridge => "smmuv3-bridge",
}

fn boot_and_check(name: &str) {
    let config = qemu_tests::config(name).expect("a configuration from the table");
    let options = qemu_tests::TestOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
    match qemu_tests::run_boot_test(config, &options) {
        Ok((summary, outcome)) => {
            println!("{name}: {summary} ({:.1} s)", outcome.elapsed.as_secs_f64())
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// The harness itself: a boot that never finishes (QEMU started paused with `-S`)
/// is killed at the deadline and reported as a timeout, with its log kept.
#[test]
fn harness_kills_a_hung_boot() {
    let config = qemu_tests::config("none-arm").unwrap();
    let kernel = qemu_tests::kernel_for(config.arch).unwrap_or_else(|e| panic!("{e}"));
    let ws = qemu_tests::workspace().unwrap();
    let options = qemu_tests::BootOptions {
        cmdline: "test".into(),
        timeout: std::time::Duration::from_secs(2),
        extra_args: vec!["-S".into()],
        log_dir: ws.log_dir().join("harness"),
    };
    let outcome = qemu_tests::boot(config, &kernel, &options);
    assert_eq!(outcome.exit, qemu_tests::Exit::TimedOut(options.timeout));
    assert!(outcome.log_path.is_file());
    let failure = qemu_tests::judge(outcome, 1).unwrap_err();
    assert_eq!(failure.problems, ["timed out after 2 s (hung, killed)"]);
}

#[test]
fn every_configuration_has_a_boot_test() {
    let table: Vec<&str> = qemu_tests::CONFIGS.iter().map(|c| c.name).collect();
    assert_eq!(table, TESTED);
}
