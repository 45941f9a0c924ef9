//! Operating Warren: the dispatcher's HTTP API, its live status page in a
//! real headless Chromium, Prometheus metrics, retry and cancel, webhooks,
//! with the real binaries.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::http::{json, request as http};
use warren_harness::process::wait_until;

const DEADLINE: Duration = Duration::from_secs(90);

/// Waits until `marks` exists (the job's command started).
fn wait_started(cluster: &Cluster, marks: &Path) {
    assert!(
        wait_until(DEADLINE, || marks.exists()),
        "{}",
        cluster.all_logs()
    );
}

/// The browser tests' folder, once Chromium and playwright-core are there.
fn browser_dir() -> std::path::PathBuf {
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        node.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "run scripts/ensure-browser.sh first (Chromium and playwright-core)"
    );
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_commit_go_from_running_to_passed_and_follows_its_log() {
    let node = browser_dir();
    let mut options = ClusterOptions::new("o-browser");
    options.workers = 1;
    let cluster = Cluster::start(options);
    let base = cluster.http_url();
    let marks = cluster.root().join("started");
    let spec = format!(
        "command = \"touch {}; for i in $(seq 1 20); do echo line $i; sleep 0.5; done\"\n",
        marks.display()
    );
    let sha = cluster.upstream.commit(
        "main",
        "a slow, chatty test",
        &[("warren.toml", Some(&spec))],
    );
    wait_started(&cluster, &marks);
    let shots = std::env::var("WARREN_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| cluster.root().to_path_buf());
    let output = Command::new("node")
        .arg(node.join("live_page.mjs"))
        .args([&base, "sample", &sha, shots.to_str().unwrap()])
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stdout}{stderr}\n{}",
        cluster.all_logs()
    );
    assert!(shots.join("status-page-live-log.png").exists());
    assert!(shots.join("status-page-commits.png").exists());
}

/// A suite file that sleeps `seconds`, then writes a one-test JUnit report
/// (`suite::<name>`): passing, failing, or (with `wobble`) failing once
/// then passing on the rerun (flaky). It first touches `<started>-<name>`.
fn suite_file(name: &str, seconds: u32, outcome: &str, wobble: &Path, started: &Path) -> String {
    let decide = match outcome {
        "fail" => "result=fail".to_owned(),
        "flaky" => format!(
            "if [ -f {m} ]; then result=pass; else touch {m}; result=fail; fi",
            m = wobble.display()
        ),
        _ => "result=pass".to_owned(),
    };
    format!(
        "#!/bin/sh\ntouch {started}-{name}\nsleep {seconds}\n{decide}\n\
         if [ $result = pass ]; then body='<testcase classname=\"suite\" name=\"{name}\" time=\"{seconds}\"/>'; code=0; \
         else body='<testcase classname=\"suite\" name=\"{name}\" time=\"{seconds}\"><failure message=\"broke\"/></testcase>'; code=1; fi\n\
         printf '<testsuite name=\"s\">%s</testsuite>' \"$body\" > report.xml\nexit $code\n",
        started = started.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pictures_render_from_a_real_run_timeline_history_and_fleet() {
    let node = browser_dir();
    // Two workers of two slots; six shards, so two wait in the queue.
    let mut options = ClusterOptions::new("o-pictures");
    options.workers = 2;
    options.slots = 2;
    options.dispatcher_env = vec![("WARREN_HTTP__FLEET_SAMPLE_INTERVAL".into(), "1s".into())];
    let mut cluster = Cluster::start_ready(options).await;
    let base = cluster.http_url();
    let root = cluster.root().to_path_buf();
    let spec = "command = \"sh {file}\"\nfiles = [\"tests/*.sh\"]\nshards = 6\n\
                junit = \"report.xml\"\nretry_failed = 1\ntimeout = \"1m\"\n";
    let names = ["one", "two", "three", "four", "five", "six"];
    // Commit by commit: test_one passes, fails, then is flaky; the others
    // take 1 to 3 s (4 s in the last commit, long enough to lose a worker).
    let mut shas = Vec::new();
    for (round, outcome) in ["pass", "fail", "flaky"].into_iter().enumerate() {
        let started = root.join(format!("started-{round}"));
        let wobble = root.join(format!("wobble-{round}"));
        let files: Vec<(String, String)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let seconds = if round == 2 { 4 } else { 1 + (i as u32 % 3) };
                let outcome = if i == 0 { outcome } else { "pass" };
                (
                    format!("tests/test_{name}.sh"),
                    suite_file(&format!("test_{name}"), seconds, outcome, &wobble, &started),
                )
            })
            .collect();
        let mut change: Vec<(&str, Option<&str>)> = vec![("warren.toml", Some(spec))];
        change.extend(
            files
                .iter()
                .map(|(path, body)| (path.as_str(), Some(body.as_str()))),
        );
        let sha = cluster
            .upstream
            .commit("main", &format!("round {round}"), &change);
        if round == 2 {
            // Four shards start on the four slots; worker-0 is killed under
            // its two (lost, run again elsewhere) and comes back.
            assert!(
                wait_until(DEADLINE, || names
                    .iter()
                    .filter(|name| root.join(format!("started-{round}-test_{name}")).exists())
                    .count()
                    >= 4),
                "{}",
                cluster.all_logs()
            );
            cluster.workers[0].kill();
            cluster.start_worker(0);
        }
        let report = cluster
            .wait_for_results(std::slice::from_ref(&sha), DEADLINE)
            .unwrap()
            .remove(0);
        let expected = if outcome == "fail" {
            "failed"
        } else {
            "passed"
        };
        assert_eq!(report["status"], expected, "{report:#}");
        shas.push(sha);
    }
    let last = shas.last().unwrap();
    let (_, detail) = json("GET", &format!("{base}/api/commits/sample/{last}"));
    let lost: u64 = detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["lost_runs"].as_u64().unwrap_or(0))
        .sum();
    assert!(lost >= 1, "a run was lost: {detail:#}");

    // The JSON behind the pictures.
    let (status, runs) = json(
        "GET",
        &format!("{base}/api/tests/sample?classname=suite&name=test_one"),
    );
    assert_eq!(status, 200, "{runs}");
    let statuses: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["passed", "failed", "passed"], "{runs}");
    assert_eq!(
        json("GET", &format!("{base}/api/tests/sample?classname=suite")).0,
        400,
        "the test's name is required"
    );
    let (status, page) = http("GET", &format!("{base}/history/sample?branch=main"));
    assert_eq!(status, 200, "{page}");
    // Three marks in the picture, three rows in its table.
    assert_eq!(
        page.matches("<a href=\"/commits/sample/").count(),
        3,
        "{page}"
    );
    assert_eq!(page.matches("<a class=\"sha\" href=").count(), 3, "{page}");
    assert_eq!(
        http("GET", &format!("{base}/history/sample?branch=a..b")).0,
        400,
        "not a branch name"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, fleet) = json("GET", &format!("{base}/api/fleet"));
            let samples = fleet["samples"].as_array().cloned().unwrap_or_default();
            samples.len() >= 5
                && samples.iter().any(|s| s["busy_slots"].as_u64() > Some(0))
                && samples.iter().any(|s| s["jobs_waiting"].as_u64() > Some(0))
        }),
        "the fleet was sampled while busy, with jobs waiting: {}",
        json("GET", &format!("{base}/api/fleet")).1
    );

    let shots = std::env::var("WARREN_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.clone());
    let output = Command::new("node")
        .arg(node.join("pictures.mjs"))
        .args([
            &base,
            "sample",
            last,
            "suite::test_one",
            shots.to_str().unwrap(),
        ])
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stdout}{stderr}\n{}",
        cluster.all_logs()
    );
    println!("{stdout}");
    for name in [
        "picture-timeline.png",
        "picture-history.png",
        "picture-test-history.png",
        "picture-fleet.png",
        "picture-timeline-phone.png",
    ] {
        assert!(shots.join(name).exists(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_lists_details_workers_queues_and_health() {
    let mut options = ClusterOptions::new("o-api");
    options.workers = 2;
    let cluster = Cluster::start_ready(options).await;
    let base = cluster.http_url();
    let spec = "command = \"sh test.sh\"\n";
    let passing = cluster.upstream.commit(
        "main",
        "passes",
        &[("warren.toml", Some(spec)), ("test.sh", Some("exit 0\n"))],
    );
    // The watcher publishes only the tip of a branch it sees for the first
    // time: the first commit must be seen before the second is pushed.
    cluster
        .wait_for_results(std::slice::from_ref(&passing), DEADLINE)
        .unwrap();
    let failing = cluster.upstream.commit(
        "main",
        "fails",
        &[("test.sh", Some("echo broken; exit 1\n"))],
    );
    cluster
        .wait_for_results(std::slice::from_ref(&failing), DEADLINE)
        .unwrap();

    assert_eq!(http("GET", &format!("{base}/healthz")), (200, "ok".into()));
    assert!(wait_until(Duration::from_secs(10), || http(
        "GET",
        &format!("{base}/readyz")
    )
    .0 == 200));

    let (status, list) = json("GET", &format!("{base}/api/commits?limit=10"));
    assert_eq!(status, 200, "{list}");
    let commits = list["commits"].as_array().unwrap();
    assert_eq!(commits[0]["sha"], failing.as_str(), "newest first");
    assert_eq!(commits[0]["status"], "failed");
    assert_eq!(commits[1]["status"], "passed");
    let (_, failed_only) = json("GET", &format!("{base}/api/commits?status=failed"));
    assert_eq!(failed_only["commits"].as_array().unwrap().len(), 1);
    let (_, by_prefix) = json("GET", &format!("{base}/api/commits?sha={}", &passing[..8]));
    assert_eq!(by_prefix["commits"][0]["sha"], passing.as_str());
    let (_, page) = json("GET", &format!("{base}/api/commits?limit=1"));
    let next = page["next_before"].as_i64().expect("a next page");
    let (_, older) = json("GET", &format!("{base}/api/commits?limit=1&before={next}"));
    assert_eq!(older["commits"][0]["sha"], passing.as_str());

    let (status, detail) = json("GET", &format!("{base}/api/commits/sample/{failing}"));
    assert_eq!(status, 200);
    assert_eq!(detail["jobs"][0]["output"], "broken\n");
    assert_eq!(
        json(
            "GET",
            &format!("{base}/api/commits/sample/{}", "0".repeat(40))
        )
        .0,
        404
    );
    assert_eq!(
        json("GET", &format!("{base}/api/commits/..%2Fetc/{failing}")).0,
        400
    );
    assert_eq!(json("GET", &format!("{base}/api/commits?sha=xyz")).0, 400);

    assert!(
        wait_until(Duration::from_secs(20), || {
            json("GET", &format!("{base}/api/workers")).1["workers"]
                .as_array()
                .is_some_and(|w| w.len() == 2)
        }),
        "both workers are listed"
    );
    let (_, workers) = json("GET", &format!("{base}/api/workers"));
    assert_eq!(workers["workers"][0]["slots"], 1);

    let (status, queues) = json("GET", &format!("{base}/api/queues"));
    assert_eq!(status, 200, "{queues}");
    let jobs = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"].as_str().unwrap().ends_with(".jobs"))
        .cloned()
        .unwrap();
    assert_eq!(jobs["consumers"], 2);

    // The pages render.
    let (status, html) = http("GET", &format!("{base}/"));
    assert_eq!(status, 200);
    assert!(html.contains(&failing[..12]) && html.contains("✗ failed"));
    let (status, html) = http("GET", &format!("{base}/commits/sample/{failing}"));
    assert_eq!(status, 200);
    assert!(html.contains("broken"));
    assert_eq!(http("GET", &format!("{base}/workers")).0, 200);
}

/// Parses Prometheus text into (name with labels, value).
fn scrape(base: &str) -> Vec<(String, f64)> {
    let (status, text) = http("GET", &format!("{base}/metrics"));
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad metric line {line:?}"));
            (
                name.to_owned(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            )
        })
        .collect()
}

fn metric(metrics: &[(String, f64)], name: &str) -> Option<f64> {
    metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_retry_reruns_and_cancel_stops() {
    let mut options = ClusterOptions::new("o-metrics");
    options.workers = 1;
    let cluster = Cluster::start_ready(options).await;
    let base = cluster.http_url();
    let passing = cluster.upstream.commit(
        "main",
        "passes",
        &[("warren.toml", Some("command = \"echo ok\"\n"))],
    );
    cluster
        .wait_for_results(std::slice::from_ref(&passing), DEADLINE)
        .unwrap();

    let metrics = scrape(&base);
    assert_eq!(
        metric(&metrics, "warren_commits_total{status=\"passed\"}"),
        Some(1.0),
        "{metrics:?}"
    );
    assert_eq!(
        metric(&metrics, "warren_job_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "warren_broker_connected"), Some(1.0));
    assert!(
        metric(&metrics, "warren_workers_connected").unwrap_or(0.0) >= 1.0,
        "{metrics:?}"
    );
    assert!(
        metrics
            .iter()
            .any(|(n, _)| n.starts_with("warren_queue_depth{"))
    );

    // Retry: the commit runs again and gets a second verdict.
    let (status, answer) = json(
        "POST",
        &format!("{base}/api/commits/sample/{passing}/retry"),
    );
    assert_eq!(status, 202, "{answer}");
    assert!(
        wait_until(DEADLINE, || {
            metric(&scrape(&base), "warren_commits_total{status=\"passed\"}") == Some(2.0)
        }),
        "{}",
        cluster.all_logs()
    );
    let (_, detail) = json("GET", &format!("{base}/api/commits/sample/{passing}"));
    assert_eq!(detail["jobs"][0]["attempt"], 2);

    // Cancel: a long job is stopped on the worker, its slot freed.
    let marks = cluster.root().join("started");
    let slow = format!(
        "command = \"touch {}; sleep 60\"\ntimeout = \"2m\"\n",
        marks.display()
    );
    let long = cluster
        .upstream
        .commit("main", "slow", &[("warren.toml", Some(&slow))]);
    wait_started(&cluster, &marks);
    let (status, answer) = json("POST", &format!("{base}/api/commits/sample/{long}/cancel"));
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        json("POST", &format!("{base}/api/commits/sample/{long}/cancel")).0,
        409
    );
    let report = cluster
        .wait_for_results(std::slice::from_ref(&long), DEADLINE)
        .unwrap()
        .remove(0);
    assert_eq!(report["status"], "cancelled");
    let quick = cluster.upstream.commit(
        "main",
        "quick",
        &[("warren.toml", Some("command = \"echo quick\"\n"))],
    );
    let started = Instant::now();
    let report = cluster
        .wait_for_results(std::slice::from_ref(&quick), DEADLINE)
        .unwrap()
        .remove(0);
    assert_eq!(report["status"], "passed");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the cancelled job's slot was freed"
    );
}

/// What `promtool check metrics` (Prometheus's own linter and parser)
/// says about `text`: `None` when it is happy.
fn promtool_problems(text: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus): run scripts/ensure-promtool.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (!output.status.success() || !said.trim().is_empty()).then_some(said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_and_worker_metrics_pass_promtool() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = ClusterOptions::new("o-promtool");
    options.workers = 1;
    options.worker_extra = format!("http_listen = \"127.0.0.1:{port}\"\n");
    let cluster = Cluster::start_ready(options).await;
    let base = cluster.http_url();
    // Every family has samples: a commit passed, one failed, a job ran.
    cluster.commit_and_wait("passes", "command = \"echo ok\"\n", DEADLINE);
    cluster.commit_and_wait("fails", "command = \"exit 1\"\n", DEADLINE);

    let worker = format!("http://127.0.0.1:{port}");
    for (who, url) in [("dispatcher", &base), ("worker", &worker)] {
        let (status, text) = http("GET", &format!("{url}/metrics"));
        assert_eq!(status, 200, "{who}: {text}");
        assert!(text.contains("warren_"), "{who}: {text}");
        if let Some(problems) = promtool_problems(&text) {
            panic!("promtool check metrics, {who}:\n{problems}\n--- the metrics:\n{text}");
        }
    }
}

/// A tiny HTTP server that records the bodies POSTed to it; the first
/// `fail_first` requests get a 500.
fn webhook_receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    std::thread::spawn(move || {
        let mut requests = 0;
        for stream in listener.incoming().flatten() {
            requests += 1;
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut stream = reader.into_inner();
            if requests <= fail_first {
                let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            } else {
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        }
    });
    (url, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_commit_is_posted_to_the_webhooks_with_retries() {
    let (url, bodies) = webhook_receiver(1);
    let mut options = ClusterOptions::new("o-webhook");
    options.workers = 1;
    options.dispatcher_env = vec![("WARREN_NOTIFY__WEBHOOKS".into(), url)];
    let cluster = Cluster::start(options);
    let sha = cluster.upstream.commit(
        "main",
        "notify me",
        &[("warren.toml", Some("command = \"exit 3\"\n"))],
    );
    cluster
        .wait_for_results(std::slice::from_ref(&sha), DEADLINE)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !bodies
            .lock()
            .unwrap()
            .is_empty()),
        "{}",
        cluster.all_logs()
    );
    let body: serde_json::Value = serde_json::from_str(&bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(body["event"], "commit.finished");
    assert_eq!(body["sha"], sha.as_str());
    assert_eq!(body["status"], "failed");
    assert_eq!(body["message"], "the command exited with status 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_commit_can_be_retried_and_runs_again() {
    let mut options = ClusterOptions::new("o-cancel-retry");
    options.workers = 2;
    let cluster = Cluster::start_ready(options).await;
    let base = cluster.http_url();
    // The first run hangs (and is cancelled); the next one passes.
    let marks = cluster.root().join("started");
    let spec = format!(
        "command = \"if [ -f {m} ]; then echo second run; else touch {m}; sleep 60; fi\"\n",
        m = marks.display()
    );
    let sha = cluster
        .upstream
        .commit("main", "hangs once", &[("warren.toml", Some(&spec))]);
    wait_started(&cluster, &marks);
    let (status, answer) = json("POST", &format!("{base}/api/commits/sample/{sha}/cancel"));
    assert_eq!(status, 202, "{answer}");
    let report = cluster
        .wait_for_results(std::slice::from_ref(&sha), DEADLINE)
        .unwrap()
        .remove(0);
    assert_eq!(report["status"], "cancelled");

    // Every worker heard the cancel; the retry's new attempt must still run.
    let (status, answer) = json("POST", &format!("{base}/api/commits/sample/{sha}/retry"));
    assert_eq!(status, 202, "{answer}");
    assert!(
        wait_until(DEADLINE, || {
            let (_, detail) = json("GET", &format!("{base}/api/commits/sample/{sha}"));
            detail["status"] == "passed"
        }),
        "the retried commit never ran: {}",
        cluster.all_logs()
    );
    let (_, detail) = json("GET", &format!("{base}/api/commits/sample/{sha}"));
    assert_eq!(detail["jobs"][0]["attempt"], 2);
    assert_eq!(detail["jobs"][0]["output"], "second run\n");
}
