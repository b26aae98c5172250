//! The crash path: a kernel panic and an unhandled exception are reported on the
//! console with their details and end the run with a failing status, on both
//! architectures (the kernel's `crash=panic|fault` command-line words).

use std::time::Duration;

use qemu_tests::{BootOptions, Exit};

/// Boots `config` with `crash=<kind>` and returns the serial log; asserts QEMU
/// exited on its own with a non-zero status.
fn crash(config: &str, kind: &str) -> String {
    let config = qemu_tests::config(config).expect("a configuration from the table");
    let kernel = qemu_tests::kernel_for(config.arch).unwrap_or_else(|e| panic!("{e}"));
    let ws = qemu_tests::workspace().unwrap();
    let options = BootOptions {
        cmdline: format!("test filter=none crash={kind}"),
        timeout: Duration::from_secs(60),
        extra_args: vec![],
        log_dir: ws.log_dir().join(format!("crash-{kind}")),
    };
    let outcome = qemu_tests::boot(config, &kernel, &options);
    match outcome.exit {
        Exit::Code(status) => {
            assert_ne!(status, 0, "a crash must fail the run:\n{}", outcome.serial)
        }
        other => panic!(
            "QEMU did not exit by itself ({other:?}):\n{}",
            outcome.serial
        ),
    }
    outcome.serial
}

#[test]
fn crash_panic_reports_message_and_location_x86_64() {
    let log = crash("none-x86", "panic");
    assert!(
        log.contains(
            "KERNEL PANIC: deliberate panic requested on the command line at kernel/src/main.rs:"
        ),
        "{log}"
    );
}

#[test]
fn crash_panic_reports_message_and_location_aarch64() {
    let log = crash("none-arm", "panic");
    assert!(
        log.contains(
            "KERNEL PANIC: deliberate panic requested on the command line at kernel/src/main.rs:"
        ),
        "{log}"
    );
}

#[test]
fn crash_fault_reports_vector_error_code_and_address_x86_64() {
    let log = crash("none-x86", "fault");
    assert!(
        log.contains("page fault (vector 14), error code 0x0"),
        "{log}"
    );
    assert!(log.contains("faulting address 0x1000000000"), "{log}");
}

#[test]
fn crash_fault_reports_esr_far_and_elr_aarch64() {
    let log = crash("none-arm", "fault");
    // EC 0x25: data abort taken without a change of exception level.
    assert!(log.contains("(EC 0x25), FAR 0x1000000000, ELR 0x"), "{log}");
}
