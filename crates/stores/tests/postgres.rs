//! PostgreSQL sink against the real server on 127.0.0.1:5432 (database `test`), each test
//! in its own schema.

mod common;

use cartpulse_engine::{Sink, Stream};
use cartpulse_stores::{PostgresConfig, PostgresSink, RetryConfig};
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

struct Db {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    schema: String,
}

impl Db {
    fn new(schema: &str) -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (client, conn) = rt
            .block_on(tokio_postgres::connect(URL, tokio_postgres::NoTls))
            .unwrap();
        rt.spawn(conn);
        Db {
            rt,
            client,
            schema: schema.into(),
        }
    }

    fn strings(&self, sql: &str) -> Vec<String> {
        self.rt
            .block_on(self.client.query(sql, &[]))
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    fn rows(&self, table: &str) -> Vec<Value> {
        self.strings(&format!(
            "SELECT row_to_json(t)::text FROM \"{}\".{table} t",
            self.schema
        ))
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.client.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        )));
    }
}

fn config(schema: &str) -> PostgresConfig {
    PostgresConfig {
        url: URL.into(),
        schema: schema.into(),
        ..Default::default()
    }
}

fn keyed(rows: Vec<Value>, key: impl Fn(&Value) -> String) -> BTreeMap<String, Value> {
    rows.into_iter().map(|r| (key(&r), r)).collect()
}

fn check(db: &Db) {
    let exp = expected();
    fn k2(a: &'static str, b: &'static str) -> impl Fn(&Value) -> String {
        move |r: &Value| format!("{}:{}", txt(&r[a]), txt(&r[b]))
    }
    assert_same(
        Stream::UserWindows,
        &exp[&Stream::UserWindows],
        &keyed(db.rows("user_windows"), |r| {
            format!(
                "{}:{}:{}",
                txt(&r["user_id"]),
                r["window_start"],
                r["window_end"]
            )
        }),
    );
    assert_same(
        Stream::GlobalWindows,
        &exp[&Stream::GlobalWindows],
        &keyed(db.rows("global_windows"), k2("window_start", "window_end")),
    );
    assert_same(
        Stream::AbandonedCarts,
        &exp[&Stream::AbandonedCarts],
        &keyed(db.rows("abandoned_carts"), k2("user_id", "abandoned_at")),
    );
    assert_same(
        Stream::Carts,
        &exp[&Stream::Carts],
        &keyed(db.rows("carts"), |r| txt(&r["user_id"])),
    );
    let alerts: Vec<Value> = db
        .rows("alerts")
        .into_iter()
        .map(|r| r["payload"].clone())
        .collect();
    assert_same_values(Stream::Alerts, &exp[&Stream::Alerts], &alerts);
    let dead: Vec<Value> = db
        .rows("dead_letter")
        .into_iter()
        .map(|r| r["payload"].clone())
        .collect();
    assert_same_values(Stream::DeadLetter, &exp[&Stream::DeadLetter], &dead);
    assert_same_values(
        Stream::LateEvents,
        &exp[&Stream::LateEvents],
        &db.rows("late_events"),
    );
    // exact decimals: the largest NUMERIC(18,4) value survives to the last digit
    assert_eq!(
        db.strings(&format!(
            "SELECT value_added::text FROM \"{}\".user_windows WHERE user_id = 'u2'",
            db.schema
        )),
        vec![BIG.to_string()]
    );
    assert_eq!(
        db.strings(&format!(
            "SELECT count(*)::text FROM \"{}\".cartpulse_stage",
            db.schema
        )),
        vec!["0"]
    );
}

fn txt(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

#[test]
fn exactly_once_across_crashes() {
    let schema = unique("cpt_eo");
    let db = Db::new(&schema);
    let cfg = config(&schema);
    crash_scenario(&|| Box::new(PostgresSink::new(cfg.clone()).unwrap()), None);
    check(&db);
    let epochs = db.strings(&format!(
        "SELECT string_agg(epoch::text, ',' ORDER BY epoch) FROM \"{schema}\".cartpulse_committed_epochs"
    ));
    assert_eq!(epochs, vec!["1,2,3"]);
    // a fresh start empties the tables, as the file sink empties its directory
    let mut s = PostgresSink::new(cfg).unwrap();
    s.recover(None).unwrap();
    assert!(db.rows("user_windows").is_empty());
}

#[test]
fn migrations_are_idempotent_and_concurrent_safe() {
    let schema = unique("cpt_mig");
    let db = Db::new(&schema);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let cfg = config(&schema);
            std::thread::spawn(move || {
                let mut s = PostgresSink::new(cfg).unwrap();
                s.recover(Some(0)).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        db.strings(&format!(
            "SELECT string_agg(version::text, ',') FROM \"{schema}\".cartpulse_schema_version"
        )),
        vec!["1"]
    );
}

#[test]
fn blocks_while_the_server_is_unreachable_then_delivers() {
    let schema = unique("cpt_down");
    let db = Db::new(&schema);
    let proxy = LateProxy::start("127.0.0.1:5432", Duration::from_millis(1500));
    let cfg = PostgresConfig {
        url: format!(
            "host=127.0.0.1 port={} user=postgres dbname=test",
            proxy.port
        ),
        schema: schema.clone(),
        name: Some("pg-down-test".into()),
        retry: RetryConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..Default::default()
    };
    let before = cartpulse_stores::retries_metric()
        .with_label_values(&["pg-down-test"])
        .get();
    let t = Instant::now();
    let mut s = PostgresSink::new(cfg).unwrap();
    s.recover(None).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    let retries = cartpulse_stores::retries_metric()
        .with_label_values(&["pg-down-test"])
        .get()
        - before;
    assert!(retries >= 2, "{retries} retries counted");
    write(&mut s, 1, &epoch1());
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    assert_eq!(db.rows("user_windows").len(), 2);
    assert_eq!(db.rows("dead_letter").len(), 1);
}

#[test]
fn a_bad_record_fails_loudly_instead_of_retrying() {
    let schema = unique("cpt_bad");
    let _db = Db::new(&schema);
    let mut s = PostgresSink::new(config(&schema)).unwrap();
    s.recover(None).unwrap();
    // not a number where the table has NUMERIC: a SQL error, not a retry loop
    s.write(
        1,
        Stream::Carts,
        br#"{"user_id":"u1","items":1,"value":"lots","last_activity":1,"lines":[{"sku":"p"}]}
"#,
        1,
    )
    .unwrap();
    s.pre_commit(1).unwrap();
    let e = s.commit(1).unwrap_err();
    assert!(!e.retryable && e.message.contains("numeric"), "{e}");
}
