//! Commits: seen once per (repo, sha) (the dedup), planned into jobs,
//! superseded by a newer commit on the branch, or finished at once with an
//! `error` verdict.

use super::*;

pub(super) fn insert_commit(
    tx: &Transaction<'_>,
    event: &CommitEvent,
    status: &str,
    message: Option<&str>,
    finished_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<i64> {
    tx.execute(
        "INSERT INTO commits (repo, sha, branch, url, author, summary, committed_at, detected_at,
                              received_at, status, message, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            event.repo.as_str(),
            event.sha.as_str(),
            event.branch.as_str(),
            event.url.as_str(),
            event.author,
            event.summary,
            ts(event.committed_at),
            ts(event.detected_at),
            ts(now),
            status,
            message,
            finished_at.map(ts),
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

impl Store {
    /// Whether `(repo, sha)` is known; counts the duplicate if it is.
    pub fn see_commit(&mut self, repo: &RepoName, sha: &CommitId) -> Result<CommitSeen> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM commits WHERE repo = ?1 AND sha = ?2",
                params![repo.as_str(), sha.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        match id {
            None => Ok(CommitSeen::New),
            Some(commit_id) => {
                self.conn.execute(
                    "UPDATE commits SET duplicate_events = duplicate_events + 1 WHERE id = ?1",
                    params![commit_id],
                )?;
                Ok(CommitSeen::Duplicate { commit_id })
            }
        }
    }

    /// Records a new commit with one job per shard (not yet published) and
    /// returns the job messages to publish. With no shard at all (a
    /// selection that picked nothing) the commit passes at once.
    pub fn insert_planned(
        &mut self,
        event: &CommitEvent,
        planned: &Planned<'_>,
        now: DateTime<Utc>,
    ) -> Result<Inserted> {
        let tx = self.conn.transaction()?;
        let plan = planned.plan;
        let selection = planned
            .selection
            .map(|selection| serde_json::to_string(selection).map_err(|e| corrupt("selection", e)))
            .transpose()?;
        let commit_id = insert_commit(&tx, event, RUNNING, None, None, now)?;
        tx.execute(
            "UPDATE commits SET selection = ?2 WHERE id = ?1",
            params![commit_id, selection],
        )?;
        let count = u32::try_from(planned.shards.len()).unwrap_or(u32::MAX);
        for (index, shard) in planned.shards.iter().enumerate() {
            tx.execute(
                "INSERT INTO jobs (id, commit_id, shard_index, shard_count, command, timeout_ms,
                                   env, status, attempt, files, junit, retry_failed, estimated_ms,
                                   network, limits, result_key, image)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![
                    JobId::new().to_string(),
                    commit_id,
                    u32::try_from(index).unwrap_or(u32::MAX),
                    count,
                    serde_json::to_string(&plan.command).map_err(|e| corrupt("command", e))?,
                    crate::config::duration_ms(plan.timeout),
                    serde_json::to_string(&plan.env).map_err(|e| corrupt("env", e))?,
                    QUEUED,
                    serde_json::to_string(&shard.files).map_err(|e| corrupt("files", e))?,
                    plan.junit.as_ref().map(|path| path.to_string()),
                    plan.retry_failed,
                    shard.estimated_ms,
                    plan.network,
                    plan.limits
                        .map(|limits| serde_json::to_string(&limits))
                        .transpose()
                        .map_err(|e| corrupt("limits", e))?,
                    warren_common::proof::new_key(),
                    plan.image,
                ],
            )?;
        }
        let finished = if planned.shards.is_empty() {
            tx.execute(
                "UPDATE commits SET status = ?2, message = ?3, finished_at = ?4 WHERE id = ?1",
                params![
                    commit_id,
                    JobStatus::Passed.as_str(),
                    "no suite file was selected for this change, so nothing ran",
                    ts(now)
                ],
            )?;
            Some(commit_id)
        } else {
            None
        };
        let jobs = unpublished_jobs(&tx, Some(commit_id), now)?;
        tx.commit()?;
        Ok(Inserted {
            commit_id,
            jobs,
            finished,
        })
    }

    /// Whether commit `sha` of `repo` has a finished result.
    pub fn has_result(&self, repo: &RepoName, sha: &CommitId) -> Result<bool> {
        let finished: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT finished_at FROM commits WHERE repo = ?1 AND sha = ?2",
                params![repo.as_str(), sha.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        Ok(matches!(finished, Some(Some(_))))
    }

    /// A newer commit (`newer`) arrived on a branch whose older commits are
    /// superseded: every undecided job of the older running commits of that
    /// branch becomes `superseded`, their running runs `cancelled`. Returns
    /// the jobs to cancel on the workers and the commits this finished.
    pub fn supersede_older(
        &mut self,
        newer: i64,
        newer_sha: &CommitId,
        now: DateTime<Utc>,
    ) -> Result<Superseded> {
        let tx = self.conn.transaction()?;
        let reason = format!("superseded by {}", newer_sha);
        let older: Vec<i64> = {
            let mut statement = tx.prepare(
                "SELECT o.id FROM commits o JOIN commits n ON n.id = ?1
                 WHERE o.repo = n.repo AND o.branch = n.branch AND o.id < n.id AND o.status = ?2",
            )?;
            statement
                .query_map(params![newer, RUNNING], |row| row.get(0))?
                .collect::<std::result::Result<_, _>>()?
        };
        let mut superseded = Superseded::default();
        for commit_id in older {
            superseded.jobs.extend(stop_undecided_jobs(
                &tx,
                commit_id,
                JobStatus::Superseded,
                &reason,
                now,
            )?);
            if let Some(finished) = finish_commit_if_done(&tx, commit_id, now)? {
                superseded.finished_commits.push(finished);
            }
        }
        tx.commit()?;
        Ok(superseded)
    }

    /// Records a commit that cannot be tested (broken `warren.toml`, missing
    /// commit…) as finished with status `error` and `message`.
    pub fn insert_errored(
        &mut self,
        event: &CommitEvent,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let id = insert_commit(
            &tx,
            event,
            JobStatus::Error.as_str(),
            Some(message),
            Some(now),
            now,
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The id of commit `sha` of `repo`, if known.
    pub fn commit_id(&self, repo: &RepoName, sha: &CommitId) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM commits WHERE repo = ?1 AND sha = ?2",
                params![repo.as_str(), sha.as_str()],
                |row| row.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::*;
    use warren_common::ids::BranchName;

    #[test]
    fn commits_are_deduplicated_by_repo_and_sha() {
        let (_dir, mut store) = store();
        let e = event("a");
        assert_eq!(store.see_commit(&e.repo, &e.sha).unwrap(), CommitSeen::New);
        insert(&mut store, &e);
        assert!(matches!(
            store.see_commit(&e.repo, &e.sha).unwrap(),
            CommitSeen::Duplicate { .. }
        ));
        assert!(try_insert(&mut store, &e).is_err(), "unique (repo, sha)");
    }

    #[test]
    fn errored_commits_are_finished_at_once() {
        let (_dir, mut store) = store();
        let id = store
            .insert_errored(&event("9"), "warren.toml is invalid", Utc::now())
            .unwrap();
        let report = store.commit_report(id).unwrap();
        assert_eq!(report.status, Some(JobStatus::Error));
        assert_eq!(report.message.as_deref(), Some("warren.toml is invalid"));
        assert!(report.jobs.is_empty());
        assert_eq!(store.unwritten_results().unwrap(), [id]);
    }

    #[test]
    fn a_split_commit_gets_a_job_per_shard_carrying_its_files() {
        let (_dir, mut store) = store();
        let shards = [
            ShardPlan {
                files: vec![suite_file("t/a.py"), suite_file("t/b.py")],
                estimated_ms: 3000,
            },
            ShardPlan {
                files: vec![suite_file("t/c.py")],
                estimated_ms: 2500,
            },
        ];
        let plan = plan();
        let inserted = store
            .insert_planned(
                &event("4"),
                &Planned {
                    plan: &plan,
                    shards: &shards,
                    selection: None,
                },
                Utc::now(),
            )
            .unwrap();
        assert_eq!(inserted.jobs.len(), 2);
        assert_eq!(inserted.jobs[1].shard, Shard { index: 1, count: 2 });
        assert_eq!(inserted.jobs[0].files, shards[0].files);
        // A re-issue carries the same files.
        let again = store.unpublished_jobs(Utc::now()).unwrap();
        assert_eq!(again[0].files, shards[0].files);
        let report = store.commit_report(inserted.commit_id).unwrap();
        assert_eq!(report.jobs[1].files, ["t/c.py"]);
        assert_eq!(report.jobs[1].estimated_ms, Some(2500));
        // Nothing selected: the commit passes at once.
        let none = store
            .insert_planned(
                &event("5"),
                &Planned {
                    plan: &plan,
                    shards: &[],
                    selection: None,
                },
                Utc::now(),
            )
            .unwrap();
        assert!(none.jobs.is_empty() && none.finished == Some(none.commit_id));
        assert_eq!(
            store.commit_report(none.commit_id).unwrap().status,
            Some(JobStatus::Passed)
        );
    }

    #[test]
    fn a_newer_commit_supersedes_the_older_ones_on_its_branch() {
        let (_dir, mut store) = store();
        let older = insert(&mut store, &event("8"));
        let mut other_branch = event("9");
        other_branch.branch = BranchName::parse("other").unwrap();
        let untouched = insert(&mut store, &other_branch);
        let newer = insert(&mut store, &event("a"));
        let newer_commit = 3;
        store
            .record_event(&started(&older[0], "w1", Utc::now()), &BUDGET, Utc::now())
            .unwrap();
        let superseded = store
            .supersede_older(newer_commit, &newer[0].sha, Utc::now())
            .unwrap();
        assert_eq!(
            superseded.jobs,
            [JobAttempt {
                job_id: older[0].job_id,
                attempt: 1
            }]
        );
        assert_eq!(superseded.finished_commits, [1]);
        let report = store.commit_report(1).unwrap().explain();
        assert_eq!(report.status, Some(JobStatus::Superseded));
        assert!(report.message.unwrap().contains("superseded by"));
        assert_eq!(report.jobs[0].attempts[0].state, "cancelled");
        assert_eq!(
            store.commit_report(2).unwrap().status,
            None,
            "other branches are left alone"
        );
        assert!(store.has_result(&older[0].repo, &older[0].sha).unwrap());
        assert!(
            !store
                .has_result(&untouched[0].repo, &untouched[0].sha)
                .unwrap()
        );
    }
}
