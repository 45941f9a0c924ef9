//! A private corner of the real broker for one test.

use futures_util::StreamExt;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::time::Duration;
use warren_common::config::{BrokerConfig, BrokerSettings, ConfigSource};
use warren_common::session::{REASON_HEADER, Session};
use warren_common::topology::Queue;

/// The broker URL tests use: `WARREN_TEST_BROKER_URL` or the local default.
pub fn broker_url() -> String {
    std::env::var("WARREN_TEST_BROKER_URL")
        .unwrap_or_else(|_| warren_common::config::DEFAULT_BROKER_URL.to_owned())
}

fn random_prefix(name: &str) -> String {
    format!(
        "t-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A unique prefix on the shared broker: tests never see each other's queues.
pub struct TestBroker {
    /// The broker URL (several comma-separated for a cluster).
    pub url: String,
    /// The prefix of every exchange and queue of this test.
    pub prefix: String,
    /// Validated broker config with that prefix.
    pub config: BrokerConfig,
}

impl TestBroker {
    /// A fresh prefix `t-<name>-<random>`.
    pub fn new(name: &str) -> Self {
        Self::with_prefix(&random_prefix(name))
    }

    /// The same prefix, with queues declared with another delivery limit
    /// (every client must declare a queue with the same arguments).
    pub fn with_delivery_limit(self, delivery_limit: u32) -> Self {
        let settings = BrokerSettings {
            url: self.url.clone().into(),
            prefix: self.prefix.clone(),
            heartbeat: Duration::from_secs(5),
            delivery_limit,
            ..BrokerSettings::default()
        };
        let config = BrokerConfig::from_settings(&settings, &source())
            .expect("the test broker settings are valid");
        Self {
            url: self.url,
            prefix: self.prefix,
            config,
        }
    }

    /// Exactly this prefix (the demo uses `warren-demo`).
    pub fn with_prefix(prefix: &str) -> Self {
        Self::with_prefix_on(prefix, &broker_url())
    }

    /// Exactly this prefix on the broker at `url` (a cluster's nodes,
    /// comma-separated).
    pub fn with_prefix_on(prefix: &str, url: &str) -> Self {
        let prefix = prefix.to_owned();
        let settings = BrokerSettings {
            url: url.to_owned().into(),
            prefix: prefix.clone(),
            heartbeat: Duration::from_secs(5),
            ..BrokerSettings::default()
        };
        let config = BrokerConfig::from_settings(&settings, &source())
            .expect("the test broker settings are valid");
        Self {
            url: url.to_owned(),
            prefix,
            config,
        }
    }

    /// A fresh prefix `t-<name>-<random>` on the broker at `url`.
    pub fn new_on(name: &str, url: &str) -> Self {
        Self::with_prefix_on(&random_prefix(name), url)
    }

    /// The `[broker]` table for a component's TOML config file.
    pub fn toml(&self) -> String {
        format!(
            "[broker]\nurl = {:?}\nprefix = {:?}\nheartbeat = \"5s\"\nreconnect_max_delay = \"2s\"\n",
            self.url, self.prefix
        )
    }

    /// A session of the test itself (to publish or inspect).
    pub async fn session(&self) -> Session {
        Session::connect(
            &self.config,
            "warren-test",
            &format!("test {}", self.prefix),
        )
        .await
        .expect("the broker at 127.0.0.1:5672 is reachable (see README: starting RabbitMQ)")
    }

    /// A plain connection and channel of the test's own (no topology, no
    /// confirms), to look at queues directly; on a cluster, through the
    /// first node that answers.
    pub async fn raw_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let mut last = None;
        let mut connection = None;
        for (_, node) in self.config.connect_order() {
            match lapin::Connection::connect_uri(
                node.uri().clone(),
                lapin::ConnectionProperties::default(),
            )
            .await
            {
                Ok(answered) => {
                    connection = Some(answered);
                    break;
                }
                Err(error) => last = Some(error),
            }
        }
        let connection = connection.unwrap_or_else(|| panic!("connect to the broker: {last:?}"));
        let channel = connection.create_channel().await.expect("open a channel");
        (connection, channel)
    }

    /// (messages ready, consumers) of one queue, by a passive declare;
    /// (0, 0) while no component has declared it yet.
    pub async fn queue_depth(&self, queue: Queue) -> (u32, u32) {
        let (connection, channel) = self.raw_channel().await;
        let declared = channel
            .queue_declare(
                ShortString::from(self.config.topology.queue(queue)),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = connection.close(200, "bye".into()).await;
        declared.map_or((0, 0), |declared| {
            (declared.message_count(), declared.consumer_count())
        })
    }

    /// Takes every message from the dead-letter queue: (reason header, body).
    pub async fn take_dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let session = self.session().await;
        let (connection, channel) = self.raw_channel().await;
        let mut letters = Vec::new();
        while let Some(message) = channel
            .basic_get(
                ShortString::from(self.config.topology.queue(Queue::Dead)),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let reason = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get(REASON_HEADER).cloned())
                .map(|value| match value {
                    AMQPValue::LongString(text) => text.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            letters.push((reason, message.delivery.data));
        }
        let _ = connection.close(200, "bye".into()).await;
        session.close().await;
        letters
    }

    /// Consumes up to `n` messages of `queue` within `timeout`, acking them.
    pub async fn take(
        &self,
        queue: Queue,
        n: usize,
        timeout: Duration,
    ) -> Vec<lapin::message::Delivery> {
        let session = self.session().await;
        let (_channel, mut consumer) = session
            .consume(queue, 100, "test-take")
            .await
            .expect("consume");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery.ack(Default::default()).await.expect("ack");
                    out.push(delivery);
                }
                _ => break,
            }
        }
        session.close().await;
        out
    }

    /// Deletes this test's queues and exchanges.
    pub async fn cleanup(&self) {
        let session = self.session().await;
        let (connection, channel) = self.raw_channel().await;
        let _ = self.config.topology.delete(&channel).await;
        let _ = connection.close(200, "bye".into()).await;
        session.close().await;
    }
}

fn source() -> ConfigSource {
    ConfigSource::named("test settings")
}

/// A private queue bound to one of Warren's exchanges that sees a copy of
/// every message published there (to count what a component published).
pub struct Tap {
    connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
}

impl TestBroker {
    /// Starts copying every message published to the exchange of `queue`.
    pub async fn tap(&self, queue: Queue) -> Tap {
        let (connection, channel) = self.raw_channel().await;
        // Make sure the exchange exists before binding to it.
        self.config
            .topology
            .declare(&channel)
            .await
            .expect("declare topology");
        let name = format!("{}.tap-{}", self.prefix, uuid::Uuid::new_v4().simple());
        channel
            .queue_declare(
                ShortString::from(name.clone()),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare tap");
        channel
            .queue_bind(
                ShortString::from(name.clone()),
                ShortString::from(self.config.topology.exchange(queue)),
                ShortString::from("#"),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind tap");
        Tap {
            connection,
            channel,
            queue: name,
        }
    }
}

impl Tap {
    /// Every message copied so far (bodies), removing them from the tap.
    pub async fn drain(&self) -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                ShortString::from(self.queue.clone()),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            bodies.push(message.delivery.data);
        }
        bodies
    }

    /// Closes the tap (its queue is deleted with the connection).
    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
