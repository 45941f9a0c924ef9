//! What the HTTP handlers share: [`AppState`] (the read-only store, the
//! command channel to the loop, the broker session, live logs, the fleet's
//! samples) and [`ApiError`], the `{"error": ...}` answer.

use crate::commands::{APP_ID, Command};
use crate::config::DispatcherConfig;
use crate::fleet::FleetHistory;
use crate::live::LiveLogs;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::SecretString;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc, watch};
use warren_common::config::BrokerConfig;
use warren_common::session::Session;
use warren_common::topology::Queue;

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
    /// The last hour of queue and fleet samples (`fleet.rs`).
    pub(crate) fleet: Arc<FleetHistory>,
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
            fleet: Arc::new(FleetHistory::new(config.fleet_sample_interval)),
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

    /// (queue, ready messages, consumers) of every queue, by passive declares.
    pub(crate) async fn queue_depths(&self) -> Result<Vec<(String, u32, u32)>, ApiError> {
        let session = self.session().await?;
        let channel = session
            .open_channel()
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        let mut depths = Vec::new();
        for queue in Queue::ALL {
            let name = self.broker.topology.queue(queue);
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
