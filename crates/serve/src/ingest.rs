//! `POST /ingest`: events pushed over HTTP, behind their own token and body limit.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

/// Where ingested bodies go (the HTTP source's journal, adapted by the binary).
pub trait Ingest: Send + Sync + 'static {
    fn ingest(&self, body: &[u8]) -> IngestOutcome;
}

pub enum IngestOutcome {
    /// Durable; the JSON says how many were accepted and dead-lettered, and why.
    Accepted(serde_json::Value),
    /// The pipeline is behind: try again after this long.
    Busy(Duration, String),
    /// The body is not NDJSON or a JSON array.
    Bad(String),
    /// The journal failed (disk full, I/O error): nothing of the body was accepted.
    Failed(String),
}

pub async fn ingest(State(st): State<AppState>, body: Bytes) -> Response {
    let Some(sink) = st.ingest.clone() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no HTTP source: set [source] type = \"http\" to accept events here"})),
        )
            .into_response();
    };
    // fsync happens in there: off the async workers
    let outcome = match tokio::task::spawn_blocking(move || sink.ingest(&body)).await {
        Ok(o) => o,
        Err(_) => return crate::internal(),
    };
    match outcome {
        IngestOutcome::Accepted(v) => Json(v).into_response(),
        IngestOutcome::Busy(wait, why) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            Json(json!({ "error": why })),
        )
            .into_response(),
        IngestOutcome::Bad(why) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response()
        }
        IngestOutcome::Failed(why) => {
            tracing::error!(error = %why, "ingest journal failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the ingest journal cannot be written; nothing was accepted" })),
            )
                .into_response()
        }
    }
}
