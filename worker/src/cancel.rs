//! Stopping jobs the dispatcher no longer wants.
//!
//! The dispatcher publishes [`CancelJobs`] to the control exchange, a
//! fanout: every worker sees every message through a private queue of its
//! own ([`ControlQueue`]: server-named, exclusive, gone with the
//! connection). For each listed job the service loop kills the slot running
//! it through its [`JobStop`], publishes no result and acks the delivery
//! (the dispatcher has already given the job its verdict), and remembers
//! the id and attempt in [`CancelledJobs`] so that a delivery of that
//! attempt (or an earlier one) arriving later is acked and dropped without
//! running. A later attempt of the same job (an operator's retry) runs.
//!
//! Cancellation is best effort: a worker that is disconnected when the
//! message is published never sees it and runs the job to its end; the
//! dispatcher ignores that result.

use lapin::options::BasicConsumeOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_common::ids::JobId;
use warren_common::messages::{CancelJobs, DecodeError, decode};
use warren_common::session::{Session, SessionError};
use warren_common::topology::PrivateQueue;

/// Most cancelled job ids remembered: far more than the deliveries that can
/// be in flight, and a bound on memory however many the dispatcher cancels.
pub(crate) const REMEMBERED_CANCELS: usize = 10_000;

/// How long a cancelled job id is remembered. A delivery of a cancelled
/// job can arrive only while it is in the jobs queue, which the dispatcher
/// empties of superseded work long before this.
pub(crate) const REMEMBER_CANCELS_FOR: Duration = Duration::from_secs(60 * 60);

/// The way to stop one job: the worker-wide abort (a forced stop) or a
/// cancellation of this job alone. Both kill the job's processes; only
/// the first leaves its delivery for the broker to requeue.
#[derive(Debug, Clone)]
pub(crate) struct JobStop {
    worker: CancellationToken,
    job: CancellationToken,
}

/// Why a job stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The worker is stopping (or lost its hold on the command): leave the
    /// delivery unacked.
    Worker,
    /// The dispatcher cancelled this job: ack it, publish nothing.
    Cancelled,
}

impl JobStop {
    /// A stop for one job under the worker-wide `abort`.
    pub(crate) fn new(abort: &CancellationToken) -> Self {
        Self {
            worker: abort.clone(),
            job: abort.child_token(),
        }
    }

    /// Stops this job only.
    pub(crate) fn cancel(&self) {
        self.job.cancel();
    }

    /// Cancelled when the job must stop, for either reason.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.job
    }

    /// Why the job was stopped. The worker's stop wins: the job goes back
    /// to the queue rather than be lost. A job stopped for neither reason
    /// (the command could not be waited for) counts as the worker's.
    pub(crate) fn reason(&self) -> StopReason {
        if self.job.is_cancelled() && !self.worker.is_cancelled() {
            StopReason::Cancelled
        } else {
            StopReason::Worker
        }
    }
}

/// The jobs cancelled lately, each with the last attempt cancelled: at
/// most `capacity`, each for at most `ttl`, the oldest forgotten first.
#[derive(Debug)]
pub(crate) struct CancelledJobs {
    order: VecDeque<(Instant, JobId)>,
    ids: HashMap<JobId, u32>,
    capacity: usize,
    ttl: Duration,
}

impl Default for CancelledJobs {
    fn default() -> Self {
        Self::new(REMEMBERED_CANCELS, REMEMBER_CANCELS_FOR)
    }
}

impl CancelledJobs {
    /// An empty memory of `capacity` ids kept for `ttl`.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            order: VecDeque::new(),
            ids: HashMap::new(),
            capacity,
            ttl,
        }
    }

    /// Remembers that attempts up to `attempt` of `id` were cancelled at
    /// `now`.
    pub(crate) fn remember(&mut self, id: JobId, attempt: u32, now: Instant) {
        self.forget_expired(now);
        if self.capacity == 0 {
            return;
        }
        if let Some(known) = self.ids.get_mut(&id) {
            *known = (*known).max(attempt);
            return;
        }
        self.ids.insert(id, attempt);
        if self.order.len() >= self.capacity
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back((now, id));
    }

    /// Whether `attempt` of `id` was cancelled (and not yet forgotten) at
    /// `now`.
    pub(crate) fn contains(&mut self, id: &JobId, attempt: u32, now: Instant) -> bool {
        self.forget_expired(now);
        self.ids.get(id).is_some_and(|last| attempt <= *last)
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((at, id)) = self.order.front()
            && now.saturating_duration_since(*at) >= self.ttl
        {
            self.ids.remove(id);
            self.order.pop_front();
        }
    }
}

/// This worker's private queue on the control exchange, consumed without
/// acks (a control message lost with a connection is not worth a
/// redelivery: the job it names has its verdict either way).
pub(crate) struct ControlQueue {
    /// Kept open as long as the consumer is used.
    _channel: Channel,
    consumer: Consumer,
}

impl ControlQueue {
    /// Declares a server-named, exclusive, auto-delete queue on a channel
    /// of its own (an error here must not close the jobs channel), binds it
    /// to the control exchange and consumes it. Needs configure, write and
    /// read permission on `amq.gen-*` and read on the control exchange.
    pub(crate) async fn open(session: &Session, consumer_tag: &str) -> Result<Self, SessionError> {
        let broker = |what| move |cause| SessionError::Broker { what, cause };
        let channel = session.open_channel().await?;
        let queue = session
            .topology()
            .declare_private(&channel, PrivateQueue::Control)
            .await
            .map_err(|error| SessionError::Broker {
                what: error.what,
                cause: error.cause,
            })?;
        let consumer = channel
            .basic_consume(
                queue,
                ShortString::from(consumer_tag.to_owned()),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker("consuming the cancellation queue"))?;
        Ok(Self {
            _channel: channel,
            consumer,
        })
    }

    /// The consumer of control messages.
    pub(crate) fn consumer(&mut self) -> &mut Consumer {
        &mut self.consumer
    }
}

/// Decodes a control message. An undecodable one is logged and ignored by
/// the caller, never dead-lettered: nothing depends on it.
pub(crate) fn decode_cancel(body: &[u8]) -> Result<CancelJobs, DecodeError> {
    decode::<CancelJobs>(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_common::messages::JobAttempt;

    #[test]
    fn a_cancelled_id_is_remembered_for_its_time() {
        let mut memory = CancelledJobs::new(10, Duration::from_secs(60));
        let start = Instant::now();
        let id = JobId::new();
        memory.remember(id, 2, start);
        assert!(memory.contains(&id, 2, start + Duration::from_secs(59)));
        assert!(memory.contains(&id, 1, start), "an earlier attempt too");
        assert!(
            !memory.contains(&id, 3, start),
            "a retry's later attempt runs"
        );
        assert!(!memory.contains(&JobId::new(), 1, start));
        assert!(!memory.contains(&id, 2, start + Duration::from_secs(60)));
        assert!(memory.is_empty());
    }

    #[test]
    fn a_later_cancel_of_the_same_job_covers_its_later_attempt() {
        let mut memory = CancelledJobs::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let id = JobId::new();
        memory.remember(id, 1, now);
        memory.remember(id, 3, now);
        memory.remember(id, 2, now);
        assert!(memory.contains(&id, 3, now));
        assert!(!memory.contains(&id, 4, now));
        assert_eq!(memory.len(), 1);
    }

    #[test]
    fn the_oldest_ids_are_forgotten_first_beyond_the_capacity() {
        let mut memory = CancelledJobs::new(3, Duration::from_secs(60));
        let now = Instant::now();
        let ids: Vec<JobId> = (0..5).map(|_| JobId::new()).collect();
        for id in &ids {
            memory.remember(*id, 1, now);
            // Twice: counted once.
            memory.remember(*id, 1, now);
        }
        assert_eq!(memory.len(), 3);
        assert!(!memory.contains(&ids[0], 1, now) && !memory.contains(&ids[1], 1, now));
        assert!(ids[2..].iter().all(|id| memory.contains(id, 1, now)));
    }

    #[test]
    fn the_default_memory_is_bounded() {
        let mut memory = CancelledJobs::default();
        let now = Instant::now();
        for _ in 0..REMEMBERED_CANCELS + 10 {
            memory.remember(JobId::new(), 1, now);
        }
        assert_eq!(memory.len(), REMEMBERED_CANCELS);
    }

    #[test]
    fn a_job_stop_tells_a_cancellation_from_the_workers_stop() {
        let abort = CancellationToken::new();
        let (one, two) = (JobStop::new(&abort), JobStop::new(&abort));
        one.cancel();
        assert!(one.token().is_cancelled());
        assert!(!two.token().is_cancelled(), "only the cancelled job stops");
        assert_eq!(one.reason(), StopReason::Cancelled);
        abort.cancel();
        assert!(two.token().is_cancelled());
        assert_eq!(two.reason(), StopReason::Worker);
        assert_eq!(one.reason(), StopReason::Worker, "the worker's stop wins");
    }

    #[test]
    fn control_messages_decode_strictly() {
        let cancel = CancelJobs {
            jobs: vec![JobAttempt {
                job_id: JobId::new(),
                attempt: 1,
            }],
            reason: "superseded by abc".into(),
        };
        let body = warren_common::messages::encode(&cancel);
        assert_eq!(decode_cancel(&body).unwrap(), cancel);
        assert!(decode_cancel(b"garbage").is_err());
        let attempt_zero = warren_common::messages::encode(&CancelJobs {
            jobs: vec![JobAttempt {
                job_id: JobId::new(),
                attempt: 0,
            }],
            reason: String::new(),
        });
        assert!(decode_cancel(&attempt_zero).is_err());
    }
}
