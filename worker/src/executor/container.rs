//! The `container` executor: each run of a job's command is one `docker run`
//! (the docker CLI of Debian's `docker.io`), attached, so `run.rs` spawns it
//! and reads its output like any command; the container is what isolates it.
//!
//! What the command gets (README, "The container executor"):
//! - the job's image (`image` in `warren.toml`) if `worker.allowed_images`
//!   allows it, else `worker.default_image`; never pulled (`--pull never`):
//!   an image missing on the host is the job's `error`, said before the
//!   checkout ([`Docker::image_for`]);
//! - the checkout, bind-mounted read-write at its own path, as the working
//!   directory, and nothing else of the host's files: the image's root file
//!   system read-only, a private `/tmp` (tmpfs, counted in the memory limit);
//! - the job's environment only (`--env`), never the worker's own;
//! - a user that is not root: the checkout's owner, the worker's own user; a
//!   worker running as root hands the checkout to `nobody` (65534) for the
//!   run and takes it back after (git refuses a clone its user does not own);
//! - no capabilities, `no-new-privileges`, docker's init as PID 1 (passes
//!   signals on and reaps), its own PID namespace (nothing outlives it);
//! - `--network host`, or `--network none` with `network = false`;
//! - the limits as docker's flags: `--memory` = `--memory-swap` (no swap),
//!   `--pids-limit`, `--ulimit cpu` and `fsize` (per process); the
//!   container's cgroup is read for a hit (`oom_kill`, `pids.events`) and
//!   for the CPU time of all its processes together; the disk limit is the
//!   checkout's growth, watched like the sandbox's;
//! - no engine log (`--log-driver none`): the output goes to the attached
//!   client only, so a flood cannot fill the engine's disk;
//! - the label `warren.work_dir`: a worker that starts removes the
//!   containers a crashed one with the same `work_dir` left behind.
//!
//! A run that must end early (timeout, cancel): SIGTERM through the engine
//! (`docker kill --signal TERM`), the kill grace, then `docker kill`; over a
//! limit, `docker kill` at once;
//! after every run `docker inspect` (was a process killed at the memory
//! limit?) and `docker rm -f`, also when the job future is dropped.

mod cgroups;
mod cli;

use self::cgroups::{Cgroups, find_cgroups};
use self::cli::{CliError, ENGINE_TIMEOUT, blocking_docker, docker};
use super::limits::counter;
use super::{CommandSpec, RunError};
use super::{ExecutorError, LimitHit, Limits};
use crate::images::ImagePolicy;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{debug, warn};
use warren_common::ids::ImageRef;

/// The docker CLI, looked up in the worker's `PATH`.
pub(super) const DOCKER: &str = "docker";

/// Label naming the worker's `work_dir` on its containers: what a restarted
/// worker removes at start. The work_dir, not the worker id, because the
/// default id is new at every start while the work_dir stays.
const LABEL_WORK_DIR: &str = "warren.work_dir";

/// Longest wait for the engine at the worker's start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The user (and group) a job runs as when the worker itself runs as root:
/// `nobody`, which owns nothing of the host.
const NOBODY: u32 = 65534;

/// How often a running container's cgroup is read for a limit hit.
const LIMIT_POLL: Duration = Duration::from_millis(100);

/// How often the engine is asked for a new container's cgroup until it has
/// one: soon, because the cgroup (and what it counted) goes with the
/// container, and a job may end soon after it hit a limit.
const CGROUP_FIND_POLL: Duration = Duration::from_millis(20);

/// `SIGXCPU`: what the kernel sends at the CPU time limit (`--ulimit cpu`).
const SIGXCPU: i64 = 24;

/// The engine, checked at the worker's start.
#[derive(Debug, Clone)]
pub(crate) struct Docker {
    work_dir: String,
    images: ImagePolicy,
}

impl Docker {
    /// Checks that the docker CLI is there and the engine answers, and
    /// removes the containers a previous worker with this `work_dir` left.
    pub(crate) fn start(work_dir: &Path, images: ImagePolicy) -> Result<Self, ExecutorError> {
        let unavailable = |message: String| ExecutorError::Unavailable {
            kind: "container",
            message,
        };
        let version = blocking_docker(
            &["version", "--format", "{{.Server.Version}}"],
            START_TIMEOUT,
        )
        .map_err(|error| match error {
            CliError::Missing => {
                unavailable("the docker command is not installed (Debian package docker.io)".into())
            }
            other => unavailable(format!(
                "the Docker engine does not answer: {other} (start dockerd, e.g. \
                 scripts/ensure-docker.sh)"
            )),
        })?;
        let work_dir = std::path::absolute(work_dir)
            .unwrap_or_else(|_| work_dir.to_path_buf())
            .to_string_lossy()
            .into_owned();
        let docker = Self { work_dir, images };
        debug!(version = version.trim(), "Docker engine answers");
        docker.remove_leftovers().map_err(unavailable)?;
        Ok(docker)
    }

    /// For the start-up log.
    pub(crate) fn describe(&self) -> String {
        format!(
            "container (allowed_images = {:?}, default_image = {})",
            self.images.patterns(),
            self.images
                .default_image()
                .map_or("none", |image| image.as_str())
        )
    }

    /// Removes every container labelled with this worker's `work_dir`: what
    /// a worker that crashed (or was killed) mid-job left.
    fn remove_leftovers(&self) -> Result<(), String> {
        let filter = format!("label={LABEL_WORK_DIR}={}", self.work_dir);
        let listed = blocking_docker(
            &["ps", "--all", "--quiet", "--filter", &filter],
            ENGINE_TIMEOUT,
        )
        .map_err(|error| format!("listing leftover containers: {error}"))?;
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(());
        }
        warn!(
            count = ids.len(),
            "removing containers a previous worker with this work_dir left"
        );
        let mut args = vec!["rm", "--force"];
        args.extend(ids);
        blocking_docker(&args, ENGINE_TIMEOUT)
            .map(drop)
            .map_err(|error| format!("removing leftover containers: {error}"))
    }

    /// The image a job runs in: its own if allowed, else the default, and
    /// present on this host (Warren never pulls). `Err` is the job's `error`
    /// message.
    pub(crate) async fn image_for(&self, asked: Option<&ImageRef>) -> Result<ImageRef, String> {
        let image = self.images.choose(asked)?;
        match docker(&["image", "inspect", "--format", "{{.Id}}", image.as_str()]).await {
            Ok(_) => Ok(image),
            Err(CliError::Failed { message, .. }) if message.contains("No such image") => {
                Err(format!(
                    "image `{image}` is not on this worker's host, and Warren does not pull \
                     images: `docker pull {image}` (or `docker load`) there first"
                ))
            }
            Err(error) => Err(format!("checking image `{image}`: {error}")),
        }
    }

    /// The `docker run` command for `spec` in `image` (which
    /// [`Docker::image_for`] chose), and the guard of the container.
    pub(crate) fn launch(
        &self,
        spec: &CommandSpec,
        image: &ImageRef,
    ) -> Result<(Vec<OsString>, ContainerGuard), RunError> {
        let checkout = checkout_root(&spec.cwd);
        let user = user_for(&checkout).map_err(|source| RunError::Spawn {
            program: DOCKER.into(),
            source,
        })?;
        let isolation = &spec.isolation;
        let args = run_args(&RunArgs {
            name: &isolation.name,
            work_dir: &self.work_dir,
            image,
            network: isolation.network,
            limits: &isolation.limits,
            user: (user.uid, user.gid),
            checkout: &checkout,
            spec,
        });
        let guard = ContainerGuard {
            checkout: checkout.clone(),
            name: isolation.name.clone(),
            limits: isolation.limits,
            kill_grace: spec.kill_grace,
            cgroups: None,
            removed: false,
            take_back: user.handed_over.map(|owner| (checkout, owner)),
        };
        Ok((args, guard))
    }
}

/// The folder mounted into the container: the clone the command runs in
/// (`<slot>/<repo>`), found as the nearest folder up from `cwd` holding
/// `.git`; `cwd` itself when there is none.
fn checkout_root(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .find(|dir| dir.join(".git").exists())
        .unwrap_or(cwd)
        .to_path_buf()
}

/// Who a container runs as.
struct ContainerUser {
    uid: u32,
    gid: u32,
    /// The checkout's owner before it was handed to the container's user.
    handed_over: Option<(u32, u32)>,
}

/// The user the container runs as: the checkout's owner, unless the worker
/// runs as root, in which case the checkout is handed to `nobody` for the
/// run: the job must not be root inside.
fn user_for(checkout: &Path) -> std::io::Result<ContainerUser> {
    let meta = std::fs::metadata(checkout)?;
    if !nix::unistd::geteuid().is_root() {
        return Ok(ContainerUser {
            uid: meta.uid(),
            gid: meta.gid(),
            handed_over: None,
        });
    }
    chown_tree(checkout, NOBODY, NOBODY)?;
    Ok(ContainerUser {
        uid: NOBODY,
        gid: NOBODY,
        handed_over: Some((meta.uid(), meta.gid())),
    })
}

/// `chown -R` without following symbolic links (a link in a commit must not
/// hand a file outside the checkout to the job).
pub(crate) fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// What one `docker run` is made of.
struct RunArgs<'a> {
    name: &'a str,
    work_dir: &'a str,
    image: &'a ImageRef,
    network: bool,
    limits: &'a Limits,
    user: (u32, u32),
    checkout: &'a Path,
    spec: &'a CommandSpec,
}

/// The arguments of `docker run`. The command comes after the image, so
/// nothing of the job's can be read as an option of docker's.
fn run_args(run: &RunArgs<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |arg: String| args.push(arg.into());
    for arg in [
        "run",
        "--pull=never",
        "--init",
        "--interactive=false",
        "--log-driver=none",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--read-only",
        "--tmpfs=/tmp:rw,nosuid,nodev",
    ] {
        push(arg.to_owned());
    }
    push(format!("--name={}", run.name));
    push(format!("--label={LABEL_WORK_DIR}={}", run.work_dir));
    push(format!(
        "--network={}",
        if run.network { "host" } else { "none" }
    ));
    push(format!("--user={}:{}", run.user.0, run.user.1));
    let checkout = run.checkout.display();
    push(format!(
        "--mount=type=bind,source={checkout},target={checkout}"
    ));
    push(format!("--workdir={}", run.spec.cwd.display()));
    if let Some(memory) = run.limits.memory {
        push(format!("--memory={memory}"));
        push(format!("--memory-swap={memory}"));
    }
    if let Some(processes) = run.limits.processes {
        push(format!("--pids-limit={processes}"));
    }
    if let Some(cpu) = run.limits.cpu_time {
        // Per process, like the sandbox's rlimit: SIGXCPU at the soft
        // limit, SIGKILL a second later.
        let seconds = cpu.as_secs().max(1);
        push(format!("--ulimit=cpu={seconds}:{}", seconds + 1));
    }
    if let Some(disk) = run.limits.disk {
        // No file grows past the disk limit (the watcher counts them all).
        push(format!("--ulimit=fsize={disk}:{disk}"));
    }
    let has_home = run.spec.env.iter().any(|(name, _)| name == "HOME");
    if !has_home {
        // The image's root is read-only: the one place a tool can write
        // its caches is the private /tmp.
        push("--env=HOME=/tmp".to_owned());
    }
    for (name, value) in &run.spec.env {
        let mut arg = OsString::from("--env=");
        arg.push(name);
        arg.push("=");
        arg.push(value);
        args.push(arg);
    }
    args.push(run.image.as_str().into());
    args.push(run.spec.program.clone());
    args.extend(run.spec.args.iter().cloned());
    args
}

/// Watches one container and removes it after its run.
#[derive(Debug)]
pub(crate) struct ContainerGuard {
    /// The folder mounted into the container (its disk use is watched).
    pub(super) checkout: PathBuf,
    name: String,
    limits: Limits,
    kill_grace: Duration,
    /// Found once the container runs.
    cgroups: Option<Cgroups>,
    removed: bool,
    /// The checkout and its owner, to give it back to after the run.
    take_back: Option<(PathBuf, (u32, u32))>,
}

impl ContainerGuard {
    /// Resolves when the container hits its process, memory or CPU time
    /// limit (read from its cgroup); never when none is set.
    pub(crate) async fn breached(&mut self) -> LimitHit {
        let Limits {
            memory,
            processes,
            cpu_time,
            ..
        } = self.limits;
        if processes.is_none() && memory.is_none() && cpu_time.is_none() {
            return std::future::pending().await;
        }
        while self.cgroups.is_none() {
            self.cgroups = find_cgroups(&self.name).await;
            if self.cgroups.is_none() {
                tokio::time::sleep(CGROUP_FIND_POLL).await;
            }
        }
        let mut ticker = tokio::time::interval(LIMIT_POLL);
        loop {
            ticker.tick().await;
            let Some(cgroups) = &self.cgroups else {
                continue;
            };
            if let (Some(limit), Some(file)) = (processes, &cgroups.pids_events)
                && counter(file, "max") > 0
            {
                return LimitHit::Processes(limit);
            }
            if let (Some(limit), Some(file)) = (memory, &cgroups.memory_events)
                && counter(file, "oom_kill") > 0
            {
                return LimitHit::Memory(limit);
            }
            if let (Some(limit), Some(usage)) = (cpu_time, &cgroups.cpu_usage)
                && usage.read() >= limit
            {
                return LimitHit::CpuTime(limit);
            }
        }
    }

    /// Ends the container: SIGTERM through the engine (docker's init passes
    /// it on), up to the kill grace for it to stop, then SIGKILL; SIGKILL
    /// `at_once` (a limit was hit: the job gets no time to go on).
    pub(crate) async fn stop(&mut self, at_once: bool) {
        if at_once {
            if let Err(error) = docker(&["kill", &self.name]).await {
                debug!(container = %self.name, %error, "docker kill");
            }
            return;
        }
        let _ = docker(&["kill", "--signal=TERM", &self.name]).await;
        let stopped = tokio::time::timeout(self.kill_grace, docker(&["wait", &self.name])).await;
        if stopped.is_err() {
            debug!(container = %self.name, "still running after the kill grace; docker kill");
            if let Err(error) = docker(&["kill", &self.name]).await {
                debug!(container = %self.name, %error, "docker kill");
            }
        }
    }

    /// After the run: the limit that ended it, if one did (a process killed
    /// at the memory limit, the CPU time limit's signal), and whether the
    /// container never started (the engine refused to create or start it:
    /// no container, or one that never ran); then removes the container.
    pub(crate) async fn finish(mut self) -> ContainerEnd {
        let state = docker(&[
            "inspect",
            "--format",
            "{{.State.OOMKilled}} {{.State.ExitCode}} {{.State.StartedAt}}",
            &self.name,
        ])
        .await;
        let end = match state {
            Ok(state) => {
                let mut fields = state.split_whitespace();
                let oom = fields.next() == Some("true");
                let code: Option<i64> = fields.next().and_then(|code| code.parse().ok());
                let hit = match (self.limits.memory, self.limits.cpu_time) {
                    (Some(memory), _) if oom => Some(LimitHit::Memory(memory)),
                    (_, Some(cpu)) if code == Some(128 + SIGXCPU) => Some(LimitHit::CpuTime(cpu)),
                    _ => None,
                };
                ContainerEnd {
                    hit,
                    never_started: fields.next().is_some_and(never_started),
                }
            }
            // Not even created: `docker run` failed before (a bad mount, an
            // image gone since the check).
            Err(CliError::Failed { message, .. }) if message.contains("No such") => ContainerEnd {
                hit: None,
                never_started: true,
            },
            Err(error) => {
                debug!(container = %self.name, %error, "docker inspect after the run");
                ContainerEnd {
                    hit: None,
                    never_started: false,
                }
            }
        };
        match docker(&["rm", "--force", &self.name]).await {
            Ok(_) => self.removed = true,
            Err(error) => warn!(container = %self.name, %error,
                "could not remove the job's container; the worker's next start removes it"),
        }
        if let Some((checkout, (uid, gid))) = self.take_back.take() {
            let taken = tokio::task::spawn_blocking(move || chown_tree(&checkout, uid, gid)).await;
            if let Ok(Err(error)) | Err(error) = taken.map_err(std::io::Error::other) {
                warn!(container = %self.name, %error,
                    "could not take the checkout back from the container's user; the next checkout takes it back");
            }
        }
        end
    }
}

/// What [`ContainerGuard::finish`] found of the container.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ContainerEnd {
    /// The limit that ended the run, if one did.
    pub hit: Option<LimitHit>,
    /// The engine never started the container (nothing of the job ran).
    pub never_started: bool,
}

/// Whether `State.StartedAt` says the container never started: the zero
/// time (`0001-01-01T00:00:00Z`).
fn never_started(started_at: &str) -> bool {
    started_at.is_empty() || started_at.starts_with("0001-01-01")
}

impl Drop for ContainerGuard {
    /// A job future dropped mid-run (the worker stopping hard): the
    /// container must not outlive it. Removed in the background; what even
    /// that misses goes at the worker's next start (the label).
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let name = self.name.clone();
        std::thread::spawn(move || {
            let _ = blocking_docker(&["rm", "--force", &name], ENGINE_TIMEOUT);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Isolation;
    use crate::live::LiveSink;

    fn spec(cwd: &Path) -> CommandSpec {
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), "echo $X".into()],
            cwd: cwd.to_path_buf(),
            env: vec![("X".into(), "a b".into()), ("CI".into(), "true".into())],
            timeout: Duration::from_secs(5),
            kill_grace: Duration::from_millis(100),
            output_limit: 1024,
            live: LiveSink::disabled(),
            isolation: Isolation::new(true, Limits::default()),
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_command_follows_the_image_and_the_limits_become_flags() {
        let spec = spec(Path::new("/w/slot-0/api/sub"));
        let limits = Limits {
            memory: Some(64 << 20),
            processes: Some(32),
            cpu_time: Some(Duration::from_secs(10)),
            disk: Some(1 << 30),
        };
        let image = ImageRef::parse("debian:bookworm-slim").unwrap();
        let args = strings(&run_args(&RunArgs {
            name: "warren-abc",
            work_dir: "/w",
            image: &image,
            network: false,
            limits: &limits,
            user: (65534, 65534),
            checkout: Path::new("/w/slot-0/api"),
            spec: &spec,
        }));
        for expected in [
            "--pull=never",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "--network=none",
            "--user=65534:65534",
            "--name=warren-abc",
            "--label=warren.work_dir=/w",
            "--mount=type=bind,source=/w/slot-0/api,target=/w/slot-0/api",
            "--workdir=/w/slot-0/api/sub",
            "--memory=67108864",
            "--memory-swap=67108864",
            "--pids-limit=32",
            "--ulimit=cpu=10:11",
            "--env=X=a b",
            "--env=HOME=/tmp",
        ] {
            assert!(
                args.contains(&expected.to_owned()),
                "{expected} in {args:?}"
            );
        }
        let image_at = args
            .iter()
            .position(|a| a == "debian:bookworm-slim")
            .unwrap();
        assert_eq!(args[image_at + 1..], ["sh", "-c", "echo $X"]);
        assert!(
            args[..image_at]
                .iter()
                .all(|a| a.starts_with("--") || a == "run"),
            "{args:?}"
        );
    }

    #[test]
    fn network_and_no_limits_are_the_defaults() {
        let spec = spec(Path::new("/w/slot-0/api"));
        let image = ImageRef::parse("debian:bookworm-slim").unwrap();
        let args = strings(&run_args(&RunArgs {
            name: "warren-abc",
            work_dir: "/w",
            image: &image,
            network: true,
            limits: &Limits::default(),
            user: (1000, 1000),
            checkout: Path::new("/w/slot-0/api"),
            spec: &spec,
        }));
        assert!(args.contains(&"--network=host".to_owned()));
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--memory") || a.starts_with("--pids"))
        );
    }

    #[test]
    fn the_checkout_is_the_clone_holding_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let clone = dir.path().join("api");
        std::fs::create_dir_all(clone.join(".git")).unwrap();
        std::fs::create_dir_all(clone.join("a/b")).unwrap();
        assert_eq!(checkout_root(&clone.join("a/b")), clone);
        assert_eq!(checkout_root(dir.path()), dir.path());
    }
}
