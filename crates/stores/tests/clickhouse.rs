//! ClickHouse sink against a real `clickhouse-server` (scripts/services.d/clickhouse.sh
//! installs it) that each test starts on free ports with a temporary config and data dir.

mod common;

use cartpulse_engine::{Sink, Stream};
use cartpulse_stores::{ClickHouseConfig, ClickHouseSink, RetryConfig};
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn server_binary() -> PathBuf {
    for p in [
        "/usr/sbin/clickhouse-server",
        "/usr/bin/clickhouse-server",
        "/usr/bin/clickhouse",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "no clickhouse server binary (looked in /usr/sbin and /usr/bin): run scripts/services.d/clickhouse.sh"
    );
}

struct Server {
    child: Child,
    http: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(http: u16) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tcp = free_port();
        std::fs::write(
            d.join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#,
        )
        .unwrap();
        std::fs::write(
            d.join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{p}/data/</path>
  <tmp_path>{p}/tmp/</tmp_path>
  <user_files_path>{p}/user_files/</user_files_path>
  <format_schema_path>{p}/format_schemas/</format_schema_path>
  <users_config>{p}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
"#,
                p = d.display()
            ),
        )
        .unwrap();
        let bin = server_binary();
        let mut cmd = Command::new(&bin);
        if bin.ends_with("clickhouse") {
            cmd.arg("server");
        }
        let child = cmd
            .arg(format!("--config-file={}", d.join("config.xml").display()))
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            child,
            http,
            _dir: dir,
        };
        let t = Instant::now();
        while s.query("SELECT 1").is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "clickhouse did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn query(&self, q: &str) -> Result<String, String> {
        ureq::post(&format!("http://127.0.0.1:{}/", self.http))
            .send_string(q)
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|e| e.to_string())
    }

    fn rows(&self, db: &str, table: &str) -> Vec<Value> {
        let text = self
            .query(&format!(
                "SELECT * FROM `{db}`.`{table}` FINAL FORMAT JSONEachRow"
            ))
            .unwrap();
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                // nested JSON is stored as text: compare it as JSON
                for f in ["lines", "event", "payload"] {
                    if let Some(Value::String(s)) = v.get(f) {
                        let parsed = serde_json::from_str(s).unwrap();
                        v[f] = parsed;
                    }
                }
                v
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn txt(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn keyed(rows: Vec<Value>, fields: &[&str]) -> BTreeMap<String, Value> {
    rows.into_iter()
        .map(|r| {
            let k: Vec<String> = fields.iter().map(|f| txt(&r[*f])).collect();
            (k.join(":"), r)
        })
        .collect()
}

fn config(http: u16, db: &str, stage: &Path) -> ClickHouseConfig {
    ClickHouseConfig {
        url: format!("http://127.0.0.1:{http}"),
        database: db.into(),
        stage_dir: Some(stage.to_path_buf()),
        // small batches: several per stream and epoch, each with its own token
        batch_rows: 1,
        retry: RetryConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..Default::default()
    }
}

#[test]
fn exactly_once_across_crashes() {
    let srv = Server::start(free_port());
    let stage = tempfile::tempdir().unwrap();
    let db = unique("ch_eo");
    let cfg = ClickHouseConfig {
        streams: [
            "user_windows",
            "global_windows",
            "abandoned_carts",
            "alerts",
            "late_events",
            "dead_letter",
            "carts",
        ]
        .map(String::from)
        .to_vec(),
        ..config(srv.http, &db, stage.path())
    };
    crash_scenario(
        &|| Box::new(ClickHouseSink::new(cfg.clone()).unwrap()),
        Some(stage.path()),
    );
    let exp = expected();
    assert_same(
        Stream::UserWindows,
        &exp[&Stream::UserWindows],
        &keyed(
            srv.rows(&db, "user_windows"),
            &["user_id", "window_start", "window_end"],
        ),
    );
    assert_same(
        Stream::GlobalWindows,
        &exp[&Stream::GlobalWindows],
        &keyed(
            srv.rows(&db, "global_windows"),
            &["window_start", "window_end"],
        ),
    );
    assert_same(
        Stream::AbandonedCarts,
        &exp[&Stream::AbandonedCarts],
        &keyed(
            srv.rows(&db, "abandoned_carts"),
            &["user_id", "abandoned_at"],
        ),
    );
    // ClickHouse has no delete in a ReplacingMergeTree this old: a gone cart is its latest
    // row with no lines
    let carts: BTreeMap<String, Value> = keyed(srv.rows(&db, "carts"), &["user_id"])
        .into_iter()
        .filter(|(_, v)| v["lines"].as_array().is_some_and(|l| !l.is_empty()))
        .collect();
    assert_same(Stream::Carts, &exp[&Stream::Carts], &carts);
    let alerts: Vec<Value> = srv
        .rows(&db, "alerts")
        .into_iter()
        .map(|r| r["payload"].clone())
        .collect();
    assert_same_values(Stream::Alerts, &exp[&Stream::Alerts], &alerts);
    let dead: Vec<Value> = srv
        .rows(&db, "dead_letter")
        .into_iter()
        .map(|r| r["payload"].clone())
        .collect();
    assert_same_values(Stream::DeadLetter, &exp[&Stream::DeadLetter], &dead);
    assert_same_values(
        Stream::LateEvents,
        &exp[&Stream::LateEvents],
        &srv.rows(&db, "late_events"),
    );
    assert_eq!(
        srv.query(&format!(
            "SELECT toString(value_added) FROM `{db}`.user_windows FINAL WHERE user_id = 'u2'"
        ))
        .unwrap()
        .trim(),
        BIG
    );
    assert_eq!(
        srv.query(&format!(
            "SELECT toTypeName(value_added) FROM `{db}`.user_windows LIMIT 1"
        ))
        .unwrap()
        .trim(),
        "Decimal(18, 4)"
    );
}

#[test]
fn blocks_until_a_late_server_starts_then_delivers() {
    let http = free_port();
    let stage = tempfile::tempdir().unwrap();
    let db = unique("ch_late");
    let cfg = ClickHouseConfig {
        name: Some("clickhouse-late-test".into()),
        ..config(http, &db, stage.path())
    };
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        Server::start(http)
    });
    let t = Instant::now();
    let mut s = ClickHouseSink::new(cfg).unwrap();
    s.recover(None).unwrap();
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert!(
        cartpulse_stores::retries_metric()
            .with_label_values(&["clickhouse-late-test"])
            .get()
            >= 2
    );
    write(&mut s, 1, &epoch1());
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    let srv = starter.join().unwrap();
    assert_eq!(srv.rows(&db, "user_windows").len(), 2);
    assert_eq!(srv.rows(&db, "dead_letter").len(), 1);
}
