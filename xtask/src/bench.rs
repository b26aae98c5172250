//! `cargo xtask bench`: criterion benches on the host, counters read inside QEMU,
//! both collected into `target/bench-results.json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use qemu_tests::{Exit, KernelCmdline, Workspace};

use crate::boots::{self, Booted};
use crate::cli::BenchArgs;
use crate::error::Error;
use crate::shell::{self, step};

/// One criterion benchmark's result.
#[derive(Clone, Debug, PartialEq)]
pub struct HostResult {
    pub id: String,
    pub median_ns: f64,
    pub median_lower_ns: f64,
    pub median_upper_ns: f64,
    pub mean_ns: f64,
}

/// One counter the kernel printed as `bench NAME VALUE UNIT` in bench mode.
#[derive(Clone, Debug, PartialEq)]
pub struct QemuResult {
    pub config: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
}

pub fn bench(ws: &Workspace, args: BenchArgs) -> Result<(), Error> {
    let mut failures = Vec::new();
    let mut host = Vec::new();
    if args.host {
        match host_benches(ws, &args) {
            Ok(results) => host = results,
            Err(error) => failures.push(error.to_string()),
        }
    }
    let mut qemu = Vec::new();
    if args.qemu {
        match qemu_benches(ws, &args) {
            Ok((results, broken)) => {
                qemu = results;
                failures.extend(broken);
            }
            Err(error) => failures.push(error.to_string()),
        }
    }
    let path = ws.target_dir.join("bench-results.json");
    let text = serde_json::to_string_pretty(&results_json(&host, &qemu))
        .map_err(|e| Error::Other(e.to_string()))?;
    fs::write(&path, text + "\n")?;
    step(format!(
        "{} host and {} QEMU results in {}",
        host.len(),
        qemu.len(),
        path.display()
    ));
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "bench failed: {}",
            failures.join("; ")
        )))
    }
}

fn host_benches(ws: &Workspace, args: &BenchArgs) -> Result<Vec<HostResult>, Error> {
    let with_benches: Vec<_> = ws
        .packages
        .iter()
        .filter(|package| !package.benches.is_empty())
        .collect();
    if with_benches.is_empty() {
        step("host benches: no workspace crate has benches yet");
        return Ok(Vec::new());
    }
    let started = SystemTime::now();
    let criterion_dir = ws.target_dir.join("criterion");
    for package in with_benches {
        step(format!(
            "host benches: {} ({})",
            package.name,
            package.benches.join(", ")
        ));
        // Only the bench targets: the library's own libtest harness would reject
        // criterion's arguments.
        let mut command = ws.cargo(["bench", "--package", &package.name]);
        for bench in &package.benches {
            command.args(["--bench", bench]);
        }
        // Criterion finds this itself, but saying it makes the place certain.
        command.env("CRITERION_HOME", &criterion_dir);
        if !args.criterion_args.is_empty() {
            command.arg("--").args(&args.criterion_args);
        }
        shell::run(&mut command)?;
    }
    // Results of benches that no longer exist stay in target/criterion: only keep
    // what this run wrote.
    Ok(collect_criterion(&criterion_dir, Some(started)))
}

/// Every `<...>/new/estimates.json` under `dir` (written at or after `since`).
pub fn collect_criterion(dir: &Path, since: Option<SystemTime>) -> Vec<HostResult> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name == "new") {
                    if let Some(result) = read_criterion_result(dir, &path, since) {
                        found.push(result);
                    }
                } else {
                    pending.push(path);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn read_criterion_result(
    root: &Path,
    new_dir: &Path,
    since: Option<SystemTime>,
) -> Option<HostResult> {
    let estimates_path = new_dir.join("estimates.json");
    if let Some(since) = since {
        let written = fs::metadata(&estimates_path)
            .and_then(|m| m.modified())
            .ok()?;
        if written < since {
            return None;
        }
    }
    let estimates: Value = serde_json::from_str(&fs::read_to_string(&estimates_path).ok()?).ok()?;
    let id = fs::read_to_string(new_dir.join("benchmark.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|benchmark| benchmark["full_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let bench_dir = new_dir.parent().unwrap_or(new_dir);
            let relative: PathBuf = bench_dir.strip_prefix(root).unwrap_or(bench_dir).into();
            relative.to_string_lossy().replace('\\', "/")
        });
    let median = &estimates["median"];
    Some(HostResult {
        id,
        median_ns: median["point_estimate"].as_f64()?,
        median_lower_ns: median["confidence_interval"]["lower_bound"].as_f64()?,
        median_upper_ns: median["confidence_interval"]["upper_bound"].as_f64()?,
        mean_ns: estimates["mean"]["point_estimate"].as_f64()?,
    })
}

/// Boots each configuration with `-append bench` and keeps its `bench` lines.
/// Returns the counters and the configurations that failed to boot cleanly.
fn qemu_benches(ws: &Workspace, args: &BenchArgs) -> Result<(Vec<QemuResult>, Vec<String>), Error> {
    let configs = boots::select(&args.configs)?;
    if let Some(jobs) = args.jobs {
        qemu_tests::set_parallel_qemus(jobs);
    }
    let kernels = boots::build_kernels(ws, &configs);
    let cmdline = KernelCmdline::new("bench").to_string();
    let timeout = args.timeout.unwrap_or(qemu_tests::DEFAULT_TIMEOUT);
    step(format!(
        "QEMU benches: {} configurations with kernel command line {cmdline:?}",
        configs.len()
    ));
    let mut results = Vec::new();
    let mut broken = Vec::new();
    let booted = boots::boot_all(
        ws.log_dir().join("bench"),
        &configs,
        &kernels,
        &cmdline,
        timeout,
        |index, config, booted| {
            let line = match booted {
                Booted::NotRun(why) => format!("FAILED  {why}"),
                Booted::Ran(outcome) => match (&outcome.exit, &outcome.report.panic) {
                    (Exit::Code(0), None) if outcome.report.benches.is_empty() => {
                        "ok      no counters reported (the kernel prints none yet)".to_string()
                    }
                    (Exit::Code(0), None) => {
                        format!("ok      {} counters", outcome.report.benches.len())
                    }
                    (_, Some(panic)) => format!("FAILED  kernel panic: {panic}"),
                    (exit, None) => format!("FAILED  {exit:?}; see {}", outcome.log_path.display()),
                },
            };
            println!(
                "[{:>2}/{}] {:<14} {line}",
                index + 1,
                configs.len(),
                config.name
            );
        },
    );
    for (config, booted) in configs.iter().zip(booted) {
        match booted {
            Booted::Ran(outcome)
                if outcome.exit == Exit::Code(0) && outcome.report.panic.is_none() =>
            {
                results.extend(outcome.report.benches.into_iter().map(|sample| QemuResult {
                    config: config.name.to_string(),
                    name: sample.name,
                    value: sample.value,
                    unit: sample.unit,
                }));
            }
            _ => broken.push(format!("{} did not finish its bench boot", config.name)),
        }
    }
    Ok((results, broken))
}

pub fn results_json(host: &[HostResult], qemu: &[QemuResult]) -> Value {
    json!({
        "host": host.iter().map(|r| json!({
            "id": r.id,
            "median_ns": r.median_ns,
            "median_ci95_ns": [r.median_lower_ns, r.median_upper_ns],
            "mean_ns": r.mean_ns,
        })).collect::<Vec<_>>(),
        "qemu": qemu.iter().map(|r| json!({
            "config": r.config,
            "name": r.name,
            "value": r.value,
            "unit": r.unit,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn estimates(median: f64) -> String {
        format!(
            r#"{{"mean":{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":9.0,"upper_bound":11.0}},
                "point_estimate":10.5,"standard_error":0.1}},
               "median":{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{lo},"upper_bound":{hi}}},
                "point_estimate":{median},"standard_error":0.1}}}}"#,
            lo = median - 1.0,
            hi = median + 1.0
        )
    }

    #[test]
    fn collects_new_estimates_and_names_them_by_full_id() {
        let root = scratch_dir("criterion");
        let mapped = root.join("map/4k/new");
        fs::create_dir_all(&mapped).unwrap();
        fs::write(mapped.join("estimates.json"), estimates(812.0)).unwrap();
        fs::write(
            mapped.join("benchmark.json"),
            r#"{"full_id":"map/4k","group_id":"map"}"#,
        )
        .unwrap();
        // The previous run's copy and criterion's report folder are not results.
        let base = root.join("map/4k/base");
        fs::create_dir_all(&base).unwrap();
        fs::write(base.join("estimates.json"), estimates(1.0)).unwrap();
        fs::create_dir_all(root.join("report")).unwrap();
        // Without benchmark.json the folder names the benchmark.
        let unmap = root.join("unmap/new");
        fs::create_dir_all(&unmap).unwrap();
        fs::write(unmap.join("estimates.json"), estimates(300.0)).unwrap();

        let results = collect_criterion(&root, None);
        assert_eq!(
            results,
            [
                HostResult {
                    id: "map/4k".into(),
                    median_ns: 812.0,
                    median_lower_ns: 811.0,
                    median_upper_ns: 813.0,
                    mean_ns: 10.5,
                },
                HostResult {
                    id: "unmap".into(),
                    median_ns: 300.0,
                    median_lower_ns: 299.0,
                    median_upper_ns: 301.0,
                    mean_ns: 10.5,
                },
            ]
        );
        // Results older than this run are left out.
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(collect_criterion(&root, Some(future)).is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn results_json_has_both_sections() {
        let value = results_json(
            &[HostResult {
                id: "map/4k".into(),
                median_ns: 1.5,
                median_lower_ns: 1.0,
                median_upper_ns: 2.0,
                mean_ns: 1.6,
            }],
            &[QemuResult {
                config: "vtd".into(),
                name: "iotlb_flush".into(),
                value: 4200.0,
                unit: "ns".into(),
            }],
        );
        assert_eq!(value["host"][0]["median_ns"], 1.5);
        assert_eq!(value["host"][0]["median_ci95_ns"][1], 2.0);
        assert_eq!(value["qemu"][0]["config"], "vtd");
        assert_eq!(value["qemu"][0]["unit"], "ns");
    }
}
