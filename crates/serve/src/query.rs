//! The serving layer over HTTP: SQL and the merged Lambda views, answered by whatever the
//! binary plugs in (the DataFusion catalog of `cartpulse-serving`; this crate stays free of
//! the query engine).
//!
//! * `POST /api/sql` (the statement as the body, or `{"sql": "…"}`), `GET /api/sql?q=…`
//! * `GET /api/views`: the tables and the batch horizon
//! * `GET /api/views/{view}?from=&to=&user_id=&sku=&category=&limit=`: one merged view
//! * `GET /api/conversion?from=&to=`: cart conversion over a range of days, one answer

use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query as Params, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::future::Future;
use std::pin::Pin;

/// A JSON answer with its HTTP status (the body is written by the query side, so exact
/// decimals survive).
pub struct QueryReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Filters of a view request, as the client sent them (validated by the implementation).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ViewParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub user_id: Option<String>,
    pub sku: Option<String>,
    pub category: Option<String>,
    pub limit: Option<u64>,
}

pub type ReplyFuture = Pin<Box<dyn Future<Output = QueryReply> + Send>>;

pub trait QueryService: Send + Sync + 'static {
    fn sql(&self, sql: String) -> ReplyFuture;
    fn view(&self, name: String, params: ViewParams) -> ReplyFuture;
    fn conversion(&self, params: ViewParams) -> ReplyFuture;
    fn tables(&self) -> ReplyFuture;
}

fn reply(r: QueryReply) -> Response {
    (
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        r.body,
    )
        .into_response()
}

fn off() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "the serving layer is off: set [serving] enabled = true (with [batch] views_dir and a parquet sink)"})),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct SqlParam {
    q: Option<String>,
}

pub async fn sql_get(State(st): State<AppState>, Params(p): Params<SqlParam>) -> Response {
    let Some(q) = st.query.clone() else {
        return off();
    };
    match p.q {
        Some(sql) => reply(q.sql(sql).await),
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected the statement in ?q=", "kind": "bad_query"})),
        )
            .into_response(),
    }
}

pub async fn sql_post(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(q) = st.query.clone() else {
        return off();
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let sql = if is_json {
        #[derive(Deserialize)]
        struct Body {
            sql: String,
        }
        match serde_json::from_slice::<Body>(&body) {
            Ok(b) => b.sql,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": format!("expected {{\"sql\": \"…\"}}: {e}"), "kind": "bad_query"})),
                )
                    .into_response()
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(s) => s,
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "the statement is not UTF-8", "kind": "bad_query"})),
                )
                    .into_response()
            }
        }
    };
    reply(q.sql(sql).await)
}

pub async fn views(State(st): State<AppState>) -> Response {
    match st.query.clone() {
        Some(q) => reply(q.tables().await),
        None => off(),
    }
}

pub async fn view(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Params(p): Params<ViewParams>,
) -> Response {
    match st.query.clone() {
        Some(q) => reply(q.view(name, p).await),
        None => off(),
    }
}

pub async fn conversion(State(st): State<AppState>, Params(p): Params<ViewParams>) -> Response {
    match st.query.clone() {
        Some(q) => reply(q.conversion(p).await),
        None => off(),
    }
}
