//! The read side: commit summaries and reports, job output, workers.
//! Nothing here writes, except a worker's presence.

use super::*;

/// The columns of a [`CommitSummary`], one query for one commit or a page.
pub(super) const SUMMARY_SELECT: &str =
    "SELECT c.id, c.repo, c.sha, c.branch, c.summary, c.author, c.status,
        c.detected_at, c.received_at, c.finished_at,
        (SELECT count(*) FROM jobs j WHERE j.commit_id = c.id),
        (SELECT count(*) FROM jobs j WHERE j.commit_id = c.id AND j.status != 'queued')
     FROM commits c";

/// A row of [`SUMMARY_SELECT`], as stored.
pub(super) type SummaryRow = (i64, [String; 8], Option<String>, u64, u64);

pub(super) fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        row.get(0)?,
        [
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
            row.get(8)?,
        ],
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
    ))
}

pub(super) fn commit_summary_of(
    (
        id,
        [
            repo,
            sha,
            branch,
            summary,
            author,
            status,
            detected_at,
            received_at,
        ],
        finished_at,
        jobs,
        jobs_done,
    ): SummaryRow,
) -> Result<CommitSummary> {
    let received = parse_ts("received_at", &received_at)?;
    let finished_at = parse_opt_ts("finished_at", finished_at)?;
    Ok(CommitSummary {
        id,
        repo,
        sha,
        branch,
        summary,
        author,
        status: if status == RUNNING {
            None
        } else {
            Some(parse_status("status", &status)?)
        },
        detected_at: parse_ts("detected_at", &detected_at)?,
        finished_at,
        duration_ms: finished_at
            .map(|end| u64::try_from((end - received).num_milliseconds()).unwrap_or(0)),
        jobs,
        jobs_done,
    })
}

impl Store {
    /// Notes a worker's presence (its latest status wins).
    pub fn record_worker_status(&mut self, status: &WorkerStatus) -> Result<()> {
        self.conn.execute(
            "INSERT INTO workers (id, host, slots, busy, jobs_done, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, slots = excluded.slots,
                 busy = excluded.busy, jobs_done = excluded.jobs_done, last_seen = excluded.last_seen
             WHERE excluded.last_seen >= workers.last_seen",
            params![
                status.worker.as_str(),
                status.host,
                status.slots,
                status.busy,
                status.jobs_done,
                ts(status.at)
            ],
        )?;
        Ok(())
    }

    /// Recent commits matching `filter`, newest first, and the id to pass as
    /// `before` for the next page.
    pub fn commit_summaries(
        &self,
        filter: &CommitFilter,
    ) -> Result<(Vec<CommitSummary>, Option<i64>)> {
        let sha_pattern = filter
            .sha_prefix
            .as_ref()
            .map(|prefix| format!("{prefix}%"));
        let mut statement = self.conn.prepare_cached(&format!(
            "{SUMMARY_SELECT}
             WHERE (?1 IS NULL OR c.repo = ?1) AND (?2 IS NULL OR c.branch = ?2)
               AND (?3 IS NULL OR c.status = ?3) AND (?4 IS NULL OR c.sha LIKE ?4)
               AND (?5 IS NULL OR c.id < ?5)
             ORDER BY c.id DESC LIMIT ?6"
        ))?;
        let rows: Vec<SummaryRow> = statement
            .query_map(
                params![
                    filter.repo,
                    filter.branch,
                    filter.status,
                    sha_pattern,
                    filter.before,
                    filter.limit + 1
                ],
                summary_row,
            )?
            .collect::<std::result::Result<_, _>>()?;
        let more = rows.len() > filter.limit;
        let summaries = rows
            .into_iter()
            .take(filter.limit)
            .map(commit_summary_of)
            .collect::<Result<Vec<_>>>()?;
        let next = if more {
            summaries.last().map(|s| s.id)
        } else {
            None
        };
        Ok((summaries, next))
    }

    /// One commit, in brief.
    pub fn commit_summary(&self, commit_id: i64) -> Result<CommitSummary> {
        let row = self.conn.query_row(
            &format!("{SUMMARY_SELECT} WHERE c.id = ?1"),
            params![commit_id],
            summary_row,
        )?;
        commit_summary_of(row)
    }

    /// Workers heard from since `since`, with the jobs they run.
    pub fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerReport>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, host, slots, busy, jobs_done, last_seen FROM workers
             WHERE last_seen >= ?1 ORDER BY id",
        )?;
        let rows = statement
            .query_map(params![ts(since)], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u16>(2)?,
                    row.get::<_, u16>(3)?,
                    row.get::<_, u64>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut running = self.conn.prepare_cached(
            "SELECT c.repo, c.sha, a.job_id, a.attempt FROM attempts a
             JOIN jobs j ON j.id = a.job_id JOIN commits c ON c.id = j.commit_id
             WHERE a.worker = ?1 AND a.state = 'running' AND j.status = 'queued'",
        )?;
        let mut workers = Vec::with_capacity(rows.len());
        for (id, host, slots, busy, jobs_done, last_seen) in rows {
            let current_jobs = running
                .query_map(params![id], |row| {
                    Ok(CurrentJob {
                        repo: row.get(0)?,
                        sha: row.get(1)?,
                        job_id: row.get(2)?,
                        attempt: row.get(3)?,
                    })
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            workers.push(WorkerReport {
                id,
                host,
                slots,
                busy,
                jobs_done,
                last_seen: parse_ts("workers.last_seen", &last_seen)?,
                current_jobs,
            });
        }
        Ok(workers)
    }

    /// A job's verdict (`None` while undecided), the output of the run that
    /// decided it, and its commit.
    pub fn job_output(&self, job_id: &JobId) -> Result<Option<(Option<JobStatus>, String, i64)>> {
        let row: Option<(String, Option<String>, i64)> = self
            .conn
            .query_row(
                "SELECT j.status, a.output, j.commit_id FROM jobs j
                 LEFT JOIN attempts a ON a.run_id = j.decided_run WHERE j.id = ?1",
                params![job_id.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        row.map(|(status, output, commit_id)| {
            let status = if status == QUEUED {
                None
            } else {
                Some(parse_status("jobs.status", &status)?)
            };
            Ok((status, output.unwrap_or_default(), commit_id))
        })
        .transpose()
    }

    /// Everything the result file of `commit_id` says.
    pub fn commit_report(&self, commit_id: i64) -> Result<CommitReport> {
        let mut report = self
            .conn
            .query_row(
                "SELECT repo, sha, branch, author, summary, committed_at, detected_at, received_at,
                    status, message, finished_at, duplicate_events, selection
             FROM commits WHERE id = ?1",
                params![commit_id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                        row.get::<_, String>(6)?,
                        row.get::<_, String>(7)?,
                        row.get::<_, String>(8)?,
                        row.get::<_, Option<String>>(9)?,
                        row.get::<_, Option<String>>(10)?,
                        row.get::<_, u64>(11)?,
                        row.get::<_, Option<String>>(12)?,
                    ))
                },
            )
            .map_err(StoreError::from)
            .and_then(|row| {
                Ok(CommitReport {
                    schema: 1,
                    selection: row
                        .12
                        .map(|text| serde_json::from_str(&text))
                        .transpose()
                        .map_err(|e| corrupt("selection", e))?,
                    test_counts: TestCounts::default(),
                    tests: Vec::new(),
                    flaky_tests: Vec::new(),
                    repo: RepoName::parse(&row.0).map_err(|e| corrupt("repo", e))?,
                    sha: CommitId::parse(&row.1).map_err(|e| corrupt("sha", e))?,
                    branch: BranchName::parse(&row.2).map_err(|e| corrupt("branch", e))?,
                    author: row.3,
                    summary: row.4,
                    committed_at: parse_ts("committed_at", &row.5)?,
                    detected_at: parse_ts("detected_at", &row.6)?,
                    received_at: parse_ts("received_at", &row.7)?,
                    status: if row.8 == RUNNING {
                        None
                    } else {
                        Some(parse_status("status", &row.8)?)
                    },
                    message: row.9,
                    started_at: None,
                    finished_at: parse_opt_ts("finished_at", row.10)?,
                    duration_ms: None,
                    duplicate_events: row.11,
                    jobs: Vec::new(),
                })
            })?;
        report.jobs = self.job_reports(commit_id)?;
        self.fill_tests(commit_id, &mut report)?;
        report.started_at = report
            .jobs
            .iter()
            .flat_map(|job| job.attempts.iter().filter_map(|a| a.started_at))
            .min();
        report.duration_ms = match (
            report.started_at.or(Some(report.received_at)),
            report.finished_at,
        ) {
            (Some(start), Some(end)) => {
                Some(u64::try_from((end - start).num_milliseconds()).unwrap_or(0))
            }
            _ => None,
        };
        Ok(report)
    }

    pub(super) fn job_reports(&self, commit_id: i64) -> Result<Vec<JobReport>> {
        let mut statement = self.conn.prepare(
            "SELECT id, shard_index, shard_count, command, timeout_ms, status, attempt,
                    decided_run, message, lost_runs, late_results, files, estimated_ms,
                    report_problem
             FROM jobs WHERE commit_id = ?1 ORDER BY shard_index",
        )?;
        let rows = statement
            .query_map(params![commit_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, u64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, u32>(6)?,
                    row.get::<_, Option<String>>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, u32>(9)?,
                    row.get::<_, u64>(10)?,
                    row.get::<_, String>(11)?,
                    row.get::<_, Option<u64>>(12)?,
                    row.get::<_, Option<String>>(13)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, index, count, command, timeout_ms, status, attempt, decided_run) =
                (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7);
            let (job_message, lost_runs, late_results) = (row.8, row.9, row.10);
            let files: Vec<String> =
                serde_json::from_str(&row.11).map_err(|e| corrupt("files", e))?;
            let (estimated_ms, report_problem) = (row.12.filter(|_| !files.is_empty()), row.13);
            let attempts = self.attempt_reports(&id)?;
            let decided = attempts
                .iter()
                .find(|a| Some(&a.run_id) == decided_run.as_ref());
            let command: TestCommand =
                serde_json::from_str(&command).map_err(|e| corrupt("command", e))?;
            jobs.push(JobReport {
                id: id.parse().map_err(|e| corrupt("jobs.id", e))?,
                shard: Shard { index, count },
                command: command.to_string(),
                timeout_ms,
                status: if status == QUEUED {
                    None
                } else {
                    Some(parse_status("jobs.status", &status)?)
                },
                attempt: decided.map_or(attempt, |a| a.attempt),
                worker: decided.map(|a| a.worker.clone()),
                exit_code: decided.and_then(|a| a.exit_code),
                signal: decided.and_then(|a| a.signal),
                message: job_message.or_else(|| decided.and_then(|a| a.message.clone())),
                checkout_ms: decided.and_then(|a| a.checkout_ms),
                duration_ms: decided.and_then(|a| a.duration_ms),
                output: decided.and_then(|a| a.output.clone()).unwrap_or_default(),
                output_truncated: decided.is_some_and(|a| a.output_truncated),
                output_bytes: decided.and_then(|a| a.output_bytes).unwrap_or(0),
                lost_runs,
                late_results,
                files,
                estimated_ms,
                report_problem,
                attempts,
            });
        }
        Ok(jobs)
    }

    /// The commit's test cases (failed first), their counts, and its flaky
    /// tests with how often each has been flaky in this repository.
    pub(super) fn fill_tests(&self, commit_id: i64, report: &mut CommitReport) -> Result<()> {
        let mut statement = self.conn.prepare(
            "SELECT j.shard_index, t.name, t.classname, t.file, t.duration_ms, t.status,
                    t.message, t.flaky
             FROM tests t JOIN jobs j ON j.id = t.job_id WHERE j.commit_id = ?1
             ORDER BY CASE t.status WHEN 'failed' THEN 0 WHEN 'error' THEN 1 ELSE 2 END,
                      j.shard_index, t.classname, t.name",
        )?;
        let rows = statement
            .query_map(params![commit_id], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, u64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, bool>(7)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for (shard, name, classname, file, duration_ms, status, message, flaky) in rows {
            let status = TestStatus::parse(&status)
                .ok_or_else(|| corrupt("tests.status", format!("unknown status {status:?}")))?;
            let counts = &mut report.test_counts;
            counts.total += 1;
            match status {
                TestStatus::Passed => counts.passed += 1,
                TestStatus::Failed => counts.failed += 1,
                TestStatus::Skipped => counts.skipped += 1,
                TestStatus::Error => counts.errors += 1,
            }
            if flaky {
                counts.flaky += 1;
                let times_flaky: u64 = self.conn.query_row(
                    "SELECT count(*) FROM flaky WHERE repo = ?1 AND test = ?2",
                    params![report.repo.as_str(), test_key(&classname, &name)],
                    |row| row.get(0),
                )?;
                report.flaky_tests.push(FlakyReport {
                    name: name.clone(),
                    classname: classname.clone(),
                    times_flaky,
                });
            }
            report.tests.push(TestReport {
                shard,
                name,
                classname,
                file,
                duration_ms,
                status,
                message,
                flaky,
            });
        }
        Ok(())
    }

    pub(super) fn attempt_reports(&self, job_id: &str) -> Result<Vec<AttemptReport>> {
        let mut statement = self.conn.prepare(
            "SELECT run_id, attempt, worker, host, state, started_at, last_seen, finished_at,
                    status, exit_code, signal, message, checkout_ms, duration_ms, output,
                    output_truncated, output_bytes
             FROM attempts WHERE job_id = ?1
             ORDER BY attempt, COALESCE(started_at, last_seen)",
        )?;
        let rows = statement
            .query_map(params![job_id], |row| {
                Ok((
                    (
                        row.get::<_, String>(0)?,
                        row.get::<_, u32>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, String>(6)?,
                        row.get::<_, Option<String>>(7)?,
                    ),
                    (
                        row.get::<_, Option<String>>(8)?,
                        row.get::<_, Option<i32>>(9)?,
                        row.get::<_, Option<i32>>(10)?,
                        row.get::<_, Option<String>>(11)?,
                        row.get::<_, Option<u64>>(12)?,
                        row.get::<_, Option<u64>>(13)?,
                        row.get::<_, Option<String>>(14)?,
                        row.get::<_, Option<bool>>(15)?,
                        row.get::<_, Option<u64>>(16)?,
                    ),
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(a, b)| {
                Ok(AttemptReport {
                    run_id: a.0,
                    attempt: a.1,
                    worker: a.2,
                    host: a.3,
                    state: a.4,
                    started_at: parse_opt_ts("attempts.started_at", a.5)?,
                    last_seen: parse_ts("attempts.last_seen", &a.6)?,
                    finished_at: parse_opt_ts("attempts.finished_at", a.7)?,
                    status: b
                        .0
                        .map(|s| parse_status("attempts.status", &s))
                        .transpose()?,
                    exit_code: b.1,
                    signal: b.2,
                    message: b.3,
                    checkout_ms: b.4,
                    duration_ms: b.5,
                    output: b.6,
                    output_truncated: b.7.unwrap_or(false),
                    output_bytes: b.8,
                })
            })
            .collect()
    }
}
