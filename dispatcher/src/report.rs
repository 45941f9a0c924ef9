//! The result file: `<results_dir>/<repo>/<sha>.json`, one per commit.
//!
//! Tools parse it, so its shape is documented in the README and versioned
//! by `schema`. It is written atomically (temporary file, fsync, rename)
//! from the database, so it is either absent or complete.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::{Path, PathBuf};
use warren_common::ids::{BranchName, CommitId, JobId, RepoName};
use warren_common::messages::{JobStatus, Shard, TestStatus};

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
    /// Which suite files were selected and why (`null` without a suite).
    pub selection: Option<serde_json::Value>,
    /// Counts over `tests` (from the jobs' JUnit reports).
    pub test_counts: TestCounts,
    /// Every test case, failed and errored ones first.
    pub tests: Vec<TestReport>,
    /// Tests that failed and then passed on a rerun, with their history.
    pub flaky_tests: Vec<FlakyReport>,
    pub jobs: Vec<JobReport>,
}

/// How many tests ended how.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestCounts {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub errors: u64,
    /// Passed only on a rerun (counted in `passed` too).
    pub flaky: u64,
}

/// One test case of the commit.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// The shard (job) that ran it.
    pub shard: u32,
    pub name: String,
    pub classname: String,
    pub file: Option<String>,
    pub duration_ms: u64,
    pub status: TestStatus,
    pub message: Option<String>,
    pub flaky: bool,
}

/// One test in one commit: a point of the test's history.
#[derive(Debug, Clone, Serialize)]
pub struct TestRun {
    pub sha: String,
    pub branch: String,
    pub summary: String,
    /// The commit's verdict (`None` while it runs).
    pub commit_status: Option<JobStatus>,
    pub status: TestStatus,
    /// Failed, then passed on a rerun.
    pub flaky: bool,
    pub duration_ms: u64,
}

/// A flaky test of this commit.
#[derive(Debug, Clone, Serialize)]
pub struct FlakyReport {
    pub name: String,
    pub classname: String,
    /// Commits of this repository in which it was flaky, this one included.
    pub times_flaky: u64,
}

/// A commit in brief, for lists and live updates (docs/API.md).
#[derive(Debug, Clone, Serialize)]
pub struct CommitSummary {
    /// The database's id: the `before` of the next page.
    #[serde(skip)]
    pub id: i64,
    pub repo: String,
    pub sha: String,
    pub branch: String,
    pub summary: String,
    pub author: String,
    pub status: Option<JobStatus>,
    pub detected_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub jobs: u64,
    pub jobs_done: u64,
}

/// A worker, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    pub id: String,
    pub host: String,
    pub slots: u16,
    pub busy: u16,
    pub jobs_done: u64,
    pub last_seen: DateTime<Utc>,
    pub current_jobs: Vec<CurrentJob>,
}

/// A job a worker runs now.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentJob {
    pub repo: String,
    pub sha: String,
    pub job_id: String,
    pub attempt: u32,
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
    /// The suite files this shard ran (the same in every attempt).
    pub files: Vec<String>,
    /// What the split expected the shard to take, from earlier timings.
    pub estimated_ms: Option<u64>,
    /// Why the shard's JUnit report could not be read, if it could not.
    pub report_problem: Option<String>,
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
        let failed: Vec<&str> = self
            .tests
            .iter()
            .filter(|test| matches!(test.status, TestStatus::Failed | TestStatus::Error))
            .map(|test| test.name.as_str())
            .collect();
        if self.message.is_none() && self.status == Some(JobStatus::Failed) && !failed.is_empty() {
            const NAMED: usize = 5;
            let more = failed.len().saturating_sub(NAMED);
            self.message = Some(format!(
                "{} test{} failed: {}{}",
                failed.len(),
                if failed.len() == 1 { "" } else { "s" },
                failed[..failed.len().min(NAMED)].join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
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

    /// Writes the file atomically and durably, and beside it
    /// `<sha>.junit.xml`, one JUnit report merged from every shard's, when
    /// the commit has test cases.
    pub fn write(&self, results_dir: &Path) -> std::io::Result<PathBuf> {
        let path = self.path(results_dir);
        if !self.tests.is_empty() {
            let junit = path.with_extension("junit.xml");
            warren_common::atomic_file::write(&junit, self.junit_xml().as_bytes())?;
        }
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        warren_common::atomic_file::write(&path, &json)?;
        Ok(path)
    }

    /// The commit's test cases as one JUnit XML document: a `<testsuite>`
    /// per shard.
    pub fn junit_xml(&self) -> String {
        let seconds = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
        let counts = &self.test_counts;
        let total_ms: u64 = self.tests.iter().map(|t| t.duration_ms).sum();
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml.push_str(&format!(
            "<testsuites name=\"{} {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">\n",
            xml_escape(self.repo.as_str()),
            self.sha,
            counts.total,
            counts.failed,
            counts.errors,
            counts.skipped,
            seconds(total_ms)
        ));
        for job in &self.jobs {
            let tests: Vec<&TestReport> = self
                .tests
                .iter()
                .filter(|t| t.shard == job.shard.index)
                .collect();
            if tests.is_empty() {
                continue;
            }
            let count = |status| tests.iter().filter(|t| t.status == status).count();
            xml.push_str(&format!(
                "  <testsuite name=\"shard {} of {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">\n",
                job.shard.index + 1,
                job.shard.count,
                tests.len(),
                count(TestStatus::Failed),
                count(TestStatus::Error),
                count(TestStatus::Skipped),
                seconds(tests.iter().map(|t| t.duration_ms).sum())
            ));
            for test in tests {
                xml.push_str(&format!(
                    "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
                    xml_escape(&test.name),
                    xml_escape(&test.classname),
                    seconds(test.duration_ms)
                ));
                if let Some(file) = &test.file {
                    xml.push_str(&format!(" file=\"{}\"", xml_escape(file)));
                }
                let message = xml_escape(test.message.as_deref().unwrap_or_default());
                match test.status {
                    TestStatus::Passed => xml.push_str("/>\n"),
                    TestStatus::Failed => xml.push_str(&format!(
                        ">\n      <failure message=\"{message}\"/>\n    </testcase>\n"
                    )),
                    TestStatus::Error => xml.push_str(&format!(
                        ">\n      <error message=\"{message}\"/>\n    </testcase>\n"
                    )),
                    TestStatus::Skipped => xml.push_str(">\n      <skipped/>\n    </testcase>\n"),
                }
            }
            xml.push_str("  </testsuite>\n");
        }
        xml.push_str("</testsuites>\n");
        xml
    }
}

/// Escapes text for an XML attribute; drops characters XML 1.0 forbids.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}
