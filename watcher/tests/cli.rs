//! The real `warren-watcher` binary: `--once`, exit codes, configuration
//! from a file and from the environment.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::*;
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::git::Upstream;

/// The binary, with no `WARREN_*` variable inherited from the test's own
/// environment (they would change the configuration under test).
fn watcher(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren-watcher"));
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WARREN_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("running warren-watcher")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, broker_table: &str, repos: &str) -> String {
    let path = dir.join("watcher.toml");
    let state = dir.join("state");
    let contents = format!(
        "{broker_table}\n[watcher]\nstate_dir = {:?}\n\n{repos}",
        state.display().to_string()
    );
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

fn repo_table(name: &str, url: &str, extra: &str) -> String {
    format!("[repos.{name}]\nurl = {url:?}\nbranches = [\"main\"]\n{extra}\n")
}

#[tokio::test]
async fn once_publishes_what_is_new_and_exits_zero() {
    let broker = TestBroker::new("watcher-once");
    let upstream = Upstream::new();
    let made = commits(&upstream, 3, "c");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.toml(),
        &repo_table("sample", &upstream.url(), "backfill = 1"),
    );

    let output = watcher(&["--config", &config, "--once"], &[]);
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "sample: 2 new commit(s) published\n");
    assert_eq!(shas(&take_events(&broker, 2).await), made[1..]);
    assert_eq!(
        cursor(&dir.path().join("state"), "sample").as_ref(),
        made.last()
    );

    let more = commits(&upstream, 2, "more");
    let output = watcher(&["--config", &config, "--once"], &[]);
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(shas(&take_events(&broker, 2).await), more);

    let output = watcher(&["--config", &config, "--once"], &[]);
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "sample: 0 new commit(s) published\n");
    assert_eq!(broker.queue_depth(Queue::Commits).await.0, 0);
    broker.cleanup().await;
}

#[tokio::test]
async fn once_polls_only_the_repositories_named_with_repo() {
    let broker = TestBroker::new("watcher-once-repo");
    let (api, web) = (Upstream::new(), Upstream::new());
    let api_tip = commits(&api, 1, "api");
    commits(&web, 1, "web");
    let dir = tempfile::tempdir().unwrap();
    let repos = format!(
        "{}{}",
        repo_table("api", &api.url(), ""),
        repo_table("web", &web.url(), "")
    );
    let config = write_config(dir.path(), &broker.toml(), &repos);

    let output = watcher(&["--config", &config, "--once", "--repo", "api"], &[]);
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "api: 1 new commit(s) published\n");
    assert_eq!(shas(&take_events(&broker, 1).await), api_tip);
    assert_eq!(cursor(&dir.path().join("state"), "web"), None);

    let output = watcher(&["--config", &config, "--once", "--repo", "nope"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("--repo nope"),
        "{}",
        text(&output.stderr)
    );
    broker.cleanup().await;
}

#[test]
fn once_fails_clearly_when_the_broker_is_unreachable() {
    let upstream = Upstream::new();
    commits(&upstream, 1, "c");
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: connection refused at once.
    let broker =
        "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nprefix = \"t-unreachable\"\n";
    let config = write_config(
        dir.path(),
        broker,
        &repo_table("sample", &upstream.url(), ""),
    );

    let output = watcher(&["--config", &config, "--once"], &[]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {}",
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    assert!(stderr.contains("1 of 1 repositories failed"), "{stderr}");
    assert!(
        stderr.contains(
            "sample: connecting to the broker: connecting to amqp://guest:***@127.0.0.1:1"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("guest:guest"),
        "the password leaked: {stderr}"
    );
    assert_eq!(cursor(&dir.path().join("state"), "sample"), None);
}

#[test]
fn an_invalid_configuration_exits_2_naming_the_key_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let broker = "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n";
    let config = write_config(
        dir.path(),
        broker,
        &repo_table("sample", "/srv/git/sample.git", "poll_interval = \"1ms\""),
    );
    let output = watcher(&["--config", &config, "--once"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("`repos.sample.poll_interval` (env WARREN_REPOS__SAMPLE__POLL_INTERVAL)"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("state").exists(),
        "nothing may happen before validation"
    );

    let empty = write_config(dir.path(), broker, "");
    let output = watcher(&["--config", &empty], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("at least one repository is required"),
        "{}",
        text(&output.stderr)
    );

    let output = watcher(&["--config", "/nonexistent/watcher.toml", "--once"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("/nonexistent/watcher.toml"));
}

#[test]
fn the_environment_overrides_the_file_and_can_add_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", &repo_table("api", "/srv/git/api.git", ""));
    let output = watcher(
        &["--config", &config, "--check"],
        &[
            ("WARREN_BROKER__PREFIX", "ci-a"),
            ("WARREN_WATCHER__STATE_DIR", "/var/lib/warren"),
            ("WARREN_REPOS__API__BRANCHES", "main,release/*"),
            ("WARREN_REPOS__API__POLL_INTERVAL", "250ms"),
            ("WARREN_REPOS__API__FIRST_PARENT", "true"),
            ("WARREN_REPOS__EXTRA__URL", "/srv/git/extra.git"),
            ("WARREN_REPOS__EXTRA__BRANCHES", "dev"),
            ("WARREN_REPOS__EXTRA__BACKFILL", "3"),
        ],
    );
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("prefix: ci-a\n"), "{stdout}");
    assert!(stdout.contains("state_dir: /var/lib/warren\n"), "{stdout}");
    assert!(
        stdout.contains(
            "repo api: url=/srv/git/api.git branches=main,release/* poll_interval=250ms backfill=0 first_parent=true\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "repo extra: url=/srv/git/extra.git branches=dev poll_interval=5s backfill=3 first_parent=false\n"
        ),
        "{stdout}"
    );

    // Without a file: the environment alone.
    let output = watcher(
        &["--check"],
        &[
            ("WARREN_REPOS__SOLO__URL", "/srv/git/solo.git"),
            ("WARREN_REPOS__SOLO__BRANCHES", "main"),
        ],
    );
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert!(text(&output.stdout).contains("repo solo: url=/srv/git/solo.git branches=main "));

    let output = watcher(
        &["--config", &config, "--check"],
        &[("WARREN_REPOS__API__BACKFILL", "lots")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("backfill"),
        "{}",
        text(&output.stderr)
    );
}

/// The long-running binary; killed if the test ends without stopping it.
struct Running(std::process::Child);

impl Running {
    fn start(config: &str, log: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_warren-watcher"));
        command.args(["--config", config]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WARREN_") {
                command.env_remove(key);
            }
        }
        if std::env::var_os("TEST_LOG").is_none() {
            let file = std::fs::File::create(log).unwrap();
            command.stdout(file.try_clone().unwrap()).stderr(file);
        }
        Self(command.spawn().expect("starting warren-watcher"))
    }

    /// SIGTERM, then the exit code (failing the test if it does not exit).
    async fn terminate(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher did not exit after SIGTERM"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn once_beside_the_running_watcher_publishes_every_commit_exactly_once() {
    let broker = TestBroker::new("watcher-once-beside");
    let upstream = Upstream::new();
    let first = commits(&upstream, 1, "first");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.toml(),
        &repo_table("sample", &upstream.url(), "poll_interval = \"100ms\""),
    );
    let watcher_process = Running::start(&config, &dir.path().join("watcher.log"));
    assert_eq!(shas(&take_events(&broker, 1).await), first);

    // Pushes, each followed by the hook, while the watcher polls too: the
    // repository lock serialises the two, so nothing is published twice.
    let mut expected = Vec::new();
    for round in 0..5 {
        expected.extend(commits(&upstream, 2, &format!("round{round}")));
        let output = watcher(&["--config", &config, "--once"], &[]);
        assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    }
    assert_eq!(shas(&take_events(&broker, expected.len()).await), expected);

    assert_eq!(watcher_process.terminate().await, Some(0));
    assert_eq!(
        broker.queue_depth(Queue::Commits).await.0,
        0,
        "a commit was published twice"
    );
    assert_eq!(
        cursor(&dir.path().join("state"), "sample").as_ref(),
        expected.last()
    );
    broker.cleanup().await;
}
