//! The `warren` command against a real dispatcher, worker and watcher:
//! tables and `--json`, the exit codes scripts rely on, `logs --follow` on a
//! running job, `retry`, and the errors for a wrong sha or an unreachable
//! dispatcher.

use std::process::{Command, Output};
use std::time::Duration;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::process::{bin_dir, wait_until};

const DEADLINE: Duration = Duration::from_secs(90);

/// Runs `warren ARGS` against `base`: (exit code, stdout, stderr).
fn warren(base: &str, args: &[&str]) -> (i32, String, String) {
    warren_with(base, args, &[])
}

/// [`warren`] with `env` set.
fn warren_with(base: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output: Output = Command::new(bin_dir().join("warren"))
        .arg("--url")
        .arg(base)
        .args(args)
        .env_remove("WARREN_URL")
        .env_remove("WARREN_TOKEN")
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("run warren");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_shows_follows_and_retries_with_exit_codes_scripts_can_use() {
    let options = {
        let mut options = ClusterOptions::new("cli");
        options.workers = 1;
        options
    };
    let cluster = Cluster::start_ready(options).await;
    let base = cluster.http_url();
    let passing = cluster.upstream.commit(
        "main",
        "passes",
        &[("warren.toml", Some("command = \"echo all good\"\n"))],
    );
    cluster
        .wait_for_results(std::slice::from_ref(&passing), DEADLINE)
        .unwrap();

    // A chatty, slow, failing commit, followed while it runs.
    let marks = cluster.root().join("started");
    let spec = format!(
        "command = \"touch {}; for i in $(seq 1 8); do echo step $i; sleep 0.5; done; exit 1\"\n",
        marks.display()
    );
    let failing = cluster
        .upstream
        .commit("main", "fails slowly", &[("warren.toml", Some(&spec))]);
    assert!(
        wait_until(DEADLINE, || marks.exists()),
        "{}",
        cluster.all_logs()
    );
    let (code, out, err) = warren(&base, &["show", &failing[..10]]);
    assert_eq!(code, 3, "running: {out}{err}");
    let (code, out, err) = warren(&base, &["logs", &failing[..10], "--follow"]);
    assert_eq!(code, 1, "the followed job failed: {out}{err}");
    for step in 1..=8 {
        assert!(
            out.contains(&format!("step {step}\n")),
            "step {step}: {out}"
        );
    }
    assert_eq!(
        out.matches("step 1\n").count(),
        1,
        "each line once (the output so far, then the rest): {out}"
    );

    let (code, out, err) = warren(&base, &["show", &failing]);
    assert_eq!(code, 1, "failed: {out}{err}");
    assert!(out.contains("failed"), "{out}");
    let (code, out, err) = warren(&base, &["show", &passing]);
    assert_eq!(code, 0, "passed: {out}{err}");
    assert!(out.contains("passed"), "{out}");

    let (code, out, err) = warren(&base, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&failing[..10]) && out.contains(&passing[..10]),
        "{out}"
    );
    let (code, out, _) = warren(&base, &["--json", "status", "--status", "failed"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    let commits = listed["commits"].as_array().expect("a list of commits");
    assert_eq!(commits.len(), 1, "{out}");
    assert_eq!(commits[0]["sha"], failing.as_str());

    let (code, out, err) = warren(&base, &["workers"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("worker-0"), "{out}");

    let (code, out, err) = warren(&base, &["logs", &passing]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("all good"), "{out}");

    let (code, out, err) = warren(&base, &["retry", &passing]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(DEADLINE, || {
            let (_, out, _) = warren(&base, &["--json", "show", &passing]);
            serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|c| c["jobs"][0]["attempt"] == 2 && c["status"] == "passed")
        }),
        "the retried commit passes again: {}",
        cluster.all_logs()
    );

    // Scripts can tell a wrong sha, a bad URL and a dispatcher that is away.
    let (code, _, err) = warren(&base, &["show", &"0".repeat(40)]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = warren(&base, &["show", "xyz"]);
    assert_eq!(code, 2, "{err}");
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let away = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let (code, _, err) = warren(&away, &["status"]);
    assert_eq!(code, 4, "{err}");
    assert!(!err.is_empty(), "says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_set_retry_and_cancel_need_it_and_reads_do_not() {
    let temp = tempfile::tempdir().unwrap();
    let token_file = temp.path().join("http-token");
    std::fs::write(&token_file, "op3rator-token\n").unwrap();
    let mut options = ClusterOptions::new("cli-token");
    options.workers = 1;
    options.dispatcher_env = vec![(
        "WARREN_HTTP__TOKEN_FILE".into(),
        token_file.display().to_string(),
    )];
    let cluster = Cluster::start(options);
    let base = cluster.http_url();
    let sha = cluster.upstream.commit(
        "main",
        "passes",
        &[("warren.toml", Some("command = \"true\"\n"))],
    );
    cluster
        .wait_for_results(std::slice::from_ref(&sha), DEADLINE)
        .unwrap();

    // Reads stay open.
    let (code, out, err) = warren(&base, &["show", &sha]);
    assert_eq!(code, 0, "{out}{err}");
    // Writes without the token, or with a wrong one, are refused.
    let (code, _, err) = warren(&base, &["retry", &sha]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("token") && err.contains("401"), "{err}");
    let (code, _, err) = warren_with(&base, &["retry", &sha], &[("WARREN_TOKEN", "guess")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        !cluster.all_logs().contains("op3rator-token"),
        "the token is never logged"
    );
    // With it, from a file or the environment, they go through.
    let file = token_file.display().to_string();
    let (code, out, err) = warren(&base, &["--token-file", &file, "retry", &sha]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(DEADLINE, || {
            let (_, out, _) = warren(&base, &["--json", "show", &sha]);
            serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|c| c["jobs"][0]["attempt"] == 2 && c["status"] == "passed")
        }),
        "{}",
        cluster.all_logs()
    );
    let (code, out, err) = warren_with(
        &base,
        &["retry", &sha],
        &[("WARREN_TOKEN", "op3rator-token")],
    );
    assert_eq!(code, 0, "{out}{err}");
}
