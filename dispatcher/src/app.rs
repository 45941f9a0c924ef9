//! What the HTTP handlers share: [`AppState`] (the read-only store, the
//! command channel to the loop, the broker session, live logs) and
//! [`ApiError`], the `{"error": ...}` answer.

use crate::commands::{APP_ID, Command};
use crate::config::DispatcherConfig;
use crate::live::LiveLogs;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc, watch};
use warren_common::config::BrokerConfig;
use warren_common::session::Session;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<Mutex<Store>>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) ready: watch::Receiver<bool>,
    pub(crate) updates: broadcast::Sender<i64>,
    pub(crate) broker: BrokerConfig,
    pub(crate) session: Arc<tokio::sync::Mutex<Option<Arc<Session>>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) live: Arc<LiveLogs>,
    /// The token retry and cancel must carry, if one is set.
    pub(crate) token: Option<Arc<SecretString>>,
}

impl AppState {
    /// State for the handlers: the broker and the token from `config`.
    pub(crate) fn new(
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
    pub(crate) async fn read<T: Send + 'static>(
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
    pub(crate) async fn session(&self) -> Result<Arc<Session>, ApiError> {
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
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
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
