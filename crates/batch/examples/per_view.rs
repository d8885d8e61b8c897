//! Seconds per view of the batch layer's statements in DataFusion: runs the statements
//! `dump_sql` printed the way `run.rs` does (a session per day with `events` over that day's
//! archive files, `collect`, a zstd Parquet file per view and day; then the total views over
//! the daily files) and times each. `cartpulse batch` reports only its total; this is for
//! the per-view columns of BENCHMARKS.md (scripts/bench_batch.sh).
//!
//! ```text
//! cargo run --release -p cartpulse-batch --example per_view -- SQL_JSON OUT_DIR [threads]
//! ```

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

async fn run_to(ctx: &SessionContext, sql: &str, path: &Path) -> u64 {
    let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    let mut n = 0;
    for b in &batches {
        w.write(b).unwrap();
        n += b.num_rows() as u64;
    }
    w.close().unwrap();
    n
}

async fn main_async(plan: Value, out: &Path, threads: usize) {
    let cfg = SessionConfig::new().with_target_partitions(threads);
    let mut secs: BTreeMap<String, f64> = BTreeMap::new();
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    let t0 = Instant::now();
    for day in plan["days"].as_array().unwrap() {
        let ctx = SessionContext::new_with_config(cfg.clone());
        let files: Vec<String> = day["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        let schema = cartpulse_lake::schema();
        if files.is_empty() {
            let t = MemTable::try_new(schema, vec![vec![]]).unwrap();
            ctx.register_table("events", Arc::new(t)).unwrap();
        } else {
            let opts = ParquetReadOptions {
                schema: Some(&schema),
                ..Default::default()
            };
            let df = ctx.read_parquet(files, opts).await.unwrap();
            ctx.register_table("events", df.into_view()).unwrap();
        }
        let name = day["day"].as_str().unwrap();
        for st in day["statements"].as_array().unwrap() {
            let v = st["view"].as_str().unwrap();
            let t = Instant::now();
            let p = out
                .join(v)
                .join(format!("dt={name}"))
                .join("part-0.parquet");
            let n = run_to(&ctx, st["sql"].as_str().unwrap(), &p).await;
            *secs.entry(v.into()).or_default() += t.elapsed().as_secs_f64();
            *rows.entry(v.into()).or_default() += n;
        }
    }
    let ctx = SessionContext::new_with_config(cfg);
    for v in ["user_daily", "product_daily", "orders"] {
        let mut parts: Vec<String> = std::fs::read_dir(out.join(v))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .join("part-0.parquet")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        parts.sort();
        let df = ctx
            .read_parquet(parts, ParquetReadOptions::default())
            .await
            .unwrap();
        ctx.register_table(v, df.into_view()).unwrap();
    }
    for st in plan["totals"].as_array().unwrap() {
        let v = st["view"].as_str().unwrap();
        let t = Instant::now();
        let n = run_to(
            &ctx,
            st["sql"].as_str().unwrap(),
            &out.join(v).join("part-0.parquet"),
        )
        .await;
        secs.insert(v.into(), t.elapsed().as_secs_f64());
        rows.insert(v.into(), n);
    }
    let t = Instant::now();
    let n = run_to(
        &ctx,
        plan["baskets_sql"].as_str().unwrap(),
        &out.join("baskets.parquet"),
    )
    .await;
    secs.insert("baskets".into(), t.elapsed().as_secs_f64());
    rows.insert("baskets".into(), n);
    println!(
        "{}",
        serde_json::json!({
            "total_s": t0.elapsed().as_secs_f64(),
            "seconds": secs,
            "rows": rows,
            "threads": threads,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (plan, out) = match args.as_slice() {
        [p, o, ..] => (p, o),
        _ => {
            eprintln!("usage: per_view SQL_JSON OUT_DIR [threads]");
            std::process::exit(2);
        }
    };
    let threads: usize = args.get(2).map_or(2, |t| t.parse().expect("threads"));
    let plan: Value =
        serde_json::from_slice(&std::fs::read(plan).expect("read SQL_JSON")).expect("JSON");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(main_async(plan, Path::new(out), threads));
}
