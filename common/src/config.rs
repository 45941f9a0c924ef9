//! Configuration: a TOML file, then `WARREN_*` environment variables, into
//! typed settings; then validated once, at start-up, into the types the code
//! uses. A bad value fails before any connection, with the file and the key
//! in the message.
//!
//! Environment names are the key path in upper case, joined with `__` and
//! prefixed with `WARREN_`: `broker.url` is `WARREN_BROKER__URL`,
//! `worker.slots` is `WARREN_WORKER__SLOTS`. Lists are comma-separated.

mod broker;

pub use broker::{BrokerConfig, BrokerNode, BrokerSettings, DEFAULT_BROKER_URL, safe_url};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// Prefix of every environment variable Warren reads.
pub const ENV_PREFIX: &str = "WARREN";

/// Why a configuration was refused. The component exits non-zero, before
/// connecting to anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a value has the wrong type,
    /// or a key is unknown.
    #[error("{source_name}: {message}")]
    Load {
        source_name: String,
        message: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("{source_name}: `{key}` (env {env}): {message}")]
    Invalid {
        source_name: String,
        key: String,
        env: String,
        message: String,
    },
}

/// Where settings came from, for error messages.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    name: String,
}

impl ConfigSource {
    /// A source with a name of the caller's choosing (settings built in code).
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// An error about `key` (a dotted path such as `worker.slots`).
    pub fn invalid(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.name.clone(),
            key: key.to_owned(),
            env: env_name(key),
            message: message.to_string(),
        }
    }

    /// The name of the file (or "defaults and environment").
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}_{}", key.replace('.', "__").to_uppercase())
}

/// Reads `path` (if given) and then the environment into `S`.
///
/// `list_keys` names the keys whose environment values are comma-separated
/// lists. Unknown keys are errors when `S` denies unknown fields (all of
/// Warren's settings do): a typo must not pass silently.
pub fn load<S: DeserializeOwned>(
    path: Option<&Path>,
    list_keys: &[&str],
) -> Result<(S, ConfigSource), ConfigError> {
    load_with_env(path, list_keys, None)
}

/// [`load`] with the environment given as a map instead of read from the
/// process (`None`: the process environment). For tests.
pub fn load_with_env<S: DeserializeOwned>(
    path: Option<&Path>,
    list_keys: &[&str],
    env: Option<std::collections::HashMap<String, String>>,
) -> Result<(S, ConfigSource), ConfigError> {
    let source = ConfigSource {
        name: path.map_or_else(
            || "defaults and environment".to_owned(),
            |path| path.display().to_string(),
        ),
    };
    let env = settings_from_env(env, &source)?;
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .separator("__")
        .prefix_separator("_")
        .try_parsing(true)
        .source(Some(env));
    // Without parse keys the config crate would split every value at the
    // separator; only the named keys are lists.
    if !list_keys.is_empty() {
        environment = environment.list_separator(",");
        for key in list_keys {
            environment = environment.with_list_parse_key(key);
        }
    }
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        if !path.is_file() {
            return Err(ConfigError::Load {
                source_name: source.name,
                message: "file not found (or not a regular file)".into(),
            });
        }
        builder = builder
            .add_source(config::File::from(path.to_path_buf()).format(config::FileFormat::Toml));
    }
    let settings = builder
        .add_source(environment)
        .build()
        .and_then(|config| config.try_deserialize::<S>())
        .map_err(|error| ConfigError::Load {
            source_name: source.name.clone(),
            message: error.to_string(),
        })?;
    Ok((settings, source))
}

/// Every table a Warren config file can have; an environment variable
/// `WARREN_<TABLE>_<KEY>` with a single underscore is a typo of one.
const TABLES: [&str; 10] = [
    "broker",
    "log",
    "git",
    "worker",
    "watcher",
    "dispatcher",
    "defaults",
    "repos",
    "http",
    "notify",
];

/// The `WARREN_*` variables that are settings: those with a `__` between
/// table and key. Others (`WARREN_SHA` set for a test by a worker, say) are
/// not Warren's configuration and are left alone, except that one which
/// looks like a mistyped setting (`WARREN_BROKER_URL`) is an error.
fn settings_from_env(
    env: Option<std::collections::HashMap<String, String>>,
    source: &ConfigSource,
) -> Result<std::collections::HashMap<String, String>, ConfigError> {
    let env = env.unwrap_or_else(|| {
        std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect()
    });
    let prefix = format!("{ENV_PREFIX}_");
    let mut settings = std::collections::HashMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        if rest.contains("__") {
            settings.insert(name, value);
            continue;
        }
        let lower = rest.to_lowercase();
        if let Some(table) = TABLES
            .iter()
            .find(|table| lower.starts_with(&format!("{table}_")))
        {
            return Err(ConfigError::Load {
                source_name: source.name.clone(),
                message: format!(
                    "environment variable {name} is not a setting: separate the table and the \
                     key with two underscores ({prefix}{}__{})",
                    table.to_uppercase(),
                    &rest[table.len() + 1..]
                ),
            });
        }
    }
    Ok(settings)
}

/// `[log]`: how to write logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (default) or `json` (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `warren_worker=debug,info`;
    /// `RUST_LOG` wins when set.
    #[serde(default = "default_level")]
    pub level: String,
}

/// Warren's own lines at `info`; lapin's off, because lapin logs every lost
/// connection as an error itself, and the component's own warning already
/// says what happened and what it does next (`lapin=debug` brings it back).
pub const DEFAULT_LOG_LEVEL: &str = "info,lapin=off";

fn default_level() -> String {
    DEFAULT_LOG_LEVEL.into()
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_level(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Reads a secret (a token, a password) from the file at `path`, named by
/// `key` in errors: one line, its line break dropped, never empty.
pub fn read_secret_file(
    path: &Path,
    key: &str,
    source: &ConfigSource,
) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| source.invalid(key, format!("{}: {error}", path.display())))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() || secret.contains(['\r', '\n']) {
        return Err(source.invalid(
            key,
            format!("{} must hold one line: the secret", path.display()),
        ));
    }
    Ok(SecretString::from(secret.to_owned()))
}

/// Makes a relative path in a config file relative to the current directory
/// (where the component was started), and refuses empty paths.
pub fn validate_dir(path: &Path, key: &str, source: &ConfigSource) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(source.invalid(key, "must not be empty"));
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        broker: BrokerSettings,
        #[serde(default)]
        lists: Lists,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Lists {
        #[serde(default)]
        names: Vec<String>,
    }

    fn write(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    #[test]
    fn safe_url_masks_the_password() {
        assert_eq!(
            safe_url("amqp://warren:s3cr3t@mq:5672/%2f"),
            "amqp://warren:***@mq:5672/%2f"
        );
        assert_eq!(safe_url("amqps://host/vh"), "amqps://host/vh");
        assert_eq!(safe_url("/srv/git/api.git"), "/srv/git/api.git");
        assert!(!safe_url("amqp://u:p@ss@h/").contains("p@ss"));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_file_and_key() {
        let file = write("[broker]\nprefx = \"x\"\n");
        let err = load::<Sample>(Some(file.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefx"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let file = write("[broker]\ndelivery_limit = \"many\"\n");
        let err = load::<Sample>(Some(file.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery_limit"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = load::<Sample>(Some(Path::new("/nonexistent/w.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/w.toml") && err.contains("not found"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_key_and_the_variable() {
        let file = write("[broker]\nprefix = \"a b\"\n");
        let (settings, source) = load::<Sample>(Some(file.path()), &[]).unwrap();
        let err = BrokerConfig::from_settings(&settings.broker, &source)
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker.prefix"), "{err}");
        assert!(err.contains("WARREN_BROKER__PREFIX"), "{err}");

        let file = write("[broker]\nurl = \"http://user:hunter2@x/\"\n");
        let (settings, source) = load::<Sample>(Some(file.path()), &[]).unwrap();
        let err = BrokerConfig::from_settings(&settings.broker, &source)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broker.url") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn a_private_ca_file_must_exist_hold_a_certificate_and_go_with_amqps() {
        let pem = write("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let junk = write("not a certificate");
        let config = |url: &str, ca: &Path| {
            let settings = BrokerSettings {
                url: url.to_owned().into(),
                tls_ca_file: Some(ca.to_path_buf()),
                ..BrokerSettings::default()
            };
            BrokerConfig::from_settings(&settings, &ConfigSource::named("t"))
        };
        assert!(
            config("amqps://u:p@host/", pem.path())
                .unwrap()
                .tls_ca
                .is_some()
        );
        for (url, ca, expected) in [
            ("amqp://u:p@host/", pem.path(), "only used with an amqps://"),
            ("amqps://u:p@host/", junk.path(), "no PEM certificate"),
            (
                "amqps://u:p@host/",
                Path::new("/nonexistent.pem"),
                "cannot read",
            ),
        ] {
            let err = config(url, ca).err().unwrap().to_string();
            assert!(
                err.contains("broker.tls_ca_file") && err.contains(expected),
                "{err}"
            );
        }
    }

    #[test]
    fn a_cluster_is_a_list_of_urls_in_the_file_or_comma_separated_in_the_environment() {
        let urls = [
            "amqp://w:pw1@127.0.0.1:5681/%2f",
            "amqp://w:pw1@127.0.0.1:5682/%2f",
            "amqp://w:pw1@127.0.0.1:5683/%2f",
        ];
        let file = write(&format!(
            "[broker]\nurl = [\"{}\", \"{}\", \"{}\"]\n",
            urls[0], urls[1], urls[2]
        ));
        let from_file = load::<Sample>(Some(file.path()), &[]).unwrap();
        let env = [("WARREN_BROKER__URL".to_owned(), urls.join(", "))];
        let from_env = load_with_env::<Sample>(None, &[], Some(env.into_iter().collect())).unwrap();
        for (settings, source) in [from_file, from_env] {
            let broker = BrokerConfig::from_settings(&settings.broker, &source).unwrap();
            assert_eq!(broker.nodes().len(), 3);
            assert!(!broker.safe_url().contains("pw1"), "{}", broker.safe_url());
            assert_eq!(broker.topology.quorum_group_size(), Some(3));
            // Round robin: after node i answered, node i + 1 is tried first.
            broker.connected_to(1);
            let order: Vec<usize> = broker.connect_order().map(|(index, _)| index).collect();
            assert_eq!(order, [2, 0, 1]);
            assert_eq!(
                broker
                    .connect_order()
                    .nth(1)
                    .unwrap()
                    .1
                    .uri()
                    .authority
                    .port,
                5681
            );
            // A node that failed goes last, in round robin order among the
            // others, until a connection to it succeeds again.
            broker.failed(2);
            let order: Vec<usize> = broker.connect_order().map(|(index, _)| index).collect();
            assert_eq!(order, [0, 1, 2]);
            broker.failed(0);
            let order: Vec<usize> = broker.connect_order().map(|(index, _)| index).collect();
            assert_eq!(order, [1, 2, 0]);
            broker.connected_to(2);
            let order: Vec<usize> = broker.connect_order().map(|(index, _)| index).collect();
            assert_eq!(order, [1, 2, 0], "2 is trusted again, 0 still suspect");
            // Clones (a process's other connections) share what was seen.
            broker.clone().connected_to(0);
            let order: Vec<usize> = broker.connect_order().map(|(index, _)| index).collect();
            assert_eq!(order, [1, 2, 0]);
        }
    }

    #[test]
    fn one_url_keeps_the_single_node_topology_and_bad_lists_name_the_url() {
        let (settings, source) = load::<Sample>(None, &[]).unwrap();
        let broker = BrokerConfig::from_settings(&settings.broker, &source).unwrap();
        assert_eq!(broker.topology.quorum_group_size(), None);

        let config = |url: &str, size: Option<u32>| {
            let settings = BrokerSettings {
                url: url.to_owned().into(),
                quorum_group_size: size,
                ..BrokerSettings::default()
            };
            BrokerConfig::from_settings(&settings, &ConfigSource::named("t"))
        };
        let err = config("amqp://u:secret@a/%2f,http://u:secret@b/", None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("broker.url") && err.contains("URL 2 of 2") && !err.contains("secret"),
            "{err}"
        );
        let err = config("amqp://a/one,amqp://b/two", None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("same virtual host"), "{err}");
        let err = config("amqp://a/", Some(0)).err().unwrap().to_string();
        assert!(err.contains("broker.quorum_group_size"), "{err}");
        let six = ["amqp://h/"; 6].join(",");
        assert_eq!(
            config(&six, None).unwrap().topology.quorum_group_size(),
            Some(5)
        );
        assert_eq!(
            config("amqp://a/", Some(1))
                .unwrap()
                .topology
                .quorum_group_size(),
            Some(1)
        );
    }

    #[test]
    fn defaults_give_the_local_broker() {
        let (settings, source) = load::<Sample>(None, &[]).unwrap();
        let broker = BrokerConfig::from_settings(&settings.broker, &source).unwrap();
        assert_eq!(broker.safe_url(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(broker.topology.prefix(), "warren");
        assert!(settings.lists.names.is_empty());
    }

    #[test]
    fn environment_variables_override_the_file_and_split_lists() {
        let file = write("[broker]\nprefix = \"from-file\"\n");
        let env = std::collections::HashMap::from([
            ("WARREN_BROKER__PREFIX".to_owned(), "from-env".to_owned()),
            ("WARREN_BROKER__DELIVERY_LIMIT".to_owned(), "9".to_owned()),
            ("WARREN_LISTS__NAMES".to_owned(), "a,b".to_owned()),
        ]);
        let (settings, _) =
            load_with_env::<Sample>(Some(file.path()), &["lists.names"], Some(env)).unwrap();
        assert_eq!(settings.broker.prefix, "from-env");
        assert_eq!(settings.broker.delivery_limit, 9);
        assert_eq!(settings.lists.names, ["a", "b"]);
    }

    #[test]
    fn unknown_environment_variables_are_errors_too() {
        let env =
            std::collections::HashMap::from([("WARREN_BROKER__PERFIX".to_owned(), "x".to_owned())]);
        let err = load_with_env::<Sample>(None, &[], Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("perfix"), "{err}");
    }

    #[test]
    fn other_warren_variables_are_ignored_but_typos_of_settings_are_not() {
        let env = std::collections::HashMap::from([
            ("WARREN_SHA".to_owned(), "abc".to_owned()),
            ("WARREN_TEST_BROKER_URL".to_owned(), "amqp://x".to_owned()),
        ]);
        assert!(load_with_env::<Sample>(None, &[], Some(env)).is_ok());
        let env = std::collections::HashMap::from([(
            "WARREN_BROKER_URL".to_owned(),
            "amqp://x".to_owned(),
        )]);
        let err = load_with_env::<Sample>(None, &[], Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WARREN_BROKER__URL"), "{err}");
    }

    #[test]
    fn log_settings_default_to_info() {
        assert_eq!(LogSettings::default().level, DEFAULT_LOG_LEVEL);
    }

    #[test]
    fn env_names_follow_the_key_path() {
        assert_eq!(env_name("broker.url"), "WARREN_BROKER__URL");
        assert_eq!(
            env_name("worker.allowed_repos"),
            "WARREN_WORKER__ALLOWED_REPOS"
        );
    }
}
