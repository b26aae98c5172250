//! The kernel command line: `demo` (the default) or `test`, plus `key=value`
//! options. QEMU passes it through `-append` (PVH cmdline on x86_64,
//! `/chosen/bootargs` on aarch64).

/// What the kernel does after boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Demo,
    Test,
}

/// The parsed command line; borrowed strings point into the boot copy.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a> {
    pub mode: Mode,
    /// Only tests whose name contains this run.
    pub filter: Option<&'a str>,
    /// Seed for randomised tests (the fuzzer); printed so a run can be replayed.
    pub seed: Option<u64>,
}

impl<'a> Cmdline<'a> {
    pub fn parse(text: &'a str) -> Self {
        let mut cmdline = Cmdline {
            mode: Mode::Demo,
            filter: None,
            seed: None,
        };
        for word in text.split_ascii_whitespace() {
            match word.split_once('=') {
                None if word == "test" => cmdline.mode = Mode::Test,
                None if word == "demo" => cmdline.mode = Mode::Demo,
                Some(("filter", value)) => cmdline.filter = Some(value),
                Some(("seed", value)) => cmdline.seed = value.parse().ok(),
                _ => println!("cmdline: ignoring unknown word {word:?}"),
            }
        }
        cmdline
    }
}
