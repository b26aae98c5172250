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
        Command::Test(args) if args.gdb => {
            let [config] = &args.configs[..] else {
                return Err(Error::Usage(
                    "test --gdb boots one configuration: name it with --config".into(),
                ));
            };
            let options = qemu_tests::TestOptions {
                filter: args.filter.clone(),
                seed: args.seed,
                ..Default::default()
            };
            run(
                ws,
                RunArgs {
                    config: Some(config.clone()),
                    cmdline: Some(options.cmdline().map_err(Error::Usage)?.to_string()),
                    gdb: true,
                    debug: args.debug,
                    qemu_args: Vec::new(),
                },
            )
        }
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
        Command::Doc => {
            setup::ensure_rust(ws)?;
            doc(ws)
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
    let profile = if args.debug {
        qemu_tests::Profile::Debug
    } else {
        qemu_tests::Profile::Release
    };
    let kernel =
        qemu_tests::build_kernel_with(ws, config.arch, true, profile).map_err(Error::Failed)?;
    let cmdline = args
        .cmdline
        .unwrap_or_else(|| KernelCmdline::new("demo").to_string());
    let mut qemu_args = args.qemu_args;
    if args.gdb {
        let gdb = setup::ensure_gdb(config.arch);
        // -s: a gdb stub on tcp::1234; -S: the CPU waits for the debugger.
        qemu_args.extend(["-s", "-S"].map(std::ffi::OsString::from));
        step(
            "QEMU starts halted with a gdb stub on localhost:1234; attach from another terminal with:",
        );
        println!(
            "  {gdb} {} -ex 'target remote localhost:1234' -ex 'hbreak kernel::kernel_main' -ex continue",
            kernel.display()
        );
    }
    step(format!(
        "boot {} ({}); Ctrl-C stops QEMU",
        config.name, config.about
    ));
    let mut qemu = config.qemu_command(&kernel, &cmdline, &qemu_args);
    println!(
        "$ {}",
        config.qemu_command_line(&kernel, &cmdline, &qemu_args)
    );
    let status = run_symbolizing(&mut qemu, &kernel)
        .map_err(|e| Error::Other(format!("cannot start {}: {e}", config.arch.qemu_binary())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!("QEMU exited with {status}")))
    }
}

/// Runs QEMU with its serial console passed through line by line; after a
/// kernel backtrace line, the same backtrace symbolized from `kernel`.
fn run_symbolizing(
    qemu: &mut std::process::Command,
    kernel: &std::path::Path,
) -> std::io::Result<std::process::ExitStatus> {
    use std::io::{BufRead, Write};
    let mut child = qemu.stdout(std::process::Stdio::piped()).spawn()?;
    if let Some(serial) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        for line in std::io::BufReader::new(serial).split(b'\n') {
            let line = String::from_utf8_lossy(&line?).into_owned();
            writeln!(out, "{line}")?;
            if let Some(symbolized) = qemu_tests::symbolize::symbolized(&line, kernel) {
                write!(out, "{symbolized}")?;
            }
            out.flush()?;
        }
    }
    child.wait()
}

/// `cargo doc --no-deps` with every rustdoc warning an error: the default
/// members for the host, then the kernel and boot crates for each target
/// (they cannot build for the host).
fn doc_commands(ws: &Workspace) -> Vec<(String, std::process::Command)> {
    let deny = |mut command: std::process::Command| {
        command.env("RUSTDOCFLAGS", "-D warnings");
        command
    };
    let mut commands = vec![(
        "docs (host crates)".to_string(),
        deny(ws.cargo(["doc", "--no-deps", "--quiet"])),
    )];
    for arch in Arch::ALL {
        commands.push((
            format!("docs (kernel, boot: {})", arch.target()),
            deny(ws.cargo([
                "doc",
                "--no-deps",
                "--quiet",
                "--package",
                "kernel",
                "--package",
                "boot",
                "--target",
                arch.target(),
            ])),
        ));
    }
    commands
}

fn doc(ws: &Workspace) -> Result<(), Error> {
    let mut failed = Vec::new();
    for (what, mut command) in doc_commands(ws) {
        step(what.clone());
        if shell::run(&mut command).is_err() {
            failed.push(what);
        }
    }
    if failed.is_empty() {
        step(format!(
            "docs: no warning; open {}",
            ws.target_dir
                .join("doc")
                .join("iommu")
                .join("index.html")
                .display()
        ));
        Ok(())
    } else {
        Err(Error::Failed(format!("doc failed: {}", failed.join(", "))))
    }
}

fn lint(ws: &Workspace) -> Result<(), Error> {
    let mut commands = vec![
        (
            "rustfmt".to_string(),
            ws.cargo(["fmt", "--all", "--", "--check"]),
        ),
        (
            "clippy (host)".to_string(),
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
        commands.push((arch.target().to_string(), clippy));
    }
    commands.extend(doc_commands(ws));
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
