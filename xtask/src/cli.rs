//! The command line of `cargo xtask`, parsed by hand over `std::env::args_os`.

use std::ffi::OsString;
use std::time::Duration;

use crate::error::Error;

pub const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup     install what is missing: rustup targets/components, QEMU >= 10.0
  build     build the kernel            [--config NAME]...
  run       build and boot one configuration in demo mode
              [--config NAME] (default: vtd)  [--cmdline \"WORDS\"]  [-- QEMU_ARGS...]
  test      host tests, then boot every configuration in test mode
              [--config NAME]...  [--filter SUBSTR]  [--seed N]  [--timeout SECS]
              [--host-only | --boot-only]
  lint      cargo fmt --check and cargo clippy -D warnings (host and both kernel targets)
  bench     criterion benches of the workspace, then in-kernel counters under QEMU
              [--config NAME]...  [--timeout SECS]  [--host-only | --qemu-only]
              [-- CRITERION_ARGS...]
  configs   list the QEMU configurations
  help      this text

Everything after `--` goes to QEMU (run) or to the criterion benches (bench) unchanged.";

#[derive(Debug, PartialEq)]
pub enum Command {
    Setup,
    Build { configs: Vec<String> },
    Run(RunArgs),
    Test(TestArgs),
    Lint,
    Bench(BenchArgs),
    Configs,
    Help,
}

#[derive(Debug, PartialEq)]
pub struct RunArgs {
    pub config: Option<String>,
    pub cmdline: Option<String>,
    pub qemu_args: Vec<OsString>,
}

#[derive(Debug, PartialEq)]
pub struct TestArgs {
    pub configs: Vec<String>,
    pub filter: Option<String>,
    pub seed: Option<u64>,
    pub timeout: Option<Duration>,
    pub host: bool,
    pub boot: bool,
}

#[derive(Debug, PartialEq)]
pub struct BenchArgs {
    pub configs: Vec<String>,
    pub timeout: Option<Duration>,
    pub host: bool,
    pub qemu: bool,
    pub criterion_args: Vec<OsString>,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    // Everything after the first `--` is passed on untouched, even non-UTF-8.
    let passthrough = match args.iter().position(|arg| arg == "--") {
        Some(at) => {
            let rest = args.split_off(at + 1);
            args.pop();
            Some(rest)
        }
        None => None,
    };
    let mut words = Vec::with_capacity(args.len());
    for arg in args {
        words.push(
            arg.into_string()
                .map_err(|arg| Error::Usage(format!("argument {arg:?} is not UTF-8")))?,
        );
    }
    let Some((command, options)) = words.split_first() else {
        return Ok(Command::Help);
    };
    let mut options = Options::new(command, options);
    let passthrough_allowed = matches!(command.as_str(), "run" | "bench");
    if passthrough.is_some() && !passthrough_allowed {
        return Err(Error::Usage(format!(
            "`{command}` takes no arguments after --"
        )));
    }
    let passthrough = passthrough.unwrap_or_default();
    let parsed = match command.as_str() {
        "setup" => Command::Setup,
        "lint" => Command::Lint,
        "configs" => Command::Configs,
        "help" | "--help" | "-h" => Command::Help,
        "build" => {
            let mut configs = Vec::new();
            while let Some(option) = options.next()? {
                match option.as_str() {
                    "--config" => configs.push(options.value()?),
                    _ => return Err(options.unknown()),
                }
            }
            Command::Build { configs }
        }
        "run" => {
            let mut run = RunArgs {
                config: None,
                cmdline: None,
                qemu_args: passthrough,
            };
            while let Some(option) = options.next()? {
                match option.as_str() {
                    "--config" => run.config = Some(options.value()?),
                    "--cmdline" => run.cmdline = Some(options.value()?),
                    _ => return Err(options.unknown()),
                }
            }
            Command::Run(run)
        }
        "test" => {
            let mut test = TestArgs {
                configs: Vec::new(),
                filter: None,
                seed: None,
                timeout: None,
                host: true,
                boot: true,
            };
            while let Some(option) = options.next()? {
                match option.as_str() {
                    "--config" => test.configs.push(options.value()?),
                    "--filter" => test.filter = Some(options.value()?),
                    "--seed" => test.seed = Some(options.number()?),
                    "--timeout" => test.timeout = Some(Duration::from_secs(options.number()?)),
                    "--host-only" => test.boot = false,
                    "--boot-only" => test.host = false,
                    _ => return Err(options.unknown()),
                }
            }
            if !test.host && !test.boot {
                return Err(Error::Usage(
                    "--host-only and --boot-only exclude each other".into(),
                ));
            }
            Command::Test(test)
        }
        "bench" => {
            let mut bench = BenchArgs {
                configs: Vec::new(),
                timeout: None,
                host: true,
                qemu: true,
                criterion_args: passthrough,
            };
            while let Some(option) = options.next()? {
                match option.as_str() {
                    "--config" => bench.configs.push(options.value()?),
                    "--timeout" => bench.timeout = Some(Duration::from_secs(options.number()?)),
                    "--host-only" => bench.qemu = false,
                    "--qemu-only" => bench.host = false,
                    _ => return Err(options.unknown()),
                }
            }
            if !bench.host && !bench.qemu {
                return Err(Error::Usage(
                    "--host-only and --qemu-only exclude each other".into(),
                ));
            }
            Command::Bench(bench)
        }
        other => return Err(Error::Usage(format!("unknown command `{other}`"))),
    };
    if let Some(extra) = options.next()? {
        return Err(Error::Usage(format!("`{command}` takes no option {extra}")));
    }
    Ok(parsed)
}

/// Walks `--name`, `--name VALUE` and `--name=VALUE`.
struct Options<'a> {
    command: &'a str,
    words: std::slice::Iter<'a, String>,
    current: String,
    inline_value: Option<String>,
}

impl<'a> Options<'a> {
    fn new(command: &'a str, words: &'a [String]) -> Self {
        Options {
            command,
            words: words.iter(),
            current: String::new(),
            inline_value: None,
        }
    }

    fn next(&mut self) -> Result<Option<String>, Error> {
        if let Some(value) = self.inline_value.take() {
            return Err(Error::Usage(format!(
                "{} takes no value (got {value:?})",
                self.current
            )));
        }
        let Some(word) = self.words.next() else {
            return Ok(None);
        };
        if !word.starts_with("--") {
            return Err(Error::Usage(format!(
                "unexpected argument {word:?} for `{}` (QEMU arguments go after --)",
                self.command
            )));
        }
        let (name, value) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (word.as_str(), None),
        };
        self.current = name.to_string();
        self.inline_value = value;
        Ok(Some(self.current.clone()))
    }

    fn value(&mut self) -> Result<String, Error> {
        match self.inline_value.take() {
            Some(value) => Ok(value),
            None => self
                .words
                .next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("{} needs a value", self.current))),
        }
    }

    fn number(&mut self) -> Result<u64, Error> {
        let value = self.value()?;
        value
            .parse()
            .map_err(|_| Error::Usage(format!("{} wants a number, not {value:?}", self.current)))
    }

    fn unknown(&self) -> Error {
        Error::Usage(format!("`{}` has no option {}", self.command, self.current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Command, Error> {
        parse(words.iter().map(OsString::from))
    }

    #[test]
    fn no_command_is_help() {
        assert_eq!(parse_words(&[]).unwrap(), Command::Help);
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
                qemu_args: ["-s", "-S", "--config", "x"].map(OsString::from).to_vec(),
            })
        );
    }

    #[test]
    fn run_takes_an_inline_cmdline() {
        let Command::Run(run) = parse_words(&["run", "--cmdline=test filter=dma"]).unwrap() else {
            panic!("not run");
        };
        assert_eq!(run.cmdline.as_deref(), Some("test filter=dma"));
        assert_eq!(run.config, None);
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
    fn mistakes_are_usage_errors() {
        for words in [
            &["frobnicate"][..],
            &["test", "--seed", "many"],
            &["test", "--seed"],
            &["test", "--bogus"],
            &["test", "--host-only", "--boot-only"],
            &["test", "stray"],
            &["lint", "--", "x"],
            &["test", "--host-only=yes"],
            &["bench", "--host-only", "--qemu-only"],
        ] {
            assert!(
                matches!(parse_words(words), Err(Error::Usage(_))),
                "{words:?}"
            );
        }
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
}
