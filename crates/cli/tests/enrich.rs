//! Enrichment end to end: `cartpulse run` with events arriving over `POST /ingest`, a product
//! table from a CSV file and a user table in the machine's PostgreSQL, reloaded every 200 ms.
//! Events carry the joined attributes in the `events` stream and the Parquet archive; a user
//! missing from the table is dead-lettered (that table's policy), a product missing from its
//! table is kept without attributes (the other's); a change to the user table while running
//! reaches the events that follow it; the hit and miss counters match what was sent.

mod common;
mod live;

use cartpulse_lake::arrow::array::{Array, AsArray};
use cartpulse_lake::arrow::datatypes::{Date32Type, Int64Type};
use common::{bin, lines};
use live::{free_port, request, wait_for, wait_ready, Proc};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn psql(sql: &str) {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn post(addr: SocketAddr, body: &str) {
    let r = request(
        addr,
        "POST",
        "/ingest",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

fn ev(id: &str, user: &str, sku: &str, price: Option<&str>) -> String {
    let price = price.map_or(String::new(), |p| format!(",\"price\":{p}"));
    format!(
        r#"{{"event_id":"{id}","ts":1764000000000,"user_id":"{user}","action":"add","sku":"{sku}","qty":1{price}}}"#
    )
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = request(addr, "GET", "/metrics", &[], b"").unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[test]
fn events_carry_product_and_user_attributes_and_follow_table_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let users = format!("enrich_users_{}", std::process::id());
    psql(&format!("DROP TABLE IF EXISTS {users}"));
    psql(&format!(
        "CREATE TABLE {users} (id TEXT PRIMARY KEY, tier TEXT, region TEXT, signup_date DATE)"
    ));
    psql(&format!(
        "INSERT INTO {users} VALUES ('u1', 'vip', 'eu', '2024-03-01'), ('u2', 'new', 'us', NULL)"
    ));
    let products = d.join("products.csv");
    std::fs::write(
        &products,
        "sku,name,category,brand,price,stock\nmug,Mug,kitchen,Acme,12.00,40\npen,Pen,office,Bic,0.80,3\n",
    )
    .unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let out = d.join("out");
    let lake = d.join("lake");
    let cfg = d.join("enrich.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[pipeline.checkpoint]
dir = "{ck}"
interval = "200ms"
[source]
type = "http"
journal_dir = "{journal}"
[[sinks]]
type = "jsonl"
dir = "{out}"
events = true
[[sinks]]
type = "parquet"
dir = "{lake}"
[http]
enabled = true
addr = "{addr}"
[enrich.products]
from = "csv"
path = "{products}"
[enrich.users]
from = "postgres"
url = "postgres://postgres@127.0.0.1:5432/test"
table = "{users}"
key = "id"
columns = {{ segment = "tier" }}
refresh = "200ms"
on_miss = "dead_letter"
"#,
            ck = d.join("ck").display(),
            journal = d.join("journal").display(),
            out = out.display(),
            lake = lake.display(),
            products = products.display(),
        ),
    )
    .unwrap();
    let mut c = Command::new(bin());
    c.args(["run", "--config"]).arg(&cfg);
    let mut p = Proc::spawn("cartpulse", c, &d.join("run.log"));
    wait_ready(addr);

    post(
        addr,
        &[
            ev("e1", "u1", "mug", None),        // list price from the table
            ev("e2", "u2", "pen", Some("0.5")), // its own price wins
            ev("e3", "u1", "glue", Some("2")),  // not in the product table: kept
            ev("e4", "stranger", "mug", None),  // not in the user table: dead-lettered
        ]
        .join("\n"),
    );
    let events_now = |n: usize| {
        wait_for(
            "events in the committed output",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                let k = lines(&out, "events").len();
                if k >= n {
                    Ok(())
                } else {
                    Err(format!("{k} of {n}"))
                }
            },
        )
    };
    events_now(3);

    // the user table changes; a reload carries it to the events after it
    psql(&format!(
        "UPDATE {users} SET tier = 'churn-risk' WHERE id = 'u2'"
    ));
    psql(&format!(
        "INSERT INTO {users} VALUES ('stranger', 'new', 'apac', '2026-12-01')"
    ));
    let reloads = metric(
        addr,
        "cartpulse_enrich_refreshes_total{outcome=\"ok\",table=\"users\"}",
    );
    wait_for(
        "two more reloads of the user table",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let r = metric(
                addr,
                "cartpulse_enrich_refreshes_total{outcome=\"ok\",table=\"users\"}",
            );
            if r >= reloads + 2.0 {
                Ok(())
            } else {
                Err(format!("{r} reloads"))
            }
        },
    );
    post(
        addr,
        &[
            ev("e5", "u2", "mug", None),
            ev("e6", "stranger", "pen", None),
        ]
        .join("\n"),
    );
    events_now(5);
    assert_eq!(
        metric(
            addr,
            "cartpulse_enrich_lookups_total{result=\"hit\",table=\"products\"}"
        ),
        5.0,
        "mug, pen, mug (dead-lettered after its lookup), mug, pen"
    );
    assert_eq!(
        metric(
            addr,
            "cartpulse_enrich_lookups_total{result=\"miss\",table=\"products\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            addr,
            "cartpulse_enrich_lookups_total{result=\"miss\",table=\"users\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            addr,
            "cartpulse_dead_letters_total{reason=\"enrich_user_missing\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(addr, "cartpulse_enrich_rows{table=\"products\"}"),
        2.0
    );
    p.stop(Duration::from_secs(10));

    let by_id = |id: &str| -> Value {
        lines(&out, "events")
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["event_id"] == id)
            .unwrap_or_else(|| panic!("no event {id}"))
    };
    let e1 = by_id("e1");
    assert_eq!(e1["product_name"], "Mug");
    assert_eq!(e1["product_brand"], "Acme");
    assert_eq!(e1["product_stock"], 40);
    assert_eq!(e1["category"], "kitchen", "filled from the product table");
    assert_eq!(e1["price"].as_f64(), Some(12.0));
    assert_eq!(e1["price_source"], "catalog");
    assert_eq!(e1["user_segment"], "vip");
    assert_eq!(e1["user_signup_date"], "2024-03-01");
    let e2 = by_id("e2");
    assert_eq!(e2["price"].as_f64(), Some(0.5));
    assert!(e2.get("price_source").is_none(), "{e2}");
    assert_eq!(e2["user_segment"], "new");
    assert!(
        e2.get("user_signup_date").is_none(),
        "NULL in the table: {e2}"
    );
    let e3 = by_id("e3");
    assert!(
        e3.get("product_name").is_none() && e3.get("category").is_none(),
        "{e3}"
    );
    assert_eq!(e3["user_region"], "eu");
    assert_eq!(
        by_id("e5")["user_segment"],
        "churn-risk",
        "after the reload"
    );
    assert_eq!(
        by_id("e6")["user_region"],
        "apac",
        "a user added to the table"
    );
    let dead = lines(&out, "dead_letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let dl: Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(dl["reason"], "enrich_user_missing");
    assert!(dl["error"].as_str().unwrap().contains("stranger"), "{dl}");
    assert!(
        dead[0].contains("e4"),
        "the original record is kept: {}",
        dead[0]
    );

    // the archive holds the attributes as typed columns
    let batches = common::read_parquet(&lake);
    let mut seen = 0;
    for b in &batches {
        let ids = b.column_by_name("event_id").unwrap().as_string::<i32>();
        let name = b.column_by_name("product_name").unwrap().as_string::<i32>();
        let stock = b.column_by_name("product_stock").unwrap();
        let stock = stock.as_primitive::<Int64Type>();
        let signup = b.column_by_name("user_signup_date").unwrap();
        let signup = signup.as_primitive::<Date32Type>();
        for i in 0..b.num_rows() {
            if ids.value(i) == "e1" {
                assert_eq!(name.value(i), "Mug");
                assert_eq!(stock.value(i), 40);
                assert_eq!(signup.value(i), 19_783);
                seen += 1;
            }
            if ids.value(i) == "e3" {
                assert!(name.is_null(i) && stock.is_null(i));
            }
        }
    }
    assert_eq!(seen, 1, "e1 archived once");
    psql(&format!("DROP TABLE {users}"));
}

#[test]
fn a_table_that_cannot_be_read_stops_start_up_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[source]
type = "file"
path = "{input}"
[[sinks]]
type = "jsonl"
dir = "{out}"
[enrich.users]
from = "postgres"
url = "postgres://postgres@127.0.0.1:5432/test"
table = "no_such_table_{pid}"
"#,
            input = dir.path().join("in.jsonl").display(),
            out = dir.path().join("out").display(),
            pid = std::process::id(),
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("users") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        "[source]\ntype = \"file\"\npath = \"x\"\n[[sinks]]\ntype = \"jsonl\"\ndir = \"o\"\n[enrich.products]\nfrom = \"excel\"\n",
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("excel") && err.contains("csv"), "{err}");
}
