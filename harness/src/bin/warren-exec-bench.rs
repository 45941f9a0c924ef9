//! `warren-exec-bench`: what each executor adds to a job's start, on a
//! trivial test (`true`), through the real binaries: one worker with one
//! slot per executor, N commits, and the p50 / p90 of the jobs' recorded
//! run time (`duration_ms`: from spawning the command to its end, so the
//! sandbox's and the limits' set-up and clean-up are in it, the checkout is
//! not).
//!
//! `cargo run --release -p warren-harness --bin warren-exec-bench -- --commits 50`
//!
//! `--container` adds the container executor (a running Docker engine and
//! `debian:bookworm-slim`: `scripts/ensure-docker.sh`,
//! `scripts/docker-base-image.sh`).

use std::process::ExitCode;
use std::time::Duration;
use warren_harness::cluster::{Cluster, ClusterOptions};

/// The worker settings compared, by name.
const SETUPS: &[(&str, &str)] = &[
    ("process", "executor = \"process\"\n"),
    (
        "process + limits",
        "executor = \"process\"\nmax_memory = \"1 GiB\"\nmax_processes = 256\nmax_disk = \"1 GiB\"\n",
    ),
    ("sandbox", "executor = \"sandbox\"\n"),
    (
        "sandbox + limits",
        "executor = \"sandbox\"\nmax_memory = \"1 GiB\"\nmax_processes = 256\nmax_disk = \"1 GiB\"\n",
    ),
];

/// The container executor's settings (with `--container`).
const CONTAINER_SETUPS: &[(&str, &str)] = &[
    (
        "container",
        "executor = \"container\"\ndefault_image = \"debian:bookworm-slim\"\n",
    ),
    (
        "container + limits",
        "executor = \"container\"\ndefault_image = \"debian:bookworm-slim\"\n\
         max_memory = \"1 GiB\"\nmax_processes = 256\nmax_disk = \"1 GiB\"\n",
    ),
];

/// Longest wait for one setup's results.
const DEADLINE: Duration = Duration::from_secs(600);

fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() - 1) * p / 100]
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut commits = 30_usize;
    let mut setups: Vec<(&str, &str)> = SETUPS.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--container" {
            setups.extend_from_slice(CONTAINER_SETUPS);
            continue;
        }
        match (arg.as_str(), args.next().map(|v| v.parse::<usize>())) {
            ("--commits", Some(Ok(n))) if n > 0 => commits = n,
            _ => {
                eprintln!("usage: warren-exec-bench [--commits N (default 30)] [--container]");
                return ExitCode::from(2);
            }
        }
    }
    println!("| executor | jobs | run time p50 (ms) | p90 (ms) |");
    println!("| --- | --- | --- | --- |");
    for (name, extra) in setups {
        let mut options = ClusterOptions::new("exec-bench");
        options.workers = 1;
        options.worker_extra = extra.to_owned();
        let cluster = Cluster::start_ready(options).await;
        let spec = "command = \"true\"\ntimeout = \"1m\"\n";
        let first = cluster
            .upstream
            .commit("main", "first", &[("warren.toml", Some(spec))]);
        if cluster
            .wait_for_results(std::slice::from_ref(&first), DEADLINE)
            .is_err()
        {
            eprintln!(
                "{name}: no result for the first commit\n{}",
                cluster.all_logs()
            );
            return ExitCode::FAILURE;
        }
        let shas: Vec<String> = (0..commits)
            .map(|i| {
                cluster.upstream.commit(
                    "main",
                    &format!("commit {i}"),
                    &[("n", Some(&i.to_string()))],
                )
            })
            .collect();
        let reports = match cluster.wait_for_results(&shas, DEADLINE) {
            Ok(reports) => reports,
            Err(missing) => {
                eprintln!("{name}: {} results missing", missing.len());
                return ExitCode::FAILURE;
            }
        };
        let mut times: Vec<u64> = reports
            .iter()
            .filter_map(|report| report["jobs"][0]["duration_ms"].as_u64())
            .collect();
        times.sort_unstable();
        if times.is_empty() {
            eprintln!("{name}: no run times in the results");
            return ExitCode::FAILURE;
        }
        println!(
            "| {name} | {} | {} | {} |",
            times.len(),
            percentile(&times, 50),
            percentile(&times, 90)
        );
    }
    ExitCode::SUCCESS
}
