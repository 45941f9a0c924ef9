//! What the HTTP side and the loop share: the retry and cancel commands
//! HTTP sends to the loop (which alone writes the store) and their
//! outcomes, and the dispatcher's broker identity.

use tokio::sync::oneshot;

/// The `app_id` of everything the dispatcher publishes.
pub(crate) const APP_ID: &str = "warren-dispatcher";

/// A write the HTTP side asks the dispatcher's loop to make.
pub(crate) enum Command {
    /// Run a finished commit's jobs again.
    Retry {
        commit_id: i64,
        reply: oneshot::Sender<CommandOutcome>,
    },
    /// Stop a running commit's jobs.
    Cancel {
        commit_id: i64,
        reply: oneshot::Sender<CommandOutcome>,
    },
}

/// What the loop did with a [`Command`].
pub(crate) enum CommandOutcome {
    Done { status: &'static str, jobs: usize },
    Conflict(String),
}
