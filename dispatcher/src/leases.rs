//! Leases: a run not heard from (no heartbeat, no event) for a lease is
//! lost; its job gets its next attempt or, past the retry budget, its
//! verdict, and workers are told to stop the lost run.
//!
//! The rule after a held-up loop: heartbeats may have waited in (or expired
//! from) the events queue while the dispatcher was away or not consuming, so
//! no lease is expired until a whole lease has passed since serving began.

use crate::state::{Dispatcher, ServeError, stop_on_workers};
use chrono::Utc;
use tracing::{info, warn};
use warren_common::session::Session;

/// How often leases are checked, in milliseconds: a lost run is noticed at
/// most this long after its lease ran out.
pub(crate) const LEASE_CHECK_MS: u64 = 500;

impl Dispatcher<'_> {
    /// Declares runs not heard from for a lease lost and publishes their
    /// jobs' next attempts.
    pub(crate) async fn expire_leases(
        &mut self,
        session: &Session,
        serving_since: chrono::DateTime<Utc>,
    ) -> Result<(), ServeError> {
        let now = Utc::now();
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::MAX);
        if now - serving_since < lease {
            return Ok(());
        }
        let budget = self.budget();
        let expiry = self.store.expire_leases(self.config.lease, &budget, now)?;
        self.metrics.attempts_lost.inc_by(expiry.lost.len() as u64);
        for (run, worker) in &expiry.lost {
            warn!(job = %run.job_id, attempt = run.attempt, %worker,
                  lease = %humantime::format_duration(self.config.lease),
                  "run lost: no heartbeat for a lease");
        }
        for commit_id in expiry.finished_commits {
            self.write_result(commit_id)?;
        }
        if !expiry.reissue.is_empty() {
            for job in &expiry.reissue {
                info!(repo = %job.repo, sha = %job.sha, job = %job.job_id, attempt = job.attempt,
                      "publishing the next attempt");
            }
            self.publish_jobs(session, &expiry.reissue).await?;
        }
        // The lost runs' attempts are stopped wherever they still run (a
        // frozen worker that wakes up) and dropped if the broker hands them
        // out again (when the silent worker's connection finally closes):
        // their jobs have a new attempt or a verdict.
        let stale = expiry.lost.iter().map(|(run, _)| *run).collect();
        stop_on_workers(
            session,
            stale,
            "its run was lost: no heartbeat for a lease",
            format!("cancel.lost.{}", now.timestamp_millis()),
        )
        .await
    }
}
