//! A component's `run` in a task of the test, with its stop tokens: the
//! in-process counterpart of [`crate::process::Component`]. The crates'
//! own tests wrap it (`spawn_worker`, `spawn_watcher`, `spawn_dispatcher`)
//! with their config and helpers.
//!
//! Dropping a [`Spawned`] that was not stopped (a failing test) forces the
//! stop and aborts the task, so nothing outlives its test.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use warren_common::shutdown::Shutdown;

/// A component running in a task.
pub struct Spawned {
    name: &'static str,
    shutdown: Shutdown,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Spawned {
    /// Starts `run` with fresh stop tokens. `name` is for failure messages.
    pub fn start<F>(name: &'static str, run: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = Shutdown::manual();
        let handle = tokio::spawn(run(shutdown.clone()));
        Self {
            name,
            shutdown,
            handle: Some(handle),
        }
    }

    /// The first stage of stopping (a first SIGTERM), without waiting.
    pub fn cancel(&self) {
        self.shutdown.graceful.cancel();
    }

    /// The second stage (a second SIGTERM), without waiting.
    pub fn force(&self) {
        self.shutdown.forced.cancel();
        self.shutdown.graceful.cancel();
    }

    /// Whether `run` has returned.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits up to `timeout` for `run` to return, and returns what it
    /// returned; panics if it does not return in time or panicked.
    pub async fn join(mut self, timeout: Duration) -> anyhow::Result<()> {
        let handle = self.handle.take().expect("joined once");
        tokio::time::timeout(timeout, handle)
            .await
            .unwrap_or_else(|_| panic!("the {} did not stop within {timeout:?}", self.name))
            .unwrap_or_else(|error| panic!("the {} task failed: {error}", self.name))
    }

    /// A graceful stop, then [`Spawned::join`].
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<()> {
        self.cancel();
        self.join(timeout).await
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.force();
            handle.abort();
        }
    }
}
