//! The status pages: server-rendered HTML with a little JavaScript for the
//! live parts (server-sent events from `/api/events` and
//! `/api/jobs/{id}/log`); no build chain. Readable on a phone (one column,
//! tables scroll sideways) and without colour (every status is a word and a
//! symbol).
//!
//! The HTML is in `dispatcher/templates/` (minijinja, embedded at compile
//! time, so the binary needs no files at run time). Templates ending in
//! `.html` are auto-escaped: values are passed as plain text and the
//! template escapes them. This module only turns the reports into the words
//! and numbers the pages show. The pictures (`crate::pictures`) are SVG
//! strings escaped where they are built and passed as safe.

use std::sync::LazyLock;

use minijinja::{Environment, Value, context};
use serde::Serialize;

use crate::fleet::Sample;
use crate::pictures::{fleet, timeline};
use crate::report::{CommitReport, CommitSummary, JobReport, WorkerReport};
use chrono::{DateTime, Utc};
use warren_common::messages::{JobStatus, TestStatus};

mod history;

pub(crate) use history::{branch_history, test_history};

/// The templates, parsed once.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("common.js", include_str!("../templates/common.js")),
        ("index.html", include_str!("../templates/index.html")),
        ("commit.html", include_str!("../templates/commit.html")),
        ("workers.html", include_str!("../templates/workers.html")),
        ("history.html", include_str!("../templates/history.html")),
    ] {
        // A template that does not parse is reported when it is rendered
        // (and by the tests below), not here.
        if let Err(error) = env.add_template(name, source) {
            tracing::error!(template = name, %error, "status page template does not parse");
        }
    }
    env
});

/// Renders a page; a failure is logged and shown as a short error page
/// rather than taking the server down.
fn render(name: &str, ctx: Value) -> String {
    match TEMPLATES
        .get_template(name)
        .and_then(|template| template.render(ctx))
    {
        Ok(html) => html,
        Err(error) => {
            tracing::error!(template = name, error = %format!("{error:#}"), "status page did not render");
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error · Warren</title></head>\
             <body><p>This page could not be rendered; the dispatcher's log says why.</p></body></html>\n"
                .to_owned()
        }
    }
}

/// A status as a symbol and a word.
fn status_text(status: Option<JobStatus>) -> &'static str {
    match status {
        None => "● running",
        Some(JobStatus::Passed) => "✓ passed",
        Some(JobStatus::Failed) => "✗ failed",
        Some(JobStatus::TimedOut) => "⏱ timed out",
        Some(JobStatus::Error) => "⚠ error",
        Some(JobStatus::Superseded) => "↷ superseded",
        Some(JobStatus::Cancelled) => "⊘ cancelled",
    }
}

fn status_class(status: Option<JobStatus>) -> &'static str {
    status.map_or("running", JobStatus::as_str)
}

fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "–".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// `text` for a URL's query or path segment: everything but unreserved
/// characters percent-encoded.
fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The history page of a branch.
fn branch_href(repo: &str, branch: &str) -> String {
    format!("/history/{}?branch={}", url_part(repo), url_part(branch))
}

/// The history page of one test.
fn test_href(repo: &str, classname: &str, name: &str) -> String {
    format!(
        "/tests/{}?classname={}&name={}",
        url_part(repo),
        url_part(classname),
        url_part(name)
    )
}

/// A picture (already escaped) for a template, or nothing.
fn picture(svg: Option<String>) -> Option<Value> {
    svg.map(Value::from_safe_string)
}

/// One row of the commit list; `row()` in index.html renders the same from
/// live updates.
#[derive(Serialize)]
struct CommitRow<'a> {
    repo: &'a str,
    sha: &'a str,
    short: &'a str,
    class: &'static str,
    status: &'static str,
    branch: &'a str,
    branch_href: String,
    summary: &'a str,
    done: u64,
    jobs: u64,
    duration: String,
}

/// The list of recent commits, updated live.
pub(crate) fn index(commits: &[CommitSummary], next_before: Option<i64>) -> String {
    let commits: Vec<CommitRow<'_>> = commits
        .iter()
        .map(|commit| CommitRow {
            repo: &commit.repo,
            sha: &commit.sha,
            short: short(&commit.sha),
            class: status_class(commit.status),
            status: status_text(commit.status),
            branch: &commit.branch,
            branch_href: branch_href(&commit.repo, &commit.branch),
            summary: &commit.summary,
            done: commit.jobs_done,
            jobs: commit.jobs,
            duration: duration(commit.duration_ms),
        })
        .collect();
    render(
        "index.html",
        context! { title => "Commits", commits, next_before },
    )
}

#[derive(Serialize)]
struct TestLine {
    name: String,
    href: String,
    message: Option<String>,
    file: Option<String>,
}

#[derive(Serialize)]
struct FlakyLine {
    name: String,
    href: String,
    times: u64,
}

/// A line of the commit's list of every test.
#[derive(Serialize)]
struct AnyTest {
    name: String,
    href: String,
    status: &'static str,
    duration: String,
}

/// Most tests the commit page lists (failed first), each linking to its
/// history: a suite of tens of thousands would make a page of megabytes.
/// The API's report has them all.
const TESTS_LISTED: usize = 2000;

/// A test's status as a symbol and a word.
fn test_status_text(status: TestStatus, flaky: bool) -> &'static str {
    match status {
        TestStatus::Passed if flaky => "~ flaky",
        TestStatus::Passed => "✓ passed",
        TestStatus::Failed => "✗ failed",
        TestStatus::Error => "⚠ error",
        TestStatus::Skipped => "□ skipped",
    }
}

#[derive(Serialize)]
struct JobRow<'a> {
    shard: String,
    class: &'static str,
    status: &'static str,
    worker: &'a str,
    duration: String,
    files: String,
    runs: usize,
}

#[derive(Serialize)]
struct Output<'a> {
    id: String,
    title: String,
    open: bool,
    live: bool,
    truncated: bool,
    bytes: u64,
    output: &'a str,
}

/// One commit: its verdict, shards, failed tests first, outputs; running
/// jobs' output follows live.
pub(crate) fn commit(report: &CommitReport) -> String {
    let time = "%Y-%m-%d %H:%M:%S UTC";
    let failed: Vec<TestLine> = report
        .tests
        .iter()
        .filter(|t| matches!(t.status, TestStatus::Failed | TestStatus::Error))
        .map(|t| TestLine {
            name: format!("{}::{}", t.classname, t.name),
            href: test_href(report.repo.as_str(), &t.classname, &t.name),
            message: t.message.clone(),
            file: t.file.clone(),
        })
        .collect();
    let flaky: Vec<FlakyLine> = report
        .flaky_tests
        .iter()
        .map(|t| FlakyLine {
            name: format!("{}::{}", t.classname, t.name),
            href: test_href(report.repo.as_str(), &t.classname, &t.name),
            times: t.times_flaky,
        })
        .collect();
    let all_tests: Vec<AnyTest> = report
        .tests
        .iter()
        .take(TESTS_LISTED)
        .map(|t| AnyTest {
            name: format!("{}::{}", t.classname, t.name),
            href: test_href(report.repo.as_str(), &t.classname, &t.name),
            status: test_status_text(t.status, t.flaky),
            duration: duration(Some(t.duration_ms)),
        })
        .collect();
    let timeline = picture(timeline::svg(&timeline::runs(report, Utc::now())));
    let jobs: Vec<JobRow<'_>> = report
        .jobs
        .iter()
        .map(|job| JobRow {
            shard: format!("{}/{}", job.shard.index + 1, job.shard.count),
            class: status_class(job.status),
            status: status_text(job.status),
            // A running job: the worker of its latest run.
            worker: job
                .worker
                .as_deref()
                .or_else(|| job.attempts.last().map(|run| run.worker.as_str()))
                .unwrap_or("–"),
            duration: duration(job.duration_ms),
            files: if job.files.is_empty() {
                "–".to_owned()
            } else {
                job.files.len().to_string()
            },
            runs: job.attempts.len(),
        })
        .collect();
    // Failed shards first, then running ones, then the rest.
    let mut sorted: Vec<&JobReport> = report.jobs.iter().collect();
    sorted.sort_by_key(|job| match job.status {
        Some(JobStatus::Failed | JobStatus::Error | JobStatus::TimedOut) => 0,
        None => 1,
        _ => 2,
    });
    let outputs: Vec<Output<'_>> = sorted
        .into_iter()
        .map(|job| Output {
            id: job.id.to_string(),
            title: format!(
                "Shard {} of {} — {}",
                job.shard.index + 1,
                job.shard.count,
                status_text(job.status)
            ),
            open: job.status != Some(JobStatus::Passed),
            live: job.status.is_none(),
            truncated: job.output_truncated,
            bytes: job.output_bytes,
            output: &job.output,
        })
        .collect();
    let selection = report.selection.as_ref().map(|selection| {
        context! {
            mode => selection["mode"].as_str().unwrap_or_default(),
            reason => selection["reason"].as_str().unwrap_or_default(),
        }
    });
    let counts = &report.test_counts;
    render(
        "commit.html",
        context! {
            title => format!("{} {}", report.repo, report.sha.short()),
            repo => report.repo.as_str(),
            sha => report.sha.as_str(),
            // A commit id is hex: a JSON string of it is safe in the script.
            sha_js => Value::from_safe_string(format!("{:?}", report.sha.as_str())),
            class => status_class(report.status),
            status => status_text(report.status),
            summary => &report.summary,
            author => &report.author,
            branch => report.branch.as_str(),
            branch_href => branch_href(report.repo.as_str(), report.branch.as_str()),
            message => &report.message,
            detected => report.detected_at.format(time).to_string(),
            finished => report
                .finished_at
                .map_or("—".into(), |at| at.format(time).to_string()),
            duration => duration(report.duration_ms),
            selection,
            failed,
            flaky,
            all_tests,
            tests_total => report.tests.len(),
            timeline,
            counts => context! {
                total => counts.total,
                passed => counts.passed,
                failed => counts.failed,
                skipped => counts.skipped,
                errors => counts.errors,
                flaky => counts.flaky,
            },
            jobs,
            outputs,
        },
    )
}

#[derive(Serialize)]
struct WorkerRow<'a> {
    id: &'a str,
    host: &'a str,
    busy: u16,
    slots: u16,
    jobs_done: u64,
    last_seen: String,
    jobs: Vec<RunningJob<'a>>,
}

#[derive(Serialize)]
struct RunningJob<'a> {
    repo: &'a str,
    sha: &'a str,
    short: &'a str,
}

/// The workers heard from recently, and the queue and fleet over the last
/// hour (`samples`, oldest first, taken every `every`).
pub(crate) fn workers(
    workers: &[WorkerReport],
    samples: &[Sample],
    every: std::time::Duration,
    now: DateTime<Utc>,
) -> String {
    let workers: Vec<WorkerRow<'_>> = workers
        .iter()
        .map(|worker| WorkerRow {
            id: &worker.id,
            host: &worker.host,
            busy: worker.busy,
            slots: worker.slots,
            jobs_done: worker.jobs_done,
            last_seen: worker.last_seen.format("%H:%M:%S UTC").to_string(),
            jobs: worker
                .current_jobs
                .iter()
                .map(|job| RunningJob {
                    repo: &job.repo,
                    sha: &job.sha,
                    short: short(&job.sha),
                })
                .collect(),
        })
        .collect();
    render(
        "workers.html",
        context! {
            title => "Workers",
            workers,
            fleet => picture(fleet::svg(samples, now)),
            fleet_rows => fleet::table(samples),
            every => humantime::format_duration(every).to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TestRun;

    fn summary(repo: &str, summary: &str) -> CommitSummary {
        CommitSummary {
            id: 1,
            repo: repo.into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: "main".into(),
            summary: summary.into(),
            author: "A".into(),
            status: Some(JobStatus::Failed),
            detected_at: chrono::Utc::now(),
            finished_at: None,
            duration_ms: Some(1500),
            jobs: 2,
            jobs_done: 1,
        }
    }

    #[test]
    fn the_list_is_rendered_and_escaped() {
        let html = index(
            &[summary("sample", "<script>alert('x')</script> & more")],
            Some(7),
        );
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains("<title>Commits · Warren</title>"), "{html}");
        assert!(
            html.contains(
                "<tr id=\"c-sample-0123456789abcdef0123456789abcdef01234567\" \
             data-sha=\"0123456789abcdef0123456789abcdef01234567\">\
             <td class=\"status failed\" data-testid=\"status\">✗ failed</td>"
            ),
            "{html}"
        );
        assert!(html.contains(">0123456789ab</a>"), "{html}");
        // The branch links to its history (minijinja writes `/` as `&#x2f;`).
        assert!(
            html.contains("<td><a href=\"&#x2f;history&#x2f;sample?branch=main\" title=\"history of the branch\">main</a></td>"),
            "{html}"
        );
        assert!(html.contains("<td>1/2</td><td>1.5 s</td>"), "{html}");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert("), "{html}");
        assert!(html.contains("&amp; more"), "{html}");
        assert!(
            html.contains("<a href=\"/?before=7\">Older commits</a>"),
            "{html}"
        );
        // The script is kept as written, not escaped.
        assert!(
            html.contains("const events = new EventSource('/api/events');"),
            "{html}"
        );
        assert!(
            html.contains("`<tr id=\"c-${esc(c.repo)}-${esc(c.sha)}\""),
            "{html}"
        );
        assert!(!index(&[], None).contains("Older commits"));
    }

    #[test]
    fn workers_render() {
        let worker = WorkerReport {
            id: "w<1>".into(),
            host: "h".into(),
            slots: 2,
            busy: 1,
            jobs_done: 3,
            last_seen: chrono::Utc::now(),
            current_jobs: vec![],
        };
        let html = workers(
            &[worker],
            &[],
            std::time::Duration::from_secs(10),
            chrono::Utc::now(),
        );
        assert!(
            html.contains("<td>w&lt;1&gt;</td><td>h</td><td>1/2</td><td>3</td>"),
            "{html}"
        );
        assert!(html.contains("<td class=\"wrap\">idle</td>"), "{html}");
        assert!(
            html.contains("setTimeout(() => location.reload(), 5000);"),
            "{html}"
        );
    }

    #[test]
    fn history_pages_link_their_commits_and_escape_names() {
        let mut commit = summary("sample", "<b>bold</b>");
        commit.branch = "feature/<x>".into();
        let html = branch_history("sample", "feature/<x>", &[commit]);
        assert!(
            html.contains("<svg class=\"picture\" id=\"history\""),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"/commits/sample/0123456789abcdef0123456789abcdef01234567\""),
            "{html}"
        );
        assert!(!html.contains("<b>bold"), "{html}");
        assert!(html.contains("branch feature/&lt;x&gt;"), "{html}");
        let run = TestRun {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: "main".into(),
            summary: "s".into(),
            commit_status: Some(JobStatus::Passed),
            status: TestStatus::Passed,
            flaky: true,
            duration_ms: 20,
        };
        let html = test_history("sample", "suite<1>", "t&'", &[run]);
        assert!(html.contains("id=\"test-history\""), "{html}");
        assert!(html.contains("suite&lt;1&gt;::t&amp;"), "{html}");
        assert!(html.contains("~ flaky"), "{html}");
        assert!(!html.contains("suite<1>"), "{html}");
    }

    #[test]
    fn test_links_are_url_encoded() {
        assert_eq!(
            test_href("api", "a b/c", "x&y=z?"),
            "/tests/api?classname=a%20b%2Fc&name=x%26y%3Dz%3F"
        );
        assert_eq!(
            branch_href("api", "feat/ü"),
            "/history/api?branch=feat%2F%C3%BC"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(Some(250)), "250 ms");
        assert_eq!(duration(Some(12_340)), "12.3 s");
        assert_eq!(duration(Some(75_000)), "1m 15s");
        assert_eq!(duration(None), "–");
    }
}
