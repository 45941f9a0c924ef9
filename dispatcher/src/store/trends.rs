//! The read side of the pictures: one test's runs across a repository's
//! commits. (A branch's commits are [`Store::commit_summaries`] filtered by
//! repository and branch; a commit's runs are in its report.)

use super::*;

impl Store {
    /// The last `limit` commits of `repo` that ran the test `classname` /
    /// `name`, newest first (a commit run more than once counts its latest
    /// run).
    pub fn test_history(
        &self,
        repo: &str,
        classname: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<TestRun>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT c.id, c.sha, c.branch, c.summary, c.status AS commit_status, t.status,
                    t.flaky, t.duration_ms
             FROM tests t JOIN jobs j ON j.id = t.job_id JOIN commits c ON c.id = j.commit_id
             WHERE t.classname = ?1 AND t.name = ?2 AND c.repo = ?3
             ORDER BY c.id DESC, t.rowid DESC",
        )?;
        let mut rows = statement.query(params![classname, name, repo])?;
        let mut runs: Vec<TestRun> = Vec::new();
        let mut last_commit = None;
        while let Some(row) = rows.next()? {
            let commit: i64 = get(row, "id")?;
            if last_commit == Some(commit) {
                continue;
            }
            last_commit = Some(commit);
            runs.push(TestRun {
                sha: get(row, "sha")?,
                branch: get(row, "branch")?,
                summary: get(row, "summary")?,
                commit_status: verdict(row, "commit_status")?,
                status: get(row, "status")?,
                flaky: get(row, "flaky")?,
                duration_ms: get(row, "duration_ms")?,
            });
            if runs.len() == limit {
                break;
            }
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use warren_common::messages::TestCase;

    fn case(name: &str, status: TestStatus, ms: u64, flaky: bool) -> TestCase {
        TestCase {
            name: name.into(),
            classname: "suite".into(),
            file: None,
            duration_ms: ms,
            status,
            message: None,
            flaky,
        }
    }

    #[test]
    fn a_test_has_its_runs_across_commits_newest_first() {
        let (_dir, mut store) = store();
        let now = Utc::now();
        let cases = [
            ("a", TestStatus::Passed, 10, false),
            ("b", TestStatus::Failed, 30, false),
            ("c", TestStatus::Passed, 20, true),
        ];
        for (sha, status, ms, flaky) in cases {
            let jobs = insert(&mut store, &event(sha));
            let mut result = result(&jobs[0], "w1", JobStatus::Passed);
            result.tests = vec![
                case("t<1>", status, ms, flaky),
                case("other", status, 1, false),
            ];
            warren_common::proof::sign(&mut result, jobs[0].result_key.as_deref().unwrap());
            store.record_result(&result, now).unwrap();
        }
        let runs = store.test_history("api", "suite", "t<1>", 10).unwrap();
        let seen: Vec<(String, TestStatus, u64, bool)> = runs
            .iter()
            .map(|r| (r.sha[..1].to_owned(), r.status, r.duration_ms, r.flaky))
            .collect();
        assert_eq!(
            seen,
            [
                ("c".to_owned(), TestStatus::Passed, 20, true),
                ("b".to_owned(), TestStatus::Failed, 30, false),
                ("a".to_owned(), TestStatus::Passed, 10, false),
            ]
        );
        assert_eq!(runs[0].commit_status, Some(JobStatus::Passed));
        assert_eq!(
            store.test_history("api", "suite", "t<1>", 2).unwrap().len(),
            2
        );
        assert!(
            store
                .test_history("web", "suite", "t<1>", 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_run_gives_the_timeline_its_checkout_and_command() {
        let (_dir, mut store) = store();
        // Whole milliseconds, as the store keeps them.
        let start = DateTime::from_timestamp_millis(Utc::now().timestamp_millis() - 5000).unwrap();
        let jobs = insert(&mut store, &event("d"));
        // 3 ms of checkout, 10 ms of command.
        let result = result(&jobs[0], "w1", JobStatus::Passed);
        let mut start_event = started(&jobs[0], "w1", start);
        start_event.run_id = result.run_id;
        store.record_event(&start_event, &BUDGET, start).unwrap();
        let ResultRecorded::Decided {
            commit_finished: Some(commit_id),
            ..
        } = store.record_result(&result, Utc::now()).unwrap()
        else {
            panic!("the result decides the commit");
        };
        let report = store.commit_report(commit_id).unwrap();
        let runs = crate::pictures::timeline::runs(&report, Utc::now());
        let [run] = &runs[..] else {
            panic!("one run: {runs:?}");
        };
        assert_eq!(run.worker, "w1");
        assert_eq!(run.shard, "1/1");
        assert_eq!(run.start, start);
        assert_eq!(
            run.command_start,
            Some(start + chrono::TimeDelta::milliseconds(3))
        );
        assert!(run.end >= run.command_start.unwrap());
    }
}
