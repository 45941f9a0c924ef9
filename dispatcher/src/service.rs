//! The dispatcher's loop: consume commit events, job events and results;
//! keep the books; publish jobs; write result files.
//!
//! Everything runs on one task, one message at a time, so the database has a
//! single writer and needs no locks. Its calls are short (a few small
//! transactions per message) and are made inline. Only reading a commit's
//! tree (a fetch) runs beside the loop, on blocking threads: commits are
//! planned in the order they came, and a slow fetch holds up only the
//! commits behind it, never results, heartbeats or leases.
//!
//! Every ack follows the work it acknowledges: a commit event is acked once
//! its jobs are in the database and confirmed by the broker (or its error
//! result is recorded); a result once it is recorded. A crash in between
//! means a redelivery, which the database deduplicates.

use crate::config::DispatcherConfig;
use crate::http::{self, CommandOutcome};
use crate::live::{self, LiveLogs};
use crate::metrics::{Metrics, StatusLabel};
use crate::mirror::{CommitTree, MirrorError, Mirrors};
use crate::notify::{Notification, Notifier};
use crate::select::{self, Selection};
use crate::spec;
use crate::split::{self, ShardPlan};
use crate::store::{
    CommitSeen, EventRecorded, Planned, ResultRecorded, RetryBudget, Store, StoreError,
};
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, error, info, warn};
use warren_common::backoff::Backoff;
use warren_common::ids::SuitePath;
use warren_common::messages::{
    CancelJobs, CommitEvent, DecodeError, Job, JobAttempt, JobEvent, JobResult, WorkerStatus,
    decode,
};
use warren_common::session::{Outgoing, PublishError, Session, SessionError, message_id};
use warren_common::shutdown::Shutdown;
use warren_common::topology::Queue;

/// The `app_id` of everything the dispatcher publishes.
pub const APP_ID: &str = "warren-dispatcher";

/// Fetch attempts for one commit before it gets an `error` result: a
/// repository that is unreachable three times over about three seconds is
/// reported, not waited for.
const FETCH_ATTEMPTS: u32 = 3;

/// How often result files that could not be written (disk full, permissions)
/// are tried again, in seconds.
const REWRITE_INTERVAL_SECS: u64 = 30;

/// How often leases are checked, in milliseconds: a lost run is noticed at
/// most this long after its lease ran out.
const LEASE_CHECK_MS: u64 = 500;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The broker connection failed: reconnect.
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the {0} consumer was cancelled by the broker")]
    ConsumerGone(&'static str),
    /// The database failed: stop; nothing can be recorded safely.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the dispatcher until `shutdown` (reconnecting to the broker as long
/// as needed). Returns an error only if the database fails.
pub async fn run(config: DispatcherConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut store = Store::open(&config.database, config.sync).map_err(|error| {
        anyhow::anyhow!(
            "opening the database {}: {error}",
            config.database.display()
        )
    })?;
    let reader = Store::open_read_only(&config.database).map_err(|error| {
        anyhow::anyhow!(
            "opening the database {} to read: {error}",
            config.database.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!("listening on http.listen {}: {error}", config.http_listen)
        })?;
    // Commands from the HTTP side wait here while the loop is busy or
    // reconnecting; a handful is plenty (people click buttons).
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (ready, ready_rx) = watch::channel(false);
    // Commit updates for live pages: a page that falls behind by more
    // skips to the next update rather than holding the loop.
    let (updates, _) = broadcast::channel(UPDATE_QUEUE);
    let metrics = Arc::new(Metrics::new());
    let live = Arc::new(LiveLogs::default());
    let state = http::AppState::new(
        &config,
        reader,
        commands_tx,
        ready_rx,
        updates.clone(),
        Arc::clone(&metrics),
        Arc::clone(&live),
    );
    let http_stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, state, http_stop.clone()));
    let live_output = tokio::spawn(live::run(live, config.broker.clone(), http_stop.clone()));
    let notifier = Notifier::start(
        config.webhooks.clone(),
        config.webhook_timeout,
        config.webhook_retries,
    );
    let mut dispatcher = Dispatcher {
        mirrors: Arc::new(Mirrors::new(&config.mirror_dir, config.git.clone())),
        config,
        store: &mut store,
        commands,
        updates,
        ready,
        metrics,
        notifier,
    };
    let outcome = dispatcher.run(&shutdown).await;
    http_stop.cancel();
    let _ = live_output.await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(error))) => warn!(%error, "HTTP server"),
        Err(_) => warn!("HTTP server did not stop in time"),
        _ => {}
    }
    outcome
}

/// Commands from the HTTP side waiting for the loop.
const COMMAND_QUEUE: usize = 16;
/// Commit updates buffered for each live page.
const UPDATE_QUEUE: usize = 1024;

impl Dispatcher<'_> {
    /// Connects, serves, reconnects, until `shutdown`.
    async fn run(&mut self, shutdown: &Shutdown) -> anyhow::Result<()> {
        let dispatcher = self;
        let name = format!("{APP_ID} {}", warren_common::hostname());
        let mut backoff = Backoff::new(dispatcher.config.broker.reconnect_max_delay);
        while !shutdown.graceful.is_cancelled() {
            match Session::connect(&dispatcher.config.broker, APP_ID, &name).await {
                Ok(session) => {
                    info!(url = %dispatcher.config.broker.safe_url(), "connected to the broker");
                    backoff.reset();
                    let outcome = dispatcher.serve(&session, shutdown).await;
                    dispatcher.ready.send_replace(false);
                    session.close().await;
                    match outcome {
                        Ok(()) => break,
                        Err(ServeError::Store(error)) => {
                            return Err(anyhow::anyhow!("database failure: {error}"));
                        }
                        Err(error) => warn!(%error, "lost the broker; reconnecting"),
                    }
                }
                Err(error) => warn!(%error, "cannot reach the broker; retrying"),
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.graceful.cancelled() => break,
            }
        }
        info!("dispatcher stopped");
        Ok(())
    }
}

struct Dispatcher<'a> {
    config: DispatcherConfig,
    mirrors: Arc<Mirrors>,
    store: &'a mut Store,
    /// Retries and cancels asked for over HTTP.
    commands: mpsc::Receiver<http::Command>,
    /// Ids of commits that changed, for live pages.
    updates: broadcast::Sender<i64>,
    /// Whether the loop is connected and consuming (`/readyz`).
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
}

impl Dispatcher<'_> {
    /// Serves one session until shutdown (`Ok`) or a failure.
    async fn serve(&mut self, session: &Session, shutdown: &Shutdown) -> Result<(), ServeError> {
        self.recover(session).await?;
        let prefetch = self.config.prefetch;
        let (_commits_channel, mut commits) = session
            .consume(Queue::Commits, prefetch, "dispatcher-commits")
            .await?;
        let (_results_channel, mut results) = session
            .consume(Queue::Results, prefetch, "dispatcher-results")
            .await?;
        let (_events_channel, mut events) = session
            .consume(Queue::Events, prefetch, "dispatcher-events")
            .await?;
        let (_dead_channel, mut dead_jobs) = session
            .consume(Queue::DeadJobs, prefetch, "dispatcher-dead-jobs")
            .await?;
        let mut rewrite = tokio::time::interval(Duration::from_secs(REWRITE_INTERVAL_SECS));
        let mut leases = tokio::time::interval(Duration::from_millis(LEASE_CHECK_MS));
        // Workers' heartbeats may have waited in (or expired from) the events
        // queue while this dispatcher was away: leases count from now.
        let serving_since = Utc::now();
        self.ready.send_replace(true);
        // Commits whose jobs were published but not yet confirmed, oldest
        // first (confirms arrive in publish order). Their events are acked
        // once confirmed; meanwhile other messages are served, so the broker
        // round trip of a confirm does not hold up the loop.
        let mut unconfirmed: VecDeque<Unconfirmed> = VecDeque::new();
        // Commits whose trees are being read (a fetch, on blocking threads,
        // one repository at a time), finished in the order they came: a
        // slow fetch holds up the commits behind it, never results,
        // heartbeats or leases. At most `prefetch` (unacked deliveries).
        let mut planning: FuturesOrdered<PrepareFuture> = FuturesOrdered::new();
        loop {
            // Results first: they finish commits, which is what users wait for.
            tokio::select! {
                biased;
                () = shutdown.graceful.cancelled() => {
                    // Finish what is in hand: confirm and ack what was published.
                    while let Some(mut front) = unconfirmed.pop_front() {
                        (&mut front.confirmed).await?;
                        self.confirmed(front).await?;
                    }
                    return Ok(());
                }
                confirmed = next_confirm(&mut unconfirmed), if !unconfirmed.is_empty() => {
                    confirmed?;
                    if let Some(front) = unconfirmed.pop_front() {
                        self.confirmed(front).await?;
                    }
                }
                delivery = results.next() => {
                    let delivery = delivery.ok_or(ServeError::ConsumerGone("results"))??;
                    self.on_result(session, delivery).await?;
                }
                delivery = events.next() => {
                    let delivery = delivery.ok_or(ServeError::ConsumerGone("events"))??;
                    self.on_event(session, delivery).await?;
                }
                delivery = dead_jobs.next() => {
                    let delivery = delivery.ok_or(ServeError::ConsumerGone("dead jobs"))??;
                    self.on_dead_job(delivery).await?;
                }
                // A commit whose tree has been read: plan, record, publish.
                Some(prepared) = planning.next(), if !planning.is_empty() => {
                    if let Some(pending) = self.on_prepared(session, prepared).await? {
                        unconfirmed.push_back(pending);
                    }
                }
                delivery = commits.next() => {
                    let delivery = delivery.ok_or(ServeError::ConsumerGone("commits"))??;
                    if let Some(prepare) = self.on_commit(session, delivery).await? {
                        planning.push_back(prepare);
                    }
                }
                Some(command) = self.commands.recv() => self.on_command(session, command).await?,
                _ = leases.tick() => self.expire_leases(session, serving_since).await?,
                _ = rewrite.tick() => self.write_pending_results()?,
            }
        }
    }

    fn budget(&self) -> RetryBudget {
        RetryBudget {
            max_lost_runs: self.config.max_lost_runs,
        }
    }

    /// Declares runs not heard from for a lease lost and publishes their
    /// jobs' next attempts.
    async fn expire_leases(
        &mut self,
        session: &Session,
        serving_since: chrono::DateTime<Utc>,
    ) -> Result<(), ServeError> {
        let now = Utc::now();
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::MAX);
        if now - serving_since < lease {
            return Ok(());
        }
        let budget = self.budget();
        let expiry = self.store.expire_leases(self.config.lease, &budget, now)?;
        self.metrics.attempts_lost.inc_by(expiry.lost.len() as u64);
        for (run, worker) in &expiry.lost {
            warn!(job = %run.job_id, attempt = run.attempt, %worker,
                  lease = %humantime::format_duration(self.config.lease),
                  "run lost: no heartbeat for a lease");
        }
        for commit_id in expiry.finished_commits {
            self.write_result(commit_id)?;
        }
        if !expiry.reissue.is_empty() {
            for job in &expiry.reissue {
                info!(repo = %job.repo, sha = %job.sha, job = %job.job_id, attempt = job.attempt,
                      "publishing the next attempt");
            }
            self.publish_jobs(session, &expiry.reissue).await?;
        }
        // The lost runs' attempts are stopped wherever they still run (a
        // frozen worker that wakes up) and dropped if the broker hands them
        // out again (when the silent worker's connection finally closes):
        // their jobs have a new attempt or a verdict.
        let stale = expiry.lost.iter().map(|(run, _)| *run).collect();
        stop_on_workers(
            session,
            stale,
            "its run was lost: no heartbeat for a lease",
            format!("cancel.lost.{}", now.timestamp_millis()),
        )
        .await
    }

    /// A job the broker dead-lettered (delivery limit) or a worker could not
    /// decode: the job, if known and undecided, gets an error verdict.
    async fn on_dead_job(&mut self, delivery: Delivery) -> Result<(), ServeError> {
        match decode::<Job>(&delivery.data) {
            Ok(job) => {
                let reason = dead_letter_reason(&delivery);
                let message = format!(
                    "attempt {} was dead-lettered ({reason}); see the {} queue",
                    job.attempt,
                    self.config.broker.topology.queue(Queue::Dead)
                );
                warn!(repo = %job.repo, sha = %job.sha, job = %job.job_id, attempt = job.attempt,
                      %reason, "job dead-lettered");
                if let Some(commit_id) =
                    self.store
                        .dead_lettered(&job.job_id, &message, Utc::now())?
                {
                    self.write_result(commit_id)?;
                }
            }
            Err(error) => {
                debug!(%error, message_id = %message_id(&delivery), "undecodable dead job ignored");
            }
        }
        // The copy in the dead-letter queue stays for people to see.
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// After (re)connecting: publish job attempts whose publish was never
    /// confirmed, and write result files that were not written.
    async fn recover(&mut self, session: &Session) -> Result<(), ServeError> {
        let jobs = self.store.unpublished_jobs(Utc::now())?;
        if !jobs.is_empty() {
            info!(
                jobs = jobs.len(),
                "publishing jobs whose publish was not confirmed"
            );
            self.publish_jobs(session, &jobs).await?;
        }
        self.write_pending_results()?;
        Ok(())
    }

    /// Records a commit event and publishes its jobs. Returns the publish
    /// still to be confirmed (the event is acked once it is), or `None` when
    /// the event was settled here (duplicate, error verdict, rejected).
    /// Takes a commit event: a bad one is dead-lettered, a known commit
    /// acked; a new one is returned as the reading of its tree, to be
    /// finished by [`Self::on_prepared`].
    async fn on_commit(
        &mut self,
        session: &Session,
        delivery: Delivery,
    ) -> Result<Option<PrepareFuture>, ServeError> {
        let event = match decode::<CommitEvent>(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                reject(session, &delivery, Queue::Commits, error).await?;
                return Ok(None);
            }
        };
        if self.duplicate(&event, &delivery).await? {
            return Ok(None);
        }
        let mirrors = Arc::clone(&self.mirrors);
        let defaults = self.config.defaults.clone();
        let max_timeout = self.config.max_timeout;
        Ok(Some(Box::pin(async move {
            let prepared = prepare(&defaults, max_timeout, &mirrors, &event).await;
            Prepared {
                delivery,
                event,
                prepared,
            }
        })))
    }

    /// Whether the event's commit is known (counted and acked if so).
    async fn duplicate(
        &mut self,
        event: &CommitEvent,
        delivery: &Delivery,
    ) -> Result<bool, ServeError> {
        if let CommitSeen::Duplicate { commit_id } =
            self.store.see_commit(&event.repo, &event.sha)?
        {
            debug!(repo = %event.repo, sha = %event.sha, commit_id, "duplicate commit event");
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Plans a commit whose tree has been read: selects and splits its
    /// suite, records it with its jobs and starts publishing them (or
    /// records its `error` verdict).
    async fn on_prepared(
        &mut self,
        session: &Session,
        Prepared {
            delivery,
            event,
            prepared,
        }: Prepared,
    ) -> Result<Option<Unconfirmed>, ServeError> {
        // Another event of the same commit (pushed to two branches) may
        // have been planned while this one's tree was read.
        if self.duplicate(&event, &delivery).await? {
            return Ok(None);
        }
        let now = Utc::now();
        let planned = match prepared {
            Ok(prepared) => self.shard(&event, prepared)?,
            Err(message) => Err(message),
        };
        let (plan, shards, selection) = match planned {
            Ok(planned) => planned,
            Err(message) => {
                warn!(repo = %event.repo, sha = %event.sha, %message, "commit cannot be tested");
                let commit_id = self.store.insert_errored(&event, &message, now)?;
                self.write_result(commit_id)?;
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(None);
            }
        };
        let inserted = self.store.insert_planned(
            &event,
            &Planned {
                plan: &plan,
                shards: &shards,
                selection: selection.as_ref(),
            },
            now,
        )?;
        if plan.supersede.matches(event.branch.as_str()) {
            self.supersede_older(session, &event, inserted.commit_id, now)
                .await?;
        }
        if let Some(commit_id) = inserted.finished {
            self.write_result(commit_id)?;
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(None);
        }
        let confirmed = start_publishing(session, &inserted.jobs).await?;
        info!(repo = %event.repo, branch = %event.branch, sha = %event.sha,
              jobs = inserted.jobs.len(), "commit queued");
        self.updated(inserted.commit_id);
        Ok(Some(Unconfirmed {
            confirmed,
            jobs: inserted.jobs,
            delivery,
        }))
    }

    /// The suite of a prepared commit, selected and split into shards; the
    /// message of an `error` verdict when it cannot be. The outer error is a
    /// database failure.
    #[allow(clippy::type_complexity)]
    fn shard(
        &self,
        event: &CommitEvent,
        (plan, tree): (spec::Plan, CommitTree),
    ) -> Result<Result<(spec::Plan, Vec<ShardPlan>, Option<Selection>), String>, StoreError> {
        let Some(suite) = &plan.suite else {
            let whole = ShardPlan {
                files: Vec::new(),
                estimated_ms: 0,
            };
            return Ok(Ok((plan, vec![whole], None)));
        };
        let mut files = Vec::new();
        for path in tree.files.iter().filter(|path| suite.files.matches(path)) {
            match SuitePath::parse(path) {
                Ok(file) => files.push(file),
                Err(error) => {
                    return Ok(Err(format!(
                        "suite file cannot be passed to a command safely: {error}"
                    )));
                }
            }
        }
        if files.is_empty() {
            return Ok(Err(format!(
                "no file of the commit matches `files` = {:?} in {}",
                suite.files.patterns(),
                spec::SPEC_FILE
            )));
        }
        let parent_has_result = match &tree.parent {
            Some(parent) => self.store.has_result(&event.repo, parent)?,
            None => false,
        };
        let change = select::Change {
            branch: event.branch.as_str(),
            changed: tree.changed.as_deref(),
            parent_has_result,
        };
        let (selected, selection) = select::select(&files, suite.select.as_ref(), &change);
        let timings = self.store.file_timings(&event.repo)?;
        let shards = split::split(&selected, &timings, suite.shards);
        Ok(Ok((plan, shards, Some(selection))))
    }

    /// Cancels the older commits of the event's branch (its `warren.toml`
    /// asks for it): their undecided jobs become `superseded`, and workers
    /// running them are told to stop.
    async fn supersede_older(
        &mut self,
        session: &Session,
        event: &CommitEvent,
        commit_id: i64,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), ServeError> {
        let superseded = self.store.supersede_older(commit_id, &event.sha, now)?;
        if !superseded.jobs.is_empty() {
            info!(repo = %event.repo, branch = %event.branch, sha = %event.sha,
                  jobs = superseded.jobs.len(), "older commits' jobs superseded");
        }
        stop_on_workers(
            session,
            superseded.jobs,
            &format!("superseded by {}", event.sha),
            format!("cancel.{}", event.sha),
        )
        .await?;
        for finished in superseded.finished_commits {
            self.write_result(finished)?;
        }
        Ok(())
    }

    /// The broker confirmed a commit's jobs: note it, then ack the event.
    async fn confirmed(&mut self, done: Unconfirmed) -> Result<(), ServeError> {
        self.store.mark_published(&done.jobs)?;
        done.delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Publishes job attempts and waits for their confirms (recovery and
    /// re-issues, which are rare; new commits are pipelined instead).
    async fn publish_jobs(&mut self, session: &Session, jobs: &[Job]) -> Result<(), ServeError> {
        start_publishing(session, jobs).await?.await?;
        self.store.mark_published(jobs)?;
        Ok(())
    }

    async fn on_result(&mut self, session: &Session, delivery: Delivery) -> Result<(), ServeError> {
        let result = match decode::<JobResult>(&delivery.data) {
            Ok(result) => result,
            Err(error) => return reject(session, &delivery, Queue::Results, error).await,
        };
        match self.store.record_result(&result, Utc::now())? {
            ResultRecorded::Decided {
                commit_finished,
                commit_id,
                queue_wait_ms,
            } => {
                info!(repo = %result.repo, sha = %result.sha, job = %result.job_id,
                      attempt = result.attempt, worker = %result.worker,
                      status = %result.status, "job finished");
                self.metrics
                    .job_duration
                    .observe(result.duration_ms as f64 / 1000.0);
                if let Some(wait) = queue_wait_ms {
                    self.metrics.queue_wait.observe(wait as f64 / 1000.0);
                }
                if let Some(commit_id) = commit_finished {
                    self.write_result(commit_id)?;
                } else {
                    self.updated(commit_id);
                }
            }
            ResultRecorded::Redelivered => {
                debug!(repo = %result.repo, sha = %result.sha, job = %result.job_id,
                       "result delivered again; already recorded");
            }
            ResultRecorded::Late => {
                info!(repo = %result.repo, sha = %result.sha, job = %result.job_id,
                      attempt = result.attempt, worker = %result.worker,
                      "late result ignored: the job was already decided");
            }
            ResultRecorded::Rejected(reason) => {
                return reject(session, &delivery, Queue::Results, reason).await;
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn on_event(&mut self, session: &Session, delivery: Delivery) -> Result<(), ServeError> {
        let event = match decode::<JobEvent>(&delivery.data) {
            Ok(event) => event,
            // The events queue also carries workers' presence.
            Err(DecodeError::WrongType { .. }) => {
                match decode::<WorkerStatus>(&delivery.data) {
                    Ok(status) => self.store.record_worker_status(&status)?,
                    Err(error) => return reject(session, &delivery, Queue::Events, error).await,
                }
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(());
            }
            Err(error) => return reject(session, &delivery, Queue::Events, error).await,
        };
        let budget = self.budget();
        match self.store.record_event(&event, &budget, Utc::now())? {
            EventRecorded::UnknownJob => {
                let reason = format!(
                    "event for attempt {} of job {}, which this dispatcher never planned",
                    event.attempt, event.job_id
                );
                return reject(session, &delivery, Queue::Events, reason).await;
            }
            EventRecorded::Recorded {
                commit_finished,
                lost,
            } => {
                self.metrics.attempts_lost.inc_by(lost as u64);
                if let Some(commit_id) = commit_finished {
                    self.write_result(commit_id)?;
                }
            }
            EventRecorded::Unwanted => {
                info!(job = %event.job_id, attempt = event.attempt, worker = %event.worker,
                      "a run started that is no longer wanted; telling the workers to stop it");
                let run = JobAttempt {
                    job_id: event.job_id,
                    attempt: event.attempt,
                };
                stop_on_workers(
                    session,
                    vec![run],
                    "the job has its verdict or a newer attempt",
                    format!("cancel.{}", event.run_id),
                )
                .await?;
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Writes the result file of a finished commit and notes it. A failed
    /// write is logged and retried later; the database already holds the
    /// result, so nothing is lost.
    fn write_result(&mut self, commit_id: i64) -> Result<(), StoreError> {
        let report = self.store.commit_report(commit_id)?.explain();
        match report.write(&self.config.results_dir) {
            Ok(path) => {
                self.store.mark_written(commit_id)?;
                info!(repo = %report.repo, sha = %report.sha,
                      status = %report.status.map_or("running", |s| s.as_str()),
                      path = %path.display(), "result written");
                if let Some(status) = report.status {
                    self.metrics
                        .commits
                        .get_or_create(&StatusLabel {
                            status: status.as_str().to_owned(),
                        })
                        .inc();
                    self.notifier.notify(Notification::of(&report));
                }
                self.updated(commit_id);
            }
            Err(error) => {
                error!(repo = %report.repo, sha = %report.sha, %error,
                       "cannot write the result file; will retry");
            }
        }
        Ok(())
    }

    /// Tells live pages that a commit changed (nobody listening is fine).
    fn updated(&self, commit_id: i64) {
        let _ = self.updates.send(commit_id);
    }

    /// Carries out a retry or cancel asked for over HTTP.
    async fn on_command(
        &mut self,
        session: &Session,
        command: http::Command,
    ) -> Result<(), ServeError> {
        let now = Utc::now();
        match command {
            http::Command::Retry { commit_id, reply } => {
                let outcome = match self.store.retry(commit_id, now)? {
                    None => CommandOutcome::Conflict("the commit is still running".into()),
                    Some(jobs) => {
                        info!(commit_id, jobs = jobs.len(), "commit retried");
                        self.publish_jobs(session, &jobs).await?;
                        self.updated(commit_id);
                        CommandOutcome::Done {
                            status: "queued",
                            jobs: jobs.len(),
                        }
                    }
                };
                let _ = reply.send(outcome);
            }
            http::Command::Cancel { commit_id, reply } => {
                let outcome = match self.store.cancel(commit_id, now)? {
                    None => CommandOutcome::Conflict("the commit has finished".into()),
                    Some(jobs) => {
                        info!(commit_id, jobs = jobs.len(), "commit cancelled");
                        let count = jobs.len();
                        stop_on_workers(
                            session,
                            jobs,
                            "cancelled by an operator",
                            format!("cancel.{commit_id}"),
                        )
                        .await?;
                        self.write_result(commit_id)?;
                        CommandOutcome::Done {
                            status: "cancelled",
                            jobs: count,
                        }
                    }
                };
                let _ = reply.send(outcome);
            }
        }
        Ok(())
    }

    fn write_pending_results(&mut self) -> Result<(), StoreError> {
        for commit_id in self.store.unwritten_results()? {
            self.write_result(commit_id)?;
        }
        Ok(())
    }
}

/// Reads the commit (its `warren.toml`, files and change, retrying fetch
/// failures a few times) and makes its plan, or says why it cannot be
/// tested.
async fn prepare(
    defaults: &spec::TestSpec,
    max_timeout: Duration,
    mirrors: &Arc<Mirrors>,
    event: &CommitEvent,
) -> Result<(spec::Plan, CommitTree), String> {
    let mut backoff = Backoff::new(Duration::from_secs(2));
    let mut attempt = 1;
    let tree = loop {
        let mirrors = Arc::clone(mirrors);
        let (repo, url, sha) = (event.repo.clone(), event.url.clone(), event.sha.clone());
        let read = tokio::task::spawn_blocking(move || mirrors.read_commit(&repo, &url, &sha))
            .await
            .map_err(|error| format!("reading the commit: {error}"))?;
        match read {
            Ok(tree) => break tree,
            Err(error) if error.is_retryable() && attempt < FETCH_ATTEMPTS => {
                warn!(repo = %event.repo, %error, attempt, "fetch failed; retrying");
                attempt += 1;
                tokio::time::sleep(backoff.next_delay() * 5).await;
            }
            Err(error @ MirrorError::Fetch { .. }) => {
                return Err(format!("{error} (after {FETCH_ATTEMPTS} attempts)"));
            }
            Err(error) => return Err(error.to_string()),
        }
    };
    let plan = spec::plan(tree.spec.as_deref(), defaults, max_timeout)?;
    Ok((plan, tree))
}

/// Tells every worker (the control fanout) to stop `jobs` at those
/// attempts and to drop later deliveries of them; nothing when empty.
async fn stop_on_workers(
    session: &Session,
    jobs: Vec<JobAttempt>,
    reason: &str,
    message_id: String,
) -> Result<(), ServeError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let cancel = CancelJobs {
        jobs,
        reason: reason.to_owned(),
    };
    session.publish_control(&cancel, message_id).await?;
    Ok(())
}

/// Dead-letters a delivery that cannot be processed, logging it once.
async fn reject(
    session: &Session,
    delivery: &Delivery,
    from: Queue,
    reason: impl std::fmt::Display,
) -> Result<(), ServeError> {
    let reason = reason.to_string();
    session.dead_letter(delivery, from, &reason).await?;
    warn!(queue = ?from, message_id = %message_id(delivery), %reason,
          rejected_total = warren_common::session::rejected_total(from),
          "message rejected to the dead-letter queue");
    Ok(())
}

/// Why the broker (`x-death`) or Warren (`x-warren-reason`) dead-lettered a
/// delivery, for the job's verdict.
fn dead_letter_reason(delivery: &Delivery) -> String {
    use lapin::types::AMQPValue;
    let Some(headers) = delivery.properties.headers() else {
        return "no reason given".into();
    };
    let headers = headers.inner();
    if let Some(AMQPValue::LongString(reason)) = headers.get(warren_common::session::REASON_HEADER)
    {
        return reason.to_string();
    }
    // x-death: an array of tables, newest first, each with a `reason`
    // (`delivery_limit`, `rejected`, `expired`…) and a `count`.
    if let Some(AMQPValue::FieldArray(deaths)) = headers.get("x-death")
        && let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first()
    {
        let reason = match death.inner().get("reason") {
            Some(AMQPValue::LongString(text)) => text.to_string(),
            Some(AMQPValue::ShortString(text)) => text.to_string(),
            Some(other) => format!("{other:?}"),
            None => "?".into(),
        };
        return format!("the broker's reason: {reason}");
    }
    "no reason given".into()
}

/// A commit's job publishes whose confirms are still on their way.
struct Unconfirmed {
    /// Resolves when the broker confirmed every job (boxed, so that it stays
    /// put in the queue while `select!` polls it: cancel-safe).
    confirmed: ConfirmFuture,
    jobs: Vec<Job>,
    /// The commit event, acked once the jobs are confirmed.
    delivery: Delivery,
}

type ConfirmFuture = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// A commit event whose tree has been read (or could not be: the message of
/// its `error` verdict).
struct Prepared {
    delivery: Delivery,
    event: CommitEvent,
    prepared: Result<(spec::Plan, CommitTree), String>,
}

/// The reading of a commit's tree, beside the loop.
type PrepareFuture = Pin<Box<dyn Future<Output = Prepared> + Send>>;

/// Sends `jobs` and returns a future of their confirms.
async fn start_publishing(session: &Session, jobs: &[Job]) -> Result<ConfirmFuture, PublishError> {
    let mut pending = Vec::with_capacity(jobs.len());
    for job in jobs {
        let outgoing = Outgoing {
            routing_key: job.repo.as_str(),
            message_id: format!("{}.{}", job.job_id, job.attempt),
            persistent: true,
            headers: vec![
                ("x-warren-repo", job.repo.to_string()),
                ("x-warren-sha", job.sha.to_string()),
                ("x-warren-attempt", job.attempt.to_string()),
            ],
        };
        pending.push(session.start_publish(Queue::Jobs, job, outgoing).await?);
    }
    Ok(Box::pin(async move {
        for confirm in pending {
            confirm.wait().await?;
        }
        Ok(())
    }))
}

/// Waits for the oldest unconfirmed commit's confirms (pending for ever when
/// there is none; the `select!` guard keeps it from being polled then).
async fn next_confirm(unconfirmed: &mut VecDeque<Unconfirmed>) -> Result<(), PublishError> {
    match unconfirmed.front_mut() {
        Some(front) => (&mut front.confirmed).await,
        None => std::future::pending().await,
    }
}
