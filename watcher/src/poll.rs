//! One poll of one repository, in two steps.
//!
//! 1. [`prepare`] takes the repository's lock, fetches its mirror, reads its
//!    cursors and works out, per watched branch, the commits to publish (a
//!    [`Plan`]). Nothing is published yet. A branch moved back to an
//!    ancestor needs no publish: its cursor is saved here.
//! 2. [`publish`] publishes a branch's events pipelined (up to
//!    [`PUBLISH_WINDOW`] unconfirmed at once), waits for the confirms in
//!    order, and saves the cursor at the last commit confirmed in order. On
//!    a failure it saves that progress and returns the error: the rest is
//!    published at a later poll, and a commit is never skipped (the
//!    dispatcher drops duplicates by (repo, sha)).
//!
//! [`poll_repo`] does both. The long-running watcher calls the two steps
//! separately so that fetches of several repositories run at once while
//! publishes share one broker session.

use crate::config::RepoConfig;
use crate::cursor::{CursorError, CursorStore};
use crate::history::{self, BranchChange, HistoryError, HistoryOptions};
use crate::mirror::{self, MirrorError};
use crate::state::{RepoLock, StateDir};
use chrono::Utc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_common::ids::{BranchName, CommitId, RepoName};
use warren_common::messages::CommitEvent;
use warren_common::session::{PublishError, Session};
use warren_common::topology::Queue;

/// Most commit events of one branch in flight (sent, confirm not yet
/// awaited) at once; the cursor is saved after each such window. Large
/// enough to hide the round trip to the broker, small enough that a failure
/// leaves little to publish again.
pub const PUBLISH_WINDOW: usize = 100;

/// The headers of a commit event, for people reading the queue.
pub use warren_common::envelope::{BRANCH_HEADER, REPO_HEADER, SHA_HEADER};

/// Why a poll did not complete. Every variant leaves the cursors at the last
/// confirmed commit; the repository is polled again at its next interval.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Another poll (a `--once` run, or another watcher on the same state
    /// directory) holds the repository. Skipped; that poll does the work.
    #[error("repository {repo} is being polled by another process (its lock is held)")]
    Busy { repo: RepoName },
    /// The repository's lock file could not be opened or locked.
    #[error("locking repository {repo}: {source}")]
    Lock {
        repo: RepoName,
        source: std::io::Error,
    },
    /// The mirror could not be brought up to date.
    #[error("repository {repo}: {source}")]
    Mirror { repo: RepoName, source: MirrorError },
    /// The mirror's history could not be read.
    #[error("repository {repo}, branch {branch}: {source}")]
    History {
        repo: RepoName,
        branch: String,
        source: HistoryError,
    },
    /// The cursor file could not be read or written.
    #[error("repository {repo}: {source}")]
    Cursor { repo: RepoName, source: CursorError },
    /// A publish was not confirmed. The commits confirmed before it are
    /// recorded; the session is unusable: drop it and reconnect (with backoff).
    #[error(
        "publishing branch {branch} of {repo}: {source} \
         ({published} of {total} new commits confirmed and recorded)"
    )]
    Publish {
        repo: RepoName,
        branch: BranchName,
        published: usize,
        total: usize,
        /// Boxed: lapin's error is large, and every poll result carries this type.
        source: Box<PublishError>,
    },
    /// The blocking part of the poll panicked (a bug).
    #[error("polling repository {repo}: the blocking task failed: {message}")]
    Task { repo: RepoName, message: String },
}

impl PollError {
    /// Whether the broker session is unusable after this error.
    pub fn needs_reconnect(&self) -> bool {
        matches!(self, Self::Publish { .. })
    }
}

/// What one poll did to one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchOutcome {
    /// The branch.
    pub branch: BranchName,
    /// How it moved since its cursor.
    pub change: BranchChange,
    /// Its tip in the mirror.
    pub tip: CommitId,
    /// Commits published (and confirmed) for it.
    pub published: usize,
    /// Whether more new commits wait for the next poll (a huge push).
    pub more: bool,
}

/// What one poll did to one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    /// The repository.
    pub repo: RepoName,
    /// Every watched branch that exists upstream, by name.
    pub branches: Vec<BranchOutcome>,
}

impl PollOutcome {
    /// Commits published over all branches.
    pub fn published(&self) -> usize {
        self.branches.iter().map(|branch| branch.published).sum()
    }

    /// Whether a branch has more commits waiting: poll again soon.
    pub fn more(&self) -> bool {
        self.branches.iter().any(|branch| branch.more)
    }

    /// The outcome for `branch`, if it is watched and exists.
    pub fn branch(&self, branch: &str) -> Option<&BranchOutcome> {
        self.branches
            .iter()
            .find(|outcome| outcome.branch.as_str() == branch)
    }
}

/// The new commits of one branch, ready to publish.
#[derive(Debug)]
struct BranchPlan {
    branch: BranchName,
    change: BranchChange,
    tip: CommitId,
    events: Vec<CommitEvent>,
    more: bool,
}

/// A prepared poll: the commits to publish, and the repository's lock,
/// held until the plan is published or dropped.
#[derive(Debug)]
pub struct Plan {
    lock: RepoLock,
    /// Branches with nothing to publish (already final).
    quiet: Vec<BranchOutcome>,
    pending: Vec<BranchPlan>,
}

impl Plan {
    /// The repository.
    pub fn repo(&self) -> &RepoName {
        self.lock.repo()
    }

    /// Number of commit events to publish.
    pub fn commits(&self) -> usize {
        self.pending.iter().map(|branch| branch.events.len()).sum()
    }

    /// Whether there is nothing to publish (no broker needed).
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The outcome of a plan with nothing to publish.
    pub fn into_outcome(self) -> PollOutcome {
        let mut branches = self.quiet;
        branches.extend(self.pending.into_iter().map(|plan| BranchOutcome {
            branch: plan.branch,
            change: plan.change,
            tip: plan.tip,
            published: 0,
            more: true,
        }));
        branches.sort_by(|a, b| a.branch.cmp(&b.branch));
        PollOutcome {
            repo: self.lock.repo().clone(),
            branches,
        }
    }
}

/// Step 1: lock, fetch, plan. Waits up to `lock_wait` for another poll of
/// the same repository to finish (zero: do not wait, return
/// [`PollError::Busy`]). `cancel` abandons a running fetch.
pub async fn prepare(
    repo: &RepoConfig,
    state: &StateDir,
    lock_wait: Duration,
    cancel: &CancellationToken,
) -> Result<Plan, PollError> {
    let lock = RepoLock::acquire_within(state, &repo.name, lock_wait)
        .await
        .map_err(|source| PollError::Lock {
            repo: repo.name.clone(),
            source,
        })?
        .ok_or_else(|| PollError::Busy {
            repo: repo.name.clone(),
        })?;
    let (config, state, cancel) = (repo.clone(), state.clone(), cancel.clone());
    let planned = tokio::task::spawn_blocking(move || plan(&config, &state, &cancel))
        .await
        .map_err(|error| PollError::Task {
            repo: repo.name.clone(),
            message: error.to_string(),
        })??;
    let (quiet, pending) = planned;
    Ok(Plan {
        lock,
        quiet,
        pending,
    })
}

/// The blocking part of [`prepare`], run with the repository's lock held.
fn plan(
    repo: &RepoConfig,
    state: &StateDir,
    cancel: &CancellationToken,
) -> Result<(Vec<BranchOutcome>, Vec<BranchPlan>), PollError> {
    let name = &repo.name;
    let store = CursorStore::new(state);
    let cursor_error = |source| PollError::Cursor {
        repo: name.clone(),
        source,
    };
    // Read under the lock: a `--once` run may have moved them since.
    let cursors = store.load().map_err(cursor_error)?.of(name);
    let mirror_error = |source| PollError::Mirror {
        repo: name.clone(),
        source,
    };
    let mirror =
        mirror::sync(&state.mirror(name), &repo.url, &repo.git, cancel).map_err(mirror_error)?;
    let history_error = |branch: &str| {
        let branch = branch.to_owned();
        move |source| PollError::History {
            repo: name.clone(),
            branch,
            source,
        }
    };
    let tips = mirror::branch_tips(&mirror, &repo.branches)
        .map_err(|error| history_error("*")(HistoryError::Git(error)))?;
    let options = HistoryOptions::of(repo);
    let detected_at = Utc::now();
    let mut quiet = Vec::new();
    let mut pending = Vec::new();
    let mut moved_back = Vec::new();
    for (branch, tip) in tips {
        let cursor = cursors.get(&branch);
        let new = history::new_commits(&mirror, &tip, cursor, options)
            .map_err(history_error(branch.as_str()))?;
        match new.change {
            BranchChange::CursorLost => warn!(
                repo = %name, %branch, cursor = ?cursor.map(CommitId::short), tip = %tip.short(),
                "the cursor's commit is not in the mirror; publishing only the tip"
            ),
            BranchChange::Rewritten | BranchChange::MovedBack => info!(
                repo = %name, %branch, cursor = ?cursor.map(CommitId::short), tip = %tip.short(),
                change = %new.change, new = new.commits.len(), "branch was force-pushed"
            ),
            _ => {}
        }
        if new.commits.is_empty() {
            if cursor != Some(&tip) {
                moved_back.push((branch.clone(), tip.clone()));
            }
            quiet.push(BranchOutcome {
                branch,
                change: new.change,
                tip,
                published: 0,
                more: false,
            });
            continue;
        }
        let events = new
            .commits
            .iter()
            .map(|sha| history::commit_event(&mirror, repo, &branch, sha, detected_at))
            .collect::<Result<Vec<_>, _>>()
            .map_err(history_error(branch.as_str()))?;
        pending.push(BranchPlan {
            branch,
            change: new.change,
            tip,
            events,
            more: new.more,
        });
    }
    // Nothing to confirm for a branch moved back: its cursor follows now.
    store.save(name, &moved_back).map_err(cursor_error)?;
    Ok((quiet, pending))
}

/// Step 2: publishes `plan` on `session` and records each branch's cursor as
/// its commits are confirmed; releases the repository's lock when done.
pub async fn publish(
    plan: Plan,
    session: &Session,
    state: &StateDir,
) -> Result<PollOutcome, PollError> {
    let Plan {
        lock,
        quiet,
        pending,
    } = plan;
    let repo = lock.repo().clone();
    let store = CursorStore::new(state);
    let mut branches = quiet;
    for branch in pending {
        let published = publish_branch(&repo, &branch, session, &store).await?;
        branches.push(BranchOutcome {
            branch: branch.branch,
            change: branch.change,
            tip: branch.tip,
            published,
            more: branch.more,
        });
    }
    branches.sort_by(|a, b| a.branch.cmp(&b.branch));
    let outcome = PollOutcome { repo, branches };
    drop(lock);
    Ok(outcome)
}

/// Both steps, waiting up to `lock_wait` for the repository's lock.
pub async fn poll_repo(
    repo: &RepoConfig,
    state: &StateDir,
    session: &Session,
    lock_wait: Duration,
) -> Result<PollOutcome, PollError> {
    let plan = prepare(repo, state, lock_wait, &CancellationToken::new()).await?;
    publish(plan, session, state).await
}

/// Publishes one branch window by window; returns the number confirmed.
async fn publish_branch(
    repo: &RepoName,
    plan: &BranchPlan,
    session: &Session,
    store: &CursorStore,
) -> Result<usize, PollError> {
    let mut confirmed = 0;
    for window in plan.events.chunks(PUBLISH_WINDOW) {
        let (done, failure) = publish_window(session, window).await;
        if let Some(last) = done.checked_sub(1).map(|i| &window[i]) {
            if let Err(error) = save(store, repo, &plan.branch, &last.sha).await {
                if let Some(failure) = &failure {
                    warn!(repo = %repo, branch = %plan.branch, error = %failure, "publish failed");
                }
                return Err(error);
            }
            confirmed += done;
        }
        if let Some(source) = failure {
            return Err(PollError::Publish {
                repo: repo.clone(),
                branch: plan.branch.clone(),
                published: confirmed,
                total: plan.events.len(),
                source: Box::new(source),
            });
        }
    }
    if plan.more {
        info!(
            repo = %repo, branch = %plan.branch, published = confirmed,
            "more new commits follow at the next poll"
        );
    }
    Ok(confirmed)
}

/// Sends every event of `window`, then awaits the confirms in order.
/// Returns how many were confirmed in order before the first failure, and
/// that failure.
async fn publish_window(
    session: &Session,
    window: &[CommitEvent],
) -> (usize, Option<PublishError>) {
    let mut in_flight = Vec::with_capacity(window.len());
    let mut failure = None;
    for event in window {
        match session
            .start_publish(Queue::Commits, event, event.envelope())
            .await
        {
            Ok(pending) => in_flight.push(pending),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let mut confirmed = 0;
    for (pending, event) in in_flight.into_iter().zip(window) {
        if let Err(error) = pending.wait().await {
            // A later confirm cannot make up for this one: the cursor must
            // not pass an unconfirmed commit.
            return (confirmed, Some(error));
        }
        confirmed += 1;
        info!(
            repo = %event.repo, branch = %event.branch, sha = %event.sha,
            summary = %event.summary, "commit published"
        );
    }
    (confirmed, failure)
}

/// Records `sha` as the cursor of `branch`, off the async threads (an fsync).
async fn save(
    store: &CursorStore,
    repo: &RepoName,
    branch: &BranchName,
    sha: &CommitId,
) -> Result<(), PollError> {
    let (store, name, moves) = (store.clone(), repo.clone(), [(branch.clone(), sha.clone())]);
    let saved = tokio::task::spawn_blocking(move || store.save(&name, &moves))
        .await
        .map_err(|error| PollError::Task {
            repo: repo.clone(),
            message: error.to_string(),
        })?;
    saved.map_err(|source| PollError::Cursor {
        repo: repo.clone(),
        source,
    })?;
    debug!(repo = %repo, %branch, sha = %sha, "cursor saved");
    Ok(())
}
