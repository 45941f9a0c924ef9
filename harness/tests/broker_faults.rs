//! Faults of the broker itself: a restart while commits stream through, and
//! jobs that outlive RabbitMQ's `consumer_timeout`. These disturb every
//! client of the broker, so they run alone: `scripts/test.sh` runs this
//! binary by itself after the other tests, and within it a lock serialises
//! them (for `cargo test`, which runs one test binary at a time anyway).
//! Every change to the broker is undone by a guard, even when a test fails.

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use warren_common::topology::Queue;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::rabbit::{ConsumerTimeout, MemoryAlarm, Stopped};

/// One broker-disturbing test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEADLINE: Duration = Duration::from_secs(120);

fn results_or_logs(cluster: &Cluster, shas: &[String]) -> Vec<serde_json::Value> {
    cluster
        .wait_for_results(shas, DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
}

/// Waits until `queue` has `n` consumers; returns how long it took.
async fn consumers_back(cluster: &Cluster, queue: Queue, n: u32) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if cluster.broker.queue_depth(queue).await.1 >= n {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_records_nothing_twice() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOptions::new("b-restart"));
    assert!(
        cluster.wait_for_workers(2, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let spec = "command = \"sleep 0.1; echo ok\"\ntimeout = \"1m\"\n";
    let base = cluster
        .upstream
        .commit("main", "base", &[("warren.toml", Some(spec))]);
    results_or_logs(&cluster, std::slice::from_ref(&base));

    // Restart the broker a second into a three-second stream of commits.
    let outage = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(1));
        let stopped = Stopped::stop_app();
        std::thread::sleep(Duration::from_secs(3));
        stopped.start();
        Instant::now()
    });
    let mut shas = Vec::new();
    for i in 0..30 {
        shas.push(cluster.upstream.commit(
            "main",
            &format!("change {i}"),
            &[("n.txt", Some(&i.to_string()))],
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    let back_at = outage.join().expect("the outage thread");

    let workers = consumers_back(&cluster, Queue::Jobs, 2).await;
    let dispatcher = consumers_back(&cluster, Queue::Commits, 1).await;
    println!(
        "after the broker came back: workers consuming again after {workers:?}, dispatcher after {dispatcher:?} (measured from {:?} after start_app returned)",
        back_at.elapsed()
    );
    assert!(
        workers.is_some() && dispatcher.is_some(),
        "{}",
        cluster.all_logs()
    );

    let reports = results_or_logs(&cluster, &shas);
    for report in &reports {
        assert_eq!(report["status"], "passed", "{report:#}");
    }
    assert_eq!(
        cluster.count("SELECT count(*) FROM commits"),
        31,
        "no commit lost or doubled"
    );
    assert_eq!(cluster.count("SELECT count(*) FROM jobs"), 31);
    assert_eq!(
        cluster.count("SELECT count(*) FROM attempts WHERE state = 'finished'"),
        31,
        "one verdict per job"
    );
    let republished = cluster.count("SELECT sum(duplicate_events) FROM commits");
    let late = cluster.count("SELECT sum(late_results) FROM jobs");
    println!("duplicate commit events {republished}, late results {late}");
}

/// Runs one 9 s job with RabbitMQ's `consumer_timeout` lowered to 3 s, on
/// two workers with `ack_deadline`; returns its result and how many times
/// its command started.
async fn long_job_under_a_short_consumer_timeout(
    name: &str,
    ack_deadline: &str,
) -> (serde_json::Value, usize) {
    let _timeout = ConsumerTimeout::set(Duration::from_secs(3));
    let mut options = ClusterOptions::new(name);
    options.workers = 2;
    options.worker_extra = format!("ack_deadline = \"{ack_deadline}\"");
    let cluster = Cluster::start_ready(options).await;
    let marks = cluster.root().join("marks");
    let spec = format!(
        "command = \"echo $PPID >> {}; sleep 9; echo done\"\ntimeout = \"1m\"\n",
        marks.display()
    );
    let sha = cluster
        .upstream
        .commit("main", "long test", &[("warren.toml", Some(&spec))]);
    let report = results_or_logs(&cluster, std::slice::from_ref(&sha)).remove(0);
    let started = std::fs::read_to_string(&marks)
        .unwrap_or_default()
        .lines()
        .count();
    (report, started)
}

/// A worker whose `ack_deadline` is under the broker's `consumer_timeout`
/// acks a long job early and runs it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_consumer_timeout_runs_once_thanks_to_the_early_ack() {
    let _serial = SERIAL.lock().await;
    let (report, started) = long_job_under_a_short_consumer_timeout("b-timeout", "1s").await;
    assert_eq!(report["status"], "passed", "{report:#}");
    let runs = report["jobs"][0]["attempts"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "one run, no redelivery: {report:#}");
    assert_eq!(started, 1, "the command ran once");
}

/// The control: a worker that holds the delivery unacknowledged past the
/// timeout loses it to the broker, which gives it to another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_early_ack_the_broker_takes_a_long_job_back() {
    let _serial = SERIAL.lock().await;
    let (report, started) =
        long_job_under_a_short_consumer_timeout("b-timeout-control", "1h").await;
    println!("runs started: {started}; verdict: {}", report["status"]);
    assert!(
        started >= 2,
        "the broker took the job back and gave it out again: {report:#}"
    );
}

/// `amqps://`: every component connects through a TLS listener whose
/// certificate a private CA signed (`broker.tls_ca_file`); a worker that does
/// not trust that CA refuses the broker. (Here because it adds a listener to
/// the shared broker: one at a time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_talk_tls_and_verify_the_broker_certificate() {
    let _serial = SERIAL.lock().await;
    let tls = warren_harness::rabbit::TlsListener::start();
    let url = format!(
        "amqps://guest:guest@localhost:{}/%2f",
        warren_harness::rabbit::TLS_PORT
    );
    let ca = tls.ca_file().display().to_string();
    let mut options = ClusterOptions::new("b-tls");
    options.env = vec![
        ("WARREN_BROKER__URL".into(), url.clone()),
        ("WARREN_BROKER__TLS_CA_FILE".into(), ca),
    ];
    let cluster = Cluster::start_ready(options).await;
    let spec = "command = \"echo over tls\"\ntimeout = \"1m\"\n";
    let sha = cluster
        .upstream
        .commit("main", "tls", &[("warren.toml", Some(spec))]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    for log in ["dispatcher", "watcher", "worker-0"] {
        let text = std::fs::read_to_string(cluster.root().join("logs").join(format!("{log}.log")))
            .unwrap_or_default();
        assert!(
            text.contains("amqps://guest:***@localhost"),
            "{log}: {text}"
        );
    }

    // Without the CA, the system's trust store does not know the broker's
    // certificate: the worker refuses to connect, and says why.
    let config = cluster.root().join("config").join("stranger.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = {url:?}\nprefix = {:?}\n[worker]\nwork_dir = {:?}\n",
            cluster.broker.prefix,
            cluster.root().join("stranger").display().to_string()
        ),
    )
    .unwrap();
    let stranger = warren_harness::process::Component::start(
        "warren-worker",
        "stranger",
        &["--config", config.to_str().unwrap()],
        &cluster.root().join("logs"),
    );
    assert!(
        warren_harness::process::wait_until(Duration::from_secs(20), || stranger
            .log()
            .contains("cannot connect")),
        "{}",
        stranger.log()
    );
    let log = stranger.log();
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    println!(
        "{}",
        log.lines()
            .find(|l| l.contains("cannot connect"))
            .unwrap_or_default()
    );
    assert_eq!(
        cluster.broker.queue_depth(Queue::Jobs).await.1,
        2,
        "it never consumed"
    );
}

/// A broker that stops confirming (its memory alarm blocks every connection
/// that publishes; deliveries go on): a first SIGTERM waits for what is in
/// hand, a second stops the dispatcher at once; a dispatcher's confirm wait
/// ends after `broker.confirm_timeout` (it reconnects and tries again
/// instead of hanging); and once the alarm clears, the commit whose job was
/// never confirmed is published again and decided once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_confirming_holds_nothing_up_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut options = ClusterOptions::new("b-alarm");
    options.workers = 1;
    let mut cluster = Cluster::start_ready(options).await;
    let spec = "command = \"echo ok\"\ntimeout = \"1m\"\n";
    let base = cluster
        .upstream
        .commit("main", "base", &[("warren.toml", Some(spec))]);
    results_or_logs(&cluster, std::slice::from_ref(&base));

    // The next commit's event waits in its queue while no dispatcher runs.
    let mut first = cluster.dispatcher.take().expect("a dispatcher");
    assert_eq!(first.stop(DEADLINE), Some(0), "{}", first.log());
    let sha = cluster
        .upstream
        .commit("main", "during the alarm", &[("n.txt", Some("1"))]);
    let queued = warren_harness::process::wait_until(DEADLINE, || commits_waiting(&cluster) >= 1);
    assert!(queued, "{}", cluster.all_logs());

    let alarm = MemoryAlarm::raise();
    // Stage one waits for the confirm (up to the default 30 s), stage two
    // abandons it.
    cluster.start_dispatcher_with("dispatcher-stages", &[]);
    let recorded = warren_harness::process::wait_until(DEADLINE, || {
        cluster.count("SELECT count(*) FROM jobs WHERE published = 0") == 1
    });
    assert!(recorded, "{}", cluster.all_logs());
    let dispatcher = cluster.dispatcher.as_mut().expect("the dispatcher");
    dispatcher.signal(Signal::SIGTERM);
    assert!(
        warren_harness::process::wait_until(DEADLINE, || dispatcher
            .log()
            .contains("stopping: finishing work in hand")),
        "{}",
        dispatcher.log()
    );
    // The first stage waits for the confirm in hand: no exit for 3 s (the
    // check fails as soon as it exits).
    let exited =
        warren_harness::process::wait_until(Duration::from_secs(3), || !dispatcher.is_running());
    assert!(
        !exited,
        "the first signal waits for the confirm in hand: {}",
        dispatcher.log()
    );
    let forced_at = Instant::now();
    dispatcher.signal(Signal::SIGTERM);
    let code = dispatcher.wait_exit(Duration::from_secs(10));
    let stopped_in = forced_at.elapsed();
    let log = dispatcher.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("forced stop"), "{log}");
    println!("second signal to exit: {stopped_in:?}");
    assert!(stopped_in < Duration::from_secs(5), "{stopped_in:?}\n{log}");

    // With a short confirm timeout, the wait ends and the dispatcher
    // reconnects and tries again, still running.
    cluster.start_dispatcher_with(
        "dispatcher-timeout",
        &[("WARREN_BROKER__CONFIRM_TIMEOUT", "2s")],
    );
    let timed_out = warren_harness::process::wait_until(DEADLINE, || {
        cluster
            .dispatcher
            .as_ref()
            .is_some_and(|d| d.log().contains("no confirm from the broker within 2s"))
    });
    assert!(timed_out, "{}", cluster.all_logs());
    assert!(cluster.dispatcher.as_mut().unwrap().is_running());
    assert_eq!(
        cluster.count("SELECT count(*) FROM jobs WHERE published = 0"),
        1,
        "not marked published without a confirm"
    );

    alarm.clear();
    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(cluster.count("SELECT count(*) FROM commits"), 2);
    assert_eq!(cluster.count("SELECT count(*) FROM jobs"), 2);
    assert_eq!(
        cluster.count("SELECT count(*) FROM attempts WHERE state = 'finished'"),
        2,
        "one verdict per job"
    );
}

/// Messages ready in the commits queue (a blocking read for `wait_until`).
fn commits_waiting(cluster: &Cluster) -> u32 {
    let broker = &cluster.broker;
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(broker.queue_depth(Queue::Commits))
    })
    .0
}
