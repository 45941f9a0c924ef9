//! What every Warren component shares.
//!
//! - [`ids`]: validated identifiers (commit ids, repository and branch names,
//!   URLs, worker and job ids); nothing unvalidated reaches a path or a command.
//! - [`messages`]: the versioned JSON messages and their strict decoder;
//!   [`envelope`] how each goes on the wire (routing key, message id, headers);
//!   [`proof`] the HMAC that shows a result comes from the worker that ran
//!   the job (under the job's `result_key`).
//! - [`topology`]: every exchange and queue, under a configurable prefix.
//! - [`session`]: a broker connection with publisher confirms and dead-lettering.
//! - [`config`]: file-then-environment settings and the `[broker]`/`[log]` tables;
//!   [`git`] the `[git]` table: credentials for fetches; [`fetch`] the one
//!   git fetch (and bare-mirror opener) the three components share.
//! - [`backoff`], [`shutdown`], [`telemetry`], [`atomic_file`]: the small
//!   pieces every long-running component needs; [`exposition`] the two
//!   text formats `/metrics` answers in; [`bytes`] sizes as people write
//!   them (`"512 MiB"`).

pub mod atomic_file;
pub mod backoff;
pub mod bytes;
pub mod config;
pub mod envelope;
pub mod exposition;
pub mod fetch;
pub mod git;
pub mod ids;
pub mod messages;
pub mod proof;
pub mod session;
pub mod shutdown;
#[cfg(feature = "sqlite")]
pub mod sql;
pub mod telemetry;
pub mod topology;

/// The host name, for worker ids and connection names.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}
