//! How a job's command is started: the one place that turns a
//! [`CommandSpec`] into the process `run.rs` spawns.
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
//!    (the run then ends as `Ending::LimitReached`);
//! 2. when the run must end early (timeout, cancel, limit),
//!    [`Guard::stop`] before the process group is signalled (a container is
//!    killed through its engine: its processes are not in the group);
//! 3. after the group is gone, [`Guard::finish`] (always, once): removes what
//!    the launch made and says whether a limit was hit after all (a process
//!    the kernel killed at the memory limit), and whether a container never
//!    started (the engine refused it: the job's `error`, not its failure).

mod command;
mod container;
mod limits;
mod sandbox;

pub(crate) use self::command::{CommandSpec, RunError};
pub(crate) use self::container::chown_tree;
use self::container::{ContainerEnd, ContainerGuard, Docker};
use self::limits::{Enforcement, Watch};
use self::sandbox::Sandbox;
use crate::images::ImagePolicy;
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

/// Bytes for people: `512 MiB`, `2 GiB`, `1536 KiB`, `1.4 MiB`, `100 bytes`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, factor) in UNITS {
        if bytes >= factor && bytes.is_multiple_of(factor) {
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
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// `worker.executor`.
    pub kind: ExecutorKind,
    /// `worker.sandbox_bwrap`: the bubblewrap program.
    pub bwrap: PathBuf,
    /// `worker.sandbox_read_only`: more folders a sandbox shows, read-only.
    pub read_only: Vec<PathBuf>,
    /// What a sandbox must never show, absolute: the worker's config file,
    /// its git credentials, its `work_dir` (all but the run's checkout).
    pub hidden: Vec<PathBuf>,
    /// `worker.allowed_images` and `worker.default_image` (container).
    pub images: ImagePolicy,
    /// `worker.work_dir`, absolute: the container executor labels its
    /// containers with it, and removes those a previous worker left there.
    pub work_dir: PathBuf,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            kind: ExecutorKind::Process,
            bwrap: PathBuf::from("bwrap"),
            read_only: Vec::new(),
            hidden: Vec::new(),
            images: ImagePolicy::none(),
            work_dir: PathBuf::new(),
        }
    }
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
    /// The checked bubblewrap settings (`sandbox` only).
    sandbox: Option<Sandbox>,
    /// How limits are enforced here, and that said for people.
    enforcement: Enforcement,
    enforcement_note: String,
    /// The engine (`container` only).
    docker: Option<Docker>,
}

impl Executor {
    /// Checks that `config`'s executor works here (runs it once where that
    /// is the only way to know) and how limits can be enforced.
    pub fn start(config: &ExecutorConfig) -> Result<Self, ExecutorError> {
        let (enforcement, enforcement_note) = Enforcement::detect();
        let docker = match config.kind {
            ExecutorKind::Container => {
                Some(Docker::start(&config.work_dir, config.images.clone())?)
            }
            ExecutorKind::Process | ExecutorKind::Sandbox => None,
        };
        let sandbox = match config.kind {
            ExecutorKind::Process | ExecutorKind::Container => None,
            ExecutorKind::Sandbox => Some(Sandbox::start(
                config.bwrap.clone(),
                config.read_only.clone(),
                config.hidden.clone(),
            )?),
        };
        Ok(Self {
            kind: config.kind,
            sandbox,
            enforcement,
            enforcement_note,
            docker,
        })
    }

    /// The process executor, with no sandbox and rlimits (unit tests).
    #[cfg(test)]
    pub(crate) fn process() -> Self {
        Self {
            kind: ExecutorKind::Process,
            sandbox: None,
            enforcement: Enforcement::Rlimits,
            enforcement_note: String::new(),
            docker: None,
        }
    }

    /// Which executor this is.
    pub fn kind(&self) -> ExecutorKind {
        self.kind
    }

    /// For the start-up log: the executor and how limits are enforced.
    pub fn describe(&self) -> String {
        if let Some(docker) = &self.docker {
            return format!("{}; limits by docker's flags", docker.describe());
        }
        let how = match &self.sandbox {
            Some(sandbox) => format!("sandbox: {}", sandbox.describe()),
            None => self.kind.name().to_owned(),
        };
        format!("{how}; limits by {}", self.enforcement_note)
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
                "the job asks for image `{image}`, but this worker runs commands without a \
                 container (worker.executor = \"{}\"); only a container worker runs images",
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

    /// `docker run` for `spec`, its container watched by the guard (docker
    /// enforces the limits itself; the disk limit is watched here).
    fn launch_container(&self, docker: &Docker, spec: &CommandSpec) -> Result<Launch, RunError> {
        let Some(image) = &spec.isolation.image else {
            return Err(RunError::Spawn {
                program: "docker".into(),
                source: std::io::Error::other("no image was chosen for the container"),
            });
        };
        // The docker CLI's own environment: the worker's, without its
        // settings (they may hold the broker password); none of it reaches
        // the container, which gets `spec.env` as `--env`.
        let env = std::env::vars_os()
            .filter(|(name, _)| !name.as_bytes().starts_with(b"WARREN_"))
            .collect();
        let (args, container) = docker.launch(spec, image)?;
        let watch = spec
            .isolation
            .limits
            .disk
            .map(|_| Watch::disk(&container.checkout, spec.isolation.limits));
        Ok(Launch {
            program: "docker".into(),
            args,
            cwd: spec.cwd.clone(),
            env,
            guard: Guard {
                watch,
                hit: None,
                container: Some(container),
            },
        })
    }

    /// What to spawn for `spec`, and its guard.
    pub(crate) fn launch(&self, spec: &CommandSpec) -> Result<Launch, RunError> {
        if let Some(docker) = &self.docker {
            return self.launch_container(docker, spec);
        }
        let isolation = &spec.isolation;
        let (program, args) = match self.kind {
            ExecutorKind::Process => (spec.program.clone(), spec.args.clone()),
            ExecutorKind::Sandbox => match &self.sandbox {
                Some(sandbox) => sandbox.command_line(
                    &spec.cwd,
                    isolation.network,
                    spec.program.clone(),
                    spec.args.clone(),
                ),
                None => unreachable!("a sandbox executor is started with its sandbox"),
            },
            ExecutorKind::Container => unreachable!("a container executor is started with docker"),
        };
        let (program, args, watch) = if isolation.limits.is_none() {
            (program, args, None)
        } else {
            let (program, args, watch) = limits::wrap(
                self.enforcement,
                &isolation.name,
                isolation.limits,
                &spec.cwd,
                program,
                args,
            )
            .map_err(|source| RunError::Spawn {
                program: "the job's limits".into(),
                source,
            })?;
            (program, args, Some(watch))
        };
        Ok(Launch {
            program,
            args,
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            guard: Guard {
                watch,
                hit: None,
                container: None,
            },
        })
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

/// Watches one run's limits and cleans up after it (see the module's doc
/// for the order run.rs calls it in).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// The run's limits (cgroup, disk), if it has any.
    watch: Option<Watch>,
    /// The limit [`Guard::breached`] reported.
    hit: Option<LimitHit>,
    /// The run's container, for `docker kill`, `docker inspect` and
    /// `docker rm`.
    container: Option<ContainerGuard>,
}

impl Guard {
    /// Resolves when the run hits a limit; never when nothing is watched.
    pub(crate) async fn breached(&mut self) -> LimitHit {
        let watched = async {
            match &mut self.watch {
                Some(watch) => watch.breached().await,
                None => std::future::pending().await,
            }
        };
        let contained = async {
            match &mut self.container {
                Some(container) => container.breached().await,
                None => std::future::pending().await,
            }
        };
        let hit = tokio::select! {
            hit = watched => hit,
            hit = contained => hit,
        };
        self.hit = Some(hit);
        hit
    }

    /// The run must end (timeout, cancel, limit): stop what the process
    /// group's signals do not reach. Over a limit, every process of the run
    /// is killed at once, wherever it is.
    pub(crate) async fn stop(&mut self) {
        if let Some(container) = &mut self.container {
            // Over a limit the container gets no grace either.
            container.stop(self.hit.is_some()).await;
        }
        if self.hit.is_some()
            && let Some(watch) = &self.watch
        {
            watch.kill_all();
        }
    }

    /// After the process group is gone: clean up (what is left of the run
    /// is killed), and the limit that ended the run if one did.
    pub(crate) async fn finish(self) -> GuardEnd {
        // The container first: it is gone before the checkout is measured
        // and given back.
        let contained = match self.container {
            Some(container) => container.finish().await,
            None => ContainerEnd::default(),
        };
        let watched = match self.watch {
            Some(watch) => watch.finish().await,
            None => None,
        };
        GuardEnd {
            hit: self.hit.or(contained.hit).or(watched),
            never_started: contained.never_started,
        }
    }
}

/// What [`Guard::finish`] found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardEnd {
    /// The limit that ended the run, if one did.
    pub hit: Option<LimitHit>,
    /// The run's container never started: the engine refused it (`docker
    /// run` then exits 125, its message as the output); nothing of the job
    /// ran. Always false without a container.
    pub never_started: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::LiveSink;
    use crate::run::{Ending, Finished, adopt_orphans, run};
    use std::path::Path;
    use tokio_util::sync::CancellationToken;

    /// Runs `script` in `checkout` with `executor`, under `limits`.
    async fn run_script(
        executor: &Executor,
        checkout: &Path,
        script: &str,
        network: bool,
        limits: Limits,
    ) -> Finished {
        adopt_orphans();
        let spec = CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: checkout.to_path_buf(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            timeout: Duration::from_secs(60),
            kill_grace: Duration::from_millis(200),
            output_limit: 64 * 1024,
            live: LiveSink::disabled(),
            isolation: Isolation::new(network, limits),
        };
        run(&spec, executor, &CancellationToken::new())
            .await
            .unwrap()
    }

    fn sandbox(work: &Path, secret: &Path) -> Executor {
        Executor::start(&ExecutorConfig {
            kind: ExecutorKind::Sandbox,
            hidden: vec![work.to_path_buf(), secret.to_path_buf()],
            ..ExecutorConfig::default()
        })
        .expect("bwrap works on this machine")
    }

    #[tokio::test]
    async fn a_sandbox_shows_the_checkout_and_hides_the_rest() {
        let work = tempfile::tempdir().unwrap();
        let checkout = work.path().join("slot-0/repo");
        let other = work.path().join("slot-1/repo");
        std::fs::create_dir_all(&checkout).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("theirs"), "other slot").unwrap();
        let secret = work.path().join("worker.toml");
        std::fs::write(&secret, "password").unwrap();
        let executor = sandbox(work.path(), &secret);
        let script = format!(
            "echo mine > mine; cat '{}/theirs' || echo no-other; cat '{}' || echo no-secret; \
             ls /tmp | wc -l; echo $$; (cat /etc/shadow | head -c1 | wc -c); \
             cat /proc/self/status | grep CapEff",
            other.display(),
            secret.display()
        );
        let finished = run_script(&executor, &checkout, &script, false, Limits::default()).await;
        let text = finished.output.text;
        assert_eq!(finished.ending, Ending::Exited(0), "{text}");
        assert_eq!(
            std::fs::read_to_string(checkout.join("mine")).unwrap(),
            "mine\n"
        );
        assert!(
            text.contains("no-other") && !text.contains("other slot"),
            "{text}"
        );
        assert!(
            text.contains("no-secret") && !text.contains("password"),
            "{text}"
        );
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&"0"),
            "an empty /tmp, no /etc/shadow: {text}"
        );
        assert!(lines.contains(&"2"), "pid 2 in its own namespace: {text}");
    }

    #[tokio::test]
    async fn a_folder_shown_read_only_from_under_tmp_is_there_despite_the_private_tmp() {
        // tempdir() is under /tmp, which the sandbox replaces with its own.
        let work = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        std::fs::write(tools.path().join("tool"), "a tool").unwrap();
        let checkout = work.path().join("slot-0/repo");
        std::fs::create_dir_all(&checkout).unwrap();
        let executor = Executor::start(&ExecutorConfig {
            kind: ExecutorKind::Sandbox,
            hidden: vec![work.path().to_path_buf()],
            read_only: vec![tools.path().to_path_buf()],
            ..ExecutorConfig::default()
        })
        .expect("bwrap works on this machine");
        let script = format!(
            "cat '{0}/tool'; echo; touch '{0}/new' || echo read-only",
            tools.path().display()
        );
        let finished = run_script(&executor, &checkout, &script, false, Limits::default()).await;
        let text = finished.output.text;
        assert!(text.starts_with("a tool\n"), "{text}");
        assert!(text.contains("read-only"), "{text}");
        assert!(!tools.path().join("new").exists());
    }

    #[tokio::test]
    async fn a_sandbox_without_network_reaches_nothing_not_even_the_hosts_loopback() {
        let work = tempfile::tempdir().unwrap();
        let executor = sandbox(work.path(), &work.path().join("none"));
        // The broker every test here talks to listens on the host's loopback.
        let script = "bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null && echo connected || echo unreachable";
        let with = run_script(&executor, work.path(), script, true, Limits::default()).await;
        assert_eq!(with.output.text, "connected\n");
        let without = run_script(&executor, work.path(), script, false, Limits::default()).await;
        assert_eq!(without.output.text, "unreachable\n");
    }

    #[tokio::test]
    async fn limits_kill_with_a_verdict_that_says_which() {
        let work = tempfile::tempdir().unwrap();
        let executor = sandbox(work.path(), &work.path().join("none"));
        let limits = Limits {
            memory: Some(128 << 20),
            processes: Some(32),
            cpu_time: Some(Duration::from_secs(1)),
            disk: Some(20 << 20),
        };
        let cases = [
            (
                "dd if=/dev/zero of=/dev/null bs=1G count=1",
                LimitHit::Memory(128 << 20),
            ),
            ("while :; do sleep 100 & done", LimitHit::Processes(32)),
            (
                "while :; do :; done",
                LimitHit::CpuTime(Duration::from_secs(1)),
            ),
            (
                "dd if=/dev/zero of=big bs=1M count=1000; echo wrote",
                LimitHit::Disk(20 << 20),
            ),
        ];
        for (script, hit) in cases {
            let started = std::time::Instant::now();
            let finished = run_script(&executor, work.path(), script, true, limits).await;
            assert_eq!(
                finished.ending,
                Ending::LimitReached(hit),
                "{script}: {}",
                finished.output.text
            );
            assert!(started.elapsed() < Duration::from_secs(20), "{script}");
            let _ = std::fs::remove_file(work.path().join("big"));
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(512 << 20), "512 MiB");
        assert_eq!(size(2 << 30), "2 GiB");
        assert_eq!(size(1536 << 10), "1536 KiB");
        assert_eq!(size(1_500_000), "1.4 MiB");
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
