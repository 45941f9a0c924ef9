//! The queue and the fleet over the last hour: a sample every
//! `http.fleet_sample_interval` of the jobs waiting in the jobs queue and
//! the workers' busy and total slots, kept in memory for the workers page
//! and `GET /api/fleet`. A restart starts the history afresh: it tells an
//! operator whether to add workers now, not last week (that is what
//! Prometheus and `/metrics` are for).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How far back the samples go.
pub(crate) const WINDOW: Duration = Duration::from_secs(3600);
/// One look at the queue and the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Sample {
    pub at: DateTime<Utc>,
    /// Jobs ready in the jobs queue (not yet taken by a worker); `None`
    /// when the broker could not be asked.
    pub jobs_waiting: Option<u32>,
    /// Slots running a job, over the workers heard from recently.
    pub busy_slots: u32,
    /// Slots of those workers in all.
    pub slots: u32,
    pub workers: u32,
}

/// The last hour of samples: a ring of a fixed size (the window over the
/// interval), so memory stays bounded however long the dispatcher runs.
#[derive(Debug)]
pub(crate) struct FleetHistory {
    samples: Mutex<VecDeque<Sample>>,
    capacity: usize,
    pub(crate) interval: Duration,
}

impl FleetHistory {
    /// Room for an hour of samples taken every `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        let capacity =
            usize::try_from(WINDOW.as_millis() / interval.as_millis().max(1)).unwrap_or(3600) + 1;
        Self {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            interval,
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub(crate) fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples of the last hour before `now`, oldest first.
    pub(crate) fn recent(&self, now: DateTime<Utc>) -> Vec<Sample> {
        let since = now - chrono::TimeDelta::from_std(WINDOW).unwrap_or(chrono::TimeDelta::MAX);
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|sample| sample.at >= since)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: i64) -> Sample {
        Sample {
            at: DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap(),
            jobs_waiting: Some(1),
            busy_slots: 0,
            slots: 2,
            workers: 1,
        }
    }

    #[test]
    fn the_ring_keeps_an_hour_and_no_more() {
        let history = FleetHistory::new(Duration::from_secs(10));
        assert_eq!(history.capacity, 361);
        for i in 0..1000 {
            history.push(sample(i * 10));
        }
        let now = sample(9990).at;
        let recent = history.recent(now);
        assert_eq!(recent.len(), 361, "the last hour, both ends included");
        assert_eq!(recent[0], sample(9990 - 3600));
        assert_eq!(recent.last(), Some(&sample(9990)));
        // An hour later nothing is recent, though the ring still holds it.
        assert!(history.recent(sample(9990 + 3601).at).is_empty());
        assert_eq!(FleetHistory::new(Duration::from_secs(1)).capacity, 3601);
    }
}
