//! The foundation suite on machine variants the configurations do not cover:
//! entry at EL2 (aarch64 drops to EL1 itself), RAM beyond the 4 GiB the
//! kernel identity-maps (x86_64 must not hand out frames it cannot reach),
//! an x86 CPU without x2APIC (the local APIC through its MMIO page), one
//! CPU, and more CPUs than the kernel runs.

use std::ffi::OsString;
use std::time::Duration;

use qemu_tests::{BootOptions, Exit};

fn boot_variant(config: &str, label: &str, extra: &[&str]) -> String {
    boot_variant_filtered(config, label, "memory", extra)
}

fn boot_variant_filtered(config: &str, label: &str, filter: &str, extra: &[&str]) -> String {
    let config = qemu_tests::config(config).expect("a configuration from the table");
    let kernel = qemu_tests::kernel_for(config.arch).unwrap_or_else(|e| panic!("{e}"));
    let ws = qemu_tests::workspace().unwrap();
    let options = BootOptions {
        cmdline: format!("test filter={filter}"),
        timeout: Duration::from_secs(120),
        extra_args: extra.iter().map(OsString::from).collect(),
        log_dir: ws.log_dir().join(format!("variant-{label}")),
    };
    let outcome = qemu_tests::boot(config, &kernel, &options);
    assert_eq!(outcome.exit, Exit::Code(0), "{}", outcome.serial);
    assert!(
        outcome.serial.contains(" passed, 0 failed"),
        "{}",
        outcome.serial
    );
    outcome.serial
}

/// Panics, showing the log, unless it holds every one of `lines`.
fn assert_lines(log: &str, lines: &[&str]) {
    for line in lines {
        assert!(log.contains(line), "{line}: {log}");
    }
}

#[test]
fn variant_aarch64_entered_at_el2_drops_to_el1() {
    let log = boot_variant("none-arm", "el2", &["-machine", "virtualization=on"]);
    assert!(
        log.contains("test memory::frames_allocate_aligned_zeroed_and_return ... ok"),
        "{log}"
    );
}

#[test]
fn variant_x86_64_with_ram_above_4gib() {
    let log = boot_variant("none-x86", "5g", &["-m", "5G"]);
    assert!(
        log.contains("test memory::every_free_frame_is_reachable_through_the_identity_map ... ok"),
        "{log}"
    );
}

/// The configurations give x86 CPUs x2APIC; without it the kernel uses the
/// xAPIC page, and the SMP tests (IPIs, shootdowns, four tasks DMAing on four
/// CPUs, all through the APIC) still pass. The later `-cpu` wins.
#[test]
fn variant_x86_64_without_x2apic_uses_the_xapic_page() {
    let log = boot_variant_filtered(
        "vtd",
        "xapic",
        "smp",
        &["-cpu", "qemu64,+smep,+smap,+rdpid"],
    );
    assert_lines(
        &log,
        &[
            "local APIC in xAPIC mode",
            "smp::a_tlb_shootdown_is_answered_by_every_other_cpu ... ok",
            "smp::four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once ... ok",
        ],
    );
}

/// One CPU (`-smp 1`; the later `-smp` wins): the path every configuration
/// took before the kernel started the others. The tests that need tasks
/// (the scheduler, the task, survival and ownership suites) run on the boot
/// CPU alone, and the four-CPU test says what it cannot show.
fn one_cpu(config: &str, label: &str) {
    let log = boot_variant_filtered(config, label, "task", &["-smp", "1"]);
    assert_lines(
        &log,
        &[
            "smp::four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once ... ignored, not applicable: one CPU online",
            "tasks::two_tasks_take_turns_through_yield ... ok",
        ],
    );
}

#[test]
fn variant_x86_64_with_one_cpu() {
    one_cpu("vtd", "smp1-x86");
}

#[test]
fn variant_aarch64_with_one_cpu() {
    one_cpu("smmuv3", "smp1-arm");
}

/// More CPUs than the kernel runs (`arch::MAX_CPUS`, 8): it starts eight and
/// leaves the rest, and they take no part.
fn more_cpus_than_the_kernel_runs(config: &str, label: &str) {
    let log = boot_variant_filtered(config, label, "smp", &["-smp", "10"]);
    assert_lines(
        &log,
        &[
            "smp: 10 CPUs listed; the kernel runs at most 8",
            "smp::every_listed_cpu_comes_online ... ok",
            "smp::four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once ... ok",
        ],
    );
}

#[test]
fn variant_x86_64_with_more_cpus_than_the_kernel_runs() {
    more_cpus_than_the_kernel_runs("vtd", "smp10-x86");
}

#[test]
fn variant_aarch64_with_more_cpus_than_the_kernel_runs() {
    more_cpus_than_the_kernel_runs("smmuv3", "smp10-arm");
}

/// APIC IDs with gaps (two sockets of three cores: 0-2 and 4-6, each socket's
/// core field two bits wide): the kernel knows CPUs by the MADT's IDs, not
/// by their count.
#[test]
fn variant_x86_64_with_gaps_between_apic_ids() {
    let log = boot_variant_filtered(
        "vtd",
        "apic-gaps",
        "smp",
        &["-smp", "6,sockets=2,cores=3,threads=1"],
    );
    assert_lines(
        &log,
        &[
            "smp: the firmware lists CPUs [0, 1, 2, 4, 5, 6]",
            "smp::every_listed_cpu_comes_online ... ok",
            "smp::a_tlb_shootdown_is_answered_by_every_other_cpu ... ok",
            "smp::four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once ... ok",
        ],
    );
}

/// Room for four CPUs, two present (`-smp 2,maxcpus=4`): the firmware names
/// slots for CPUs that are not there (x86: MADT entries without the enabled
/// flag), and the kernel starts only the present ones.
fn cpus_not_present(config: &str, label: &str) {
    let log = boot_variant_filtered(config, label, "smp", &["-smp", "2,maxcpus=4"]);
    assert_lines(
        &log,
        &[
            "smp: the firmware lists CPUs [0, 1]",
            "smp::every_listed_cpu_comes_online ... ok",
            "smp::four_tasks_dma_and_churn_their_ioas_on_four_cpus_at_once ... ok",
        ],
    );
}

#[test]
fn variant_x86_64_with_cpus_not_present() {
    cpus_not_present("vtd", "maxcpus-x86");
}

#[test]
fn variant_aarch64_with_cpus_not_present() {
    cpus_not_present("smmuv3", "maxcpus-arm");
}
