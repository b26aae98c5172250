//! The QEMU configurations: the one table that `cargo xtask` and the boot tests read.
//!
//! The names are part of the project's interface (see the design card, §5). Each
//! configuration is its architecture's common machine plus the `-machine` line and,
//! where there is one, the IOMMU, which always come first on the command line.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// The configuration `cargo xtask run` boots when none is named.
pub const DEFAULT_RUN_CONFIG: &str = "vtd";

/// The two architectures the kernel is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The Rust target the kernel is built for.
    pub fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
        }
    }

    /// The QEMU this architecture boots in: the one the environment
    /// variable [`Arch::qemu_override`] names, else the default on `PATH`.
    pub fn qemu_binary(self) -> String {
        self.qemu_override_value()
            .unwrap_or_else(|| self.default_qemu_binary().to_string())
    }

    /// The QEMU on `PATH` for this architecture.
    pub fn default_qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The environment variable that names another QEMU for this
    /// architecture (a path or a command on `PATH`).
    pub fn qemu_override(self) -> &'static str {
        match self {
            Arch::X86_64 => "QEMU_X86",
            Arch::Aarch64 => "QEMU_ARM",
        }
    }

    /// The QEMU [`Arch::qemu_override`] names, if it is set and not empty.
    pub fn qemu_override_value(self) -> Option<String> {
        std::env::var(self.qemu_override())
            .ok()
            .filter(|value| !value.trim().is_empty())
    }

    /// Everything but the machine line, the IOMMU and the kernel: memory, a serial
    /// console on stdio, the exit device and two `edu` DMA engines at fixed addresses
    /// (`-nodefaults` keeps the PCI topology stable; `dma_mask` lets edu reach all of
    /// RAM instead of masking addresses to 28 bits).
    fn common_args(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[
                // QEMU's default model plus the supervisor-mode protections
                // every current x86 CPU has, which the kernel turns on, RDPID,
                // by which each CPU knows its index, and x2APIC, whose
                // registers are MSRs (QEMU.md §6).
                "-cpu",
                "qemu64,+smep,+smap,+rdpid,+x2apic",
                // Four CPUs: the kernel starts the others with INIT-SIPI-SIPI
                // (issue 20), and a test checks every listed one comes online.
                "-smp",
                "4",
                "-m",
                "256M",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "stdio",
                // The kernel writes (code << 1) | 1 here on failure; success goes
                // through ACPI S5 because this device cannot produce status 0.
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
                "-device",
                "edu,addr=04.0,dma_mask=0xffffffffffffffff",
                "-device",
                "edu,addr=05.0,dma_mask=0xffffffffffffffff",
            ],
            Arch::Aarch64 => &[
                // Without -cpu, virt defaults to a 32-bit core that refuses the ELF.
                "-cpu",
                "max",
                // Four CPUs: the kernel starts the secondaries through PSCI
                // (issue 20), and a test checks every listed one comes online.
                "-smp",
                "4",
                "-m",
                "256M",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "stdio",
                // The kernel exits through semihosting SYS_EXIT with its own status.
                "-semihosting",
                "-device",
                "edu,addr=01.0,dma_mask=0xffffffffffffffff",
                "-device",
                "edu,addr=02.0,dma_mask=0xffffffffffffffff",
            ],
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// One bootable machine.
#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub name: &'static str,
    pub arch: Arch,
    /// `-machine ...` and the IOMMU; they lead the command line.
    pub machine: &'static [&'static str],
    /// One line for humans.
    pub about: &'static str,
    /// Words appended to every kernel command line of this configuration.
    pub kernel_args: &'static [&'static str],
}

/// Every configuration, in the order the tests run them.
pub const CONFIGS: &[Config] = &[
    Config {
        name: "none-x86",
        arch: Arch::X86_64,
        machine: &["-machine", "q35"],
        about: "q35 without an IOMMU",
        kernel_args: &[],
    },
    Config {
        name: "vtd",
        arch: Arch::X86_64,
        machine: &["-machine", "q35", "-device", "intel-iommu,intremap=on"],
        about: "Intel VT-d, legacy mode",
        kernel_args: &[],
    },
    Config {
        name: "vtd-cm",
        arch: Arch::X86_64,
        machine: &[
            "-machine",
            "q35",
            "-device",
            "intel-iommu,intremap=on,caching-mode=on",
        ],
        about: "Intel VT-d, legacy mode with caching mode",
        kernel_args: &[],
    },
    Config {
        name: "vtd-sm",
        arch: Arch::X86_64,
        machine: &[
            "-machine",
            "q35",
            "-device",
            "intel-iommu,intremap=on,x-scalable-mode=on",
        ],
        about: "Intel VT-d, scalable mode, second-stage tables",
        kernel_args: &[],
    },
    Config {
        name: "vtd-fs",
        arch: Arch::X86_64,
        machine: &[
            "-machine",
            "q35",
            "-device",
            "intel-iommu,intremap=on,x-scalable-mode=on,x-flts=on",
        ],
        about: "Intel VT-d, scalable mode, first-stage tables",
        kernel_args: &[],
    },
    Config {
        name: "vtd-bridge",
        arch: Arch::X86_64,
        machine: &[
            "-machine",
            "q35",
            "-device",
            "intel-iommu,intremap=on",
            "-device",
            "pcie-pci-bridge,id=br0,bus=pcie.0,addr=06.0",
            "-device",
            "edu,bus=br0,addr=01.0,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,bus=br0,addr=02.0,dma_mask=0xffffffffffffffff",
        ],
        about: "Intel VT-d, legacy mode, two more edus behind a PCIe-to-PCI bridge (one group)",
        kernel_args: &[],
    },
    Config {
        // amd-iommu has no `addr` property in QEMU 10.0.2; with -nodefaults and the
        // edu devices pinned, its PCI function always lands at 00:01.0.
        name: "amdvi",
        arch: Arch::X86_64,
        machine: &["-machine", "q35", "-device", "amd-iommu,pt=off"],
        about: "AMD-Vi (pt=off, or DMA is never translated)",
        kernel_args: &[],
    },
    Config {
        name: "none-arm",
        arch: Arch::Aarch64,
        machine: &["-machine", "virt,gic-version=2"],
        about: "virt without an IOMMU",
        kernel_args: &[],
    },
    Config {
        // The 10.0 virt machine forces a nested SMMU; 9.1 honours the stage global.
        name: "smmuv3",
        arch: Arch::Aarch64,
        machine: &[
            "-machine",
            "virt-9.1,iommu=smmuv3,gic-version=3",
            "-global",
            "arm-smmuv3.stage=1",
        ],
        about: "ARM SMMUv3, stage 1 only",
        kernel_args: &[],
    },
    Config {
        name: "smmuv3-s2",
        arch: Arch::Aarch64,
        machine: &[
            "-machine",
            "virt-9.1,iommu=smmuv3,gic-version=3",
            "-global",
            "arm-smmuv3.stage=2",
        ],
        about: "ARM SMMUv3, stage 2 only",
        kernel_args: &[],
    },
    Config {
        name: "smmuv3-nested",
        arch: Arch::Aarch64,
        machine: &[
            "-machine",
            "virt,iommu=smmuv3,gic-version=3",
            "-device",
            "pcie-root-port,id=rp0,bus=pcie.0,addr=03.0,chassis=1",
            "-device",
            "pcie-pci-bridge,id=br0,bus=rp0",
            "-device",
            "edu,bus=br0,addr=01.0,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,bus=br0,addr=02.0,dma_mask=0xffffffffffffffff",
        ],
        about: "ARM SMMUv3, both stages (nesting); two more edus behind a root port and a PCIe-to-PCI bridge, whose MSIs share one ITS DeviceID",
        kernel_args: &[],
    },
    Config {
        name: "smmuv3-bridge",
        arch: Arch::Aarch64,
        machine: &[
            "-machine",
            "virt-9.1,iommu=smmuv3,gic-version=2",
            "-global",
            "arm-smmuv3.stage=1",
            "-device",
            "pcie-root-port,id=rp0,bus=pcie.0,addr=03.0,chassis=1",
            "-device",
            "pcie-pci-bridge,id=br0,bus=rp0",
            "-device",
            "edu,bus=br0,addr=01.0,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,bus=br0,addr=02.0,dma_mask=0xffffffffffffffff",
        ],
        about: "ARM SMMUv3, stage 1, two more edus behind a root port and a PCIe-to-PCI bridge (one group)",
        // The GICv2m configuration: no unit or ITS isolates MSIs behind a
        // GICv2m frame, so the tasks' edus signal only with the opt-in.
        kernel_args: &["allow_unsafe_interrupts"],
    },
];

/// The fewest tests each configuration must pass, so that a configuration that
/// silently runs nothing fails. These numbers grow with the kernel: raise them
/// whenever a configuration gains tests.
pub const MIN_TESTS: &[(&str, u32)] = &[
    ("none-x86", 40),
    ("vtd", 97),
    ("vtd-cm", 97),
    ("vtd-sm", 95),
    ("vtd-fs", 95),
    ("vtd-bridge", 100),
    ("smmuv3-bridge", 102),
    ("amdvi", 93),
    ("none-arm", 39),
    ("smmuv3", 100),
    ("smmuv3-s2", 100),
    ("smmuv3-nested", 105),
];

/// The configuration called `name`.
pub fn config(name: &str) -> Option<&'static Config> {
    CONFIGS.iter().find(|config| config.name == name)
}

/// All configuration names, comma-separated, for error messages.
pub fn config_names() -> String {
    CONFIGS
        .iter()
        .map(|config| config.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Config {
    /// The fewest tests this configuration must pass (see [`MIN_TESTS`]).
    pub fn min_tests(&self) -> u32 {
        MIN_TESTS
            .iter()
            .find(|(name, _)| *name == self.name)
            .map_or(1, |&(_, min)| min)
    }

    /// QEMU's arguments: machine and IOMMU, the common machine, the kernel and its
    /// command line (with the configuration's own words), then `extra` unchanged.
    pub fn qemu_args(&self, kernel: &Path, cmdline: &str, extra: &[OsString]) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.machine.iter().map(OsString::from).collect();
        args.extend(self.arch.common_args().iter().map(OsString::from));
        args.push("-kernel".into());
        args.push(kernel.into());
        args.push("-append".into());
        args.push(
            std::iter::once(cmdline)
                .chain(self.kernel_args.iter().copied())
                .collect::<Vec<_>>()
                .join(" ")
                .into(),
        );
        args.extend(extra.iter().cloned());
        args
    }

    /// The QEMU process for this configuration; the caller decides its stdio.
    pub fn qemu_command(&self, kernel: &Path, cmdline: &str, extra: &[OsString]) -> Command {
        let mut command = Command::new(self.arch.qemu_binary());
        command.args(self.qemu_args(kernel, cmdline, extra));
        command
    }

    /// The command line as a shell would show it, for logs and reproduction hints.
    pub fn qemu_command_line(&self, kernel: &Path, cmdline: &str, extra: &[OsString]) -> String {
        std::iter::once(OsString::from(self.arch.qemu_binary()))
            .chain(self.qemu_args(kernel, cmdline, extra))
            .map(|arg| shell_quote(&arg.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quotes `word` for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_every_one_has_a_minimum() {
        let names: HashSet<_> = CONFIGS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CONFIGS.len());
        let with_minimum: HashSet<_> = MIN_TESTS.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, with_minimum);
        assert!(MIN_TESTS.iter().all(|&(_, min)| min >= 1));
    }

    #[test]
    fn the_default_run_config_exists() {
        assert_eq!(
            config(DEFAULT_RUN_CONFIG).map(|c| c.arch),
            Some(Arch::X86_64)
        );
    }

    #[test]
    fn vtd_command_line_puts_the_iommu_after_the_machine() {
        let vtd = config("vtd").unwrap();
        let line = vtd.qemu_command_line(Path::new("k.elf"), "test filter=dma", &["-s".into()]);
        assert_eq!(
            line,
            "qemu-system-x86_64 -machine q35 -device intel-iommu,intremap=on -cpu qemu64,+smep,+smap,+rdpid,+x2apic -smp 4 -m 256M \
             -nodefaults -display none -no-reboot -serial stdio \
             -device isa-debug-exit,iobase=0xf4,iosize=4 \
             -device edu,addr=04.0,dma_mask=0xffffffffffffffff \
             -device edu,addr=05.0,dma_mask=0xffffffffffffffff \
             -kernel k.elf -append 'test filter=dma' -s"
        );
    }

    #[test]
    fn smmuv3_stage_two_uses_the_9_1_machine_and_the_stage_global() {
        let args = config("smmuv3-s2")
            .unwrap()
            .qemu_args(Path::new("k"), "demo", &[]);
        assert_eq!(
            args[..4],
            [
                "-machine",
                "virt-9.1,iommu=smmuv3,gic-version=3",
                "-global",
                "arm-smmuv3.stage=2"
            ]
        );
        assert!(args.iter().any(|a| a == "-semihosting"));
        assert!(args.windows(2).any(|w| w[0] == "-cpu" && w[1] == "max"));
    }

    #[test]
    fn every_arm_config_has_no_x86_exit_device() {
        for config in CONFIGS.iter().filter(|c| c.arch == Arch::Aarch64) {
            let args = config.qemu_args(Path::new("k"), "demo", &[]);
            assert!(
                !args
                    .iter()
                    .any(|a| a.to_string_lossy().contains("isa-debug-exit"))
            );
        }
    }

    #[test]
    fn shell_quote_only_quotes_when_needed() {
        assert_eq!(shell_quote("-machine"), "-machine");
        assert_eq!(shell_quote("test filter=x"), "'test filter=x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
