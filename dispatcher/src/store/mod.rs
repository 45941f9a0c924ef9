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
//!
//! One file per concern, each an `impl Store` block (and its helpers):
//! - this file: [`Store`], opening (WAL, busy timeout, migrations), the
//!   error type and the types callers get back;
//! - `schema`: the numbered migrations, applied when the store opens;
//! - `row`: reading columns by name into typed values (a bad value names
//!   its column in [`StoreError::Corrupt`]);
//! - `commits`: a commit seen once per (repo, sha) — the dedup — planned
//!   into jobs, superseded, or finished at once with an `error`;
//! - `jobs`: publish marks, `started`/`heartbeat` events, the retry budget,
//!   the operator's retry and cancel;
//! - `leases`: lost runs at lease expiry, dead-lettered jobs;
//! - `results`: the first result decides, later ones are counted;
//! - `history`: tests, flaky history and file timings of a decided result;
//! - `reports`: the read side (summaries, reports, output, workers);
//! - `trends`: a test's runs across commits (the pictures' read side);
//! - `testing` (tests only): the fixtures of the unit tests in each file.
//!
//! # The interface
//! SQL never leaves this folder: the loops and the HTTP API see only the
//! `pub` methods of [`Store`] and the types above, all in Warren's terms
//! (ids, statuses, messages, reports), none in SQLite's. That set is the
//! contract a second backend implements:
//!
//! | caller | methods |
//! |---|---|
//! | intake | `see_commit`, `insert_planned`, `insert_errored`, `supersede_older`, `file_timings`, `has_result` |
//! | publishing | `unpublished_jobs`, `mark_published` |
//! | results and events | `record_result`, `record_event`, `record_worker_status` |
//! | leases | `expire_leases`, `dead_lettered` |
//! | result files | `unwritten_results`, `commit_report`, `mark_written` |
//! | operator | `retry`, `cancel` |
//! | read side (API, pages) | `commit_summaries`, `commit_summary`, `commit_id`, `commit_report`, `job_output`, `workers`, `test_history` |
//!
//! Every write method is one transaction: it decides and records together,
//! so a crash between two calls leaves the books consistent and the caller
//! redoes its step from the broker's redelivery. The single writer is the
//! dispatcher's store thread (`state.rs`); readers open their own
//! connection with [`Store::open_read_only`].

mod commits;
mod history;
mod jobs;
mod leases;
mod reports;
mod results;
mod row;
mod schema;
mod trends;

use self::history::*;
use self::jobs::*;
use self::results::*;
use self::row::{at, get, json, opt_at, opt_json, verdict};

use crate::config::SyncMode;
use crate::report::{
    AttemptReport, CommitReport, CommitSummary, CurrentJob, FlakyReport, JobReport, TestCounts,
    TestReport, TestRun, WorkerReport,
};
use crate::select::Selection;
use crate::spec::Plan;
use crate::split::ShardPlan;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use warren_common::ids::{CommitId, JobId, RepoName};
use warren_common::messages::{
    CommitEvent, Job, JobAttempt, JobEvent, JobEventKind, JobResult, JobStatus, Shard, TestCommand,
    TestStatus, WorkerStatus,
};

/// A database error. The dispatcher cannot record anything safely after one:
/// it stops consuming (unacknowledged messages stay with the broker).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(rusqlite::Error),
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
    published_at: Option<DateTime<Utc>>,
    decided_run: Option<String>,
    attempt: u32,
    lost_runs: u32,
    repo: String,
    sha: String,
    /// The key its results are proven with; `None` for a job published
    /// before results carried proofs.
    result_key: Option<String>,
}

/// The SQLite database.
pub struct Store {
    conn: Connection,
}

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn corrupt(column: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        column,
        message: message.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, bringing its
    /// schema to this build's version (see `schema`).
    pub fn open(path: &Path, sync: SyncMode) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| corrupt("path", error))?;
        }
        let mut conn = Connection::open(path)?;
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
        schema::migrate(&mut conn)?;
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
        schema::check_version(schema::version(&conn)?)?;
        Ok(Self { conn })
    }
}

#[cfg(test)]
mod testing;
