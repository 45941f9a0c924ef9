//! What the integration tests share: a fake dispatcher serving canned
//! answers (docs/API.md), and running the real `warren` binary.

#![allow(dead_code, unreachable_pub)] // each test file uses part of it

pub mod fake;
pub mod fixtures;

use fake::{FakeDispatcher, Gate, Reply, Request, Step};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A fake dispatcher answering every endpoint the client uses. The stream
/// of `job-running-1` sends one `line` event, waits for `gate`, then sends
/// a second `line` and `end` with `failed`; `job-running-pass` streams two
/// lines and `end` with `passed` at once. The streams of `job-cut` and
/// `job-cut-done` send a line and an unknown event, then close without
/// `end`; once the latter was asked for, its commit is `timed_out`.
pub fn dispatcher(gate: Gate) -> FakeDispatcher {
    let commits = fixtures::sorted_by_detection(fixtures::commits());
    let mut finished = commits.clone();
    for commit in finished
        .iter_mut()
        .filter(|c| c["sha"] == fixtures::CUT_DONE)
    {
        commit["status"] = json!("timed_out");
        commit["jobs"][0]["status"] = json!("timed_out");
    }
    let cut = AtomicBool::new(false);
    FakeDispatcher::start(Arc::new(move |request: &Request| {
        if request.path == "/api/jobs/job-cut-done/log" {
            cut.store(true, Ordering::SeqCst);
        }
        let commits = if cut.load(Ordering::SeqCst) {
            &finished
        } else {
            &commits
        };
        answer(request, commits, &gate)
    }))
}

fn json_reply(status: u16, value: Value) -> Reply {
    Reply::Json(status, value.to_string())
}

fn error(status: u16, message: &str) -> Reply {
    json_reply(status, json!({ "error": message }))
}

fn answer(request: &Request, commits: &[Value], gate: &Gate) -> Reply {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let find = |repo: &str, sha: &str| {
        commits
            .iter()
            .find(|c| c["repo"] == repo && c["sha"] == sha && c.get("gone").is_none())
    };
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "commits"]) => list(request, commits),
        ("GET", ["api", "commits", repo, sha]) => match find(repo, sha) {
            Some(commit) => json_reply(200, commit.clone()),
            None => error(404, &format!("no commit {sha} in {repo}")),
        },
        ("POST", ["api", "commits", repo, sha, "retry"]) => match find(repo, sha) {
            Some(commit) if commit["status"].is_null() => error(409, "the commit is still running"),
            Some(_) => json_reply(202, json!({"status": "queued"})),
            None => error(404, &format!("no commit {sha} in {repo}")),
        },
        ("POST", ["api", "commits", repo, sha, "cancel"]) => match find(repo, sha) {
            Some(commit) if commit["status"].is_null() => {
                let undecided = commit["jobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|j| j["status"].is_null())
                    .count();
                json_reply(202, json!({"status": "cancelled", "jobs": undecided}))
            }
            Some(_) => error(409, "the commit has finished"),
            None => error(404, &format!("no commit {sha} in {repo}")),
        },
        ("GET", ["api", "workers"]) => json_reply(200, fixtures::workers()),
        ("GET", ["api", "jobs", "job-running-1", "log"]) => Reply::Events(vec![
            Step::Send("event: line\ndata: collecting tests/test_q.py\n\n".into()),
            Step::Wait(gate.clone()),
            Step::Send(
                ": keep-alive\n\nevent: line\ndata: test_q1 ok\ndata: test_q2 FAILED\n\n".into(),
            ),
            Step::Send("event: end\ndata: failed\n\n".into()),
        ]),
        ("GET", ["api", "jobs", "job-running-pass", "log"]) => Reply::Events(vec![
            Step::Send("event: line\ndata: compiling\n\n".into()),
            Step::Send("event: line\ndata: 1 passed\n\n".into()),
            Step::Send("event: end\ndata: passed\n\n".into()),
        ]),
        ("GET", ["api", "jobs", "job-cut" | "job-cut-done", "log"]) => Reply::Events(vec![
            Step::Send("event: line\ndata: half a story\n\n".into()),
            Step::Send("event: gone\ndata: the live output stopped\n\n".into()),
        ]),
        ("GET", ["api", "jobs", job, "log"]) => error(404, &format!("no job {job}")),
        _ => error(404, "no such endpoint"),
    }
}

/// `GET /api/commits` with its filters, as docs/API.md says.
fn list(request: &Request, commits: &[Value]) -> Reply {
    let limit: usize = match request.param("limit").map(str::parse) {
        None => 50,
        Some(Ok(limit @ 1..=500)) => limit,
        Some(_) => return error(400, "limit must be 1..=500"),
    };
    if let Some(sha) = request.param("sha")
        && (sha.len() < 4 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return error(400, "sha must be at least 4 hex digits");
    }
    let matching: Vec<Value> = commits
        .iter()
        .filter(|c| request.param("repo").is_none_or(|repo| c["repo"] == repo))
        .filter(|c| {
            request
                .param("branch")
                .is_none_or(|branch| c["branch"] == branch)
        })
        .filter(|c| {
            request
                .param("status")
                .is_none_or(|status| c["status"] == status)
        })
        .filter(|c| {
            request
                .param("sha")
                .is_none_or(|sha| c["sha"].as_str().unwrap().starts_with(sha))
        })
        .map(fixtures::summary)
        .collect();
    let more = matching.len() > limit;
    let page: Vec<Value> = matching.into_iter().take(limit).collect();
    json_reply(
        200,
        json!({"commits": page, "next_before": if more { json!(42) } else { Value::Null }}),
    )
}

/// One run of the real binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `warren --url URL ARGS…` to completion, without colour settings
/// from the caller's environment.
pub fn warren(url: &str, args: &[&str]) -> Run {
    let output = command(url, args).output().unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The command line of `warren`, for tests that read its output live.
pub fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    command
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("WARREN_URL")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    command
}

/// A loopback address where nothing listens: a port just freed.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
