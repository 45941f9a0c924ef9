//! The dispatcher against the real broker and real git repositories, driven
//! by hand: the test plays watcher and worker.

use chrono::Utc;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_common::ids::{CommitId, RepoName, RepoUrl, WorkerId};
use warren_common::messages::{
    CommitEvent, Job, JobEvent, JobEventKind, JobResult, JobStatus, TestCommand, decode,
};
use warren_common::session::{Outgoing, Session};
use warren_common::topology::Queue;
use warren_dispatcher::DispatcherConfig;
use warren_harness::broker::TestBroker;
use warren_harness::builders;
use warren_harness::git::Upstream;
use warren_harness::process::wait_until;
use warren_harness::spawn::Spawned;

/// A dispatcher running in this process with its own broker prefix and
/// folder; stopped when dropped.
struct SpawnedDispatcher {
    broker: TestBroker,
    dir: tempfile::TempDir,
    running: Spawned,
}

async fn spawn_dispatcher(name: &str) -> SpawnedDispatcher {
    let broker = TestBroker::new(name);
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("dispatcher.toml");
    let var = dir.path().display();
    std::fs::write(
        &config_path,
        format!(
            "{}\n[http]\nlisten = \"127.0.0.1:0\"\n[dispatcher]\ndatabase = \"{var}/db/warren.db\"\nresults_dir = \"{var}/results\"\n\
             mirror_dir = \"{var}/mirrors\"\nsync = \"normal\"\n",
            broker.toml()
        ),
    )
    .unwrap();
    let config = DispatcherConfig::load(Some(&config_path)).unwrap();
    let running = Spawned::start("dispatcher", |shutdown| {
        warren_dispatcher::run(config, shutdown)
    });
    SpawnedDispatcher {
        broker,
        dir,
        running,
    }
}

impl SpawnedDispatcher {
    fn result_path(&self, repo: &str, sha: &str) -> PathBuf {
        self.dir
            .path()
            .join("results")
            .join(repo)
            .join(format!("{sha}.json"))
    }

    async fn stop(self) {
        self.running.stop(Duration::from_secs(30)).await.unwrap();
        self.broker.cleanup().await;
    }
}

fn event(upstream: &Upstream, sha: &str) -> CommitEvent {
    builders::commit_event(&upstream.url(), sha).build()
}

async fn publish_commit(session: &Session, event: &CommitEvent) {
    session
        .publish(
            Queue::Commits,
            event,
            Outgoing {
                routing_key: event.repo.as_str(),
                message_id: format!("{}@{}", event.repo, event.sha),
                persistent: true,
                headers: vec![],
            },
        )
        .await
        .unwrap();
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

async fn wait_for_file(path: &Path) -> serde_json::Value {
    let path = path.to_path_buf();
    let found = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), || path.exists()).then(|| read_json(&path))
    })
    .await
    .unwrap();
    found.expect("the result file appears")
}

fn result_for(job: &Job, run_id: uuid::Uuid, worker: &str, status: JobStatus) -> JobResult {
    builders::result_for(job)
        .run_id(run_id)
        .worker(worker)
        .status(status)
        .times_ms(1, 2)
        .output("ok: 3 tests\n")
        .build()
}

fn outgoing(job: &Job, suffix: &str) -> Outgoing<'static> {
    Outgoing {
        routing_key: "sample",
        message_id: format!("{}.{}.{suffix}", job.job_id, job.attempt),
        persistent: true,
        headers: vec![],
    }
}

#[tokio::test]
async fn a_commit_becomes_a_job_and_its_result_a_file_exactly_once() {
    let fixture = spawn_dispatcher("disp-flow").await;
    let upstream = Upstream::new();
    let sha = upstream.commit(
        "main",
        "add tests",
        &[(
            "warren.toml",
            Some("command = \"./test.sh\"\ntimeout = \"30s\"\n[env]\nLEVEL = \"2\"\n"),
        )],
    );
    let session = fixture.broker.session().await;
    publish_commit(&session, &event(&upstream, &sha)).await;

    let jobs = fixture
        .broker
        .take(Queue::Jobs, 1, Duration::from_secs(20))
        .await;
    assert_eq!(jobs.len(), 1, "one job for one commit");
    let job: Job = decode(&jobs[0].data).unwrap();
    assert_eq!(job.sha.as_str(), sha);
    assert_eq!(job.command, TestCommand::Shell("./test.sh".into()));
    assert_eq!(job.timeout_ms, 30_000);
    assert_eq!(job.env["LEVEL"], "2");
    assert_eq!(job.attempt, 1);

    let run_id = uuid::Uuid::new_v4();
    let started = JobEvent {
        job_id: job.job_id,
        attempt: 1,
        run_id,
        worker: WorkerId::parse("w-1").unwrap(),
        host: "test-host".into(),
        event: JobEventKind::Started,
        at: Utc::now(),
    };
    session
        .publish_transient(Queue::Events, &started, outgoing(&job, "started"))
        .await
        .unwrap();
    session
        .publish(
            Queue::Results,
            &result_for(&job, run_id, "w-1", JobStatus::Passed),
            outgoing(&job, "result"),
        )
        .await
        .unwrap();
    let report = wait_for_file(&fixture.result_path("sample", &sha)).await;
    assert_eq!(report["status"], "passed");
    assert_eq!(report["repo"], "sample");
    assert_eq!(report["branch"], "main");
    assert_eq!(report["jobs"][0]["worker"], "w-1");
    assert_eq!(report["jobs"][0]["output"], "ok: 3 tests\n");
    assert_eq!(report["jobs"][0]["attempts"][0]["state"], "finished");
    assert!(report["started_at"].is_string() && report["duration_ms"].is_number());

    // The same commit again (a redelivery, or a second branch), then a late
    // result from another worker: no new job, the verdict stands.
    publish_commit(&session, &event(&upstream, &sha)).await;
    session
        .publish(
            Queue::Results,
            &result_for(&job, uuid::Uuid::new_v4(), "w-2", JobStatus::Failed),
            outgoing(&job, "late"),
        )
        .await
        .unwrap();
    let second = upstream.commit("main", "more", &[("b.txt", Some("b"))]);
    publish_commit(&session, &event(&upstream, &second)).await;
    let jobs = fixture
        .broker
        .take(Queue::Jobs, 2, Duration::from_secs(2))
        .await;
    assert_eq!(jobs.len(), 1, "the duplicate event planned nothing");
    assert_eq!(decode::<Job>(&jobs[0].data).unwrap().sha.as_str(), second);
    // The result file is written once, when the verdict is known; the late
    // result is counted in the database (see the store's tests), not here.
    let report = read_json(&fixture.result_path("sample", &sha));
    assert_eq!(report["status"], "passed");
    assert_eq!(report["jobs"][0]["worker"], "w-1");

    session.close().await;
    fixture.stop().await;
}

#[tokio::test]
async fn commits_that_cannot_be_tested_get_an_error_result() {
    let fixture = spawn_dispatcher("disp-errors").await;
    let upstream = Upstream::new();
    let broken = upstream.commit("main", "broken", &[("warren.toml", Some("command = [\n"))]);
    let no_command = upstream.commit(
        "main",
        "no command",
        &[("warren.toml", Some("timeout = \"1m\"\n"))],
    );
    let no_spec = upstream.commit("main", "no spec", &[("warren.toml", None)]);
    let session = fixture.broker.session().await;
    for sha in [&broken, &no_command, &no_spec] {
        publish_commit(&session, &event(&upstream, sha)).await;
    }
    let mut missing = event(&upstream, &"1".repeat(40));
    missing.sha = CommitId::parse(&"1".repeat(40)).unwrap();
    publish_commit(&session, &missing).await;
    let mut unreachable = event(&upstream, &"2".repeat(40));
    unreachable.repo = RepoName::parse("gone").unwrap();
    unreachable.url = RepoUrl::parse("/nonexistent/gone.git").unwrap();
    publish_commit(&session, &unreachable).await;

    let cases = [
        (broken.as_str(), "warren.toml is invalid"),
        (no_command.as_str(), "has no `command`"),
        (no_spec.as_str(), "no warren.toml"),
        (missing.sha.as_str(), "force-pushed away"),
    ];
    let report = wait_for_file(&fixture.result_path("gone", unreachable.sha.as_str())).await;
    assert_eq!(report["status"], "error");
    let message = report["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not fetch /nonexistent/gone.git")
            && message.contains("after 3 attempts"),
        "{message}"
    );
    for (sha, expected) in cases {
        let report = wait_for_file(&fixture.result_path("sample", sha)).await;
        assert_eq!(report["status"], "error", "{sha}");
        let message = report["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
        assert_eq!(report["jobs"].as_array().unwrap().len(), 0);
    }
    assert_eq!(
        fixture.broker.queue_depth(Queue::Jobs).await.0,
        0,
        "no job for a broken commit"
    );
    session.close().await;
    fixture.stop().await;
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_a_reason_and_the_next_one_is_served() {
    let fixture = spawn_dispatcher("disp-poison").await;
    let upstream = Upstream::new();
    let sha = upstream.commit("main", "ok", &[("warren.toml", Some("command = \"true\""))]);
    let session = fixture.broker.session().await;

    // Raw bodies, bypassing the typed publisher.
    let raw =
        lapin::Connection::connect_uri(fixture.broker.config.uri().clone(), Default::default())
            .await
            .unwrap();
    let channel = raw.create_channel().await.unwrap();
    let exchange = |queue| fixture.broker.config.topology.exchange(queue);
    let bodies: [(Queue, &[u8]); 4] = [
        (Queue::Commits, b"not json"),
        (
            Queue::Commits,
            br#"{"schema":1,"type":"commit","repo":"../../etc"}"#,
        ),
        (Queue::Results, br#"{"schema":9,"type":"job_result"}"#),
        (Queue::Events, b"{}"),
    ];
    for (queue, body) in bodies {
        channel
            .basic_publish(
                exchange(queue).into(),
                "sample".into(),
                Default::default(),
                body,
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publish_commit(&session, &event(&upstream, &sha)).await;
    let jobs = fixture
        .broker
        .take(Queue::Jobs, 1, Duration::from_secs(20))
        .await;
    assert_eq!(jobs.len(), 1, "the good commit is still served");

    let letters = fixture.broker.take_dead_letters().await;
    let reasons: Vec<&str> = letters.iter().map(|(reason, _)| reason.as_str()).collect();
    assert_eq!(letters.len(), 4, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("not a JSON object")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("repository name")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("schema version")),
        "{reasons:?}"
    );
    assert!(!fixture.dir.path().join("etc").exists());
    let _ = raw.close(200, "bye".into()).await;
    session.close().await;
    fixture.stop().await;
}
