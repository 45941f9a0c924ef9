//! The worker's service against the real broker, real git and real processes.
//!
//! Each test has its own queue prefix (`TestBroker`), its own bare upstream
//! and its own work folder, runs `warren_worker::run` in-process with a
//! manual `Shutdown`, and reads what a dispatcher would read. Nothing sleeps
//! "long enough": every wait is for a condition, with a deadline.
//! Set `TEST_LOG=1` to see the worker's logs.

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use warren_common::config::{ConfigSource, LogSettings};
use warren_common::ids::{BranchName, CommitId, JobId, RepoName, RepoUrl};
use warren_common::messages::{
    Job, JobEvent, JobEventKind, JobResult, JobStatus, Shard, TestCommand, decode,
};
use warren_common::session::{Outgoing, Session};
use warren_common::shutdown::Shutdown;
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::git::Upstream;
use warren_worker::config::{WorkerConfig, WorkerSettings};

/// Deadline for anything a healthy worker does in well under a second.
const WAIT: Duration = Duration::from_secs(30);

fn init_logs() {
    static ONCE: Once = Once::new();
    if std::env::var_os("TEST_LOG").is_some() {
        ONCE.call_once(|| {
            warren_common::telemetry::init(&LogSettings {
                level: "warren_worker=debug,info".into(),
                ..LogSettings::default()
            });
        });
    }
}

/// A worker running in this process.
struct SpawnedWorker {
    shutdown: Shutdown,
    handle: JoinHandle<anyhow::Result<()>>,
    id: String,
    _work: tempfile::TempDir,
}

impl SpawnedWorker {
    /// Stops it the polite way and returns what `run` returned.
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.graceful.cancel();
        self.join().await
    }

    async fn join(self) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("the worker stops in time")
            .expect("the worker task does not panic")
    }
}

fn spawn_worker(broker: &TestBroker, edit: impl FnOnce(&mut WorkerSettings)) -> SpawnedWorker {
    init_logs();
    let work = tempfile::tempdir().unwrap();
    let id = format!("w-{}", &broker.prefix);
    let mut settings = WorkerSettings {
        id: Some(id.clone()),
        work_dir: work.path().to_path_buf(),
        heartbeat_interval: Duration::from_millis(200),
        kill_grace: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(60),
        ..WorkerSettings::default()
    };
    edit(&mut settings);
    let config = WorkerConfig::from_settings(
        broker.config.clone(),
        &settings,
        &ConfigSource::named("test settings"),
    )
    .unwrap();
    let shutdown = Shutdown::manual();
    let handle = tokio::spawn(warren_worker::run(config, shutdown.clone()));
    SpawnedWorker {
        shutdown,
        handle,
        id,
        _work: work,
    }
}

fn job(upstream: &Upstream, sha: &str, command: TestCommand) -> Job {
    Job {
        job_id: JobId::new(),
        attempt: 1,
        repo: RepoName::parse("api").unwrap(),
        url: RepoUrl::parse(&upstream.url()).unwrap(),
        branch: BranchName::parse("main").unwrap(),
        sha: CommitId::parse(sha).unwrap(),
        shard: Shard::WHOLE,
        command,
        timeout_ms: 60_000,
        env: BTreeMap::new(),
        files: Vec::new(),
        junit: None,
        retry_failed: 0,
        published_at: chrono::Utc::now(),
    }
}

fn shell(script: &str) -> TestCommand {
    TestCommand::Shell(script.to_owned())
}

async fn publish_job(session: &Session, job: &Job) {
    session
        .publish(
            Queue::Jobs,
            job,
            Outgoing {
                routing_key: job.repo.as_str(),
                message_id: format!("{}.{}", job.job_id, job.attempt),
                persistent: true,
                headers: vec![],
            },
        )
        .await
        .expect("the job is published");
}

/// The results published within the deadline, decoded, with their AMQP
/// message ids and headers.
async fn take_results(
    broker: &TestBroker,
    n: usize,
) -> Vec<(JobResult, String, BTreeMap<String, String>)> {
    let deliveries = broker.take(Queue::Results, n, WAIT).await;
    deliveries
        .into_iter()
        .map(|delivery| {
            let result = decode::<JobResult>(&delivery.data).expect("a valid result");
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .inner()
                        .iter()
                        .filter_map(|(key, value)| match value {
                            AMQPValue::LongString(text) => {
                                Some((key.to_string(), text.to_string()))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (result, id, headers)
        })
        .collect()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the jobs queue holds `messages` ready messages and has
/// `consumers` consumers.
async fn wait_for_jobs_queue(broker: &TestBroker, messages: u32, consumers: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let depth = broker.queue_depth(Queue::Jobs).await;
        if depth == (messages, consumers) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "jobs queue is {depth:?}, expected ({messages}, {consumers})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exists(path: &Path) -> impl FnMut() -> bool + '_ {
    move || path.exists()
}

#[tokio::test]
async fn a_job_is_run_and_its_result_published_then_acked() {
    let broker = TestBroker::new("worker-happy");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit(
        "main",
        "add tests",
        &[(
            "test.sh",
            Some("#!/bin/sh\necho \"testing $WARREN_SHA\"\necho oops >&2\n"),
        )],
    );
    let job = job(&upstream, &sha, TestCommand::Argv(vec!["./test.sh".into()]));
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |_| {});

    let results = take_results(&broker, 1).await;
    let (result, message_id, headers) = &results[0];
    assert_eq!(result.status, JobStatus::Passed, "{result:?}");
    assert_eq!(result.output, format!("testing {sha}\noops\n"));
    assert_eq!((result.job_id, result.attempt), (job.job_id, 1));
    assert_eq!(result.worker.as_str(), worker.id);
    assert_eq!(message_id, &format!("{}.1.result", job.job_id));
    assert_eq!(
        headers.get("x-warren-repo").map(String::as_str),
        Some("api")
    );
    assert_eq!(headers.get("x-warren-sha"), Some(&sha));
    assert_eq!(headers.get("x-warren-job"), Some(&job.job_id.to_string()));

    // A `started` event came before the result.
    let events = broker.take(Queue::Events, 1, WAIT).await;
    let event = decode::<JobEvent>(&events[0].data).unwrap();
    assert_eq!(
        (event.job_id, event.event),
        (job.job_id, JobEventKind::Started)
    );

    worker.stop().await.unwrap();
    // Acked: nothing came back to the queue when the worker disconnected.
    wait_for_jobs_queue(&broker, 0, 0).await;
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn heartbeats_are_sent_while_a_job_runs() {
    let broker = TestBroker::new("worker-heartbeat");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let sync = tempfile::tempdir().unwrap();
    let release = sync.path().join("release");
    let mut job = job(
        &upstream,
        &sha,
        shell("while [ ! -e \"$RELEASE\" ]; do sleep 0.02; done"),
    );
    job.env
        .insert("RELEASE".into(), release.display().to_string());
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |_| {});

    let events = broker.take(Queue::Events, 3, WAIT).await;
    let kinds: Vec<JobEventKind> = events
        .iter()
        .map(|e| decode::<JobEvent>(&e.data).unwrap().event)
        .collect();
    assert_eq!(
        kinds,
        [
            JobEventKind::Started,
            JobEventKind::Heartbeat,
            JobEventKind::Heartbeat
        ]
    );
    std::fs::write(&release, "").unwrap();
    let results = take_results(&broker, 1).await;
    assert_eq!(results[0].0.status, JobStatus::Passed);
    worker.stop().await.unwrap();
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_body_that_is_not_a_job_is_dead_lettered_and_the_next_job_runs() {
    let broker = TestBroker::new("worker-poison");
    let session = broker.session().await;
    // Raw bytes, as a broken or hostile publisher would send them.
    let connection =
        Connection::connect_uri(broker.config.uri().clone(), ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            ShortString::from(broker.config.topology.exchange(Queue::Jobs)),
            ShortString::from("api"),
            BasicPublishOptions::default(),
            b"this is not json",
            BasicProperties::default().with_message_id(ShortString::from("garbage-1")),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;

    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let good = job(&upstream, &sha, shell("cat a.txt"));
    publish_job(&session, &good).await;
    let worker = spawn_worker(&broker, |_| {});

    let results = take_results(&broker, 1).await;
    assert_eq!(results[0].0.job_id, good.job_id);
    assert_eq!(results[0].0.output, "a");
    let letters = broker.take_dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (reason, body) = &letters[0];
    assert!(reason.contains("not a JSON object"), "{reason}");
    assert_eq!(body, b"this is not json");

    worker.stop().await.unwrap();
    wait_for_jobs_queue(&broker, 0, 0).await;
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_repository_off_the_allow_list_is_refused_with_an_error_result() {
    let broker = TestBroker::new("worker-allow");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let sync = tempfile::tempdir().unwrap();
    let marker = sync.path().join("ran");
    let job = job(
        &upstream,
        &sha,
        shell(&format!("touch {}", marker.display())),
    );
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |settings| {
        settings.allowed_repos = vec!["web-*".into(), "docs".into()];
    });

    let results = take_results(&broker, 1).await;
    let result = &results[0].0;
    assert_eq!(result.status, JobStatus::Error);
    let message = result.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("`api`") && message.contains("worker.allowed_repos"),
        "{message}"
    );
    assert!(!marker.exists(), "the command must not run");

    worker.stop().await.unwrap();
    wait_for_jobs_queue(&broker, 0, 0).await;
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn two_slots_run_two_jobs_at_once() {
    let broker = TestBroker::new("worker-slots");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let sync = tempfile::tempdir().unwrap();
    // Each job announces itself, then waits for the other one: with a single
    // slot this would never finish (and fails after 20 s).
    let script = r#"
        touch "$SYNC/$WARREN_JOB_ID"
        i=0
        while [ "$(ls "$SYNC" | wc -l)" -lt 2 ]; do
            i=$((i + 1)); [ $i -gt 1000 ] && exit 1; sleep 0.02
        done
        pwd
    "#;
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let mut job = job(&upstream, &sha, shell(script));
        job.env
            .insert("SYNC".into(), sync.path().display().to_string());
        publish_job(&session, &job).await;
        jobs.push(job);
    }
    let worker = spawn_worker(&broker, |settings| settings.slots = 2);

    let results = take_results(&broker, 2).await;
    assert_eq!(results.len(), 2);
    for (result, _, _) in &results {
        assert_eq!(result.status, JobStatus::Passed, "{result:?}");
    }
    // Each in its own slot's clone.
    let mut folders: Vec<&str> = results.iter().map(|(r, _, _)| r.output.trim()).collect();
    folders.sort_unstable();
    assert!(
        folders[0].ends_with("slot-0/api") && folders[1].ends_with("slot-1/api"),
        "{folders:?}"
    );

    worker.stop().await.unwrap();
    wait_for_jobs_queue(&broker, 0, 0).await;
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_graceful_stop_finishes_the_job_in_hand() {
    let broker = TestBroker::new("worker-drain");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let sync = tempfile::tempdir().unwrap();
    let (started, release) = (sync.path().join("started"), sync.path().join("release"));
    let script =
        "touch \"$STARTED\"; while [ ! -e \"$RELEASE\" ]; do sleep 0.02; done; echo finished";
    let mut job = job(&upstream, &sha, shell(script));
    job.env
        .insert("STARTED".into(), started.display().to_string());
    job.env
        .insert("RELEASE".into(), release.display().to_string());
    publish_job(&session, &job).await;
    // A second job that must stay in the queue: the worker stops taking jobs.
    let waiting = self::job(&upstream, &sha, shell("true"));
    publish_job(&session, &waiting).await;
    let worker = spawn_worker(&broker, |_| {});

    wait_for("the job to start", exists(&started)).await;
    worker.shutdown.graceful.cancel();
    // The job in hand is unacked (a quorum queue counts only the waiting
    // one, and keeps counting a cancelled consumer until its jobs are acked);
    // the worker waits for it.
    assert_eq!(broker.queue_depth(Queue::Jobs).await.0, 1);
    assert!(!worker.handle.is_finished());
    std::fs::write(&release, "").unwrap();
    worker.join().await.unwrap();

    let results = take_results(&broker, 1).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0.job_id, job.job_id);
    assert_eq!(results[0].0.output, "finished\n");
    // Acked: only the job it never took is left.
    wait_for_jobs_queue(&broker, 1, 0).await;
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_forced_stop_kills_the_job_and_leaves_it_to_the_broker() {
    let broker = TestBroker::new("worker-force");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let sync = tempfile::tempdir().unwrap();
    let pid_file = sync.path().join("pid");
    let mut job = job(
        &upstream,
        &sha,
        shell("echo $$ > \"$PID_FILE.tmp\"; mv \"$PID_FILE.tmp\" \"$PID_FILE\"; sleep 1000"),
    );
    job.env
        .insert("PID_FILE".into(), pid_file.display().to_string());
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |_| {});

    wait_for("the job to start", exists(&pid_file)).await;
    worker.shutdown.graceful.cancel();
    worker.shutdown.forced.cancel();
    let error = worker.join().await.unwrap_err().to_string();
    assert!(error.contains("1 jobs killed"), "{error}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the command survived"
    );
    // Not acked: the broker put the job back for another worker.
    wait_for_jobs_queue(&broker, 1, 0).await;
    assert!(
        broker
            .take(Queue::Results, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_result_survives_a_lost_connection() {
    let broker = TestBroker::new("worker-reconnect");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let sync = tempfile::tempdir().unwrap();
    let (started, release) = (sync.path().join("started"), sync.path().join("release"));
    let script = "touch \"$STARTED\"; while [ ! -e \"$RELEASE\" ]; do sleep 0.02; done; echo \"attempt done\"";
    let mut job = job(&upstream, &sha, shell(script));
    job.env
        .insert("STARTED".into(), started.display().to_string());
    job.env
        .insert("RELEASE".into(), release.display().to_string());
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |_| {});

    wait_for("the job to start", exists(&started)).await;
    close_connection(&format!("warren-worker {}", worker.id)).await;
    // The broker requeued the job when the connection closed…
    wait_for_jobs_queue(&broker, 1, 0).await;
    // …and the worker reconnects, but takes no job while its slot is busy.
    std::fs::write(&release, "").unwrap();

    // The result of the first run arrives through the new connection; the
    // requeued job then runs again (a harmless duplicate).
    let results = take_results(&broker, 2).await;
    assert_eq!(results.len(), 2, "{results:?}");
    for (result, message_id, _) in &results {
        assert_eq!(result.job_id, job.job_id);
        assert_eq!(result.status, JobStatus::Passed);
        assert_eq!(message_id, &format!("{}.1.result", job.job_id));
    }
    worker.stop().await.unwrap();
    wait_for_jobs_queue(&broker, 0, 0).await;
    session.close().await;
    broker.cleanup().await;
}

/// Closes the broker connection named `name` from the broker's side, as a
/// broker restart or a network cut would.
async fn close_connection(name: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let listing = rabbitmqctl(&[
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .await;
        let pid = listing
            .lines()
            .find(|line| line.contains(&format!("{{\"connection_name\",\"{name}\"}}")))
            .and_then(|line| line.split_whitespace().next())
            .map(str::to_owned);
        if let Some(pid) = pid {
            rabbitmqctl(&["close_connection", &pid, "test: connection cut"]).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no connection named {name:?}:\n{listing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `rabbitmqctl` without blocking the runtime the worker shares.
async fn rabbitmqctl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl is installed beside the broker");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
