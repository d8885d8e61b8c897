//! Elasticsearch sink at the protocol level. No Elasticsearch server can be installed here
//! (it is in no package registry this project reaches), so these tests run a small HTTP
//! server in the test process that enforces the documented `_bulk` request format —
//! `Content-Type: application/x-ndjson`, a body ending in a newline, action lines each
//! followed by a source line (none after `delete`), `_index` and `_id` on every action — keeps
//! the documents it accepted, and answers with per-item statuses, including injected `429`s,
//! `503`s and mapping errors.

mod common;

use cartpulse_engine::{Sink, Stream};
use cartpulse_stores::{ElasticConfig, ElasticSink, RetryConfig};
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// index → id → document
    docs: BTreeMap<String, BTreeMap<String, Value>>,
    mappings: HashMap<String, Value>,
    bulk_requests: usize,
    /// Answer the next N bulk requests with HTTP 503.
    fail_requests: usize,
    /// Answer 429 for the next N items (item-level, inside a 200 answer).
    reject_items: usize,
    /// Documents with this field get a mapper_parsing_exception.
    poison_field: Option<String>,
    /// Format violations seen (each also answered with HTTP 400).
    violations: Vec<String>,
}

struct FakeElastic {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeElastic {
    fn start() -> FakeElastic {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn start_on(l: TcpListener) -> FakeElastic {
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(c, st));
            }
        });
        FakeElastic { port, state }
    }

    fn docs(&self, index: &str) -> BTreeMap<String, Value> {
        self.state
            .lock()
            .unwrap()
            .docs
            .get(index)
            .cloned()
            .unwrap_or_default()
    }
}

fn serve(c: TcpStream, st: Arc<Mutex<State>>) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let len: usize = headers
            .get("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        let (status, answer) = handle(&method, &path, &headers, &body, &mut st.lock().unwrap());
        let text = answer.to_string();
        write!(
            w,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
    }
}

fn handle(
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
    st: &mut State,
) -> (u16, Value) {
    let index = path.trim_start_matches('/').to_string();
    match method {
        "PUT" => {
            if st.mappings.contains_key(&index) {
                return (
                    400,
                    json!({"error": {"type": "resource_already_exists_exception"}, "status": 400}),
                );
            }
            st.mappings
                .insert(index, serde_json::from_slice(body).unwrap());
            (200, json!({"acknowledged": true}))
        }
        "DELETE" => {
            let found = st.mappings.remove(&index).is_some() | st.docs.remove(&index).is_some();
            if found {
                (200, json!({"acknowledged": true}))
            } else {
                (
                    404,
                    json!({"error": {"type": "index_not_found_exception"}, "status": 404}),
                )
            }
        }
        "POST" if path == "/_bulk" => bulk(headers, body, st),
        _ => (400, json!({"error": format!("unexpected {method} {path}")})),
    }
}

fn violation(st: &mut State, why: String) -> (u16, Value) {
    st.violations.push(why.clone());
    (
        400,
        json!({"error": {"type": "illegal_argument_exception", "reason": why}, "status": 400}),
    )
}

fn bulk(headers: &HashMap<String, String>, body: &[u8], st: &mut State) -> (u16, Value) {
    st.bulk_requests += 1;
    if headers.get("content-type").map(String::as_str) != Some("application/x-ndjson") {
        return violation(
            st,
            format!("content-type {:?}", headers.get("content-type")),
        );
    }
    if body.last() != Some(&b'\n') {
        return violation(
            st,
            "the bulk request must be terminated by a newline".into(),
        );
    }
    if st.fail_requests > 0 {
        st.fail_requests -= 1;
        return (
            503,
            json!({"error": {"type": "unavailable_shards_exception"}, "status": 503}),
        );
    }
    let text = std::str::from_utf8(body).unwrap();
    let mut lines = text.lines();
    let mut items = Vec::new();
    let mut errors = false;
    while let Some(action) = lines.next() {
        let a: Value = match serde_json::from_str(action) {
            Ok(a) => a,
            Err(e) => return violation(st, format!("action line {action}: {e}")),
        };
        let Some((op, meta)) = a
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
        else {
            return violation(st, format!("action line must have one key: {action}"));
        };
        let (Some(index), Some(id)) = (meta["_index"].as_str(), meta["_id"].as_str()) else {
            return violation(st, format!("action without _index/_id: {action}"));
        };
        let (index, id, op) = (index.to_string(), id.to_string(), op.clone());
        let status = match op.as_str() {
            "index" => {
                let Some(src) = lines.next() else {
                    return violation(st, "index action without a source line".into());
                };
                let doc: Value = match serde_json::from_str(src) {
                    Ok(d) => d,
                    Err(e) => return violation(st, format!("source line {src}: {e}")),
                };
                if st
                    .poison_field
                    .as_ref()
                    .is_some_and(|f| doc.get(f).is_some())
                {
                    400
                } else if st.reject_items > 0 {
                    st.reject_items -= 1;
                    429
                } else {
                    st.docs
                        .entry(index.clone())
                        .or_default()
                        .insert(id.clone(), doc);
                    201
                }
            }
            "delete" => match st.docs.get_mut(&index).and_then(|d| d.remove(&id)) {
                Some(_) => 200,
                None => 404,
            },
            other => return violation(st, format!("unexpected action {other}")),
        };
        let mut item = json!({"_index": index, "_id": id, "status": status});
        match status {
            400 => {
                item["error"] =
                    json!({"type": "mapper_parsing_exception", "reason": "failed to parse field"});
                errors = true;
            }
            429 => {
                item["error"] =
                    json!({"type": "es_rejected_execution_exception", "reason": "queue full"});
                errors = true;
            }
            404 => errors = true,
            _ => {}
        }
        items.push(json!({op: item}));
    }
    (200, json!({"took": 1, "errors": errors, "items": items}))
}

fn config(port: u16, stage: &std::path::Path) -> ElasticConfig {
    ElasticConfig {
        url: format!("http://127.0.0.1:{port}"),
        stage_dir: Some(stage.to_path_buf()),
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
        batch_docs: 3,
        retry: RetryConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

#[test]
fn exactly_once_across_crashes() {
    let es = FakeElastic::start();
    let stage = tempfile::tempdir().unwrap();
    let cfg = config(es.port, stage.path());
    crash_scenario(
        &|| Box::new(ElasticSink::new(cfg.clone()).unwrap()),
        Some(stage.path()),
    );
    let exp = expected();
    for s in [
        Stream::UserWindows,
        Stream::GlobalWindows,
        Stream::AbandonedCarts,
        Stream::Carts,
    ] {
        assert_same(s, &exp[&s], &es.docs(&format!("cartpulse-{}", s.name())));
    }
    for s in [Stream::Alerts, Stream::LateEvents, Stream::DeadLetter] {
        let got: Vec<Value> = es
            .docs(&format!("cartpulse-{}", s.name()))
            .into_values()
            .collect();
        assert_same_values(s, &exp[&s], &got);
    }
    assert!(es.docs("cartpulse-alerts").contains_key("a1"));
    let st = es.state.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    let m = &st.mappings["cartpulse-user_windows"]["mappings"]["properties"];
    assert_eq!(
        m["value_added"],
        json!({"type": "scaled_float", "scaling_factor": 10000})
    );
    assert_eq!(m["user_id"]["type"], "keyword");
}

#[test]
fn retries_rejected_items_and_failed_requests() {
    let es = FakeElastic::start();
    let stage = tempfile::tempdir().unwrap();
    let mut s = ElasticSink::new(ElasticConfig {
        name: Some("es-retry-test".into()),
        ..config(es.port, stage.path())
    })
    .unwrap();
    s.recover(None).unwrap();
    {
        let mut st = es.state.lock().unwrap();
        st.fail_requests = 2;
        st.reject_items = 4;
    }
    write(&mut s, 1, &epoch1());
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    assert_eq!(es.docs("cartpulse-user_windows").len(), 2);
    assert_eq!(es.docs("cartpulse-carts").len(), 2);
    assert_eq!(es.docs("cartpulse-alerts").len(), 2);
    let retries = cartpulse_stores::retries_metric()
        .with_label_values(&["es-retry-test"])
        .get();
    assert!(retries >= 3, "{retries}");
    assert!(es.state.lock().unwrap().violations.is_empty());
}

#[test]
fn a_mapping_error_fails_loudly() {
    let es = FakeElastic::start();
    let stage = tempfile::tempdir().unwrap();
    let mut s = ElasticSink::new(config(es.port, stage.path())).unwrap();
    s.recover(None).unwrap();
    es.state.lock().unwrap().poison_field = Some("rule".into());
    write(&mut s, 1, &epoch1());
    s.pre_commit(1).unwrap();
    let e = s.commit(1).unwrap_err();
    assert!(
        !e.retryable && e.message.contains("mapper_parsing_exception"),
        "{e}"
    );
}

#[test]
fn blocks_while_the_server_is_down_then_delivers() {
    let port = free_port();
    let stage = tempfile::tempdir().unwrap();
    let mut s = ElasticSink::new(config(port, stage.path())).unwrap();
    let t = Instant::now();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200));
        FakeElastic::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap())
    });
    s.recover(None).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1100));
    write(&mut s, 1, &epoch1());
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    let es = late.join().unwrap();
    assert_eq!(es.docs("cartpulse-global_windows").len(), 1);
}
