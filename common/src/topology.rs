//! Every exchange and queue Warren uses, declared in one place.
//!
//! All names start with a configurable prefix (`warren` by default), so that
//! several installations, and every test, can share one broker without seeing
//! each other. Every component declares the whole topology when it connects
//! (declarations are idempotent), so components can start in any order.
//!
//! ```text
//! P.commits (topic) ──#──▶ P.commits  quorum, single active consumer ──▶ dispatcher
//! P.jobs    (topic) ──#──▶ P.jobs     quorum, delivery limit, DLX     ──▶ workers
//! P.results (topic) ──#──▶ P.results  quorum, single active consumer ──▶ dispatcher
//! P.events  (topic) ──#──▶ P.events   classic, TTL, bounded           ──▶ dispatcher
//! P.dead    (topic) ──#──▶ P.dead     classic durable                 ──▶ people
//!                   └─jobs─▶ P.dead-jobs classic durable               ──▶ dispatcher
//! ```
//!
//! A dead-lettered message is routed by the name of the queue it left
//! (`commits`, `jobs`, …): the broker's own dead-lettering uses
//! `x-dead-letter-routing-key`, Warren's rejections publish with the same
//! key. The dispatcher watches `P.dead-jobs` so that a job the broker gave up
//! on (delivery limit) still gets a verdict.
//!
//! Besides these, two kinds of private queue, one per connection, exclusive
//! and auto-deleted (gone with the connection; recreated on reconnect), are
//! declared here too ([`PrivateQueue`]): a worker's control queue
//! (server-named, bound to `P.control`: cancellations) and the dispatcher's
//! live-output queue (`P.live.<uuid>`, bound to `P.logs` with `#`, bounded
//! in bytes, oldest dropped first).
//!
//! Routing keys are repository names, so an operator can bind extra queues
//! (for one repository's commits, say) without touching Warren.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// How long a transient job event (started, heartbeat) may wait in its
/// queue before the broker drops it, in milliseconds. Events older than a
/// lease are useless; the bound keeps a stopped dispatcher from piling them up.
pub const EVENT_TTL_MS: i64 = 5 * 60 * 1000;

/// Most transient job events kept while the dispatcher is away (oldest are
/// dropped first). 100k events is about 30 MB.
pub const EVENT_QUEUE_MAX_LENGTH: i64 = 100_000;

/// Default for how many times the broker may deliver one message before it
/// dead-letters it (quorum queue `x-delivery-limit`).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

/// A queue that a component with `broker.declare = false` needs is missing
/// (or cannot be reached).
#[derive(Debug, thiserror::Error)]
#[error(
    "queue {name} is missing ({cause}); a component with broker.declare = true \
     (the dispatcher, in the least-privilege set-up) declares it"
)]
pub struct TopologyMissing {
    pub name: String,
    pub cause: lapin::Error,
}

/// A queue private to one connection: exclusive and auto-deleted, so it goes
/// with the connection (and with its broker node) and is declared again on
/// reconnect; what was in it is lost, which is why only messages that are
/// not worth a redelivery use one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateQueue {
    /// A worker's cancellations: server-named (`amq.gen-*`), bound to the
    /// control exchange. A cancel lost with a connection is sent again when
    /// the cancelled run next reports (see the dispatcher's unwanted runs).
    Control,
    /// The dispatcher's copy of running jobs' output: `P.live.<uuid>` (under
    /// the prefix, so the dispatcher's permissions cover it), bound to the
    /// logs exchange with `#`, at most `max_bytes`, oldest dropped first.
    LiveOutput { max_bytes: i64 },
}

impl PrivateQueue {
    fn declaring(self) -> &'static str {
        match self {
            Self::Control => "declaring the cancellation queue",
            Self::LiveOutput { .. } => "declaring the live output queue",
        }
    }

    fn binding(self) -> &'static str {
        match self {
            Self::Control => "binding the cancellation queue to the control exchange",
            Self::LiveOutput { .. } => "binding the live output queue",
        }
    }
}

/// A private queue could not be declared or bound (a permission, the broker
/// going away): the caller treats it like a lost connection.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct PrivateQueueError {
    /// The step that failed, e.g. "declaring the live output queue".
    pub what: &'static str,
    #[source]
    pub cause: lapin::Error,
}

/// The names of everything under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
    /// On a cluster: the replicas of each quorum queue; every durable queue
    /// is then a quorum queue (a classic queue lives on one node, and while
    /// that node is down it cannot even be declared).
    quorum_group_size: Option<u32>,
}

/// One of Warren's queues, each fed by the exchange of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Commit events from watchers to the dispatcher.
    Commits,
    /// Job attempts from the dispatcher to workers.
    Jobs,
    /// Job results from workers to the dispatcher.
    Results,
    /// Transient job events (started, heartbeat) from workers to the dispatcher.
    Events,
    /// Messages that could not be processed, with the reason in a header.
    Dead,
    /// The dead-lettered jobs (a copy of what `Dead` holds for `Jobs`).
    DeadJobs,
}

impl Queue {
    /// Every queue, in declaration order.
    pub const ALL: [Queue; 6] = [
        Queue::Dead,
        Queue::DeadJobs,
        Queue::Commits,
        Queue::Jobs,
        Queue::Results,
        Queue::Events,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Queue::Commits => "commits",
            Queue::Jobs => "jobs",
            Queue::Results => "results",
            Queue::Events => "events",
            Queue::Dead => "dead",
            Queue::DeadJobs => "dead-jobs",
        }
    }

    /// Position in [`Queue::ALL`].
    pub fn index(self) -> usize {
        Queue::ALL
            .iter()
            .position(|queue| *queue == self)
            .unwrap_or_default()
    }

    /// The routing key of this queue's messages in the dead-letter exchange.
    pub fn dead_letter_key(self) -> &'static str {
        self.suffix()
    }

    /// The exchange that feeds this queue (`Dead` for `DeadJobs`).
    fn source(self) -> Queue {
        match self {
            Queue::DeadJobs => Queue::Dead,
            other => other,
        }
    }

    /// The binding key from its exchange.
    fn binding_key(self) -> &'static str {
        match self {
            Queue::DeadJobs => Queue::Jobs.dead_letter_key(),
            _ => "#",
        }
    }
}

impl Topology {
    /// A topology under `prefix` (validated by the config layer) whose
    /// quorum queues dead-letter a message after `delivery_limit` deliveries.
    pub fn new(prefix: impl Into<String>, delivery_limit: u32) -> Self {
        Self {
            prefix: prefix.into(),
            delivery_limit,
            quorum_group_size: None,
        }
    }

    /// The same topology for a cluster: `Some(n)` declares every durable
    /// queue as a quorum queue with `n` replicas (`None`: a single node,
    /// as [`Topology::new`]). The size is fixed when a queue is created; a
    /// queue declared with another size is refused (PRECONDITION_FAILED).
    pub fn with_quorum_group_size(mut self, size: Option<u32>) -> Self {
        self.quorum_group_size = size;
        self
    }

    /// The replicas of each quorum queue, on a cluster.
    pub fn quorum_group_size(&self) -> Option<u32> {
        self.quorum_group_size
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The exchange that feeds `queue` (of the same name, but for
    /// `DeadJobs`, fed by the dead-letter exchange).
    pub fn exchange(&self, queue: Queue) -> String {
        self.queue(queue.source())
    }

    /// The fanout exchange of [`CancelJobs`](crate::messages::CancelJobs)
    /// messages; every worker binds a private queue of its own to it.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// The topic exchange of live job output ([`LogLines`](crate::messages::LogLines)),
    /// routed by job id; followers bind private queues to it.
    pub fn logs_exchange(&self) -> String {
        format!("{}.logs", self.prefix)
    }

    /// The full name of `queue`.
    pub fn queue(&self, queue: Queue) -> String {
        format!("{}.{}", self.prefix, queue.suffix())
    }

    /// Declares every exchange, queue and binding. Idempotent; fails with a
    /// PRECONDITION_FAILED channel error if a queue exists with other
    /// arguments (for example a different delivery limit).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        for (name, kind) in [
            (self.control_exchange(), ExchangeKind::Fanout),
            (self.logs_exchange(), ExchangeKind::Topic),
        ] {
            channel
                .exchange_declare(
                    ShortString::from(name),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        for queue in Queue::ALL {
            let name = self.queue(queue);
            if queue.source() == queue {
                channel
                    .exchange_declare(
                        ShortString::from(name.clone()),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
            }
            channel
                .queue_declare(
                    ShortString::from(name.clone()),
                    QueueDeclareOptions::durable(),
                    self.queue_arguments(queue),
                )
                .await?;
            channel
                .queue_bind(
                    ShortString::from(name),
                    ShortString::from(self.exchange(queue)),
                    ShortString::from(queue.binding_key()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares a queue private to this connection (exclusive, auto-delete)
    /// and binds it; returns its name. See [`PrivateQueue`].
    pub async fn declare_private(
        &self,
        channel: &Channel,
        queue: PrivateQueue,
    ) -> Result<ShortString, PrivateQueueError> {
        let (name, exchange, key, arguments) = match queue {
            PrivateQueue::Control => (
                String::new(),
                self.control_exchange(),
                "",
                FieldTable::default(),
            ),
            PrivateQueue::LiveOutput { max_bytes } => {
                let mut arguments = FieldTable::default();
                arguments.insert(
                    ShortString::from("x-max-length-bytes"),
                    AMQPValue::LongLongInt(max_bytes),
                );
                arguments.insert(
                    ShortString::from("x-overflow"),
                    AMQPValue::LongString("drop-head".into()),
                );
                (
                    format!("{}.live.{}", self.prefix, uuid::Uuid::new_v4()),
                    self.logs_exchange(),
                    "#",
                    arguments,
                )
            }
        };
        let declared = channel
            .queue_declare(
                ShortString::from(name),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|cause| PrivateQueueError {
                what: queue.declaring(),
                cause,
            })?;
        channel
            .queue_bind(
                declared.name().clone(),
                ShortString::from(exchange),
                ShortString::from(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|cause| PrivateQueueError {
                what: queue.binding(),
                cause,
            })?;
        Ok(declared.name().clone())
    }

    /// Checks, with passive declares (which need no permission), that every
    /// exchange and queue exists: for components that may not declare them.
    pub async fn verify(&self, channel: &Channel) -> Result<(), TopologyMissing> {
        for queue in Queue::ALL {
            let name = self.queue(queue);
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if let Err(cause) = channel
                .queue_declare(
                    ShortString::from(name.clone()),
                    passive,
                    FieldTable::default(),
                )
                .await
            {
                return Err(TopologyMissing { name, cause });
            }
        }
        Ok(())
    }

    /// Deletes every queue and exchange of this prefix. For tests and for
    /// operators tearing an installation down; messages in the queues are lost.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for exchange in [self.control_exchange(), self.logs_exchange()] {
            channel
                .exchange_delete(ShortString::from(exchange), Default::default())
                .await?;
        }
        for queue in Queue::ALL {
            let name = self.queue(queue);
            channel
                .queue_delete(ShortString::from(name.clone()), Default::default())
                .await?;
            if queue.source() == queue {
                channel
                    .exchange_delete(ShortString::from(name), Default::default())
                    .await?;
            }
        }
        Ok(())
    }

    fn queue_arguments(&self, queue: Queue) -> FieldTable {
        let mut args = FieldTable::default();
        let mut set = |key: &str, value: AMQPValue| {
            args.insert(ShortString::from(key), value);
        };
        let text = |value: &str| AMQPValue::LongString(LongString::from(value));
        if let Some(size) = self.quorum_group_size {
            set("x-queue-type", text("quorum"));
            set(
                "x-quorum-initial-group-size",
                AMQPValue::LongLongInt(i64::from(size)),
            );
        }
        match queue {
            Queue::Commits | Queue::Jobs | Queue::Results => {
                // Quorum queues: replicated, durable, and they count deliveries,
                // so a message that keeps failing ends in the dead-letter queue
                // instead of looping.
                set("x-queue-type", text("quorum"));
                set(
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
                );
                set("x-dead-letter-exchange", text(&self.exchange(Queue::Dead)));
                set("x-dead-letter-routing-key", text(queue.dead_letter_key()));
                if queue != Queue::Jobs {
                    // The dispatcher keeps its state in a local database, so only
                    // one dispatcher may consume at a time; a second one waits as
                    // a hot standby.
                    set("x-single-active-consumer", AMQPValue::Boolean(true));
                }
            }
            Queue::Events => {
                set("x-message-ttl", AMQPValue::LongLongInt(EVENT_TTL_MS));
                set(
                    "x-max-length",
                    AMQPValue::LongLongInt(EVENT_QUEUE_MAX_LENGTH),
                );
                set("x-single-active-consumer", AMQPValue::Boolean(true));
            }
            Queue::Dead | Queue::DeadJobs => {}
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_prefix() {
        let topology = Topology::new("ci-a", 3);
        assert_eq!(topology.queue(Queue::Jobs), "ci-a.jobs");
        assert_eq!(topology.exchange(Queue::Dead), "ci-a.dead");
    }

    #[test]
    fn work_queues_are_quorum_with_a_delivery_limit_and_dead_lettering() {
        let topology = Topology::new("p", 7);
        let args = topology.queue_arguments(Queue::Jobs);
        let args = args.inner();
        assert_eq!(
            args.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            args.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(7))
        );
        assert_eq!(
            args.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("p.dead".into()))
        );
    }

    #[test]
    fn on_a_cluster_every_durable_queue_is_quorum_with_the_group_size() {
        let single = Topology::new("p", 7);
        assert!(
            !single
                .queue_arguments(Queue::Events)
                .inner()
                .contains_key("x-queue-type"),
            "a single node keeps today's classic events queue"
        );
        let cluster = Topology::new("p", 7).with_quorum_group_size(Some(3));
        for queue in Queue::ALL {
            let args = cluster.queue_arguments(queue);
            let args = args.inner();
            assert_eq!(
                args.get("x-queue-type"),
                Some(&AMQPValue::LongString("quorum".into())),
                "{queue:?}"
            );
            assert_eq!(
                args.get("x-quorum-initial-group-size"),
                Some(&AMQPValue::LongLongInt(3)),
                "{queue:?}"
            );
        }
        let events = cluster.queue_arguments(Queue::Events);
        assert!(events.inner().contains_key("x-message-ttl"));
    }
}
