//! The dispatcher's books: commits, jobs and attempts in SQLite (WAL).
//!
//! A commit has many jobs (one per shard); a job has many attempts (one per
//! run on a worker). The store is the source of truth: result files are
//! written from it, and after a crash the dispatcher finds in it the jobs
//! whose publish was never confirmed and the results never written.
//!
//! ```text
//! commits  running ─▶ passed | failed | timed_out | error
//! jobs     queued  ─▶ passed | failed | timed_out | error   (first finished run wins;
//!                                                          error when too many runs are lost)
//! attempts running ─▶ finished (decided the job) | late (a result after the decision)
//!          running ─▶ lost (redelivered to another worker, or no heartbeat for a lease)
//! ```
//!
//! An attempt number belongs to a published job message; a *run* is one
//! delivery of it to a worker (the worker names it with a `run_id`). The
//! broker redelivers the same attempt to another worker when a worker's
//! connection closes; the dispatcher publishes the next attempt when a run's
//! lease expires. Both are rows of the `attempts` table, one per run.

use crate::config::SyncMode;
use crate::report::{
    AttemptReport, CommitReport, CommitSummary, CurrentJob, FlakyReport, JobReport, TestCounts,
    TestReport, WorkerReport,
};
use crate::select::Selection;
use crate::spec::Plan;
use crate::split::ShardPlan;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use warren_common::ids::{BranchName, CommitId, JobId, RepoName, RepoUrl, SuitePath};
use warren_common::messages::{
    CommitEvent, Job, JobAttempt, JobEvent, JobEventKind, JobResult, JobStatus, Shard, TestCommand,
    TestStatus, WorkerStatus,
};

/// A database error. The dispatcher cannot record anything safely after one:
/// it stops consuming (unacknowledged messages stay with the broker).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database holds an invalid value in {column}: {message}")]
    Corrupt {
        column: &'static str,
        message: String,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// How long a writer waits for the database lock before failing, in ms.
/// Only one dispatcher writes; this covers an operator's `sqlite3` reading.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Version of the schema below (`PRAGMA user_version`). A database of
/// another version is refused rather than misread.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS commits (
    id               INTEGER PRIMARY KEY,
    repo             TEXT NOT NULL,
    sha              TEXT NOT NULL,
    branch           TEXT NOT NULL,
    url              TEXT NOT NULL,
    author           TEXT NOT NULL,
    summary          TEXT NOT NULL,
    committed_at     TEXT NOT NULL,
    detected_at      TEXT NOT NULL,
    received_at      TEXT NOT NULL,
    status           TEXT NOT NULL,
    message          TEXT,
    finished_at      TEXT,
    result_written   INTEGER NOT NULL DEFAULT 0,
    duplicate_events INTEGER NOT NULL DEFAULT 0,
    selection        TEXT,
    UNIQUE (repo, sha)
);
CREATE INDEX IF NOT EXISTS commits_branch ON commits (repo, branch, status);
CREATE INDEX IF NOT EXISTS commits_unwritten ON commits (result_written) WHERE result_written = 0;
CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT PRIMARY KEY,
    commit_id         INTEGER NOT NULL REFERENCES commits (id),
    shard_index       INTEGER NOT NULL,
    shard_count       INTEGER NOT NULL,
    command           TEXT NOT NULL,
    timeout_ms        INTEGER NOT NULL,
    env               TEXT NOT NULL,
    status            TEXT NOT NULL,
    message           TEXT,
    attempt           INTEGER NOT NULL,
    published         INTEGER NOT NULL DEFAULT 0,
    published_at      TEXT,
    decided_run       TEXT,
    finished_at       TEXT,
    lost_runs         INTEGER NOT NULL DEFAULT 0,
    late_results      INTEGER NOT NULL DEFAULT 0,
    files             TEXT NOT NULL DEFAULT '[]',
    junit             TEXT,
    retry_failed      INTEGER NOT NULL DEFAULT 0,
    estimated_ms      INTEGER,
    report_problem    TEXT
);
CREATE INDEX IF NOT EXISTS jobs_commit ON jobs (commit_id);
CREATE INDEX IF NOT EXISTS jobs_unpublished ON jobs (published) WHERE published = 0;
CREATE TABLE IF NOT EXISTS attempts (
    run_id           TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs (id),
    attempt          INTEGER NOT NULL,
    worker           TEXT NOT NULL,
    host             TEXT NOT NULL,
    state            TEXT NOT NULL,
    started_at       TEXT,
    last_seen        TEXT NOT NULL,
    finished_at      TEXT,
    status           TEXT,
    exit_code        INTEGER,
    signal           INTEGER,
    message          TEXT,
    checkout_ms      INTEGER,
    duration_ms      INTEGER,
    output           TEXT,
    output_truncated INTEGER,
    output_bytes     INTEGER
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id);
CREATE TABLE IF NOT EXISTS tests (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    name        TEXT NOT NULL,
    classname   TEXT NOT NULL,
    file        TEXT,
    duration_ms INTEGER NOT NULL,
    status      TEXT NOT NULL,
    message     TEXT,
    flaky       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tests_job ON tests (job_id);
CREATE TABLE IF NOT EXISTS file_timings (
    repo        TEXT NOT NULL,
    path        TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    measured    INTEGER NOT NULL,
    samples     INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (repo, path)
);
CREATE TABLE IF NOT EXISTS flaky (
    repo      TEXT NOT NULL,
    test      TEXT NOT NULL,
    sha       TEXT NOT NULL,
    at        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flaky_test ON flaky (repo, test);
CREATE TABLE IF NOT EXISTS workers (
    id        TEXT PRIMARY KEY,
    host      TEXT NOT NULL,
    slots     INTEGER NOT NULL,
    busy      INTEGER NOT NULL,
    jobs_done INTEGER NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_running ON attempts (state) WHERE state = 'running';
";

/// Commit status while its jobs run.
const RUNNING: &str = "running";
/// Job status until its first result.
const QUEUED: &str = "queued";

/// What happened to a commit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitSeen {
    /// First time: planning is up to the caller.
    New,
    /// Seen before (a redelivery or a second branch with the same commit).
    Duplicate { commit_id: i64 },
}

/// What happened to a job result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultRecorded {
    /// The first result of the job; `commit_finished` when it was the last
    /// job of its commit (the result file is due).
    Decided {
        commit_finished: Option<i64>,
        /// The job's commit (its progress changed).
        commit_id: i64,
        /// From the job's publish to the start of the deciding run, in ms.
        queue_wait_ms: Option<u64>,
    },
    /// The job already had a result; this one was counted and kept as a late
    /// attempt.
    Late,
    /// The result that decided the job, delivered again: nothing to do.
    Redelivered,
    /// No such job, or it belongs to another commit: dead-letter the message.
    Rejected(String),
}

/// Which commits to list.
#[derive(Debug, Clone, Default)]
pub struct CommitFilter {
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub status: Option<String>,
    /// Lowercase hex digits the sha starts with.
    pub sha_prefix: Option<String>,
    /// Only commits older than this id (the previous page's `next_before`).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A commit's plan as the store needs it.
pub struct Planned<'a> {
    pub plan: &'a Plan,
    pub shards: &'a [ShardPlan],
    pub selection: Option<&'a Selection>,
}

/// A newly recorded commit.
#[derive(Debug)]
pub struct Inserted {
    pub commit_id: i64,
    /// Job messages to publish (one per shard).
    pub jobs: Vec<Job>,
    /// Set when the commit finished at once (nothing to run).
    pub finished: Option<i64>,
}

/// Older commits' work cancelled by a newer commit.
#[derive(Debug, Default)]
pub struct Superseded {
    /// Jobs to stop on the workers.
    pub jobs: Vec<JobAttempt>,
    /// Commits that this finished (their result files are due).
    pub finished_commits: Vec<i64>,
}

/// What happened to a job event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRecorded {
    /// Recorded; `commit_finished` when a lost run spent the job's budget
    /// and that finished its commit (the result file is due).
    Recorded {
        commit_finished: Option<i64>,
        /// Runs this event showed were lost (redelivered elsewhere).
        lost: usize,
    },
    /// A new run of an attempt nobody wants any more (the job has its
    /// verdict, or a newer attempt): recorded as `cancelled`; its worker
    /// missed the cancel (it was away or restarted) and must be told again.
    Unwanted,
    /// No such job (or attempt): dead-letter the event.
    UnknownJob,
}

/// How many runs of one job may be lost before the job gets an `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub max_lost_runs: u32,
}

/// What expiring leases did.
#[derive(Debug, Default)]
pub struct LeaseExpiry {
    /// Runs declared lost: (job and attempt, worker).
    pub lost: Vec<(JobAttempt, String)>,
    /// New attempts to publish.
    pub reissue: Vec<Job>,
    /// Commits finished because a job's budget was spent.
    pub finished_commits: Vec<i64>,
}

/// The columns of a job that decisions need.
struct JobRow {
    id: String,
    commit_id: i64,
    status: String,
    published_at: Option<String>,
    decided_run: Option<String>,
    attempt: u32,
    lost_runs: u32,
    repo: String,
    sha: String,
}

fn job_row(tx: &Transaction<'_>, job_id: &str) -> Result<Option<JobRow>> {
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
fn spend_budget(
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

/// Most test cases kept per job: a report with more is cut (and says so
/// in the job's `report_problem`).
const MAX_TESTS_PER_JOB: usize = 100_000;

/// Keeps the decided run's test cases, its files' durations (for the next
/// split) and its flaky tests (for their history).
fn record_tests_and_timings(
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
fn test_key(classname: &str, name: &str) -> String {
    if classname.is_empty() {
        name.to_owned()
    } else {
        format!("{classname}::{name}")
    }
}

/// Decides `job` as `error` with `message` (no run decided it).
fn decide_error(
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

/// The SQLite database.
pub struct Store {
    conn: Connection,
}

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(column: &'static str, value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|error| StoreError::Corrupt {
            column,
            message: error.to_string(),
        })
}

fn parse_opt_ts(column: &'static str, value: Option<String>) -> Result<Option<DateTime<Utc>>> {
    value.map(|v| parse_ts(column, &v)).transpose()
}

fn corrupt(column: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        column,
        message: message.to_string(),
    }
}

fn parse_status(column: &'static str, value: &str) -> Result<JobStatus> {
    JobStatus::parse(value).ok_or_else(|| corrupt(column, format!("unknown status {value:?}")))
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, sync: SyncMode) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| corrupt("path", error))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                SyncMode::Full => "FULL",
                SyncMode::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let has_tables: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'commits')",
            [],
            |row| row.get(0),
        )?;
        if has_tables && version != SCHEMA_VERSION {
            return Err(corrupt(
                "user_version",
                format!("database schema version {version}; this build reads {SCHEMA_VERSION}"),
            ));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self { conn })
    }

    /// Opens an existing database for reading only (the HTTP API's
    /// connection, beside the dispatcher's own writer: WAL lets both work).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != SCHEMA_VERSION {
            return Err(corrupt(
                "user_version",
                format!("database schema version {version}; this build reads {SCHEMA_VERSION}"),
            ));
        }
        Ok(Self { conn })
    }

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
                                   env, status, attempt, files, junit, retry_failed, estimated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?10, ?11, ?12)",
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

    /// Records a job result: the first one decides the job, later ones are
    /// kept as late runs and counted.
    pub fn record_result(
        &mut self,
        result: &JobResult,
        now: DateTime<Utc>,
    ) -> Result<ResultRecorded> {
        let tx = self.conn.transaction()?;
        let job_id = result.job_id.to_string();
        let Some(job) = job_row(&tx, &job_id)? else {
            return Ok(ResultRecorded::Rejected(format!(
                "result for job {job_id}, which this dispatcher never planned"
            )));
        };
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
        let queue_wait_ms = job
            .published_at
            .as_deref()
            .and_then(|at| parse_ts("jobs.published_at", at).ok())
            .and_then(|published| {
                u64::try_from((result.started_at - published).num_milliseconds()).ok()
            });
        Ok(ResultRecorded::Decided {
            commit_finished,
            commit_id: job.commit_id,
            queue_wait_ms,
        })
    }

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

    fn job_reports(&self, commit_id: i64) -> Result<Vec<JobReport>> {
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
    fn fill_tests(&self, commit_id: i64, report: &mut CommitReport) -> Result<()> {
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

    fn attempt_reports(&self, job_id: &str) -> Result<Vec<AttemptReport>> {
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

fn insert_commit(
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

/// Jobs whose current attempt is not confirmed, optionally of one commit;
/// stamps their `published_at`.
fn unpublished_jobs(
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
fn stop_undecided_jobs(
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

/// The columns of a [`CommitSummary`], one query for one commit or a page.
const SUMMARY_SELECT: &str = "SELECT c.id, c.repo, c.sha, c.branch, c.summary, c.author, c.status,
        c.detected_at, c.received_at, c.finished_at,
        (SELECT count(*) FROM jobs j WHERE j.commit_id = c.id),
        (SELECT count(*) FROM jobs j WHERE j.commit_id = c.id AND j.status != 'queued')
     FROM commits c";

/// A row of [`SUMMARY_SELECT`], as stored.
type SummaryRow = (i64, [String; 8], Option<String>, u64, u64);

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
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

fn commit_summary_of(
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

/// If every job of the commit has a status, gives the commit the aggregate
/// status and returns its id.
fn finish_commit_if_done(
    tx: &Transaction<'_>,
    commit_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<i64>> {
    let mut statement = tx.prepare("SELECT status FROM jobs WHERE commit_id = ?1")?;
    let statuses = statement
        .query_map(params![commit_id], |row| row.get::<_, String>(0))?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if statuses.iter().any(|status| status == QUEUED) {
        return Ok(None);
    }
    let statuses = statuses
        .iter()
        .map(|status| parse_status("jobs.status", status))
        .collect::<Result<Vec<_>>>()?;
    let status = JobStatus::aggregate(statuses);
    tx.execute(
        "UPDATE commits SET status = ?2, finished_at = ?3 WHERE id = ?1",
        params![commit_id, status.as_str(), ts(now)],
    )?;
    Ok(Some(commit_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use warren_common::ids::WorkerId;

    fn event(sha: &str) -> CommitEvent {
        CommitEvent {
            repo: RepoName::parse("api").unwrap(),
            url: RepoUrl::parse("/srv/api.git").unwrap(),
            branch: BranchName::parse("main").unwrap(),
            sha: CommitId::parse(&sha.repeat(40)).unwrap(),
            parents: vec![],
            author: "A <a@x>".into(),
            summary: "change".into(),
            committed_at: Utc::now(),
            detected_at: Utc::now(),
        }
    }

    fn plan() -> Plan {
        Plan {
            command: TestCommand::Shell("make test".into()),
            timeout: Duration::from_secs(60),
            env: BTreeMap::new(),
            suite: None,
            junit: None,
            retry_failed: 0,
            supersede: crate::spec::Globs::none(),
        }
    }

    fn try_insert(store: &mut Store, event: &CommitEvent) -> Result<Inserted> {
        let whole = [ShardPlan {
            files: Vec::new(),
            estimated_ms: 0,
        }];
        let plan = plan();
        let planned = Planned {
            plan: &plan,
            shards: &whole,
            selection: None,
        };
        store.insert_planned(event, &planned, Utc::now())
    }

    fn insert(store: &mut Store, event: &CommitEvent) -> Vec<Job> {
        try_insert(store, event).unwrap().jobs
    }

    fn result(job: &Job, worker: &str, status: JobStatus) -> JobResult {
        JobResult {
            job_id: job.job_id,
            attempt: job.attempt,
            run_id: uuid::Uuid::new_v4(),
            worker: WorkerId::parse(worker).unwrap(),
            host: "h".into(),
            repo: job.repo.clone(),
            sha: job.sha.clone(),
            status,
            exit_code: Some(if status == JobStatus::Passed { 0 } else { 1 }),
            signal: None,
            message: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            checkout_ms: 3,
            duration_ms: 10,
            output: format!("output of {worker}"),
            output_truncated: false,
            output_bytes: 12,
            tests: Vec::new(),
            file_timings: Vec::new(),
            report_problem: None,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db/warren.db"), SyncMode::Normal).unwrap();
        (dir, store)
    }

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

    const BUDGET: RetryBudget = RetryBudget { max_lost_runs: 2 };

    fn started(job: &Job, worker: &str, at: DateTime<Utc>) -> JobEvent {
        JobEvent {
            job_id: job.job_id,
            attempt: job.attempt,
            run_id: uuid::Uuid::new_v4(),
            worker: WorkerId::parse(worker).unwrap(),
            host: "h".into(),
            event: JobEventKind::Started,
            at,
        }
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

    fn states(store: &Store, commit_id: i64) -> Vec<(String, String)> {
        store.commit_report(commit_id).unwrap().jobs[0]
            .attempts
            .iter()
            .map(|a| (a.worker.clone(), a.state.clone()))
            .collect()
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

    #[test]
    fn a_database_of_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        drop(Store::open(&path, SyncMode::Normal).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&path, SyncMode::Normal)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
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

    fn suite_file(path: &str) -> SuitePath {
        SuitePath::parse(path).unwrap()
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
