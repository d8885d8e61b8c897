//! Redis sink against the real server on 127.0.0.1:6379, each test under its own key prefix.

mod common;

use cartpulse_engine::{Sink, Stream};
use cartpulse_stores::{RedisConfig, RedisSink, RetryConfig};
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn con() -> redis::Connection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_connection()
        .unwrap()
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut c = con();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut c)
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query(&mut c).unwrap();
        }
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn exactly_once_across_crashes() {
    let prefix = format!("{}:", unique("cp_test"));
    let _g = Cleanup(prefix.clone());
    let stage = tempfile::tempdir().unwrap();
    let cfg = RedisConfig {
        prefix: prefix.clone(),
        stage_dir: Some(stage.path().to_path_buf()),
        ..Default::default()
    };
    crash_scenario(
        &|| Box::new(RedisSink::new(cfg.clone()).unwrap()),
        Some(stage.path()),
    );
    let exp = expected();
    let mut c = con();
    let k = |s: &str| format!("{prefix}{s}");

    let mut carts = BTreeMap::new();
    let keys: Vec<String> = redis::cmd("KEYS").arg(k("cart:*")).query(&mut c).unwrap();
    for key in keys {
        let v: String = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
        let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
        assert!(ttl > 0, "{key} expires");
        carts.insert(key.strip_prefix(&k("cart:")).unwrap().to_string(), json(&v));
    }
    assert_same(Stream::Carts, &exp[&Stream::Carts], &carts);

    // newest window result per user window, the update replacing the first result
    let mut uw = BTreeMap::new();
    for user in ["u1", "u2", "u5", "u9"] {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(k(&format!("user_windows:{user}")))
            .arg(0)
            .arg(-1)
            .query(&mut c)
            .unwrap();
        for m in members {
            let v = json(&m);
            uw.insert(
                format!("{user}:{}:{}", v["window_start"], v["window_end"]),
                v,
            );
        }
    }
    assert_same(Stream::UserWindows, &exp[&Stream::UserWindows], &uw);
    let u2: Vec<String> = redis::cmd("ZRANGE")
        .arg(k("user_windows:u2"))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert!(
        u2[0].contains(BIG),
        "money passes through as written: {u2:?}"
    );

    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(k("global_windows"))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    let gw: BTreeMap<String, Value> = members
        .iter()
        .map(|m| {
            let v = json(m);
            (format!("{}:{}", v["window_start"], v["window_end"]), v)
        })
        .collect();
    assert_same(Stream::GlobalWindows, &exp[&Stream::GlobalWindows], &gw);

    let recent: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(k("abandoned"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        recent,
        vec![("u3".to_string(), 40000), ("u1".to_string(), 60000)]
    );
    let h: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(k("abandoned:u1"))
        .query(&mut c)
        .unwrap();
    assert_eq!(h["value"], "19.98");
    assert_eq!(json(&h["lines"])[0]["sku"], "p1");

    // two alerts were pushed in epoch 1 and one update in epoch 2; the replays added none
    let alerts: Vec<String> = redis::cmd("LRANGE")
        .arg(k("alerts"))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    let a1: String = redis::cmd("GET").arg(k("alert:a1")).query(&mut c).unwrap();
    assert_eq!(json(&a1)["level"], "crit");
    let lost: Option<String> = redis::cmd("GET").arg(k("alert:a9")).query(&mut c).unwrap();
    assert_eq!(lost, None);
    let committed: u64 = redis::cmd("GET")
        .arg(k("committed_epoch"))
        .query(&mut c)
        .unwrap();
    assert_eq!(committed, 3);

    // a fresh start clears the prefix
    let mut s = RedisSink::new(cfg).unwrap();
    s.recover(None).unwrap();
    let left: Vec<String> = redis::cmd("KEYS").arg(k("*")).query(&mut c).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn caps_lists_and_sorted_sets() {
    let prefix = format!("{}:", unique("cp_cap"));
    let _g = Cleanup(prefix.clone());
    let stage = tempfile::tempdir().unwrap();
    let mut s = RedisSink::new(RedisConfig {
        prefix: prefix.clone(),
        stage_dir: Some(stage.path().to_path_buf()),
        alerts_kept: 3,
        global_windows_kept: 2,
        ..Default::default()
    })
    .unwrap();
    s.recover(None).unwrap();
    let mut alerts = Vec::new();
    let mut windows = Vec::new();
    for i in 0..5 {
        alerts.extend_from_slice(format!("{{\"alert_id\":\"a{i}\"}}\n").as_bytes());
        windows.extend_from_slice(
            format!(
                "{{\"window_start\":{},\"window_end\":{}}}\n",
                i * 10,
                i * 10 + 10
            )
            .as_bytes(),
        );
    }
    s.write(1, Stream::Alerts, &alerts, 5).unwrap();
    s.write(1, Stream::GlobalWindows, &windows, 5).unwrap();
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    let mut c = con();
    let l: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{prefix}alerts"))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        l,
        vec![
            "{\"alert_id\":\"a4\"}",
            "{\"alert_id\":\"a3\"}",
            "{\"alert_id\":\"a2\"}"
        ]
    );
    let z: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}global_windows"))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(z.len(), 2);
    assert!(z[1].contains("\"window_end\":50"), "{z:?}");
}

#[test]
fn blocks_while_the_server_is_unreachable_then_delivers() {
    let prefix = format!("{}:", unique("cp_down"));
    let _g = Cleanup(prefix.clone());
    let stage = tempfile::tempdir().unwrap();
    let proxy = LateProxy::start("127.0.0.1:6379", Duration::from_millis(1500));
    let mut s = RedisSink::new(RedisConfig {
        name: Some("redis-down-test".into()),
        url: format!("redis://127.0.0.1:{}/", proxy.port),
        prefix: prefix.clone(),
        stage_dir: Some(stage.path().to_path_buf()),
        retry: RetryConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..Default::default()
    })
    .unwrap();
    let t = Instant::now();
    s.recover(None).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1400));
    assert!(
        cartpulse_stores::retries_metric()
            .with_label_values(&["redis-down-test"])
            .get()
            >= 2
    );
    write(&mut s, 1, &epoch1());
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    let v: String = redis::cmd("GET")
        .arg(format!("{prefix}cart:u4"))
        .query(&mut con())
        .unwrap();
    assert_eq!(json(&v)["user_id"], "u4");
}
