//! Streaming analytics: the engine's analytics stage (`cartpulse_engine::Operator`).
//!
//! Per accepted event, in input order: the declared sliding-window features are updated,
//! product holdings and prices followed, the funnel counted, and every rule evaluated; rules
//! that fire write an alert (rule, severity, subject, and the values of every variable the
//! rule read) to the `alerts` stream. Price drops fan out to every user holding or recently
//! viewing the product. All of it is state of the stage, snapshotted at each checkpoint.

pub mod catalog;
pub mod features;
pub mod funnel;
pub mod pack;
pub mod rules;

use crate::intent::{Intent, IntentConfig, Observed};
use crate::recommend::{Recommender, RecommenderConfig};
use cartpulse_engine::{OpAbandoned, OpEvent, OpInput, Operator, Records, Stream};
use cartpulse_model::{write_json_str, Action, Money};
use catalog::Catalog;
use cel::{Context, Value};
use compact_str::CompactString;
use features::{Feature, FeatureKey, FeatureSpec, Measure};
use funnel::Funnel;
use hashbrown::HashMap;
use rules::{RuleError, RuleSet, RuleSpec, Trigger, Values, VarTable, VarType};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[analytics]` in the config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    pub enabled: bool,
    /// Load the built-in rule pack and its features (`pack.rs`); rules declared here with
    /// the same name replace the built-in ones.
    pub builtin_rules: bool,
    pub features: Vec<FeatureSpec>,
    pub rules: Vec<RuleSpec>,
    /// A TOML file with more `[[rules]]` and `[[features]]`, reloaded while running.
    pub rules_file: Option<PathBuf>,
    /// Product catalogue (CSV with header: sku, name, category, brand, price, stock).
    pub catalog: Option<PathBuf>,
    pub price_alerts: PriceAlertConfig,
    /// Days of funnel and retention state kept.
    pub funnel_days: u32,
    /// Latest alerts kept for the API and dashboard.
    pub recent_alerts: usize,
    /// Purchase-intent model (`crate::intent`).
    pub intent: IntentConfig,
    pub recommend: RecommendConfig,
}

/// `[analytics.recommend]`: recommendations from checked-out baskets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecommendConfig {
    pub enabled: bool,
    /// Co-occurring products tracked per product.
    pub max_partners: usize,
    /// Pairs bought together fewer times than this are not cited.
    pub min_together: u64,
    /// Mined association rules (`rules.jsonl` as `cartpulse fpgrowth` or `cartpulse batch`
    /// writes them), used beside the live co-occurrence counts.
    pub rules: Option<PathBuf>,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        let r = RecommenderConfig::default();
        RecommendConfig {
            enabled: true,
            max_partners: r.max_partners,
            min_together: r.min_together,
            rules: None,
        }
    }
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            enabled: true,
            builtin_rules: true,
            features: Vec::new(),
            rules: Vec::new(),
            rules_file: None,
            catalog: None,
            price_alerts: PriceAlertConfig::default(),
            funnel_days: 35,
            recent_alerts: 200,
            intent: IntentConfig::default(),
            recommend: RecommendConfig::default(),
        }
    }
}

/// Price-drop alerts: when a product's price falls, every user holding it in a cart or who
/// viewed it within `watch_window` gets one alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceAlertConfig {
    pub enabled: bool,
    /// Smallest drop that alerts, percent.
    pub min_drop_pct: f64,
    #[serde(with = "humantime_serde")]
    pub watch_window: Duration,
    /// Viewers remembered per product (the most recent ones).
    pub max_watchers: usize,
}

impl Default for PriceAlertConfig {
    fn default() -> Self {
        PriceAlertConfig {
            enabled: true,
            min_drop_pct: 1.0,
            watch_window: Duration::from_secs(3600),
            max_watchers: 1000,
        }
    }
}

/// Rules and features from a rules file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesFile {
    pub features: Vec<FeatureSpec>,
    pub rules: Vec<RuleSpec>,
}

impl RulesFile {
    pub fn parse(text: &str) -> Result<RulesFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("feature `{0}` is declared twice")]
    DuplicateFeature(String),
    #[error("feature `{0}` has the name of a built-in variable")]
    ShadowedVariable(String),
    #[error("{0}")]
    Catalog(String),
    #[error("{0}")]
    Config(String),
}

/// Everything that changes when rules are reloaded.
struct Compiled {
    table: VarTable,
    rules: RuleSet,
    /// Variables some rule reads: only these are computed per event.
    reads: Vec<usize>,
    /// For each feature, its variable id.
    feature_ids: Vec<usize>,
    /// An abandoned-cart rule reads `segment` or `region`: the users' enrichment rows are
    /// then remembered from their events (an abandonment carries no event of its own).
    abandoned_reads_user: bool,
    /// Per action (`Action::index`): the features to touch (counted by the action, or read
    /// by a rule evaluated on it) and the other variables to materialise. Most events are
    /// views that few rules look at, so this skips most of the work for them.
    plans: [Plan; 5],
}

#[derive(Default)]
struct Plan {
    features: Vec<usize>,
    vars: Vec<usize>,
}

/// Merges the built-in pack with declared rules and features (same name: declared wins).
fn merged(cfg: &AnalyticsConfig, file: &RulesFile) -> (Vec<FeatureSpec>, Vec<RuleSpec>) {
    let mut features: Vec<FeatureSpec> = Vec::new();
    let mut rules: Vec<RuleSpec> = Vec::new();
    if cfg.builtin_rules {
        let p = pack::builtin();
        features = p.features;
        rules = p.rules;
    }
    for f in cfg.features.iter().chain(&file.features) {
        features.retain(|x| x.name != f.name);
        features.push(f.clone());
    }
    for r in cfg.rules.iter().chain(&file.rules) {
        rules.retain(|x| x.name != r.name);
        rules.push(r.clone());
    }
    (features, rules)
}

fn compile(features: &[FeatureSpec], rules: &[RuleSpec]) -> Result<Compiled, AnalyticsError> {
    let mut seen = hashbrown::HashSet::new();
    for f in features {
        if !seen.insert(f.name.as_str()) {
            return Err(AnalyticsError::DuplicateFeature(f.name.clone()));
        }
        if rules::VARIABLES.iter().any(|v| v.0 == f.name) {
            return Err(AnalyticsError::ShadowedVariable(f.name.clone()));
        }
    }
    let ftypes: Vec<(String, VarType)> = features
        .iter()
        .map(|f| {
            let t = match f.measure {
                Measure::SumValue => VarType::Float,
                _ => VarType::Int,
            };
            (f.name.clone(), t)
        })
        .collect();
    let table = VarTable::new(&ftypes);
    let rules = RuleSet::compile(rules, &table)?;
    let reads = rules.reads();
    let feature_ids: Vec<usize> = features
        .iter()
        .map(|f| table.id(&f.name).expect("declared"))
        .collect();
    let abandoned_reads_user = rules
        .rules
        .iter()
        .filter(|r| r.spec.on == Trigger::Abandoned)
        .flat_map(|r| r.reads.iter())
        .any(|&id| matches!(table.names[id].as_str(), "segment" | "region"));
    let mut plans: [Plan; 5] = Default::default();
    for a in Action::ALL {
        let mut read: Vec<usize> = rules
            .rules
            .iter()
            .filter(|r| {
                r.spec.on == Trigger::Event
                    && (r.spec.actions.is_empty() || r.spec.actions.contains(&a))
            })
            .flat_map(|r| r.reads.iter().copied())
            .collect();
        read.sort_unstable();
        read.dedup();
        let plan = &mut plans[a.index()];
        for (i, f) in features.iter().enumerate() {
            if f.actions.is_empty() || f.actions.contains(&a) || read.contains(&feature_ids[i]) {
                plan.features.push(i);
            }
        }
        plan.vars = read
            .into_iter()
            .filter(|id| !feature_ids.contains(id))
            .collect();
    }
    Ok(Compiled {
        table,
        rules,
        reads,
        feature_ids,
        abandoned_reads_user,
        plans,
    })
}

/// State that survives a restart (snapshotted at each checkpoint).
#[derive(Serialize, Deserialize)]
struct State {
    features: Vec<Feature>,
    /// rule → subject → event time until which the rule stays quiet for the subject
    /// (nested, so the per-event check looks up borrowed names without allocating).
    cooldowns: HashMap<String, HashMap<CompactString, i64>>,
    /// product → user → quantity in cart
    holders: HashMap<CompactString, HashMap<CompactString, u32>>,
    held_total: HashMap<CompactString, i64>,
    /// user → products in the cart (to clear holdings on checkout)
    user_skus: HashMap<CompactString, Vec<CompactString>>,
    /// product → (event time, price) of the latest priced event
    prices: HashMap<CompactString, (i64, Money)>,
    /// product → recent viewers (user, event time), oldest first
    watchers: HashMap<CompactString, VecDeque<(CompactString, i64)>>,
    funnel: Funnel,
    recent: VecDeque<String>,
    fired: HashMap<String, u64>,
    now: i64,
    intent: Intent,
    recommender: Recommender,
}

/// The analytics stage.
pub struct CartAnalytics {
    cfg: AnalyticsConfig,
    file: RulesFile,
    compiled: Compiled,
    catalog: Catalog,
    /// The newest stock figure (and name) enrichment joined onto an event, by sku: it
    /// follows the product table as it is reloaded, where the catalogue file stands still.
    /// Not checkpointed: the next event of the product brings it back.
    live_stock: hashbrown::HashMap<CompactString, (u32, Option<CompactString>)>,
    /// Each user's enrichment row as last seen on an event, for abandoned-cart rules that
    /// read `segment` or `region` (kept only while a rule does; not checkpointed, so after a
    /// restart a user's next event brings it back).
    user_info: hashbrown::HashMap<CompactString, Arc<cartpulse_model::UserInfo>>,
    st: State,
    vals: Vec<Value>,
    eval_errors: u64,
}

fn s(v: &str) -> Value {
    Value::String(Arc::new(v.to_string()))
}

fn money(m: Money) -> f64 {
    m.0 as f64 / 10_000.0
}

impl CartAnalytics {
    pub fn new(cfg: AnalyticsConfig, file: RulesFile) -> Result<CartAnalytics, AnalyticsError> {
        let (features, rules) = merged(&cfg, &file);
        let compiled = compile(&features, &rules)?;
        let catalog = match &cfg.catalog {
            Some(p) => Catalog::load(p).map_err(AnalyticsError::Catalog)?,
            None => Catalog::default(),
        };
        let vals = vec![Value::Null; compiled.table.len()];
        let mut intent = Intent::default();
        if let Some(p) = &cfg.intent.model {
            intent.load_weights(p).map_err(AnalyticsError::Config)?;
        }
        let mut recommender = Recommender::new(RecommenderConfig {
            max_partners: cfg.recommend.max_partners,
            min_together: cfg.recommend.min_together,
        });
        if let Some(p) = &cfg.recommend.rules {
            let text = std::fs::read_to_string(p).map_err(|e| {
                AnalyticsError::Config(format!("analytics.recommend.rules: {}: {e}", p.display()))
            })?;
            let (rules, names) = crate::recommend::parse_rules_jsonl(&text).map_err(|e| {
                AnalyticsError::Config(format!("analytics.recommend.rules: {}: {e}", p.display()))
            })?;
            recommender.set_rules(&rules, &names);
        }
        Ok(CartAnalytics {
            st: State {
                features: features.into_iter().map(Feature::new).collect(),
                cooldowns: HashMap::new(),
                holders: HashMap::new(),
                held_total: HashMap::new(),
                user_skus: HashMap::new(),
                prices: HashMap::new(),
                watchers: HashMap::new(),
                funnel: Funnel::new(cfg.funnel_days),
                recent: VecDeque::new(),
                fired: HashMap::new(),
                now: i64::MIN,
                intent,
                recommender,
            },
            cfg,
            file,
            compiled,
            catalog,
            live_stock: Default::default(),
            user_info: Default::default(),
            vals,
            eval_errors: 0,
        })
    }

    /// Uses `catalog` for stock, names and categories (instead of `[analytics] catalog`).
    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// Replaces the declared rules and features (from a rules file); on any error the
    /// running set stays. Features that exist in both keep their state.
    pub fn reload(&mut self, file: RulesFile) -> Result<usize, AnalyticsError> {
        let (features, rules) = merged(&self.cfg, &file);
        let compiled = compile(&features, &rules)?;
        let mut old: HashMap<String, Feature> = self
            .st
            .features
            .drain(..)
            .map(|f| (f.spec.name.clone(), f))
            .collect();
        self.st.features = features
            .into_iter()
            .map(|spec| match old.remove(&spec.name) {
                Some(f) if f.spec == spec => f,
                _ => Feature::new(spec),
            })
            .collect();
        self.vals = vec![Value::Null; compiled.table.len()];
        let n = compiled.rules.rules.len();
        self.compiled = compiled;
        if !self.compiled.abandoned_reads_user {
            self.user_info.clear();
        }
        self.file = file;
        Ok(n)
    }

    /// Follows cart holdings; returns the product's total held quantity.
    fn follow_holdings(&mut self, e: &OpEvent) -> i64 {
        let ev = &e.ev;
        let st = &mut self.st;
        if ev.action == Action::Checkout {
            for sku in st.user_skus.remove(ev.user_id.as_str()).unwrap_or_default() {
                if let Some(h) = st.holders.get_mut(sku.as_str()) {
                    if let Some(q) = h.remove(ev.user_id.as_str()) {
                        *st.held_total.entry(sku.clone()).or_insert(0) -= i64::from(q);
                    }
                    if h.is_empty() {
                        st.holders.remove(sku.as_str());
                        st.held_total.remove(sku.as_str());
                    }
                }
            }
            return 0;
        }
        let Some(sku) = &ev.sku else { return 0 };
        if matches!(ev.action, Action::Add | Action::Remove | Action::UpdateQty) {
            let h = st.holders.entry(sku.clone()).or_default();
            let old = h.get(ev.user_id.as_str()).copied().unwrap_or(0);
            let new = e.line_qty;
            if new != old {
                *st.held_total.entry(sku.clone()).or_insert(0) += i64::from(new) - i64::from(old);
                let skus = st.user_skus.entry(ev.user_id.clone()).or_default();
                if new == 0 {
                    h.remove(ev.user_id.as_str());
                    skus.retain(|s| s != sku);
                    if skus.is_empty() {
                        st.user_skus.remove(ev.user_id.as_str());
                    }
                } else {
                    h.insert(ev.user_id.clone(), new);
                    if old == 0 {
                        skus.push(sku.clone());
                    }
                }
            }
            if h.is_empty() {
                st.holders.remove(sku.as_str());
            }
        }
        st.held_total.get(sku.as_str()).copied().unwrap_or(0)
    }

    /// Remembers viewers; detects a price change. Returns (previous price, change %).
    fn follow_prices(&mut self, e: &OpEvent, out: &mut Records) -> (f64, f64) {
        let ev = &e.ev;
        let Some(sku) = &ev.sku else {
            return (0.0, 0.0);
        };
        let pa = &self.cfg.price_alerts;
        if ev.action == Action::View && pa.enabled {
            let w = self.st.watchers.entry(sku.clone()).or_default();
            w.push_back((ev.user_id.clone(), ev.ts));
            let horizon = self.st.now - pa.watch_window.as_millis() as i64;
            while w
                .front()
                .is_some_and(|f| f.1 <= horizon || w.len() > pa.max_watchers)
            {
                w.pop_front();
            }
        }
        let Some(price) = ev.price else {
            return (0.0, 0.0);
        };
        let prev = self.st.prices.get(sku.as_str()).copied();
        match prev {
            Some((t, _)) if ev.ts < t => return (0.0, 0.0), // an older event: not news
            _ => {
                self.st.prices.insert(sku.clone(), (ev.ts, price));
            }
        }
        let Some((_, old)) = prev else {
            return (0.0, 0.0);
        };
        if old == price || old.0 == 0 {
            return (money(old), 0.0);
        }
        let pct = (price.0 - old.0) as f64 * 100.0 / old.0 as f64;
        if pa.enabled && -pct >= pa.min_drop_pct {
            self.price_drop(sku, old, price, ev, out);
        }
        (money(old), pct)
    }

    fn price_drop(
        &mut self,
        sku: &CompactString,
        old: Money,
        new: Money,
        ev: &cartpulse_model::CartEvent,
        out: &mut Records,
    ) {
        let (ts, event_id) = (ev.ts, ev.event_id.as_str());
        let mut users: Vec<(CompactString, &'static str)> = Vec::new();
        if let Some(h) = self.st.holders.get(sku.as_str()) {
            users.extend(h.keys().map(|u| (u.clone(), "in_cart")));
        }
        let horizon = ts - self.cfg.price_alerts.watch_window.as_millis() as i64;
        if let Some(w) = self.st.watchers.get(sku.as_str()) {
            for (u, t) in w {
                if *t > horizon && !users.iter().any(|x| x.0 == *u) {
                    users.push((u.clone(), "viewed"));
                }
            }
        }
        // the user whose event carried the new price has seen it already
        users.retain(|(u, _)| *u != ev.user_id);
        // one alert per user, in a stable order
        users.sort();
        for (u, why) in users {
            let mut buf = Vec::with_capacity(256);
            buf.extend_from_slice(b"{\"alert_id\":");
            write_json_str(&mut buf, &format!("price_drop|{sku}|{u}|{ts}|{event_id}"));
            buf.extend_from_slice(
                b",\"rule\":\"price_drop\",\"kind\":\"marketing\",\"severity\":\"info\",\"subject\":",
            );
            write_json_str(&mut buf, &u);
            buf.extend_from_slice(b",\"user_id\":");
            write_json_str(&mut buf, &u);
            buf.extend_from_slice(b",\"sku\":");
            write_json_str(&mut buf, sku);
            buf.extend_from_slice(format!(",\"ts\":{ts},\"reason\":\"{why}\"").as_bytes());
            buf.extend_from_slice(b",\"evidence\":{\"price_prev\":");
            old.write_json(&mut buf);
            buf.extend_from_slice(b",\"price\":");
            new.write_json(&mut buf);
            let pct = (new.0 - old.0) as f64 * 100.0 / old.0 as f64;
            buf.extend_from_slice(format!(",\"price_change_pct\":{pct:.2}}}}}").as_bytes());
            self.emit("price_drop", buf, out);
        }
    }

    fn emit(&mut self, rule: &str, mut buf: Vec<u8>, out: &mut Records) {
        *self.st.fired.entry(rule.to_string()).or_insert(0) += 1;
        if self.st.recent.len() >= self.cfg.recent_alerts.max(1) {
            self.st.recent.pop_front();
        }
        self.st
            .recent
            .push_back(String::from_utf8_lossy(&buf).into_owned());
        buf.push(b'\n');
        out.begin(Stream::Alerts).extend_from_slice(&buf);
    }

    /// The stock of `sku`: enrichment's latest figure, else the catalogue's.
    fn stock(&self, sku: &str) -> Option<u32> {
        self.live_stock
            .get(sku)
            .map(|s| s.0)
            .or_else(|| self.catalog.stock(sku))
    }

    fn product_name(&self, sku: &str) -> Option<&str> {
        match self.live_stock.get(sku) {
            Some((_, Some(n))) => Some(n.as_str()),
            _ => self.catalog.name(sku),
        }
    }

    fn on_event(&mut self, e: &OpEvent, out: &mut Records) {
        let ev = &e.ev;
        if let (Some(sku), Some(p)) = (&ev.sku, &ev.product) {
            if let Some(st) = p.stock {
                let st = st.clamp(0, i64::from(u32::MAX)) as u32;
                match self.live_stock.get_mut(sku.as_str()) {
                    Some(x) if x.0 == st => {}
                    Some(x) => *x = (st, p.name.clone()),
                    None => {
                        self.live_stock.insert(sku.clone(), (st, p.name.clone()));
                    }
                }
            }
        }
        if let Some(u) = &ev.user {
            if self.compiled.abandoned_reads_user {
                match self.user_info.get_mut(ev.user_id.as_str()) {
                    Some(x) if Arc::ptr_eq(x, u) => {}
                    Some(x) => *x = u.clone(),
                    None => {
                        self.user_info.insert(ev.user_id.clone(), u.clone());
                    }
                }
            }
        }
        self.st.now = self.st.now.max(ev.ts);
        let now = self.st.now;
        let category: Option<CompactString> = ev.category.clone().or_else(|| {
            ev.sku
                .as_deref()
                .and_then(|s| self.catalog.category(s))
                .map(CompactString::from)
        });
        let category = category.as_deref();
        self.st
            .funnel
            .observe(&ev.user_id, ev.ts, ev.action, category);
        if ev.action == Action::Checkout && self.cfg.recommend.enabled {
            if let Some(basket) = self.st.user_skus.get(ev.user_id.as_str()) {
                self.st.recommender.observe_basket(basket);
            }
        }
        if self.cfg.intent.enabled {
            self.st.intent.observe(
                &self.cfg.intent,
                Observed {
                    user: &ev.user_id,
                    ts: ev.ts,
                    action: ev.action,
                    cart_items: e.cart_items,
                    cart_value: money(e.cart_value),
                },
            );
        }
        let held_total = self.follow_holdings(e);
        let (price_prev, price_change_pct) = self.follow_prices(e, out);
        let value_units = e.price.0.saturating_mul(i64::from(e.qty));
        let plan = &self.compiled.plans[ev.action.index()];
        for &i in &plan.features {
            let v = self.st.features[i].update(ev, e.qty, value_units, now);
            let id = self.compiled.feature_ids[i];
            let is_float = self.compiled.table.types[id] == VarType::Float;
            self.vals[id] = match (v, is_float) {
                (Some(x), true) => Value::Float(x),
                (Some(x), false) => Value::Int(x as i64),
                (None, true) => Value::Float(0.0),
                (None, false) => Value::Int(0),
            };
        }
        if self.compiled.rules.rules.is_empty() {
            return;
        }
        let stock = ev.sku.as_deref().and_then(|s| self.stock(s));
        let share = |q: i64| match stock {
            Some(st) if st > 0 => q as f64 / st as f64,
            _ => 0.0,
        };
        // only what a rule evaluated on this action reads is materialised
        let plan = &self.compiled.plans[ev.action.index()];
        for &id in &plan.vars {
            let name = self.compiled.table.names[id].as_str();
            let v = match name {
                "action" => s(ev.action.as_str()),
                "user_id" => s(&ev.user_id),
                "session_id" => s(ev.session_id.as_deref().unwrap_or("")),
                "sku" => s(ev.sku.as_deref().unwrap_or("")),
                "category" => s(category.unwrap_or("")),
                "device_id" => s(ev.device_id.as_deref().unwrap_or("")),
                "brand" => s(ev
                    .product
                    .as_ref()
                    .and_then(|p| p.brand.as_deref())
                    .unwrap_or("")),
                "segment" => s(ev
                    .user
                    .as_ref()
                    .and_then(|u| u.segment.as_deref())
                    .unwrap_or("")),
                "region" => s(ev
                    .user
                    .as_ref()
                    .and_then(|u| u.region.as_deref())
                    .unwrap_or("")),
                "ip" => s(ev.ip.as_deref().unwrap_or("")),
                "qty" => Value::Int(i64::from(e.qty)),
                "price" => Value::Float(money(e.price)),
                "value" => Value::Float(value_units as f64 / 10_000.0),
                "ts" => Value::Int(ev.ts),
                "hour" => Value::Int(ev.ts.div_euclid(3_600_000).rem_euclid(24)),
                "late" => Value::Bool(e.late),
                "cart_items" => Value::Int(e.cart_items as i64),
                "cart_value" => Value::Float(money(e.cart_value)),
                "cart_lines" => Value::Int(i64::from(e.cart_lines)),
                "line_qty" => Value::Int(i64::from(e.line_qty)),
                "order_value" => Value::Float(money(e.order_value)),
                "orders" => Value::Int(i64::from(e.orders)),
                "held_total" => Value::Int(held_total),
                "stock" => Value::Int(stock.map_or(-1, i64::from)),
                "held_share" => Value::Float(share(i64::from(e.line_qty))),
                "held_total_share" => Value::Float(share(held_total)),
                "price_prev" => Value::Float(price_prev),
                "price_change_pct" => Value::Float(price_change_pct),
                "quiet_ms" => Value::Int(0),
                "intent" => Value::Float(self.st.intent.score(&ev.user_id).unwrap_or(0.0)),
                _ => continue,
            };
            self.vals[id] = v;
        }
        self.run_rules(Trigger::Event, ev.action, &ev.event_id, ev.ts, e, None, out);
    }

    fn on_abandoned(&mut self, a: &OpAbandoned, out: &mut Records) {
        let now = self.st.now.max(a.abandoned_at);
        let reads = self.compiled.reads.clone();
        for id in reads {
            let v = match self.compiled.table.names[id].as_str() {
                "action" => s("abandoned"),
                "user_id" => s(&a.user_id),
                "session_id" => s(a.session_id.as_deref().unwrap_or("")),
                "cart_items" => Value::Int(a.items as i64),
                "cart_value" => Value::Float(money(a.value)),
                "cart_lines" => Value::Int(a.lines.len() as i64),
                "ts" => Value::Int(a.abandoned_at),
                "hour" => Value::Int(a.abandoned_at.div_euclid(3_600_000).rem_euclid(24)),
                "quiet_ms" => Value::Int(now - a.last_activity),
                "intent" => Value::Float(self.st.intent.score(&a.user_id).unwrap_or(0.0)),
                "segment" | "region" => {
                    let u = self.user_info.get(a.user_id.as_str());
                    let f = |u: &cartpulse_model::UserInfo| {
                        if self.compiled.table.names[id] == "segment" {
                            u.segment.clone()
                        } else {
                            u.region.clone()
                        }
                    };
                    s(u.and_then(|u| f(u)).as_deref().unwrap_or(""))
                }
                _ => continue, // not defined for abandoned carts: keeps its last value
            };
            self.vals[id] = v;
        }
        let event_id = format!("abandoned-{}", a.abandoned_at);
        let dummy = OpEvent {
            ev: cartpulse_model::CartEvent {
                event_id: event_id.as_str().into(),
                ts: a.abandoned_at,
                user_id: a.user_id.clone(),
                session_id: a.session_id.clone(),
                action: Action::View,
                sku: None,
                qty: None,
                price: None,
                category: None,
                device_id: None,
                ip: None,
                order_id: None,
                currency: None,
                product: None,
                user: None,
            },
            late: false,
            qty: 0,
            price: Money::ZERO,
            cart_items: a.items,
            cart_value: a.value,
            cart_lines: a.lines.len() as u32,
            line_qty: 0,
            order_value: Money::ZERO,
            orders: 0,
        };
        self.run_rules(
            Trigger::Abandoned,
            Action::View,
            &event_id,
            a.abandoned_at,
            &dummy,
            Some(a),
            out,
        );
        if self.cfg.intent.enabled {
            let observed = a.abandoned_at <= self.st.now;
            self.st
                .intent
                .abandoned(&self.cfg.intent, &a.user_id, observed);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_rules(
        &mut self,
        trigger: Trigger,
        action: Action,
        event_id: &str,
        ts: i64,
        e: &OpEvent,
        abandoned: Option<&OpAbandoned>,
        out: &mut Records,
    ) {
        let values = Values {
            table: &self.compiled.table,
            vals: &self.vals,
        };
        let mut ctx = Context::with_env(self.compiled.rules.env.clone());
        ctx.set_variable_resolver(&values);
        let mut fired: Vec<(usize, CompactString)> = Vec::new();
        for (i, r) in self.compiled.rules.rules.iter().enumerate() {
            if r.spec.on != trigger
                || (trigger == Trigger::Event
                    && !r.spec.actions.is_empty()
                    && !r.spec.actions.contains(&action))
            {
                continue;
            }
            let subject = match r.spec.key {
                FeatureKey::User => Some(e.ev.user_id.as_str()),
                FeatureKey::Session => e.ev.session_id.as_deref(),
                FeatureKey::Device => e.ev.device_id.as_deref(),
                FeatureKey::Ip => e.ev.ip.as_deref(),
                FeatureKey::Sku => e.ev.sku.as_deref(),
                FeatureKey::Category => e.ev.category.as_deref(),
                FeatureKey::Global => Some("*"),
            };
            let Some(subject) = subject else { continue };
            let quiet = self
                .st
                .cooldowns
                .get(r.spec.name.as_str())
                .and_then(|m| m.get(subject))
                .is_some_and(|&until| ts < until);
            if quiet {
                continue;
            }
            match r.eval(&ctx) {
                Ok(true) => fired.push((i, CompactString::from(subject))),
                Ok(false) => {}
                Err(_) => self.eval_errors += 1,
            }
        }
        drop(ctx);
        for (i, subject) in fired {
            let r = &self.compiled.rules.rules[i];
            let until = ts.saturating_add(r.spec.cooldown.as_millis() as i64);
            self.st
                .cooldowns
                .entry_ref(r.spec.name.as_str())
                .or_default()
                .insert(subject.clone(), until);
            let mut buf = Vec::with_capacity(384);
            buf.extend_from_slice(b"{\"alert_id\":");
            write_json_str(
                &mut buf,
                &format!("{}|{subject}|{ts}|{event_id}", r.spec.name),
            );
            buf.extend_from_slice(b",\"rule\":");
            write_json_str(&mut buf, &r.spec.name);
            buf.extend_from_slice(
                format!(
                    ",\"kind\":\"{}\",\"severity\":\"{}\",\"key\":\"{}\",\"subject\":",
                    r.spec.kind.as_str(),
                    r.spec.severity.as_str(),
                    serde_json::to_value(r.spec.key)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )
                .as_bytes(),
            );
            write_json_str(&mut buf, &subject);
            buf.extend_from_slice(b",\"user_id\":");
            write_json_str(&mut buf, &e.ev.user_id);
            if let Some(sku) = &e.ev.sku {
                buf.extend_from_slice(b",\"sku\":");
                write_json_str(&mut buf, sku);
            }
            buf.extend_from_slice(format!(",\"ts\":{ts},\"event_id\":").as_bytes());
            write_json_str(&mut buf, event_id);
            buf.extend_from_slice(b",\"evidence\":{");
            for (k, &id) in r.reads.iter().enumerate() {
                if k > 0 {
                    buf.push(b',');
                }
                write_json_str(&mut buf, &self.compiled.table.names[id]);
                buf.push(b':');
                write_cel(&mut buf, &self.vals[id]);
            }
            buf.push(b'}');
            if let Some(a) = abandoned {
                buf.extend_from_slice(
                    format!(
                        ",\"last_activity\":{},\"items\":{},\"value\":",
                        a.last_activity, a.items
                    )
                    .as_bytes(),
                );
                a.value.write_json(&mut buf);
                buf.extend_from_slice(b",\"lines\":");
                cartpulse_engine::output::cart_lines(&mut buf, &a.lines);
            }
            if r.spec.kind == rules::RuleKind::Inventory {
                if let Some(stock) = e.ev.sku.as_deref().and_then(|s| self.stock(s)) {
                    let held =
                        e.ev.sku
                            .as_deref()
                            .and_then(|s| self.st.held_total.get(s))
                            .copied()
                            .unwrap_or(0);
                    // enough to cover what carts hold plus a quarter as buffer
                    let suggest = (held * 5 / 4 - i64::from(stock)).max(0);
                    buf.extend_from_slice(
                        format!(
                            ",\"stock\":{stock},\"held\":{held},\"restock_suggestion\":{suggest}"
                        )
                        .as_bytes(),
                    );
                }
            }
            buf.push(b'}');
            let name = r.spec.name.clone();
            self.emit(&name, buf, out);
        }
    }

    /// Summary for the API.
    fn stats(&self) -> serde_json::Value {
        let mut fired: Vec<_> = self.st.fired.iter().collect();
        fired.sort();
        serde_json::json!({
            "rules": self.compiled.rules.rules.iter().map(|r| serde_json::json!({
                "name": r.spec.name,
                "kind": r.spec.kind.as_str(),
                "severity": r.spec.severity.as_str(),
                "condition": r.spec.condition,
                "fired": self.st.fired.get(&r.spec.name).copied().unwrap_or(0),
            })).collect::<Vec<_>>(),
            "features": self.st.features.iter().map(|f| serde_json::json!({
                "name": f.spec.name, "keys": f.keys(),
            })).collect::<Vec<_>>(),
            "fired": fired.into_iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
            "eval_errors": self.eval_errors,
        })
    }
}

fn write_cel(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::UInt(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Float(f) if f.is_finite() => {
            let r = (f * 10_000.0).round() / 10_000.0;
            out.extend_from_slice(r.to_string().as_bytes())
        }
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::String(s) => write_json_str(out, s),
        _ => out.extend_from_slice(b"null"),
    }
}

impl Operator for CartAnalytics {
    fn on_input(&mut self, input: &OpInput, out: &mut Records) {
        match input {
            OpInput::Event(e) => self.on_event(e, out),
            OpInput::Abandoned(a) => self.on_abandoned(a, out),
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(&self.st).map_err(|e| format!("analytics snapshot: {e}"))
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let st: State =
            postcard::from_bytes(bytes).map_err(|e| format!("analytics snapshot: {e}"))?;
        let features = std::mem::take(&mut self.st.features);
        self.st = st;
        // the config decides which features exist; restored ones keep their state
        let mut restored: HashMap<String, Feature> = self
            .st
            .features
            .drain(..)
            .map(|f| (f.spec.name.clone(), f))
            .collect();
        self.st.features = features
            .into_iter()
            .map(|f| match restored.remove(&f.spec.name) {
                Some(r) if r.spec == f.spec => r,
                _ => f,
            })
            .collect();
        Ok(())
    }

    fn request(
        &mut self,
        kind: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        use serde_json::json;
        match kind {
            "alerts" => {
                let n = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(50) as usize;
                let list: Vec<serde_json::Value> = self
                    .st
                    .recent
                    .iter()
                    .rev()
                    .take(n)
                    .filter_map(|a| serde_json::from_str(a).ok())
                    .collect();
                Ok(json!({ "alerts": list }))
            }
            "rules" => Ok(self.stats()),
            "funnel" => Ok(json!({
                "by_hour": self.st.funnel.by_hour(),
                "by_day": self.st.funnel.by_day(),
                "by_day_category": self.st.funnel.by_day_category(),
            })),
            "retention" => Ok(json!({ "cohorts": self.st.funnel.retention() })),
            "intent" => {
                let top = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(20) as usize;
                Ok(match body.get("user_id").and_then(|v| v.as_str()) {
                    Some(u) => self.st.intent.user_report(u),
                    None => self.st.intent.report(top),
                })
            }
            "recommendations" => {
                let n = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(5) as usize;
                let (held, user): (Vec<String>, Option<&str>) = match (
                    body.get("user_id").and_then(|v| v.as_str()),
                    body.get("skus").and_then(|v| v.as_str()),
                ) {
                    (_, Some(skus)) => (
                        skus.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect(),
                        None,
                    ),
                    (Some(u), None) => (
                        self.st
                            .user_skus
                            .get(u)
                            .map(|v| v.iter().map(|s| s.to_string()).collect())
                            .unwrap_or_default(),
                        Some(u),
                    ),
                    (None, None) => return Err("give user_id or skus".into()),
                };
                let recs = self.st.recommender.recommend(&held, n);
                Ok(json!({
                    "user_id": user,
                    "held": held,
                    "baskets_observed": self.st.recommender.baskets_observed(),
                    "recommendations": recs,
                }))
            }
            "low_stock" => {
                let n = body.get("limit").and_then(|v| v.as_u64()).unwrap_or(10) as usize;
                let mut rows: Vec<(f64, &CompactString, i64, u32)> = self
                    .st
                    .held_total
                    .iter()
                    .filter_map(|(sku, &held)| {
                        let stock = self.stock(sku)?;
                        (stock > 0).then(|| (held as f64 / f64::from(stock), sku, held, stock))
                    })
                    .collect();
                rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
                Ok(
                    json!({ "products": rows.into_iter().take(n).map(|(share, sku, held, stock)| json!({
                    "sku": sku, "held": held, "stock": stock, "held_share": share,
                    "name": self.product_name(sku),
                })).collect::<Vec<_>>() }),
                )
            }
            "reload_rules" => {
                let text = body
                    .get("toml")
                    .and_then(|v| v.as_str())
                    .ok_or("reload_rules needs {\"toml\": \"...\"}")?;
                let file = RulesFile::parse(text)?;
                let n = self.reload(file).map_err(|e| e.to_string())?;
                Ok(json!({ "rules": n }))
            }
            other => Err(format!("unknown analytics request `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(a: &mut CartAnalytics) -> Vec<String> {
        let v = a.request("rules", &serde_json::Value::Null).unwrap();
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// A bad rules file — syntax, an unknown feature, a type error — is refused with the
    /// rule's name and reason, and the running rules stay exactly as they were.
    #[test]
    fn a_rejected_reload_keeps_the_running_rules() {
        let mut a = CartAnalytics::new(AnalyticsConfig::default(), RulesFile::default()).unwrap();
        let good = r#"
[[rules]]
name = "big_cart"
condition = "cart_value > 500"
"#;
        let reply = a
            .request("reload_rules", &serde_json::json!({ "toml": good }))
            .unwrap();
        let before = names(&mut a);
        assert!(before.contains(&"big_cart".to_string()));
        assert_eq!(reply["rules"].as_u64(), Some(before.len() as u64));
        for (bad, expect) in [
            (
                "[[rules]]\nname = \"s\"\ncondition = \"qty >\"\n",
                "syntax error",
            ),
            (
                "[[rules]]\nname = \"u\"\ncondition = \"device_users_3h >= 3\"\n",
                "device_users_3h",
            ),
            (
                "[[rules]]\nname = \"t\"\ncondition = \"sku > 3\"\n",
                "type error",
            ),
            (
                "[[rules]]\nname = \"k\"\ncondition = \"true\"\nseverity = \"huge\"\n",
                "severity",
            ),
        ] {
            let e = a
                .request("reload_rules", &serde_json::json!({ "toml": bad }))
                .unwrap_err();
            assert!(e.contains(expect), "{e}");
            assert_eq!(
                names(&mut a),
                before,
                "the running rules changed after: {e}"
            );
        }
    }

    fn event(user: &str, ts: i64, action: Action, category: Option<&str>) -> OpInput {
        OpInput::Event(Box::new(OpEvent {
            ev: cartpulse_model::CartEvent {
                event_id: format!("{user}-{ts}").into(),
                ts,
                user_id: user.into(),
                session_id: None,
                action,
                sku: Some("p".into()),
                qty: Some(1),
                price: None,
                category: category.map(Into::into),
                device_id: None,
                ip: None,
                order_id: None,
                currency: None,
                product: None,
                user: None,
            },
            late: false,
            qty: 1,
            price: Money::ZERO,
            cart_items: 0,
            cart_value: Money::ZERO,
            cart_lines: 0,
            line_qty: 0,
            order_value: Money::ZERO,
            orders: 0,
        }))
    }

    #[test]
    fn rules_read_the_enriched_brand_segment_and_region() {
        let mut a = CartAnalytics::new(AnalyticsConfig::default(), RulesFile::default()).unwrap();
        let rules = r#"
[[rules]]
name = "vip_adds_acme"
condition = "action == 'add' && segment == 'vip' && brand == 'Acme'"
[[rules]]
name = "vip_abandoned"
on = "abandoned"
condition = "segment == 'vip' && region == 'eu'"
"#;
        a.request("reload_rules", &serde_json::json!({ "toml": rules }))
            .unwrap();
        let vip = Arc::new(cartpulse_model::UserInfo {
            segment: Some("vip".into()),
            region: Some("eu".into()),
            ..Default::default()
        });
        let acme = Arc::new(cartpulse_model::ProductInfo {
            brand: Some("Acme".into()),
            ..Default::default()
        });
        let with = |user: &str, ts: i64, u: Option<&Arc<cartpulse_model::UserInfo>>| {
            let mut e = event(user, ts, Action::Add, None);
            if let OpInput::Event(ev) = &mut e {
                ev.ev.user = u.cloned();
                ev.ev.product = Some(acme.clone());
            }
            e
        };
        let mut out = Records::default();
        a.on_input(&with("u1", 1_000, Some(&vip)), &mut out);
        a.on_input(&with("u2", 2_000, None), &mut out);
        for user in ["u1", "u2"] {
            a.on_input(
                &OpInput::Abandoned(Box::new(cartpulse_engine::OpAbandoned {
                    user_id: user.into(),
                    session_id: None,
                    last_activity: 2_000,
                    abandoned_at: 3_600_000,
                    items: 1,
                    value: Money::ZERO,
                    lines: Vec::new(),
                })),
                &mut out,
            );
        }
        let alerts = a.request("alerts", &serde_json::Value::Null).unwrap();
        let fired: Vec<(String, String)> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["rule"].as_str().unwrap().to_string(),
                    x["user_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            fired.contains(&("vip_adds_acme".into(), "u1".into())),
            "{fired:?}"
        );
        assert!(
            fired.contains(&("vip_abandoned".into(), "u1".into())),
            "{fired:?}"
        );
        assert!(
            !fired
                .iter()
                .any(|(r, u)| u == "u2" && r.starts_with("vip_")),
            "u2 has no user row: {fired:?}"
        );
    }

    /// The stream's conversion and retention equal a batch recomputation over the same events.
    #[test]
    fn funnel_equals_batch_recomputation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut a = CartAnalytics::new(AnalyticsConfig::default(), RulesFile::default()).unwrap();
        let mut evs = Vec::new();
        for _ in 0..5000 {
            let user = format!("u{}", rng.gen_range(0..300));
            let ts = rng.gen_range(0..10 * 86_400_000i64);
            let action = [Action::View, Action::Add, Action::Checkout][rng.gen_range(0..3)];
            let cat = ["a", "b", "c"][rng.gen_range(0..3)];
            evs.push((user, ts, action, cat));
        }
        let mut out = Records::default();
        for (u, t, act, c) in &evs {
            a.on_input(&event(u, *t, *act, Some(c)), &mut out);
        }
        let f = a.request("funnel", &serde_json::Value::Null).unwrap();
        // batch: plain set arithmetic over the list
        let day = |t: i64| t.div_euclid(86_400_000);
        let mut adders: std::collections::BTreeMap<i64, std::collections::HashSet<&str>> =
            Default::default();
        let mut buyers: std::collections::BTreeMap<i64, std::collections::HashSet<&str>> =
            Default::default();
        let mut cat_adders: std::collections::BTreeMap<
            (i64, &str),
            std::collections::HashSet<&str>,
        > = Default::default();
        for (u, t, act, c) in &evs {
            match act {
                Action::Add => {
                    adders.entry(day(*t)).or_default().insert(u);
                    cat_adders.entry((day(*t), c)).or_default().insert(u);
                }
                Action::Checkout => {
                    buyers.entry(day(*t)).or_default().insert(u);
                }
                _ => {}
            }
        }
        for row in f["by_day"].as_array().unwrap() {
            let d = row["start"].as_i64().unwrap() / 86_400_000;
            assert_eq!(
                row["adders"].as_u64().unwrap() as usize,
                adders.get(&d).map_or(0, |s| s.len())
            );
            assert_eq!(
                row["buyers"].as_u64().unwrap() as usize,
                buyers.get(&d).map_or(0, |s| s.len())
            );
        }
        let rows = f["by_day_category"].as_array().unwrap();
        assert_eq!(rows.len(), cat_adders.len());
        for row in rows {
            let d = row["start"].as_i64().unwrap() / 86_400_000;
            let c = row["category"].as_str().unwrap();
            let ad = &cat_adders[&(d, c)];
            let empty = Default::default();
            let b = ad.intersection(buyers.get(&d).unwrap_or(&empty)).count();
            assert_eq!(row["adders"].as_u64().unwrap() as usize, ad.len());
            assert_eq!(row["buyers"].as_u64().unwrap() as usize, b);
        }
        // retention: cohort = first day; active[k] = cohort users active on first day + k
        let mut days: std::collections::HashMap<&str, std::collections::BTreeSet<i64>> =
            Default::default();
        for (u, t, _, _) in &evs {
            days.entry(u).or_default().insert(day(*t));
        }
        let r = a.request("retention", &serde_json::Value::Null).unwrap();
        for c in r["cohorts"].as_array().unwrap() {
            let d0 = c["day"].as_i64().unwrap() / 86_400_000;
            for (k, n) in c["active"].as_array().unwrap().iter().enumerate() {
                let want = days
                    .values()
                    .filter(|s| *s.iter().next().unwrap() == d0 && s.contains(&(d0 + k as i64)))
                    .count();
                assert_eq!(n.as_u64().unwrap() as usize, want, "cohort {d0} day +{k}");
            }
        }
    }
}
