//! The result file: `<results_dir>/<repo>/<sha>.json`, one per commit.
//!
//! Tools parse it, so its shape is documented in the README and versioned
//! by `schema`. It is written atomically (temporary file, fsync, rename)
//! from the database, so it is either absent or complete.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::{Path, PathBuf};
use warren_common::ids::{BranchName, CommitId, JobId, RepoName};
use warren_common::messages::{JobStatus, Shard};

/// A commit's verdict and how it was reached.
#[derive(Debug, Clone, Serialize)]
pub struct CommitReport {
    /// Version of this file's format.
    pub schema: u32,
    pub repo: RepoName,
    pub sha: CommitId,
    pub branch: BranchName,
    pub author: String,
    pub summary: String,
    /// `passed`, `failed`, `timed_out` or `error` (`null` while running).
    pub status: Option<JobStatus>,
    /// Why the commit is in error or failed, for people.
    pub message: Option<String>,
    pub committed_at: DateTime<Utc>,
    /// When the watcher saw the commit.
    pub detected_at: DateTime<Utc>,
    /// When the dispatcher received it.
    pub received_at: DateTime<Utc>,
    /// When the first attempt of any job started (`null` if none ran).
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// From `started_at` (or `received_at`) to `finished_at`.
    pub duration_ms: Option<u64>,
    /// Times the commit event arrived again (redeliveries, other branches).
    pub duplicate_events: u64,
    pub jobs: Vec<JobReport>,
}

/// One job of a commit, with the attempt that decided it.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub id: JobId,
    pub shard: Shard,
    pub command: String,
    pub timeout_ms: u64,
    pub status: Option<JobStatus>,
    /// The attempt that decided the job (or the latest one, while running).
    pub attempt: u32,
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
    pub checkout_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub output: String,
    pub output_truncated: bool,
    pub output_bytes: u64,
    /// Runs lost (worker gone, or no heartbeat for a lease) before the verdict.
    pub lost_runs: u32,
    /// Results that arrived after the job was decided (ignored, counted).
    pub late_results: u64,
    /// Every run of the job on a worker, in order.
    pub attempts: Vec<AttemptReport>,
}

/// One run of a job on one worker.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptReport {
    /// This run's identity (chosen by its worker).
    pub run_id: String,
    pub attempt: u32,
    pub worker: String,
    pub host: String,
    /// `running`, `finished` (decided the job), `late` (a result after the
    /// verdict, ignored) or `lost` (`message` says why).
    pub state: String,
    pub started_at: Option<DateTime<Utc>>,
    /// The last event or result from the run's worker.
    pub last_seen: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Option<JobStatus>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The result's message, or why the run was lost.
    pub message: Option<String>,
    pub checkout_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// Kept only in the database for the decided attempt; the job carries it.
    #[serde(skip)]
    pub output: Option<String>,
    #[serde(skip)]
    pub output_truncated: bool,
    #[serde(skip)]
    pub output_bytes: Option<u64>,
}

impl CommitReport {
    /// Where this commit's result file lives under `results_dir`. Both parts
    /// are validated ids, so the path cannot leave `results_dir`.
    pub fn path(&self, results_dir: &Path) -> PathBuf {
        results_dir
            .join(self.repo.as_str())
            .join(format!("{}.json", self.sha))
    }

    /// Fills `message` for a commit that did not pass from its first job
    /// that says why.
    pub fn explain(mut self) -> Self {
        if self.message.is_none() && self.status.is_some_and(|s| s != JobStatus::Passed) {
            self.message = self
                .jobs
                .iter()
                .filter(|job| job.status == self.status)
                .find_map(|job| job.message.clone())
                .or_else(|| {
                    self.jobs
                        .iter()
                        .find(|job| job.status == self.status)
                        .and_then(|job| job.exit_code)
                        .map(|code| format!("the command exited with status {code}"))
                });
        }
        self
    }

    /// Writes the file atomically and durably.
    pub fn write(&self, results_dir: &Path) -> std::io::Result<PathBuf> {
        let path = self.path(results_dir);
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        warren_common::atomic_file::write(&path, &json)?;
        Ok(path)
    }
}
