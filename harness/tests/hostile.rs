//! Hostile and broken input through the running system (the real binaries):
//! bad messages on every queue, tests that flood, leave processes behind or
//! wreck their checkout. Each is answered clearly, nothing crashes or loops,
//! nothing is written outside the results folder, good commits still pass.

use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::path::Path;
use std::time::Duration;
use warren_common::messages::encode;
use warren_common::topology::Queue;
use warren_harness::builders;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::process::wait_until;

const DEADLINE: Duration = Duration::from_secs(120);

fn results_or_logs(cluster: &Cluster, shas: &[String]) -> Vec<serde_json::Value> {
    cluster
        .wait_for_results(shas, DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
}

/// A body from a valid message, edited as JSON.
fn edited<M: warren_common::messages::Message>(
    message: &M,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(&encode(message)).unwrap();
    edit(value.as_object_mut().unwrap());
    serde_json::to_vec(&value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_message_is_dead_lettered_with_its_reason_and_good_work_goes_on() {
    let mut cluster = Cluster::start(ClusterOptions::new("h-messages"));
    assert!(
        cluster.wait_for_workers(2, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );
    let spec = "command = \"echo fine\"\ntimeout = \"1m\"\n";
    let first = cluster
        .upstream
        .commit("main", "good before", &[("warren.toml", Some(spec))]);
    results_or_logs(&cluster, std::slice::from_ref(&first));
    let pids: Vec<u32> = cluster.workers.iter().map(|w| w.pid()).collect();

    // Valid messages to start from.
    let event = builders::commit_event(&cluster.upstream.url(), &first)
        .author("Mallory <m@evil>")
        .summary("evil")
        .build();
    let job = builders::job_for(&event).timeout_ms(1000).build();
    let result = builders::result(event.repo.as_str(), event.sha.as_str())
        .worker("mallory")
        .host("evil")
        .build();
    let huge = "x".repeat(warren_common::messages::MAX_BODY_BYTES + 1);
    // (queue, body, what the dead letter's reason must say)
    let bad: Vec<(Queue, Vec<u8>, &str)> = vec![
        (
            Queue::Commits,
            b"not json at all".to_vec(),
            "not a JSON object",
        ),
        (
            Queue::Commits,
            edited(&event, |m| {
                m.insert("schema".into(), 2.into());
            }),
            "schema version",
        ),
        (
            Queue::Commits,
            edited(&event, |m| {
                m.insert("type".into(), "launch_missiles".into());
            }),
            "message type",
        ),
        (
            Queue::Commits,
            edited(&event, |m| {
                m.remove("sha");
            }),
            "missing field `sha`",
        ),
        (
            Queue::Commits,
            edited(&event, |m| {
                m.insert("evil".into(), 1.into());
            }),
            "unknown field `evil`",
        ),
        (
            Queue::Commits,
            edited(&event, |m| {
                m.insert("sha".into(), "../../x".into());
            }),
            "invalid commit id",
        ),
        (
            Queue::Commits,
            edited(&event, |m| {
                m.insert("repo".into(), "../etc".into());
            }),
            "invalid repository name",
        ),
        (
            Queue::Commits,
            edited(&event, |m| {
                m.insert("repo".into(), "a/b".into());
            }),
            "invalid repository name",
        ),
        (Queue::Commits, huge.into_bytes(), "more than the limit"),
        (
            Queue::Jobs,
            edited(&job, |m| {
                m.insert("shard".into(), serde_json::json!({"index": 5, "count": 2}));
            }),
            "out of range",
        ),
        (
            Queue::Jobs,
            b"\xff\xfe binary".to_vec(),
            "not a JSON object",
        ),
        (Queue::Results, encode(&result), "never planned"),
        (Queue::Results, b"[]".to_vec(), "not a JSON object"),
        (Queue::Events, b"{\"schema\":1}".to_vec(), "message type"),
    ];
    let (connection, channel) = cluster.broker.raw_channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    for (queue, body, _) in &bad {
        channel
            .basic_publish(
                cluster.broker.config.topology.exchange(*queue).into(),
                "sample".into(),
                Default::default(),
                body,
                lapin::BasicProperties::default()
                    .with_message_id(format!("bad-{}", queue.index()).into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = connection.close(200, "bye".into()).await;

    // Good work goes on.
    let last = cluster
        .upstream
        .commit("main", "good after", &[("README", Some("still fine\n"))]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&last))[0];
    assert_eq!(report["status"], "passed", "{report:#}");

    // Every bad message is in the dead-letter queue, with its reason.
    let mut letters = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let more = futures_block(cluster.broker.take_dead_letters());
            letters.extend(more);
            letters.len() >= bad.len()
        }),
        "only {} of {} dead letters: {:?}\n{}",
        letters.len(),
        bad.len(),
        letters.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        cluster.all_logs()
    );
    for (queue, _, expected) in &bad {
        assert!(
            letters.iter().any(|(reason, _)| reason.contains(expected)),
            "no dead letter from {queue:?} saying {expected:?}: {:?}",
            letters.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        letters.len(),
        bad.len(),
        "each rejected once, nothing looped"
    );

    // Nothing outside the results folder; no component restarted.
    assert!(!cluster.root().join("x.json").exists());
    assert!(!cluster.root().join("etc").exists());
    for entry in std::fs::read_dir(cluster.results_dir()).unwrap() {
        assert_eq!(
            entry.unwrap().file_name(),
            "sample",
            "only the repository's folder"
        );
    }
    for entry in std::fs::read_dir(cluster.results_dir().join("sample")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name.len() == 45 && name.ends_with(".json"), "{name}");
    }
    for (worker, pid) in cluster.workers.iter_mut().zip(pids) {
        assert!(worker.is_running() && worker.pid() == pid, "a worker died");
    }
    assert!(
        cluster.dispatcher.as_mut().unwrap().is_running(),
        "the dispatcher died"
    );
    assert!(
        cluster.watcher.as_mut().unwrap().is_running(),
        "the watcher died"
    );
    for log in ["dispatcher", "worker-0", "worker-1"] {
        let text = std::fs::read_to_string(cluster.root().join("logs").join(format!("{log}.log")))
            .unwrap();
        assert_eq!(
            text.matches("starting").count(),
            1,
            "{log} started once:\n{text}"
        );
    }
}

/// Runs an async broker call from the synchronous `wait_until` closure.
fn futures_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_of_output_is_capped_and_the_worker_stays_small() {
    let mut options = ClusterOptions::new("h-flood");
    options.workers = 1;
    let cluster = Cluster::start(options);
    let spec = "command = \"yes 0123456789abcdef | head -c 1073741824; echo; echo the end\"\ntimeout = \"5m\"\n";
    let sha = cluster
        .upstream
        .commit("main", "flood", &[("warren.toml", Some(spec))]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&sha))[0];
    assert_eq!(report["status"], "passed", "{}", report["message"]);
    let job = &report["jobs"][0];
    assert_eq!(job["output_truncated"], true);
    assert_eq!(job["output_bytes"], 1_073_741_824 + 1 + 8);
    let output = job["output"].as_str().unwrap();
    assert!(
        output.len() <= 1024 * 1024 + 200,
        "{} bytes kept",
        output.len()
    );
    assert!(
        output.starts_with("0123456789abcdef") && output.ends_with("the end\n"),
        "head and tail kept"
    );
    let peak = cluster.workers[0].peak_memory_kib().expect("VmHWM");
    println!(
        "worker peak memory after a 1 GiB flood: {} MiB; took {} ms",
        peak / 1024,
        job["duration_ms"]
    );
    assert!(
        peak < 64 * 1024,
        "the worker's memory is bounded: {peak} KiB"
    );
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_and_stubborn_processes_are_gone_after_the_job_and_at_the_timeout() {
    let mut options = ClusterOptions::new("h-leftovers");
    options.workers = 1;
    options.worker_extra = "kill_grace = \"1s\"".into();
    let cluster = Cluster::start(options);
    let marks = cluster.root().join("pids");
    // One that ignores SIGTERM, twenty ordinary ones, then exit (or hang).
    let spawn = format!(
        "(trap '' TERM; while true; do sleep 1; done) & echo $! >> {m}; \
         for i in $(seq 20); do sleep 1000 & echo $! >> {m}; done",
        m = marks.display()
    );
    let spec = format!("command = \"{spawn}; echo spawned\"\ntimeout = \"1m\"\n");
    let exits =
        cluster
            .upstream
            .commit("main", "leaves processes", &[("warren.toml", Some(&spec))]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&exits))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    let left = pids(&marks);
    assert_eq!(left.len(), 21);
    assert!(
        wait_until(Duration::from_secs(10), || left
            .iter()
            .all(|pid| !alive(*pid))),
        "leftovers killed"
    );

    std::fs::remove_file(&marks).unwrap();
    let spec = format!("command = \"{spawn}; sleep 1000\"\ntimeout = \"2s\"\n");
    let hangs = cluster
        .upstream
        .commit("main", "hangs", &[("warren.toml", Some(&spec))]);
    let report = &results_or_logs(&cluster, std::slice::from_ref(&hangs))[0];
    assert_eq!(report["status"], "timed_out", "{report:#}");
    let left = pids(&marks);
    assert_eq!(left.len(), 21);
    assert!(
        wait_until(Duration::from_secs(10), || left
            .iter()
            .all(|pid| !alive(*pid))),
        "the whole group killed, SIGTERM-proof one included"
    );

    // The next job starts clean.
    let next = cluster.upstream.commit(
        "main",
        "next",
        &[("warren.toml", Some("command = \"echo clean\"\n"))],
    );
    assert_eq!(
        results_or_logs(&cluster, std::slice::from_ref(&next))[0]["status"],
        "passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_wrecks_its_checkout_does_not_hurt_the_next_job() {
    let mut options = ClusterOptions::new("h-wreck");
    options.workers = 1;
    let cluster = Cluster::start(options);
    let wreck = "command = \"rm -rf .git ./*; mkdir .git; echo garbage > .git/HEAD; echo junk > junk.txt\"\n";
    let first = cluster.upstream.commit(
        "main",
        "wrecks",
        &[("warren.toml", Some(wreck)), ("keep.txt", Some("1\n"))],
    );
    assert_eq!(
        results_or_logs(&cluster, std::slice::from_ref(&first))[0]["status"],
        "passed"
    );
    let check = "command = \"test -f keep.txt && test -f second.txt && test ! -e junk.txt && echo intact\"\n";
    let second = cluster.upstream.commit(
        "main",
        "checks",
        &[("warren.toml", Some(check)), ("second.txt", Some("2\n"))],
    );
    let report = &results_or_logs(&cluster, std::slice::from_ref(&second))[0];
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(report["jobs"][0]["output"], "intact\n");
}
