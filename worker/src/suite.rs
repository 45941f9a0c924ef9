//! A job's command, run the way the job asks, within one time budget.
//!
//! - No placeholder, or `{files}`: one run (with all the shard's files).
//! - `{file}`: one run per file, one after the other in the same checkout;
//!   each is measured, and the job stops at the first that times out.
//! - Then, if the job failed and asks for `retry_failed` reruns: reruns of
//!   just what failed (the failed files' runs; the files holding the failed
//!   tests; or the whole command), until nothing fails any more or the
//!   reruns are used up. What failed and then passed is flaky
//!   ([`crate::flaky`]); if nothing fails any more, the job has passed.
//!
//! Every run gets what is left of the job's timeout, has its files in
//! `WARREN_FILES`, and is followed by a read of the job's JUnit report
//! (deleted before the run, so an old one is never read as new). The
//! outputs of all runs make one [`Transcript`], each after a `==>` header
//! line once there is more than one run. The output also goes out live
//! ([`crate::live`]) as it is written, with a `==> …` line before each run
//! that has a header (the transcript's header adds how the run ended).

mod reruns;
mod verdict;

use self::verdict::{Problems, Step, Tally, Verdict};

use crate::executor::CommandSpec;
use crate::executor::{Isolation, Limits};
use crate::flaky::{self, TestBook};
use crate::junit::{self, MAX_TEST_CASES};
use crate::live::LiveSink;
use crate::output::{CapturedOutput, Transcript};
use crate::run::{self, Ending};
use crate::runner::{JobRunner, job_environment};
use crate::substitute::{self, Placeholder};
use crate::timings;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use warren_common::ids::SuitePath;
use warren_common::messages::{FileTiming, Job, JobStatus, TestCase, TestCommand};

/// How many files a rerun's header names before it says "and N more".
const FILES_IN_HEADER: usize = 5;

/// What the runs of a job came to.
#[derive(Debug, Clone)]
pub(crate) struct Ran {
    /// The job's verdict.
    pub status: JobStatus,
    /// Exit status of the first failing run (0 when the job passed).
    pub exit_code: Option<i32>,
    /// Signal that ended the first failing run.
    pub signal: Option<i32>,
    /// Why it did not pass, or how it passed after reruns, for people.
    pub message: Option<String>,
    /// Every run's output.
    pub output: CapturedOutput,
    /// From the first run's start to the last one's end.
    pub duration: Duration,
    /// The report's test cases (or the files of a `{file}` job without one).
    pub tests: Vec<TestCase>,
    /// Time per suite file.
    pub file_timings: Vec<FileTiming>,
    /// Why the JUnit report could not be read.
    pub report_problem: Option<String>,
}

/// How the runs ended.
#[derive(Debug)]
pub(crate) enum SuiteEnd {
    /// To the end (whatever the verdict).
    Ran(Box<Ran>),
    /// Stopped from outside (see [`crate::cancel::JobStop`]); no verdict.
    Stopped,
}

/// Runs `job`'s command in the checkout `cwd`, using `placeholder` (checked
/// by the caller, `{file}` only with files), until done or `stop`; the
/// output also goes to `live`.
pub(crate) async fn run(
    runner: &JobRunner,
    job: &Job,
    cwd: &Path,
    placeholder: Placeholder,
    stop: &CancellationToken,
    live: LiveSink,
) -> SuiteEnd {
    let started = Instant::now();
    let suite = Suite {
        runner,
        job,
        cwd,
        placeholder,
        stop,
        env: job_environment(runner.base_env.iter().cloned(), job),
        started,
        deadline: started + Duration::from_millis(job.timeout_ms),
        transcript: Transcript::new(runner.output_limit),
        book: TestBook::new(MAX_TEST_CASES),
        problems: Problems::default(),
        files_noted: false,
        live,
        network: runner.network && job.network != Some(false),
        limits: runner.limits.min(job_limits(job)),
    };
    suite.run().await
}

/// The limits `job` asks for (each the worker's maximum when not asked).
fn job_limits(job: &Job) -> Limits {
    let asked = job.limits.unwrap_or_default();
    Limits {
        memory: asked.memory_bytes,
        processes: asked.processes,
        cpu_time: asked.cpu_time_ms.map(Duration::from_millis),
        disk: asked.disk_bytes,
    }
}

/// What a run is, for its header and its report's problems.
struct Label<'a> {
    /// The header line's text (no header without one).
    header: Option<String>,
    /// The one file of a `{file}` run: the file of its report's tests.
    file: Option<&'a SuitePath>,
}

struct Suite<'a> {
    runner: &'a JobRunner,
    job: &'a Job,
    cwd: &'a Path,
    placeholder: Placeholder,
    stop: &'a CancellationToken,
    /// The job's environment, without `WARREN_FILES`.
    env: Vec<(OsString, OsString)>,
    started: Instant,
    deadline: Instant,
    transcript: Transcript,
    book: TestBook,
    problems: Problems,
    /// Whether the output already says that `WARREN_FILES` is too long.
    files_noted: bool,
    /// Where the output goes live.
    live: LiveSink,
    /// Whether the command gets the network (the worker allows it and the
    /// job does not turn it off).
    network: bool,
    /// The lower of the worker's maxima and what the job asks for.
    limits: Limits,
}

impl Suite<'_> {
    async fn run(mut self) -> SuiteEnd {
        let first = match self.placeholder {
            Placeholder::EachFile => self.each_file().await,
            Placeholder::AllFiles | Placeholder::None => self.all_at_once().await,
        };
        let Some(mut tally) = first else {
            return SuiteEnd::Stopped;
        };
        if tally.status == JobStatus::Failed
            && !tally.killed
            && self.job.retry_failed > 0
            && self.rerun(&mut tally).await.is_none()
        {
            return SuiteEnd::Stopped;
        }
        SuiteEnd::Ran(Box::new(self.finish(tally)))
    }

    /// One run with all the files. `None`: stopped.
    async fn all_at_once(&mut self) -> Option<Tally> {
        let files = self.job.files.clone();
        let label = Label {
            header: None,
            file: None,
        };
        let step = self.run_once(&files, label).await;
        let mut tally = Tally::passed();
        if step.verdict.ran() {
            tally.timings = timings::shared_out(&files, step.duration, &step.tests);
        }
        self.book.add(step.tests);
        match step.verdict {
            Verdict::Passed => {}
            Verdict::Failed { exit_code, signal } => tally.fail(exit_code, signal),
            Verdict::NotRun { exit_code, message } => tally.error(exit_code, message),
            Verdict::TimedOut => tally.timed_out(self.timeout_message()),
            Verdict::Killed(hit) => tally.killed(hit, None),
            Verdict::Stopped => return None,
        }
        Some(tally)
    }

    /// One run per file, until a timeout or a run that cannot start.
    /// `None`: stopped.
    async fn each_file(&mut self) -> Option<Tally> {
        let files = self.job.files.clone();
        let mut tally = Tally::passed();
        for (index, file) in files.iter().enumerate() {
            let label = Label {
                header: Some(file.to_string()),
                file: Some(file),
            };
            let step = self.run_once(std::slice::from_ref(file), label).await;
            if step.verdict == Verdict::Stopped {
                return None;
            }
            if step.verdict.ran() {
                tally.timings.push(timings::measured(file, step.duration));
            }
            self.record(file, &step, TestBook::add);
            match step.verdict {
                Verdict::Passed | Verdict::Stopped => {}
                Verdict::Failed { exit_code, signal } => {
                    tally.fail(exit_code, signal);
                    tally.failed_files.push(file.clone());
                }
                Verdict::Killed(hit) => {
                    tally.killed(hit, Some(file));
                    tally.failed_files.push(file.clone());
                }
                Verdict::NotRun { exit_code, message } => {
                    tally.error(exit_code, format!("{message} (running {file})"));
                    break;
                }
                Verdict::TimedOut => {
                    let left = files.len() - index - 1;
                    let mut message = format!("{} while running {file}", self.timeout_message());
                    if left > 0 {
                        message.push_str(&format!(
                            "; {} did not run",
                            flaky::count(left, "more file")
                        ));
                    }
                    tally.timed_out(message);
                    break;
                }
            }
        }
        Some(tally)
    }

    /// Adds the tests of a `{file}` run: its report's, or the file itself
    /// as a test case when there is no report.
    fn record(&mut self, file: &SuitePath, step: &Step, add: fn(&mut TestBook, Vec<TestCase>)) {
        let cases = if self.job.junit.is_some() {
            step.tests.clone()
        } else {
            let (status, message) = step.verdict.test_status();
            vec![flaky::file_case(file, status, step.duration, message)]
        };
        add(&mut self.book, cases);
    }

    /// One run of the command over `files`: clears the old report, runs
    /// with what is left of the timeout, adds the output to the transcript
    /// and reads the new report.
    async fn run_once(&mut self, files: &[SuitePath], label: Label<'_>) -> Step {
        self.remove_stale_report().await;
        if let Some(header) = &label.header {
            self.live.header(&format!("==> {header}"));
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let (verdict, output, duration) = if remaining.is_zero() {
            (Verdict::TimedOut, empty_output(), Duration::ZERO)
        } else {
            match self.spec(files, remaining) {
                Ok(spec) => match run::run(&spec, &self.runner.executor, self.stop).await {
                    Ok(finished) => (
                        self.verdict(finished.ending),
                        finished.output,
                        finished.duration,
                    ),
                    Err(error) => {
                        warn!(%error, "command could not start");
                        let message = error.to_string();
                        (
                            Verdict::NotRun {
                                exit_code: None,
                                message,
                            },
                            empty_output(),
                            started.elapsed(),
                        )
                    }
                },
                Err(message) => (
                    Verdict::NotRun {
                        exit_code: None,
                        message,
                    },
                    empty_output(),
                    Duration::ZERO,
                ),
            }
        };
        let header = label.header.as_ref().map(|header| {
            format!(
                "{header} ({}, {:.1} s)",
                verdict.describe(),
                duration.as_secs_f64()
            )
        });
        self.transcript.push_run(header.as_deref(), &output);
        let ran_to_its_end = matches!(verdict, Verdict::Passed | Verdict::Failed { .. });
        let tests = if ran_to_its_end {
            self.read_report(&label).await
        } else {
            Vec::new()
        };
        Step {
            verdict,
            duration,
            tests,
        }
    }

    /// The command line and environment of a run over `files`.
    fn spec(&mut self, files: &[SuitePath], timeout: Duration) -> Result<CommandSpec, String> {
        let (program, args) =
            substitute::command_line(&self.job.command, files).map_err(|e| e.to_string())?;
        let mut env = self.env.clone();
        match substitute::files_variable(files) {
            Ok(value) => env.push(("WARREN_FILES".into(), value.into())),
            Err(note) if !self.files_noted => {
                warn!(files = files.len(), "WARREN_FILES is too long to set");
                self.transcript.note(&note);
                self.files_noted = true;
            }
            Err(_) => {}
        }
        Ok(CommandSpec {
            program,
            args,
            cwd: self.cwd.to_path_buf(),
            env,
            timeout,
            kill_grace: self.runner.kill_grace,
            output_limit: self.runner.output_limit,
            live: self.live.clone(),
            isolation: Isolation::new(self.network, self.limits).with_image(self.job.image.clone()),
        })
    }

    fn verdict(&self, ending: Ending) -> Verdict {
        let shell = matches!(self.job.command, TestCommand::Shell(_));
        match ending {
            Ending::Exited(0) => Verdict::Passed,
            // The shell's own codes for "not found" (127) and "found but not
            // executable" (126): the test never ran.
            Ending::Exited(code @ (126 | 127)) if shell => Verdict::NotRun {
                exit_code: Some(code),
                message: format!("command not found or not executable (exit status {code})"),
            },
            Ending::Exited(code) => Verdict::Failed {
                exit_code: Some(code),
                signal: None,
            },
            Ending::Signalled(signal) => Verdict::Failed {
                exit_code: None,
                signal: Some(signal),
            },
            Ending::TimedOut => Verdict::TimedOut,
            Ending::Aborted => Verdict::Stopped,
            Ending::LimitReached(hit) => Verdict::Killed(hit),
        }
    }

    /// Deletes the report an earlier run (or the commit) left, if any.
    async fn remove_stale_report(&self) {
        let Some(report) = self.job.junit.clone() else {
            return;
        };
        let cwd = self.cwd.to_path_buf();
        let removed = tokio::task::spawn_blocking(move || junit::remove_stale(&cwd, &report)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "could not delete the old JUnit report"),
            Err(error) => warn!(%error, "could not delete the old JUnit report"),
        }
    }

    /// The report of the run just ended (its tests get the run's file when
    /// they do not name one); its problem goes to the result.
    async fn read_report(&mut self, label: &Label<'_>) -> Vec<TestCase> {
        let Some(report) = self.job.junit.clone() else {
            return Vec::new();
        };
        let cwd = self.cwd.to_path_buf();
        let path = report.clone();
        let read = tokio::task::spawn_blocking(move || junit::read(&cwd, &path))
            .await
            .unwrap_or_else(|error| junit::Report {
                tests: Vec::new(),
                problem: Some(format!("JUnit report {report} could not be read: {error}")),
            });
        if let Some(problem) = read.problem {
            match &label.header {
                Some(header) => self.problems.add(format!("{problem} ({header})")),
                None => self.problems.add(problem),
            }
        }
        let mut tests = read.tests;
        if let Some(file) = label.file {
            for test in tests.iter_mut().filter(|test| test.file.is_none()) {
                test.file = Some(file.to_string());
            }
        }
        tests
    }

    fn timeout_message(&self) -> String {
        format!(
            "killed after the job timeout of {}",
            humantime::format_duration(Duration::from_millis(self.job.timeout_ms))
        )
    }

    /// Whether the book's test cases are the files themselves.
    fn files_as_tests(&self) -> bool {
        self.placeholder == Placeholder::EachFile && self.job.junit.is_none()
    }

    fn finish(self, tally: Tally) -> Ran {
        let mut report_problem = self.problems.into_message();
        if self.book.overflowed() && report_problem.is_none() {
            report_problem = Some(format!(
                "the JUnit reports have more than {MAX_TEST_CASES} test cases; \
                 only the first {MAX_TEST_CASES} are reported"
            ));
        }
        Ran {
            status: tally.status,
            exit_code: tally.exit_code,
            signal: tally.signal,
            message: tally.message,
            output: self.transcript.finish(),
            duration: self.started.elapsed(),
            tests: self.book.into_cases(),
            file_timings: tally.timings,
            report_problem,
        }
    }
}

/// Files for a header: the first few, then how many more.
fn file_list(files: &[SuitePath]) -> String {
    let shown = files
        .iter()
        .take(FILES_IN_HEADER)
        .map(SuitePath::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    match files.len().saturating_sub(FILES_IN_HEADER) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn empty_output() -> CapturedOutput {
    CapturedOutput {
        text: String::new(),
        truncated: false,
        total_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AllowList;
    use chrono::Utc;
    use std::collections::BTreeMap;
    use warren_common::ids::{BranchName, CommitId, JobId, RepoName, RepoUrl, WorkerId};
    use warren_common::messages::Shard;
    use warren_common::messages::TestStatus;

    fn runner() -> JobRunner {
        JobRunner {
            worker: WorkerId::parse("test-worker").unwrap(),
            host: "test-host".into(),
            allowed_repos: AllowList::new(&["*".to_owned()]).unwrap(),
            output_limit: 64 * 1024,
            kill_grace: Duration::from_millis(200),
            heartbeat_interval: Duration::from_secs(5),
            base_env: vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())],
            metrics: crate::metrics::Metrics::default(),
            git: warren_common::git::GitAuth::default(),
            executor: crate::executor::Executor::process(),
            network: true,
            limits: Default::default(),
        }
    }

    fn job(command: TestCommand, files: &[&str]) -> Job {
        Job {
            job_id: JobId::new(),
            attempt: 1,
            repo: RepoName::parse("api").unwrap(),
            url: RepoUrl::parse("file:///nowhere").unwrap(),
            branch: BranchName::parse("main").unwrap(),
            sha: CommitId::parse(&"a".repeat(40)).unwrap(),
            shard: Shard::WHOLE,
            command,
            timeout_ms: 30_000,
            env: BTreeMap::new(),
            files: files.iter().map(|f| SuitePath::parse(f).unwrap()).collect(),
            junit: None,
            retry_failed: 0,
            image: None,
            published_at: Utc::now(),
            network: None,
            limits: None,
            result_key: None,
        }
    }

    fn shell(script: &str) -> TestCommand {
        TestCommand::Shell(script.into())
    }

    /// A checkout with these files.
    fn checkout(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        dir
    }

    async fn run_job(job: &Job, cwd: &Path) -> Ran {
        run::adopt_orphans();
        let placeholder = substitute::placeholder(&job.command).unwrap();
        let stop = CancellationToken::new();
        match run(
            &runner(),
            job,
            cwd,
            placeholder,
            &stop,
            LiveSink::disabled(),
        )
        .await
        {
            SuiteEnd::Ran(ran) => *ran,
            SuiteEnd::Stopped => panic!("stopped"),
        }
    }

    fn statuses(ran: &Ran) -> Vec<(&str, TestStatus, bool)> {
        ran.tests
            .iter()
            .map(|t| (t.name.as_str(), t.status, t.flaky))
            .collect()
    }

    fn log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("runs.log"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[tokio::test]
    async fn each_file_runs_once_measured_in_the_same_checkout() {
        let dir = checkout(&[
            ("t/a.sh", "echo a >> runs.log; sleep 0.3; echo A"),
            ("t/b c.sh", "echo b >> runs.log; echo B; exit 3"),
            ("t/d.sh", "echo d >> runs.log; kill -9 $$"),
        ]);
        let job = job(
            TestCommand::Argv(vec!["sh".into(), "{file}".into()]),
            &["t/a.sh", "t/b c.sh", "t/d.sh"],
        );
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Failed);
        assert_eq!(
            (ran.exit_code, ran.signal),
            (Some(3), None),
            "the first failure's"
        );
        assert_eq!(log(dir.path()), "a b d");
        let timings: Vec<(&str, bool)> = ran
            .file_timings
            .iter()
            .map(|t| (t.path.as_str(), t.estimated))
            .collect();
        assert_eq!(
            timings,
            [("t/a.sh", false), ("t/b c.sh", false), ("t/d.sh", false)]
        );
        assert!(
            ran.file_timings[0].duration_ms >= 300,
            "{:?}",
            ran.file_timings
        );
        assert!(
            ran.file_timings[1].duration_ms < ran.file_timings[0].duration_ms,
            "{:?}",
            ran.file_timings
        );
        // Without a report, the files are the test cases.
        assert_eq!(
            statuses(&ran),
            [
                ("t/a.sh", TestStatus::Passed, false),
                ("t/b c.sh", TestStatus::Failed, false),
                ("t/d.sh", TestStatus::Failed, false),
            ]
        );
        let lines: Vec<&str> = ran.output.text.lines().collect();
        assert!(lines[0].starts_with("==> t/a.sh (exit 0, 0."), "{lines:?}");
        assert_eq!(lines[1], "A");
        assert!(lines[2].starts_with("==> t/b c.sh (exit 3, "), "{lines:?}");
        assert_eq!(lines[3], "B");
        assert!(lines[4].starts_with("==> t/d.sh (signal 9, "), "{lines:?}");
        assert_eq!(ran.output.total_bytes, 4, "the runs' own bytes");
        assert_eq!(ran.report_problem, None);
    }

    #[tokio::test]
    async fn each_file_stops_at_the_first_run_past_the_jobs_timeout() {
        let dir = checkout(&[
            ("a.sh", "echo a >> runs.log; sleep 0.5"),
            ("b.sh", "echo b >> runs.log; sleep 100"),
            ("c.sh", "echo c >> runs.log"),
            ("d.sh", "echo d >> runs.log"),
        ]);
        let mut job = job(shell("sh {file}"), &["a.sh", "b.sh", "c.sh", "d.sh"]);
        job.timeout_ms = 2000;
        let start = std::time::Instant::now();
        let ran = run_job(&job, dir.path()).await;
        let elapsed = start.elapsed();
        assert_eq!(ran.status, JobStatus::TimedOut);
        assert_eq!(
            ran.message.as_deref(),
            Some("killed after the job timeout of 2s while running b.sh; 2 more files did not run")
        );
        assert_eq!(log(dir.path()), "a b");
        // The budget is the job's, not each run's: b got what a left.
        assert!(
            elapsed < Duration::from_millis(2000 + 200 + 1500),
            "{elapsed:?}"
        );
        assert!(
            ran.file_timings[1].duration_ms < 1700,
            "{:?}",
            ran.file_timings
        );
        assert_eq!(
            ran.file_timings.len(),
            2,
            "files that never ran have no time"
        );
        assert!(
            ran.output
                .text
                .contains("==> b.sh (killed at the job timeout, ")
        );
    }

    #[tokio::test]
    async fn all_files_go_to_one_run_quoted_and_in_warren_files() {
        let dir = checkout(&[]);
        let job = job(
            shell("printf '[%s]\\n' {files}; printf '%s\\n' \"$WARREN_FILES\""),
            &["t/a b.py", "t/it's.py", "t/$(touch pwned).py"],
        );
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Passed, "{}", ran.output.text);
        assert_eq!(
            ran.output.text,
            "[t/a b.py]\n[t/it's.py]\n[t/$(touch pwned).py]\nt/a b.py\nt/it's.py\nt/$(touch pwned).py\n"
        );
        assert!(!dir.path().join("pwned").exists());
        assert!(ran.file_timings.iter().all(|t| t.estimated));
        let each = ran.file_timings[0].duration_ms;
        assert!(ran.file_timings.iter().all(|t| t.duration_ms == each));
        assert!(ran.tests.is_empty());
    }

    #[tokio::test]
    async fn a_command_without_placeholder_still_sees_its_files() {
        let dir = checkout(&[]);
        let ran = run_job(
            &job(shell("echo \"$WARREN_FILES\""), &["a.py", "b.py"]),
            dir.path(),
        )
        .await;
        assert_eq!(ran.output.text, "a.py\nb.py\n");
        let ran = run_job(&job(shell("echo \"[$WARREN_FILES]\""), &[]), dir.path()).await;
        assert_eq!(ran.output.text, "[]\n");
        assert!(ran.file_timings.is_empty());
    }

    /// A test runner in sh: runs each file given (a script whose exit
    /// status is the test's), logs it, and writes a JUnit report.
    const RUNNER: &str = r#"
status=0
echo '<testsuites><testsuite name="sh">' > report.xml
for f in "$@"; do
  echo "$f" >> runs.log
  if sh "$f"; then
    echo "<testcase classname=\"suite\" name=\"$f\" file=\"$f\" time=\"0.25\"/>" >> report.xml
  else
    echo "<testcase classname=\"suite\" name=\"$f\" file=\"$f\" time=\"0.25\"><failure message=\"$f failed\">details</failure></testcase>" >> report.xml
    status=1
  fi
done
echo '</testsuite></testsuites>' >> report.xml
exit $status
"#;

    fn with_runner(tests: &[(&str, &str)]) -> tempfile::TempDir {
        let mut files = vec![("runner.sh", RUNNER)];
        files.extend_from_slice(tests);
        checkout(&files)
    }

    /// Passes from its second run on: a flaky test.
    const FLAKY: &str = "[ -e \"$0.ran\" ] && exit 0; touch \"$0.ran\"; exit 1";

    fn junit_job(files: &[&str], retry_failed: u32) -> Job {
        let mut job = job(
            TestCommand::Argv(vec!["sh".into(), "runner.sh".into(), "{files}".into()]),
            files,
        );
        job.junit = Some(SuitePath::parse("report.xml").unwrap());
        job.retry_failed = retry_failed;
        job
    }

    #[tokio::test]
    async fn a_junit_report_gives_tests_and_file_times() {
        let dir = with_runner(&[("a.sh", "exit 0"), ("b.sh", "exit 1")]);
        let mut job = junit_job(&["a.sh", "b.sh", "c.sh"], 0);
        // c.sh is in the shard but the runner is not given it.
        job.command = shell("sh runner.sh a.sh b.sh");
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Failed);
        assert_eq!(
            statuses(&ran),
            [
                ("a.sh", TestStatus::Passed, false),
                ("b.sh", TestStatus::Failed, false)
            ]
        );
        assert_eq!(ran.tests[1].message.as_deref(), Some("b.sh failed"));
        assert_eq!(ran.tests[0].duration_ms, 250);
        let timings: Vec<(&str, u64, bool)> = ran
            .file_timings
            .iter()
            .map(|t| (t.path.as_str(), t.duration_ms, t.estimated))
            .collect();
        assert_eq!(timings[..2], [("a.sh", 250, false), ("b.sh", 250, false)]);
        assert_eq!((timings[2].0, timings[2].2), ("c.sh", true));
        assert_eq!(ran.report_problem, None);
    }

    #[tokio::test]
    async fn a_report_with_failures_does_not_change_a_passing_exit_status() {
        let dir = with_runner(&[("b.sh", "exit 1")]);
        let mut job = junit_job(&["b.sh"], 0);
        job.command = shell("sh runner.sh b.sh; exit 0");
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Passed);
        assert_eq!(statuses(&ran), [("b.sh", TestStatus::Failed, false)]);
    }

    #[tokio::test]
    async fn a_missing_or_stale_report_is_a_problem_not_a_verdict() {
        // A report committed to the repository is deleted before the run,
        // so it is never taken for the command's.
        let dir = checkout(&[(
            "report.xml",
            "<testsuite><testcase name=\"old\"/></testsuite>",
        )]);
        let mut job = job(shell("true"), &[]);
        job.junit = Some(SuitePath::parse("report.xml").unwrap());
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Passed);
        assert!(ran.tests.is_empty());
        assert_eq!(
            ran.report_problem.as_deref(),
            Some("JUnit report report.xml was not written by the command")
        );
    }

    #[tokio::test]
    async fn a_flaky_test_passes_on_a_rerun_and_the_job_passes() {
        let dir = with_runner(&[("a.sh", "exit 0"), ("b.sh", FLAKY)]);
        let ran = run_job(&junit_job(&["a.sh", "b.sh"], 2), dir.path()).await;
        assert_eq!(ran.status, JobStatus::Passed, "{}", ran.output.text);
        assert_eq!(ran.exit_code, Some(0));
        assert_eq!(
            ran.message.as_deref(),
            Some("passed after rerunning 1 failed test: flaky: suite.b.sh")
        );
        assert_eq!(
            statuses(&ran),
            [
                ("a.sh", TestStatus::Passed, false),
                ("b.sh", TestStatus::Passed, true)
            ]
        );
        assert_eq!(
            ran.tests[1].message.as_deref(),
            Some("b.sh failed"),
            "what was flaky"
        );
        // Only the file with the failed test ran again, once.
        assert_eq!(log(dir.path()), "a.sh b.sh b.sh");
        assert!(
            ran.output.text.contains("==> rerun 1 of 2: b.sh (exit 0, "),
            "{}",
            ran.output.text
        );
        assert!(!ran.output.text.contains("rerun 2 of 2"));
    }

    #[tokio::test]
    async fn a_test_that_always_fails_stays_failed_after_every_rerun() {
        let dir = with_runner(&[("a.sh", "exit 0"), ("b.sh", FLAKY), ("c.sh", "exit 1")]);
        let ran = run_job(&junit_job(&["a.sh", "b.sh", "c.sh"], 2), dir.path()).await;
        assert_eq!(ran.status, JobStatus::Failed);
        assert_eq!(ran.exit_code, Some(1));
        assert_eq!(
            statuses(&ran),
            [
                ("a.sh", TestStatus::Passed, false),
                ("b.sh", TestStatus::Passed, true),
                ("c.sh", TestStatus::Failed, false)
            ]
        );
        assert_eq!(
            ran.message.as_deref(),
            Some("still failing after 2 reruns: suite.c.sh; flaky: suite.b.sh")
        );
        // Each round reruns only what still failed.
        assert_eq!(log(dir.path()), "a.sh b.sh c.sh b.sh c.sh c.sh");
        assert!(ran.output.text.contains("==> rerun 2 of 2: c.sh (exit 1, "));
    }

    #[tokio::test]
    async fn each_file_reruns_only_the_failed_files_and_shows_flaky_files() {
        let dir = checkout(&[
            ("a.sh", "echo a >> runs.log"),
            ("b.sh", &format!("echo b >> runs.log; {FLAKY}")),
            ("c.sh", "echo c >> runs.log; exit 1"),
        ]);
        let mut job = job(shell("sh {file}"), &["a.sh", "b.sh", "c.sh"]);
        job.retry_failed = 2;
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(log(dir.path()), "a b c b c c");
        assert_eq!(ran.status, JobStatus::Failed);
        assert_eq!(
            statuses(&ran),
            [
                ("a.sh", TestStatus::Passed, false),
                ("b.sh", TestStatus::Passed, true),
                ("c.sh", TestStatus::Failed, false)
            ]
        );
        assert_eq!(ran.tests[1].file.as_deref(), Some("b.sh"));
        assert_eq!(ran.tests[1].classname, "");
        assert_eq!(
            ran.message.as_deref(),
            Some("still failing after 2 reruns: c.sh; flaky: b.sh")
        );
        // Timings are the first runs'.
        assert_eq!(ran.file_timings.len(), 3);

        // Without the broken file, the job passes after its rerun.
        let dir = checkout(&[("a.sh", "true"), ("b.sh", FLAKY)]);
        let mut job = self::job(shell("sh {file}"), &["a.sh", "b.sh"]);
        job.retry_failed = 1;
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Passed);
        assert_eq!(
            ran.message.as_deref(),
            Some("passed after rerunning 1 failed file: flaky: b.sh")
        );
    }

    #[tokio::test]
    async fn without_files_the_whole_command_is_rerun() {
        let dir = checkout(&[("flaky.sh", FLAKY)]);
        let mut job = job(shell("echo run >> runs.log; sh flaky.sh"), &[]);
        job.retry_failed = 3;
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Passed);
        assert_eq!(log(dir.path()), "run run");
        assert_eq!(
            ran.message.as_deref(),
            Some("passed after rerunning the failed command (rerun 1 of 3 passed): flaky")
        );
        assert!(
            ran.output.text.contains("==> rerun 1 of 3 (exit 0, "),
            "{}",
            ran.output.text
        );
    }

    #[tokio::test]
    async fn reruns_count_against_the_jobs_timeout() {
        let dir = checkout(&[]);
        let mut job = job(
            shell("if [ -e first ]; then sleep 100; else touch first; exit 1; fi"),
            &[],
        );
        job.retry_failed = 3;
        job.timeout_ms = 1500;
        let start = std::time::Instant::now();
        let ran = run_job(&job, dir.path()).await;
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(ran.status, JobStatus::Failed, "the failure stands");
        assert_eq!(ran.exit_code, Some(1));
        assert_eq!(
            ran.message.as_deref(),
            Some("still failing: rerun 1 of 3 hit the job timeout")
        );
    }

    #[tokio::test]
    async fn timeouts_and_errors_are_not_rerun() {
        let dir = checkout(&[]);
        let mut job = job(shell("echo run >> runs.log; warren-no-such-tool"), &[]);
        job.retry_failed = 2;
        let ran = run_job(&job, dir.path()).await;
        assert_eq!(ran.status, JobStatus::Error);
        assert_eq!(log(dir.path()), "run");
    }

    #[tokio::test]
    async fn a_stop_ends_the_runs_without_a_verdict() {
        let dir = checkout(&[
            ("a.sh", "touch started; sleep 100"),
            ("b.sh", "touch b-ran"),
        ]);
        let job = job(shell("sh {file}"), &["a.sh", "b.sh"]);
        let stop = CancellationToken::new();
        let canceller = stop.clone();
        let started = dir.path().join("started");
        tokio::spawn(async move {
            let ran = warren_harness::process::eventually(
                Duration::from_secs(30),
                Duration::from_millis(10),
                || std::future::ready(started.exists()),
            )
            .await;
            assert!(ran, "a.sh never started");
            canceller.cancel();
        });
        run::adopt_orphans();
        let end = run(
            &runner(),
            &job,
            dir.path(),
            Placeholder::EachFile,
            &stop,
            LiveSink::disabled(),
        )
        .await;
        assert!(matches!(end, SuiteEnd::Stopped), "{end:?}");
        assert!(!dir.path().join("b-ran").exists());
    }

    #[tokio::test]
    async fn live_output_has_every_run_after_its_header() {
        let dir = checkout(&[
            ("a.sh", "echo A; printf 'no newline'"),
            ("b.sh", "echo B; exit 1"),
        ]);
        let mut job = job(shell("sh {file}"), &["a.sh", "b.sh"]);
        job.retry_failed = 1;
        let (live, capture) = crate::live::capture();
        run::adopt_orphans();
        let stop = CancellationToken::new();
        let end = run(
            &runner(),
            &job,
            dir.path(),
            Placeholder::EachFile,
            &stop,
            live,
        )
        .await;
        assert!(matches!(end, SuiteEnd::Ran(_)), "{end:?}");
        assert_eq!(
            capture.text(),
            "==> a.sh\nA\nno newline\n==> b.sh\nB\n==> rerun 1 of 1: b.sh\nB\n"
        );
    }
}
