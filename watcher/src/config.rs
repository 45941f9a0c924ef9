//! The watcher's settings: `[broker]`, `[watcher]`, one `[repos.<name>]`
//! table per repository and `[log]`, read from a TOML file and `WARREN_*`
//! environment variables, then validated once into a [`WatcherConfig`].
//!
//! Environment names follow the key path (`repos.api.url` is
//! `WARREN_REPOS__API__URL`); `branches` takes a comma-separated list
//! (`WARREN_REPOS__API__BRANCHES=main,release/*`). The environment can only
//! address repositories whose name is lower case (the variable names are
//! read case-insensitively), and can add a repository that the file does not
//! have when it sets at least its `url` and `branches`.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_common::config::{
    BrokerConfig, BrokerSettings, ConfigError, ConfigSource, LogSettings, load, validate_dir,
};
use warren_common::git::{GitAuth, GitSettings};
use warren_common::ids::{BranchName, RepoName, RepoUrl};

/// Shortest poll interval: 100 ms. Polling a local mirror faster than this
/// only burns CPU; use `--once` from a hook for immediate detection.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Longest poll interval: one hour. A slower poll is almost certainly a typo
/// (`5h` for `5s`), and a hook can always make detection immediate.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Poll interval when a repository says nothing: 5 s, like the system Warren
/// replaces, but publishing every commit instead of only the newest.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Most commits before the tip that `backfill` may ask for on a branch's
/// first sight (a number of commits). Beyond that, the dispatcher would be
/// flooded with history nobody asked to test.
pub const MAX_BACKFILL: u32 = 10_000;

/// Where mirrors and cursors live when `[watcher] state_dir` is not set
/// (relative to the directory the watcher starts in).
pub const DEFAULT_STATE_DIR: &str = "var/watcher";

/// The whole file, as written (types checked, values not yet).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[broker]`.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// `[watcher]`.
    #[serde(default)]
    pub watcher: WatcherSettings,
    /// `[repos.<name>]`, by repository name.
    #[serde(default)]
    pub repos: BTreeMap<String, RepoSettings>,
    /// `[log]`.
    #[serde(default)]
    pub log: LogSettings,
    /// `[git]`: credentials for fetching.
    #[serde(default)]
    pub git: GitSettings,
}

/// `[watcher]`: the watcher's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherSettings {
    /// Where the mirrors, the cursor file and the lock files live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for WatcherSettings {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// `[repos.<name>]`: one watched repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// Where to fetch from: a URL or a local path.
    pub url: String,
    /// Branch names or globs (`*` stays within one `/` segment, `**` crosses them).
    pub branches: Vec<String>,
    /// Time between two polls of this repository.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Commits before the tip to publish the first time a branch is seen.
    #[serde(default)]
    pub backfill: u32,
    /// Follow only first parents (a merge publishes itself, not the merged commits).
    #[serde(default)]
    pub first_parent: bool,
}

fn default_poll_interval() -> Duration {
    DEFAULT_POLL_INTERVAL
}

/// The validated configuration the watcher runs with.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// How to reach the broker, and the names of its exchanges and queues.
    pub broker: BrokerConfig,
    /// Where mirrors, cursors and locks live.
    pub state_dir: PathBuf,
    /// The watched repositories, by name.
    pub repos: Vec<RepoConfig>,
    /// How to log.
    pub log: LogSettings,
}

/// One validated repository.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// The repository's name: the routing key, the mirror's folder name.
    pub name: RepoName,
    /// Where the mirror fetches from; also the `url` of every commit event.
    pub url: RepoUrl,
    /// Which branches are watched.
    pub branches: BranchFilter,
    /// Time between two polls.
    pub poll_interval: Duration,
    /// Commits before the tip published on a branch's first sight.
    pub backfill: u32,
    /// Follow first parents only.
    pub first_parent: bool,
    /// Credentials for the mirror's fetches (`[git]`).
    pub git: GitAuth,
}

/// The branch names and globs of one repository.
#[derive(Debug, Clone)]
pub struct BranchFilter {
    patterns: Vec<String>,
    set: GlobSet,
}

impl BranchFilter {
    /// Compiles `patterns`: `*`, `?` and `[..]` do not match `/`, `**` does.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err("name at least one branch or glob (for example [\"main\"])".into());
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let is_glob = pattern.contains(['*', '?', '[', '{']);
            if !is_glob {
                // A plain name must be a valid branch name, so a typo such as
                // a trailing space is reported instead of never matching.
                BranchName::parse(pattern).map_err(|error| error.to_string())?;
            } else if pattern.is_empty() || pattern.contains(char::is_whitespace) {
                return Err(format!(
                    "glob {pattern:?} must not be empty or contain spaces"
                ));
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|error| format!("glob {pattern:?}: {error}"))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|error| format!("branch globs: {error}"))?;
        Ok(Self {
            patterns: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            set,
        })
    }

    /// Whether `branch` is watched.
    pub fn matches(&self, branch: &BranchName) -> bool {
        self.set.is_match(branch.as_str())
    }

    /// The patterns as configured.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Only the repository names, to learn which environment keys are lists
/// before the real load (see [`WatcherConfig::load`]).
#[derive(Deserialize)]
struct RepoNames {
    #[serde(default)]
    repos: BTreeMap<String, IgnoredAny>,
}

impl WatcherConfig {
    /// Reads `path` (if given) and the environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        // `load` must be told up front which environment keys are lists, and
        // those keys depend on the repository names, so a first pass learns
        // the names. (Its other values are ignored, list or not.)
        let (names, source) = load::<RepoNames>(path, &[])?;
        if names.repos.is_empty() {
            return Err(no_repository(&source));
        }
        let list_keys: Vec<String> = names
            .repos
            .keys()
            .map(|name| format!("repos.{name}.branches"))
            .collect();
        let list_keys: Vec<&str> = list_keys.iter().map(String::as_str).collect();
        let (settings, source) = load::<Settings>(path, &list_keys)?;
        Self::from_settings(&settings, &source)
    }

    /// Validates `settings`, found in `source`; every error names its key.
    pub fn from_settings(settings: &Settings, source: &ConfigSource) -> Result<Self, ConfigError> {
        let broker = BrokerConfig::from_settings(&settings.broker, source)?;
        let state_dir = validate_dir(&settings.watcher.state_dir, "watcher.state_dir", source)?;
        if settings.repos.is_empty() {
            return Err(no_repository(source));
        }
        let mut repos = settings
            .repos
            .iter()
            .map(|(name, repo)| validate_repo(name, repo, source))
            .collect::<Result<Vec<_>, _>>()?;
        // One set of credentials for every repository, for now.
        let git = GitAuth::from_settings(&settings.git, source)?;
        for repo in &mut repos {
            repo.git = git.clone();
        }
        Ok(Self {
            broker,
            state_dir,
            repos,
            log: settings.log.clone(),
        })
    }

    /// The repository called `name`, if configured.
    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.iter().find(|repo| repo.name.as_str() == name)
    }
}

fn no_repository(source: &ConfigSource) -> ConfigError {
    source.invalid(
        "repos",
        "at least one repository is required: add a [repos.<name>] table with `url` and \
         `branches` (or set WARREN_REPOS__<NAME>__URL and WARREN_REPOS__<NAME>__BRANCHES)",
    )
}

fn validate_repo(
    name: &str,
    settings: &RepoSettings,
    source: &ConfigSource,
) -> Result<RepoConfig, ConfigError> {
    let key = |field: &str| format!("repos.{name}.{field}");
    let repo_name =
        RepoName::parse(name).map_err(|error| source.invalid(&format!("repos.{name}"), error))?;
    let url = RepoUrl::parse(&settings.url).map_err(|error| source.invalid(&key("url"), error))?;
    check_transport(&url).map_err(|message| source.invalid(&key("url"), message))?;
    let branches =
        BranchFilter::new(&settings.branches).map_err(|m| source.invalid(&key("branches"), m))?;
    if !(MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&settings.poll_interval) {
        return Err(source.invalid(
            &key("poll_interval"),
            format!(
                "must be between 100ms and 1h, got {}",
                humantime::format_duration(settings.poll_interval)
            ),
        ));
    }
    if settings.backfill > MAX_BACKFILL {
        return Err(source.invalid(
            &key("backfill"),
            format!(
                "must be at most {MAX_BACKFILL} commits, got {}",
                settings.backfill
            ),
        ));
    }
    Ok(RepoConfig {
        name: repo_name,
        url,
        branches,
        poll_interval: settings.poll_interval,
        backfill: settings.backfill,
        first_parent: settings.first_parent,
        git: GitAuth::default(),
    })
}

/// Refuses a URL whose transport this build of libgit2 lacks, so that the
/// mistake shows at start-up instead of as a failed fetch at every poll.
fn check_transport(url: &RepoUrl) -> Result<(), String> {
    let url = url.as_str();
    let version = git2::Version::get();
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    let scp_like = scheme.is_none() && warren_common::fetch::is_scp_like(url);
    match scheme {
        Some("https") if !version.https() => Err(
            "https:// needs libgit2 with HTTPS support, which this build lacks \
             (enable the `https` feature of git2); use a local path, file:// or git://"
                .into(),
        ),
        Some("ssh" | "git+ssh" | "ssh+git") if !version.ssh() => Err(
            "ssh:// needs libgit2 with SSH support, which this build lacks \
             (enable the `ssh` feature of git2)"
                .into(),
        ),
        None if scp_like && !version.ssh() => Err(
            "user@host:path is an ssh address and this build of libgit2 has no SSH support \
             (enable the `ssh` feature of git2)"
                .into(),
        ),
        Some("https" | "http" | "ssh" | "git+ssh" | "ssh+git" | "git" | "file") | None => Ok(()),
        Some(other) => Err(format!(
            "unsupported scheme {other}://; use a local path, file://, git://, http(s):// or ssh://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> Settings {
        toml::from_str(toml_text).unwrap()
    }

    fn error(toml_text: &str) -> String {
        WatcherConfig::from_settings(&settings(toml_text), &ConfigSource::named("test.toml"))
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"
        [watcher]
        state_dir = "/tmp/w"
        [repos.api]
        url = "/srv/git/api.git"
        branches = ["main", "release/*"]
    "#;

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let config =
            WatcherConfig::from_settings(&settings(GOOD), &ConfigSource::named("t")).unwrap();
        let repo = config.repo("api").unwrap();
        assert_eq!(repo.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(repo.backfill, 0);
        assert!(!repo.first_parent);
        assert_eq!(config.state_dir, Path::new("/tmp/w"));
        assert_eq!(config.broker.topology.prefix(), "warren");
        assert_eq!(config.log.level, warren_common::config::DEFAULT_LOG_LEVEL);
    }

    #[test]
    fn at_least_one_repository_is_required() {
        let err = error("[watcher]\nstate_dir = \"x\"\n");
        assert!(
            err.contains("`repos`") && err.contains("at least one repository"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_their_key_and_variable() {
        let cases = [
            (
                r#"[repos."a/b"]
                url = "/x"
                branches = ["main"]"#,
                "`repos.a/b`",
            ),
            (
                r#"[repos.api]
                url = "-uhack"
                branches = ["main"]"#,
                "`repos.api.url` (env WARREN_REPOS__API__URL)",
            ),
            (
                r#"[repos.api]
                url = "gopher://x/y"
                branches = ["main"]"#,
                "`repos.api.url`",
            ),
            (
                r#"[repos.api]
                url = "/x"
                branches = []"#,
                "`repos.api.branches`",
            ),
            (
                r#"[repos.api]
                url = "/x"
                branches = ["main "]"#,
                "`repos.api.branches`",
            ),
            (
                r#"[repos.api]
                url = "/x"
                branches = ["release/[a"]"#,
                "`repos.api.branches`",
            ),
            (
                r#"[repos.api]
                url = "/x"
                branches = ["main"]
                poll_interval = "10ms""#,
                "`repos.api.poll_interval` (env WARREN_REPOS__API__POLL_INTERVAL)",
            ),
            (
                r#"[repos.api]
                url = "/x"
                branches = ["main"]
                poll_interval = "2h""#,
                "`repos.api.poll_interval`",
            ),
            (
                r#"[repos.api]
                url = "/x"
                branches = ["main"]
                backfill = 10001"#,
                "`repos.api.backfill`",
            ),
            (
                r#"[watcher]
                state_dir = ""
                [repos.api]
                url = "/x"
                branches = ["main"]"#,
                "`watcher.state_dir`",
            ),
        ];
        for (text, expected) in cases {
            let err = error(text);
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(err.starts_with("test.toml: "), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{GOOD}\npoll_intervall = \"1s\"\n");
        assert!(toml::from_str::<Settings>(&text).is_err());
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), &text).unwrap();
        let err = WatcherConfig::load(Some(file.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_intervall"), "{err}");
    }

    #[test]
    fn load_reads_a_file_and_learns_the_list_keys() {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), GOOD).unwrap();
        let config = WatcherConfig::load(Some(file.path())).unwrap();
        assert_eq!(config.repos.len(), 1);
        assert_eq!(config.repos[0].branches.patterns(), ["main", "release/*"]);
    }

    #[test]
    fn single_star_globs_stay_within_one_segment() {
        let filter = BranchFilter::new(&["main", "release/*", "team/**"]).unwrap();
        let matches = |name: &str| filter.matches(&BranchName::parse(name).unwrap());
        assert!(matches("main"));
        assert!(matches("release/1.2"));
        assert!(!matches("release/a/b"));
        assert!(!matches("release"));
        assert!(!matches("mainline"));
        assert!(matches("team/a/b/c"));
        assert!(!matches("feature/x"));
    }

    #[test]
    fn transports_this_build_lacks_are_refused_up_front() {
        let url = |text: &str| check_transport(&RepoUrl::parse(text).unwrap());
        assert!(url("/srv/git/api.git").is_ok());
        assert!(url("file:///srv/git/api.git").is_ok());
        assert!(url("git://host/api.git").is_ok());
        assert!(url("relative/path.git").is_ok());
        assert!(url("ftp://host/x").is_err());
        let version = git2::Version::get();
        assert_eq!(url("https://host/api.git").is_ok(), version.https());
        assert_eq!(url("git@host:api.git").is_ok(), version.ssh());
        assert_eq!(url("ssh://git@host/api.git").is_ok(), version.ssh());
    }
}
