//! The in-kernel tests `cargo xtask test --list` names without booting
//! (`qemu_tests::static_tests`, read from the kernel ELF) are exactly the ones
//! the kernel itself names in list mode, in the same order, on both
//! architectures.

use std::time::Duration;

use qemu_tests::{Arch, BootOptions, Exit};

fn listed_by_the_kernel(arch: Arch) -> (Vec<String>, Vec<String>) {
    let config = qemu_tests::CONFIGS
        .iter()
        .find(|config| config.arch == arch)
        .expect("a configuration of the architecture");
    let kernel = qemu_tests::kernel_for(arch).unwrap_or_else(|e| panic!("{e}"));
    let ws = qemu_tests::workspace().unwrap();
    let options = BootOptions {
        cmdline: "list".into(),
        timeout: Duration::from_secs(120),
        extra_args: vec![],
        log_dir: ws.log_dir().join("list"),
    };
    let outcome = qemu_tests::boot(config, &kernel, &options);
    assert_eq!(outcome.exit, Exit::Code(0), "{}", outcome.serial);
    let read =
        qemu_tests::static_tests::in_kernel_tests(&kernel).expect("the registry read from the ELF");
    (read, outcome.report.listed)
}

#[test]
fn the_registry_read_from_the_elf_is_the_kernels_own_list_x86_64() {
    let (read, listed) = listed_by_the_kernel(Arch::X86_64);
    assert!(listed.len() > 50, "{listed:?}");
    assert_eq!(read, listed);
}

#[test]
fn the_registry_read_from_the_elf_is_the_kernels_own_list_aarch64() {
    let (read, listed) = listed_by_the_kernel(Arch::Aarch64);
    assert!(listed.len() > 50, "{listed:?}");
    assert_eq!(read, listed);
}
