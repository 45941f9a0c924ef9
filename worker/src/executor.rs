//! How a job's command is started: the one place that turns a
//! [`CommandSpec`] into the process [`crate::run`] spawns.
//!
//! - `process` (the default): the command itself, as the worker's user.
//! - `sandbox`: the command inside bubblewrap (`executor/sandbox.rs`).
//! - `container`: the command in a docker container (`executor/container.rs`).
//!
//! [`Executor::launch`] gives a [`Launch`]: the program, arguments, working
//! directory and environment to spawn (run.rs still spawns it as the leader
//! of its own process group and reads its output), and a [`Guard`] that
//! watches the run's limits and cleans up after it. run.rs drives the guard:
//!
//! 1. while the command runs, [`Guard::breached`] resolves when a limit is hit
//!    (the run then ends as [`crate::run::Ending::LimitReached`]);
//! 2. when the run must end early (timeout, cancel, limit),
//!    [`Guard::stop`] before the process group is signalled (a container is
//!    killed through its engine: its processes are not in the group);
//! 3. after the group is gone, [`Guard::finish`] (always, once): removes what
//!    the launch made and says whether a limit was hit after all (a process
//!    the kernel killed at the memory limit).

mod container;

use self::container::{ContainerGuard, Docker};
use crate::images::ImagePolicy;
use crate::run::{CommandSpec, RunError};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;
use warren_common::ids::ImageRef;

/// Which executor runs the jobs (`worker.executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorKind {
    /// The command as a process of the worker's user: no isolation.
    #[default]
    Process,
    /// The command in a bubblewrap sandbox.
    Sandbox,
    /// The command in a docker container.
    Container,
}

impl ExecutorKind {
    /// The names `worker.executor` accepts.
    pub const NAMES: &'static [&'static str] = &["process", "sandbox", "container"];

    /// `process`, `sandbox` or `container`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim() {
            "process" => Some(Self::Process),
            "sandbox" => Some(Self::Sandbox),
            "container" => Some(Self::Container),
            _ => None,
        }
    }

    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Sandbox => "sandbox",
            Self::Container => "container",
        }
    }
}

/// Limits of one job (or a worker's maxima); `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory of all the job's processes together, in bytes.
    pub memory: Option<u64>,
    /// Processes (and threads) alive at once.
    pub processes: Option<u64>,
    /// CPU time of all the job's processes together.
    pub cpu_time: Option<Duration>,
    /// Bytes in the checkout (what the job writes adds to the clone).
    pub disk: Option<u64>,
}

impl Limits {
    /// Each limit the lower of the two (a job may ask for less than the
    /// worker allows, never for more).
    pub fn min(self, other: Self) -> Self {
        fn lower<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Self {
            memory: lower(self.memory, other.memory),
            processes: lower(self.processes, other.processes),
            cpu_time: lower(self.cpu_time, other.cpu_time),
            disk: lower(self.disk, other.disk),
        }
    }

    /// Whether no limit is set.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// What an executor needs to know of a run besides its command line.
#[derive(Debug, Clone)]
pub(crate) struct Isolation {
    /// Unique per run (`warren-<32 hex>`): a cgroup's or a container's name.
    pub name: String,
    /// Whether the command may use the network (a sandbox or container
    /// without it has only its own loopback).
    pub network: bool,
    /// The limits in force for this run.
    pub limits: Limits,
    /// The image to run in (container executor; [`Executor::image_for`]
    /// chose it).
    pub image: Option<ImageRef>,
}

impl Isolation {
    /// A new run's isolation, with a fresh name.
    pub(crate) fn new(network: bool, limits: Limits) -> Self {
        Self {
            name: format!("warren-{}", uuid::Uuid::new_v4().simple()),
            network,
            limits,
            image: None,
        }
    }

    /// The same, in `image`.
    pub(crate) fn with_image(mut self, image: Option<ImageRef>) -> Self {
        self.image = image;
        self
    }
}

/// A limit that ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Memory(u64),
    Processes(u64),
    CpuTime(Duration),
    Disk(u64),
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(bytes) => write!(f, "memory limit {} reached", size(*bytes)),
            Self::Processes(count) => write!(f, "process limit {count} reached"),
            Self::CpuTime(time) => write!(
                f,
                "CPU time limit {} reached",
                humantime::format_duration(*time)
            ),
            Self::Disk(bytes) => write!(f, "disk limit {} reached", size(*bytes)),
        }
    }
}

/// Bytes for people: `512 MiB`, `2 GiB`, `1536 KiB`, `100 bytes`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, factor) in UNITS {
        if bytes >= factor && bytes % factor == 0 {
            return format!("{} {unit}", bytes / factor);
        }
    }
    for (unit, factor) in UNITS {
        if bytes >= factor {
            return format!("{:.1} {unit}", bytes as f64 / factor as f64);
        }
    }
    format!("{bytes} bytes")
}

/// The worker's executor settings, validated (part of `WorkerConfig`).
#[derive(Debug, Clone, Default)]
pub struct ExecutorConfig {
    /// `worker.executor`.
    pub kind: ExecutorKind,
    /// `worker.allowed_images` and `worker.default_image` (container).
    pub images: ImagePolicy,
    /// `worker.work_dir`: the container executor labels its containers with
    /// it, and removes those a previous worker left there.
    pub work_dir: PathBuf,
}

/// The executor cannot work on this machine: the worker does not start
/// (exit status 2), it never falls back to a weaker executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("worker.executor = \"{kind}\": {message}")]
    Unavailable { kind: &'static str, message: String },
}

/// Starts the commands of jobs, chosen and checked once at the worker's start.
#[derive(Debug, Clone)]
pub struct Executor {
    kind: ExecutorKind,
    /// The engine, for `container`.
    docker: Option<Docker>,
}

impl Executor {
    /// Checks that `config`'s executor works here (runs it once where that
    /// is the only way to know).
    pub fn start(config: &ExecutorConfig) -> Result<Self, ExecutorError> {
        let docker = match config.kind {
            ExecutorKind::Process | ExecutorKind::Sandbox => None,
            ExecutorKind::Container => {
                Some(Docker::start(&config.work_dir, config.images.clone())?)
            }
        };
        Ok(Self {
            kind: config.kind,
            docker,
        })
    }

    /// The process executor, with no limits (unit tests).
    #[cfg(test)]
    pub(crate) fn process() -> Self {
        Self {
            kind: ExecutorKind::Process,
            docker: None,
        }
    }

    /// Which executor this is.
    pub fn kind(&self) -> ExecutorKind {
        self.kind
    }

    /// For the start-up log: the executor and how limits are enforced.
    pub fn describe(&self) -> String {
        match &self.docker {
            Some(docker) => docker.describe(),
            None => self.kind.name().to_owned(),
        }
    }

    /// The image a job runs in: for `container`, the job's own if
    /// `worker.allowed_images` allows it, else `worker.default_image`, and
    /// present on the host; the other executors run no image and refuse a
    /// job that asks for one. `Err` is the job's `error` message.
    pub(crate) async fn image_for(
        &self,
        asked: Option<&ImageRef>,
    ) -> Result<Option<ImageRef>, String> {
        match (&self.docker, asked) {
            (Some(docker), asked) => docker.image_for(asked).await.map(Some),
            (None, None) => Ok(None),
            (None, Some(image)) => Err(format!(
                "the job asks for image `{image}`, but this worker runs commands without                  containers (worker.executor = \"{}\"); only a container worker runs images",
                self.kind.name()
            )),
        }
    }

    /// Whether the command's environment starts empty rather than from the
    /// worker's: in a container the image's (`PATH`…) applies, and nothing
    /// of the worker's host does.
    pub(crate) fn isolates_environment(&self) -> bool {
        self.docker.is_some()
    }

    /// What to spawn for `spec`, and its guard.
    pub(crate) fn launch(&self, spec: &CommandSpec) -> Result<Launch, RunError> {
        match self.kind {
            ExecutorKind::Process | ExecutorKind::Sandbox => Ok(Launch::direct(spec)),
            ExecutorKind::Container => {
                let (Some(docker), Some(image)) = (&self.docker, &spec.isolation.image) else {
                    return Err(RunError::Spawn {
                        program: "docker".into(),
                        source: std::io::Error::other("no image chosen for the container"),
                    });
                };
                // The docker CLI's own environment: the worker's, without
                // its settings (they may hold the broker password).
                let cli_env = std::env::vars_os()
                    .filter(|(name, _)| !name.as_bytes().starts_with(b"WARREN_"))
                    .collect();
                let (args, env, guard) = docker.launch(spec, image, cli_env)?;
                Ok(Launch {
                    program: "docker".into(),
                    args,
                    cwd: spec.cwd.clone(),
                    env,
                    guard: Guard {
                        container: Some(guard),
                    },
                })
            }
        }
    }
}

/// The process to spawn for one run, and what watches it.
#[derive(Debug)]
pub(crate) struct Launch {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    pub guard: Guard,
}

impl Launch {
    /// The command as it is, unwatched.
    fn direct(spec: &CommandSpec) -> Self {
        Self {
            program: spec.program.clone(),
            args: spec.args.clone(),
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            guard: Guard::default(),
        }
    }
}

/// Watches one run's limits and cleans up after it (see the module's doc
/// for the order run.rs calls it in).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// The run's container, for `docker kill`, `docker inspect` and
    /// `docker rm`.
    container: Option<ContainerGuard>,
}

impl Guard {
    /// Resolves when the run hits a limit; never when nothing is watched.
    pub(crate) async fn breached(&mut self) -> LimitHit {
        match &mut self.container {
            Some(container) => container.breached().await,
            None => std::future::pending().await,
        }
    }

    /// The run must end (timeout, cancel, limit): stop what the process
    /// group's signals do not reach.
    pub(crate) async fn stop(&mut self) {
        if let Some(container) = &mut self.container {
            container.stop().await;
        }
    }

    /// After the process group is gone: clean up, and the limit that ended
    /// the run if one did.
    pub(crate) async fn finish(self) -> Option<LimitHit> {
        match self.container {
            Some(container) => container.finish().await,
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(512 << 20), "512 MiB");
        assert_eq!(size(2 << 30), "2 GiB");
        assert_eq!(size(1536 << 10), "1.5 MiB");
        assert_eq!(size(100), "100 bytes");
    }

    #[test]
    fn a_job_may_ask_for_less_never_for_more() {
        let worker = Limits {
            memory: Some(1 << 30),
            processes: Some(64),
            cpu_time: None,
            disk: Some(100),
        };
        let job = Limits {
            memory: Some(2 << 30),
            processes: Some(10),
            cpu_time: Some(Duration::from_secs(5)),
            disk: None,
        };
        assert_eq!(
            worker.min(job),
            Limits {
                memory: Some(1 << 30),
                processes: Some(10),
                cpu_time: Some(Duration::from_secs(5)),
                disk: Some(100),
            }
        );
    }

    #[test]
    fn limit_verdicts_say_which() {
        assert_eq!(
            LimitHit::Memory(256 << 20).to_string(),
            "memory limit 256 MiB reached"
        );
        assert_eq!(
            LimitHit::Processes(64).to_string(),
            "process limit 64 reached"
        );
        assert_eq!(
            LimitHit::CpuTime(Duration::from_secs(10)).to_string(),
            "CPU time limit 10s reached"
        );
    }
}
