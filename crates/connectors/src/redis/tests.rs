//! Against real `redis-server`s, one private instance per test (see `testkit`).

use super::testkit::RedisServer;
use super::*;
use cartpulse_engine::{Poll, Source};
use cartpulse_model::{decode_json, Action, CartEvent, DecodeOptions};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn frames(c: &cartpulse_engine::SourceChunk) -> Vec<Vec<u8>> {
    match &c.frames {
        Some(f) => f
            .iter()
            .map(|&(a, b)| c.data[a as usize..b as usize].to_vec())
            .collect(),
        None => c
            .data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    }
}

/// Polls until `n` records arrived (panics after `limit`).
fn read_n(s: &mut dyn Source, n: usize, max_bytes: usize, limit: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n {
        assert!(start.elapsed() < limit, "only {} of {n} records", got.len());
        if let Poll::Chunk(c) = s.poll(max_bytes).expect("poll") {
            got.extend(frames(&c));
        }
    }
    got
}

/// Polls for `d` and returns whatever arrived.
fn read_for(s: &mut dyn Source, d: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let start = Instant::now();
    while start.elapsed() < d {
        if let Poll::Chunk(c) = s.poll(1 << 20).expect("poll") {
            got.extend(frames(&c));
        }
    }
    got
}

fn event(r: &[u8]) -> CartEvent {
    decode_json(r, &DecodeOptions::default())
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(r)))
}

fn xadd(c: &mut redis::Connection, stream: &str, i: u32) -> String {
    let ev = format!(
        r#"{{"event_id":"e{i}","ts":{},"user_id":"u{}","action":"add","sku":"p{i}","qty":1,"price":1.5}}"#,
        1_764_000_000_000u64 + u64::from(i),
        i % 7
    );
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("event")
        .arg(ev)
        .query(c)
        .unwrap()
}

fn pending(c: &mut redis::Connection, stream: &str, group: &str) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(c)
        .unwrap();
    match v {
        redis::Value::Array(p) => match p.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

fn stream_cfg(srv: &RedisServer, consumer: &str) -> RedisStreamConfig {
    RedisStreamConfig {
        url: srv.url(),
        stream: "events".into(),
        group: "g".into(),
        consumer: consumer.into(),
        connect_timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    }
}

fn ids_of(records: &[Vec<u8>]) -> Vec<String> {
    records
        .iter()
        .map(|r| event(r).event_id.to_string())
        .collect()
}

#[test]
fn stream_acknowledges_only_what_a_checkpoint_covers() {
    let srv = RedisServer::start();
    let mut c = srv.conn();
    for i in 0..10 {
        xadd(&mut c, "events", i);
    }
    let cfg = RedisStreamConfig {
        count: 4,
        ..stream_cfg(&srv, "a")
    };
    let mut a = RedisStreamSource::new(cfg.clone(), 1 << 20);
    a.open(None).unwrap();
    let first = read_n(&mut a, 4, 1, Duration::from_secs(5));
    let covered = a.position();
    let rest = read_n(&mut a, 6, 1 << 20, Duration::from_secs(5));
    assert_eq!(
        ids_of(&[first.clone(), rest].concat()),
        (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        pending(&mut c, "events", "g"),
        10,
        "nothing acknowledged before a checkpoint"
    );
    a.checkpoint_complete(1, &covered).unwrap();
    assert_eq!(pending(&mut c, "events", "g"), 6);
    // a position from another process's life acknowledges nothing
    let mut foreign = a.position();
    foreign["run"] = Json::from(1u64);
    a.checkpoint_complete(2, &foreign).unwrap();
    assert_eq!(pending(&mut c, "events", "g"), 6);
    drop(a); // crash: six entries read, never acknowledged

    // the same consumer, restarted: its own pending entries first, then new ones
    xadd(&mut c, "events", 10);
    let mut b = RedisStreamSource::new(cfg, 1 << 20);
    b.open(Some(&covered)).unwrap();
    let again = read_n(&mut b, 7, 1 << 20, Duration::from_secs(5));
    assert_eq!(
        ids_of(&again),
        (4..11).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    assert!(read_for(&mut b, Duration::from_millis(200)).is_empty());
    let p = b.position();
    b.checkpoint_complete(1, &p).unwrap();
    assert_eq!(pending(&mut c, "events", "g"), 0);
}

#[test]
fn a_dead_consumers_pending_entries_are_claimed() {
    let srv = RedisServer::start();
    let mut c = srv.conn();
    for i in 0..10 {
        xadd(&mut c, "events", i);
    }
    let claim = |name: &str| RedisStreamConfig {
        claim_idle: Duration::from_millis(300),
        ..stream_cfg(&srv, name)
    };
    // consumer a reads ten entries, its checkpoint covers four, then it dies
    let mut a = RedisStreamSource::new(claim("a"), 1 << 20);
    a.open(None).unwrap();
    let a_read = read_n(&mut a, 10, 1 << 20, Duration::from_secs(5));
    let mut a_pos = a.position();
    a_pos["seq"] = Json::from(4u64);
    a.checkpoint_complete(1, &a_pos).unwrap();
    drop(a);
    let a_committed = ids_of(&a_read[..4]);

    for i in 10..15 {
        xadd(&mut c, "events", i);
    }
    let mut b = RedisStreamSource::new(claim("b"), 1 << 20);
    b.open(None).unwrap();
    // the new entries at once, a's six once they have been idle for claim_idle
    let b_read = read_n(&mut b, 11, 1 << 20, Duration::from_secs(10));
    let mut all = a_committed;
    all.extend(ids_of(&b_read));
    all.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(
        all,
        (0..15).map(|i| format!("e{i}")).collect::<Vec<_>>(),
        "each entry exactly once"
    );
    assert!(
        read_for(&mut b, Duration::from_millis(700)).is_empty(),
        "nothing claimed twice"
    );
    let p = b.position();
    b.checkpoint_complete(1, &p).unwrap();
    assert_eq!(pending(&mut c, "events", "g"), 0);
}

#[test]
fn stream_formats_dead_letters_reconnects_and_start_up_errors() {
    let mut srv = RedisServer::start();
    let mut c = srv.conn();
    let id: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg(&[
            "user_id",
            "u1",
            "action",
            "add",
            "sku",
            "p1",
            "qty",
            "2",
            "price",
            "9.99",
            "ts",
            "1764000000000",
        ])
        .query(&mut c)
        .unwrap();
    let mut s = RedisStreamSource::new(
        RedisStreamConfig {
            format: StreamFormat::Fields,
            ..stream_cfg(&srv, "a")
        },
        1 << 20,
    );
    s.open(None).unwrap();
    let r = read_n(&mut s, 1, 1 << 20, Duration::from_secs(5));
    let e = event(&r[0]);
    assert_eq!(
        (e.event_id.as_str(), e.qty, e.ts),
        (id.as_str(), Some(2), 1_764_000_000_000)
    );
    assert_eq!(e.price.unwrap().to_string(), "9.99");
    drop(s);

    // json format: an entry without the field is a dead letter naming the entry
    let bad: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("other")
        .arg("x")
        .query(&mut c)
        .unwrap();
    let mut s = RedisStreamSource::new(
        RedisStreamConfig {
            group: "g2".into(),
            ..stream_cfg(&srv, "b")
        },
        1 << 20,
    );
    s.open(None).unwrap();
    let mut dead = Vec::new();
    let start = Instant::now();
    while dead.len() < 2 && start.elapsed() < Duration::from_secs(5) {
        if let Poll::Chunk(c) = s.poll(1 << 20).unwrap() {
            dead.extend(c.dead);
        }
    }
    assert_eq!(dead.len(), 2, "both entries lack `event` in json format");
    assert_eq!(
        (dead[1].reason, dead[1].position.as_str()),
        ("missing_field", bad.as_str())
    );

    // the server restarts empty: reconnect, recreate the group, read new entries
    srv.restart();
    let mut c = srv.conn();
    std::thread::sleep(Duration::from_millis(200));
    let _ = read_for(&mut s, Duration::from_millis(500));
    xadd(&mut c, "events", 99);
    let r = read_n(&mut s, 1, 1 << 20, Duration::from_secs(10));
    assert_eq!(event(&r[0]).event_id, "e99");

    let open_err = |cfg: RedisStreamConfig| {
        let mut s = RedisStreamSource::new(cfg, 1 << 20);
        s.open(None).expect_err("must not open").to_string()
    };
    let e = open_err(RedisStreamConfig {
        url: "redis//nohost".into(),
        ..Default::default()
    });
    assert!(e.contains("source.url"), "{e}");
    srv.kill();
    let e = open_err(stream_cfg(&srv, "a"));
    assert!(
        e.contains("source.url") && e.contains("cannot connect"),
        "{e}"
    );
    let srv = RedisServer::start();
    let mut c = srv.conn();
    let e = open_err(RedisStreamConfig {
        create_group: false,
        ..stream_cfg(&srv, "a")
    });
    assert!(
        e.contains("source.stream") && e.contains("does not exist"),
        "{e}"
    );
    xadd(&mut c, "events", 1);
    let e = open_err(RedisStreamConfig {
        create_group: false,
        ..stream_cfg(&srv, "a")
    });
    assert!(e.contains("source.group") && e.contains("`g`"), "{e}");
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("x")
        .query(&mut c)
        .unwrap();
    let e = open_err(RedisStreamConfig {
        stream: "plain".into(),
        ..stream_cfg(&srv, "a")
    });
    assert!(
        e.contains("source.stream") && e.contains("not a stream"),
        "{e}"
    );
}

type Carts = BTreeMap<String, BTreeMap<String, u32>>;

fn fold(carts: &mut Carts, events: &[CartEvent]) {
    for e in events {
        let cart = carts.entry(e.user_id.to_string()).or_default();
        let sku = e.sku.as_deref().unwrap().to_string();
        let q = e.qty.unwrap();
        match e.action {
            Action::Add => *cart.entry(sku).or_default() += q,
            Action::Remove => {
                let left = cart.get(&sku).copied().unwrap_or(0).saturating_sub(q);
                if left == 0 {
                    cart.remove(&sku);
                } else {
                    cart.insert(sku, left);
                }
            }
            Action::UpdateQty => {
                cart.insert(sku, q);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    carts.retain(|_, c| !c.is_empty());
}

fn redis_carts(c: &mut redis::Connection) -> Carts {
    let keys: Vec<String> = redis::cmd("KEYS").arg("cart:*").query(c).unwrap();
    let mut out = Carts::new();
    for k in keys {
        let h: BTreeMap<String, u32> = redis::cmd("HGETALL").arg(&k).query(c).unwrap();
        let h: BTreeMap<String, u32> = h.into_iter().filter(|(_, q)| *q > 0).collect();
        if !h.is_empty() {
            out.insert(k["cart:".len()..].to_string(), h);
        }
    }
    out
}

fn carts_cfg(srv: &RedisServer) -> RedisCartsConfig {
    RedisCartsConfig {
        url: srv.url(),
        connect_timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    }
}

fn hset(c: &mut redis::Connection, user: &str, sku: &str, q: u32) {
    let _: () = redis::cmd("HSET")
        .arg(format!("cart:{user}"))
        .arg(sku)
        .arg(q)
        .query(c)
        .unwrap();
}

/// Reads until the events folded into `carts` match Redis (panics after 10 s).
fn converge(
    s: &mut RedisCartsSource,
    c: &mut redis::Connection,
    carts: &mut Carts,
) -> Vec<CartEvent> {
    let mut all = Vec::new();
    let start = Instant::now();
    loop {
        if let Poll::Chunk(ch) = s.poll(1 << 20).unwrap() {
            let ev: Vec<CartEvent> = frames(&ch).iter().map(|r| event(r)).collect();
            fold(carts, &ev);
            all.extend(ev);
        }
        let want = redis_carts(c);
        if *carts == want {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "carts {carts:?}, redis {want:?}"
        );
    }
}

#[test]
fn cart_hashes_become_diffs_from_a_scan_then_notifications() {
    let srv = RedisServer::start();
    let mut c = srv.conn();
    hset(&mut c, "u1", "p1", 2);
    hset(&mut c, "u1", "p2", 1);
    hset(&mut c, "u2", "p9", 3);
    let _: () = redis::cmd("SET")
        .arg("other:key")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let mut s = RedisCartsSource::new(carts_cfg(&srv), 1 << 20);
    s.open(None).unwrap();
    let mut carts = Carts::new();
    let snap = converge(&mut s, &mut c, &mut carts);
    assert_eq!(snap.len(), 3);
    assert!(snap.iter().all(|e| e.action == Action::Add));

    // one change at a time: the exact event each one makes
    let mut step = |f: &dyn Fn(&mut redis::Connection), want: (Action, &str, &str, u32)| {
        f(&mut c);
        let ev = converge(&mut s, &mut c, &mut carts);
        let got: Vec<(Action, &str, &str, u32)> = ev
            .iter()
            .map(|e| {
                (
                    e.action,
                    e.user_id.as_str(),
                    e.sku.as_deref().unwrap(),
                    e.qty.unwrap(),
                )
            })
            .collect();
        assert_eq!(got, vec![want]);
    };
    step(
        &|c| hset(c, "u1", "p1", 5),
        (Action::UpdateQty, "u1", "p1", 5),
    );
    step(
        &|c| {
            let _: () = redis::cmd("HDEL")
                .arg("cart:u1")
                .arg("p2")
                .query(c)
                .unwrap();
        },
        (Action::Remove, "u1", "p2", 1),
    );
    step(
        &|c| {
            let _: () = redis::cmd("HINCRBY")
                .arg("cart:u2")
                .arg("p9")
                .arg(2)
                .query(c)
                .unwrap();
        },
        (Action::UpdateQty, "u2", "p9", 5),
    );
    step(
        &|c| {
            let _: () = redis::cmd("DEL").arg("cart:u2").query(c).unwrap();
        },
        (Action::Remove, "u2", "p9", 5),
    );
    step(&|c| hset(c, "u3", "p4", 1), (Action::Add, "u3", "p4", 1));

    // a burst: coalesced or not, the carts end up equal
    for i in 0..300u32 {
        let user = format!("b{}", i % 17);
        match i % 5 {
            0..=2 => hset(&mut c, &user, &format!("s{}", i % 11), i % 4),
            3 => {
                let _: () = redis::cmd("HDEL")
                    .arg(format!("cart:{user}"))
                    .arg(format!("s{}", i % 11))
                    .query(&mut c)
                    .unwrap();
            }
            _ => {
                let _: () = redis::cmd("DEL")
                    .arg(format!("cart:{user}"))
                    .query(&mut c)
                    .unwrap();
            }
        }
    }
    converge(&mut s, &mut c, &mut carts);
    assert_eq!(s.lag(), Some(0));

    // a value that is no quantity: a dead letter, the line kept as it was
    hset(&mut c, "u1", "p1", 5);
    let _: () = redis::cmd("HSET")
        .arg("cart:u1")
        .arg("p1")
        .arg("lots")
        .query(&mut c)
        .unwrap();
    let start = Instant::now();
    let dead = loop {
        if let Poll::Chunk(ch) = s.poll(1 << 20).unwrap() {
            if !ch.dead.is_empty() {
                assert!(ch.data.is_empty());
                break ch.dead;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    };
    assert_eq!(
        (dead[0].reason, dead[0].position.as_str()),
        ("bad_qty", "cart:u1")
    );
    assert_eq!(dead[0].raw, b"p1=lots");
}

#[test]
fn carts_resume_from_the_checkpointed_carts_and_resync_after_a_restart() {
    let mut srv = RedisServer::start();
    let mut c = srv.conn();
    hset(&mut c, "u1", "p1", 2);
    hset(&mut c, "u2", "p2", 1);
    let mut s = RedisCartsSource::new(carts_cfg(&srv), 1 << 20);
    s.open(None).unwrap();
    let mut carts = Carts::new();
    let first = converge(&mut s, &mut c, &mut carts);
    let pos = s.position();
    drop(s);

    // changed while the source is down: no notification reaches anyone
    hset(&mut c, "u1", "p1", 4);
    let _: () = redis::cmd("DEL").arg("cart:u2").query(&mut c).unwrap();
    hset(&mut c, "u3", "p3", 3);
    let mut s = RedisCartsSource::new(carts_cfg(&srv), 1 << 20);
    s.open(Some(&pos)).unwrap();
    let mut restored = carts.clone();
    let second = converge(&mut s, &mut c, &mut restored);
    let mut got: Vec<(Action, &str, u32)> = second
        .iter()
        .map(|e| (e.action, e.user_id.as_str(), e.qty.unwrap()))
        .collect();
    got.sort_by_key(|g| g.1.to_string());
    assert_eq!(
        got,
        vec![
            (Action::UpdateQty, "u1", 4),
            (Action::Remove, "u2", 1),
            (Action::Add, "u3", 3)
        ]
    );
    // ids go on from the restored counter
    let mut ids: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|e| e.event_id.to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), first.len() + second.len());

    // the server restarts empty: the resubscription rescans and every cart is gone
    srv.restart();
    let mut c = srv.conn();
    converge(&mut s, &mut c, &mut restored);
    assert!(restored.is_empty());
    hset(&mut c, "u9", "p9", 9);
    converge(&mut s, &mut c, &mut restored);
    assert_eq!(restored["u9"]["p9"], 9);

    // without keyspace events the source refuses to start, and says how to fix it
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query(&mut c)
        .unwrap();
    let mut s = RedisCartsSource::new(carts_cfg(&srv), 1 << 20);
    let e = s.open(None).expect_err("notifications are off").to_string();
    assert!(
        e.contains("source.url") && e.contains("notify-keyspace-events Khgx"),
        "{e}"
    );
    let mut s = RedisCartsSource::new(
        RedisCartsConfig {
            key_pattern: "cart:*".into(),
            ..carts_cfg(&srv)
        },
        1 << 20,
    );
    let e = s.open(None).expect_err("no {user}").to_string();
    assert!(e.contains("source.key_pattern"), "{e}");
}
