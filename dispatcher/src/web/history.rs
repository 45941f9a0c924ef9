//! The history pages: a branch's last commits, one test across commits;
//! each a picture (`crate::pictures::history`) and the same as a table.

use minijinja::context;
use serde::Serialize;
use warren_common::messages::TestStatus;

use super::{duration, picture, render, short, status_class, status_text, test_status_text};
use crate::pictures::history;
use crate::pictures::svg::Mark;
use crate::report::{CommitSummary, TestRun};

/// A row of a history page's table.
#[derive(Serialize)]
struct HistoryRow {
    href: String,
    short: String,
    class: &'static str,
    status: &'static str,
    summary: String,
    duration: String,
}

/// The last commits of a branch (`commits` newest first): the picture and
/// the same as a table.
pub(crate) fn branch_history(repo: &str, branch: &str, commits: &[CommitSummary]) -> String {
    let points: Vec<history::Point> = commits
        .iter()
        .rev()
        .map(|commit| history::Point {
            href: format!("/commits/{}/{}", commit.repo, commit.sha),
            mark: Mark::of_job(commit.status),
            duration_ms: commit.duration_ms,
            title: format!(
                "{} {}: {}, {}",
                short(&commit.sha),
                commit.summary,
                status_text(commit.status),
                duration(commit.duration_ms)
            ),
        })
        .collect();
    let what = format!("commits of {repo}, branch {branch}");
    let rows: Vec<HistoryRow> = commits
        .iter()
        .map(|commit| HistoryRow {
            href: format!("/commits/{}/{}", commit.repo, commit.sha),
            short: short(&commit.sha).to_owned(),
            class: status_class(commit.status),
            status: status_text(commit.status),
            summary: commit.summary.clone(),
            duration: duration(commit.duration_ms),
        })
        .collect();
    render(
        "history.html",
        context! {
            title => format!("{repo} {branch}: history"),
            heading => format!("{repo}, branch {branch}: the last {} commits", commits.len()),
            picture => picture(history::svg("history", &what, &points)),
            rows,
        },
    )
}

/// One test across the last commits that ran it (`runs` newest first).
pub(crate) fn test_history(repo: &str, classname: &str, name: &str, runs: &[TestRun]) -> String {
    let href = |run: &TestRun| format!("/commits/{repo}/{}", run.sha);
    let points: Vec<history::Point> = runs
        .iter()
        .rev()
        .map(|run| history::Point {
            href: href(run),
            mark: Mark::of_test(run.status, run.flaky),
            duration_ms: Some(run.duration_ms),
            title: format!(
                "{} {} ({}): {}, {}",
                short(&run.sha),
                run.summary,
                run.branch,
                test_status_text(run.status, run.flaky),
                duration(Some(run.duration_ms))
            ),
        })
        .collect();
    let test = format!("{classname}::{name}");
    let rows: Vec<HistoryRow> = runs
        .iter()
        .map(|run| HistoryRow {
            href: href(run),
            short: short(&run.sha).to_owned(),
            class: match (run.status, run.flaky) {
                (TestStatus::Passed, false) => "passed",
                (TestStatus::Passed, true) => "running",
                (TestStatus::Failed | TestStatus::Error, _) => "failed",
                (TestStatus::Skipped, _) => "cancelled",
            },
            status: test_status_text(run.status, run.flaky),
            summary: format!("{} ({})", run.summary, run.branch),
            duration: duration(Some(run.duration_ms)),
        })
        .collect();
    render(
        "history.html",
        context! {
            title => format!("{test}: history"),
            heading => format!("{test} in {repo}: the last {} commits that ran it", runs.len()),
            picture => picture(history::svg("test-history", &format!("runs of {test}"), &points)),
            rows,
        },
    )
}
