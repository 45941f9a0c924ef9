//! Warren's watcher: notices every new commit on the watched branches of
//! several git repositories and publishes a
//! [`CommitEvent`](warren_common::messages::CommitEvent) for each, oldest
//! first, to the `commits` exchange. A branch's cursor moves only after the
//! broker confirmed the publish, so no commit is lost across crashes,
//! restarts or broker outages (a commit may be published twice; the
//! dispatcher drops duplicates by (repo, sha)).
//!
//! - [`config`]: `[watcher]` and `[repos.<name>]` settings, validated into a
//!   [`WatcherConfig`].
//! - [`state`]: the state directory's layout and its locks.
//! - [`mirror`]: the bare mirror of each repository, fetched with git2.
//! - [`cursor`]: the persisted last-published commit per (repo, branch).
//! - [`history`]: which commits are new since a cursor, oldest first, and
//!   the events announcing them.
//! - [`poll`]: one poll of one repository (fetch, plan, publish, record).
//! - `run`: [`run`], the long-running loop (each repository at its own
//!   interval, one broker session, reconnection), and [`poll_once`].
//!
//! # Immediate detection from a git hook
//!
//! Polling notices a push within `poll_interval`. To notice it at once, run
//! the watcher with `--once` from the repository's `post-receive` hook, on
//! the host and with the config (so the state directory) of the long-running
//! watcher:
//!
//! ```sh
//! # hooks/post-receive of the upstream repository `api`
//! warren-watcher --config /etc/warren/watcher.toml --once --repo api
//! ```
//!
//! This is safe while the long-running watcher runs: a poll of a repository
//! holds that repository's lock file in the state directory
//! (`locks/<repo>.lock`), so `--once` waits for a poll in progress (up to
//! two minutes) instead of racing it, and writes to `cursors.json` reload the
//! file under its own lock and change only their repository's entries. Both
//! must be able to write the state directory (same user, or a shared group).
//! `--once` exits 0 when every repository was polled and its new commits
//! confirmed, 1 otherwise (the message says which repository failed and why;
//! nothing is lost: the long-running watcher publishes it at its next poll),
//! and 2 for an invalid configuration. The push waits for the hook; to not
//! make it wait, end the line with `>/dev/null 2>&1 &`.

pub mod config;
pub mod cursor;
pub mod history;
pub mod mirror;
pub mod poll;
mod run;
pub mod state;

pub use config::WatcherConfig;
pub use run::{APP_ID, ONCE_LOCK_WAIT, error_chain, poll_once, run};
