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
//! - this file: [`Store`], opening (WAL, busy timeout, the version check),
//!   the error type, the shared row readers and the types callers get back;
//! - `schema`: the numbered migrations, applied when the store opens;
//! - `commits`: a commit seen once per (repo, sha) — the dedup — planned
//!   into jobs, superseded, or finished at once with an `error`;
//! - `jobs`: publish marks, `started`/`heartbeat` events, the retry budget,
//!   the operator's retry and cancel;
//! - `leases`: lost runs at lease expiry, dead-lettered jobs;
//! - `results`: the first result decides, later ones are counted;
//! - `history`: tests, flaky history and file timings of a decided result;
//! - `reports`: the read side (summaries, reports, output, workers).

mod commits;
mod history;
mod jobs;
mod leases;
mod reports;
mod results;
mod schema;

use self::history::*;
use self::jobs::*;
use self::results::*;

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
