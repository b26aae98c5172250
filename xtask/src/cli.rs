//! The command line of `cargo xtask`, on `clap` (derive): help for every
//! subcommand, `--version`, conflicting flags and value ranges refused,
//! suggestions for mistyped commands, options and configuration names.

use std::ffi::OsString;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};

/// The names `--config` takes.
fn config_names() -> PossibleValuesParser {
    PossibleValuesParser::new(qemu_tests::CONFIGS.iter().map(|config| config.name))
}

/// Build, boot and test the IOMMU unikernel under QEMU.
///
/// Everything after `--` goes to QEMU (run) or to the criterion benches
/// (bench) unchanged.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Install what is missing: rustup targets and components, QEMU >= 10.0.
    Setup,
    /// Build the kernel for the configurations' architectures.
    Build {
        /// A configuration whose kernel to build (repeatable; default: all).
        #[arg(long = "config", value_parser = config_names())]
        configs: Vec<String>,
    },
    /// Build and boot one configuration in demo mode.
    Run {
        /// The configuration to boot.
        #[arg(long, value_parser = config_names(), default_value = qemu_tests::DEFAULT_RUN_CONFIG)]
        config: String,
        /// The kernel command line, e.g. "demo tasks=nested" or "test filter=dma".
        #[arg(long)]
        cmdline: Option<String>,
        /// Start QEMU halted with a gdb stub on localhost:1234 and print the
        /// gdb command that attaches to it.
        #[arg(long)]
        gdb: bool,
        /// Boot an unoptimized (dev profile) kernel, for stepping in gdb.
        #[arg(long)]
        debug: bool,
        /// Arguments for QEMU, after `--`.
        #[arg(last = true, allow_hyphen_values = true)]
        qemu_args: Vec<OsString>,
    },
    /// Host tests, then boot every configuration in test mode.
    Test {
        /// A configuration to boot (repeatable; default: all).
        #[arg(long = "config", value_parser = config_names())]
        configs: Vec<String>,
        /// Run only the in-kernel tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Seed of the randomized in-kernel tests.
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds one boot may take (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
        /// Only the host tests.
        #[arg(long, conflicts_with = "boot_only")]
        host_only: bool,
        /// Only the QEMU boot tests.
        #[arg(long)]
        boot_only: bool,
        /// QEMUs booting at once (default 2).
        #[arg(short = 'j', long = "jobs", value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: Option<u64>,
        /// Also write the boot tests' results as JUnit XML to this file.
        #[arg(long, value_name = "PATH", conflicts_with = "host_only")]
        junit: Option<std::path::PathBuf>,
        /// Name the tests instead of running them: host tests, and each
        /// configuration's in-kernel tests (`CONFIG TEST` lines).
        #[arg(long, conflicts_with_all = ["junit", "seed"])]
        list: bool,
        /// Boot the one configuration's tests (narrowed by --filter) halted
        /// under a gdb stub, as `run --gdb` does.
        #[arg(long, conflicts_with_all = ["list", "junit", "host_only"])]
        gdb: bool,
        /// With --gdb: an unoptimized (dev profile) kernel.
        #[arg(long, requires = "gdb")]
        debug: bool,
    },
    /// cargo fmt --check, cargo clippy -D warnings (host and both kernel
    /// targets) and the docs with no warning.
    Lint,
    /// Build the docs of every crate: the host crates for the host, the
    /// kernel and boot crates for their targets; any rustdoc warning fails.
    Doc,
    /// Criterion benches of the workspace, then in-kernel counters under QEMU.
    Bench {
        /// A configuration to measure (repeatable; default: all).
        #[arg(long = "config", value_parser = config_names())]
        configs: Vec<String>,
        /// Seconds one boot may take (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
        /// Only the criterion benches.
        #[arg(long, conflicts_with = "qemu_only")]
        host_only: bool,
        /// Only the in-kernel counters.
        #[arg(long)]
        qemu_only: bool,
        /// QEMUs booting at once (default 2; counters are steadier with 1).
        #[arg(short = 'j', long = "jobs", value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: Option<u64>,
        /// Arguments for the criterion benches, after `--`.
        #[arg(last = true, allow_hyphen_values = true)]
        criterion_args: Vec<OsString>,
    },
    /// List the QEMU configurations.
    Configs,
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Setup,
    Build { configs: Vec<String> },
    Run(RunArgs),
    Test(TestArgs),
    Lint,
    Doc,
    Bench(BenchArgs),
    Configs,
}

#[derive(Debug, PartialEq)]
pub struct RunArgs {
    pub config: Option<String>,
    pub cmdline: Option<String>,
    /// Halted, with a gdb stub.
    pub gdb: bool,
    /// The dev-profile kernel.
    pub debug: bool,
    pub qemu_args: Vec<OsString>,
}

#[derive(Debug, PartialEq)]
pub struct TestArgs {
    pub configs: Vec<String>,
    /// QEMUs booting at once (`None`: the default).
    pub jobs: Option<usize>,
    /// Where to write the JUnit XML of the boot tests.
    pub junit: Option<std::path::PathBuf>,
    /// Only name the tests.
    pub list: bool,
    /// Boot the tests under a gdb stub instead.
    pub gdb: bool,
    /// With `gdb`: the dev-profile kernel.
    pub debug: bool,
    pub filter: Option<String>,
    pub seed: Option<u64>,
    pub timeout: Option<Duration>,
    pub host: bool,
    pub boot: bool,
}

#[derive(Debug, PartialEq)]
pub struct BenchArgs {
    pub configs: Vec<String>,
    /// QEMUs booting at once (`None`: the default).
    pub jobs: Option<usize>,
    pub timeout: Option<Duration>,
    pub host: bool,
    pub qemu: bool,
    pub criterion_args: Vec<OsString>,
}

/// Parses the arguments after the program name; clap's error (or the help
/// or version text it was asked for) otherwise, which the caller prints with
/// `clap::Error::exit`.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once(OsString::from("cargo xtask")).chain(args))?;
    Ok(match cli.command {
        CliCommand::Setup => Command::Setup,
        CliCommand::Build { configs } => Command::Build { configs },
        CliCommand::Run {
            config,
            cmdline,
            gdb,
            debug,
            qemu_args,
        } => Command::Run(RunArgs {
            config: Some(config),
            cmdline,
            gdb,
            debug,
            qemu_args,
        }),
        CliCommand::Test {
            configs,
            filter,
            seed,
            timeout,
            host_only,
            boot_only,
            jobs,
            junit,
            list,
            gdb,
            debug,
        } => Command::Test(TestArgs {
            gdb,
            debug,
            configs,
            jobs: jobs.map(|jobs| jobs as usize),
            junit,
            list,
            filter,
            seed,
            timeout: timeout.map(Duration::from_secs),
            host: !boot_only,
            boot: !host_only,
        }),
        CliCommand::Lint => Command::Lint,
        CliCommand::Doc => Command::Doc,
        CliCommand::Bench {
            configs,
            timeout,
            host_only,
            qemu_only,
            jobs,
            criterion_args,
        } => Command::Bench(BenchArgs {
            configs,
            jobs: jobs.map(|jobs| jobs as usize),
            timeout: timeout.map(Duration::from_secs),
            host: !qemu_only,
            qemu: !host_only,
            criterion_args,
        }),
        CliCommand::Configs => Command::Configs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse_words(words: &[&str]) -> Result<Command, clap::Error> {
        parse(words.iter().map(OsString::from))
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn help_and_version_are_answers_not_errors() {
        for words in [
            &["--help"][..],
            &["help"],
            &["help", "run"],
            &["run", "--help"],
            &["bench", "--help"],
        ] {
            let kind = parse_words(words).unwrap_err().kind();
            assert_eq!(kind, ErrorKind::DisplayHelp, "{words:?}");
        }
        assert_eq!(
            parse_words(&["--version"]).unwrap_err().kind(),
            ErrorKind::DisplayVersion
        );
    }

    #[test]
    fn run_passes_everything_after_the_separator_unchanged() {
        let command = parse_words(&[
            "run", "--config", "none-arm", "--", "-s", "-S", "--config", "x",
        ])
        .unwrap();
        assert_eq!(
            command,
            Command::Run(RunArgs {
                config: Some("none-arm".into()),
                cmdline: None,
                gdb: false,
                debug: false,
                qemu_args: ["-s", "-S", "--config", "x"].map(OsString::from).to_vec(),
            })
        );
    }

    #[test]
    fn run_takes_an_inline_cmdline_and_defaults_its_configuration() {
        let Command::Run(run) = parse_words(&["run", "--cmdline=test filter=dma"]).unwrap() else {
            panic!("not run");
        };
        assert_eq!(run.cmdline.as_deref(), Some("test filter=dma"));
        assert_eq!(run.config.as_deref(), Some(qemu_tests::DEFAULT_RUN_CONFIG));
        assert!(run.qemu_args.is_empty());
    }

    #[test]
    fn test_options() {
        let Command::Test(test) = parse_words(&[
            "test",
            "--config",
            "vtd",
            "--config=smmuv3",
            "--filter",
            "dma",
            "--seed",
            "42",
            "--timeout",
            "60",
            "--boot-only",
        ])
        .unwrap() else {
            panic!("not test");
        };
        assert_eq!(test.configs, ["vtd", "smmuv3"]);
        assert_eq!(test.filter.as_deref(), Some("dma"));
        assert_eq!(test.seed, Some(42));
        assert_eq!(test.timeout, Some(Duration::from_secs(60)));
        assert!(!test.host && test.boot);
    }

    #[test]
    fn mistakes_are_refused_with_clap_s_reason() {
        for (words, kind) in [
            (&["frobnicate"][..], ErrorKind::InvalidSubcommand),
            (&["tset"], ErrorKind::InvalidSubcommand),
            (&["test", "--seed", "many"], ErrorKind::ValueValidation),
            (&["test", "--seed"], ErrorKind::InvalidValue),
            (&["test", "--bogus"], ErrorKind::UnknownArgument),
            (
                &["test", "--host-only", "--boot-only"],
                ErrorKind::ArgumentConflict,
            ),
            (&["test", "stray"], ErrorKind::UnknownArgument),
            (&["lint", "--", "x"], ErrorKind::UnknownArgument),
            (&["test", "--timeout", "0"], ErrorKind::ValueValidation),
            (&["test", "--config", "vdt"], ErrorKind::InvalidValue),
            (
                &["run", "--config", "vtd", "--config", "amdvi"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["bench", "--host-only", "--qemu-only"],
                ErrorKind::ArgumentConflict,
            ),
        ] {
            let error = parse_words(words).unwrap_err();
            assert_eq!(error.kind(), kind, "{words:?}: {error}");
        }
    }

    #[test]
    fn a_mistyped_command_or_configuration_gets_a_suggestion() {
        let error = parse_words(&["tset"]).unwrap_err().to_string();
        assert!(error.contains("test"), "{error}");
        let error = parse_words(&["run", "--config", "vdt"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("vtd"), "{error}");
    }

    #[test]
    fn bench_passes_criterion_arguments() {
        let Command::Bench(bench) =
            parse_words(&["bench", "--host-only", "--", "--quick"]).unwrap()
        else {
            panic!("not bench");
        };
        assert!(bench.host && !bench.qemu);
        assert_eq!(bench.criterion_args, [OsString::from("--quick")]);
    }

    #[test]
    fn jobs_take_a_count_from_1() {
        match parse_words(&["test", "-j", "4", "--boot-only"]).unwrap() {
            Command::Test(args) => assert_eq!(args.jobs, Some(4)),
            other => panic!("{other:?}"),
        }
        match parse_words(&["bench", "--jobs", "1"]).unwrap() {
            Command::Bench(args) => assert_eq!(args.jobs, Some(1)),
            other => panic!("{other:?}"),
        }
        for bad in ["0", "65", "two"] {
            assert_eq!(
                parse_words(&["test", "-j", bad]).unwrap_err().kind(),
                ErrorKind::ValueValidation,
                "{bad}"
            );
        }
    }

    #[test]
    fn list_names_tests_and_excludes_what_only_a_run_means() {
        match parse_words(&["test", "--list", "--config", "vtd"]).unwrap() {
            Command::Test(args) => assert!(args.list && args.host && args.boot),
            other => panic!("{other:?}"),
        }
        for conflicting in [&["--junit", "x.xml"][..], &["--seed", "3"]] {
            let words = [&["test", "--list"][..], conflicting].concat();
            assert_eq!(
                parse_words(&words).unwrap_err().kind(),
                ErrorKind::ArgumentConflict,
                "{words:?}"
            );
        }
    }

    #[test]
    fn gdb_runs_one_thing_and_debug_needs_it_in_test() {
        match parse_words(&["run", "--gdb", "--debug"]).unwrap() {
            Command::Run(args) => assert!(args.gdb && args.debug),
            other => panic!("{other:?}"),
        }
        match parse_words(&["test", "--gdb", "--config", "vtd", "--filter", "dma"]).unwrap() {
            Command::Test(args) => assert!(args.gdb && !args.debug),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_words(&["test", "--debug"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse_words(&["test", "--gdb", "--list"])
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
    }
}
