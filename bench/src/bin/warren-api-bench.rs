//! `warren-api-bench`: how fast the dispatcher's API answers with a large
//! history. Fills a dispatcher database with N finished commits through
//! the dispatcher's own store (each with shards, runs, per-test results and
//! output, as real ones have), starts the real `warren-dispatcher` on it,
//! and times requests one at a time over fresh connections (as `warren`
//! and scripts make them):
//!
//! - `GET /api/commits/{repo}/{sha}` for random commits (the lookup),
//! - `GET /api/commits?limit=50` and a filtered, paged list,
//! - `GET /commits/{repo}/{sha}` (the commit's HTML page).
//!
//! `cargo run --release -p warren-bench-api --bin warren-api-bench -- --commits 10000`

use chrono::{TimeDelta, Utc};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use warren_common::ids::{BranchName, CommitId, RepoName, RepoUrl, SuitePath, WorkerId};
use warren_common::messages::{
    CommitEvent, JobEvent, JobEventKind, JobResult, JobStatus, TestCase, TestCommand, TestStatus,
};
use warren_dispatcher::config::SyncMode;
use warren_dispatcher::spec::{Globs, Plan};
use warren_dispatcher::split::ShardPlan;
use warren_dispatcher::store::{Planned, ResultRecorded, RetryBudget, Store};
use warren_harness::cluster::{Cluster, ClusterOptions};

struct Args {
    commits: usize,
    shards: usize,
    tests: usize,
    requests: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        commits: 10_000,
        shards: 4,
        tests: 25,
        requests: 2_000,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            argv.next()
                .and_then(|value| value.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match arg.as_str() {
            "--commits" => args.commits = number("--commits")?,
            "--shards" => args.shards = number("--shards")?,
            "--tests" => args.tests = number("--tests")?,
            "--requests" => args.requests = number("--requests")?,
            "-h" | "--help" => {
                return Err(String::new());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("warren-api-bench: {problem}");
            }
            eprintln!(
                "usage: warren-api-bench [--commits 10000] [--shards 4] [--tests 25 (per shard)] [--requests 2000]"
            );
            return ExitCode::from(2);
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("dispatcher/warren.db");
    println!(
        "Filling a database: {} commits × {} shards × {} tests ...",
        args.commits, args.shards, args.tests
    );
    let started = Instant::now();
    let shas = fill(&database, &args);
    let size = std::fs::metadata(&database).map_or(0, |m| m.len());
    println!(
        "  {} commits in {:.1} s; database {:.0} MiB",
        shas.len(),
        started.elapsed().as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );

    let mut options = ClusterOptions::new("api-bench");
    options.workers = 0;
    options.dir = Some(dir.path().to_path_buf());
    let mut cluster = Cluster::start(options);
    let base = cluster.http_url();
    let host = base.trim_start_matches("http://").to_owned();
    // The dispatcher is up once it answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(get(&host, "/readyz"), Ok((200, _))) {
        if Instant::now() > deadline {
            eprintln!("the dispatcher did not get ready:\n{}", cluster.all_logs());
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    println!(
        "Timing {} requests of each kind, one at a time, each on a new connection:",
        args.requests
    );
    println!(
        "  {:<50} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "request", "p50 ms", "p90 ms", "p99 ms", "max ms", "bytes"
    );
    let mut lookup_p99 = f64::MAX;
    let kinds: [(&str, PathFor); 4] = [
        (
            "GET /api/commits/{repo}/{sha}",
            Box::new(|i| format!("/api/commits/bench/{}", shas[pick(i, shas.len())])),
        ),
        (
            "GET /api/commits?limit=50",
            Box::new(|_| "/api/commits?limit=50".to_owned()),
        ),
        (
            "GET /api/commits?status=failed&limit=50&before=…",
            Box::new(|i| {
                format!(
                    "/api/commits?status=failed&limit=50&before={}",
                    1 + pick(i, shas.len())
                )
            }),
        ),
        (
            "GET /commits/{repo}/{sha} (HTML)",
            Box::new(|i| format!("/commits/bench/{}", shas[pick(i, shas.len())])),
        ),
    ];
    for (index, (name, path)) in kinds.iter().enumerate() {
        // A few unmeasured requests first (connections, caches).
        for i in 0..20 {
            let _ = get(&host, &path(i));
        }
        let mut times = Vec::with_capacity(args.requests);
        let mut bytes = 0;
        for i in 0..args.requests {
            let path = path(i + 1000);
            let begun = Instant::now();
            match get(&host, &path) {
                Ok((200, body)) => bytes = body,
                Ok((status, _)) => {
                    eprintln!("{path}: HTTP {status}");
                    return ExitCode::FAILURE;
                }
                Err(error) => {
                    eprintln!("{path}: {error}");
                    return ExitCode::FAILURE;
                }
            }
            times.push(begun.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "  {:<50} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9}",
            name,
            at(0.50),
            at(0.90),
            at(0.99),
            times[times.len() - 1],
            bytes
        );
        if index == 0 {
            lookup_p99 = at(0.99);
        }
    }
    let verdict = if lookup_p99 < 50.0 { "met" } else { "NOT met" };
    println!("Commit lookup p99 {lookup_p99:.2} ms: the 50 ms goal is {verdict}.");
    for (name, code) in cluster.stop() {
        if code != Some(0) {
            eprintln!("{name} exited with {code:?}");
        }
    }
    ExitCode::SUCCESS
}

/// The path of the i-th request of a kind.
type PathFor<'a> = Box<dyn Fn(usize) -> String + 'a>;

/// A spread of indexes in 0..n, repeatable.
fn pick(i: usize, n: usize) -> usize {
    (i.wrapping_mul(2_654_435_761) >> 7) % n
}

/// Records `args.commits` finished commits, as the dispatcher would;
/// returns their shas.
fn fill(database: &Path, args: &Args) -> Vec<String> {
    let mut store = Store::open(database, SyncMode::Normal).expect("open the database");
    let plan = Plan {
        command: TestCommand::Shell("python3 -m pytest {files}".into()),
        timeout: Duration::from_secs(600),
        env: BTreeMap::new(),
        suite: None,
        junit: None,
        retry_failed: 0,
        supersede: Globs::none(),
        network: None,
        limits: None,
        image: None,
    };
    let shards: Vec<ShardPlan> = (0..args.shards)
        .map(|shard| ShardPlan {
            files: (0..5)
                .map(|f| SuitePath::parse(&format!("tests/test_{shard}_{f}.py")).unwrap())
                .collect(),
            estimated_ms: 30_000,
        })
        .collect();
    let repo = RepoName::parse("bench").unwrap();
    let worker = WorkerId::parse("bench-worker").unwrap();
    let budget = RetryBudget { max_lost_runs: 3 };
    let start = Utc::now() - TimeDelta::hours(24 * 365);
    let mut shas = Vec::with_capacity(args.commits);
    for n in 0..args.commits {
        let sha = format!("{:040x}", (n as u128 + 1) * 0x9e37_79b9_7f4a_7c15_f39c);
        let sha = CommitId::parse(&sha[sha.len() - 40..]).unwrap();
        let at = start + TimeDelta::minutes(n as i64);
        let event = CommitEvent {
            repo: repo.clone(),
            url: RepoUrl::parse("/srv/git/bench.git").unwrap(),
            branch: BranchName::parse(if n % 5 == 0 { "release" } else { "main" }).unwrap(),
            sha: sha.clone(),
            parents: Vec::new(),
            author: "Bench Author <bench@example.invalid>".into(),
            summary: format!("Change number {n}"),
            committed_at: at,
            detected_at: at,
        };
        let planned = Planned {
            plan: &plan,
            shards: &shards,
            selection: None,
        };
        let inserted = store
            .insert_planned(&event, &planned, at)
            .expect("insert a commit");
        store
            .mark_published(&inserted.jobs)
            .expect("mark published");
        for (s, job) in inserted.jobs.iter().enumerate() {
            let run_id = uuid::Uuid::new_v4();
            let started = JobEvent {
                job_id: job.job_id,
                attempt: job.attempt,
                run_id,
                worker: worker.clone(),
                host: "bench-host".into(),
                event: JobEventKind::Started,
                at,
            };
            store
                .record_event(&started, &budget, at)
                .expect("record a start");
            // One commit in ten fails one test.
            let failing = n % 10 == 0 && s == 0;
            let tests = (0..args.tests)
                .map(|t| TestCase {
                    name: format!("test_case_{t}"),
                    classname: format!("tests.test_{s}_{}", t % 5),
                    file: Some(format!("tests/test_{s}_{}.py", t % 5)),
                    duration_ms: 100 + (t as u64 * 37) % 900,
                    status: if failing && t == 0 {
                        TestStatus::Failed
                    } else {
                        TestStatus::Passed
                    },
                    message: (failing && t == 0).then(|| "assert 2 == 3".to_owned()),
                    flaky: false,
                })
                .collect();
            let output: String = (0..40)
                .map(|line| format!("tests/test_{s}_{}.py::test_case_{line} PASSED\n", line % 5))
                .collect();
            let result = JobResult {
                job_id: job.job_id,
                attempt: job.attempt,
                run_id,
                worker: worker.clone(),
                host: "bench-host".into(),
                repo: repo.clone(),
                sha: sha.clone(),
                status: if failing {
                    JobStatus::Failed
                } else {
                    JobStatus::Passed
                },
                exit_code: Some(i32::from(failing)),
                signal: None,
                message: None,
                started_at: at,
                finished_at: at + TimeDelta::seconds(30),
                checkout_ms: 120,
                duration_ms: 30_000,
                output_bytes: output.len() as u64,
                output,
                output_truncated: false,
                tests,
                file_timings: Vec::new(),
                report_problem: None,
                proof: None,
            };
            let recorded = store
                .record_result(&result, at + TimeDelta::seconds(30))
                .expect("record a result");
            if let ResultRecorded::Decided {
                commit_finished: Some(commit_id),
                ..
            } = recorded
            {
                // As if the result file had been written.
                store.mark_written(commit_id).expect("mark written");
            }
        }
        shas.push(sha.as_str().to_owned());
    }
    shas
}

/// One GET on a new connection; the whole response is read. Returns the
/// status and the length of what came after the head.
fn get(host: &str, path: &str) -> std::io::Result<(u16, usize)> {
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.len()))
}
