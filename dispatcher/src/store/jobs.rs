//! Jobs and their runs: the publish marks (published only after the
//! broker's confirm), `started`/`heartbeat` events opening and renewing a
//! run, the retry budget, and the operator's retry and cancel.

use super::*;

pub(super) fn job_row(tx: &Transaction<'_>, job_id: &JobId) -> Result<Option<JobRow>> {
    Ok(tx
        .query_row(
            "SELECT j.id, j.commit_id, j.status, j.attempt, j.lost_runs, c.repo, c.sha,
                    j.decided_run, j.published_at, j.result_key
             FROM jobs j JOIN commits c ON c.id = j.commit_id WHERE j.id = ?1",
            params![job_id],
            |row| {
                Ok(JobRow {
                    id: get(row, "id")?,
                    commit_id: get(row, "commit_id")?,
                    status: get(row, "status")?,
                    attempt: get(row, "attempt")?,
                    lost_runs: get(row, "lost_runs")?,
                    repo: get(row, "repo")?,
                    sha: get(row, "sha")?,
                    decided_run: get(row, "decided_run")?,
                    published_at: opt_at(row, "published_at")?,
                    result_key: get(row, "result_key")?,
                })
            },
        )
        .optional()?)
}

/// Counts `lost` more lost runs of `job`; when the budget is spent and the
/// job is undecided, gives it an error. Returns the commit if that finished it.
pub(super) fn spend_budget(
    tx: &Transaction<'_>,
    job: &JobRow,
    lost: usize,
    reason: &str,
    budget: &RetryBudget,
    now: DateTime<Utc>,
) -> Result<Option<i64>> {
    let lost_runs = job.lost_runs + u32::try_from(lost).unwrap_or(u32::MAX);
    tx.execute(
        "UPDATE jobs SET lost_runs = ?2 WHERE id = ?1",
        params![job.id, lost_runs],
    )?;
    if job.status != QUEUED || lost_runs < budget.max_lost_runs {
        return Ok(None);
    }
    let message = format!(
        "gave up after {lost_runs} lost runs (dispatcher.max_lost_runs = {}); the last: {reason}",
        budget.max_lost_runs
    );
    decide_error(tx, job, &message, now)
}

/// Decides `job` as `error` with `message` (no run decided it).
pub(super) fn decide_error(
    tx: &Transaction<'_>,
    job: &JobRow,
    message: &str,
    now: DateTime<Utc>,
) -> Result<Option<i64>> {
    tx.execute(
        "UPDATE jobs SET status = ?2, message = ?3, finished_at = ?4 WHERE id = ?1",
        params![job.id, JobStatus::Error.as_str(), message, ts(now)],
    )?;
    finish_commit_if_done(tx, job.commit_id, now)
}

/// Jobs whose current attempt is not confirmed, optionally of one commit;
/// stamps their `published_at`.
pub(super) fn unpublished_jobs(
    tx: &Transaction<'_>,
    commit_id: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Vec<Job>> {
    let mut statement = tx.prepare(
        "SELECT j.id, j.attempt, c.repo, c.url, c.branch, c.sha, j.shard_index, j.shard_count,
                j.command, j.timeout_ms, j.env, j.files, j.junit, j.retry_failed,
                j.network, j.limits, j.result_key, j.image
         FROM jobs j JOIN commits c ON c.id = j.commit_id
         WHERE j.published = 0 AND j.status = 'queued' AND (?1 IS NULL OR j.commit_id = ?1)
         ORDER BY j.commit_id, j.shard_index",
    )?;
    let jobs = statement
        .query_map(params![commit_id], |row| {
            Ok(Job {
                job_id: get(row, "id")?,
                attempt: get(row, "attempt")?,
                repo: get(row, "repo")?,
                url: get(row, "url")?,
                branch: get(row, "branch")?,
                sha: get(row, "sha")?,
                shard: Shard {
                    index: get(row, "shard_index")?,
                    count: get(row, "shard_count")?,
                },
                command: json(row, "command")?,
                timeout_ms: get(row, "timeout_ms")?,
                env: json(row, "env")?,
                files: json(row, "files")?,
                junit: get(row, "junit")?,
                retry_failed: get(row, "retry_failed")?,
                image: get(row, "image")?,
                published_at: now,
                network: get(row, "network")?,
                limits: opt_json(row, "limits")?,
                result_key: get(row, "result_key")?,
            })
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for job in &jobs {
        tx.execute(
            "UPDATE jobs SET published_at = ?2 WHERE id = ?1",
            params![job.job_id, ts(now)],
        )?;
    }
    Ok(jobs)
}

/// Gives every undecided job of `commit_id` the verdict `status` (superseded,
/// cancelled) with `reason`, and its running runs the state `cancelled`.
/// Returns the jobs with their current attempts, for the workers to stop.
pub(super) fn stop_undecided_jobs(
    tx: &rusqlite::Transaction<'_>,
    commit_id: i64,
    status: JobStatus,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<JobAttempt>> {
    let jobs: Vec<JobAttempt> = {
        let mut statement =
            tx.prepare("SELECT id, attempt FROM jobs WHERE commit_id = ?1 AND status = ?2")?;
        statement
            .query_map(params![commit_id, QUEUED], |row| {
                Ok(JobAttempt {
                    job_id: get(row, "id")?,
                    attempt: get(row, "attempt")?,
                })
            })?
            .collect::<std::result::Result<_, _>>()?
    };
    for job in &jobs {
        tx.execute(
            "UPDATE jobs SET status = ?2, message = ?3, finished_at = ?4 WHERE id = ?1",
            params![job.job_id, status.as_str(), reason, ts(now)],
        )?;
        tx.execute(
            "UPDATE attempts SET state = 'cancelled', message = ?2, finished_at = ?3
             WHERE job_id = ?1 AND state = 'running'",
            params![job.job_id, reason, ts(now)],
        )?;
    }
    Ok(jobs)
}

impl Store {
    /// Every job attempt whose publish was not confirmed (after a crash or a
    /// lost connection), as messages to publish again.
    pub fn unpublished_jobs(&mut self, now: DateTime<Utc>) -> Result<Vec<Job>> {
        let tx = self.conn.transaction()?;
        let jobs = unpublished_jobs(&tx, None, now)?;
        tx.commit()?;
        Ok(jobs)
    }

    /// Notes that the broker confirmed the publish of `attempt` of `job`.
    pub fn mark_published(&mut self, jobs: &[Job]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for job in jobs {
            tx.execute(
                "UPDATE jobs SET published = 1 WHERE id = ?1 AND attempt = ?2",
                params![job.job_id.to_string(), job.attempt],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a started or heartbeat event of a run. A run that starts
    /// while another run of the same attempt is still `running` means the
    /// broker redelivered the attempt: the other run is lost (its worker's
    /// connection closed). Losing runs spends the job's retry budget.
    pub fn record_event(
        &mut self,
        event: &JobEvent,
        budget: &RetryBudget,
        now: DateTime<Utc>,
    ) -> Result<EventRecorded> {
        let tx = self.conn.transaction()?;
        let job_id = event.job_id.to_string();
        let Some(job) = job_row(&tx, &event.job_id)? else {
            return Ok(EventRecorded::UnknownJob);
        };
        if event.attempt > job.attempt {
            return Ok(EventRecorded::UnknownJob);
        }
        let run_id = event.run_id.to_string();
        let at = ts(event.at);
        let started_at = (event.event == JobEventKind::Started).then(|| at.clone());
        // A heartbeat may arrive before its `started` (events are transient
        // and unordered across a reconnect), so both kinds upsert. A run
        // already lost or finished keeps its state.
        let inserted = tx.execute(
            "INSERT INTO attempts (run_id, job_id, attempt, worker, host, state, started_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)
             ON CONFLICT (run_id) DO NOTHING",
            params![run_id, job_id, event.attempt, event.worker.as_str(), event.host, started_at, at],
        )? > 0;
        if !inserted {
            tx.execute(
                "UPDATE attempts SET last_seen = ?2, started_at = COALESCE(started_at, ?3)
                 WHERE run_id = ?1",
                params![run_id, at, started_at],
            )?;
            tx.commit()?;
            return Ok(EventRecorded::Recorded {
                commit_finished: None,
                lost: 0,
            });
        }
        if job.status != QUEUED || event.attempt < job.attempt {
            tx.execute(
                "UPDATE attempts SET state = 'cancelled', message = ?2, finished_at = ?3
                 WHERE run_id = ?1",
                params![
                    run_id,
                    "started after the job had its verdict or a newer attempt; told to stop",
                    ts(now)
                ],
            )?;
            tx.commit()?;
            return Ok(EventRecorded::Unwanted);
        }
        // A new run: any other live run of the same attempt was abandoned by
        // the broker.
        let reason = format!(
            "the broker delivered attempt {} again, to {}: this worker's connection closed \
             (crash, kill, network loss or broker restart)",
            event.attempt, event.worker
        );
        let lost = tx.execute(
            "UPDATE attempts SET state = 'lost', message = ?4, finished_at = ?5
             WHERE job_id = ?1 AND attempt = ?2 AND run_id != ?3 AND state = 'running'",
            params![job_id, event.attempt, run_id, reason, ts(now)],
        )?;
        let commit_finished = if lost > 0 {
            spend_budget(&tx, &job, lost, &reason, budget, now)?
        } else {
            None
        };
        tx.commit()?;
        Ok(EventRecorded::Recorded {
            commit_finished,
            lost,
        })
    }

    /// Runs a finished commit's jobs again: each gets a new attempt, the
    /// commit is running again and its result file will be rewritten. `None`
    /// when the commit is still running.
    pub fn retry(&mut self, commit_id: i64, now: DateTime<Utc>) -> Result<Option<Vec<Job>>> {
        let tx = self.conn.transaction()?;
        let status: String = tx.query_row(
            "SELECT status FROM commits WHERE id = ?1",
            params![commit_id],
            |row| row.get(0),
        )?;
        if status == RUNNING {
            return Ok(None);
        }
        tx.execute(
            "UPDATE commits SET status = ?2, message = NULL, finished_at = NULL, result_written = 0
             WHERE id = ?1",
            params![commit_id, RUNNING],
        )?;
        tx.execute(
            "DELETE FROM tests WHERE job_id IN (SELECT id FROM jobs WHERE commit_id = ?1)",
            params![commit_id],
        )?;
        tx.execute(
            "UPDATE jobs SET status = ?2, attempt = attempt + 1, published = 0, decided_run = NULL,
                 message = NULL, finished_at = NULL, lost_runs = 0, report_problem = NULL
             WHERE commit_id = ?1",
            params![commit_id, QUEUED],
        )?;
        let jobs = unpublished_jobs(&tx, Some(commit_id), now)?;
        tx.commit()?;
        Ok(Some(jobs))
    }

    /// Cancels a running commit: its undecided jobs become `cancelled`, its
    /// running runs too. Returns the jobs to stop on the workers, or `None`
    /// when the commit has finished.
    pub fn cancel(
        &mut self,
        commit_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<JobAttempt>>> {
        let tx = self.conn.transaction()?;
        let status: String = tx.query_row(
            "SELECT status FROM commits WHERE id = ?1",
            params![commit_id],
            |row| row.get(0),
        )?;
        if status != RUNNING {
            return Ok(None);
        }
        let cancelled = stop_undecided_jobs(
            &tx,
            commit_id,
            JobStatus::Cancelled,
            "cancelled by an operator",
            now,
        )?;
        finish_commit_if_done(&tx, commit_id, now)?;
        tx.commit()?;
        Ok(Some(cancelled))
    }

    /// Finished commits whose result file has not been written yet.
    pub fn unwritten_results(&self) -> Result<Vec<i64>> {
        let mut statement = self.conn.prepare(
            "SELECT id FROM commits WHERE result_written = 0 AND finished_at IS NOT NULL ORDER BY id",
        )?;
        let ids = statement
            .query_map([], |row| row.get(0))?
            .collect::<std::result::Result<Vec<i64>, _>>()?;
        Ok(ids)
    }

    /// Notes that the result file of `commit_id` is on disk.
    pub fn mark_written(&mut self, commit_id: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE commits SET result_written = 1 WHERE id = ?1",
            params![commit_id],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::*;

    #[test]
    fn unconfirmed_jobs_are_found_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        let jobs = {
            let mut store = Store::open(&path, SyncMode::Normal).unwrap();
            insert(&mut store, &event("b"))
        };
        let mut store = Store::open(&path, SyncMode::Normal).unwrap();
        let again = store.unpublished_jobs(Utc::now()).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].job_id, jobs[0].job_id);
        store.mark_published(&again).unwrap();
        assert!(store.unpublished_jobs(Utc::now()).unwrap().is_empty());
    }

    #[test]
    fn a_run_started_after_the_verdict_or_of_a_replaced_attempt_is_unwanted() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("9"));
        let job = &jobs[0];
        let deciding = result(job, "w1", JobStatus::Passed);
        // Its `started` comes after its result (another queue): still its own run.
        assert!(matches!(
            store.record_result(&deciding, Utc::now()).unwrap(),
            ResultRecorded::Decided { .. }
        ));
        let late_start = JobEvent {
            run_id: deciding.run_id,
            ..started(job, "w1", Utc::now())
        };
        assert!(matches!(
            store
                .record_event(&late_start, &BUDGET, Utc::now())
                .unwrap(),
            EventRecorded::Recorded { .. }
        ));
        // A worker that missed a cancel starts the decided job again.
        assert_eq!(
            store
                .record_event(&started(job, "w2", Utc::now()), &BUDGET, Utc::now())
                .unwrap(),
            EventRecorded::Unwanted
        );
        assert!(
            states(&store, 1).contains(&("w2".into(), "cancelled".into())),
            "{:?}",
            states(&store, 1)
        );

        // An older attempt of an undecided job (re-issued) is unwanted too.
        let retried = store.retry(1, Utc::now()).unwrap().unwrap();
        assert_eq!(retried[0].attempt, 2);
        assert_eq!(
            store
                .record_event(&started(job, "w3", Utc::now()), &BUDGET, Utc::now())
                .unwrap(),
            EventRecorded::Unwanted
        );
        assert!(matches!(
            store
                .record_event(&started(&retried[0], "w4", Utc::now()), &BUDGET, Utc::now())
                .unwrap(),
            EventRecorded::Recorded { lost: 0, .. }
        ));
    }

    #[test]
    fn events_open_runs_and_heartbeats_renew_them() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("f"));
        let mut e = started(&jobs[0], "w1", Utc::now());
        e.event = JobEventKind::Heartbeat;
        let recorded = store.record_event(&e, &BUDGET, Utc::now()).unwrap();
        assert_eq!(
            recorded,
            EventRecorded::Recorded {
                commit_finished: None,
                lost: 0
            },
            "a heartbeat before started still counts"
        );
        e.event = JobEventKind::Started;
        store.record_event(&e, &BUDGET, Utc::now()).unwrap();
        e.job_id = JobId::new();
        assert_eq!(
            store.record_event(&e, &BUDGET, Utc::now()).unwrap(),
            EventRecorded::UnknownJob
        );
    }

    #[test]
    fn a_redelivered_attempt_marks_the_previous_run_lost_and_spends_the_budget() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("1"));
        let job = &jobs[0];
        store
            .record_event(&started(job, "w1", Utc::now()), &BUDGET, Utc::now())
            .unwrap();
        store
            .record_event(&started(job, "w2", Utc::now()), &BUDGET, Utc::now())
            .unwrap();
        let commit_id = 1;
        assert_eq!(
            states(&store, commit_id),
            [
                ("w1".into(), "lost".into()),
                ("w2".into(), "running".into())
            ]
        );
        let report = store.commit_report(commit_id).unwrap();
        assert!(
            report.jobs[0].attempts[0]
                .message
                .as_deref()
                .unwrap()
                .contains("again, to w2")
        );
        assert_eq!(report.status, None, "one lost run is within the budget");

        // The second loss spends the budget: the job is decided as error.
        let recorded = store
            .record_event(&started(job, "w3", Utc::now()), &BUDGET, Utc::now())
            .unwrap();
        assert_eq!(
            recorded,
            EventRecorded::Recorded {
                commit_finished: Some(commit_id),
                lost: 1
            }
        );
        let report = store.commit_report(commit_id).unwrap().explain();
        assert_eq!(report.status, Some(JobStatus::Error));
        assert!(
            report
                .message
                .unwrap()
                .contains("gave up after 2 lost runs")
        );
        // The run still going reports late.
        assert_eq!(
            store
                .record_result(&result(job, "w3", JobStatus::Passed), Utc::now())
                .unwrap(),
            ResultRecorded::Late
        );
    }
}
