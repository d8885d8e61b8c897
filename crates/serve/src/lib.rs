//! HTTP serving of a running pipeline.
//!
//! Handlers never touch pipeline state directly: carts are asked of the owning shard
//! through its query channel (on a blocking thread, so the async runtime never waits on a
//! shard), and global figures come from the committer's published view.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cartpulse_engine::Api;
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
pub struct AppState {
    pub api: Api,
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/metrics", get(metrics_json))
        .route("/api/carts/:user_id", get(cart))
        .route("/api/products/held", get(held))
        .route("/api/windows", get(windows))
        .route("/api/state", get(state_stats))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(AppState { api })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    api: Api,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http listening");
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_json(State(st): State<AppState>) -> Json<serde_json::Value> {
    let l = st.api.live.inner.lock().expect("live lock").clone();
    let m = &st.api.metrics;
    let last = l.recent_windows.back().cloned();
    Json(json!({
        "watermark": l.watermark,
        "carts_now": l.gauges,
        "last_window": last,
        "last_checkpoint": l.last_checkpoint,
        "last_checkpoint_ms": l.last_checkpoint_ms,
        "finished": l.finished,
        "totals": {
            "records": m.source_records.get(),
            "events": m.events_decoded.get(),
            "duplicates": m.duplicates.get(),
            "late": m.late_events.get(),
            "dead_letters": m.dead_letters_total(),
        }
    }))
}

#[derive(Deserialize)]
struct WindowsQuery {
    limit: Option<usize>,
}

async fn windows(
    State(st): State<AppState>,
    Query(q): Query<WindowsQuery>,
) -> Json<serde_json::Value> {
    let l = st.api.live.inner.lock().expect("live lock");
    let n = q.limit.unwrap_or(60).min(l.recent_windows.len());
    let v: Vec<_> = l
        .recent_windows
        .iter()
        .skip(l.recent_windows.len() - n)
        .collect();
    Json(json!({ "windows": v }))
}

async fn cart(State(st): State<AppState>, Path(user): Path<String>) -> Response {
    let api = st.api.clone();
    match tokio::task::spawn_blocking(move || api.cart(&user)).await {
        Ok(Some(c)) => Json(c).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no cart state for this user"})),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Deserialize)]
struct TopQuery {
    top: Option<usize>,
}

async fn held(State(st): State<AppState>, Query(q): Query<TopQuery>) -> Response {
    let api = st.api.clone();
    let n = q.top.unwrap_or(20).min(1000);
    match tokio::task::spawn_blocking(move || api.top_holds(n)).await {
        Ok(v) => Json(json!({
            "products": v.into_iter().map(|(sku, qty)| json!({"sku": sku, "qty_in_carts": qty})).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn state_stats(State(st): State<AppState>) -> Response {
    let api = st.api.clone();
    match tokio::task::spawn_blocking(move || api.shard_stats()).await {
        Ok(v) => Json(json!({ "shards": v })).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn prometheus(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.api.metrics.render(),
    )
        .into_response()
}
