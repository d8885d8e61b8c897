//! `POST /ingest` end to end: its own token and body limit, a per-request report of accepted
//! and dead-lettered records, and exactly-once results when the process is SIGKILLed right
//! after requests were acknowledged (the journal holds them until a checkpoint covers them).

mod common;
mod live;

use common::{bin, lines};
use live::{free_port, request, wait_for, wait_ready, Proc};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const API: &str = "api-secret";
const INGEST: &str = "ingest-secret";

fn start(cfg: &Path, log: &Path) -> Proc {
    let mut c = Command::new(bin());
    c.args(["run", "--config"]).arg(cfg);
    Proc::spawn("cartpulse", c, log)
}

fn post(addr: SocketAddr, token: &str, body: &[u8]) -> live::Resp {
    let auth = format!("Bearer {token}");
    request(
        addr,
        "POST",
        "/ingest",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-ndjson"),
        ],
        body,
    )
    .unwrap()
}

fn event(i: u64) -> String {
    // users in rotation, an add then a checkout per user, all within one hour
    let user = i % 50;
    let action = if i % 7 == 6 { "checkout" } else { "add" };
    format!(
        r#"{{"event_id":"h{i}","ts":{},"user_id":"u{user}","action":"{action}","sku":"p{}","qty":1,"price":1.5}}"#,
        1_764_000_000_000u64 + i * 100,
        i % 13
    )
}

#[test]
fn ingested_events_are_exactly_once_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let out = d.join("out");
    let cfg = d.join("ingest.toml");
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
max_body_bytes = 200000
[[sinks]]
type = "jsonl"
dir = "{out}"
events = true
[http]
enabled = true
addr = "{addr}"
token = "{API}"
ingest_token = "{INGEST}"
"#,
            ck = d.join("ck").display(),
            journal = d.join("journal").display(),
            out = out.display(),
        ),
    )
    .unwrap();

    let mut p = start(&cfg, &d.join("run1.log"));
    wait_ready(addr);

    // the ingest token and only it; the body limit of the source
    let body = format!("{}\n", event(0));
    assert_eq!(
        request(addr, "POST", "/ingest", &[], body.as_bytes())
            .unwrap()
            .status,
        401
    );
    assert_eq!(post(addr, API, body.as_bytes()).status, 403);
    let huge = vec![b' '; 300_000];
    assert_eq!(post(addr, INGEST, &huge).status, 413);
    let r = post(addr, INGEST, b"[1, 2");
    assert_eq!(r.status, 400, "{}", r.text());

    // NDJSON with one malformed line, then a JSON array
    let mut sent = 0u64;
    let mut batch = String::new();
    for i in 0..500 {
        batch.push_str(&event(i));
        batch.push('\n');
        if i == 10 {
            batch.push_str("{\"ts\": \"not a time\", \"user_id\": \"u1\"}\n");
        }
    }
    let r = post(addr, INGEST, batch.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["accepted"], 500);
    assert_eq!(v["dead_lettered"], 1);
    assert_eq!(v["errors"][0]["index"], 11, "{v}");
    sent += 500;
    let arr: Vec<String> = (500..800).map(event).collect();
    let r = post(addr, INGEST, format!("[{}]", arr.join(",\n")).as_bytes());
    assert_eq!(r.json()["accepted"], 300, "{}", r.text());
    sent += 300;

    // acknowledged, then killed before (or while) a checkpoint covers them
    unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
    let _ = p.stop(Duration::from_secs(5));

    let mut p = start(&cfg, &d.join("run2.log"));
    wait_ready(addr);
    let more: Vec<String> = (800..1000).map(event).collect();
    let r = post(addr, INGEST, more.join("\n").as_bytes());
    assert_eq!(r.json()["accepted"], 200, "{}", r.text());
    sent += 200;
    // everything read and checkpointed, then a graceful stop
    wait_for(
        "all events in the committed output",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let n = lines(&out, "events").len() as u64;
            if n >= sent {
                Ok(())
            } else {
                Err(format!("{n} of {sent}"))
            }
        },
    );
    p.stop(Duration::from_secs(10));

    let events = lines(&out, "events");
    let mut ids: Vec<String> = events
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was written twice");
    assert_eq!(n as u64, sent, "every acknowledged event, once");
    let dead = lines(&out, "dead_letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("not a time"), "{}", dead[0]);
}
