//! Prints, as one JSON document, every SQL statement `cartpulse batch --complete` runs over an
//! archive from scratch: per day, the archive files it registers as `events` (the same
//! per-day pruning as `run.rs`) and the statement of each day view; then the total views
//! (over the daily `user_daily`, `product_daily` and `orders` outputs) and the basket query.
//! `scripts/bench_batch.sh` feeds it to DuckDB to run the same SQL over the same Parquet.
//!
//! ```text
//! cargo run --release -p cartpulse-batch --example dump_sql -- LAKE CONFIG.toml > sql.json
//! ```
//!
//! The windows come from the config's `[pipeline]`, the lookback from its `[batch]`, as in
//! `cartpulse batch --config`. The day set and horizon are computed as `run_batch` does for a
//! first, `--complete` run (every day whose input range holds an archive hour).

use cartpulse_batch::views::{self, DayView, DAY_MS, TOTAL_VIEWS};
use cartpulse_batch::{BatchConfig, BatchJob};
use cartpulse_engine::PipelineConfig;
use cartpulse_lake::layout::HOUR_MS;
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (archive, config) = match args.as_slice() {
        [a, c] => (a.clone(), c.clone()),
        _ => {
            eprintln!("usage: dump_sql ARCHIVE CONFIG.toml");
            std::process::exit(2);
        }
    };
    let text = std::fs::read_to_string(&config).expect("read the config file");
    let mut doc: toml::Table = toml::from_str(&text).expect("a TOML config file");
    let mut section = |k: &str| {
        doc.remove(k)
            .unwrap_or(toml::Value::Table(Default::default()))
    };
    let pipeline: PipelineConfig = section("pipeline").try_into().expect("[pipeline]");
    let batch: BatchConfig = section("batch").try_into().expect("[batch]");
    let mut job = BatchJob::new(&archive, "unused", &pipeline);
    job.config = batch;
    job.complete = true;

    // as run_batch_async: published files by hour; horizon = end of the last hour (--complete)
    let files = cartpulse_lake::published_files(job.archive.as_path()).expect("list the archive");
    let horizon = files
        .iter()
        .map(|f| (f.0 + 1) * HOUR_MS)
        .max()
        .expect("an archive with at least one published file");
    let first = files[0].0 * HOUR_MS;
    let ext = job
        .user_window
        .extent()
        .max(job.global_window.extent())
        .as_millis() as i64;
    let mut days = Vec::new();
    let mut d = (first - ext) - (first - ext).rem_euclid(DAY_MS);
    while d < horizon {
        let (lo, hi) = views::input_range(&job, d);
        let hi = hi.min(horizon);
        // a first run: every file is new, so a day is computed when its input range
        // overlaps any archive hour (or the stretch up to the horizon, i.e. all of them)
        let paths: Vec<String> = files
            .iter()
            .filter(|f| f.0 * HOUR_MS < hi && (f.0 + 1) * HOUR_MS > lo)
            .map(|f| f.1.to_string_lossy().into_owned())
            .collect();
        if lo < horizon {
            let name = chrono::DateTime::from_timestamp_millis(d)
                .unwrap_or_default()
                .format("%Y-%m-%d")
                .to_string();
            let statements: Vec<_> = DayView::ALL
                .iter()
                .map(|&v| json!({"view": v.name(), "sql": views::day_sql(&job, v, d, horizon)}))
                .collect();
            days.push(json!({
                "day": name,
                "day_ms": d,
                "input": [lo, hi],
                "files": paths,
                "statements": statements,
            }));
        }
        d += DAY_MS;
    }
    let totals: Vec<_> = TOTAL_VIEWS
        .iter()
        .map(|v| json!({"view": v, "sql": views::total_sql(v)}))
        .collect();
    let out = json!({
        "archive": archive,
        "horizon_ms": horizon,
        "user_window": format!("{:?}", job.user_window),
        "global_window": format!("{:?}", job.global_window),
        "lookback_ms": job.config.lookback.as_millis() as i64,
        "days": days,
        "totals": totals,
        "baskets_sql": "SELECT items FROM orders ORDER BY checkout_ms, checkout_event_id",
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("plain JSON")
    );
}
