//! What happens to a delivery once its job is done, in the order that keeps
//! every result: publish the result and wait for the broker's confirm
//! (bounded by [`PUBLISH_TIMEOUT`]), only then ack the job; a result that
//! cannot be published goes to the outbox for the next connection, and the
//! unacked job returns to the queue with the lost connection. Also here: the
//! early ack at `worker.ack_deadline`, and dead-lettering an undecodable job.
use super::{ConnectionLost, Done, Service};
use crate::job::Outcome;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{Instrument as _, Span, debug, error, info, info_span, warn};
use warren_common::messages::JobResult;
use warren_common::session::{Session, message_id};
use warren_common::topology::Queue;

/// Moves an undecodable job to the dead-letter queue with `reason`.
pub(super) async fn dead_letter(
    session: &Session,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), ConnectionLost> {
    let id = message_id(delivery);
    // The confirm wait is bounded (`broker.confirm_timeout`): a broker that
    // blocks publishers (memory alarm) must not freeze the loop.
    match session.dead_letter(delivery, Queue::Jobs, reason).await {
        Ok(()) => {
            warn!(message_id = %id, %reason,
                rejected_total = warren_common::session::rejected_total(Queue::Jobs),
                "job message dead-lettered");
            Ok(())
        }
        Err(error) => Err(ConnectionLost(format!("dead-lettering {id}: {error}"))),
    }
}

/// The span of a result published after its job's task is gone (kept
/// across a lost connection): the same fields as [`job::job_span`].
fn result_span(result: &JobResult) -> Span {
    info_span!("job", repo = %result.repo, sha = %result.sha, job = %result.job_id,
        attempt = result.attempt)
}

/// Publishes `result` and waits for the broker's confirm.
async fn publish_result(session: &Session, result: &JobResult) -> Result<(), String> {
    // Bounded by `broker.confirm_timeout`; past it the connection counts as
    // failed and the result is kept for the next one.
    match session
        .publish(Queue::Results, result, result.envelope())
        .await
    {
        Ok(()) => {
            debug!("result published");
            Ok(())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Acks a job whose result the broker confirmed.
pub(super) async fn ack(delivery: &Delivery) -> Result<(), ConnectionLost> {
    if !delivery.acker.poisoned() && !delivery.acker.usable() {
        // Acknowledged early (see `ack_early`).
        return Ok(());
    }
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            // The channel is gone: the broker requeues the job and it runs
            // again; the dispatcher counts the second result as a duplicate.
            warn!(message_id = %message_id(delivery), "could not ack a finished job: its channel is closed");
            Ok(())
        }
        Err(error) => Err(ConnectionLost(format!("acking a job: {error}"))),
    }
}

/// Acknowledges a job that is still running at `worker.ack_deadline`, so
/// that the broker's `consumer_timeout` does not take it back and give it to
/// a second worker while this one still runs it. From here on, a crash of
/// this worker is noticed by the dispatcher's lease instead of the broker.
pub(super) async fn ack_early(delivery: &Delivery, deadline: Duration) {
    match delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => info!(message_id = %message_id(delivery),
            deadline = %humantime::format_duration(deadline),
            "job still running at the ack deadline: acknowledged early; the dispatcher's lease covers it now"),
        Ok(false) => {
            debug!(message_id = %message_id(delivery), "early ack skipped: the channel is gone")
        }
        Err(error) => warn!(message_id = %message_id(delivery), %error, "early ack failed"),
    }
}

impl Service {
    /// A job came back while connected: publish then ack; or, cancelled,
    /// just ack.
    pub(super) async fn settle(
        &mut self,
        session: &Session,
        done: Done,
    ) -> Result<(), ConnectionLost> {
        let cancelled = self.release(done.slot);
        self.count(cancelled.is_some(), &done.outcome);
        let current = done.generation == self.generation;
        let delivery = done.delivery;
        if let Some((reason, since)) = cancelled {
            // Whatever it came to (killed, or finished just before the kill):
            // the dispatcher has decided the job; no result, and the broker
            // must not give it to anyone again.
            info!(message_id = %message_id(&delivery), %reason, stopped_in = ?since.elapsed(),
                "cancelled job gone; its slot is free");
            if current {
                ack(&delivery).await?;
            }
            return Ok(());
        }
        match done.outcome {
            Ok(Outcome::Finished(result)) => {
                if let Err(error) = publish_result(session, &result).await {
                    warn!(%error, "result not published; kept for the next connection");
                    self.outbox.push(*result);
                    return Err(ConnectionLost(format!("publishing a result: {error}")));
                }
                if current {
                    ack(&delivery).await?;
                    debug!("job acknowledged");
                }
            }
            Ok(Outcome::Cancelled) => {
                // Only a cancellation stops a job this way, and it was
                // handled above; ack so the broker does not run it again.
                if current {
                    ack(&delivery).await?;
                }
            }
            Ok(Outcome::Abandoned) if self.abort.is_cancelled() => self.abandoned += 1,
            Ok(Outcome::Abandoned) => {
                // Not our stop (the command could not even be waited for):
                // give the job back now rather than hold its prefetch credit
                // until the connection closes.
                warn!(message_id = %message_id(&delivery), "job abandoned; requeueing it");
                if current {
                    let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                }
            }
            Err(panic) => {
                error!(message_id = %message_id(&delivery), %panic,
                    "the job's task panicked; requeueing the job");
                if current {
                    let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                }
            }
        }
        Ok(())
    }

    /// A job came back while disconnected: keep its result for later.
    pub(super) fn settle_offline(&mut self, done: Done) {
        let cancelled = self.release(done.slot);
        self.count(cancelled.is_some(), &done.outcome);
        if cancelled.is_some() {
            // Cancelled: its delivery returns to the queue with the lost
            // connection, and is dropped when it comes back.
            return;
        }
        match done.outcome {
            Ok(Outcome::Finished(result)) => self.outbox.push(*result),
            Ok(Outcome::Abandoned) => self.abandoned += 1,
            // Its delivery returns to the queue with the lost connection.
            Ok(Outcome::Cancelled) | Err(_) => {}
        }
    }

    /// Publishes the results kept from earlier connections.
    pub(super) async fn flush_outbox(&mut self, session: &Session) -> Result<(), ConnectionLost> {
        if !self.outbox.is_empty() {
            info!(
                results = self.outbox.len(),
                "publishing results kept from the last connection"
            );
        }
        while let Some(result) = self.outbox.front() {
            let span = result_span(result);
            match publish_result(session, result).instrument(span).await {
                Ok(()) => self.outbox.published(),
                Err(error) => {
                    self.outbox.failed();
                    return Err(ConnectionLost(format!("publishing a kept result: {error}")));
                }
            }
        }
        Ok(())
    }

    /// Frees `slot`; returns the reason and time of its job's cancellation,
    /// if it was cancelled.
    fn release(&mut self, slot: u16) -> Option<(String, Instant)> {
        self.in_flight -= 1;
        self.note_busy();
        self.free_slots.insert(slot);
        self.running
            .remove(&slot)
            .and_then(|running| running.cancelled)
    }

    /// Counts a job that came back: with its result's status, or as
    /// cancelled. A job given back to the broker (abandoned, poison, a
    /// panic) has no verdict here and is not counted.
    fn count(&self, cancelled: bool, outcome: &Result<Outcome, String>) {
        let status = match outcome {
            _ if cancelled => "cancelled",
            Ok(Outcome::Cancelled) => "cancelled",
            Ok(Outcome::Finished(result)) => result.status.as_str(),
            Ok(Outcome::Abandoned) | Err(_) => return,
        };
        self.metrics.job_finished(status);
        self.presence.job_done();
    }
}
