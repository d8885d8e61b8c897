//! Sliding-window features keyed by user, session, device, IP, product or category: the
//! counts, sums and distinct counts rules are written against.
//!
//! Each key keeps the raw entries of its window (time, value) rather than fixed buckets, so a
//! feature is exact over exactly the last `window` of event time. Time is the largest event
//! time the stage has seen: an out-of-order event still counts while it is inside the window.

use cartpulse_model::{Action, CartEvent};
use compact_str::CompactString;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// What a feature is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKey {
    User,
    Session,
    Device,
    Ip,
    Sku,
    Category,
    /// One key for everything.
    Global,
}

impl FeatureKey {
    fn of(self, ev: &CartEvent) -> Option<&str> {
        match self {
            FeatureKey::User => Some(&ev.user_id),
            FeatureKey::Session => ev.session_id.as_deref(),
            FeatureKey::Device => ev.device_id.as_deref(),
            FeatureKey::Ip => ev.ip.as_deref(),
            FeatureKey::Sku => ev.sku.as_deref(),
            FeatureKey::Category => ev.category.as_deref(),
            FeatureKey::Global => Some(""),
        }
    }
}

/// What a feature measures over its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Matching events.
    Count,
    /// Distinct users among matching events.
    DistinctUsers,
    /// Distinct products among matching events.
    DistinctSkus,
    /// Sum of quantities.
    SumQty,
    /// Sum of quantity × unit price, in currency units.
    SumValue,
}

/// A feature declared in config: `name` is the variable rules refer to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    pub key: FeatureKey,
    pub measure: Measure,
    /// Actions that count (all when empty).
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KeyWindow {
    /// `(event time, hashed value or amount)`, in time order.
    entries: VecDeque<(i64, i64)>,
    sum: i64,
    /// Multiplicity of each hashed value in the window (distinct measures).
    distinct: HashMap<i64, u32>,
}

impl KeyWindow {
    fn expire(&mut self, before: i64, distinct: bool) {
        while let Some(&(t, v)) = self.entries.front() {
            if t > before {
                break;
            }
            self.entries.pop_front();
            self.sum -= v;
            if distinct {
                if let Some(n) = self.distinct.get_mut(&v) {
                    *n -= 1;
                    if *n == 0 {
                        self.distinct.remove(&v);
                    }
                }
            }
        }
    }
}

/// One feature's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Feature {
    pub spec: FeatureSpec,
    window_ms: i64,
    keys: HashMap<CompactString, KeyWindow>,
    /// Event time of the last full sweep for keys that went quiet.
    swept_at: i64,
}

fn hash_str(s: &str) -> i64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes()) as i64
}

impl Feature {
    pub fn new(spec: FeatureSpec) -> Feature {
        let window_ms = spec.window.as_millis().min(i64::MAX as u128) as i64;
        Feature {
            spec,
            window_ms,
            keys: HashMap::new(),
            swept_at: i64::MIN,
        }
    }

    fn distinct(&self) -> bool {
        matches!(
            self.spec.measure,
            Measure::DistinctUsers | Measure::DistinctSkus
        )
    }

    /// Adds `ev` (if it matches) and returns the feature's value for the event's key after it,
    /// at stage time `now`. `None` when the event has no such key (e.g. no device id).
    pub fn update(&mut self, ev: &CartEvent, qty: u32, value_units: i64, now: i64) -> Option<f64> {
        let key = self.spec.key.of(ev)?;
        let counts = self.spec.actions.is_empty() || self.spec.actions.contains(&ev.action);
        let distinct = self.distinct();
        let before = now.saturating_sub(self.window_ms);
        if now.saturating_sub(self.swept_at) >= self.window_ms {
            self.sweep(before, distinct);
            self.swept_at = now;
        }
        let w = match self.keys.get_mut(key) {
            Some(w) => w,
            None if counts && ev.ts > before => self.keys.entry(key.into()).or_default(),
            None => return Some(0.0),
        };
        if counts && ev.ts > before {
            let v = match self.spec.measure {
                Measure::Count => 1,
                Measure::DistinctUsers => hash_str(&ev.user_id),
                Measure::DistinctSkus => hash_str(ev.sku.as_deref().unwrap_or("")),
                Measure::SumQty => i64::from(qty),
                Measure::SumValue => value_units,
            };
            // kept in time order, so expiry pops from the front; out-of-order events are
            // few and land near the back
            let at = w
                .entries
                .iter()
                .rposition(|e| e.0 <= ev.ts)
                .map_or(0, |i| i + 1);
            w.entries.insert(at, (ev.ts, v));
            if distinct {
                *w.distinct.entry(v).or_insert(0) += 1;
            } else {
                w.sum += v;
            }
        }
        w.expire(before, distinct);
        Some(match self.spec.measure {
            Measure::Count | Measure::SumQty => w.sum as f64,
            Measure::SumValue => w.sum as f64 / 10_000.0,
            Measure::DistinctUsers | Measure::DistinctSkus => w.distinct.len() as f64,
        })
    }

    /// Drops keys whose window emptied, so memory follows the active keys only.
    fn sweep(&mut self, before: i64, distinct: bool) {
        self.keys.retain(|_, w| {
            w.expire(before, distinct);
            !w.entries.is_empty()
        });
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(ts: i64, user: &str, device: &str, action: Action, qty: u32) -> CartEvent {
        CartEvent {
            event_id: format!("{user}-{ts}").into(),
            ts,
            user_id: user.into(),
            session_id: None,
            action,
            sku: Some("p1".into()),
            qty: Some(qty),
            price: None,
            category: None,
            device_id: Some(device.into()),
            ip: None,
            order_id: None,
            currency: None,
            product: None,
            user: None,
        }
    }

    fn spec(key: FeatureKey, measure: Measure, secs: u64) -> FeatureSpec {
        FeatureSpec {
            name: "f".into(),
            key,
            measure,
            actions: vec![Action::Add],
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn distinct_users_per_device_slide_out() {
        let mut f = Feature::new(spec(FeatureKey::Device, Measure::DistinctUsers, 10));
        assert_eq!(
            f.update(&ev(0, "a", "d", Action::Add, 1), 1, 0, 0),
            Some(1.0)
        );
        assert_eq!(
            f.update(&ev(1000, "b", "d", Action::Add, 1), 1, 0, 1000),
            Some(2.0)
        );
        assert_eq!(
            f.update(&ev(2000, "a", "d", Action::Add, 1), 1, 0, 2000),
            Some(2.0)
        );
        // views do not count but still read the value
        assert_eq!(
            f.update(&ev(3000, "c", "d", Action::View, 1), 1, 0, 3000),
            Some(2.0)
        );
        // the window is (now - 10 s, now]: at 11 s the entries at 0 and 1 s are out, so b
        // is gone while a (2 s) and c stay
        assert_eq!(
            f.update(&ev(11_000, "c", "d", Action::Add, 1), 1, 0, 11_000),
            Some(2.0)
        );
        // at 12.5 s a's entry at 2 s is out too
        assert_eq!(
            f.update(&ev(12_500, "c", "d", Action::View, 1), 1, 0, 12_500),
            Some(1.0)
        );
    }

    proptest! {
        /// Against brute force: the value after each event equals a recount over every event so
        /// far whose time lies in (now - window, now] and whose key matches.
        #[test]
        fn equals_brute_force(
            evs in proptest::collection::vec((0i64..60_000, 0u8..4, 0u8..3, 0u8..3, 1u32..5), 1..80),
            secs in 1u64..30,
            measure in prop_oneof![Just(Measure::Count), Just(Measure::DistinctUsers), Just(Measure::SumQty)],
        ) {
            let mut f = Feature::new(spec(FeatureKey::Device, measure, secs));
            let mut seen: Vec<(i64, String, String, Action, u32)> = Vec::new();
            let mut now = i64::MIN;
            let acts = [Action::Add, Action::View, Action::Remove];
            for (ts, u, d, a, q) in evs {
                let (user, dev, act) = (format!("u{u}"), format!("d{d}"), acts[a as usize]);
                now = now.max(ts);
                let got = f.update(&ev(ts, &user, &dev, act, q), q, 0, now).unwrap();
                let lo = now - secs as i64 * 1000;
                if act == Action::Add && ts > lo {
                    seen.push((ts, user.clone(), dev.clone(), act, q));
                }
                let live: Vec<_> = seen.iter().filter(|e| e.0 > lo && e.2 == dev).collect();
                let want = match measure {
                    Measure::Count => live.len() as f64,
                    Measure::SumQty => live.iter().map(|e| e.4 as f64).sum(),
                    _ => live.iter().map(|e| e.1.clone()).collect::<std::collections::HashSet<_>>().len() as f64,
                };
                prop_assert_eq!(got, want);
            }
        }
    }
}
