//! `warren-split-bench`: how close split suites come to the ideal wall time.
//!
//! A synthetic suite of 40 test files with uneven durations (they sleep, so
//! they need no CPU), about 40 s in all, run through the whole system (the
//! real binaries) with W = 1, 2, 4 and 8 workers and as many shards: the
//! first commit (no timings yet: equal numbers of files per shard) and the
//! second (split by the first one's timings). Wall time is from the
//! watcher's detection to the recorded result; the ideal is
//! `max(total / W, longest file)`.
//!
//! `cargo run --release -p warren-harness --bin warren-split-bench`

use chrono::{DateTime, Utc};
use std::process::ExitCode;
use std::time::Duration;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::git::Change;

/// Files in the synthetic suite.
const FILES: usize = 40;
/// Their total duration, in seconds.
const TOTAL_SECS: f64 = 40.0;

/// Durations from 0.2 to 2.6 (before scaling), spread over the files in a
/// scrambled order so that neighbours differ.
fn durations() -> Vec<f64> {
    let raw: Vec<f64> = (0..FILES)
        .map(|i| 0.2 + 2.4 * ((i * 7919) % FILES) as f64 / (FILES - 1) as f64)
        .collect();
    let scale = TOTAL_SECS / raw.iter().sum::<f64>();
    raw.iter()
        .map(|d| (d * scale * 100.0).round() / 100.0)
        .collect()
}

fn main() -> ExitCode {
    let workers: Vec<usize> = match std::env::args().nth(1).as_deref() {
        None => vec![1, 2, 4, 8],
        Some("--workers") => std::env::args()
            .skip(2)
            .filter_map(|w| w.parse().ok())
            .collect(),
        Some(_) => {
            eprintln!("usage: warren-split-bench [--workers W ...]");
            return ExitCode::from(2);
        }
    };
    let durations = durations();
    let total: f64 = durations.iter().sum();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    println!(
        "suite: {FILES} files, {total:.1} s in all, longest {longest:.2} s, shortest {:.2} s",
        durations.iter().copied().fold(f64::MAX, f64::min)
    );
    println!("| workers (= shards) | ideal | first commit | vs ideal | second commit | vs ideal |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &w in &workers {
        match run(w, &durations) {
            Ok((first, second)) => {
                let ideal = (total / w as f64).max(longest);
                println!(
                    "| {w} | {ideal:.1} s | {first:.1} s | {:+.0} % | {second:.1} s | {:+.0} % |",
                    (first / ideal - 1.0) * 100.0,
                    (second / ideal - 1.0) * 100.0
                );
            }
            Err(message) => {
                eprintln!("{w} workers: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Wall times (seconds) of the first and the second commit with `workers`.
fn run(workers: usize, durations: &[f64]) -> Result<(f64, f64), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let mut options = ClusterOptions::new(&format!("split-bench-{workers}"));
    options.workers = workers;
    options.poll_interval = "100ms".into();
    let cluster = Cluster::start(options);
    if !runtime.block_on(cluster.wait_for_workers(workers as u32, Duration::from_secs(60))) {
        return Err(format!("workers did not start\n{}", cluster.all_logs()));
    }
    let spec = format!(
        "command = \"sh {{file}}\"\nfiles = [\"tests/*.sh\"]\nshards = {workers}\ntimeout = \"10m\"\n"
    );
    let scripts: Vec<(String, String)> = durations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                format!("tests/test_{i:02}.sh"),
                format!("#!/bin/sh\nsleep {d}\n"),
            )
        })
        .collect();
    let mut changes: Vec<Change<'_>> = vec![("warren.toml", Some(&spec))];
    changes.extend(scripts.iter().map(|(n, s)| (n.as_str(), Some(s.as_str()))));
    let first = cluster.upstream.commit("main", "suite", &changes);
    let first = wall_time(&cluster, &first)?;
    let second = cluster
        .upstream
        .commit("main", "again", &[("README", Some("second\n"))]);
    let second = wall_time(&cluster, &second)?;
    Ok((first, second))
}

fn wall_time(cluster: &Cluster, sha: &str) -> Result<f64, String> {
    let reports = cluster
        .wait_for_results(&[sha.to_owned()], Duration::from_secs(600))
        .map_err(|missing| format!("no result for {missing:?}\n{}", cluster.all_logs()))?;
    let report = &reports[0];
    if report["status"] != "passed" {
        return Err(format!("the suite did not pass: {report:#}"));
    }
    let time = |key: &str| -> Result<DateTime<Utc>, String> {
        report[key]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("no {key} in the result"))
    };
    Ok((time("finished_at")? - time("detected_at")?).num_milliseconds() as f64 / 1000.0)
}
