//! The serving layer (`[serving]`, `/api/sql`, `/api/views`, `cartpulse sql`): the merged
//! views — batch views up to their horizon, the speed layer after it — must give exactly
//! the answers of a batch recomputation over all the events (the oracle), while the process
//! runs and events keep their horizon mid-way; and bad or runaway queries get clear errors.

mod common;
mod live;

use cartpulse_lake::layout::HOUR_MS;
use common::{bin, gen};
use live::{free_port, request, wait_for, wait_ready, Proc};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn sql(addr: SocketAddr, q: &str) -> (u16, Value) {
    let r = request(addr, "POST", "/api/sql", &[], q.as_bytes()).unwrap();
    (r.status, r.json())
}

fn rows(v: &Value) -> Vec<Value> {
    v["rows"].as_array().cloned().unwrap_or_default()
}

/// `cartpulse sql --format json …`: the answer's rows.
fn cli_sql(args: &[&str], q: &str) -> Result<Vec<Value>, String> {
    let o = Command::new(bin())
        .arg("sql")
        .args(args)
        .args(["--format", "json", "--max-rows", "1000000", q])
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    Ok(rows(&v))
}

/// Rows without the columns only one side has.
fn strip(rows: Vec<Value>, drop: &[&str]) -> Vec<Value> {
    rows.into_iter()
        .map(|mut r| {
            for k in drop {
                r.as_object_mut().unwrap().remove(*k);
            }
            r
        })
        .collect()
}

fn assert_same(what: &str, got: &[Value], want: &[Value]) {
    assert!(!want.is_empty(), "{what}: the oracle has rows");
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what}: row {i}");
    }
}

/// Distinct (user, event id) of a generated file: what the pipeline accepts.
fn distinct_events(path: &Path) -> usize {
    let mut seen = BTreeSet::new();
    for l in std::fs::read_to_string(path).unwrap().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        seen.insert((
            v["user_id"].as_str().unwrap().to_string(),
            v["event_id"].as_str().unwrap().to_string(),
        ));
    }
    seen.len()
}

const QUERIES: [(&str, &str, &[&str]); 7] = [
    (
        "conversion_daily",
        "SELECT * FROM {t}conversion_daily ORDER BY day",
        &[],
    ),
    (
        "conversion_category",
        "SELECT * FROM {t}conversion_category ORDER BY day, category",
        &[],
    ),
    (
        "user_daily",
        "SELECT * FROM {t}user_daily ORDER BY day, user_id",
        &[],
    ),
    (
        "retention",
        "SELECT * FROM {t}retention ORDER BY cohort_day, days_since",
        &[],
    ),
    ("users", "SELECT * FROM {t}users ORDER BY user_id", &[]),
    (
        "global_windows",
        "SELECT * FROM {t}global_windows WHERE window_end <= {end} ORDER BY window_start",
        &["active_carts", "items_in_carts", "value_in_carts"],
    ),
    (
        "user_windows",
        "SELECT * FROM {t}user_windows WHERE window_end <= {end} ORDER BY window_start, user_id",
        &[],
    ),
];

/// Rows of text cells, `None` for NULL.
type TextRows = Vec<Vec<Option<String>>>;

/// `psql --csv -c q`: the header and rows, or psql's error text.
fn psql(pg: SocketAddr, password: &str, q: &str) -> Result<(Vec<String>, TextRows), String> {
    let o = Command::new("psql")
        .arg(format!(
            "host={} port={} user=grafana dbname=cartpulse connect_timeout=5",
            pg.ip(),
            pg.port()
        ))
        .args(["--csv", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", q])
        .env("PGPASSWORD", password)
        .output()
        .expect("psql (the PostgreSQL client) is installed");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let mut lines = csv(&String::from_utf8_lossy(&o.stdout)).into_iter();
    let header = lines
        .next()
        .ok_or("no header")?
        .into_iter()
        .map(|c| c.unwrap_or_default())
        .collect();
    Ok((header, lines.collect()))
}

/// CSV as psql writes it: an unquoted empty field is NULL, `""` is the empty string.
fn csv(text: &str) -> TextRows {
    let mut out = Vec::new();
    let (mut row, mut cell, mut quoted, mut in_q) = (Vec::new(), String::new(), false, false);
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match (in_q, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => in_q = false,
            (true, c) => cell.push(c),
            (false, '"') => {
                in_q = true;
                quoted = true;
            }
            (false, ',') | (false, '\n') => {
                let c = std::mem::take(&mut cell);
                row.push(if c.is_empty() && !quoted {
                    None
                } else {
                    Some(c)
                });
                quoted = false;
                if ch == '\n' {
                    out.push(std::mem::take(&mut row));
                }
            }
            (false, c) => cell.push(c),
        }
    }
    out
}

/// A time as text in either notation (`T`/space, `Z`/`+00`, trailing fraction zeros).
fn norm_time(s: &str) -> String {
    let mut t = s.replacen('T', " ", 1);
    for z in ["Z", "+00:00", "+00"] {
        if let Some(x) = t.strip_suffix(z) {
            t = x.to_string();
        }
    }
    if t.contains('.') && t.len() >= 19 {
        t = t.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    t
}

/// psql's text rows equal the HTTP answer's JSON rows, column by column.
fn same_as_http(what: &str, header: &[String], got: &[Vec<Option<String>>], want: &[Value]) {
    assert!(!want.is_empty(), "{what}: rows to compare");
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (c, name) in header.iter().enumerate() {
            let (text, json) = (&g[c], &w[name]);
            let same = match (json, text) {
                (Value::Null, None) => true,
                (Value::String(j), Some(t)) => j == t || norm_time(j) == norm_time(t),
                // serde_json's default number parser is not correctly rounded (its
                // `float_roundtrip` feature is off), so the JSON side may be an ulp away
                (Value::Number(j), Some(t)) => {
                    j.to_string() == *t
                        || matches!((t.parse::<f64>(), j.as_f64()), (Ok(a), Some(b))
                            if (a - b).abs() <= 2.0 * f64::EPSILON * a.abs().max(b.abs()))
                }
                (Value::Bool(j), Some(t)) => (t == "t" || t == "true") == *j,
                _ => false,
            };
            assert!(
                same,
                "{what}: row {i} column {name}: psql {text:?}, HTTP {json}"
            );
        }
    }
}

#[test]
fn merged_views_equal_a_full_recomputation_while_running() {
    const CLOSE_AFTER_MS: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // ~33 hours of event time over two or three calendar days
    let input = d.join("events.jsonl");
    gen(60_000, 5, &input, &["--rate", "0.5"]);
    let expected = distinct_events(&input);

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pg: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (lake, views) = (d.join("lake"), d.join("views"));
    let cfg = d.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[pipeline]
shards = 2
[pipeline.checkpoint]
dir = "{ck}"
interval = "200ms"
[source]
type = "http"
journal_dir = "{journal}"
[[sinks]]
type = "parquet"
dir = "{lake}"
roll_interval = "1s"
close_after = "{close_after}s"
[batch]
interval = "1s"
views_dir = "{views}"
[serving]
enabled = true
max_rows = 1000000
[serving.postgres]
listen = "{pg}"
user = "grafana"
password = "pw"
[http]
enabled = true
addr = "{addr}"
"#,
            ck = d.join("ck").display(),
            journal = d.join("journal").display(),
            lake = lake.display(),
            views = views.display(),
            close_after = CLOSE_AFTER_MS / 1000,
        ),
    )
    .unwrap();
    let mut c = Command::new(bin());
    c.args(["run", "--config"]).arg(&cfg);
    let mut p = Proc::spawn("cartpulse", c, &d.join("run.log"));
    wait_ready(addr);

    // the serving layer answers before any event (empty, not an error)
    let (st, v) = sql(addr, "SELECT COUNT(*) AS n FROM events");
    assert_eq!(st, 200, "{v}");
    assert_eq!(rows(&v)[0]["n"], 0);

    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(5000) {
        let body = chunk.join("\n") + "\n";
        let r = request(addr, "POST", "/ingest", &[], body.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // every event committed, and a batch run over it with a horizon inside the data
    let horizon = wait_for(
        "every event served and a batch horizon",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || {
            let (st, v) = sql(addr, "SELECT COUNT(*) AS n FROM events");
            let n = rows(&v).first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
            let h = v["horizon_ms"].as_i64();
            match (st, n as usize == expected, h) {
                (200, true, Some(h)) => Ok(h),
                _ => Err(format!(
                    "{st}: {n} of {expected} events, horizon {h:?}; {}",
                    p.log_tail(3)
                )),
            }
        },
    );
    // the batch layer catches up with the hours the archive has closed. With every event
    // in, the archive ends up closed before the hour holding (newest event - close_after)
    // once its last partitions roll; wait until a batch run has reached that horizon (a
    // quiet spell is no proof: one run can outlast it on a loaded machine)
    let archived = || -> Option<(i64, i64)> {
        let b = std::fs::read(lake.join("_archive.json")).ok()?;
        let s: serde_json::Value = serde_json::from_slice(&b).ok()?;
        let max = s["max_event_ms"].as_i64()?;
        Some((
            s["complete_before_ms"].as_i64()?,
            (max - CLOSE_AFTER_MS).div_euclid(HOUR_MS) * HOUR_MS,
        ))
    };
    let horizon = wait_for(
        "the batch horizon at the archive's final closed hour",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || {
            let (_, v) = sql(addr, "SELECT 1 AS one");
            let h = v["horizon_ms"].as_i64();
            match (h, archived()) {
                (Some(h), Some((closed, last))) if h == closed && closed == last => Ok(h),
                (h, a) => Err(format!(
                    "horizon {h:?}, archive (closed before, final) {a:?}, first seen {horizon}; {}",
                    p.log_tail(3)
                )),
            }
        },
    );
    // the batch horizon is behind the newest events (the last hour is still open), so the
    // merged answers need the speed layer
    let (_, v) = sql(addr, "SELECT CAST(MAX(ts) AS BIGINT) AS m FROM events");
    let newest = rows(&v)[0]["m"].as_i64().unwrap();
    assert!(horizon < newest, "horizon {horizon} newest {newest}");
    let (_, v) = sql(addr, "SELECT COUNT(*) AS n FROM live_global_windows");
    assert!(
        rows(&v)[0]["n"].as_u64().unwrap() > 0,
        "the speed layer has windows after the horizon"
    );
    // the newest window the speed layer has closed
    let (_, v) = sql(addr, "SELECT MAX(window_end) AS e FROM global_windows");
    let end = rows(&v)[0]["e"].as_i64().unwrap();
    assert!(end > horizon);

    let mut merged = Vec::new();
    for (name, q, drop) in QUERIES {
        let q = q.replace("{t}", "").replace("{end}", &end.to_string());
        let (st, v) = sql(addr, &q);
        assert_eq!(st, 200, "{name}: {v}");
        assert_eq!(v["truncated"], false, "{name}");
        merged.push((name, strip(rows(&v), drop)));
    }
    // the same answers over the PostgreSQL protocol, to psql itself
    for (name, q, _) in QUERIES {
        let q = q.replace("{t}", "").replace("{end}", &end.to_string());
        let (_, v) = sql(addr, &q);
        let (header, got) = psql(pg, "pw", &q).unwrap_or_else(|e| panic!("{name}: {e}"));
        same_as_http(name, &header, &got, &rows(&v));
    }
    let e = psql(pg, "wrong", "SELECT 1").unwrap_err();
    assert!(
        e.to_lowercase().contains("password authentication failed"),
        "{e}"
    );
    let e = psql(pg, "pw", "SELECT nope FROM events").unwrap_err();
    assert!(e.contains("nope"), "{e}");
    // and to a driver, with a bound parameter (extended protocol)
    let (_, v) = sql(addr, "SELECT user_id, COUNT(*) AS n FROM user_daily GROUP BY user_id ORDER BY n DESC, user_id LIMIT 1");
    let top = rows(&v)[0].clone();
    let n = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=grafana password=pw dbname=cartpulse",
                pg.port()
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let r = c
            .query_one(
                "SELECT COUNT(*) FROM user_daily WHERE user_id = $1",
                &[&top["user_id"].as_str().unwrap()],
            )
            .await
            .unwrap();
        r.get::<_, i64>(0)
    });
    assert_eq!(n, top["n"].as_i64().unwrap());

    // the HTTP views and the one-answer conversion
    let r = request(addr, "GET", "/api/views", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["horizon_ms"].as_i64(), Some(horizon));
    let r = request(addr, "GET", "/api/views/conversion_daily?limit=1", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rows(&r.json()).len(), 1);
    let r = request(addr, "GET", "/api/views/nope", &[], b"").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["kind"], "bad_query");

    // bad queries: a clear error, and the process keeps serving
    for (q, want) in [
        ("SELEC 1", "bad_query"),
        ("SELECT nope FROM events", "bad_query"),
        ("SELECT * FROM nowhere", "bad_query"),
        ("CREATE TABLE t AS SELECT 1", "bad_query"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "bad_query"),
        ("SELECT 1; SELECT 2", "bad_query"),
    ] {
        let (st, v) = sql(addr, q);
        assert_eq!(st, 400, "{q}: {v}");
        assert_eq!(v["kind"], want, "{q}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let (st, _) = sql(addr, "SELECT 1 AS one");
    assert_eq!(st, 200);

    p.stop(Duration::from_secs(30));

    // the oracle: every view recomputed from the whole archive at once
    let oracle = d.join("oracle");
    let o = Command::new(bin())
        .args(["batch", "--quiet", "--complete", "--archive"])
        .arg(&lake)
        .arg("--out")
        .arg(&oracle)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let oargs = [
        "--archive",
        lake.to_str().unwrap(),
        "--views",
        oracle.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    for ((name, q, drop), (_, got)) in QUERIES.iter().zip(&merged) {
        let q = q
            .replace("{t}", "batch_")
            .replace("{end}", &end.to_string());
        let want = strip(cli_sql(&oargs, &q).unwrap(), drop);
        assert_same(&format!("{name} (served while running)"), got, &want);
    }

    // offline, over the views the running process left (horizon inside the data): the
    // tail is recomputed from the archive, windows included
    let vargs = [
        "--archive",
        lake.to_str().unwrap(),
        "--views",
        views.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    for (name, q, drop) in QUERIES {
        let q = q.replace("{end}", &end.to_string());
        let got = strip(cli_sql(&vargs, &q.replace("{t}", "")).unwrap(), drop);
        let want = strip(cli_sql(&oargs, &q.replace("{t}", "batch_")).unwrap(), drop);
        assert_same(&format!("{name} (cartpulse sql)"), &got, &want);
    }
}

#[test]
fn runaway_queries_hit_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("events.jsonl");
    gen(20_000, 3, &input, &[]);
    let lake = d.join("lake");
    let cfg = d.join("c.toml");
    let write = |extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[source]\ntype = \"file\"\npath = \"{}\"\n[[sinks]]\ntype = \"parquet\"\ndir = \"{}\"\n{extra}",
                input.display(),
                lake.display()
            ),
        )
        .unwrap();
    };
    write("");
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let args = [
        "--archive",
        lake.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    let n = cli_sql(&args, "SELECT COUNT(*) AS n FROM events").unwrap();
    assert!(n[0]["n"].as_u64().unwrap() > 19_000, "{n:?}");

    write("[serving]\nquery_timeout = \"300ms\"\n");
    let e = cli_sql(
        &args,
        "SELECT COUNT(*) FROM events a CROSS JOIN events b CROSS JOIN events c \
         WHERE a.qty + b.qty + c.qty < 0",
    )
    .unwrap_err();
    assert!(e.contains("time limit"), "{e}");

    write("[serving]\nmemory_limit_mb = 16\n");
    let e = cli_sql(
        &args,
        "SELECT a.event_id, b.event_id, a.user_id FROM events a JOIN events b ON a.action = b.action ORDER BY a.user_id, b.event_id",
    )
    .unwrap_err();
    assert!(e.contains("memory"), "{e}");

    // a bad config value names the key
    write("[serving]\nmax_rows = 0\n");
    let e = cli_sql(&args, "SELECT 1").unwrap_err();
    assert!(e.contains("[serving]") && e.contains("max_rows"), "{e}");
}
