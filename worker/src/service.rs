//! The worker's main loop: connect, consume, run jobs in slots, publish each
//! result and only then ack its job; reconnect after a failure; stop in two
//! stages.
//!
//! One task (this loop) owns the broker session, the slots and the outbox;
//! jobs run in tasks of their own and hand their outcome back through a
//! channel, so nothing here needs a lock. The channel is unbounded because
//! the prefetch already bounds it: at most `slots` jobs are in flight.
//!
//! The loop also listens to the control exchange ([`crate::cancel`]): a
//! `CancelJobs` naming a job in a slot kills it through that slot's
//! [`JobStop`]; its delivery is acked without a result, and a later
//! delivery of a cancelled job is acked and dropped without running.
//!
//! Its parts, each an `impl Service` block of its own: `stop` (the two
//! stages), `delivery` (publish, confirm, then ack; the outbox; the early
//! ack; dead letters) and `control` (cancellations).
//!
//! Beside the loop: [`crate::presence`] announces the worker on the events
//! queue, and with `worker.http_listen` [`crate::http`] serves `/healthz`
//! and `/metrics` ([`crate::metrics`], which the loop keeps up to date).
//! Both stop when the loop does.

mod control;
mod delivery;
mod stop;

use self::delivery::{ack, ack_early, dead_letter};
use self::stop::{ABORT_WAIT, Stop};
use crate::cancel::{CancelledJobs, ControlQueue, JobStop};
use crate::config::WorkerConfig;
use crate::events::Events;
use crate::executor::Executor;
use crate::job::{self, JobRunner, Outcome};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::presence::{self, Presence};
use anyhow::Context as _;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicRejectOptions};
use lapin::{Channel, Consumer};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span, debug, error, info, warn};
use warren_common::backoff::Backoff;
use warren_common::ids::JobId;
use warren_common::messages::Job;
use warren_common::session::{Session, message_id};
use warren_common::shutdown::Shutdown;
use warren_common::topology::Queue;

/// The AMQP `app_id` of everything the worker publishes.
const APP_ID: &str = "warren-worker";

/// How often an idle loop checks that its connection is still up (a consumer
/// notices a dead connection by itself; this covers the time without one).
const CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// A connection that lived this long was healthy: the next reconnection
/// starts again from the shortest backoff. Shorter-lived ones (a broker that
/// accepts and then drops connections) keep backing off.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Longest wait before listening for cancellations again after the control
/// queue failed while the connection stayed up (a permission missing, the
/// queue deleted by hand); the waits start at 100 ms and double. Jobs run
/// meanwhile, they just cannot be cancelled; five minutes keeps a worker
/// without the permission from filling its log.
const CONTROL_RETRY_MAX: Duration = Duration::from_secs(5 * 60);

/// Runs the worker until `shutdown` completes: the first stage (`graceful`)
/// stops taking jobs and finishes those in hand within `shutdown_grace`; the
/// second (`forced`), or the end of the grace, kills them and leaves them
/// unacked for the broker to requeue. Returns `Ok` on a clean stop and an
/// error if jobs or results had to be abandoned.
pub async fn run(config: WorkerConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    crate::run::adopt_orphans();
    let executor = Executor::start(&config.executor)?;
    if !config.allow_network && executor.kind() == crate::executor::ExecutorKind::Process {
        warn!(
            "worker.allow_network = false does nothing with worker.executor = \"process\": tests use the host's network"
        );
    }
    for slot in 0..config.slots {
        let dir = slot_dir(&config, slot);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the slot folder {}", dir.display()))?;
    }
    // Before anything else: a port already taken is a configuration error.
    let listener = match config.http_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("listening on worker.http_listen = {address}"))?,
        ),
        None => None,
    };
    info!(
        worker = %config.id,
        slots = config.slots,
        work_dir = %config.work_dir.display(),
        allowed_repos = ?config.allowed_repos,
        executor = %executor.describe(),
        broker = %config.broker.safe_url(),
        prefix = config.broker.topology.prefix(),
        "worker starting"
    );
    let mut service = Service::new(config, executor, shutdown);
    // Stops the presence task and the HTTP server when the loop ends.
    let beside = CancellationToken::new();
    if let Some(listener) = listener {
        if let Ok(address) = listener.local_addr() {
            info!(%address, "serving /healthz and /metrics over HTTP");
        }
        service.tracker.spawn(crate::http::serve(
            listener,
            service.metrics.clone(),
            beside.clone(),
        ));
    }
    service.tracker.spawn(presence::announce(
        service.presence.clone(),
        service.session_tx.subscribe(),
        service.config.heartbeat_interval,
        beside.clone(),
    ));
    let result = service.run().await;
    beside.cancel();
    service.tracker.close();
    if tokio::time::timeout(ABORT_WAIT, service.tracker.wait())
        .await
        .is_err()
    {
        warn!("some job tasks did not end; leaving them behind");
    }
    result
}

fn slot_dir(config: &WorkerConfig, slot: u16) -> PathBuf {
    config.work_dir.join(format!("slot-{slot}"))
}

/// A job's task reporting back.
struct Done {
    /// The connection the delivery came from: only that one can ack it.
    generation: u64,
    slot: u16,
    delivery: Delivery,
    /// `Err` when the job's task panicked.
    outcome: Result<Outcome, String>,
    /// The job's span ([`job::job_span`]), for the lines about settling it.
    span: Span,
}

/// A connection failed; the loop drops it and connects again.
#[derive(Debug)]
struct ConnectionLost(String);

/// The job in a slot, to find and stop it by id.
struct Running {
    job_id: JobId,
    /// The attempt it runs: a cancel covers it or a later retry.
    attempt: u32,
    stop: JobStop,
    /// Set when the dispatcher cancelled it: (reason, when).
    cancelled: Option<(String, Instant)>,
    /// The job's span ([`job::job_span`]).
    span: Span,
}

/// The channels of one connection, closed only after the connection: a
/// channel closing while the connection closes is an error.
#[derive(Default)]
struct Channels {
    jobs: Option<Channel>,
    control: Option<ControlQueue>,
    /// When to try listening for cancellations again.
    control_retry: Option<Instant>,
}

struct Service {
    config: WorkerConfig,
    runner: Arc<JobRunner>,
    shutdown: Shutdown,
    tracker: TaskTracker,
    /// Cancelled to kill every job (forced stop).
    abort: CancellationToken,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    session_tx: watch::Sender<Option<Arc<Session>>>,
    events: Events,
    /// What `/metrics` shows.
    metrics: Metrics,
    /// What the worker's statuses say.
    presence: Presence,
    /// Slot numbers not running a job; the lowest is used first, so the
    /// clones of slot 0 are the warmest.
    free_slots: BTreeSet<u16>,
    /// The job in each busy slot.
    running: BTreeMap<u16, Running>,
    /// Jobs cancelled lately: a delivery of one is dropped.
    cancelled: CancelledJobs,
    /// Control messages that could not be decoded, since the start.
    ignored_controls: u64,
    /// Waits between attempts to listen for cancellations.
    control_backoff: Backoff,
    in_flight: usize,
    outbox: Outbox,
    /// Counts connections; a delivery can only be acked on its own.
    generation: u64,
    stop: Stop,
    abandoned: usize,
}

impl Service {
    fn new(config: WorkerConfig, executor: Executor, shutdown: Shutdown) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (session_tx, session_rx) = watch::channel(None);
        let events = Events::new(session_rx, config.id.clone(), config.host.clone());
        let metrics = Metrics::new(config.slots);
        let presence = Presence::new(config.id.clone(), config.host.clone(), config.slots);
        Self {
            runner: Arc::new(JobRunner::new(&config, executor, metrics.clone())),
            metrics,
            presence,
            free_slots: (0..config.slots).collect(),
            running: BTreeMap::new(),
            cancelled: CancelledJobs::default(),
            ignored_controls: 0,
            control_backoff: Backoff::new(CONTROL_RETRY_MAX),
            outbox: Outbox::new(2 * usize::from(config.slots)),
            config,
            shutdown,
            tracker: TaskTracker::new(),
            abort: CancellationToken::new(),
            done_tx,
            done_rx,
            session_tx,
            events,
            in_flight: 0,
            generation: 0,
            stop: Stop::Running,
            abandoned: 0,
        }
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(self.config.broker.reconnect_max_delay);
        let mut attempt: u32 = 0;
        while !self.stopped() {
            let Some(connected) = self.connect().await else {
                continue;
            };
            let session = match connected {
                Ok(session) => Arc::new(session),
                Err(error) => {
                    attempt += 1;
                    let delay = backoff.next_delay();
                    warn!(attempt, url = %self.config.broker.safe_url(), %error,
                        retry_in = ?delay, "cannot connect to the broker");
                    self.idle(delay).await;
                    continue;
                }
            };
            attempt = 0;
            let since = Instant::now();
            if let Err(ConnectionLost(why)) = self.serve(&session).await {
                if since.elapsed() >= HEALTHY_SESSION {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(url = %self.config.broker.safe_url(), error = %why, retry_in = ?delay,
                    in_flight = self.in_flight, kept_results = self.outbox.len(),
                    "lost the broker connection");
                self.idle(delay).await;
            }
        }
        self.ending()
    }

    /// One connection attempt; `None` if a stop step interrupted it.
    async fn connect(&mut self) -> Option<Result<Session, warren_common::session::SessionError>> {
        let broker = self.config.broker.clone();
        let name = format!("{APP_ID} {}", self.config.id);
        let mut connecting = std::pin::pin!(Session::connect(&broker, APP_ID, &name));
        loop {
            let stop = self.stop.next_step(&self.shutdown);
            tokio::select! {
                result = &mut connecting => return Some(result),
                Some(done) = self.done_rx.recv() => self.settle_offline(done),
                step = stop => {
                    self.apply(step);
                    if self.stopped() {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits `delay` before the next connection attempt, still collecting
    /// finished jobs and stop signals.
    async fn idle(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            let stop = self.stop.next_step(&self.shutdown);
            tokio::select! {
                () = sleep_until(until) => return,
                Some(done) = self.done_rx.recv() => self.settle_offline(done),
                step = stop => {
                    self.apply(step);
                    if self.stopped() {
                        return;
                    }
                }
            }
        }
    }

    /// Uses one connection until it fails or the worker has stopped.
    async fn serve(&mut self, session: &Arc<Session>) -> Result<(), ConnectionLost> {
        self.generation += 1;
        info!(
            generation = self.generation,
            url = session.url(),
            "connected to the broker"
        );
        self.metrics.set_connected(true);
        // Also tells the presence task to announce the worker at once.
        self.session_tx.send_replace(Some(Arc::clone(session)));
        // The consumer's channel lives as long as the session, even after the
        // consumer is cancelled: lapin closes a channel when its last handle
        // is dropped, and the broker would requeue the jobs in hand.
        let mut channels = Channels::default();
        let result = self.serve_session(session, &mut channels).await;
        self.session_tx.send_replace(None);
        if result.is_ok() && self.in_flight == 0 && session.is_connected() {
            // A clean stop: the last word is that nothing runs here.
            let mut status = self.presence.status();
            status.busy = 0;
            self.presence.publish(session, &status).await;
        }
        self.metrics.set_connected(false);
        // Closing requeues every delivery not acked (jobs abandoned or whose
        // result could not be published).
        session.close().await;
        // Only now: a channel closing while the connection closes is an error.
        drop(channels);
        result
    }

    async fn serve_session(
        &mut self,
        session: &Session,
        channels: &mut Channels,
    ) -> Result<(), ConnectionLost> {
        self.flush_outbox(session).await?;
        // Before taking jobs, so that no cancellation of a job taken on this
        // connection is missed.
        self.listen_for_cancellations(session, channels).await;
        let mut consumer: Option<Consumer> = None;
        let mut check = tokio::time::interval(CONNECTION_CHECK);
        loop {
            if self.stopped() {
                return Ok(());
            }
            // Take jobs only with every slot free: jobs of a lost connection
            // may still be running, and prefetch = slots must stay the bound.
            if channels.jobs.is_none() && self.stop == Stop::Running && self.in_flight == 0 {
                let (opened, started) = self.start_consuming(session).await?;
                channels.jobs = Some(opened);
                consumer = Some(started);
            }
            let stop = self.stop.next_step(&self.shutdown);
            let control_retry = channels.control_retry;
            tokio::select! {
                delivery = next_delivery(&mut consumer) => match delivery {
                    Some(Ok(delivery)) if self.stop == Stop::Running => {
                        self.take_delivery(session, delivery).await?;
                    }
                    Some(Ok(delivery)) => {
                        // Sent before the broker saw the cancel: give it back.
                        let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                    }
                    Some(Err(error)) => return Err(ConnectionLost(format!("consuming jobs: {error}"))),
                    None if self.stop == Stop::Running => {
                        return Err(ConnectionLost("the broker cancelled the jobs consumer".into()));
                    }
                    None => {
                        debug!("jobs consumer cancelled");
                        consumer = None;
                    }
                },
                message = next_control(&mut channels.control) => match message {
                    Some(Ok(delivery)) => self.on_control(&delivery),
                    failed => {
                        if !session.is_connected() {
                            return Err(ConnectionLost("the connection is closed".into()));
                        }
                        let delay = self.control_backoff.next_delay();
                        let error = match failed {
                            Some(Err(error)) => error.to_string(),
                            _ => "the broker cancelled its consumer".into(),
                        };
                        warn!(%error, retry_in = ?delay,
                            "the cancellation queue failed; jobs cannot be cancelled until it is back");
                        channels.control = None;
                        channels.control_retry = Some(Instant::now() + delay);
                    }
                },
                () = sleep_until_some(control_retry) => {
                    channels.control_retry = None;
                    self.listen_for_cancellations(session, channels).await;
                }
                Some(done) = self.done_rx.recv() => {
                    let span = done.span.clone();
                    self.settle(session, done).instrument(span).await?;
                }
                step = stop => {
                    let was_running = self.stop == Stop::Running;
                    self.apply(step);
                    if was_running
                        && let (Some(channel), Some(consumer)) = (channels.jobs.as_ref(), &consumer)
                    {
                        // Stop taking jobs; the stream ends once the broker
                        // confirms.
                        channel
                            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                            .await
                            .map_err(|e| ConnectionLost(format!("cancelling the consumer: {e}")))?;
                    }
                }
                _ = check.tick() => {
                    if !session.is_connected() {
                        return Err(ConnectionLost("the connection is closed".into()));
                    }
                }
            }
        }
    }

    async fn start_consuming(
        &self,
        session: &Session,
    ) -> Result<(Channel, Consumer), ConnectionLost> {
        // Prefetch = slots: the broker hands this worker no more jobs than it
        // can run at once, and the rest stay in the queue for other workers.
        let consumer = session
            .consume(Queue::Jobs, self.config.slots, self.config.id.as_str())
            .await
            .map_err(|e| ConnectionLost(e.to_string()))?;
        info!(slots = self.config.slots, "waiting for jobs");
        Ok(consumer)
    }

    /// A delivery from the jobs queue: dead-letter it, drop it (cancelled
    /// already) or start it in a free slot.
    async fn take_delivery(
        &mut self,
        session: &Session,
        delivery: Delivery,
    ) -> Result<(), ConnectionLost> {
        let job = match job::decode_job(&delivery.data) {
            Ok(job) => job,
            Err(reason) => return dead_letter(session, &delivery, &reason).await,
        };
        let span = job::job_span(&job);
        if self
            .cancelled
            .contains(&job.job_id, job.attempt, Instant::now().into_std())
        {
            span.in_scope(|| info!("job dropped without running: the dispatcher cancelled it"));
            return ack(&delivery).instrument(span).await;
        }
        self.start_job(job, delivery, span).await;
        Ok(())
    }

    async fn start_job(&mut self, job: Job, delivery: Delivery, span: Span) {
        let Some(slot) = self.free_slots.pop_first() else {
            // Cannot happen with prefetch = slots; if it does, the job goes
            // back to the queue rather than wait here.
            span.in_scope(|| {
                error!(message_id = %message_id(&delivery), "a job arrived with every slot busy; requeueing it");
            });
            let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
            return;
        };
        self.in_flight += 1;
        self.note_busy();
        let stop = JobStop::new(&self.abort);
        self.running.insert(
            slot,
            Running {
                job_id: job.job_id,
                attempt: job.attempt,
                stop: stop.clone(),
                cancelled: None,
                span: span.clone(),
            },
        );
        let runner = Arc::clone(&self.runner);
        let events = self.events.clone();
        let done_tx = self.done_tx.clone();
        let dir = slot_dir(&self.config, slot);
        let generation = self.generation;
        let ack_deadline = self.config.ack_deadline;
        let task_span = span.clone();
        self.tracker.spawn(
            async move {
                let outcome = {
                    let job =
                        AssertUnwindSafe(job::execute_job(&runner, &dir, &job, &events, &stop))
                            .catch_unwind();
                    let mut job = std::pin::pin!(job);
                    tokio::select! {
                        outcome = &mut job => outcome,
                        () = tokio::time::sleep(ack_deadline) => {
                            ack_early(&delivery, ack_deadline).await;
                            job.await
                        }
                    }
                };
                let outcome = outcome.map_err(|panic| panic_message(panic.as_ref()));
                // The receiver lives as long as the service; if it is gone the
                // worker is exiting and the broker requeues the job.
                let _ = done_tx.send(Done {
                    generation,
                    slot,
                    delivery,
                    outcome,
                    span,
                });
            }
            .instrument(task_span),
        );
    }

    /// Tells the metrics and the worker's status how many slots are busy.
    fn note_busy(&self) {
        self.metrics.set_busy(self.in_flight);
        self.presence.set_busy(self.in_flight);
    }
}

/// The next delivery; pending for ever when there is no consumer.
async fn next_delivery(consumer: &mut Option<Consumer>) -> Option<lapin::Result<Delivery>> {
    match consumer {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

/// The next control message; pending for ever when not listening.
async fn next_control(control: &mut Option<ControlQueue>) -> Option<lapin::Result<Delivery>> {
    match control {
        Some(queue) => queue.consumer().next().await,
        None => std::future::pending().await,
    }
}

/// Completes at `at`; never without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
