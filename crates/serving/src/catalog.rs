//! The query surface: one DataFusion context per query over the history, the batch views, the
//! live windows, and the merged views built from them.
//!
//! Merging (H = the batch horizon, D = the start of H's day):
//!
//! * `user_windows`, `global_windows`: the batch view's windows ending at or before H, then
//!   the speed layer's windows ending after it (from [`LiveWindows`]; without a live side,
//!   e.g. `cartpulse sql`, the batch SQL over the recent history stands in for it).
//! * day views (`user_daily`, `product_daily`, `conversion_daily`, `conversion_category`,
//!   `orders`, `sessions`): the batch view's days before D, then the days from D on
//!   computed at query time by the batch layer's own SQL over the recent history. Distinct
//!   counts (users who added, who converted) do not add across a split inside a day, so the
//!   split is at a day boundary and the open days are computed whole.
//! * totals (`users`, `products`, `retention`): the batch layer's SQL over the merged daily
//!   views — one exact answer over all history, current to the last checkpoint.
//!
//! `events` is every committed event: the archive's published files plus the committed
//! epochs still staged (see `cartpulse_lake::archive_snapshot`).

use crate::live::{LiveSnapshot, LiveWindows, GAUGES, GLOBAL_COLUMNS};
use crate::{ServingConfig, ServingError};
use cartpulse_batch::views::{self, DayView, DAY_MS, TOTAL_VIEWS};
use cartpulse_batch::{BatchJob, Horizon};
use cartpulse_lake::layout::HOUR_MS;
use cartpulse_lake::{archive_snapshot, read_staged, ArchiveError, ArchiveSnapshot};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{cast, col, lit};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tables every query can name, with what they hold.
pub const TABLES: [(&str, &str); 19] = [
    ("events", "every committed event (archive + committed staged epochs)"),
    ("archive", "the published Parquet history"),
    ("user_windows", "per-user windows: batch up to the horizon, speed layer after it"),
    ("global_windows", "global windows: batch up to the horizon, speed layer after it (carts-now gauges from the speed layer only)"),
    ("user_daily", "per user and day"),
    ("product_daily", "per product and day"),
    ("conversion_daily", "cart conversion per day"),
    ("conversion_category", "cart conversion per day and category"),
    ("orders", "checkouts with the basket bought"),
    ("sessions", "sessions: the purchase-intent training set"),
    ("users", "per user over all history"),
    ("products", "per product over all history"),
    ("retention", "cohort retention (first active day x days since)"),
    ("live_user_windows", "the speed layer's user windows after the horizon"),
    ("live_global_windows", "the speed layer's global windows after the horizon"),
    ("batch_user_windows", "the batch view as written (also batch_<view> for every view)"),
    ("batch_global_windows", "the batch view as written"),
    ("batch_user_daily", "the batch view as written"),
    ("batch_retention", "the batch view as written"),
];

/// One answer: the rows (at most `max_rows`), their schema, and what they are exact up to.
#[derive(Clone, Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    pub truncated: bool,
    /// The batch horizon the merge used (epoch ms).
    pub horizon: Option<i64>,
    pub elapsed: Duration,
}

/// A statement's answer columns and placeholder types, known before it runs.
#[derive(Clone, Debug)]
pub struct Described {
    pub schema: SchemaRef,
    /// `$1`, `$2`, …: the type the planner inferred, or `None` where nothing in the
    /// statement says.
    pub params: Vec<Option<DataType>>,
}

pub struct Catalog {
    archive: PathBuf,
    views: Option<PathBuf>,
    job: BatchJob,
    live: Option<Arc<LiveWindows>>,
    cfg: ServingConfig,
    /// Staged epochs read so far (a staged file never changes; it only disappears).
    staged: Mutex<HashMap<PathBuf, Arc<Vec<RecordBatch>>>>,
    /// `max_queries` slots; a query holds one until the runtime it ran on has stopped.
    slots: Arc<tokio::sync::Semaphore>,
}

/// A query's runtime on its way down: dropped on a thread that may block, it waits for the
/// workers; dropped anywhere else (still holding it), it is let go without waiting.
struct Stopping(Option<tokio::runtime::Runtime>);

impl Drop for Stopping {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Far enough in the future to mean "no bound" in the batch SQL without overflowing it.
const NO_BOUND: i64 = i64::MAX / 4;

impl Catalog {
    /// `job` gives the windows and lookback (the pipeline's, like the batch layer's).
    pub fn new(
        archive: impl Into<PathBuf>,
        views: Option<PathBuf>,
        job: BatchJob,
        live: Option<Arc<LiveWindows>>,
        cfg: ServingConfig,
    ) -> Result<Catalog, ServingError> {
        cfg.validate().map_err(ServingError::Config)?;
        Ok(Catalog {
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_queries)),
            archive: archive.into(),
            views,
            job,
            live,
            cfg,
            staged: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ServingConfig {
        &self.cfg
    }

    /// Runs one read-only statement under the time, memory and row limits. Never panics
    /// into the caller: a failure inside the engine comes back as an error.
    pub async fn sql(self: &Arc<Self>, sql: &str) -> Result<Answer, ServingError> {
        self.query(sql, Vec::new()).await
    }

    /// [`Catalog::sql`] with values for the statement's `$1`, `$2`, … placeholders, each
    /// cast to the type the planner inferred for it.
    pub async fn query(
        self: &Arc<Self>,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Answer, ServingError> {
        let sql = sql.to_string();
        self.limited(move |me| async move { me.run(&sql, params).await })
            .await
    }

    /// The columns a statement would answer with and the types of its placeholders,
    /// without running it (what a PostgreSQL client's Describe asks).
    pub async fn describe(self: &Arc<Self>, sql: &str) -> Result<Described, ServingError> {
        let sql = sql.to_string();
        self.limited(move |me| async move {
            let (df, _) = me.plan(&sql).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let params = placeholders(&df)?;
            Ok(Described { schema, params })
        })
        .await
    }

    /// Runs `f` on a runtime of its own under the time limit.
    ///
    /// Its own, not the caller's: a heavy query must not stall the HTTP server's workers
    /// (health, metrics, dashboard). And not one shared by all queries either: cancelling
    /// only takes effect when the query's operators next yield, and one busy in a long
    /// computation (a nested-loop join over a big input) can keep its threads for seconds.
    /// On a shared runtime it would hold up every query behind it; here it only holds its
    /// slot, and the runtime is shut down as soon as it lets go.
    async fn limited<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, ServingError>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ServingError>> + Send + 'static,
        T: Send + 'static,
    {
        let timeout = self.cfg.query_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(ServingError::Internal("the query slots are closed".into())),
            Err(_) => return Err(ServingError::Busy(self.cfg.max_queries)),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads(&self.cfg))
            .thread_name("query")
            .enable_all()
            .build()
            .map_err(|e| ServingError::Internal(format!("query runtime: {e}")))?;
        let task = rt.spawn(f(self.clone()));
        let abort = task.abort_handle();
        let answer = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ServingError::Internal(format!(
                "the query failed inside the engine: {e}"
            ))),
            Err(_) => {
                abort.abort();
                Err(ServingError::Timeout(timeout))
            }
        };
        // Stopping a runtime waits for its workers to come back from what they are running
        // (and drops every task left, such as the operators' own), which the caller's
        // runtime must not block on; the slot is given back only then.
        let stopping = Stopping(Some(rt));
        let reaper = std::thread::Builder::new()
            .name("query-stop".into())
            .spawn(move || {
                let mut stopping = stopping;
                drop(stopping.0.take());
                drop(slot);
            });
        if let Err(e) = reaper {
            // the closure was dropped unrun: `Stopping` let the runtime go without waiting,
            // and the slot came back with it
            tracing::warn!(error = %e, "cannot start a thread to stop a query's runtime");
        }
        answer
    }

    /// Checks the statement (one, read-only) and plans it over a fresh context.
    async fn plan(&self, sql: &str) -> Result<(DataFrame, Option<i64>), ServingError> {
        if sql.trim().is_empty() {
            return Err(ServingError::BadQuery("empty query".into()));
        }
        // one statement only: a script could hide a second, different one
        let statements =
            datafusion::sql::sqlparser::parser::Parser::parse_sql(&GenericDialect {}, sql)
                .map_err(|e| ServingError::BadQuery(e.to_string()))?;
        if statements.len() != 1 {
            return Err(ServingError::BadQuery(format!(
                "expected one statement, got {}",
                statements.len()
            )));
        }
        let (ctx, horizon) = self.context().await?;
        let opts = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx.sql_with_options(sql, opts).await.map_err(classify)?;
        Ok((df, horizon))
    }

    async fn run(&self, sql: &str, params: Vec<ScalarValue>) -> Result<Answer, ServingError> {
        let started = Instant::now();
        let (mut df, horizon) = self.plan(sql).await?;
        let wanted = placeholders(&df)?;
        if params.len() != wanted.len() {
            return Err(ServingError::BadQuery(format!(
                "the statement has {} parameter{}, {} given",
                wanted.len(),
                if wanted.len() == 1 { "" } else { "s" },
                params.len()
            )));
        }
        if !params.is_empty() {
            let mut values = Vec::with_capacity(params.len());
            for (i, (v, ty)) in params.into_iter().zip(&wanted).enumerate() {
                values.push(match ty {
                    Some(t) if v.data_type() != *t => v.cast_to(t).map_err(|e| {
                        ServingError::BadQuery(format!(
                            "parameter ${}: {}",
                            i + 1,
                            e.strip_backtrace()
                        ))
                    })?,
                    _ => v,
                });
            }
            df = df.with_param_values(values).map_err(classify)?;
        }
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut stream = df.execute_stream().await.map_err(classify)?;
        let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
        while let Some(b) = stream.next().await {
            let b = b.map_err(classify)?;
            let room = self.cfg.max_rows - rows;
            if b.num_rows() > room {
                batches.push(b.slice(0, room));
                rows += room;
                truncated = true;
                break;
            }
            rows += b.num_rows();
            batches.push(b);
        }
        Ok(Answer {
            schema,
            batches,
            rows,
            truncated,
            horizon,
            elapsed: started.elapsed(),
        })
    }

    /// The batch horizon the next query merges at.
    pub fn horizon_ms(&self) -> Result<Option<i64>, ServingError> {
        Ok(self.horizon()?.0)
    }

    /// The batch horizon in effect and the live windows after it.
    fn horizon(&self) -> Result<(Option<i64>, Option<Arc<LiveSnapshot>>), ServingError> {
        if let Some(live) = &self.live {
            let s = live.snapshot()?;
            return Ok((s.horizon, Some(s)));
        }
        let h = match &self.views {
            Some(v) if v.join(cartpulse_batch::run::HORIZON_FILE).exists() => {
                Horizon::read(v)?.horizon_ms
            }
            _ => None,
        };
        Ok((h, None))
    }

    /// The archive as committed now, with the staged epochs' rows. A staged epoch that is
    /// published between the listing and the read is found in the next listing.
    fn archive_now(&self) -> Result<(ArchiveSnapshot, Vec<RecordBatch>), ServingError> {
        let mut last = None;
        for _ in 0..5 {
            let snap = archive_snapshot(&self.archive)?;
            let mut rows = Vec::new();
            let mut cache = self.staged.lock().expect("staged cache lock");
            cache.retain(|p, _| snap.staged.iter().any(|s| &s.2 == p));
            let mut gone = false;
            for (_, _, p) in &snap.staged {
                if let Some(b) = cache.get(p) {
                    rows.extend(b.iter().cloned());
                    continue;
                }
                match read_staged(p) {
                    Ok(b) => {
                        rows.extend(b.iter().cloned());
                        cache.insert(p.clone(), Arc::new(b));
                    }
                    Err(ArchiveError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        gone = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !gone {
                return Ok((snap, rows));
            }
            last = Some(snap);
        }
        Err(ServingError::Internal(format!(
            "the archive {} kept changing while it was listed ({} staged files)",
            self.archive.display(),
            last.map_or(0, |s| s.staged.len())
        )))
    }

    /// A context holding every table of [`TABLES`] for one query.
    pub async fn context(&self) -> Result<(SessionContext, Option<i64>), ServingError> {
        let (horizon, live) = self.horizon()?;
        let (snap, staged_rows) = self.archive_now()?;
        let threads = threads(&self.cfg);
        // no spilling: past its memory a query fails instead of filling the disk
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.cfg.memory_limit_mb << 20, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new()
                .with_target_partitions(threads)
                .with_information_schema(true),
            runtime,
        );
        let lake = cartpulse_lake::schema();

        // the history
        let all: Vec<String> = snap
            .published
            .iter()
            .map(|(_, p)| p.to_string_lossy().into_owned())
            .collect();
        let archive = parquet_or_empty(&ctx, all, &lake).await?;
        ctx.register_table("archive", archive.clone().into_view())?;
        let staged = ctx.read_table(Arc::new(MemTable::try_new(
            lake.clone(),
            vec![staged_rows],
        )?))?;
        ctx.register_table("events", archive.union(staged.clone())?.into_view())?;

        // what the tail days read: files of hours a tail day's input can reach
        let first_hour = snap
            .published
            .first()
            .map(|f| f.0)
            .into_iter()
            .chain(snap.staged.first().map(|s| s.0))
            .min();
        let last_ms = snap
            .state
            .as_ref()
            .and_then(|s| s.max_event_ms)
            .or_else(|| {
                let h = snap
                    .published
                    .iter()
                    .map(|f| f.0)
                    .chain(snap.staged.iter().map(|s| s.0))
                    .max()?;
                Some((h + 1) * HOUR_MS - 1)
            });
        let tail_start = match (horizon, first_hour) {
            (Some(h), _) => floor_day(h),
            (None, Some(f)) => floor_day(f * HOUR_MS),
            (None, None) => 0,
        };
        let tail_days: Vec<i64> = match last_ms {
            Some(last) => (0..)
                .map(|k| tail_start + k * DAY_MS)
                .take_while(|d| *d <= floor_day(last))
                .collect(),
            None => Vec::new(),
        };
        let reach = tail_days
            .iter()
            .map(|d| views::input_range(&self.job, *d).0)
            .min()
            .unwrap_or(tail_start);
        let recent: Vec<String> = snap
            .published
            .iter()
            .filter(|(h, _)| (h + 1) * HOUR_MS > reach)
            .map(|(_, p)| p.to_string_lossy().into_owned())
            .collect();
        let recent = parquet_or_empty(&ctx, recent, &lake).await?;
        ctx.register_table("recent_events", recent.union(staged)?.into_view())?;

        // the batch views as written
        let mut batch: HashMap<&str, DataFrame> = HashMap::new();
        if let Some(v) = &self.views {
            for name in DayView::ALL.iter().map(|v| v.name()).chain(TOTAL_VIEWS) {
                let files = view_files(&v.join(name))?;
                if files.is_empty() {
                    continue;
                }
                let df = ctx
                    .read_parquet(files, ParquetReadOptions::default())
                    .await?;
                ctx.register_table(format!("batch_{name}"), df.clone().into_view())?;
                batch.insert(name, df);
            }
        }

        // the speed layer's windows
        if let Some(l) = &live {
            for (name, b) in [
                ("live_user_windows", &l.user_windows),
                ("live_global_windows", &l.global_windows),
            ] {
                let t = MemTable::try_new(b.schema(), vec![vec![b.clone()]])?;
                ctx.register_table(name, Arc::new(t))?;
            }
        }

        // the merged views
        let day_lit = |d: i64| lit(ScalarValue::Date32(Some((d / DAY_MS) as i32)));
        for v in DayView::ALL {
            let windows = matches!(v, DayView::UserWindows | DayView::GlobalWindows);
            let global = v == DayView::GlobalWindows;
            let mut parts: Vec<DataFrame> = Vec::new();
            if let (Some(h), Some(b)) = (horizon, batch.get(v.name())) {
                let kept = if windows {
                    b.clone().filter(col("window_end").lt_eq(lit(h)))?
                } else {
                    b.clone().filter(col("day").lt(day_lit(floor_day(h))))?
                };
                parts.push(if global {
                    with_null_gauges(kept)?
                } else {
                    kept
                });
            }
            match (&live, windows) {
                (Some(_), true) => {
                    let t = if global {
                        "live_global_windows"
                    } else {
                        "live_user_windows"
                    };
                    parts.push(ctx.table(t).await?);
                }
                _ => {
                    // windows: only those the newest event has closed
                    let bound = if windows {
                        last_ms.map_or(0, |l| l + 1)
                    } else {
                        NO_BOUND
                    };
                    let days: Vec<i64> = if tail_days.is_empty() {
                        vec![tail_start]
                    } else {
                        tail_days.clone()
                    };
                    for d in days {
                        let sql = views::day_sql(&self.job, v, d, bound);
                        let sql = retarget(&sql)?;
                        let mut df = ctx
                            .sql(&sql)
                            .await
                            .map_err(|e| ServingError::Internal(format!("{}: {e}", v.name())))?;
                        if let (true, Some(h)) = (windows, horizon) {
                            df = df.filter(col("window_end").gt(lit(h)))?;
                        }
                        parts.push(if global { with_null_gauges(df)? } else { df });
                    }
                }
            }
            let mut it = parts.into_iter();
            let mut all = it.next().expect("at least one part");
            for p in it {
                all = all.union(p)?;
            }
            ctx.register_table(v.name(), all.into_view())?;
        }
        for t in TOTAL_VIEWS {
            let df = ctx.sql(&views::total_sql(t)).await?;
            ctx.register_table(t, df.into_view())?;
        }
        Ok((ctx, horizon))
    }
}

/// The statement's `$n` placeholders in order, with their inferred types. Numbers left out
/// (`$2` without `$1`) are placeholders of no known type.
fn placeholders(df: &DataFrame) -> Result<Vec<Option<DataType>>, ServingError> {
    let found = df.logical_plan().get_parameter_types().map_err(classify)?;
    let mut out: Vec<Option<DataType>> = Vec::new();
    for (name, ty) in found {
        let n: usize = name
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ServingError::BadQuery(format!(
                    "placeholder {name}: expected $1, $2, … (named placeholders are not supported)"
                ))
            })?;
        if out.len() < n {
            out.resize(n, None);
        }
        out[n - 1] = ty;
    }
    Ok(out)
}

/// The merged view's carts-now gauges, which only the speed layer has, as NULL.
fn with_null_gauges(df: DataFrame) -> Result<DataFrame, DataFusionError> {
    let mut df = df;
    for (name, money) in &GLOBAL_COLUMNS[GLOBAL_COLUMNS.len() - GAUGES..] {
        let t = if *money {
            DataType::Decimal128(18, 4)
        } else {
            DataType::Int64
        };
        df = df.with_column(name, cast(lit(ScalarValue::Null), t))?;
    }
    Ok(df)
}

/// The batch SQL reads `events`; a tail day reads only the recent part of it.
fn retarget(sql: &str) -> Result<String, ServingError> {
    const FROM: &str = " FROM events WHERE ";
    if !sql.contains(FROM) {
        return Err(ServingError::Internal(format!(
            "a batch view's SQL no longer reads `events` as expected: {sql}"
        )));
    }
    Ok(sql.replace(FROM, " FROM recent_events WHERE "))
}

async fn parquet_or_empty(
    ctx: &SessionContext,
    files: Vec<String>,
    schema: &SchemaRef,
) -> Result<DataFrame, DataFusionError> {
    if files.is_empty() {
        let t = MemTable::try_new(schema.clone(), vec![vec![]])?;
        return ctx.read_table(Arc::new(t));
    }
    let opts = ParquetReadOptions {
        schema: Some(schema),
        ..Default::default()
    };
    ctx.read_parquet(files, opts).await
}

/// A view's files: `dt=*/part-0.parquet` for a day view, `part-0.parquet` for a total.
fn view_files(dir: &Path) -> Result<Vec<String>, ServingError> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(v);
    };
    for e in rd {
        let e = e.map_err(|e| ServingError::Internal(format!("{}: {e}", dir.display())))?;
        let p = e.path();
        let f = if p.is_dir() {
            p.join("part-0.parquet")
        } else {
            p
        };
        if f.file_name().is_some_and(|n| n == "part-0.parquet") && f.exists() {
            v.push(f.to_string_lossy().into_owned());
        }
    }
    v.sort();
    Ok(v)
}

fn threads(cfg: &ServingConfig) -> usize {
    match cfg.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

fn floor_day(t: i64) -> i64 {
    t - t.rem_euclid(DAY_MS)
}

/// Sorts an engine error into what the caller did wrong and what went wrong here, by its
/// root cause (planner errors arrive wrapped in context and diagnostics).
fn classify(e: DataFusionError) -> ServingError {
    let msg = e.strip_backtrace();
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => ServingError::TooBig(msg),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..) => ServingError::BadQuery(msg),
        _ => ServingError::Internal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(dir: &Path, cfg: ServingConfig) -> Arc<Catalog> {
        let archive = dir.join("lake");
        std::fs::create_dir_all(&archive).unwrap();
        let job = BatchJob::new(
            &archive,
            dir.join("views"),
            &cartpulse_engine::PipelineConfig::default(),
        );
        Arc::new(Catalog::new(&archive, None, job, None, cfg).unwrap())
    }

    #[tokio::test]
    async fn a_query_waits_for_a_slot_within_its_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(
            dir.path(),
            ServingConfig {
                max_queries: 1,
                query_timeout: Duration::from_millis(300),
                ..Default::default()
            },
        );
        // a query still winding down after its cancel holds the only slot
        let held = c.slots.clone().acquire_owned().await.unwrap();
        let e = c.sql("SELECT 1").await.unwrap_err();
        assert!(matches!(e, ServingError::Busy(1)), "{e}");
        assert_eq!((e.status(), e.kind()), (503, "busy"));
        // given back in time, it is used
        let c2 = c.clone();
        let waiting = tokio::spawn(async move { c2.sql("SELECT 1 AS one").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap().rows, 1);
        // and every query gives its slot back once its runtime has stopped
        for _ in 0..3 {
            c.sql("SELECT 1").await.unwrap();
        }
    }
}
