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

use crate::commands::{APP_ID, Command, CommandOutcome};
use crate::config::DispatcherConfig;
use crate::http;
use crate::intake::{PrepareFuture, Unconfirmed, next_confirm};
use crate::leases::LEASE_CHECK_MS;
use crate::live::{self, LiveLogs};
use crate::metrics::Metrics;
use crate::mirror::Mirrors;
use crate::notify::Notifier;
use crate::state::{Dispatcher, ServeError, delivery_span, stop_on_workers};
use crate::store::Store;
use anyhow::Context;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{Instrument as _, info, warn};
use warren_common::backoff::Backoff;
use warren_common::session::Session;
use warren_common::shutdown::Shutdown;
use warren_common::topology::Queue;

/// How often result files that could not be written (disk full, permissions)
/// are tried again, in seconds.
const REWRITE_INTERVAL_SECS: u64 = 30;

/// Runs the dispatcher until `shutdown` (reconnecting to the broker as long
/// as needed). Returns an error only if the database fails.
pub async fn run(config: DispatcherConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut store = Store::open(&config.database, config.sync)
        .with_context(|| format!("opening the database {}", config.database.display()))?;
    let reader = Store::open_read_only(&config.database)
        .with_context(|| format!("opening the database {} to read", config.database.display()))?;
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("listening on http.listen {}", config.http_listen))?;
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
    let sampler = tokio::spawn(crate::sampler::run(state.clone(), http_stop.clone()));
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
    let _ = sampler.await;
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
                    info!(url = session.url(), "connected to the broker");
                    backoff.reset();
                    // A second signal abandons what is in hand (a confirm
                    // the broker does not send, a slow write): jobs not
                    // confirmed stay unpublished in the database and are
                    // published at the next start; messages not acked go
                    // back to their queues. The store's writes are
                    // synchronous, so none is cut in half.
                    let outcome = tokio::select! {
                        outcome = dispatcher.serve(&session, shutdown) => outcome,
                        () = shutdown.forced.cancelled() => {
                            warn!("forced stop: unconfirmed jobs are published again at the next start");
                            Ok(())
                        }
                    };
                    dispatcher.ready.send_replace(false);
                    if !shutdown.forced.is_cancelled() {
                        session.close().await;
                    }
                    match outcome {
                        Ok(()) => break,
                        Err(ServeError::Store(error)) => {
                            return Err(error).context("database failure");
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
                    let span = delivery_span(Queue::Results, &delivery);
                    self.on_result(session, delivery).instrument(span).await?;
                }
                delivery = events.next() => {
                    let delivery = delivery.ok_or(ServeError::ConsumerGone("events"))??;
                    let span = delivery_span(Queue::Events, &delivery);
                    self.on_event(session, delivery).instrument(span).await?;
                }
                delivery = dead_jobs.next() => {
                    let delivery = delivery.ok_or(ServeError::ConsumerGone("dead jobs"))??;
                    let span = delivery_span(Queue::DeadJobs, &delivery);
                    self.on_dead_job(delivery).instrument(span).await?;
                }
                // A commit whose tree has been read: plan, record, publish.
                Some(prepared) = planning.next(), if !planning.is_empty() => {
                    let span = prepared.span.clone();
                    if let Some(pending) = self.on_prepared(session, prepared).instrument(span).await? {
                        unconfirmed.push_back(pending);
                    }
                }
                delivery = commits.next() => {
                    let delivery = delivery.ok_or(ServeError::ConsumerGone("commits"))??;
                    let span = delivery_span(Queue::Commits, &delivery);
                    if let Some(prepare) = self.on_commit(session, delivery).instrument(span).await? {
                        planning.push_back(prepare);
                    }
                }
                Some(command) = self.commands.recv() => self.on_command(session, command).await?,
                _ = leases.tick() => self.expire_leases(session, serving_since).await?,
                _ = rewrite.tick() => self.write_pending_results()?,
            }
        }
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

    /// Carries out a retry or cancel asked for over HTTP.
    async fn on_command(&mut self, session: &Session, command: Command) -> Result<(), ServeError> {
        let now = Utc::now();
        match command {
            Command::Retry { commit_id, reply } => {
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
            Command::Cancel { commit_id, reply } => {
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
}
