//! Reruns of what failed (`retry_failed`): the failed files' own runs, the
//! files holding the failed tests, or the whole command, round after round
//! until nothing fails or the reruns are used up; what failed and then
//! passed is flaky.

use super::verdict::{Tally, Verdict};
use super::{Label, Suite, file_list};
use crate::flaky::{self, TestBook};
use crate::substitute::Placeholder;
use tracing::debug;
use warren_common::ids::SuitePath;
use warren_common::messages::JobStatus;

/// What the reruns are about.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// These files, each in a run of its own (`{file}`).
    EachFile(Vec<SuitePath>),
    /// These files, in one run.
    Files(Vec<SuitePath>),
    /// The whole command (a job without files).
    Whole,
}

/// How one round of reruns ended.
pub(super) enum Round {
    /// Everything rerun passed.
    Passed,
    /// Something failed again: the next round's target.
    Failed(Target),
    /// A rerun timed out or could not run: no more rounds; why.
    Ended(String),
    Stopped,
}

impl Suite<'_> {
    /// Reruns what failed, up to `retry_failed` rounds. `None`: stopped.
    pub(super) async fn rerun(&mut self, tally: &mut Tally) -> Option<()> {
        let rounds = self.job.retry_failed;
        let failing_before = self.book.failing().count();
        let mut target = match self.placeholder {
            Placeholder::EachFile => Target::EachFile(tally.failed_files.clone()),
            _ if self.job.files.is_empty() => Target::Whole,
            _ => Target::Files(
                self.book
                    .failing_files(&self.job.files)
                    .unwrap_or_else(|| self.job.files.clone()),
            ),
        };
        for round in 1..=rounds {
            let name = format!("rerun {round} of {rounds}");
            debug!(round, ?target, "rerunning what failed");
            let ended = match &target {
                Target::EachFile(files) => self.rerun_each(&name, files).await,
                Target::Files(_) | Target::Whole => self.rerun_together(&name, &target).await,
            };
            match ended {
                Round::Passed => {
                    tally.status = JobStatus::Passed;
                    tally.exit_code = Some(0);
                    tally.signal = None;
                    tally.message = Some(self.flaky_message(failing_before, &name));
                    return Some(());
                }
                Round::Failed(next) => target = next,
                Round::Ended(why) => {
                    tally.message = Some(format!("still failing: {name} {why}"));
                    return Some(());
                }
                Round::Stopped => return None,
            }
        }
        tally.message = Some(self.still_failing_message(rounds));
        Some(())
    }

    /// A round of `{file}` reruns: each file in a run of its own.
    async fn rerun_each(&mut self, name: &str, files: &[SuitePath]) -> Round {
        let mut still = Vec::new();
        for (index, file) in files.iter().enumerate() {
            let label = Label {
                header: Some(format!("{name}: {file}")),
                file: Some(file),
            };
            let step = self.run_once(std::slice::from_ref(file), label).await;
            if step.verdict == Verdict::Stopped {
                return Round::Stopped;
            }
            self.record(file, &step, TestBook::apply_rerun);
            match step.verdict {
                Verdict::Passed | Verdict::Stopped => {}
                Verdict::Failed { .. } => still.push(file.clone()),
                Verdict::TimedOut => return Round::Ended(format!("hit the job timeout at {file}")),
                Verdict::Killed(hit) => return Round::Ended(format!("killed: {hit} at {file}")),
                Verdict::NotRun { message, .. } => {
                    still.extend(files[index..].iter().cloned());
                    return Round::Ended(format!("could not run: {message}"));
                }
            }
        }
        if still.is_empty() {
            Round::Passed
        } else {
            Round::Failed(Target::EachFile(still))
        }
    }

    /// A round that reruns `target`'s files (or the whole command) at once.
    async fn rerun_together(&mut self, name: &str, target: &Target) -> Round {
        let files = match target {
            Target::Files(files) => files.clone(),
            Target::EachFile(_) | Target::Whole => Vec::new(),
        };
        let header = if files.is_empty() {
            name.to_owned()
        } else {
            format!("{name}: {}", file_list(&files))
        };
        let label = Label {
            header: Some(header),
            file: None,
        };
        let step = self.run_once(&files, label).await;
        self.book.apply_rerun(step.tests);
        match step.verdict {
            Verdict::Passed => Round::Passed,
            Verdict::Failed { .. } if files.is_empty() => Round::Failed(Target::Whole),
            Verdict::Failed { .. } => Round::Failed(Target::Files(
                self.book.failing_files(&files).unwrap_or(files),
            )),
            Verdict::TimedOut => Round::Ended("hit the job timeout".into()),
            Verdict::Killed(hit) => Round::Ended(format!("killed: {hit}")),
            Verdict::NotRun { message, .. } => Round::Ended(format!("could not run: {message}")),
            Verdict::Stopped => Round::Stopped,
        }
    }

    /// "passed after rerunning 2 failed tests: flaky: a, b".
    fn flaky_message(&self, failing_before: usize, round: &str) -> String {
        let flaky: Vec<String> = self.book.flaky().map(flaky::display_name).collect();
        if flaky.is_empty() {
            return format!("passed after rerunning the failed command ({round} passed): flaky");
        }
        let noun = if self.files_as_tests() {
            "failed file"
        } else {
            "failed test"
        };
        format!(
            "passed after rerunning {}: flaky: {}",
            flaky::count(failing_before.max(flaky.len()), noun),
            flaky::name_list(&flaky)
        )
    }

    /// "still failing after 2 reruns: a, b".
    fn still_failing_message(&self, rounds: u32) -> String {
        let reruns = flaky::count(rounds as usize, "rerun");
        let failing: Vec<String> = self.book.failing().map(flaky::display_name).collect();
        let flaky: Vec<String> = self.book.flaky().map(flaky::display_name).collect();
        let mut message = if failing.is_empty() {
            format!("still failing after {reruns}")
        } else {
            format!(
                "still failing after {reruns}: {}",
                flaky::name_list(&failing)
            )
        };
        if !flaky.is_empty() {
            message.push_str(&format!("; flaky: {}", flaky::name_list(&flaky)));
        }
        message
    }
}
