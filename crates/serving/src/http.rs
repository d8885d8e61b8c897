//! The catalog behind the HTTP routes of `cartpulse-serve` (`/api/sql`, `/api/views/…`,
//! `/api/conversion`): request parameters become SQL here, validated, never pasted raw.

use crate::catalog::TABLES;
use crate::{Catalog, ServingError};
use cartpulse_serve::{QueryReply, QueryService, ReplyFuture, ViewParams};
use chrono::{DateTime, NaiveDate, Utc};
use std::sync::Arc;

/// The serving layer as the HTTP server sees it.
pub struct HttpQuery(pub Arc<Catalog>);

fn error_reply(e: &ServingError) -> QueryReply {
    QueryReply {
        status: e.status(),
        body: serde_json::to_vec(&serde_json::json!({"error": e.to_string(), "kind": e.kind()}))
            .unwrap_or_default(),
    }
}

async fn answer(c: Arc<Catalog>, sql: Result<String, ServingError>) -> QueryReply {
    let r = match sql {
        Ok(sql) => c.sql(&sql).await.and_then(|a| a.to_json()),
        Err(e) => Err(e),
    };
    match r {
        Ok(body) => QueryReply { status: 200, body },
        Err(e) => {
            if e.status() >= 500 {
                tracing::warn!(error = %e, "query failed");
            }
            error_reply(&e)
        }
    }
}

impl QueryService for HttpQuery {
    fn sql(&self, sql: String) -> ReplyFuture {
        Box::pin(answer(self.0.clone(), Ok(sql)))
    }

    fn view(&self, name: String, p: ViewParams) -> ReplyFuture {
        let max = self.0.config().max_rows;
        Box::pin(answer(self.0.clone(), view_sql(&name, &p, max)))
    }

    fn conversion(&self, p: ViewParams) -> ReplyFuture {
        Box::pin(answer(self.0.clone(), conversion_sql(&p, Utc::now())))
    }

    fn tables(&self) -> ReplyFuture {
        let c = self.0.clone();
        Box::pin(async move {
            let h = match c.horizon_ms() {
                Ok(h) => h,
                Err(e) => return error_reply(&e),
            };
            let tables: Vec<_> = TABLES
                .iter()
                .map(|(n, d)| serde_json::json!({"name": n, "description": d}))
                .collect();
            QueryReply {
                status: 200,
                body: serde_json::to_vec(&serde_json::json!({
                    "horizon_ms": h,
                    "horizon": h.and_then(DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()),
                    "tables": tables,
                }))
                .unwrap_or_default(),
            }
        })
    }
}

/// How a view is filtered by time and sorted.
enum TimeCol {
    /// epoch ms
    Millis(&'static str),
    Date(&'static str),
    Timestamp(&'static str),
    None,
}

fn view_shape(name: &str) -> Option<(TimeCol, &'static str, &'static [&'static str])> {
    use TimeCol::*;
    Some(match name {
        "user_windows" | "live_user_windows" | "batch_user_windows" => (
            Millis("window_start"),
            "window_start, window_end, user_id",
            &["user_id"],
        ),
        "global_windows" | "live_global_windows" | "batch_global_windows" => {
            (Millis("window_start"), "window_start, window_end", &[])
        }
        "user_daily" => (Date("day"), "day, user_id", &["user_id"]),
        "product_daily" => (Date("day"), "day, sku", &["sku", "category"]),
        "conversion_daily" => (Date("day"), "day", &[]),
        "conversion_category" => (Date("day"), "day, category", &["category"]),
        "orders" => (Date("day"), "checkout_ms, checkout_event_id", &["user_id"]),
        "sessions" => (Date("day"), "start_ms, user_id, session_id", &["user_id"]),
        "retention" => (Date("cohort_day"), "cohort_day, days_since", &[]),
        "users" => (None, "user_id", &["user_id"]),
        "products" => (None, "sku", &["sku", "category"]),
        "events" | "archive" => (
            Timestamp("ts"),
            "ts, event_id",
            &["user_id", "sku", "category"],
        ),
        _ => return Option::None,
    })
}

/// A day (`YYYY-MM-DD`), an RFC 3339 time or epoch milliseconds, as epoch ms and whether it
/// was a whole day.
fn parse_time(key: &str, v: &str) -> Result<(i64, bool), ServingError> {
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let t = d.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        return Ok((t.timestamp_millis(), true));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok((t.timestamp_millis(), false));
    }
    if let Ok(ms) = v.parse::<i64>() {
        return Ok((ms, false));
    }
    Err(ServingError::BadQuery(format!(
        "`{key}`: expected a day (YYYY-MM-DD), an RFC 3339 time or epoch milliseconds, got {v:?}"
    )))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

const DAY_MS: i64 = 86_400_000;

/// `from` is inclusive; `to` is inclusive when it is a day, exclusive when it is a time.
fn range(p: &ViewParams) -> Result<(Option<i64>, Option<i64>), ServingError> {
    let from = p
        .from
        .as_deref()
        .map(|v| parse_time("from", v).map(|t| t.0))
        .transpose()?;
    let to =
        p.to.as_deref()
            .map(|v| parse_time("to", v).map(|(t, day)| if day { t + DAY_MS } else { t }))
            .transpose()?;
    Ok((from, to))
}

fn date_lit(ms: i64) -> String {
    let d = DateTime::from_timestamp_millis(ms).unwrap_or_default();
    format!("DATE '{}'", d.format("%Y-%m-%d"))
}

pub fn view_sql(name: &str, p: &ViewParams, max_rows: usize) -> Result<String, ServingError> {
    let Some((time, order, keys)) = view_shape(name) else {
        let known: Vec<&str> = TABLES.iter().map(|t| t.0).collect();
        return Err(ServingError::BadQuery(format!(
            "no view {name:?}; the views are {}",
            known.join(", ")
        )));
    };
    let mut conds = Vec::new();
    let (from, to) = range(p)?;
    if from.is_some() || to.is_some() {
        let (lo, hi) = match time {
            TimeCol::Millis(c) => (
                from.map(|f| format!("{c} >= {f}")),
                to.map(|t| format!("{c} < {t}")),
            ),
            // a day view row stands for its whole day
            TimeCol::Date(c) => (
                from.map(|f| format!("{c} >= {}", date_lit(f))),
                to.map(|t| format!("{c} < {}", date_lit(t + DAY_MS - 1))),
            ),
            TimeCol::Timestamp(c) => (
                from.map(|f| format!("{c} >= to_timestamp_millis({f})")),
                to.map(|t| format!("{c} < to_timestamp_millis({t})")),
            ),
            TimeCol::None => {
                return Err(ServingError::BadQuery(format!(
                    "{name} covers all history: `from` and `to` do not apply"
                )))
            }
        };
        conds.extend(lo);
        conds.extend(hi);
    }
    for (key, v) in [
        ("user_id", &p.user_id),
        ("sku", &p.sku),
        ("category", &p.category),
    ] {
        if let Some(v) = v {
            if !keys.contains(&key) {
                return Err(ServingError::BadQuery(format!(
                    "{name} cannot be filtered by `{key}`"
                )));
            }
            conds.push(format!("{key} = {}", quote(v)));
        }
    }
    let limit = p.limit.map_or(1000, |l| l as usize).min(max_rows);
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    Ok(format!(
        "SELECT * FROM {name}{filter} ORDER BY {order} LIMIT {limit}"
    ))
}

/// Conversion over whole days `[from, to]` (default: the 7 days up to today, UTC): of the
/// users who added to cart in the range, the share who checked out in it.
pub fn conversion_sql(p: &ViewParams, now: DateTime<Utc>) -> Result<String, ServingError> {
    let (from, to) = range(p)?;
    let today = now.timestamp_millis() - now.timestamp_millis().rem_euclid(DAY_MS);
    let to = to.unwrap_or(today + DAY_MS);
    let from = from.unwrap_or(to - 7 * DAY_MS);
    if from >= to {
        return Err(ServingError::BadQuery(
            "`from` must come before `to`".into(),
        ));
    }
    let (f, t) = (date_lit(from), date_lit(to - 1));
    Ok(format!(
        "WITH u AS (SELECT user_id, SUM(adds) AS adds, SUM(checkouts) AS checkouts \
         FROM user_daily WHERE day >= {f} AND day <= {t} GROUP BY user_id) \
         SELECT {f} AS from_day, {t} AS to_day, COUNT(*) AS active_users, \
         COALESCE(SUM(CASE WHEN adds > 0 THEN 1 ELSE 0 END), 0) AS users_added, \
         COALESCE(SUM(CASE WHEN checkouts > 0 THEN 1 ELSE 0 END), 0) AS users_checked_out, \
         COALESCE(SUM(CASE WHEN adds > 0 AND checkouts > 0 THEN 1 ELSE 0 END), 0) AS users_converted, \
         CAST(SUM(CASE WHEN adds > 0 AND checkouts > 0 THEN 1 ELSE 0 END) AS DOUBLE) / \
         CAST(NULLIF(SUM(CASE WHEN adds > 0 THEN 1 ELSE 0 END), 0) AS DOUBLE) AS conversion FROM u"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_requests_become_safe_sql() {
        let p = ViewParams {
            from: Some("2025-11-24".into()),
            to: Some("2025-11-25".into()),
            user_id: Some("u1' OR '1'='1".into()),
            ..Default::default()
        };
        let s = view_sql("user_daily", &p, 100).unwrap();
        assert_eq!(
            s,
            "SELECT * FROM user_daily WHERE day >= DATE '2025-11-24' AND day < DATE '2025-11-26' \
             AND user_id = 'u1'' OR ''1''=''1' ORDER BY day, user_id LIMIT 100"
        );
        let s = view_sql(
            "global_windows",
            &ViewParams {
                from: Some("1764000000000".into()),
                limit: Some(5),
                ..Default::default()
            },
            100,
        )
        .unwrap();
        assert!(
            s.contains("window_start >= 1764000000000") && s.ends_with("LIMIT 5"),
            "{s}"
        );
        for (name, p) in [
            ("nope", ViewParams::default()),
            (
                "users",
                ViewParams {
                    from: Some("2025-01-01".into()),
                    ..Default::default()
                },
            ),
            (
                "conversion_daily",
                ViewParams {
                    user_id: Some("u1".into()),
                    ..Default::default()
                },
            ),
            (
                "user_daily",
                ViewParams {
                    from: Some("yesterday".into()),
                    ..Default::default()
                },
            ),
        ] {
            let e = view_sql(name, &p, 100).unwrap_err();
            assert_eq!(e.status(), 400, "{name}: {e}");
        }
    }

    #[test]
    fn conversion_defaults_to_the_last_seven_days() {
        let now = DateTime::parse_from_rfc3339("2025-11-24T16:00:00Z")
            .unwrap()
            .to_utc();
        let s = conversion_sql(&ViewParams::default(), now).unwrap();
        assert!(
            s.contains("day >= DATE '2025-11-18' AND day <= DATE '2025-11-24'"),
            "{s}"
        );
    }
}
