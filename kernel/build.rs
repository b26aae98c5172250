//! Links the kernel with its architecture's linker script, and builds the user
//! programs (the `user-programs` crate) for the same target so that the kernel
//! can embed them.
//!
//! The nested `cargo build` gets its own target directory under `OUT_DIR` (so
//! it never waits on the outer build's lock) and an environment stripped of
//! everything the outer build set for itself (target dir, flags, wrappers such
//! as clippy's, the jobserver), which would otherwise leak into it.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "none" {
        return;
    }
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest.join("..");
    let script = workspace.join("linker").join(format!("{arch}.ld"));
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");

    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    build_user_programs(&workspace, &target, &arch, &out);
}

fn build_user_programs(workspace: &Path, target: &str, arch: &str, out: &Path) {
    for watched in ["user", "kernel/abi/src", "kernel/abi/Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("user-target");
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--package", "user-programs", "--bins"])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC_")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if leaks {
            command.env_remove(key);
        }
    }
    // Small images: no debug info in the embedded programs. On x86_64 the
    // kernel's static relocation model (.cargo/config.toml) with the target's
    // kernel code model cannot address the user region at 512 GiB with 32-bit
    // absolute relocations; position-independent code (linked --no-pie at its
    // fixed address, so nothing is left to relocate) can.
    command
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    if arch == "x86_64" {
        command.env("CARGO_ENCODED_RUSTFLAGS", "-Crelocation-model=pic");
    }
    let status = command
        .status()
        .expect("failed to run cargo for the user programs");
    assert!(status.success(), "building the user programs failed");

    let release = target_dir.join(target).join("release");
    let mut table = String::from(
        "/// The embedded user programs: (name, ELF image).\n\
         pub static PROGRAMS: &[(&str, &[u8])] = &[\n",
    );
    for name in program_names(workspace) {
        let path = release.join(&name);
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("user_programs.rs"), table).expect("writing user_programs.rs");
}

/// The programs the kernel embeds: the `[[bin]]` tables of `user/Cargo.toml`,
/// which stays the one list (Cargo needs it there for the per-binary settings).
fn program_names(workspace: &Path) -> Vec<String> {
    let manifest = workspace.join("user").join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("reading user/Cargo.toml");
    let mut names = Vec::new();
    let mut in_bin_table = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin_table = line == "[[bin]]";
            continue;
        }
        if !in_bin_table {
            continue;
        }
        if let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            names.push(value.trim().trim_matches('"').to_string());
        }
    }
    assert!(!names.is_empty(), "user/Cargo.toml declares no [[bin]]");
    names
}
