//! `cartpulse batch` (recompute the batch views from the Parquet archive) and
//! `cartpulse verify` (reconcile the speed layer's windows with them).

use anyhow::{bail, Context, Result};
use cartpulse_batch::{run_batch, verify, BatchConfig, BatchJob};
use cartpulse_engine::PipelineConfig;
use cartpulse_serving::{Catalog, ServingConfig};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BatchArgs {
    /// Archive root written by the `parquet` sink.
    #[arg(long)]
    archive: PathBuf,
    /// Where the views go (kept between runs: only what changed is recomputed).
    #[arg(long)]
    out: PathBuf,
    /// The pipeline's config file: windows from `[pipeline]`, settings from `[batch]`;
    /// other sections are ignored, so `run`'s file works as is.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The input has ended: every partition counts as complete (a replayed file), instead
    /// of only those the archive has closed.
    #[arg(long)]
    complete: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct SqlArgs {
    /// The statement (read-only, one). Tables: `events`, `archive`, the merged views
    /// (`user_windows`, `global_windows`, `user_daily`, `conversion_daily`, `retention`, …)
    /// and each batch view as written (`batch_<view>`).
    #[arg(required_unless_present = "listen")]
    query: Option<String>,
    /// Instead of one query, serve this SQL over the PostgreSQL protocol on this address
    /// until Ctrl-C (psql, Grafana, drivers); a password comes from `[serving.postgres]`
    /// or `CARTPULSE_PG_PASSWORD`.
    #[arg(long, conflicts_with = "query")]
    listen: Option<std::net::SocketAddr>,
    /// Archive root written by the `parquet` sink.
    #[arg(long)]
    archive: PathBuf,
    /// `cartpulse batch`'s output directory; without it every view is computed from the
    /// archive.
    #[arg(long)]
    views: Option<PathBuf>,
    /// The pipeline's config file (windows from `[pipeline]`, `[batch]` lookback, limits
    /// from `[serving]`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `table` (default) or `json`.
    #[arg(long, default_value = "table")]
    format: String,
    /// Rows shown at most (overrides `[serving] max_rows`).
    #[arg(long)]
    max_rows: Option<usize>,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The JSONL sink's directory (`<dir>/user_windows/part-*.jsonl`, `global_windows/…`).
    #[arg(long)]
    speed: PathBuf,
    /// `cartpulse batch`'s output directory.
    #[arg(long)]
    batch: PathBuf,
    /// Differences listed per kind and stream.
    #[arg(long, default_value_t = 20)]
    show: usize,
}

/// The `[pipeline]`, `[batch]` and `[serving]` sections of a config file.
fn load(path: &Path) -> Result<(PipelineConfig, BatchConfig, ServingConfig)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    let section = |doc: &mut toml::Table, k: &str| {
        doc.remove(k)
            .unwrap_or(toml::Value::Table(Default::default()))
    };
    let p: PipelineConfig = section(&mut doc, "pipeline")
        .try_into()
        .map_err(|e| anyhow::anyhow!("config file {}: [pipeline] {e}", path.display()))?;
    p.validate()
        .map_err(|e| anyhow::anyhow!("config file {}: [pipeline] {e}", path.display()))?;
    let b: BatchConfig = section(&mut doc, "batch")
        .try_into()
        .map_err(|e| anyhow::anyhow!("config file {}: [batch] {e}", path.display()))?;
    b.validate()
        .map_err(|e| anyhow::anyhow!("config file {}: [batch] {e}", path.display()))?;
    let s: ServingConfig = section(&mut doc, "serving")
        .try_into()
        .map_err(|e| anyhow::anyhow!("config file {}: [serving] {e}", path.display()))?;
    s.validate()
        .map_err(|e| anyhow::anyhow!("config file {}: [serving] {e}", path.display()))?;
    Ok((p, b, s))
}

pub fn batch(a: BatchArgs) -> Result<()> {
    let (pipeline, cfg, _) = match &a.config {
        Some(p) => load(p)?,
        None => Default::default(),
    };
    if !a.archive.is_dir() {
        bail!("--archive {}: not a directory", a.archive.display());
    }
    let mut job = BatchJob::new(&a.archive, &a.out, &pipeline);
    job.config = cfg;
    job.complete = a.complete;
    job.quiet = a.quiet;
    let r = run_batch(&job)?;
    let horizon = r.horizon_ms.map_or("none".to_string(), rfc3339);
    eprintln!(
        "batch: {} archive files ({} new), {} {} recomputed{}, horizon {horizon}, {:.2}s",
        r.archive_files,
        r.new_files,
        r.days.len(),
        if r.days.len() == 1 { "day" } else { "days" },
        if r.full { " (full rebuild)" } else { "" },
        r.elapsed.as_secs_f64()
    );
    for (view, rows) in &r.rows {
        eprintln!("  {view}: {rows} rows");
    }
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// `cartpulse sql`: one query over an archive and its batch views, printed.
pub fn sql(a: SqlArgs) -> Result<()> {
    let (pipeline, bcfg, mut scfg) = match &a.config {
        Some(p) => load(p)?,
        None => Default::default(),
    };
    if let Some(n) = a.max_rows {
        scfg.max_rows = n;
    }
    if !matches!(a.format.as_str(), "table" | "json") {
        bail!("--format {}: expected table or json", a.format);
    }
    let mut job = BatchJob::new(&a.archive, a.views.clone().unwrap_or_default(), &pipeline);
    job.config = bcfg;
    let mut pg = scfg.postgres.clone();
    if let Some(addr) = a.listen {
        pg.listen = Some(addr);
        pg.validate()
            .map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    }
    let catalog = std::sync::Arc::new(Catalog::new(&a.archive, a.views.clone(), job, None, scfg)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let Some(query) = a.query else {
        let addr = pg.listen.expect("clap: --listen or a query");
        let listener = crate::bind_pg(addr)?;
        eprintln!(
            "cartpulse sql: PostgreSQL protocol on {addr} (psql -h {} -p {} -U {}); Ctrl-C stops",
            addr.ip(),
            addr.port(),
            pg.user
        );
        return rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            cartpulse_serving::pg::serve(listener, catalog, pg, crate::shutdown_signal()).await?;
            Ok(())
        });
    };
    let answer = rt.block_on(catalog.sql(&query))?;
    if a.format == "json" {
        let mut out = answer.to_json()?;
        out.push(b'\n');
        std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    } else {
        println!("{}", answer.to_table()?);
        eprintln!(
            "{} row{}{}, horizon {}, {:.1} ms",
            answer.rows,
            if answer.rows == 1 { "" } else { "s" },
            if answer.truncated { " (truncated)" } else { "" },
            answer.horizon.map_or("none".to_string(), rfc3339),
            answer.elapsed.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

pub fn verify_cmd(a: VerifyArgs) -> Result<()> {
    let r = verify(&a.speed, &a.batch)?;
    print!("{}", r.render(a.show));
    if !r.ok() {
        bail!("the speed layer and the batch views differ");
    }
    if r.streams.iter().all(|s| s.compared == 0) {
        bail!("nothing to compare: no window ends before the batch horizon");
    }
    Ok(())
}

/// The batch layer running inside `cartpulse run`: a thread recomputing the views every
/// `[batch] interval`, with its outcome in the logs and in metrics.
pub struct Scheduled {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Scheduled {
    /// Asks the thread to stop and waits for a run in progress to finish.
    pub fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

pub fn schedule(job: BatchJob, registry: &prometheus::Registry) -> Scheduled {
    let runs = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "cartpulse_batch_runs_total",
            "Batch-layer runs inside the process, by outcome (ok, failed).",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    let horizon = prometheus::IntGauge::new(
        "cartpulse_batch_horizon_ms",
        "Event time up to which the batch views are complete (epoch ms).",
    )
    .expect("valid metric");
    let seconds = prometheus::Gauge::new(
        "cartpulse_batch_last_run_seconds",
        "Duration of the latest batch-layer run.",
    )
    .expect("valid metric");
    for m in [
        Box::new(runs.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(horizon.clone()),
        Box::new(seconds.clone()),
    ] {
        if let Err(e) = registry.register(m) {
            tracing::warn!(error = %e, "cannot register a batch metric");
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("batch".into())
        .spawn(move || {
            tracing::info!(archive = %job.archive.display(), views = %job.out.display(),
                interval = ?job.config.interval, "batch layer scheduled");
            // the sink creates the archive on its first publication; until then the batch
            // layer sees an empty one rather than a missing directory
            if let Err(e) = std::fs::create_dir_all(&job.archive) {
                tracing::warn!(archive = %job.archive.display(), error = %e, "cannot create the archive directory");
            }
            cartpulse_batch::run_every(&job, &flag, |r| match r {
                Ok(r) => {
                    runs.with_label_values(&["ok"]).inc();
                    seconds.set(r.elapsed.as_secs_f64());
                    if let Some(h) = r.horizon_ms {
                        horizon.set(h);
                    }
                    tracing::info!(
                        horizon = %r.horizon_ms.map_or("none".to_string(), rfc3339),
                        days = r.days.len(),
                        new_files = r.new_files,
                        elapsed_s = r.elapsed.as_secs_f64(),
                        "batch views recomputed"
                    );
                }
                Err(e) => {
                    runs.with_label_values(&["failed"]).inc();
                    tracing::error!(error = %e, "batch layer run failed; retrying at the next interval");
                }
            });
        })
        .expect("spawn the batch thread");
    Scheduled { stop, thread }
}
