//! The dispatcher's Prometheus metrics, served at `/metrics`.
//!
//! Counters and histograms are updated by the dispatcher's loop as things
//! happen; gauges that describe the present (workers connected, queue
//! depths, dead letters) are read when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A label with a status or a queue name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub status: String,
}

/// A label with a queue name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabel {
    pub queue: String,
}

/// Buckets for job durations and queue waits, in seconds: from a tenth of a
/// second to an hour, roughly doubling.
const SECONDS_BUCKETS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 2700.0,
    3600.0,
];

/// Every metric of the dispatcher.
pub(crate) struct Metrics {
    registry: Registry,
    /// Commits that got their verdict, by status.
    pub commits: Family<StatusLabel, Counter>,
    /// Duration of decided jobs' runs.
    pub job_duration: Histogram,
    /// From a job's publish to the start of the run that decided it.
    pub queue_wait: Histogram,
    /// Runs lost (redelivered elsewhere, or their lease ran out).
    pub attempts_lost: Counter,
    /// Messages this dispatcher dead-lettered, by source queue.
    pub dead_lettered: Family<QueueLabel, Gauge<u64, AtomicU64>>,
    /// Workers heard from recently.
    pub workers_connected: Gauge,
    /// Messages ready in each queue.
    pub queue_depth: Family<QueueLabel, Gauge>,
    /// Consumers of each queue.
    pub queue_consumers: Family<QueueLabel, Gauge>,
    /// 1 while the dispatcher is connected to the broker.
    pub broker_connected: Gauge,
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("warren");
        let commits = Family::<StatusLabel, Counter>::default();
        registry.register(
            "commits",
            "Commits that got their verdict, by status",
            commits.clone(),
        );
        let job_duration = Histogram::new(SECONDS_BUCKETS);
        registry.register(
            "job_duration_seconds",
            "Duration of the run that decided each job",
            job_duration.clone(),
        );
        let queue_wait = Histogram::new(SECONDS_BUCKETS);
        registry.register(
            "queue_wait_seconds",
            "From a job's publish to the start of the run that decided it",
            queue_wait.clone(),
        );
        let attempts_lost = Counter::default();
        registry.register(
            "attempts_lost",
            "Runs lost: redelivered to another worker, or their lease ran out",
            attempts_lost.clone(),
        );
        let dead_lettered = Family::<QueueLabel, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "dead_lettered",
            "Messages the dispatcher moved to the dead-letter queue since it started, by source queue",
            dead_lettered.clone(),
        );
        let workers_connected = Gauge::default();
        registry.register(
            "workers_connected",
            "Workers heard from in the last 30 seconds",
            workers_connected.clone(),
        );
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Messages ready in each queue",
            queue_depth.clone(),
        );
        let queue_consumers = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_consumers",
            "Consumers of each queue",
            queue_consumers.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the dispatcher is connected to the broker",
            broker_connected.clone(),
        );
        Self {
            registry,
            commits,
            job_duration,
            queue_wait,
            attempts_lost,
            dead_lettered,
            workers_connected,
            queue_depth,
            queue_consumers,
            broker_connected,
        }
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
