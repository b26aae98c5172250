//! Where each CPU of a hung guest was, asked of QEMU's human monitor just
//! before the boot is killed.
//!
//! A boot that hangs prints nothing more, so the serial log alone cannot say
//! which CPU waits for what. Every boot therefore opens QEMU's monitor (HMP)
//! on a Unix socket; at the deadline the runner asks it for every CPU's
//! registers (`info registers -a`) and walks each CPU's frame records
//! upwards with guest-physical reads (`xp`; the kernel is identity-mapped,
//! so its virtual addresses are physical ones). The result is one
//! `backtrace from PC: RET...` line per CPU, the format the kernel prints
//! for a panic, so [`crate::symbolize`] names functions and lines for it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Arch;

/// Frames walked per CPU at most.
const MAX_FRAMES: usize = 24;
/// No kernel code lies in the first page: a return address below is not one.
const LOWEST_CODE_ADDRESS: u64 = 0x1000;
/// How far above the first frame pointer a caller's frame may lie (the
/// kernel's stacks are 256 KiB).
const STACK_WINDOW: u64 = 256 * 1024;
/// How long one monitor command may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// HMP's prompt, printed when a command has been answered.
const PROMPT: &str = "(qemu) ";

/// One CPU's state as the monitor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub index: usize,
    pub pc: u64,
    pub frame_pointer: u64,
    /// x86: halted (`HLT=1`); aarch64 does not say.
    pub halted: bool,
    /// Running user code (x86 `CPL=3`, aarch64 EL0): its frame pointer is
    /// the task's, not worth walking.
    pub in_user_mode: bool,
}

/// The lines describing every CPU of the QEMU whose monitor listens on
/// `socket`; `None` when the monitor cannot be reached or says nothing
/// usable.
pub fn hung_cpus(socket: &Path, arch: Arch) -> Option<String> {
    let mut monitor = Monitor::connect(socket).ok()?;
    let registers = monitor.command("info registers -a").ok()?;
    let cpus = parse_registers(&registers, arch);
    if cpus.is_empty() {
        return None;
    }
    let mut text = String::from("==> every CPU at the timeout (QEMU monitor):\n");
    for cpu in &cpus {
        let returns = if cpu.in_user_mode {
            Vec::new()
        } else {
            walk_frames(cpu.frame_pointer, |address| monitor.read_pair(address))
        };
        let state = match (cpu.in_user_mode, cpu.halted) {
            (true, _) => "in user mode",
            (false, true) => "halted",
            (false, false) => "running",
        };
        let returns: Vec<String> = returns.iter().map(|r| format!("{r:#x}")).collect();
        text.push_str(&format!(
            "CPU {} {state}: backtrace from {:#x}: {}\n",
            cpu.index,
            cpu.pc,
            returns.join(" ")
        ));
    }
    Some(text)
}

/// The return addresses above frame pointer `first`, read with `read` (the
/// two words at an address: the caller's frame pointer, the return
/// address). Stops at the first implausible record, as the kernel's own
/// walk does.
pub fn walk_frames(first: u64, mut read: impl FnMut(u64) -> Option<(u64, u64)>) -> Vec<u64> {
    let mut returns = Vec::new();
    let mut frame = first;
    while returns.len() < MAX_FRAMES {
        let plausible =
            frame != 0 && frame.is_multiple_of(8) && frame >= first && frame - first < STACK_WINDOW;
        if !plausible {
            break;
        }
        let Some((caller, return_address)) = read(frame) else {
            break;
        };
        if return_address < LOWEST_CODE_ADDRESS {
            break;
        }
        returns.push(return_address);
        if caller <= frame {
            break;
        }
        frame = caller;
    }
    returns
}

/// Each CPU's program counter and frame pointer in the answer to
/// `info registers -a`.
pub fn parse_registers(answer: &str, arch: Arch) -> Vec<CpuState> {
    let mut cpus = Vec::new();
    for section in answer.split("CPU#").skip(1) {
        let Some(index) = section
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|digits| digits.parse().ok())
        else {
            continue;
        };
        cpus.extend(cpu_state(index, section, arch));
    }
    cpus
}

/// CPU `index`'s state from its `section` of the answer; `None` when its
/// program counter or frame pointer is missing.
fn cpu_state(index: usize, section: &str, arch: Arch) -> Option<CpuState> {
    Some(match arch {
        Arch::X86_64 => CpuState {
            index,
            pc: register(section, "RIP=")?,
            frame_pointer: register(section, "RBP=")?,
            halted: register(section, "HLT=") == Some(1),
            in_user_mode: register(section, "CPL=") == Some(3),
        },
        Arch::Aarch64 => CpuState {
            index,
            pc: register(section, "PC=")?,
            frame_pointer: register(section, "X29=")?,
            halted: false,
            in_user_mode: section.contains("EL0"),
        },
    })
}

/// The hexadecimal value after `name` in `text` (`RIP=00000000002b8f8d`).
fn register(text: &str, name: &str) -> Option<u64> {
    // The name must start a word: `PC=` is not the end of another name.
    let at = text
        .match_indices(name)
        .find(|(at, _)| {
            *at == 0
                || !text[..*at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
        })?
        .0;
    let digits: String = text[at + name.len()..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&digits, 16).ok()
}

/// The two 64-bit words in an `xp /2gx` answer
/// (`0000000000123450: 0x0000000000123480 0x00000000002b8f8d`).
pub fn parse_pair(answer: &str) -> Option<(u64, u64)> {
    let line = answer.lines().find(|line| line.contains(": 0x"))?;
    let (_, words) = line.split_once(": ")?;
    let mut words = words
        .split_whitespace()
        .map(|word| u64::from_str_radix(word.strip_prefix("0x")?, 16).ok());
    Some((words.next()??, words.next()??))
}

struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    fn connect(socket: &Path) -> io::Result<Monitor> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut monitor = Monitor { stream };
        // The banner ends with the first prompt.
        monitor.read_answer()?;
        Ok(monitor)
    }

    fn command(&mut self, line: &str) -> io::Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        self.read_answer()
    }

    fn read_pair(&mut self, address: u64) -> Option<(u64, u64)> {
        parse_pair(&self.command(&format!("xp /2gx {address:#x}")).ok()?)
    }

    /// Everything up to the next prompt (or what came within the timeout).
    fn read_answer(&mut self) -> io::Result<String> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    if answer.ends_with(PROMPT.as_bytes()) {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_ANSWER: &str = "info registers -a\r\n\r\nCPU#0\r\n\
        RAX=0000000000000000 RBX=0000000000000001 RCX=0000000000000002 RDX=0000000000000003\r\n\
        RSI=0000000000000000 RDI=0000000000000000 RBP=0000000000ff7f80 RSP=0000000000ff7f40\r\n\
        RIP=00000000002b8f8d RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n\
        \r\nCPU#1\r\n\
        RSI=0000000000000000 RDI=0000000000000000 RBP=0000008000001000 RSP=0000008000000f00\r\n\
        RIP=0000008000000f69 RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\r\n(qemu) ";

    #[test]
    fn x86_registers_give_each_cpus_pc_frame_pointer_and_mode() {
        let cpus = parse_registers(X86_ANSWER, Arch::X86_64);
        assert_eq!(
            cpus,
            [
                CpuState {
                    index: 0,
                    pc: 0x2b8f8d,
                    frame_pointer: 0xff7f80,
                    halted: true,
                    in_user_mode: false,
                },
                CpuState {
                    index: 1,
                    pc: 0x80_0000_0f69,
                    frame_pointer: 0x80_0000_1000,
                    halted: false,
                    in_user_mode: true,
                },
            ]
        );
    }

    #[test]
    fn aarch64_registers_give_pc_and_x29() {
        let answer = "CPU#2\n PC=00000000402b50bc X00=0000000000000000 X01=0000000000000001\n\
            X28=0000000000000000 X29=00000000403fff00 X30=00000000402b0000  SP=00000000403ffe00\n\
            PSTATE=600003c5 -ZC- EL1h\n(qemu) ";
        let cpus = parse_registers(answer, Arch::Aarch64);
        assert_eq!(cpus.len(), 1);
        assert_eq!((cpus[0].index, cpus[0].pc), (2, 0x402b50bc));
        assert_eq!(cpus[0].frame_pointer, 0x403fff00);
        assert!(!cpus[0].in_user_mode);
    }

    #[test]
    fn an_xp_answer_gives_its_two_words() {
        let answer = "xp /2gx 0xff7f80\r\n0000000000ff7f80: 0x0000000000ff7fc0 0x000000000026006a\r\n(qemu) ";
        assert_eq!(parse_pair(answer), Some((0xff7fc0, 0x26006a)));
        assert_eq!(parse_pair("(qemu) "), None);
    }

    #[test]
    fn the_walk_follows_rising_frames_and_stops_at_the_first_implausible_one() {
        let frames = [
            (0x1000, (0x1040, 0x20_000a)),
            (0x1040, (0x1080, 0x20_000b)),
            (0x1080, (0x1000, 0x20_000c)),
        ];
        let read = |address| {
            frames
                .iter()
                .find(|(at, _)| *at == address)
                .map(|(_, pair)| *pair)
        };
        assert_eq!(walk_frames(0x1000, read), [0x20_000a, 0x20_000b, 0x20_000c]);
        assert_eq!(walk_frames(0, read), Vec::<u64>::new());
        assert_eq!(walk_frames(0x1001, read), Vec::<u64>::new());
        // A return address in the first page is a stray word, not code.
        assert_eq!(
            walk_frames(0x2000, |_| Some((0x2040, 0x1))),
            Vec::<u64>::new()
        );
    }
}
