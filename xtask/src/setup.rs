//! Installing what a fresh Debian 12 machine lacks: the Rust targets and components
//! that `rust-toolchain.toml` names, and QEMU >= 10.0 for both architectures.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::Command;

use qemu_tests::{Arch, Workspace};

use crate::error::Error;
use crate::shell::{self, step};

/// The oldest QEMU whose IOMMU emulation the project is built against.
pub const MIN_QEMU: Version = Version {
    major: 10,
    minor: 0,
    patch: 0,
};

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/bookworm-backports.list";
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";
const QEMU_PACKAGES: [&str; 2] = ["qemu-system-x86", "qemu-system-arm"];

/// Makes sure everything is installed, printing each step.
pub fn ensure(ws: &Workspace) -> Result<(), Error> {
    ensure_rust(ws)?;
    ensure_qemu()
}

// ---------------------------------------------------------------- Rust

pub fn ensure_rust(ws: &Workspace) -> Result<(), Error> {
    let toolchain_file = ws.root.join("rust-toolchain.toml");
    let text = fs::read_to_string(&toolchain_file)
        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", toolchain_file.display())))?;
    let channel = toml_string(&text, "channel")
        .ok_or_else(|| Error::Setup("rust-toolchain.toml names no channel".into()))?;
    let targets = toml_string_array(&text, "targets");
    let components = toml_string_array(&text, "components");

    let sysroot = shell::output_of("rustc", &["--print", "sysroot"])
        .map(|out| out.trim().to_string())
        .ok_or_else(|| {
            Error::Setup("rustc does not run; install rustup (https://rustup.rs)".into())
        })?;
    let missing_targets: Vec<&String> = targets
        .iter()
        .filter(|target| {
            !Path::new(&sysroot)
                .join("lib/rustlib")
                .join(target)
                .is_dir()
        })
        .collect();
    let rustup = shell::on_path("rustup");
    let missing_components: Vec<&String> = if rustup {
        let installed = shell::output_of(
            "rustup",
            &["component", "list", "--installed", "--toolchain", &channel],
        )
        .unwrap_or_default();
        components
            .iter()
            .filter(|component| !component_installed(&installed, component))
            .collect()
    } else {
        Vec::new()
    };

    if missing_targets.is_empty() && missing_components.is_empty() {
        step(format!(
            "setup: Rust {channel} with targets {} is ready",
            targets.join(", ")
        ));
        return Ok(());
    }
    if !rustup {
        return Err(Error::Setup(format!(
            "the Rust targets {missing_targets:?} are missing and rustup is not installed; \
             install rustup (https://rustup.rs), then run: rustup target add --toolchain {channel} {}",
            targets.join(" ")
        )));
    }
    for (kind, missing) in [
        ("target", missing_targets),
        ("component", missing_components),
    ] {
        if missing.is_empty() {
            continue;
        }
        step(format!("setup: adding Rust {kind}s {missing:?}"));
        let mut command = Command::new("rustup");
        command
            .args([kind, "add", "--toolchain", &channel])
            .args(missing);
        shell::run(&mut command)?;
    }
    Ok(())
}

/// `rustup component list --installed` prints names with the host triple appended
/// (`clippy-x86_64-unknown-linux-gnu`).
fn component_installed(listing: &str, component: &str) -> bool {
    listing
        .lines()
        .map(str::trim)
        .any(|line| line == component || line.starts_with(&format!("{component}-")))
}

/// `key = "value"` in a small TOML file.
fn toml_string(text: &str, key: &str) -> Option<String> {
    let value = toml_value(text, key)?;
    quoted_strings(&value).into_iter().next()
}

/// `key = ["a", "b"]` in a small TOML file, possibly spread over lines.
fn toml_string_array(text: &str, key: &str) -> Vec<String> {
    toml_value(text, key)
        .map(|value| quoted_strings(&value))
        .unwrap_or_default()
}

/// The raw text after `key =`, through the closing `]` for arrays.
fn toml_value(text: &str, key: &str) -> Option<String> {
    let mut lines = text.lines();
    let first = lines.find_map(|line| {
        let (name, value) = line.split_once('=')?;
        (name.trim() == key).then(|| value.trim().to_string())
    })?;
    if !first.starts_with('[') {
        return Some(first);
    }
    let mut value = first;
    while !value.contains(']') {
        value.push('\n');
        value.push_str(lines.next()?);
    }
    Some(value)
}

fn quoted_strings(value: &str) -> Vec<String> {
    let code: String = value
        .lines()
        .map(|line| line.split_once('#').map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    code.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- QEMU

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The version in `qemu-system-* --version`'s first line,
/// `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)`.
pub fn parse_qemu_version(text: &str) -> Option<Version> {
    let line = text.lines().next()?;
    let number = line.split("version ").nth(1)?.split_whitespace().next()?;
    let mut parts = number.split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some(Version {
        major: parts.next()??,
        minor: parts.next().flatten().unwrap_or(0),
        patch: parts.next().flatten().unwrap_or(0),
    })
}

/// What one QEMU binary looks like on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QemuState {
    Ready(Version),
    TooOld(Version),
    Missing,
    /// It runs but its version line is not one we understand.
    Unreadable(String),
}

impl QemuState {
    pub fn from_version_output(output: Option<&str>) -> QemuState {
        match output {
            None => QemuState::Missing,
            Some(text) => match parse_qemu_version(text) {
                Some(version) if version >= MIN_QEMU => QemuState::Ready(version),
                Some(version) => QemuState::TooOld(version),
                None => QemuState::Unreadable(text.lines().next().unwrap_or_default().to_string()),
            },
        }
    }
}

fn probe(binary: &str) -> QemuState {
    QemuState::from_version_output(shell::output_of(binary, &["--version"]).as_deref())
}

fn describe(binary: &str, state: &QemuState) -> String {
    match state {
        QemuState::Ready(version) => format!("{binary} {version} is ready (>= {MIN_QEMU})"),
        QemuState::TooOld(version) => {
            format!("{binary} {version} is too old: the project needs QEMU >= {MIN_QEMU}")
        }
        QemuState::Missing => format!("{binary} is not installed"),
        QemuState::Unreadable(line) => format!("{binary} reports an unknown version: {line:?}"),
    }
}

/// One thing the installer does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallStep {
    WriteFile { path: String, contents: String },
    Run(Vec<String>),
}

impl InstallStep {
    fn run(words: &[&str]) -> InstallStep {
        InstallStep::Run(words.iter().map(|word| word.to_string()).collect())
    }

    /// As a shell command, with `sudo` where root is needed.
    fn shell(&self, sudo: bool) -> String {
        let sudo = if sudo { "sudo " } else { "" };
        match self {
            InstallStep::WriteFile { path, contents } => {
                format!("echo '{}' | {sudo}tee {path}", contents.trim_end())
            }
            InstallStep::Run(words) => format!("{sudo}{}", words.join(" ")),
        }
    }
}

/// How to get QEMU >= 10.0 on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallPlan {
    /// We may do it ourselves (apt-get is there and we are root).
    Automatic(Vec<InstallStep>),
    /// We may not: tell the user exactly what to do.
    Manual(String),
}

/// Decides how to install QEMU from `/etc/os-release`, the active apt sources,
/// whether `apt-get` exists and whether we are root.
pub fn install_plan(
    os_release: &str,
    apt_sources: &str,
    has_apt: bool,
    is_root: bool,
) -> InstallPlan {
    if !has_apt {
        return InstallPlan::Manual(format!(
            "install QEMU >= {MIN_QEMU} (qemu-system-x86_64 and qemu-system-aarch64) with this system's \
             package manager; Debian 12 gets it from bookworm-backports"
        ));
    }
    let mut steps = Vec::new();
    let bookworm = os_release_field(os_release, "VERSION_CODENAME").as_deref() == Some("bookworm");
    if bookworm && !mentions_backports(apt_sources) {
        steps.push(InstallStep::WriteFile {
            path: BACKPORTS_LIST.into(),
            contents: format!("{BACKPORTS_LINE}\n"),
        });
    }
    steps.push(InstallStep::run(&["apt-get", "update"]));
    let mut install = vec![
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
    ];
    if bookworm {
        install.extend(["-t", "bookworm-backports"]);
    }
    install.extend(QEMU_PACKAGES);
    steps.push(InstallStep::run(&install));
    if is_root {
        InstallPlan::Automatic(steps)
    } else {
        let commands: Vec<String> = steps
            .iter()
            .map(|step| format!("  {}", step.shell(true)))
            .collect();
        InstallPlan::Manual(format!(
            "installing QEMU needs root; run these commands (or run this as root):\n{}",
            commands.join("\n")
        ))
    }
}

/// `KEY=value` or `KEY="value"` from an os-release file.
fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        (name.trim() == key).then(|| value.trim().trim_matches(['"', '\'']).to_string())
    })
}

/// Whether an active (uncommented) apt source line names bookworm-backports.
fn mentions_backports(apt_sources: &str) -> bool {
    apt_sources.lines().any(|line| {
        let line = line.trim();
        !line.starts_with('#') && line.contains("bookworm-backports")
    })
}

fn read_apt_sources() -> String {
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            if let Ok(more) = fs::read_to_string(entry.path()) {
                text.push('\n');
                text.push_str(&more);
            }
        }
    }
    text
}

fn is_root() -> bool {
    shell::output_of("id", &["-u"]).is_some_and(|uid| uid.trim() == "0")
}

/// A QEMU that `QEMU_X86` or `QEMU_ARM` names must be >= [`MIN_QEMU`]: it
/// is the user's, checked but never installed over.
fn check_overridden_qemus() -> Result<(), Error> {
    for arch in Arch::ALL {
        let Some(binary) = arch.qemu_override_value() else {
            continue;
        };
        let state = probe(&binary);
        step(format!(
            "setup: {} (named by {})",
            describe(&binary, &state),
            arch.qemu_override()
        ));
        if !matches!(state, QemuState::Ready(_)) {
            return Err(Error::Setup(format!(
                "{}={binary}: {}; point it at QEMU >= {MIN_QEMU}, or unset it to use {}",
                arch.qemu_override(),
                describe(&binary, &state),
                arch.default_qemu_binary()
            )));
        }
    }
    Ok(())
}

fn ensure_qemu() -> Result<(), Error> {
    check_overridden_qemus()?;
    let binaries: Vec<&str> = Arch::ALL
        .iter()
        .filter(|arch| arch.qemu_override_value().is_none())
        .map(|arch| arch.default_qemu_binary())
        .collect();
    if binaries.is_empty() {
        return Ok(());
    }
    let states: Vec<QemuState> = binaries.iter().map(|binary| probe(binary)).collect();
    for (binary, state) in binaries.iter().zip(&states) {
        step(format!("setup: {}", describe(binary, state)));
    }
    if states
        .iter()
        .all(|state| matches!(state, QemuState::Ready(_)))
    {
        return Ok(());
    }
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    match install_plan(
        &os_release,
        &read_apt_sources(),
        shell::on_path("apt-get"),
        is_root(),
    ) {
        InstallPlan::Manual(how) => {
            Err(Error::Setup(format!("QEMU >= {MIN_QEMU} is needed: {how}")))
        }
        InstallPlan::Automatic(steps) => {
            for install_step in &steps {
                step(format!("setup: {}", install_step.shell(false)));
                match install_step {
                    InstallStep::WriteFile { path, contents } => fs::write(path, contents)
                        .map_err(|e| Error::Setup(format!("cannot write {path}: {e}")))?,
                    InstallStep::Run(words) => {
                        let (env, command): (Vec<&String>, Vec<&String>) =
                            words.iter().partition(|word| word.contains('='));
                        let Some((program, args)) = command.split_first() else {
                            continue;
                        };
                        let mut process = Command::new(program);
                        process.args(args);
                        for pair in env {
                            if let Some((key, value)) = pair.split_once('=') {
                                process.env(key, value);
                            }
                        }
                        shell::run(&mut process)?;
                    }
                }
            }
            let states: Vec<QemuState> = binaries.iter().map(|binary| probe(binary)).collect();
            for (binary, state) in binaries.iter().zip(&states) {
                step(format!("setup: {}", describe(binary, state)));
            }
            if states
                .iter()
                .all(|state| matches!(state, QemuState::Ready(_)))
            {
                Ok(())
            } else {
                Err(Error::Setup(format!(
                    "the installed QEMU is still not >= {MIN_QEMU}; this distribution's packages are too \
                     old: install QEMU >= {MIN_QEMU} by hand"
                )))
            }
        }
    }
}

// ---------------------------------------------------------------- gdb

/// The debuggers that can attach to `arch`'s kernel, preferred first: an
/// AArch64 kernel needs `gdb-multiarch` (Debian's `gdb` knows only the host).
pub fn gdb_candidates(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::X86_64 => &["gdb", "gdb-multiarch"],
        Arch::Aarch64 => &["gdb-multiarch"],
    }
}

/// The Debian package of the first of [`gdb_candidates`].
fn gdb_package(arch: Arch) -> &'static str {
    gdb_candidates(arch)[0]
}

/// A gdb for `arch`: one on `PATH`, or the one apt-get installs when this
/// runs as root; otherwise says how to install it. Returns the command to
/// print either way (QEMU waits for whichever debugger attaches).
pub fn ensure_gdb(arch: Arch) -> &'static str {
    let package = gdb_package(arch);
    if let Some(found) = gdb_candidates(arch).iter().find(|gdb| shell::on_path(gdb)) {
        step(format!(
            "setup: {found} is ready to debug the {arch} kernel"
        ));
        return found;
    }
    if shell::on_path("apt-get") && is_root() {
        step(format!(
            "setup: installing {package} to debug the {arch} kernel"
        ));
        let install = |command: &mut Command| shell::run(command).is_ok();
        let installed = install(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends", package]),
        ) || (install(Command::new("apt-get").arg("update"))
            && install(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "--no-install-recommends", package]),
            ));
        if installed {
            return package;
        }
    }
    step(format!(
        "setup: no {package} found; to debug the {arch} kernel install it (sudo apt-get install {package})"
    ));
    package
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                            VERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
    const TRIXIE: &str =
        "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_CODENAME=trixie\nID=debian\n";
    const PLAIN_SOURCES: &str = "deb http://deb.debian.org/debian bookworm main\n\
                                 deb http://deb.debian.org/debian-security bookworm-security main\n";

    fn v(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn reads_debian_and_upstream_version_lines() {
        let debian = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                      Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(parse_qemu_version(debian), Some(v(10, 0, 2)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)"),
            Some(v(7, 2, 19))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.1.50"),
            Some(v(10, 1, 50))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.2.0-rc1"),
            Some(v(9, 2, 0))
        );
        assert_eq!(parse_qemu_version("something else entirely"), None);
        assert_eq!(parse_qemu_version(""), None);
    }

    #[test]
    fn version_states() {
        let state = |text| QemuState::from_version_output(Some(text));
        assert_eq!(
            state("QEMU emulator version 10.0.0"),
            QemuState::Ready(v(10, 0, 0))
        );
        assert_eq!(
            state("QEMU emulator version 11.0.0"),
            QemuState::Ready(v(11, 0, 0))
        );
        assert_eq!(
            state("QEMU emulator version 9.2.4"),
            QemuState::TooOld(v(9, 2, 4))
        );
        assert_eq!(
            state("QEMU emulator version 7.2.19 (Debian)"),
            QemuState::TooOld(v(7, 2, 19))
        );
        assert_eq!(QemuState::from_version_output(None), QemuState::Missing);
        assert!(matches!(state("garbage"), QemuState::Unreadable(_)));
        assert!(
            describe("qemu-system-x86_64", &state("QEMU emulator version 7.2.19"))
                .contains("too old")
        );
    }

    #[test]
    fn bookworm_as_root_adds_backports_then_installs_from_it() {
        let InstallPlan::Automatic(steps) = install_plan(BOOKWORM, PLAIN_SOURCES, true, true)
        else {
            panic!("expected an automatic plan");
        };
        assert_eq!(
            steps,
            [
                InstallStep::WriteFile {
                    path: "/etc/apt/sources.list.d/bookworm-backports.list".into(),
                    contents: "deb http://deb.debian.org/debian bookworm-backports main\n".into(),
                },
                InstallStep::run(&["apt-get", "update"]),
                InstallStep::run(&[
                    "DEBIAN_FRONTEND=noninteractive",
                    "apt-get",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "-t",
                    "bookworm-backports",
                    "qemu-system-x86",
                    "qemu-system-arm",
                ]),
            ]
        );
    }

    #[test]
    fn an_existing_backports_source_is_not_written_again() {
        let sources = format!(
            "{PLAIN_SOURCES}deb http://deb.debian.org/debian bookworm-backports main contrib\n"
        );
        let InstallPlan::Automatic(steps) = install_plan(BOOKWORM, &sources, true, true) else {
            panic!("expected an automatic plan");
        };
        assert_eq!(steps[0], InstallStep::run(&["apt-get", "update"]));
        assert_eq!(steps.len(), 2);
        // deb822 sources count too.
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n";
        let InstallPlan::Automatic(steps) = install_plan(BOOKWORM, deb822, true, true) else {
            panic!("expected an automatic plan");
        };
        assert_eq!(steps.len(), 2);
    }

    #[test]
    fn a_commented_out_backports_line_does_not_count() {
        let sources =
            format!("{PLAIN_SOURCES}# deb http://deb.debian.org/debian bookworm-backports main\n");
        let InstallPlan::Automatic(steps) = install_plan(BOOKWORM, &sources, true, true) else {
            panic!("expected an automatic plan");
        };
        assert!(matches!(steps[0], InstallStep::WriteFile { .. }));
    }

    #[test]
    fn other_debian_releases_install_without_backports() {
        let InstallPlan::Automatic(steps) = install_plan(TRIXIE, "", true, true) else {
            panic!("expected an automatic plan");
        };
        assert_eq!(steps.len(), 2);
        let InstallStep::Run(install) = &steps[1] else {
            panic!("expected apt-get install");
        };
        assert!(!install.iter().any(|word| word == "-t"));
        assert!(install.ends_with(&["qemu-system-x86".to_string(), "qemu-system-arm".to_string()]));
    }

    #[test]
    fn without_root_the_exact_commands_are_printed() {
        let InstallPlan::Manual(message) = install_plan(BOOKWORM, PLAIN_SOURCES, true, false)
        else {
            panic!("expected a manual plan");
        };
        assert!(message.contains(
            "echo 'deb http://deb.debian.org/debian bookworm-backports main' | sudo tee \
             /etc/apt/sources.list.d/bookworm-backports.list"
        ));
        assert!(message.contains("sudo apt-get update"));
        assert!(message.contains(
            "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
             -t bookworm-backports qemu-system-x86 qemu-system-arm"
        ));
    }

    #[test]
    fn without_apt_the_user_is_told_what_to_install() {
        let InstallPlan::Manual(message) = install_plan(BOOKWORM, "", false, true) else {
            panic!("expected a manual plan");
        };
        assert!(message.contains("QEMU >= 10.0.0"));
    }

    #[test]
    fn reads_the_toolchain_file() {
        let text = "[toolchain]\nchannel = \"1.95.0\"\ncomponents = [\"rustfmt\", \"clippy\"]\n\
                    targets = [\n  \"x86_64-unknown-none\", # bare metal\n  \"aarch64-unknown-none\",\n]\n\
                    profile = \"minimal\"\n";
        assert_eq!(toml_string(text, "channel").as_deref(), Some("1.95.0"));
        assert_eq!(toml_string_array(text, "components"), ["rustfmt", "clippy"]);
        assert_eq!(
            toml_string_array(text, "targets"),
            ["x86_64-unknown-none", "aarch64-unknown-none"]
        );
        assert!(toml_string_array(text, "absent").is_empty());
    }

    #[test]
    fn component_names_carry_the_host_triple() {
        let listing = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(component_installed(listing, "clippy"));
        assert!(!component_installed(listing, "rustfmt"));
    }
}
