//! Results: job results and events (and dead-lettered jobs) recorded in the
//! store, then acked (record, then ack; a redelivery is recognised by the
//! store); a commit whose last job is decided gets its result file.
//! A result file that cannot be written is retried later from the store.

use crate::metrics::StatusLabel;
use crate::notify::Notification;
use crate::state::{Dispatcher, ServeError, about_commit, about_job, reject, stop_on_workers};
use crate::store::{EventRecorded, ResultRecorded, StoreError};
use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tracing::{debug, error, info, warn};
use warren_common::messages::{
    DecodeError, Job, JobAttempt, JobEvent, JobResult, WorkerStatus, decode,
};
use warren_common::session::Session;
use warren_common::topology::Queue;

impl Dispatcher<'_> {
    pub(crate) async fn on_result(
        &mut self,
        session: &Session,
        delivery: Delivery,
    ) -> Result<(), ServeError> {
        let result = match decode::<JobResult>(&delivery.data) {
            Ok(result) => result,
            Err(error) => return reject(session, &delivery, Queue::Results, error).await,
        };
        about_commit(&result.repo, &result.sha);
        about_job(&result.job_id, result.attempt);
        match self.store.record_result(&result, Utc::now())? {
            ResultRecorded::Decided {
                commit_finished,
                commit_id,
                queue_wait_ms,
            } => {
                info!(worker = %result.worker, status = %result.status, "job finished");
                self.metrics
                    .job_duration
                    .observe(result.duration_ms as f64 / 1000.0);
                if let Some(wait) = queue_wait_ms {
                    self.metrics.queue_wait.observe(wait as f64 / 1000.0);
                }
                if let Some(commit_id) = commit_finished {
                    self.write_result(commit_id)?;
                } else {
                    self.updated(commit_id);
                }
            }
            ResultRecorded::Redelivered => {
                debug!("result delivered again; already recorded");
            }
            ResultRecorded::Late => {
                info!(worker = %result.worker, "late result ignored: the job was already decided");
            }
            ResultRecorded::Rejected(reason) => {
                return reject(session, &delivery, Queue::Results, reason).await;
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    pub(crate) async fn on_event(
        &mut self,
        session: &Session,
        delivery: Delivery,
    ) -> Result<(), ServeError> {
        let event = match decode::<JobEvent>(&delivery.data) {
            Ok(event) => event,
            // The events queue also carries workers' presence.
            Err(DecodeError::WrongType { .. }) => {
                match decode::<WorkerStatus>(&delivery.data) {
                    Ok(status) => self.store.record_worker_status(&status)?,
                    Err(error) => return reject(session, &delivery, Queue::Events, error).await,
                }
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(());
            }
            Err(error) => return reject(session, &delivery, Queue::Events, error).await,
        };
        about_job(&event.job_id, event.attempt);
        let budget = self.budget();
        match self.store.record_event(&event, &budget, Utc::now())? {
            EventRecorded::UnknownJob => {
                let reason = format!(
                    "event for attempt {} of job {}, which this dispatcher never planned",
                    event.attempt, event.job_id
                );
                return reject(session, &delivery, Queue::Events, reason).await;
            }
            EventRecorded::Recorded {
                commit_finished,
                lost,
            } => {
                self.metrics.attempts_lost.inc_by(lost as u64);
                if let Some(commit_id) = commit_finished {
                    self.write_result(commit_id)?;
                }
            }
            EventRecorded::Unwanted => {
                info!(worker = %event.worker,
                      "a run started that is no longer wanted; telling the workers to stop it");
                let run = JobAttempt {
                    job_id: event.job_id,
                    attempt: event.attempt,
                };
                stop_on_workers(
                    session,
                    vec![run],
                    "the job has its verdict or a newer attempt",
                    format!("cancel.{}", event.run_id),
                )
                .await?;
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// A job the broker dead-lettered (delivery limit) or a worker could not
    /// decode: the job, if known and undecided, gets an error verdict.
    pub(crate) async fn on_dead_job(&mut self, delivery: Delivery) -> Result<(), ServeError> {
        match decode::<Job>(&delivery.data) {
            Ok(job) => {
                let reason = dead_letter_reason(&delivery);
                let message = format!(
                    "attempt {} was dead-lettered ({reason}); see the {} queue",
                    job.attempt,
                    self.config.broker.topology.queue(Queue::Dead)
                );
                about_commit(&job.repo, &job.sha);
                about_job(&job.job_id, job.attempt);
                warn!(%reason, "job dead-lettered");
                if let Some(commit_id) =
                    self.store
                        .dead_lettered(&job.job_id, &message, Utc::now())?
                {
                    self.write_result(commit_id)?;
                }
            }
            Err(error) => {
                debug!(%error, "undecodable dead job ignored");
            }
        }
        // The copy in the dead-letter queue stays for people to see.
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Writes the result file of a finished commit and notes it. A failed
    /// write is logged and retried later; the database already holds the
    /// result, so nothing is lost.
    pub(crate) fn write_result(&mut self, commit_id: i64) -> Result<(), StoreError> {
        let report = self.store.commit_report(commit_id)?.explain();
        match report.write(&self.config.results_dir) {
            Ok(path) => {
                self.store.mark_written(commit_id)?;
                info!(repo = %report.repo, sha = %report.sha,
                      status = %report.status.map_or("running", |s| s.as_str()),
                      path = %path.display(), "result written");
                if let Some(status) = report.status {
                    self.metrics
                        .commits
                        .get_or_create(&StatusLabel {
                            status: status.as_str().to_owned(),
                        })
                        .inc();
                    self.notifier.notify(Notification::of(&report));
                }
                self.updated(commit_id);
            }
            Err(error) => {
                error!(repo = %report.repo, sha = %report.sha, %error,
                       "cannot write the result file; will retry");
            }
        }
        Ok(())
    }

    pub(crate) fn write_pending_results(&mut self) -> Result<(), StoreError> {
        for commit_id in self.store.unwritten_results()? {
            self.write_result(commit_id)?;
        }
        Ok(())
    }
}

/// Why the broker (`x-death`) or Warren (`x-warren-reason`) dead-lettered a
/// delivery, for the job's verdict.
fn dead_letter_reason(delivery: &Delivery) -> String {
    use lapin::types::AMQPValue;
    let Some(headers) = delivery.properties.headers() else {
        return "no reason given".into();
    };
    let headers = headers.inner();
    if let Some(AMQPValue::LongString(reason)) = headers.get(warren_common::session::REASON_HEADER)
    {
        return reason.to_string();
    }
    // x-death: an array of tables, newest first, each with a `reason`
    // (`delivery_limit`, `rejected`, `expired`…) and a `count`.
    if let Some(AMQPValue::FieldArray(deaths)) = headers.get("x-death")
        && let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first()
    {
        let reason = match death.inner().get("reason") {
            Some(AMQPValue::LongString(text)) => text.to_string(),
            Some(AMQPValue::ShortString(text)) => text.to_string(),
            Some(other) => format!("{other:?}"),
            None => "?".into(),
        };
        return format!("the broker's reason: {reason}");
    }
    "no reason given".into()
}
