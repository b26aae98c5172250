//! The kernel command line: `demo` (the default), `test` or `bench`, plus `key=value`
//! options. QEMU passes it through `-append` (PVH cmdline on x86_64,
//! `/chosen/bootargs` on aarch64).

/// What the kernel does after boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Demo,
    Test,
    /// Print `bench NAME VALUE UNIT` counters for `cargo xtask bench`.
    Bench,
    /// Name every test (`listed NAME`) without running any, for `cargo
    /// xtask test --list`.
    List,
}

/// The parsed command line; borrowed strings point into the boot copy.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a> {
    pub mode: Mode,
    /// Only tests whose name contains this run.
    pub filter: Option<&'a str>,
    /// Seed for randomised tests (the fuzzer); printed so a run can be replayed.
    pub seed: Option<u64>,
    /// Crash on purpose after boot, to prove the crash path reports and fails.
    pub crash: Option<Crash>,
    /// User programs to run in demo mode, comma-separated (`tasks=hello,ping`).
    pub tasks: Option<&'a str>,
    /// `allow_unsafe_interrupts`: tasks may own MSI devices even where no
    /// unit or interrupt controller isolates their interrupts (Linux VFIO's
    /// `allow_unsafe_interrupts`): such a device can raise other devices'
    /// interrupts.
    pub allow_unsafe_interrupts: bool,
    /// `objects_per_task=N`, `areas_per_task=N`, `domains_per_task=N`: the
    /// iommufd limits of every task (`iommufd::Limits`; the defaults when
    /// absent).
    pub objects_per_task: Option<usize>,
    pub areas_per_task: Option<usize>,
    pub domains_per_task: Option<usize>,
    /// `dma_pages_per_task=N`: the pages of IO page tables and device
    /// structures one task's mappings and devices may take
    /// (`memory::dma`; the default when absent).
    pub dma_pages_per_task: Option<usize>,
    /// `heap_bytes_per_task=N`: the kernel heap one task's system calls may
    /// make the kernel hold (`memory::heap_charges`; the default when absent).
    pub heap_bytes_per_task: Option<usize>,
}

/// A deliberate crash (`crash=panic|fault|user-read|user-exec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// `panic!`: message and location, non-zero exit.
    Panic,
    /// A load from unmapped memory: the exception handler's report, then a panic.
    Fault,
    /// A kernel load from a mapped user page (SMAP / PAN must fault it).
    UserRead,
    /// A kernel jump to a mapped user code page (SMEP / PXN must fault it).
    UserExecute,
}

impl<'a> Cmdline<'a> {
    pub fn parse(text: &'a str) -> Self {
        let mut cmdline = Cmdline {
            mode: Mode::Demo,
            filter: None,
            seed: None,
            crash: None,
            tasks: None,
            allow_unsafe_interrupts: false,
            objects_per_task: None,
            areas_per_task: None,
            domains_per_task: None,
            dma_pages_per_task: None,
            heap_bytes_per_task: None,
        };
        for word in text.split_ascii_whitespace() {
            match word.split_once('=') {
                None if word == "test" => cmdline.mode = Mode::Test,
                None if word == "demo" => cmdline.mode = Mode::Demo,
                None if word == "bench" => cmdline.mode = Mode::Bench,
                None if word == "list" => cmdline.mode = Mode::List,
                None if word == "allow_unsafe_interrupts" => cmdline.allow_unsafe_interrupts = true,
                Some(("filter", value)) => cmdline.filter = Some(value),
                Some(("seed", value)) => cmdline.seed = value.parse().ok(),
                Some(("tasks", value)) => cmdline.tasks = Some(value),
                Some(("objects_per_task", value)) => cmdline.objects_per_task = value.parse().ok(),
                Some(("areas_per_task", value)) => cmdline.areas_per_task = value.parse().ok(),
                Some(("domains_per_task", value)) => cmdline.domains_per_task = value.parse().ok(),
                Some(("dma_pages_per_task", value)) => {
                    cmdline.dma_pages_per_task = value.parse().ok()
                }
                Some(("heap_bytes_per_task", value)) => {
                    cmdline.heap_bytes_per_task = value.parse().ok()
                }
                Some(("crash", "panic")) => cmdline.crash = Some(Crash::Panic),
                Some(("crash", "fault")) => cmdline.crash = Some(Crash::Fault),
                Some(("crash", "user-read")) => cmdline.crash = Some(Crash::UserRead),
                Some(("crash", "user-exec")) => cmdline.crash = Some(Crash::UserExecute),
                _ => println!("cmdline: ignoring unknown word {word:?}"),
            }
        }
        cmdline
    }
}
