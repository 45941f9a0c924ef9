//! The dispatcher: turns each commit into test jobs, keeps the books, and
//! writes one result file per commit.
//!
//! One file a line:
//!
//! - [`config`]: `[broker]`, `[dispatcher]`, `[defaults]`, `[log]`.
//! - [`spec`]: the commit's own `warren.toml`, with defaults applied.
//! - [`select`]: which suite files a change affects.
//! - [`split`]: suite files into shards, balanced by recorded timings.
//! - `mirror`: reading `warren.toml` from the commit's tree via a bare mirror.
//! - [`store`]: commits, jobs and attempts in SQLite; the source of truth.
//! - [`report`]: the result file, `<results_dir>/<repo>/<sha>.json`.
//! - `service`: start-up, then connect, consume, reconnect, stop: the loop.
//! - `state`: the loop's state and the broker helpers its concerns share.
//! - `intake`: commit event → plan (via the mirror) → jobs recorded and
//!   published; supersede.
//! - `leases`: lease expiry, lost runs, their next attempts.
//! - `results`: job results, events and dead jobs → store → result files.
//! - `commands`: the retry/cancel commands HTTP sends to the loop.
//! - `http`: the JSON API, metrics and health; `app` the handlers' shared
//!   state and errors; `sse` live events; `web` the status pages; `live`
//!   running jobs' output for followers; `metrics` the Prometheus
//!   registry; `notify` webhooks.
//! - `pictures`: the pages' SVG pictures (shard timeline, branch and test
//!   history, queue and fleet); `fleet` the last hour of queue and slot
//!   samples behind the last one, taken by `sampler`.
//!
//! Public: [`run`] and [`DispatcherConfig`] for the binary and the tests,
//! and the store with its vocabulary ([`store`], [`report`], [`spec`],
//! [`split`], [`select`], [`config`]) for tools that fill or read a
//! database (the API benchmark). Everything else is private to the crate.
//!
//! Where the rules live:
//!
//! - Single writer: one loop task owns the only writable `Store`
//!   (`state.rs`, driven by `service.rs`); HTTP reads through a read-only
//!   connection and sends writes to the loop as commands (`commands.rs`).
//! - Record, then ack: every delivery is acked only after what it carries is
//!   in the store (and, for commits, its jobs are confirmed by the broker):
//!   `intake.rs` and `results.rs`. A crash in between means a redelivery.
//! - Dedup by repo and sha: a commit already known is acked and nothing more
//!   (`intake.rs`, `Store::see_commit`); results and events delivered again
//!   are recognised by the store (`results.rs`).
//! - Leases: `leases.rs`, including the rule that no lease expires until a
//!   whole lease has passed since serving (re)started, as heartbeats may
//!   have been held up meanwhile.

mod app;
mod commands;
pub mod config;
mod fleet;
mod http;
mod intake;
mod leases;
mod live;
mod metrics;
mod mirror;
mod notify;
mod pictures;
pub mod report;
mod results;
mod sampler;
pub mod select;
mod service;
pub mod spec;
pub mod split;
mod sse;
mod state;
pub mod store;
mod web;

pub use config::DispatcherConfig;
pub use service::run;
