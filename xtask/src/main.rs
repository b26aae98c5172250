//! `cargo xtask`: the project's one entry point for setup, build, run, test, lint
//! and bench. The QEMU configurations and the boot-test machinery live in the
//! `qemu-tests` library so that `cargo test -p qemu-tests` runs the same thing.

mod bench;
mod boots;
mod cli;
mod error;
mod setup;
mod shell;
mod test;

use std::process::ExitCode;

use qemu_tests::{Arch, CONFIGS, DEFAULT_RUN_CONFIG, KernelCmdline, Workspace};

use crate::cli::{Command, RunArgs};
use crate::error::Error;
use crate::shell::step;

fn main() -> ExitCode {
    // clap prints its own answers: help and version on stdout (exit 0),
    // a mistake with its suggestion on stderr (exit 2).
    let command = cli::parse(std::env::args_os().skip(1)).unwrap_or_else(|error| error.exit());
    match dispatch(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            if matches!(error, Error::Usage(_)) {
                eprintln!(
                    "(cargo xtask help shows the commands, cargo xtask configs the configurations)"
                );
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<(), Error> {
    if let Command::Configs = command {
        print_configs();
        return Ok(());
    }
    let ws = qemu_tests::workspace().map_err(Error::Other)?;
    match command {
        Command::Setup => setup::ensure(ws),
        Command::Build { configs } => build(ws, &configs),
        Command::Run(args) => run(ws, args),
        Command::Test(args) => {
            if args.boot {
                setup::ensure(ws)?;
            } else {
                setup::ensure_rust(ws)?;
            }
            test::test(ws, args)
        }
        Command::Lint => {
            setup::ensure_rust(ws)?;
            lint(ws)
        }
        Command::Bench(args) => {
            if args.qemu {
                setup::ensure(ws)?;
            } else {
                setup::ensure_rust(ws)?;
            }
            bench::bench(ws, args)
        }
        Command::Configs => Ok(()),
    }
}

fn print_configs() {
    println!("{:<14} {:<8} {:<48} QEMU machine", "name", "arch", "what");
    for config in CONFIGS {
        let default = if config.name == DEFAULT_RUN_CONFIG {
            " (run default)"
        } else {
            ""
        };
        println!(
            "{:<14} {:<8} {:<48} {}",
            config.name,
            config.arch.to_string(),
            format!("{}{default}", config.about),
            config.machine.join(" ")
        );
    }
}

fn build(ws: &Workspace, names: &[String]) -> Result<(), Error> {
    setup::ensure_rust(ws)?;
    let configs = boots::select(names)?;
    let mut failed = Vec::new();
    for (arch, built) in boots::build_kernels(ws, &configs) {
        match built {
            Ok(elf) => step(format!("{arch} kernel: {}", elf.display())),
            Err(why) => failed.push(format!("{arch}: {why}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(failed.join("; ")))
    }
}

fn run(ws: &Workspace, args: RunArgs) -> Result<(), Error> {
    let name = args.config.as_deref().unwrap_or(DEFAULT_RUN_CONFIG);
    let config = boots::select(&[name.to_string()])?[0];
    setup::ensure(ws)?;
    step(format!(
        "build the {} kernel ({})",
        config.arch,
        config.arch.target()
    ));
    let kernel = qemu_tests::build_kernel(ws, config.arch, true).map_err(Error::Failed)?;
    let cmdline = args
        .cmdline
        .unwrap_or_else(|| KernelCmdline::new("demo").to_string());
    step(format!(
        "boot {} ({}); Ctrl-C stops QEMU",
        config.name, config.about
    ));
    let mut qemu = config.qemu_command(&kernel, &cmdline, &args.qemu_args);
    println!(
        "$ {}",
        config.qemu_command_line(&kernel, &cmdline, &args.qemu_args)
    );
    let status = qemu
        .status()
        .map_err(|e| Error::Other(format!("cannot start {}: {e}", config.arch.qemu_binary())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!("QEMU exited with {status}")))
    }
}

fn lint(ws: &Workspace) -> Result<(), Error> {
    let mut commands = vec![
        ("rustfmt", ws.cargo(["fmt", "--all", "--", "--check"])),
        (
            "clippy (host)",
            ws.cargo(["clippy", "--all-targets", "--", "-D", "warnings"]),
        ),
    ];
    // Everything but the host tools must also build (and be clean) bare-metal.
    for arch in Arch::ALL {
        let mut clippy = ws.cargo([
            "clippy",
            "--workspace",
            "--exclude",
            "xtask",
            "--exclude",
            "qemu-tests",
        ]);
        clippy.args(["--target", arch.target(), "--", "-D", "warnings"]);
        commands.push((arch.target(), clippy));
    }
    let mut failed = Vec::new();
    for (what, mut command) in commands {
        step(format!("lint: {what}"));
        if shell::run(&mut command).is_err() {
            failed.push(what);
        }
    }
    if failed.is_empty() {
        step("lint: clean");
        Ok(())
    } else {
        Err(Error::Failed(format!("lint failed: {}", failed.join(", "))))
    }
}
