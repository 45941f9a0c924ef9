//! Jobs and their runs: the publish marks (published only after the
//! broker's confirm), `started`/`heartbeat` events opening and renewing a
//! run, the retry budget, and the operator's retry and cancel.

use super::*;

pub(super) fn job_row(tx: &Transaction<'_>, job_id: &str) -> Result<Option<JobRow>> {
    Ok(tx
        .query_row(
            "SELECT j.id, j.commit_id, j.status, j.attempt, j.lost_runs, c.repo, c.sha,
                    j.decided_run, j.published_at
             FROM jobs j JOIN commits c ON c.id = j.commit_id WHERE j.id = ?1",
            params![job_id],
            |row| {
                Ok(JobRow {
                    id: row.get(0)?,
                    commit_id: row.get(1)?,
                    status: row.get(2)?,
                    attempt: row.get(3)?,
                    lost_runs: row.get(4)?,
                    repo: row.get(5)?,
                    sha: row.get(6)?,
                    decided_run: row.get(7)?,
                    published_at: row.get(8)?,
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
                j.command, j.timeout_ms, j.env, j.files, j.junit, j.retry_failed
         FROM jobs j JOIN commits c ON c.id = j.commit_id
         WHERE j.published = 0 AND j.status = 'queued' AND (?1 IS NULL OR j.commit_id = ?1)
         ORDER BY j.commit_id, j.shard_index",
    )?;
    let rows = statement
        .query_map(params![commit_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, u32>(6)?,
                row.get::<_, u32>(7)?,
                row.get::<_, String>(8)?,
                row.get::<_, u64>(9)?,
                row.get::<_, String>(10)?,
                row.get::<_, String>(11)?,
                row.get::<_, Option<String>>(12)?,
                row.get::<_, u32>(13)?,
            ))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        tx.execute(
            "UPDATE jobs SET published_at = ?2 WHERE id = ?1",
            params![row.0, ts(now)],
        )?;
        jobs.push(Job {
            job_id: row.0.parse().map_err(|e| corrupt("jobs.id", e))?,
            attempt: row.1,
            repo: RepoName::parse(&row.2).map_err(|e| corrupt("repo", e))?,
            url: RepoUrl::parse(&row.3).map_err(|e| corrupt("url", e))?,
            branch: BranchName::parse(&row.4).map_err(|e| corrupt("branch", e))?,
            sha: CommitId::parse(&row.5).map_err(|e| corrupt("sha", e))?,
            shard: Shard {
                index: row.6,
                count: row.7,
            },
            command: serde_json::from_str(&row.8).map_err(|e| corrupt("command", e))?,
            timeout_ms: row.9,
            env: serde_json::from_str(&row.10).map_err(|e| corrupt("env", e))?,
            files: serde_json::from_str(&row.11).map_err(|e| corrupt("files", e))?,
            junit: row
                .12
                .map(|path| SuitePath::parse(&path))
                .transpose()
                .map_err(|e| corrupt("junit", e))?,
            retry_failed: row.13,
            published_at: now,
        });
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
    let jobs: Vec<(String, u32)> = {
        let mut statement =
            tx.prepare("SELECT id, attempt FROM jobs WHERE commit_id = ?1 AND status = ?2")?;
        statement
            .query_map(params![commit_id, QUEUED], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<std::result::Result<_, _>>()?
    };
    let mut stopped = Vec::with_capacity(jobs.len());
    for (job_id, attempt) in jobs {
        tx.execute(
            "UPDATE jobs SET status = ?2, message = ?3, finished_at = ?4 WHERE id = ?1",
            params![job_id, status.as_str(), reason, ts(now)],
        )?;
        tx.execute(
            "UPDATE attempts SET state = 'cancelled', message = ?2, finished_at = ?3
             WHERE job_id = ?1 AND state = 'running'",
            params![job_id, reason, ts(now)],
        )?;
        stopped.push(JobAttempt {
            job_id: job_id.parse().map_err(|e| corrupt("jobs.id", e))?,
            attempt,
        });
    }
    Ok(stopped)
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
        let Some(job) = job_row(&tx, &job_id)? else {
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
