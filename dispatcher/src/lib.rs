//! The dispatcher: turns each commit into test jobs, keeps the books, and
//! writes one result file per commit.
//!
//! - [`config`]: `[broker]`, `[dispatcher]`, `[defaults]`, `[log]`.
//! - [`spec`]: the commit's own `warren.toml`, with defaults applied.
//! - [`select`]: which suite files a change affects.
//! - [`split`]: suite files into shards, balanced by recorded timings.
//! - [`mirror`]: reading `warren.toml` from the commit's tree via a bare mirror.
//! - [`store`]: commits, jobs and attempts in SQLite; the source of truth.
//! - [`report`]: the result file, `<results_dir>/<repo>/<sha>.json`.
//! - [`service`]: the consume loop, reconnection and recovery.
//! - [`http`]: the JSON API, live events, metrics and health; [`web`] the
//!   status pages; [`live`] running jobs' output for followers; [`metrics`]
//!   the Prometheus registry; [`notify`] webhooks.

mod app;
mod commands;
pub mod config;
pub mod http;
mod intake;
mod leases;
pub mod live;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod report;
mod results;
pub mod select;
pub mod service;
pub mod spec;
pub mod split;
mod sse;
mod state;
pub mod store;
pub mod web;

pub use config::DispatcherConfig;
pub use service::run;
