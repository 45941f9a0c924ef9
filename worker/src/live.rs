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

/// The current session, as published by the service loop (events, live
/// output and presence all send through it).
pub type CurrentSession =
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
use warren_common::messages::{Job, LogLines, MAX_LOG_CHUNK_BYTES};

/// Most reads waiting for the publisher, per job. Reads of a command that
/// writes line by line are small; the byte bound below is the real one.
const QUEUE_PIECES: usize = 256;

/// Most bytes of output waiting for the publisher, per job: the burst
/// below; with 64 slots, 32 MiB at worst, and only while every job floods
/// and the broker stalls.
const QUEUE_BYTES: usize = 512 * 1024;

/// Longest time a complete line waits before it is published, while the
/// output flows.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Bytes per second of a job's output that go out live, on average: some
/// 3 000 lines a second, more than anyone reads. A test that floods its
/// output would otherwise spend the worker's CPU and the broker's bandwidth
/// (measured: a tenth of the time of a 1 GiB flood at 1 MiB/s) on a view of
/// it. Beyond this the output is dropped (and noted); the result keeps it.
pub const RATE_BYTES_PER_SECOND: f64 = 256.0 * 1024.0;

/// Bytes that may go out at once above the rate (a burst of compiler output).
pub const BURST_BYTES: f64 = 512.0 * 1024.0;

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
/// [`LiveSink::disabled`] (the default) goes nowhere.
#[derive(Clone, Debug, Default)]
pub struct LiveSink {
    inner: Option<SinkInner>,
}

#[derive(Clone, Debug)]
struct SinkInner {
    tx: mpsc::Sender<Piece>,
    shared: Arc<Shared>,
}

impl LiveSink {
    /// A sink that drops everything without counting (no broker).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Hands one read of the command's output to the publisher, or drops
    /// it (counted) if the queue is full or the output goes over the rate.
    pub fn push(&self, bytes: &[u8]) {
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
    pub fn end_of_run(&self) {
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
    pub fn header(&self, line: &str) {
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
pub struct LiveOutput {
    sink: LiveSink,
    task: Option<JoinHandle<()>>,
}

impl LiveOutput {
    /// Live output that goes nowhere.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts publishing the output of run `run_id` of `job` through the
    /// current `session`, counting what is dropped in `dropped`.
    pub fn start(session: CurrentSession, job: &Job, run_id: uuid::Uuid, dropped: Counter) -> Self {
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
    pub fn sink(&self) -> LiveSink {
        self.sink.clone()
    }

    /// Publishes what is left (a last line without newline, a note of
    /// dropped output) and stops the publisher; waits at most
    /// [`FINISH_TIMEOUT`], so that the last chunks go before the result
    /// but a stalled broker does not hold the result back.
    pub async fn finish(self) {
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

/// What the publisher does after a piece.
enum Next {
    /// Publish the chunks that are full; the rest waits (at most
    /// [`FLUSH_INTERVAL`]).
    Continue,
    /// Publish every complete line now.
    PublishLines,
    /// Publish everything and stop.
    Finish,
}

/// Completes at `at`; never without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One message's text, and the output bytes it holds.
#[derive(Debug, PartialEq)]
struct Chunk {
    text: String,
    bytes: u64,
}

/// Whole lines out of reads: holds a partial last line until its newline
/// (or the end of its run), splits lines longer than a chunk, replaces
/// invalid UTF-8, and marks dropped output.
#[derive(Debug, Default)]
struct Assembler {
    /// Output not yet in a chunk.
    buf: Vec<u8>,
    /// End of the last complete line in `buf` (0: none).
    lines_end: usize,
    /// Bytes dropped before what comes next, to note there.
    gap: u64,
    /// After a gap: discarding the rest of the line it cut.
    skipping: bool,
    /// Bytes of chunks that could not be published, to note at the start of
    /// the next chunk.
    lost: u64,
    /// Bytes discarded here since the publisher last counted them.
    discarded: u64,
}

impl Assembler {
    /// Adds what a sink handed over.
    fn apply(&mut self, piece: Piece) -> Next {
        if piece.end_before {
            self.end_of_run();
        }
        if piece.dropped_before > 0 {
            self.gap(piece.dropped_before);
        }
        match piece.kind {
            PieceKind::Output(bytes) => {
                self.push(&bytes);
                Next::Continue
            }
            PieceKind::EndOfRun => {
                self.end_of_run();
                Next::PublishLines
            }
            PieceKind::Header(line) => {
                self.header(&line);
                Next::Continue
            }
            PieceKind::Finish => Next::Finish,
        }
    }

    /// Output as read.
    fn push(&mut self, mut bytes: &[u8]) {
        if self.skipping {
            match bytes.iter().position(|b| *b == b'\n') {
                None => {
                    self.discard(bytes.len());
                    return;
                }
                Some(newline) => {
                    self.discard(newline + 1);
                    self.skipping = false;
                    bytes = &bytes[newline + 1..];
                }
            }
        }
        if bytes.is_empty() {
            return;
        }
        self.note_gap();
        self.append(bytes);
    }

    /// `dropped` bytes (counted already) are missing before what comes
    /// next: the line they cut is discarded on both sides, so that no line
    /// is made of two.
    fn gap(&mut self, dropped: u64) {
        self.gap += dropped;
        let partial = self.buf.len() - self.lines_end;
        if partial > 0 {
            self.buf.truncate(self.lines_end);
            self.discard(partial);
        }
        self.skipping = true;
    }

    /// A run ended: its last line is complete.
    fn end_of_run(&mut self) {
        self.skipping = false;
        if self.buf.len() > self.lines_end {
            self.append(b"\n");
        }
    }

    /// A line of the worker's own, between runs.
    fn header(&mut self, line: &str) {
        self.end_of_run();
        self.note_gap();
        self.append(line.as_bytes());
        self.append(b"\n");
    }

    /// Nothing more comes: complete the last line, note what was dropped.
    fn finish(&mut self) {
        self.end_of_run();
        self.note_gap();
        if self.buf.is_empty() && self.lost > 0 {
            let lost = std::mem::take(&mut self.lost);
            self.append(note(lost).as_bytes());
        }
    }

    /// A chunk of `bytes` output bytes could not be published.
    fn lost(&mut self, bytes: u64) {
        self.lost += bytes;
    }

    fn discard(&mut self, bytes: usize) {
        self.gap += bytes as u64;
        self.discarded += bytes as u64;
    }

    fn note_gap(&mut self) {
        if self.gap > 0 {
            let gap = std::mem::take(&mut self.gap);
            self.append(note(gap).as_bytes());
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        if let Some(newline) = bytes.iter().rposition(|b| *b == b'\n') {
            self.lines_end = start + newline + 1;
        }
    }

    fn has_lines(&self) -> bool {
        self.lines_end > 0 || self.buf.len() >= MAX_LOG_CHUNK_BYTES
    }

    /// Whether a chunk would be full (or a line is too long for one).
    fn has_full_chunk(&self) -> bool {
        self.lines_end >= MAX_LOG_CHUNK_BYTES
            || self.buf.len() - self.lines_end >= MAX_LOG_CHUNK_BYTES
    }

    /// The next chunk: as many complete lines as fit, or a piece of a line
    /// too long for one chunk (ended with a newline), or nothing.
    fn next_chunk(&mut self) -> Option<Chunk> {
        let region = if self.lines_end > 0 {
            self.lines_end
        } else if self.buf.len() >= MAX_LOG_CHUNK_BYTES {
            self.buf.len()
        } else {
            return None;
        };
        let note = match self.lost {
            0 => String::new(),
            lost => note(lost),
        };
        // Room for the newline that ends a split line.
        let limit = MAX_LOG_CHUNK_BYTES - note.len() - 1;
        let (mut text, mut used) = decode_prefix(&self.buf[..region], limit);
        if used == 0 {
            return None;
        }
        if used < region {
            match self.buf[..used].iter().rposition(|b| *b == b'\n') {
                // Whole lines only: the rest goes in the next chunk.
                Some(newline) => {
                    used = newline + 1;
                    let end = text.rfind('\n').map_or(text.len(), |end| end + 1);
                    text.truncate(end);
                }
                // One line longer than a chunk: split it (at its own
                // newline, if that is what did not fit).
                None => {
                    if self.buf.get(used) == Some(&b'\n') {
                        used += 1;
                    }
                    text.push('\n');
                }
            }
        }
        self.buf.drain(..used);
        self.lines_end = self.lines_end.saturating_sub(used);
        self.lost = 0;
        Some(Chunk {
            text: note + &text,
            bytes: used as u64,
        })
    }
}

/// The longest prefix of `raw` whose text (invalid UTF-8 replaced with
/// U+FFFD) fits in `limit` bytes, cut at a character: (text, bytes of `raw`
/// used). An incomplete character at the very end is replaced too: callers
/// pass regions that end with a newline, or that are cut before their end.
fn decode_prefix(raw: &[u8], limit: usize) -> (String, usize) {
    let mut text = String::with_capacity(limit.min(raw.len()));
    let mut used = 0;
    while used < raw.len() {
        let rest = &raw[used..];
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(all) => (all, None),
            Err(error) => {
                let valid = std::str::from_utf8(&rest[..error.valid_up_to()]).unwrap_or_default();
                let invalid = error.error_len().unwrap_or(rest.len() - valid.len());
                (valid, Some(invalid))
            }
        };
        let room = limit - text.len();
        if valid.len() > room {
            let mut cut = room;
            while !valid.is_char_boundary(cut) {
                cut -= 1;
            }
            text.push_str(&valid[..cut]);
            used += cut;
            break;
        }
        text.push_str(valid);
        used += valid.len();
        match invalid {
            None => break,
            Some(_) if limit - text.len() < char::REPLACEMENT_CHARACTER.len_utf8() => break,
            Some(invalid) => {
                text.push(char::REPLACEMENT_CHARACTER);
                used += invalid;
            }
        }
    }
    (text, used)
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

    /// Every chunk the assembler has, as when flushing.
    fn drain(chunks: &mut Assembler) -> Vec<String> {
        std::iter::from_fn(|| chunks.next_chunk())
            .map(|chunk| chunk.text)
            .collect()
    }

    #[test]
    fn only_whole_lines_go_out_and_a_partial_line_waits_for_its_newline() {
        let mut chunks = Assembler::default();
        chunks.push(b"one\ntw");
        assert_eq!(drain(&mut chunks), ["one\n"]);
        assert!(!chunks.has_lines());
        chunks.push(b"o\nthr");
        chunks.push(b"ee");
        assert_eq!(drain(&mut chunks), ["two\n"]);
        chunks.end_of_run();
        assert_eq!(drain(&mut chunks), ["three\n"]);
        chunks.finish();
        assert_eq!(drain(&mut chunks), Vec::<String>::new());
    }

    #[test]
    fn headers_come_between_runs_on_lines_of_their_own() {
        let mut chunks = Assembler::default();
        chunks.header("==> a.sh");
        chunks.push(b"A\nno newline");
        chunks.end_of_run();
        chunks.header("==> b.sh");
        chunks.push(b"B\n");
        assert_eq!(
            drain(&mut chunks).concat(),
            "==> a.sh\nA\nno newline\n==> b.sh\nB\n"
        );
    }

    #[test]
    fn chunks_hold_at_most_the_limit_and_cut_between_lines() {
        let mut chunks = Assembler::default();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..2000 {
            chunks.push(line.as_bytes());
        }
        assert!(chunks.has_full_chunk());
        let texts = drain(&mut chunks);
        assert_eq!(texts.len(), 4, "200 000 bytes in chunks of 64 KiB");
        for text in &texts {
            assert!(text.len() <= MAX_LOG_CHUNK_BYTES);
            assert!(text.ends_with('\n'));
            assert!(text.lines().all(|l| l.len() == 99), "whole lines only");
        }
        assert_eq!(texts.concat(), line.repeat(2000));
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_split() {
        let mut chunks = Assembler::default();
        let long = "é".repeat(MAX_LOG_CHUNK_BYTES); // two bytes each
        chunks.push(long.as_bytes());
        assert!(chunks.has_full_chunk(), "no need to wait for its newline");
        let first = chunks.next_chunk().unwrap();
        assert!(first.text.len() <= MAX_LOG_CHUNK_BYTES);
        assert!(first.text.ends_with("é\n"), "cut at a character");
        chunks.push(b"\n");
        let texts = drain(&mut chunks);
        let rejoined: String = std::iter::once(first.text)
            .chain(texts)
            .map(|t| t.trim_end_matches('\n').to_owned())
            .collect();
        assert_eq!(rejoined, long);
    }

    #[test]
    fn invalid_utf8_is_replaced_even_across_reads() {
        let mut chunks = Assembler::default();
        let e = "é".as_bytes();
        chunks.push(&[b'a', 0xff, b' ', e[0]]);
        chunks.push(&[e[1], b'\n', 0xc3]);
        chunks.end_of_run();
        assert_eq!(drain(&mut chunks).concat(), "a\u{fffd} é\n\u{fffd}\n");
    }

    #[test]
    fn invalid_utf8_cannot_make_a_chunk_too_large() {
        let mut chunks = Assembler::default();
        // Each byte becomes three.
        chunks.push(&vec![0xff; MAX_LOG_CHUNK_BYTES - 1]);
        chunks.push(b"\n");
        let texts = drain(&mut chunks);
        assert_eq!(texts.len(), 3);
        assert!(texts.iter().all(|t| t.len() <= MAX_LOG_CHUNK_BYTES));
    }

    #[test]
    fn a_gap_is_noted_where_the_output_goes_on_and_cut_lines_are_discarded() {
        let mut chunks = Assembler::default();
        let (before, after) = ("cut at the st", "rest of a cut line\n");
        chunks.push(format!("whole\n{before}").as_bytes());
        chunks.gap(100);
        chunks.push(format!("{after}next\n").as_bytes());
        let discarded = (before.len() + after.len()) as u64;
        assert_eq!(
            drain(&mut chunks).concat(),
            format!(
                "whole\n[warren: {} bytes of live output dropped]\nnext\n",
                100 + discarded
            )
        );
        assert_eq!(chunks.discarded, discarded);
    }

    #[test]
    fn a_gap_at_the_end_is_noted_at_the_finish() {
        let mut chunks = Assembler::default();
        chunks.push(b"a\n");
        chunks.gap(10);
        chunks.finish();
        assert_eq!(
            drain(&mut chunks).concat(),
            "a\n[warren: 10 bytes of live output dropped]\n"
        );
    }

    #[test]
    fn chunks_that_could_not_be_published_are_noted_in_the_next() {
        let mut chunks = Assembler::default();
        chunks.push(b"lost\n");
        let lost = chunks.next_chunk().unwrap();
        chunks.lost(lost.bytes);
        chunks.push(b"kept\n");
        assert_eq!(
            drain(&mut chunks),
            ["[warren: 5 bytes of live output dropped]\nkept\n"]
        );
        chunks.lost(5);
        chunks.finish();
        assert_eq!(
            drain(&mut chunks),
            ["[warren: 5 bytes of live output dropped]\n"]
        );
    }

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
