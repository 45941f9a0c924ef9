//! What a decided result leaves behind: each test's outcome (the flaky
//! history) and the time per suite file (for balancing the next split).

use super::*;

/// Most test cases kept per job: a report with more is cut (and says so
/// in the job's `report_problem`).
pub(super) const MAX_TESTS_PER_JOB: usize = 100_000;

/// Keeps the decided run's test cases, its files' durations (for the next
/// split) and its flaky tests (for their history).
pub(super) fn record_tests_and_timings(
    tx: &Transaction<'_>,
    job: &JobRow,
    result: &JobResult,
    now: DateTime<Utc>,
) -> Result<()> {
    let at = ts(now);
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO tests (job_id, name, classname, file, duration_ms, status, message, flaky)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut flaky =
            tx.prepare_cached("INSERT INTO flaky (repo, test, sha, at) VALUES (?1, ?2, ?3, ?4)")?;
        for test in result.tests.iter().take(MAX_TESTS_PER_JOB) {
            insert.execute(params![
                job.id,
                test.name,
                test.classname,
                test.file,
                test.duration_ms,
                test.status.as_str(),
                test.message,
                test.flaky
            ])?;
            if test.flaky {
                flaky.execute(params![
                    job.repo,
                    test_key(&test.classname, &test.name),
                    job.sha,
                    at
                ])?;
            }
        }
    }
    // A measured duration replaces an estimated one and is averaged with an
    // earlier measurement (the latest runs count most); an estimate only
    // refines other estimates.
    let mut measured = tx.prepare_cached(
        "INSERT INTO file_timings (repo, path, duration_ms, measured, samples, updated_at)
         VALUES (?1, ?2, ?3, 1, 1, ?4)
         ON CONFLICT (repo, path) DO UPDATE SET
             duration_ms = CASE WHEN file_timings.measured = 1
                 THEN (file_timings.duration_ms + excluded.duration_ms) / 2
                 ELSE excluded.duration_ms END,
             measured = 1, samples = file_timings.samples + 1, updated_at = excluded.updated_at",
    )?;
    let mut estimated = tx.prepare_cached(
        "INSERT INTO file_timings (repo, path, duration_ms, measured, samples, updated_at)
         VALUES (?1, ?2, ?3, 0, 1, ?4)
         ON CONFLICT (repo, path) DO UPDATE SET
             duration_ms = (file_timings.duration_ms + excluded.duration_ms) / 2,
             samples = file_timings.samples + 1, updated_at = excluded.updated_at
         WHERE file_timings.measured = 0",
    )?;
    for timing in &result.file_timings {
        let statement = if timing.estimated {
            &mut estimated
        } else {
            &mut measured
        };
        statement.execute(params![
            job.repo,
            timing.path.as_str(),
            timing.duration_ms,
            at
        ])?;
    }
    Ok(())
}

/// How a test is named in the flaky history: `classname::name`.
pub(super) fn test_key(classname: &str, name: &str) -> String {
    if classname.is_empty() {
        name.to_owned()
    } else {
        format!("{classname}::{name}")
    }
}

impl Store {
    /// The latest recorded duration of each suite file of `repo`, in ms.
    pub fn file_timings(&self, repo: &RepoName) -> Result<HashMap<String, u64>> {
        let mut statement = self
            .conn
            .prepare("SELECT path, duration_ms FROM file_timings WHERE repo = ?1")?;
        let timings = statement
            .query_map(params![repo.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<std::result::Result<HashMap<String, u64>, _>>()?;
        Ok(timings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::*;

    #[test]
    fn a_decided_result_keeps_its_tests_timings_and_flaky_history() {
        use warren_common::messages::{FileTiming, TestCase};
        let (_dir, mut store) = store();
        let mut flaky_runs = 0;
        for sha in ["6", "7"] {
            let jobs = insert(&mut store, &event(sha));
            let mut result = result(&jobs[0], "w1", JobStatus::Failed);
            result.tests = vec![
                TestCase {
                    name: "test_ok".into(),
                    classname: "m".into(),
                    file: Some("t/a.py".into()),
                    duration_ms: 5,
                    status: TestStatus::Passed,
                    message: None,
                    flaky: false,
                },
                TestCase {
                    name: "test_wobbly".into(),
                    classname: "m".into(),
                    file: Some("t/a.py".into()),
                    duration_ms: 7,
                    status: TestStatus::Passed,
                    message: None,
                    flaky: true,
                },
                TestCase {
                    name: "test_bad".into(),
                    classname: "m".into(),
                    file: Some("t/b.py".into()),
                    duration_ms: 9,
                    status: TestStatus::Failed,
                    message: Some("assert 1 == 2".into()),
                    flaky: false,
                },
            ];
            result.file_timings = vec![
                FileTiming {
                    path: suite_file("t/a.py"),
                    duration_ms: if sha == "6" { 1000 } else { 3000 },
                    estimated: false,
                },
                FileTiming {
                    path: suite_file("t/b.py"),
                    duration_ms: 500,
                    estimated: true,
                },
            ];
            // Edited after it was built: proven again, as its worker would.
            warren_common::proof::sign(&mut result, jobs[0].result_key.as_deref().unwrap());
            store.record_result(&result, Utc::now()).unwrap();
            flaky_runs += 1;
            let report = store.commit_report(1 + flaky_runs - 1).unwrap().explain();
            assert_eq!(
                (
                    report.test_counts.total,
                    report.test_counts.failed,
                    report.test_counts.flaky
                ),
                (3, 1, 1)
            );
            assert_eq!(report.tests[0].name, "test_bad", "failed first");
            assert_eq!(report.flaky_tests[0].times_flaky, flaky_runs as u64);
            assert_eq!(report.message.as_deref(), Some("1 test failed: test_bad"));
            assert!(
                report
                    .junit_xml()
                    .contains("<failure message=\"assert 1 == 2\"/>")
            );
        }
        let timings = store
            .file_timings(&RepoName::parse("api").unwrap())
            .unwrap();
        assert_eq!(timings["t/a.py"], 2000, "measured timings are averaged");
        assert_eq!(timings["t/b.py"], 500, "estimates refine estimates");
    }
}
