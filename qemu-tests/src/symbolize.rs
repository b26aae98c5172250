//! Kernel backtraces made readable on the host.
//!
//! On a panic or a fatal exception the kernel prints its return addresses
//! (`kernel/src/backtrace.rs`): `backtrace: RET...`, or `backtrace from PC:
//! RET...` for an exception taken at PC. This module finds those lines in a
//! serial log and turns every address into function, file and line, inlined
//! callers included, with the `addr2line` crate over the kernel ELF's DWARF
//! (the release profile keeps debug info). A return address is looked up one
//! byte earlier, inside the call instruction, so the line is the call's.

use std::fmt::Write as _;
use std::path::Path;

/// One parsed backtrace line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backtrace {
    /// Where an exception was taken, when the line says so.
    pub pc: Option<u64>,
    /// Return addresses, innermost first.
    pub returns: Vec<u64>,
}

/// Every backtrace line in `log`, in order.
pub fn backtraces(log: &str) -> Vec<Backtrace> {
    log.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Backtrace> {
    let at = line.find("backtrace")?;
    let rest = &line[at + "backtrace".len()..];
    let (pc, addresses) = if let Some(rest) = rest.strip_prefix(" from ") {
        let (pc, addresses) = rest.split_once(':')?;
        (Some(hex(pc.trim())?), addresses)
    } else {
        (None, rest.strip_prefix(':')?)
    };
    let returns = addresses
        .split_whitespace()
        .map(hex)
        .collect::<Option<Vec<u64>>>()?;
    Some(Backtrace { pc, returns })
}

fn hex(word: &str) -> Option<u64> {
    u64::from_str_radix(word.strip_prefix("0x")?, 16).ok()
}

/// The backtraces of `log`, symbolized against the kernel ELF `kernel`:
/// one line per frame, `  #N 0xADDR function at file:line` (an inlined
/// function on its own line below the frame it was inlined into). `None`
/// when the log has no backtrace; a note instead of frames when the ELF
/// cannot be read.
pub fn symbolized(log: &str, kernel: &Path) -> Option<String> {
    let traces = backtraces(log);
    if traces.is_empty() {
        return None;
    }
    let loader = match addr2line::Loader::new(kernel) {
        Ok(loader) => loader,
        Err(error) => {
            return Some(format!(
                "backtrace not symbolized: cannot read {}: {error}\n",
                kernel.display()
            ));
        }
    };
    let mut out = String::new();
    for trace in traces {
        let _ = writeln!(
            out,
            "kernel backtrace (symbolized from {}):",
            kernel.display()
        );
        let probes = trace.pc.map(|pc| (pc, pc)).into_iter().chain(
            trace
                .returns
                .iter()
                .map(|&ret| (ret, ret.saturating_sub(1))),
        );
        for (index, (shown, probe)) in probes.enumerate() {
            let names = frames(&loader, probe);
            match names.split_first() {
                None => {
                    let _ = writeln!(out, "  #{index:<2} {shown:#x} ??");
                }
                Some((innermost, callers)) => {
                    let _ = writeln!(out, "  #{index:<2} {shown:#x} {innermost}");
                    for caller in callers {
                        let _ = writeln!(out, "       inlined into {caller}");
                    }
                }
            }
        }
    }
    Some(out)
}

/// `function at file:line` for `probe`, innermost inlined frame first.
fn frames(loader: &addr2line::Loader, probe: u64) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(mut iter) = loader.find_frames(probe) {
        while let Ok(Some(frame)) = iter.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|name| name.demangle().ok())
                .map_or_else(|| "??".to_string(), |name| name.into_owned());
            let location = frame.location.map(|location| {
                format!(
                    "{}:{}",
                    location.file.map(short_path).unwrap_or("??"),
                    location.line.unwrap_or(0)
                )
            });
            names.push(match location {
                Some(location) => format!("{function} at {location}"),
                None => function,
            });
        }
    }
    if names.is_empty()
        && let Some(symbol) = loader.find_symbol(probe)
    {
        names.push(addr2line::demangle_auto(symbol.into(), None).into_owned());
    }
    names
}

/// A source path from the workspace on, or from the Rust library on: the
/// machine's own directories say nothing to the reader.
fn short_path(path: &str) -> &str {
    for marker in ["/library/", "/kernel/", "/drivers/", "/boot/", "/user/"] {
        if let Some(at) = path.rfind(marker) {
            return &path[at + 1..];
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_of_line_are_parsed_and_noise_is_not() {
        let log = "boot\nbacktrace from 0x25be1c: 0x25b3c7 0x2000b8\nKERNEL PANIC: x\n\
                   backtrace: 0x27ff27 0x2fd3ac\nbacktrace: what\nno backtrace here\n";
        assert_eq!(
            backtraces(log),
            [
                Backtrace {
                    pc: Some(0x25be1c),
                    returns: vec![0x25b3c7, 0x2000b8]
                },
                Backtrace {
                    pc: None,
                    returns: vec![0x27ff27, 0x2fd3ac]
                },
            ]
        );
    }

    #[test]
    fn an_unreadable_kernel_is_said_not_hidden() {
        let text = symbolized("backtrace: 0x1000\n", Path::new("/nonexistent/kernel")).unwrap();
        assert!(text.starts_with("backtrace not symbolized: cannot read"));
        assert_eq!(symbolized("no trace\n", Path::new("k")), None);
    }

    /// This test binary's own DWARF stands in for the kernel's: the address
    /// of a function of this file symbolizes to its name and this file.
    #[test]
    fn an_address_becomes_function_file_and_line() {
        #[inline(never)]
        fn landmark() -> u64 {
            landmark as *const () as u64
        }
        let exe = std::env::current_exe().unwrap();
        let loader = addr2line::Loader::new(&exe).unwrap();
        // The test binary is position independent: its link addresses are
        // the run-time ones less where its first segment was mapped.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe_name = exe.to_string_lossy();
        let base = maps
            .lines()
            .find(|line| {
                line.ends_with(&*exe_name) && line.split_whitespace().nth(2) == Some("00000000")
            })
            .and_then(|line| u64::from_str_radix(line.split('-').next()?, 16).ok())
            .expect("the test binary's first mapping");
        let names = frames(&loader, landmark() - base);
        assert!(
            names
                .iter()
                .any(|name| name.contains("landmark") && name.contains("symbolize.rs")),
            "{names:?}"
        );
    }
}
