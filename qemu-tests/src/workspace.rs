//! Where the workspace is and what is in it, as cargo itself reports it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The cargo workspace this crate belongs to.
#[derive(Clone, Debug)]
pub struct Workspace {
    pub root: PathBuf,
    /// Honours `CARGO_TARGET_DIR` and cargo configuration, because cargo says it.
    pub target_dir: PathBuf,
    pub packages: Vec<Package>,
}

#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub manifest_dir: PathBuf,
    pub default_member: bool,
    /// Names of `[[bench]]` targets (explicit or found in `benches/`).
    pub benches: Vec<String>,
}

impl Workspace {
    /// Asks `cargo metadata` about the workspace the caller is in: the one
    /// whose package cargo runs us from, else the current directory's (see
    /// `start_dir`).
    pub fn locate() -> Result<Workspace, String> {
        let start = start_dir(
            std::env::var_os("CARGO_MANIFEST_DIR"),
            std::env::current_dir().ok(),
        )
        .ok_or("neither CARGO_MANIFEST_DIR nor a current directory: run this from the checkout")?;
        // Inside a member's directory cargo reports that member as the only default
        // member, so ask from the workspace root.
        let manifest = run_cargo(
            &["locate-project", "--workspace", "--message-format", "plain"],
            &start,
        )
        .map_err(|err| format!("{err} (asked from {})", start.display()))?;
        let manifest = PathBuf::from(manifest.trim());
        let root = manifest
            .parent()
            .ok_or_else(|| format!("{} has no directory", manifest.display()))?;
        Workspace::from_metadata(&run_cargo(
            &["metadata", "--format-version", "1", "--no-deps"],
            root,
        )?)
    }

    /// Reads the JSON that `cargo metadata --format-version 1 --no-deps` prints.
    pub fn from_metadata(json: &str) -> Result<Workspace, String> {
        let metadata: Value =
            serde_json::from_str(json).map_err(|e| format!("cargo metadata is not JSON: {e}"))?;
        let path = |key: &str| -> Result<PathBuf, String> {
            metadata[key]
                .as_str()
                .map(PathBuf::from)
                .ok_or_else(|| format!("cargo metadata has no {key}"))
        };
        let root = path("workspace_root")?;
        let target_dir = path("target_directory")?;
        let default_ids: Vec<&str> = metadata["workspace_default_members"]
            .as_array()
            .ok_or("cargo metadata has no workspace_default_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let packages = metadata["packages"]
            .as_array()
            .ok_or("cargo metadata has no packages")?
            .iter()
            .map(|package| {
                let name = package["name"].as_str().ok_or("a package without a name")?;
                let manifest = package["manifest_path"]
                    .as_str()
                    .ok_or("a package without a manifest_path")?;
                let id = package["id"].as_str().unwrap_or_default();
                let benches = package["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|target| {
                        target["kind"]
                            .as_array()
                            .is_some_and(|kinds| kinds.iter().any(|k| k == "bench"))
                    })
                    .filter_map(|target| target["name"].as_str().map(str::to_string))
                    .collect();
                Ok(Package {
                    name: name.to_string(),
                    manifest_dir: Path::new(manifest)
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    default_member: default_ids.contains(&id),
                    benches,
                })
            })
            .collect::<Result<Vec<_>, &str>>()?;
        Ok(Workspace {
            root,
            target_dir,
            packages,
        })
    }

    /// `target/qemu-logs`: every boot's serial log.
    pub fn log_dir(&self) -> PathBuf {
        self.target_dir.join("qemu-logs")
    }

    /// The kernel ELF that [`crate::build_kernel`] produces for `target`.
    pub fn kernel_elf(&self, target: &str) -> PathBuf {
        self.kernel_elf_of(target, Profile::Release)
    }

    /// The kernel ELF of `profile` for `target`.
    pub fn kernel_elf_of(&self, target: &str, profile: Profile) -> PathBuf {
        self.target_dir
            .join(target)
            .join(profile.directory())
            .join("kernel")
    }

    /// A cargo command that runs in the workspace root.
    pub fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut command = cargo();
        command
            .args(args.into_iter().map(Into::into))
            .current_dir(&self.root);
        command
    }
}

/// What `cargo ARGS` prints when run in `dir`.
/// Where to ask cargo for the workspace: the package directory cargo names
/// when it runs us (`cargo run`, `cargo xtask`, `cargo test` set
/// `CARGO_MANIFEST_DIR` at run time), else the current directory. Never the
/// directory the binary was built in: a copied or moved checkout would build
/// and boot the other tree.
fn start_dir(manifest_dir: Option<OsString>, current_dir: Option<PathBuf>) -> Option<PathBuf> {
    manifest_dir
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or(current_dir)
}

fn run_cargo(args: &[&str], dir: &Path) -> Result<String, String> {
    let output = cargo()
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run cargo {}: {e}", args[0]))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "cargo {} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The cargo that runs us (cargo sets `CARGO` for `cargo run` and `cargo test`).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = r#"{
        "packages": [
            {"name": "kernel", "id": "path+file:///w/kernel#0.1.0",
             "manifest_path": "/w/kernel/Cargo.toml",
             "targets": [{"kind": ["bin"], "name": "kernel"}]},
            {"name": "io-page-table", "id": "path+file:///w/drivers/io-page-table#0.1.0",
             "manifest_path": "/w/drivers/io-page-table/Cargo.toml",
             "targets": [{"kind": ["lib"], "name": "io_page_table"},
                         {"kind": ["bench"], "name": "map_unmap"}]}
        ],
        "workspace_default_members": ["path+file:///w/drivers/io-page-table#0.1.0"],
        "workspace_root": "/w",
        "target_directory": "/elsewhere/target",
        "version": 1
    }"#;

    #[test]
    fn reads_root_target_dir_members_and_benches() {
        let ws = Workspace::from_metadata(METADATA).unwrap();
        assert_eq!(ws.root, Path::new("/w"));
        assert_eq!(ws.target_dir, Path::new("/elsewhere/target"));
        assert_eq!(ws.packages.len(), 2);
        assert!(!ws.packages[0].default_member);
        assert!(ws.packages[1].default_member);
        assert_eq!(ws.packages[1].benches, ["map_unmap"]);
        assert_eq!(
            ws.packages[1].manifest_dir,
            Path::new("/w/drivers/io-page-table")
        );
        assert_eq!(
            ws.kernel_elf("aarch64-unknown-none"),
            Path::new("/elsewhere/target/aarch64-unknown-none/release/kernel")
        );
    }

    /// Issue 19: the workspace is found at run time, never from the path the
    /// binary was built in.
    #[test]
    fn the_workspace_is_looked_for_where_cargo_runs_us_then_here() {
        let here = Some(PathBuf::from("/copy/of/the/checkout"));
        assert_eq!(
            start_dir(Some("/moved/xtask".into()), here.clone()),
            Some(PathBuf::from("/moved/xtask"))
        );
        assert_eq!(start_dir(None, here.clone()), here);
        assert_eq!(start_dir(Some("".into()), here.clone()), here);
        assert_eq!(start_dir(None, None), None);
    }

    #[test]
    fn rejects_what_is_not_metadata() {
        assert!(Workspace::from_metadata("not json").is_err());
        assert!(Workspace::from_metadata("{}").is_err());
    }

    #[test]
    fn the_real_workspace_has_this_crate_as_a_default_member() {
        let ws = Workspace::locate().unwrap();
        let default = |name: &str| {
            ws.packages
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("no package {name}"))
                .default_member
        };
        assert!(default("qemu-tests"));
        // Not just the package whose directory cargo ran in.
        assert!(default("xtask"));
        assert!(!default("kernel"));
        assert!(!default("boot"));
        assert!(ws.root.join("Cargo.toml").is_file());
    }
}

/// A cargo profile the kernel is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Optimized, with debug info (`[profile.release] debug = true`): what
    /// the tests boot.
    Release,
    /// Unoptimized (`dev`): every variable and line where the source has
    /// it, for stepping through in gdb.
    Debug,
}

impl Profile {
    /// Its directory under `target/<triple>/`.
    pub fn directory(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}
