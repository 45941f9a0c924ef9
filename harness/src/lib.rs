//! The harness that tests, the demo and the benchmarks share.
//!
//! - [`builders`]: commit events, jobs and results for tests to publish.
//! - [`broker`]: a unique name prefix per test on the real broker, with
//!   helpers to read queue depths and dead letters, and clean-up.
//! - [`git`]: real git repositories to commit to (bare, like a forge).
//! - [`git_http`]: a local git host over smart HTTP that requires a token.
//! - [`http`]: a minimal client for the dispatcher's API.
//! - [`cluster`]: a whole installation from the real binaries.
//! - [`proxy`]: a TCP proxy that can cut a connection without closing it.
//! - [`rabbit`]: stopping and starting the broker, changing its settings,
//!   always undone.
//! - [`sample`]: the sample project and the demo's story of commits.
//! - [`spawn`]: a component's `run` in a task of the test, stopped on drop.
//! - [`process`]: start the real binaries with a config file, stop them,
//!   and wait for files with a deadline instead of sleeping.

pub mod broker;
pub mod builders;
pub mod cluster;
pub mod git;
pub mod git_http;
pub mod http;
pub mod process;
pub mod proxy;
pub mod rabbit;
pub mod sample;
pub mod spawn;
