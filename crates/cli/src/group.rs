//! `cartpulse run` with a Kafka source: this process joins the consumer group and runs one
//! pipeline per partition it is given (`cartpulse_kafka::group`), and `cartpulse merge`
//! sums the partitions' partial global windows into the global view.

use crate::analytics;
use crate::config::AppConfig;
use anyhow::{bail, Context, Result};
use cartpulse_connectors::build_task_sink;
use cartpulse_engine::metrics::Metrics;
use cartpulse_engine::{Pipeline, Sink, Source};
use cartpulse_kafka::{GroupMember, KafkaSourceConfig, TaskFactory, TaskId};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct Factory {
    app: AppConfig,
    root: PathBuf,
    origin: String,
    /// One set of tables for every task of the process …
    enricher: Option<Arc<cartpulse_engine::enrich::Enricher>>,
    /// … reloaded on their intervals while the member runs.
    _refresh: Option<cartpulse_engine::enrich::RefreshHandle>,
}

impl TaskFactory for Factory {
    fn checkpoint_dir(&self, task: &TaskId) -> PathBuf {
        self.root.join(task.name())
    }

    fn build(&self, task: &TaskId, source: Box<dyn Source>) -> Result<Pipeline, String> {
        let name = task.name();
        let dir = self.checkpoint_dir(task);
        let mut cfg = self.app.pipeline.clone();
        cfg.checkpoint.dir = Some(dir.clone());
        let sinks: Vec<Box<dyn Sink>> = self
            .app
            .sinks
            .iter()
            .map(|s| build_task_sink(&s.for_task(&name), Some(&name), Some(&dir)))
            .collect();
        let mut p = Pipeline::new(cfg, source, sinks);
        if let Some(e) = &self.enricher {
            p = p.with_enricher(e.clone());
        }
        if let Some(op) =
            analytics::operator(&self.app.analytics, &self.origin).map_err(|e| format!("{e:#}"))?
        {
            p = p.with_operator(op);
        }
        Ok(p)
    }
}

/// Checks a consumer-group config (`origin` names the file in errors) and joins the group.
pub(crate) fn join(
    app: AppConfig,
    kcfg: KafkaSourceConfig,
    origin: String,
    metrics: Arc<Metrics>,
) -> Result<GroupMember> {
    kcfg.validate()
        .map_err(|e| anyhow::anyhow!("{origin}: [source] {e}"))?;
    let Some(root) = app.pipeline.checkpoint.dir.clone() else {
        bail!("{origin}: key `pipeline.checkpoint.dir`: expected a directory that every process of the consumer group shares (a partition's state moves between processes through it)");
    };
    if !app.stores.is_empty() {
        bail!("{origin}: key `stores`: [[stores]] are not supported with a kafka source yet (each partition's partial global windows would overwrite each other); use [[sinks]] type = \"kafka\" or \"jsonl\" and merge");
    }
    if app.sinks.is_empty() {
        bail!("{origin}: key `sinks`: expected at least one [[sinks]] entry");
    }
    for s in &app.sinks {
        if let cartpulse_connectors::SinkConfig::Kafka(k) = s {
            k.validate()
                .map_err(|e| anyhow::anyhow!("{origin}: [[sinks]] type = \"kafka\": {e}"))?;
        }
    }
    let max_record = app.pipeline.max_record_bytes;
    let enricher = app.enricher(&origin)?;
    if let Some(e) = &enricher {
        e.register(&metrics.registry);
    }
    let factory = Factory {
        app,
        root,
        origin,
        _refresh: enricher.as_ref().map(|e| e.start_refresh()),
        enricher,
    };
    GroupMember::new(kcfg, Box::new(factory), metrics, max_record)
        .context("joining the consumer group")
}

pub fn run(app: AppConfig, kcfg: KafkaSourceConfig, path: &Path) -> Result<()> {
    let origin = format!("config file {}", path.display());
    let metrics = Arc::new(Metrics::new());
    let http = app.http.enabled.then_some(app.http.addr);
    let member = join(app, kcfg, origin, metrics.clone())?;
    if let Some(addr) = http {
        serve_metrics(addr, metrics.clone())?;
    }
    let stop = member.stopper();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(crate::shutdown_signal());
            tracing::info!("stopping: final checkpoint of every task");
            stop.store(true, Ordering::SeqCst);
        })?;
    let summary = member.run()?;
    eprintln!(
        "left the consumer group after {} rebalance(s); tasks finished here: {}",
        summary.rebalances,
        if summary.finished.is_empty() {
            "none".to_string()
        } else {
            summary.finished.join(", ")
        }
    );
    Ok(())
}

/// `/metrics` (and `/healthz`) of a group member: the tasks share one registry, so the
/// counters are the process's totals, and the lag is per partition.
fn serve_metrics(addr: std::net::SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    use std::io::{Read, Write};
    if !addr.ip().is_loopback() {
        bail!("key `http.addr`: a consumer-group member serves /metrics on loopback only for now; got {addr}");
    }
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /metrics") {
                    let mut out = Vec::new();
                    let enc = prometheus::TextEncoder::new();
                    let _ = prometheus::Encoder::encode(&enc, &metrics.registry.gather(), &mut out);
                    ("200 OK", out)
                } else if req.starts_with("GET /healthz") {
                    ("200 OK", b"ok\n".to_vec())
                } else {
                    ("404 Not Found", b"not found\n".to_vec())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            }
        })?;
    Ok(())
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Output folder of a consumer group's jsonl sink: one subfolder per task, each with
    /// `global_windows/part-*.jsonl`.
    #[arg(long)]
    pub dir: PathBuf,
    /// Where to write the merged global windows (JSON lines); stdout if absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Sums every task's committed partial global windows into one record per window.
pub fn merge(a: MergeArgs) -> Result<()> {
    let mut data = Vec::new();
    let mut files = 0usize;
    for task in std::fs::read_dir(&a.dir).with_context(|| format!("{}", a.dir.display()))? {
        let d = task?.path().join("global_windows");
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e?.path();
            // committed parts only: pending epochs end in `.pending`
            if p.extension().and_then(|x| x.to_str()) == Some("jsonl") {
                data.push(std::fs::read(&p).with_context(|| format!("{}", p.display()))?);
                files += 1;
            }
        }
    }
    let merged = cartpulse_kafka::merge::merge_global_windows(
        data.iter().flat_map(|d| d.split(|&b| b == b'\n')),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", a.dir.display()))?;
    match &a.out {
        Some(p) => std::fs::write(p, &merged).with_context(|| format!("{}", p.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &merged)?,
    }
    eprintln!(
        "merged {} partial files into {} global windows",
        files,
        merged.iter().filter(|&&b| b == b'\n').count()
    );
    Ok(())
}
