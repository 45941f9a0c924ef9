//! The JSON the dispatcher answers with (docs/API.md and the README's
//! "The result file"), as far as the client reads it.
//!
//! Decoding is lenient on purpose, unlike Warren's broker messages: unknown
//! fields are ignored and most fields may be missing, so a newer dispatcher
//! with more fields still works with this client. `--json` prints the
//! server's own text, never these structs.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// A commit's or a job's verdict; `null` (no verdict yet) is `Running`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(from = "Option<String>")]
pub enum Verdict {
    Passed,
    Failed,
    TimedOut,
    Error,
    Superseded,
    Cancelled,
    #[default]
    Running,
    /// A status this client does not know (a newer server); never a pass.
    Other(String),
}

impl From<Option<String>> for Verdict {
    fn from(status: Option<String>) -> Self {
        match status.as_deref() {
            None => Self::Running,
            Some(text) => Self::parse(text),
        }
    }
}

impl Verdict {
    /// `running` and `queued` are accepted as "no verdict yet" too, in case
    /// a server spells the undecided state out instead of `null`.
    pub fn parse(text: &str) -> Self {
        match text {
            "passed" => Self::Passed,
            "failed" => Self::Failed,
            "timed_out" => Self::TimedOut,
            "error" => Self::Error,
            "superseded" => Self::Superseded,
            "cancelled" => Self::Cancelled,
            "running" | "queued" => Self::Running,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Error => "error",
            Self::Superseded => "superseded",
            Self::Cancelled => "cancelled",
            Self::Running => "running",
            Self::Other(other) => other,
        }
    }

    pub fn is_decided(&self) -> bool {
        *self != Self::Running
    }
}

/// `GET /api/commits`.
#[derive(Debug, Deserialize)]
pub(crate) struct CommitList {
    pub commits: Vec<CommitSummary>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CommitSummary {
    pub repo: String,
    pub sha: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub status: Verdict,
    #[serde(default)]
    pub detected_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub jobs: Option<u64>,
    #[serde(default)]
    pub jobs_done: Option<u64>,
}

/// `GET /api/commits/{repo}/{sha}`: the result file.
#[derive(Debug, Deserialize)]
pub(crate) struct Commit {
    pub repo: String,
    pub sha: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub status: Verdict,
    /// Why the commit did not pass.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub detected_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub selection: Option<Selection>,
    #[serde(default)]
    pub test_counts: Option<TestCounts>,
    #[serde(default)]
    pub tests: Vec<TestCase>,
    #[serde(default)]
    pub flaky_tests: Vec<FlakyTest>,
    #[serde(default)]
    pub jobs: Vec<Job>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Selection {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub selected: Option<u64>,
    #[serde(default)]
    pub of: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TestCounts {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub errors: u64,
    pub flaky: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct TestCase {
    #[serde(default)]
    pub shard: Option<u32>,
    pub name: String,
    #[serde(default)]
    pub classname: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl TestCase {
    pub(crate) fn is_failure(&self) -> bool {
        matches!(self.status.as_deref(), Some("failed" | "error"))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct FlakyTest {
    pub name: String,
    #[serde(default)]
    pub classname: Option<String>,
    #[serde(default)]
    pub times_flaky: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Job {
    pub id: String,
    #[serde(default)]
    pub shard: Option<Shard>,
    #[serde(default)]
    pub status: Verdict,
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<serde_json::Value>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub files: Option<Vec<String>>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub output_truncated: bool,
    #[serde(default)]
    pub output_bytes: Option<u64>,
    #[serde(default)]
    pub report_problem: Option<String>,
}

impl Job {
    /// The shard index as the API gives it, from 0 (0 for a commit that was
    /// not split). For `--json` output and matching; people see
    /// [`Job::number`].
    pub(crate) fn index(&self) -> u32 {
        self.shard.as_ref().map_or(0, |shard| shard.index)
    }

    /// The shard as people count it, from 1, as the status page numbers
    /// it: `index() + 1`.
    pub(crate) fn number(&self) -> u32 {
        self.index().saturating_add(1)
    }

    /// How many shards the commit was split into, if the API says.
    pub(crate) fn count(&self) -> Option<u32> {
        self.shard.as_ref().and_then(|shard| shard.count)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Shard {
    pub index: u32,
    #[serde(default)]
    pub count: Option<u32>,
}

/// `GET /api/workers`.
#[derive(Debug, Deserialize)]
pub(crate) struct WorkerList {
    pub workers: Vec<Worker>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Worker {
    pub id: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub slots: Option<u64>,
    #[serde(default)]
    pub busy: Option<u64>,
    #[serde(default)]
    pub jobs_done: Option<u64>,
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    pub current_jobs: Vec<CurrentJob>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CurrentJob {
    pub repo: String,
    pub sha: String,
    #[serde(default)]
    pub attempt: Option<u64>,
}

/// `POST …/retry` (202).
#[derive(Debug, Deserialize)]
pub(crate) struct Retried {
    #[serde(default)]
    pub status: Option<String>,
}

/// `POST …/cancel` (202).
#[derive(Debug, Deserialize)]
pub(crate) struct Cancelled {
    #[serde(default)]
    pub jobs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_or_missing_status_is_running() {
        let summary: CommitSummary =
            serde_json::from_str(r#"{"repo":"api","sha":"ab","status":null}"#).unwrap();
        assert_eq!(summary.status, Verdict::Running);
        let summary: CommitSummary = serde_json::from_str(r#"{"repo":"api","sha":"ab"}"#).unwrap();
        assert_eq!(summary.status, Verdict::Running);
    }

    #[test]
    fn statuses_decode_and_unknown_ones_are_kept() {
        let job: Job = serde_json::from_str(r#"{"id":"j","status":"timed_out"}"#).unwrap();
        assert_eq!(job.status, Verdict::TimedOut);
        let job: Job = serde_json::from_str(r#"{"id":"j","status":"exploded"}"#).unwrap();
        assert_eq!(job.status, Verdict::Other("exploded".into()));
        assert_eq!(job.status.as_str(), "exploded");
    }

    #[test]
    fn shards_are_numbered_from_1_for_people_and_from_0_by_the_api() {
        let job: Job = serde_json::from_str(r#"{"id":"j","shard":{"index":2,"count":4}}"#).unwrap();
        assert_eq!((job.index(), job.number(), job.count()), (2, 3, Some(4)));
        let unsplit: Job = serde_json::from_str(r#"{"id":"j"}"#).unwrap();
        assert_eq!(
            (unsplit.index(), unsplit.number(), unsplit.count()),
            (0, 1, None)
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let worker: Worker =
            serde_json::from_str(r#"{"id":"w","new_field":[1,2],"current_jobs":[]}"#).unwrap();
        assert_eq!(worker.id, "w");
    }
}
