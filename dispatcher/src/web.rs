//! The status pages: server-rendered HTML with a little JavaScript for the
//! live parts (server-sent events from `/api/events` and
//! `/api/jobs/{id}/log`); no build chain. Readable on a phone (one column,
//! tables scroll sideways) and without colour (every status is a word and a
//! symbol).

use crate::report::{CommitReport, CommitSummary, JobReport, WorkerReport};
use warren_common::messages::{JobStatus, TestStatus};

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A status as a symbol and a word.
fn status_text(status: Option<JobStatus>) -> String {
    match status {
        None => "● running".into(),
        Some(JobStatus::Passed) => "✓ passed".into(),
        Some(JobStatus::Failed) => "✗ failed".into(),
        Some(JobStatus::TimedOut) => "⏱ timed out".into(),
        Some(JobStatus::Error) => "⚠ error".into(),
        Some(JobStatus::Superseded) => "↷ superseded".into(),
        Some(JobStatus::Cancelled) => "⊘ cancelled".into(),
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

const STYLE: &str = r#"
:root { color-scheme: light dark; --muted: #777; --line: #8884; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 0.5rem 1rem 3rem; }
nav { display: flex; gap: 1rem; align-items: baseline; border-bottom: 1px solid var(--line); padding: 0.5rem 0; margin-bottom: 1rem; }
nav b { font-size: 1.1rem; }
a { color: inherit; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.35rem 0.5rem; border-bottom: 1px solid var(--line); vertical-align: top; white-space: nowrap; }
td.wrap { white-space: normal; }
code, pre, .sha { font-family: ui-monospace, monospace; font-size: 0.9em; }
pre { background: #8881; padding: 0.5rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; max-height: 40rem; overflow-y: auto; }
.muted { color: var(--muted); }
.status { font-weight: 600; }
.passed { color: #1a7f37; } .failed, .error, .timed_out { color: #cf222e; } .running { color: #9a6700; }
.superseded, .cancelled { color: var(--muted); }
@media (prefers-color-scheme: dark) { .passed { color: #3fb950; } .failed, .error, .timed_out { color: #f85149; } .running { color: #d29922; } }
h1 { font-size: 1.3rem; margin: 0.5rem 0; word-break: break-all; }
h2 { font-size: 1.1rem; margin-top: 1.5rem; }
details > summary { cursor: pointer; }
"#;

fn page(title: &str, body: &str, script: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Warren</title><style>{STYLE}</style></head><body>\
         <nav><b>Warren</b><a href=\"/\">Commits</a><a href=\"/workers\">Workers</a>\
         <span class=\"muted\" id=\"live\" data-testid=\"live\"></span></nav>{body}\
         <script>{script}</script></body></html>\n",
        esc(title)
    )
}

/// One row of the commit list; `ROW_JS` renders the same from live updates.
fn commit_row(commit: &CommitSummary) -> String {
    let short = &commit.sha[..12.min(commit.sha.len())];
    format!(
        "<tr id=\"c-{repo}-{sha}\" data-sha=\"{sha}\"><td class=\"status {class}\" data-testid=\"status\">{status}</td>\
         <td><a class=\"sha\" href=\"/commits/{repo}/{sha}\">{short}</a></td><td>{repo}</td><td>{branch}</td>\
         <td class=\"wrap\">{summary}</td><td>{done}/{jobs}</td><td>{duration}</td></tr>",
        repo = esc(&commit.repo),
        sha = esc(&commit.sha),
        class = status_class(commit.status),
        status = status_text(commit.status),
        branch = esc(&commit.branch),
        summary = esc(&commit.summary),
        done = commit.jobs_done,
        jobs = commit.jobs,
        duration = duration(commit.duration_ms),
    )
}

/// Shared by the pages: status words, escaping, the live-connection note.
const COMMON_JS: &str = r#"
const esc = s => String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const words = {passed:'✓ passed', failed:'✗ failed', timed_out:'⏱ timed out', error:'⚠ error', superseded:'↷ superseded', cancelled:'⊘ cancelled'};
const statusText = s => s ? words[s] || s : '● running';
const dur = ms => ms == null ? '–' : ms < 1000 ? ms + ' ms' : ms < 60000 ? (ms/1000).toFixed(1) + ' s' : Math.floor(ms/60000) + 'm ' + String(Math.floor(ms/1000)%60).padStart(2,'0') + 's';
function live(source, what) {
  const note = document.getElementById('live');
  source.onopen = () => { note.textContent = 'live'; };
  source.onerror = () => { note.textContent = 'reconnecting…'; };
}
"#;

const ROW_JS: &str = r#"
function row(c) {
  return `<tr id="c-${esc(c.repo)}-${esc(c.sha)}" data-sha="${esc(c.sha)}"><td class="status ${c.status || 'running'}" data-testid="status">${statusText(c.status)}</td>` +
    `<td><a class="sha" href="/commits/${esc(c.repo)}/${esc(c.sha)}">${esc(c.sha.slice(0, 12))}</a></td><td>${esc(c.repo)}</td><td>${esc(c.branch)}</td>` +
    `<td class="wrap">${esc(c.summary)}</td><td>${c.jobs_done}/${c.jobs}</td><td>${dur(c.duration_ms)}</td></tr>`;
}
const events = new EventSource('/api/events');
live(events);
events.addEventListener('commit', e => {
  const c = JSON.parse(e.data);
  const existing = document.getElementById(`c-${c.repo}-${c.sha}`);
  if (existing) existing.outerHTML = row(c);
  else document.querySelector('#commits tbody').insertAdjacentHTML('afterbegin', row(c));
});
"#;

/// The list of recent commits, updated live.
pub fn index(commits: &[CommitSummary], next_before: Option<i64>) -> String {
    let rows: String = commits.iter().map(commit_row).collect();
    let more = next_before
        .map(|id| format!("<p><a href=\"/?before={id}\">Older commits</a></p>"))
        .unwrap_or_default();
    let body = format!(
        "<h1>Recent commits</h1><div class=\"scroll\"><table id=\"commits\"><thead><tr><th>Status</th>\
         <th>Commit</th><th>Repository</th><th>Branch</th><th>Summary</th><th>Jobs</th><th>Time</th>\
         </tr></thead><tbody>{rows}</tbody></table></div>{more}"
    );
    page("Commits", &body, &format!("{COMMON_JS}{ROW_JS}"))
}

fn job_row(job: &JobReport) -> String {
    format!(
        "<tr><td>{}/{}</td><td class=\"status {}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        job.shard.index + 1,
        job.shard.count,
        status_class(job.status),
        status_text(job.status),
        // A running job: the worker of its latest run.
        job.worker
            .as_deref()
            .or_else(|| job.attempts.last().map(|run| run.worker.as_str()))
            .map(esc)
            .unwrap_or_else(|| "–".into()),
        duration(job.duration_ms),
        if job.files.is_empty() {
            "–".to_owned()
        } else {
            job.files.len().to_string()
        },
        job.attempts.len(),
    )
}

/// One commit: its verdict, shards, failed tests first, outputs; running
/// jobs' output follows live.
pub fn commit(report: &CommitReport) -> String {
    let mut body = format!(
        "<h1>{repo} <span class=\"sha\">{sha}</span></h1>\
         <p class=\"status {class}\" data-testid=\"commit-status\" id=\"commit-status\">{status}</p>\
         <p>{summary} <span class=\"muted\">— {author}, branch {branch}</span></p>",
        repo = esc(report.repo.as_str()),
        sha = esc(report.sha.as_str()),
        class = status_class(report.status),
        status = status_text(report.status),
        summary = esc(&report.summary),
        author = esc(&report.author),
        branch = esc(report.branch.as_str()),
    );
    if let Some(message) = &report.message {
        body.push_str(&format!("<p><b>{}</b></p>", esc(message)));
    }
    body.push_str(&format!(
        "<p class=\"muted\">Detected {}, finished {}, took {}.</p>",
        report.detected_at.format("%Y-%m-%d %H:%M:%S UTC"),
        report.finished_at.map_or("—".into(), |at| at
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string()),
        duration(report.duration_ms)
    ));
    if let Some(selection) = &report.selection {
        body.push_str(&format!(
            "<p class=\"muted\">Selection: {} ({}).</p>",
            esc(selection["mode"].as_str().unwrap_or_default()),
            esc(selection["reason"].as_str().unwrap_or_default())
        ));
    }
    let failed: Vec<_> = report
        .tests
        .iter()
        .filter(|t| matches!(t.status, TestStatus::Failed | TestStatus::Error))
        .collect();
    if !failed.is_empty() {
        body.push_str("<h2>Failed tests</h2><ul>");
        for test in failed {
            body.push_str(&format!(
                "<li><code>{}</code> {} <span class=\"muted\">{}</span></li>",
                esc(&format!("{}::{}", test.classname, test.name)),
                test.message.as_deref().map(esc).unwrap_or_default(),
                test.file.as_deref().map(esc).unwrap_or_default()
            ));
        }
        body.push_str("</ul>");
    }
    if !report.flaky_tests.is_empty() {
        body.push_str("<h2>Flaky tests</h2><ul>");
        for test in &report.flaky_tests {
            body.push_str(&format!(
                "<li><code>{}</code> flaky in {} commits</li>",
                esc(&format!("{}::{}", test.classname, test.name)),
                test.times_flaky
            ));
        }
        body.push_str("</ul>");
    }
    let counts = &report.test_counts;
    if counts.total > 0 {
        body.push_str(&format!(
            "<p>Tests: {} in all, {} passed, {} failed, {} skipped, {} errors, {} flaky.</p>",
            counts.total, counts.passed, counts.failed, counts.skipped, counts.errors, counts.flaky
        ));
    }
    body.push_str(
        "<h2>Shards</h2><div class=\"scroll\"><table><thead><tr><th>Shard</th><th>Status</th>\
         <th>Worker</th><th>Time</th><th>Files</th><th>Runs</th></tr></thead><tbody>",
    );
    for job in &report.jobs {
        body.push_str(&job_row(job));
    }
    body.push_str("</tbody></table></div><h2>Output</h2>");
    // Failed shards first, then running ones, then the rest.
    let mut jobs: Vec<&JobReport> = report.jobs.iter().collect();
    jobs.sort_by_key(|job| match job.status {
        Some(JobStatus::Failed | JobStatus::Error | JobStatus::TimedOut) => 0,
        None => 1,
        _ => 2,
    });
    for job in jobs {
        let open = if job.status != Some(JobStatus::Passed) {
            " open"
        } else {
            ""
        };
        let title = format!(
            "Shard {} of {} — {}",
            job.shard.index + 1,
            job.shard.count,
            status_text(job.status)
        );
        if job.status.is_none() {
            body.push_str(&format!(
                "<details{open}><summary>{} (live)</summary><pre class=\"live\" data-testid=\"live-log\" data-job=\"{}\"></pre></details>",
                esc(&title),
                job.id
            ));
        } else {
            let cut = if job.output_truncated {
                format!(
                    " <span class=\"muted\">({} bytes in all; middle left out)</span>",
                    job.output_bytes
                )
            } else {
                String::new()
            };
            body.push_str(&format!(
                "<details{open}><summary>{}{cut}</summary><pre>{}</pre></details>",
                esc(&title),
                esc(&job.output)
            ));
        }
    }
    let script = format!(
        "{COMMON_JS}\nconst sha = {sha:?};\n{COMMIT_JS}",
        sha = report.sha.as_str()
    );
    page(
        &format!("{} {}", report.repo, report.sha.short()),
        &body,
        &script,
    )
}

const COMMIT_JS: &str = r#"
const events = new EventSource('/api/events');
live(events);
events.addEventListener('commit', e => {
  const c = JSON.parse(e.data);
  if (c.sha !== sha) return;
  const el = document.getElementById('commit-status');
  el.textContent = statusText(c.status);
  el.className = 'status ' + (c.status || 'running');
  if (c.status) setTimeout(() => location.reload(), 300);
});
for (const pre of document.querySelectorAll('pre.live')) {
  const log = new EventSource(`/api/jobs/${pre.dataset.job}/log`);
  log.addEventListener('line', e => { pre.textContent += e.data; pre.scrollTop = pre.scrollHeight; });
  log.addEventListener('end', () => { log.close(); });
  log.addEventListener('gone', () => { log.close(); });
}
"#;

/// The workers heard from recently.
pub fn workers(workers: &[WorkerReport]) -> String {
    let mut rows = String::new();
    for worker in workers {
        let jobs: Vec<String> = worker
            .current_jobs
            .iter()
            .map(|job| {
                format!(
                    "<a href=\"/commits/{repo}/{sha}\">{repo}@{short}</a>",
                    repo = esc(&job.repo),
                    sha = esc(&job.sha),
                    short = esc(&job.sha[..12.min(job.sha.len())])
                )
            })
            .collect();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td class=\"wrap\">{}</td></tr>",
            esc(&worker.id),
            esc(&worker.host),
            worker.busy,
            worker.slots,
            worker.jobs_done,
            worker.last_seen.format("%H:%M:%S UTC"),
            if jobs.is_empty() { "idle".into() } else { jobs.join(", ") }
        ));
    }
    let body = format!(
        "<h1>Workers</h1><div class=\"scroll\"><table><thead><tr><th>Worker</th><th>Host</th>\
         <th>Busy/slots</th><th>Jobs done</th><th>Last seen</th><th>Running</th></tr></thead>\
         <tbody>{rows}</tbody></table></div><p class=\"muted\">Workers heard from in the last 10 minutes; \
         this page refreshes every 5 seconds.</p>"
    );
    page(
        "Workers",
        &body,
        "setTimeout(() => location.reload(), 5000);",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
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
