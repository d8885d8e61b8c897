//! A real Prometheus scrapes a running `cartpulse demo` and evaluates the alert rules of
//! `deploy/prometheus/alerts.yml` against it: the metrics arrive with their labels, rates
//! can be taken, and every rule evaluates without error on real series.

mod live;

use live::{free_port, get, repo_root, wait_for, Demo, Proc};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

struct Prometheus {
    addr: SocketAddr,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` every second and
    /// evaluating the project's alert rules every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = repo_root().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: cartpulse\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = rules.canonicalize().expect("deploy/prometheus/alerts.yml")
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write config");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(dir.path());
        let proc = Proc::spawn("prometheus", cmd, &dir.path().join("prometheus.log"));
        let mut p = Prometheus {
            addr,
            proc,
            _dir: dir,
        };
        wait_for(
            "prometheus to be ready",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Some(st) = p.proc.exited() {
                    panic!("prometheus exited with {st}\n{}", p.proc.log_tail(30));
                }
                match get(p.addr, "/-/ready", &[]) {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("/-/ready: {} {}", r.status, r.text())),
                    Err(e) => Err(format!("/-/ready: {e}")),
                }
            },
        );
        p
    }

    fn api(&self, path: &str) -> Result<Value, String> {
        let r = get(self.addr, path, &[]).map_err(|e| format!("GET {path}: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET {path}: {} {}", r.status, r.text()));
        }
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
        if v["status"] != "success" {
            return Err(format!("GET {path}: {v}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query; the result vector.
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(q)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a one-series result.
fn single_value(result: &[Value]) -> Option<f64> {
    match result {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_the_demo_and_evaluates_the_alert_rules() {
    let demo = Demo::start(&["--rate", "2000"]);
    let prom = Prometheus::start(demo.addr);
    let fail = |what: &str, seen: &str| -> String {
        format!(
            "{what}; last seen: {seen}\n{}\n{}",
            prom.proc.log_tail(20),
            demo.proc.log_tail(10)
        )
    };
    let limit = Duration::from_secs(60);
    let every = Duration::from_millis(500);

    let views = wait_for(
        "cartpulse_cart_events_total{action=\"view\"} > 0 in Prometheus",
        limit,
        every,
        || {
            let r = prom.query(r#"cartpulse_cart_events_total{action="view"}"#)?;
            match single_value(&r) {
                Some(v) if v > 0.0 => Ok((r[0].clone(), v)),
                _ => Err(format!("{r:?}")),
            }
        },
    );
    let (series, _) = &views;
    assert_eq!(series["metric"]["job"], "cartpulse", "{series}");
    assert_eq!(
        series["metric"]["instance"],
        demo.addr.to_string(),
        "{series}"
    );

    let rate = wait_for(
        "rate(cartpulse_events_decoded_total[10s]) > 0",
        limit,
        every,
        || {
            let r = prom.query("rate(cartpulse_events_decoded_total[10s])")?;
            // the first samples straddle the start-up, so the rate climbs towards the
            // demo's 2000 events/s: wait until it is within an order of magnitude
            match single_value(&r) {
                Some(v) if v >= 200.0 => Ok(v),
                _ => Err(format!("{r:?}")),
            }
        },
    );
    // a rate within an order of magnitude of the demo's shows the counter moves as it
    // should (a 2-core machine running other tests may be slower)
    assert!(
        (200.0..20_000.0).contains(&rate),
        "events/s as Prometheus sees it: {rate}"
    );

    let up = prom.query(r#"up{job="cartpulse"}"#).expect("query up");
    assert_eq!(single_value(&up), Some(1.0), "up: {up:?}");

    // Every label value of the action counter is there from the start, so the business
    // alert sees checkouts = 0 rather than "no data" before the first checkout.
    let actions = prom
        .query("count by (action) (cartpulse_cart_events_total)")
        .expect("query actions");
    let mut names: Vec<String> = actions
        .iter()
        .filter_map(|s| s["metric"]["action"].as_str().map(String::from))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["add", "checkout", "remove", "update_qty", "view"],
        "{actions:?}"
    );

    // The alert rules load, and each one has been evaluated on these real series without
    // an error (promtool's unit tests cover when they fire; this covers that they evaluate,
    // e.g. no many-to-many matching, on what cartpulse really exports).
    let groups = wait_for(
        "every alert rule to be evaluated without error",
        limit,
        every,
        || {
            let data = prom.api("/api/v1/rules")?;
            let groups = data["groups"].as_array().cloned().unwrap_or_default();
            let rules: Vec<&Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            if rules.is_empty() {
                return Err(format!("no rules loaded: {data}"));
            }
            let pending: Vec<String> = rules
                .iter()
                .filter(|r| {
                    r["health"] != "ok"
                        || r["lastEvaluation"]
                            .as_str()
                            .is_none_or(|t| t.starts_with("0001-"))
                })
                .map(|r| {
                    format!(
                        "{} health={} error={}",
                        r["name"], r["health"], r["lastError"]
                    )
                })
                .collect();
            if pending.is_empty() {
                Ok(groups)
            } else {
                Err(pending.join("; "))
            }
        },
    );
    let rule_count: usize = groups
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(rule_count >= 9, "only {rule_count} rules loaded");

    // A healthy demo fires none of them (those with a `for:` may be pending at start-up,
    // e.g. the checkpoint age before the first checkpoint).
    let alerts = prom.api("/api/v1/alerts").expect("alerts");
    let firing: Vec<&Value> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(
        firing.is_empty(),
        "{}",
        fail("alerts fire on a healthy demo", &format!("{firing:?}"))
    );
}
