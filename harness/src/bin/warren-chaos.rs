//! `warren-chaos`: a stream of commits through the whole system (the real
//! binaries) while workers are killed at random, the broker is restarted
//! once and the dispatcher is killed once; then every result is checked.
//!
//! It restarts the local RabbitMQ application, so do not run it beside the
//! tests or another installation. With `--cluster` it runs on a three-node
//! cluster of its own (`scripts/broker-cluster.sh`, removed at the end)
//! instead, and the broker's restart becomes a `kill -9` of the node that
//! leads the jobs queue, revived a few seconds later. Prints one summary
//! line such as
//! `commits=240 results=240 lost=0 duplicated=0 retried_attempts=17 max_recovery_s=4.2`.
//!
//! `cargo run --release -p warren-harness --bin warren-chaos -- --commits 240 [--cluster]`

use chrono::{DateTime, Utc};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use warren_common::topology::Queue;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::rabbit::{BrokerCluster, Stopped};

/// Workers kept running (killed ones are replaced at once).
const WORKERS: usize = 4;
/// Time between two random worker kills.
const KILL_EVERY: Duration = Duration::from_millis(1500);
/// How long the broker stays down.
const BROKER_DOWN: Duration = Duration::from_secs(3);
/// How long the dispatcher stays dead.
const DISPATCHER_DOWN: Duration = Duration::from_secs(1);
/// Longest wait for the last results after the stream.
const DEADLINE: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let Some(Args {
        commits,
        dir,
        on_cluster,
    }) = parse_args()
    else {
        return usage();
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let nodes = on_cluster.then(BrokerCluster::start);
    let mut options = ClusterOptions::new("chaos");
    options.broker_url = nodes.as_ref().map(BrokerCluster::urls);
    options.workers = WORKERS;
    options.dir = dir;
    options.poll_interval = "200ms".into();
    // A short lease, so that runs lost without a redelivery are re-issued
    // quickly; heartbeats come every second.
    options.dispatcher_extra = "lease = \"5s\"\nmax_lost_runs = 10".into();
    let mut cluster = Cluster::start(options);
    if !runtime.block_on(cluster.wait_for_workers(WORKERS as u32, Duration::from_secs(60))) {
        eprintln!("workers did not start\n{}", cluster.all_logs());
        return ExitCode::FAILURE;
    }
    // Tests of 0.1 to 0.5 s, so that kills land mid-job.
    let spec = "command = \"sleep 0.$(( $(printf %d 0x${WARREN_SHA%${WARREN_SHA#??}}) % 5 + 1 )); echo ok\"\n\
                timeout = \"1m\"\n";
    let base = cluster
        .upstream
        .commit("main", "base", &[("warren.toml", Some(spec))]);
    if cluster
        .wait_for_results(&[base], Duration::from_secs(60))
        .is_err()
    {
        eprintln!("the first commit got no result\n{}", cluster.all_logs());
        return ExitCode::FAILURE;
    }

    let started = Instant::now();
    let started_at = Utc::now();
    let interval = Duration::from_millis(60);
    let broker_at = Duration::from_secs(4);
    let dispatcher_at = Duration::from_secs(9);
    let mut broker_done = false;
    let mut dispatcher_done = false;
    let mut next_kill = KILL_EVERY;
    let mut kills = 0;
    let mut recoveries: Vec<(String, f64)> = Vec::new();
    let mut outage: Option<std::thread::JoinHandle<(Duration, Instant)>> = None;
    // When the broker went down and when it accepted connections again.
    let mut outage_window: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    let mut shas = Vec::with_capacity(commits);
    // Until every commit is pushed and both faults happened (a short stream
    // waits for them), and the broker is back.
    while shas.len() < commits || outage.is_some() || !broker_done || !dispatcher_done {
        let now = started.elapsed();
        if shas.len() < commits {
            let i = shas.len();
            shas.push(cluster.upstream.commit(
                "main",
                &format!("chaos {i}"),
                &[("n.txt", Some(&i.to_string()))],
            ));
        }
        if now >= next_kill && !cluster.workers.is_empty() {
            let victim = fastrand::usize(..cluster.workers.len());
            cluster.workers[victim].kill();
            cluster.workers.remove(victim);
            cluster.add_worker(&[]);
            kills += 1;
            next_kill += KILL_EVERY;
        }
        if !broker_done && now >= broker_at {
            broker_done = true;
            outage_window.0 = Some(Utc::now());
            let node = nodes.as_ref().map(|nodes| {
                let queue = cluster.broker.config.topology.queue(Queue::Jobs);
                let control = nodes.control();
                (control, control.leader(&queue).unwrap_or(1))
            });
            outage = Some(std::thread::spawn(move || {
                let down = Instant::now();
                // One node of three (the others carry on meanwhile), or
                // the whole broker; down for BROKER_DOWN whatever happens.
                let bring_back: Box<dyn FnOnce()> = match node {
                    Some((control, leader)) => {
                        control.kill(leader);
                        Box::new(move || control.revive(leader))
                    }
                    None => {
                        let stopped = Stopped::stop_app();
                        Box::new(move || stopped.start())
                    }
                };
                std::thread::sleep(BROKER_DOWN);
                bring_back();
                (down.elapsed(), Instant::now())
            }));
        }
        if let Some(handle) = outage.take_if(|handle| handle.is_finished()) {
            let (unavailable, back) = handle.join().expect("broker outage thread");
            outage_window.1 = outage_window
                .0
                .map(|down| down + chrono::Duration::from_std(unavailable).unwrap_or_default());
            let fault = if nodes.is_some() {
                "jobs queue's leader node down (kill -9, wait, start until it rejoins)"
            } else {
                "broker unavailable (stop_app, wait, start_app until it accepts connections)"
            };
            recoveries.push((fault.into(), unavailable.as_secs_f64()));
            // From the broker's return until every worker and the
            // dispatcher consume again.
            runtime.block_on(async {
                wait_consumers(&cluster, Queue::Jobs, WORKERS as u32).await;
                wait_consumers(&cluster, Queue::Commits, 1).await;
            });
            recoveries.push((
                "after the broker or node came back: all consuming again".into(),
                back.elapsed().as_secs_f64(),
            ));
        }
        if !dispatcher_done && now >= dispatcher_at && outage.is_none() {
            dispatcher_done = true;
            if let Some(dispatcher) = cluster.dispatcher.as_mut() {
                dispatcher.kill();
            }
            let killed = Instant::now();
            std::thread::sleep(DISPATCHER_DOWN);
            cluster.start_dispatcher();
            runtime.block_on(wait_consumers(&cluster, Queue::Commits, 1));
            recoveries.push((
                "dispatcher kill (restarted 1 s later): consuming again, from the kill".into(),
                killed.elapsed().as_secs_f64(),
            ));
        }
        std::thread::sleep(interval);
    }
    let pushed_in = started.elapsed();
    let reports = cluster.wait_for_results(&shas, DEADLINE);
    let results = shas
        .iter()
        .filter(|sha| cluster.result(sha).is_some())
        .count();
    let lost = shas.len() - results;

    let db = cluster.database();
    let number = |sql: &str| -> i64 { db.query_row(sql, [], |row| row.get(0)).unwrap_or(-1) };
    let jobs = number("SELECT count(*) FROM jobs");
    let finished_runs = number("SELECT count(*) FROM attempts WHERE state = 'finished'");
    let decided_jobs = number("SELECT count(*) FROM jobs WHERE status != 'queued'");
    let duplicated = (finished_runs - decided_jobs).max(0)
        + (number("SELECT count(*) FROM commits") - 1 - shas.len() as i64).max(0);
    let lost_runs = number("SELECT count(*) FROM attempts WHERE state = 'lost'");
    let reissued = number("SELECT coalesce(sum(attempt - 1), 0) FROM jobs");
    let late = number("SELECT coalesce(sum(late_results), 0) FROM jobs");
    let not_passed = number("SELECT count(*) FROM commits WHERE status != 'passed'");
    let mut gaps = replacement_gaps(&db, started_at, outage_window);
    gaps.sort_by(f64::total_cmp);
    let worst_worker = gaps.last().copied().unwrap_or(0.0);
    recoveries.push(("lost run replaced by the deciding run".into(), worst_worker));
    println!(
        "  lost runs replaced: seconds from the last sign of life (or the broker's return) to the deciding run's start: {}",
        gaps.iter()
            .map(|g| format!("{g:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // The broker's own outage is the fault, not a recovery.
    let max_recovery = recoveries
        .iter()
        .filter(|(what, _)| {
            !what.starts_with("broker unavailable") && !what.starts_with("jobs queue's leader")
        })
        .map(|(_, s)| *s)
        .fold(0.0, f64::max);

    println!(
        "pushed {} commits in {:.1} s (faults included); {kills} worker kills (one every {:.1} s), {} stopped at \
         t={:.1} s and started {:.0} s later, dispatcher killed at t={:.1} s",
        shas.len(),
        pushed_in.as_secs_f64(),
        KILL_EVERY.as_secs_f64(),
        if nodes.is_some() {
            "the jobs queue's leader node"
        } else {
            "the broker"
        },
        broker_at.as_secs_f64(),
        BROKER_DOWN.as_secs_f64(),
        dispatcher_at.as_secs_f64()
    );
    for (what, seconds) in &recoveries {
        println!("  recovery: {what}: {seconds:.1} s");
    }
    println!(
        "  jobs={jobs} lost_runs={lost_runs} reissued_attempts={reissued} late_results={late} not_passed={not_passed}"
    );
    println!(
        "commits={} results={results} lost={lost} duplicated={duplicated} retried_attempts={} max_recovery_s={max_recovery:.1}",
        shas.len(),
        lost_runs + reissued
    );
    if reports.is_err() {
        eprintln!("{}", cluster.all_logs());
    }
    cluster.stop();
    if lost == 0 && duplicated == 0 && not_passed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// For each lost run whose job was then decided by another run: the time
/// from the lost run's last sign of life to the start of the run that
/// decided the job
/// (waiting behind the backlog for a free worker included). Lost runs
/// whose own result decided the job (kept by the worker through a broker
/// outage and published after it) cost nothing and are not counted.
/// Prints each and returns them, in seconds.
fn replacement_gaps(
    db: &rusqlite::Connection,
    started_at: DateTime<Utc>,
    outage_window: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
) -> Vec<f64> {
    let mut gaps: Vec<f64> = Vec::new();
    let mut statement = db
        .prepare(
            "SELECT l.last_seen, d.started_at FROM attempts l
               JOIN jobs j ON j.id = l.job_id
               JOIN attempts d ON d.run_id = j.decided_run AND d.started_at > l.last_seen
             WHERE l.state = 'lost'",
        )
        .expect("query");
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .expect("query");
    for (lost_at, next) in rows.flatten() {
        if let (Some(a), Some(b)) = (parse(&lost_at), parse(&next)) {
            let at = (a - started_at).num_milliseconds() as f64 / 1000.0;
            // A run lost to the broker outage can only be replaced once
            // the broker is back: count from then.
            let from = match outage_window {
                (Some(down), Some(up)) if a >= down - chrono::Duration::seconds(1) && a <= up => up,
                _ => a,
            };
            // `rabbitmqctl` sees the broker back a little after the
            // workers do: never below zero.
            let gap = ((b - from).num_milliseconds() as f64 / 1000.0).max(0.0);
            println!(
                "  lost run: last seen at t={at:.1} s, the deciding run started {gap:.1} s after {}",
                if from == a {
                    "that"
                } else {
                    "the broker came back"
                }
            );
            gaps.push(gap);
        }
    }
    gaps
}

/// Waits (up to two minutes) until `queue` has `n` consumers.
async fn wait_consumers(cluster: &Cluster, queue: Queue, n: u32) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if cluster.broker.queue_depth(queue).await.1 >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The command line.
struct Args {
    commits: usize,
    dir: Option<std::path::PathBuf>,
    on_cluster: bool,
}

/// `None` for a command line that is not `[--commits N] [--dir FOLDER] [--cluster]`.
fn parse_args() -> Option<Args> {
    let mut parsed = Args {
        commits: 240,
        dir: None,
        on_cluster: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--cluster" {
            parsed.on_cluster = true;
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--commits", Some(n)) => match n.parse::<usize>() {
                Ok(n) if n >= 10 => parsed.commits = n,
                _ => return None,
            },
            ("--dir", Some(path)) => parsed.dir = Some(std::path::PathBuf::from(path)),
            _ => return None,
        }
    }
    Some(parsed)
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: warren-chaos [--commits N (at least 10, default 240)] [--dir FOLDER (kept, with logs)] [--cluster]"
    );
    ExitCode::from(2)
}
