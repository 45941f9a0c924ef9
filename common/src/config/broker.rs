//! `[broker]`: how to reach RabbitMQ — one node or a cluster's nodes —
//! validated into a [`BrokerConfig`] (the nodes in connection order, the
//! topology, TLS).

use super::{ConfigError, ConfigSource};
use crate::topology::{DEFAULT_DELIVERY_LIMIT, Topology};
use lapin::uri::{AMQPScheme, AMQPUri};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;

/// `[broker]`: how to reach RabbitMQ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// `amqp://user:password@host:port/vhost` or `amqps://…`; for a cluster,
    /// every node: an array, or one string with the URLs comma-separated
    /// (as `WARREN_BROKER__URL` takes them).
    #[serde(default = "default_url", deserialize_with = "one_or_many_urls")]
    pub url: SecretString,
    /// Replicas of each quorum queue, fixed when the queue is created
    /// (`x-quorum-initial-group-size`). Unset: with several URLs, their
    /// number up to 5; with one URL, RabbitMQ's default (every node).
    #[serde(default)]
    pub quorum_group_size: Option<u32>,
    /// Prefix of every exchange and queue name.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// AMQP heartbeat: a dead peer is noticed after about twice this.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Deliveries of one message before the broker dead-letters it.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// Longest wait between two reconnection attempts.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Longest wait for the broker to confirm a publish. Past it the
    /// connection counts as lost: the component reconnects and publishes
    /// again what was not confirmed (a blocked broker, a queue leader gone
    /// silent).
    #[serde(default = "default_confirm_timeout", with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// PEM file of a private CA to trust for `amqps://`, besides the
    /// system's trust store. The broker's certificate is always verified.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Declare the exchanges and queues on connect (needs the `configure`
    /// permission on the prefix). With `false`, only check that they exist:
    /// the least-privilege set-up lets the dispatcher alone declare them.
    #[serde(default = "default_declare")]
    pub declare: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: default_url(),
            prefix: default_prefix(),
            heartbeat: default_heartbeat(),
            delivery_limit: default_delivery_limit(),
            reconnect_max_delay: default_reconnect_max(),
            confirm_timeout: default_confirm_timeout(),
            tls_ca_file: None,
            declare: default_declare(),
            quorum_group_size: None,
        }
    }
}

/// `broker.url` as one string or an array of strings, kept as one secret
/// with the URLs comma-separated (the form the environment variable has).
fn one_or_many_urls<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SecretString, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Urls::deserialize(deserializer)? {
        Urls::One(url) => url.into(),
        Urls::Many(urls) => urls.join(",").into(),
    })
}

/// The broker URL a fresh machine's RabbitMQ accepts.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn default_url() -> SecretString {
    SecretString::from(DEFAULT_BROKER_URL)
}
fn default_prefix() -> String {
    "warren".into()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}
fn default_delivery_limit() -> u32 {
    DEFAULT_DELIVERY_LIMIT
}
fn default_declare() -> bool {
    true
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(10)
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Most nodes `broker.url` may list.
const MAX_BROKER_NODES: usize = 16;
/// The replicas a quorum queue gets by default on a cluster, at most.
const DEFAULT_MAX_GROUP_SIZE: usize = 5;

/// One node of the broker: where to connect, and how to name it in logs.
#[derive(Clone)]
pub struct BrokerNode {
    uri: AMQPUri,
    safe_url: String,
}

impl BrokerNode {
    /// The parsed URI to connect with (holds the password).
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The URL with its password masked, for logs.
    pub fn safe_url(&self) -> &str {
        &self.safe_url
    }
}

/// Validated broker settings.
#[derive(Clone)]
pub struct BrokerConfig {
    /// Every node of the cluster, as listed (at least one).
    nodes: Vec<BrokerNode>,
    /// The node a connection tries first: round robin, see
    /// [`BrokerConfig::connect_order`].
    next: Arc<AtomicUsize>,
    /// Whether a connection of this process declared the topology already:
    /// later ones check it exists (passive declares, plain reads) and
    /// declare again only what is missing.
    declared: Arc<std::sync::atomic::AtomicBool>,
    /// Per node, when this process last saw it fail (a refused or timed-out
    /// connect, a connection lost), in ms since [`clock`]; 0 for never.
    failed_at: Arc<Vec<AtomicU64>>,
    /// The exchanges and queues.
    pub topology: Topology,
    /// Longest wait between two reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// Longest wait for a publisher confirm.
    pub confirm_timeout: Duration,
    /// PEM certificates of a private CA to trust (from `tls_ca_file`).
    pub tls_ca: Option<String>,
    /// Declare the topology (`true`) or only check it exists (`false`).
    pub declare: bool,
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.safe_url())
            .field("topology", &self.topology)
            .finish()
    }
}

impl BrokerConfig {
    /// Checks `settings` (found in `source`, under the `[broker]` table).
    pub fn from_settings(
        settings: &BrokerSettings,
        source: &ConfigSource,
    ) -> Result<Self, ConfigError> {
        let raws: Vec<&str> = settings
            .url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .collect();
        let uris = parse_nodes(&raws, source)?;
        let group_size = quorum_group_size(settings.quorum_group_size, uris.len(), source)?;
        validate_prefix(&settings.prefix).map_err(|m| source.invalid("broker.prefix", m))?;
        let heartbeat = settings.heartbeat.as_secs();
        if !(1..=600).contains(&heartbeat) {
            return Err(source.invalid(
                "broker.heartbeat",
                format!("must be between 1s and 600s, got {heartbeat}s"),
            ));
        }
        if !(1..=1000).contains(&settings.delivery_limit) {
            return Err(source.invalid(
                "broker.delivery_limit",
                format!(
                    "must be between 1 and 1000, got {}",
                    settings.delivery_limit
                ),
            ));
        }
        if settings.reconnect_max_delay < Duration::from_millis(100)
            || settings.reconnect_max_delay > Duration::from_secs(600)
        {
            return Err(source.invalid(
                "broker.reconnect_max_delay",
                "must be between 100ms and 10m",
            ));
        }
        if settings.confirm_timeout < Duration::from_millis(100)
            || settings.confirm_timeout > Duration::from_secs(600)
        {
            return Err(source.invalid("broker.confirm_timeout", "must be between 100ms and 10m"));
        }
        let tls_ca = settings
            .tls_ca_file
            .as_deref()
            .map(|path| read_ca_file(path, &raws, source))
            .transpose()?;
        let nodes: Vec<BrokerNode> = uris
            .into_iter()
            .zip(&raws)
            .map(|(mut uri, raw)| {
                // Heartbeats from the URL's query win only if the config says
                // nothing different; the config value is the documented one.
                uri.query.heartbeat = Some(heartbeat as u16);
                uri.query.connection_timeout = Some(CONNECT_TIMEOUT_MS);
                BrokerNode {
                    uri,
                    safe_url: safe_url(raw),
                }
            })
            .collect();
        // Processes started together spread over the nodes.
        let first = std::process::id() as usize % nodes.len();
        Ok(Self {
            declared: Arc::default(),
            failed_at: Arc::new((0..nodes.len()).map(|_| AtomicU64::new(0)).collect()),
            nodes,
            next: Arc::new(AtomicUsize::new(first)),
            topology: Topology::new(settings.prefix.clone(), settings.delivery_limit)
                .with_quorum_group_size(group_size),
            reconnect_max_delay: settings.reconnect_max_delay,
            confirm_timeout: settings.confirm_timeout,
            tls_ca,
            declare: settings.declare,
        })
    }

    /// The parsed URI of the first node listed (holds the password).
    pub fn uri(&self) -> &AMQPUri {
        &self.nodes[0].uri
    }

    /// Every node, as listed.
    pub fn nodes(&self) -> &[BrokerNode] {
        &self.nodes
    }

    /// The nodes in the order a new connection tries them: round robin,
    /// starting with the node after the one the last connection used, so a
    /// process whose node died tries another one first; nodes that failed
    /// within the last minute go after the others (a node that
    /// hangs costs a whole connect timeout, and several connections of one
    /// process share this order). Call [`BrokerConfig::connected_to`] with
    /// the node that answered and [`BrokerConfig::failed`] with one that
    /// did not, or whose connection was lost.
    pub fn connect_order(&self) -> impl Iterator<Item = (usize, &BrokerNode)> {
        let start = self.next.load(Ordering::Relaxed) % self.nodes.len();
        let now = clock_ms();
        let suspect = |index: usize| {
            let at = self.failed_at[index].load(Ordering::Relaxed);
            at != 0 && now.saturating_sub(at) < SUSPECT_FOR.as_millis() as u64
        };
        let mut order: Vec<usize> = (0..self.nodes.len())
            .map(|offset| (start + offset) % self.nodes.len())
            .collect();
        // Stable: the round robin order within each group.
        order.sort_by_key(|&index| suspect(index));
        order
            .into_iter()
            .map(move |index| (index, &self.nodes[index]))
    }

    /// Records that a connection to node `index` succeeded: the next
    /// connection starts with the node after it, and the node is trusted.
    pub fn connected_to(&self, index: usize) {
        self.next.store(index + 1, Ordering::Relaxed);
        self.failed_at[index].store(0, Ordering::Relaxed);
    }

    /// Records that node `index` failed: it goes last in
    /// [`BrokerConfig::connect_order`] for a minute.
    pub fn failed(&self, index: usize) {
        self.failed_at[index].store(clock_ms().max(1), Ordering::Relaxed);
    }

    /// Whether a connection of this process has declared the topology.
    pub(crate) fn topology_declared(&self) -> bool {
        self.declared.load(Ordering::Relaxed)
    }

    /// Notes that the topology has been declared.
    pub(crate) fn note_topology_declared(&self) {
        self.declared.store(true, Ordering::Relaxed);
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.nodes[0].uri.scheme == AMQPScheme::AMQPS
    }

    /// The URLs with their passwords masked, for logs.
    pub fn safe_url(&self) -> String {
        let urls: Vec<&str> = self.nodes.iter().map(BrokerNode::safe_url).collect();
        urls.join(",")
    }
}

/// How long a node that failed goes last in the connect order.
const SUSPECT_FOR: Duration = Duration::from_secs(60);

/// Milliseconds since this process first asked (a monotonic clock).
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The URIs of `broker.url`'s nodes, each checked; one cluster, so one
/// virtual host.
fn parse_nodes(raws: &[&str], source: &ConfigSource) -> Result<Vec<AMQPUri>, ConfigError> {
    if raws.len() > MAX_BROKER_NODES {
        return Err(source.invalid(
            "broker.url",
            format!("lists {} nodes; at most {MAX_BROKER_NODES}", raws.len()),
        ));
    }
    let mut uris = Vec::with_capacity(raws.len());
    for (index, raw) in raws.iter().enumerate() {
        // Which one, by position: the URL itself may hold a password.
        let which = if raws.len() == 1 {
            String::new()
        } else {
            format!("URL {} of {}: ", index + 1, raws.len())
        };
        // The parser's message may quote the URL; say only what is wrong.
        let uri = AMQPUri::from_str(raw).map_err(|_| {
            source.invalid(
                "broker.url",
                format!(
                    "{which}not a valid amqp:// or amqps:// URL \
                     (amqp://user:password@host:port/vhost; several comma-separated)"
                ),
            )
        })?;
        if !raw.starts_with("amqp://") && !raw.starts_with("amqps://") {
            return Err(source.invalid(
                "broker.url",
                format!("{which}must start with amqp:// or amqps://"),
            ));
        }
        uris.push(uri);
    }
    if uris.iter().any(|uri| uri.vhost != uris[0].vhost) {
        return Err(source.invalid(
            "broker.url",
            "the nodes of one cluster must name the same virtual host",
        ));
    }
    Ok(uris)
}

/// `broker.quorum_group_size` checked, or its default for `nodes` nodes:
/// their number up to 5 on a cluster, nothing (a single node) for one.
fn quorum_group_size(
    setting: Option<u32>,
    nodes: usize,
    source: &ConfigSource,
) -> Result<Option<u32>, ConfigError> {
    match setting {
        Some(size) if !(1..=MAX_BROKER_NODES as u32).contains(&size) => Err(source.invalid(
            "broker.quorum_group_size",
            format!("must be between 1 and {MAX_BROKER_NODES}, got {size}"),
        )),
        Some(size) => Ok(Some(size)),
        None if nodes > 1 => Ok(Some(nodes.min(DEFAULT_MAX_GROUP_SIZE) as u32)),
        None => Ok(None),
    }
}

/// How long connecting to one node may take (TCP and the AMQP handshake).
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Reads and checks the PEM file of `broker.tls_ca_file`.
fn read_ca_file(path: &Path, urls: &[&str], source: &ConfigSource) -> Result<String, ConfigError> {
    const KEY: &str = "broker.tls_ca_file";
    if !urls.iter().all(|url| url.starts_with("amqps://")) {
        return Err(source.invalid(KEY, "is only used with an amqps:// broker.url"));
    }
    let pem = std::fs::read_to_string(path)
        .map_err(|error| source.invalid(KEY, format!("cannot read {}: {error}", path.display())))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(source.invalid(KEY, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(pem)
}

/// `url` with the password (the part between `:` and `@` in the authority)
/// replaced by `***`.
pub fn safe_url(url: &str) -> String {
    // Without a scheme there is no userinfo to hide (a path, `git@host:repo`).
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***@{}", &url[..scheme_end + 3], user, &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// Prefixes are used in queue names: `[A-Za-z0-9._-]{1,100}`.
fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.len() > 100
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "expected 1 to 100 ASCII letters, digits, '.', '_' or '-', got {prefix:?}"
        ));
    }
    Ok(())
}
