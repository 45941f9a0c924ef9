//! Split suites end to end, with the real binaries: shards on different
//! workers aggregated into one result, splits balanced by recorded timings,
//! a retried shard running the same files, JUnit reports merged, flaky tests
//! found, change-based selection, and newer commits superseding older ones.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::git::Change;
use warren_harness::process::wait_until;

const DEADLINE: Duration = Duration::from_secs(120);

fn results_or_logs(cluster: &Cluster, shas: &[String]) -> Vec<serde_json::Value> {
    cluster
        .wait_for_results(shas, DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
}

fn result(cluster: &Cluster, sha: &str) -> serde_json::Value {
    results_or_logs(cluster, &[sha.to_owned()]).remove(0)
}

/// A test file that prints its name, sleeps and passes (or fails).
fn test_file(name: &str, seconds: f64, pass: bool) -> String {
    format!(
        "#!/bin/sh\necho \"ran {name}\"\nsleep {seconds}\nexit {}\n",
        if pass { 0 } else { 1 }
    )
}

fn files_of(job: &serde_json::Value) -> Vec<String> {
    job["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_is_split_across_workers_and_aggregated_into_one_result() {
    let mut options = ClusterOptions::new("s-split");
    options.workers = 3;
    let cluster = Cluster::start_ready(options).await;
    let spec = "command = \"sh {file}\"\nfiles = [\"tests/*.sh\"]\nshards = 3\ntimeout = \"1m\"\n";
    let names: Vec<String> = (1..=6).map(|i| format!("tests/t{i}.sh")).collect();
    let scripts: Vec<String> = names.iter().map(|n| test_file(n, 0.3, true)).collect();
    let mut changes: Vec<Change<'_>> = vec![("warren.toml", Some(spec))];
    changes.extend(
        names
            .iter()
            .zip(&scripts)
            .map(|(n, s)| (n.as_str(), Some(s.as_str()))),
    );
    let sha = cluster.upstream.commit("main", "suite", &changes);
    let report = result(&cluster, &sha);
    assert_eq!(report["status"], "passed", "{report:#}");
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    let mut all: Vec<String> = jobs.iter().flat_map(files_of).collect();
    all.sort();
    assert_eq!(all, names, "every file in exactly one shard");
    for job in jobs {
        assert_eq!(files_of(job).len(), 2, "equal shards without timings");
        for file in files_of(job) {
            assert!(
                job["output"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("ran {file}")),
                "{job:#}"
            );
        }
    }
    let workers: BTreeSet<&str> = jobs.iter().map(|j| j["worker"].as_str().unwrap()).collect();
    assert!(
        workers.len() >= 2,
        "shards ran on different workers: {workers:?}"
    );

    // One failing file fails the commit, and the result says which shard.
    let broken = test_file("tests/t4.sh", 0.1, false);
    let sha = cluster
        .upstream
        .commit("main", "break t4", &[("tests/t4.sh", Some(&broken))]);
    let report = result(&cluster, &sha);
    assert_eq!(report["status"], "failed", "{report:#}");
    let failed: Vec<&serde_json::Value> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(files_of(failed[0]).contains(&"tests/t4.sh".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_commit_is_split_by_the_recorded_timings() {
    let mut options = ClusterOptions::new("s-timings");
    options.workers = 2;
    let cluster = Cluster::start(options);
    let spec = "command = \"sh {file}\"\nfiles = [\"tests/*.sh\"]\nshards = 2\n";
    let slow = test_file("tests/a_slow.sh", 1.5, true);
    let quick: Vec<(String, String)> = ["b", "c", "d"]
        .iter()
        .map(|n| (format!("tests/{n}.sh"), test_file(n, 0.05, true)))
        .collect();
    let mut changes: Vec<Change<'_>> = vec![
        ("warren.toml", Some(spec)),
        ("tests/a_slow.sh", Some(&slow)),
    ];
    changes.extend(quick.iter().map(|(n, s)| (n.as_str(), Some(s.as_str()))));
    let first = cluster.upstream.commit("main", "first", &changes);
    let report = result(&cluster, &first);
    let sizes: Vec<usize> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| files_of(j).len())
        .collect();
    assert_eq!(sizes, [2, 2], "no timings yet: equal counts");

    let second = cluster
        .upstream
        .commit("main", "second", &[("README", Some("x\n"))]);
    let report = result(&cluster, &second);
    let jobs = report["jobs"].as_array().unwrap();
    let alone = jobs.iter().find(|j| files_of(j) == ["tests/a_slow.sh"]);
    assert!(
        alone.is_some(),
        "the slow file gets a shard of its own: {report:#}"
    );
    let estimate = alone.unwrap()["estimated_ms"].as_u64().unwrap();
    assert!(
        (1000..3000).contains(&estimate),
        "estimated from its timing: {estimate} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_shard_runs_exactly_the_same_files() {
    let mut options = ClusterOptions::new("s-retry");
    options.workers = 2;
    let mut cluster = Cluster::start_ready(options).await;
    let marks = cluster.root().join("marks");
    let spec = format!(
        "command = \"echo $PPID >> {}; sleep 2; for f in {{files}}; do echo \\\"has $f\\\"; done\"\n\
         files = [\"tests/*.sh\"]\nshards = 1\n",
        marks.display()
    );
    let sha = cluster.upstream.commit(
        "main",
        "one shard",
        &[
            ("warren.toml", Some(&spec)),
            ("tests/x.sh", Some("true\n")),
            ("tests/y.sh", Some("true\n")),
        ],
    );
    assert!(
        wait_until(DEADLINE, || marks.exists()),
        "{}",
        cluster.all_logs()
    );
    let pid: u32 = std::fs::read_to_string(&marks)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let victim = cluster.worker_by_pid(pid).expect("a worker of ours");
    cluster.workers[victim].kill();
    let report = result(&cluster, &sha);
    assert_eq!(report["status"], "passed", "{report:#}");
    let job = &report["jobs"][0];
    assert_eq!(files_of(job), ["tests/x.sh", "tests/y.sh"]);
    assert_eq!(
        job["attempts"].as_array().unwrap().len(),
        2,
        "lost run and the rerun"
    );
    let output = job["output"].as_str().unwrap();
    assert!(
        output.contains("has tests/x.sh") && output.contains("has tests/y.sh"),
        "{output}"
    );
}

/// A test file writing a one-test JUnit report; it fails until `marker`
/// exists (creating it), when `flaky`.
fn junit_test(name: &str, flaky_marker: Option<&Path>) -> String {
    let outcome = match flaky_marker {
        Some(marker) => format!(
            "if [ -f {m} ]; then result=pass; else touch {m}; result=fail; fi",
            m = marker.display()
        ),
        None => "result=pass".to_owned(),
    };
    format!(
        "#!/bin/sh\n{outcome}\n\
         if [ $result = pass ]; then body='<testcase classname=\"suite\" name=\"{name}\" time=\"0.01\" file=\"tests/{name}.sh\"/>'; code=0; \
         else body='<testcase classname=\"suite\" name=\"{name}\" time=\"0.01\" file=\"tests/{name}.sh\"><failure message=\"wobbled\"/></testcase>'; code=1; fi\n\
         printf '<testsuite name=\"s\">%s</testsuite>' \"$body\" > report.xml\nexit $code\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junit_reports_are_merged_and_a_flaky_test_is_found() {
    let mut options = ClusterOptions::new("s-junit");
    options.workers = 2;
    let cluster = Cluster::start(options);
    let marker = cluster.root().join("wobble-once");
    let spec = "command = \"sh {file}\"\nfiles = [\"tests/*.sh\"]\nshards = 2\njunit = \"report.xml\"\nretry_failed = 1\n";
    let steady = junit_test("test_steady", None);
    let wobbly = junit_test("test_wobbly", Some(&marker));
    let other = junit_test("test_other", None);
    let sha = cluster.upstream.commit(
        "main",
        "junit",
        &[
            ("warren.toml", Some(spec)),
            ("tests/test_steady.sh", Some(&steady)),
            ("tests/test_wobbly.sh", Some(&wobbly)),
            ("tests/test_other.sh", Some(&other)),
        ],
    );
    let report = result(&cluster, &sha);
    assert_eq!(report["status"], "passed", "flaky, not failed: {report:#}");
    let counts = &report["test_counts"];
    assert_eq!(
        (
            counts["total"].as_u64(),
            counts["passed"].as_u64(),
            counts["flaky"].as_u64()
        ),
        (Some(3), Some(3), Some(1)),
        "{report:#}"
    );
    assert_eq!(report["flaky_tests"][0]["name"], "test_wobbly");
    assert_eq!(report["flaky_tests"][0]["times_flaky"], 1);
    let junit =
        std::fs::read_to_string(cluster.result_path(&sha).with_extension("junit.xml")).unwrap();
    assert!(
        junit.contains("tests=\"3\"") && junit.contains("name=\"test_wobbly\""),
        "{junit}"
    );

    // A report the command does not write (or writes badly) is stated.
    let spec = "command = \"echo '<testsuite><testcase' > report.xml\"\njunit = \"report.xml\"\n";
    let sha = cluster
        .upstream
        .commit("main", "bad report", &[("warren.toml", Some(spec))]);
    let report = result(&cluster, &sha);
    assert_eq!(report["status"], "passed", "{report:#}");
    let problem = report["jobs"][0]["report_problem"]
        .as_str()
        .unwrap_or_default();
    assert!(problem.contains("report.xml"), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_runs_only_the_tests_it_affects_unless_unsure() {
    let mut options = ClusterOptions::new("s-select");
    options.workers = 2;
    let cluster = Cluster::start(options);
    let spec = "command = \"sh {file}\"\nfiles = [\"tests/*.sh\"]\nshards = 2\n\
                [select]\nrules = [{ paths = [\"src/a/**\"], tests = [\"tests/test_a.sh\"] }]\n";
    let a = test_file("a", 0.05, true);
    let b = test_file("b", 0.05, true);
    let c = test_file("c", 0.05, true);
    let first = cluster.upstream.commit(
        "main",
        "first",
        &[
            ("warren.toml", Some(spec)),
            ("src/a/lib.sh", Some("x=1\n")),
            ("tests/test_a.sh", Some(&a)),
            ("tests/test_b.sh", Some(&b)),
            ("tests/test_c.sh", Some(&c)),
        ],
    );
    let report = result(&cluster, &first);
    assert_eq!(report["selection"]["mode"], "full", "{report:#}");

    let mapped = cluster
        .upstream
        .commit("main", "change a", &[("src/a/lib.sh", Some("x=2\n"))]);
    let report = result(&cluster, &mapped);
    assert_eq!(report["selection"]["mode"], "subset", "{report:#}");
    assert_eq!(report["selection"]["selected"], 1);
    let ran: Vec<String> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(files_of)
        .collect();
    assert_eq!(ran, ["tests/test_a.sh"]);

    let unmapped = cluster
        .upstream
        .commit("main", "docs", &[("README", Some("hello\n"))]);
    let report = result(&cluster, &unmapped);
    assert_eq!(report["selection"]["mode"], "full", "{report:#}");
    assert!(
        report["selection"]["reason"]
            .as_str()
            .unwrap()
            .contains("README")
    );
    let ran: usize = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| files_of(j).len())
        .sum();
    assert_eq!(ran, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_commit_supersedes_the_older_ones_and_frees_their_slots() {
    let mut options = ClusterOptions::new("s-supersede");
    options.workers = 1;
    let cluster = Cluster::start_ready(options).await;
    let marks = cluster.root().join("started");
    let slow = format!(
        "command = \"touch {}; sleep 60\"\ntimeout = \"2m\"\nsupersede = [\"main\"]\n",
        marks.display()
    );
    let older = cluster
        .upstream
        .commit("main", "slow", &[("warren.toml", Some(&slow))]);
    assert!(
        wait_until(DEADLINE, || marks.exists()),
        "{}",
        cluster.all_logs()
    );
    let newer_started = Instant::now();
    let quick = "command = \"echo quick\"\nsupersede = [\"main\"]\n";
    let newer = cluster
        .upstream
        .commit("main", "quick", &[("warren.toml", Some(quick))]);
    let report = result(&cluster, &older);
    assert_eq!(report["status"], "superseded", "{report:#}");
    assert!(
        report["message"].as_str().unwrap().contains(&newer[..12])
            || report["message"].as_str().unwrap().contains(&newer)
    );
    let report = result(&cluster, &newer);
    assert_eq!(report["status"], "passed", "{report:#}");
    let took = newer_started.elapsed();
    println!(
        "the newer commit passed {:.1} s after it was pushed, on the slot the older one held",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(30),
        "the slot was freed promptly: {took:?}"
    );
}
