//! Funnel metrics: cart conversion (of the users who added to cart, the share who checked
//! out) per hour, per day and per day and category, and user retention as a cohort matrix
//! (first active day × days since).
//!
//! Definitions are chosen so a batch query over the archived events gives the same numbers
//! (`conversion_daily`, `conversion_category` and `retention` in crates/batch/src/views.rs):
//! every accepted event counts, late or not; days are UTC; a user is identified by user id.
//! Conversion per category: of the users who added a product of the category that day, the
//! share who checked out that day.

use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// Retention is tracked for this many days after a user's first day (one bit each).
pub const RETENTION_DAYS: usize = 64;

fn uid(user: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user.as_bytes())
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Bucket {
    adders: HashSet<u64>,
    buyers: HashSet<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Day {
    all: Bucket,
    categories: HashMap<String, HashSet<u64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Funnel {
    /// Days kept (older ones are dropped as event time passes).
    keep_days: i64,
    days: BTreeMap<i64, Day>,
    hours: BTreeMap<i64, Bucket>,
    /// user → (first active day, bit k = active on first day + k)
    users: HashMap<u64, (i64, u64)>,
    latest_ts: i64,
}

/// One row of a conversion table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// Start of the hour or day (epoch ms).
    pub start: i64,
    /// Category, or `None` for all.
    pub category: Option<String>,
    /// Users who added to cart (a product of `category`, in a category row).
    pub adders: u64,
    /// Users who checked out; in a category row, those of `adders` who did.
    pub buyers: u64,
    /// Those of `adders` who checked out in the same hour or day.
    pub converted: u64,
    /// `converted / adders` (0 without adders).
    pub rate: f64,
}

/// One cohort's retention row: `active[k]` users of the cohort were active on day `k` after
/// their first day (`active[0]` is the cohort's size).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    pub day: i64,
    pub active: Vec<u64>,
}

fn rate(adders: u64, converted: u64) -> f64 {
    if adders == 0 {
        0.0
    } else {
        converted as f64 / adders as f64
    }
}

impl Bucket {
    /// The rate's numerator is the adders who checked out, not every buyer: a user who
    /// filled the cart the day (or hour) before and checks out now is a buyer here but not
    /// an adder, so buyers / adders is no share (it can exceed 1) and disagreed with the
    /// per-category rate and the batch view (`users_converted / users_added`).
    fn row(&self, start: i64) -> Conversion {
        let (a, b) = (self.adders.len() as u64, self.buyers.len() as u64);
        let converted = self
            .buyers
            .iter()
            .filter(|u| self.adders.contains(*u))
            .count() as u64;
        Conversion {
            start,
            category: None,
            adders: a,
            buyers: b,
            converted,
            rate: rate(a, converted),
        }
    }
}

impl Funnel {
    pub fn new(keep_days: u32) -> Funnel {
        Funnel {
            keep_days: i64::from(keep_days.max(1)),
            days: BTreeMap::new(),
            hours: BTreeMap::new(),
            users: HashMap::new(),
            latest_ts: i64::MIN,
        }
    }

    pub fn observe(
        &mut self,
        user: &str,
        ts: i64,
        action: cartpulse_model::Action,
        category: Option<&str>,
    ) {
        use cartpulse_model::Action;
        let u = uid(user);
        let day = ts.div_euclid(DAY_MS);
        let hour = ts.div_euclid(HOUR_MS);
        if ts > self.latest_ts {
            self.latest_ts = ts;
            let oldest = day - self.keep_days;
            while self
                .days
                .first_key_value()
                .is_some_and(|(&d, _)| d < oldest)
            {
                self.days.pop_first();
            }
            while self
                .hours
                .first_key_value()
                .is_some_and(|(&h, _)| h < oldest * 24)
            {
                self.hours.pop_first();
            }
        }
        // retention: every event marks its day active
        let e = self.users.entry(u).or_insert((day, 0));
        if day < e.0 {
            // an out-of-order event moved the first day earlier: shift the bits
            let shift = (e.0 - day) as u32;
            e.1 = if shift >= 64 { 0 } else { e.1 << shift };
            e.0 = day;
        }
        let k = day - e.0;
        if (k as usize) < RETENTION_DAYS {
            e.1 |= 1 << k;
        }
        match action {
            Action::Add => {
                let d = self.days.entry(day).or_default();
                d.all.adders.insert(u);
                if let Some(c) = category {
                    match d.categories.get_mut(c) {
                        Some(s) => {
                            s.insert(u);
                        }
                        None => {
                            d.categories.insert(c.to_string(), HashSet::from_iter([u]));
                        }
                    }
                }
                self.hours.entry(hour).or_default().adders.insert(u);
            }
            Action::Checkout => {
                self.days.entry(day).or_default().all.buyers.insert(u);
                self.hours.entry(hour).or_default().buyers.insert(u);
            }
            _ => {}
        }
    }

    pub fn by_day(&self) -> Vec<Conversion> {
        self.days
            .iter()
            .map(|(&d, day)| day.all.row(d * DAY_MS))
            .collect()
    }

    pub fn by_hour(&self) -> Vec<Conversion> {
        self.hours
            .iter()
            .map(|(&h, b)| b.row(h * HOUR_MS))
            .collect()
    }

    pub fn by_day_category(&self) -> Vec<Conversion> {
        let mut out = Vec::new();
        for (&d, day) in &self.days {
            let mut cats: Vec<_> = day.categories.iter().collect();
            cats.sort_by(|a, b| a.0.cmp(b.0));
            for (c, adders) in cats {
                let buyers = adders.intersection(&day.all.buyers).count() as u64;
                let a = adders.len() as u64;
                out.push(Conversion {
                    start: d * DAY_MS,
                    category: Some(c.clone()),
                    adders: a,
                    buyers,
                    converted: buyers,
                    rate: rate(a, buyers),
                });
            }
        }
        out
    }

    /// The cohort matrix, oldest cohort first; each row runs to the latest day seen.
    pub fn retention(&self) -> Vec<Cohort> {
        let latest = self.latest_ts.div_euclid(DAY_MS);
        let mut cohorts: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        for &(first, bits) in self.users.values() {
            let span = ((latest - first + 1).max(1) as usize).min(RETENTION_DAYS);
            let row = cohorts.entry(first).or_default();
            if row.len() < span {
                row.resize(span, 0);
            }
            for (k, slot) in row.iter_mut().enumerate() {
                if bits & (1 << k) != 0 {
                    *slot += 1;
                }
            }
        }
        cohorts
            .into_iter()
            .map(|(d, active)| Cohort {
                day: d * DAY_MS,
                active,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartpulse_model::Action;

    #[test]
    fn conversion_and_retention_by_hand() {
        let mut f = Funnel::new(30);
        let d = DAY_MS;
        f.observe("a", 1000, Action::Add, Some("toys"));
        f.observe("b", 2000, Action::Add, Some("toys"));
        f.observe("c", 3000, Action::Add, Some("books"));
        f.observe("a", 4000, Action::Checkout, None);
        f.observe("c", 5000, Action::Checkout, None);
        f.observe("a", d + 10, Action::View, None);
        f.observe("b", 2 * d + 10, Action::View, None);
        f.observe("d", 2 * d + 20, Action::View, None);
        let day = &f.by_day()[0];
        assert_eq!((day.adders, day.buyers, day.converted), (3, 2, 2));
        let cats = f.by_day_category();
        assert_eq!(cats.len(), 2);
        assert_eq!(cats[0].category.as_deref(), Some("books"));
        assert_eq!((cats[0].adders, cats[0].buyers), (1, 1));
        assert_eq!((cats[1].adders, cats[1].buyers), (2, 1));
        let r = f.retention();
        assert_eq!(r[0].active, vec![3, 1, 1]);
        assert_eq!(r[1].day, 2 * d);
        assert_eq!(r[1].active, vec![1]);
    }

    #[test]
    fn a_checkout_without_an_add_that_day_is_a_buyer_but_not_converted() {
        let mut f = Funnel::new(30);
        // a filled the cart before midnight and checks out after it; b adds and leaves
        f.observe("a", DAY_MS - 60_000, Action::Add, Some("toys"));
        f.observe("a", DAY_MS + 60_000, Action::Checkout, None);
        f.observe("b", DAY_MS + 120_000, Action::Add, Some("toys"));
        let days = f.by_day();
        assert_eq!(
            (days[1].adders, days[1].buyers, days[1].converted),
            (1, 1, 0)
        );
        assert_eq!(
            days[1].rate, 0.0,
            "a share of the adders, never buyers / adders"
        );
        assert_eq!((days[0].adders, days[0].buyers, days[0].rate), (1, 0, 0.0));
        let hours = f.by_hour();
        assert!(hours.iter().all(|h| h.converted == 0 && h.rate == 0.0));
    }

    #[test]
    fn out_of_order_first_day_shifts_the_cohort() {
        let mut f = Funnel::new(30);
        f.observe("a", 2 * DAY_MS, Action::View, None);
        f.observe("a", DAY_MS, Action::View, None);
        let r = f.retention();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].day, DAY_MS);
        assert_eq!(r[0].active, vec![1, 1]);
    }
}
