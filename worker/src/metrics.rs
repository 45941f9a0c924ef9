//! The worker's Prometheus metrics, served on `/metrics` (by the `http` module).
//!
//! One [`Metrics`] per running worker (not a process-wide registry), so that
//! several workers in one test process count their own jobs. Handles are
//! cheap clones of shared atomics: the service loop, the job tasks and the
//! live output update them without locks.
//!
//! | metric | type | |
//! | --- | --- | --- |
//! | `warren_worker_jobs_total{status}` | counter | jobs finished here: `passed`, `failed`, `timed_out`, `error` (as reported), `cancelled` (killed for the dispatcher) |
//! | `warren_worker_slots` | gauge | `worker.slots` |
//! | `warren_worker_busy_slots` | gauge | slots running a job |
//! | `warren_worker_checkout_seconds` | histogram | time to prepare a job's work tree |
//! | `warren_worker_run_seconds` | histogram | time a job's command (all its runs) took |
//! | `warren_worker_live_output_dropped_bytes_total` | counter | output not sent live (the results still have it) |
//! | `warren_worker_broker_connected` | gauge | 1 while connected to the broker |

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds of the job run time buckets, in seconds: from a trivial
/// test (0.1 s) to the longest job a default dispatcher allows (1 h).
const RUN_BUCKETS: [f64; 15] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Upper bounds of the checkout time buckets, in seconds: a warm clone
/// takes milliseconds, a first clone of a large repository minutes.
const CHECKOUT_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The verdicts `jobs_total` counts, present (at 0) from the start so that
/// a rate over them works before the first job of each kind.
const JOB_STATUSES: [&str; 5] = ["passed", "failed", "timed_out", "error", "cancelled"];

/// The `status` label of `jobs_total`.
type StatusLabel = [(&'static str, &'static str); 1];

/// The worker's metrics and the registry that encodes them.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    jobs: Family<StatusLabel, Counter>,
    busy: Gauge,
    checkout: Histogram,
    run: Histogram,
    live_dropped: Counter,
    connected: Gauge,
}

impl Metrics {
    /// The metrics of a worker with `slots` slots, all at zero.
    pub(crate) fn new(slots: u16) -> Self {
        let mut registry = Registry::with_prefix("warren_worker");
        let jobs = Family::<StatusLabel, Counter>::default();
        for status in JOB_STATUSES {
            let _ = jobs.get_or_create(&[("status", status)]);
        }
        registry.register(
            "jobs",
            "Jobs this worker finished, by status (cancelled: killed because the dispatcher cancelled them)",
            jobs.clone(),
        );
        let slot_gauge: Gauge = Gauge::default();
        slot_gauge.set(i64::from(slots));
        registry.register("slots", "Jobs this worker runs at once", slot_gauge);
        let busy: Gauge = Gauge::default();
        registry.register("busy_slots", "Slots running a job now", busy.clone());
        let checkout = Histogram::new(CHECKOUT_BUCKETS);
        registry.register_with_unit(
            "checkout",
            "Time to fetch and check out a job's commit",
            Unit::Seconds,
            checkout.clone(),
        );
        let run = Histogram::new(RUN_BUCKETS);
        registry.register_with_unit(
            "run",
            "Time a job's command ran (every run of the job: per file, reruns)",
            Unit::Seconds,
            run.clone(),
        );
        let live_dropped = Counter::default();
        registry.register(
            "live_output_dropped_bytes",
            "Bytes of job output not sent live (follower too slow, output too fast, broker away); results keep them",
            live_dropped.clone(),
        );
        let connected: Gauge = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the worker is connected to the broker, else 0",
            connected.clone(),
        );
        Self {
            registry: Arc::new(registry),
            jobs,
            busy,
            checkout,
            run,
            live_dropped,
            connected,
        }
    }

    /// A job finished here with `status` (`passed`, …, `cancelled`).
    pub(crate) fn job_finished(&self, status: &'static str) {
        self.jobs.get_or_create(&[("status", status)]).inc();
    }

    /// How many slots run a job now.
    pub(crate) fn set_busy(&self, busy: usize) {
        self.busy.set(i64::try_from(busy).unwrap_or(i64::MAX));
    }

    /// A checkout took `time`.
    pub(crate) fn observe_checkout(&self, time: Duration) {
        self.checkout.observe(time.as_secs_f64());
    }

    /// A job's command (all its runs) took `time`.
    pub(crate) fn observe_run(&self, time: Duration) {
        self.run.observe(time.as_secs_f64());
    }

    /// The counter of live output bytes dropped, for [`crate::live`].
    pub(crate) fn live_dropped(&self) -> Counter {
        self.live_dropped.clone()
    }

    /// Whether the worker is connected to the broker.
    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Every metric in the OpenMetrics text format (`/metrics` turns it into
    /// the Prometheus text format for scrapers that do not ask for it).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; the encoder only forwards
        // `fmt::Write` errors.
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl Default for Metrics {
    /// The metrics of a one-slot worker (for driving jobs in tests).
    fn default() -> Self {
        Self::new(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels, as written).
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok()).flatten()
            })
    }

    #[test]
    fn the_text_has_every_metric_under_its_documented_name() {
        let metrics = Metrics::new(3);
        metrics.job_finished("passed");
        metrics.job_finished("passed");
        metrics.job_finished("cancelled");
        metrics.set_busy(2);
        metrics.observe_checkout(Duration::from_millis(30));
        metrics.observe_run(Duration::from_secs(90));
        metrics.live_dropped().inc_by(512);
        metrics.set_connected(true);
        let text = metrics.encode();
        let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name}:\n{text}"));
        assert_eq!(value(r#"warren_worker_jobs_total{status="passed"}"#), 2.0);
        assert_eq!(
            value(r#"warren_worker_jobs_total{status="cancelled"}"#),
            1.0
        );
        assert_eq!(
            value(r#"warren_worker_jobs_total{status="timed_out"}"#),
            0.0
        );
        assert_eq!(value("warren_worker_slots"), 3.0);
        assert_eq!(value("warren_worker_busy_slots"), 2.0);
        assert_eq!(value("warren_worker_checkout_seconds_count"), 1.0);
        assert_eq!(value(r#"warren_worker_run_seconds_bucket{le="60.0"}"#), 0.0);
        assert_eq!(
            value(r#"warren_worker_run_seconds_bucket{le="120.0"}"#),
            1.0
        );
        assert_eq!(
            value(r#"warren_worker_run_seconds_bucket{le="3600.0"}"#),
            1.0
        );
        assert_eq!(value("warren_worker_run_seconds_sum"), 90.0);
        assert_eq!(
            value("warren_worker_live_output_dropped_bytes_total"),
            512.0
        );
        assert_eq!(value("warren_worker_broker_connected"), 1.0);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
