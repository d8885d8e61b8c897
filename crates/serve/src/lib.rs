//! HTTP serving of a running pipeline: the built-in dashboard, a JSON API, Prometheus
//! metrics, and health endpoints.
//!
//! Handlers never touch pipeline state directly: carts and product holds are asked of the
//! owning shard through its query channel (on a blocking thread, so the async runtime never
//! waits on a shard), and global figures come from the committer's published view.

mod analytics;
mod auth;
mod ingest;
mod query;
mod stream;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cartpulse_engine::Api;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;

pub use auth::{check_exposure, AuthError};
pub use ingest::{Ingest, IngestOutcome};
pub use query::{QueryReply, QueryService, ReplyFuture, ViewParams};

/// Security settings of the HTTP surface.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeOptions {
    /// Bearer token required on every endpoint but `/healthz`, `/readyz` and the static
    /// dashboard page `/` (whose API calls carry the token). Required when
    /// listening on anything but loopback; `CARTPULSE_API_TOKEN` overrides it.
    pub token: Option<String>,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: Option<usize>,
    /// Separate bearer token for admin endpoints (`/api/admin/*`, e.g. reloading rules);
    /// without one they take `token`. `CARTPULSE_ADMIN_TOKEN` overrides it.
    pub admin_token: Option<String>,
    /// Separate bearer token for `POST /ingest`; without one it takes `token`.
    /// `CARTPULSE_INGEST_TOKEN` overrides it.
    pub ingest_token: Option<String>,
    /// Largest `POST /ingest` body, bytes.
    pub ingest_max_body_bytes: Option<usize>,
}

#[derive(Clone)]
pub struct AppState {
    pub api: Api,
    pub ingest: Option<std::sync::Arc<dyn Ingest>>,
    /// The serving layer (`/api/sql`, `/api/views`), when the binary plugs one in.
    pub query: Option<std::sync::Arc<dyn QueryService>>,
}

const DASHBOARD: &str = include_str!("../assets/index.html");

/// `ingest` is where `POST /ingest` bodies go (the HTTP source), `query` what answers SQL
/// and the merged views; without one, those routes answer 404.
pub fn router(
    api: Api,
    opts: &ServeOptions,
    ingest: Option<std::sync::Arc<dyn Ingest>>,
    query: Option<std::sync::Arc<dyn QueryService>>,
) -> Router {
    let protected = Router::new()
        .route("/api/metrics", get(metrics_json))
        .route("/api/stream", get(stream::sse))
        .route("/api/carts/:user_id", get(cart))
        .route("/api/products/held", get(held))
        .route("/api/windows", get(windows))
        .route("/api/state", get(state_stats))
        .route("/metrics", get(prometheus))
        .route("/api/alerts", get(analytics::alerts))
        .route("/api/rules", get(analytics::rules))
        .route("/api/funnel", get(analytics::funnel))
        .route("/api/retention", get(analytics::retention))
        .route("/api/products/low-stock", get(analytics::low_stock))
        .route("/api/intent", get(analytics::intent))
        .route("/api/recommendations", get(analytics::recommendations))
        .route("/api/sql", get(query::sql_get).post(query::sql_post))
        .route("/api/views", get(query::views))
        .route("/api/views/:name", get(query::view))
        .route("/api/conversion", get(query::conversion))
        .layer(axum::middleware::from_fn_with_state(
            opts.token.clone(),
            auth::require_token,
        ));
    let admin = Router::new()
        .route("/api/admin/rules", post(analytics::reload_rules))
        .layer(axum::middleware::from_fn_with_state(
            opts.admin_token.clone().or_else(|| opts.token.clone()),
            auth::require_token,
        ));
    let ingest_route = Router::new()
        .route("/ingest", post(ingest::ingest))
        .layer(axum::extract::DefaultBodyLimit::max(
            opts.ingest_max_body_bytes.unwrap_or(8 << 20),
        ))
        .layer(axum::middleware::from_fn_with_state(
            opts.ingest_token.clone().or_else(|| opts.token.clone()),
            auth::require_token,
        ));
    // The dashboard page itself is static and holds no data; it must load without an
    // Authorization header (a browser cannot send one when navigating) and then sends the
    // token from the URL fragment (`/#token=...`) with every API call it makes.
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .merge(admin)
        .layer(axum::extract::DefaultBodyLimit::max(
            opts.max_body_bytes.unwrap_or(1 << 20),
        ))
        .merge(ingest_route)
        .with_state(AppState { api, ingest, query })
}

/// Serves until `shutdown` resolves. Refuses to listen beyond loopback without a token.
pub async fn serve(
    addr: SocketAddr,
    api: Api,
    mut opts: ServeOptions,
    ingest: Option<std::sync::Arc<dyn Ingest>>,
    query: Option<std::sync::Arc<dyn QueryService>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(t) = std::env::var("CARTPULSE_API_TOKEN") {
        if !t.is_empty() {
            opts.token = Some(t);
        }
    }
    if let Ok(t) = std::env::var("CARTPULSE_ADMIN_TOKEN") {
        if !t.is_empty() {
            opts.admin_token = Some(t);
        }
    }
    if let Ok(t) = std::env::var("CARTPULSE_INGEST_TOKEN") {
        if !t.is_empty() {
            opts.ingest_token = Some(t);
        }
    }
    auth::check_exposure(addr, &opts)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, auth = opts.token.is_some(), "http listening");
    axum::serve(listener, router(api, &opts, ingest, query))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(st): State<AppState>) -> Response {
    let l = st.api.live.inner.lock().expect("live lock");
    if l.ready {
        Json(json!({"ready": true})).into_response()
    } else {
        let why = if l.finished {
            "the input is fully processed; the pipeline has stopped"
        } else {
            "the pipeline is not running (starting, stopping or failed)"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": why})),
        )
            .into_response()
    }
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
        Err(_) => internal(),
    }
}

pub(crate) fn internal() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "internal error"})),
    )
        .into_response()
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
        Err(_) => internal(),
    }
}

async fn state_stats(State(st): State<AppState>) -> Response {
    let api = st.api.clone();
    match tokio::task::spawn_blocking(move || api.shard_stats()).await {
        Ok(v) => Json(json!({ "shards": v })).into_response(),
        Err(_) => internal(),
    }
}

async fn prometheus(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.api.metrics.render(),
    )
        .into_response()
}
