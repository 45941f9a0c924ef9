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
//!
//! - `main.rs`: the steps and the checks of the verdicts.
//! - `stack.rs`: `docker compose` on the project, and the checks of the
//!   containers themselves (result files, host network).
//! - `api.rs`: the dispatcher's API as the run reads it.
//! - `commits.rs`: the watched repository and the stream of commits.

mod api;
mod commits;
mod stack;

use anyhow::{Context, Result, bail, ensure};
use api::Api;
use commits::{CommitStream, Flow, Pushed, SLOW_TEST_SECONDS};
use serde_json::Value;
use stack::{Stack, docker};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_harness::broker::TestBroker;
use warren_harness::process::wait_until_every;

/// The repository's name in `docker/config/watcher.toml`.
pub(crate) const REPO: &str = "sample";
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
    let api = Api::on_port(port);

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
    // compose.yml's stop_grace_period, which `docker stop` waits for before
    // it kills (its own default is 10 s).
    let grace = docker(&["inspect", "-f", "{{.Config.StopTimeout}}", &container])?;
    step(&format!(
        "docker stop {worker} (stop timeout {} s), in the middle of a {SLOW_TEST_SECONDS} s job",
        grace.trim()
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

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` until it gives a value, for at most [`DEADLINE`].
pub(crate) fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let mut found = None;
    wait_until_every(DEADLINE, POLL, || {
        found = check();
        found.is_some()
    });
    found.with_context(|| format!("waited {DEADLINE:?} for {what}"))
}
