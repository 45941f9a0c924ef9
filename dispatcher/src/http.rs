//! The dispatcher's HTTP side: the JSON API (docs/API.md), server-sent
//! events for live pages and `warren logs --follow`, Prometheus metrics,
//! health, and the status pages ([`crate::web`]).
//!
//! Reads go to a read-only connection to the database (WAL lets it read
//! while the dispatcher's loop writes); the few writes (retry, cancel) are
//! sent to the loop as [`Command`]s, so the loop stays the only writer and
//! the only publisher of jobs.

use crate::commands::{APP_ID, Command, CommandOutcome};
use crate::config::DispatcherConfig;
use crate::live::{LiveEvent, LiveLogs};
use crate::metrics::{Metrics, QueueLabel};
use crate::report::CommitSummary;
use crate::store::{CommitFilter, Store, StoreError};
use crate::web;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures_util::Stream;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};
use warren_common::config::BrokerConfig;
use warren_common::ids::{CommitId, JobId, RepoName};
use warren_common::messages::JobStatus;
use warren_common::session::Session;
use warren_common::topology::Queue;

/// Longest wait for the loop to carry out a command (it may be
/// reconnecting to the broker).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a live log checks whether its job has been decided.
const LOG_END_CHECK: Duration = Duration::from_millis(500);
/// Workers listed by the API: heard from within this long.
const WORKERS_SEEN_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// Workers counted as connected by the metrics: heard from within this long.
const WORKERS_CONNECTED_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    store: Arc<Mutex<Store>>,
    commands: mpsc::Sender<Command>,
    ready: watch::Receiver<bool>,
    updates: broadcast::Sender<i64>,
    broker: BrokerConfig,
    session: Arc<tokio::sync::Mutex<Option<Arc<Session>>>>,
    metrics: Arc<Metrics>,
    live: Arc<LiveLogs>,
    /// The token retry and cancel must carry, if one is set.
    token: Option<Arc<SecretString>>,
}

impl AppState {
    /// State for the handlers: the broker and the token from `config`.
    pub fn new(
        config: &DispatcherConfig,
        store: Store,
        commands: mpsc::Sender<Command>,
        ready: watch::Receiver<bool>,
        updates: broadcast::Sender<i64>,
        metrics: Arc<Metrics>,
        live: Arc<LiveLogs>,
    ) -> Self {
        Self {
            store: Arc::new(Mutex::new(store)),
            commands,
            ready,
            updates,
            broker: config.broker.clone(),
            session: Arc::default(),
            metrics,
            live,
            token: config.http_token.clone().map(Arc::new),
        }
    }

    /// Runs a database read on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let store = store.lock().unwrap_or_else(PoisonError::into_inner);
            read(&store)
        })
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?
        .map_err(|error| ApiError::internal(error.to_string()))
    }

    /// A broker session of the HTTP side (for queue depths and live logs),
    /// connected on first use and again after a failure.
    async fn session(&self) -> Result<Arc<Session>, ApiError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_connected()) {
            return Ok(Arc::clone(session));
        }
        let session = Session::connect(&self.broker, APP_ID, "warren-dispatcher http")
            .await
            .map_err(|error| ApiError::unavailable(format!("broker: {error}")))?;
        let session = Arc::new(session);
        *current = Some(Arc::clone(&session));
        Ok(session)
    }
}

/// An error answer: `{"error": "..."}` with a status.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// Every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index_page))
        .route("/commits/{repo}/{sha}", get(commit_page))
        .route("/workers", get(workers_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/commits", get(list_commits))
        .route("/api/commits/{repo}/{sha}", get(get_commit))
        .route("/api/commits/{repo}/{sha}/retry", post(retry))
        .route("/api/commits/{repo}/{sha}/cancel", post(cancel))
        .route("/api/workers", get(list_workers))
        .route("/api/queues", get(list_queues))
        .route("/api/jobs/{job_id}/log", get(job_log))
        .route("/api/events", get(events))
        .with_state(state)
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "HTTP API and status page listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn readyz(State(state): State<AppState>) -> Response {
    if !*state.ready.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker",
        )
            .into_response();
    }
    match state
        .read(|store| {
            store.commit_summaries(&CommitFilter {
                limit: 0,
                ..CommitFilter::default()
            })
        })
        .await
    {
        Ok(_) => "ready".into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database: {}", error.message),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = &state.metrics;
    let connected = *state.ready.borrow();
    metrics.broker_connected.set(i64::from(connected));
    if let Ok(workers) = state
        .read(|store| store.workers(Utc::now() - WORKERS_CONNECTED_WITHIN))
        .await
    {
        metrics
            .workers_connected
            .set(i64::try_from(workers.len()).unwrap_or(i64::MAX));
    }
    for queue in Queue::ALL {
        let label = QueueLabel {
            queue: state.broker.topology.queue(queue),
        };
        metrics
            .dead_lettered
            .get_or_create(&label)
            .set(warren_common::session::rejected_total(queue));
    }
    if connected && let Ok(queues) = queue_depths(&state).await {
        for (name, messages, consumers) in queues {
            let label = QueueLabel { queue: name };
            metrics
                .queue_depth
                .get_or_create(&label)
                .set(i64::from(messages));
            metrics
                .queue_consumers
                .get_or_create(&label)
                .set(i64::from(consumers));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

/// Query of `GET /api/commits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    repo: Option<String>,
    branch: Option<String>,
    status: Option<String>,
    sha: Option<String>,
    limit: Option<usize>,
    before: Option<i64>,
}

/// Most commits per page.
const MAX_LIMIT: usize = 500;

fn filter_of(query: ListQuery) -> Result<CommitFilter, ApiError> {
    if let Some(status) = &query.status
        && JobStatus::parse(status).is_none()
        && status != "running"
    {
        return Err(ApiError::bad_request(format!("unknown status {status:?}")));
    }
    let sha_prefix = query
        .sha
        .map(|sha| {
            if sha.len() < 4 || sha.len() > 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                Err(ApiError::bad_request("sha: expected 4 to 64 hex digits"))
            } else {
                Ok(sha.to_ascii_lowercase())
            }
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: expected 1 to {MAX_LIMIT}"
        )));
    }
    Ok(CommitFilter {
        repo: query.repo,
        branch: query.branch,
        status: query.status,
        sha_prefix,
        before: query.before,
        limit,
    })
}

async fn list_commits(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = filter_of(query)?;
    let (commits, next) = state
        .read(move |store| store.commit_summaries(&filter))
        .await?;
    Ok(Json(
        serde_json::json!({ "commits": commits, "next_before": next }),
    ))
}

/// The commit id behind a `{repo}/{sha}` path.
async fn commit_of(state: &AppState, repo: &str, sha: &str) -> Result<i64, ApiError> {
    let repo = RepoName::parse(repo).map_err(|error| ApiError::bad_request(error.to_string()))?;
    let sha = CommitId::parse(sha).map_err(|error| ApiError::bad_request(error.to_string()))?;
    let shown = format!("{repo}@{sha}");
    state
        .read(move |store| store.commit_id(&repo, &sha))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no commit {shown}")))
}

async fn get_commit(
    State(state): State<AppState>,
    Path((repo, sha)): Path<(String, String)>,
) -> Result<Json<crate::report::CommitReport>, ApiError> {
    let commit_id = commit_of(&state, &repo, &sha).await?;
    let report = state
        .read(move |store| {
            store
                .commit_report(commit_id)
                .map(crate::report::CommitReport::explain)
        })
        .await?;
    Ok(Json(report))
}

async fn command(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<CommandOutcome>) -> Command,
) -> Result<Response, ApiError> {
    let (reply, outcome) = oneshot::channel();
    state
        .commands
        .send(make(reply))
        .await
        .map_err(|_| ApiError::unavailable("the dispatcher is stopping"))?;
    match tokio::time::timeout(COMMAND_TIMEOUT, outcome).await {
        Ok(Ok(CommandOutcome::Done { status, jobs })) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "status": status, "jobs": jobs })),
        )
            .into_response()),
        Ok(Ok(CommandOutcome::Conflict(message))) => {
            Err(ApiError::new(StatusCode::CONFLICT, message))
        }
        Ok(Ok(CommandOutcome::Failed(message))) => Err(ApiError::internal(message)),
        Ok(Err(_)) | Err(_) => Err(ApiError::unavailable(
            "the dispatcher did not answer in time (is it connected to the broker?)",
        )),
    }
}

/// Lets a write through when no token is set, or when it carries
/// `Authorization: Bearer <token>`.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), token.expose_secret().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "retry and cancel need this dispatcher's token: Authorization: Bearer <token> \
             (warren --token or WARREN_TOKEN)",
        ))
    }
}

/// Compares without returning early at the first difference, so that the
/// time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((repo, sha)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let commit_id = commit_of(&state, &repo, &sha).await?;
    command(&state, |reply| Command::Retry { commit_id, reply }).await
}

async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((repo, sha)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let commit_id = commit_of(&state, &repo, &sha).await?;
    command(&state, |reply| Command::Cancel { commit_id, reply }).await
}

async fn list_workers(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let workers = state
        .read(|store| store.workers(Utc::now() - WORKERS_SEEN_WITHIN))
        .await?;
    Ok(Json(serde_json::json!({ "workers": workers })))
}

/// (queue, ready messages, consumers) of every queue, by passive declares.
async fn queue_depths(state: &AppState) -> Result<Vec<(String, u32, u32)>, ApiError> {
    let session = state.session().await?;
    let channel = session
        .open_channel()
        .await
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    let mut depths = Vec::new();
    for queue in Queue::ALL {
        let name = state.broker.topology.queue(queue);
        let declared = channel
            .queue_declare(
                name.clone().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|error| ApiError::unavailable(format!("queue {name}: {error}")))?;
        depths.push((name, declared.message_count(), declared.consumer_count()));
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(depths)
}

async fn list_queues(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let queues: Vec<serde_json::Value> = queue_depths(&state)
        .await?
        .into_iter()
        .map(|(name, messages, consumers)| {
            serde_json::json!({ "name": name, "messages": messages, "consumers": consumers })
        })
        .collect();
    Ok(Json(serde_json::json!({ "queues": queues })))
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// The live output of a job (docs/API.md): `line` events, then `end`.
async fn job_log(
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
async fn events(State(state): State<AppState>) -> Response {
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

async fn index_page(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Html<String>, ApiError> {
    let filter = filter_of(query)?;
    let (commits, next): (Vec<CommitSummary>, Option<i64>) = state
        .read(move |store| store.commit_summaries(&filter))
        .await?;
    Ok(Html(web::index(&commits, next)))
}

async fn commit_page(
    State(state): State<AppState>,
    Path((repo, sha)): Path<(String, String)>,
) -> Result<Html<String>, ApiError> {
    let commit_id = commit_of(&state, &repo, &sha).await?;
    let report = state
        .read(move |store| {
            store
                .commit_report(commit_id)
                .map(crate::report::CommitReport::explain)
        })
        .await?;
    Ok(Html(web::commit(&report)))
}

async fn workers_page(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    let workers = state
        .read(|store| store.workers(Utc::now() - WORKERS_SEEN_WITHIN))
        .await?;
    Ok(Html(web::workers(&workers)))
}
