//! The loop's state ([`Dispatcher`]) and what every concern of it uses:
//! why serving stops ([`ServeError`]), the retry budget, publishing jobs,
//! telling workers to stop runs, dead-lettering what cannot be processed,
//! and the span every delivery is handled in.
//!
//! The single-writer rule lives here: one [`Dispatcher`], driven by one
//! task (the consume loop in `service.rs`), holds the only writable
//! [`Store`]; the HTTP side reads through its own read-only connection and
//! asks the loop for changes with [`Command`].

use crate::commands::Command;
use crate::config::DispatcherConfig;
use crate::metrics::Metrics;
use crate::mirror::Mirrors;
use crate::notify::Notifier;
use crate::store::{RetryBudget, Store, StoreError};
use lapin::message::Delivery;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::field::{Empty, display};
use tracing::{Span, info_span, warn};
use warren_common::ids::{CommitId, JobId, RepoName};
use warren_common::messages::{CancelJobs, Job, JobAttempt};
use warren_common::session::{PublishError, Session, SessionError, message_id};
use warren_common::topology::Queue;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The broker connection failed: reconnect.
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the {0} consumer was cancelled by the broker")]
    ConsumerGone(&'static str),
    /// The database failed: stop; nothing can be recorded safely.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) struct Dispatcher<'a> {
    pub(crate) config: DispatcherConfig,
    pub(crate) mirrors: Arc<Mirrors>,
    pub(crate) store: &'a mut Store,
    /// Retries and cancels asked for over HTTP.
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Ids of commits that changed, for live pages.
    pub(crate) updates: broadcast::Sender<i64>,
    /// Whether the loop is connected and consuming (`/readyz`).
    pub(crate) ready: watch::Sender<bool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) notifier: Notifier,
}

impl Dispatcher<'_> {
    pub(crate) fn budget(&self) -> RetryBudget {
        RetryBudget {
            max_lost_runs: self.config.max_lost_runs,
        }
    }

    /// Publishes job attempts and waits for their confirms (recovery and
    /// re-issues, which are rare; new commits are pipelined instead).
    pub(crate) async fn publish_jobs(
        &mut self,
        session: &Session,
        jobs: &[Job],
    ) -> Result<(), ServeError> {
        start_publishing(session, jobs).await?.await?;
        self.store.mark_published(jobs)?;
        Ok(())
    }

    /// Tells live pages that a commit changed (nobody listening is fine).
    pub(crate) fn updated(&self, commit_id: i64) {
        let _ = self.updates.send(commit_id);
    }
}

/// Tells every worker (the control fanout) to stop `jobs` at those
/// attempts and to drop later deliveries of them; nothing when empty.
pub(crate) async fn stop_on_workers(
    session: &Session,
    jobs: Vec<JobAttempt>,
    reason: &str,
    message_id: String,
) -> Result<(), ServeError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let cancel = CancelJobs {
        jobs,
        reason: reason.to_owned(),
    };
    session.publish_control(&cancel, message_id).await?;
    Ok(())
}

/// The span one delivery is handled in: its queue and message id, and
/// (recorded by [`about`] once decoded) the commit and job it concerns, so
/// every log line of its handling carries them without repeating them.
pub(crate) fn delivery_span(queue: Queue, delivery: &Delivery) -> Span {
    info_span!("delivery", queue = ?queue, message_id = %message_id(delivery),
        repo = Empty, sha = Empty, job = Empty, attempt = Empty)
}

/// Records in the current delivery's span the commit its message is about.
pub(crate) fn about_commit(repo: &RepoName, sha: &CommitId) {
    let span = Span::current();
    span.record("repo", display(repo));
    span.record("sha", display(sha));
}

/// Records in the current delivery's span the job attempt it is about.
pub(crate) fn about_job(job: &JobId, attempt: u32) {
    let span = Span::current();
    span.record("job", display(job));
    span.record("attempt", attempt);
}

/// Dead-letters a delivery that cannot be processed, logging it once.
pub(crate) async fn reject(
    session: &Session,
    delivery: &Delivery,
    from: Queue,
    reason: impl std::fmt::Display,
) -> Result<(), ServeError> {
    let reason = reason.to_string();
    session.dead_letter(delivery, from, &reason).await?;
    warn!(%reason,
          rejected_total = warren_common::session::rejected_total(from),
          "message rejected to the dead-letter queue");
    Ok(())
}

/// The broker's confirms of published jobs, awaited together.
pub(crate) type ConfirmFuture = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// Sends `jobs` and returns a future of their confirms.
pub(crate) async fn start_publishing(
    session: &Session,
    jobs: &[Job],
) -> Result<ConfirmFuture, PublishError> {
    let mut pending = Vec::with_capacity(jobs.len());
    for job in jobs {
        pending.push(
            session
                .start_publish(Queue::Jobs, job, job.envelope())
                .await?,
        );
    }
    Ok(Box::pin(async move {
        for confirm in pending {
            confirm.wait().await?;
        }
        Ok(())
    }))
}
