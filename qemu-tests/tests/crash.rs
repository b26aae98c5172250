//! The crash path: a kernel panic and an unhandled exception are reported on the
//! console with their details and end the run with a failing status, on both
//! architectures (the kernel's `crash=panic|fault` command-line words). The
//! kernel touching a user page (`crash=user-read|user-exec`) is such a crash:
//! SMAP/SMEP on x86_64 and PAN/PXN on aarch64 fault it.

use std::time::Duration;

use qemu_tests::{BootOptions, Exit};

/// Boots `config` with `crash=<kind>` and returns the serial log; asserts QEMU
/// exited on its own with a non-zero status.
fn crash(config: &str, kind: &str) -> String {
    crash_with_kernel(config, kind).0
}

/// [`crash`], and the backtraces of the log symbolized against the kernel.
fn crash_with_kernel(config: &str, kind: &str) -> (String, String) {
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
    let symbolized = qemu_tests::symbolize::symbolized(&outcome.serial, &kernel)
        .unwrap_or_else(|| panic!("no backtrace in the log:\n{}", outcome.serial));
    (outcome.serial, symbolized)
}

/// A panic's and a fault's backtrace name, symbolized on the host, the
/// function that crashed on purpose and its file (`kernel/src/backtrace.rs`,
/// `qemu_tests::symbolize`).
#[test]
fn crashes_print_a_backtrace_the_host_symbolizes() {
    for (config, kind) in [
        ("none-x86", "panic"),
        ("none-x86", "fault"),
        ("none-arm", "panic"),
        ("none-arm", "fault"),
    ] {
        let (log, symbolized) = crash_with_kernel(config, kind);
        assert!(
            symbolized.contains("crash_on_purpose") && symbolized.contains("kernel/src/main.rs"),
            "{config} {kind}:\n{symbolized}\n{log}"
        );
        assert!(
            !symbolized.contains(" ??\n"),
            "{config} {kind}: an address no symbol covers:\n{symbolized}"
        );
    }
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

#[test]
fn kernel_load_from_a_user_page_faults_smap_x86_64() {
    let log = crash("none-x86", "user-read");
    // Error code 0x1: a protection violation on a present page, by a
    // supervisor-mode read.
    assert!(
        log.contains("page fault (vector 14), error code 0x1,"),
        "{log}"
    );
    assert!(!log.contains("returned"), "the load completed:\n{log}");
}

#[test]
fn kernel_jump_to_user_code_faults_smep_x86_64() {
    let log = crash("none-x86", "user-exec");
    // Error code 0x11: present page, instruction fetch, supervisor mode.
    assert!(
        log.contains("page fault (vector 14), error code 0x11,"),
        "{log}"
    );
    assert!(!log.contains("executed user code"), "{log}");
}

/// The fault status code of a data or instruction abort (ESR ISS bits 5:0)
/// in the crash report's ESR.
fn fault_status(log: &str) -> (u64, u64) {
    let esr = log
        .split("ESR 0x")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("no ESR in the report:\n{log}"));
    (esr >> 26, esr & 0x3F)
}

#[test]
fn kernel_load_from_a_user_page_faults_pan_aarch64() {
    let log = crash("none-arm", "user-read");
    let (class, status) = fault_status(&log);
    // EC 0x25: data abort from EL1; DFSC 0b0011xx: permission fault.
    assert_eq!(class, 0x25, "{log}");
    assert_eq!(status & 0x3C, 0x0C, "not a permission fault:\n{log}");
    assert!(!log.contains("returned"), "the load completed:\n{log}");
}

#[test]
fn kernel_jump_to_user_code_faults_pxn_aarch64() {
    let log = crash("none-arm", "user-exec");
    let (class, status) = fault_status(&log);
    // EC 0x21: instruction abort from EL1; IFSC 0b0011xx: permission fault.
    assert_eq!(class, 0x21, "{log}");
    assert_eq!(status & 0x3C, 0x0C, "not a permission fault:\n{log}");
}
