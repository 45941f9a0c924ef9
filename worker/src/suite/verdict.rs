//! How the runs of a job add up: each run's [`Verdict`] and [`Step`], the
//! job's standing over all of them ([`Tally`]: the first failure gives the
//! exit status; an error or a timeout overrides), and the JUnit reports'
//! problems over all runs ([`Problems`]).

use crate::executor::LimitHit;
use std::time::Duration;
use warren_common::ids::SuitePath;
use warren_common::messages::{FileTiming, JobStatus, TestCase, TestStatus};

/// How one run ended, for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Passed,
    Failed {
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    /// The command never ran: not found, not executable, cannot start.
    NotRun {
        exit_code: Option<i32>,
        message: String,
    },
    TimedOut,
    /// Killed at one of the job's limits (memory, processes, CPU, disk).
    Killed(LimitHit),
    Stopped,
}

impl Verdict {
    /// Whether the command ran (to its end or its timeout), so that its
    /// time says something about its files.
    pub(super) fn ran(&self) -> bool {
        !matches!(self, Self::NotRun { .. } | Self::Stopped)
    }

    /// For a `==>` header.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Passed => "exit 0".into(),
            Self::Failed {
                exit_code: Some(code),
                ..
            } => format!("exit {code}"),
            Self::Failed {
                signal: Some(signal),
                ..
            } => format!("signal {signal}"),
            Self::Failed { .. } => "failed".into(),
            Self::NotRun { message, .. } => format!("not run: {message}"),
            Self::TimedOut => "killed at the job timeout".into(),
            Self::Killed(hit) => format!("killed: {hit}"),
            Self::Stopped => "stopped".into(),
        }
    }

    /// A `{file}` job's file as a test case's status and message.
    pub(super) fn test_status(&self) -> (TestStatus, Option<String>) {
        match self {
            Self::Passed => (TestStatus::Passed, None),
            Self::Failed { .. } | Self::Killed(_) => (TestStatus::Failed, Some(self.describe())),
            _ => (TestStatus::Error, Some(self.describe())),
        }
    }
}

/// One run.
pub(super) struct Step {
    pub(super) verdict: Verdict,
    pub(super) duration: Duration,
    /// From the report, when the run ended by itself and there is one.
    pub(super) tests: Vec<TestCase>,
}

/// The job's standing after the first runs (and reruns).
pub(super) struct Tally {
    pub(super) status: JobStatus,
    pub(super) exit_code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) message: Option<String>,
    /// The files whose own run failed (`{file}`).
    pub(super) failed_files: Vec<SuitePath>,
    pub(super) timings: Vec<FileTiming>,
    /// A run was killed at a limit: the job failed, and is not rerun (the
    /// rerun would hit it again).
    pub(super) killed: bool,
}

impl Tally {
    pub(super) fn passed() -> Self {
        Self {
            status: JobStatus::Passed,
            exit_code: Some(0),
            signal: None,
            message: None,
            failed_files: Vec::new(),
            timings: Vec::new(),
            killed: false,
        }
    }

    /// A run (of `file`) was killed at a limit: failed, with the first
    /// limit hit as the message (an error or a timeout keeps its own).
    pub(super) fn killed(&mut self, hit: LimitHit, file: Option<&SuitePath>) {
        if self.killed || !matches!(self.status, JobStatus::Passed | JobStatus::Failed) {
            return;
        }
        self.status = JobStatus::Failed;
        self.exit_code = None;
        self.signal = None;
        self.message = Some(match file {
            Some(file) => format!("killed: {hit} (running {file})"),
            None => format!("killed: {hit}"),
        });
        self.killed = true;
    }

    /// A run failed; the first failure gives the exit status.
    pub(super) fn fail(&mut self, exit_code: Option<i32>, signal: Option<i32>) {
        if self.status == JobStatus::Passed {
            self.status = JobStatus::Failed;
            self.exit_code = exit_code;
            self.signal = signal;
        }
    }

    pub(super) fn error(&mut self, exit_code: Option<i32>, message: String) {
        self.status = JobStatus::Error;
        self.exit_code = exit_code;
        self.signal = None;
        self.message = Some(message);
    }

    pub(super) fn timed_out(&mut self, message: String) {
        self.status = JobStatus::TimedOut;
        self.exit_code = None;
        self.signal = None;
        self.message = Some(message);
    }
}

/// The JUnit report's problems over all runs: the first one, and how many
/// more there were.
#[derive(Debug, Default)]
pub(super) struct Problems {
    pub(super) first: Option<String>,
    pub(super) more: usize,
}

impl Problems {
    pub(super) fn add(&mut self, problem: String) {
        if self.first.is_none() {
            self.first = Some(problem);
        } else {
            self.more += 1;
        }
    }

    pub(super) fn into_message(self) -> Option<String> {
        let first = self.first?;
        Some(match self.more {
            0 => first,
            more => format!("{first}; and {more} more report problems in later runs"),
        })
    }
}
