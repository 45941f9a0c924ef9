//! Turning SIGTERM and Ctrl-C into cancellation tokens.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The two stages of stopping: `graceful` (first signal: stop taking work,
/// finish what is in hand) and `forced` (second signal: abandon it now; the
/// broker requeues whatever was not acknowledged).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled by the first signal.
    pub graceful: CancellationToken,
    /// Cancelled by the second signal.
    pub forced: CancellationToken,
}

impl Shutdown {
    /// Tokens that only the caller cancels (tests, embedding).
    pub fn manual() -> Self {
        Self::default()
    }

    /// Tokens cancelled by SIGTERM (what `docker stop` sends) and SIGINT.
    pub fn on_signals() -> std::io::Result<Self> {
        let shutdown = Self::default();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let tokens = shutdown.clone();
        tokio::spawn(async move {
            for stage in 0.. {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if stage == 0 {
                    info!("stopping: finishing work in hand (signal again to force)");
                    tokens.graceful.cancel();
                } else {
                    warn!("forced stop");
                    tokens.forced.cancel();
                    tokens.graceful.cancel();
                    break;
                }
            }
        });
        Ok(shutdown)
    }
}
