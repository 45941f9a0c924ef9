//! The long-running watcher ([`run`]) and the one-shot poll ([`poll_once`]).
//!
//! `run` schedules each repository at its own interval. Fetching and
//! planning run in parallel, one task per repository at most; publishing
//! happens in this loop, one plan at a time, on the one broker session it
//! keeps. When a publish fails the session is dropped and rebuilt after a
//! backoff (which redeclares the topology); the unconfirmed commits were not
//! recorded, so the next poll of their repository publishes them again.

use crate::config::{RepoConfig, WatcherConfig};
use crate::cursor::CursorStore;
use crate::poll::{self, Plan, PollError, PollOutcome};
use crate::state::StateDir;
use anyhow::Context as _;
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use warren_common::backoff::Backoff;
use warren_common::config::BrokerConfig;
use warren_common::session::Session;
use warren_common::shutdown::Shutdown;

/// The AMQP `app_id` of every message the watcher publishes.
pub const APP_ID: &str = "warren-watcher";

/// How long `--once` waits for a repository that another poll holds: a
/// poll of the long-running watcher is a fetch and a publish, seconds
/// usually; two minutes leave room for a slow fetch of a big push.
pub const ONCE_LOCK_WAIT: Duration = Duration::from_secs(120);

/// Most repositories fetched and planned at once by the long-running
/// watcher. Fetches are mostly waiting on the network, so a few overlap
/// well; the cap keeps a config with hundreds of repositories from starting
/// hundreds of blocking threads at the same instant. The most overdue
/// repositories go first.
const MAX_PREPARING: usize = 8;

/// Longest wait for the broker to acknowledge closing a connection; a
/// broker that is gone does not answer at all.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Watches every repository of `config` until `shutdown.graceful` fires,
/// then finishes the publish in hand (recording its cursor) and returns.
pub async fn run(config: WatcherConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let state = open_state(&config)?;
    info!(
        repos = config.repos.len(),
        state_dir = %state.root().display(),
        broker = %config.broker.safe_url(),
        prefix = config.broker.topology.prefix(),
        "watcher started"
    );
    for repo in &config.repos {
        info!(
            repo = %repo.name,
            url = %crate::mirror::display_url(&repo.url),
            branches = ?repo.branches.patterns(),
            interval = %humantime::format_duration(repo.poll_interval),
            "watching"
        );
    }
    let mut watcher = Watcher::new(config, state, shutdown);
    watcher.run().await;
    info!("watcher stopped");
    Ok(())
}

/// Polls every repository of `config` once and publishes what is new.
/// Waits for a repository another poll holds (up to [`ONCE_LOCK_WAIT`]);
/// connects to the broker only if there is something to publish. Fails if
/// any repository failed, after trying them all.
pub async fn poll_once(config: &WatcherConfig) -> anyhow::Result<Vec<PollOutcome>> {
    let state = open_state(config)?;
    let never = CancellationToken::new();
    let mut session = None;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for repo in &config.repos {
        match poll_one(repo, &state, &config.broker, &mut session, &never).await {
            Ok(outcome) => {
                info!(repo = %repo.name, published = outcome.published(), "polled");
                outcomes.push(outcome);
            }
            Err(error) => {
                let error = error_chain(&error);
                error!(repo = %repo.name, error = %error, "poll failed");
                failures.push(format!("{}: {error}", repo.name));
            }
        }
    }
    if let Some(session) = session {
        close(session).await;
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "{} of {} repositories failed:\n  {}",
            failures.len(),
            config.repos.len(),
            failures.join("\n  ")
        );
    }
    Ok(outcomes)
}

async fn poll_one(
    repo: &RepoConfig,
    state: &StateDir,
    broker: &BrokerConfig,
    session: &mut Option<Session>,
    never: &CancellationToken,
) -> anyhow::Result<PollOutcome> {
    let plan = match poll::prepare(repo, state, ONCE_LOCK_WAIT, never).await {
        Err(PollError::Busy { .. }) => anyhow::bail!(
            "another poll still held the repository after {}",
            humantime::format_duration(ONCE_LOCK_WAIT)
        ),
        other => other?,
    };
    if plan.is_empty() {
        return Ok(plan.into_outcome());
    }
    let connected = match session.take() {
        Some(connected) => connected,
        None => Session::connect(broker, APP_ID, &connection_name("once"))
            .await
            .context("connecting to the broker")?,
    };
    let connected = session.insert(connected);
    let result = poll::publish(plan, connected, state).await;
    if result.as_ref().is_err_and(PollError::needs_reconnect)
        && let Some(broken) = session.take()
    {
        close(broken).await;
    }
    Ok(result?)
}

/// Creates the state directory and checks the cursor file: a file that
/// cannot be read stops the watcher before it publishes anything.
fn open_state(config: &WatcherConfig) -> anyhow::Result<StateDir> {
    let state = StateDir::new(&config.state_dir);
    state
        .create()
        .with_context(|| format!("creating the state directory {}", state.root().display()))?;
    CursorStore::new(&state).load()?;
    Ok(state)
}

/// `error` and its causes on one line, leaving out a cause whose text its
/// effect already quotes (Warren's error types include their source's text,
/// and `anyhow`'s `{:#}` would repeat it).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn connection_name(role: &str) -> String {
    format!("{APP_ID} {role} on {}", warren_common::hostname())
}

/// Closes `session`, waiting at most [`CLOSE_TIMEOUT`].
async fn close(session: Session) {
    if tokio::time::timeout(CLOSE_TIMEOUT, session.close())
        .await
        .is_err()
    {
        debug!("the broker did not acknowledge closing the connection in time");
    }
}

/// The long-running loop's state.
struct Watcher {
    repos: Vec<RepoConfig>,
    /// When each repository is due, by index in `repos`.
    next_poll: Vec<Instant>,
    /// Whether each repository is being prepared.
    preparing: Vec<bool>,
    /// Which repository each preparing task is for.
    tasks: HashMap<Id, usize>,
    link: Link,
    state: StateDir,
    shutdown: Shutdown,
}

impl Watcher {
    fn new(config: WatcherConfig, state: StateDir, shutdown: Shutdown) -> Self {
        let now = Instant::now();
        let count = config.repos.len();
        Self {
            repos: config.repos,
            next_poll: vec![now; count],
            preparing: vec![false; count],
            tasks: HashMap::new(),
            link: Link::new(config.broker),
            state,
            shutdown,
        }
    }

    async fn run(&mut self) {
        let mut preparing: JoinSet<Result<Plan, PollError>> = JoinSet::new();
        loop {
            self.start_due(&mut preparing);
            let wake = self.next_wake();
            tokio::select! {
                // Stop first: a plan that is ready but not yet publishing is
                // simply dropped (its commits are published at the next start).
                biased;
                () = self.shutdown.graceful.cancelled() => break,
                Some(joined) = preparing.join_next_with_id() => {
                    let (id, joined) = match joined {
                        Ok((id, prepared)) => (id, Ok(prepared)),
                        Err(error) => (error.id(), Err(error.to_string())),
                    };
                    let Some(index) = self.tasks.remove(&id) else { continue };
                    let prepared = joined.unwrap_or_else(|message| {
                        Err(PollError::Task { repo: self.repos[index].name.clone(), message })
                    });
                    let more = self.handle(index, prepared).await;
                    self.preparing[index] = false;
                    // A huge push is published in slices: the next slice at once.
                    let wait = if more { Duration::ZERO } else { self.repos[index].poll_interval };
                    self.next_poll[index] = Instant::now() + wait;
                }
                () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
        // Running fetches see the cancelled token and stop; a plan that was
        // not published releases its lock when dropped.
        preparing.shutdown().await;
        self.link.close().await;
    }

    /// Starts preparing the due repositories that are not being prepared,
    /// most overdue first, up to [`MAX_PREPARING`] at once.
    fn start_due(&mut self, preparing: &mut JoinSet<Result<Plan, PollError>>) {
        let now = Instant::now();
        let mut due: Vec<usize> = (0..self.repos.len())
            .filter(|&index| !self.preparing[index] && self.next_poll[index] <= now)
            .collect();
        due.sort_by_key(|&index| self.next_poll[index]);
        let free = MAX_PREPARING.saturating_sub(self.tasks.len());
        for index in due.into_iter().take(free) {
            self.preparing[index] = true;
            let (repo, state) = (self.repos[index].clone(), self.state.clone());
            let cancel = self.shutdown.graceful.clone();
            // The long-running watcher does not wait for a busy repository:
            // whoever holds it is polling it right now.
            let handle = preparing
                .spawn(async move { poll::prepare(&repo, &state, Duration::ZERO, &cancel).await });
            self.tasks.insert(handle.id(), index);
        }
    }

    /// When the next idle repository is due; `None` when every slot is
    /// taken (a finishing task wakes the loop then).
    fn next_wake(&self) -> Option<Instant> {
        if self.tasks.len() >= MAX_PREPARING {
            return None;
        }
        self.next_poll
            .iter()
            .zip(&self.preparing)
            .filter(|(_, preparing)| !**preparing)
            .map(|(due, _)| *due)
            .min()
    }

    /// Publishes a prepared plan; returns whether the repository has more
    /// commits waiting.
    async fn handle(&mut self, index: usize, prepared: Result<Plan, PollError>) -> bool {
        let repo = &self.repos[index].name;
        let plan = match prepared {
            Ok(plan) => plan,
            Err(PollError::Busy { .. }) => {
                info!(repo = %repo, "another process is polling this repository; skipping this poll");
                return false;
            }
            Err(error) => {
                warn!(repo = %repo, error = %error, "poll failed; retrying at the next poll");
                return false;
            }
        };
        if plan.is_empty() {
            debug!(repo = %repo, "nothing new");
            return false;
        }
        let commits = plan.commits();
        let Some(session) = self.link.session(&self.shutdown).await else {
            // Stopping before the broker came back: nothing was published.
            return false;
        };
        debug!(repo = %repo, commits, "publishing");
        let published = tokio::select! {
            result = poll::publish(plan, session, &self.state) => result,
            () = self.shutdown.forced.cancelled() => {
                warn!(repo = %repo, "forced stop: abandoning the publish in hand (unconfirmed commits are published again at the next start)");
                return false;
            }
        };
        match published {
            Ok(outcome) => {
                self.link.succeeded();
                for branch in outcome.branches.iter().filter(|b| b.published > 0) {
                    info!(
                        repo = %repo, branch = %branch.branch, change = %branch.change,
                        published = branch.published, tip = %branch.tip.short(),
                        "branch published"
                    );
                }
                outcome.more()
            }
            Err(error) => {
                warn!(repo = %repo, error = %error, "publish failed; retrying at the next poll");
                if error.needs_reconnect() {
                    self.link.failed().await;
                }
                false
            }
        }
    }
}

/// The broker session of the long-running watcher, rebuilt after failures.
struct Link {
    broker: BrokerConfig,
    session: Option<Session>,
    backoff: Backoff,
    /// No connection attempt before this instant.
    retry_at: Instant,
}

impl Link {
    fn new(broker: BrokerConfig) -> Self {
        Self {
            backoff: Backoff::new(broker.reconnect_max_delay),
            broker,
            session: None,
            retry_at: Instant::now(),
        }
    }

    /// A connected session, connecting (with backoff) if needed; `None` if
    /// the watcher started stopping before one could be had.
    async fn session(&mut self, shutdown: &Shutdown) -> Option<&Session> {
        if self.session.as_ref().is_some_and(|s| !s.is_connected()) {
            warn!("the broker connection was lost; reconnecting");
            self.session = None;
        }
        while self.session.is_none() {
            let connect = async {
                sleep_until(self.retry_at).await;
                Session::connect(&self.broker, APP_ID, &connection_name("watcher")).await
            };
            let connected = tokio::select! {
                () = shutdown.graceful.cancelled() => return None,
                connected = connect => connected,
            };
            match connected {
                Ok(session) => {
                    info!(broker = session.url(), "connected to the broker");
                    self.session = Some(session);
                }
                Err(error) => {
                    let delay = self.backoff.next_delay();
                    warn!(
                        error = %error, retry_in_ms = delay.as_millis(),
                        "cannot connect to the broker"
                    );
                    self.retry_at = Instant::now() + delay;
                }
            }
        }
        self.session.as_ref()
    }

    /// A publish went through: the next failure starts with a short wait.
    fn succeeded(&mut self) {
        self.backoff.reset();
    }

    /// A publish failed: drop the session and wait before the next one.
    async fn failed(&mut self) {
        if let Some(session) = self.session.take() {
            close(session).await;
        }
        let delay = self.backoff.next_delay();
        info!(
            retry_in_ms = delay.as_millis(),
            "reconnecting to the broker after a failed publish"
        );
        self.retry_at = Instant::now() + delay;
    }

    async fn close(&mut self) {
        if let Some(session) = self.session.take() {
            close(session).await;
        }
    }
}
