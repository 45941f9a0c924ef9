//! The dispatcher's configuration: `[broker]`, `[dispatcher]`, `[defaults]`,
//! `[log]`, read from a TOML file and `WARREN_*` variables, validated once.

use crate::spec::TestSpec;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_common::config::{
    BrokerConfig, BrokerSettings, ConfigError, ConfigSource, LogSettings, load, read_secret_file,
    validate_dir,
};
use warren_common::git::{GitAuth, GitSettings};
use warren_common::messages::{MAX_TIMEOUT_MS, TestCommand};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub broker: BrokerSettings,
    #[serde(default)]
    pub dispatcher: DispatcherSettings,
    #[serde(default)]
    pub defaults: DefaultsSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub notify: NotifySettings,
    #[serde(default)]
    pub git: GitSettings,
}

/// `[http]`: the API, the status page and the metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on (the default is this machine only).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A file holding the token that retry and cancel must carry
    /// (`Authorization: Bearer …`); without it they are open to anyone who
    /// reaches `listen`. Reads are never protected.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// How often the workers page's queue and fleet picture takes a sample
    /// (jobs waiting, busy slots); the last hour of samples is kept in memory.
    #[serde(default = "default_fleet_sample_interval", with = "humantime_serde")]
    pub fleet_sample_interval: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token_file: None,
            fleet_sample_interval: default_fleet_sample_interval(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_fleet_sample_interval() -> Duration {
    Duration::from_secs(10)
}

/// `[notify]`: webhooks called when a commit has its verdict.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// URLs that get a POST with a JSON summary of each finished commit.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Longest wait for one webhook call.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Calls after a failed one (with backoff), per webhook and commit.
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            timeout: default_webhook_timeout(),
            retries: default_webhook_retries(),
        }
    }
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_webhook_retries() -> u32 {
    3
}

/// `[dispatcher]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSettings {
    /// The SQLite database with commits, jobs and attempts.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// Where `<repo>/<sha>.json` result files are written.
    #[serde(default = "default_results_dir")]
    pub results_dir: PathBuf,
    /// Bare mirrors used to read `warren.toml` from each commit's tree.
    #[serde(default = "default_mirror_dir")]
    pub mirror_dir: PathBuf,
    /// Unacknowledged deliveries per consumer.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// `full` (default: every recorded result survives a power cut) or
    /// `normal` (survives a crash of the process, not of the machine).
    #[serde(default)]
    pub sync: SyncMode,
    /// A run not heard from (no started, heartbeat or result) for this long
    /// is lost: its job is published again. Several worker heartbeat
    /// intervals (5 s by default), so that one lost event does not count.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Lost runs of one job before it gets an `error` verdict.
    #[serde(default = "default_max_lost_runs")]
    pub max_lost_runs: u32,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            database: default_database(),
            results_dir: default_results_dir(),
            mirror_dir: default_mirror_dir(),
            prefetch: default_prefetch(),
            sync: SyncMode::default(),
            lease: default_lease(),
            max_lost_runs: default_max_lost_runs(),
        }
    }
}

/// SQLite `synchronous` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    #[default]
    Full,
    Normal,
}

fn default_database() -> PathBuf {
    "var/dispatcher/warren.db".into()
}
fn default_results_dir() -> PathBuf {
    "var/results".into()
}
fn default_mirror_dir() -> PathBuf {
    "var/dispatcher/mirrors".into()
}
fn default_prefetch() -> u16 {
    64
}
fn default_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_max_lost_runs() -> u32 {
    3
}

/// `[defaults]`: what a commit gets when its `warren.toml` does not say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSettings {
    /// Command for commits without a `warren.toml` (or without `command`).
    #[serde(default)]
    pub command: Option<TestCommand>,
    /// Job timeout when `warren.toml` gives none.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest timeout a `warren.toml` may ask for.
    #[serde(default = "default_max_timeout", with = "humantime_serde")]
    pub max_timeout: Duration,
}

impl Default for DefaultsSettings {
    fn default() -> Self {
        Self {
            command: None,
            timeout: default_timeout(),
            max_timeout: default_max_timeout(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_max_timeout() -> Duration {
    Duration::from_secs(60 * 60)
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub broker: BrokerConfig,
    pub database: PathBuf,
    pub results_dir: PathBuf,
    pub mirror_dir: PathBuf,
    pub prefetch: u16,
    pub sync: SyncMode,
    pub lease: Duration,
    pub max_lost_runs: u32,
    /// Defaults applied to every commit's `warren.toml`.
    pub defaults: TestSpec,
    /// Longest timeout a `warren.toml` may ask for.
    pub max_timeout: Duration,
    pub log: LogSettings,
    /// Where the API and the page listen.
    pub http_listen: std::net::SocketAddr,
    /// The token retry and cancel must carry, if any.
    pub http_token: Option<SecretString>,
    /// How often the queue and the fleet are sampled for the workers page.
    pub fleet_sample_interval: Duration,
    /// Webhooks.
    pub webhooks: Vec<String>,
    pub webhook_timeout: Duration,
    pub webhook_retries: u32,
    /// Credentials for fetching repositories (`[git]`).
    pub git: GitAuth,
}

impl DispatcherConfig {
    /// Reads and validates `path` (if any) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (settings, source) = load::<Settings>(path, &["notify.webhooks"])?;
        Self::from_settings(settings, &source)
    }

    /// Validates settings read from `source`.
    pub fn from_settings(settings: Settings, source: &ConfigSource) -> Result<Self, ConfigError> {
        let broker = BrokerConfig::from_settings(&settings.broker, source)?;
        let dispatcher = settings.dispatcher;
        if dispatcher.prefetch == 0 {
            return Err(source.invalid("dispatcher.prefetch", "must be at least 1"));
        }
        if dispatcher.lease < Duration::from_secs(1) || dispatcher.lease > Duration::from_secs(3600)
        {
            return Err(source.invalid("dispatcher.lease", "must be between 1s and 1h"));
        }
        if !(1..=100).contains(&dispatcher.max_lost_runs) {
            return Err(source.invalid("dispatcher.max_lost_runs", "must be between 1 and 100"));
        }
        let defaults = settings.defaults;
        let max_timeout_ms = duration_ms(defaults.max_timeout);
        if max_timeout_ms == 0 || max_timeout_ms > MAX_TIMEOUT_MS {
            return Err(source.invalid("defaults.max_timeout", "must be between 1ms and 24h"));
        }
        if defaults.timeout.is_zero() || defaults.timeout > defaults.max_timeout {
            return Err(source.invalid(
                "defaults.timeout",
                format!(
                    "must be more than 0 and at most defaults.max_timeout ({})",
                    humantime::format_duration(defaults.max_timeout)
                ),
            ));
        }
        let http_listen = settings.http.listen.parse().map_err(|_| {
            source.invalid(
                "http.listen",
                format!(
                    "expected an address such as 127.0.0.1:8080, got {:?}",
                    settings.http.listen
                ),
            )
        })?;
        let fleet_sample_interval = settings.http.fleet_sample_interval;
        if fleet_sample_interval < Duration::from_secs(1)
            || fleet_sample_interval > Duration::from_secs(300)
        {
            return Err(source.invalid("http.fleet_sample_interval", "must be between 1s and 5m"));
        }
        for url in &settings.notify.webhooks {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(source.invalid(
                    "notify.webhooks",
                    format!(
                        "expected http:// or https:// URLs, got {:?}",
                        warren_common::config::safe_url(url)
                    ),
                ));
            }
        }
        if settings.notify.timeout.is_zero() || settings.notify.timeout > Duration::from_secs(300) {
            return Err(source.invalid("notify.timeout", "must be between 1ms and 5m"));
        }
        if settings.notify.retries > 20 {
            return Err(source.invalid("notify.retries", "must be at most 20"));
        }
        if let Some(command) = &defaults.command {
            command
                .validate()
                .map_err(|message| source.invalid("defaults.command", message))?;
        }
        Ok(Self {
            broker,
            database: validate_dir(&dispatcher.database, "dispatcher.database", source)?,
            results_dir: validate_dir(&dispatcher.results_dir, "dispatcher.results_dir", source)?,
            mirror_dir: validate_dir(&dispatcher.mirror_dir, "dispatcher.mirror_dir", source)?,
            prefetch: dispatcher.prefetch,
            sync: dispatcher.sync,
            lease: dispatcher.lease,
            max_lost_runs: dispatcher.max_lost_runs,
            defaults: TestSpec {
                command: defaults.command,
                timeout: defaults.timeout,
                env: Default::default(),
            },
            max_timeout: defaults.max_timeout,
            log: settings.log,
            http_listen,
            http_token: settings
                .http
                .token_file
                .as_deref()
                .map(|path| read_secret_file(path, "http.token_file", source))
                .transpose()?,
            fleet_sample_interval,
            webhooks: settings.notify.webhooks,
            webhook_timeout: settings.notify.timeout,
            webhook_retries: settings.notify.retries,
            git: GitAuth::from_settings(&settings.git, source)?,
        })
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(contents: &str) -> Result<DispatcherConfig, ConfigError> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        DispatcherConfig::load(Some(file.path()))
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dispatcher.toml");
        let config = DispatcherConfig::load(Some(&path)).unwrap();
        assert_eq!(config.broker.topology.prefix(), "warren");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[dispatcher]\nprefetch = 0\n", "dispatcher.prefetch"),
            ("[dispatcher]\nlease = \"10ms\"\n", "dispatcher.lease"),
            (
                "[dispatcher]\nmax_lost_runs = 0\n",
                "dispatcher.max_lost_runs",
            ),
            ("[defaults]\ntimeout = \"3h\"\n", "defaults.timeout"),
            ("[defaults]\ncommand = \"\"\n", "defaults.command"),
            ("[defaults]\ntimeout = \"soon\"\n", "timeout"),
            ("[dispatcher]\nresults = \"x\"\n", "results"),
            (
                "[http]\nfleet_sample_interval = \"10ms\"\n",
                "http.fleet_sample_interval",
            ),
        ];
        for (contents, key) in cases {
            let err = load_str(contents).unwrap_err().to_string();
            assert!(err.contains(key), "expected {key:?} in {err:?}");
        }
    }

    #[test]
    fn commands_may_be_a_string_or_a_list() {
        let config = load_str("[defaults]\ncommand = [\"make\", \"test\"]\n").unwrap();
        assert_eq!(
            config.defaults.command,
            Some(TestCommand::Argv(vec!["make".into(), "test".into()]))
        );
    }
}
