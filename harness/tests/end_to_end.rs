//! Warren end to end: the real binaries (a dispatcher, two workers and a
//! watcher, each with its own TOML file), a real git repository and the
//! real broker. The tests commit like a developer and read the result files
//! like a user.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use warren_common::messages::{CommitEvent, decode};
use warren_common::topology::Queue;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::git_http::GitHttpServer;

/// Longest wait for a batch of results; they normally take a few seconds.
const RESULTS_DEADLINE: Duration = Duration::from_secs(90);

fn test_script(pass: bool, label: usize) -> String {
    // A short sleep keeps a job busy long enough that both workers get some.
    format!(
        "#!/bin/sh\necho \"test run {label}\"\nsleep 0.2\nexit {}\n",
        if pass { 0 } else { 1 }
    )
}

fn commit_test(cluster: &Cluster, pass: bool, label: usize) -> String {
    let script = test_script(pass, label);
    cluster.upstream.commit(
        "main",
        &format!("commit {label} ({})", if pass { "passes" } else { "fails" }),
        &[
            (
                "warren.toml",
                Some("command = \"sh test.sh\"\ntimeout = \"30s\"\n"),
            ),
            ("test.sh", Some(&script)),
        ],
    )
}

fn results_or_logs(cluster: &Cluster, shas: &[String]) -> Vec<serde_json::Value> {
    cluster
        .wait_for_results(shas, RESULTS_DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
}

/// How many commit events the watcher published for each sha.
async fn published_counts(tap: &warren_harness::broker::Tap) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for body in tap.drain().await {
        let event: CommitEvent = decode(&body).expect("the watcher publishes valid events");
        *counts.entry(event.sha.to_string()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_commits_inside_one_poll_interval_give_ten_results_from_both_workers() {
    let mut options = ClusterOptions::new("e2e-ten");
    options.poll_interval = "2s".into();
    let mut cluster = Cluster::start(options);
    let tap = cluster.broker.tap(Queue::Commits).await;
    assert!(
        cluster.wait_for_workers(2, Duration::from_secs(30)).await,
        "{}",
        cluster.all_logs()
    );
    // The first commit is the branch's first sight (only the tip is
    // published); the ten after it arrive between two polls.
    let base = commit_test(&cluster, true, 0);
    results_or_logs(&cluster, std::slice::from_ref(&base));

    let shas: Vec<String> = (1..=10)
        .map(|i| commit_test(&cluster, i % 2 == 1, i))
        .collect();
    let reports = results_or_logs(&cluster, &shas);

    let mut workers = BTreeSet::new();
    for (i, report) in reports.iter().enumerate() {
        let expected = if (i + 1) % 2 == 1 { "passed" } else { "failed" };
        assert_eq!(report["status"], expected, "commit {}: {report:#}", i + 1);
        assert_eq!(
            report["jobs"][0]["output"].as_str().unwrap().trim(),
            format!("test run {}", i + 1)
        );
        workers.insert(report["jobs"][0]["worker"].as_str().unwrap().to_owned());
    }
    assert_eq!(workers.len(), 2, "both workers ran jobs: {workers:?}");

    // Oldest first, each once.
    let counts = published_counts(&tap).await;
    assert!(
        shas.iter().all(|sha| counts.get(sha) == Some(&1)),
        "{counts:?}"
    );
    for (name, code) in cluster.stop() {
        assert_eq!(code, Some(0), "{name} exits cleanly on SIGTERM");
    }
    tap.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_killed_between_pushes_loses_nothing_and_republishes_nothing() {
    let mut cluster = Cluster::start(ClusterOptions::new("e2e-restart"));
    let tap = cluster.broker.tap(Queue::Commits).await;
    let mut shas = vec![commit_test(&cluster, true, 0)];
    results_or_logs(&cluster, &shas);
    for round in 1..=3 {
        if let Some(mut watcher) = cluster.watcher.take() {
            watcher.kill();
        }
        let batch: Vec<String> = (0..3)
            .map(|i| commit_test(&cluster, true, round * 10 + i))
            .collect();
        cluster.start_watcher();
        results_or_logs(&cluster, &batch);
        shas.extend(batch);
    }
    let counts = published_counts(&tap).await;
    assert_eq!(counts.len(), shas.len(), "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "each commit published once: {counts:?}"
    );
    for sha in &shas {
        let report = cluster.result(sha).unwrap();
        assert_eq!(
            report["jobs"][0]["attempts"].as_array().unwrap().len(),
            1,
            "tested once"
        );
    }
    tap.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_missing_command_and_timeout_each_get_a_clear_result() {
    let cluster = Cluster::start(ClusterOptions::new("e2e-bad"));
    let base = commit_test(&cluster, true, 0);
    results_or_logs(&cluster, std::slice::from_ref(&base));

    let cases = [
        ("command = [\"sh\"\n", "error", "warren.toml is invalid"),
        ("timeout = \"5s\"\n", "error", "no `command`"),
        (
            "command = \"no-such-test-runner --all\"\n",
            "error",
            "not found",
        ),
        (
            "command = \"sleep 60\"\ntimeout = \"1s\"\n",
            "timed_out",
            "timeout",
        ),
    ];
    let shas: Vec<String> = cases
        .iter()
        .map(|(spec, _, _)| {
            cluster
                .upstream
                .commit("main", spec, &[("warren.toml", Some(spec))])
        })
        .collect();
    let good = commit_test(&cluster, true, 99);
    let reports = results_or_logs(&cluster, &shas);
    for ((spec, status, message), report) in cases.iter().zip(&reports) {
        assert_eq!(report["status"], *status, "{spec}: {report:#}");
        let text = report["message"].as_str().unwrap_or_default();
        assert!(
            text.contains(message),
            "{spec}: expected {message:?} in {text:?}"
        );
    }
    // Nothing crashed or hung: the next commit is tested as usual.
    let report = &results_or_logs(&cluster, std::slice::from_ref(&good))[0];
    assert_eq!(report["status"], "passed");
    let mut cluster = cluster;
    for (name, code) in cluster.stop() {
        assert_eq!(code, Some(0), "{name} was still running and exits cleanly");
    }
}

#[test]
fn every_binary_refuses_a_bad_config_naming_file_key_and_variable_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "warren-dispatcher",
            "[dispatcher]\nprefetch = 0\n",
            "dispatcher.prefetch",
        ),
        (
            "warren-dispatcher",
            "[dispatcher]\nresult_dir = \"x\"\n",
            "result_dir",
        ),
        ("warren-worker", "[worker]\nslots = 0\n", "worker.slots"),
        (
            "warren-worker",
            "[broker]\nheartbeat = \"0s\"\n",
            "broker.heartbeat",
        ),
        ("warren-watcher", "[watcher]\nstate_dir = \"x\"\n", "repos"),
        (
            "warren-watcher",
            "[repos.api]\nurl = \"/x\"\nbranches = []\n",
            "repos.api.branches",
        ),
    ];
    for (index, (binary, contents, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{index}.toml"));
        // A broker URL nobody listens on: a component that tried to connect
        // would hang in its reconnection loop instead of exiting.
        let contents = if contents.contains("[broker]") {
            contents.replace(
                "[broker]\n",
                "[broker]\nurl = \"amqp://u:p@127.0.0.1:1/%2f\"\n",
            )
        } else {
            format!("[broker]\nurl = \"amqp://u:p@127.0.0.1:1/%2f\"\n{contents}")
        };
        std::fs::write(&path, &contents).unwrap();
        let output = std::process::Command::new(warren_harness::process::bin_dir().join(binary))
            .args(["--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{binary} {contents:?}: {stderr}"
        );
        assert!(
            stderr.contains(key),
            "{binary}: expected {key:?} in {stderr}"
        );
        assert!(
            stderr.contains(&path.display().to_string()),
            "{binary} names the file: {stderr}"
        );
    }
    // A typo in an environment variable is refused too.
    let output =
        std::process::Command::new(warren_harness::process::bin_dir().join("warren-worker"))
            .env("WARREN_WORKER_SLOTS", "2")
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("WARREN_WORKER__SLOTS"), "{stderr}");
}

/// A cluster whose repository is only reachable over HTTP with a token:
/// `[git]` is set for every component through the environment, with
/// `token` in the dispatcher's token file and the right one for the others.
fn private_repo_cluster(
    name: &str,
    dispatcher_token: &str,
) -> (tempfile::TempDir, Cluster, GitHttpServer) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let server = GitHttpServer::start(&dir, "ci-bot", "right-token");
    let (right, wrong) = (dir.join("right-token"), dir.join("dispatcher-token"));
    std::fs::write(&right, "right-token\n").unwrap();
    std::fs::write(&wrong, format!("{dispatcher_token}\n")).unwrap();
    let mut options = ClusterOptions::new(name);
    options.workers = 1;
    options.dir = Some(dir);
    options.repo_url = Some(server.url("sample"));
    options.env = vec![
        ("WARREN_GIT__HTTPS_USERNAME".into(), "ci-bot".into()),
        (
            "WARREN_GIT__HTTPS_TOKEN_FILE".into(),
            right.display().to_string(),
        ),
        // No helper of the machine's may answer for Warren.
        ("WARREN_GIT__CREDENTIAL_HELPER".into(), "false".into()),
    ];
    options.dispatcher_env = vec![(
        "WARREN_GIT__HTTPS_TOKEN_FILE".into(),
        wrong.display().to_string(),
    )];
    (temp, Cluster::start(options), server)
}

#[test]
fn a_private_repository_is_watched_planned_and_checked_out_with_a_token() {
    let (_dir, cluster, server) = private_repo_cluster("e-private", "right-token");
    let sha = cluster.upstream.commit(
        "main",
        "private",
        &[("warren.toml", Some("command = \"test -f warren.toml\"\n"))],
    );
    let report = cluster
        .wait_for_results(std::slice::from_ref(&sha), RESULTS_DEADLINE)
        .unwrap_or_else(|missing| panic!("{missing:?}\n{}", cluster.all_logs()))
        .remove(0);
    assert_eq!(report["status"], "passed", "{report:#}");
    // The watcher, the dispatcher and the worker each fetched: git asks
    // without credentials first (401), then with the token.
    assert!(server.authorized() >= 3, "{}", server.authorized());
    assert!(server.refused() >= 3, "{}", server.refused());
    assert!(
        !cluster.all_logs().contains("right-token"),
        "the token is never logged"
    );
}

#[test]
fn a_refused_token_gives_an_error_that_names_the_setting_and_no_retry_loop() {
    let (_dir, cluster, server) = private_repo_cluster("e-badtoken", "wrong-token");
    let sha = cluster.upstream.commit(
        "main",
        "private",
        &[("warren.toml", Some("command = \"true\"\n"))],
    );
    let report = cluster
        .wait_for_results(std::slice::from_ref(&sha), RESULTS_DEADLINE)
        .unwrap_or_else(|missing| panic!("{missing:?}\n{}", cluster.all_logs()))
        .remove(0);
    assert_eq!(report["status"], "error", "{report:#}");
    let message = report["message"].as_str().unwrap_or_default();
    println!("the verdict's message: {message}");
    assert!(
        message.contains("https_token_file") && !message.contains("wrong-token"),
        "{message}"
    );
    // A refusal is not retried: it would be refused again.
    assert!(!message.contains("attempts"), "{message}");
    assert!(
        !cluster.all_logs().contains("fetch failed; retrying"),
        "{}",
        cluster.all_logs()
    );
    assert!(server.refused() > 0);
}
