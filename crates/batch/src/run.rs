//! The incremental driver: which days to recompute, DataFusion to compute them, and the
//! atomic writes that make a crash in the middle harmless.
//!
//! `OUT/_state.json` remembers every archive file already processed (name and size: a
//! published archive file never changes) and the horizon used. A run recomputes the days
//! whose input range overlaps a new file's hour or the stretch the horizon moved over;
//! anything else (a file gone or changed, other windows, a horizon moving back) rebuilds
//! everything. The state is written last, so an interrupted run simply repeats its work.

use crate::config::BatchJob;
use crate::views::{self, DayView, DAY_MS, TOTAL_VIEWS};
use crate::BatchError;
use cartpulse_engine::WindowSpec;
use cartpulse_lake::layout::HOUR_MS;
use cartpulse_lake::{published_files, ArchiveState};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STATE_FILE: &str = "_state.json";
pub const HORIZON_FILE: &str = "_horizon.json";
pub const BASKETS_FILE: &str = "baskets.txt";
/// Bumped when a view's definition changes, so old outputs are rebuilt.
const VIEWS_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct BatchState {
    fingerprint: String,
    /// Archive files processed (path relative to the archive → size).
    files: BTreeMap<String, u64>,
    horizon_ms: Option<i64>,
}

/// `OUT/_horizon.json`: what the batch views cover.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Horizon {
    /// The views are exact for event time before this (epoch ms; the end of the last
    /// complete hour partition). `None`: no partition is complete yet.
    pub horizon_ms: Option<i64>,
    /// The same, as RFC 3339.
    pub horizon: Option<String>,
    /// Earliest hour partition in the archive (epoch ms).
    pub first_partition_ms: Option<i64>,
    /// Whether the input was declared complete (`--complete`).
    pub complete: bool,
    /// The archive's own `complete_before_ms` at the time.
    pub archive_complete_before_ms: Option<i64>,
    pub user_window: WindowSpec,
    pub global_window: WindowSpec,
    /// Window views leave out rows the speed layer judged late, as it did.
    pub late_rows_in_windows: bool,
}

impl Horizon {
    pub fn read(out: &Path) -> Result<Horizon, BatchError> {
        let p = out.join(HORIZON_FILE);
        let b = fs::read(&p).map_err(|source| BatchError::Io {
            path: p.clone(),
            source,
        })?;
        serde_json::from_slice(&b).map_err(|e| BatchError::Invalid(format!("{}: {e}", p.display())))
    }
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct BatchReport {
    pub horizon_ms: Option<i64>,
    /// Everything was recomputed (first run, or the inputs changed in a way increments
    /// cannot follow).
    pub full: bool,
    pub archive_files: usize,
    pub new_files: usize,
    /// Days recomputed, `YYYY-MM-DD`.
    pub days: Vec<String>,
    /// Rows written per view in this run.
    pub rows: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// Recomputes what changed since the last run (see the module docs). Blocking; builds its
/// own Tokio runtime, so call it from a plain thread (or use [`run_batch_async`]).
pub fn run_batch(job: &BatchJob) -> Result<BatchReport, BatchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads(job))
        .enable_all()
        .build()
        .map_err(|source| BatchError::Io {
            path: PathBuf::from("<tokio runtime>"),
            source,
        })?;
    rt.block_on(run_batch_async(job))
}

/// Runs the batch every `job.config.interval` until `stop` is set (checked every second),
/// handing each run's outcome to `report`. For a long-running process: spawn it on a thread.
pub fn run_every(
    job: &BatchJob,
    stop: &AtomicBool,
    mut report: impl FnMut(Result<BatchReport, BatchError>),
) {
    while !stop.load(Ordering::Relaxed) {
        report(run_batch(job));
        let until = Instant::now() + job.config.interval;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1).min(until - Instant::now()));
        }
    }
}

fn threads(job: &BatchJob) -> usize {
    if job.config.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        job.config.threads
    }
}

/// The queries' memory pool: unbounded, or `memory_limit_mb` shared fairly between the
/// spilling operators of a query, which then spill to disk rather than fail.
fn runtime_env(job: &BatchJob) -> Result<Arc<RuntimeEnv>, BatchError> {
    let mut b = RuntimeEnvBuilder::new();
    if job.config.memory_limit_mb > 0 {
        let bytes = job.config.memory_limit_mb << 20;
        b = b.with_memory_pool(Arc::new(FairSpillPool::new(bytes)));
        if let Some(dir) = &job.config.spill_dir {
            fs::create_dir_all(dir).map_err(io(dir))?;
            b = b.with_disk_manager_builder(
                DiskManagerBuilder::default()
                    .with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
            );
        }
    }
    Ok(b.build_arc()?)
}

fn fingerprint(job: &BatchJob) -> String {
    format!(
        "v{VIEWS_VERSION} user={:?} global={:?} lookback={:?}",
        job.user_window, job.global_window, job.config.lookback
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn day_name(d: i64) -> String {
    chrono::DateTime::from_timestamp_millis(d)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

fn floor_day(t: i64) -> i64 {
    t - t.rem_euclid(DAY_MS)
}

pub async fn run_batch_async(job: &BatchJob) -> Result<BatchReport, BatchError> {
    recompute(job).await.map_err(|e| out_of_memory(job, e))
}

/// A query that failed for want of memory under a limit, said as such (the planner's
/// errors arrive wrapped, so the root cause is looked for).
fn out_of_memory(job: &BatchJob, e: BatchError) -> BatchError {
    match e {
        BatchError::Query { sql, source }
            if job.config.memory_limit_mb > 0
                && matches!(
                    source.find_root(),
                    datafusion::error::DataFusionError::ResourcesExhausted(_)
                ) =>
        {
            BatchError::Memory {
                limit_mb: job.config.memory_limit_mb,
                sql,
                source,
            }
        }
        e => e,
    }
}

async fn recompute(job: &BatchJob) -> Result<BatchReport, BatchError> {
    let started = Instant::now();
    job.config.validate().map_err(BatchError::Invalid)?;
    for (k, w) in [
        ("user_window", &job.user_window),
        ("global_window", &job.global_window),
    ] {
        w.validate()
            .map_err(|e| BatchError::Invalid(format!("{k}: {e}")))?;
    }
    if job.global_window.is_session() {
        return Err(BatchError::Invalid(
            "global_window: expected tumbling or sliding".into(),
        ));
    }
    fs::create_dir_all(&job.out).map_err(io(&job.out))?;
    let files: Vec<(i64, PathBuf, u64)> = published_files(&job.archive)?
        .into_iter()
        .map(|(h, p)| {
            let len = fs::metadata(&p).map_err(io(&p))?.len();
            Ok((h, p, len))
        })
        .collect::<Result<_, BatchError>>()?;
    let rel = |p: &Path| {
        p.strip_prefix(&job.archive)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let archive_state = ArchiveState::read(&job.archive)?;
    let archive_cb = archive_state.as_ref().and_then(|s| s.complete_before_ms);
    let horizon = if job.complete {
        files.iter().map(|f| (f.0 + 1) * HOUR_MS).max()
    } else {
        archive_cb
    };

    let old: BatchState = match fs::read(job.out.join(STATE_FILE)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => BatchState::default(),
    };
    let now_files: BTreeMap<String, u64> = files.iter().map(|f| (rel(&f.1), f.2)).collect();
    let full = old.fingerprint != fingerprint(job)
        || old
            .files
            .iter()
            .any(|(k, len)| now_files.get(k) != Some(len))
        || matches!((old.horizon_ms, horizon), (Some(a), Some(b)) if b < a)
        || (old.horizon_ms.is_some() && horizon.is_none());
    let mut report = BatchReport {
        horizon_ms: horizon,
        full,
        archive_files: files.len(),
        ..Default::default()
    };
    if full {
        for v in DayView::ALL.iter().map(|v| v.name()).chain(TOTAL_VIEWS) {
            let d = job.out.join(v);
            if d.exists() {
                fs::remove_dir_all(&d).map_err(io(&d))?;
            }
        }
    }
    let old_files = if full {
        BTreeMap::new()
    } else {
        old.files.clone()
    };
    let old_horizon = if full { None } else { old.horizon_ms };

    // what changed, as event-time ranges
    let mut changed: Vec<(i64, i64)> = Vec::new();
    for (h, p, len) in &files {
        if old_files.get(&rel(p)) != Some(len) {
            report.new_files += 1;
            changed.push((h * HOUR_MS, (h + 1) * HOUR_MS));
        }
    }
    if let Some(h) = horizon {
        if old_horizon != Some(h) {
            changed.push((old_horizon.unwrap_or(i64::MIN / 2), h));
        }
    }

    let mut days: BTreeSet<i64> = BTreeSet::new();
    if let (Some(h), Some(first)) = (horizon, files.first().map(|f| f.0 * HOUR_MS)) {
        let ext = job
            .user_window
            .extent()
            .max(job.global_window.extent())
            .as_millis() as i64;
        let mut d = floor_day(first - ext);
        while d < h {
            let (lo, hi) = views::input_range(job, d);
            if changed.iter().any(|&(a, b)| a < hi && lo < b) {
                days.insert(d);
            }
            d += DAY_MS;
        }
    }

    let bar = if job.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(
            (days.len() * DayView::ALL.len() + TOTAL_VIEWS.len() + 1) as u64,
        );
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .expect("valid template"),
        );
        b
    };
    let cfg = SessionConfig::new().with_target_partitions(threads(job));
    let runtime = runtime_env(job)?;
    if let Some(h) = horizon {
        for &d in &days {
            let (lo, hi) = views::input_range(job, d);
            let hi = hi.min(h);
            let paths: Vec<String> = files
                .iter()
                .filter(|f| f.0 * HOUR_MS < hi && (f.0 + 1) * HOUR_MS > lo)
                .map(|f| f.1.to_string_lossy().into_owned())
                .collect();
            let ctx = SessionContext::new_with_config_rt(cfg.clone(), runtime.clone());
            register_events(&ctx, paths).await?;
            let name = day_name(d);
            for v in DayView::ALL {
                bar.set_message(format!("{name} {}", v.name()));
                let path = job
                    .out
                    .join(v.name())
                    .join(format!("dt={name}"))
                    .join("part-0.parquet");
                let n = query_to_parquet(&ctx, &views::day_sql(job, v, d, h), &path).await?;
                *report.rows.entry(v.name().to_string()).or_default() += n;
                bar.inc(1);
            }
            report.days.push(name);
        }
    }
    if !days.is_empty() || full {
        let ctx = SessionContext::new_with_config_rt(cfg.clone(), runtime.clone());
        let mut have = true;
        for v in ["user_daily", "product_daily", "orders"] {
            let parts = day_files(&job.out.join(v))?;
            if parts.is_empty() {
                have = false;
                break;
            }
            let df = ctx
                .read_parquet(parts, ParquetReadOptions::default())
                .await?;
            ctx.register_table(v, df.into_view())?;
        }
        if have {
            for v in TOTAL_VIEWS {
                bar.set_message(v.to_string());
                let path = job.out.join(v).join("part-0.parquet");
                let n = query_to_parquet(&ctx, &views::total_sql(v), &path).await?;
                report.rows.insert(v.to_string(), n);
                bar.inc(1);
            }
            bar.set_message("baskets");
            let (_, batches) = query(
                &ctx,
                "SELECT items FROM orders ORDER BY checkout_ms, checkout_event_id",
            )
            .await?;
            let n = write_baskets(&job.out.join(BASKETS_FILE), &batches)?;
            report.rows.insert("baskets".into(), n);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let hz = Horizon {
        horizon_ms: horizon,
        horizon: horizon.map(|h| {
            chrono::DateTime::from_timestamp_millis(h)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
        first_partition_ms: files.first().map(|f| f.0 * HOUR_MS),
        complete: job.complete,
        archive_complete_before_ms: archive_cb,
        user_window: job.user_window.clone(),
        global_window: job.global_window.clone(),
        late_rows_in_windows: false,
    };
    write_atomic(
        &job.out.join(HORIZON_FILE),
        &serde_json::to_vec_pretty(&hz).expect("plain struct"),
    )?;
    let st = BatchState {
        fingerprint: fingerprint(job),
        files: now_files,
        horizon_ms: horizon,
    };
    write_atomic(
        &job.out.join(STATE_FILE),
        &serde_json::to_vec_pretty(&st).expect("plain struct"),
    )?;
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn register_events(ctx: &SessionContext, paths: Vec<String>) -> Result<(), BatchError> {
    let schema = cartpulse_lake::schema();
    if paths.is_empty() {
        let t = MemTable::try_new(schema, vec![vec![]])?;
        ctx.register_table("events", Arc::new(t))?;
        return Ok(());
    }
    let opts = ParquetReadOptions {
        schema: Some(&schema),
        ..Default::default()
    };
    let df = ctx.read_parquet(paths, opts).await?;
    ctx.register_table("events", df.into_view())?;
    Ok(())
}

async fn query(
    ctx: &SessionContext,
    sql: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>), BatchError> {
    let df = ctx.sql(sql).await.map_err(|e| BatchError::Query {
        sql: sql.to_string(),
        source: e,
    })?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(|e| BatchError::Query {
        sql: sql.to_string(),
        source: e,
    })?;
    Ok((schema, batches))
}

/// `dir/dt=*/part-0.parquet`, in day order.
fn day_files(dir: &Path) -> Result<Vec<String>, BatchError> {
    let mut v = Vec::new();
    if !dir.exists() {
        return Ok(v);
    }
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let p = e.map_err(io(dir))?.path().join("part-0.parquet");
        if p.exists() {
            v.push(p.to_string_lossy().into_owned());
        }
    }
    v.sort();
    Ok(v)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BatchError> {
    let dir = path.parent().expect("a file in a directory");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().expect("named").to_string_lossy()
    ));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(&tmp))?;
    Ok(())
}

/// Runs `sql` and writes its answer as a view file as the batches come (atomically
/// replacing an older one): a view never sits whole in memory. Returns the rows written.
async fn query_to_parquet(ctx: &SessionContext, sql: &str, path: &Path) -> Result<u64, BatchError> {
    use futures_util::StreamExt;
    let qerr = |source| BatchError::Query {
        sql: sql.to_string(),
        source,
    };
    let df = ctx.sql(sql).await.map_err(qerr)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(qerr)?;
    let mut w = ViewWriter::create(path, schema)?;
    while let Some(b) = stream.next().await {
        w.write(&b.map_err(qerr)?)?;
    }
    w.finish()
}

/// A view file being written: under a temporary name until [`ViewWriter::finish`].
struct ViewWriter {
    path: PathBuf,
    tmp: PathBuf,
    w: ArrowWriter<File>,
    rows: u64,
}

impl ViewWriter {
    fn create(path: &Path, schema: SchemaRef) -> Result<ViewWriter, BatchError> {
        let dir = path.parent().expect("a file in a directory");
        fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join(".part-0.parquet.tmp");
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let f = File::create(&tmp).map_err(io(&tmp))?;
        let w =
            ArrowWriter::try_new(f, schema, Some(props)).map_err(|source| BatchError::Parquet {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ViewWriter {
            path: path.to_path_buf(),
            tmp,
            w,
            rows: 0,
        })
    }

    fn write(&mut self, b: &RecordBatch) -> Result<(), BatchError> {
        self.w.write(b).map_err(|source| BatchError::Parquet {
            path: self.path.clone(),
            source,
        })?;
        self.rows += b.num_rows() as u64;
        Ok(())
    }

    fn finish(self) -> Result<u64, BatchError> {
        self.w.close().map_err(|source| BatchError::Parquet {
            path: self.path.clone(),
            source,
        })?;
        fs::rename(&self.tmp, &self.path).map_err(io(&self.tmp))?;
        Ok(self.rows)
    }
}

/// The basket file `cartpulse fpgrowth` reads: one order per line, items comma-separated.
fn write_baskets(path: &Path, batches: &[RecordBatch]) -> Result<u64, BatchError> {
    use datafusion::arrow::array::{Array, AsArray};
    let mut out = Vec::new();
    let mut n = 0;
    for b in batches {
        let items = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )?;
        let items = items.as_string::<i32>();
        for i in 0..items.len() {
            if items.is_valid(i) && !items.value(i).is_empty() {
                out.extend_from_slice(items.value(i).as_bytes());
                out.push(b'\n');
                n += 1;
            }
        }
    }
    write_atomic(path, &out)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;

    #[test]
    fn running_out_of_memory_under_a_limit_names_the_limit() {
        let mut job = BatchJob::new(
            "lake",
            "views",
            &cartpulse_engine::PipelineConfig::default(),
        );
        let failed = || BatchError::Query {
            sql: "SELECT 1".into(),
            source: DataFusionError::Context(
                "FinalHashAggregateStream".into(),
                Box::new(DataFusionError::ResourcesExhausted(
                    "Failed to allocate".into(),
                )),
            ),
        };
        // no limit set: the error is the query's own
        assert!(matches!(
            out_of_memory(&job, failed()),
            BatchError::Query { .. }
        ));
        job.config.memory_limit_mb = 512;
        let e = out_of_memory(&job, failed());
        let text = e.to_string();
        assert!(
            matches!(e, BatchError::Memory { limit_mb: 512, .. }),
            "{text}"
        );
        assert!(
            text.contains("memory_limit_mb = 512") && text.contains("SELECT 1"),
            "{text}"
        );
        // any other failure is left as it is
        let other = BatchError::Query {
            sql: "SELECT 1".into(),
            source: DataFusionError::Plan("no such column".into()),
        };
        assert!(matches!(
            out_of_memory(&job, other),
            BatchError::Query { .. }
        ));
    }

    #[test]
    fn a_tiny_memory_limit_is_refused_with_its_key() {
        let mut c = crate::BatchConfig {
            memory_limit_mb: 10,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("memory_limit_mb"));
        c.memory_limit_mb = 0;
        assert!(c.validate().is_ok());
    }
}
