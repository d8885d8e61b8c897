//! Conversion and retention computed by the stream equal the same figures computed by a
//! batch query over the same events, with the real binary end to end:
//!
//! 1. `cartpulse gen` writes five days of seeded shop traffic (52k lines, with delayed
//!    events and duplicates).
//! 2. `cartpulse run` takes them through `POST /ingest` (the HTTP source, which keeps the
//!    process up and serving once the input is consumed) with the analytics stage on and
//!    the Parquet archive as sink. Once a checkpoint covers every posted byte, the analytics
//!    stage has seen every event; the test reads `GET /api/funnel` and `GET /api/retention`
//!    and stops the process with SIGTERM. The archive must hold exactly the file's distinct
//!    events.
//! 3. `cartpulse batch --complete` recomputes the views from the archive.
//! 4. The stream's conversion per UTC day and per day and category must equal
//!    `conversion_daily` and `conversion_category`, its conversion per hour a plain
//!    recomputation from the archive's rows (no batch view holds it), and its retention
//!    cohort matrix the `retention` view: users who added, who checked out, who did both,
//!    the rate (the same division, compared bit for bit), cohort sizes and active users per
//!    day offset.

mod common;
mod live;

use cartpulse_lake::arrow::array::{Array, AsArray, RecordBatch};
use cartpulse_lake::arrow::compute::cast;
use cartpulse_lake::arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
const SEED: u64 = 29;
const LINES: u64 = 52_000;
/// Events per simulated second: ~10k a day, so 52k lines span five days.
const RATE: &str = "0.12";
/// 2025-11-24T16:00:00Z: the first and last days are partial.
const START_MS: &str = "1764000000000";

/// Generator settings: few enough users that they come back on later days, a dozen
/// categories, more disorder and duplicates than the defaults.
const GEN: &str = "users = 4000
categories = 12
out_of_order_rate = 0.05
duplicate_rate = 0.005
";

/// The `run` config: the HTTP source and server, the analytics stage, the archive.
fn config(dir: &Path, addr: SocketAddr) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
shards = 2
out_of_orderness = "1s"

[pipeline.checkpoint]
dir = "{ck}"
interval = "200ms"

[source]
type = "http"
journal_dir = "{journal}"

[[sinks]]
type = "parquet"
dir = "{lake}"

[analytics]
enabled = true

[http]
enabled = true
addr = "{addr}"
"#,
        ck = dir.join("ck").display(),
        journal = dir.join("journal").display(),
        lake = dir.join("lake").display(),
    );
    let p = dir.join("cartpulse.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The source position (journal offset) of the latest completed checkpoint.
fn checkpointed_offset(ck: &Path) -> Option<u64> {
    let m: Value = serde_json::from_slice(&std::fs::read(ck.join("manifest.json")).ok()?).ok()?;
    let id = m["latest"].as_u64()?;
    let meta = std::fs::read(ck.join(format!("chk-{id:012}")).join("meta.json")).ok()?;
    serde_json::from_slice::<Value>(&meta).ok()?["position"]["offset"].as_u64()
}

/// What the test needs of a generated line.
struct Line {
    id: String,
    ts: i64,
    user: String,
    action: String,
}

fn parse_lines(text: &str) -> Vec<Line> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Line {
                id: v["event_id"].as_str().unwrap().to_string(),
                ts: v["ts"].as_i64().unwrap(),
                user: v["user_id"].as_str().unwrap().to_string(),
                action: v["action"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// The rows of a batch view (all its day partitions).
fn read_view(out: &Path, view: &str) -> Vec<RecordBatch> {
    common::read_parquet(&out.join(view))
}

fn col(b: &RecordBatch, name: &str, to: &DataType) -> std::sync::Arc<dyn Array> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", b.schema()));
    cast(c, to).unwrap()
}

fn ints(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let c = col(b, name, &DataType::Int64);
    let c = c.as_primitive::<Int64Type>();
    (0..c.len())
        .map(|i| c.is_valid(i).then(|| c.value(i)))
        .collect()
}

fn counts(b: &RecordBatch, name: &str) -> Vec<u64> {
    ints(b, name)
        .into_iter()
        .map(|v| v.unwrap_or_else(|| panic!("null {name}")) as u64)
        .collect()
}

/// A DATE column as the epoch ms of the day's start.
fn days(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = col(b, name, &DataType::Int32);
    let c = c.as_primitive::<Int32Type>();
    (0..c.len())
        .map(|i| i64::from(c.value(i)) * DAY_MS)
        .collect()
}

fn floats(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let c = col(b, name, &DataType::Float64);
    let c = c.as_primitive::<Float64Type>();
    (0..c.len())
        .map(|i| c.is_valid(i).then(|| c.value(i)))
        .collect()
}

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = col(b, name, &DataType::Utf8);
    let c = c.as_string::<i32>();
    (0..c.len())
        .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
        .collect()
}

/// Panics listing (up to 10 of) the keys where the two tables differ.
fn assert_same<K: Ord + Debug, V: PartialEq + Debug>(
    what: &str,
    stream: &BTreeMap<K, V>,
    batch: &BTreeMap<K, V>,
) {
    let keys: BTreeSet<&K> = stream.keys().chain(batch.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| stream.get(k) != batch.get(k))
        .map(|k| {
            format!(
                "  {k:?}: stream {:?}, batch {:?}",
                stream.get(k),
                batch.get(k)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} keys differ (stream {} rows, batch {} rows):\n{}",
        diffs.len(),
        stream.len().max(batch.len()),
        stream.len(),
        batch.len(),
        diffs[..diffs.len().min(10)].join("\n")
    );
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no unsigned {k} in {v}"))
}

/// (adders, buyers, adders who bought, rate) of one stream conversion row.
type Conv = (u64, u64, u64, f64);

fn stream_conv(row: &Value) -> Conv {
    let r = row["rate"].as_str().unwrap();
    (
        u(row, "adders"),
        u(row, "buyers"),
        u(row, "converted"),
        r.parse().unwrap_or_else(|e| panic!("rate {r}: {e}")),
    )
}

/// The funnel response with every `"rate"` kept as the text the server wrote: serde_json
/// (without its `float_roundtrip` feature) may parse a number one ulp off, and the rates
/// are compared exactly; `str::parse::<f64>` rounds correctly.
fn exact_rates(body: &str) -> Value {
    const KEY: &str = "\"rate\":";
    let mut out = String::with_capacity(body.len() + body.len() / 8);
    let mut rest = body;
    while let Some(i) = rest.find(KEY) {
        let (head, tail) = rest.split_at(i + KEY.len());
        let n = tail
            .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
            .unwrap_or(tail.len());
        assert!(
            n > 0,
            "no number after {KEY} in {}",
            &tail[..tail.len().min(40)]
        );
        out.push_str(head);
        out.push('"');
        out.push_str(&tail[..n]);
        out.push('"');
        rest = &tail[n..];
    }
    out.push_str(rest);
    serde_json::from_str(&out).unwrap()
}

fn rate(adders: u64, converted: u64) -> f64 {
    if adders == 0 {
        0.0
    } else {
        converted as f64 / adders as f64
    }
}

/// `GET path` as JSON, asserting 200.
fn get_json(addr: SocketAddr, path: &str) -> (Value, String) {
    let r = live::get(addr, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    (r.json(), r.text())
}

/// Starts `cartpulse run` on a free port and waits until it is ready; retries on another
/// port if the chosen one was taken meanwhile.
fn start(dir: &Path) -> (live::Proc, SocketAddr, PathBuf) {
    for attempt in 1..=3 {
        let addr: SocketAddr = ([127, 0, 0, 1], live::free_port()).into();
        let cfg = config(dir, addr);
        let mut c = Command::new(common::bin());
        c.env("RUST_LOG", "info")
            .env_remove("CARTPULSE_API_TOKEN")
            .env_remove("CARTPULSE_INGEST_TOKEN")
            .args(["run", "--config"])
            .arg(&cfg);
        let mut p = live::Proc::spawn("cartpulse run", c, &dir.join(format!("run-{attempt}.log")));
        let start = Instant::now();
        loop {
            if p.log().contains("http server failed") {
                break;
            }
            if let Some(st) = p.exited() {
                panic!("cartpulse run exited with {st}\n{}", p.log_tail(30));
            }
            match live::get(addr, "/readyz", &[]) {
                Ok(r) if r.status == 200 => return (p, addr, cfg),
                _ if start.elapsed() > Duration::from_secs(30) => {
                    panic!("cartpulse run not ready on {addr}\n{}", p.log_tail(30))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        p.stop(Duration::from_secs(10));
        assert!(attempt < 3, "no free port\n{}", p.log_tail(30));
    }
    unreachable!()
}

/// Posts `text` (NDJSON) to `/ingest` in bodies of about 1 MiB cut at line ends, waiting
/// out a 429; returns the number of records accepted.
fn ingest(addr: SocketAddr, text: &str) -> u64 {
    let mut accepted = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let cut = match rest.get(..1 << 20).and_then(|h| h.rfind('\n')) {
            Some(i) => i + 1,
            None => rest.len(),
        };
        let (body, tail) = rest.split_at(cut);
        loop {
            let r = live::request(
                addr,
                "POST",
                "/ingest",
                &[("Content-Type", "application/x-ndjson")],
                body.as_bytes(),
            )
            .expect("POST /ingest");
            if r.status == 429 {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            assert_eq!(r.status, 200, "POST /ingest: {}", r.text());
            let v = r.json();
            assert_eq!(v["dead_lettered"], 0, "{v}");
            accepted += v["accepted"].as_u64().unwrap();
            break;
        }
        rest = tail;
    }
    accepted
}

#[test]
fn stream_conversion_and_retention_equal_the_batch_views() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // 1. the events, as a file
    let gen_cfg = dir.join("gen.toml");
    std::fs::write(&gen_cfg, GEN).unwrap();
    let file = dir.join("events.jsonl");
    common::gen(
        LINES,
        SEED,
        &file,
        &[
            "--config",
            gen_cfg.to_str().unwrap(),
            "--rate",
            RATE,
            "--start-ms",
            START_MS,
        ],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines = parse_lines(&text);
    assert_eq!(lines.len() as u64, LINES);
    let distinct: BTreeSet<&str> = lines.iter().map(|l| l.id.as_str()).collect();
    let duplicates = lines.len() - distinct.len();
    assert!(duplicates > 0, "no duplicate lines to drop");

    // 2. the stream over them, up and serving once it has consumed them
    let (mut p, addr, cfg) = start(dir);
    assert_eq!(ingest(addr, &text), LINES);
    live::wait_for(
        "a checkpoint covering every posted byte",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            if let Some(st) = p.exited() {
                panic!("cartpulse run exited with {st}\n{}", p.log_tail(30));
            }
            match checkpointed_offset(&dir.join("ck")) {
                Some(n) if n == text.len() as u64 => Ok(()),
                n => Err(format!("{n:?} of {} bytes", text.len())),
            }
        },
    );
    let totals = || get_json(addr, "/api/metrics").0["totals"].clone();
    let before = totals();
    assert_eq!(before["events"], LINES, "{before}");
    assert_eq!(before["duplicates"], duplicates as u64, "{before}");
    assert_eq!(before["dead_letters"], 0, "{before}");
    let funnel = exact_rates(&get_json(addr, "/api/funnel").1);
    let (retention, _) = get_json(addr, "/api/retention");
    assert_eq!(totals(), before);
    let st = p.stop(Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "cartpulse run: {st:?}\n{}",
        p.log_tail(30)
    );
    eprintln!("stream: {:?}", t0.elapsed());

    // the archive holds exactly the file's distinct events
    let archive = cartpulse_lake::read_archive(&dir.join("lake")).unwrap();
    let ids: Vec<String> = archive
        .iter()
        .flat_map(|b| strings(b, "event_id"))
        .map(Option::unwrap)
        .collect();
    let got: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got.len(), ids.len(), "an event archived twice");
    assert!(
        got == distinct,
        "the archive is not the file's distinct events"
    );
    let late: usize = archive
        .iter()
        .map(|b| b.column_by_name("late").unwrap().as_boolean().true_count())
        .sum();

    // 3. the batch views over the archive
    let out = dir.join("batch");
    let o = common::cmd()
        .args(["batch", "--quiet", "--complete", "--archive"])
        .arg(dir.join("lake"))
        .arg("--out")
        .arg(&out)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "batch: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("batch: {:?}", t0.elapsed());

    // conversion per UTC day
    let stream: BTreeMap<i64, Conv> = funnel["by_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["start"].as_i64().unwrap(), stream_conv(r)))
        .collect();
    let mut batch = BTreeMap::new();
    for b in read_view(&out, "conversion_daily") {
        let (day, added, bought, converted, conv) = (
            days(&b, "day"),
            counts(&b, "users_added"),
            counts(&b, "users_checked_out"),
            counts(&b, "users_converted"),
            floats(&b, "conversion"),
        );
        for i in 0..b.num_rows() {
            // the stream has a row for a day with an add or a checkout
            if added[i] > 0 || bought[i] > 0 {
                let c = conv[i].unwrap_or(0.0);
                batch.insert(day[i], (added[i], bought[i], converted[i], c));
            }
        }
    }
    assert_same("conversion per day", &stream, &batch);
    for (d, c) in &stream {
        eprintln!("day {}: {c:?}", d / DAY_MS);
    }
    assert!(stream.len() >= 5, "{} days", stream.len());
    let adders: u64 = stream.values().map(|c| c.0).sum();
    let converted: u64 = stream.values().map(|c| c.2).sum();
    assert!(
        adders > 2_000 && converted > 500,
        "{adders} adders, {converted} converted"
    );

    // conversion per day and category
    let stream: BTreeMap<(i64, String), (u64, u64, f64)> = funnel["by_day_category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let c = stream_conv(r);
            assert_eq!(c.1, c.2, "a category row's buyers are its converted adders");
            (
                (
                    r["start"].as_i64().unwrap(),
                    r["category"].as_str().unwrap().to_string(),
                ),
                (c.0, c.2, c.3),
            )
        })
        .collect();
    let mut batch = BTreeMap::new();
    for b in read_view(&out, "conversion_category") {
        let (day, cat, added, converted, conv) = (
            days(&b, "day"),
            strings(&b, "category"),
            counts(&b, "users_added"),
            counts(&b, "users_converted"),
            floats(&b, "conversion"),
        );
        for i in 0..b.num_rows() {
            batch.insert(
                (day[i], cat[i].clone().unwrap()),
                (added[i], converted[i], conv[i].unwrap()),
            );
        }
    }
    assert_same("conversion per day and category", &stream, &batch);
    assert!(stream.len() >= 50, "{} day × category rows", stream.len());

    // conversion per hour: no batch view has it, so a plain recomputation from the
    // archive's rows (the same events)
    let stream: BTreeMap<i64, Conv> = funnel["by_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["start"].as_i64().unwrap(), stream_conv(r)))
        .collect();
    type Sets = (HashSet<String>, HashSet<String>);
    let mut hours: BTreeMap<i64, Sets> = BTreeMap::new();
    for b in &archive {
        let (ts, user, action) = (ints(b, "ts"), strings(b, "user_id"), strings(b, "action"));
        for i in 0..b.num_rows() {
            let h = ts[i].unwrap().div_euclid(HOUR_MS) * HOUR_MS;
            let u = user[i].clone().unwrap();
            match action[i].as_deref() {
                Some("add") => {
                    hours.entry(h).or_default().0.insert(u);
                }
                Some("checkout") => {
                    hours.entry(h).or_default().1.insert(u);
                }
                _ => {}
            }
        }
    }
    let batch: BTreeMap<i64, Conv> = hours
        .into_iter()
        .map(|(h, (a, b))| {
            let c = b.iter().filter(|u| a.contains(*u)).count() as u64;
            (
                h,
                (a.len() as u64, b.len() as u64, c, rate(a.len() as u64, c)),
            )
        })
        .collect();
    assert_same("conversion per hour", &stream, &batch);
    assert!(stream.len() >= 100, "{} hours", stream.len());

    // retention: cohort (first active UTC day) × days since
    let stream: BTreeMap<i64, Vec<u64>> = retention["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let active = c["active"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .collect();
            (c["day"].as_i64().unwrap(), active)
        })
        .collect();
    let mut cells = Vec::new();
    for b in read_view(&out, "retention") {
        let (cohort, since, active, size) = (
            days(&b, "cohort_day"),
            counts(&b, "days_since"),
            counts(&b, "active_users"),
            counts(&b, "cohort_users"),
        );
        for i in 0..b.num_rows() {
            cells.push((cohort[i], since[i] as i64, active[i], size[i]));
        }
    }
    // each stream row runs from the cohort's day to the latest day with events
    let latest = cells.iter().map(|c| c.0 + c.1 * DAY_MS).max().unwrap();
    let last_event = lines.iter().map(|l| l.ts).max().unwrap();
    assert_eq!(latest, last_event.div_euclid(DAY_MS) * DAY_MS);
    let mut batch: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for &(cohort, since, active, size) in &cells {
        let row = batch
            .entry(cohort)
            .or_insert_with(|| vec![0; ((latest - cohort) / DAY_MS + 1) as usize]);
        row[since as usize] = active;
        if since == 0 {
            assert_eq!(active, size, "cohort {cohort}: size");
        }
    }
    assert_same("retention", &stream, &batch);
    let users: u64 = stream.values().map(|r| r[0]).sum();
    let retained: u64 = stream.values().flat_map(|r| &r[1..]).sum();
    let cells_retained = stream
        .values()
        .flat_map(|r| &r[1..])
        .filter(|&&n| n > 0)
        .count();
    assert!(stream.len() >= 5 && users > 2_000, "{users} users");
    assert!(retained > 500 && cells_retained >= 10, "{retained} returns");
    // a last check on the data, independent of both: distinct users of the lines
    let user_ids: HashSet<&str> = lines.iter().map(|l| l.user.as_str()).collect();
    assert_eq!(users, user_ids.len() as u64);
    let adds = lines.iter().filter(|l| l.action == "add").count();

    eprintln!(
        "compared over {} lines ({} distinct events, {duplicates} duplicates, {late} late, \
         {adds} add lines), {users} users: {} days, {} cohorts, {retained} returns; {:?}",
        lines.len(),
        distinct.len(),
        funnel["by_day"].as_array().unwrap().len(),
        stream.len(),
        t0.elapsed()
    );
}
