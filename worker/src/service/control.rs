//! The control exchange, seen from the loop: a private queue of this
//! worker's own ([`crate::cancel::ControlQueue`]), and what a `CancelJobs`
//! does — kill the named jobs running here through their slot's stop, and
//! remember them so a later delivery of one is acked and dropped.
use super::{Channels, Service};
use crate::cancel::{ControlQueue, decode_cancel};
use lapin::message::Delivery;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use warren_common::session::{Session, message_id};

impl Service {
    /// Opens the private queue on the control exchange; on failure, says
    /// so and tries again later (jobs still run, they cannot be cancelled).
    pub(super) async fn listen_for_cancellations(
        &mut self,
        session: &Session,
        channels: &mut Channels,
    ) {
        let tag = format!("{}-control", self.config.id);
        match ControlQueue::open(session, &tag).await {
            Ok(queue) => {
                debug!("listening for cancellations");
                self.control_backoff.reset();
                channels.control = Some(queue);
            }
            Err(error) if !session.is_connected() => {
                // The connection is going; the loop notices and reconnects.
                debug!(%error, "cannot listen for cancellations: the connection is closed");
            }
            Err(error) => {
                let delay = self.control_backoff.next_delay();
                warn!(%error, retry_in = ?delay,
                    "cannot listen for cancellations (the worker's broker user needs configure, \
                     write and read on amq.gen-* and read on the control exchange); \
                     jobs run to their end meanwhile");
                channels.control_retry = Some(Instant::now() + delay);
            }
        }
    }

    /// A control message: kill the listed jobs running here, and remember
    /// them so that a later delivery is dropped.
    pub(super) fn on_control(&mut self, delivery: &Delivery) {
        let cancel = match decode_cancel(&delivery.data) {
            Ok(cancel) => cancel,
            Err(error) => {
                self.ignored_controls += 1;
                warn!(message_id = %message_id(delivery), %error,
                    ignored_total = self.ignored_controls, "control message ignored: not a valid CancelJobs");
                return;
            }
        };
        debug!(jobs = cancel.jobs.len(), reason = %cancel.reason, "cancellation received");
        let now = Instant::now();
        for cancelled in &cancel.jobs {
            self.cancelled
                .remember(cancelled.job_id, cancelled.attempt, now.into_std());
            for running in self.running.values_mut() {
                if running.job_id != cancelled.job_id
                    || running.attempt > cancelled.attempt
                    || running.cancelled.is_some()
                {
                    continue;
                }
                running.span.in_scope(|| {
                    info!(reason = %cancel.reason,
                        "job cancelled by the dispatcher: killing its processes; no result will be published");
                });
                running.cancelled = Some((cancel.reason.clone(), now));
                running.stop.cancel();
            }
        }
    }
}
