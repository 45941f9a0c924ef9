//! The read side: commit summaries and reports, job output, workers.
//! Nothing here writes, except a worker's presence.

use super::*;

/// The columns of a [`CommitSummary`], one query for one commit or a page.
pub(super) const SUMMARY_SELECT: &str =
    "SELECT c.id, c.repo, c.sha, c.branch, c.summary, c.author, c.status,
        c.detected_at, c.received_at, c.finished_at,
        (SELECT count(*) FROM jobs j WHERE j.commit_id = c.id) AS jobs,
        (SELECT count(*) FROM jobs j WHERE j.commit_id = c.id AND j.status != 'queued')
            AS jobs_done
     FROM commits c";

/// A row of [`SUMMARY_SELECT`].
pub(super) fn commit_summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<CommitSummary> {
    let received = at(row, "received_at")?;
    let finished_at = opt_at(row, "finished_at")?;
    Ok(CommitSummary {
        id: get(row, "id")?,
        repo: get(row, "repo")?,
        sha: get(row, "sha")?,
        branch: get(row, "branch")?,
        summary: get(row, "summary")?,
        author: get(row, "author")?,
        status: verdict(row, "status")?,
        detected_at: at(row, "detected_at")?,
        finished_at,
        duration_ms: finished_at
            .map(|end| u64::try_from((end - received).num_milliseconds()).unwrap_or(0)),
        jobs: get(row, "jobs")?,
        jobs_done: get(row, "jobs_done")?,
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
        let mut summaries: Vec<CommitSummary> = statement
            .query_map(
                params![
                    filter.repo,
                    filter.branch,
                    filter.status,
                    sha_pattern,
                    filter.before,
                    filter.limit + 1
                ],
                commit_summary,
            )?
            .collect::<std::result::Result<_, _>>()?;
        let more = summaries.len() > filter.limit;
        summaries.truncate(filter.limit);
        let next = if more {
            summaries.last().map(|s| s.id)
        } else {
            None
        };
        Ok((summaries, next))
    }

    /// One commit, in brief.
    pub fn commit_summary(&self, commit_id: i64) -> Result<CommitSummary> {
        Ok(self.conn.query_row(
            &format!("{SUMMARY_SELECT} WHERE c.id = ?1"),
            params![commit_id],
            commit_summary,
        )?)
    }

    /// Workers heard from since `since`, with the jobs they run.
    pub fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerReport>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, host, slots, busy, jobs_done, last_seen FROM workers
             WHERE last_seen >= ?1 ORDER BY id",
        )?;
        let mut workers = statement
            .query_map(params![ts(since)], |row| {
                Ok(WorkerReport {
                    id: get(row, "id")?,
                    host: get(row, "host")?,
                    slots: get(row, "slots")?,
                    busy: get(row, "busy")?,
                    jobs_done: get(row, "jobs_done")?,
                    last_seen: at(row, "last_seen")?,
                    current_jobs: Vec::new(),
                })
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut running = self.conn.prepare_cached(
            "SELECT c.repo, c.sha, a.job_id, a.attempt FROM attempts a
             JOIN jobs j ON j.id = a.job_id JOIN commits c ON c.id = j.commit_id
             WHERE a.worker = ?1 AND a.state = 'running' AND j.status = 'queued'",
        )?;
        for worker in &mut workers {
            worker.current_jobs = running
                .query_map(params![worker.id], |row| {
                    Ok(CurrentJob {
                        repo: get(row, "repo")?,
                        sha: get(row, "sha")?,
                        job_id: get(row, "job_id")?,
                        attempt: get(row, "attempt")?,
                    })
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?;
        }
        Ok(workers)
    }

    /// A job's verdict (`None` while undecided), the output of the run that
    /// decided it, and its commit.
    pub fn job_output(&self, job_id: &JobId) -> Result<Option<(Option<JobStatus>, String, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT j.status, a.output, j.commit_id FROM jobs j
                 LEFT JOIN attempts a ON a.run_id = j.decided_run WHERE j.id = ?1",
                params![job_id],
                |row| {
                    Ok((
                        verdict(row, "status")?,
                        get::<Option<String>>(row, "output")?.unwrap_or_default(),
                        get(row, "commit_id")?,
                    ))
                },
            )
            .optional()?)
    }

    /// Everything the result file of `commit_id` says.
    pub fn commit_report(&self, commit_id: i64) -> Result<CommitReport> {
        let mut report = self.conn.query_row(
            "SELECT repo, sha, branch, author, summary, committed_at, detected_at, received_at,
                    status, message, finished_at, duplicate_events, selection
             FROM commits WHERE id = ?1",
            params![commit_id],
            |row| {
                Ok(CommitReport {
                    schema: 1,
                    selection: opt_json(row, "selection")?,
                    test_counts: TestCounts::default(),
                    tests: Vec::new(),
                    flaky_tests: Vec::new(),
                    repo: get(row, "repo")?,
                    sha: get(row, "sha")?,
                    branch: get(row, "branch")?,
                    author: get(row, "author")?,
                    summary: get(row, "summary")?,
                    committed_at: at(row, "committed_at")?,
                    detected_at: at(row, "detected_at")?,
                    received_at: at(row, "received_at")?,
                    status: verdict(row, "status")?,
                    message: get(row, "message")?,
                    started_at: None,
                    finished_at: opt_at(row, "finished_at")?,
                    duration_ms: None,
                    duplicate_events: get(row, "duplicate_events")?,
                    jobs: Vec::new(),
                })
            },
        )?;
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
                let files: Vec<String> = json(row, "files")?;
                let command: TestCommand = json(row, "command")?;
                let job = JobReport {
                    id: get(row, "id")?,
                    shard: Shard {
                        index: get(row, "shard_index")?,
                        count: get(row, "shard_count")?,
                    },
                    command: command.to_string(),
                    timeout_ms: get(row, "timeout_ms")?,
                    status: verdict(row, "status")?,
                    attempt: get(row, "attempt")?,
                    message: get(row, "message")?,
                    lost_runs: get(row, "lost_runs")?,
                    late_results: get(row, "late_results")?,
                    estimated_ms: get::<Option<u64>>(row, "estimated_ms")?
                        .filter(|_| !files.is_empty()),
                    files,
                    report_problem: get(row, "report_problem")?,
                    // From the deciding run, below.
                    worker: None,
                    exit_code: None,
                    signal: None,
                    checkout_ms: None,
                    duration_ms: None,
                    output: String::new(),
                    output_truncated: false,
                    output_bytes: 0,
                    attempts: Vec::new(),
                };
                Ok((job, get::<Option<String>>(row, "decided_run")?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut jobs = Vec::with_capacity(rows.len());
        for (mut job, decided_run) in rows {
            job.attempts = self.attempt_reports(&job.id)?;
            if let Some(decided) = job
                .attempts
                .iter()
                .find(|a| Some(&a.run_id) == decided_run.as_ref())
            {
                job.attempt = decided.attempt;
                job.worker = Some(decided.worker.clone());
                job.exit_code = decided.exit_code;
                job.signal = decided.signal;
                job.message = job.message.or_else(|| decided.message.clone());
                job.checkout_ms = decided.checkout_ms;
                job.duration_ms = decided.duration_ms;
                job.output = decided.output.clone().unwrap_or_default();
                job.output_truncated = decided.output_truncated;
                job.output_bytes = decided.output_bytes.unwrap_or(0);
            }
            jobs.push(job);
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
        let tests = statement
            .query_map(params![commit_id], |row| {
                Ok(TestReport {
                    shard: get(row, "shard_index")?,
                    name: get(row, "name")?,
                    classname: get(row, "classname")?,
                    file: get(row, "file")?,
                    duration_ms: get(row, "duration_ms")?,
                    status: get(row, "status")?,
                    message: get(row, "message")?,
                    flaky: get(row, "flaky")?,
                })
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for test in tests {
            let counts = &mut report.test_counts;
            counts.total += 1;
            match test.status {
                TestStatus::Passed => counts.passed += 1,
                TestStatus::Failed => counts.failed += 1,
                TestStatus::Skipped => counts.skipped += 1,
                TestStatus::Error => counts.errors += 1,
            }
            if test.flaky {
                counts.flaky += 1;
                let times_flaky: u64 = self.conn.query_row(
                    "SELECT count(*) FROM flaky WHERE repo = ?1 AND test = ?2",
                    params![report.repo, test_key(&test.classname, &test.name)],
                    |row| row.get(0),
                )?;
                report.flaky_tests.push(FlakyReport {
                    name: test.name.clone(),
                    classname: test.classname.clone(),
                    times_flaky,
                });
            }
            report.tests.push(test);
        }
        Ok(())
    }

    pub(super) fn attempt_reports(&self, job_id: &JobId) -> Result<Vec<AttemptReport>> {
        let mut statement = self.conn.prepare(
            "SELECT run_id, attempt, worker, host, state, started_at, last_seen, finished_at,
                    status, exit_code, signal, message, checkout_ms, duration_ms, output,
                    output_truncated, output_bytes
             FROM attempts WHERE job_id = ?1
             ORDER BY attempt, COALESCE(started_at, last_seen)",
        )?;
        let attempts = statement
            .query_map(params![job_id], |row| {
                Ok(AttemptReport {
                    run_id: get(row, "run_id")?,
                    attempt: get(row, "attempt")?,
                    worker: get(row, "worker")?,
                    host: get(row, "host")?,
                    state: get(row, "state")?,
                    started_at: opt_at(row, "started_at")?,
                    last_seen: at(row, "last_seen")?,
                    finished_at: opt_at(row, "finished_at")?,
                    status: get(row, "status")?,
                    exit_code: get(row, "exit_code")?,
                    signal: get(row, "signal")?,
                    message: get(row, "message")?,
                    checkout_ms: get(row, "checkout_ms")?,
                    duration_ms: get(row, "duration_ms")?,
                    output: get(row, "output")?,
                    output_truncated: get::<Option<bool>>(row, "output_truncated")?
                        .unwrap_or(false),
                    output_bytes: get(row, "output_bytes")?,
                })
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(attempts)
    }
}
