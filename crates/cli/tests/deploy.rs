//! Keeps `deploy/` (the Grafana dashboard, the Prometheus alert rules and scrape config)
//! and `docs/metrics.md` from drifting away from the metrics cartpulse really exports:
//! every `cartpulse_*` name (and label matcher) they use must be on a live `/metrics`, every
//! exported metric must be documented, and promtool must accept and unit-test the rules.

mod live;

use live::{parse_exposition, repo_root, wait_for, Demo, Sample};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn read(p: &PathBuf) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn dashboard() -> Json {
    let p = deploy("grafana/cartpulse.json");
    serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn rules() -> Yaml {
    let p = deploy("prometheus/alerts.yml");
    serde_yaml_ng::from_str(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every alerting rule of alerts.yml.
fn alert_rules(y: &Yaml) -> Vec<&Yaml> {
    y["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules of a group"))
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn json_strings<'a>(v: &'a Json, out: &mut Vec<&'a str>) {
    match v {
        Json::String(s) => out.push(s),
        Json::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        Json::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

fn yaml_strings<'a>(v: &'a Yaml, out: &mut Vec<&'a str>) {
    match v {
        Yaml::String(s) => out.push(s),
        Yaml::Sequence(a) => a.iter().for_each(|x| yaml_strings(x, out)),
        Yaml::Mapping(m) => m.values().for_each(|x| yaml_strings(x, out)),
        Yaml::Tagged(t) => yaml_strings(&t.value, out),
        _ => {}
    }
}

/// One use of a metric in an expression: `name{label op "value", ...}`.
#[derive(Debug)]
struct Use {
    name: String,
    matchers: Vec<(String, String, String)>,
    text: String,
}

/// Every `cartpulse_[a-z_]+` name in `s`, with the label matchers that follow it.
fn metric_uses(s: &str) -> Vec<Use> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(off) = s[from..].find("cartpulse_") {
        let start = from + off;
        from = start + "cartpulse_".len();
        if start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            continue;
        }
        let mut end = from;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        // the naming-scheme pattern itself (`cartpulse_<what>_<unit>`) is no metric
        if end == from || (end < b.len() && b[end].is_ascii_digit()) {
            continue;
        }
        let name = s[start..end].trim_end_matches('_').to_string();
        let mut matchers = Vec::new();
        let mut text_end = end;
        if b.get(end) == Some(&b'{') {
            if let Some(close) = s[end..].find('}') {
                matchers = parse_matchers(&s[end + 1..end + close]);
                text_end = end + close + 1;
            }
        }
        out.push(Use {
            name,
            matchers,
            text: s[start..text_end].to_string(),
        });
        from = end;
    }
    out
}

/// `a="x", b=~"y"` → [(a, =, x), (b, =~, y)]; anything else inside the braces (a
/// `{measure}` in prose) is ignored.
fn parse_matchers(s: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\n']);
        let Some(op_at) = rest.find(['=', '!']) else {
            return out;
        };
        let label = rest[..op_at].trim().to_string();
        let r = &rest[op_at..];
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|o| r.starts_with(o))
            .unwrap_or("=");
        let r = r[op.len()..].trim_start();
        let Some(r) = r.strip_prefix('"') else {
            return out;
        };
        let Some(q) = r.find('"') else { return out };
        out.push((label, op.to_string(), r[..q].to_string()));
        rest = &r[q + 1..];
    }
}

/// The metric family a sample or expression name belongs to: histograms are used as
/// `<name>_bucket`, `<name>_sum` and `<name>_count`.
fn family(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Checks each use against a scrape: the family must be exported, and each label matcher
/// must name a label the metric has (and, for `=`, a value it takes), except the target
/// labels Prometheus adds (`job`, `instance`) and Grafana variables.
fn check_uses(
    origin: &str,
    uses: &[Use],
    types: &BTreeMap<String, String>,
    samples: &[Sample],
) -> Vec<String> {
    let mut problems = Vec::new();
    for u in uses {
        let fam = family(&u.name, types);
        if !types.contains_key(&fam) {
            problems.push(format!(
                "{origin}: `{}` is not exported by cartpulse",
                u.text
            ));
            continue;
        }
        let of_name: Vec<&Sample> = samples.iter().filter(|s| s.name == u.name).collect();
        for (label, op, value) in &u.matchers {
            if label == "job" || label == "instance" {
                continue;
            }
            let has_label = of_name
                .iter()
                .any(|s| s.labels.iter().any(|(k, _)| k == label));
            if !has_label {
                problems.push(format!(
                    "{origin}: `{}`: {} has no label {label:?}",
                    u.text, u.name
                ));
            } else if op == "=" && !value.contains('$') {
                let has_value = of_name
                    .iter()
                    .any(|s| s.labels.iter().any(|(k, v)| k == label && v == value));
                if !has_value {
                    problems.push(format!(
                        "{origin}: `{}`: no series of {} has {label}={value:?}",
                        u.text, u.name
                    ));
                }
            }
        }
    }
    problems
}

fn scrape_types(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let (types, samples) = parse_exposition(text);
    (types.into_iter().collect(), samples)
}

#[test]
fn dashboard_rules_and_docs_match_the_exported_metrics() {
    let dash = dashboard();
    let mut dash_strings = Vec::new();
    json_strings(&dash, &mut dash_strings);
    let dash_uses: Vec<Use> = dash_strings.iter().flat_map(|s| metric_uses(s)).collect();

    let rules = rules();
    let mut rule_strings = Vec::new();
    yaml_strings(&rules, &mut rule_strings);
    let rule_uses: Vec<Use> = rule_strings.iter().flat_map(|s| metric_uses(s)).collect();

    let doc = read(&repo_root().join("docs/metrics.md"));
    let doc_uses: Vec<Use> = metric_uses(&doc)
        .into_iter()
        .map(|mut u| {
            u.matchers.clear();
            u
        })
        .collect();

    assert!(dash_uses.len() > 20, "too few metric uses in the dashboard");
    assert!(rule_uses.len() > 10, "too few metric uses in the rules");

    // Labelled gauges without preset labels (state entries per shard) appear only after
    // the pipeline's first report: wait for that, then every name used anywhere must be
    // exported, or the test fails with the list of what is not.
    let demo = Demo::start(&["--rate", "2000"]);
    let (types, samples) = wait_for(
        "the first state report on /metrics",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (types, samples) = scrape_types(&demo.scrape());
            if samples.iter().any(|s| s.name == "cartpulse_state_entries") {
                Ok((types, samples))
            } else {
                Err("no cartpulse_state_entries yet".to_string())
            }
        },
    );
    let mut problems = check_uses("dashboard", &dash_uses, &types, &samples);
    problems.extend(check_uses("alerts.yml", &rule_uses, &types, &samples));
    problems.extend(check_uses("docs/metrics.md", &doc_uses, &types, &samples));
    assert!(
        problems.is_empty(),
        "metrics used but not exported:\n{}",
        problems.join("\n")
    );

    // the other way round: every exported family is documented, with its type, in a table
    // row of its own
    let mut undocumented = Vec::new();
    for (name, ty) in &types {
        if !name.starts_with("cartpulse_") {
            continue;
        }
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")));
        match row {
            Some(r) if r.contains(&format!("| {ty} |")) => {}
            Some(r) => undocumented.push(format!("{name}: type {ty} not in its row: {r}")),
            None => undocumented.push(format!("{name} ({ty}) has no row in docs/metrics.md")),
        }
    }
    assert!(
        undocumented.is_empty(),
        "docs/metrics.md is out of date:\n{}",
        undocumented.join("\n")
    );
    // and follows the naming scheme it describes
    for (name, ty) in &types {
        assert!(name.starts_with("cartpulse_"), "{name} lacks the prefix");
        assert_eq!(
            ty == "counter",
            name.ends_with("_total"),
            "{name} ({ty}): counters, and only counters, end in _total"
        );
    }

    // the panels and rules the issue asks for are there
    let families = |uses: &[Use]| -> BTreeSet<String> {
        uses.iter().map(|u| family(&u.name, &types)).collect()
    };
    let on_dashboard = families(&dash_uses);
    for want in [
        "cartpulse_cart_events_total",
        "cartpulse_carts",
        "cartpulse_records_emitted_total",
        "cartpulse_dead_letters_total",
        "cartpulse_late_events_total",
        "cartpulse_duplicates_total",
        "cartpulse_watermark_lag_ms",
        "cartpulse_checkpoint_duration_seconds",
        "cartpulse_checkpoint_size_bytes",
        "cartpulse_last_checkpoint_timestamp_ms",
        "cartpulse_source_lag",
        "cartpulse_processing_latency_seconds",
        "cartpulse_state_entries",
    ] {
        assert!(
            on_dashboard.contains(want),
            "no dashboard panel uses {want}"
        );
    }
    let in_rules = families(&rule_uses);
    for want in [
        "cartpulse_last_checkpoint_timestamp_ms",
        "cartpulse_checkpoint_duration_seconds",
        "cartpulse_source_lag",
        "cartpulse_dead_letters_total",
        "cartpulse_source_records_total",
        "cartpulse_late_events_total",
        "cartpulse_watermark_ms",
        "cartpulse_cart_events_total",
    ] {
        assert!(in_rules.contains(want), "no alert rule uses {want}");
    }
    // the demo's histograms really are histograms (the p99 panels and rules rely on it)
    for h in [
        "cartpulse_checkpoint_duration_seconds",
        "cartpulse_processing_latency_seconds",
    ] {
        assert_eq!(types.get(h).map(String::as_str), Some("histogram"), "{h}");
        assert!(
            samples.iter().any(|s| s.name == format!("{h}_bucket")),
            "{h} has no buckets"
        );
    }
}

#[test]
fn dashboard_is_an_importable_grafana_dashboard() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input: {inputs:?}"
    );
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "no DS_PROMETHEUS datasource variable (needed when provisioned from a file)"
    );
    assert!(d["uid"].is_string() && d["title"].is_string());
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {id} sticks out of the 24-column grid");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("title");
        titles.push(title.to_string());
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title:?} does not use the DS_PROMETHEUS input"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?} has an empty query"
            );
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "unbalanced parentheses in {title:?}: {expr}"
            );
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title:?}");
        }
    }
    for want in [
        "Events per second by action",
        "Checkouts vs adds",
        "Records emitted by stream",
        "Dead letters by reason",
        "Watermark lag",
        "Checkpoint duration p99",
        "Seconds since last checkpoint",
        "Processing latency p99",
        "State entries",
    ] {
        assert!(titles.iter().any(|t| t == want), "no panel {want:?}");
    }
}

#[test]
fn alert_rules_have_for_severity_and_annotations() {
    let y = rules();
    let rules = alert_rules(&y);
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["alert"].as_str().expect("alert name");
        assert!(names.insert(name), "duplicate alert {name}");
        assert!(
            r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "{name}: no expr"
        );
        assert!(r["for"].as_str().is_some(), "{name}: no `for:`");
        let sev = r["labels"]["severity"].as_str();
        assert!(
            matches!(sev, Some("critical" | "warning" | "info")),
            "{name}: severity {sev:?}"
        );
        for a in ["summary", "description"] {
            let text = r["annotations"][a].as_str().unwrap_or_default();
            assert!(
                text.len() > 20,
                "{name}: {a} missing or too short: {text:?}"
            );
        }
    }
    for want in [
        "CartpulseDown",
        "CartpulseCheckpointStale",
        "CartpulseCheckpointFailed",
        "CartpulseCheckpointSlow",
        "CartpulseSourceLagGrowing",
        "CartpulseDeadLettersSpiking",
        "CartpulseLateEventsSpiking",
        "CartpulseWatermarkLagHigh",
        "CartpulseCheckoutsStopped",
    ] {
        assert!(names.contains(want), "no alert {want}");
    }

    // the example config scrapes the default address under the job name the rules use,
    // and loads these rules
    let p = deploy("prometheus/prometheus.yml");
    let cfg: Yaml = serde_yaml_ng::from_str(&read(&p)).expect("prometheus.yml");
    let job = cfg["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "cartpulse")
        .expect("a scrape job named cartpulse");
    let targets: Vec<&str> = job["static_configs"][0]["targets"]
        .as_sequence()
        .expect("targets")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(targets, ["127.0.0.1:8080"]);
    let files: Vec<&str> = cfg["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(files, ["alerts.yml"]);
    let down = rules
        .iter()
        .find(|r| r["alert"] == "CartpulseDown")
        .unwrap();
    assert!(
        down["expr"]
            .as_str()
            .unwrap()
            .contains(r#"job="cartpulse""#),
        "CartpulseDown must select the job of prometheus.yml"
    );
}

fn promtool(args: &[&str]) {
    let o = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!("run promtool (scripts/services.sh installs it, Debian package prometheus): {e}")
        });
    assert!(
        o.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_the_config() {
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
}

#[test]
fn metric_names_and_matchers_are_extracted_from_expressions() {
    let u = metric_uses(
        r#"sum by (le) (rate(cartpulse_checkpoint_duration_seconds_bucket{job=~"$job"}[5m])) / cartpulse_carts{measure="value", instance=~"$instance"} and cartpulse_<what>_<unit> xcartpulse_no"#,
    );
    let names: Vec<&str> = u.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cartpulse_checkpoint_duration_seconds_bucket",
            "cartpulse_carts"
        ]
    );
    assert_eq!(
        u[1].matchers,
        [
            ("measure".into(), "=".into(), "value".into()),
            ("instance".into(), "=~".into(), "$instance".into())
        ]
    );
    let types: BTreeMap<String, String> = [(
        "cartpulse_checkpoint_duration_seconds".to_string(),
        "histogram".to_string(),
    )]
    .into();
    assert_eq!(
        family(&u[0].name, &types),
        "cartpulse_checkpoint_duration_seconds"
    );
    assert_eq!(family("cartpulse_x_count", &types), "cartpulse_x_count");
}
