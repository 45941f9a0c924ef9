//! Warren on a three-node RabbitMQ cluster (`scripts/broker-cluster.sh`):
//! the node that leads a queue is killed with `kill -9` while commits
//! stream through, and every commit still gets exactly one verdict. The
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

/// Streams `COMMITS` commits into `cluster` and kills the node that leads
/// `queue` once a third of them have verdicts; checks every verdict and
/// returns the longest pause between two new results after the kill.
async fn kill_the_leader_of(name: &str, queue_suffix: &str) -> Duration {
    let _serial = SERIAL.lock().await;
    let nodes = BrokerCluster::start();
    let mut options = ClusterOptions::new(name);
    options.workers = 3;
    options.poll_interval = "100ms".into();
    options.broker_url = Some(nodes.urls());
    let cluster = Cluster::start(options);
    assert!(
        cluster.wait_for_workers(3, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let spec = "command = \"echo ok\"\ntimeout = \"1m\"\n";
    let base = cluster
        .upstream
        .commit("main", "base", &[("warren.toml", Some(spec))]);
    cluster
        .wait_for_results(std::slice::from_ref(&base), DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()));
    let queue = format!("{}.{queue_suffix}", cluster.broker.prefix);
    let leader = nodes
        .leader(&queue)
        .unwrap_or_else(|| panic!("no leader for {queue}"));

    // Commits stream in; the node goes once a third have verdicts, and the
    // pauses between new results are timed from then on.
    let dir = cluster.results_dir().join("sample");
    let mut shas = Vec::new();
    let mut killed: Option<Instant> = None;
    let mut seen = results_in(&dir);
    let mut last_new = Instant::now();
    let mut longest = Duration::ZERO;
    let began = Instant::now();
    while seen < 1 + COMMITS && began.elapsed() < DEADLINE {
        if shas.len() < COMMITS {
            let i = shas.len();
            shas.push(cluster.upstream.commit(
                "main",
                &format!("change {i}"),
                &[("n.txt", Some(&i.to_string()))],
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if killed.is_none() && seen > COMMITS / 3 {
            nodes.kill(leader);
            killed = Some(Instant::now());
            last_new = Instant::now();
        }
        let now = results_in(&dir);
        if now > seen {
            if killed.is_some() {
                longest = longest.max(last_new.elapsed());
            }
            last_new = Instant::now();
            seen = now;
        }
    }
    assert!(
        killed.is_some(),
        "the node was never killed: {seen} results"
    );
    let reports = cluster
        .wait_for_results(&shas, DEADLINE)
        .unwrap_or_else(|missing| {
            panic!(
                "{} commits without a result after killing node {leader}\n{}",
                missing.len(),
                cluster.all_logs()
            )
        });
    for report in &reports {
        assert_eq!(report["status"], "passed", "{report:#}");
    }
    let total = 1 + COMMITS as i64;
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
        "{queue} led by node {leader}, killed a third into {COMMITS} commits: longest pause \
         in results after the kill {longest:?}; duplicate commit events {republished}, late \
         results {late}, lost runs {lost}; lost=0 duplicated=0"
    );
    drop(cluster);
    drop(nodes);
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_leads_the_jobs_queue_loses_nothing() {
    let pause = kill_the_leader_of("c-jobs", "jobs").await;
    assert!(pause < Duration::from_secs(30), "{pause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_leads_the_commits_queue_loses_nothing() {
    let pause = kill_the_leader_of("c-commits", "commits").await;
    assert!(pause < Duration::from_secs(30), "{pause:?}");
}
