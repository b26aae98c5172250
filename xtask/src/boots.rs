//! Booting several configurations, `-j` at a time (two by default), with a line
//! of progress each.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use qemu_tests::{Arch, BootOptions, BootOutcome, Config, Workspace};

use crate::error::Error;
use crate::shell::step;

/// The configurations named on the command line, or all of them.
pub fn select(names: &[String]) -> Result<Vec<&'static Config>, Error> {
    if names.is_empty() {
        return Ok(qemu_tests::CONFIGS.iter().collect());
    }
    let mut unique: Vec<&String> = Vec::new();
    for name in names {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique
        .into_iter()
        .map(|name| {
            qemu_tests::config(name).ok_or_else(|| {
                Error::Usage(format!(
                    "no configuration {name:?}; there are: {}",
                    qemu_tests::config_names()
                ))
            })
        })
        .collect()
}

/// Builds the kernel for every architecture `configs` need, showing cargo's output.
/// An architecture whose build failed maps to the error.
pub fn build_kernels(
    ws: &Workspace,
    configs: &[&'static Config],
) -> HashMap<Arch, Result<PathBuf, String>> {
    let mut kernels = HashMap::new();
    for arch in Arch::ALL {
        if configs.iter().any(|config| config.arch == arch) {
            step(format!("build the {arch} kernel ({})", arch.target()));
            kernels.insert(arch, qemu_tests::build_kernel(ws, arch, true));
        }
    }
    kernels
}

/// What happened to one configuration.
pub enum Booted {
    Ran(Box<BootOutcome>),
    /// It could not boot (its kernel did not build).
    NotRun(String),
}

/// Boots each configuration with `cmdline`, at most [`qemu_tests::parallel_qemus`] at once,
/// keeping the serial logs in `log_dir` and calling `finished` (on this thread, in
/// completion order) as each one ends. Returns the results in `configs` order.
pub fn boot_all(
    log_dir: PathBuf,
    configs: &[&'static Config],
    kernels: &HashMap<Arch, Result<PathBuf, String>>,
    cmdline: &str,
    timeout: Duration,
    mut finished: impl FnMut(usize, &'static Config, &Booted),
) -> Vec<Booted> {
    let queue = Mutex::new(configs.iter().copied().enumerate());
    let (report, reports) = mpsc::channel();
    let options = BootOptions {
        cmdline: cmdline.to_string(),
        timeout,
        extra_args: Vec::<OsString>::new(),
        log_dir,
    };
    let mut results: Vec<Option<Booted>> = configs.iter().map(|_| None).collect();
    thread::scope(|scope| {
        for _ in 0..qemu_tests::parallel_qemus().min(configs.len()) {
            let report = report.clone();
            let (queue, options) = (&queue, &options);
            scope.spawn(move || {
                loop {
                    let next = queue.lock().ok().and_then(|mut queue| queue.next());
                    let Some((index, config)) = next else { break };
                    let booted = match &kernels[&config.arch] {
                        Ok(kernel) => {
                            // The main thread prints, so lines come out in order.
                            if report.send((index, None)).is_err() {
                                break;
                            }
                            Booted::Ran(Box::new(qemu_tests::boot(config, kernel, options)))
                        }
                        Err(why) => Booted::NotRun(format!(
                            "the {} kernel did not build: {why}",
                            config.arch
                        )),
                    };
                    if report.send((index, Some(booted))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(report);
        for (index, booted) in reports {
            match booted {
                None => println!(
                    "[{:>2}/{}] {:<14} booting",
                    index + 1,
                    configs.len(),
                    configs[index].name
                ),
                Some(booted) => {
                    finished(index, configs[index], &booted);
                    results[index] = Some(booted);
                }
            }
        }
    });
    results
        .into_iter()
        .map(|booted| booted.unwrap_or_else(|| Booted::NotRun("the boot thread died".into())))
        .collect()
}
