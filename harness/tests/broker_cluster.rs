//! Warren on a three-node RabbitMQ cluster (`scripts/broker-cluster.sh`):
//! while commits stream through, the node that leads a queue is killed with
//! `kill -9`, or the node the dispatcher is connected to, or every node is
//! restarted in turn; every commit still gets exactly one verdict. The
//! cluster is this binary's own, beside the machine's broker, so
//! `scripts/test.sh` runs it alone, like `broker_faults`; within it a lock
//! serialises the tests.

use std::path::Path;
use std::time::{Duration, Instant};
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::rabbit::BrokerCluster;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEADLINE: Duration = Duration::from_secs(180);
const COMMITS: usize = 200;

fn results_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
            .count()
    })
}

/// What happens to the cluster a third into the stream.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` of the node that leads the queue with this suffix.
    KillLeaderOf(&'static str),
    /// `kill -9` of the node this component is connected to.
    KillNodeOf(Of),
    /// Every node stopped and started again, one after another.
    RollingRestart,
    /// SIGSTOP of the node this component is connected to, for
    /// [`FROZEN_FOR`]: it hangs with its sockets open.
    FreezeNodeOf(Of),
}

/// How long a frozen node stays frozen: longer than two AMQP heartbeats
/// of the components (5 s in that test), shorter than the nodes'
/// `net_ticktime` (60 s), so the cluster never declares a partition.
const FROZEN_FOR: Duration = Duration::from_secs(20);

/// A component whose broker node a fault kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Of {
    Dispatcher,
    Watcher,
}

/// The node (1..=3) named by the last "connected to the broker" line of
/// `log` (its masked URL ends in the node's AMQP port, 5681..5683), and how
/// many such lines there are.
fn connected_node(log: &str) -> (Option<u8>, usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("connected to the broker"))
        .collect();
    let node = lines.last().and_then(|line| {
        (1..=3u8).find(|n| line.contains(&format!("127.0.0.1:{}", 5680 + u16::from(*n))))
    });
    (node, lines.len())
}

/// Streams `COMMITS` commits into a fresh cluster, causes `fault` once a
/// third of them have verdicts, checks every verdict and returns the
/// longest pause between two new results after the fault began.
async fn stream_through(name: &str, fault: Fault) -> Duration {
    let _serial = SERIAL.lock().await;
    let nodes = BrokerCluster::start();
    let control = nodes.control();
    let mut options = ClusterOptions::new(name);
    options.workers = 3;
    options.poll_interval = "100ms".into();
    options.broker_url = Some(nodes.urls());
    if let Fault::FreezeNodeOf(_) = fault {
        // A hung peer is noticed after about two heartbeats.
        options.env = vec![("WARREN_BROKER__HEARTBEAT".into(), "5s".into())];
    }
    let cluster = Cluster::start_ready(options).await;
    let spec = "command = \"echo ok\"\ntimeout = \"1m\"\n";
    let base = cluster
        .upstream
        .commit("main", "base", &[("warren.toml", Some(spec))]);
    cluster
        .wait_for_results(std::slice::from_ref(&base), DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()));
    let log_of = |of: Of| {
        match of {
            Of::Dispatcher => cluster.dispatcher.as_ref(),
            Of::Watcher => cluster.watcher.as_ref(),
        }
        .map(|component| component.log())
        .unwrap_or_default()
    };

    // Commits stream in; the fault begins once a third have verdicts, and
    // the pauses between new results are timed from then on.
    let dir = cluster.results_dir().join("sample");
    let mut shas = Vec::new();
    let mut faulted: Option<Instant> = None;
    let mut what = String::new();
    // Which node led each queue when the fault began.
    let mut leaders = String::new();
    // A fault that takes time (restarts, a freeze) runs on a thread of its
    // own, returning how long it took.
    let mut background: Option<std::thread::JoinHandle<Duration>> = None;
    let mut reconnected: Option<Duration> = None;
    let mut connections_before = 0;
    let mut seen = results_in(&dir);
    let mut last_new = Instant::now();
    let mut longest = Duration::ZERO;
    let began = Instant::now();
    // A rolling restart (or a freeze) takes longer than the stream: commits
    // keep coming, more slowly, until the last node is back.
    let in_progress = |background: &Option<std::thread::JoinHandle<Duration>>| {
        background
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    };
    let mut last_push = Instant::now();
    while (seen < 1 + shas.len().max(COMMITS) || in_progress(&background))
        && began.elapsed() < DEADLINE
    {
        let slow = shas.len() >= COMMITS && in_progress(&background);
        if shas.len() < COMMITS || (slow && last_push.elapsed() >= Duration::from_millis(250)) {
            last_push = Instant::now();
            let i = shas.len();
            shas.push(cluster.upstream.commit(
                "main",
                &format!("change {i}"),
                &[("n.txt", Some(&i.to_string()))],
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if faulted.is_none() && seen > COMMITS / 3 {
            leaders = ["commits", "jobs", "results", "events"]
                .map(|suffix| {
                    let queue = format!("{}.{suffix}", cluster.broker.prefix);
                    format!("{suffix}@{}", control.leader(&queue).unwrap_or(0))
                })
                .join(" ");
            // Timed from just before the act: finding the target takes a
            // rabbitmqctl call, not part of the fault, and the kill script
            // returns only once the process is gone, when a client may be
            // back already.
            let mut fault_began = Instant::now();
            match fault {
                Fault::KillLeaderOf(suffix) => {
                    let queue = format!("{}.{suffix}", cluster.broker.prefix);
                    let leader = control
                        .leader(&queue)
                        .unwrap_or_else(|| panic!("no leader for {queue}"));
                    what = format!("node {leader}, the leader of {queue}, killed");
                    fault_began = Instant::now();
                    control.kill(leader);
                }
                Fault::KillNodeOf(of) => {
                    let (node, connections) = connected_node(&log_of(of));
                    let node = node
                        .unwrap_or_else(|| panic!("no node in the {of:?}'s log\n{}", log_of(of)));
                    what = format!("node {node}, the {of:?}'s, killed");
                    connections_before = connections;
                    fault_began = Instant::now();
                    control.kill(node);
                }
                Fault::FreezeNodeOf(of) => {
                    let (node, connections) = connected_node(&log_of(of));
                    let node = node
                        .unwrap_or_else(|| panic!("no node in the {of:?}'s log\n{}", log_of(of)));
                    what = format!("node {node}, the {of:?}'s, frozen for {FROZEN_FOR:?}");
                    connections_before = connections;
                    fault_began = Instant::now();
                    control.freeze(node);
                    background = Some(std::thread::spawn(move || {
                        std::thread::sleep(FROZEN_FOR);
                        control.thaw(node);
                        FROZEN_FOR
                    }));
                }
                Fault::RollingRestart => {
                    what = "every node restarted in turn".into();
                    background = Some(std::thread::spawn(move || {
                        let started = Instant::now();
                        for node in 1..=3 {
                            control.restart(node);
                        }
                        started.elapsed()
                    }));
                }
            }
            faulted = Some(fault_began);
            last_new = fault_began;
        }
        if let (Some(at), Fault::KillNodeOf(of) | Fault::FreezeNodeOf(of), None) =
            (faulted, fault, reconnected)
        {
            let (node, connections) = connected_node(&log_of(of));
            if connections > connections_before && node.is_some() {
                reconnected = Some(at.elapsed());
            }
        }
        let now = results_in(&dir);
        if now > seen {
            if faulted.is_some() {
                longest = longest.max(last_new.elapsed());
            }
            last_new = Instant::now();
            seen = now;
        }
    }
    assert!(faulted.is_some(), "the fault never began: {seen} results");
    let fault_took = background.map(|thread| thread.join().expect("the fault's thread"));
    let reports = cluster
        .wait_for_results(&shas, DEADLINE)
        .unwrap_or_else(|missing| {
            panic!(
                "{} commits without a result after {what}\n{}",
                missing.len(),
                cluster.all_logs()
            )
        });
    for report in &reports {
        assert_eq!(report["status"], "passed", "{report:#}");
    }
    let total = 1 + shas.len() as i64;
    assert_eq!(
        cluster.count("SELECT count(*) FROM commits"),
        total,
        "no commit lost or doubled"
    );
    assert_eq!(cluster.count("SELECT count(*) FROM jobs"), total);
    assert_eq!(
        cluster.count("SELECT count(*) FROM attempts WHERE state = 'finished'"),
        total,
        "one verdict per job"
    );
    let republished = cluster.count("SELECT coalesce(sum(duplicate_events), 0) FROM commits");
    let late = cluster.count("SELECT coalesce(sum(late_results), 0) FROM jobs");
    let lost = cluster.count("SELECT count(*) FROM attempts WHERE state = 'lost'");
    println!(
        "{what} a third into the stream ({} commits; leaders {leaders}): longest pause in results after it \
         {longest:?}; connected again after {reconnected:?}; the restarts or the freeze took \
         {fault_took:?}; duplicate commit events {republished}, late results {late}, lost \
         runs {lost}; lost=0 duplicated=0",
        shas.len()
    );
    if let Fault::KillNodeOf(of) | Fault::FreezeNodeOf(of) = fault {
        // What the component said about it, for the record.
        for line in log_of(of)
            .lines()
            .filter(|line| line.contains("broker") && !line.contains("DEBUG"))
            .skip(connections_before.saturating_sub(1))
        {
            println!("  {of:?}: {line}");
        }
        assert!(
            reconnected.is_some(),
            "the {of:?} never connected again\n{}",
            log_of(of)
        );
    }
    drop(cluster);
    drop(nodes);
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_leads_the_jobs_queue_loses_nothing() {
    let pause = stream_through("c-jobs", Fault::KillLeaderOf("jobs")).await;
    assert!(pause < Duration::from_secs(30), "{pause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_leads_the_commits_queue_loses_nothing() {
    let pause = stream_through("c-commits", Fault::KillLeaderOf("commits")).await;
    assert!(pause < Duration::from_secs(30), "{pause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_the_dispatcher_is_connected_to_loses_nothing() {
    let pause = stream_through("c-disp", Fault::KillNodeOf(Of::Dispatcher)).await;
    assert!(pause < Duration::from_secs(30), "{pause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_the_watcher_is_connected_to_loses_nothing() {
    let pause = stream_through("c-watch", Fault::KillNodeOf(Of::Watcher)).await;
    assert!(pause < Duration::from_secs(30), "{pause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    let pause = stream_through("c-rolling", Fault::RollingRestart).await;
    assert!(pause < Duration::from_secs(30), "{pause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_the_node_the_dispatcher_is_connected_to_loses_nothing() {
    let pause = stream_through("c-freeze", Fault::FreezeNodeOf(Of::Dispatcher)).await;
    assert!(pause < Duration::from_secs(40), "{pause:?}");
}

/// A worker whose node dies mid-job declares its private control queue
/// again on the node it moves to: a cancel sent after the failover still
/// reaches it, kills every run of the job, and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_worker_after_its_node_died() {
    let _serial = SERIAL.lock().await;
    let nodes = BrokerCluster::start();
    let control = nodes.control();
    let mut options = ClusterOptions::new("c-cancel");
    options.workers = 1;
    options.broker_url = Some(nodes.urls());
    let cluster = Cluster::start_ready(options).await;
    let marks = cluster.root().join("started");
    let pids = cluster.root().join("pids");
    let slow = format!(
        "command = \"echo $$ >> {}; touch {}; sleep 60\"\ntimeout = \"2m\"\n",
        pids.display(),
        marks.display()
    );
    let sha = cluster
        .upstream
        .commit("main", "slow", &[("warren.toml", Some(&slow))]);
    assert!(
        warren_harness::process::wait_until(DEADLINE, || marks.exists()),
        "{}",
        cluster.all_logs()
    );

    let worker_log = || cluster.workers[0].log();
    let (node, before) = connected_node(&worker_log());
    let node = node.unwrap_or_else(|| panic!("no node in the worker's log\n{}", worker_log()));
    control.kill(node);
    assert!(
        warren_harness::process::wait_until(DEADLINE, || {
            let (now, connections) = connected_node(&worker_log());
            connections > before && now.is_some_and(|now| now != node)
        }),
        "the worker never connected to another node\n{}",
        worker_log()
    );

    // The dispatcher may be reconnecting too: the API answers 202 once the
    // loop has the command.
    let url = format!("{}/api/commits/sample/{sha}/cancel", cluster.http_url());
    let accepted = warren_harness::process::wait_until(DEADLINE, || {
        warren_harness::http::request("POST", &url).0 == 202
    });
    assert!(accepted, "{}", cluster.all_logs());
    let report = cluster
        .wait_for_results(std::slice::from_ref(&sha), DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
        .remove(0);
    assert_eq!(report["status"], "cancelled", "{report:#}");
    let runs: Vec<String> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let gone = warren_harness::process::wait_until(Duration::from_secs(15), || {
        runs.iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    assert!(
        gone,
        "a run of the cancelled job survived: {runs:?}\n{}",
        worker_log()
    );

    let quick = cluster.upstream.commit(
        "main",
        "quick",
        &[("warren.toml", Some("command = \"echo quick\"\n"))],
    );
    let report = cluster
        .wait_for_results(std::slice::from_ref(&quick), Duration::from_secs(30))
        .unwrap_or_else(|missing| {
            panic!(
                "the slot was not freed: no result for {missing:?}\n{}",
                cluster.all_logs()
            )
        })
        .remove(0);
    assert_eq!(report["status"], "passed", "{report:#}");
    println!(
        "node {node} (the worker's) killed mid-job; runs of the job: {}; cancelled after the \
         failover, every run gone, the next commit passed",
        runs.len()
    );
}
