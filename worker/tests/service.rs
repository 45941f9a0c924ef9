//! The worker's service against the real broker, real git and real processes.
//!
//! Each test has its own queue prefix (`TestBroker`), its own bare upstream
//! and its own work folder, runs `warren_worker::run` in-process with a
//! manual `Shutdown`, and reads what a dispatcher would read. Nothing sleeps
//! "long enough": every wait is for a condition, with a deadline.
//! Set `TEST_LOG=1` to see the worker's logs.

use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use tokio::time::Instant;
use warren_common::config::{BrokerConfig, BrokerSettings, ConfigSource, LogSettings};
use warren_common::ids::{JobId, SuitePath};
use warren_common::messages::{
    CancelJobs, Job, JobAttempt, JobEvent, JobEventKind, JobResult, JobStatus, LogLines, Message,
    TestCommand, TestStatus, WorkerStatus, decode, encode,
};
use warren_common::session::{Outgoing, Session};
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::builders;
use warren_harness::git::Upstream;
use warren_harness::process::eventually;
use warren_harness::spawn::Spawned;
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

/// A worker running in this process; stopped when dropped.
struct SpawnedWorker {
    running: Spawned,
    id: String,
    _work: tempfile::TempDir,
}

impl SpawnedWorker {
    /// Stops it the polite way and returns what `run` returned.
    async fn stop(self) -> anyhow::Result<()> {
        self.running.stop(WAIT).await
    }

    async fn join(self) -> anyhow::Result<()> {
        self.running.join(WAIT).await
    }
}

fn spawn_worker(broker: &TestBroker, edit: impl FnOnce(&mut WorkerSettings)) -> SpawnedWorker {
    spawn_worker_as(broker, broker.config.clone(), edit)
}

/// A worker connecting with `config` (another user, say).
fn spawn_worker_as(
    broker: &TestBroker,
    config: BrokerConfig,
    edit: impl FnOnce(&mut WorkerSettings),
) -> SpawnedWorker {
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
    let config =
        WorkerConfig::from_settings(config, &settings, &ConfigSource::named("test settings"))
            .unwrap();
    SpawnedWorker {
        running: Spawned::start("worker", |shutdown| warren_worker::run(config, shutdown)),
        id,
        _work: work,
    }
}

fn job(upstream: &Upstream, sha: &str, command: TestCommand) -> Job {
    builders::job(&upstream.url(), sha).command(command).build()
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
    assert!(
        eventually(WAIT, Duration::from_millis(20), || std::future::ready(
            condition()
        ))
        .await,
        "timed out waiting for {what}"
    );
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

/// Reads the events queue as the dispatcher does: job events and worker
/// statuses, told apart by their `type`.
struct EventReader {
    session: Session,
    _channel: Channel,
    consumer: Consumer,
}

impl EventReader {
    async fn open(broker: &TestBroker) -> Self {
        let session = broker.session().await;
        let (channel, consumer) = session
            .consume(Queue::Events, 100, "test-events")
            .await
            .expect("consume the events queue");
        Self {
            session,
            _channel: channel,
            consumer,
        }
    }

    /// The next message of type `M` (skipping the other type) within the
    /// deadline.
    async fn next<M: Message>(&mut self) -> M {
        let deadline = Instant::now() + WAIT;
        loop {
            let delivery = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .unwrap_or_else(|_| panic!("no {} event in time", M::TYPE))
                .expect("the consumer is open")
                .expect("a delivery");
            delivery.ack(Default::default()).await.expect("ack");
            let kind = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()
                .and_then(|body| body["type"].as_str().map(str::to_owned));
            if kind.as_deref() == Some(M::TYPE) {
                return decode::<M>(&delivery.data).expect("a valid event");
            }
        }
    }

    /// The next worker status that satisfies `wanted`.
    async fn status_where(
        &mut self,
        mut wanted: impl FnMut(&WorkerStatus) -> bool,
    ) -> WorkerStatus {
        loop {
            let status = self.next::<WorkerStatus>().await;
            if wanted(&status) {
                return status;
            }
        }
    }

    async fn close(self) {
        self.session.close().await;
    }
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

    // A `started` event came before the result (worker statuses aside).
    let mut events = EventReader::open(&broker).await;
    let event = events.next::<JobEvent>().await;
    assert_eq!(
        (event.job_id, event.event),
        (job.job_id, JobEventKind::Started)
    );
    events.close().await;

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

    let mut events = EventReader::open(&broker).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(events.next::<JobEvent>().await.event);
    }
    events.close().await;
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
    worker.running.cancel();
    // The job in hand is unacked (a quorum queue counts only the waiting
    // one, and keeps counting a cancelled consumer until its jobs are acked);
    // the worker waits for it.
    assert_eq!(broker.queue_depth(Queue::Jobs).await.0, 1);
    assert!(!worker.running.is_finished());
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
    worker.running.force();
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

fn suite_paths(paths: &[&str]) -> Vec<SuitePath> {
    paths.iter().map(|p| SuitePath::parse(p).unwrap()).collect()
}

#[tokio::test]
async fn a_job_with_files_runs_them_at_once_and_shares_out_their_time() {
    let broker = TestBroker::new("worker-files");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit(
        "main",
        "tests",
        &[
            ("tests/a.sh", Some("sleep 0.2; echo a")),
            ("tests/b c.sh", Some("echo 'b c'")),
        ],
    );
    let mut job = job(
        &upstream,
        &sha,
        shell("for f in {files}; do sh \"$f\"; done; echo \"$WARREN_FILES\" | wc -l"),
    );
    job.files = suite_paths(&["tests/a.sh", "tests/b c.sh"]);
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |_| {});

    let results = take_results(&broker, 1).await;
    let result = &results[0].0;
    assert_eq!(result.status, JobStatus::Passed, "{result:?}");
    assert_eq!(
        result.output.split_whitespace().collect::<Vec<_>>(),
        ["a", "b", "c", "2"]
    );
    let timings: Vec<(&str, bool)> = result
        .file_timings
        .iter()
        .map(|t| (t.path.as_str(), t.estimated))
        .collect();
    assert_eq!(timings, [("tests/a.sh", true), ("tests/b c.sh", true)]);
    assert_eq!(
        result.file_timings[0].duration_ms,
        result.file_timings[1].duration_ms
    );
    assert!(
        result.file_timings[0].duration_ms >= 100,
        "{:?}",
        result.file_timings
    );

    worker.stop().await.unwrap();
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_job_per_file_runs_and_measures_each_file() {
    let broker = TestBroker::new("worker-each-file");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit(
        "main",
        "tests",
        &[
            ("t/a.sh", Some("sleep 0.3; echo A")),
            ("t/b.sh", Some("echo B; exit 2")),
        ],
    );
    let mut job = job(
        &upstream,
        &sha,
        TestCommand::Argv(vec!["sh".into(), "{file}".into()]),
    );
    job.files = suite_paths(&["t/a.sh", "t/b.sh"]);
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |_| {});

    let results = take_results(&broker, 1).await;
    let result = &results[0].0;
    assert_eq!(result.status, JobStatus::Failed);
    assert_eq!(result.exit_code, Some(2));
    let lines: Vec<&str> = result.output.lines().collect();
    assert!(lines[0].starts_with("==> t/a.sh (exit 0, "), "{lines:?}");
    assert_eq!(lines[1], "A");
    assert!(lines[2].starts_with("==> t/b.sh (exit 2, "), "{lines:?}");
    assert_eq!(lines[3], "B");
    assert_eq!(result.output_bytes, 4);
    assert!(result.file_timings.iter().all(|t| !t.estimated));
    assert!(result.file_timings[0].duration_ms >= 300);
    assert!(result.file_timings[1].duration_ms < result.file_timings[0].duration_ms);
    let files: Vec<(&str, TestStatus)> = result
        .tests
        .iter()
        .map(|t| (t.name.as_str(), t.status))
        .collect();
    assert_eq!(
        files,
        [
            ("t/a.sh", TestStatus::Passed),
            ("t/b.sh", TestStatus::Failed)
        ]
    );

    worker.stop().await.unwrap();
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_junit_job_reports_its_tests_and_reruns_a_flaky_one() {
    let broker = TestBroker::new("worker-junit");
    let session = broker.session().await;
    let upstream = Upstream::new();
    // The first run fails test_b and leaves a marker; the rerun passes it.
    let script = r#"#!/bin/sh
if [ -e flaky.ran ]; then b='<testcase classname="t" name="test_b" file="b.py" time="0.1"/>'
else touch flaky.ran; b='<testcase classname="t" name="test_b" file="b.py" time="0.1"><failure message="timing">x</failure></testcase>'; fi
cat > report.xml <<EOF
<?xml version="1.0"?>
<testsuites><testsuite name="t">
<testcase classname="t" name="test_a" file="a.py" time="1.5"/>
$b
</testsuite></testsuites>
EOF
grep -q failure report.xml && exit 1
exit 0
"#;
    let sha = upstream.commit("main", "tests", &[("run.sh", Some(script))]);
    let mut job = job(&upstream, &sha, shell("sh run.sh"));
    job.files = suite_paths(&["a.py", "b.py"]);
    job.junit = Some(SuitePath::parse("report.xml").unwrap());
    job.retry_failed = 2;
    publish_job(&session, &job).await;
    let worker = spawn_worker(&broker, |_| {});

    let results = take_results(&broker, 1).await;
    let result = &results[0].0;
    assert_eq!(result.status, JobStatus::Passed, "{result:?}");
    assert_eq!(
        result.message.as_deref(),
        Some("passed after rerunning 1 failed test: flaky: t.test_b")
    );
    let tests: Vec<(&str, TestStatus, bool)> = result
        .tests
        .iter()
        .map(|t| (t.name.as_str(), t.status, t.flaky))
        .collect();
    assert_eq!(
        tests,
        [
            ("test_a", TestStatus::Passed, false),
            ("test_b", TestStatus::Passed, true)
        ]
    );
    assert_eq!(result.tests[1].message.as_deref(), Some("timing"));
    assert!(
        result.output.contains("==> rerun 1 of 2: b.py (exit 0, "),
        "{}",
        result.output
    );
    // Timings from the first run's report: measured, not estimated.
    let timings: Vec<(&str, u64, bool)> = result
        .file_timings
        .iter()
        .map(|t| (t.path.as_str(), t.duration_ms, t.estimated))
        .collect();
    assert_eq!(timings, [("a.py", 1500, false), ("b.py", 100, false)]);
    assert_eq!(result.report_problem, None);

    worker.stop().await.unwrap();
    session.close().await;
    broker.cleanup().await;
}

/// Publishes `body` to the control exchange, as the dispatcher does.
async fn publish_control(broker: &TestBroker, body: &[u8]) {
    let (connection, channel) = broker.raw_channel().await;
    channel
        .basic_publish(
            ShortString::from(broker.config.topology.control_exchange()),
            ShortString::from(""),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_type(ShortString::from("cancel_jobs")),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
}

#[tokio::test]
async fn a_cancelled_job_is_killed_reports_nothing_and_is_dropped_when_delivered_again() {
    let broker = TestBroker::new("worker-cancel");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let sync = tempfile::tempdir().unwrap();
    let pid_file = sync.path().join("pid");
    let mut doomed = job(
        &upstream,
        &sha,
        shell("echo $$ > \"$PID_FILE.tmp\"; mv \"$PID_FILE.tmp\" \"$PID_FILE\"; sleep 30"),
    );
    doomed
        .env
        .insert("PID_FILE".into(), pid_file.display().to_string());
    publish_job(&session, &doomed).await;
    let worker = spawn_worker(&broker, |_| {});
    wait_for("the job to start", exists(&pid_file)).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Garbage on the control exchange is ignored; the cancellation is not.
    publish_control(&broker, b"not a control message").await;
    let cancel = CancelJobs {
        jobs: vec![
            JobAttempt {
                job_id: JobId::new(),
                attempt: 1,
            },
            JobAttempt {
                job_id: doomed.job_id,
                attempt: doomed.attempt,
            },
        ],
        reason: "superseded by a newer commit".into(),
    };
    let cancelled_at = Instant::now();
    publish_control(&broker, &encode(&cancel)).await;
    wait_for("the job's process to be killed", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        cancelled_at.elapsed()
    );

    // The slot is free: the next jobs run. A second delivery of the
    // cancelled attempt (the broker redelivering it) comes first and is
    // dropped.
    std::fs::remove_file(&pid_file).unwrap();
    publish_job(&session, &doomed).await;
    let next = job(&upstream, &sha, shell("echo next"));
    publish_job(&session, &next).await;
    let results = take_results(&broker, 1).await;
    assert_eq!(results[0].0.job_id, next.job_id);
    assert_eq!(results[0].0.output, "next\n");
    // One slot, in order: the cancelled job's delivery was handled before
    // `next`, and it published nothing.
    assert!(
        broker
            .take(Queue::Results, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    assert!(!pid_file.exists(), "the cancelled job did not run again");

    // An operator's retry of the cancelled job (the same job, attempt 2)
    // is not covered by the cancel: it runs.
    let mut retried = doomed.clone();
    retried.attempt = 2;
    retried.command = shell("echo retried");
    publish_job(&session, &retried).await;
    let results = take_results(&broker, 1).await;
    assert_eq!(results[0].0.job_id, doomed.job_id);
    assert_eq!(results[0].0.attempt, 2);
    assert_eq!(results[0].0.output, "retried\n");

    worker.stop().await.unwrap();
    // Every delivery of the cancelled job was acked.
    wait_for_jobs_queue(&broker, 0, 0).await;
    session.close().await;
    broker.cleanup().await;
}

/// Sets the permissions (configure, write, read) of `user` on vhost `/`.
async fn set_permissions(user: &str, configure: &str, write: &str, read: &str) {
    rabbitmqctl(&["set_permissions", "-p", "/", user, configure, write, read]).await;
}

#[tokio::test]
async fn a_least_privilege_worker_runs_jobs_without_and_cancels_them_with_the_control_permissions()
{
    let broker = TestBroker::new("worker-perms");
    // The topology, declared by a user who may (the dispatcher, in real life).
    let session = broker.session().await;
    let user = format!("{}-worker", broker.prefix);
    let password = "not-a-secret";
    rabbitmqctl(&["add_user", &user, password]).await;
    let p = &broker.prefix;
    // As docker/rabbitmq-users.sh made the worker's user before
    // cancellations: nothing to configure, so no queue of its own.
    let (write, read) = (
        format!("^{p}\\.(results|events|dead)$"),
        format!("^{p}\\.jobs$"),
    );
    set_permissions(&user, "^$", &write, &read).await;
    let url = warren_harness::broker::broker_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let settings = BrokerSettings {
        url: format!("{scheme}://{user}:{password}@{host}").into(),
        prefix: p.clone(),
        heartbeat: Duration::from_secs(5),
        declare: false,
        ..BrokerSettings::default()
    };
    let config = BrokerConfig::from_settings(&settings, &ConfigSource::named("test")).unwrap();

    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let first = job(&upstream, &sha, shell("cat a.txt"));
    publish_job(&session, &first).await;
    let worker = spawn_worker_as(&broker, config, |_| {});
    let results = take_results(&broker, 1).await;
    assert_eq!(results[0].0.status, JobStatus::Passed);
    assert_eq!(results[0].0.output, "a");
    // The broker refused its live output (no write on the logs exchange):
    // that closed only the live output's channel; statuses still go out.
    let mut events = EventReader::open(&broker).await;
    events.status_where(|status| status.jobs_done == 1).await;
    events.close().await;

    // The permissions the worker needs for cancellations: its server-named
    // queue (amq.gen-*) to declare, bind and consume, and the control
    // exchange to read from.
    set_permissions(
        &user,
        "^amq\\.gen-.*",
        &format!("{write}|^amq\\.gen-.*"),
        &format!("^{p}\\.(jobs|control)$|^amq\\.gen-.*"),
    )
    .await;
    let sync = tempfile::tempdir().unwrap();
    let pid_file = sync.path().join("pid");
    let mut doomed = job(
        &upstream,
        &sha,
        shell("echo $$ > \"$PID_FILE.tmp\"; mv \"$PID_FILE.tmp\" \"$PID_FILE\"; sleep 30"),
    );
    doomed
        .env
        .insert("PID_FILE".into(), pid_file.display().to_string());
    publish_job(&session, &doomed).await;
    wait_for("the job to start", exists(&pid_file)).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The worker listens again after a backoff; until then a cancellation
    // goes nowhere, so it is repeated (it is idempotent).
    let cancel = encode(&CancelJobs {
        jobs: vec![JobAttempt {
            job_id: doomed.job_id,
            attempt: doomed.attempt,
        }],
        reason: "superseded".into(),
    });
    let alive = format!("/proc/{pid}");
    let killed = eventually(WAIT, Duration::from_millis(200), || async {
        if !Path::new(&alive).exists() {
            return true;
        }
        publish_control(&broker, &cancel).await;
        false
    })
    .await;
    assert!(killed, "the job was never cancelled");
    assert!(
        broker
            .take(Queue::Results, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );

    worker.stop().await.unwrap();
    wait_for_jobs_queue(&broker, 0, 0).await;
    rabbitmqctl(&["delete_user", &user]).await;
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_worker_announces_itself_idle_and_busy() {
    let broker = TestBroker::new("worker-presence");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let mut events = EventReader::open(&broker).await;
    let worker = spawn_worker(&broker, |settings| settings.slots = 2);

    // Idle: one status at once, then one per heartbeat interval (200 ms).
    let first = events.next::<WorkerStatus>().await;
    assert_eq!(first.worker.as_str(), worker.id);
    assert_eq!((first.slots, first.busy, first.jobs_done), (2, 0, 0));
    let second = events.next::<WorkerStatus>().await;
    let third = events.next::<WorkerStatus>().await;
    assert_eq!((third.slots, third.busy), (2, 0));
    let gap = (third.at - second.at).to_std().unwrap();
    assert!(
        gap >= Duration::from_millis(150) && gap < Duration::from_secs(5),
        "statuses every heartbeat interval: {gap:?}"
    );

    // Busy while a job runs…
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
    let busy = events.status_where(|status| status.busy > 0).await;
    assert_eq!((busy.slots, busy.busy, busy.jobs_done), (2, 1, 0));

    // …idle again after it, with the job counted.
    std::fs::write(&release, "").unwrap();
    let done = events.status_where(|status| status.jobs_done > 0).await;
    assert_eq!((done.busy, done.jobs_done), (0, 1));
    assert_eq!(
        take_results(&broker, 1).await[0].0.status,
        JobStatus::Passed
    );

    // A clean stop says so last.
    worker.stop().await.unwrap();
    let mut last = None;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(500), events.consumer.next()).await
    {
        last = decode::<WorkerStatus>(&delivery.data).ok().or(last);
    }
    let last = last.expect("a final status");
    assert_eq!((last.busy, last.jobs_done), (0, 1));
    events.close().await;
    session.close().await;
    broker.cleanup().await;
}

/// A follower's private queue on the logs exchange, bound with `job`'s id.
async fn follow(broker: &TestBroker, job: &Job) -> (Connection, Consumer) {
    let (connection, channel) = broker.raw_channel().await;
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a follower's queue");
    channel
        .queue_bind(
            queue.name().clone(),
            ShortString::from(broker.config.topology.logs_exchange()),
            ShortString::from(job.job_id.to_string()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it to the logs exchange");
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from("follower"),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume it");
    (connection, consumer)
}

#[tokio::test]
async fn live_output_streams_every_line_of_a_job_in_order_while_it_runs() {
    let broker = TestBroker::new("worker-live");
    // The test's session declares the topology, the logs exchange with it.
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let followed = job(
        &upstream,
        &sha,
        shell("for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done"),
    );
    let other = job(&upstream, &sha, shell("echo not yours; echo nor this"));
    let (connection, mut logs) = follow(&broker, &followed).await;
    let (_results_channel, mut results) = session
        .consume(Queue::Results, 10, "test-results")
        .await
        .unwrap();
    publish_job(&session, &other).await;
    publish_job(&session, &followed).await;
    let worker = spawn_worker(&broker, |settings| settings.slots = 2);

    // Everything in arrival order, until the followed job's result and its
    // last line are both in. The worker sends the last chunks before the
    // result, but live output and results travel on different channels
    // (and reach this test on different connections), and the broker
    // orders neither across channels: under load the last chunk may come
    // a moment after the result. What a follower must get is every line,
    // in order, most of them while the job runs.
    let mut chunks: Vec<(LogLines, String)> = Vec::new();
    let mut before_result = None;
    let mut result: Option<JobResult> = None;
    let mut other_done = false;
    let deadline = Instant::now() + WAIT;
    let complete = |chunks: &[(LogLines, String)]| {
        chunks
            .iter()
            .any(|(chunk, _)| chunk.text.contains("line 5"))
    };
    let result = loop {
        if let Some(result) = &result
            && complete(&chunks)
        {
            break result.clone();
        }
        tokio::select! {
            chunk = logs.next() => {
                let delivery = chunk.expect("the follower's queue is open").unwrap();
                let id = delivery.properties.message_id().as_ref().unwrap().to_string();
                chunks.push((decode::<LogLines>(&delivery.data).unwrap(), id));
            }
            delivery = results.next(), if result.is_none() => {
                let delivery = delivery.expect("the results queue is open").unwrap();
                delivery.ack(Default::default()).await.unwrap();
                let decoded = decode::<JobResult>(&delivery.data).unwrap();
                if decoded.job_id == followed.job_id {
                    before_result = Some(chunks.len());
                    result = Some(decoded);
                } else {
                    other_done = true;
                }
            }
            () = tokio::time::sleep_until(deadline) => panic!("no result or not every line in time; chunks: {chunks:?}"),
        }
    };
    let before_result = before_result.expect("the result came");
    assert!(
        before_result >= 2,
        "several chunks came while the job ran, before its result: {chunks:?}"
    );
    assert_eq!(result.status, JobStatus::Passed);
    let text: String = chunks
        .iter()
        .map(|(chunk, _)| chunk.text.as_str())
        .collect();
    assert_eq!(
        text, "line 1\nline 2\nline 3\nline 4\nline 5\n",
        "every line, in order"
    );
    for (seq, (chunk, message_id)) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, seq as u64);
        assert_eq!(
            (chunk.job_id, chunk.attempt, chunk.run_id),
            (followed.job_id, 1, result.run_id)
        );
        assert_eq!(
            message_id,
            &format!("{}.{}.{seq}", followed.job_id, result.run_id)
        );
        assert!(chunk.text.ends_with('\n'), "whole lines: {:?}", chunk.text);
    }

    // The other job's output went to the exchange too, but not here.
    if !other_done {
        let delivery = results.next().await.unwrap().unwrap();
        delivery.ack(Default::default()).await.unwrap();
    }
    let late = tokio::time::timeout(Duration::from_millis(500), logs.next()).await;
    assert!(late.is_err(), "nothing else for this job id: {late:?}");

    worker.stop().await.unwrap();
    let _ = connection.close(200, "bye".into()).await;
    session.close().await;
    broker.cleanup().await;
}

/// A port nothing listens on (the test binds it, reads it, lets it go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port`: (status, content type, body).
async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_owned()))
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("`name value`");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (status, content_type, body) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    // No Accept header: the Prometheus text format (OpenMetrics is for
    // scrapers that ask for it).
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    samples(&body)
}

#[tokio::test]
async fn metrics_count_jobs_slots_and_times_over_http() {
    let broker = TestBroker::new("worker-metrics");
    let session = broker.session().await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "one", &[("a.txt", Some("a"))]);
    let port = free_port();
    let worker = spawn_worker(&broker, |settings| {
        settings.slots = 2;
        settings.http_listen = Some(format!("127.0.0.1:{port}"));
    });

    let listening = eventually(WAIT, Duration::from_millis(20), || async {
        http_get(port, "/healthz").await.is_ok()
    })
    .await;
    assert!(listening, "no HTTP server on port {port}");
    let health = http_get(port, "/healthz").await.unwrap();
    assert_eq!((health.0, health.2.as_str()), (200, "ok"));
    assert_eq!(http_get(port, "/nothing").await.unwrap().0, 404);

    let sync = tempfile::tempdir().unwrap();
    let (started, release) = (sync.path().join("started"), sync.path().join("release"));
    let mut job = job(
        &upstream,
        &sha,
        shell("touch \"$STARTED\"; while [ ! -e \"$RELEASE\" ]; do sleep 0.02; done"),
    );
    job.env
        .insert("STARTED".into(), started.display().to_string());
    job.env
        .insert("RELEASE".into(), release.display().to_string());
    publish_job(&session, &job).await;
    wait_for("the job to start", exists(&started)).await;
    let running = scrape(port).await;
    assert_eq!(running["warren_worker_busy_slots"], 1.0);
    assert_eq!(running["warren_worker_slots"], 2.0);
    assert_eq!(running["warren_worker_broker_connected"], 1.0);
    assert_eq!(running["warren_worker_checkout_seconds_count"], 1.0);
    assert_eq!(running["warren_worker_run_seconds_count"], 0.0);

    std::fs::write(&release, "").unwrap();
    assert_eq!(
        take_results(&broker, 1).await[0].0.status,
        JobStatus::Passed
    );
    // The slot is free and the job counted before its result is published.
    let done = scrape(port).await;
    let jobs = |status: &str| done[&format!("warren_worker_jobs_total{{status=\"{status}\"}}")];
    assert_eq!(jobs("passed"), 1.0);
    for status in ["failed", "timed_out", "error", "cancelled"] {
        assert_eq!(jobs(status), 0.0, "{status}");
    }
    assert_eq!(done["warren_worker_busy_slots"], 0.0);
    assert_eq!(done["warren_worker_slots"], 2.0);
    assert_eq!(done["warren_worker_checkout_seconds_count"], 1.0);
    assert_eq!(done["warren_worker_run_seconds_count"], 1.0);
    assert_eq!(
        done[r#"warren_worker_run_seconds_bucket{le="3600.0"}"#],
        1.0
    );
    assert_eq!(done[r#"warren_worker_run_seconds_bucket{le="+Inf"}"#], 1.0);
    assert!(done["warren_worker_run_seconds_sum"] > 0.0);
    assert_eq!(done["warren_worker_live_output_dropped_bytes_total"], 0.0);

    worker.stop().await.unwrap();
    assert!(
        http_get(port, "/healthz").await.is_err(),
        "the HTTP server stops with the worker"
    );
    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_taken_http_port_stops_the_worker_before_it_connects() {
    let broker = TestBroker::new("worker-http-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let worker = spawn_worker(&broker, |settings| {
        settings.http_listen = Some(address.to_string());
    });
    let error = worker.join().await.unwrap_err();
    assert!(
        format!("{error:#}").contains(&format!("worker.http_listen = {address}")),
        "{error:#}"
    );
    broker.cleanup().await;
}
