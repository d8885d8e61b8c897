//! End to end, exactly-once into PostgreSQL: `cartpulse run --config` with a Postgres store
//! and checkpoints, SIGKILLed at random moments and restarted until it finishes, must leave
//! the Postgres tables holding exactly the results of an uninterrupted run (read from its
//! JSONL sink, applying each stream's upsert semantics): the same rows, none twice.
//! Needs the PostgreSQL server on 127.0.0.1:5432 (user postgres, database test).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

fn config(input: &Path, ck: &Path, sinks: &str) -> String {
    format!(
        r#"
[pipeline]
shards = 2
abandon_after = "2m"
[pipeline.checkpoint]
dir = "{}"
interval = "100ms"
[source]
type = "file"
path = "{}"
{sinks}
"#,
        ck.display(),
        input.display()
    )
}

fn run_to_end(cfg: &Path) -> Duration {
    let t = Instant::now();
    let o = cmd().arg("run").arg("--config").arg(cfg).output().unwrap();
    assert!(
        o.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed()
}

/// Numbers compared by value (NUMERIC(18,4) prints `59.9700` for `59.97`); `update` ignored.
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
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

fn key(stream: &str, v: &Value) -> String {
    let f = |k: &str| {
        let x = &v[k];
        x.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| x.to_string())
    };
    match stream {
        "user_windows" => format!("{}|{}|{}", f("user_id"), f("window_start"), f("window_end")),
        "global_windows" => format!("{}|{}", f("window_start"), f("window_end")),
        "abandoned_carts" => format!("{}|{}", f("user_id"), f("abandoned_at")),
        "carts" => f("user_id"),
        _ => unreachable!(),
    }
}

/// The final state of a keyed stream in the JSONL output: the last record of each key, in
/// commit order; a cart without lines removes the key.
fn reference_keyed(out: &Path, stream: &str) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for l in lines(out, stream) {
        let v: Value = serde_json::from_str(&l).unwrap();
        let k = key(stream, &v);
        if stream == "carts" && v["lines"].as_array().is_some_and(|l| l.is_empty()) {
            m.remove(&k);
        } else {
            m.insert(k, v);
        }
    }
    m
}

struct Pg {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    schema: String,
}

impl Pg {
    fn rows(&self, table: &str) -> Vec<Value> {
        self.rt
            .block_on(self.client.query(
                &format!(
                    "SELECT row_to_json(t)::text FROM \"{}\".{table} t",
                    self.schema
                ),
                &[],
            ))
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
            .collect()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.client.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        )));
    }
}

#[test]
fn postgres_store_is_exactly_once_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("gen.jsonl");
    gen(150_000, 11, &raw, &["--rate", "200"]);
    // malformed lines: dead letters are appended rows, the easiest to duplicate
    let mut input = String::new();
    for (i, l) in std::fs::read_to_string(&raw).unwrap().lines().enumerate() {
        if i % 3000 == 2999 {
            input.push_str(&format!("{{\"broken\": {i}\n"));
        }
        input.push_str(l);
        input.push('\n');
    }
    let input_path = d.join("events.jsonl");
    std::fs::write(&input_path, input).unwrap();

    // the uninterrupted reference, through the JSONL sink
    let ref_out = d.join("ref-out");
    let ref_cfg = d.join("ref.toml");
    std::fs::write(
        &ref_cfg,
        config(
            &input_path,
            &d.join("ref-ck"),
            &format!(
                "[[sinks]]\ntype = \"jsonl\"\ndir = \"{}\"\ncarts = true\n",
                ref_out.display()
            ),
        ),
    )
    .unwrap();
    let ref_time = run_to_end(&ref_cfg);

    let schema = format!("e2e_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(PG, tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    let pg = Pg {
        rt,
        client,
        schema: schema.clone(),
    };

    let cfg = d.join("pg.toml");
    std::fs::write(
        &cfg,
        config(
            &input_path,
            &d.join("pg-ck"),
            &format!("[[stores]]\ntype = \"postgres\"\nurl = \"{PG}\"\nschema = \"{schema}\"\n"),
        ),
    )
    .unwrap();
    // a first, uninterrupted-length guess of how long a run with the store takes
    let mut rng = Rng::new(std::process::id() as u64);
    let horizon = ref_time.mul_f64(2.0).max(Duration::from_millis(600));
    let mut kills = 0;
    let mut finished = false;
    for _ in 0..4 {
        let wait = Duration::from_millis(100 + rng.below(horizon.as_millis() as u64));
        let mut child = cmd()
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while t.elapsed() < wait && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        let st = child.wait_with_output().unwrap();
        if st.status.signal() == Some(libc::SIGKILL) {
            kills += 1;
        } else {
            assert!(
                st.status.success(),
                "run failed: {}",
                String::from_utf8_lossy(&st.stderr)
            );
            finished = true;
            break;
        }
    }
    eprintln!("reference run {ref_time:?}; {kills} SIGKILLs, finished early: {finished}");
    assert!(
        kills >= 1,
        "no run was killed: the kills come too late to test anything"
    );
    if !finished {
        run_to_end(&cfg);
    }

    for stream in ["user_windows", "global_windows", "abandoned_carts", "carts"] {
        let want = reference_keyed(&ref_out, stream);
        let got: BTreeMap<String, Value> = pg
            .rows(stream)
            .into_iter()
            .map(|r| (key(stream, &r), r))
            .collect();
        assert!(!want.is_empty(), "{stream}: the reference has rows");
        assert_eq!(want.len(), got.len(), "{stream}: row count");
        for (k, w) in &want {
            let g = got
                .get(k)
                .unwrap_or_else(|| panic!("{stream}: {k} missing"));
            assert!(same(w, g), "{stream} {k}: want {w}, got {g}");
        }
    }
    // appended streams: the same multiset of records
    for (stream, col) in [("dead_letter", Some("payload")), ("late_events", None)] {
        let want: Vec<Value> = lines(&ref_out, stream)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut got: Vec<Value> = pg
            .rows(stream)
            .into_iter()
            .map(|mut r| match col {
                Some(c) => r[c].take(),
                None => r,
            })
            .collect();
        assert_eq!(want.len(), got.len(), "{stream}: row count");
        if stream == "dead_letter" {
            assert!(!want.is_empty());
        }
        for w in &want {
            let i = got
                .iter()
                .position(|g| same(w, g))
                .unwrap_or_else(|| panic!("{stream}: {w} missing"));
            got.swap_remove(i);
        }
    }
}
