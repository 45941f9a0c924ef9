//! Webhooks: when a commit gets its verdict, POST a JSON summary to each
//! configured URL, from a task of its own, with a timeout and retries, so
//! that a slow or broken receiver never holds up the dispatcher.
//!
//! The body (`"event": "commit.finished"`) carries what a forge needs to set
//! a commit status: repo, sha, branch, status, message, duration and the
//! test counts (see the README for turning it into a GitHub status).

use crate::report::CommitReport;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};
use warren_common::backoff::Backoff;

/// Verdicts waiting to be sent. Beyond this the newest are dropped (and
/// logged): a receiver that is down for hours must not grow the
/// dispatcher's memory.
const QUEUE: usize = 1000;

/// What a webhook receives.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Notification {
    pub event: &'static str,
    pub repo: String,
    pub sha: String,
    pub branch: String,
    pub status: String,
    pub message: Option<String>,
    pub summary: String,
    pub author: String,
    pub duration_ms: Option<u64>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub tests: crate::report::TestCounts,
}

impl Notification {
    /// The notification for a finished commit.
    pub(crate) fn of(report: &CommitReport) -> Self {
        Self {
            event: "commit.finished",
            repo: report.repo.to_string(),
            sha: report.sha.to_string(),
            branch: report.branch.to_string(),
            status: report.status.map_or("running", |s| s.as_str()).to_owned(),
            message: report.message.clone(),
            summary: report.summary.clone(),
            author: report.author.clone(),
            duration_ms: report.duration_ms,
            finished_at: report.finished_at,
            tests: report.test_counts.clone(),
        }
    }
}

/// Hands verdicts to the sending task.
#[derive(Clone)]
pub(crate) struct Notifier {
    queue: Option<mpsc::Sender<Notification>>,
}

impl Notifier {
    /// Starts the sending task for `urls` (none: a notifier that does
    /// nothing).
    pub(crate) fn start(urls: Vec<String>, timeout: Duration, retries: u32) -> Self {
        if urls.is_empty() {
            return Self { queue: None };
        }
        let (queue, mut pending) = mpsc::channel::<Notification>(QUEUE);
        tokio::spawn(async move {
            let client = match reqwest::Client::builder().timeout(timeout).build() {
                Ok(client) => client,
                Err(error) => {
                    warn!(%error, "webhooks disabled: cannot build an HTTP client");
                    return;
                }
            };
            while let Some(notification) = pending.recv().await {
                for url in &urls {
                    send(&client, url, &notification, retries).await;
                }
            }
        });
        Self { queue: Some(queue) }
    }

    /// Queues `notification`; never waits.
    pub(crate) fn notify(&self, notification: Notification) {
        if let Some(queue) = &self.queue
            && let Err(error) = queue.try_send(notification)
        {
            warn!(%error, "webhook queue full or closed: a notification is dropped");
        }
    }
}

/// One notification to one URL, with retries.
async fn send(client: &reqwest::Client, url: &str, notification: &Notification, retries: u32) {
    let shown = warren_common::config::safe_url(url);
    let mut backoff = Backoff::new(Duration::from_secs(30));
    for attempt in 0..=retries {
        let outcome = client.post(url).json(notification).send().await;
        match outcome {
            Ok(response) if response.status().is_success() => {
                info!(url = %shown, repo = %notification.repo, sha = %notification.sha,
                      status = %notification.status, "webhook delivered");
                return;
            }
            Ok(response) => {
                warn!(url = %shown, attempt, http_status = %response.status(), "webhook refused")
            }
            Err(error) => {
                warn!(url = %shown, attempt, error = %error.without_url(), "webhook failed")
            }
        }
        if attempt < retries {
            tokio::time::sleep(backoff.next_delay() * 10).await;
        }
    }
    warn!(url = %shown, repo = %notification.repo, sha = %notification.sha,
          "webhook given up after {} tries", retries + 1);
}
