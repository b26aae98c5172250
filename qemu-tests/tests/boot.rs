//! One test per QEMU configuration: boot the kernel in test mode and judge its report.
//!
//! `QEMU_TESTS_FILTER`, `QEMU_TESTS_SEED` and `QEMU_TESTS_TIMEOUT` (seconds) adjust
//! every boot. The serial logs stay in `target/qemu-logs/`.

macro_rules! boot_tests {
    ($($test:ident => $config:literal),* $(,)?) => {
        /// `cargo xtask test` runs the host tests with `--skip qemu_boot::` and boots
        /// the configurations itself, so keep the boots in this module.
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
    amdvi => "amdvi",
    none_arm => "none-arm",
    smmuv3 => "smmuv3",
    smmuv3_s2 => "smmuv3-s2",
    smmuv3_nested => "smmuv3-nested",
}

fn boot_and_check(name: &str) {
    let config = qemu_tests::config(name).expect("a configuration from the table");
    let options = qemu_tests::TestOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
    match qemu_tests::run_boot_test(config, &options) {
        Ok((summary, outcome)) => println!(
            "{name}: {} passed, {} failed ({:.1} s)",
            summary.passed,
            summary.failed,
            outcome.elapsed.as_secs_f64()
        ),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn every_configuration_has_a_boot_test() {
    let table: Vec<&str> = qemu_tests::CONFIGS.iter().map(|c| c.name).collect();
    assert_eq!(table, TESTED);
}
