//! Running commands where the user can see them.

use std::path::Path;
use std::process::Command;

use crate::error::Error;

/// Announces a step.
pub fn step(message: impl AsRef<str>) {
    println!("==> {}", message.as_ref());
}

/// `command` as a shell would show it.
pub fn display(command: &Command) -> String {
    let env = command.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), value.to_string_lossy()))
    });
    // `$CARGO` is a long toolchain path; `cargo` says the same to a reader.
    let program = Path::new(command.get_program());
    let program = if program.file_name().is_some_and(|name| name == "cargo") {
        "cargo".to_string()
    } else {
        program.to_string_lossy().into_owned()
    };
    env.chain(std::iter::once(program))
        .chain(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .map(|word| qemu_tests::shell_quote(&word))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints `command`, runs it with the terminal attached, and fails unless it succeeds.
pub fn run(command: &mut Command) -> Result<(), Error> {
    let shown = display(command);
    println!("$ {shown}");
    let status = command
        .status()
        .map_err(|e| Error::Other(format!("cannot run `{shown}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: shown,
            status: status.to_string(),
        })
    }
}

/// The first line of what `program args` prints, or `None` if it does not run.
pub fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
