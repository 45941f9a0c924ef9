//! The messages that travel through the broker, as versioned JSON.
//!
//! Every body is a JSON object with two envelope fields, `schema` (the version,
//! [`SCHEMA_VERSION`]) and `type` (the message type), beside the message's own
//! fields, so that a person reading a queue in the management UI sees what a
//! message is. Decoding is strict: wrong version, wrong type, unknown or
//! missing fields, invalid ids and oversize bodies are all [`DecodeError`]s,
//! which consumers dead-letter with the error as the reason (`messages/codec.rs`).

use crate::ids::{BranchName, CommitId, ImageRef, JobId, RepoName, RepoUrl, SuitePath, WorkerId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod codec;

pub use self::codec::{DecodeError, MAX_BODY_BYTES, Message, SCHEMA_VERSION, decode, encode};

/// A new commit on a watched branch, published by the watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitEvent {
    pub repo: RepoName,
    pub url: RepoUrl,
    pub branch: BranchName,
    pub sha: CommitId,
    pub parents: Vec<CommitId>,
    /// `Name <email>` of the author.
    pub author: String,
    /// First line of the commit message.
    pub summary: String,
    pub committed_at: DateTime<Utc>,
    /// When the watcher saw the commit for the first time.
    pub detected_at: DateTime<Utc>,
}

impl Message for CommitEvent {
    const TYPE: &'static str = "commit";
}

/// How a job's command is run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TestCommand {
    /// A script for `sh -c`, written by the repository's owner in `warren.toml`.
    Shell(String),
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
}

impl TestCommand {
    /// Refuses empty commands and NUL bytes (which cannot be passed to exec).
    pub fn validate(&self) -> Result<(), String> {
        let parts: Vec<&str> = match self {
            Self::Shell(script) => vec![script.as_str()],
            Self::Argv(argv) => argv.iter().map(String::as_str).collect(),
        };
        if parts.first().is_none_or(|first| first.trim().is_empty()) {
            return Err("command is empty".into());
        }
        if parts.iter().any(|part| part.contains('\0')) {
            return Err("command contains a NUL byte".into());
        }
        Ok(())
    }
}

impl std::fmt::Display for TestCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shell(script) => f.write_str(script),
            Self::Argv(argv) => f.write_str(&argv.join(" ")),
        }
    }
}

/// Which part of a commit's suite a job runs: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Most shards one commit may be split into.
pub const MAX_SHARDS: u32 = 1024;

impl Shard {
    /// The whole suite as one job.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    fn validate(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_SHARDS || self.index >= self.count {
            return Err(format!(
                "shard {} of {} is out of range (count 1..={MAX_SHARDS}, index < count)",
                self.index, self.count
            ));
        }
        Ok(())
    }
}

/// Longest job timeout a message may carry, in milliseconds (one day).
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// One attempt at running one job, published by the dispatcher to workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub job_id: JobId,
    /// 1 for the first attempt; a re-issued job carries the next number.
    pub attempt: u32,
    pub repo: RepoName,
    pub url: RepoUrl,
    pub branch: BranchName,
    pub sha: CommitId,
    pub shard: Shard,
    pub command: TestCommand,
    pub timeout_ms: u64,
    /// Extra environment for the command, from `warren.toml`.
    pub env: BTreeMap<String, String>,
    /// The suite files of this shard, for the command's `{files}` (all at
    /// once) or `{file}` (one run per file); empty when the suite is not
    /// split. A re-issued shard carries the same files.
    #[serde(default)]
    pub files: Vec<SuitePath>,
    /// A JUnit XML report the command writes, relative to the checkout.
    #[serde(default)]
    pub junit: Option<SuitePath>,
    /// Runs of failed tests (files) again, to tell flaky tests from broken
    /// ones. 0: no reruns.
    #[serde(default)]
    pub retry_failed: u32,
    /// The container image the command runs in (`image` in `warren.toml`),
    /// on a worker with `executor = "container"`. Left out of the body when
    /// `None`, so a job without one reads the same as before; a worker that
    /// does not know the field refuses a job that has one (unknown field)
    /// rather than run it outside the container it asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    pub published_at: DateTime<Utc>,
    /// `false`: the command gets no network (`network = false` in
    /// `warren.toml`); absent: the worker's policy decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    /// Limits the commit asks for (`[limits]`); the worker applies the lower
    /// of these and its own maxima.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<JobLimits>,
    /// The key the worker proves its result with (hex, see
    /// [`proof`](super::proof)); never given to the command. Absent from jobs of a
    /// dispatcher that does not check results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
}

/// Per-job limits a commit asks for; each absent one is the worker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    /// Memory of all the command's processes, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Processes (and threads) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// CPU time of all the command's processes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    /// Bytes the command may add to its checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// Most files one job may carry.
pub const MAX_FILES_PER_JOB: usize = 10_000;
/// Most reruns of failed tests.
pub const MAX_RETRY_FAILED: u32 = 5;

impl Message for Job {
    const TYPE: &'static str = "job";

    fn validate(&self) -> Result<(), String> {
        self.shard.validate()?;
        self.command.validate()?;
        if self.attempt == 0 {
            return Err("attempt numbers start at 1".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "timeout_ms {} is out of range (1..={MAX_TIMEOUT_MS})",
                self.timeout_ms
            ));
        }
        for name in self.env.keys() {
            validate_env_name(name)?;
        }
        if self.files.len() > MAX_FILES_PER_JOB {
            return Err(format!(
                "{} files in one job, more than {MAX_FILES_PER_JOB}",
                self.files.len()
            ));
        }
        if self.retry_failed > MAX_RETRY_FAILED {
            return Err(format!(
                "retry_failed {} is more than {MAX_RETRY_FAILED}",
                self.retry_failed
            ));
        }
        Ok(())
    }
}

/// Environment variable names a job may set: `[A-Za-z_][A-Za-z0-9_]*`, and
/// not `WARREN_*`, which the worker sets itself.
pub fn validate_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("environment variable name {name:?} is not valid"));
    }
    if name.starts_with("WARREN_") {
        return Err(format!(
            "environment variable {name:?} is reserved (WARREN_* is set by the worker)"
        ));
    }
    Ok(())
}

/// What a worker reports while it holds a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEventKind {
    /// The worker took the job and is checking out the commit.
    Started,
    /// The job is still running (sent every `heartbeat_interval`).
    Heartbeat,
}

/// A transient progress report from a worker about one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEvent {
    pub job_id: JobId,
    pub attempt: u32,
    /// This run of the job: chosen by the worker when it takes the delivery,
    /// so two deliveries of the same attempt (a redelivery after a lost
    /// worker) are told apart.
    pub run_id: uuid::Uuid,
    pub worker: WorkerId,
    pub host: String,
    pub event: JobEventKind,
    pub at: DateTime<Utc>,
}

impl Message for JobEvent {
    const TYPE: &'static str = "job_event";
}

/// The verdict of one job (and of a commit, aggregated over its jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// The command exited with status 0.
    Passed,
    /// The command exited with another status or was killed by a signal.
    Failed,
    /// The command ran past its timeout and was killed.
    TimedOut,
    /// The test could not be run: bad config, missing commit, command not found…
    Error,
    /// Not run to the end: a newer commit on the branch replaced it (the
    /// dispatcher's verdict; workers never report it).
    Superseded,
    /// Not run to the end: an operator cancelled it (the dispatcher's
    /// verdict; workers never report it).
    Cancelled,
}

impl JobStatus {
    /// The name used in messages, the database and result files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Error => "error",
            Self::Superseded => "superseded",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the name written by [`JobStatus::as_str`].
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Passed,
            Self::Failed,
            Self::TimedOut,
            Self::Error,
            Self::Superseded,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }

    /// The commit's verdict from its jobs': the worst one wins
    /// (error > timed_out > failed > superseded > passed): a commit with a
    /// failed job has failed even if its other jobs were superseded. No
    /// jobs means passed.
    pub fn aggregate(statuses: impl IntoIterator<Item = JobStatus>) -> JobStatus {
        statuses
            .into_iter()
            .max_by_key(|status| match status {
                Self::Passed => 0,
                Self::Superseded | Self::Cancelled => 1,
                Self::Failed => 2,
                Self::TimedOut => 3,
                Self::Error => 4,
            })
            .unwrap_or(Self::Passed)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one attempt, published by the worker that ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub job_id: JobId,
    pub attempt: u32,
    /// The run this result ends (see [`JobEvent::run_id`]).
    pub run_id: uuid::Uuid,
    pub worker: WorkerId,
    pub host: String,
    pub repo: RepoName,
    pub sha: CommitId,
    pub status: JobStatus,
    /// The command's exit status, when it exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that ended the command, when one did.
    pub signal: Option<i32>,
    /// Why the job errored or timed out, for people.
    pub message: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Time spent fetching and checking out the commit, in milliseconds.
    pub checkout_ms: u64,
    /// Time the command ran, in milliseconds.
    pub duration_ms: u64,
    /// stdout and stderr interleaved, capped (head and tail kept), invalid
    /// UTF-8 replaced with U+FFFD.
    pub output: String,
    /// Whether bytes were left out of `output`.
    pub output_truncated: bool,
    /// How many bytes the command wrote in all.
    pub output_bytes: u64,
    /// Per test, from the job's JUnit report (after reruns of failures).
    #[serde(default)]
    pub tests: Vec<TestCase>,
    /// Time per suite file: measured (`{file}` runs), summed from the
    /// report, or the shard's time shared out evenly (`estimated`).
    #[serde(default)]
    pub file_timings: Vec<FileTiming>,
    /// Why the JUnit report could not be read (missing, malformed), for the
    /// commit's result. `None` when there is none to read or it was fine.
    #[serde(default)]
    pub report_problem: Option<String>,
    /// HMAC-SHA256 of this result (without `proof`) under its job's
    /// `result_key`, hex: the dispatcher accepts a result for a job that has
    /// a key only with a valid proof (see [`proof`](super::proof)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    Passed,
    Failed,
    Skipped,
    Error,
}

impl TestStatus {
    /// The name used in messages, the database and result files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Error => "error",
        }
    }

    /// Parses the name written by [`TestStatus::as_str`].
    pub fn parse(value: &str) -> Option<Self> {
        [Self::Passed, Self::Failed, Self::Skipped, Self::Error]
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

/// One test case of a JUnit report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// The test's name (`testcase/@name`).
    pub name: String,
    /// Its class or module (`testcase/@classname`).
    pub classname: String,
    /// The suite file it lives in, when the report says (`@file`).
    pub file: Option<String>,
    pub duration_ms: u64,
    /// The final status, after reruns.
    pub status: TestStatus,
    /// The failure or error message (first line of it, capped).
    pub message: Option<String>,
    /// Failed, then passed on a rerun.
    pub flaky: bool,
}

/// How long one suite file took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTiming {
    pub path: SuitePath,
    pub duration_ms: u64,
    /// Shared out from the shard's time, not measured for this file.
    pub estimated: bool,
}

/// Workers are asked to stop jobs, published by the dispatcher to every
/// worker (the control exchange is a fanout): a worker running one of them
/// kills it and frees its slot; a worker handed one later drops it. Each
/// job is named with its attempt: only runs of that attempt or an earlier
/// one are stopped, so that an operator's retry (the same job, a later
/// attempt) runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelJobs {
    pub jobs: Vec<JobAttempt>,
    /// Why (for logs): "superseded by <sha>".
    pub reason: String,
}

/// A job and the last attempt a [`CancelJobs`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobAttempt {
    pub job_id: JobId,
    pub attempt: u32,
}

impl Message for CancelJobs {
    const TYPE: &'static str = "cancel_jobs";

    fn validate(&self) -> Result<(), String> {
        if self.jobs.iter().any(|job| job.attempt == 0) {
            return Err("attempt numbers start at 1".into());
        }
        Ok(())
    }
}

/// A worker says it is alive, how many slots it has and how many are busy:
/// sent every heartbeat interval, busy or not, as a transient message on the
/// events exchange (routing key `worker`), so that the dispatcher knows the
/// fleet even when it is idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStatus {
    pub worker: WorkerId,
    pub host: String,
    pub slots: u16,
    pub busy: u16,
    /// Jobs this worker process finished since it started.
    pub jobs_done: u64,
    pub at: DateTime<Utc>,
}

impl Message for WorkerStatus {
    const TYPE: &'static str = "worker_status";
}

/// Output of a running job as it is written, in chunks of whole lines, as
/// transient messages on the logs exchange (routing key: the job id) for
/// whoever follows the job live. Losing some is harmless: the result keeps
/// the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLines {
    pub job_id: JobId,
    pub attempt: u32,
    pub run_id: uuid::Uuid,
    /// Counts chunks of one run from 0, so a follower sees gaps.
    pub seq: u64,
    /// Lines of output, each ending with a newline (invalid UTF-8 replaced).
    pub text: String,
}

impl Message for LogLines {
    const TYPE: &'static str = "log_lines";
}

/// Most bytes of output in one [`LogLines`] chunk.
pub const MAX_LOG_CHUNK_BYTES: usize = 64 * 1024;

impl Message for JobResult {
    const TYPE: &'static str = "job_result";

    fn validate(&self) -> Result<(), String> {
        if self.attempt == 0 {
            return Err("attempt numbers start at 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_job() -> Job {
        Job {
            job_id: JobId::new(),
            attempt: 1,
            repo: RepoName::parse("api").unwrap(),
            url: RepoUrl::parse("file:///srv/git/api").unwrap(),
            branch: BranchName::parse("main").unwrap(),
            sha: CommitId::parse(&"ab".repeat(20)).unwrap(),
            shard: Shard::WHOLE,
            command: TestCommand::Shell("make test".into()),
            timeout_ms: 60_000,
            env: BTreeMap::from([("CI".to_string(), "1".to_string())]),
            files: vec![SuitePath::parse("tests/a.py").unwrap()],
            junit: None,
            retry_failed: 0,
            image: None,
            published_at: Utc::now(),
            network: None,
            limits: None,
            result_key: None,
        }
    }

    fn reencode(
        job: &Job,
        edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(&encode(job)).unwrap();
        edit(value.as_object_mut().unwrap());
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_job_round_trips_with_its_envelope() {
        let job = sample_job();
        let body = encode(&job);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["schema"], 1);
        assert_eq!(value["type"], "job");
        assert_eq!(decode::<Job>(&body).unwrap(), job);
    }

    #[test]
    fn an_image_is_carried_only_when_asked_for_and_checked() {
        let mut job = sample_job();
        let without: serde_json::Value = serde_json::from_slice(&encode(&job)).unwrap();
        assert!(
            without.get("image").is_none(),
            "a job without image reads as before"
        );
        job.image = Some(ImageRef::parse("debian:bookworm-slim").unwrap());
        assert_eq!(decode::<Job>(&encode(&job)).unwrap(), job);
        let hostile = reencode(&job, |m| {
            m.insert("image".into(), "--privileged".into());
        });
        let err = decode::<Job>(&hostile).unwrap_err().to_string();
        assert!(err.contains("invalid image"), "{err}");
    }

    #[test]
    fn argv_commands_round_trip() {
        let mut job = sample_job();
        job.command = TestCommand::Argv(vec!["cargo".into(), "test".into()]);
        assert_eq!(decode::<Job>(&encode(&job)).unwrap().command, job.command);
    }

    #[test]
    fn decoding_refuses_what_it_does_not_understand() {
        let job = sample_job();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not a JSON object"),
            (b"[1,2]".to_vec(), "not a JSON object"),
            (
                reencode(&job, |m| {
                    m.insert("schema".into(), 2.into());
                }),
                "schema version",
            ),
            (
                reencode(&job, |m| {
                    m.remove("schema");
                }),
                "schema version",
            ),
            (
                reencode(&job, |m| {
                    m.insert("type".into(), "commit".into());
                }),
                "message type",
            ),
            (
                reencode(&job, |m| {
                    m.insert("extra".into(), 1.into());
                }),
                "unknown field",
            ),
            (
                reencode(&job, |m| {
                    m.remove("sha");
                }),
                "missing field",
            ),
            (
                reencode(&job, |m| {
                    m.insert("sha".into(), "../../x".into());
                }),
                "commit id",
            ),
            (
                reencode(&job, |m| {
                    m.insert("repo".into(), "a/b".into());
                }),
                "repository name",
            ),
            (
                reencode(&job, |m| {
                    m.insert("shard".into(), serde_json::json!({"index": 3, "count": 2}));
                }),
                "out of range",
            ),
            (
                reencode(&job, |m| {
                    m.insert("attempt".into(), 0.into());
                }),
                "attempt",
            ),
            (
                reencode(&job, |m| {
                    m.insert("timeout_ms".into(), 0.into());
                }),
                "timeout_ms",
            ),
            (
                reencode(&job, |m| {
                    m.insert("command".into(), "".into());
                }),
                "command is empty",
            ),
            (
                reencode(&job, |m| {
                    m.insert("env".into(), serde_json::json!({"WARREN_X": "1"}));
                }),
                "reserved",
            ),
            (
                reencode(&job, |m| {
                    m.insert("env".into(), serde_json::json!({"A=B": "1"}));
                }),
                "not valid",
            ),
        ];
        for (body, expected) in cases {
            let err = decode::<Job>(&body).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }

    #[test]
    fn oversize_bodies_are_refused_before_parsing() {
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(
            decode::<Job>(&body),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn aggregate_takes_the_worst_status() {
        use JobStatus::*;
        assert_eq!(JobStatus::aggregate([]), Passed);
        assert_eq!(JobStatus::aggregate([Passed, Failed, Passed]), Failed);
        assert_eq!(JobStatus::aggregate([Failed, TimedOut]), TimedOut);
        assert_eq!(JobStatus::aggregate([TimedOut, Error, Passed]), Error);
        assert_eq!(JobStatus::aggregate([Passed, Superseded]), Superseded);
        assert_eq!(JobStatus::aggregate([Failed, Superseded]), Failed);
        for status in [Passed, Failed, TimedOut, Error, Superseded, Cancelled] {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<CommitEvent>(&body);
            let _ = decode::<Job>(&body);
            let _ = decode::<JobEvent>(&body);
            let _ = decode::<JobResult>(&body);
        }

        #[test]
        fn decoders_never_panic_on_json_garbage(
            kind in 0..4usize,
            keys in proptest::collection::vec(prop_oneof![
                // The real field names, so that garbage gets past the
                // envelope and into every field's own checks.
                Just("job_id"), Just("attempt"), Just("run_id"), Just("repo"), Just("url"),
                Just("branch"), Just("sha"), Just("shard"), Just("command"), Just("timeout_ms"),
                Just("env"), Just("worker"), Just("host"), Just("status"), Just("event"),
                Just("at"), Just("output"), Just("parents"), Just("exit_code"), Just("x"),
            ], 0..16),
            values in proptest::collection::vec(prop_oneof![
                Just(serde_json::Value::Null),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".{0,50}".prop_map(serde_json::Value::from),
                "[0-9a-f]{40}".prop_map(serde_json::Value::from),
                Just(serde_json::json!({"index": 5, "count": 1})),
                Just(serde_json::json!({"index": 0, "count": 0})),
                Just(serde_json::json!(["sh", ""])),
                Just(serde_json::json!({"A": "1", "WARREN_X": "2"})),
                Just(serde_json::json!([])),
            ], 0..16),
        ) {
            let kinds = ["commit", "job", "job_event", "job_result"];
            let mut fields = serde_json::Map::new();
            fields.insert("schema".into(), 1.into());
            fields.insert("type".into(), kinds[kind].into());
            for (key, value) in keys.into_iter().zip(values) {
                fields.insert(key.into(), value);
            }
            let body = serde_json::to_vec(&fields).unwrap();
            // None of these decodes (a required field is always missing or
            // wrong), and none panics.
            prop_assert!(decode::<CommitEvent>(&body).is_err());
            prop_assert!(decode::<Job>(&body).is_err());
            prop_assert!(decode::<JobEvent>(&body).is_err());
            prop_assert!(decode::<JobResult>(&body).is_err());
        }
    }
}
