//! Intake: a commit event becomes a plan (its `warren.toml` read from the
//! commit's tree through the mirror, beside the loop), then shards and
//! jobs, recorded and published; older commits of the branch are
//! superseded when the spec asks.
//!
//! Dedup is by repo and sha (`Store::see_commit`):
//! a commit already known is acked and nothing more, checked both when the
//! event arrives and again once its tree is read. A commit event is acked
//! only once its jobs are recorded and confirmed by the broker (or its
//! `error` verdict is recorded): record, then ack.

use crate::mirror::{CommitTree, MirrorError, Mirrors};
use crate::select::{self, Selection};
use crate::spec;
use crate::split::{self, ShardPlan};
use crate::state::{
    ConfirmFuture, Dispatcher, ServeError, about_commit, reject, start_publishing, stop_on_workers,
};
use crate::store::{CommitSeen, Planned, StoreError};
use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument as _, Span, debug, info, warn};
use warren_common::backoff::Backoff;
use warren_common::ids::SuitePath;
use warren_common::messages::{CommitEvent, Job, decode};
use warren_common::session::{PublishError, Session};
use warren_common::topology::Queue;

/// Fetch attempts for one commit before it gets an `error` result: a
/// repository that is unreachable three times over about three seconds is
/// reported, not waited for.
const FETCH_ATTEMPTS: u32 = 3;

impl Dispatcher<'_> {
    /// Takes a commit event: a bad one is dead-lettered, a known commit
    /// acked; a new one is returned as the reading of its tree, to be
    /// finished by [`Self::on_prepared`].
    pub(crate) async fn on_commit(
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
        about_commit(&event.repo, &event.sha);
        if self.duplicate(&event, &delivery).await? {
            return Ok(None);
        }
        let mirrors = Arc::clone(&self.mirrors);
        let defaults = self.config.defaults.clone();
        let max_timeout = self.config.max_timeout;
        // The reading and the planning after it stay in this delivery's span.
        let span = Span::current();
        Ok(Some(Box::pin(
            async move {
                let prepared = prepare(&defaults, max_timeout, &mirrors, &event).await;
                Prepared {
                    delivery,
                    event,
                    prepared,
                    span: Span::current(),
                }
            }
            .instrument(span),
        )))
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
            debug!(commit_id, "duplicate commit event");
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Plans a commit whose tree has been read: selects and splits its
    /// suite, records it with its jobs and starts publishing them (or
    /// records its `error` verdict).
    pub(crate) async fn on_prepared(
        &mut self,
        session: &Session,
        Prepared {
            delivery,
            event,
            prepared,
            span: _,
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
                warn!(%message, "commit cannot be tested");
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
        info!(branch = %event.branch, jobs = inserted.jobs.len(), "commit queued");
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
            info!(branch = %event.branch, jobs = superseded.jobs.len(),
                  "older commits' jobs superseded");
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
    pub(crate) async fn confirmed(&mut self, done: Unconfirmed) -> Result<(), ServeError> {
        self.store.mark_published(&done.jobs)?;
        done.delivery.ack(BasicAckOptions::default()).await?;
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
                warn!(%error, attempt, "fetch failed; retrying");
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

/// A commit's job publishes whose confirms are still on their way.
pub(crate) struct Unconfirmed {
    /// Resolves when the broker confirmed every job (boxed, so that it stays
    /// put in the queue while `select!` polls it: cancel-safe).
    pub(crate) confirmed: ConfirmFuture,
    pub(crate) jobs: Vec<Job>,
    /// The commit event, acked once the jobs are confirmed.
    pub(crate) delivery: Delivery,
}

/// A commit event whose tree has been read (or could not be: the message of
/// its `error` verdict).
pub(crate) struct Prepared {
    delivery: Delivery,
    event: CommitEvent,
    prepared: Result<(spec::Plan, CommitTree), String>,
    /// The commit delivery's span, for the planning.
    pub(crate) span: Span,
}

/// The reading of a commit's tree, beside the loop.
pub(crate) type PrepareFuture = Pin<Box<dyn Future<Output = Prepared> + Send>>;

/// Waits for the oldest unconfirmed commit's confirms (pending for ever when
/// there is none; the `select!` guard keeps it from being polled then).
pub(crate) async fn next_confirm(
    unconfirmed: &mut VecDeque<Unconfirmed>,
) -> Result<(), PublishError> {
    match unconfirmed.front_mut() {
        Some(front) => (&mut front.confirmed).await,
        None => std::future::pending().await,
    }
}
