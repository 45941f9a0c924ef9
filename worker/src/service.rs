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
//! Beside the loop: [`crate::presence`] announces the worker on the events
//! queue, and with `worker.http_listen` [`crate::http`] serves `/healthz`
//! and `/metrics` ([`crate::metrics`], which the loop keeps up to date).
//! Both stop when the loop does.

use crate::cancel::{CancelledJobs, ControlQueue, JobStop, decode_cancel};
use crate::config::WorkerConfig;
use crate::events::Events;
use crate::job::{self, JobRunner, Outcome};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::presence::{self, Presence};
use anyhow::Context as _;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicRejectOptions};
use lapin::{Channel, Consumer};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span, debug, error, info, info_span, warn};
use warren_common::backoff::Backoff;
use warren_common::ids::JobId;
use warren_common::messages::{Job, JobResult};
use warren_common::session::{Session, message_id};
use warren_common::shutdown::Shutdown;
use warren_common::topology::Queue;

/// The AMQP `app_id` of everything the worker publishes.
const APP_ID: &str = "warren-worker";

/// Longest wait for the broker to confirm a result or a dead letter. A broker
/// that blocks publishers (memory alarm) must not freeze the loop; after this
/// the connection is treated as failed and the result kept for the next one.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

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

/// After a forced stop, how long the killed jobs may take to report back
/// (their process groups get the kill grace, then SIGKILL), beyond the kill
/// grace itself.
const ABORT_WAIT: Duration = Duration::from_secs(15);

/// Runs the worker until `shutdown` completes: the first stage (`graceful`)
/// stops taking jobs and finishes those in hand within `shutdown_grace`; the
/// second (`forced`), or the end of the grace, kills them and leaves them
/// unacked for the broker to requeue. Returns `Ok` on a clean stop and an
/// error if jobs or results had to be abandoned.
pub async fn run(config: WorkerConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    crate::run::adopt_orphans();
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
        broker = %config.broker.safe_url(),
        prefix = config.broker.topology.prefix(),
        "worker starting"
    );
    let mut service = Service::new(config, shutdown);
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

/// Where the worker is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Not taking jobs; finishing those in hand until the deadline.
    Draining {
        until: Instant,
    },
    /// Jobs killed; waiting (until the deadline) for them to report back.
    Aborting {
        until: Instant,
    },
    /// Done waiting.
    GaveUp,
}

/// What the stop machinery asks for next.
#[derive(Debug, Clone, Copy)]
enum StopStep {
    Drain,
    Abort { why: &'static str },
    GiveUp,
}

impl Stop {
    /// The next stop step, as a future that borrows nothing.
    fn next_step(self, shutdown: &Shutdown) -> impl Future<Output = StopStep> + 'static {
        let graceful = shutdown.graceful.clone();
        let forced = shutdown.forced.clone();
        async move {
            match self {
                Stop::Running => tokio::select! {
                    biased;
                    () = forced.cancelled() => StopStep::Abort { why: "forced stop" },
                    () = graceful.cancelled() => StopStep::Drain,
                },
                Stop::Draining { until } => tokio::select! {
                    () = forced.cancelled() => StopStep::Abort { why: "forced stop" },
                    () = sleep_until(until) => StopStep::Abort { why: "shutdown grace expired" },
                },
                Stop::Aborting { until } => {
                    sleep_until(until).await;
                    StopStep::GiveUp
                }
                Stop::GaveUp => std::future::pending().await,
            }
        }
    }
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
    fn new(config: WorkerConfig, shutdown: Shutdown) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (session_tx, session_rx) = watch::channel(None);
        let events = Events::new(session_rx, config.id.clone(), config.host.clone());
        let metrics = Metrics::new(config.slots);
        let presence = Presence::new(config.id.clone(), config.host.clone(), config.slots);
        Self {
            runner: Arc::new(JobRunner::new(&config, metrics.clone())),
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

    /// Whether there is nothing left to do.
    fn stopped(&self) -> bool {
        match self.stop {
            Stop::Running => false,
            Stop::Draining { .. } => self.in_flight == 0 && self.outbox.is_empty(),
            Stop::Aborting { .. } => self.in_flight == 0,
            Stop::GaveUp => true,
        }
    }

    fn ending(&self) -> anyhow::Result<()> {
        let lost = self.outbox.len();
        let unfinished = self.in_flight;
        if self.abandoned + lost + unfinished == 0 {
            info!("worker stopped");
            return Ok(());
        }
        anyhow::bail!(
            "stopped without finishing everything: {} jobs killed, {unfinished} jobs still \
             running, {lost} results not published; the broker gives those jobs to other workers",
            self.abandoned
        )
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
        info!(generation = self.generation, "connected to the broker");
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

    fn apply(&mut self, step: StopStep) {
        match step {
            StopStep::Drain => {
                let grace = self.config.shutdown_grace;
                info!(in_flight = self.in_flight, grace = %humantime::format_duration(grace),
                    "stopping: taking no more jobs, finishing those in hand");
                self.stop = Stop::Draining {
                    until: Instant::now() + grace,
                };
            }
            StopStep::Abort { why } => {
                warn!(
                    in_flight = self.in_flight,
                    why, "stopping now: killing the jobs in hand"
                );
                self.abort.cancel();
                self.stop = Stop::Aborting {
                    until: Instant::now() + self.config.kill_grace + ABORT_WAIT,
                };
            }
            StopStep::GiveUp => {
                error!(
                    in_flight = self.in_flight,
                    "killed jobs did not report back; giving up on them"
                );
                self.stop = Stop::GaveUp;
            }
        }
    }

    /// Opens the private queue on the control exchange; on failure, says
    /// so and tries again later (jobs still run, they cannot be cancelled).
    async fn listen_for_cancellations(&mut self, session: &Session, channels: &mut Channels) {
        let tag = format!("{}-control", self.config.id);
        match ControlQueue::open(session, &tag).await {
            Ok(queue) => {
                debug!("listening for cancellations");
                self.control_backoff.reset();
                channels.control = Some(queue);
            }
            Err(error) if !session.is_connected() => {
                // The connection is going; the loop notices and reconnects.
                debug!(%error, "cannot listen for cancellations: the connection is closed");
            }
            Err(error) => {
                let delay = self.control_backoff.next_delay();
                warn!(%error, retry_in = ?delay,
                    "cannot listen for cancellations (the worker's broker user needs configure, \
                     write and read on amq.gen-* and read on the control exchange); \
                     jobs run to their end meanwhile");
                channels.control_retry = Some(Instant::now() + delay);
            }
        }
    }

    /// A control message: kill the listed jobs running here, and remember
    /// them so that a later delivery is dropped.
    fn on_control(&mut self, delivery: &Delivery) {
        let cancel = match decode_cancel(&delivery.data) {
            Ok(cancel) => cancel,
            Err(error) => {
                self.ignored_controls += 1;
                warn!(message_id = %message_id(delivery), %error,
                    ignored_total = self.ignored_controls, "control message ignored: not a valid CancelJobs");
                return;
            }
        };
        debug!(jobs = cancel.jobs.len(), reason = %cancel.reason, "cancellation received");
        let now = Instant::now();
        for cancelled in &cancel.jobs {
            self.cancelled
                .remember(cancelled.job_id, cancelled.attempt, now.into_std());
            for running in self.running.values_mut() {
                if running.job_id != cancelled.job_id
                    || running.attempt > cancelled.attempt
                    || running.cancelled.is_some()
                {
                    continue;
                }
                running.span.in_scope(|| {
                    info!(reason = %cancel.reason,
                        "job cancelled by the dispatcher: killing its processes; no result will be published");
                });
                running.cancelled = Some((cancel.reason.clone(), now));
                running.stop.cancel();
            }
        }
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

    /// A job came back while connected: publish then ack; or, cancelled,
    /// just ack.
    async fn settle(&mut self, session: &Session, done: Done) -> Result<(), ConnectionLost> {
        let cancelled = self.release(done.slot);
        self.count(cancelled.is_some(), &done.outcome);
        let current = done.generation == self.generation;
        let delivery = done.delivery;
        if let Some((reason, since)) = cancelled {
            // Whatever it came to (killed, or finished just before the kill):
            // the dispatcher has decided the job; no result, and the broker
            // must not give it to anyone again.
            info!(message_id = %message_id(&delivery), %reason, stopped_in = ?since.elapsed(),
                "cancelled job gone; its slot is free");
            if current {
                ack(&delivery).await?;
            }
            return Ok(());
        }
        match done.outcome {
            Ok(Outcome::Finished(result)) => {
                if let Err(error) = publish_result(session, &result).await {
                    warn!(%error, "result not published; kept for the next connection");
                    self.outbox.push(*result);
                    return Err(ConnectionLost(format!("publishing a result: {error}")));
                }
                if current {
                    ack(&delivery).await?;
                    debug!("job acknowledged");
                }
            }
            Ok(Outcome::Poison { reason }) if current => {
                dead_letter(session, &delivery, &reason).await?;
            }
            Ok(Outcome::Poison { .. }) => {
                // From a lost connection: the broker delivers it again.
            }
            Ok(Outcome::Cancelled) => {
                // Only a cancellation stops a job this way, and it was
                // handled above; ack so the broker does not run it again.
                if current {
                    ack(&delivery).await?;
                }
            }
            Ok(Outcome::Abandoned) if self.abort.is_cancelled() => self.abandoned += 1,
            Ok(Outcome::Abandoned) => {
                // Not our stop (the command could not even be waited for):
                // give the job back now rather than hold its prefetch credit
                // until the connection closes.
                warn!(message_id = %message_id(&delivery), "job abandoned; requeueing it");
                if current {
                    let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                }
            }
            Err(panic) => {
                error!(message_id = %message_id(&delivery), %panic,
                    "the job's task panicked; requeueing the job");
                if current {
                    let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                }
            }
        }
        Ok(())
    }

    /// A job came back while disconnected: keep its result for later.
    fn settle_offline(&mut self, done: Done) {
        let cancelled = self.release(done.slot);
        self.count(cancelled.is_some(), &done.outcome);
        if cancelled.is_some() {
            // Cancelled: its delivery returns to the queue with the lost
            // connection, and is dropped when it comes back.
            return;
        }
        match done.outcome {
            Ok(Outcome::Finished(result)) => self.outbox.push(*result),
            Ok(Outcome::Abandoned) => self.abandoned += 1,
            // Its delivery returns to the queue with the lost connection.
            Ok(Outcome::Poison { .. } | Outcome::Cancelled) | Err(_) => {}
        }
    }

    /// Frees `slot`; returns the reason and time of its job's cancellation,
    /// if it was cancelled.
    fn release(&mut self, slot: u16) -> Option<(String, Instant)> {
        self.in_flight -= 1;
        self.note_busy();
        self.free_slots.insert(slot);
        self.running
            .remove(&slot)
            .and_then(|running| running.cancelled)
    }

    /// Tells the metrics and the worker's status how many slots are busy.
    fn note_busy(&self) {
        self.metrics.set_busy(self.in_flight);
        self.presence.set_busy(self.in_flight);
    }

    /// Counts a job that came back: with its result's status, or as
    /// cancelled. A job given back to the broker (abandoned, poison, a
    /// panic) has no verdict here and is not counted.
    fn count(&self, cancelled: bool, outcome: &Result<Outcome, String>) {
        let status = match outcome {
            _ if cancelled => "cancelled",
            Ok(Outcome::Cancelled) => "cancelled",
            Ok(Outcome::Finished(result)) => result.status.as_str(),
            Ok(Outcome::Abandoned | Outcome::Poison { .. }) | Err(_) => return,
        };
        self.metrics.job_finished(status);
        self.presence.job_done();
    }

    /// Publishes the results kept from earlier connections.
    async fn flush_outbox(&mut self, session: &Session) -> Result<(), ConnectionLost> {
        if !self.outbox.is_empty() {
            info!(
                results = self.outbox.len(),
                "publishing results kept from the last connection"
            );
        }
        while let Some(result) = self.outbox.front() {
            let span = result_span(result);
            match publish_result(session, result).instrument(span).await {
                Ok(()) => self.outbox.published(),
                Err(error) => {
                    self.outbox.failed();
                    return Err(ConnectionLost(format!("publishing a kept result: {error}")));
                }
            }
        }
        Ok(())
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

/// Moves an undecodable job to the dead-letter queue with `reason`.
async fn dead_letter(
    session: &Session,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), ConnectionLost> {
    let id = message_id(delivery);
    let dead = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        session.dead_letter(delivery, Queue::Jobs, reason),
    )
    .await;
    match dead {
        Ok(Ok(())) => {
            warn!(message_id = %id, %reason,
                rejected_total = warren_common::session::rejected_total(Queue::Jobs),
                "job message dead-lettered");
            Ok(())
        }
        Ok(Err(error)) => Err(ConnectionLost(format!("dead-lettering {id}: {error}"))),
        Err(_) => Err(ConnectionLost(format!("dead-lettering {id}: no confirm"))),
    }
}

/// The span of a result published after its job's task is gone (kept
/// across a lost connection): the same fields as [`job::job_span`].
fn result_span(result: &JobResult) -> Span {
    info_span!("job", repo = %result.repo, sha = %result.sha, job = %result.job_id,
        attempt = result.attempt)
}

/// Publishes `result` and waits for the broker's confirm.
async fn publish_result(session: &Session, result: &JobResult) -> Result<(), String> {
    match tokio::time::timeout(
        PUBLISH_TIMEOUT,
        session.publish(Queue::Results, result, result.envelope()),
    )
    .await
    {
        Ok(Ok(())) => {
            debug!("result published");
            Ok(())
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no confirm within {PUBLISH_TIMEOUT:?}")),
    }
}

/// Acks a job whose result the broker confirmed.
async fn ack(delivery: &Delivery) -> Result<(), ConnectionLost> {
    if !delivery.acker.poisoned() && !delivery.acker.usable() {
        // Acknowledged early (see `ack_early`).
        return Ok(());
    }
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            // The channel is gone: the broker requeues the job and it runs
            // again; the dispatcher counts the second result as a duplicate.
            warn!(message_id = %message_id(delivery), "could not ack a finished job: its channel is closed");
            Ok(())
        }
        Err(error) => Err(ConnectionLost(format!("acking a job: {error}"))),
    }
}

/// Acknowledges a job that is still running at `worker.ack_deadline`, so
/// that the broker's `consumer_timeout` does not take it back and give it to
/// a second worker while this one still runs it. From here on, a crash of
/// this worker is noticed by the dispatcher's lease instead of the broker.
async fn ack_early(delivery: &Delivery, deadline: Duration) {
    match delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => info!(message_id = %message_id(delivery),
            deadline = %humantime::format_duration(deadline),
            "job still running at the ack deadline: acknowledged early; the dispatcher's lease covers it now"),
        Ok(false) => {
            debug!(message_id = %message_id(delivery), "early ack skipped: the channel is gone")
        }
        Err(error) => warn!(message_id = %message_id(delivery), %error, "early ack failed"),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
