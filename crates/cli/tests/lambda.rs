//! The Lambda architecture end to end: the pipeline writes its speed-layer windows (JSONL)
//! and the history (Parquet archive); `cartpulse batch` recomputes the views from the
//! archive; `cartpulse verify` must find them equal, field by field — and must notice a
//! deliberately altered speed record. Also: the archive read by DuckDB as a warehouse
//! would, incremental batch runs equal to a from-scratch one, and the archive's
//! exactly-once publication under SIGKILL.

mod common;

use cartpulse_lake::arrow::array::{Array, AsArray, RecordBatch};
use cartpulse_lake::read_archive;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn shared_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lambda");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `events` generated events at `rate` per simulated second (deterministic, so generated
/// once per build directory and shared by the tests).
fn input(events: u64, rate: &str) -> PathBuf {
    let p = shared_dir().join(format!("events-{events}-{rate}.jsonl"));
    if !p.exists() {
        let tmp = shared_dir().join(format!("events-{events}.{}.tmp", std::process::id()));
        gen(events, 11, &tmp, &["--rate", rate]);
        std::fs::rename(&tmp, &p).unwrap();
    }
    p
}

/// A `run` config: file source, the JSONL sink (with the `events` stream) and the archive.
fn config(dir: &Path, input: &Path, pipeline: &str, archive: &str) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
shards = 2
{pipeline}

[pipeline.checkpoint]
dir = "{ck}"
interval = "200ms"

[source]
type = "file"
path = "{input}"
format = "json"

[[sinks]]
type = "jsonl"
dir = "{speed}"
events = true

[[sinks]]
type = "parquet"
dir = "{lake}"
{archive}
"#,
        ck = dir.join("ck").display(),
        input = input.display(),
        speed = dir.join("speed").display(),
        lake = dir.join("lake").display(),
    );
    let p = dir.join("cartpulse.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_pipeline(cfg: &Path) {
    let o = cmd()
        .args(["run", "--config"])
        .arg(cfg)
        .output()
        .expect("run cartpulse run");
    assert!(o.status.success(), "run failed: {}", show(&o));
}

fn batch(archive: &Path, out: &Path, cfg: &Path, extra: &[&str]) -> Output {
    let o = cmd()
        .args(["batch", "--quiet", "--archive"])
        .arg(archive)
        .arg("--out")
        .arg(out)
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .output()
        .expect("run cartpulse batch");
    assert!(o.status.success(), "batch failed: {}", show(&o));
    o
}

fn verify(speed: &Path, out: &Path) -> Output {
    cmd()
        .args(["verify", "--speed"])
        .arg(speed)
        .arg("--batch")
        .arg(out)
        .output()
        .expect("run cartpulse verify")
}

/// `"<stream>: N windows compared, M equal"` from verify's report.
fn compared(report: &str, stream: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("{stream}:")))
        .unwrap_or_else(|| panic!("no {stream} line in {report}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

fn string_col(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = cartpulse_lake::arrow::compute::cast(
        b.column_by_name(name).unwrap(),
        &cartpulse_lake::arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let c = c.as_string::<i32>();
    (0..c.len())
        .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
        .collect()
}

fn archived_ids(lake: &Path) -> Vec<String> {
    let mut ids: Vec<String> = read_archive(lake)
        .unwrap()
        .iter()
        .flat_map(|b| string_col(b, "event_id"))
        .map(Option::unwrap)
        .collect();
    ids.sort();
    ids
}

/// action → (count, Σ qty×price in 10⁻⁴ units).
type Totals = BTreeMap<String, (u64, i64)>;

/// The totals of the pipeline's own `events` stream.
fn own_totals(speed: &Path) -> Totals {
    let mut t = Totals::new();
    for l in lines(speed, "events") {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let action = v["action"].as_str().unwrap().to_string();
        let qty = v["qty"].as_i64();
        let price = v.get("price").map(|_| money_field(&l, "price"));
        let e = t.entry(action).or_default();
        e.0 += 1;
        if let (Some(q), Some(p)) = (qty, price) {
            e.1 += q * p;
        }
    }
    t
}

/// The totals and the number of hour partitions, as DuckDB (from PyPI, in a venv under
/// target/) reads the archive.
fn duckdb_totals(lake: &Path) -> Option<(Totals, u64)> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("duckdb-venv");
    let py = venv.join("bin/python");
    let ok = |py: &Path| {
        std::process::Command::new(py)
            .args(["-c", "import duckdb"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&py) {
        // what scripts/services.d/duckdb.sh does, for a run without it
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(&py)
                .args(["-m", "pip", "install", "--quiet", "duckdb"])
                .status()
                .is_ok_and(|s| s.success());
        if !made || !ok(&py) {
            eprintln!(
                "\n********************************************************************\n\
                 SKIPPED the DuckDB check: no venv with duckdb at {} and none could be \
                 created (run scripts/services.d/duckdb.sh)\n\
                 ********************************************************************\n",
                venv.display()
            );
            return None;
        }
    }
    let script = format!(
        r#"
import duckdb
src = "read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
con = duckdb.connect()
for action, n, v in con.execute(f"SELECT action, count(*), CAST(sum(CAST(qty AS DECIMAL(18,0)) * price) AS VARCHAR) FROM {{src}} GROUP BY action ORDER BY action").fetchall():
    print("action", action, n, v if v is not None else "null")
print("partitions", con.execute(f"SELECT count(DISTINCT (dt, hour)) FROM {{src}}").fetchone()[0])
print("types", ",".join(f"{{c}}:{{t}}" for c, t in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {{src}})").fetchall()))
"#,
        root = lake.display()
    );
    let o = std::process::Command::new(&py)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "duckdb failed: {}", show(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let mut t = BTreeMap::new();
    let mut parts = 0;
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f[0] {
            "action" => {
                let v = if f[3] == "null" { 0 } else { dec(f[3]) };
                t.insert(f[1].to_string(), (f[2].parse().unwrap(), v));
            }
            "partitions" => parts = f[1].parse().unwrap(),
            "types" => {
                // as a warehouse sees them: no cast needed
                for want in [
                    "ts:TIMESTAMP WITH TIME ZONE",
                    "price:DECIMAL(18,4)",
                    "order_value:DECIMAL(18,4)",
                    "qty:INTEGER",
                    "late:BOOLEAN",
                    "event_id:VARCHAR",
                ] {
                    assert!(l.contains(want), "{want} not in {l}");
                }
                assert!(l.contains("dt:") && l.contains("hour:"), "{l}");
            }
            _ => panic!("unexpected duckdb output {l}"),
        }
    }
    Some((t, parts))
}

/// A day of events through both layers, with a tight watermark so some events are late.
#[test]
fn a_day_of_speed_windows_equals_the_batch_recomputation() {
    // 200k events at ~2.3 per simulated second: ~24.7 h of event time
    let input = input(200_000, "2.3148");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &input, "out_of_orderness = \"1s\"", "");
    let t = Instant::now();
    run_pipeline(&cfg);
    eprintln!("pipeline: {:?}", t.elapsed());
    let (speed, lake, out) = (
        dir.path().join("speed"),
        dir.path().join("lake"),
        dir.path().join("batch"),
    );

    // the archive holds exactly the events stream, late ones included, hour-partitioned
    let mut stream_ids: Vec<String> = lines(&speed, "events")
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    stream_ids.sort();
    let ids = archived_ids(&lake);
    assert_eq!(ids.len(), stream_ids.len());
    assert_eq!(ids, stream_ids);
    assert!(ids.len() > 190_000);
    let late: usize = read_archive(&lake)
        .unwrap()
        .iter()
        .map(|b| b.column_by_name("late").unwrap().as_boolean().true_count())
        .sum();
    assert!(late > 0, "the 1 s watermark should make some events late");
    assert_eq!(late, lines(&speed, "late_events").len());
    let hours = std::fs::read_dir(lake.join("dt=2025-11-24"))
        .unwrap()
        .count();
    assert_eq!(hours, 8, "16:00 … 23:00 on the first day");
    // everything committed is published when the pipeline ends
    assert_eq!(files_under(&lake.join("_staging")), Vec::<PathBuf>::new());

    let t = Instant::now();
    let o = batch(&lake, &out, &cfg, &["--complete"]);
    eprintln!(
        "batch: {:?}\n{}",
        t.elapsed(),
        String::from_utf8_lossy(&o.stderr)
    );
    for v in [
        "user_windows",
        "global_windows",
        "user_daily",
        "product_daily",
        "conversion_daily",
        "conversion_category",
        "orders",
        "sessions",
        "users",
        "products",
        "retention",
    ] {
        assert!(out.join(v).is_dir(), "view {v} missing");
    }
    let hz: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_horizon.json")).unwrap()).unwrap();
    assert_eq!(hz["complete"], true);

    let o = verify(&speed, &out);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "verify: {}", show(&o));
    assert!(report.contains("EQUAL"), "{report}");
    let (n, eq) = compared(&report, "user_windows");
    assert_eq!(n, eq);
    assert_eq!(
        n as usize,
        lines(&speed, "user_windows").len(),
        "every speed window compared"
    );
    let (n, _) = compared(&report, "global_windows");
    assert_eq!(n as usize, lines(&speed, "global_windows").len());

    // a second run finds nothing new
    let o = batch(&lake, &out, &cfg, &["--complete"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("(0 new), 0 days recomputed"), "{err}");

    // one cent more in one speed record is reported, with the window, user and field
    let altered = dir.path().join("altered");
    for s in ["user_windows", "global_windows"] {
        std::fs::create_dir_all(altered.join(s)).unwrap();
        for p in part_files(&speed, s) {
            std::fs::copy(&p, altered.join(s).join(p.file_name().unwrap())).unwrap();
        }
    }
    let victim = part_files(&altered, "user_windows")
        .into_iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("\"adds\":1"))
        .unwrap();
    let text = std::fs::read_to_string(&victim).unwrap();
    let line = text.lines().find(|l| l.contains("\"adds\":1")).unwrap();
    let v = money_field(line, "value_added");
    let user = serde_json::from_str::<serde_json::Value>(line).unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let changed = line.replace(
        &format!("\"value_added\":{}", raw_num(line, "value_added")),
        &format!(
            "\"value_added\":{}.{:04}",
            (v + 100) / 10_000,
            (v + 100) % 10_000
        ),
    );
    assert_ne!(changed, line);
    std::fs::write(&victim, text.replacen(line, &changed, 1)).unwrap();
    let o = verify(&altered, &out);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        !o.status.success(),
        "an altered record must fail verify: {report}"
    );
    assert!(report.contains("MISMATCH"), "{report}");
    let diff = report
        .lines()
        .find(|l| l.contains("DIFF"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        diff.contains(&user) && diff.contains("value_added"),
        "{diff}"
    );
    assert_eq!(report.matches("DIFF").count(), 1, "{report}");

    // the basket file is what `cartpulse fpgrowth` reads
    let baskets = std::fs::read_to_string(out.join("baskets.txt")).unwrap();
    assert!(
        baskets.lines().count() > 1000,
        "{} baskets",
        baskets.lines().count()
    );
    assert!(baskets
        .lines()
        .all(|l| !l.is_empty() && l.split(',').all(|s| s.starts_with('p'))));
    let o = cmd()
        .args(["fpgrowth", "--min-support", "0.002", "--input"])
        .arg(out.join("baskets.txt"))
        .arg("--out")
        .arg(dir.path().join("fp"))
        .output()
        .unwrap();
    assert!(o.status.success(), "fpgrowth: {}", show(&o));

    // DuckDB sees the same numbers as the pipeline
    let own = own_totals(&speed);
    if let Some((duck, partitions)) = duckdb_totals(&lake) {
        assert_eq!(duck, own);
        // one partition per hour that has events
        let hours: std::collections::BTreeSet<i64> = lines(&speed, "events")
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["ts"].as_i64().unwrap().div_euclid(3_600_000)
            })
            .collect();
        assert_eq!(partitions, hours.len() as u64);
    }
}

/// Sliding windows, and the archive's own horizon (no `--complete`): only closed hours are
/// compared. The batch run in two steps (half the archive, then all of it) must equal a run
/// from scratch.
#[test]
fn sliding_windows_reconcile_and_increments_equal_a_full_run() {
    let input = input(100_000, "2.3148");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &input,
        "user_window = { kind = \"sliding\", size = \"1m\", slide = \"20s\" }\n\
         global_window = { kind = \"sliding\", size = \"30s\", slide = \"10s\" }",
        "close_after = \"10m\"",
    );
    run_pipeline(&cfg);
    let (speed, lake) = (dir.path().join("speed"), dir.path().join("lake"));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake.join("_archive.json")).unwrap()).unwrap();
    let cb = state["complete_before_ms"].as_i64().unwrap();
    let max = state["max_event_ms"].as_i64().unwrap();
    assert!(
        cb <= max - 600_000 && cb > max - 600_000 - 3_600_000,
        "{state}"
    );

    // from scratch
    let full = dir.path().join("full");
    batch(&lake, &full, &cfg, &[]);
    let o = verify(&speed, &full);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "verify: {}", show(&o));
    let (n, eq) = compared(&report, "user_windows");
    assert!(n > 10_000 && n == eq, "{report}");
    assert!(
        !report.contains(", 0 after the horizon"),
        "open hours are not compared: {report}"
    );

    // the first half of the partitions, then the rest
    let part = dir.path().join("partial");
    let files = cartpulse_lake::published_files(&lake).unwrap();
    let half = files.len() / 2;
    let cut_hour = files[half].0;
    let copy = |from: &Path| {
        let rel = from.strip_prefix(&lake).unwrap();
        std::fs::create_dir_all(part.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(from, part.join(rel)).unwrap();
    };
    for (h, p) in &files {
        if *h < cut_hour {
            copy(p);
        }
    }
    std::fs::write(
        part.join("_archive.json"),
        format!(
            "{{\"committed_epoch\":1,\"max_event_ms\":null,\"complete_before_ms\":{}}}",
            cut_hour * 3_600_000
        ),
    )
    .unwrap();
    let inc = dir.path().join("inc");
    batch(&part, &inc, &cfg, &[]);
    for (h, p) in &files {
        if *h >= cut_hour {
            copy(p);
        }
    }
    std::fs::copy(lake.join("_archive.json"), part.join("_archive.json")).unwrap();
    let o = batch(&part, &inc, &cfg, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("full rebuild"), "{err}");
    assert!(
        err.contains("1 day recomputed") || err.contains("2 days recomputed"),
        "{err}"
    );
    same_views("incremental", &inc, &full);

    // with a memory limit (a pool shared by the queries' operators, spilling to its own
    // directory) the batch layer writes the same views; BENCHMARKS.md shows the spilling at
    // 100 M events, where it matters
    let tight = dir.path().join("tight.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[batch]\nmemory_limit_mb = 512\nspill_dir = \"{}\"\n",
        dir.path().join("spill").display()
    ));
    std::fs::write(&tight, text).unwrap();
    let low = dir.path().join("low");
    batch(&lake, &low, &tight, &[]);
    same_views("512 MiB", &low, &full);
}

/// Every view (and the basket file) under `got` holds the rows of the one under `want`.
fn same_views(what: &str, got: &Path, want: &Path) {
    for view in [
        "user_windows",
        "global_windows",
        "user_daily",
        "product_daily",
        "conversion_daily",
        "conversion_category",
        "orders",
        "sessions",
        "users",
        "products",
        "retention",
    ] {
        assert_eq!(
            view_rows(&got.join(view)),
            view_rows(&want.join(view)),
            "view {view}: {what} != from scratch"
        );
    }
    assert_eq!(
        std::fs::read(got.join("baskets.txt")).unwrap(),
        std::fs::read(want.join("baskets.txt")).unwrap(),
        "baskets: {what}"
    );
}

/// Every file under `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Every row of every Parquet file under `dir`, rendered, sorted.
fn view_rows(dir: &Path) -> Vec<String> {
    use cartpulse_lake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut rows = Vec::new();
    for f in files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
    {
        let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in r {
            let b = b.unwrap();
            let cols: Vec<Vec<Option<String>>> = b
                .schema()
                .fields()
                .iter()
                .map(|fld| string_col(&b, fld.name()))
                .collect();
            for i in 0..b.num_rows() {
                rows.push(
                    cols.iter()
                        .map(|c| format!("{:?}", c[i]))
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
        }
    }
    rows.sort();
    rows
}

/// SIGKILL at random moments, restart, repeat: the archive ends with exactly the rows of an
/// uninterrupted run — no event missing, none twice.
#[test]
fn the_archive_is_exactly_once_under_sigkill() {
    // 20 events per simulated second: ~4 h of event time, so hours close mid-run; a small
    // roll size publishes often, so kills land inside publications too
    let input = input(300_000, "20");
    let archive = "roll_bytes = 2000000\nclose_after = \"1m\"";
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &input, "", archive);
        let t = Instant::now();
        run_pipeline(&cfg);
        let took = t.elapsed();
        let ids = archived_ids(&dir.path().join("lake"));
        (ids, took)
    };
    let (want, took) = reference;
    assert!(want.len() > 290_000);
    assert!(
        want.windows(2).all(|w| w[0] != w[1]),
        "duplicate ids in the reference"
    );
    let mut rng = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let mut kills_mid_run = 0;
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &input, "", archive);
        for attempt in 0.. {
            let mut child = cmd()
                .args(["run", "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let wait = if attempt < 3 {
                Duration::from_secs_f64(took.as_secs_f64() * rng.range_f64(0.1, 0.9))
            } else {
                Duration::from_secs(600)
            };
            let start = Instant::now();
            let mut done = None;
            while start.elapsed() < wait {
                if let Some(s) = child.try_wait().unwrap() {
                    done = Some(s);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            match done {
                Some(s) => {
                    assert!(s.success(), "round {round} attempt {attempt}: run failed");
                    break;
                }
                None => {
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    child.wait().unwrap();
                    kills_mid_run += 1;
                    eprintln!("round {round}: killed after {:?}", wait);
                }
            }
        }
        let got = archived_ids(&dir.path().join("lake"));
        assert_eq!(got.len(), want.len(), "round {round}: row count");
        assert!(
            got == want,
            "round {round}: the archive's event ids differ from the reference"
        );
    }
    assert!(kills_mid_run > 0, "no kill landed while the pipeline ran");
}
