//! `warren logs`: stored output from the commit's JSON, and `--follow`
//! streaming a running job's server-sent events, through the real binary.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use support::fake::Gate;
use support::fixtures::FAILED;
use support::{command, dispatcher, warren};

/// How long a test waits for a line it expects: far beyond what a local
/// process needs, short enough that a hang fails the test.
const LINE_DEADLINE: Duration = Duration::from_secs(20);

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn logs_prints_every_jobs_stored_output_under_a_header() {
    let fake = dispatcher(Gate::default());
    let run = warren(&fake.url(), &["logs", "a1b2"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "==> shard 1 of 2 (worker-1, passed) <==\ncollected 2 items\n2 passed\n\
         ==> shard 2 of 2 (worker-2, failed) <==\ncollected 3 items\nFAILED tests/test_calc.py::test_sub\n"
    );
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.path.starts_with("/api/jobs")),
        "finished jobs are not streamed"
    );
}

#[test]
fn logs_job_n_prints_that_shard_alone_counting_from_1() {
    let fake = dispatcher(Gate::default());
    let first = warren(&fake.url(), &["logs", "a1b2", "--job", "1"]);
    assert_eq!(
        (first.code, first.stdout.as_str()),
        (0, "collected 2 items\n2 passed\n"),
        "{first:?}"
    );
    let run = warren(&fake.url(), &["logs", "a1b2", "--job", "2"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (
            0,
            "collected 3 items\nFAILED tests/test_calc.py::test_sub\n"
        ),
        "{run:?}"
    );
    // JSON keeps the API's index: shard 2 of 2 is `"shard": 1`.
    let json = warren(&fake.url(), &["--json", "logs", "a1b2", "--job", "2"]);
    assert_eq!(json.code, 0, "{json:?}");
    assert_eq!(
        json_lines(&json.stdout),
        [
            json!({"job_id": "job-failed-1", "shard": 1, "event": "line", "data": "collected 3 items\nFAILED tests/test_calc.py::test_sub\n"}),
            json!({"job_id": "job-failed-1", "shard": 1, "event": "end", "status": "failed"}),
        ]
    );
}

#[test]
fn logs_job_out_of_range_says_how_shards_are_numbered_and_exits_2() {
    let fake = dispatcher(Gate::default());
    for number in ["3", "7"] {
        let missing = warren(&fake.url(), &["logs", "a1b2", "--job", number]);
        assert_eq!(missing.code, 2, "{missing:?}");
        assert!(missing.stdout.is_empty(), "{missing:?}");
        assert_eq!(
            missing.stderr,
            format!("warren: api {FAILED} has no job {number} (its shards are numbered 1 to 2)\n")
        );
    }
    let unsplit = warren(&fake.url(), &["logs", "b0b0", "--job", "2"]);
    assert_eq!(unsplit.code, 2, "{unsplit:?}");
    assert!(
        unsplit
            .stderr
            .contains("has no job 2 (its shards are numbered 1 to 1)"),
        "{}",
        unsplit.stderr
    );
    let no_jobs = warren(&fake.url(), &["logs", "dddd2", "--job", "1"]);
    assert_eq!(no_jobs.code, 2, "{no_jobs:?}");
    assert!(no_jobs.stderr.ends_with(" has no jobs\n"), "{no_jobs:?}");
}

#[test]
fn logs_job_0_is_a_usage_error_before_any_request() {
    let fake = dispatcher(Gate::default());
    for args in [
        &["logs", "a1b2", "--job", "0"][..],
        &["--json", "logs", "a1b2", "--job", "0", "--follow"],
    ] {
        let run = warren(&fake.url(), args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        assert!(
            run.stderr
                .contains("invalid value '0' for '--job <N>': shards are counted from 1"),
            "{}",
            run.stderr
        );
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[test]
fn logs_json_prints_one_object_per_chunk() {
    let fake = dispatcher(Gate::default());
    let run = warren(&fake.url(), &["--json", "logs", "a1b2"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        json_lines(&run.stdout),
        [
            json!({"job_id": "job-failed-0", "shard": 0, "event": "line", "data": "collected 2 items\n2 passed\n"}),
            json!({"job_id": "job-failed-0", "shard": 0, "event": "end", "status": "passed"}),
            json!({"job_id": "job-failed-1", "shard": 1, "event": "line", "data": "collected 3 items\nFAILED tests/test_calc.py::test_sub\n"}),
            json!({"job_id": "job-failed-1", "shard": 1, "event": "end", "status": "failed"}),
        ]
    );
}

#[test]
fn logs_of_a_running_job_without_follow_points_to_follow() {
    let fake = dispatcher(Gate::default());
    let run = warren(&fake.url(), &["logs", "e1e1"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    assert!(
        run.stderr
            .contains("warren: shard 1 of 1 is still running (--follow streams its output)"),
        "{}",
        run.stderr
    );
}

#[test]
fn follow_streams_lines_as_they_come_then_exits_with_the_verdict() {
    let gate = Gate::default();
    let fake = dispatcher(gate.clone());
    let mut child = command(&fake.url(), &["logs", "c0ff", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    // The stream is held after its first event: the line must show now.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("collecting tests/test_q.py") {
        seen.push(
            received
                .recv_timeout(LINE_DEADLINE)
                .expect("the first streamed line"),
        );
    }
    gate.open();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    seen.extend(received.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();

    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        seen,
        [
            "==> shard 1 of 2 (worker-2, passed) <==",
            "parser ok",
            "==> shard 2 of 2 (worker-1, running) <==",
            "collecting tests/test_q.py",
            "test_q1 ok",
            "test_q2 FAILED",
        ]
    );
    assert!(stderr.contains("warren: shard 2 of 2 failed"), "{stderr}");
    let stream = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/jobs/job-running-1/log")
        .unwrap();
    assert_eq!(stream.accept.as_deref(), Some("text/event-stream"));
}

#[test]
fn follow_of_a_passing_job_exits_0_and_json_has_one_object_per_event() {
    let fake = dispatcher(Gate::default());
    let run = warren(&fake.url(), &["logs", "e1e1", "--follow"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "compiling\n1 passed\n"),
        "{run:?}"
    );

    let json = warren(&fake.url(), &["--json", "logs", "e1e1", "--follow"]);
    assert_eq!(json.code, 0, "{json:?}");
    assert_eq!(
        json_lines(&json.stdout),
        [
            json!({"job_id": "job-running-pass", "shard": 0, "event": "line", "data": "compiling"}),
            json!({"job_id": "job-running-pass", "shard": 0, "event": "line", "data": "1 passed"}),
            json!({"job_id": "job-running-pass", "shard": 0, "event": "end", "status": "passed"}),
        ]
    );
}

#[test]
fn follow_of_a_finished_commit_exits_with_its_verdict_without_streaming() {
    let fake = dispatcher(Gate::default());
    let run = warren(&fake.url(), &["logs", "a1b2", "--job", "2", "--follow"]);
    assert_eq!(run.code, 1, "{run:?}");
    let passed = warren(&fake.url(), &["logs", "b0b0", "--follow"]);
    assert_eq!(
        (passed.code, passed.stdout.as_str()),
        (0, "ok\n"),
        "{passed:?}"
    );
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.path.starts_with("/api/jobs"))
    );
}

#[test]
fn a_stream_cut_before_end_exits_3_while_the_job_runs() {
    let fake = dispatcher(Gate::default());
    let run = warren(&fake.url(), &["logs", "cafe0000", "--follow"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(run.stdout, "half a story\n");
    assert!(
        run.stderr.contains(
            "the log stream of shard 1 of 1 ended before its end; the job is still running"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_stream_cut_before_end_gives_the_verdict_if_the_job_finished_meanwhile() {
    let fake = dispatcher(Gate::default());
    let run = warren(&fake.url(), &["--json", "logs", "cafe1111", "--follow"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        json_lines(&run.stdout),
        [
            json!({"job_id": "job-cut-done", "shard": 0, "event": "line", "data": "half a story"}),
            json!({"job_id": "job-cut-done", "shard": 0, "event": "end", "status": "timed_out"}),
        ]
    );
    assert!(
        run.stderr
            .contains("ended before its end; the job has finished"),
        "{}",
        run.stderr
    );
}
