//! Live output: a running job's output as it is written, in chunks of whole
//! lines ([`LogLines`]) on the logs exchange, routed by job id, for whoever
//! follows the job.
//!
//! ```text
//! output reader ──push, never waits──▶ bounded queue ──▶ publisher task ──▶ P.logs, key = job id
//! (run.rs)       drops (and counts)                     whole lines, ≤ MAX_LOG_CHUNK_BYTES a chunk,
//!                when full or too fast                  at most 200 ms late while output flows
//! ```
//!
//! Live output is a view, not the record: the result's capture
//! ([`crate::output`]) is made apart from it and never waits for it. So the
//! reader hands each read to a [`LiveSink`] without waiting: a read that
//! does not fit the queue (bounded in pieces and bytes), or that goes over
//! the rate live output is allowed, is dropped and counted, and the
//! publisher writes `[warren: N bytes of live output dropped]` where the
//! output goes on. A chunk that cannot be published (broker away or slow)
//! is dropped the same way; its `seq` is still used, so a follower sees the
//! gap. A test that floods its output costs the worker one small copy per
//! read within the rate, and nothing beyond it.
//!
//! One [`LiveOutput`] per run of a job (one run id): `seq` counts its
//! chunks from 0 across all the command's runs (`{file}`, reruns), and the
//! suite's `==> …` header before each run goes out with them.

mod assembler;

use self::assembler::{Assembler, Chunk, Next};

/// The current session, as published by the service loop (events, live
/// output and presence all send through it).
pub(crate) type CurrentSession =
    tokio::sync::watch::Receiver<Option<Arc<warren_common::session::Session>>>;

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument as _, debug, warn};
use warren_common::ids::JobId;
use warren_common::messages::{Job, LogLines};

/// Most reads waiting for the publisher, per job. Reads of a command that
/// writes line by line are small; the byte bound below is the real one.
const QUEUE_PIECES: usize = 256;

/// Most bytes of output waiting for the publisher, per job: the burst
/// below; with 64 slots, 32 MiB at worst, and only while every job floods
/// and the broker stalls.
const QUEUE_BYTES: usize = 512 * 1024;

/// Longest time a complete line waits before it is published, while the
/// output flows.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Bytes per second of a job's output that go out live, on average: some
/// 3 000 lines a second, more than anyone reads. A test that floods its
/// output would otherwise spend the worker's CPU and the broker's bandwidth
/// (measured: a tenth of the time of a 1 GiB flood at 1 MiB/s) on a view of
/// it. Beyond this the output is dropped (and noted); the result keeps it.
pub(crate) const RATE_BYTES_PER_SECOND: f64 = 256.0 * 1024.0;

/// Bytes that may go out at once above the rate (a burst of compiler output).
pub(crate) const BURST_BYTES: f64 = 512.0 * 1024.0;

/// Longest wait for one chunk to be handed to the connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest wait at the end of a job for the last chunks to go out, so that
/// they come before the result (the job's result waits no longer than this).
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The note where live output was dropped.
fn note(bytes: u64) -> String {
    format!("[warren: {bytes} bytes of live output dropped]\n")
}

/// What the reader and the suite hand to the publisher.
#[derive(Debug)]
enum PieceKind {
    /// Output bytes, as read.
    Output(Vec<u8>),
    /// A run of the command ended: its last line is complete.
    EndOfRun,
    /// A line of the worker's own before a run (`==> file`).
    Header(String),
    /// The job is done: publish what is left and stop.
    Finish,
}

#[derive(Debug)]
struct Piece {
    /// Output dropped (and counted) since the last piece that got through.
    dropped_before: u64,
    /// A run ended since the last piece that got through, and its
    /// end-of-run could not be queued.
    end_before: bool,
    kind: PieceKind,
}

/// What the sinks of one job share.
#[derive(Debug)]
struct Shared {
    state: Mutex<SendState>,
    /// Output bytes in the queue.
    queued_bytes: AtomicUsize,
    /// `warren_worker_live_output_dropped_bytes_total`.
    dropped: Counter,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SendState> {
        // Nothing panics while holding it; a poisoned lock still has
        // consistent counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct SendState {
    /// Bytes dropped since the last piece that got through.
    unreported: u64,
    /// An end-of-run that could not be queued.
    end_pending: bool,
    rate: TokenBucket,
}

impl SendState {
    fn piece(&mut self, kind: PieceKind) -> Piece {
        Piece {
            dropped_before: std::mem::take(&mut self.unreported),
            end_before: std::mem::take(&mut self.end_pending),
            kind,
        }
    }
}

/// Where a command's output goes live: cheap to clone, never waits.
/// The default goes nowhere.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveSink {
    inner: Option<SinkInner>,
}

#[derive(Clone, Debug)]
struct SinkInner {
    tx: mpsc::Sender<Piece>,
    shared: Arc<Shared>,
}

impl LiveSink {
    /// A sink that drops everything without counting (no broker).
    #[cfg(test)]
    pub(crate) fn disabled() -> Self {
        Self::default()
    }

    /// Hands one read of the command's output to the publisher, or drops
    /// it (counted) if the queue is full or the output goes over the rate.
    pub(crate) fn push(&self, bytes: &[u8]) {
        let Some(inner) = &self.inner else {
            return;
        };
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        let mut state = inner.shared.lock();
        let room = inner.shared.queued_bytes.load(Ordering::Relaxed) + len <= QUEUE_BYTES;
        let permit = if room {
            inner.tx.try_reserve().ok()
        } else {
            None
        };
        match permit {
            Some(permit) if state.rate.take(len as f64, Instant::now()) => {
                inner.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
                permit.send(state.piece(PieceKind::Output(bytes.to_vec())));
            }
            _ => {
                state.unreported += len as u64;
                inner.shared.dropped.inc_by(len as u64);
            }
        }
    }

    /// A run of the command ended: its last line, if it has no newline, is
    /// complete now.
    pub(crate) fn end_of_run(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut state = inner.shared.lock();
        match inner.tx.try_reserve() {
            Ok(permit) => permit.send(state.piece(PieceKind::EndOfRun)),
            Err(_) => state.end_pending = true,
        }
    }

    /// A line of the worker's own (`==> file`), on a line of its own.
    pub(crate) fn header(&self, line: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut state = inner.shared.lock();
        match inner.tx.try_reserve() {
            Ok(permit) => permit.send(state.piece(PieceKind::Header(line.to_owned()))),
            Err(_) => {
                // A header ends the line before it, like an end of run.
                state.end_pending = true;
                state.unreported += line.len() as u64 + 1;
                inner.shared.dropped.inc_by(line.len() as u64 + 1);
            }
        }
    }
}

/// The live output of one run of a job: its publisher task and a sink to
/// hand out. [`LiveOutput::finish`] publishes the rest.
#[derive(Debug, Default)]
pub(crate) struct LiveOutput {
    sink: LiveSink,
    task: Option<JoinHandle<()>>,
}

impl LiveOutput {
    /// Live output that goes nowhere.
    pub(crate) fn disabled() -> Self {
        Self::default()
    }

    /// Starts publishing the output of run `run_id` of `job` through the
    /// current `session`, counting what is dropped in `dropped`.
    pub(crate) fn start(
        session: CurrentSession,
        job: &Job,
        run_id: uuid::Uuid,
        dropped: Counter,
    ) -> Self {
        let (sink, shared, rx) = channel(dropped.clone());
        let publisher = Publisher {
            rx,
            shared,
            session,
            job_id: job.job_id,
            attempt: job.attempt,
            run_id,
            seq: 0,
            chunks: Assembler::default(),
            dropped,
            warned: false,
        };
        // In the job's span: its lines carry the job's fields.
        let task = tokio::spawn(publisher.run().in_current_span());
        Self {
            sink,
            task: Some(task),
        }
    }

    /// A sink for the command's output reader.
    pub(crate) fn sink(&self) -> LiveSink {
        self.sink.clone()
    }

    /// Publishes what is left (a last line without newline, a note of
    /// dropped output) and stops the publisher; waits at most
    /// [`FINISH_TIMEOUT`], so that the last chunks go before the result
    /// but a stalled broker does not hold the result back.
    pub(crate) async fn finish(self) {
        let (Some(mut task), Some(inner)) = (self.task, self.sink.inner) else {
            return;
        };
        let finished = tokio::time::timeout(FINISH_TIMEOUT, async {
            // Waits for room: the last piece carries what was dropped.
            if let Ok(permit) = inner.tx.reserve().await {
                permit.send(inner.shared.lock().piece(PieceKind::Finish));
            }
            let _ = (&mut task).await;
        })
        .await;
        if finished.is_err() {
            debug!("live output: the last chunks did not go out in time");
            task.abort();
        }
    }
}

/// A sink, what its clones share, and the receiving end of its queue.
fn channel(dropped: Counter) -> (LiveSink, Arc<Shared>, mpsc::Receiver<Piece>) {
    // Bounded twice (pieces, bytes): the reader never waits for the
    // publisher, it drops instead.
    let (tx, rx) = mpsc::channel(QUEUE_PIECES);
    let shared = Arc::new(Shared {
        state: Mutex::new(SendState {
            unreported: 0,
            end_pending: false,
            rate: TokenBucket::new(Instant::now()),
        }),
        queued_bytes: AtomicUsize::new(0),
        dropped,
    });
    let sink = LiveSink {
        inner: Some(SinkInner {
            tx,
            shared: Arc::clone(&shared),
        }),
    };
    (sink, shared, rx)
}

/// Allows [`RATE_BYTES_PER_SECOND`] on average, [`BURST_BYTES`] at once.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: BURST_BYTES,
            at: now,
        }
    }

    /// Takes `bytes` if there are enough tokens.
    fn take(&mut self, bytes: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE_BYTES_PER_SECOND).min(BURST_BYTES);
        self.at = now;
        if bytes <= self.tokens {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

/// Turns the pieces of one run into chunks and publishes them.
struct Publisher {
    rx: mpsc::Receiver<Piece>,
    shared: Arc<Shared>,
    session: CurrentSession,
    job_id: JobId,
    attempt: u32,
    run_id: uuid::Uuid,
    seq: u64,
    chunks: Assembler,
    dropped: Counter,
    /// Whether a refused publish was logged already.
    warned: bool,
}

impl Publisher {
    async fn run(mut self) {
        // When the oldest unpublished complete line must go out.
        let mut deadline: Option<Instant> = None;
        loop {
            let piece = tokio::select! {
                piece = self.rx.recv() => piece,
                () = sleep_until_some(deadline) => {
                    deadline = None;
                    self.publish_lines().await;
                    continue;
                }
            };
            // No piece: every sink is gone without a `Finish`.
            let Some(piece) = piece else { break };
            match self.apply(piece) {
                Next::Finish => break,
                // The end of a run goes out at once.
                Next::PublishLines => self.publish_lines().await,
                Next::Continue => self.publish_full().await,
            }
            if !self.chunks.has_lines() {
                deadline = None;
            } else if deadline.is_none() {
                deadline = Some(Instant::now() + FLUSH_INTERVAL);
            }
        }
        self.chunks.finish();
        self.count_discarded();
        self.publish_lines().await;
    }

    /// Adds `piece` to the chunks.
    fn apply(&mut self, piece: Piece) -> Next {
        if let PieceKind::Output(bytes) = &piece.kind {
            self.shared
                .queued_bytes
                .fetch_sub(bytes.len(), Ordering::Relaxed);
        }
        let next = self.chunks.apply(piece);
        self.count_discarded();
        next
    }

    fn count_discarded(&mut self) {
        let discarded = std::mem::take(&mut self.chunks.discarded);
        if discarded > 0 {
            self.dropped.inc_by(discarded);
        }
    }

    /// Publishes the chunks that are full.
    async fn publish_full(&mut self) {
        while self.chunks.has_full_chunk() {
            let Some(chunk) = self.chunks.next_chunk() else {
                break;
            };
            self.publish(chunk).await;
        }
    }

    /// Publishes every complete line.
    async fn publish_lines(&mut self) {
        while let Some(chunk) = self.chunks.next_chunk() {
            self.publish(chunk).await;
        }
    }

    async fn publish(&mut self, chunk: Chunk) {
        let seq = self.seq;
        self.seq += 1;
        // Clone the session out of the watch: its borrow is a lock, never
        // held across an await.
        let session = self.session.borrow().clone();
        let sent = match session {
            None => false,
            Some(session) => {
                let message = LogLines {
                    job_id: self.job_id,
                    attempt: self.attempt,
                    run_id: self.run_id,
                    seq,
                    text: chunk.text,
                };
                let routing_key = self.job_id.to_string();
                let outgoing = message.envelope(&routing_key);
                let exchange = session.topology().logs_exchange();
                let sent = tokio::time::timeout(
                    SEND_TIMEOUT,
                    session.publish_transient_to(&exchange, &message, outgoing),
                )
                .await;
                match sent {
                    Ok(Ok(())) => true,
                    Ok(Err(error)) if session.is_connected() && !self.warned => {
                        // Connected, yet refused: most likely the broker
                        // closed the live channel (no write permission on
                        // the logs exchange). Once per run, not per chunk.
                        self.warned = true;
                        warn!(%error, exchange = %exchange,
                            "live output cannot be published (may the worker's broker user \
                             write to the logs exchange?); the job runs on and its result \
                             keeps the output");
                        false
                    }
                    Ok(Err(error)) => {
                        debug!(%error, seq, "live output not sent");
                        false
                    }
                    Err(_) => {
                        debug!(seq, "live output not sent: the connection is slow");
                        false
                    }
                }
            }
        };
        if !sent {
            self.chunks.lost(chunk.bytes);
            self.dropped.inc_by(chunk.bytes);
        }
    }
}

/// Completes at `at`; never without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A sink whose pieces are kept, for tests of what the runs hand it.
#[cfg(test)]
pub(crate) fn capture() -> (LiveSink, Capture) {
    let (sink, _, rx) = channel(Counter::default());
    (sink, Capture { rx })
}

/// What a [`capture`] sink was handed.
#[cfg(test)]
pub(crate) struct Capture {
    rx: mpsc::Receiver<Piece>,
}

#[cfg(test)]
impl Capture {
    /// Everything handed so far, as its chunks would say it.
    pub(crate) fn text(mut self) -> String {
        let mut chunks = Assembler::default();
        while let Ok(piece) = self.rx.try_recv() {
            chunks.apply(piece);
        }
        chunks.finish();
        std::iter::from_fn(|| chunks.next_chunk())
            .map(|chunk| chunk.text)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let dropped = Counter::default();
        let (sink, shared, mut rx) = channel(dropped.clone());
        let read = vec![b'x'; 64 * 1024];
        // Nobody reads the queue: it fills at QUEUE_BYTES.
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            sink.push(&read);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let queued = QUEUE_BYTES / read.len();
        assert_eq!(dropped.get(), ((1000 - queued) * read.len()) as u64);
        for _ in 0..queued {
            let piece = rx.try_recv().unwrap();
            assert_eq!(piece.dropped_before, 0);
        }
        assert!(rx.try_recv().is_err());
        // The next piece that gets through carries the count.
        shared.queued_bytes.store(0, Ordering::Relaxed);
        sink.end_of_run();
        let piece = rx.try_recv().unwrap();
        assert_eq!(piece.dropped_before, dropped.get());
    }

    #[test]
    fn the_rate_allows_a_burst_then_the_average() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(start);
        assert!(bucket.take(BURST_BYTES, start));
        assert!(!bucket.take(1024.0, start));
        let later = start + Duration::from_millis(500);
        assert!(bucket.take(RATE_BYTES_PER_SECOND / 2.0 - 1.0, later));
        assert!(!bucket.take(1024.0, later));
    }
}
