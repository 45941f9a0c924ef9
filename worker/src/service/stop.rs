//! Stopping in two stages: the first signal drains (no new jobs, those in
//! hand finish within `worker.shutdown_grace`); a second signal, or the
//! grace running out, kills the jobs in hand and waits a little for them
//! to report back (`kill_grace` + [`ABORT_WAIT`]), then gives up.
use super::Service;
use std::future::Future;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};
use warren_common::shutdown::Shutdown;

/// After a forced stop, how long the killed jobs may take to report back
/// (their process groups get the kill grace, then SIGKILL), beyond the kill
/// grace itself.
pub(super) const ABORT_WAIT: Duration = Duration::from_secs(15);

/// Where the worker is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Running,
    /// Not taking jobs; finishing those in hand until the deadline.
    Draining {
        until: Instant,
    },
    /// Jobs killed; waiting (until the deadline) for them to report back.
    Aborting {
        until: Instant,
    },
    /// Done waiting.
    GaveUp,
}

/// What the stop machinery asks for next.
#[derive(Debug, Clone, Copy)]
pub(super) enum StopStep {
    Drain,
    Abort { why: &'static str },
    GiveUp,
}

impl Stop {
    /// The next stop step, as a future that borrows nothing.
    pub(super) fn next_step(self, shutdown: &Shutdown) -> impl Future<Output = StopStep> + 'static {
        let graceful = shutdown.graceful.clone();
        let forced = shutdown.forced.clone();
        async move {
            match self {
                Stop::Running => tokio::select! {
                    biased;
                    () = forced.cancelled() => StopStep::Abort { why: "forced stop" },
                    () = graceful.cancelled() => StopStep::Drain,
                },
                Stop::Draining { until } => tokio::select! {
                    () = forced.cancelled() => StopStep::Abort { why: "forced stop" },
                    () = sleep_until(until) => StopStep::Abort { why: "shutdown grace expired" },
                },
                Stop::Aborting { until } => {
                    sleep_until(until).await;
                    StopStep::GiveUp
                }
                Stop::GaveUp => std::future::pending().await,
            }
        }
    }
}

impl Service {
    /// Whether there is nothing left to do.
    pub(super) fn stopped(&self) -> bool {
        match self.stop {
            Stop::Running => false,
            Stop::Draining { .. } => self.in_flight == 0 && self.outbox.is_empty(),
            Stop::Aborting { .. } => self.in_flight == 0,
            Stop::GaveUp => true,
        }
    }

    pub(super) fn ending(&self) -> anyhow::Result<()> {
        let lost = self.outbox.len();
        let unfinished = self.in_flight;
        if self.abandoned + lost + unfinished == 0 {
            info!("worker stopped");
            return Ok(());
        }
        anyhow::bail!(
            "stopped without finishing everything: {} jobs killed, {unfinished} jobs still \
             running, {lost} results not published; the broker gives those jobs to other workers",
            self.abandoned
        )
    }

    pub(super) fn apply(&mut self, step: StopStep) {
        match step {
            StopStep::Drain => {
                let grace = self.config.shutdown_grace;
                info!(in_flight = self.in_flight, grace = %humantime::format_duration(grace),
                    "stopping: taking no more jobs, finishing those in hand");
                self.stop = Stop::Draining {
                    until: Instant::now() + grace,
                };
            }
            StopStep::Abort { why } => {
                warn!(
                    in_flight = self.in_flight,
                    why, "stopping now: killing the jobs in hand"
                );
                self.abort.cancel();
                self.stop = Stop::Aborting {
                    until: Instant::now() + self.config.kill_grace + ABORT_WAIT,
                };
            }
            StopStep::GiveUp => {
                error!(
                    in_flight = self.in_flight,
                    "killed jobs did not report back; giving up on them"
                );
                self.stop = Stop::GaveUp;
            }
        }
    }
}
