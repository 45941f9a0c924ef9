//! Helpers shared by the watcher's integration tests (real broker, real git).

#![allow(dead_code, unreachable_pub)]

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use std::path::Path;
use std::time::Duration;
use warren_common::config::LogSettings;
use warren_common::messages::{CommitEvent, decode};
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::git::Upstream;
use warren_harness::spawn::Spawned;
use warren_watcher::WatcherConfig;
use warren_watcher::config::{BranchFilter, RepoConfig};
use warren_watcher::cursor::CursorStore;
use warren_watcher::state::StateDir;

/// Longest wait for messages that should arrive (the watcher publishes
/// within a poll interval of 100 ms; the bound is for a loaded machine).
pub const ARRIVAL: Duration = Duration::from_secs(30);

/// A repository `name` watching `main` of `upstream`, polled every 100 ms.
pub fn repo(name: &str, url: &str) -> RepoConfig {
    RepoConfig {
        name: name.parse().unwrap(),
        url: url.parse().unwrap(),
        branches: BranchFilter::new(&["main"]).unwrap(),
        poll_interval: Duration::from_millis(100),
        backfill: 0,
        first_parent: false,
        git: Default::default(),
    }
}

/// A configuration on the test broker with its state in `state_dir`.
pub fn config(broker: &TestBroker, state_dir: &Path, repos: Vec<RepoConfig>) -> WatcherConfig {
    WatcherConfig {
        broker: broker.config.clone(),
        state_dir: state_dir.to_path_buf(),
        repos,
        log: LogSettings::default(),
    }
}

/// Commits `n` files on `main`; returns their shas, oldest first.
pub fn commits(upstream: &Upstream, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("{tag}-{i}");
            upstream.commit(
                "main",
                &format!("{name}\n\nbody"),
                &[(name.as_str(), Some("x"))],
            )
        })
        .collect()
}

/// Takes exactly `n` commit events (failing if fewer arrive within
/// [`ARRIVAL`]), in queue order.
pub async fn take_events(broker: &TestBroker, n: usize) -> Vec<(CommitEvent, Delivery)> {
    let deliveries = broker.take(Queue::Commits, n, ARRIVAL).await;
    assert_eq!(deliveries.len(), n, "expected {n} commit events");
    deliveries
        .into_iter()
        .map(|delivery| (decode::<CommitEvent>(&delivery.data).unwrap(), delivery))
        .collect()
}

/// The shas of `events`, in order.
pub fn shas(events: &[(CommitEvent, Delivery)]) -> Vec<String> {
    events
        .iter()
        .map(|(event, _)| event.sha.to_string())
        .collect()
}

/// The recorded cursor of `main` of `repo`.
pub fn cursor(state_dir: &Path, repo: &str) -> Option<String> {
    CursorStore::new(&StateDir::new(state_dir))
        .load()
        .unwrap()
        .get(&repo.parse().unwrap(), &"main".parse().unwrap())
        .map(ToString::to_string)
}

/// A text header of a delivery.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name).cloned())
        .map(|value| match value {
            AMQPValue::LongString(text) => text.to_string(),
            other => format!("{other:?}"),
        })
}

/// Deletes this test's commits queue, so that commit events become unroutable.
pub async fn delete_commits_queue(broker: &TestBroker) {
    let connection = lapin::Connection::connect_uri(
        broker.config.uri().clone(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            broker.config.topology.queue(Queue::Commits).into(),
            Default::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
}

/// Shows the watcher's logs when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warren_watcher=debug,info")
            .with_test_writer()
            .try_init();
    }
}

/// A watcher running in a task of the test; stopped when dropped.
pub struct Running(Spawned);

/// Starts `run(config)` in a task.
pub fn spawn_watcher(config: WatcherConfig) -> Running {
    init_logs();
    Running(Spawned::start("watcher", |shutdown| {
        warren_watcher::run(config, shutdown)
    }))
}

impl Running {
    /// Starts a graceful stop without waiting for it.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether the watcher has returned.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// A graceful stop; the watcher must return `Ok` promptly.
    pub async fn stop(self) {
        self.0.stop(ARRIVAL).await.expect("the watcher returned Ok");
    }
}

/// Waits until `condition` holds, checking every 20 ms, failing the test
/// after [`ARRIVAL`].
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until this test's commits queue exists again, without declaring
/// it (a passive declare on a channel of our own, retried every 20 ms).
pub async fn wait_for_commits_queue(broker: &TestBroker) {
    let connection = lapin::Connection::connect_uri(
        broker.config.uri().clone(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        // A failed passive declare closes its channel: a new one each time.
        let channel = connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                broker.config.topology.queue(Queue::Commits).into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        if declared.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the commits queue to be declared again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = connection.close(200, "bye".into()).await;
}
