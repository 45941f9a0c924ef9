//! The dispatcher's HTTP side: the JSON API (docs/API.md), server-sent
//! events for live pages and `warren logs --follow`, Prometheus metrics,
//! health, and the status pages ([`crate::web`]).
//!
//! Reads go to a read-only connection to the database (WAL lets it read
//! while the dispatcher's loop writes); the few writes (retry, cancel) are
//! sent to the loop as [`Command`]s, so the loop stays the only writer and
//! the only publisher of jobs.

pub(crate) use crate::app::{ApiError, AppState};
use crate::commands::{Command, CommandOutcome};
use crate::metrics::QueueLabel;
use crate::report::CommitSummary;
use crate::sse::{events, job_log};
use crate::store::CommitFilter;
use crate::web;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::info;
use warren_common::exposition;
use warren_common::ids::{BranchName, CommitId, RepoName};
use warren_common::messages::JobStatus;
use warren_common::topology::Queue;

/// Longest wait for the loop to carry out a command (it may be
/// reconnecting to the broker).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Workers listed by the API: heard from within this long.
const WORKERS_SEEN_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// Workers counted as connected by the metrics: heard from within this long.
const WORKERS_CONNECTED_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Every route.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index_page))
        .route("/commits/{repo}/{sha}", get(commit_page))
        .route("/workers", get(workers_page))
        .route("/history/{repo}", get(branch_history_page))
        .route("/tests/{repo}", get(test_history_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/commits", get(list_commits))
        .route("/api/commits/{repo}/{sha}", get(get_commit))
        .route("/api/commits/{repo}/{sha}/retry", post(retry))
        .route("/api/commits/{repo}/{sha}/cancel", post(cancel))
        .route("/api/workers", get(list_workers))
        .route("/api/queues", get(list_queues))
        .route("/api/fleet", get(fleet_samples))
        .route("/api/tests/{repo}", get(test_history))
        .route("/api/jobs/{job_id}/log", get(job_log))
        .route("/api/events", get(events))
        .with_state(state)
}

/// Serves `router` on `listener` until `stop`.
pub(crate) async fn serve(
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

/// OpenMetrics for scrapers that ask for it, the Prometheus text format
/// for the rest (`warren_common::exposition`).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
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
    if connected && let Ok(queues) = state.queue_depths().await {
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
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = exposition::negotiate(metrics.encode(), accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
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

async fn list_queues(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let queues: Vec<serde_json::Value> = state
        .queue_depths()
        .await?
        .into_iter()
        .map(|(name, messages, consumers)| {
            serde_json::json!({ "name": name, "messages": messages, "consumers": consumers })
        })
        .collect();
    Ok(Json(serde_json::json!({ "queues": queues })))
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
    let now = Utc::now();
    let samples = state.fleet.recent(now);
    Ok(Html(web::workers(
        &workers,
        &samples,
        state.fleet.interval,
        now,
    )))
}

/// `GET /api/fleet`: the last hour of queue and fleet samples.
async fn fleet_samples(State(state): State<AppState>) -> Json<serde_json::Value> {
    let samples = state.fleet.recent(Utc::now());
    Json(serde_json::json!({
        "interval_ms": crate::config::duration_ms(state.fleet.interval),
        "samples": samples,
    }))
}

/// Commits shown by the history pages unless `limit` says otherwise.
const HISTORY_LIMIT: usize = 50;

/// Query of the branch history page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchQuery {
    branch: String,
    limit: Option<usize>,
}

/// Query of a test's history (page and API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestQuery {
    classname: String,
    name: String,
    limit: Option<usize>,
}

fn history_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(HISTORY_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(format!(
            "limit: expected 1 to {MAX_LIMIT}"
        )))
    }
}

fn repo_of(repo: &str) -> Result<RepoName, ApiError> {
    RepoName::parse(repo).map_err(|error| ApiError::bad_request(error.to_string()))
}

async fn branch_history_page(
    State(state): State<AppState>,
    Path(repo): Path<String>,
    Query(query): Query<BranchQuery>,
) -> Result<Html<String>, ApiError> {
    let repo = repo_of(&repo)?;
    let branch = BranchName::parse(&query.branch)
        .map_err(|error| ApiError::bad_request(format!("branch: {error}")))?;
    let filter = CommitFilter {
        repo: Some(repo.to_string()),
        branch: Some(branch.to_string()),
        limit: history_limit(query.limit)?,
        ..CommitFilter::default()
    };
    let (commits, _) = state
        .read(move |store| store.commit_summaries(&filter))
        .await?;
    Ok(Html(web::branch_history(
        repo.as_str(),
        branch.as_str(),
        &commits,
    )))
}

/// A test's runs, newest first.
async fn test_runs(
    state: &AppState,
    repo: &str,
    query: &TestQuery,
) -> Result<Vec<crate::report::TestRun>, ApiError> {
    let repo = repo_of(repo)?;
    let limit = history_limit(query.limit)?;
    let (classname, name) = (query.classname.clone(), query.name.clone());
    state
        .read(move |store| store.test_history(repo.as_str(), &classname, &name, limit))
        .await
}

async fn test_history_page(
    State(state): State<AppState>,
    Path(repo): Path<String>,
    Query(query): Query<TestQuery>,
) -> Result<Html<String>, ApiError> {
    let runs = test_runs(&state, &repo, &query).await?;
    Ok(Html(web::test_history(
        &repo,
        &query.classname,
        &query.name,
        &runs,
    )))
}

/// `GET /api/tests/{repo}?classname=&name=`: a test across commits.
async fn test_history(
    State(state): State<AppState>,
    Path(repo): Path<String>,
    Query(query): Query<TestQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let runs = test_runs(&state, &repo, &query).await?;
    Ok(Json(serde_json::json!({ "runs": runs })))
}
