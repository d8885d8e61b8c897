//! The `cartpulse` binary: the only place that uses `anyhow`.

mod analytics;
mod bench;
mod bench_kafka;
mod bench_sources;
mod config;
mod fpgrowth;
mod group;
mod lambda;

use anyhow::{bail, Context, Result};
use cartpulse_connectors::{
    build_sink, build_source, FileFormat, FileSource, FileSourceConfig, GenSource, JsonlDirSink,
    SourceConfig,
};
use cartpulse_engine::{Handle, Pipeline, PipelineConfig, RunSummary, Sink, Source};
use cartpulse_model::CsvConfig;
use clap::{Parser, Subcommand, ValueEnum};
use config::AppConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

// Keyed state churns through many small allocations; mimalloc measured ~10% faster here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cartpulse",
    version,
    about = "Real-time shopping-cart stream processing"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a realistic, seeded cart event file (JSON lines).
    Gen(GenArgs),
    /// Run the default pipeline over a file to its end.
    Replay(ReplayArgs),
    /// Run the pipeline described by a config file.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Live demo: generated traffic, the full pipeline, and HTTP on 127.0.0.1:8080.
    Demo(DemoArgs),
    /// Measure throughput, latency, memory and checkpoint cost.
    Bench(bench::BenchArgs),
    /// Mine frequent itemsets and association rules from a basket file (FP-Growth).
    Fpgrowth(fpgrowth::FpgrowthArgs),
    /// Recompute the batch views (windows, aggregates, baskets, sessions) from the Parquet archive.
    Batch(lambda::BatchArgs),
    /// Compare the speed layer's window outputs with the batch views, exactly.
    Verify(lambda::VerifyArgs),
    /// One SQL query over the archive, the batch views and the merged views.
    Sql(lambda::SqlArgs),
    /// Sum a consumer group's per-partition global windows into the global view.
    Merge(group::MergeArgs),
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long)]
    events: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    /// Where to write the labelled abnormal actors (JSON).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Generator settings (TOML with the fields of the generator config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Events per simulated second.
    #[arg(long)]
    rate: Option<f64>,
    /// Event time of the first event, epoch ms.
    #[arg(long)]
    start_ms: Option<i64>,
    /// Also write the product catalogue (CSV: sku, name, category, brand, price, stock).
    #[arg(long)]
    catalog: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum InputFormat {
    Json,
    Csv,
    /// CSV laid out like the public e-commerce clickstream export.
    Clickstream,
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// e.g. `200ms`, `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    checkpoint_interval: Option<Duration>,
    #[arg(long)]
    shards: Option<usize>,
    /// Pipeline settings and a CSV mapping (the `[pipeline]` and `[source]` sections).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Run without the analytics stage (rules, funnel, alerts).
    #[arg(long)]
    no_analytics: bool,
    /// Product catalogue CSV for the rules (stock, names, categories).
    #[arg(long)]
    catalog: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Events per second of generated traffic.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Where results are written (default: a fresh temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Inactivity after which a cart is reported abandoned.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    abandon_after: Duration,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Bearer token for the HTTP API (required when --addr is not loopback).
    #[arg(long, env = "CARTPULSE_API_TOKEN")]
    token: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    if let Err(e) = dispatch(cli.cmd) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logs(f: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match f {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Gen(a) => gen(a),
        Cmd::Replay(a) => replay(a),
        Cmd::Run { config } => run_config(&config),
        Cmd::Demo(a) => demo(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Fpgrowth(a) => fpgrowth::run(a),
        Cmd::Batch(a) => lambda::batch(a),
        Cmd::Verify(a) => lambda::verify_cmd(a),
        Cmd::Sql(a) => lambda::sql(a),
        Cmd::Merge(a) => group::merge(a),
    }
}

fn gen(a: GenArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", p.display()))?
        }
        None => cartpulse_gen::GenConfig::default(),
    };
    cfg.events = a.events;
    cfg.seed = a.seed;
    if let Some(r) = a.rate {
        cfg.events_per_sec = r;
    }
    if let Some(s) = a.start_ms {
        cfg.start_ms = s;
    }
    if a.events == 0 {
        bail!("--events must be at least 1");
    }
    if let Some(c) = &a.catalog {
        write_catalog(&cfg, c)?;
    }
    let stats = cartpulse_gen::write_file(cfg, &a.out, a.truth.as_deref())?;
    eprintln!(
        "wrote {} events ({} duplicates, {} delayed, {:.1} MB) in {:.2}s: {:.2} M events/s",
        stats.events,
        stats.duplicates,
        stats.delayed,
        stats.bytes as f64 / 1e6,
        stats.elapsed.as_secs_f64(),
        stats.events as f64 / stats.elapsed.as_secs_f64().max(1e-9) / 1e6
    );
    Ok(())
}

fn replay(a: ReplayArgs) -> Result<()> {
    let app = match &a.config {
        Some(p) => AppConfig::load(p)?,
        None => AppConfig::default(),
    };
    // loaded once: a replay is a recomputation, so its tables do not change under it
    let enricher = app.enricher("replay")?;
    let mut pipeline = app.pipeline.clone();
    if let Some(n) = a.shards {
        pipeline.shards = n;
    }
    if let Some(d) = &a.checkpoint_dir {
        pipeline.checkpoint.dir = Some(d.clone());
    }
    if let Some(i) = a.checkpoint_interval {
        pipeline.checkpoint.interval = i;
    }
    let mut file_cfg = match app.source {
        Some(SourceConfig::File(f)) => *f,
        _ => FileSourceConfig::default(),
    };
    file_cfg.path = a.input.clone();
    match a.format {
        Some(InputFormat::Json) => file_cfg.format = FileFormat::Json,
        Some(InputFormat::Csv) => file_cfg.format = FileFormat::Csv,
        Some(InputFormat::Clickstream) => {
            file_cfg.format = FileFormat::Csv;
            file_cfg.csv = CsvConfig::clickstream_preset();
        }
        None => {}
    }
    let source = FileSource::new(file_cfg, pipeline.max_record_bytes);
    let total = std::fs::metadata(&a.input)
        .with_context(|| format!("input {}", a.input.display()))?
        .len();
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlDirSink::new(&a.out))];
    let mut p = Pipeline::new(pipeline, Box::new(source), sinks);
    if let Some(e) = enricher {
        p = p.with_enricher(e);
    }
    let mut acfg = app.analytics.clone();
    acfg.enabled &= !a.no_analytics;
    if a.catalog.is_some() {
        acfg.catalog.clone_from(&a.catalog);
    }
    if let Some(op) = analytics::operator(&acfg, "replay")? {
        p = p.with_operator(op);
    }
    let handle = p.start()?;
    let summary = with_progress(handle, total, a.quiet)?;
    report(&summary);
    Ok(())
}

/// Shows a progress bar (on a terminal) while the pipeline runs.
fn with_progress(handle: Handle, total: u64, quiet: bool) -> Result<RunSummary> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
            )
            .expect("valid template"),
        );
        b
    };
    let metrics = handle.api.metrics.clone();
    while !handle.is_finished() {
        bar.set_position(metrics.source_bytes.get().min(total));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    Ok(handle.join()?)
}

fn report(s: &RunSummary) {
    if s.already_finished {
        tracing::info!(
            checkpoint = s.restored_from,
            "already complete: output unchanged"
        );
        return;
    }
    let e = s.commit.emitted;
    tracing::info!(
        restored_from = s.restored_from,
        checkpoints = s.commit.checkpoints,
        user_windows = e[0],
        global_windows = e[1],
        abandoned = e[2],
        late = e[3],
        dead_letters = e[4],
        elapsed_s = s.elapsed.as_secs_f64(),
        "pipeline finished"
    );
}

fn run_config(path: &Path) -> Result<()> {
    let app = AppConfig::load(path)?;
    let Some(src) = &app.source else {
        bail!(
            "config file {}: key `source`: expected a [source] section",
            path.display()
        );
    };
    if let SourceConfig::Kafka(k) = src {
        let k = (**k).clone();
        return group::run(app, k, path);
    }
    if app.sinks.is_empty() && app.stores.is_empty() {
        bail!(
            "config file {}: key `sinks`: expected at least one [[sinks]] or [[stores]] entry",
            path.display()
        );
    }
    let built = build_source(src, app.pipeline.max_record_bytes)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    if built.ingest.is_some() && !app.http.enabled {
        bail!(
            "config file {}: key `http.enabled`: expected true with [source] type = \"http\" (events arrive through POST /ingest)",
            path.display()
        );
    }
    let source = built.source;
    let ingest_limit = built.ingest.as_ref().map(|j| j.config().max_body_bytes);
    let ingest = built.ingest.map(|j| {
        std::sync::Arc::new(JournalIngest(j)) as std::sync::Arc<dyn cartpulse_serve::Ingest>
    });
    let mut sinks: Vec<Box<dyn Sink>> = app.sinks.iter().map(build_sink).collect();
    for store in &app.stores {
        let mut store = store.clone();
        if let Some(dir) = &app.pipeline.checkpoint.dir {
            store.default_stage_dir(dir);
        }
        sinks.push(
            cartpulse_stores::build_store_sink(&store)
                .map_err(|e| anyhow::anyhow!("config file {}: [[stores]]: {e}", path.display()))?,
        );
    }
    let http = app.http.enabled.then(|| {
        let mut o = app.http.serve_options();
        o.ingest_max_body_bytes = ingest_limit;
        (app.http.addr, o)
    });
    let origin = format!("config file {}", path.display());
    // the batch layer, scheduled in this process over the archive it writes
    let batch_job = match (&app.batch.views_dir, app.archive_dir()) {
        (Some(views), Some(archive)) => {
            let mut job = cartpulse_batch::BatchJob::new(archive, views, &app.pipeline);
            job.config = app.batch.clone();
            job.quiet = true;
            Some(job)
        }
        _ => None,
    };
    // the serving layer: the speed layer's windows kept by one more sink, merged with the
    // batch views at query time
    let mut pg = None;
    let query = match (&batch_job, app.serving.enabled) {
        (Some(job), true) => {
            let dir = app.serving.dir.clone().unwrap_or_else(|| {
                app.pipeline
                    .checkpoint
                    .dir
                    .clone()
                    .expect("checked at load")
                    .join("serving")
            });
            let live = cartpulse_serving::LiveWindows::new(dir, &job.out);
            sinks.push(Box::new(cartpulse_serving::LiveWindowSink::new(
                live.clone(),
            )));
            let catalog = std::sync::Arc::new(cartpulse_serving::Catalog::new(
                job.archive.clone(),
                Some(job.out.clone()),
                job.clone(),
                Some(live),
                app.serving.clone(),
            )?);
            // bound now, so a taken port fails the start, not a background task
            if let Some(addr) = app.serving.postgres.listen {
                pg = Some(PgListener {
                    listener: bind_pg(addr)?,
                    catalog: catalog.clone(),
                    cfg: app.serving.postgres.clone(),
                });
            }
            Some(std::sync::Arc::new(cartpulse_serving::HttpQuery(catalog))
                as std::sync::Arc<dyn cartpulse_serve::QueryService>)
        }
        _ => None,
    };
    let enricher = app.enricher(&origin)?;
    let mut pipeline = Pipeline::new(app.pipeline, source, sinks);
    if let Some(op) = analytics::operator(&app.analytics, &origin)? {
        pipeline = pipeline.with_operator(op);
    }
    // reloads on the tables' intervals until the run ends (the handle stops them)
    let _refresh = enricher.as_ref().map(|e| e.start_refresh());
    if let Some(e) = enricher {
        pipeline = pipeline.with_enricher(e);
    }
    if !app.stores.is_empty() {
        cartpulse_stores::register_metrics(&pipeline.metrics.registry);
    }
    let batch = batch_job.map(|job| lambda::schedule(job, &pipeline.metrics.registry));
    let r = run_live(
        pipeline,
        http,
        ingest,
        query,
        pg,
        app.analytics.rules_file.clone(),
    );
    if let Some(b) = batch {
        b.stop();
    }
    r
}

/// `POST /ingest` bodies into the HTTP source's journal.
struct JournalIngest(std::sync::Arc<cartpulse_connectors::http_ingest::Journal>);

impl cartpulse_serve::Ingest for JournalIngest {
    fn ingest(&self, body: &[u8]) -> cartpulse_serve::IngestOutcome {
        use cartpulse_connectors::http_ingest::IngestError;
        use cartpulse_serve::IngestOutcome;
        match self.0.append(body) {
            Ok(r) => IngestOutcome::Accepted(serde_json::json!({
                "accepted": r.accepted,
                "dead_lettered": r.dead_lettered,
                "errors": r.errors.iter().map(|(i, why)| serde_json::json!({"index": i, "reason": why})).collect::<Vec<_>>(),
            })),
            Err(e @ IngestError::Busy { retry_after, .. }) => {
                IngestOutcome::Busy(retry_after, e.to_string())
            }
            Err(e @ IngestError::BadBody(_)) => IngestOutcome::Bad(e.to_string()),
            Err(e @ IngestError::Journal(_)) => IngestOutcome::Failed(e.to_string()),
        }
    }
}

fn demo(a: DemoArgs) -> Result<()> {
    let now = cartpulse_engine::clock::Clock::now_ms(&cartpulse_engine::clock::SystemClock);
    let gen = cartpulse_gen::GenConfig {
        seed: a.seed,
        events: 0,
        start_ms: now,
        events_per_sec: a.rate,
        ..Default::default()
    };
    let base = std::env::temp_dir().join(format!("cartpulse-demo-{}", std::process::id()));
    let out = a.out.clone().unwrap_or_else(|| base.join("out"));
    let pipeline = PipelineConfig {
        idle_timeout: Some(Duration::from_secs(2)),
        abandon_after: a.abandon_after,
        checkpoint: cartpulse_engine::CheckpointConfig {
            dir: Some(base.join("checkpoints")),
            ..Default::default()
        },
        ..Default::default()
    };
    eprintln!(
        "cartpulse demo: {} events/s of generated traffic; results in {}",
        a.rate,
        out.display()
    );
    eprintln!(
        "  http://{}/api/metrics   /api/carts/<user_id>   /metrics",
        a.addr
    );
    let source: Box<dyn Source> = Box::new(GenSource::new(gen, pipeline.max_record_bytes));
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlDirSink::new(&out))];
    let opts = cartpulse_serve::ServeOptions {
        token: a.token.clone(),
        ..Default::default()
    };
    // the demo's catalogue gives rules stock figures (low stock, hoarding by share)
    let catalog = base.join("catalog.csv");
    write_catalog(
        &cartpulse_gen::GenConfig {
            seed: a.seed,
            ..Default::default()
        },
        &catalog,
    )?;
    let acfg = cartpulse_analytics::live::AnalyticsConfig {
        catalog: Some(catalog.clone()),
        ..Default::default()
    };
    // the same catalogue enriches every event with the product's name, brand and stock
    let enrich = cartpulse_connectors::enrich::EnrichConfig {
        products: Some(cartpulse_connectors::enrich::TableConfig::csv(
            catalog.clone(),
        )),
        users: None,
    };
    let mut p = Pipeline::new(pipeline, source, sinks);
    if let Some(e) = cartpulse_connectors::enrich::build(&enrich).map_err(anyhow::Error::msg)? {
        p = p.with_enricher(e);
    }
    if let Some(op) = analytics::operator(&acfg, "demo")? {
        p = p.with_operator(op);
    }
    let r = run_live(p, Some((a.addr, opts)), None, None, None, None);
    // each demo starts from scratch, so its checkpoints are of no use once it has stopped
    let _ = std::fs::remove_dir_all(base.join("checkpoints"));
    r
}

/// Runs a pipeline with optional HTTP until its input ends or SIGINT/SIGTERM, then stops
/// gracefully with a final checkpoint.
fn run_live(
    p: Pipeline,
    http: Option<(std::net::SocketAddr, cartpulse_serve::ServeOptions)>,
    ingest: Option<std::sync::Arc<dyn cartpulse_serve::Ingest>>,
    query: Option<std::sync::Arc<dyn cartpulse_serve::QueryService>>,
    pg: Option<PgListener>,
    rules_file: Option<PathBuf>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if let Some((addr, opts)) = &http {
        let mut o = opts.clone();
        if let Ok(t) = std::env::var("CARTPULSE_API_TOKEN") {
            o.token = Some(t).filter(|t| !t.is_empty()).or(o.token);
        }
        cartpulse_serve::check_exposure(*addr, &o)?;
    }
    let handle = p.start()?;
    let api = handle.api.clone();
    if let Some(path) = rules_file {
        analytics::watch_rules(path, api.clone());
    }
    let stopper = handle.stopper();
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        if let Some((addr, opts)) = http {
            let mut rx2 = rx.clone();
            let server = cartpulse_serve::serve(addr, api, opts, ingest, query, async move {
                let _ = rx2.wait_for(|v| *v).await;
            });
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "http server failed");
                }
            });
        }
        if let Some(pg) = pg {
            let mut rx3 = rx.clone();
            let addr = pg.listener.local_addr()?;
            let listener = tokio::net::TcpListener::from_std(pg.listener)?;
            tracing::info!(%addr, "postgres protocol: serving SQL");
            tokio::spawn(async move {
                let stop = async move {
                    let _ = rx3.wait_for(|v| *v).await;
                };
                if let Err(e) =
                    cartpulse_serving::pg::serve(listener, pg.catalog, pg.cfg, stop).await
                {
                    tracing::error!(error = %e, "postgres server failed");
                }
            });
        }
        let join = tokio::task::spawn_blocking(move || handle.join());
        tokio::pin!(join);
        let summary = tokio::select! {
            r = &mut join => r,
            _ = shutdown_signal() => {
                tracing::info!("stopping: final checkpoint");
                stopper.store(true, std::sync::atomic::Ordering::SeqCst);
                join.await
            }
        };
        let _ = tx.send(true);
        drop(rx);
        let summary = summary.map_err(|e| anyhow::anyhow!("pipeline thread: {e}"))??;
        report(&summary);
        Ok(())
    })
}

/// The PostgreSQL protocol's listener, bound before the pipeline starts.
pub(crate) struct PgListener {
    pub listener: std::net::TcpListener,
    pub catalog: std::sync::Arc<cartpulse_serving::Catalog>,
    pub cfg: cartpulse_serving::PgConfig,
}

pub(crate) fn bind_pg(addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("[serving.postgres] listen = \"{addr}\": cannot listen there"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Writes the generator's catalogue as CSV (sku, name, category, brand, price, stock).
pub(crate) fn write_catalog(cfg: &cartpulse_gen::GenConfig, path: &Path) -> Result<()> {
    use std::io::Write;
    let gen = cartpulse_gen::Generator::new(cfg.clone())?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("catalog {}", path.display()))?,
    );
    writeln!(w, "sku,name,category,brand,price,stock")?;
    for p in gen.catalog() {
        writeln!(
            w,
            "{},\"{}\",{},{},{}.{:02},{}",
            p.sku,
            p.name.replace('"', "\"\""),
            p.category,
            p.brand,
            p.price_cents / 100,
            p.price_cents % 100,
            p.stock
        )?;
    }
    w.flush()?;
    Ok(())
}
