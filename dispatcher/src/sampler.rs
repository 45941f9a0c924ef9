//! The fleet sampler: every `http.fleet_sample_interval`, the jobs queue's
//! depth (from the broker) and the workers' busy and total slots (from
//! their latest statuses in the store) go into the [`FleetHistory`] the
//! workers page and `GET /api/fleet` draw from.
//!
//! [`FleetHistory`]: crate::fleet::FleetHistory

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warren_common::topology::Queue;

use crate::app::AppState;
use crate::fleet::Sample;

/// Workers counted in a sample: heard from within this long (a worker
/// reports its status every heartbeat interval, a few seconds).
const WORKERS_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Takes a sample every interval until `stop`.
pub(crate) async fn run(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.fleet.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample = sample(&state).await;
        state.fleet.push(sample);
    }
}

/// One sample: the jobs queue's depth from the broker (a passive declare),
/// the slots from the workers' latest statuses in the store.
async fn sample(state: &AppState) -> Sample {
    let now = Utc::now();
    let jobs_queue = state.broker.topology.queue(Queue::Jobs);
    let jobs_waiting = if *state.ready.borrow() {
        match state.queue_depths().await {
            Ok(queues) => queues
                .into_iter()
                .find(|(name, _, _)| *name == jobs_queue)
                .map(|(_, messages, _)| messages),
            Err(error) => {
                tracing::debug!(error = %error.message, "fleet sample: no queue depth");
                None
            }
        }
    } else {
        None
    };
    let workers = state
        .read(move |store| store.workers(now - WORKERS_WITHIN))
        .await
        .unwrap_or_default();
    Sample {
        at: now,
        jobs_waiting,
        busy_slots: workers.iter().map(|w| u32::from(w.busy)).sum(),
        slots: workers.iter().map(|w| u32::from(w.slots)).sum(),
        workers: u32::try_from(workers.len()).unwrap_or(u32::MAX),
    }
}
