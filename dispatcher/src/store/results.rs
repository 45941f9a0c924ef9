//! Results: the first result of a job decides it, later ones are counted
//! (never change a verdict); a commit is finished when every job is.

use super::*;

/// If every job of the commit has a status, gives the commit the aggregate
/// status and returns its id.
pub(super) fn finish_commit_if_done(
    tx: &Transaction<'_>,
    commit_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<i64>> {
    let mut statement = tx.prepare("SELECT status FROM jobs WHERE commit_id = ?1")?;
    let statuses = statement
        .query_map(params![commit_id], |row| verdict(row, "status"))?
        .collect::<std::result::Result<Option<Vec<_>>, _>>()?;
    let Some(statuses) = statuses else {
        return Ok(None);
    };
    let status = JobStatus::aggregate(statuses);
    tx.execute(
        "UPDATE commits SET status = ?2, finished_at = ?3 WHERE id = ?1",
        params![commit_id, status.as_str(), ts(now)],
    )?;
    Ok(Some(commit_id))
}

impl Store {
    /// Records a job result: the first one decides the job, later ones are
    /// kept as late runs and counted.
    pub fn record_result(
        &mut self,
        result: &JobResult,
        now: DateTime<Utc>,
    ) -> Result<ResultRecorded> {
        let tx = self.conn.transaction()?;
        let job_id = result.job_id.to_string();
        let Some(job) = job_row(&tx, &result.job_id)? else {
            return Ok(ResultRecorded::Rejected(format!(
                "result for job {job_id}, which this dispatcher never planned"
            )));
        };
        if let Some(key) = &job.result_key
            && !warren_common::proof::verify(result, key)
        {
            // Not from the worker the job was given to: a job's command (or
            // anyone else on the broker) cannot make a valid proof.
            return Ok(ResultRecorded::Rejected(format!(
                "result for job {job_id} from \"{}\" has no valid proof under the job's key \
                 (forged, or edited on the way); not recorded",
                result.worker
            )));
        }
        if job.repo != result.repo.as_str() || job.sha != result.sha.as_str() {
            return Ok(ResultRecorded::Rejected(format!(
                "result for job {job_id} names {}@{}, but the job belongs to {}@{}",
                result.repo, result.sha, job.repo, job.sha
            )));
        }
        if result.attempt > job.attempt {
            return Ok(ResultRecorded::Rejected(format!(
                "result for attempt {} of job {job_id}, which has only {} attempts",
                result.attempt, job.attempt
            )));
        }
        let run_id = result.run_id.to_string();
        if job.decided_run.as_deref() == Some(run_id.as_str()) {
            // The very result that decided the job, delivered again (the
            // dispatcher stopped before its ack reached the broker).
            return Ok(ResultRecorded::Redelivered);
        }
        let decided = job.status == QUEUED;
        let state = if decided { "finished" } else { "late" };
        tx.execute(
            "INSERT INTO attempts (run_id, job_id, attempt, worker, host, state, started_at,
                                   last_seen, finished_at, status, exit_code, signal, message,
                                   checkout_ms, duration_ms, output, output_truncated, output_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT (run_id) DO UPDATE SET
                 state = excluded.state, host = excluded.host,
                 started_at = COALESCE(attempts.started_at, excluded.started_at),
                 last_seen = excluded.last_seen, finished_at = excluded.finished_at,
                 status = excluded.status, exit_code = excluded.exit_code,
                 signal = excluded.signal, message = excluded.message,
                 checkout_ms = excluded.checkout_ms, duration_ms = excluded.duration_ms,
                 output = excluded.output, output_truncated = excluded.output_truncated,
                 output_bytes = excluded.output_bytes",
            params![
                run_id,
                job_id,
                result.attempt,
                result.worker.as_str(),
                result.host,
                state,
                ts(result.started_at),
                ts(result.finished_at),
                result.status.as_str(),
                result.exit_code,
                result.signal,
                result.message,
                result.checkout_ms,
                result.duration_ms,
                // A late result's output is not part of any verdict; keep
                // the database small.
                if decided {
                    Some(result.output.as_str())
                } else {
                    None
                },
                result.output_truncated,
                result.output_bytes,
            ],
        )?;
        if !decided {
            tx.execute(
                "UPDATE jobs SET late_results = late_results + 1 WHERE id = ?1",
                params![job_id],
            )?;
            tx.commit()?;
            return Ok(ResultRecorded::Late);
        }
        tx.execute(
            "UPDATE jobs SET status = ?2, decided_run = ?3, finished_at = ?4, report_problem = ?5
             WHERE id = ?1",
            params![
                job_id,
                result.status.as_str(),
                run_id,
                ts(now),
                result.report_problem
            ],
        )?;
        record_tests_and_timings(&tx, &job, result, now)?;
        let commit_finished = finish_commit_if_done(&tx, job.commit_id, now)?;
        tx.commit()?;
        let queue_wait_ms = job.published_at.and_then(|published| {
            u64::try_from((result.started_at - published).num_milliseconds()).ok()
        });
        Ok(ResultRecorded::Decided {
            commit_finished,
            commit_id: job.commit_id,
            queue_wait_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::*;

    #[test]
    fn the_first_result_decides_and_later_ones_are_counted() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("c"));
        let job = &jobs[0];
        let decisive = result(job, "w1", JobStatus::Failed);
        let first = store.record_result(&decisive, Utc::now()).unwrap();
        let ResultRecorded::Decided {
            commit_finished: Some(commit_id),
            ..
        } = first
        else {
            panic!("expected the commit to finish, got {first:?}");
        };
        // The same result again (redelivered after a dispatcher crash) is
        // neither late nor a second verdict.
        assert_eq!(
            store.record_result(&decisive, Utc::now()).unwrap(),
            ResultRecorded::Redelivered
        );
        let late = store
            .record_result(&result(job, "w2", JobStatus::Passed), Utc::now())
            .unwrap();
        assert_eq!(late, ResultRecorded::Late);
        let report = store.commit_report(commit_id).unwrap().explain();
        assert_eq!(report.status, Some(JobStatus::Failed));
        assert_eq!(
            report.message.as_deref(),
            Some("the command exited with status 1")
        );
        let job = &report.jobs[0];
        assert_eq!(job.worker.as_deref(), Some("w1"));
        assert_eq!(job.output, "output of w1");
        assert_eq!(job.late_results, 1);
        let states: Vec<_> = job
            .attempts
            .iter()
            .map(|a| (a.worker.as_str(), a.state.as_str()))
            .collect();
        assert_eq!(states, [("w1", "finished"), ("w2", "late")]);
        assert_eq!(store.unwritten_results().unwrap(), [commit_id]);
        store.mark_written(commit_id).unwrap();
        assert!(store.unwritten_results().unwrap().is_empty());
    }

    #[test]
    fn results_for_unknown_or_mismatched_jobs_are_rejected() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("d"));
        let mut stranger = result(&jobs[0], "w", JobStatus::Passed);
        stranger.job_id = JobId::new();
        assert!(matches!(
            store.record_result(&stranger, Utc::now()).unwrap(),
            ResultRecorded::Rejected(_)
        ));
        let mut wrong_sha = result(&jobs[0], "w", JobStatus::Passed);
        wrong_sha.sha = CommitId::parse(&"e".repeat(40)).unwrap();
        assert!(matches!(
            store.record_result(&wrong_sha, Utc::now()).unwrap(),
            ResultRecorded::Rejected(_)
        ));
        let mut future = result(&jobs[0], "w", JobStatus::Passed);
        future.attempt = 9;
        assert!(matches!(
            store.record_result(&future, Utc::now()).unwrap(),
            ResultRecorded::Rejected(_)
        ));
    }

    #[test]
    fn a_result_without_a_valid_proof_is_rejected_unless_its_job_has_no_key() {
        let (_dir, mut store) = store();
        let jobs = insert(&mut store, &event("f"));
        let job = &jobs[0];
        assert_eq!(job.result_key.as_ref().map(String::len), Some(64));
        let unproven = builders::result_for(job)
            .worker("mallory")
            .unproven()
            .build();
        let mut other_key = unproven.clone();
        warren_common::proof::sign(&mut other_key, &warren_common::proof::new_key());
        let mut edited = result(job, "w1", JobStatus::Failed);
        edited.status = JobStatus::Passed;
        for forged in [unproven, other_key, edited] {
            let recorded = store.record_result(&forged, Utc::now()).unwrap();
            assert!(
                matches!(&recorded, ResultRecorded::Rejected(reason) if reason.contains("no valid proof")),
                "{recorded:?}"
            );
        }
        assert!(matches!(
            store
                .record_result(&result(job, "w1", JobStatus::Failed), Utc::now())
                .unwrap(),
            ResultRecorded::Decided { .. }
        ));

        // A job published before results had proofs (no key) takes an
        // unproven result, as it did.
        let old = insert(&mut store, &event("0"));
        store
            .conn
            .execute(
                "UPDATE jobs SET result_key = NULL WHERE id = ?1",
                params![old[0].job_id],
            )
            .unwrap();
        let unproven = builders::result_for(&old[0]).unproven().build();
        assert!(matches!(
            store.record_result(&unproven, Utc::now()).unwrap(),
            ResultRecorded::Decided { .. }
        ));
    }
}
