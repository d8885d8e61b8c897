//! `/api/stream`: server-sent events carrying one dashboard snapshot per second.

use crate::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use cartpulse_engine::Api;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::{Duration, Instant};

const WINDOWS_SHOWN: usize = 60;

pub async fn sse(State(st): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let api = st.api.clone();
    let s = stream::unfold(
        (api, None::<(Instant, u64)>, true),
        |(api, prev, first)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let a2 = api.clone();
            let snap = tokio::task::spawn_blocking(move || snapshot(&a2, prev)).await;
            let (body, now) = match snap {
                Ok(v) => v,
                Err(_) => (
                    json!({"error": "snapshot failed"}),
                    prev.unwrap_or((Instant::now(), 0)),
                ),
            };
            let ev = Event::default().data(body.to_string());
            Some((Ok(ev), (api, Some(now), false)))
        },
    );
    Sse::new(s).keep_alive(KeepAlive::default())
}

fn snapshot(api: &Api, prev: Option<(Instant, u64)>) -> (Value, (Instant, u64)) {
    let m = &api.metrics;
    let events = m.events_decoded.get();
    let now = Instant::now();
    // unknown (null) on a stream's first snapshot rather than a misleading 0/s
    let rate = prev.map(|(t, n)| {
        (events.saturating_sub(n)) as f64 / now.duration_since(t).as_secs_f64().max(1e-3)
    });
    let top = api.top_holds(10);
    let l = api.live.inner.lock().expect("live lock").clone();
    let skip = l.recent_windows.len().saturating_sub(WINDOWS_SHOWN);
    let windows: Vec<_> = l.recent_windows.iter().skip(skip).collect();
    let alerts: Vec<Value> = l
        .recent_abandoned
        .iter()
        .map(|a| {
            let mut a = a.clone();
            a["rule"] = json!("abandoned_cart");
            a
        })
        .collect();
    let dead_by_reason: serde_json::Map<String, Value> =
        cartpulse_engine::metrics::dead_letter_codes()
            .map(|c| {
                (
                    c.to_string(),
                    json!(m.dead_letters.with_label_values(&[c]).get()),
                )
            })
            .collect();
    let now_ms = cartpulse_engine::clock::Clock::now_ms(&cartpulse_engine::clock::SystemClock);
    let body = json!({
        "now_ms": now_ms,
        "rate": rate,
        "watermark": l.watermark,
        "carts_now": l.gauges,
        "windows": windows,
        "top_held": top.into_iter().map(|(sku, q)| json!({"sku": sku, "qty_in_carts": q})).collect::<Vec<_>>(),
        "alerts": alerts,
        "health": {
            "watermark_lag_ms": (l.watermark > 0 && l.watermark < i64::MAX).then(|| now_ms - l.watermark),
            "last_checkpoint": l.last_checkpoint,
            "last_checkpoint_ms": l.last_checkpoint_ms,
            "last_checkpoint_duration_ms": l.last_checkpoint_duration_ms,
            "last_checkpoint_bytes": l.last_checkpoint_bytes,
            "events": events,
            "dead_letters": m.dead_letters_total(),
            "dead_by_reason": dead_by_reason,
            "late": m.late_events.get(),
            "duplicates": m.duplicates.get(),
            "source_lag": m.source_lag.get(),
            "ready": l.ready,
        },
    });
    (body, (now, events))
}
