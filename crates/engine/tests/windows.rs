//! Window kinds and allowed lateness, on hand-made inputs with known answers.

use cartpulse_engine::{
    Pipeline, PipelineConfig, Poll, Sink, SinkError, Source, SourceChunk, SourceError, Stream,
    WindowSpec,
};
use cartpulse_model::{DecodeOptions, Decoder};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Serves its lines one chunk per line, so every event is its own chunk and the watermark
/// moves between them exactly as it would in a live stream.
struct Lines {
    lines: Vec<String>,
    next: usize,
}

impl Source for Lines {
    fn name(&self) -> &str {
        "lines"
    }
    fn open(&mut self, _: Option<&Value>) -> Result<(), SourceError> {
        Ok(())
    }
    fn decoder(&self) -> Decoder {
        Decoder::Json(DecodeOptions::default())
    }
    fn poll(&mut self, _: usize) -> Result<Poll, SourceError> {
        match self.lines.get(self.next) {
            None => Ok(Poll::End),
            Some(l) => {
                self.next += 1;
                Ok(Poll::Chunk(SourceChunk {
                    data: format!("{l}\n").into_bytes(),
                    ..Default::default()
                }))
            }
        }
    }
    fn position(&self) -> Value {
        Value::from(self.next as u64)
    }
}

type Out = Arc<Mutex<BTreeMap<&'static str, Vec<Value>>>>;

struct Collect {
    staged: BTreeMap<u64, Vec<(Stream, Vec<u8>)>>,
    out: Out,
}

impl Sink for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    fn recover(&mut self, _: Option<u64>) -> Result<(), SinkError> {
        Ok(())
    }
    fn write(&mut self, epoch: u64, s: Stream, r: &[u8], _: u64) -> Result<(), SinkError> {
        self.staged.entry(epoch).or_default().push((s, r.to_vec()));
        Ok(())
    }
    fn pre_commit(&mut self, _: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        let mut out = self.out.lock().unwrap();
        for (s, bytes) in self.staged.remove(&epoch).unwrap_or_default() {
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                out.entry(s.name())
                    .or_default()
                    .push(serde_json::from_slice(line).unwrap());
            }
        }
        Ok(())
    }
}

fn ev(id: &str, ts: i64, user: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","ts":{ts},"user_id":"{user}","action":"add","sku":"p1","qty":1,"price":2.5}}"#
    )
}

fn run(cfg: PipelineConfig, lines: Vec<String>) -> BTreeMap<&'static str, Vec<Value>> {
    let out: Out = Default::default();
    let sink = Collect {
        staged: BTreeMap::new(),
        out: out.clone(),
    };
    Pipeline::new(
        cfg,
        Box::new(Lines { lines, next: 0 }),
        vec![Box::new(sink)],
    )
    .run()
    .unwrap();
    let r = out.lock().unwrap().clone();
    r
}

fn spans(v: &[Value]) -> Vec<(i64, i64, u64, bool)> {
    let mut s: Vec<_> = v
        .iter()
        .map(|r| {
            (
                r["window_start"].as_i64().unwrap(),
                r["window_end"].as_i64().unwrap(),
                r["events"].as_u64().unwrap(),
                r.get("update").is_some(),
            )
        })
        .collect();
    s.sort();
    s
}

#[test]
fn session_windows_merge_out_of_order_events() {
    let cfg = PipelineConfig {
        shards: 2,
        out_of_orderness: Duration::from_secs(2),
        user_window: WindowSpec::Session {
            gap: Duration::from_secs(3),
        },
        ..Default::default()
    };
    let out = run(
        cfg,
        vec![
            ev("a", 0, "u"),
            ev("f", 0, "v"),
            ev("b", 1000, "u"),
            ev("c", 5000, "u"),
            // out of order but within the bound: bridges both sessions
            ev("d", 3500, "u"),
            ev("e", 20_000, "u"),
        ],
    );
    let u: Vec<Value> = out["user_windows"]
        .iter()
        .filter(|r| r["user_id"] == "u")
        .cloned()
        .collect();
    assert_eq!(
        spans(&u),
        vec![(0, 8000, 4, false), (20_000, 23_000, 1, false)]
    );
    let v: Vec<Value> = out["user_windows"]
        .iter()
        .filter(|r| r["user_id"] == "v")
        .cloned()
        .collect();
    assert_eq!(spans(&v), vec![(0, 3000, 1, false)]);
    // global windows still tumble (default 10 s) with exact distinct users
    let g = &out["global_windows"];
    let first = g.iter().find(|r| r["window_start"] == 0).unwrap();
    assert_eq!(first["distinct_users"], 2);
    assert_eq!(first["events"], 5);
}

#[test]
fn allowed_lateness_updates_then_diverts() {
    let cfg = PipelineConfig {
        shards: 1,
        out_of_orderness: Duration::ZERO,
        allowed_lateness: Duration::from_secs(5),
        dedup_horizon: Duration::from_secs(60),
        ..Default::default()
    };
    let out = run(
        cfg,
        vec![
            ev("a", 1000, "u"),
            ev("b", 12_000, "u"), // watermark 12 s: [0,10 s) fires
            ev("c", 2000, "u"),   // within lateness: updates [0,10 s)
            ev("d", 16_000, "u"), // watermark 16 s: [0,10 s) is dropped
            ev("e", 3000, "u"),   // too late
        ],
    );
    assert_eq!(
        spans(&out["user_windows"]),
        vec![
            (0, 10_000, 1, false),
            (0, 10_000, 2, true),
            (10_000, 20_000, 2, false)
        ]
    );
    let late = &out["late_events"];
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["event"]["event_id"], "e");
    assert_eq!(late[0]["watermark"], 16_000);
    // global windows wait for the lateness, so they count the late update once
    let g0 = out["global_windows"]
        .iter()
        .find(|r| r["window_start"] == 0)
        .unwrap();
    assert_eq!(g0["events"], 2);
    assert_eq!(g0["value_added"].as_f64(), Some(5.0));
}

#[test]
fn sliding_windows_hold_each_event_size_over_slide_times() {
    let cfg = PipelineConfig {
        shards: 3,
        user_window: WindowSpec::Sliding {
            size: Duration::from_secs(10),
            slide: Duration::from_secs(5),
        },
        global_window: WindowSpec::Sliding {
            size: Duration::from_secs(10),
            slide: Duration::from_secs(5),
        },
        ..Default::default()
    };
    let out = run(
        cfg,
        vec![ev("a", 7000, "u"), ev("b", 8000, "w"), ev("c", 12_000, "u")],
    );
    let u: Vec<Value> = out["user_windows"]
        .iter()
        .filter(|r| r["user_id"] == "u")
        .cloned()
        .collect();
    assert_eq!(
        spans(&u),
        vec![
            (0, 10_000, 1, false),
            (5000, 15_000, 2, false),
            (10_000, 20_000, 1, false)
        ]
    );
    let g = spans(&out["global_windows"]);
    assert_eq!(
        g,
        vec![
            (0, 10_000, 2, false),
            (5000, 15_000, 3, false),
            (10_000, 20_000, 1, false)
        ]
    );
    let g1 = out["global_windows"]
        .iter()
        .find(|r| r["window_start"] == 5000)
        .unwrap();
    assert_eq!(g1["distinct_users"], 2);
}

#[test]
fn invalid_settings_are_named() {
    let cfg = PipelineConfig {
        dedup_horizon: Duration::from_secs(1),
        ..Default::default()
    };
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("dedup_horizon"), "{e}");
    let cfg = PipelineConfig {
        global_window: WindowSpec::Session {
            gap: Duration::from_secs(1),
        },
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("global_window"));
}

/// At the end of input the source hears that the final checkpoint covers everything it
/// handed out: a queue-like source acknowledges upstream only then.
#[test]
fn the_final_checkpoint_is_acknowledged_to_the_source() {
    type Acks = Arc<Mutex<Vec<(u64, Value)>>>;
    struct Acked {
        inner: Lines,
        acks: Acks,
    }
    impl Source for Acked {
        fn name(&self) -> &str {
            "acked"
        }
        fn open(&mut self, r: Option<&Value>) -> Result<(), SourceError> {
            self.inner.open(r)
        }
        fn decoder(&self) -> Decoder {
            self.inner.decoder()
        }
        fn poll(&mut self, n: usize) -> Result<Poll, SourceError> {
            self.inner.poll(n)
        }
        fn position(&self) -> Value {
            self.inner.position()
        }
        fn checkpoint_complete(&mut self, id: u64, pos: &Value) -> Result<(), SourceError> {
            self.acks.lock().unwrap().push((id, pos.clone()));
            Ok(())
        }
    }
    let lines: Vec<String> = (0..50)
        .map(|i| {
            format!(
                r#"{{"ts":{},"user_id":"u{}","action":"view","sku":"p"}}"#,
                1000 * i,
                i % 3
            )
        })
        .collect();
    let acks: Acks = Default::default();
    let src = Acked {
        inner: Lines { lines, next: 0 },
        acks: acks.clone(),
    };
    let sink = Collect {
        staged: BTreeMap::new(),
        out: Default::default(),
    };
    let summary = Pipeline::new(
        PipelineConfig::default(),
        Box::new(src),
        vec![Box::new(sink)],
    )
    .run()
    .unwrap();
    let acks = acks.lock().unwrap();
    let last = acks.last().expect("acknowledged");
    assert_eq!(last.1, Value::from(50u64), "{acks:?}");
    assert_eq!(Some(last.0), summary.commit.last_checkpoint);
}
