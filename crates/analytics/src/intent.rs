//! Purchase intent: how likely is this cart to be checked out?
//!
//! An *episode* is a user's activity from the first event after their last checkout or
//! abandoned cart to the next one: a checkout labels it 1, the abandoned-cart timer 0. The
//! episode's features follow every event and are scored, when asked, by a logistic regression. When an episode
//! ends, the features as they stood before the ending (the checkout itself would give the
//! answer away) are first scored and kept for evaluation, then learnt from: *prequential*
//! evaluation, so every evaluated example is one the model had not seen, and the reported
//! AUC is a held-out figure at every moment.
//!
//! Training is SGD on the log loss with AdaGrad step sizes per weight (features differ in
//! scale and in how often they move) and L2 shrinkage. Weights can be seeded from a file
//! (`GET /api/intent` returns them), so a model trained on history starts warm.

use compact_str::CompactString;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// Feature names, in weight order (the first is the intercept).
pub const FEATURES: [&str; 14] = [
    "bias",
    "ln_views",
    "ln_adds",
    "ln_removes",
    "ln_updates",
    "ln_cart_items",
    "ln_cart_value",
    "ln_dwell_s",
    "hour_sin",
    "hour_cos",
    "past_conversion",
    "ln_past_episodes",
    "add_per_view",
    "remove_per_add",
];
const N: usize = FEATURES.len();

/// `[analytics.intent]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntentConfig {
    pub enabled: bool,
    pub learning_rate: f64,
    pub l2: f64,
    /// An episode whose cart is empty and that has been quiet this long is dropped without
    /// a label (a visitor who only browsed).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Latest labelled examples the live AUC is computed over.
    pub eval_window: usize,
    /// Initial weights (JSON: `{"weights": {"bias": -1.2, ...}}`, as `GET /api/intent`
    /// prints them); learning continues from them.
    pub model: Option<std::path::PathBuf>,
}

impl Default for IntentConfig {
    fn default() -> Self {
        IntentConfig {
            enabled: true,
            learning_rate: 0.05,
            l2: 1e-5,
            idle: Duration::from_secs(1800),
            eval_window: 20_000,
            model: None,
        }
    }
}

/// One user's current episode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Episode {
    start: i64,
    last: i64,
    views: u32,
    adds: u32,
    removes: u32,
    updates: u32,
    cart_items: u64,
    /// In currency units.
    cart_value: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct UserHistory {
    episodes: u32,
    orders: u32,
    open: Option<Episode>,
}

/// Logistic regression with AdaGrad.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Logistic {
    pub w: Vec<f64>,
    g2: Vec<f64>,
    pub examples: u64,
    pub positives: u64,
}

impl Default for Logistic {
    fn default() -> Self {
        Logistic {
            w: vec![0.0; N],
            g2: vec![0.0; N],
            examples: 0,
            positives: 0,
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Logistic {
    pub fn predict(&self, x: &[f64]) -> f64 {
        sigmoid(self.w.iter().zip(x).map(|(w, x)| w * x).sum())
    }

    /// One SGD step on the log loss of `(x, y)`.
    pub fn learn(&mut self, x: &[f64], y: bool, lr: f64, l2: f64) {
        let err = self.predict(x) - f64::from(u8::from(y));
        for (i, ((w, g2), x)) in self.w.iter_mut().zip(&mut self.g2).zip(x).enumerate() {
            // the intercept is not shrunk: it carries the base rate
            let reg = if i == 0 { 0.0 } else { l2 * *w };
            let g = err * x + reg;
            *g2 += g * g;
            *w -= lr * g / (g2.sqrt() + 1e-8);
        }
        self.examples += 1;
        self.positives += u64::from(y);
    }
}

/// Area under the ROC curve of `(score, label)` pairs: the probability that a random
/// positive scores above a random negative, ties counting half (Mann-Whitney U from the
/// ranks). `None` when either class is missing.
pub fn auc(pairs: &[(f64, bool)]) -> Option<f64> {
    let mut v: Vec<(f64, bool)> = pairs.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|p| p.1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    // rank sum of the positives, ties given their average rank
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg_rank * v[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

fn log_loss(pairs: &[(f64, bool)], p: impl Fn(f64) -> f64) -> f64 {
    let n = pairs.len().max(1) as f64;
    pairs
        .iter()
        .map(|&(s, y)| {
            let q = p(s).clamp(1e-9, 1.0 - 1e-9);
            -if y { q.ln() } else { (1.0 - q).ln() }
        })
        .sum::<f64>()
        / n
}

/// What the cart stage knows about an event, for intent.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub user: &'a str,
    pub ts: i64,
    pub action: cartpulse_model::Action,
    /// The user's cart after the event.
    pub cart_items: u64,
    pub cart_value: f64,
}

/// Episodes, the model and its evaluation: state of the analytics stage.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Intent {
    users: HashMap<CompactString, UserHistory>,
    pub model: Logistic,
    /// Latest prequential (score, label) pairs.
    eval: VecDeque<(f32, bool)>,
}

fn features(ep: &Episode, h: &UserHistory, ts: i64) -> [f64; N] {
    let ln = |x: f64| x.max(0.0).ln_1p();
    let hour = ts.rem_euclid(86_400_000) as f64 / 3_600_000.0;
    let angle = hour / 24.0 * std::f64::consts::TAU;
    let (views, adds, removes) = (
        f64::from(ep.views),
        f64::from(ep.adds),
        f64::from(ep.removes),
    );
    [
        1.0,
        ln(views),
        ln(adds),
        ln(removes),
        ln(f64::from(ep.updates)),
        ln(ep.cart_items as f64),
        ln(ep.cart_value),
        ln((ep.last - ep.start) as f64 / 1000.0),
        angle.sin(),
        angle.cos(),
        // smoothed towards one half for users with little history
        (f64::from(h.orders) + 1.0) / (f64::from(h.episodes) + 2.0),
        ln(f64::from(h.episodes)),
        adds / (views + 1.0),
        removes / (adds + 1.0),
    ]
}

impl Intent {
    /// Seeds the weights from a file written from `GET /api/intent`.
    pub fn load_weights(&mut self, path: &std::path::Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let w = v
            .get("model")
            .unwrap_or(&v)
            .get("weights")
            .and_then(|w| w.as_object())
            .ok_or_else(|| format!("{}: expected an object `weights`", path.display()))?;
        for (k, x) in w {
            let i = FEATURES.iter().position(|f| f == k).ok_or_else(|| {
                format!(
                    "{}: weights.{k}: unknown feature (expected one of {})",
                    path.display(),
                    FEATURES.join(", ")
                )
            })?;
            self.model.w[i] = x
                .as_f64()
                .ok_or_else(|| format!("{}: weights.{k}: expected a number", path.display()))?;
        }
        Ok(())
    }

    /// Follows one event. Scores are computed when asked for ([`Intent::score`]): most
    /// events are never scored by a rule, and the features cost a few logarithms.
    pub fn observe(&mut self, cfg: &IntentConfig, o: Observed<'_>) {
        use cartpulse_model::Action;
        let h = self.users.entry_ref(o.user).or_default();
        if let Some(ep) = &h.open {
            if ep.cart_items == 0 && o.ts - ep.last > cfg.idle.as_millis() as i64 {
                h.open = None;
            }
        }
        if o.action == Action::Checkout {
            let ended = h.open.take();
            if let Some(ep) = ended.filter(|ep| ep.cart_items > 0) {
                let x = features(&ep, h, ep.last);
                h.episodes += 1;
                h.orders += 1;
                self.label(cfg, &x, true);
            }
            return;
        }
        let ep = h.open.get_or_insert_with(|| Episode {
            start: o.ts,
            last: o.ts,
            ..Default::default()
        });
        match o.action {
            Action::View => ep.views += 1,
            Action::Add => ep.adds += 1,
            Action::Remove => ep.removes += 1,
            Action::UpdateQty => ep.updates += 1,
            Action::Checkout => {}
        }
        ep.last = ep.last.max(o.ts);
        ep.cart_items = o.cart_items;
        ep.cart_value = o.cart_value;
    }

    /// The abandoned-cart timer fired for `user`: the episode ends unbought. `observed` is
    /// false when the events have not reached the abandonment time (the end of a replay
    /// flushes every timer): the episode is closed but not learnt from, since the customer
    /// may well have come back.
    pub fn abandoned(&mut self, cfg: &IntentConfig, user: &str, observed: bool) {
        let Some(h) = self.users.get_mut(user) else {
            return;
        };
        let Some(ep) = h.open.take() else { return };
        if !observed {
            return;
        }
        let x = features(&ep, h, ep.last);
        h.episodes += 1;
        self.label(cfg, &x, false);
    }

    fn label(&mut self, cfg: &IntentConfig, x: &[f64], y: bool) {
        let before = self.model.predict(x);
        self.eval.push_back((before as f32, y));
        while self.eval.len() > cfg.eval_window {
            self.eval.pop_front();
        }
        self.model.learn(x, y, cfg.learning_rate, cfg.l2);
    }

    /// The score of `user`'s open episode by the current model.
    pub fn score(&self, user: &str) -> Option<f64> {
        let h = self.users.get(user)?;
        h.open.as_ref().map(|ep| self.episode_score(ep, h))
    }

    fn episode_score(&self, ep: &Episode, h: &UserHistory) -> f64 {
        self.model.predict(&features(ep, h, ep.last))
    }

    /// The model, its held-out evaluation against a constant predictor, and the open carts
    /// of highest value with their scores.
    pub fn report(&self, top: usize) -> serde_json::Value {
        use serde_json::json;
        let pairs: Vec<(f64, bool)> = self.eval.iter().map(|&(s, y)| (f64::from(s), y)).collect();
        let base = pairs.iter().filter(|p| p.1).count() as f64 / pairs.len().max(1) as f64;
        let mut carts: Vec<(&CompactString, &Episode, &UserHistory)> = self
            .users
            .iter()
            .filter_map(|(u, h)| h.open.as_ref().map(|e| (u, e, h)))
            .filter(|(_, e, _)| e.cart_items > 0)
            .collect();
        carts.sort_by(|a, b| b.1.cart_value.total_cmp(&a.1.cart_value).then(a.0.cmp(b.0)));
        json!({
            "model": {
                "weights": FEATURES.iter().zip(&self.model.w).map(|(f, w)| (f.to_string(), json!(w))).collect::<serde_json::Map<_, _>>(),
                "examples": self.model.examples,
                "positives": self.model.positives,
            },
            "evaluation": {
                "method": "prequential: each episode scored before it is learnt from",
                "examples": pairs.len(),
                "auc": auc(&pairs),
                "baseline_auc": if pairs.is_empty() { None } else { Some(0.5) },
                "log_loss": log_loss(&pairs, |s| s),
                "baseline_log_loss": log_loss(&pairs, |_| base),
            },
            "carts": carts.into_iter().take(top).map(|(u, e, h)| json!({
                "user_id": u, "score": self.episode_score(e, h), "cart_items": e.cart_items,
                "cart_value": e.cart_value, "since": e.start, "last_activity": e.last,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn user_report(&self, user: &str) -> serde_json::Value {
        use serde_json::json;
        let Some(h) = self.users.get(user) else {
            return json!({ "user_id": user, "score": null });
        };
        match &h.open {
            Some(ep) => {
                let x = features(ep, h, ep.last);
                json!({
                    "user_id": user,
                    "score": self.model.predict(&x),
                    "features": FEATURES.iter().zip(x).map(|(f, v)| (f.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "past_episodes": h.episodes, "past_orders": h.orders,
                })
            }
            None => json!({ "user_id": user, "score": null,
                "past_episodes": h.episodes, "past_orders": h.orders }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_auc(pairs: &[(f64, bool)]) -> Option<f64> {
        let (mut num, mut den) = (0.0, 0.0);
        for p in pairs.iter().filter(|p| p.1) {
            for n in pairs.iter().filter(|p| !p.1) {
                den += 1.0;
                num += if p.0 > n.0 {
                    1.0
                } else if p.0 == n.0 {
                    0.5
                } else {
                    0.0
                };
            }
        }
        (den > 0.0).then(|| num / den)
    }

    proptest! {
        #[test]
        fn auc_equals_pair_counting(pairs in proptest::collection::vec((0u8..6, any::<bool>()), 0..40)) {
            let pairs: Vec<(f64, bool)> = pairs.into_iter().map(|(s, y)| (f64::from(s), y)).collect();
            let (a, b) = (auc(&pairs), brute_auc(&pairs));
            prop_assert_eq!(a.is_some(), b.is_some());
            if let (Some(a), Some(b)) = (a, b) {
                prop_assert!((a - b).abs() < 1e-12, "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn learns_a_separable_signal() {
        // y = adds > removes, one feature each: the model must rank it nearly perfectly
        let mut m = Logistic::default();
        let mut pairs = Vec::new();
        for i in 0..4000u64 {
            let (a, r) = ((i * 7 % 11) as f64, (i * 5 % 13) as f64);
            let mut x = [0.0; N];
            x[0] = 1.0;
            x[2] = a.ln_1p();
            x[3] = r.ln_1p();
            let y = a > r;
            if i >= 3000 {
                pairs.push((m.predict(&x), y));
            }
            m.learn(&x, y, 0.1, 0.0);
        }
        assert!(auc(&pairs).unwrap() > 0.95, "{:?}", auc(&pairs));
    }

    #[test]
    fn checkout_labels_the_state_before_it_and_abandonment_labels_zero() {
        use cartpulse_model::Action;
        let cfg = IntentConfig::default();
        let mut it = Intent::default();
        let ev = |user, ts, action, items| Observed {
            user,
            ts,
            action,
            cart_items: items,
            cart_value: items as f64 * 10.0,
        };
        it.observe(&cfg, ev("a", 0, Action::View, 0));
        it.observe(&cfg, ev("a", 1000, Action::Add, 2));
        assert!(it.score("a").is_some());
        it.observe(&cfg, ev("a", 2000, Action::Checkout, 0));
        assert_eq!(it.score("a"), None, "a checkout closes the episode");
        it.observe(&cfg, ev("b", 0, Action::Add, 1));
        it.abandoned(&cfg, "b", true);
        // a browse-only visit that goes idle is dropped, not labelled
        it.observe(&cfg, ev("c", 0, Action::View, 0));
        it.observe(&cfg, ev("c", 3_600_000, Action::View, 0));
        assert_eq!(it.model.examples, 2);
        assert_eq!(it.model.positives, 1);
        let labels: Vec<bool> = it.eval.iter().map(|e| e.1).collect();
        assert_eq!(labels, vec![true, false]);
        let r = it.user_report("a");
        assert_eq!(r["past_orders"], 1);
    }
}
