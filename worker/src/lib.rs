//! Warren's worker: takes test jobs from the broker, checks the commit out,
//! runs the job's command and publishes the result.
//!
//! - [`config`]: `[worker]` settings, validated once into [`WorkerConfig`].
//! - `service`: [`run`](fn@run), the loop: connect, consume with prefetch = slots,
//!   reconnect; its parts `service/stop.rs` (the two stages),
//!   `service/delivery.rs` (publish, confirm, then ack; the outbox; the
//!   early ack; dead letters) and `service/control.rs` (cancellations).
//! - `job`: one delivery → one `Outcome` (`job::execute_job`): decode,
//!   allow-list, checkout, run, result; `started`/`heartbeat` meanwhile.
//! - `cancel`: the control queue's `CancelJobs`, a stop per job, and the
//!   ids cancelled lately.
//! - `runner`: what every job shares (`runner::JobRunner`) and the
//!   command's environment.
//! - [`images`]: which container images jobs may run in
//!   (`worker.allowed_images`, `worker.default_image`).
//! - `checkout`: a clean work tree at a commit, reusing a clone per slot (git2).
//! - `suite`: the runs of one job: once, once per file (`{file}`), within
//!   the job's timeout; `suite/reruns.rs` the reruns of what failed,
//!   `suite/verdict.rs` how the runs add up to the job's status.
//! - `substitute`: the shard's files into the command (`{files}`, `{file}`,
//!   `WARREN_FILES`), quoted, never interpolated raw.
//! - `junit`: reading the JUnit XML report safely; `flaky`: tests across
//!   reruns; `timings`: time per suite file.
//! - `run`: a command in its own process group, with a timeout that kills
//!   the whole group, and bounded output.
//! - [`executor`]: what `run` spawns for a command (`worker.executor`:
//!   `process`, `sandbox`, `container`) and the guard that watches the run's
//!   limits and cleans up after it.
//! - `output`: head + tail capture of a command's output within a budget.
//! - `events`: transient job events through the current connection.
//! - `live`: a running job's output, live, never slowing the job (bounded,
//!   dropping and counting); `live/assembler.rs` cuts it into chunks of
//!   whole lines.
//! - `presence`: the worker's status (slots, busy, jobs done) every
//!   heartbeat interval, busy or idle.
//! - `metrics`: Prometheus metrics; `http`: `/healthz` and `/metrics` on
//!   `worker.http_listen`.
//! - `outbox`: results kept across a lost connection.
//!
//! Public: [`run`](fn@run), [`WorkerConfig`], [`config`], [`executor`]
//! (its start-up check) and [`images`] (a part of the config), for the
//! binary and the tests; every other module is private to the crate.
//!
//! Where the rules live:
//! - Ack order — a job is acked only after its result's publish was
//!   confirmed, on the connection it came from: `service/delivery.rs`
//!   (`settle`); a result that could not be published waits in the outbox.
//! - Early ack at `worker.ack_deadline`, after which the dispatcher's lease
//!   covers the job: `service/delivery.rs` (`ack_early`), timed in the job's
//!   task that `service.rs` starts.
//! - Dead-lettering an undecodable or refused job: `service/delivery.rs`.
//! - Cancel dedup (a cancelled job delivered again is acked and dropped):
//!   `cancel.rs` (`CancelledJobs`), applied in `service/control.rs`.
//! - Heartbeats (`started`, `heartbeat` events the lease counts on):
//!   `job.rs` through `events.rs`.
//! - One owner: the loop in `service.rs` alone holds the session, the slots
//!   and the outbox; jobs report back through a channel, so nothing is
//!   locked.

mod cancel;
mod checkout;
pub mod config;
mod events;
pub mod executor;
mod flaky;
mod http;
pub mod images;
mod job;
mod junit;
mod live;
mod metrics;
mod outbox;
mod output;
mod presence;
mod run;
mod runner;
mod service;
mod substitute;
mod suite;
mod timings;

pub use config::WorkerConfig;
pub use service::run;
