//! Results whose publish failed, kept for the next broker connection.
//!
//! When the connection dies, the job deliveries of that connection cannot be
//! acked any more (the broker requeues them), but their results are still
//! worth publishing: the dispatcher records the first finished result of a
//! job and only counts the others, so a duplicate is harmless and a lost
//! result costs a re-run.

use std::collections::VecDeque;
use tracing::error;
use warren_common::messages::JobResult;

/// Publishes one result may fail (on as many connections) before it is
/// dropped: a result the broker keeps refusing must not block the worker.
pub(crate) const MAX_PUBLISH_TRIES: u32 = 5;

/// A bounded queue of results to publish, oldest first.
#[derive(Debug)]
pub(crate) struct Outbox {
    results: VecDeque<Kept>,
    capacity: usize,
}

#[derive(Debug)]
struct Kept {
    result: JobResult,
    tries: u32,
}

impl Outbox {
    /// An outbox for at most `capacity` results. The service takes no new
    /// job until the outbox is empty, so it holds at most one result per
    /// slot; the bound is a second line of defence for memory.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            results: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Keeps `result`; when full, the oldest result is dropped (its job is
    /// unacked, so the broker gives it to a worker again).
    pub(crate) fn push(&mut self, result: JobResult) {
        if self.results.len() >= self.capacity
            && let Some(dropped) = self.results.pop_front()
        {
            let result = &dropped.result;
            error!(repo = %result.repo, sha = %result.sha, job = %result.job_id,
                attempt = result.attempt,
                "result dropped: too many unpublished results; the job will run again");
        }
        self.results.push_back(Kept { result, tries: 0 });
    }

    /// The oldest result, to publish.
    pub(crate) fn front(&self) -> Option<&JobResult> {
        self.results.front().map(|kept| &kept.result)
    }

    /// The oldest result was published: forget it.
    pub(crate) fn published(&mut self) {
        self.results.pop_front();
    }

    /// Publishing the oldest result failed; drops it (and says so) after
    /// [`MAX_PUBLISH_TRIES`] failures.
    pub(crate) fn failed(&mut self) {
        if let Some(kept) = self.results.front_mut() {
            kept.tries += 1;
            if kept.tries >= MAX_PUBLISH_TRIES {
                let result = &kept.result;
                error!(repo = %result.repo, sha = %result.sha, job = %result.job_id,
                    attempt = result.attempt, tries = kept.tries,
                    "result dropped: the broker refused it every time; the job will run again");
                self.results.pop_front();
            }
        }
    }

    /// How many results wait.
    pub(crate) fn len(&self) -> usize {
        self.results.len()
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.results.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> JobResult {
        warren_harness::builders::result("api", &"a".repeat(40)).build()
    }

    #[test]
    fn the_oldest_is_dropped_when_full() {
        let mut outbox = Outbox::new(2);
        let (a, b, c) = (result(), result(), result());
        let (b_id, c_id) = (b.job_id, c.job_id);
        outbox.push(a);
        outbox.push(b);
        outbox.push(c);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.front().unwrap().job_id, b_id);
        outbox.published();
        assert_eq!(outbox.front().unwrap().job_id, c_id);
    }

    #[test]
    fn a_result_refused_too_often_is_dropped() {
        let mut outbox = Outbox::new(4);
        outbox.push(result());
        for _ in 1..MAX_PUBLISH_TRIES {
            outbox.failed();
            assert_eq!(outbox.len(), 1);
        }
        outbox.failed();
        assert!(outbox.is_empty());
    }
}
