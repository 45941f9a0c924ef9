//! One delivery of the jobs queue, turned into one [`Outcome`].
//!
//! [`execute`] decodes the body, checks the allow-list, prepares the work
//! tree, runs the command and builds the [`JobResult`], sending `started` and
//! `heartbeat` events meanwhile. It does not touch the delivery: publishing,
//! acking and dead-lettering are the service loop's, so a test can drive one
//! job with a body and a folder.

use crate::checkout::{self, CheckoutError, CheckoutRequest};
use crate::config::{AllowList, WorkerConfig};
use crate::events::Events;
use crate::output::{self, CapturedOutput};
use crate::run::{self, CommandSpec, Ending};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};
use warren_common::ids::WorkerId;
use warren_common::messages::{
    Job, JobEventKind, JobResult, JobStatus, MAX_BODY_BYTES, TestCommand, decode, encode,
};

/// Prefix of the variables the worker keeps from the command (its own
/// configuration, which may hold the broker password) and sets itself.
const RESERVED_ENV_PREFIX: &[u8] = b"WARREN_";

/// What became of one delivery.
#[derive(Debug)]
pub enum Outcome {
    /// The body is not a valid job: dead-letter it with this reason; it is
    /// never retried.
    Poison {
        /// Why it was refused, for the dead-letter header.
        reason: String,
    },
    /// A result to publish, then ack the delivery: the command ran, or it
    /// could not run (status `error`), or the repository is not allowed here.
    Finished(Box<JobResult>),
    /// The worker is being forced to stop and killed the job: do not ack; the
    /// broker gives the job to another worker.
    Abandoned,
}

/// What every job of a worker needs: its identity and limits.
#[derive(Debug, Clone)]
pub struct JobRunner {
    /// Reported in results.
    pub worker: WorkerId,
    /// Reported in results.
    pub host: String,
    /// Repositories this worker runs jobs for.
    pub allowed_repos: AllowList,
    /// Bytes of output kept per job.
    pub output_limit: usize,
    /// SIGTERM → SIGKILL delay.
    pub kill_grace: Duration,
    /// Interval of heartbeat events.
    pub heartbeat_interval: Duration,
    /// The environment the commands start from (without `WARREN_*`).
    pub base_env: Vec<(OsString, OsString)>,
}

impl JobRunner {
    /// A runner with `config`'s settings and this process's environment.
    pub fn new(config: &WorkerConfig) -> Self {
        Self {
            worker: config.id.clone(),
            host: config.host.clone(),
            allowed_repos: config.allowed_repos.clone(),
            output_limit: config.output_limit,
            kill_grace: config.kill_grace,
            heartbeat_interval: config.heartbeat_interval,
            base_env: std::env::vars_os().collect(),
        }
    }
}

/// Runs the job in `body` in the slot folder `slot_dir`. `abort` (a forced
/// stop) kills the command and makes the outcome [`Outcome::Abandoned`].
pub async fn execute(
    runner: &JobRunner,
    slot_dir: &Path,
    body: &[u8],
    events: &Events,
    abort: &CancellationToken,
) -> Outcome {
    match decode::<Job>(body) {
        Ok(job) => run_job(runner, slot_dir, &job, events, abort).await,
        Err(error) => Outcome::Poison {
            reason: error.to_string(),
        },
    }
}

#[instrument(skip_all, fields(
    repo = %job.repo, sha = %job.sha, job = %job.job_id, attempt = job.attempt,
))]
async fn run_job(
    runner: &JobRunner,
    slot_dir: &Path,
    job: &Job,
    events: &Events,
    abort: &CancellationToken,
) -> Outcome {
    let report = Report::new(runner, job);
    if !runner.allowed_repos.allows(&job.repo) {
        warn!("job refused: repository not on the allow-list");
        let message = format!(
            "repository `{}` is not on this worker's allow-list (worker.allowed_repos = {:?})",
            job.repo,
            runner.allowed_repos.patterns()
        );
        return Outcome::Finished(report.error(message, Duration::ZERO));
    }
    info!(command = %job.command, shard = job.shard.index, shards = job.shard.count, "job started");
    events.send(job, report.run_id, JobEventKind::Started).await;
    let outcome = with_heartbeats(
        events,
        job,
        report.run_id,
        runner.heartbeat_interval,
        async {
            let checkout_started = Instant::now();
            let tree = match prepare_tree(slot_dir, job, abort).await {
                Ok(tree) => tree,
                Err(CheckoutError::Interrupted) => return Outcome::Abandoned,
                Err(error) => {
                    warn!(%error, "checkout failed");
                    return Outcome::Finished(
                        report.error(error.to_string(), checkout_started.elapsed()),
                    );
                }
            };
            let checkout_time = checkout_started.elapsed();
            let spec = command_spec(runner, job, &tree.path);
            match run::run(&spec, abort).await {
                Ok(finished) if finished.ending == Ending::Aborted => Outcome::Abandoned,
                Ok(finished) => Outcome::Finished(report.ran(
                    job,
                    finished.ending,
                    finished.output,
                    checkout_time,
                    finished.duration,
                )),
                Err(error) => {
                    warn!(%error, "command could not start");
                    Outcome::Finished(report.error(error.to_string(), checkout_time))
                }
            }
        },
    )
    .await;
    match &outcome {
        Outcome::Finished(result) => info!(
            status = %result.status,
            exit_code = ?result.exit_code,
            duration_ms = result.duration_ms,
            output_bytes = result.output_bytes,
            "job finished"
        ),
        Outcome::Abandoned => warn!("job abandoned: the worker is stopping"),
        Outcome::Poison { .. } => {}
    }
    outcome
}

/// Runs `work`, sending a heartbeat for `job` every `interval` meanwhile.
async fn with_heartbeats<T>(
    events: &Events,
    job: &Job,
    run_id: uuid::Uuid,
    interval: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => events.send(job, run_id, JobEventKind::Heartbeat).await,
        }
    }
}

/// Prepares the work tree on the blocking pool; `abort` interrupts a fetch.
async fn prepare_tree(
    slot_dir: &Path,
    job: &Job,
    abort: &CancellationToken,
) -> Result<checkout::PreparedTree, CheckoutError> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let clone_path = slot_dir.join(job.repo.as_str());
    let (slot_dir, repo, url, sha) = (
        slot_dir.to_path_buf(),
        job.repo.clone(),
        job.url.clone(),
        job.sha.clone(),
    );
    let flag = Arc::clone(&interrupt);
    let mut task = tokio::task::spawn_blocking(move || {
        let request = CheckoutRequest {
            slot_dir: &slot_dir,
            repo: &repo,
            url: &url,
            sha: &sha,
        };
        checkout::prepare(&request, &flag)
    });
    let joined = tokio::select! {
        joined = &mut task => joined,
        () = abort.cancelled() => {
            interrupt.store(true, Ordering::Relaxed);
            task.await
        }
    };
    let result = joined.unwrap_or_else(|error| {
        Err(CheckoutError::Local {
            path: clone_path,
            message: format!("the checkout task failed: {error}"),
        })
    });
    if abort.is_cancelled() {
        return Err(CheckoutError::Interrupted);
    }
    result
}

/// The command of `job`, to run in `cwd`.
fn command_spec(runner: &JobRunner, job: &Job, cwd: &Path) -> CommandSpec {
    let (program, args): (OsString, Vec<OsString>) = match &job.command {
        TestCommand::Shell(script) => ("sh".into(), vec!["-c".into(), script.into()]),
        TestCommand::Argv(argv) => {
            // `validate` guarantees a first element; an empty program would
            // simply not be found.
            let mut parts = argv.iter().map(OsString::from);
            (parts.next().unwrap_or_default(), parts.collect())
        }
    };
    CommandSpec {
        program,
        args,
        cwd: cwd.to_path_buf(),
        env: job_environment(runner.base_env.iter().cloned(), job),
        timeout: Duration::from_millis(job.timeout_ms),
        kill_grace: runner.kill_grace,
        output_limit: runner.output_limit,
    }
}

/// The command's environment: `base` without any `WARREN_*` variable (the
/// worker's own settings, which can hold the broker password), the job's
/// `env`, then `CI=true` and the `WARREN_*` description of the job.
pub fn job_environment(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    job: &Job,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = base
        .into_iter()
        .filter(|(name, _)| !name.as_bytes().starts_with(RESERVED_ENV_PREFIX))
        .collect();
    for (name, value) in &job.env {
        env.insert(name.into(), value.into());
    }
    let own = [
        ("CI", "true".to_owned()),
        ("WARREN_JOB_ID", job.job_id.to_string()),
        ("WARREN_ATTEMPT", job.attempt.to_string()),
        ("WARREN_REPO", job.repo.to_string()),
        ("WARREN_BRANCH", job.branch.to_string()),
        ("WARREN_SHA", job.sha.to_string()),
        ("WARREN_SHARD_INDEX", job.shard.index.to_string()),
        ("WARREN_SHARD_COUNT", job.shard.count.to_string()),
    ];
    for (name, value) in own {
        env.insert(name.into(), value.into());
    }
    env.into_iter().collect()
}

/// Builds the results of one job.
struct Report<'a> {
    runner: &'a JobRunner,
    job: &'a Job,
    /// This run's identity in events and the result.
    run_id: uuid::Uuid,
    started_at: DateTime<Utc>,
}

impl<'a> Report<'a> {
    fn new(runner: &'a JobRunner, job: &'a Job) -> Self {
        Self {
            runner,
            job,
            run_id: uuid::Uuid::new_v4(),
            started_at: Utc::now(),
        }
    }

    /// Status `error`: nothing (useful) ran.
    fn error(&self, message: String, checkout: Duration) -> Box<JobResult> {
        self.build(
            JobStatus::Error,
            (None, None),
            Some(message),
            empty_output(),
            checkout,
            Duration::ZERO,
        )
    }

    /// The command ran and ended with `ending`.
    fn ran(
        &self,
        job: &Job,
        ending: Ending,
        output: CapturedOutput,
        checkout: Duration,
        duration: Duration,
    ) -> Box<JobResult> {
        let shell = matches!(job.command, TestCommand::Shell(_));
        let (status, exit, message) = match ending {
            Ending::Exited(0) => (JobStatus::Passed, (Some(0), None), None),
            // The shell's own codes for "not found" (127) and "found but not
            // executable" (126): the test never ran.
            Ending::Exited(code @ (126 | 127)) if shell => (
                JobStatus::Error,
                (Some(code), None),
                Some(format!(
                    "command not found or not executable (exit status {code})"
                )),
            ),
            Ending::Exited(code) => (JobStatus::Failed, (Some(code), None), None),
            Ending::Signalled(signal) => (JobStatus::Failed, (None, Some(signal)), None),
            Ending::TimedOut | Ending::Aborted => (
                JobStatus::TimedOut,
                (None, None),
                Some(format!(
                    "killed after the job timeout of {}",
                    humantime::format_duration(Duration::from_millis(job.timeout_ms))
                )),
            ),
        };
        self.build(status, exit, message, output, checkout, duration)
    }

    fn build(
        &self,
        status: JobStatus,
        (exit_code, signal): (Option<i32>, Option<i32>),
        message: Option<String>,
        output: CapturedOutput,
        checkout: Duration,
        duration: Duration,
    ) -> Box<JobResult> {
        let mut result = Box::new(JobResult {
            job_id: self.job.job_id,
            attempt: self.job.attempt,
            run_id: self.run_id,
            worker: self.runner.worker.clone(),
            host: self.runner.host.clone(),
            repo: self.job.repo.clone(),
            sha: self.job.sha.clone(),
            status,
            exit_code,
            signal,
            message,
            started_at: self.started_at,
            finished_at: Utc::now(),
            checkout_ms: millis(checkout),
            duration_ms: millis(duration),
            output: output.text,
            output_truncated: output.truncated,
            output_bytes: output.total_bytes,
            tests: Vec::new(),
            file_timings: Vec::new(),
            report_problem: None,
        });
        fit_body(&mut result);
        result
    }
}

fn empty_output() -> CapturedOutput {
    CapturedOutput {
        text: String::new(),
        truncated: false,
        total_bytes: 0,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Shortens the output until the encoded result fits the consumers' body
/// limit. Output within the configured cap can still be too large once JSON
/// escapes its control characters (each one becomes six bytes).
fn fit_body(result: &mut JobResult) {
    let mut size = encode(result).len();
    while size > MAX_BODY_BYTES && !result.output.is_empty() {
        let keep = result.output.len() / 4;
        result.output = output::shrink(&result.output, keep);
        result.output_truncated = true;
        size = encode(result).len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use warren_common::ids::{BranchName, CommitId, JobId, RepoName, RepoUrl};
    use warren_common::messages::Shard;
    use warren_harness::git::Upstream;

    fn runner(allowed: &[&str]) -> JobRunner {
        JobRunner {
            worker: WorkerId::parse("test-worker").unwrap(),
            host: "test-host".into(),
            allowed_repos: AllowList::new(
                &allowed.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap(),
            output_limit: 64 * 1024,
            kill_grace: Duration::from_millis(200),
            heartbeat_interval: Duration::from_secs(5),
            base_env: vec![
                ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
                (
                    "WARREN_BROKER__URL".into(),
                    "amqp://warren:hunter2@mq/%2f".into(),
                ),
                ("WARREN_ANYTHING".into(), "x".into()),
                ("KEEP_ME".into(), "kept".into()),
            ],
        }
    }

    fn job(upstream: &Upstream, sha: &str, command: TestCommand) -> Job {
        Job {
            job_id: JobId::new(),
            attempt: 2,
            repo: RepoName::parse("api").unwrap(),
            url: RepoUrl::parse(&upstream.url()).unwrap(),
            branch: BranchName::parse("main").unwrap(),
            sha: CommitId::parse(sha).unwrap(),
            shard: Shard { index: 1, count: 3 },
            command,
            timeout_ms: 30_000,
            env: BTreeMap::from([("FROM_JOB".into(), "yes".into())]),
            files: Vec::new(),
            junit: None,
            retry_failed: 0,
            published_at: Utc::now(),
        }
    }

    struct Fixture {
        upstream: Upstream,
        slot: tempfile::TempDir,
        sha: String,
    }

    fn fixture() -> Fixture {
        let upstream = Upstream::new();
        let sha = upstream.commit(
            "main",
            "one",
            &[("test.sh", Some("#!/bin/sh\necho testing \"$@\"\n"))],
        );
        Fixture {
            upstream,
            slot: tempfile::tempdir().unwrap(),
            sha,
        }
    }

    async fn finish(runner: &JobRunner, slot: &Path, job: &Job) -> JobResult {
        run::adopt_orphans();
        let events = Events::disabled(runner.worker.clone());
        match execute(
            runner,
            slot,
            &encode(job),
            &events,
            &CancellationToken::new(),
        )
        .await
        {
            Outcome::Finished(result) => *result,
            other => panic!("expected a result, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_passing_job_reports_its_output_and_identity() {
        let f = fixture();
        let job = job(
            &f.upstream,
            &f.sha,
            TestCommand::Argv(vec!["./test.sh".into(), "a b".into()]),
        );
        let result = finish(&runner(&["*"]), f.slot.path(), &job).await;
        assert_eq!(result.status, JobStatus::Passed, "{result:?}");
        assert_eq!(result.output, "testing a b\n");
        assert_eq!(result.exit_code, Some(0));
        assert_eq!((result.job_id, result.attempt), (job.job_id, 2));
        assert_eq!(result.worker.as_str(), "test-worker");
        assert_eq!(result.sha.as_str(), f.sha);
        assert!(result.finished_at >= result.started_at);
    }

    #[tokio::test]
    async fn failures_signals_and_timeouts_have_their_status() {
        let f = fixture();
        let r = runner(&["*"]);
        let shell = |s: &str| TestCommand::Shell(s.into());

        let failed = finish(
            &r,
            f.slot.path(),
            &job(&f.upstream, &f.sha, shell("exit 4")),
        )
        .await;
        assert_eq!(
            (failed.status, failed.exit_code),
            (JobStatus::Failed, Some(4))
        );

        let signalled = finish(
            &r,
            f.slot.path(),
            &job(&f.upstream, &f.sha, shell("kill -KILL $$")),
        )
        .await;
        assert_eq!(
            (signalled.status, signalled.signal),
            (JobStatus::Failed, Some(9))
        );

        let mut slow = job(&f.upstream, &f.sha, shell("echo started; sleep 100"));
        slow.timeout_ms = 1000;
        let timed_out = finish(&r, f.slot.path(), &slow).await;
        assert_eq!(timed_out.status, JobStatus::TimedOut);
        assert_eq!(
            timed_out.message.as_deref(),
            Some("killed after the job timeout of 1s")
        );
        assert_eq!(timed_out.output, "started\n");
    }

    #[tokio::test]
    async fn a_missing_command_is_an_error_not_a_failure() {
        let f = fixture();
        let r = runner(&["*"]);
        let argv = job(
            &f.upstream,
            &f.sha,
            TestCommand::Argv(vec!["warren-no-such-tool".into()]),
        );
        let result = finish(&r, f.slot.path(), &argv).await;
        assert_eq!(result.status, JobStatus::Error);
        assert_eq!(
            result.message.as_deref(),
            Some("command not found: warren-no-such-tool")
        );

        let shell = job(
            &f.upstream,
            &f.sha,
            TestCommand::Shell("warren-no-such-tool --x".into()),
        );
        let result = finish(&r, f.slot.path(), &shell).await;
        assert_eq!(result.status, JobStatus::Error);
        assert_eq!(
            result.message.as_deref(),
            Some("command not found or not executable (exit status 127)")
        );
        assert!(
            result.output.contains("warren-no-such-tool"),
            "{}",
            result.output
        );
    }

    #[tokio::test]
    async fn the_environment_describes_the_job_and_hides_the_workers_settings() {
        let f = fixture();
        let job = job(&f.upstream, &f.sha, TestCommand::Argv(vec!["env".into()]));
        let result = finish(&runner(&["*"]), f.slot.path(), &job).await;
        let vars: BTreeMap<&str, &str> = result
            .output
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        assert_eq!(vars.get("WARREN_SHA"), Some(&f.sha.as_str()));
        assert_eq!(
            vars.get("WARREN_JOB_ID"),
            Some(&job.job_id.to_string().as_str())
        );
        assert_eq!(vars.get("WARREN_ATTEMPT"), Some(&"2"));
        assert_eq!(vars.get("WARREN_REPO"), Some(&"api"));
        assert_eq!(vars.get("WARREN_BRANCH"), Some(&"main"));
        assert_eq!(vars.get("WARREN_SHARD_INDEX"), Some(&"1"));
        assert_eq!(vars.get("WARREN_SHARD_COUNT"), Some(&"3"));
        assert_eq!(vars.get("CI"), Some(&"true"));
        assert_eq!(vars.get("FROM_JOB"), Some(&"yes"));
        assert_eq!(vars.get("KEEP_ME"), Some(&"kept"));
        assert!(!vars.contains_key("WARREN_BROKER__URL"), "{vars:?}");
        assert!(!vars.contains_key("WARREN_ANYTHING"), "{vars:?}");
        assert!(!result.output.contains("hunter2"));
    }

    #[tokio::test]
    async fn a_repository_off_the_allow_list_gets_an_error_naming_the_key() {
        let f = fixture();
        let job = job(&f.upstream, &f.sha, TestCommand::Shell("touch ran".into()));
        let result = finish(&runner(&["web-*"]), f.slot.path(), &job).await;
        assert_eq!(result.status, JobStatus::Error);
        let message = result.message.unwrap();
        assert!(
            message.contains("`api`") && message.contains("worker.allowed_repos"),
            "{message}"
        );
        assert!(
            !f.slot.path().join("api").exists(),
            "nothing was checked out"
        );
    }

    #[tokio::test]
    async fn a_missing_commit_is_an_error_result() {
        let f = fixture();
        let missing = "0123456789".repeat(4);
        let job = job(&f.upstream, &missing, TestCommand::Shell("true".into()));
        let result = finish(&runner(&["*"]), f.slot.path(), &job).await;
        assert_eq!(result.status, JobStatus::Error);
        let message = result.message.unwrap();
        assert!(
            message.contains("force-pushed away?") && message.contains(&missing),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_undecodable_body_is_poison() {
        let events = Events::disabled(WorkerId::parse("w").unwrap());
        let outcome = execute(
            &runner(&["*"]),
            &PathBuf::from("/nonexistent"),
            b"{\"schema\":1,\"type\":\"job\"}",
            &events,
            &CancellationToken::new(),
        )
        .await;
        match outcome {
            Outcome::Poison { reason } => assert!(reason.contains("missing field"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_forced_stop_abandons_the_job() {
        let f = fixture();
        let job = job(
            &f.upstream,
            &f.sha,
            TestCommand::Shell("touch started; sleep 100".into()),
        );
        let abort = CancellationToken::new();
        let canceller = abort.clone();
        let marker = f.slot.path().join("api/started");
        tokio::spawn(async move {
            while !marker.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            canceller.cancel();
        });
        let r = runner(&["*"]);
        let events = Events::disabled(r.worker.clone());
        let outcome = execute(&r, f.slot.path(), &encode(&job), &events, &abort).await;
        assert!(matches!(outcome, Outcome::Abandoned), "{outcome:?}");
    }

    #[test]
    fn a_result_too_large_for_the_broker_is_shortened() {
        let f = fixture();
        let r = runner(&["*"]);
        let job = job(&f.upstream, &f.sha, TestCommand::Shell("true".into()));
        // 8 MiB of control characters: 48 MiB once JSON-escaped.
        let text = "\u{1}".repeat(8 * 1024 * 1024);
        let output = CapturedOutput {
            text,
            truncated: false,
            total_bytes: 8 * 1024 * 1024,
        };
        let result = Report::new(&r, &job).ran(
            &job,
            Ending::Exited(0),
            output,
            Duration::ZERO,
            Duration::ZERO,
        );
        assert!(encode(&*result).len() <= MAX_BODY_BYTES);
        assert!(result.output_truncated);
        assert_eq!(result.output_bytes, 8 * 1024 * 1024);
    }
}
