//! The compose project: `docker compose` with the run's files and
//! variables, scaling, the containers' ids, and the checks that look at
//! the containers themselves (result files, networks).

use crate::commits::Pushed;
use crate::{Args, REPO, wait_until};
use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use warren_harness::broker::broker_url;

/// The compose project: its files, its variables and the binary.
pub(crate) struct Stack {
    compose: PathBuf,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Stack {
    pub(crate) fn new(args: &Args, repos: &Path, port: u16) -> Result<Self> {
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
    pub(crate) fn up(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["up", "-d", "--no-build", "--pull", "never"];
        all.extend_from_slice(args);
        self.compose(&all)
    }

    /// Scales the workers, leaving the other containers as they are.
    pub(crate) fn scale_workers(&self, count: usize) -> Result<()> {
        let scale = format!("worker={count}");
        self.up(&["--no-recreate", "--scale", &scale, "worker"])?;
        wait_until(&format!("{count} running worker containers"), || {
            let running = self.container_ids("worker").ok()?;
            (running.len() == count).then_some(())
        })
    }

    /// The running containers of `service`.
    pub(crate) fn container_ids(&self, service: &str) -> Result<Vec<String>> {
        let ids = self.compose(&["ps", "-q", service])?;
        let mut ids: Vec<String> = ids.lines().map(str::to_owned).collect();
        ids.sort();
        Ok(ids)
    }

    /// The worker container whose worker has the id `worker` (it logs it
    /// when it starts).
    pub(crate) fn worker_container(&self, worker: &str) -> Result<String> {
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
    pub(crate) fn check_result_files(&self, pushed: &[Pushed]) -> Result<()> {
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
    pub(crate) fn check_host_network(&self) -> Result<()> {
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
    pub(crate) fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "40"])
            .unwrap_or_else(|e| format!("(no logs: {e:#})"))
    }
}

pub(crate) fn docker(args: &[&str]) -> Result<String> {
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
