//! Analytics endpoints: alerts, rules, funnel, retention, low stock — answered by the
//! pipeline's analytics stage — and the admin endpoint that reloads rules.

use crate::{internal, AppState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<u64>,
}

async fn ask(st: &AppState, kind: &'static str, body: Value) -> Response {
    let api = st.api.clone();
    match tokio::task::spawn_blocking(move || api.analytics(kind, body)).await {
        Ok(Some(Ok(v))) => Json(v).into_response(),
        Ok(Some(Err(why))) => (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response(),
        Ok(None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "analytics are off or busy ([analytics] enabled = false, or the pipeline is stopping)"})),
        )
            .into_response(),
        Err(_) => internal(),
    }
}

pub async fn alerts(State(st): State<AppState>, Query(q): Query<Limit>) -> Response {
    let n = q.limit.unwrap_or(50).min(1000);
    ask(&st, "alerts", json!({ "limit": n })).await
}

pub async fn rules(State(st): State<AppState>) -> Response {
    ask(&st, "rules", Value::Null).await
}

pub async fn funnel(State(st): State<AppState>) -> Response {
    ask(&st, "funnel", Value::Null).await
}

pub async fn retention(State(st): State<AppState>) -> Response {
    ask(&st, "retention", Value::Null).await
}

pub async fn low_stock(State(st): State<AppState>, Query(q): Query<Limit>) -> Response {
    let n = q.limit.unwrap_or(10).min(1000);
    ask(&st, "low_stock", json!({ "limit": n })).await
}

/// `POST /api/admin/rules` with a rules file (TOML) as the body: checked as a whole; on any
/// error the running rules stay and the answer says which rule, where and why.
pub async fn reload_rules(State(st): State<AppState>, body: String) -> Response {
    ask(&st, "reload_rules", json!({ "toml": body })).await
}

#[derive(Deserialize)]
pub struct IntentQuery {
    user_id: Option<String>,
    limit: Option<u64>,
}

/// `GET /api/intent`: the model, its held-out AUC beside a constant predictor's, and the
/// open carts of highest value with their scores; `?user_id=` for one user's score and
/// features.
pub async fn intent(State(st): State<AppState>, Query(q): Query<IntentQuery>) -> Response {
    let mut body = json!({ "limit": q.limit.unwrap_or(20).min(1000) });
    if let Some(u) = q.user_id {
        body["user_id"] = json!(u);
    }
    ask(&st, "intent", body).await
}

#[derive(Deserialize)]
pub struct RecommendQuery {
    user_id: Option<String>,
    skus: Option<String>,
    limit: Option<u64>,
}

/// `GET /api/recommendations?user_id=…` (the products in the user's cart) or `?skus=a,b`:
/// the top products with the rule or co-occurrence behind each.
pub async fn recommendations(
    State(st): State<AppState>,
    Query(q): Query<RecommendQuery>,
) -> Response {
    let mut body = json!({ "limit": q.limit.unwrap_or(5).min(100) });
    if let Some(u) = q.user_id {
        body["user_id"] = json!(u);
    }
    if let Some(s) = q.skus {
        body["skus"] = json!(s);
    }
    ask(&st, "recommendations", body).await
}
