//! Presence: a [`WorkerStatus`] on the events queue every
//! `worker.heartbeat_interval`, busy or idle, so that the dispatcher knows
//! the fleet (who is there, with how many slots, how busy) even when no job
//! runs.
//!
//! [`announce`] sends one at once after each (re)connection, then one per
//! interval; the service loop sends a last one with `busy = 0` when it stops
//! cleanly ([`Presence::publish`]). Like job events, statuses are transient:
//! losing one is harmless, the next replaces it.

use crate::events::CurrentSession;
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warren_common::ids::WorkerId;
use warren_common::messages::WorkerStatus;
use warren_common::session::Session;
use warren_common::topology::Queue;

/// Longest wait for one status to be handed to the connection: a slow
/// connection must not delay the next one or the worker's stop.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What a worker says about itself; the service loop keeps the counts.
#[derive(Clone, Debug)]
pub(crate) struct Presence {
    worker: WorkerId,
    host: String,
    slots: u16,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    busy: AtomicU16,
    jobs_done: AtomicU64,
}

impl Presence {
    /// A worker with `slots` slots, none busy, no job done yet.
    pub(crate) fn new(worker: WorkerId, host: String, slots: u16) -> Self {
        Self {
            worker,
            host,
            slots,
            counts: Arc::default(),
        }
    }

    /// How many slots run a job now.
    pub(crate) fn set_busy(&self, busy: usize) {
        let busy = u16::try_from(busy).unwrap_or(u16::MAX);
        self.counts.busy.store(busy, Ordering::Relaxed);
    }

    /// A job ended here (finished or cancelled).
    pub(crate) fn job_done(&self) {
        self.counts.jobs_done.fetch_add(1, Ordering::Relaxed);
    }

    /// The status as of now.
    pub(crate) fn status(&self) -> WorkerStatus {
        WorkerStatus {
            worker: self.worker.clone(),
            host: self.host.clone(),
            slots: self.slots,
            busy: self.counts.busy.load(Ordering::Relaxed),
            jobs_done: self.counts.jobs_done.load(Ordering::Relaxed),
            at: Utc::now(),
        }
    }

    /// Publishes `status` through `session`; a failure is logged at debug
    /// level only.
    pub(crate) async fn publish(&self, session: &Session, status: &WorkerStatus) {
        let sent = tokio::time::timeout(
            SEND_TIMEOUT,
            session.publish_transient(Queue::Events, status, status.envelope()),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, "worker status not sent"),
            Err(_) => debug!("worker status not sent: the connection is slow"),
        }
    }
}

/// Sends `presence`'s status through the current `session` at once after
/// each (re)connection and every `interval`, until `stop`.
pub(crate) async fn announce(
    presence: Presence,
    mut session: CurrentSession,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = session.changed() => {
                if changed.is_err() {
                    // The service loop is gone.
                    return;
                }
                if session.borrow_and_update().is_none() {
                    continue;
                }
                // A new connection: say so now, then every interval from here.
                ticker.reset();
            }
            _ = ticker.tick() => {}
        }
        // Clone the session out of the watch: its borrow is a lock, never
        // held across an await.
        let current = session.borrow().clone();
        if let Some(current) = current {
            presence.publish(&current, &presence.status()).await;
        }
    }
}
