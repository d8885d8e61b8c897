//! The batch layer scheduled inside `cartpulse run` (`[batch] views_dir`): it recomputes the
//! views from the archive the same process writes, while events keep arriving.

mod common;
mod live;

use common::bin;
use live::{free_port, request, wait_for, wait_ready, Proc};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn metric(addr: SocketAddr, line_start: &str) -> Option<f64> {
    let r = request(addr, "GET", "/metrics", &[], b"").ok()?;
    r.text()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn run_recomputes_the_batch_views_on_its_own_archive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let views = d.join("views");
    let cfg = d.join("run.toml");
    let text = format!(
        r#"
[pipeline.checkpoint]
dir = "{ck}"
interval = "200ms"
[source]
type = "http"
journal_dir = "{journal}"
[[sinks]]
type = "parquet"
dir = "{lake}"
roll_interval = "1s"
[batch]
interval = "1s"
views_dir = "{views}"
[http]
enabled = true
addr = "{addr}"
"#,
        ck = d.join("ck").display(),
        journal = d.join("journal").display(),
        lake = d.join("lake").display(),
        views = views.display(),
    );
    std::fs::write(&cfg, &text).unwrap();

    // without an archive to read, the setting is refused at start-up, naming the key
    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("type = \"parquet\"", "type = \"jsonl\"")
            .replace("roll_interval = \"1s\"\n", ""),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("batch.views_dir") && err.contains("parquet"),
        "{err}"
    );

    let mut c = Command::new(bin());
    c.args(["run", "--config"]).arg(&cfg);
    let mut p = Proc::spawn("cartpulse", c, &d.join("run.log"));
    wait_ready(addr);
    // three hours of event time: the first hours close, so the batch has a horizon
    let body: String = (0..1200u64)
        .map(|i| {
            format!(
                "{{\"event_id\":\"e{i}\",\"ts\":{},\"user_id\":\"u{}\",\"action\":\"add\",\"sku\":\"p{}\",\"qty\":1,\"price\":2.0}}\n",
                1_764_000_000_000u64 + i * 10_000,
                i % 40,
                i % 9
            )
        })
        .collect();
    let r = request(addr, "POST", "/ingest", &[], body.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let horizon = wait_for(
        "a batch run with a horizon",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || match metric(addr, "cartpulse_batch_horizon_ms") {
            Some(h) if h > 0.0 => Ok(h),
            other => Err(format!("horizon {other:?}; log: {}", p.log_tail(5))),
        },
    );
    assert!(horizon >= 1_764_003_600_000.0, "{horizon}");
    assert!(metric(addr, "cartpulse_batch_runs_total{outcome=\"ok\"}").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        metric(addr, "cartpulse_batch_runs_total{outcome=\"failed\"}").unwrap_or(0.0),
        0.0,
        "{}",
        p.log()
    );
    let files = walk(&views);
    assert!(
        files.iter().any(|f| f.contains("user_windows")),
        "views written: {files:?}"
    );
    p.stop(Duration::from_secs(20));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
