//! Server-sent events: a job's live output (`line` events, then `end`)
//! and commit updates for live pages.

use crate::app::{ApiError, AppState};
use crate::live::LiveEvent;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;
use tracing::warn;
use warren_common::ids::JobId;

/// How often a live log checks whether its job has been decided.
const LOG_END_CHECK: Duration = Duration::from_millis(500);

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// The live output of a job (docs/API.md): `line` events, then `end`.
pub(crate) async fn job_log(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id: JobId = job_id
        .parse()
        .map_err(|error: warren_common::ids::InvalidId| ApiError::bad_request(error.to_string()))?;
    let known = state.read(move |store| store.job_output(&job_id)).await?;
    let Some((status, output, _)) = known else {
        return Err(ApiError::not_found(format!("no job {job_id}")));
    };
    if let Some(status) = status {
        let events = vec![
            Ok(Event::default().event("line").data(output)),
            Ok(Event::default().event("end").data(status.as_str())),
        ];
        let stream: EventStream = Box::pin(futures_util::stream::iter(events));
        return Ok(Sse::new(stream).into_response());
    }
    // The output so far, then what follows. The first tick of `check`
    // comes at once: a job decided since the read above ends at once.
    let (tail, followers) = state.live.follow(job_id);
    let first = (!tail.is_empty()).then(|| Event::default().event("line").data(tail));
    let follow = LogFollow {
        state,
        job_id,
        followers,
        check: tokio::time::interval(LOG_END_CHECK),
        first,
        ended: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        let event = follow.next_event().await?;
        Some((Ok(event), follow))
    });
    Ok(Sse::new(Box::pin(stream) as EventStream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A live log being followed.
struct LogFollow {
    state: AppState,
    job_id: JobId,
    followers: broadcast::Receiver<LiveEvent>,
    check: tokio::time::Interval,
    /// The event to send before the live ones (the output so far).
    first: Option<Event>,
    ended: bool,
}

impl LogFollow {
    /// The next event; `None` after `end` or `gone`.
    async fn next_event(&mut self) -> Option<Event> {
        if let Some(event) = self.first.take() {
            return Some(event);
        }
        if self.ended {
            return None;
        }
        loop {
            tokio::select! {
                // Output first: chunks that came before the verdict are
                // sent before `end`.
                biased;
                event = self.followers.recv() => match event {
                    Ok(LiveEvent::Lines(text)) => {
                        return Some(Event::default().event("line").data(text.as_ref()));
                    }
                    Err(broadcast::error::RecvError::Lagged(chunks)) => {
                        let note = format!("[warren: {chunks} chunks of live output skipped: this reader fell behind]\n");
                        return Some(Event::default().event("line").data(note));
                    }
                    // The broker connection was lost (or the job's output
                    // was dropped to make room): say so and stop; the page
                    // or the CLI follows again.
                    Ok(LiveEvent::Gone) | Err(broadcast::error::RecvError::Closed) => {
                        self.ended = true;
                        return Some(Event::default().event("gone").data("the live output stopped"));
                    }
                },
                _ = self.check.tick() => {
                    let job_id = self.job_id;
                    if let Ok(Some((Some(status), _, _))) =
                        self.state.read(move |store| store.job_output(&job_id)).await
                    {
                        self.ended = true;
                        return Some(Event::default().event("end").data(status.as_str()));
                    }
                }
            }
        }
    }
}

/// Commit updates as they happen (docs/API.md).
pub(crate) async fn events(State(state): State<AppState>) -> Response {
    let updates = state.updates.subscribe();
    let stream =
        futures_util::stream::unfold((state, updates), |(state, mut updates)| async move {
            loop {
                match updates.recv().await {
                    Ok(commit_id) => {
                        match state
                            .read(move |store| store.commit_summary(commit_id))
                            .await
                        {
                            Ok(summary) => {
                                let event = Event::default()
                                    .event("commit")
                                    .json_data(&summary)
                                    .unwrap_or_else(|_| Event::default().comment("unencodable"));
                                return Some((Ok(event), (state, updates)));
                            }
                            Err(error) => warn!(error = %error.message, "commit update not sent"),
                        }
                    }
                    // A slow page missed updates; it catches up with the next.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    Sse::new(Box::pin(stream) as EventStream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
