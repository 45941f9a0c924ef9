//! Canned answers shaped as docs/API.md and the README's "The result file"
//! describe them, with times relative to when the test runs.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

pub const FAILED: &str = "a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4";
pub const PASSED: &str = "b0b0cafeb0b0cafeb0b0cafeb0b0cafeb0b0cafe";
/// Running: shard 0 passed, shard 1 (`job-running-1`) streams and fails.
pub const RUNNING: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
/// Running: its only job (`job-running-pass`) streams and passes.
pub const RUNNING_PASSING: &str = "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1";
/// In both `api` and `web`.
pub const TWIN: &str = "dddd1111dddd1111dddd1111dddd1111dddd1111";
/// Shares the prefix `dddd` with [`TWIN`].
pub const COUSIN: &str = "dddd2222dddd2222dddd2222dddd2222dddd2222";
/// Running; the stream of its job (`job-cut`) closes without `end`.
pub const CUT: &str = "cafe0000cafe0000cafe0000cafe0000cafe0000";
/// Running until its job's stream (`job-cut-done`) closes without `end`;
/// then its job and itself are `timed_out`.
pub const CUT_DONE: &str = "cafe1111cafe1111cafe1111cafe1111cafe1111";
/// Listed, but its result is gone (the commit endpoint answers 404).
pub const VANISHED: &str = "0404abcd0404abcd0404abcd0404abcd0404abcd";

fn ago(seconds: i64) -> String {
    (Utc::now() - Duration::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse(time: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(time)
        .unwrap()
        .with_timezone(&Utc)
}

/// `base` with the fields of `patch` replaced.
fn with(mut base: Value, patch: Value) -> Value {
    for (key, value) in patch.as_object().unwrap() {
        base[key] = value.clone();
    }
    base
}

/// A running job of the result file (shard `index` of `count`) on worker-1.
fn job(id: &str, index: u32, count: u32) -> Value {
    json!({
        "id": id, "shard": {"index": index, "count": count},
        "command": "python3 -m pytest {files}", "timeout_ms": 600_000,
        "files": [], "estimated_ms": 1000, "report_problem": null,
        "status": null, "attempt": 1, "worker": "worker-1",
        "exit_code": null, "signal": null, "message": null,
        "checkout_ms": 40, "duration_ms": null,
        "output": null, "output_truncated": false, "output_bytes": 0,
        "lost_runs": 0, "late_results": 0, "attempts": []
    })
}

/// A job that ended with `status` after `ms`, having printed `output`.
fn done(job: Value, status: &str, ms: u64, output: &str) -> Value {
    let (exit_code, message) = match status {
        "passed" => (json!(0), Value::Null),
        _ => (json!(1), json!("the command exited with status 1")),
    };
    with(
        job,
        json!({
            "status": status, "exit_code": exit_code, "message": message, "duration_ms": ms,
            "output": output, "output_bytes": output.len()
        }),
    )
}

/// A running commit of `api` on `main`, detected `detected` seconds ago.
fn commit(sha: &str, summary: &str, detected: i64, jobs: Vec<Value>) -> Value {
    json!({
        "schema": 1, "repo": "api", "sha": sha, "branch": "main",
        "author": "Ada <ada@example.com>", "summary": summary,
        "status": null, "message": null,
        "committed_at": ago(detected + 30), "detected_at": ago(detected),
        "received_at": ago(detected), "started_at": ago(detected - 1),
        "finished_at": null, "duration_ms": null,
        "duplicate_events": 0, "selection": null,
        "test_counts": null, "tests": [], "flaky_tests": [], "jobs": jobs
    })
}

/// The same commit with a verdict reached after `ms`.
fn decided(commit: Value, status: &str, ms: u64) -> Value {
    let message = if status == "passed" {
        Value::Null
    } else {
        json!("1 of 2 shards failed")
    };
    with(
        commit,
        json!({"status": status, "message": message, "duration_ms": ms, "finished_at": ago(1)}),
    )
}

/// Every commit's full result.
pub fn commits() -> Vec<Value> {
    let failed = with(
        decided(
            commit(
                FAILED,
                "Add subtraction",
                180,
                vec![
                    with(
                        done(
                            job("job-failed-0", 0, 2),
                            "passed",
                            12_000,
                            "collected 2 items\n2 passed\n",
                        ),
                        json!({"files": ["tests/test_a.py", "tests/test_b.py"]}),
                    ),
                    with(
                        done(
                            job("job-failed-1", 1, 2),
                            "failed",
                            15_000,
                            "collected 3 items\nFAILED tests/test_calc.py::test_sub\n",
                        ),
                        json!({"worker": "worker-2", "files": ["tests/test_c.py", "tests/test_calc.py", "tests/test_d.py"]}),
                    ),
                ],
            ),
            "failed",
            72_000,
        ),
        json!({
            "selection": {"mode": "subset", "reason": "only src/calc changed", "selected": 5, "of": 12},
            "test_counts": {"total": 4, "passed": 3, "failed": 1, "skipped": 0, "errors": 0, "flaky": 1},
            "tests": [
                {"shard": 1, "name": "test_sub", "classname": "tests.test_calc.CalcTest", "file": "tests/test_calc.py",
                 "duration_ms": 3, "status": "failed", "message": "AssertionError: 1 != -1\nin test_sub", "flaky": false},
                {"shard": 0, "name": "test_add", "classname": "tests.test_a.ATest", "file": "tests/test_a.py",
                 "duration_ms": 2, "status": "passed", "message": null, "flaky": false},
                {"shard": 0, "name": "test_net", "classname": "tests.test_b.NetTest", "file": "tests/test_b.py",
                 "duration_ms": 9, "status": "passed", "message": null, "flaky": true},
                {"shard": 1, "name": "test_mul", "classname": "tests.test_c.CTest", "file": "tests/test_c.py",
                 "duration_ms": 1, "status": "passed", "message": null, "flaky": false}
            ],
            "flaky_tests": [{"name": "test_net", "classname": "tests.test_b.NetTest", "times_flaky": 3}]
        }),
    );
    vec![
        commit(
            RUNNING_PASSING,
            "Quick fix",
            20,
            vec![with(
                job("job-running-pass", 0, 1),
                json!({"worker": "worker-2"}),
            )],
        ),
        commit(
            RUNNING,
            "Refactor the parser",
            60,
            vec![
                with(
                    done(job("job-running-0", 0, 2), "passed", 4_000, "parser ok\n"),
                    json!({"worker": "worker-2", "files": ["tests/test_p.py"]}),
                ),
                with(
                    job("job-running-1", 1, 2),
                    json!({"files": ["tests/test_q.py"]}),
                ),
            ],
        ),
        commit(CUT, "Cut short", 150, vec![job("job-cut", 0, 1)]),
        commit(
            CUT_DONE,
            "Cut, then done",
            160,
            vec![job("job-cut-done", 0, 1)],
        ),
        failed,
        decided(
            commit(
                PASSED,
                "Add a calculator",
                3_600,
                vec![done(job("job-passed-0", 0, 1), "passed", 850, "ok\n")],
            ),
            "passed",
            850,
        ),
        decided(
            commit(TWIN, "Shared history (api)", 4_000, vec![]),
            "passed",
            2_000,
        ),
        with(
            decided(
                commit(TWIN, "Shared history (web)", 4_100, vec![]),
                "failed",
                3_000,
            ),
            json!({"repo": "web"}),
        ),
        decided(commit(COUSIN, "Cousin", 5_000, vec![]), "passed", 2_000),
        with(
            decided(commit(VANISHED, "Gone", 7_200, vec![]), "passed", 1_000),
            json!({"gone": true}),
        ),
    ]
}

/// A result file reduced to its `CommitSummary`.
pub fn summary(commit: &Value) -> Value {
    let jobs = commit["jobs"].as_array().map_or(0, Vec::len);
    let done = commit["jobs"].as_array().map_or(0, |jobs| {
        jobs.iter().filter(|job| !job["status"].is_null()).count()
    });
    json!({
        "repo": commit["repo"], "sha": commit["sha"], "branch": commit["branch"],
        "summary": commit["summary"], "author": commit["author"], "status": commit["status"],
        "detected_at": commit["detected_at"], "finished_at": commit["finished_at"],
        "duration_ms": commit["duration_ms"], "jobs": jobs, "jobs_done": done
    })
}

pub fn workers() -> Value {
    json!({"workers": [
        {"id": "worker-1", "host": "build-3", "slots": 2, "busy": 1, "jobs_done": 17, "last_seen": ago(150),
         "current_jobs": [{"repo": "api", "sha": RUNNING, "job_id": "job-running-1", "attempt": 1}]},
        {"id": "worker-2", "host": "build-4", "slots": 1, "busy": 1, "jobs_done": 3, "last_seen": ago(270),
         "current_jobs": [{"repo": "api", "sha": RUNNING_PASSING, "job_id": "job-running-pass", "attempt": 2}]}
    ]})
}

/// Newest first, as the API promises.
pub fn sorted_by_detection(mut commits: Vec<Value>) -> Vec<Value> {
    commits.sort_by_key(|commit| std::cmp::Reverse(parse(commit["detected_at"].as_str().unwrap())));
    commits
}
