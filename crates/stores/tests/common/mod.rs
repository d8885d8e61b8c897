//! Shared by the store tests: one crash scenario every store must survive with exactly the
//! results of an uninterrupted run, and helpers (free ports, a TCP proxy that starts late).
#![allow(dead_code)]

use cartpulse_engine::{Sink, Stream};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub const BIG: &str = "99999999999999.9999";

fn uw(user: &str, start: i64, events: u64, value: &str, update: bool) -> String {
    format!(
        r#"{{"window_start":{start},"window_end":{},"user_id":"{user}","events":{events},"views":1,"adds":2,"removes":0,"update_qtys":0,"checkouts":0,"qty_added":3,"qty_removed":0,"value_added":{value},"value_removed":0,"value_delta":{value}{}}}"#,
        start + 10000,
        if update { r#","update":true"# } else { "" }
    )
}

fn gw(start: i64, events: u64) -> String {
    format!(
        r#"{{"window_start":{start},"window_end":{},"events":{events},"distinct_users":2,"views":1,"adds":2,"removes":0,"update_qtys":0,"checkouts":1,"qty_added":3,"qty_removed":0,"value_added":12.5,"value_removed":0,"value_delta":12.5,"checkout_value":7.0001,"active_carts":2,"items_in_carts":5,"value_in_carts":30.25}}"#,
        start + 10000
    )
}

fn cart(user: &str, lines: &str, value: &str) -> String {
    format!(
        r#"{{"user_id":"{user}","items":2,"value":{value},"last_activity":1000,"lines":{lines}}}"#
    )
}

fn abandoned(user: &str, at: i64) -> String {
    format!(
        r#"{{"user_id":"{user}","session_id":"s1","last_activity":{},"abandoned_at":{at},"items":2,"value":19.98,"lines":[{{"sku":"p1","qty":2,"price":9.99}}]}}"#,
        at - 1000
    )
}

fn dead(pos: u32) -> String {
    format!(
        r#"{{"reason":"bad_json","error":"expected value","source":"events.jsonl","position":"{pos}","raw":"{{oops\t\\\"é"}}"#
    )
}

fn late(id: &str) -> String {
    format!(
        r#"{{"reason":"late","watermark":50000,"late_by_ms":10,"event":{{"event_id":"{id}","ts":49990,"user_id":"u1","action":"view"}}}}"#
    )
}

const LINES: &str = r#"[{"sku":"p1","qty":1,"price":9.99},{"sku":"p2","qty":1,"price":0.0001}]"#;

/// One epoch: records per stream, in the order the committer would write them.
pub type Epoch = Vec<(Stream, Vec<String>)>;

pub fn epoch1() -> Epoch {
    vec![
        (
            Stream::UserWindows,
            vec![uw("u1", 0, 3, "59.97", false), uw("u2", 0, 1, BIG, false)],
        ),
        (Stream::GlobalWindows, vec![gw(0, 4)]),
        (Stream::AbandonedCarts, vec![abandoned("u3", 40000)]),
        (
            Stream::Carts,
            vec![cart("u1", LINES, "9.9901"), cart("u4", LINES, "9.9901")],
        ),
        (
            Stream::Alerts,
            vec![
                r#"{"alert_id":"a1","rule":"big_cart","user_id":"u1","level":"warn"}"#.into(),
                r#"{"rule":"no_id","user_id":"u2"}"#.into(),
            ],
        ),
        (Stream::DeadLetter, vec![dead(1)]),
        (Stream::LateEvents, vec![late("e1")]),
    ]
}

pub fn epoch2() -> Epoch {
    vec![
        (
            Stream::UserWindows,
            vec![uw("u1", 0, 4, "79.96", true)],
        ),
        (Stream::GlobalWindows, vec![gw(10000, 1)]),
        (
            Stream::Carts,
            vec![cart("u1", "[]", "0"), cart("u4", LINES, "19.9802")],
        ),
        (
            Stream::Alerts,
            vec![r#"{"alert_id":"a1","rule":"big_cart","user_id":"u1","level":"crit","update":true}"#.into()],
        ),
        (Stream::DeadLetter, vec![dead(2)]),
    ]
}

/// What a crashed run staged for epoch 3 before its checkpoint was written: discarded.
pub fn epoch3_lost() -> Epoch {
    vec![
        (Stream::UserWindows, vec![uw("u9", 0, 1, "1", false)]),
        (Stream::Carts, vec![cart("u9", LINES, "9.9901")]),
        (
            Stream::Alerts,
            vec![r#"{"alert_id":"a9","rule":"lost"}"#.into()],
        ),
        (Stream::DeadLetter, vec![dead(99)]),
    ]
}

/// Epoch 3 as the restarted run produces it.
pub fn epoch3() -> Epoch {
    vec![
        (Stream::UserWindows, vec![uw("u5", 10000, 2, "5.5", false)]),
        (Stream::AbandonedCarts, vec![abandoned("u1", 60000)]),
        (Stream::Carts, vec![cart("u5", LINES, "9.9901")]),
        (Stream::LateEvents, vec![late("e2")]),
    ]
}

pub fn write(s: &mut dyn Sink, epoch: u64, e: &Epoch) {
    for (stream, recs) in e {
        if !s.wants(*stream) {
            continue;
        }
        // the first record alone, the rest in one call: the committer does both
        for part in [&recs[..1], &recs[1..]] {
            if part.is_empty() {
                continue;
            }
            let mut buf = Vec::new();
            for r in part {
                buf.extend_from_slice(r.as_bytes());
                buf.push(b'\n');
            }
            s.write(epoch, *stream, &buf, part.len() as u64).unwrap();
        }
    }
}

/// Runs the crash scenario against fresh sinks from `make`:
///
/// 1. epoch 1 written and committed;
/// 2. epoch 2 pre-committed, then a crash after the checkpoint (manifest names 2) but before
///    `commit(2)`: the restart's `recover(Some(2))` must roll it forward;
/// 3. epoch 3 pre-committed, then a crash before the checkpoint: `recover(Some(2))` must
///    discard it;
/// 4. epoch 3 regenerated, committed; with a staging dir, the staged file is put back as if
///    the crash came after the store write but before the cleanup, and a restart replays it;
///    `commit(3)` is also called twice.
///
/// The store must then hold exactly [`expected`].
pub fn crash_scenario(make: &dyn Fn() -> Box<dyn Sink>, stage_dir: Option<&Path>) {
    let mut s = make();
    s.recover(None).unwrap();
    write(&mut *s, 1, &epoch1());
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    write(&mut *s, 2, &epoch2());
    s.pre_commit(2).unwrap();
    drop(s);

    let mut s = make();
    s.recover(Some(2)).unwrap();
    write(&mut *s, 3, &epoch3_lost());
    s.pre_commit(3).unwrap();
    drop(s);

    let mut s = make();
    s.recover(Some(2)).unwrap();
    write(&mut *s, 3, &epoch3());
    s.pre_commit(3).unwrap();
    let saved = stage_dir.map(|d| {
        let p = d.join("stage-000000000003.staged");
        (p.clone(), std::fs::read(&p).expect("epoch 3 staged"))
    });
    s.commit(3).unwrap();
    s.commit(3).unwrap();
    drop(s);
    if let Some((p, data)) = saved {
        assert!(!p.exists(), "a committed epoch's staging file is removed");
        std::fs::write(&p, data).unwrap();
    }
    let mut s = make();
    s.recover(Some(3)).unwrap();
}

/// Final results by stream: keyed streams as key → record (the last record for the key),
/// appended streams as their records in order. Keys are the stores' key strings.
pub fn expected() -> BTreeMap<Stream, BTreeMap<String, Value>> {
    let mut out: BTreeMap<Stream, BTreeMap<String, Value>> = BTreeMap::new();
    for (e, recs) in [(1u64, epoch1()), (2, epoch2()), (3, epoch3())] {
        let mut seq = 0u64;
        for (stream, lines) in recs {
            for l in lines {
                let v: Value = serde_json::from_str(&l).unwrap();
                let key = match stream {
                    Stream::UserWindows => format!(
                        "{}:{}:{}",
                        v["user_id"].as_str().unwrap(),
                        v["window_start"],
                        v["window_end"]
                    ),
                    Stream::GlobalWindows => format!("{}:{}", v["window_start"], v["window_end"]),
                    Stream::AbandonedCarts => {
                        format!("{}:{}", v["user_id"].as_str().unwrap(), v["abandoned_at"])
                    }
                    Stream::Carts => v["user_id"].as_str().unwrap().to_string(),
                    Stream::Alerts => v["alert_id"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or(format!("{e}-{seq}")),
                    _ => format!("{e}-{seq}"),
                };
                seq += 1;
                let m = out.entry(stream).or_default();
                if stream == Stream::Carts && v["lines"].as_array().unwrap().is_empty() {
                    m.remove(&key);
                } else {
                    m.insert(key, v);
                }
            }
        }
    }
    out
}

/// Numbers compared by value (`19.9802` equals `19.98020`), the `update` flag ignored.
pub fn same(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Number(a), Value::String(b)) => b.parse::<f64>().ok() == a.as_f64(),
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .filter(|(k, _)| *k != "update")
            .all(|(k, v)| b.get(k).is_some_and(|g| same(v, g))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (a, b) => a == b,
    }
}

pub fn assert_same(
    stream: Stream,
    expected: &BTreeMap<String, Value>,
    got: &BTreeMap<String, Value>,
) {
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{}: keys",
        stream.name()
    );
    for (k, e) in expected {
        assert!(
            same(e, &got[k]),
            "{} {k}: expected {e}, got {}",
            stream.name(),
            got[k]
        );
    }
}

/// Compares a stream whose store keys depend on staging order (appended rows, alerts
/// without an id) by its records alone, as multisets.
pub fn assert_same_values(stream: Stream, expected: &BTreeMap<String, Value>, got: &[Value]) {
    assert_eq!(
        expected.len(),
        got.len(),
        "{}: row count, got {got:?}",
        stream.name()
    );
    let mut left: Vec<&Value> = got.iter().collect();
    for e in expected.values() {
        let i = left
            .iter()
            .position(|g| same(e, g))
            .unwrap_or_else(|| panic!("{}: {e} missing from {left:?}", stream.name()));
        left.remove(i);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP forwarder from a local port to `target` that starts listening only after `delay`:
/// a store that is unreachable at first and comes back.
pub struct LateProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl LateProxy {
    pub fn start(target: &'static str, delay: Duration) -> LateProxy {
        let port = free_port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        thread::spawn(move || {
            thread::sleep(delay);
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        let Ok(up) = TcpStream::connect(target) else {
                            continue;
                        };
                        pipe(c.try_clone().unwrap(), up.try_clone().unwrap());
                        pipe(up, c);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        LateProxy { port, stop }
    }
}

impl Drop for LateProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A unique name per test process and call, for schemas, databases and key prefixes.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
