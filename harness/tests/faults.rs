//! Faults caused for real, with the real binaries: a worker killed or frozen
//! mid-job, a connection cut without a close, the dispatcher or the watcher
//! killed, stop signals, jobs whose runs keep being lost. After each, the
//! tests check that nothing was lost and nothing recorded twice.
//!
//! None of these touch the broker itself, so they run in parallel with the
//! other tests (each under its own prefix); the ones that restart the broker
//! are in `broker_faults.rs`.

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use warren_common::messages::{CommitEvent, Job, decode};
use warren_common::topology::Queue;
use warren_harness::builders;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::process::wait_until;
use warren_harness::proxy::Proxy;

/// Longest wait for results in these tests; faults cost seconds, not minutes.
const DEADLINE: Duration = Duration::from_secs(90);

/// A `warren.toml` whose command appends its worker's pid (the shell's
/// parent) to `marks`, then runs `then`.
fn marking_spec(marks: &Path, then: &str) -> String {
    format!(
        "command = \"echo $PPID >> {}; {then}\"\ntimeout = \"1m\"\n",
        marks.display()
    )
}

/// Waits until `marks` holds `n` pids; returns them.
fn wait_for_marks(marks: &Path, n: usize, cluster: &Cluster) -> Vec<u32> {
    let read = || -> Vec<u32> {
        std::fs::read_to_string(marks)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    };
    assert!(
        wait_until(DEADLINE, || read().len() >= n),
        "{n} runs did not start: {:?}\n{}",
        read(),
        cluster.all_logs()
    );
    read()
}

fn results_or_logs(cluster: &Cluster, shas: &[String]) -> Vec<serde_json::Value> {
    cluster
        .wait_for_results(shas, DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
}

fn time(value: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// (worker, state) of every run of the commit's first job.
fn runs(report: &serde_json::Value) -> Vec<(String, String)> {
    report["jobs"][0]["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["worker"].as_str().unwrap_or_default().to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn marks_path(cluster: &Cluster) -> PathBuf {
    cluster.root().join("marks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_its_run_and_another_worker_runs_the_job() {
    let mut cluster = Cluster::start(ClusterOptions::new("f-kill"));
    assert!(
        cluster.wait_for_workers(2, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let marks = marks_path(&cluster);
    let spec = marking_spec(&marks, "sleep 2; echo survived");
    let sha = cluster
        .upstream
        .commit("main", "slow test", &[("warren.toml", Some(&spec))]);

    let first = wait_for_marks(&marks, 1, &cluster)[0];
    let victim = cluster
        .worker_by_pid(first)
        .expect("one of our workers ran it");
    let killed_at = Utc::now();
    cluster.workers[victim].kill();

    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    assert!(
        report["jobs"][0]["output"]
            .as_str()
            .unwrap()
            .contains("survived")
    );
    let victim_name = format!("worker-{victim}");
    let runs = runs(report);
    assert_eq!(runs.len(), 2, "{report:#}");
    assert_eq!(runs[0], (victim_name.clone(), "lost".into()), "{report:#}");
    assert_eq!(runs[1].1, "finished");
    assert_ne!(runs[1].0, victim_name);
    let lost = &report["jobs"][0]["attempts"][0];
    assert!(
        lost["message"]
            .as_str()
            .unwrap()
            .contains("connection closed"),
        "{lost:#}"
    );
    assert_eq!(report["jobs"][0]["late_results"], 0);
    let restarted = seconds_between(
        killed_at,
        time(&report["jobs"][0]["attempts"][1]["started_at"]),
    );
    println!("killed worker's job started again after {restarted:.2} s");
    assert!(
        restarted < 10.0,
        "the broker requeues at once: {restarted} s"
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM attempts WHERE state = 'finished'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_loses_its_lease_and_its_late_result_is_only_counted() {
    let mut options = ClusterOptions::new("f-freeze");
    options.workers = 0;
    options.dispatcher_extra = "lease = \"4s\"".into();
    let mut cluster = Cluster::start(options);
    // A long AMQP heartbeat: the broker keeps the frozen worker's connection
    // open, so only the dispatcher's lease can notice it.
    let frozen = cluster.add_worker(&[("WARREN_BROKER__HEARTBEAT", "120s")]);
    assert!(
        cluster.wait_for_workers(1, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let marks = marks_path(&cluster);
    let spec = marking_spec(&marks, "sleep 2; echo ran on $PPID");
    let sha = cluster
        .upstream
        .commit("main", "test", &[("warren.toml", Some(&spec))]);
    let first = wait_for_marks(&marks, 1, &cluster)[0];
    assert_eq!(cluster.worker_by_pid(first), Some(frozen));

    cluster.workers[frozen].signal(Signal::SIGSTOP);
    let frozen_at = Utc::now();
    let rescuer = cluster.add_worker(&[]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    cluster.workers[frozen].signal(Signal::SIGCONT);

    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(
        report["jobs"][0]["attempt"], 2,
        "decided by the re-issued attempt"
    );
    assert_eq!(report["jobs"][0]["worker"], format!("worker-{rescuer}"));
    let runs = runs(report);
    assert_eq!(
        runs[0],
        (format!("worker-{frozen}"), "lost".into()),
        "{report:#}"
    );
    let lost = &report["jobs"][0]["attempts"][0];
    assert!(
        lost["message"].as_str().unwrap().contains("no heartbeat"),
        "{lost:#}"
    );
    let reissued = seconds_between(
        frozen_at,
        time(&report["jobs"][0]["attempts"][1]["started_at"]),
    );
    println!("frozen worker's job started again after {reissued:.2} s (lease 4 s)");
    assert!((3.0..15.0).contains(&reissued), "{reissued} s");

    // Thawed, the worker either hears the dispatcher's cancel of attempt 1
    // first (and reports nothing) or finishes attempt 1 first and reports:
    // ignored, counted.
    assert!(
        wait_until(DEADLINE, || {
            cluster.count("SELECT late_results FROM jobs") == 1
                || cluster.workers[frozen]
                    .log()
                    .contains("job cancelled by the dispatcher")
        }),
        "the thawed run is cancelled or its late result counted\n{}",
        cluster.all_logs()
    );
    assert!(cluster.count("SELECT late_results FROM jobs") <= 1);
    let report = cluster.result(&sha).unwrap();
    assert_eq!(
        report["jobs"][0]["worker"],
        format!("worker-{rescuer}"),
        "never recorded over the first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_without_a_close_is_noticed_and_recovered() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut options = ClusterOptions::new("f-cut");
    options.workers = 0;
    let mut cluster = Cluster::start(options);
    let cut_worker = cluster.add_worker(&[
        ("WARREN_BROKER__URL", &proxy.url()),
        ("WARREN_BROKER__HEARTBEAT", "2s"),
    ]);
    assert!(
        cluster.wait_for_workers(1, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let marks = marks_path(&cluster);
    let spec = marking_spec(&marks, "sleep 3; echo done");
    let sha = cluster
        .upstream
        .commit("main", "test", &[("warren.toml", Some(&spec))]);
    assert_eq!(
        cluster.worker_by_pid(wait_for_marks(&marks, 1, &cluster)[0]),
        Some(cut_worker)
    );

    proxy.cut();
    let cut_at = Instant::now();
    let direct = cluster.add_worker(&[]);
    // The broker misses the cut worker's heartbeats, closes its connection
    // and requeues the job it held: the other worker runs it.
    let second = wait_for_marks(&marks, 2, &cluster)[1];
    assert_eq!(cluster.worker_by_pid(second), Some(direct));
    println!(
        "broker requeued the cut worker's job after {:.1} s",
        cut_at.elapsed().as_secs_f64()
    );
    // The cut worker notices by itself (heartbeat 2 s: within about 3 of them).
    assert!(
        wait_until(Duration::from_secs(15), || cluster.workers[cut_worker]
            .log()
            .contains("lost the broker connection")),
        "the cut worker did not notice\n{}",
        cluster.all_logs()
    );
    println!(
        "cut worker noticed after {:.1} s",
        cut_at.elapsed().as_secs_f64()
    );
    proxy.restore();
    let restored_at = Instant::now();
    assert!(
        cluster.wait_for_workers(2, Duration::from_secs(30)).await,
        "the cut worker reconnects"
    );
    println!(
        "cut worker consuming again {:.1} s after the path returned",
        restored_at.elapsed().as_secs_f64()
    );

    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    assert!(
        wait_until(DEADLINE, || cluster.count("SELECT late_results FROM jobs")
            == 1),
        "both runs reported, one was recorded\n{}",
        cluster.all_logs()
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM attempts WHERE state = 'finished'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_stream_comes_back_from_its_database() {
    let mut cluster = Cluster::start(ClusterOptions::new("f-dispatcher"));
    let spec = "command = \"sleep 0.2; echo ok\"\ntimeout = \"1m\"\n";
    let base = cluster
        .upstream
        .commit("main", "base", &[("warren.toml", Some(spec))]);
    results_or_logs(&cluster, std::slice::from_ref(&base));
    let shas: Vec<String> = (0..20)
        .map(|i| {
            cluster.upstream.commit(
                "main",
                &format!("change {i}"),
                &[("n.txt", Some(&i.to_string()))],
            )
        })
        .collect();
    let some_done = wait_until(DEADLINE, || {
        shas.iter()
            .filter(|sha| cluster.result_path(sha).exists())
            .count()
            >= 3
    });
    assert!(some_done, "{}", cluster.all_logs());
    cluster.dispatcher.as_mut().expect("dispatcher").kill();
    let written_before = shas
        .iter()
        .filter(|sha| cluster.result_path(sha).exists())
        .count();
    cluster.start_dispatcher();

    let reports = results_or_logs(&cluster, &shas);
    println!("{written_before} of 20 results were written before the kill");
    for report in &reports {
        assert_eq!(report["status"], "passed", "{report:#}");
        assert_eq!(report["jobs"].as_array().unwrap().len(), 1);
    }
    assert_eq!(
        cluster.count("SELECT count(*) FROM commits"),
        21,
        "every commit once"
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM jobs"),
        21,
        "one job each"
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM attempts WHERE state = 'finished'"),
        21
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM commits WHERE result_written = 0"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_down_while_fifty_commits_land_publishes_all_oldest_first_once() {
    let mut cluster = Cluster::start(ClusterOptions::new("f-watcher"));
    let tap = cluster.broker.tap(Queue::Commits).await;
    let spec = "command = \"true\"\ntimeout = \"1m\"\n";
    let base = cluster
        .upstream
        .commit("main", "base", &[("warren.toml", Some(spec))]);
    results_or_logs(&cluster, std::slice::from_ref(&base));
    cluster.watcher.as_mut().expect("watcher").kill();
    let shas: Vec<String> = (0..50)
        .map(|i| {
            cluster.upstream.commit(
                "main",
                &format!("change {i}"),
                &[("n.txt", Some(&i.to_string()))],
            )
        })
        .collect();
    cluster.start_watcher();
    results_or_logs(&cluster, &shas);

    let published: Vec<String> = tap
        .drain()
        .await
        .iter()
        .map(|body| {
            decode::<CommitEvent>(body)
                .expect("valid event")
                .sha
                .to_string()
        })
        .collect();
    let mut expected = vec![base];
    expected.extend(shas);
    assert_eq!(published, expected, "every commit once, oldest first");
    assert_eq!(cluster.count("SELECT count(*) FROM commits"), 51);
    tap.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_worker_finish_its_job_and_exit_zero() {
    let mut options = ClusterOptions::new("f-term");
    options.workers = 1;
    let mut cluster = Cluster::start(options);
    let marks = marks_path(&cluster);
    let spec = marking_spec(&marks, "sleep 2; echo finished");
    let sha = cluster
        .upstream
        .commit("main", "test", &[("warren.toml", Some(&spec))]);
    wait_for_marks(&marks, 1, &cluster);
    let code = cluster.workers[0].stop(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", cluster.all_logs());
    // It published and acked before exiting: the result needs no worker.
    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed");
    assert_eq!(
        runs(report),
        [("worker-0".to_owned(), "finished".to_owned())]
    );
    assert_eq!(
        cluster.broker.queue_depth(Queue::Jobs).await.0,
        0,
        "nothing requeued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_or_the_end_of_the_grace_returns_the_job_to_the_queue() {
    let mut options = ClusterOptions::new("f-force");
    options.workers = 0;
    let mut cluster = Cluster::start(options);
    let marks = marks_path(&cluster);
    let fast = cluster.root().join("fast");
    // Slow until `fast` exists, so that the killed runs are really killed.
    let spec = marking_spec(
        &marks,
        &format!(
            "while [ ! -f {} ]; do sleep 0.1; done; echo done",
            fast.display()
        ),
    );
    let sha = cluster
        .upstream
        .commit("main", "test", &[("warren.toml", Some(&spec))]);

    // 1. Two signals: the job is killed at once and goes back to the queue.
    let first = cluster.add_worker(&[]);
    wait_for_marks(&marks, 1, &cluster);
    cluster.workers[first].signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    let code = cluster.workers[first].stop(Duration::from_secs(20));
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "a second signal kills the job now"
    );
    assert_ne!(code, Some(0), "a worker that abandoned a job says so");

    // 2. One signal, but the grace ends first: same.
    let second = cluster.add_worker(&[("WARREN_WORKER__SHUTDOWN_GRACE", "1s")]);
    wait_for_marks(&marks, 2, &cluster);
    let code = cluster.workers[second].stop(Duration::from_secs(20));
    assert_ne!(code, Some(0));

    // 3. The job is still in the queue; a third worker finishes it.
    std::fs::write(&fast, "").unwrap();
    let third = cluster.add_worker(&[]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(report["jobs"][0]["worker"], format!("worker-{third}"));
    let states: Vec<String> = runs(report).into_iter().map(|(_, state)| state).collect();
    assert_eq!(states, ["lost", "lost", "finished"], "{report:#}");
}

/// Starts `options` and commits a test that kills the worker running it,
/// every time; returns the cluster, the sha and the commit's result.
async fn killer_test(options: ClusterOptions) -> (Cluster, String, serde_json::Value) {
    let workers = options.workers as u32;
    let cluster = Cluster::start(options);
    assert!(
        cluster.wait_for_workers(workers, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let spec = "command = \"kill -9 $PPID; sleep 5\"\ntimeout = \"1m\"\n";
    let sha = cluster
        .upstream
        .commit("main", "killer test", &[("warren.toml", Some(spec))]);
    let report = results_or_logs(&cluster, std::slice::from_ref(&sha)).remove(0);
    assert_eq!(report["status"], "error", "{report:#}");
    (cluster, sha, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_runs_keep_being_lost_stops_at_its_budget_with_an_error() {
    let mut options = ClusterOptions::new("f-budget");
    options.workers = 4;
    options.dispatcher_extra = "max_lost_runs = 3".into();
    let (_cluster, _, report) = killer_test(options).await;
    let message = report["message"].as_str().unwrap();
    assert!(message.contains("gave up after 3 lost runs"), "{message}");
    let lost = runs(&report)
        .iter()
        .filter(|(_, state)| state == "lost")
        .count();
    assert_eq!(lost, 3, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_broker_keeps_taking_back_is_dead_lettered_and_reported() {
    let mut options = ClusterOptions::new("f-deadletter");
    options.workers = 3;
    options.dispatcher_extra = "max_lost_runs = 10".into();
    options.env = vec![("WARREN_BROKER__DELIVERY_LIMIT".into(), "1".into())];
    let (cluster, sha, report) = killer_test(options).await;
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains("dead-lettered") && message.contains("delivery_limit"),
        "{message}"
    );
    let letters = cluster.broker.take_dead_letters().await;
    let jobs: BTreeMap<String, u32> = letters
        .iter()
        .filter_map(|(_, body)| decode::<Job>(body).ok())
        .map(|job| (job.sha.to_string(), job.attempt))
        .collect();
    assert_eq!(
        jobs.get(&sha),
        Some(&1),
        "the job is in the dead-letter queue for people to see"
    );
}

/// A TCP server that accepts connections and holds each for `hold` before
/// closing it without a word: a git host that hangs.
fn hanging_git_host(hold: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(hold);
                drop(stream);
            });
        }
    });
    format!("http://{address}/slow.git")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fetch_holds_up_no_heartbeat_so_no_running_job_is_declared_lost() {
    let mut options = ClusterOptions::new("f-stall");
    options.workers = 1;
    // A short lease, frequent heartbeats and a prefetch of one: after the
    // stall, the heartbeats of that time are still in the broker when the
    // lease check comes.
    options.dispatcher_extra = "lease = \"3s\"\nprefetch = 1".into();
    options.worker_env = vec![("WARREN_WORKER__HEARTBEAT_INTERVAL".into(), "300ms".into())];
    let cluster = Cluster::start_ready(options).await;
    let marks = marks_path(&cluster);
    let spec = marking_spec(&marks, "sleep 12");
    let sha = cluster
        .upstream
        .commit("main", "long test", &[("warren.toml", Some(&spec))]);
    wait_for_marks(&marks, 1, &cluster);

    // A commit of a repository whose host hangs: reading its tree takes
    // three fetch attempts of 2.5 s each, during which the running job's
    // heartbeats must still be read (planning runs beside the loop).
    let session = cluster.broker.session().await;
    let event = builders::commit_event(
        &hanging_git_host(Duration::from_millis(2500)),
        &"ab".repeat(20),
    )
    .repo("slow")
    .author("A <a@x>")
    .summary("slow host")
    .build();
    session
        .publish(
            Queue::Commits,
            &event,
            warren_common::session::Outgoing {
                routing_key: "slow",
                message_id: "stall-test".into(),
                persistent: true,
                headers: Vec::new(),
            },
        )
        .await
        .unwrap();

    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(
        report["jobs"][0]["attempt"],
        1,
        "the running job was not re-issued: {report:#}\n{}",
        cluster.all_logs()
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM attempts WHERE state = 'lost'"),
        0,
        "{}",
        cluster.all_logs()
    );
    let slow =
        cluster.count("SELECT count(*) FROM commits WHERE repo = 'slow' AND status = 'error'");
    assert_eq!(slow, 1, "the slow host's commit gets an error verdict");
}

/// A worker frozen mid-job, and the rescuer that ran the job's attempt 2.
struct Rescued {
    cluster: Cluster,
    frozen: usize,
    rescuer: usize,
    sha: String,
    marks: PathBuf,
}

/// Freezes (SIGSTOP) a worker whose AMQP heartbeat is `heartbeat` while it
/// runs a one-second job, under a 3 s lease; returns once a second worker
/// has passed the re-issued attempt 2.
async fn frozen_past_the_lease(name: &str, heartbeat: &str) -> Rescued {
    let mut options = ClusterOptions::new(name);
    options.workers = 0;
    options.dispatcher_extra = "lease = \"3s\"".into();
    let mut cluster = Cluster::start(options);
    let frozen = cluster.add_worker(&[("WARREN_BROKER__HEARTBEAT", heartbeat)]);
    assert!(
        cluster.wait_for_workers(1, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let marks = marks_path(&cluster);
    let spec = marking_spec(&marks, "sleep 1");
    let sha = cluster
        .upstream
        .commit("main", "test", &[("warren.toml", Some(&spec))]);
    wait_for_marks(&marks, 1, &cluster);
    cluster.workers[frozen].signal(Signal::SIGSTOP);
    let rescuer = cluster.add_worker(&[]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(report["jobs"][0]["attempt"], 2, "{report:#}");
    Rescued {
        cluster,
        frozen,
        rescuer,
        sha,
        marks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_attempt_handed_out_again_by_the_broker_is_dropped_not_run_twice() {
    // Its AMQP heartbeat is longer than the lease: the dispatcher gives up
    // on its run first, the broker closes its connection (and hands its
    // delivery of attempt 1 out again) later.
    let Rescued {
        cluster,
        frozen,
        rescuer,
        marks,
        ..
    } = frozen_past_the_lease("f-stale", "5s").await;

    // The broker notices the frozen worker's silence and requeues attempt 1:
    // the rescuer drops it, as the dispatcher cancelled that attempt.
    assert!(
        wait_until(DEADLINE, || cluster.workers[rescuer]
            .log()
            .contains("job dropped without running")),
        "{}",
        cluster.all_logs()
    );
    cluster.workers[frozen].signal(Signal::SIGCONT);
    assert_eq!(
        wait_for_marks(&marks, 2, &cluster).len(),
        2,
        "attempt 1 ran once, on the frozen worker; attempt 2 once"
    );
    assert_eq!(cluster.count("SELECT late_results FROM jobs"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_missed_the_cancel_is_told_again_when_it_starts_the_run() {
    // Frozen with its connection open for a while (AMQP heartbeat 20 s: the
    // broker gives its delivery out again some 40 s after the freeze, long
    // after the newcomer below is ready).
    let Rescued {
        mut cluster,
        frozen,
        rescuer,
        sha,
        ..
    } = frozen_past_the_lease("f-missed", "20s").await;
    // The rescuer heard the cancel of attempt 1; a worker started now did
    // not, and is the only one left to take attempt 1 when the broker
    // gives it out again.
    assert_eq!(
        cluster.workers[rescuer].stop(Duration::from_secs(10)),
        Some(0)
    );
    let newcomer = cluster.add_worker(&[]);
    assert!(
        wait_until(DEADLINE, || cluster.workers[newcomer]
            .log()
            .contains("job cancelled by the dispatcher")),
        "the newcomer ran attempt 1 to its end\n{}",
        cluster.all_logs()
    );
    cluster.workers[frozen].signal(Signal::SIGCONT);
    let report = cluster.result(&sha).unwrap();
    assert_eq!(report["status"], "passed");
    assert_eq!(report["jobs"][0]["worker"], format!("worker-{rescuer}"));
    // The result file was written at the verdict; the database has the
    // newcomer's run, recorded as cancelled.
    assert_eq!(
        cluster.count(&format!(
            "SELECT count(*) FROM attempts WHERE worker = 'worker-{newcomer}' AND state = 'cancelled'"
        )),
        1,
        "{}",
        cluster.all_logs()
    );
}
