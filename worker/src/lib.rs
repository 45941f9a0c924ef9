//! Warren's worker: takes test jobs from the broker, checks the commit out,
//! runs the job's command and publishes the result.
//!
//! - [`config`]: `[worker]` settings, validated once into [`WorkerConfig`].
//! - [`service`]: [`run`](fn@run), the loop: connect, consume with prefetch = slots,
//!   publish each result then ack its job, reconnect, stop in two stages.
//! - [`job`]: one delivery → one [`Outcome`] ([`job::execute`]): decode,
//!   allow-list, checkout, run, result; `started`/`heartbeat` meanwhile.
//! - [`checkout`]: a clean work tree at a commit, reusing a clone per slot (git2).
//! - [`run`](mod@run): a command in its own process group, with a timeout that kills
//!   the whole group, and bounded output.
//! - [`output`]: head + tail capture of a command's output within a budget.
//! - [`events`]: transient job events through the current connection.
//! - [`outbox`]: results kept across a lost connection.

pub mod checkout;
pub mod config;
pub mod events;
pub mod job;
pub mod outbox;
pub mod output;
pub mod run;
pub mod service;

pub use config::WorkerConfig;
pub use job::Outcome;
pub use service::run;
