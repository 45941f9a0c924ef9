//! Live output of running jobs, kept for whoever follows them.
//!
//! ```text
//! workers ──LogLines──▶ P.logs (topic) ──#──▶ P.live.<uuid> (private, bounded) ──▶ LiveLogs
//!                                                                     tail per job + broadcast ──▶ followers (SSE)
//! ```
//!
//! One consumer per dispatcher, however many pages and `warren logs
//! --follow` watch: it keeps the last [`TAIL_BYTES`] of each running job's
//! output, so a follower who arrives while a job runs first gets what was
//! printed so far, then each chunk as it comes. Chunks a follower is too
//! slow for, or that the broker dropped, are replaced by a note; live output
//! is a view, the result keeps the whole output.
//!
//! Memory stays bounded: [`TAIL_BYTES`] per job, [`MAX_JOBS`] jobs (the
//! least recently written to goes first), entries forgotten [`FORGET_AFTER`]
//! after their last chunk when nobody follows them; the private queue holds
//! at most [`QUEUE_MAX_BYTES`] (oldest dropped first) while the dispatcher
//! is slow.

use crate::commands::APP_ID;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_common::backoff::Backoff;
use warren_common::config::BrokerConfig;
use warren_common::ids::JobId;
use warren_common::messages::{LogLines, decode};
use warren_common::session::Session;
use warren_common::topology::PrivateQueue;

/// Output kept per running job for followers who arrive late.
pub(crate) const TAIL_BYTES: usize = 64 * 1024;
/// Running jobs whose output is kept at once.
pub(crate) const MAX_JOBS: usize = 1024;
/// An entry nobody follows is forgotten this long after its last chunk.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most bytes waiting in the private queue (`x-max-length-bytes`).
const QUEUE_MAX_BYTES: i64 = 16 * 1024 * 1024;
/// Chunks a follower may be behind before it skips some.
const FOLLOWER_QUEUE: usize = 256;
/// Deliveries in flight to the consumer.
const PREFETCH: u16 = 256;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a follower receives after the tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LiveEvent {
    /// Whole lines of output (notes of the dispatcher's in `[warren: …]`).
    Lines(Arc<str>),
    /// The connection to the broker was lost: live output stops here.
    Gone,
}

/// The running jobs' output, shared by the consumer and the followers.
#[derive(Debug, Default)]
pub(crate) struct LiveLogs {
    jobs: Mutex<HashMap<JobId, JobLog>>,
}

#[derive(Debug)]
struct JobLog {
    /// The run whose output is kept (a re-issued job has a new run).
    run_id: Option<uuid::Uuid>,
    attempt: u32,
    /// The chunk expected next from that run.
    next_seq: u64,
    /// The last lines, at most [`TAIL_BYTES`].
    tail: String,
    /// Lines were dropped from the front of `tail`.
    trimmed: bool,
    followers: broadcast::Sender<LiveEvent>,
    touched: Instant,
}

impl JobLog {
    fn new() -> Self {
        Self {
            run_id: None,
            attempt: 0,
            next_seq: 0,
            tail: String::new(),
            trimmed: false,
            followers: broadcast::channel(FOLLOWER_QUEUE).0,
            touched: Instant::now(),
        }
    }

    /// Adds a chunk; returns the text to pass on, or `None` for a stale or
    /// repeated chunk.
    fn apply(&mut self, lines: &LogLines) -> Option<String> {
        let mut text = String::new();
        if self.run_id != Some(lines.run_id) {
            if lines.attempt < self.attempt {
                // A run of an earlier attempt (a worker that was frozen).
                return None;
            }
            if self.run_id.is_some() {
                text.push_str(&format!(
                    "[warren: attempt {} started; the output below is its own]\n",
                    lines.attempt
                ));
                self.tail.clear();
                self.trimmed = false;
            } else if lines.seq > 0 {
                text.push_str("[warren: earlier output was not received]\n");
            }
            self.run_id = Some(lines.run_id);
            self.attempt = lines.attempt;
            self.next_seq = lines.seq;
        }
        if lines.seq < self.next_seq {
            return None;
        }
        if lines.seq > self.next_seq {
            text.push_str("[warren: some live output is missing here]\n");
        }
        self.next_seq = lines.seq + 1;
        text.push_str(&lines.text);
        self.tail.push_str(&text);
        if self.tail.len() > TAIL_BYTES {
            let cut = self.tail.len() - TAIL_BYTES;
            // From the start of a line, never inside a character.
            let start = self.tail[cut..]
                .find('\n')
                .map_or(self.tail.len(), |at| cut + at + 1);
            self.tail.drain(..start);
            self.trimmed = true;
        }
        self.touched = Instant::now();
        Some(text)
    }

    fn snapshot(&self) -> String {
        if self.trimmed {
            format!(
                "[warren: earlier output left out here; the result keeps it]\n{}",
                self.tail
            )
        } else {
            self.tail.clone()
        }
    }
}

impl LiveLogs {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, JobLog>> {
        // Nothing panics while holding it.
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts following `job`: its output so far, and what comes next.
    pub(crate) fn follow(&self, job: JobId) -> (String, broadcast::Receiver<LiveEvent>) {
        let mut jobs = self.lock();
        let entry = entry(&mut jobs, job);
        (entry.snapshot(), entry.followers.subscribe())
    }

    /// Records a chunk of a job's output and passes it to its followers.
    pub(crate) fn record(&self, lines: &LogLines) {
        let mut jobs = self.lock();
        let entry = entry(&mut jobs, lines.job_id);
        if let Some(text) = entry.apply(lines) {
            // No follower is not an error.
            let _ = entry.followers.send(LiveEvent::Lines(text.into()));
        }
    }

    /// The broker connection was lost: every follower is told, and the
    /// output kept so far is dropped (what comes later cannot be joined to
    /// it reliably).
    fn lost(&self) {
        let mut jobs = self.lock();
        for (_, entry) in jobs.drain() {
            let _ = entry.followers.send(LiveEvent::Gone);
        }
    }

    /// Forgets entries nobody follows that have been quiet for `after`.
    fn sweep(&self, after: Duration) {
        self.lock().retain(|_, entry| {
            entry.followers.receiver_count() > 0 || entry.touched.elapsed() < after
        });
    }

    /// How many jobs' output is kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no job's output is kept.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// The entry of `job`, made room for if it is new.
fn entry(jobs: &mut HashMap<JobId, JobLog>, job: JobId) -> &mut JobLog {
    if !jobs.contains_key(&job) && jobs.len() >= MAX_JOBS {
        let oldest = jobs
            .iter()
            .min_by_key(|(_, entry)| entry.touched)
            .map(|(id, _)| *id);
        if let Some(oldest) = oldest
            && let Some(entry) = jobs.remove(&oldest)
        {
            let _ = entry.followers.send(LiveEvent::Gone);
        }
    }
    jobs.entry(job).or_insert_with(JobLog::new)
}

/// Consumes the logs exchange into `logs` until `stop`, reconnecting with
/// backoff.
pub(crate) async fn run(logs: Arc<LiveLogs>, broker: BrokerConfig, stop: CancellationToken) {
    let mut backoff = Backoff::new(MAX_BACKOFF);
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    loop {
        let consumed = tokio::select! {
            () = stop.cancelled() => return,
            consumed = consume(&logs, &broker, &mut backoff, &mut sweep) => consumed,
        };
        logs.lost();
        match consumed {
            Ok(()) => debug!("live output: the broker connection closed"),
            Err(error) => debug!(%error, "live output: not connected"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One connection's worth: declares a private queue on the logs exchange
/// and records every chunk until the connection fails.
async fn consume(
    logs: &LiveLogs,
    broker: &BrokerConfig,
    backoff: &mut Backoff,
    sweep: &mut tokio::time::Interval,
) -> Result<(), String> {
    let session = Session::connect(broker, APP_ID, "warren-dispatcher live output")
        .await
        .map_err(|error| error.to_string())?;
    let channel = session.open_channel().await.map_err(|e| e.to_string())?;
    // Under the prefix (the dispatcher's permissions cover it), private to
    // this connection, gone with it, never more than QUEUE_MAX_BYTES.
    let name = broker
        .topology
        .declare_private(
            &channel,
            PrivateQueue::LiveOutput {
                max_bytes: QUEUE_MAX_BYTES,
            },
        )
        .await
        .map_err(|error| error.to_string())?;
    let broker_error = |what: &str| {
        let what = what.to_owned();
        move |error: lapin::Error| format!("{what}: {error}")
    };
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(broker_error("setting prefetch"))?;
    let mut consumer = channel
        .basic_consume(
            name,
            ShortString::from("live-output"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error("consuming live output"))?;
    info!("following live output");
    backoff.reset();
    let mut warned = false;
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(delivery) = delivery else { return Ok(()) };
                let delivery = delivery.map_err(broker_error("live output"))?;
                match decode::<LogLines>(&delivery.data) {
                    Ok(lines) => logs.record(&lines),
                    // Transient and harmless: said once per connection.
                    Err(error) if !warned => {
                        warned = true;
                        warn!(%error, "live output: a chunk that is not LogLines was dropped");
                    }
                    Err(_) => {}
                }
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(broker_error("acknowledging live output"))?;
            }
            _ = sweep.tick() => logs.sweep(FORGET_AFTER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(job: JobId, run: uuid::Uuid, attempt: u32, seq: u64, text: &str) -> LogLines {
        LogLines {
            job_id: job,
            attempt,
            run_id: run,
            seq,
            text: text.into(),
        }
    }

    fn next_lines(rx: &mut broadcast::Receiver<LiveEvent>) -> String {
        match rx.try_recv() {
            Ok(LiveEvent::Lines(text)) => text.to_string(),
            other => panic!("expected lines, got {other:?}"),
        }
    }

    #[test]
    fn a_late_follower_gets_the_output_so_far_then_what_follows() {
        let logs = LiveLogs::default();
        let job = JobId::new();
        let run = uuid::Uuid::new_v4();
        logs.record(&chunk(job, run, 1, 0, "line 1\n"));
        logs.record(&chunk(job, run, 1, 1, "line 2\n"));
        let (tail, mut rx) = logs.follow(job);
        assert_eq!(tail, "line 1\nline 2\n");
        logs.record(&chunk(job, run, 1, 2, "line 3\n"));
        assert_eq!(next_lines(&mut rx), "line 3\n");
    }

    #[test]
    fn repeated_and_stale_chunks_are_ignored_and_gaps_are_noted() {
        let logs = LiveLogs::default();
        let job = JobId::new();
        let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let (_, mut rx) = logs.follow(job);
        logs.record(&chunk(job, first, 1, 0, "a\n"));
        logs.record(&chunk(job, first, 1, 0, "a\n"));
        logs.record(&chunk(job, first, 1, 2, "c\n"));
        assert_eq!(next_lines(&mut rx), "a\n");
        assert_eq!(
            next_lines(&mut rx),
            "[warren: some live output is missing here]\nc\n"
        );
        // The job is re-issued: the new attempt's output replaces the old.
        logs.record(&chunk(job, second, 2, 0, "again\n"));
        assert!(next_lines(&mut rx).ends_with("its own]\nagain\n"));
        // The frozen first run wakes up: ignored.
        logs.record(&chunk(job, first, 1, 3, "late\n"));
        assert!(rx.try_recv().is_err());
        let (tail, _) = logs.follow(job);
        assert!(
            tail.ends_with("again\n") && !tail.contains("late"),
            "{tail}"
        );
    }

    #[test]
    fn a_follower_who_joins_mid_run_is_told_the_start_was_not_seen() {
        let logs = LiveLogs::default();
        let job = JobId::new();
        logs.record(&chunk(job, uuid::Uuid::new_v4(), 1, 7, "x\n"));
        let (tail, _) = logs.follow(job);
        assert_eq!(tail, "[warren: earlier output was not received]\nx\n");
    }

    #[test]
    fn the_tail_is_bounded_and_starts_on_a_line() {
        let logs = LiveLogs::default();
        let job = JobId::new();
        let run = uuid::Uuid::new_v4();
        let line = format!("{}\n", "é".repeat(500));
        for seq in 0..200 {
            logs.record(&chunk(job, run, 1, seq, &line));
        }
        let (tail, _) = logs.follow(job);
        let kept = tail
            .strip_prefix("[warren: earlier output left out here; the result keeps it]\n")
            .expect("a note where output was left out");
        assert!(kept.len() <= TAIL_BYTES, "{}", kept.len());
        assert!(kept.len() > TAIL_BYTES / 2);
        assert!(kept.split_inclusive('\n').all(|l| l == line));
    }

    #[test]
    fn jobs_are_bounded_forgotten_when_quiet_and_followers_hear_of_a_lost_broker() {
        let logs = LiveLogs::default();
        let run = uuid::Uuid::new_v4();
        let first = JobId::new();
        let (_, mut rx) = logs.follow(first);
        for _ in 0..MAX_JOBS {
            logs.record(&chunk(JobId::new(), run, 1, 0, "x\n"));
        }
        assert_eq!(logs.len(), MAX_JOBS);
        assert_eq!(rx.try_recv(), Ok(LiveEvent::Gone), "the oldest went first");

        let followed = JobId::new();
        let (_, mut rx) = logs.follow(followed);
        logs.sweep(Duration::ZERO);
        assert_eq!(logs.len(), 1, "only the followed job is kept");
        logs.lost();
        assert_eq!(rx.try_recv(), Ok(LiveEvent::Gone));
        assert!(logs.is_empty());
    }
}
