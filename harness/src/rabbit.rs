//! Doing things to the local RabbitMQ node itself, for the tests that
//! restart it or change its settings. Every change is undone by a guard's
//! `Drop`, so the broker is left running as it was even when a test fails.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `rabbitmqctl` with `args`; returns its standard output.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    output_of("rabbitmqctl", &mut Command::new("rabbitmqctl"), args)
}

/// Runs `command` with `args` (named `what` in errors); its standard
/// output, or its standard error when it fails.
fn output_of(what: &str, command: &mut Command, args: &[&str]) -> Result<String, String> {
    let output = command
        .args(args)
        .output()
        .map_err(|error| format!("running {what}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{what} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Waits until the broker accepts TCP connections on 5672 and has booted.
pub fn wait_until_up(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if rabbitmqctl(&["await_startup"]).is_ok()
            && std::net::TcpStream::connect("127.0.0.1:5672").is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The broker application stopped (`rabbitmqctl stop_app`); started again
/// by [`Stopped::start`] or, at the latest, when dropped.
pub struct Stopped {
    started: bool,
}

impl Stopped {
    /// Stops the RabbitMQ application (the Erlang node stays up): every
    /// connection is closed by the broker.
    pub fn stop_app() -> Self {
        rabbitmqctl(&["stop_app"]).expect("rabbitmqctl stop_app");
        Self { started: false }
    }

    /// Starts it again and waits until it accepts connections.
    pub fn start(mut self) {
        self.start_now();
    }

    fn start_now(&mut self) {
        if !self.started {
            self.started = true;
            if let Err(error) = rabbitmqctl(&["start_app"]) {
                eprintln!("{error}");
            }
            assert!(
                wait_until_up(Duration::from_secs(60)),
                "RabbitMQ did not come back"
            );
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.start_now();
    }
}

/// RabbitMQ's `consumer_timeout` set to a test value, and the channel tick
/// that enforces it shortened from a minute to half a second (RabbitMQ 3.10
/// checks consumer timeouts on that tick). The previous values are restored
/// when dropped. Both apply to channels opened after the change.
pub struct ConsumerTimeout {
    previous: Vec<(&'static str, String)>,
}

/// The tick used while a test timeout is set, in milliseconds.
const TEST_TICK_MS: u128 = 500;

impl ConsumerTimeout {
    /// Sets `consumer_timeout` to `timeout` on the running node.
    pub fn set(timeout: Duration) -> Self {
        let mut guard = Self {
            previous: Vec::new(),
        };
        guard.set_env("consumer_timeout", timeout.as_millis());
        guard.set_env("channel_tick_interval", TEST_TICK_MS);
        guard
    }

    fn set_env(&mut self, key: &'static str, value: u128) {
        let previous = rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {key}).")])
            .unwrap_or_else(|error| panic!("reading {key}: {error}"))
            .trim()
            .to_owned();
        self.previous.push((key, previous));
        rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, {key}, {value})."),
        ])
        .unwrap_or_else(|error| panic!("setting {key}: {error}"));
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        for (key, previous) in self.previous.drain(..).rev() {
            // `{ok,1800000}` when it was set, `undefined` when it was not.
            let restore = match previous
                .strip_prefix("{ok,")
                .and_then(|rest| rest.strip_suffix('}'))
            {
                Some(value) => format!("application:set_env(rabbit, {key}, {value})."),
                None => format!("application:unset_env(rabbit, {key})."),
            };
            if let Err(error) = rabbitmqctl(&["eval", &restore]) {
                eprintln!("restoring {key}: {error}");
            }
        }
    }
}

/// RabbitMQ's memory alarm raised on the machine's broker: every
/// connection that publishes is blocked (the broker stops reading from it),
/// so no confirm comes; deliveries to consumers go on. The previous
/// threshold is restored when dropped.
pub struct MemoryAlarm {
    previous: String,
}

impl MemoryAlarm {
    /// Sets the memory threshold to 0, which raises the alarm at once.
    pub fn raise() -> Self {
        let previous = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .unwrap_or_else(|error| panic!("reading the memory threshold: {error}"))
            .trim()
            .to_owned();
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"])
            .unwrap_or_else(|error| panic!("raising the memory alarm: {error}"));
        Self { previous }
    }

    /// Clears the alarm now (also done when dropped).
    pub fn clear(self) {}
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        // `0.4`, or `{absolute,1073741824}` for a threshold in bytes.
        let restored = match self
            .previous
            .strip_prefix("{absolute,")
            .and_then(|rest| rest.strip_suffix('}'))
        {
            Some(bytes) => rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", bytes]),
            None => rabbitmqctl(&["set_vm_memory_high_watermark", &self.previous]),
        };
        if let Err(error) = restored {
            eprintln!("restoring the memory threshold {}: {error}", self.previous);
        }
    }
}

/// RabbitMQ users created for a test (with `docker/rabbitmq-users.sh` or by
/// hand); deleted when dropped.
pub struct Users {
    names: Vec<String>,
}

impl Users {
    /// Takes charge of deleting `names` at the end.
    pub fn adopt(names: Vec<String>) -> Self {
        Self { names }
    }

    /// Creates `name` with `password` and the permissions
    /// (configure, write, read) on the default virtual host.
    pub fn add(&mut self, name: &str, password: &str, permissions: [&str; 3]) {
        rabbitmqctl(&["add_user", name, password]).expect("rabbitmqctl add_user");
        self.names.push(name.to_owned());
        let [configure, write, read] = permissions;
        rabbitmqctl(&["set_permissions", "-p", "/", name, configure, write, read])
            .expect("rabbitmqctl set_permissions");
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(error) = rabbitmqctl(&["delete_user", name]) {
                eprintln!("{error}");
            }
        }
    }
}

/// A TLS listener on the running broker (port 5671, 127.0.0.1) with a
/// certificate for `localhost` and `127.0.0.1` signed by a CA made for the
/// test; stopped when dropped. No restart: the other tests are not disturbed,
/// but only one such listener can exist at a time.
pub struct TlsListener {
    dir: tempfile::TempDir,
}

/// The port of the test TLS listener.
pub const TLS_PORT: u16 = 5671;

impl TlsListener {
    /// Makes a CA and a server certificate with `openssl` and starts the
    /// listener.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The broker runs as its own user: it must read the files.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("running openssl");
            assert!(
                output.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Warren test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        for file in ["ca.pem", "server.pem", "server.key"] {
            std::fs::set_permissions(
                dir.path().join(file),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .expect("chmod");
        }
        let path = |file: &str| dir.path().join(file).display().to_string();
        rabbitmqctl(&[
            "eval",
            &format!(
                "rabbit_networking:start_ssl_listener({{\"127.0.0.1\", {TLS_PORT}}}, \
                 [{{certfile,\"{}\"}},{{keyfile,\"{}\"}},{{cacertfile,\"{}\"}},\
                 {{verify,verify_none}},{{fail_if_no_peer_cert,false}}], 1).",
                path("server.pem"),
                path("server.key"),
                path("ca.pem")
            ),
        ])
        .expect("starting a TLS listener");
        Self { dir }
    }

    /// The CA certificate that signed the broker's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl(&[
            "eval",
            &format!("rabbit_networking:stop_tcp_listener({{\"127.0.0.1\", {TLS_PORT}}})."),
        ]) {
            eprintln!("stopping the TLS listener: {error}");
        }
    }
}

/// Three RabbitMQ nodes clustered beside the machine's own broker, made by
/// `scripts/broker-cluster.sh` (rabbit1..3@localhost, AMQP on 5681..5683).
/// Stopped and removed when dropped, even when a test fails; the machine's
/// broker on 5672 is never touched.
pub struct BrokerCluster {
    _private: (),
}

impl BrokerCluster {
    /// Starts the three nodes and clusters them (about 30 s from nothing).
    pub fn start() -> Self {
        // A cluster left by an earlier run that was killed goes first.
        let _ = cluster_script(&["stop"]);
        cluster_script(&["start"]).expect("scripts/broker-cluster.sh start");
        Self { _private: () }
    }

    /// The nodes' AMQP URLs, comma-separated (as `broker.url` takes them).
    pub fn urls(&self) -> String {
        cluster_script(&["urls"])
            .expect("scripts/broker-cluster.sh urls")
            .trim()
            .to_owned()
    }

    /// Kills, revives, restarts, freezes the nodes; `Copy`, so it can go
    /// to another thread while the cluster (and its clean-up) stays with
    /// the test.
    pub fn control(&self) -> NodeControl {
        NodeControl { _private: () }
    }
}

/// Kills, revives and restarts the nodes of a [`BrokerCluster`].
#[derive(Debug, Clone, Copy)]
pub struct NodeControl {
    _private: (),
}

impl NodeControl {
    /// The node (1..=3) that leads quorum queue `queue`.
    pub fn leader(&self, queue: &str) -> Option<u8> {
        cluster_script(&["leader", queue]).ok()?.trim().parse().ok()
    }

    /// `kill -9` of node `node`; returns once the process is gone.
    pub fn kill(&self, node: u8) {
        cluster_script(&["kill", &node.to_string()]).expect("scripts/broker-cluster.sh kill");
    }

    /// Starts node `node` again; it rejoins the cluster.
    pub fn revive(&self, node: u8) {
        cluster_script(&["revive", &node.to_string()]).expect("scripts/broker-cluster.sh revive");
    }

    /// Stops node `node` cleanly and starts it again.
    pub fn restart(&self, node: u8) {
        cluster_script(&["restart", &node.to_string()]).expect("scripts/broker-cluster.sh restart");
    }

    /// SIGSTOP of node `node`: it hangs with its sockets open, as a machine
    /// that stopped answering does ([`NodeControl::thaw`] undoes it; so
    /// does the cluster's clean-up).
    pub fn freeze(&self, node: u8) {
        cluster_script(&["freeze", &node.to_string()]).expect("scripts/broker-cluster.sh freeze");
    }

    /// SIGCONT of a frozen node.
    pub fn thaw(&self, node: u8) {
        cluster_script(&["thaw", &node.to_string()]).expect("scripts/broker-cluster.sh thaw");
    }
}

impl Drop for BrokerCluster {
    fn drop(&mut self) {
        if let Err(error) = cluster_script(&["stop"]) {
            eprintln!("stopping the test cluster: {error}");
        }
    }
}

/// Runs `scripts/broker-cluster.sh` with `args`; returns its standard output.
fn cluster_script(args: &[&str]) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/broker-cluster.sh");
    output_of(script, Command::new("bash").arg(script), args)
}
