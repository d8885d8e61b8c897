//! Bearer-token protection. Off on loopback unless a token is set; mandatory elsewhere, so
//! a dashboard bound to a public interface is never open by accident.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("refusing to serve HTTP on {0} without a token: set [http] token (or CARTPULSE_API_TOKEN), or bind to 127.0.0.1")]
    ExposedWithoutToken(SocketAddr),
}

pub fn check_exposure(addr: SocketAddr, opts: &super::ServeOptions) -> Result<(), AuthError> {
    if !addr.ip().is_loopback() && opts.token.as_deref().is_none_or(str::is_empty) {
        return Err(AuthError::ExposedWithoutToken(addr));
    }
    Ok(())
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_token(
    State(token): State<Option<String>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(want) = token.filter(|t| !t.is_empty()) else {
        return next.run(req).await;
    };
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match got {
        Some(t) if same(t.as_bytes(), want.as_bytes()) => next.run(req).await,
        Some(_) => refuse(StatusCode::FORBIDDEN, "wrong token"),
        None => refuse(StatusCode::UNAUTHORIZED, "bearer token required"),
    }
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme name is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

fn refuse(code: StatusCode, why: &str) -> Response {
    let mut r = (code, Json(json!({ "error": why }))).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}
