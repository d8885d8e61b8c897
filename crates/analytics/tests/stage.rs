//! The analytics stage inside the real pipeline: rule quality against the generator's
//! labelled actors, the abandoned-cart alert fired by the clock alone, and checkpoints.

use cartpulse_analytics::live::catalog::{Catalog, Product};
use cartpulse_analytics::live::{AnalyticsConfig, CartAnalytics, RulesFile};
use cartpulse_engine::clock::ManualClock;
use cartpulse_engine::{
    Operator, Pipeline, PipelineConfig, Poll, Sink, SinkError, Source, SourceError, Stream,
};
use cartpulse_model::Decoder;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Alerts = Arc<Mutex<Vec<Value>>>;

/// Keeps committed alerts only (staged per epoch, published on commit).
#[derive(Default)]
struct AlertSink {
    staged: Vec<(u64, Vec<u8>)>,
    alerts: Alerts,
}

impl Sink for AlertSink {
    fn name(&self) -> &str {
        "alerts"
    }
    fn recover(&mut self, _: Option<u64>) -> Result<(), SinkError> {
        self.staged.clear();
        Ok(())
    }
    fn write(
        &mut self,
        epoch: u64,
        stream: Stream,
        records: &[u8],
        _: u64,
    ) -> Result<(), SinkError> {
        if stream == Stream::Alerts {
            self.staged.push((epoch, records.to_vec()));
        }
        Ok(())
    }
    fn pre_commit(&mut self, _: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        let mut a = self.alerts.lock().unwrap();
        for (_, r) in self.staged.iter().filter(|(e, _)| *e <= epoch) {
            for line in r.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                a.push(serde_json::from_slice(line).expect("alert is JSON"));
            }
        }
        self.staged.retain(|(e, _)| *e > epoch);
        Ok(())
    }
}

fn generated(
    events: u64,
    seed: u64,
) -> (
    Vec<u8>,
    cartpulse_gen::GroundTruth,
    Vec<cartpulse_gen::Product>,
) {
    generated_with(cartpulse_gen::GenConfig {
        events,
        seed,
        ..Default::default()
    })
}

fn generated_with(
    cfg: cartpulse_gen::GenConfig,
) -> (
    Vec<u8>,
    cartpulse_gen::GroundTruth,
    Vec<cartpulse_gen::Product>,
) {
    let mut g = cartpulse_gen::Generator::new(cfg).unwrap();
    let catalog = g.catalog().to_vec();
    let mut data = Vec::new();
    let mut line = Vec::new();
    while g.next_line(&mut line).is_some() {
        data.extend_from_slice(&line);
        line.clear();
    }
    (data, g.ground_truth(), catalog)
}

fn catalog_of(products: &[cartpulse_gen::Product]) -> Catalog {
    Catalog::from_products(products.iter().map(|p| {
        (
            p.sku.clone(),
            Product {
                name: p.name.clone(),
                category: p.category.clone(),
                brand: p.brand.clone(),
                stock: Some(p.stock),
            },
        )
    }))
}

/// Precision and recall of each risk rule against the generator's labelled abnormal actors
/// (targets: precision ≥ 0.9, recall ≥ 0.8; BENCHMARKS.md reports the figures).
#[test]
fn risk_rules_find_the_labelled_actors() {
    let (data, truth, products) = generated(600_000, 42);
    let op = CartAnalytics::new(AnalyticsConfig::default(), RulesFile::default())
        .unwrap()
        .with_catalog(catalog_of(&products));
    let alerts: Alerts = Default::default();
    let sink = AlertSink {
        alerts: alerts.clone(),
        ..Default::default()
    };
    let src = cartpulse_connectors::MemorySource::new(Arc::new(data), true);
    Pipeline::new(
        PipelineConfig::default(),
        Box::new(src),
        vec![Box::new(sink)],
    )
    .with_operator(Box::new(op))
    .run()
    .unwrap();
    let mut flagged: HashMap<String, HashSet<String>> = HashMap::new();
    for a in alerts.lock().unwrap().iter() {
        flagged
            .entry(a["rule"].as_str().unwrap().to_string())
            .or_default()
            .insert(a["user_id"].as_str().unwrap().to_string());
    }
    let set = |v: &[String]| v.iter().cloned().collect::<HashSet<_>>();
    // (rule, labelled actors, the labelled actors whose behaviour in the sample shows it):
    // precision is against all labelled actors, recall against those that acted (a
    // hoarder that only looked at one product is invisible to any detector)
    let cases = [
        (
            "hoarding",
            set(&truth.hoarders),
            set(&truth.hoarders_active),
        ),
        (
            "click_farm_device",
            set(&truth.click_farmers),
            set(&truth.click_farmers),
        ),
        (
            "add_remove_cycling",
            set(&truth.click_farmers),
            set(&truth.click_farmers),
        ),
        ("bot_rate", set(&truth.bots), set(&truth.bots)),
    ];
    for (rule, labelled, actual) in cases {
        let got = flagged.get(rule).cloned().unwrap_or_default();
        let precision = got.intersection(&labelled).count() as f64 / got.len().max(1) as f64;
        let tp = got.intersection(&actual).count() as f64;
        let recall = tp / actual.len().max(1) as f64;
        let recall_all = got.intersection(&labelled).count() as f64 / labelled.len().max(1) as f64;
        eprintln!(
            "{rule}: flagged {} of {} labelled ({} acting): precision {precision:.3} \
             recall {recall:.3} (of all labelled {recall_all:.3})",
            got.len(),
            labelled.len(),
            actual.len()
        );
        assert!(
            !actual.is_empty(),
            "{rule}: no labelled actors in the sample"
        );
        assert!(precision >= 0.9, "{rule}: precision {precision:.3}");
        assert!(recall >= 0.8, "{rule}: recall {recall:.3}");
    }
    // every alert names its rule and carries the values it read
    for a in alerts.lock().unwrap().iter().take(1000) {
        assert!(
            a["alert_id"].is_string() && a["severity"].is_string(),
            "{a}"
        );
        if a["rule"] != "price_drop" {
            assert!(
                a["evidence"].as_object().is_some_and(|o| !o.is_empty()),
                "{a}"
            );
        }
    }
    // one price-drop alert per affected user per change, never two
    let mut seen = HashSet::new();
    for a in alerts
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == "price_drop")
    {
        assert!(
            seen.insert(a["alert_id"].as_str().unwrap().to_string()),
            "{a}"
        );
    }
    assert!(!seen.is_empty(), "the generator changes prices; some drop");
}

/// Serves its lines, then idles while moving a manual clock past the abandonment deadline;
/// ends once an alert is committed (or after a bounded wait).
struct IdleSource {
    data: Option<Vec<u8>>,
    clock: Arc<ManualClock>,
    after: i64,
    alerts: Alerts,
    polls: u32,
}

impl Source for IdleSource {
    fn name(&self) -> &str {
        "idle"
    }
    fn open(&mut self, _: Option<&Value>) -> Result<(), SourceError> {
        Ok(())
    }
    fn decoder(&self) -> Decoder {
        Decoder::Json(cartpulse_model::DecodeOptions::default())
    }
    fn poll(&mut self, _: usize) -> Result<Poll, SourceError> {
        if let Some(d) = self.data.take() {
            return Ok(Poll::Chunk(cartpulse_engine::SourceChunk {
                data: d,
                ..Default::default()
            }));
        }
        std::thread::sleep(Duration::from_millis(5));
        self.polls += 1;
        self.clock.set(self.after);
        let fired = self
            .alerts
            .lock()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "abandoned_cart");
        Ok(if fired || self.polls > 400 {
            Poll::End
        } else {
            Poll::Idle
        })
    }
    fn position(&self) -> Value {
        Value::Null
    }
}

/// The abandoned-cart alert fires on the clock alone: no event follows the cart's last one.
#[test]
fn abandoned_cart_alert_fires_with_no_further_event() {
    let t = 1_764_000_000_000i64;
    let lines = format!(
        "{{\"event_id\":\"a\",\"ts\":{t},\"user_id\":\"u1\",\"session_id\":\"s1\",\"action\":\"add\",\"sku\":\"p1\",\"qty\":2,\"price\":19.99}}\n"
    );
    let abandon = Duration::from_secs(1800);
    let clock = Arc::new(ManualClock::new(t));
    let alerts: Alerts = Default::default();
    let src = IdleSource {
        data: Some(lines.into_bytes()),
        clock: clock.clone(),
        after: t + abandon.as_millis() as i64 + 10_000,
        alerts: alerts.clone(),
        polls: 0,
    };
    let cfg = PipelineConfig {
        shards: 2,
        abandon_after: abandon,
        idle_timeout: Some(Duration::from_millis(20)),
        checkpoint: cartpulse_engine::CheckpointConfig {
            interval: Duration::from_millis(10),
            ..Default::default()
        },
        ..Default::default()
    };
    let sink = AlertSink {
        alerts: alerts.clone(),
        ..Default::default()
    };
    let op = CartAnalytics::new(AnalyticsConfig::default(), RulesFile::default()).unwrap();
    let mut p = Pipeline::new(cfg, Box::new(src), vec![Box::new(sink)]).with_operator(Box::new(op));
    p.clock = clock;
    p.run().unwrap();
    let a = alerts.lock().unwrap();
    let ab: Vec<_> = a.iter().filter(|a| a["rule"] == "abandoned_cart").collect();
    assert_eq!(ab.len(), 1, "{a:?}");
    assert_eq!(ab[0]["user_id"], "u1");
    assert_eq!(ab[0]["kind"], "marketing");
    assert_eq!(ab[0]["items"], 2);
    assert_eq!(ab[0]["value"].as_f64(), Some(39.98));
    assert_eq!(ab[0]["lines"][0]["sku"], "p1");
    assert_eq!(ab[0]["evidence"]["cart_items"], 2);
}

/// Hands the wrapped stage's answers to a request out when the pipeline drops it.
struct Inspect {
    inner: CartAnalytics,
    ask: Vec<(&'static str, Value)>,
    answers: Arc<Mutex<Vec<Value>>>,
}

impl cartpulse_engine::Operator for Inspect {
    fn on_input(&mut self, input: &cartpulse_engine::OpInput, out: &mut cartpulse_engine::Records) {
        self.inner.on_input(input, out)
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        self.inner.snapshot()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.inner.restore(bytes)
    }
    fn request(&mut self, kind: &str, body: &Value) -> Result<Value, String> {
        self.inner.request(kind, body)
    }
}

impl Drop for Inspect {
    fn drop(&mut self) {
        let mut a = self.answers.lock().unwrap();
        for (kind, body) in &self.ask {
            a.push(self.inner.request(kind, body).unwrap());
        }
    }
}

/// The purchase-intent model, scored prequentially (every episode before it is learnt
/// from, so each score is held out), ranks checked-out carts above abandoned ones far better
/// than a constant predictor (AUC 0.5); and checked-out baskets feed recommendations.
#[test]
fn intent_beats_a_constant_and_baskets_feed_recommendations() {
    // hours of shopping, so that carts are abandoned as well as bought
    let (data, _, products) = generated_with(cartpulse_gen::GenConfig {
        events: 400_000,
        seed: 7,
        events_per_sec: 40.0,
        ..Default::default()
    });
    // the product most often put in carts, which must have been bought with others
    let mut adds: HashMap<String, u64> = HashMap::new();
    for l in data.split(|&b| b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<Value>(l) {
            if v["action"] == "add" {
                *adds
                    .entry(v["sku"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    let top = adds
        .into_iter()
        .max_by_key(|(s, n)| (*n, s.clone()))
        .unwrap()
        .0;
    let answers: Arc<Mutex<Vec<Value>>> = Default::default();
    let op = Inspect {
        inner: CartAnalytics::new(AnalyticsConfig::default(), RulesFile::default())
            .unwrap()
            .with_catalog(catalog_of(&products)),
        ask: vec![
            ("intent", serde_json::json!({ "limit": 5 })),
            (
                "recommendations",
                serde_json::json!({ "skus": top, "limit": 3 }),
            ),
        ],
        answers: answers.clone(),
    };
    let src = cartpulse_connectors::MemorySource::new(Arc::new(data), true);
    let cfg = PipelineConfig {
        abandon_after: Duration::from_secs(15 * 60),
        ..Default::default()
    };
    Pipeline::new(cfg, Box::new(src), vec![Box::new(AlertSink::default())])
        .with_operator(Box::new(op))
        .run()
        .unwrap();
    let a = answers.lock().unwrap();
    let intent = &a[0];
    let ev = &intent["evaluation"];
    eprintln!("intent: {ev}\nweights: {}", intent["model"]["weights"]);
    assert!(ev["examples"].as_u64().unwrap() > 1000, "{ev}");
    assert_eq!(ev["baseline_auc"], 0.5);
    let auc = ev["auc"].as_f64().unwrap();
    assert!(auc >= 0.8, "held-out AUC {auc}");
    assert!(
        ev["log_loss"].as_f64().unwrap() < ev["baseline_log_loss"].as_f64().unwrap(),
        "{ev}"
    );
    let recs = &a[1];
    eprintln!("recommendations: {recs}");
    assert!(recs["baskets_observed"].as_u64().unwrap() > 1000, "{recs}");
    let list = recs["recommendations"].as_array().unwrap();
    assert!(!list.is_empty(), "{recs}");
    for r in list {
        assert_ne!(r["item"], top.as_str());
        assert!(r["evidence"].as_str().unwrap().contains(&top), "{r}");
    }
}
