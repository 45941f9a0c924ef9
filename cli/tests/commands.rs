//! `warren status`, `show`, `retry`, `cancel` and `workers` against a fake
//! dispatcher, through the real binary: tables, `--json`, sha prefixes and
//! exit codes.

mod support;

use serde_json::Value;
use std::sync::Arc;
use support::fake::{FakeDispatcher, Gate, Reply};
use support::fixtures::{COUSIN, FAILED, PASSED, RUNNING, TWIN, VANISHED};
use support::{dead_url, dispatcher, warren};

fn fake() -> FakeDispatcher {
    dispatcher(Gate::default())
}

/// The line of `text` that contains `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The words of a line with single spaces: columns without their padding.
fn flat(line: &str) -> String {
    words(line).join(" ")
}

#[test]
fn status_prints_a_table_newest_first() {
    let fake = fake();
    let run = warren(&fake.url(), &["status"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !run.stdout.contains('\x1b'),
        "colour in a pipe: {:?}",
        run.stdout
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        flat(lines[0]),
        "COMMIT REPO BRANCH STATUS JOBS DURATION SUMMARY AGE"
    );
    assert!(lines[1].starts_with("e1e1e1e1e1e1  api"), "{}", run.stdout);
    assert!(lines[2].starts_with("c0ffee00c0ff  api"), "{}", run.stdout);
    assert_eq!(lines.len(), 1 + 10);
    // Columns line up: every row's status starts where the header's does.
    let column = lines[0].find("STATUS").unwrap();
    for line in &lines[1..] {
        assert!(
            line[column..].starts_with(['p', 'f', 'r']),
            "misaligned: {line:?}"
        );
    }
    assert_eq!(
        flat(line_with(&run.stdout, "a1b2c3d4a1b2")),
        "a1b2c3d4a1b2 api main failed 2/2 1m 12s Add subtraction 3 min ago"
    );
    assert_eq!(
        flat(line_with(&run.stdout, "c0ffee00c0ff")),
        "c0ffee00c0ff api main running 1/2 - Refactor the parser 1 min ago"
    );
    assert_eq!(
        words(line_with(&run.stdout, "b0b0cafeb0b0"))[3..6],
        ["passed", "1/1", "850ms"]
    );
    assert_eq!(fake.requests()[0].param("limit"), Some("20"));
}

#[test]
fn status_passes_its_filters_and_prints_json() {
    let fake = fake();
    let run = warren(
        &fake.url(),
        &[
            "status", "--repo", "web", "--status", "failed", "--branch", "main", "--limit", "5",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let answer: Value = serde_json::from_str(&run.stdout).unwrap();
    let commits = answer["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0]["sha"], TWIN);
    assert_eq!(commits[0]["repo"], "web");
    let request = &fake.requests()[0];
    assert_eq!(
        (request.param("repo"), request.param("status")),
        (Some("web"), Some("failed"))
    );
    assert_eq!(
        (request.param("branch"), request.param("limit")),
        (Some("main"), Some("5"))
    );
}

#[test]
fn status_with_no_match_says_so() {
    let fake = fake();
    let run = warren(&fake.url(), &["status", "--repo", "nothing"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "no commits\n"));
}

#[test]
fn status_rejects_a_limit_out_of_range() {
    let fake = fake();
    let run = warren(&fake.url(), &["status", "--limit", "501"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(fake.requests().is_empty());
}

#[test]
fn show_a_failed_commit_lists_shards_then_failures_then_flaky_tests_and_exits_1() {
    let fake = fake();
    let run = warren(&fake.url(), &["show", "a1b2"]);
    assert_eq!(run.code, 1, "{run:?}");
    let out = &run.stdout;
    assert!(out.contains(&format!("commit:    {FAILED}\n")), "{out}");
    assert!(out.contains("status:    failed\n"), "{out}");
    assert!(out.contains("why:       1 of 2 shards failed\n"), "{out}");
    assert!(out.contains("summary:   Add subtraction\n"), "{out}");
    assert!(out.contains("detected:  3 min ago\n"), "{out}");
    assert!(out.contains("took:      1m 12s\n"), "{out}");
    assert!(
        out.contains("tests:     3 passed, 1 failed, 0 errors, 0 skipped, 1 flaky (of 4)\n"),
        "{out}"
    );
    assert!(
        out.contains("selection: subset: 5 of 12 files (only src/calc changed)\n"),
        "{out}"
    );
    // Shards counted from 1, as on the status page ("1/2", "shard 2 of 2").
    assert_eq!(
        flat(line_with(out, "WORKER")),
        "SHARD WORKER STATUS DURATION FILES"
    );
    assert_eq!(
        flat(line_with(out, "worker-1")),
        "1/2 worker-1 passed 12s 2"
    );
    assert_eq!(
        flat(line_with(out, "worker-2")),
        "2/2 worker-2 failed 15s 3"
    );
    assert!(
        out.contains("  shard 2 of 2: the command exited with status 1\n"),
        "{out}"
    );
    assert!(out.contains(
        "Failed tests (1)\n  failed  tests.test_calc.CalcTest :: test_sub (tests/test_calc.py, shard 2 of 2)\n      AssertionError: 1 != -1\n      in test_sub\n"
    ), "{out}");
    assert!(!out.contains("shard 0"), "{out}");
    assert!(out.contains("Flaky tests (1)\n  test_net (tests.test_b.NetTest): flaky in 3 commits of this repository\n"), "{out}");
    let (shards, failed, flaky) = (
        out.find("Shards").unwrap(),
        out.find("Failed tests").unwrap(),
        out.find("Flaky tests").unwrap(),
    );
    assert!(shards < failed && failed < flaky, "{out}");
    assert!(
        !out.contains("test_add"),
        "passing tests are not listed: {out}"
    );
}

#[test]
fn show_exit_codes_follow_the_verdict() {
    let fake = fake();
    let passed = warren(&fake.url(), &["show", "b0b0"]);
    assert_eq!(passed.code, 0, "{passed:?}");
    assert!(
        passed.stdout.contains("status:    passed\n"),
        "{}",
        passed.stdout
    );
    let running = warren(&fake.url(), &["show", "C0FFEE"]);
    assert_eq!(running.code, 3, "{running:?}");
    assert!(
        running.stdout.contains("status:    running\n"),
        "{}",
        running.stdout
    );
    assert!(
        // Detected a minute before the fake started; the run takes a moment.
        running.stdout.contains("running:   for 1m "),
        "{}",
        running.stdout
    );
    assert_eq!(
        flat(line_with(&running.stdout, "worker-1")),
        "2/2 worker-1 running - 1"
    );
}

#[test]
fn show_json_prints_the_result_file_with_the_same_exit_codes() {
    let fake = fake();
    let failed = warren(&fake.url(), &["--json", "show", "a1b2c3d4"]);
    assert_eq!(failed.code, 1, "{failed:?}");
    let result: Value = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(
        (result["sha"].as_str(), result["schema"].as_u64()),
        (Some(FAILED), Some(1))
    );
    assert_eq!(result["tests"].as_array().unwrap().len(), 4);
    // The API's numbering, unchanged: shards from 0.
    assert_eq!(result["jobs"][1]["shard"]["index"], 1);
    assert_eq!(result["jobs"][1]["shard"]["count"], 2);
    assert_eq!(result["tests"][0]["shard"], 1);
    let running = warren(&fake.url(), &["show", RUNNING, "--json"]);
    assert_eq!(running.code, 3, "{running:?}");
    assert!(serde_json::from_str::<Value>(&running.stdout).unwrap()["status"].is_null());
}

#[test]
fn a_prefix_resolves_with_the_commit_list() {
    let fake = fake();
    let run = warren(&fake.url(), &["show", "b0b0"]);
    assert_eq!(run.code, 0, "{run:?}");
    let requests = fake.requests();
    assert_eq!(requests[0].path, "/api/commits");
    assert_eq!(requests[0].param("sha"), Some("b0b0"));
    assert_eq!(requests[1].path, format!("/api/commits/api/{PASSED}"));
}

#[test]
fn an_ambiguous_prefix_lists_the_candidates_and_exits_2() {
    let fake = fake();
    let run = warren(&fake.url(), &["show", "dddd"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("dddd is ambiguous"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("  api  dddd1111dddd  main  Shared history (api)\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("  web  dddd1111dddd  main  Shared history (web)\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("  api  dddd2222dddd  main  Cousin\n"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--repo"), "{}", run.stderr);

    // The same sha in two repositories: only --repo tells them apart.
    let twins = warren(&fake.url(), &["show", TWIN]);
    assert_eq!(twins.code, 2, "{twins:?}");
    let web = warren(&fake.url(), &["show", TWIN, "--repo", "web"]);
    assert_eq!(web.code, 1, "{web:?}");
    assert!(web.stdout.contains("repo:      web\n"), "{}", web.stdout);
    let api = warren(&fake.url(), &["show", "dddd2", "--repo", "api"]);
    assert_eq!(api.code, 0, "{api:?}");
    assert!(api.stdout.contains(COUSIN), "{}", api.stdout);
}

#[test]
fn an_unknown_or_invalid_sha_exits_2() {
    let fake = fake();
    let none = warren(&fake.url(), &["show", "ffff"]);
    assert_eq!(none.code, 2, "{none:?}");
    assert_eq!(none.stderr, "warren: no commit starts with ffff\n");
    let short = warren(&fake.url(), &["show", "abc"]);
    assert_eq!(short.code, 2, "{short:?}");
    assert!(
        short.stderr.contains("at least 4 hex digits"),
        "{}",
        short.stderr
    );
    let other_repo = warren(&fake.url(), &["show", "a1b2", "--repo", "web"]);
    assert_eq!(other_repo.code, 2, "{other_repo:?}");
    assert_eq!(
        other_repo.stderr,
        "warren: no commit of web starts with a1b2\n"
    );
    // Listed, but the commit endpoint answers 404: the server's text.
    let vanished = warren(&fake.url(), &["show", "0404"]);
    assert_eq!(vanished.code, 2, "{vanished:?}");
    assert_eq!(
        vanished.stderr,
        format!("warren: no commit {VANISHED} in api (HTTP 404)\n")
    );
}

#[test]
fn an_unreachable_dispatcher_exits_4() {
    let url = dead_url();
    for args in [
        &["status"][..],
        &["show", "a1b2"],
        &["workers"],
        &["--json", "logs", "a1b2", "--follow"],
    ] {
        let run = warren(&url, args);
        assert_eq!(run.code, 4, "{args:?}: {run:?}");
        assert!(
            run.stderr
                .starts_with(&format!("warren: cannot reach the dispatcher at {url}: ")),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn a_server_error_prints_its_text_and_exits_1() {
    let fake = FakeDispatcher::start(Arc::new(|_: &_| {
        Reply::Json(500, r#"{"error": "database is locked"}"#.into())
    }));
    let run = warren(&fake.url(), &["workers"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr, "warren: database is locked (HTTP 500)\n");
    let garbage = FakeDispatcher::start(Arc::new(|_: &_| Reply::Json(200, "not json".into())));
    let run = warren(&garbage.url(), &["status"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("unexpected answer from the commit list"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_url_is_a_usage_error() {
    let run = warren("127.0.0.1:8080", &["status"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("expected http://HOST:PORT"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_url_comes_from_warren_url_when_not_given() {
    let fake = fake();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("workers")
        .env("WARREN_URL", fake.url())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .contains("worker-1")
    );
}

#[test]
fn workers_prints_a_table_and_json() {
    let fake = fake();
    let run = warren(&fake.url(), &["workers"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        flat(lines[0]),
        "ID HOST SLOTS BUSY JOBS DONE LAST SEEN CURRENT JOBS"
    );
    assert_eq!(
        flat(lines[1]),
        "worker-1 build-3 2 1 17 2 min ago api c0ffee00c0ff"
    );
    assert_eq!(
        flat(lines[2]),
        "worker-2 build-4 1 1 3 4 min ago api e1e1e1e1e1e1 (attempt 2)"
    );
    let json = warren(&fake.url(), &["workers", "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let answer: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(answer["workers"][0]["jobs_done"], 17);
}

#[test]
fn retry_queues_a_finished_commit_and_refuses_a_running_one() {
    let fake = fake();
    let run = warren(&fake.url(), &["retry", "a1b2"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with("api a1b2c3d4a1b2: its jobs run again (queued)"),
        "{}",
        run.stdout
    );
    let last = fake.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", &*format!("/api/commits/api/{FAILED}/retry"))
    );

    let json = warren(&fake.url(), &["--json", "retry", "a1b2"]);
    assert_eq!(
        (json.code, json.stdout.as_str()),
        (0, "{\"status\":\"queued\"}\n")
    );

    let refused = warren(&fake.url(), &["retry", "c0ff"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("api c0ffee00c0ff is still running"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("the commit is still running"),
        "{}",
        refused.stderr
    );
}

#[test]
fn cancel_stops_a_running_commit_and_refuses_a_finished_one() {
    let fake = fake();
    let run = warren(&fake.url(), &["cancel", "c0ff"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "api c0ffee00c0ff: cancelled 1 job\n"),
        "{run:?}"
    );
    let json = warren(&fake.url(), &["cancel", "c0ff", "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&json.stdout).unwrap()["jobs"],
        1
    );

    let refused = warren(&fake.url(), &["cancel", "b0b0"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("api b0b0cafeb0b0 has already finished"),
        "{}",
        refused.stderr
    );
    let missing = warren(&fake.url(), &["cancel", "ffff"]);
    assert_eq!(missing.code, 2, "{missing:?}");
}
