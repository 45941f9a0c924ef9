//! The worker's settings: `[broker]`, `[worker]` and `[log]` from the file
//! and `WARREN_*` variables, validated once into a [`WorkerConfig`].
//!
//! ```toml
//! [worker]
//! id = "build-1"              # WARREN_WORKER__ID (default: <hostname>-<8 random hex>)
//! slots = 1                   # WARREN_WORKER__SLOTS, 1..=64, also the prefetch
//! work_dir = "var/worker"     # WARREN_WORKER__WORK_DIR
//! allowed_repos = ["*"]       # WARREN_WORKER__ALLOWED_REPOS="api,web-*"
//! output_limit = 1048576      # WARREN_WORKER__OUTPUT_LIMIT, 1 KiB..=16 MiB
//! heartbeat_interval = "5s"   # WARREN_WORKER__HEARTBEAT_INTERVAL
//! kill_grace = "5s"           # WARREN_WORKER__KILL_GRACE
//! shutdown_grace = "10m"      # WARREN_WORKER__SHUTDOWN_GRACE
//! ack_deadline = "25m"        # WARREN_WORKER__ACK_DEADLINE
//! http_listen = "127.0.0.1:9187"  # WARREN_WORKER__HTTP_LISTEN (default: no HTTP server)
//! executor = "process"        # WARREN_WORKER__EXECUTOR: process | sandbox | container
//! allow_network = true        # false: no job gets the network (sandbox, container)
//! sandbox_bwrap = "bwrap"     # the bubblewrap program (sandbox)
//! sandbox_read_only = ["/opt/toolchains"]  # more folders a sandbox shows, read-only
//! max_memory = "4 GiB"        # per job, all its processes (default: no limit)
//! max_processes = 512         # processes and threads of a job at once
//! max_cpu_time = "1h"         # CPU time of all a job's processes
//! max_disk = "10 GiB"         # bytes a job may add to its checkout
//! allowed_images = ["debian:*"]   # WARREN_WORKER__ALLOWED_IMAGES (container)
//! default_image = "debian:bookworm-slim"  # WARREN_WORKER__DEFAULT_IMAGE (container)
//! ```
//!
//! A job's `warren.toml` may ask for lower limits (and no network), never
//! for more.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_common::bytes::ByteSize;
use warren_common::config::{
    BrokerConfig, BrokerSettings, ConfigError, ConfigSource, LogSettings, validate_dir,
};
use warren_common::git::{GitAuth, GitSettings};
use warren_common::ids::{ImageRef, RepoName, WorkerId};

use crate::executor::{ExecutorConfig, ExecutorKind, Limits};
use crate::images::ImagePolicy;

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: &[&str] = &["worker.allowed_repos", "worker.allowed_images"];

/// Most slots (concurrent jobs) one worker may run. Each slot keeps its own
/// clones and the prefetch is a `u16`; beyond 64, run more workers instead.
pub const MAX_SLOTS: i64 = 64;

/// Smallest output cap, in bytes: less would not even hold a stack trace.
pub const MIN_OUTPUT_LIMIT: i64 = 1024;

/// Largest output cap, in bytes. A result carries the output, and JSON
/// escaping can multiply it; 16 MiB keeps results far below the broker's
/// message size limit and [`warren_common::messages::MAX_BODY_BYTES`].
pub const MAX_OUTPUT_LIMIT: i64 = 16 * 1024 * 1024;

/// The whole configuration file of the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[broker]`: how to reach RabbitMQ.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// `[worker]`: what this worker does.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// `[log]`: how it logs.
    #[serde(default)]
    pub log: LogSettings,
    /// `[git]`: credentials for fetching repositories.
    #[serde(default)]
    pub git: GitSettings,
}

/// `[worker]` as written: types checked, values not yet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// The worker's identity in results and events; default `<hostname>-<8 hex>`.
    #[serde(default)]
    pub id: Option<String>,
    /// How many jobs run at once (also the broker prefetch).
    #[serde(default = "default_slots")]
    pub slots: i64,
    /// Where the clones live: `<work_dir>/slot-<n>/<repo>`.
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    /// Glob patterns on repository names; a job for any other repository is refused.
    #[serde(default = "default_allowed_repos")]
    pub allowed_repos: Vec<String>,
    /// Bytes of a command's output kept in its result (head and tail).
    #[serde(default = "default_output_limit")]
    pub output_limit: i64,
    /// How often a running job reports that it is alive.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Time between SIGTERM and SIGKILL when a job's processes are stopped.
    #[serde(default = "default_kill_grace", with = "humantime_serde")]
    pub kill_grace: Duration,
    /// On the first stop signal, how long the jobs in hand may take to finish.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A job still running after this long is acknowledged to the broker
    /// early: RabbitMQ takes back a delivery held longer than its
    /// `consumer_timeout` (30 min by default). From then on the dispatcher's
    /// lease, renewed by heartbeats, protects the job.
    #[serde(default = "default_ack_deadline", with = "humantime_serde")]
    pub ack_deadline: Duration,
    /// Where to serve `/healthz` and `/metrics` (`127.0.0.1:9187`). None
    /// by default: several workers may share a host, and each needs a port
    /// of its own.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// How a job's command is started: `process`, `sandbox` or `container`.
    #[serde(default = "default_executor")]
    pub executor: String,
    /// Whether jobs may use the network; `false` turns it off for every job
    /// (a job may turn it off for itself).
    #[serde(default = "default_allow_network")]
    pub allow_network: bool,
    /// The bubblewrap program (`sandbox`).
    #[serde(default = "default_bwrap")]
    pub sandbox_bwrap: PathBuf,
    /// Folders a sandbox shows read-only besides the system's.
    #[serde(default)]
    pub sandbox_read_only: Vec<PathBuf>,
    /// Most memory a job may use (all its processes).
    #[serde(default)]
    pub max_memory: Option<ByteSize>,
    /// Most processes (and threads) a job may have at once.
    #[serde(default)]
    pub max_processes: Option<i64>,
    /// Most CPU time a job may use (all its processes).
    #[serde(default, with = "humantime_serde")]
    pub max_cpu_time: Option<Duration>,
    /// Most bytes a job may add to its checkout.
    #[serde(default)]
    pub max_disk: Option<ByteSize>,
    /// Glob patterns on image names a job may ask for (`image` in
    /// `warren.toml`), with the container executor; none by default.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// The image of a job that names none (container executor).
    #[serde(default)]
    pub default_image: Option<String>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            id: None,
            slots: default_slots(),
            work_dir: default_work_dir(),
            allowed_repos: default_allowed_repos(),
            output_limit: default_output_limit(),
            heartbeat_interval: default_heartbeat_interval(),
            kill_grace: default_kill_grace(),
            shutdown_grace: default_shutdown_grace(),
            ack_deadline: default_ack_deadline(),
            http_listen: None,
            executor: default_executor(),
            allow_network: default_allow_network(),
            sandbox_bwrap: default_bwrap(),
            sandbox_read_only: Vec::new(),
            max_memory: None,
            max_processes: None,
            max_cpu_time: None,
            max_disk: None,
            allowed_images: Vec::new(),
            default_image: None,
        }
    }
}

fn default_executor() -> String {
    ExecutorKind::Process.name().into()
}
fn default_allow_network() -> bool {
    true
}
fn default_bwrap() -> PathBuf {
    PathBuf::from("bwrap")
}

fn default_slots() -> i64 {
    1
}
fn default_work_dir() -> PathBuf {
    PathBuf::from("var/worker")
}
fn default_allowed_repos() -> Vec<String> {
    vec!["*".into()]
}
fn default_output_limit() -> i64 {
    1024 * 1024
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_kill_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10 * 60)
}
/// Five minutes under RabbitMQ's default `consumer_timeout` of 30 minutes.
fn default_ack_deadline() -> Duration {
    Duration::from_secs(25 * 60)
}

/// The validated configuration `run` works with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker and the names of its queues.
    pub broker: BrokerConfig,
    /// This worker's identity.
    pub id: WorkerId,
    /// The host name reported in results and events.
    pub host: String,
    /// Concurrent jobs, and the prefetch of the jobs consumer.
    pub slots: u16,
    /// Root of the slot folders.
    pub work_dir: PathBuf,
    /// Which repositories this worker runs jobs for.
    pub allowed_repos: AllowList,
    /// Bytes of output kept per job.
    pub output_limit: usize,
    /// Interval of `heartbeat` events while a job is held.
    pub heartbeat_interval: Duration,
    /// SIGTERM → SIGKILL delay for a job's process group.
    pub kill_grace: Duration,
    /// Time to finish the jobs in hand after the first stop signal.
    pub shutdown_grace: Duration,
    /// When a job still running is acknowledged to the broker early.
    pub ack_deadline: Duration,
    /// The address of the HTTP server (health and metrics), if any. Port 0
    /// picks a free port (the log says which).
    pub http_listen: Option<SocketAddr>,
    /// Credentials for fetches (`[git]`; set by [`load`]).
    pub git: GitAuth,
    /// How jobs' commands are started (`worker.executor`).
    pub executor: ExecutorConfig,
    /// Whether jobs may use the network (`worker.allow_network`).
    pub allow_network: bool,
    /// The most a job may use (`worker.max_*`).
    pub limits: Limits,
}

/// Reads `path` (if any) and the environment, and validates everything.
/// Returns the worker's config and the `[log]` table for the subscriber.
pub fn load(path: Option<&Path>) -> Result<(WorkerConfig, LogSettings), ConfigError> {
    let (settings, source) = warren_common::config::load::<Settings>(path, LIST_KEYS)?;
    let broker = BrokerConfig::from_settings(&settings.broker, &source)?;
    let mut config = WorkerConfig::from_settings(broker, &settings.worker, &source)?;
    config.git = GitAuth::from_settings(&settings.git, &source)?;
    // What a sandbox must not show: this file and the credentials it names
    // (the work folder is added by `from_settings`).
    let secrets = [
        path.map(Path::to_path_buf),
        settings.git.ssh_key.clone(),
        settings.git.https_token_file.clone(),
    ];
    config
        .executor
        .hidden
        .extend(secrets.into_iter().flatten().map(|p| absolute(&p)));
    Ok((config, settings.log))
}

impl WorkerConfig {
    /// Validates `[worker]` (found in `source`) with an already valid broker.
    pub fn from_settings(
        broker: BrokerConfig,
        settings: &WorkerSettings,
        source: &ConfigSource,
    ) -> Result<Self, ConfigError> {
        let id = match &settings.id {
            Some(id) => WorkerId::parse(id).map_err(|e| source.invalid("worker.id", e))?,
            None => default_worker_id(),
        };
        let slots = u16::try_from(settings.slots)
            .ok()
            .filter(|slots| (1..=MAX_SLOTS).contains(&i64::from(*slots)))
            .ok_or_else(|| {
                source.invalid(
                    "worker.slots",
                    format!("must be between 1 and {MAX_SLOTS}, got {}", settings.slots),
                )
            })?;
        let work_dir = validate_dir(&settings.work_dir, "worker.work_dir", source)?;
        let allowed_repos = AllowList::new(&settings.allowed_repos)
            .map_err(|message| source.invalid("worker.allowed_repos", message))?;
        if !(MIN_OUTPUT_LIMIT..=MAX_OUTPUT_LIMIT).contains(&settings.output_limit) {
            return Err(source.invalid(
                "worker.output_limit",
                format!(
                    "must be between {MIN_OUTPUT_LIMIT} and {MAX_OUTPUT_LIMIT} bytes, got {}",
                    settings.output_limit
                ),
            ));
        }
        let output_limit = usize::try_from(settings.output_limit)
            .map_err(|_| source.invalid("worker.output_limit", "does not fit this machine"))?;
        check_duration(
            source,
            "worker.heartbeat_interval",
            settings.heartbeat_interval,
            Duration::from_millis(100),
            Duration::from_secs(10 * 60),
        )?;
        check_duration(
            source,
            "worker.kill_grace",
            settings.kill_grace,
            Duration::ZERO,
            Duration::from_secs(10 * 60),
        )?;
        check_duration(
            source,
            "worker.shutdown_grace",
            settings.shutdown_grace,
            Duration::ZERO,
            Duration::from_secs(24 * 60 * 60),
        )?;
        check_duration(
            source,
            "worker.ack_deadline",
            settings.ack_deadline,
            Duration::from_millis(100),
            Duration::from_secs(24 * 60 * 60),
        )?;
        let http_listen = settings
            .http_listen
            .as_deref()
            .map(|address| {
                address.trim().parse::<SocketAddr>().map_err(|_| {
                    source.invalid(
                        "worker.http_listen",
                        format!(
                            "{address:?} is not an IP address and port (\"127.0.0.1:9187\", \"[::1]:9187\")"
                        ),
                    )
                })
            })
            .transpose()?;
        let kind = ExecutorKind::parse(&settings.executor).ok_or_else(|| {
            source.invalid(
                "worker.executor",
                format!(
                    "{:?} is not an executor (one of {})",
                    settings.executor,
                    ExecutorKind::NAMES.join(", ")
                ),
            )
        })?;
        let default_image = settings
            .default_image
            .as_deref()
            .map(|image| {
                ImageRef::parse(image).map_err(|e| source.invalid("worker.default_image", e))
            })
            .transpose()?;
        let images = ImagePolicy::new(&settings.allowed_images, default_image)
            .map_err(|message| source.invalid("worker.allowed_images", message))?;
        let executor = ExecutorConfig {
            kind,
            bwrap: settings.sandbox_bwrap.clone(),
            read_only: settings
                .sandbox_read_only
                .iter()
                .map(|p| absolute(p))
                .collect(),
            hidden: vec![absolute(&work_dir)],
            images,
            work_dir: absolute(&work_dir),
        };
        let limits = limits(settings, source)?;
        Ok(Self {
            broker,
            id,
            host: warren_common::hostname(),
            slots,
            work_dir,
            allowed_repos,
            output_limit,
            heartbeat_interval: settings.heartbeat_interval,
            kill_grace: settings.kill_grace,
            shutdown_grace: settings.shutdown_grace,
            ack_deadline: settings.ack_deadline,
            http_listen,
            git: GitAuth::default(),
            executor,
            allow_network: settings.allow_network,
            limits,
        })
    }
}

/// `worker.max_*`, each checked: sizes readable and above nothing.
fn limits(settings: &WorkerSettings, source: &ConfigSource) -> Result<Limits, ConfigError> {
    let size = |key: &str, value: &Option<ByteSize>| -> Result<Option<u64>, ConfigError> {
        value
            .as_ref()
            .map(|value| match value.bytes() {
                Ok(0) => Err(source.invalid(key, "must be more than 0")),
                Ok(bytes) => Ok(bytes),
                Err(message) => Err(source.invalid(key, message)),
            })
            .transpose()
    };
    let processes = settings
        .max_processes
        .map(|n| {
            u64::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                source.invalid(
                    "worker.max_processes",
                    format!("must be 1 or more, got {n}"),
                )
            })
        })
        .transpose()?;
    if let Some(cpu) = settings.max_cpu_time {
        check_duration(
            source,
            "worker.max_cpu_time",
            cpu,
            Duration::from_secs(1),
            Duration::from_secs(7 * 24 * 60 * 60),
        )?;
    }
    Ok(Limits {
        memory: size("worker.max_memory", &settings.max_memory)?,
        processes,
        cpu_time: settings.max_cpu_time,
        disk: size("worker.max_disk", &settings.max_disk)?,
    })
}

/// `path` made absolute against the current folder (as the worker sees it),
/// so that a sandbox can cover it.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn check_duration(
    source: &ConfigSource,
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(source.invalid(
            key,
            format!(
                "must be between {} and {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

/// `<hostname>-<8 random hex>`, made valid: characters a worker id does not
/// allow become `-`, and the host part is shortened to fit.
fn default_worker_id() -> WorkerId {
    let host: String = warren_common::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let id = format!("{host}-{:08x}", fastrand::u32(..));
    // The sanitised host name is at most 100 allowed characters, so this only
    // fails on an empty host name, which `hostname()` never returns.
    WorkerId::parse(&id).unwrap_or_else(|_| {
        WorkerId::parse(&format!("worker-{:08x}", fastrand::u32(..))).expect("valid id")
    })
}

/// The repositories a worker accepts jobs for: glob patterns on the name.
#[derive(Clone)]
pub struct AllowList {
    patterns: Vec<String>,
    set: GlobSet,
}

impl AllowList {
    /// Compiles `patterns` (`*`, `api`, `web-*`); refuses an empty list and
    /// invalid globs, with a message for people.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err(
                "must name at least one pattern (use [\"*\"] to accept every repository)".into(),
            );
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// Whether jobs for `repo` may run here.
    pub fn allows(&self, repo: &RepoName) -> bool {
        self.set.is_match(repo.as_str())
    }

    /// The patterns as configured.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use warren_common::config::LogFormat;

    fn write(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    fn load_str(contents: &str) -> Result<(WorkerConfig, LogSettings), ConfigError> {
        let file = write(contents);
        load(Some(file.path()))
    }

    #[test]
    fn defaults_are_valid() {
        let (config, _) = load_str("").unwrap();
        assert_eq!(config.slots, 1);
        assert_eq!(config.output_limit, 1024 * 1024);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.kill_grace, Duration::from_secs(5));
        assert_eq!(config.shutdown_grace, Duration::from_secs(600));
        assert_eq!(config.work_dir, PathBuf::from("var/worker"));
        assert!(
            config
                .allowed_repos
                .allows(&RepoName::parse("anything").unwrap())
        );
        assert!(config.id.as_str().len() > 9, "{}", config.id);
        assert_eq!(config.http_listen, None, "no HTTP server unless asked");
        assert_eq!(config.executor.kind, ExecutorKind::Process);
        assert!(config.allow_network);
        assert!(config.limits.is_none(), "no limits unless asked");
    }

    #[test]
    fn logging_defaults_to_info_without_a_log_table() {
        let (_, log) = load_str("").unwrap();
        assert_eq!(
            (log.format, log.level.as_str()),
            (LogFormat::Text, warren_common::config::DEFAULT_LOG_LEVEL)
        );
        let (_, log) = load_str("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(
            (log.format, log.level.as_str()),
            (LogFormat::Json, warren_common::config::DEFAULT_LOG_LEVEL)
        );
    }

    #[test]
    fn a_full_file_is_read() {
        let (config, _) = load_str(
            r#"
            [worker]
            id = "build-1"
            slots = 4
            work_dir = "/tmp/w"
            allowed_repos = ["api", "web-*"]
            output_limit = 2048
            heartbeat_interval = "2s"
            kill_grace = "1s"
            shutdown_grace = "1m"
            http_listen = "127.0.0.1:9187"
            executor = "sandbox"
            allow_network = false
            max_memory = "512 MiB"
            max_processes = 64
            max_cpu_time = "1m"
            max_disk = 1048576
            "#,
        )
        .unwrap();
        assert_eq!(config.executor.kind, ExecutorKind::Sandbox);
        assert!(!config.allow_network);
        assert_eq!(
            config.limits,
            Limits {
                memory: Some(512 << 20),
                processes: Some(64),
                cpu_time: Some(Duration::from_secs(60)),
                disk: Some(1 << 20),
            }
        );
        assert!(config.executor.hidden.contains(&PathBuf::from("/tmp/w")));
        assert_eq!(config.id.as_str(), "build-1");
        assert_eq!(
            config.http_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9187)))
        );
        assert_eq!(config.slots, 4);
        assert_eq!(config.output_limit, 2048);
        let allows = |name: &str| config.allowed_repos.allows(&RepoName::parse(name).unwrap());
        assert!(allows("api") && allows("web-app"));
        assert!(!allows("apis") && !allows("secret"));
    }

    #[test]
    fn invalid_values_name_the_key_and_the_variable() {
        let cases = [
            ("slots = 0", "worker.slots", "WARREN_WORKER__SLOTS"),
            ("slots = 65", "worker.slots", "WARREN_WORKER__SLOTS"),
            ("slots = -1", "worker.slots", "WARREN_WORKER__SLOTS"),
            ("id = \"a b\"", "worker.id", "WARREN_WORKER__ID"),
            (
                "work_dir = \"\"",
                "worker.work_dir",
                "WARREN_WORKER__WORK_DIR",
            ),
            (
                "allowed_repos = []",
                "worker.allowed_repos",
                "WARREN_WORKER__ALLOWED_REPOS",
            ),
            (
                "allowed_repos = [\"a[\"]",
                "worker.allowed_repos",
                "WARREN_WORKER__ALLOWED_REPOS",
            ),
            (
                "output_limit = 10",
                "worker.output_limit",
                "WARREN_WORKER__OUTPUT_LIMIT",
            ),
            (
                "output_limit = 99999999999",
                "worker.output_limit",
                "WARREN_WORKER__OUTPUT_LIMIT",
            ),
            (
                "heartbeat_interval = \"1ms\"",
                "worker.heartbeat_interval",
                "WARREN_WORKER__HEARTBEAT_INTERVAL",
            ),
            (
                "kill_grace = \"1h\"",
                "worker.kill_grace",
                "WARREN_WORKER__KILL_GRACE",
            ),
            (
                "shutdown_grace = \"30d\"",
                "worker.shutdown_grace",
                "WARREN_WORKER__SHUTDOWN_GRACE",
            ),
            (
                "http_listen = \"localhost\"",
                "worker.http_listen",
                "WARREN_WORKER__HTTP_LISTEN",
            ),
            (
                "http_listen = \"127.0.0.1:99999\"",
                "worker.http_listen",
                "WARREN_WORKER__HTTP_LISTEN",
            ),
            (
                "http_listen = \"\"",
                "worker.http_listen",
                "WARREN_WORKER__HTTP_LISTEN",
            ),
            (
                "executor = \"chroot\"",
                "worker.executor",
                "WARREN_WORKER__EXECUTOR",
            ),
            (
                "allowed_images = [\"a[\"]",
                "worker.allowed_images",
                "WARREN_WORKER__ALLOWED_IMAGES",
            ),
            (
                "default_image = \"--privileged\"",
                "worker.default_image",
                "WARREN_WORKER__DEFAULT_IMAGE",
            ),
            (
                "max_memory = \"2 GB\"",
                "worker.max_memory",
                "WARREN_WORKER__MAX_MEMORY",
            ),
            ("max_disk = 0", "worker.max_disk", "WARREN_WORKER__MAX_DISK"),
            (
                "max_processes = 0",
                "worker.max_processes",
                "WARREN_WORKER__MAX_PROCESSES",
            ),
            (
                "max_cpu_time = \"10ms\"",
                "worker.max_cpu_time",
                "WARREN_WORKER__MAX_CPU_TIME",
            ),
        ];
        for (line, key, env) in cases {
            let err = load_str(&format!("[worker]\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(env), "{line}: {err}");
        }
    }

    #[test]
    fn load_errors_name_the_key() {
        let cases = [
            ("[worker]\nslot = 1\n", "slot"),
            ("[worker]\nslots = \"many\"\n", "slots"),
            ("[worker]\nkill_grace = \"soon\"\n", "kill_grace"),
            ("[workers]\n", "workers"),
        ];
        for (contents, key) in cases {
            let err = load_str(contents).unwrap_err().to_string();
            assert!(err.contains(key), "{contents}: {err}");
        }
    }

    #[test]
    fn a_broker_error_comes_first_and_names_its_key() {
        let err = load_str("[broker]\nprefix = \"a b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker.prefix"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/worker.toml");
        let (config, _) = load(Some(&path)).unwrap();
        assert_eq!(config.broker.topology.prefix(), "warren");
    }
}
