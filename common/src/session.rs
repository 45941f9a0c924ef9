//! A connection to the broker, with publisher confirms.
//!
//! A [`Session`] is one AMQP connection with three publishing channels: one
//! in confirm mode, for everything that must not be lost (a publish returns
//! only once the broker has taken responsibility for the message, and a
//! message that no queue would receive is an error, not a success), one
//! without confirms for transient events, and one without confirms for
//! live output to a named exchange. Consumers get channels of their own,
//! each with its prefetch.
//!
//! Sessions do not recover by themselves: lapin's automatic recovery does not
//! restore everything (a channel the server closed, prefetch). When a session
//! fails, its owner drops it and builds a new one (see [`crate::backoff`]),
//! which redeclares the topology, sets prefetch again and consumes again.

use crate::config::BrokerConfig;
use crate::messages::{CancelJobs, Message, encode};
use crate::topology::{Queue, Topology};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

use lapin::{Confirmation, PublisherConfirm};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{debug, warn};

/// AMQP header naming why a message was dead-lettered by Warren.
pub const REASON_HEADER: &str = "x-warren-reason";
/// AMQP header naming the queue a dead-lettered message came from.
pub const ORIGINAL_QUEUE_HEADER: &str = "x-warren-original-queue";
/// AMQP header with the schema version of a message.
pub const SCHEMA_HEADER: &str = "x-warren-schema";

/// What went wrong talking to the broker. The session is unusable afterwards:
/// drop it, wait (with backoff) and connect again.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    // The lapin error is part of the message, not a `source`, so that
    // `{:#}` chains do not print it twice.
    #[error("connecting to {url}: {cause}")]
    Connect { url: String, cause: lapin::Error },
    #[error("{what}: {cause}")]
    Broker {
        what: &'static str,
        cause: lapin::Error,
    },
    #[error(transparent)]
    Missing(#[from] crate::topology::TopologyMissing),
}

/// Why a publish did not succeed. Nothing was confirmed: the caller still owns
/// the message and must publish it again (after reconnecting) or give up.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker connection failed during publish: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    /// No answer within `broker.confirm_timeout`: the connection counts as
    /// lost (the caller reconnects and publishes again).
    #[error("no confirm from the broker within {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    #[error("no queue is bound for {exchange:?} with routing key {routing_key:?} ({reply})")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
}

pub use crate::envelope::Outgoing;

/// Messages this process moved to the dead-letter queue, per source queue
/// (in [`Queue::ALL`] order), since it started.
static REJECTED: [AtomicU64; Queue::ALL.len()] = [const { AtomicU64::new(0) }; Queue::ALL.len()];

/// How many messages from `queue` this process has dead-lettered so far.
pub fn rejected_total(queue: Queue) -> u64 {
    REJECTED[queue.index()].load(Ordering::Relaxed)
}

/// Opens an AMQP connection to the first node of `broker` that answers, in
/// [`BrokerConfig::connect_order`]; returns it with the node's masked URL.
/// Fails only when every node failed, with the last node's error (each
/// failure is logged).
async fn connect_to_a_node(
    broker: &BrokerConfig,
    name: &str,
) -> Result<(Connection, usize, String), SessionError> {
    let mut last = None;
    for (index, node) in broker.connect_order() {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
        let attempt = async {
            let mut builder = lapin::DefaultConnectionBuilder::new()?
                .with_uri(node.uri().clone())
                .with_properties(properties);
            if let Some(ca) = &broker.tls_ca {
                // Added to the system's roots; the broker's certificate and
                // name are verified either way.
                builder = builder.with_tls_config(lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(ca.clone()),
                });
            }
            builder.connect().await
        };
        match attempt.await {
            Ok(connection) => {
                broker.connected_to(index);
                return Ok((connection, index, node.safe_url().to_owned()));
            }
            Err(cause) => {
                broker.failed(index);
                if broker.nodes().len() > 1 {
                    warn!(url = node.safe_url(), error = %cause, "broker node unreachable; trying the next");
                }
                last = Some(cause);
            }
        }
    }
    Err(SessionError::Connect {
        url: broker.safe_url(),
        cause: last.expect("a broker config has at least one node"),
    })
}

/// One connection to the broker.
pub struct Session {
    /// The node connected to, password masked.
    url: String,
    connection: Connection,
    confirmed: Channel,
    transient: Channel,
    /// For [`Session::publish_transient_to`]: a publish the broker refuses
    /// (no permission on the logs exchange, the exchange not declared yet)
    /// closes this channel only, never the one of job events and statuses.
    live: Channel,
    app_id: &'static str,
    /// The settings: topology, confirm timeout, and the node list, told
    /// when this node's connection is lost (see [`BrokerConfig::failed`]).
    broker: BrokerConfig,
    /// This session's node in `broker`.
    node: usize,
    /// Set by [`Session::close`]: a connection we closed was not lost.
    closing: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Connects, declares the whole topology and opens the publishing
    /// channels. `app_id` is the component (`warren-worker`), `name` shows as
    /// the connection name in the management UI.
    pub async fn connect(
        broker: &BrokerConfig,
        app_id: &'static str,
        name: &str,
    ) -> Result<Self, SessionError> {
        let (connection, node, url) = connect_to_a_node(broker, name).await?;
        let broker_error = |what| move |cause| SessionError::Broker { what, cause };
        let confirmed = connection
            .create_channel()
            .await
            .map_err(broker_error("opening a channel"))?;
        if !broker.declare {
            Self::verify_topology(&connection, broker).await?;
        } else if !broker.topology_declared()
            || Self::verify_topology(&connection, broker).await.is_err()
        {
            // A reconnect only checks, unless something is missing:
            // declaring changes the cluster's metadata, which waits for
            // every node, a hung one included (until the cluster declares
            // it down, a minute by default); reading does not.
            broker
                .topology
                .declare(&confirmed)
                .await
                .map_err(broker_error("declaring the topology"))?;
            broker.note_topology_declared();
        }
        confirmed
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_error("enabling publisher confirms"))?;
        let transient = connection
            .create_channel()
            .await
            .map_err(broker_error("opening a channel"))?;
        let live = connection
            .create_channel()
            .await
            .map_err(broker_error("opening a channel"))?;
        debug!(%url, name, "connected to the broker");
        Ok(Self {
            url,
            connection,
            confirmed,
            transient,
            live,
            app_id,
            broker: broker.clone(),
            node,
            closing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Checks that every queue exists, on a channel of its own (a failed
    /// passive declare closes its channel).
    async fn verify_topology(
        connection: &Connection,
        broker: &BrokerConfig,
    ) -> Result<(), SessionError> {
        let check = connection
            .create_channel()
            .await
            .map_err(|cause| SessionError::Broker {
                what: "opening a channel",
                cause,
            })?;
        broker.topology.verify(&check).await?;
        let _ = check.close(200, ShortString::from("checked")).await;
        Ok(())
    }

    /// The node this session is connected to (password masked).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The names of the exchanges and queues.
    pub fn topology(&self) -> &Topology {
        &self.broker.topology
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Publishes `message` to the exchange of `queue` and waits until the
    /// broker confirms it. Returns an error if the broker nacks it or no
    /// queue would receive it.
    pub async fn publish<M: Message>(
        &self,
        queue: Queue,
        message: &M,
        outgoing: Outgoing<'_>,
    ) -> Result<(), PublishError> {
        self.start_publish(queue, message, outgoing)
            .await?
            .wait()
            .await
    }

    /// Sends `message` and returns without waiting for the confirm, so that
    /// many publishes can be in flight; call [`PendingConfirm::wait`] on each.
    pub async fn start_publish<M: Message>(
        &self,
        queue: Queue,
        message: &M,
        outgoing: Outgoing<'_>,
    ) -> Result<PendingConfirm, PublishError> {
        let exchange = self.broker.topology.exchange(queue);
        let properties = self.properties(M::TYPE, &outgoing);
        let confirm = self
            .confirmed
            .basic_publish(
                ShortString::from(exchange.clone()),
                ShortString::from(outgoing.routing_key.to_owned()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &encode(message),
                properties,
            )
            .await?;
        Ok(PendingConfirm {
            confirm,
            exchange,
            routing_key: outgoing.routing_key.to_owned(),
            limit: self.broker.confirm_timeout,
        })
    }

    /// Publishes a [`CancelJobs`]
    /// to every worker, with a confirm. Not mandatory: with no worker
    /// connected nobody needs to hear it.
    pub async fn publish_control(
        &self,
        message: &CancelJobs,
        message_id: String,
    ) -> Result<(), PublishError> {
        let outgoing = message.envelope(message_id);
        let exchange = self.broker.topology.control_exchange();
        let confirm = self
            .confirmed
            .basic_publish(
                ShortString::from(exchange.clone()),
                ShortString::from(""),
                BasicPublishOptions::default(),
                &encode(message),
                self.properties(CancelJobs::TYPE, &outgoing),
            )
            .await?;
        PendingConfirm {
            confirm,
            exchange,
            routing_key: String::new(),
            limit: self.broker.confirm_timeout,
        }
        .wait()
        .await
    }

    /// Publishes a transient message to a named exchange (live job output to
    /// the logs exchange): no confirm, no persistence, not mandatory. On a
    /// channel of its own: if the broker refuses it, later calls fail until
    /// the next session, and [`Session::publish_transient`] is unaffected.
    pub async fn publish_transient_to<M: Message>(
        &self,
        exchange: &str,
        message: &M,
        outgoing: Outgoing<'_>,
    ) -> Result<(), PublishError> {
        let properties = self.properties(M::TYPE, &outgoing);
        self.live
            .basic_publish(
                ShortString::from(exchange.to_owned()),
                ShortString::from(outgoing.routing_key.to_owned()),
                BasicPublishOptions::default(),
                &encode(message),
                properties,
            )
            .await?;
        Ok(())
    }

    /// Publishes a transient message (job events): no confirm, no
    /// persistence. Losing one is harmless; the next heartbeat replaces it.
    pub async fn publish_transient<M: Message>(
        &self,
        queue: Queue,
        message: &M,
        outgoing: Outgoing<'_>,
    ) -> Result<(), PublishError> {
        let properties = self.properties(M::TYPE, &outgoing);
        self.transient
            .basic_publish(
                ShortString::from(self.broker.topology.exchange(queue)),
                ShortString::from(outgoing.routing_key.to_owned()),
                BasicPublishOptions::default(),
                &encode(message),
                properties,
            )
            .await?;
        Ok(())
    }

    /// Opens a channel with `prefetch` unacknowledged deliveries at most and
    /// starts consuming `queue` with manual acks.
    pub async fn consume(
        &self,
        queue: Queue,
        prefetch: u16,
        consumer_tag: &str,
    ) -> Result<(Channel, Consumer), SessionError> {
        let broker_error = |what| move |cause| SessionError::Broker { what, cause };
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(broker_error("opening a consumer channel"))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker_error("setting prefetch"))?;
        let consumer = channel
            .basic_consume(
                ShortString::from(self.broker.topology.queue(queue)),
                ShortString::from(consumer_tag.to_owned()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error("starting a consumer"))?;
        Ok((channel, consumer))
    }

    /// Opens a plain channel on this connection (no prefetch, no confirms),
    /// for what a component sets up itself: the worker's private queue on
    /// the control exchange. A channel error there closes only that channel.
    pub async fn open_channel(&self) -> Result<Channel, SessionError> {
        self.connection
            .create_channel()
            .await
            .map_err(|cause| SessionError::Broker {
                what: "opening a channel",
                cause,
            })
    }

    /// Moves a delivery that cannot be processed to the dead-letter queue with
    /// `reason` in the [`REASON_HEADER`] header, then acks the original. The
    /// copy is confirmed before the ack, so the message is never lost; if the
    /// connection fails in between, the broker redelivers the original.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        from: Queue,
        reason: &str,
    ) -> Result<(), PublishError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(REASON_HEADER),
            AMQPValue::LongString(LongString::from(reason.to_owned())),
        );
        headers.insert(
            ShortString::from(ORIGINAL_QUEUE_HEADER),
            AMQPValue::LongString(LongString::from(self.broker.topology.queue(from))),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let exchange = self.broker.topology.exchange(Queue::Dead);
        let confirm = self
            .confirmed
            .basic_publish(
                ShortString::from(exchange.clone()),
                ShortString::from(from.dead_letter_key()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?;
        PendingConfirm {
            confirm,
            exchange,
            routing_key: from.dead_letter_key().to_owned(),
            limit: self.broker.confirm_timeout,
        }
        .wait()
        .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        REJECTED[from.index()].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the connection politely (the broker requeues unacked deliveries).
    ///
    /// Bounded by `broker.confirm_timeout`: a broker that stopped reading
    /// (a memory alarm blocks publishing connections) never answers.
    pub async fn close(&self) {
        if self.closing.swap(true, Ordering::Relaxed) {
            return;
        }
        if !self.is_connected() {
            // Lost, not closed: the next connection tries this node last.
            self.broker.failed(self.node);
            return;
        }
        let close = self.connection.close(200, ShortString::from("bye"));
        match tokio::time::timeout(self.broker.confirm_timeout, close).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "closing the broker connection"),
            Err(_) => warn!("the broker did not answer the close; leaving the connection"),
        }
    }

    fn properties(&self, kind: &'static str, outgoing: &Outgoing<'_>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(SCHEMA_HEADER),
            AMQPValue::LongUInt(crate::messages::SCHEMA_VERSION),
        );
        for (key, value) in &outgoing.headers {
            headers.insert(
                ShortString::from(*key),
                AMQPValue::LongString(LongString::from(value.clone())),
            );
        }
        let timestamp = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default();
        BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_type(ShortString::from(kind))
            .with_message_id(ShortString::from(outgoing.message_id.clone()))
            .with_app_id(ShortString::from(self.app_id))
            .with_timestamp(timestamp)
            .with_delivery_mode(if outgoing.persistent { 2 } else { 1 })
            .with_headers(headers)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropped after losing its connection without a `close`.
        if !self.closing.load(Ordering::Relaxed) && !self.is_connected() {
            self.broker.failed(self.node);
        }
    }
}

/// A publish whose confirm has not been awaited yet.
#[must_use = "a publish is not safe until its confirm was awaited"]
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
    /// Longest wait for the answer.
    limit: std::time::Duration,
}

impl PendingConfirm {
    /// Waits for the broker's answer: `Ok` only for an ack of a routed
    /// message; [`PublishError::Timeout`] when none comes in time.
    pub async fn wait(self) -> Result<(), PublishError> {
        let answer = tokio::time::timeout(self.limit, self.confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.limit))?;
        match answer? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Unroutable {
                    exchange: self.exchange,
                    routing_key: self.routing_key,
                    reply: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            // The confirmed channel is always in confirm mode.
            Confirmation::NotRequested => Ok(()),
        }
    }
}

/// The text of a header of a delivery, for logs (`message_id`, `type`).
pub fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}
