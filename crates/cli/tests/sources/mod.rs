//! Helpers for the end-to-end tests of the network sources (cdc.rs, redis.rs, rabbitmq.rs):
//! run `cartpulse run --config` on a live source, SIGKILL it, and compare what it committed
//! with a `cartpulse replay` of the event list the test expects.
//!
//! A live source never ends, so windows still open at the end of its input never fire,
//! while a replay fires everything at the end of its file. Each test therefore ends its
//! input with a sentinel event two hours after the rest: the live run then fires every window
//! and abandoned cart up to the sentinel's watermark, and the replay's output is compared up
//! to that same point.
#![allow(dead_code)]

use crate::common::{replay, sorted_streams, STREAMS};
use crate::live::Proc;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The engine's default out-of-orderness bound, which the configs here keep.
pub const BOUND_MS: i64 = 5_000;
/// How far after the last real event the sentinel lies.
pub const SENTINEL_AFTER_MS: i64 = 2 * 3_600_000 + 1_234;

pub struct Dirs {
    pub tmp: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        Dirs {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// A config file for `cartpulse run`: 2 shards, checkpoints every 200 ms, a JSON-lines sink.
pub fn write_config(dirs: &Dirs, source_toml: &str) -> PathBuf {
    let text = format!(
        "[pipeline]\nshards = 2\n\n[pipeline.checkpoint]\ndir = {:?}\ninterval = \"200ms\"\n\n\
         {source_toml}\n\n[[sinks]]\ntype = \"jsonl\"\ndir = {:?}\n",
        dirs.path("ckpt").display().to_string(),
        dirs.path("out").display().to_string(),
    );
    let p = dirs.path("cartpulse.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

pub fn spawn_run(dirs: &Dirs, config: &Path, n: u32) -> Proc {
    let mut c = crate::common::cmd();
    c.env("RUST_LOG", "info")
        .arg("run")
        .arg("--config")
        .arg(config);
    Proc::spawn(
        &format!("cartpulse run #{n}"),
        c,
        &dirs.path(&format!("run-{n}.log")),
    )
}

/// SIGKILL, as a crash: no final checkpoint, no acknowledgement.
pub fn crash(p: &mut Proc) {
    // SAFETY: kill(2) on the process this test started.
    unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) };
    p.stop(Duration::ZERO);
}

/// The latest checkpoint the run's manifest names.
pub fn checkpoints(dirs: &Dirs) -> u64 {
    std::fs::read(dirs.path("ckpt").join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["latest"].as_u64())
        .unwrap_or(0)
}

pub fn wait_checkpoints(dirs: &Dirs, p: &mut Proc, at_least: u64, limit: Duration) {
    let start = Instant::now();
    while checkpoints(dirs) < at_least {
        if let Some(st) = p.exited() {
            panic!("{} exited ({st}) early\n{}", p.name, p.log_tail(30));
        }
        assert!(
            start.elapsed() < limit,
            "no checkpoint {at_least} within {limit:?}\n{}",
            p.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The largest `ts` (epoch ms) in a list of event lines.
pub fn max_ts(events: &[String]) -> i64 {
    events
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["ts"].as_i64())
        .max()
        .expect("events with ts")
}

/// A `view` by a user of its own, `SENTINEL_AFTER_MS` after `last_ts`.
pub fn sentinel(last_ts: i64) -> String {
    format!(
        r#"{{"event_id":"sentinel","ts":{},"user_id":"zz-sentinel","action":"view","sku":"sentinel"}}"#,
        last_ts + SENTINEL_AFTER_MS
    )
}

/// What a live run over `events` (ending with a sentinel) must have committed: a replay's
/// output, without what only the end of a file fires.
pub fn expected(dirs: &Dirs, events: &[String]) -> BTreeMap<&'static str, Vec<String>> {
    expected_with(dirs, events, "", BOUND_MS)
}

/// Like `expected`, for a run whose `[pipeline]` section also holds `pipeline_toml`, with
/// out-of-orderness `bound_ms`.
pub fn expected_with(
    dirs: &Dirs,
    events: &[String],
    pipeline_toml: &str,
    bound_ms: i64,
) -> BTreeMap<&'static str, Vec<String>> {
    let input = dirs.path("expected.jsonl");
    let mut text = events.join("\n");
    text.push('\n');
    std::fs::write(&input, text).expect("write expected events");
    let out = dirs.path("expected-out");
    let cfg = dirs.path("replay.toml");
    std::fs::write(&cfg, format!("[pipeline]\n{pipeline_toml}\n")).expect("write replay config");
    replay(
        &input,
        &out,
        &["--shards", "2", "--config", cfg.to_str().unwrap()],
    );
    let cutoff = max_ts(events) - bound_ms;
    let mut all = sorted_streams(&out);
    for (stream, lines) in all.iter_mut() {
        lines.retain(|l| {
            let v: Value = serde_json::from_str(l).expect("output is json");
            let due = match *stream {
                "user_windows" | "global_windows" => v["window_end"].as_i64(),
                "abandoned_carts" => v["abandoned_at"].as_i64(),
                _ => None,
            };
            due.is_none_or(|t| t <= cutoff)
        });
    }
    assert!(
        !all["user_windows"].is_empty() && !all["global_windows"].is_empty(),
        "the expected output has windows"
    );
    all
}

/// Waits until the run's committed output equals `want`, then checks it stays so.
pub fn wait_for_output(
    dirs: &Dirs,
    p: &mut Proc,
    want: &BTreeMap<&'static str, Vec<String>>,
    limit: Duration,
) {
    let out = dirs.path("out");
    let start = Instant::now();
    loop {
        let got = sorted_streams(&out);
        if &got == want {
            break;
        }
        if let Some(st) = p.exited() {
            crate::common::assert_same_streams("live run vs replay", &got, want);
            panic!("{} exited ({st})\n{}", p.name, p.log_tail(30));
        }
        if start.elapsed() > limit {
            eprintln!("{}", p.log_tail(40));
            crate::common::assert_same_streams("live run vs replay", &got, want);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // a few more checkpoints: nothing further may appear (no late duplicate output)
    let seen = checkpoints(dirs);
    while checkpoints(dirs) < seen + 3 && start.elapsed() < limit + Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::common::assert_same_streams("live run vs replay, settled", &sorted_streams(&out), want);
    for s in STREAMS {
        assert!(
            !want[s].is_empty()
                || s == "late_events"
                || s == "dead_letter"
                || s == "abandoned_carts",
            "stream {s} is empty in the expected output: the test proves little"
        );
    }
}

/// The cart each user was last reported with in `abandoned_carts` (sku → qty).
pub fn last_abandoned_carts(
    out: &BTreeMap<&'static str, Vec<String>>,
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut best: BTreeMap<String, (i64, BTreeMap<String, u64>)> = BTreeMap::new();
    for l in &out["abandoned_carts"] {
        let v: Value = serde_json::from_str(l).unwrap();
        let user = v["user_id"].as_str().unwrap().to_string();
        let at = v["abandoned_at"].as_i64().unwrap();
        let lines = v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["sku"].as_str().unwrap().to_string(),
                    x["qty"].as_u64().unwrap(),
                )
            })
            .collect();
        if best.get(&user).is_none_or(|(t, _)| *t < at) {
            best.insert(user, (at, lines));
        }
    }
    best.into_iter().map(|(u, (_, c))| (u, c)).collect()
}
