//! The real `warren-worker` binary: configuration errors, environment
//! overrides, a job end to end, a clean exit on SIGTERM, and JSON logs whose
//! every line about a job names it.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use warren_common::messages::{JobResult, JobStatus, TestCommand, decode};
use warren_common::session::Outgoing;
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::builders;
use warren_harness::git::Upstream;

const WAIT: Duration = Duration::from_secs(30);

/// The worker binary with a clean environment: no `WARREN_*` variable of
/// the test's own (they would be read as configuration).
fn worker_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren-worker"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WARREN_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

fn config_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_invalid_config_exits_2_before_connecting_and_names_the_key() {
    let file = config_file("[worker]\nslots = 0\n");
    let output = worker_command()
        .arg("--config")
        .arg(file.path())
        // Nothing listens there: a connection attempt would hang or fail differently.
        .env("WARREN_BROKER__URL", "amqp://nobody:secret@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("worker.slots") && stderr.contains("WARREN_WORKER__SLOTS"),
        "{stderr}"
    );

    let output = worker_command()
        .env("WARREN_WORKER__OUTPUT_LIMIT", "12")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("worker.output_limit") && stderr.contains("defaults and environment"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_runs_a_job_and_stops_cleanly_on_sigterm() {
    let broker = TestBroker::new("worker-binary");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("hello"))]);
    let work = tempfile::tempdir().unwrap();
    let file = config_file(&format!(
        "{}\n[worker]\nid = \"bin-1\"\nwork_dir = {:?}\n",
        broker.toml(),
        work.path().display().to_string()
    ));
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = worker_command()
        .arg("--config")
        .arg(file.path())
        // A list from the environment replaces the file's (default) one.
        .env("WARREN_WORKER__ALLOWED_REPOS", "web-*,api")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let mut jobs = Vec::new();
    for repo in ["api", "other"] {
        let job = builders::job(&upstream.url(), &sha)
            .repo(repo)
            .command(TestCommand::Argv(vec!["cat".into(), "a.txt".into()]))
            .build();
        let outgoing = Outgoing {
            routing_key: job.repo.as_str(),
            message_id: format!("{}.1", job.job_id),
            persistent: true,
            headers: vec![],
        };
        session.publish(Queue::Jobs, &job, outgoing).await.unwrap();
        jobs.push(job);
    }

    let results: BTreeMap<String, JobResult> = broker
        .take(Queue::Results, 2, WAIT)
        .await
        .iter()
        .map(|delivery| decode::<JobResult>(&delivery.data).unwrap())
        .map(|result| (result.repo.to_string(), result))
        .collect();
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(results.len(), 2, "{}", logs());
    assert_eq!(results["api"].status, JobStatus::Passed);
    assert_eq!(results["api"].output, "hello");
    assert_eq!(results["api"].worker.as_str(), "bin-1");
    assert_eq!(results["other"].status, JobStatus::Error);
    assert!(
        results["other"]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("[\"web-*\", \"api\"]"),
        "{:?}",
        results["other"].message
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut child), Some(0), "{}", logs());
    let logs = logs();
    assert!(logs.contains("worker stopped"), "{logs}");
    assert!(
        !logs.contains("guest:guest"),
        "the password must not be logged: {logs}"
    );
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn json_logs_give_every_line_about_a_job_its_repo_sha_job_and_attempt() {
    let broker = TestBroker::new("worker-json-logs");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("hello\n"))]);
    let work = tempfile::tempdir().unwrap();
    let file = config_file(&format!(
        "{}\n[worker]\nid = \"json-1\"\nwork_dir = {:?}\n",
        broker.toml(),
        work.path().display().to_string()
    ));
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("worker.log");
    let mut child = worker_command()
        .arg("--config")
        .arg(file.path())
        .env("WARREN_LOG__FORMAT", "json")
        .env("WARREN_LOG__LEVEL", "warren_worker=debug,info,lapin=off")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    let job = builders::job(&upstream.url(), &sha)
        .attempt(3)
        .shell("cat a.txt; exit 1")
        .build();
    let outgoing = Outgoing {
        routing_key: job.repo.as_str(),
        message_id: format!("{}.{}", job.job_id, job.attempt),
        persistent: true,
        headers: vec![],
    };
    session.publish(Queue::Jobs, &job, outgoing).await.unwrap();
    let results = broker.take(Queue::Results, 1, WAIT).await;
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(results.len(), 1, "{}", logs());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut child), Some(0), "{}", logs());

    let logs = logs();
    let id = job.job_id.to_string();
    let mut about_the_job = Vec::new();
    for line in logs.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if !line.contains(&id) {
            continue;
        }
        // The line's own fields, or those of the span it is in.
        let field = |name: &str| {
            value
                .get(name)
                .or_else(|| value.get("span").and_then(|span| span.get(name)))
                .cloned()
        };
        assert_eq!(field("repo"), Some("api".into()), "{line}");
        assert_eq!(field("sha"), Some(sha.clone().into()), "{line}");
        assert_eq!(field("job"), Some(id.clone().into()), "{line}");
        assert_eq!(field("attempt"), Some(3.into()), "{line}");
        about_the_job.push(value["message"].as_str().unwrap_or_default().to_owned());
    }
    // From the job itself, the checkout on the blocking pool, the command's
    // runner and the service loop (publishing the result, acking).
    for expected in [
        "job started",
        "fetching",
        "command started",
        "job finished",
        "result published",
        "job acknowledged",
    ] {
        assert!(
            about_the_job.iter().any(|message| message == expected),
            "no line {expected:?} about the job in {about_the_job:?}\n{logs}"
        );
    }
    session.close().await;
    broker.cleanup().await;
}
