//! `warren-containers`: Warren's containers, run by Docker Compose from
//! `docker/compose.yml` with `docker/compose.host.yml` (host network, the
//! machine's broker), while a stream of commits flows into the repository
//! the watcher watches:
//!
//! 1. one worker; then four (`--scale worker=4`);
//! 2. a worker stopped with `docker stop` in the middle of a slow job (it
//!    drains: the job finishes, or goes back to the queue);
//! 3. two workers (`--scale worker=2`);
//! 4. the dispatcher's container recreated (its state volume kept);
//!
//! then every commit's verdict is checked, once, through the API and the
//! result files. Prints one summary line. `scripts/containers-test.sh`
//! builds the image, runs this and removes everything afterwards (with
//! `warren-containers clean`, the broker's queues and exchanges of the
//! project's prefix).
//!
//! ```text
//! warren-containers run --compose BIN --image TAG --project NAME --dir DIR
//! warren-containers clean --project NAME
//! ```

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_harness::broker::{TestBroker, broker_url};
use warren_harness::git::Upstream;
use warren_harness::http;

/// The repository's name in `docker/config/watcher.toml`.
const REPO: &str = "sample";
/// Time between two commits of the stream: several commits per worker
/// change, fewer than the workers can test.
const COMMIT_EVERY: Duration = Duration::from_millis(400);
/// The slow commit's test, in seconds: long enough to stop its worker in the
/// middle of it, short beside the worker's `shutdown_grace` (2 min), so the
/// worker finishes it before it exits.
const SLOW_TEST_SECONDS: &str = "6";
/// Longest wait for one condition: containers up, a job started, verdicts.
const DEADLINE: Duration = Duration::from_secs(120);
/// How often a condition is looked at.
const POLL: Duration = Duration::from_millis(250);
/// Commits made between two steps, so each step happens while commits flow.
const COMMITS_PER_STEP: usize = 6;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => Args::parse(&args[1..]).and_then(|args| run(&args)),
        Some("clean") => Args::parse(&args[1..]).and_then(|args| clean(&args.project)),
        _ => Err(anyhow::anyhow!(
            "usage: warren-containers run --compose BIN --image TAG --project NAME --dir DIR\n\
             \x20      warren-containers clean --project NAME"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warren-containers: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Args {
    /// The Docker Compose (v2) binary.
    compose: PathBuf,
    /// The image of the three services (built from the runtime-prebuilt stage).
    image: String,
    /// Compose project name, also the broker prefix.
    project: String,
    /// A folder of the run's own, readable by the containers' user.
    dir: PathBuf,
}

impl Args {
    fn parse(args: &[String]) -> Result<Self> {
        let mut parsed = Self::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--compose" => parsed.compose = value.into(),
                "--image" => parsed.image.clone_from(value),
                "--project" => parsed.project.clone_from(value),
                "--dir" => parsed.dir = value.into(),
                other => bail!("unknown argument {other}"),
            }
        }
        ensure!(!parsed.project.is_empty(), "--project is required");
        Ok(parsed)
    }
}

/// Deletes the queues and exchanges of the project's broker prefix.
fn clean(project: &str) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(TestBroker::with_prefix(project).cleanup());
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    ensure!(
        !args.image.is_empty() && !args.dir.as_os_str().is_empty(),
        "run needs --compose, --image, --project and --dir"
    );
    let began = Instant::now();
    let repos = args.dir.join("repos");
    std::fs::create_dir_all(&repos).with_context(|| format!("creating {}", repos.display()))?;
    let stream = Arc::new(CommitStream::new(&repos.join(format!("{REPO}.git"))));
    let port = free_port()?;
    let stack = Stack::new(args, &repos, port)?;
    let api = Api(format!("http://127.0.0.1:{port}"));

    let outcome = scenario(&stack, &api, &stream);
    if outcome.is_err() {
        eprintln!("{}", stack.logs());
    }
    let report = outcome?;
    println!(
        "containers: {} in {:.0} s",
        report.summary(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the run saw, for the summary line.
struct Report {
    commits: usize,
    failed_as_expected: usize,
    deciding_workers: usize,
    stopped_job: String,
    stop_took: Duration,
    lost_runs: u64,
    decided_before_restart: usize,
}

impl Report {
    fn summary(&self) -> String {
        format!(
            "commits={} verdicts_as_expected={} (failed={}) duplicated=0 lost=0 workers=1->4->2 \
             deciding_workers={} docker_stop_mid_job={} (stop took {:.1} s, exit 0) \
             lost_runs={} dispatcher_recreated=1 (decided before it: {}, all kept) \
             result_files={} networks=host",
            self.commits,
            self.commits,
            self.failed_as_expected,
            self.deciding_workers,
            self.stopped_job,
            self.stop_took.as_secs_f64(),
            self.lost_runs,
            self.decided_before_restart,
            self.commits,
        )
    }
}

fn scenario(stack: &Stack, api: &Api, stream: &Arc<CommitStream>) -> Result<Report> {
    let began = Instant::now();
    let step = |what: &str| {
        eprintln!(
            "[{:5.1} s] {what} ({} commits so far)",
            began.elapsed().as_secs_f64(),
            stream.count()
        );
    };
    stream.push(false);
    stack.up(&["--scale", "worker=1"])?;
    wait_until("the dispatcher's /readyz", || api.ready().then_some(()))?;
    wait_until("one worker", || (api.workers() >= 1).then_some(()))?;
    step("up: dispatcher, watcher, 1 worker");

    let flowing = Flow::start(Arc::clone(stream));
    flowing.wait_for_more(COMMITS_PER_STEP)?;
    stack.scale_workers(4)?;
    wait_until("four workers", || (api.workers() >= 4).then_some(()))?;
    step("4 workers");
    flowing.wait_for_more(COMMITS_PER_STEP)?;

    let stopped = stop_a_busy_worker(stack, api, stream, &step)?;
    flowing.wait_for_more(COMMITS_PER_STEP)?;

    stack.scale_workers(2)?;
    step("2 workers");
    flowing.wait_for_more(COMMITS_PER_STEP)?;

    let decided_before_restart = recreate_the_dispatcher(stack, api)?;
    step(&format!(
        "dispatcher recreated; the {decided_before_restart} commits decided before are kept"
    ));
    flowing.wait_for_more(COMMITS_PER_STEP)?;
    flowing.stop();
    step("commits stopped");

    let pushed = stream.pushed();
    let summaries = wait_until("every commit's verdict", || api.all_decided(&pushed))??;
    step("every commit decided");
    let mut report = check_verdicts(api, &pushed, &summaries)?;
    report.decided_before_restart = decided_before_restart;
    report.stop_took = stopped.took;
    report.stopped_job = describe_stopped_job(api, &stopped.sha, &stopped.worker)?;
    stack.check_result_files(&pushed)?;
    stack.check_host_network()?;
    Ok(report)
}

/// A worker stopped with `docker stop` in the middle of a job.
struct Stopped {
    /// The worker's id.
    worker: String,
    /// The commit whose job it was running.
    sha: String,
    /// How long `docker stop` took: the worker drains first.
    took: Duration,
}

/// Pushes a slow commit, waits until a worker runs it and stops that
/// worker's container; it must exit 0 (a drained stop, not a kill).
fn stop_a_busy_worker(
    stack: &Stack,
    api: &Api,
    stream: &CommitStream,
    step: &dyn Fn(&str),
) -> Result<Stopped> {
    let sha = stream.push(true);
    let worker = wait_until("the slow commit's job to start", || {
        api.running_worker(&sha)
    })?;
    let container = stack.worker_container(&worker)?;
    step(&format!(
        "docker stop {worker}, in the middle of a {SLOW_TEST_SECONDS} s job"
    ));
    let began = Instant::now();
    docker(&["stop", &container])?;
    let took = began.elapsed();
    let exit_code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &container])?;
    ensure!(
        exit_code.trim() == "0",
        "worker {worker} exited with {} after docker stop",
        exit_code.trim()
    );
    step(&format!(
        "{worker} exited 0 after {:.1} s",
        took.as_secs_f64()
    ));
    Ok(Stopped { worker, sha, took })
}

/// Replaces the dispatcher's container (`--force-recreate`): only its
/// volumes carry its state over. Every commit decided before must still be
/// there with the same verdict. Returns how many there were.
fn recreate_the_dispatcher(stack: &Stack, api: &Api) -> Result<usize> {
    let decided: BTreeMap<String, String> = api
        .statuses()
        .context("GET /api/commits before the restart")??
        .into_iter()
        .filter(|(_, status)| status != "running")
        .collect();
    let before = stack.container_ids("dispatcher")?;
    stack.up(&["--force-recreate", "dispatcher"])?;
    let after = stack.container_ids("dispatcher")?;
    ensure!(
        before != after,
        "the dispatcher's container was not replaced"
    );
    wait_until("the dispatcher's /readyz after its restart", || {
        api.ready().then_some(())
    })?;
    let now = api
        .statuses()
        .context("GET /api/commits after the restart")??;
    for (sha, status) in &decided {
        let after = now.get(sha).map_or("missing", String::as_str);
        ensure!(
            after == status,
            "commit {sha} was {status} before the dispatcher's restart, {after} after"
        );
    }
    Ok(decided.len())
}

/// Every commit once, with the verdict its files ask for, each job decided
/// by exactly one run.
fn check_verdicts(
    api: &Api,
    pushed: &[Pushed],
    summaries: &BTreeMap<String, String>,
) -> Result<Report> {
    let expected: BTreeSet<&str> = pushed.iter().map(|p| p.sha.as_str()).collect();
    let seen: BTreeSet<&str> = summaries.keys().map(String::as_str).collect();
    let lost: Vec<&&str> = expected.difference(&seen).collect();
    let extra: Vec<&&str> = seen.difference(&expected).collect();
    ensure!(lost.is_empty(), "commits without a verdict: {lost:?}");
    ensure!(extra.is_empty(), "commits nobody pushed: {extra:?}");

    let mut deciding = BTreeSet::new();
    let mut lost_runs = 0;
    for commit in pushed {
        let status = &summaries[&commit.sha];
        ensure!(
            status == commit.expected(),
            "commit {} is {status}, expected {}",
            commit.sha,
            commit.expected()
        );
        let detail = api.commit(&commit.sha)?;
        let jobs = detail["jobs"].as_array().context("a commit has jobs")?;
        ensure!(!jobs.is_empty(), "commit {} has no jobs", commit.sha);
        for job in jobs {
            let attempts = job["attempts"].as_array().context("a job has attempts")?;
            let finished: Vec<&Value> = attempts
                .iter()
                .filter(|a| a["state"] == "finished")
                .collect();
            ensure!(
                finished.len() == 1,
                "commit {}: a job decided by {} runs: {attempts:?}",
                commit.sha,
                finished.len()
            );
            deciding.insert(finished[0]["worker"].as_str().unwrap_or("").to_owned());
            lost_runs += job["lost_runs"].as_u64().unwrap_or(0);
        }
    }
    Ok(Report {
        commits: pushed.len(),
        failed_as_expected: pushed.iter().filter(|p| p.fails).count(),
        deciding_workers: deciding.len(),
        stopped_job: String::new(),
        stop_took: Duration::ZERO,
        lost_runs,
        decided_before_restart: 0,
    })
}

/// Whether the stopped worker finished the slow job or it went back to the
/// queue and another worker ran it.
fn describe_stopped_job(api: &Api, sha: &str, stopped: &str) -> Result<String> {
    let detail = api.commit(sha)?;
    let decided_by = detail["jobs"][0]["attempts"]
        .as_array()
        .and_then(|attempts| attempts.iter().find(|a| a["state"] == "finished"))
        .and_then(|a| a["worker"].as_str())
        .context("the slow job has a deciding run")?;
    Ok(if decided_by == stopped {
        "finished".to_owned()
    } else {
        format!("returned-and-rerun-on-{decided_by}")
    })
}

// ---------------------------------------------------------------------------
// The compose project

/// The compose project: its files, its variables and the binary.
struct Stack {
    compose: PathBuf,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Stack {
    fn new(args: &Args, repos: &Path, port: u16) -> Result<Self> {
        let docker_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the harness lives in the workspace")?
            .join("docker");
        // The watcher looks every 300 ms instead of every 5 s: the run's
        // commits reach the dispatcher sooner.
        let quick = args.dir.join("compose.quick.yml");
        std::fs::write(
            &quick,
            "services:\n  watcher:\n    environment:\n      \
             WARREN_REPOS__SAMPLE__POLL_INTERVAL: \"300ms\"\n",
        )
        .with_context(|| format!("writing {}", quick.display()))?;
        Ok(Self {
            compose: args.compose.clone(),
            project: args.project.clone(),
            files: vec![
                docker_dir.join("compose.yml"),
                docker_dir.join("compose.host.yml"),
                quick,
            ],
            env: vec![
                ("WARREN_IMAGE".into(), args.image.clone()),
                ("BROKER_URL".into(), broker_url()),
                ("BROKER_PREFIX".into(), args.project.clone()),
                ("HTTP_PORT".into(), port.to_string()),
                ("REPOS_DIR".into(), repos.display().to_string()),
            ],
        })
    }

    /// Runs `docker compose` on the project; its standard output.
    fn compose(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new(&self.compose);
        command.arg("--project-name").arg(&self.project);
        for file in &self.files {
            command.arg("--file").arg(file);
        }
        command.args(args).envs(self.env.iter().cloned());
        output(command, &format!("docker compose {}", args.join(" ")))
    }

    /// `docker compose up -d` with the image the script built: never built
    /// or pulled here.
    fn up(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["up", "-d", "--no-build", "--pull", "never"];
        all.extend_from_slice(args);
        self.compose(&all)
    }

    /// Scales the workers, leaving the other containers as they are.
    fn scale_workers(&self, count: usize) -> Result<()> {
        let scale = format!("worker={count}");
        self.up(&["--no-recreate", "--scale", &scale, "worker"])?;
        wait_until(&format!("{count} running worker containers"), || {
            let running = self.container_ids("worker").ok()?;
            (running.len() == count).then_some(())
        })
    }

    /// The running containers of `service`.
    fn container_ids(&self, service: &str) -> Result<Vec<String>> {
        let ids = self.compose(&["ps", "-q", service])?;
        let mut ids: Vec<String> = ids.lines().map(str::to_owned).collect();
        ids.sort();
        Ok(ids)
    }

    /// The worker container whose worker has the id `worker` (it logs it
    /// when it starts).
    fn worker_container(&self, worker: &str) -> Result<String> {
        for id in self.container_ids("worker")? {
            let mut logs = Command::new("docker");
            logs.args(["logs", &id]);
            let text = output_and_errors(logs, "docker logs")?;
            if text.contains("worker starting") && text.contains(worker) {
                return Ok(id);
            }
        }
        bail!("no running worker container logged the id {worker}")
    }

    /// The result files in the results volume: one per commit.
    fn check_result_files(&self, pushed: &[Pushed]) -> Result<()> {
        let listing = self.compose(&[
            "exec",
            "-T",
            "dispatcher",
            "ls",
            &format!("/var/lib/warren/results/{REPO}"),
        ])?;
        let files: BTreeSet<&str> = listing.lines().collect();
        let expected: BTreeSet<String> = pushed.iter().map(|p| format!("{}.json", p.sha)).collect();
        let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        ensure!(
            files == expected,
            "result files differ from the commits: missing {:?}, extra {:?}",
            expected.difference(&files).collect::<Vec<_>>(),
            files.difference(&expected).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Every container of the project on the host's network, and no network
    /// of the project's own (no bridge, no private address).
    fn check_host_network(&self) -> Result<()> {
        let mut ps = Command::new("docker");
        ps.args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
        ]);
        let ids: Vec<String> = output(ps, "docker ps")?
            .lines()
            .map(str::to_owned)
            .collect();
        ensure!(!ids.is_empty(), "no containers of the project");
        let mut inspect = Command::new("docker");
        inspect
            .args(["inspect", "-f", "{{.Name}} {{.HostConfig.NetworkMode}}"])
            .args(&ids);
        for line in output(inspect, "docker inspect")?.lines() {
            ensure!(line.ends_with(" host"), "not on the host network: {line}");
        }
        let mut networks = Command::new("docker");
        networks.args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
        ]);
        let networks = output(networks, "docker network ls")?;
        ensure!(
            networks.trim().is_empty(),
            "the project made networks: {networks}"
        );
        Ok(())
    }

    /// The last lines of every service's log, for a failure.
    fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "40"])
            .unwrap_or_else(|e| format!("(no logs: {e:#})"))
    }
}

fn docker(args: &[&str]) -> Result<String> {
    let mut command = Command::new("docker");
    command.args(args);
    output(command, &format!("docker {}", args.join(" ")))
}

/// Runs `command`; its standard output, or an error with its standard error.
fn output(mut command: Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {what}"))?;
    ensure!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `command`; its standard output and standard error together.
fn output_and_errors(mut command: Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {what}"))?;
    ensure!(out.status.success(), "{what}: {}", out.status);
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` until it gives a value, for at most [`DEADLINE`].
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("waited {DEADLINE:?} for {what}");
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// The dispatcher's API

struct Api(String);

impl Api {
    fn get(&self, path: &str) -> Option<Value> {
        let (status, body) = http::try_request("GET", &format!("{}{path}", self.0)).ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    fn ready(&self) -> bool {
        matches!(
            http::try_request("GET", &format!("{}/readyz", self.0)),
            Ok((200, _))
        )
    }

    /// Workers the dispatcher heard from.
    fn workers(&self) -> usize {
        self.get("/api/workers")
            .and_then(|v| v["workers"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// The worker running `sha`'s job now.
    fn running_worker(&self, sha: &str) -> Option<String> {
        let detail = self.get(&format!("/api/commits/{REPO}/{sha}"))?;
        detail["jobs"][0]["attempts"]
            .as_array()?
            .iter()
            .find(|a| a["state"] == "running")
            .and_then(|a| a["worker"].as_str())
            .map(str::to_owned)
    }

    fn commit(&self, sha: &str) -> Result<Value> {
        self.get(&format!("/api/commits/{REPO}/{sha}"))
            .with_context(|| format!("GET /api/commits/{REPO}/{sha}"))
    }

    /// The repository's commits: sha → status (`running` while undecided).
    /// Refuses a sha listed twice.
    fn statuses(&self) -> Option<Result<BTreeMap<String, String>>> {
        let list = self.get(&format!("/api/commits?repo={REPO}&limit=500"))?;
        let mut statuses = BTreeMap::new();
        for commit in list["commits"].as_array()? {
            let sha = commit["sha"].as_str()?.to_owned();
            let status = commit["status"].as_str().unwrap_or("running").to_owned();
            if statuses.insert(sha.clone(), status).is_some() {
                return Some(Err(anyhow::anyhow!("commit {sha} is listed twice")));
            }
        }
        Some(Ok(statuses))
    }

    /// The statuses once every pushed commit has a verdict, or the error
    /// as soon as a sha is listed twice.
    fn all_decided(&self, pushed: &[Pushed]) -> Option<Result<BTreeMap<String, String>>> {
        match self.statuses()? {
            Err(error) => Some(Err(error)),
            Ok(statuses) => pushed
                .iter()
                .all(|p| statuses.get(&p.sha).is_some_and(|s| s != "running"))
                .then_some(Ok(statuses)),
        }
    }
}

// ---------------------------------------------------------------------------
// The commits

/// A commit made, and whether its test fails.
#[derive(Clone)]
struct Pushed {
    sha: String,
    fails: bool,
}

impl Pushed {
    fn expected(&self) -> &'static str {
        if self.fails { "failed" } else { "passed" }
    }
}

/// The repository the watcher watches (a bare one on the host, mounted at
/// `/repos`), and the commits made to it.
struct CommitStream {
    upstream: Mutex<Upstream>,
    pushed: Mutex<Vec<Pushed>>,
}

impl CommitStream {
    fn new(path: &Path) -> Self {
        Self {
            upstream: Mutex::new(Upstream::create(path)),
            pushed: Mutex::new(Vec::new()),
        }
    }

    /// Commits to `main`: every fifth test fails; a slow one runs for
    /// [`SLOW_TEST_SECONDS`], the others for 0.2 to 1 s.
    fn push(&self, slow: bool) -> String {
        let upstream = self.upstream.lock().expect("upstream lock");
        let mut pushed = self.pushed.lock().expect("pushed lock");
        let n = pushed.len();
        let fails = !slow && n % 5 == 3;
        let delay = if slow {
            SLOW_TEST_SECONDS
        } else {
            ["0.2", "0.5", "1"][n % 3]
        };
        let count = n.to_string();
        let sha = upstream.commit(
            "main",
            &format!("commit {n}"),
            &[
                (
                    "warren.toml",
                    Some("command = \"sh test.sh\"\ntimeout = \"2m\"\n"),
                ),
                (
                    "test.sh",
                    Some(
                        "sleep \"$(cat delay)\"\n\
                         [ \"$(cat verdict)\" = pass ] || { echo 'verdict: fail'; exit 1; }\n",
                    ),
                ),
                ("verdict", Some(if fails { "fail" } else { "pass" })),
                ("delay", Some(delay)),
                ("n", Some(&count)),
            ],
        );
        pushed.push(Pushed {
            sha: sha.clone(),
            fails,
        });
        sha
    }

    fn pushed(&self) -> Vec<Pushed> {
        self.pushed.lock().expect("pushed lock").clone()
    }

    fn count(&self) -> usize {
        self.pushed.lock().expect("pushed lock").len()
    }
}

/// Commits every [`COMMIT_EVERY`] on a thread of their own, until stopped.
struct Flow {
    stream: Arc<CommitStream>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flow {
    fn start(stream: Arc<CommitStream>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stream = Arc::clone(&stream);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("commit-stream".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        stream.push(false);
                        std::thread::sleep(COMMIT_EVERY);
                    }
                })
                .expect("spawn the commit stream")
        };
        Self {
            stream,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `n` more commits are made.
    fn wait_for_more(&self, n: usize) -> Result<()> {
        let target = self.stream.count() + n;
        wait_until(&format!("{n} more commits"), || {
            (self.stream.count() >= target).then_some(())
        })
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the commit stream does not panic");
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
