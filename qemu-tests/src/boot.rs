//! Building the kernel and booting it in QEMU under a timeout.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::{Arch, Config};
use crate::report::Report;
use crate::workspace::{Profile, Workspace};

/// By default at most this many QEMUs run at once in one process (`cargo xtask
/// test -j N` changes it). Boots mostly wait for edu's 100 ms DMAs, so two
/// overlap well even on two cores.
pub const DEFAULT_PARALLEL_QEMUS: usize = 2;

/// How many QEMUs may run at once now.
static PARALLEL_QEMUS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_PARALLEL_QEMUS);

/// Lets `jobs` QEMUs (at least one) run at once from now on.
pub fn set_parallel_qemus(jobs: usize) {
    PARALLEL_QEMUS.store(jobs.max(1), std::sync::atomic::Ordering::SeqCst);
    TURN_FREED.notify_all();
}

/// How many QEMUs may run at once.
pub fn parallel_qemus() -> usize {
    PARALLEL_QEMUS.load(std::sync::atomic::Ordering::SeqCst)
}

/// The default time one boot may take before it counts as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// A runaway kernel must not fill the disk: output past this is dropped.
const MAX_CAPTURE_BYTES: usize = 32 << 20;

/// The workspace, asked of cargo once per process.
pub fn workspace() -> Result<&'static Workspace, String> {
    static WORKSPACE: OnceLock<Result<Workspace, String>> = OnceLock::new();
    WORKSPACE
        .get_or_init(Workspace::locate)
        .as_ref()
        .map_err(Clone::clone)
}

/// Builds the kernel for `arch` (`cargo build -p kernel --release --target ...`) and
/// returns its ELF. With `show_output` cargo's progress goes to the terminal;
/// otherwise it is kept and returned in the error.
pub fn build_kernel(ws: &Workspace, arch: Arch, show_output: bool) -> Result<PathBuf, String> {
    build_kernel_with(ws, arch, show_output, Profile::Release)
}

/// [`build_kernel`] with `profile`.
pub fn build_kernel_with(
    ws: &Workspace,
    arch: Arch,
    show_output: bool,
    profile: Profile,
) -> Result<PathBuf, String> {
    let mut command = ws.cargo(["build", "--package", "kernel", "--target", arch.target()]);
    if profile == Profile::Release {
        command.arg("--release");
    }
    let failure = if show_output {
        let status = command
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        (!status.success()).then(|| format!("cargo build of the {arch} kernel failed ({status})"))
    } else {
        let output = command
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        (!output.status.success()).then(|| {
            format!(
                "cargo build of the {arch} kernel failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    };
    match failure {
        Some(message) => Err(message),
        None => {
            let elf = ws.kernel_elf_of(arch.target(), profile);
            if elf.is_file() {
                Ok(elf)
            } else {
                Err(format!("cargo built no kernel at {}", elf.display()))
            }
        }
    }
}

/// [`build_kernel`] at most once per architecture per process (quietly).
pub fn kernel_for(arch: Arch) -> Result<PathBuf, String> {
    static BUILT: [OnceLock<Result<PathBuf, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = match arch {
        Arch::X86_64 => &BUILT[0],
        Arch::Aarch64 => &BUILT[1],
    };
    slot.get_or_init(|| build_kernel(workspace()?, arch, false))
        .clone()
}

/// How to boot.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// The kernel command line (`-append`).
    pub cmdline: String,
    pub timeout: Duration,
    /// Appended to QEMU's arguments unchanged.
    pub extra_args: Vec<OsString>,
    /// Where `<config>.log` goes.
    pub log_dir: PathBuf,
}

/// How QEMU ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Ended without a status (a signal), described.
    Killed(String),
    /// Still running at the deadline; it was killed.
    TimedOut(Duration),
    /// QEMU did not start at all.
    NotStarted(String),
}

/// Everything one boot produced.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    pub config: &'static Config,
    pub cmdline: String,
    /// The full QEMU command, shell-quoted, to reproduce by hand.
    pub command_line: String,
    pub exit: Exit,
    pub elapsed: Duration,
    /// The serial console (QEMU's stdout).
    pub serial: String,
    /// QEMU's own diagnostics.
    pub stderr: String,
    pub log_path: PathBuf,
    /// The kernel ELF that booted (for symbolizing its backtraces).
    pub kernel: PathBuf,
    pub report: Report,
}

/// Boots `kernel` on `config`, capturing the serial console into
/// `<log_dir>/<config>.log` (and QEMU's stderr, if any, into `<config>.stderr.log`).
/// Blocks while [`parallel_qemus`] others run.
pub fn boot(config: &'static Config, kernel: &Path, options: &BootOptions) -> BootOutcome {
    let log_path = options.log_dir.join(format!("{}.log", config.name));
    let stderr_path = options.log_dir.join(format!("{}.stderr.log", config.name));
    let command_line = config.qemu_command_line(kernel, &options.cmdline, &options.extra_args);
    let outcome = |exit, elapsed, serial: String, stderr: String| BootOutcome {
        config,
        cmdline: options.cmdline.clone(),
        command_line: command_line.clone(),
        exit,
        elapsed,
        report: Report::parse(&serial),
        serial,
        stderr,
        log_path: log_path.clone(),
        kernel: kernel.to_path_buf(),
    };
    let files = fs::create_dir_all(&options.log_dir)
        .and_then(|()| Ok((File::create(&log_path)?, File::create(&stderr_path)?)));
    let (log_file, stderr_file) = match files {
        Ok(files) => files,
        Err(e) => {
            let why = format!("cannot create {}: {e}", log_path.display());
            return outcome(
                Exit::NotStarted(why),
                Duration::ZERO,
                String::new(),
                String::new(),
            );
        }
    };

    // The monitor answers where each CPU is if the boot hangs (crate::monitor);
    // a socket path too long for the system just goes without.
    let monitor_socket = options.log_dir.join(format!("{}.monitor", config.name));
    let _ = fs::remove_file(&monitor_socket);
    let mut args = options.extra_args.clone();
    if monitor_socket.as_os_str().len() < MAX_SOCKET_PATH {
        args.push("-monitor".into());
        let mut spec = OsString::from("unix:");
        spec.push(&monitor_socket);
        spec.push(",server=on,wait=off");
        args.push(spec);
    }

    let _turn = Turn::wait();
    let started = Instant::now();
    let spawned = config
        .qemu_command(kernel, &options.cmdline, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let why = format!("cannot start {}: {e}", config.arch.qemu_binary());
            return outcome(
                Exit::NotStarted(why),
                Duration::ZERO,
                String::new(),
                String::new(),
            );
        }
    };
    let serial = child.stdout.take().map(|out| tee(out, log_file));
    let stderr = child.stderr.take().map(|err| tee(err, stderr_file));
    let mut hung_cpus = None;
    let exit = wait_with_deadline(&mut child, options.timeout, || {
        hung_cpus = crate::monitor::hung_cpus(&monitor_socket, config.arch);
    });
    let elapsed = started.elapsed();
    let _ = fs::remove_file(&monitor_socket);
    let collect = |reader: Option<JoinHandle<String>>| {
        reader
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    };
    let (mut serial, stderr) = (collect(serial), collect(stderr));
    if let Some(text) = hung_cpus {
        // After the console's last line, in the log too.
        if !serial.ends_with('\n') {
            serial.push('\n');
        }
        serial.push_str(&text);
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .and_then(|mut log| log.write_all(format!("\n{text}").as_bytes()));
    }
    if stderr.is_empty() {
        // Only keep the file when QEMU had something to say.
        let _ = fs::remove_file(&stderr_path);
    }
    outcome(exit, elapsed, serial, stderr)
}

/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Waits for `child` until `timeout`; at the deadline `before_kill` runs
/// (QEMU still up), then the child is killed.
fn wait_with_deadline(child: &mut Child, timeout: Duration, before_kill: impl FnOnce()) -> Exit {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match status.code() {
                    Some(code) => Exit::Code(code),
                    None => Exit::Killed(status.to_string()),
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                before_kill();
                let _ = child.kill();
                let _ = child.wait();
                return Exit::TimedOut(timeout);
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Exit::Killed(format!("lost track of QEMU: {e}"));
            }
        }
    }
}

/// Copies `stream` into `file` as it arrives (so a hung boot's log is complete up to
/// the hang) and returns all of it as text.
fn tee(mut stream: impl Read + Send + 'static, mut file: File) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if kept.len() < MAX_CAPTURE_BYTES {
                        kept.extend_from_slice(&chunk[..n]);
                        let _ = file.write_all(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// A place among the [`parallel_qemus`] QEMUs allowed to run at once.
struct Turn;

static RUNNING: Mutex<usize> = Mutex::new(0);
static TURN_FREED: Condvar = Condvar::new();

impl Turn {
    fn wait() -> Turn {
        let mut running = RUNNING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while *running >= parallel_qemus() {
            running = TURN_FREED
                .wait(running)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *running += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut running = RUNNING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *running -= 1;
        TURN_FREED.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_two_turns_at_once() {
        let peak = std::sync::Arc::new(Mutex::new((0usize, 0usize)));
        let workers: Vec<_> = (0..6)
            .map(|_| {
                let peak = peak.clone();
                thread::spawn(move || {
                    let _turn = Turn::wait();
                    {
                        let mut p = peak.lock().unwrap();
                        p.0 += 1;
                        p.1 = p.1.max(p.0);
                    }
                    thread::sleep(Duration::from_millis(30));
                    peak.lock().unwrap().0 -= 1;
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(peak.lock().unwrap().1, DEFAULT_PARALLEL_QEMUS);
    }
}
