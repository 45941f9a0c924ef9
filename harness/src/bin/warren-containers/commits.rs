//! The commits: a bare repository on the host (mounted at `/repos` in the
//! containers) and a stream of commits to it on a thread of its own.

use crate::wait_until;
use anyhow::Result;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_harness::git::Upstream;

/// The slow commit's test, in seconds: long enough to stop its worker in the
/// middle of it, short beside the worker's `shutdown_grace` (2 min), so the
/// worker finishes it before it exits.
pub(crate) const SLOW_TEST_SECONDS: &str = "6";

/// Time between two commits of the stream: several commits per worker
/// change, fewer than the workers can test.
const COMMIT_EVERY: Duration = Duration::from_millis(400);

/// A commit made, and whether its test fails.
#[derive(Clone)]
pub(crate) struct Pushed {
    pub(crate) sha: String,
    /// Its test fails on purpose.
    pub(crate) fails: bool,
}

impl Pushed {
    pub(crate) fn expected(&self) -> &'static str {
        if self.fails { "failed" } else { "passed" }
    }
}

/// The repository the watcher watches (a bare one on the host, mounted at
/// `/repos`), and the commits made to it.
pub(crate) struct CommitStream {
    upstream: Mutex<Upstream>,
    pushed: Mutex<Vec<Pushed>>,
}

impl CommitStream {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            upstream: Mutex::new(Upstream::create(path)),
            pushed: Mutex::new(Vec::new()),
        }
    }

    /// Commits to `main`: every fifth test fails; a slow one runs for
    /// [`SLOW_TEST_SECONDS`], the others for 0.2 to 1 s.
    pub(crate) fn push(&self, slow: bool) -> String {
        let upstream = self.upstream.lock().expect("upstream lock");
        let mut pushed = self.pushed.lock().expect("pushed lock");
        let n = pushed.len();
        let fails = !slow && n % 5 == 3;
        let delay = if slow {
            SLOW_TEST_SECONDS
        } else {
            ["0.2", "0.5", "1"][n % 3]
        };
        let count = n.to_string();
        let sha = upstream.commit(
            "main",
            &format!("commit {n}"),
            &[
                (
                    "warren.toml",
                    Some("command = \"sh test.sh\"\ntimeout = \"2m\"\n"),
                ),
                (
                    "test.sh",
                    Some(
                        "sleep \"$(cat delay)\"\n\
                         [ \"$(cat verdict)\" = pass ] || { echo 'verdict: fail'; exit 1; }\n",
                    ),
                ),
                ("verdict", Some(if fails { "fail" } else { "pass" })),
                ("delay", Some(delay)),
                ("n", Some(&count)),
            ],
        );
        pushed.push(Pushed {
            sha: sha.clone(),
            fails,
        });
        sha
    }

    pub(crate) fn pushed(&self) -> Vec<Pushed> {
        self.pushed.lock().expect("pushed lock").clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.pushed.lock().expect("pushed lock").len()
    }
}

/// Commits every [`COMMIT_EVERY`] on a thread of their own, until stopped.
pub(crate) struct Flow {
    stream: Arc<CommitStream>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flow {
    pub(crate) fn start(stream: Arc<CommitStream>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stream = Arc::clone(&stream);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("commit-stream".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        stream.push(false);
                        std::thread::sleep(COMMIT_EVERY);
                    }
                })
                .expect("spawn the commit stream")
        };
        Self {
            stream,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `n` more commits are made.
    pub(crate) fn wait_for_more(&self, n: usize) -> Result<()> {
        let target = self.stream.count() + n;
        wait_until(&format!("{n} more commits"), || {
            (self.stream.count() >= target).then_some(())
        })
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the commit stream does not panic");
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
