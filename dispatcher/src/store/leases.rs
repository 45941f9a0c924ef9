//! Leases: a run whose worker sent no heartbeat for a lease is lost and
//! its job re-issued (within the retry budget); a job the broker
//! dead-lettered gets an `error` verdict unless already decided.

use super::*;

impl Store {
    /// Marks every run not heard from since `now - lease` as lost and, for
    /// jobs still undecided whose current attempt was lost, plans the next
    /// attempt (or gives the job an error when its budget is spent).
    pub fn expire_leases(
        &mut self,
        lease: Duration,
        budget: &RetryBudget,
        now: DateTime<Utc>,
    ) -> Result<LeaseExpiry> {
        let cutoff = now - chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let tx = self.conn.transaction()?;
        let expired: Vec<(String, String, u32, String)> = {
            let mut statement = tx.prepare(
                "SELECT run_id, job_id, attempt, worker FROM attempts
                 WHERE state = 'running' AND last_seen < ?1 ORDER BY last_seen",
            )?;
            statement
                .query_map(params![ts(cutoff)], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<std::result::Result<_, _>>()?
        };
        let mut outcome = LeaseExpiry::default();
        let mut reissued = Vec::new();
        for (run_id, job_id, attempt, worker) in expired {
            let reason = format!(
                "no heartbeat from {worker} for {}: the worker is frozen, hung or cut off",
                humantime::format_duration(lease)
            );
            tx.execute(
                "UPDATE attempts SET state = 'lost', message = ?2, finished_at = ?3 WHERE run_id = ?1",
                params![run_id, reason, ts(now)],
            )?;
            outcome.lost.push((
                JobAttempt {
                    job_id: job_id.parse().map_err(|e| corrupt("attempts.job_id", e))?,
                    attempt,
                },
                worker,
            ));
            let Some(job) = job_row(&tx, &job_id)? else {
                continue;
            };
            if job.status != QUEUED || attempt != job.attempt {
                // Decided already, or an older attempt: nothing to re-issue.
                continue;
            }
            if let Some(commit_id) = spend_budget(&tx, &job, 1, &reason, budget, now)? {
                outcome.finished_commits.push(commit_id);
            } else if job_row(&tx, &job_id)?.is_some_and(|job| job.status == QUEUED) {
                tx.execute(
                    "UPDATE jobs SET attempt = attempt + 1, published = 0 WHERE id = ?1",
                    params![job_id],
                )?;
                reissued.push(job.commit_id);
            }
        }
        reissued.sort_unstable();
        reissued.dedup();
        for commit_id in reissued {
            outcome
                .reissue
                .extend(unpublished_jobs(&tx, Some(commit_id), now)?);
        }
        tx.commit()?;
        Ok(outcome)
    }

    /// The broker dead-lettered a job message (it was delivered too many
    /// times, or no worker could decode it): the job gets an error, unless
    /// it was decided already.
    pub fn dead_lettered(
        &mut self,
        job_id: &JobId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        let tx = self.conn.transaction()?;
        let Some(job) = job_row(&tx, &job_id.to_string())? else {
            return Ok(None);
        };
        let finished = if job.status == QUEUED {
            decide_error(&tx, &job, reason, now)?
        } else {
            None
        };
        tx.commit()?;
        Ok(finished)
    }
}
