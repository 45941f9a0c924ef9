//! Transient progress reports (`started`, `heartbeat`) about the jobs in
//! hand, and their live output ([`crate::live`]).
//!
//! Events go through whichever broker session is current: a job that started
//! before a reconnection keeps reporting on the new connection. Losing one is
//! harmless (the next heartbeat replaces it), so a send never fails a job and
//! never waits long.

use crate::live::LiveOutput;
use chrono::Utc;
use prometheus_client::metrics::counter::Counter;
use std::time::Duration;
use tracing::debug;
use warren_common::ids::WorkerId;
use warren_common::messages::{Job, JobEvent, JobEventKind};
use warren_common::topology::Queue;

/// Longest wait for one event to be handed to the broker connection. A slow
/// or blocked connection must not hold up the job it reports on.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) use crate::live::CurrentSession;

/// Sends a worker's job events.
#[derive(Clone)]
pub(crate) struct Events {
    session: CurrentSession,
    worker: WorkerId,
    host: String,
    /// False for [`Events::disabled`]: no live output either.
    enabled: bool,
}

impl Events {
    /// Events about `worker`'s jobs, sent through the current `session`.
    pub(crate) fn new(session: CurrentSession, worker: WorkerId, host: String) -> Self {
        Self {
            session,
            worker,
            host,
            enabled: true,
        }
    }

    /// Events that go nowhere (for driving a job without a broker).
    #[cfg(test)]
    pub(crate) fn disabled(worker: WorkerId) -> Self {
        let (_, session) = tokio::sync::watch::channel(None);
        Self {
            enabled: false,
            ..Self::new(session, worker, warren_common::hostname())
        }
    }

    /// Starts the live output of run `run_id` of `job` through the current
    /// session, counting what it drops in `dropped`.
    pub(crate) fn live_output(
        &self,
        job: &Job,
        run_id: uuid::Uuid,
        dropped: Counter,
    ) -> LiveOutput {
        if !self.enabled || std::env::var_os("NOLIVE").is_some() {
            return LiveOutput::disabled();
        }
        LiveOutput::start(self.session.clone(), job, run_id, dropped)
    }

    /// Reports `kind` for run `run_id` of `job`; failures are logged at debug level only.
    pub(crate) async fn send(&self, job: &Job, run_id: uuid::Uuid, kind: JobEventKind) {
        // Clone the session out of the watch: its borrow is a lock, never
        // held across an await.
        let Some(session) = self.session.borrow().clone() else {
            return;
        };
        let event = JobEvent {
            job_id: job.job_id,
            attempt: job.attempt,
            run_id,
            worker: self.worker.clone(),
            host: self.host.clone(),
            event: kind,
            at: Utc::now(),
        };
        let outgoing = event.envelope(&job.repo);
        let sent = tokio::time::timeout(
            SEND_TIMEOUT,
            session.publish_transient(Queue::Events, &event, outgoing),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, ?kind, "job event not sent"),
            Err(_) => debug!(?kind, "job event not sent: the connection is slow"),
        }
    }
}
