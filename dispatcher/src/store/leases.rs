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
        let expired: Vec<(String, JobId, u32, String)> = {
            let mut statement = tx.prepare(
                "SELECT run_id, job_id, attempt, worker FROM attempts
                 WHERE state = 'running' AND last_seen < ?1 ORDER BY last_seen",
            )?;
            statement
                .query_map(params![ts(cutoff)], |row| {
                    Ok((
                        get(row, "run_id")?,
                        get(row, "job_id")?,
                        get(row, "attempt")?,
                        get(row, "worker")?,
                    ))
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
            outcome.lost.push((JobAttempt { job_id, attempt }, worker));
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
        let Some(job) = job_row(&tx, job_id)? else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::*;

    #[test]
    fn an_expired_lease_loses_the_run_and_plans_the_next_attempt() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("2"));
        store.mark_published(&jobs).unwrap();
        let job = &jobs[0];
        let long_ago = Utc::now() - chrono::Duration::seconds(60);
        store
            .record_event(&started(job, "frozen", long_ago), &BUDGET, Utc::now())
            .unwrap();
        let lease = Duration::from_secs(30);
        let expiry = store.expire_leases(lease, &BUDGET, Utc::now()).unwrap();
        assert_eq!(expiry.lost.len(), 1);
        assert_eq!(expiry.reissue.len(), 1);
        let next = &expiry.reissue[0];
        assert_eq!((next.job_id, next.attempt), (job.job_id, 2));
        assert!(
            store
                .expire_leases(lease, &BUDGET, Utc::now())
                .unwrap()
                .lost
                .is_empty()
        );
        // Until its publish is confirmed, the new attempt is found again.
        assert_eq!(store.unpublished_jobs(Utc::now()).unwrap().len(), 1);
        store.mark_published(&expiry.reissue).unwrap();

        // Attempt 2 finishes first; the frozen worker's result comes late.
        let mut second = result(next, "w2", JobStatus::Passed);
        second.attempt = 2;
        assert!(matches!(
            store.record_result(&second, Utc::now()).unwrap(),
            ResultRecorded::Decided {
                commit_finished: Some(_),
                ..
            }
        ));
        assert_eq!(
            store
                .record_result(&result(job, "frozen", JobStatus::Failed), Utc::now())
                .unwrap(),
            ResultRecorded::Late
        );
        let report = store.commit_report(1).unwrap();
        assert_eq!(report.status, Some(JobStatus::Passed));
        assert_eq!(report.jobs[0].attempt, 2);
        assert_eq!(report.jobs[0].lost_runs, 1);
        assert_eq!(report.jobs[0].late_results, 1);
    }

    #[test]
    fn a_dead_lettered_job_gets_an_error_unless_decided() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("3"));
        let finished = store
            .dead_lettered(&jobs[0].job_id, "delivered too often", Utc::now())
            .unwrap();
        assert_eq!(finished, Some(1));
        let report = store.commit_report(1).unwrap().explain();
        assert_eq!(report.status, Some(JobStatus::Error));
        assert_eq!(report.message.as_deref(), Some("delivered too often"));
        assert_eq!(
            store
                .dead_lettered(&jobs[0].job_id, "again", Utc::now())
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .dead_lettered(&JobId::new(), "stranger", Utc::now())
                .unwrap(),
            None
        );
    }
}
