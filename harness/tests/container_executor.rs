//! The `container` executor with the real Docker engine and the real
//! binaries: `scripts/ensure-docker.sh` starts the engine when it does not
//! run, `scripts/docker-base-image.sh` makes `debian:bookworm-slim` (no
//! image registry is reachable here), and each test builds its own image
//! FROM it under a unique tag, removed at the end.
//!
//! - a job runs in its container: the checkout mounted, the job's
//!   environment (not the worker's), a user that is not root, its output
//!   streaming while it runs;
//! - a timeout and a cancel kill the container, and it is removed; the
//!   container of a worker killed mid-job is removed when it starts again,
//!   and its checkout taken back (not cloned again) for the next job;
//! - a container the engine refuses (`docker run`'s 125) is an `error`; a
//!   command that itself exits 125 fails with that status;
//! - an image the worker does not allow, or does not have, is an `error`;
//!   `network = false` leaves the container only its own loopback;
//! - without a docker CLI or an engine that answers, the worker does not
//!   start (exit 2, naming `worker.executor`);
//! - the hostile jobs of issue 11 (secrets, fork bomb, 10 GiB, 5 GiB of
//!   disk, a daemon, another slot's checkout) are contained, each with a
//!   verdict that says which limit, and the next job passes.
//!
//! Every container a test's worker starts carries the label
//! `warren.work_dir=<its work_dir>`, a folder of the test's own, which is
//! how a test finds (only) its containers.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::http::json;
use warren_harness::process::{Component, wait_until};

/// Longest wait for a commit's verdict (a container starts in about a second).
const DEADLINE: Duration = Duration::from_secs(120);

/// The engine runs and the base image exists (once per test binary).
fn docker_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for script in ["scripts/ensure-docker.sh", "scripts/docker-base-image.sh"] {
            let status = Command::new(root.join(script))
                .stdout(Stdio::null())
                .status()
                .unwrap_or_else(|error| panic!("running {script}: {error}"));
            assert!(status.success(), "{script} failed: no Docker engine here");
        }
    });
}

/// Runs `docker args`; its stdout (panics when it fails).
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An image of this test's own, FROM debian:bookworm-slim with a marker
/// file; removed when dropped.
struct TestImage {
    /// `warren-test-<name>-<random>`: the repository part, for patterns.
    repository: String,
    /// `<repository>:1`.
    tag: String,
    /// The text of `/etc/warren-test-image` inside.
    marker: String,
}

impl TestImage {
    fn build(name: &str) -> Self {
        docker_ready();
        let random = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let repository = format!("warren-test-{name}-{random}");
        let tag = format!("{repository}:1");
        let marker = format!("image {tag}");
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("marker"), format!("{marker}\n")).unwrap();
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM debian:bookworm-slim\nCOPY marker /etc/warren-test-image\n",
        )
        .unwrap();
        docker(&[
            "build",
            "--quiet",
            "--tag",
            &tag,
            context.path().to_str().unwrap(),
        ]);
        Self {
            repository,
            tag,
            marker,
        }
    }
}

impl Drop for TestImage {
    /// Removes the containers of the image too: a test that fails with its
    /// worker killed mid-job (the cluster is dropped first) leaves them.
    fn drop(&mut self) {
        let filter = format!("ancestor={}", self.tag);
        if let Ok(listed) = Command::new("docker")
            .args(["ps", "--all", "--quiet", "--filter", &filter])
            .output()
        {
            let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
            let ids: Vec<&str> = listed.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "--force"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `[worker]` lines for a container worker using `image`.
fn container_worker(image: &TestImage, extra: &str) -> String {
    format!(
        "executor = \"container\"\nallowed_images = [\"{}:*\"]\ndefault_image = \"{}\"\n{extra}\n",
        image.repository, image.tag
    )
}

/// The containers of the cluster's worker `index` (running or not).
fn containers_of(cluster: &Cluster, index: usize) -> Vec<String> {
    let filter = format!(
        "label=warren.work_dir={}",
        work_dir(cluster, index).display()
    );
    docker(&["ps", "--all", "--quiet", "--filter", &filter])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn work_dir(cluster: &Cluster, index: usize) -> PathBuf {
    cluster.root().join(format!("worker-{index}"))
}

/// The checkout of slot `slot` of worker 0.
fn checkout(cluster: &Cluster, slot: usize) -> PathBuf {
    work_dir(cluster, 0)
        .join(format!("slot-{slot}"))
        .join("sample")
}

fn result_of(cluster: &Cluster, sha: &str) -> serde_json::Value {
    cluster
        .wait_for_results(&[sha.to_owned()], DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
        .remove(0)
}

/// Commits a `warren.toml` and waits for the verdict.
fn run_commit(cluster: &Cluster, label: &str, spec: &str) -> serde_json::Value {
    cluster.commit_and_wait(label, spec, DEADLINE)
}

/// A job refused before anything of it ran: an `error` whose message says
/// each of `says`, and no file the command would have made.
fn refused_before_running(cluster: &Cluster, report: &serde_json::Value, says: &[&str]) {
    assert_eq!(report["status"], "error", "{report:#}");
    let message = report["jobs"][0]["message"].as_str().unwrap();
    assert!(says.iter().all(|text| message.contains(text)), "{message}");
    assert!(!checkout(cluster, 0).join("ran").exists(), "nothing ran");
}

/// Whether none of the cluster's worker-0 containers is left, waiting a
/// little: `docker rm` runs after the result is published.
fn no_container_left(cluster: &Cluster) -> bool {
    wait_until(Duration::from_secs(15), || {
        containers_of(cluster, 0).is_empty()
    })
}

async fn one_container_worker(name: &str, image: &TestImage, extra: &str) -> Cluster {
    let mut options = ClusterOptions::new(name);
    options.workers = 1;
    options.worker_extra = container_worker(image, extra);
    options.worker_env = vec![(
        "WORKER_ONLY_VARIABLE".into(),
        "the worker's own environment".into(),
    )];
    Cluster::start_ready(options).await
}

/// Reads the job's live output (`GET /api/jobs/{id}/log`) until `text`
/// shows; returns whether it did before the deadline.
fn live_output_shows(base: &str, job_id: &str, text: &str) -> bool {
    let rest = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(rest).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        stream,
        "GET /api/jobs/{job_id}/log HTTP/1.1\r\nHost: {rest}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut buffer = [0_u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return String::from_utf8_lossy(&seen).contains(text),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&seen).contains(text) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_its_container_with_its_checkout_and_its_output_streams() {
    let image = TestImage::build("runs");
    let cluster = one_container_worker("ctr-runs", &image, "").await;
    let script = "echo first-line; id -u; cat /etc/warren-test-image; \
                  echo \\\"toml=$FROM_TOML home=$HOME\\\"; env | grep -c WORKER_ONLY || true; \
                  while [ ! -e go ]; do sleep 0.1; done; \
                  echo written > made-inside; echo last-line";
    let spec = format!("command = \"{script}\"\ntimeout = \"1m\"\n[env]\nFROM_TOML = \"yes\"\n");
    let sha = cluster
        .upstream
        .commit("main", "runs", &[("warren.toml", Some(&spec))]);
    let base = cluster.http_url();
    let mut job_id = None;
    assert!(
        wait_until(DEADLINE, || {
            let (_, commit) = json("GET", &format!("{base}/api/commits/sample/{sha}"));
            job_id = commit["jobs"][0]["id"].as_str().map(str::to_owned);
            job_id.is_some()
        }),
        "{}",
        cluster.all_logs()
    );
    let job_id = job_id.unwrap();
    assert!(
        live_output_shows(&base, &job_id, "first-line"),
        "the first line did not stream while the job ran\n{}",
        cluster.all_logs()
    );
    assert_eq!(containers_of(&cluster, 0).len(), 1, "one container runs");
    std::fs::write(checkout(&cluster, 0).join("go"), "").unwrap();

    let report = result_of(&cluster, &sha);
    assert_eq!(report["status"], "passed", "{report:#}");
    let output = report["jobs"][0]["output"].as_str().unwrap();
    let lines: Vec<&str> = output.lines().collect();
    // A worker running as root hands the checkout to nobody for the run.
    let uid = if nix::unistd::geteuid().is_root() {
        "65534".to_owned()
    } else {
        nix::unistd::geteuid().to_string()
    };
    assert_eq!(
        lines,
        [
            "first-line",
            uid.as_str(),
            image.marker.as_str(),
            "toml=yes home=/tmp",
            "0",
            "last-line"
        ],
        "not root inside, the test's image, the job's environment only:\n{output}"
    );
    let made = checkout(&cluster, 0).join("made-inside");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "written\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&made).unwrap().uid(),
        std::fs::metadata(checkout(&cluster, 0)).unwrap().uid(),
        "the checkout is taken back from the container's user"
    );
    assert!(
        no_container_left(&cluster),
        "{:?}",
        containers_of(&cluster, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_and_a_cancel_kill_and_remove_the_container() {
    let image = TestImage::build("stop");
    let cluster = one_container_worker("ctr-stop", &image, "kill_grace = \"1s\"").await;
    let started = Instant::now();
    let report = run_commit(
        &cluster,
        "slow",
        "command = \"echo started; sleep 1000\"\ntimeout = \"3s\"\n",
    );
    assert_eq!(report["status"], "timed_out", "{report:#}");
    assert_eq!(report["jobs"][0]["output"], "started\n", "{report:#}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        no_container_left(&cluster),
        "{:?}",
        containers_of(&cluster, 0)
    );

    let sha = cluster.upstream.commit(
        "main",
        "cancelled",
        &[(
            "warren.toml",
            Some("command = \"touch started; sleep 1000\"\ntimeout = \"5m\"\n"),
        )],
    );
    let marker = checkout(&cluster, 0).join("started");
    assert!(
        wait_until(DEADLINE, || marker.exists()),
        "{}",
        cluster.all_logs()
    );
    assert_eq!(containers_of(&cluster, 0).len(), 1);
    let url = format!("{}/api/commits/sample/{sha}/cancel", cluster.http_url());
    assert_eq!(warren_harness::http::request("POST", &url).0, 202);
    let report = result_of(&cluster, &sha);
    assert_eq!(report["status"], "cancelled", "{report:#}");
    assert!(
        no_container_left(&cluster),
        "the cancelled job's container is still there: {:?}\n{}",
        containers_of(&cluster, 0),
        cluster.all_logs()
    );
    let report = run_commit(&cluster, "after", "command = \"echo after\"\n");
    assert_eq!(report["status"], "passed", "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_not_allowed_or_not_present_is_an_error_and_network_false_is_none() {
    let image = TestImage::build("images");
    let cluster = one_container_worker("ctr-images", &image, "").await;
    let report = run_commit(
        &cluster,
        "forbidden",
        "command = \"touch ran\"\nimage = \"debian:bookworm-slim\"\n",
    );
    refused_before_running(
        &cluster,
        &report,
        &[
            "`debian:bookworm-slim` is not allowed",
            "worker.allowed_images",
        ],
    );

    let absent = format!("{}:absent", image.repository);
    let report = run_commit(
        &cluster,
        "absent",
        &format!("command = \"touch ran\"\nimage = \"{absent}\"\n"),
    );
    assert_eq!(report["status"], "error", "{report:#}");
    let message = report["jobs"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("`{absent}` is not on this worker's host"))
            && message.contains("docker pull"),
        "{message}"
    );

    let report = run_commit(
        &cluster,
        "named",
        &format!(
            "command = \"cat /etc/warren-test-image\"\nimage = \"{}\"\n",
            image.tag
        ),
    );
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(report["jobs"][0]["output"], format!("{}\n", image.marker));

    // The host's network by default; only its own loopback without.
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let report = run_commit(&cluster, "network", "command = \"ls /sys/class/net\"\n");
    let seen = report["jobs"][0]["output"].as_str().unwrap().to_owned();
    assert_eq!(seen.lines().count(), host.len(), "{seen} vs {host:?}");
    let report = run_commit(
        &cluster,
        "no network",
        "command = \"ls /sys/class/net\"\nnetwork = false\n",
    );
    assert_eq!(report["jobs"][0]["output"], "lo\n", "{report:#}");
}

/// `docker run` exits 125 when the engine refuses the container (here a
/// memory limit below docker's minimum of 6 MB): nothing of the job ran, so
/// it is an `error` quoting docker; a command that itself exits 125 ran, and
/// fails with its own status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_the_engine_refuses_is_an_error_and_a_commands_own_125_a_failure() {
    let image = TestImage::build("refused");
    let cluster = one_container_worker("ctr-refused", &image, "").await;
    let report = run_commit(
        &cluster,
        "refused",
        "command = \"touch ran\"\n[limits]\nmemory = \"1 MiB\"\n",
    );
    refused_before_running(
        &cluster,
        &report,
        &["the container could not be started", "Minimum memory limit"],
    );
    assert!(
        no_container_left(&cluster),
        "{:?}",
        containers_of(&cluster, 0)
    );

    let report = run_commit(&cluster, "own 125", "command = \"echo mine; exit 125\"\n");
    assert_eq!(report["status"], "failed", "{report:#}");
    assert_eq!(report["jobs"][0]["exit_code"], 125, "{report:#}");
    assert_eq!(report["jobs"][0]["output"], "mine\n", "{report:#}");
}

#[test]
fn without_docker_or_its_engine_the_worker_does_not_start() {
    docker_ready();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[worker]\nexecutor = \"container\"\nwork_dir = \"{}\"\n",
            dir.path().join("work").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let logs = dir.path().join("logs");
    let cases = [
        ("no-cli", ("PATH", "/nonexistent"), "not installed"),
        (
            "no-engine",
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            "does not answer",
        ),
    ];
    for (name, variable, expected) in cases {
        let mut worker = Component::start_with_env(
            "warren-worker",
            name,
            &["--config", config],
            &logs,
            &[variable],
        );
        let code = worker.wait_exit(Duration::from_secs(30));
        let log = worker.log();
        assert_eq!(code, Some(2), "{name}: {log}");
        assert!(
            log.contains("worker.executor") && log.contains(expected),
            "{name}: {log}"
        );
    }
}

/// A worker's `[git]` token and the limits the hostile jobs trip.
const HOSTILE_LIMITS: &str = "max_memory = \"64 MiB\"\nmax_processes = 64\n\
                              max_cpu_time = \"2s\"\nmax_disk = \"50 MiB\"\n";

/// The hostile jobs of issue 11, one after the other on a two-slot
/// container worker with small limits: each contained, with a verdict that
/// says which limit, no container left, and the next job passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_are_contained_and_the_next_job_passes() {
    let image = TestImage::build("hostile");
    let secret = format!("token-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("git-token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    let mut options = ClusterOptions::new("ctr-hostile");
    options.workers = 1;
    options.slots = 2;
    options.worker_extra = container_worker(
        &image,
        &format!(
            "{HOSTILE_LIMITS}\n[git]\nhttps_token_file = \"{}\"\n",
            token_file.display()
        ),
    );
    let cluster = Cluster::start_ready(options).await;
    let worker_config = cluster.root().join("config/worker-0.toml");
    for slot in 0..2 {
        let slot_dir = work_dir(&cluster, 0).join(format!("slot-{slot}"));
        std::fs::create_dir_all(&slot_dir).unwrap();
        std::fs::write(slot_dir.join("neighbour-secret"), &secret).unwrap();
    }
    let contained = |label: &str, report: &serde_json::Value| {
        let text = report.to_string();
        assert!(
            !text.contains(&secret),
            "{label}: a secret leaked: {report:#}"
        );
        assert!(
            no_container_left(&cluster),
            "{label}: containers left: {:?}",
            containers_of(&cluster, 0)
        );
    };

    // (a) the worker's config and git token, (b) what a forger would need:
    // the broker credentials, the job's result key, the worker's memory.
    let script = format!(
        "cat {} {}; env; cat /proc/*/environ /proc/*/cmdline | tr '\\\\0' '\\\\n'; ls /proc; \
         grep -rs guest / --include=*.toml; exit 0",
        worker_config.display(),
        token_file.display()
    );
    let sha = cluster.upstream.commit(
        "main",
        "reads secrets",
        &[(
            "warren.toml",
            Some(&format!("command = \"{script}\"\ntimeout = \"1m\"\n")),
        )],
    );
    let report = result_of(&cluster, &sha);
    contained("secrets", &report);
    let output = report["jobs"][0]["output"].as_str().unwrap();
    assert!(output.contains("No such file"), "{output}");
    assert!(
        !output.contains("amqp://"),
        "the broker URL leaked: {output}"
    );
    let key: String = cluster
        .database()
        .query_row(
            "SELECT j.result_key FROM jobs j JOIN commits c ON c.id = j.commit_id \
             WHERE c.sha = ?1",
            [&sha],
            |row| row.get(0),
        )
        .unwrap();
    assert!(
        !output.contains(&key),
        "the job could read its own result key"
    );
    let worker_pid = cluster.workers[0].pid().to_string();
    assert!(
        !output.lines().any(|line| line == worker_pid),
        "the worker's process is visible: {output}"
    );

    // (c) a fork bomb, (d) 10 GiB of memory, (e) 5 GiB into the checkout,
    // and a busy loop past the CPU time.
    for (label, command, verdict) in [
        (
            "fork bomb",
            // The job's own process forks once, then execs: however fast
            // the bomb grows, it is the limit, not a failed fork of the
            // job's own shell, that ends the run.
            "(bomb() { bomb | bomb & }; bomb) & exec sleep 60",
            "killed: process limit 64 reached",
        ),
        (
            "10 GiB",
            "perl -e '$x = chr(0) x (10 * 1024 ** 3); print length $x'",
            "killed: memory limit 64 MiB reached",
        ),
        (
            "5 GiB on disk",
            "head -c 5G /dev/zero > big; ls -l big",
            "killed: disk limit 50 MiB reached",
        ),
        (
            "CPU",
            "while :; do :; done",
            "killed: CPU time limit 2s reached",
        ),
    ] {
        let started = Instant::now();
        let report = run_commit(
            &cluster,
            label,
            &format!("command = \"{command}\"\ntimeout = \"2m\"\n"),
        );
        assert_eq!(report["status"], "failed", "{label}: {report:#}");
        assert_eq!(report["jobs"][0]["message"], verdict, "{label}: {report:#}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{label}: took {:?}",
            started.elapsed()
        );
        contained(label, &report);
    }

    // (f) a daemon left running goes with its container.
    let report = run_commit(
        &cluster,
        "daemon",
        "command = \"setsid sleep 987654 > /dev/null 2>&1 & echo left a daemon\"\n",
    );
    assert_eq!(report["status"], "passed", "{report:#}");
    contained("daemon", &report);
    let daemon_alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("987654"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || !daemon_alive()),
        "the daemon outlived its job"
    );

    // (g) another slot's checkout (and the slot folders) are not there.
    let report = run_commit(
        &cluster,
        "neighbours",
        "command = \"ls -a ..; cat ../neighbour-secret ../../slot-*/neighbour-secret; exit 0\"\n",
    );
    contained("neighbours", &report);
    let output = report["jobs"][0]["output"].as_str().unwrap();
    assert!(output.contains("No such file"), "{output}");

    let report = run_commit(&cluster, "fine", "command = \"echo fine\"\n");
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(report["jobs"][0]["output"], "fine\n");
    contained("fine", &report);
}

/// A worker killed mid-job (SIGKILL: no clean-up) leaves its container
/// running, and the checkout owned by the job's user (`nobody`: the worker
/// runs as root); the next worker with the same `work_dir` removes the
/// container at start and takes the checkout back rather than clone it
/// again. (The job, given back by the broker, then runs again; it is
/// cancelled, and the next job passes on the same slot.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_container_is_removed_when_it_starts_again() {
    let image = TestImage::build("crash");
    let mut cluster = one_container_worker("ctr-crash", &image, "").await;
    let sha = cluster.upstream.commit(
        "main",
        "interrupted",
        &[(
            "warren.toml",
            Some("command = \"touch started; sleep 1000\"\ntimeout = \"5m\"\n"),
        )],
    );
    let marker = checkout(&cluster, 0).join("started");
    assert!(
        wait_until(DEADLINE, || marker.exists()),
        "{}",
        cluster.all_logs()
    );
    let left = containers_of(&cluster, 0);
    assert_eq!(left.len(), 1);
    cluster.workers[0].kill();
    assert_eq!(
        containers_of(&cluster, 0),
        left,
        "a killed worker cannot remove its container"
    );

    let clone = checkout(&cluster, 0);
    assert_eq!(
        std::fs::metadata(&clone).unwrap().uid(),
        65534,
        "the killed worker's checkout is still the job user's"
    );
    // Lost if the clone were deleted and made again; `started` shows when
    // the job, given back, has gone through its checkout again.
    let kept = clone.join(".git/warren-test-kept");
    std::fs::write(&kept, "same clone").unwrap();
    std::fs::remove_file(&marker).unwrap();

    cluster.workers.clear();
    cluster.start_worker(0);
    assert!(
        wait_until(DEADLINE, || !containers_of(&cluster, 0).contains(&left[0])),
        "the restarted worker did not remove the leftover container\n{}",
        cluster.all_logs()
    );
    assert!(
        wait_until(DEADLINE, || marker.exists()),
        "{}",
        cluster.all_logs()
    );
    assert!(
        kept.exists(),
        "the checkout was cloned again\n{}",
        cluster.all_logs()
    );
    let url = format!("{}/api/commits/sample/{sha}/cancel", cluster.http_url());
    assert_eq!(warren_harness::http::request("POST", &url).0, 202);
    let report = result_of(&cluster, &sha);
    assert_eq!(report["status"], "cancelled", "{report:#}");
    assert!(
        no_container_left(&cluster),
        "{:?}",
        containers_of(&cluster, 0)
    );

    let report = run_commit(&cluster, "next", "command = \"echo next\"\n");
    assert_eq!(report["status"], "passed", "{report:#}");
    assert_eq!(report["jobs"][0]["output"], "next\n");
    assert!(kept.exists(), "the same clone, on the same slot");
    assert_eq!(std::fs::metadata(&clone).unwrap().uid(), 0);
    assert!(
        !cluster.all_logs().contains("cloning again"),
        "{}",
        cluster.all_logs()
    );
}
