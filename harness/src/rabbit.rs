//! Doing things to the local RabbitMQ node itself, for the tests that
//! restart it or change its settings. Every change is undone by a guard's
//! `Drop`, so the broker is left running as it was even when a test fails.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `rabbitmqctl` with `args`; returns its standard output.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|error| format!("running rabbitmqctl: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {}: {}",
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

/// RabbitMQ's `consumer_timeout` set to a test value; the previous value is
/// restored when dropped. It applies to channels opened after the change.
pub struct ConsumerTimeout {
    previous: String,
}

impl ConsumerTimeout {
    /// Sets `consumer_timeout` to `timeout` on the running node.
    pub fn set(timeout: Duration) -> Self {
        let previous = rabbitmqctl(&["eval", "application:get_env(rabbit, consumer_timeout)."])
            .expect("reading consumer_timeout")
            .trim()
            .to_owned();
        let millis = timeout.as_millis();
        rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, consumer_timeout, {millis})."),
        ])
        .expect("setting consumer_timeout");
        Self { previous }
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        // `{ok,1800000}` when it was set, `undefined` when it was not.
        let restore = match self
            .previous
            .strip_prefix("{ok,")
            .and_then(|rest| rest.strip_suffix('}'))
        {
            Some(value) => format!("application:set_env(rabbit, consumer_timeout, {value})."),
            None => "application:unset_env(rabbit, consumer_timeout).".to_owned(),
        };
        if let Err(error) = rabbitmqctl(&["eval", &restore]) {
            eprintln!("restoring consumer_timeout: {error}");
        }
    }
}
