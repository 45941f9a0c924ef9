//! One delivery of the jobs queue, turned into one [`Outcome`].
//!
//! [`execute`] decodes the body and [`execute_job`] checks the allow-list
//! and the command's placeholders, prepares the work tree, runs the command
//! ([`crate::suite`]: once, per file, reruns) and builds the [`JobResult`],
//! sending `started` and `heartbeat` events and the live output meanwhile.
//! Neither touches the delivery: publishing, acking and dead-lettering are
//! the service loop's, so a test can drive one job with a body and a folder.
//!
//! Every line logged about a job is in a span with its `repo`, `sha`, `job`
//! and `attempt` ([`job_span`] for the service loop, `execute_job`'s own
//! here), also from the tasks a job starts.

use crate::cancel::{JobStop, StopReason};
use crate::checkout::{self, CheckoutError, CheckoutRequest};
use crate::events::Events;
use crate::output::{self, CapturedOutput};
pub(crate) use crate::runner::JobRunner;
use crate::substitute::{self, Placeholder, SubstituteError};
use crate::suite::{self, Ran, SuiteEnd};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, info_span, instrument, warn};
use warren_common::git::GitAuth;
use warren_common::messages::{
    Job, JobEventKind, JobResult, JobStatus, MAX_BODY_BYTES, TestStatus, decode, encode,
};

/// What became of one delivery.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A result to publish, then ack the delivery: the command ran, or it
    /// could not run (status `error`), or the repository is not allowed here.
    Finished(Box<JobResult>),
    /// The worker is being forced to stop and killed the job: do not ack; the
    /// broker gives the job to another worker.
    Abandoned,
    /// The dispatcher cancelled the job and it was killed: ack it, publish
    /// nothing (the job already has its verdict).
    Cancelled,
}

/// The span of every line about `job` outside [`execute_job`]: taking it,
/// publishing its result, acking, cancelling.
pub(crate) fn job_span(job: &Job) -> Span {
    info_span!("job", repo = %job.repo, sha = %job.sha, job = %job.job_id, attempt = job.attempt)
}

/// Decodes a delivery's body as a job; `Err` is the reason to dead-letter
/// it with (it is never retried).
pub(crate) fn decode_job(body: &[u8]) -> Result<Job, String> {
    decode::<Job>(body).map_err(|error| error.to_string())
}

/// Runs `job` in the slot folder `slot_dir` until it ends or `stop`: the
/// worker's stop makes the outcome [`Outcome::Abandoned`], a cancellation
/// of this job [`Outcome::Cancelled`].
#[instrument(skip_all, fields(
    repo = %job.repo, sha = %job.sha, job = %job.job_id, attempt = job.attempt,
))]
pub(crate) async fn execute_job(
    runner: &JobRunner,
    slot_dir: &Path,
    job: &Job,
    events: &Events,
    stop: &JobStop,
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
    // The job from here on carries the image it runs in (none outside a
    // container worker).
    let job = &match runner.executor.image_for(job.image.as_ref()).await {
        Ok(image) => Job {
            image,
            ..job.clone()
        },
        Err(message) => {
            warn!(%message, "job refused: its image");
            return Outcome::Finished(report.error(message, Duration::ZERO));
        }
    };
    let placeholder = match files_placeholder(job) {
        Ok(placeholder) => placeholder,
        Err(error) => {
            warn!(%error, "job refused: its command cannot take its files");
            let message = format!("cannot run the command `{}`: {error}", job.command);
            return Outcome::Finished(report.error(message, Duration::ZERO));
        }
    };
    info!(command = %job.command, shard = job.shard.index, shards = job.shard.count,
        files = job.files.len(), ?placeholder, "job started");
    events.send(job, report.run_id, JobEventKind::Started).await;
    let outcome = with_heartbeats(
        events,
        job,
        report.run_id,
        runner.heartbeat_interval,
        async {
            let checkout_started = Instant::now();
            let prepared = prepare_tree(slot_dir, job, &runner.git, stop.token()).await;
            let checkout_time = checkout_started.elapsed();
            let tree = match prepared {
                Ok(tree) => tree,
                Err(CheckoutError::Interrupted) => return stopped(stop),
                Err(error) => {
                    warn!(%error, "checkout failed");
                    runner.metrics.observe_checkout(checkout_time);
                    return Outcome::Finished(report.error(error.to_string(), checkout_time));
                }
            };
            runner.metrics.observe_checkout(checkout_time);
            let live = events.live_output(job, report.run_id, runner.metrics.live_dropped());
            let ended = suite::run(
                runner,
                job,
                &tree.path,
                placeholder,
                stop.token(),
                live.sink(),
            )
            .await;
            // Before the result: a follower sees the last lines first.
            live.finish().await;
            match ended {
                SuiteEnd::Ran(ran) => {
                    runner.metrics.observe_run(ran.duration);
                    Outcome::Finished(report.ran(*ran, checkout_time))
                }
                SuiteEnd::Stopped => stopped(stop),
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
            tests = result.tests.len(),
            failed_tests = result.tests.iter()
                .filter(|t| matches!(t.status, TestStatus::Failed | TestStatus::Error)).count(),
            flaky_tests = result.tests.iter().filter(|t| t.flaky).count(),
            report_problem = result.report_problem.as_deref(),
            message = result.message.as_deref(),
            "job finished"
        ),
        Outcome::Abandoned => warn!("job abandoned: the worker is stopping"),
        Outcome::Cancelled => info!("job cancelled: its processes are gone; no result"),
    }
    outcome
}

/// The outcome of a job stopped before its end.
fn stopped(stop: &JobStop) -> Outcome {
    match stop.reason() {
        StopReason::Worker => Outcome::Abandoned,
        StopReason::Cancelled => Outcome::Cancelled,
    }
}

/// How the job's command takes its files; `{file}` needs files.
fn files_placeholder(job: &Job) -> Result<Placeholder, SubstituteError> {
    match substitute::placeholder(&job.command)? {
        Placeholder::EachFile if job.files.is_empty() => Err(SubstituteError::NoFiles),
        placeholder => Ok(placeholder),
    }
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
    git: &GitAuth,
    abort: &CancellationToken,
) -> Result<checkout::PreparedTree, CheckoutError> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let clone_path = slot_dir.join(job.repo.as_str());
    let (slot_dir, repo, url, sha, git) = (
        slot_dir.to_path_buf(),
        job.repo.clone(),
        job.url.clone(),
        job.sha.clone(),
        git.clone(),
    );
    let flag = Arc::clone(&interrupt);
    // The checkout logs in the job's span.
    let span = Span::current();
    let mut task = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let request = CheckoutRequest {
            slot_dir: &slot_dir,
            repo: &repo,
            url: &url,
            sha: &sha,
            git: &git,
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
        let ran = Ran {
            status: JobStatus::Error,
            exit_code: None,
            signal: None,
            message: Some(message),
            output: empty_output(),
            duration: Duration::ZERO,
            tests: Vec::new(),
            file_timings: Vec::new(),
            report_problem: None,
        };
        self.ran(ran, checkout)
    }

    /// The command ran (once or more) and came to `ran`.
    fn ran(&self, ran: Ran, checkout: Duration) -> Box<JobResult> {
        let mut result = Box::new(JobResult {
            job_id: self.job.job_id,
            attempt: self.job.attempt,
            run_id: self.run_id,
            worker: self.runner.worker.clone(),
            host: self.runner.host.clone(),
            repo: self.job.repo.clone(),
            sha: self.job.sha.clone(),
            status: ran.status,
            exit_code: ran.exit_code,
            signal: ran.signal,
            message: ran.message,
            started_at: self.started_at,
            finished_at: Utc::now(),
            checkout_ms: millis(checkout),
            duration_ms: millis(ran.duration),
            output: ran.output.text,
            output_truncated: ran.output.truncated,
            output_bytes: ran.output.total_bytes,
            tests: ran.tests,
            file_timings: ran.file_timings,
            report_problem: ran.report_problem,
            proof: None,
        });
        fit_body(&mut result);
        // Last: the proof covers the result as it is sent.
        if let Some(key) = &self.job.result_key {
            warren_common::proof::sign(&mut result, key);
        }
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

/// Shortens the result until it fits the consumers' body limit: first the
/// output (within the configured cap it can still be too large once JSON
/// escapes its control characters, each one six bytes), then the passing
/// test cases, then the other test cases (saying so in `report_problem`),
/// then the file timings.
fn fit_body(result: &mut JobResult) {
    let mut size = encode(result).len();
    while size > MAX_BODY_BYTES && !result.output.is_empty() {
        let keep = result.output.len() / 4;
        result.output = output::shrink(&result.output, keep);
        result.output_truncated = true;
        size = encode(result).len();
    }
    let reported = result.tests.len();
    if size > MAX_BODY_BYTES && reported > 0 {
        // Failures first: they are what a person looks for.
        result
            .tests
            .sort_by_key(|test| matches!(test.status, TestStatus::Passed | TestStatus::Skipped));
        while size > MAX_BODY_BYTES && !result.tests.is_empty() {
            result.tests.truncate(result.tests.len() / 2);
            size = encode(result).len();
        }
        let problem = format!(
            "only {} of {reported} test cases are reported (failures first): the result would be \
             larger than the broker's limit",
            result.tests.len()
        );
        result.report_problem = Some(match result.report_problem.take() {
            Some(earlier) => format!("{earlier}; {problem}"),
            None => problem,
        });
    }
    while size > MAX_BODY_BYTES && !result.file_timings.is_empty() {
        result.file_timings.truncate(result.file_timings.len() / 2);
        size = encode(result).len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AllowList;
    use crate::metrics::Metrics;
    use crate::run;
    use std::collections::BTreeMap;
    use warren_common::ids::SuitePath;
    use warren_common::ids::WorkerId;
    use warren_common::ids::{BranchName, CommitId, JobId, RepoName, RepoUrl};
    use warren_common::messages::{Shard, TestCase, TestCommand};
    use warren_harness::git::Upstream;
    use warren_harness::process::eventually;

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
            metrics: Metrics::default(),
            git: GitAuth::default(),
            executor: crate::executor::Executor::process(),
            network: true,
            limits: Default::default(),
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
            image: None,
            published_at: Utc::now(),
            network: None,
            limits: None,
            result_key: None,
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
        let stop = JobStop::new(&CancellationToken::new());
        match execute_job(runner, slot, job, &events, &stop).await {
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
    async fn a_job_asking_for_an_image_on_a_worker_without_containers_is_an_error() {
        let f = fixture();
        let mut job = job(&f.upstream, &f.sha, TestCommand::Shell("touch ran".into()));
        job.image = Some(warren_common::ids::ImageRef::parse("debian:bookworm-slim").unwrap());
        let result = finish(&runner(&["*"]), f.slot.path(), &job).await;
        assert_eq!(result.status, JobStatus::Error);
        let message = result.message.unwrap();
        assert!(
            message.contains("`debian:bookworm-slim`")
                && message.contains("worker.executor = \"process\""),
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

    #[test]
    fn an_undecodable_body_is_refused_with_its_reason() {
        match decode_job(b"{\"schema\":1,\"type\":\"job\"}") {
            Err(reason) => assert!(reason.contains("missing field"), "{reason}"),
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
        let outcome = execute_job(&r, f.slot.path(), &job, &events, &JobStop::new(&abort)).await;
        assert!(matches!(outcome, Outcome::Abandoned), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_cancelled_job_is_killed_and_reports_nothing() {
        let f = fixture();
        let job = job(
            &f.upstream,
            &f.sha,
            TestCommand::Shell("echo $$ > pid.tmp; mv pid.tmp pid; sleep 100".into()),
        );
        let abort = CancellationToken::new();
        let stop = JobStop::new(&abort);
        let canceller = stop.clone();
        let pid_file = f.slot.path().join("api/pid");
        let watched = pid_file.clone();
        tokio::spawn(async move {
            let started = eventually(Duration::from_secs(30), Duration::from_millis(10), || {
                std::future::ready(watched.exists())
            })
            .await;
            assert!(started, "the job never started");
            canceller.cancel();
        });
        run::adopt_orphans();
        let r = runner(&["*"]);
        let events = Events::disabled(r.worker.clone());
        let started = std::time::Instant::now();
        let outcome = execute_job(&r, f.slot.path(), &job, &events, &stop).await;
        assert!(matches!(outcome, Outcome::Cancelled), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!abort.is_cancelled(), "only this job was stopped");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the command survived"
        );
    }

    #[tokio::test]
    async fn a_command_that_cannot_take_its_files_is_an_error_before_checkout() {
        let f = fixture();
        let r = runner(&["*"]);
        let mut embedded = job(
            &f.upstream,
            &f.sha,
            TestCommand::Argv(vec!["pytest".into(), "--x={files}".into()]),
        );
        embedded.files = vec![SuitePath::parse("a.py").unwrap()];
        let result = finish(&r, f.slot.path(), &embedded).await;
        assert_eq!(result.status, JobStatus::Error);
        let message = result.message.unwrap();
        assert!(
            message.contains("must be an element of its own"),
            "{message}"
        );
        assert!(
            !f.slot.path().join("api").exists(),
            "nothing was checked out"
        );

        let no_files = job(&f.upstream, &f.sha, TestCommand::Shell("sh {file}".into()));
        let result = finish(&r, f.slot.path(), &no_files).await;
        assert_eq!(result.status, JobStatus::Error);
        assert!(result.message.unwrap().contains("lists no files"));
    }

    #[tokio::test]
    async fn a_junit_job_reports_its_tests() {
        let f = fixture();
        let script = r#"mkdir -p out; cat > out/report.xml <<EOF
<testsuites><testsuite name="s">
<testcase classname="t.a" name="ok" file="test.sh" time="0.5"/>
<testcase classname="t.a" name="bad" file="test.sh" time="0.25"><failure message="1 != 2"/></testcase>
</testsuite></testsuites>
EOF
exit 1"#;
        let mut job = job(&f.upstream, &f.sha, TestCommand::Shell(script.into()));
        job.files = vec![SuitePath::parse("test.sh").unwrap()];
        job.junit = Some(SuitePath::parse("out/report.xml").unwrap());
        let result = finish(&runner(&["*"]), f.slot.path(), &job).await;
        assert_eq!(result.status, JobStatus::Failed);
        let tests: Vec<(&str, TestStatus)> = result
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.status))
            .collect();
        assert_eq!(
            tests,
            [("ok", TestStatus::Passed), ("bad", TestStatus::Failed)]
        );
        assert_eq!(result.tests[1].message.as_deref(), Some("1 != 2"));
        let timing = &result.file_timings[0];
        assert_eq!((timing.duration_ms, timing.estimated), (750, false));
        assert_eq!(result.report_problem, None);
    }

    #[test]
    fn a_result_with_too_many_tests_for_the_broker_keeps_the_failures() {
        let f = fixture();
        let r = runner(&["*"]);
        let job = job(&f.upstream, &f.sha, TestCommand::Shell("true".into()));
        let test = |i: usize, status| TestCase {
            name: format!("{i}-{}", "n".repeat(900)),
            classname: "c".repeat(900),
            file: None,
            duration_ms: 1,
            status,
            message: None,
            flaky: false,
        };
        // 30 000 tests of ~2 KB: ~55 MB encoded, over the 40 MiB limit.
        let mut tests: Vec<_> = (0..29_990).map(|i| test(i, TestStatus::Passed)).collect();
        tests.extend((0..10).map(|i| test(i, TestStatus::Failed)));
        let ran = Ran {
            status: JobStatus::Failed,
            exit_code: Some(1),
            signal: None,
            message: None,
            output: empty_output(),
            duration: Duration::ZERO,
            tests,
            file_timings: Vec::new(),
            report_problem: None,
        };
        let result = Report::new(&r, &job).ran(ran, Duration::ZERO);
        assert!(encode(&*result).len() <= MAX_BODY_BYTES);
        assert!(result.tests.len() > 1000, "{}", result.tests.len());
        assert!(
            result.tests[..10]
                .iter()
                .all(|t| t.status == TestStatus::Failed)
        );
        let problem = result.report_problem.unwrap();
        assert!(
            problem.contains("of 30000 test cases are reported"),
            "{problem}"
        );
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
        let ran = Ran {
            status: JobStatus::Passed,
            exit_code: Some(0),
            signal: None,
            message: None,
            output,
            duration: Duration::ZERO,
            tests: Vec::new(),
            file_timings: Vec::new(),
            report_problem: None,
        };
        let result = Report::new(&r, &job).ran(ran, Duration::ZERO);
        assert!(encode(&*result).len() <= MAX_BODY_BYTES);
        assert!(result.output_truncated);
        assert_eq!(result.output_bytes, 8 * 1024 * 1024);
    }
}
