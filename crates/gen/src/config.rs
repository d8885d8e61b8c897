//! Generator configuration.

use serde::{Deserialize, Serialize};

use crate::GenError;

/// Everything that shapes a generated stream.
///
/// Every field has a default so a config file only needs to name what it
/// changes; unknown fields are rejected so a typo is an error instead of a
/// silently ignored setting.  The stream is a pure function of this struct:
/// the same config (including `seed`) yields byte-identical output.
///
/// Abnormal actors go out about as often as a normal user starts a session
/// (bots half as often, but each outing is hundreds of events), so their
/// share of traffic stays at a few percent whatever the scale.  The flip
/// side: a normal user shops every `users / (events_per_sec / 8)` seconds
/// or so, and a slow stream over a large population takes that long before
/// most abnormal actors have shown up.  For a slow live demo, use fewer
/// users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Lines to write, duplicates included; `0` means unbounded (live source).
    pub events: u64,
    /// Simulated wall clock of the first session, epoch milliseconds.
    pub start_ms: i64,
    /// Target mean event rate in simulated time; the daily rhythm swings the
    /// instantaneous rate around it.
    pub events_per_sec: f64,
    /// Number of user accounts, normal and abnormal together.
    pub users: u32,
    /// Number of products in the catalogue.
    pub products: u32,
    /// Number of product categories.
    pub categories: u32,
    /// Fraction of events emitted later than their timestamp order.
    pub out_of_order_rate: f64,
    /// Largest lateness of a delayed event; below 5000 so consumers can rely
    /// on a fixed 5 s watermark slack.
    pub max_delay_ms: i64,
    /// Fraction of events re-sent (identical bytes) 1–5 s later.
    pub duplicate_rate: f64,
    /// Fraction of users that hoard stock.
    pub hoarder_rate: f64,
    /// Fraction of users that are click-farm accounts.
    pub click_farm_rate: f64,
    /// Fraction of users that are bots.
    pub bot_rate: f64,
    /// Probability that a normal shopping session ends in a checkout, on average over
    /// users: each user's own rate is this times 0.25, 0.75, 1.25 or 1.75 (fixed per user).
    pub checkout_rate: f64,
    /// Zipf exponent of product popularity.
    pub zipf_exponent: f64,
    /// Price changes per emitted event, on average (spread over time).
    pub price_change_rate: f64,
    /// Accounts per click farm (they share one device and one IP).
    pub farm_size: u32,
    /// Relative swing of the session start rate over a day, in `[0, 1)`.
    pub diurnal_amplitude: f64,
    /// UTC hour (fractional) at which the session start rate peaks.
    pub peak_hour_utc: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            events: 1_000_000,
            start_ms: 1_764_000_000_000,
            events_per_sec: 2000.0,
            users: 100_000,
            products: 10_000,
            categories: 200,
            out_of_order_rate: 0.01,
            max_delay_ms: 3000,
            duplicate_rate: 0.001,
            hoarder_rate: 0.002,
            click_farm_rate: 0.002,
            bot_rate: 0.002,
            checkout_rate: 0.3,
            zipf_exponent: 1.1,
            price_change_rate: 0.0001,
            farm_size: 5,
            diurnal_amplitude: 0.4,
            peak_hour_utc: 20.0,
        }
    }
}

/// Largest user/product/category count accepted: keeps the fixed-size IP and
/// device id spaces collision free and memory bounded.
pub const MAX_ENTITIES: u32 = 10_000_000;

impl GenConfig {
    /// Rejects configs that would make the stream violate its documented
    /// guarantees (e.g. lateness beyond the 5 s watermark slack) or make the
    /// simulation degenerate.
    pub fn validate(&self) -> Result<(), GenError> {
        let bad = |msg: String| Err(GenError::InvalidConfig(msg));
        let rates = [
            ("out_of_order_rate", self.out_of_order_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("hoarder_rate", self.hoarder_rate),
            ("click_farm_rate", self.click_farm_rate),
            ("bot_rate", self.bot_rate),
            ("checkout_rate", self.checkout_rate),
            ("price_change_rate", self.price_change_rate),
        ];
        for (name, v) in rates {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be within [0, 1], got {v}"));
            }
        }
        if self.hoarder_rate + self.click_farm_rate + self.bot_rate > 0.5 {
            return bad("hoarder_rate + click_farm_rate + bot_rate must not exceed 0.5".into());
        }
        if !(0..5000).contains(&self.max_delay_ms) {
            return bad(format!(
                "max_delay_ms must be within [0, 5000), got {}",
                self.max_delay_ms
            ));
        }
        if self.out_of_order_rate > 0.0 && self.max_delay_ms < 1 {
            return bad("out_of_order_rate > 0 needs max_delay_ms >= 1".into());
        }
        if !(self.events_per_sec.is_finite() && self.events_per_sec > 0.0) {
            return bad(format!(
                "events_per_sec must be a positive number, got {}",
                self.events_per_sec
            ));
        }
        for (name, v) in [
            ("users", self.users),
            ("products", self.products),
            ("categories", self.categories),
        ] {
            if v == 0 || v > MAX_ENTITIES {
                return bad(format!(
                    "{name} must be within [1, {MAX_ENTITIES}], got {v}"
                ));
            }
        }
        if self.farm_size < 2 {
            return bad(format!("farm_size must be >= 2, got {}", self.farm_size));
        }
        if !(self.zipf_exponent.is_finite() && (0.0..=10.0).contains(&self.zipf_exponent)) {
            return bad(format!(
                "zipf_exponent must be within [0, 10], got {}",
                self.zipf_exponent
            ));
        }
        if !(0.0..1.0).contains(&self.diurnal_amplitude) {
            return bad(format!(
                "diurnal_amplitude must be within [0, 1), got {}",
                self.diurnal_amplitude
            ));
        }
        if !(0.0..24.0).contains(&self.peak_hour_utc) {
            return bad(format!(
                "peak_hour_utc must be within [0, 24), got {}",
                self.peak_hour_utc
            ));
        }
        if self.start_ms < 0 {
            return bad(format!("start_ms must be >= 0, got {}", self.start_ms));
        }
        let (h, f, b) = self.abnormal_counts();
        if h as u64 + f as u64 + b as u64 >= self.users as u64 {
            return bad("abnormal users would leave no normal user".into());
        }
        Ok(())
    }

    /// Head counts of (hoarders, click-farm accounts, bots).  A farm of one
    /// account is not a farm, so a non-zero farm count is at least 2.
    pub(crate) fn abnormal_counts(&self) -> (u32, u32, u32) {
        let n = |rate: f64| (self.users as f64 * rate).round() as u32;
        let farm = match n(self.click_farm_rate) {
            0 => 0,
            k => k.max(2),
        };
        (n(self.hoarder_rate), farm, n(self.bot_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        GenConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        type Mutation = Box<dyn Fn(&mut GenConfig)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|c| c.max_delay_ms = 5000),
            Box::new(|c| c.max_delay_ms = -1),
            Box::new(|c| c.out_of_order_rate = 1.5),
            Box::new(|c| c.duplicate_rate = -0.1),
            Box::new(|c| c.bot_rate = f64::NAN),
            Box::new(|c| c.events_per_sec = 0.0),
            Box::new(|c| c.users = 0),
            Box::new(|c| c.products = 0),
            Box::new(|c| c.farm_size = 1),
            Box::new(|c| c.diurnal_amplitude = 1.0),
            Box::new(|c| {
                c.hoarder_rate = 0.3;
                c.bot_rate = 0.3
            }),
            Box::new(|c| {
                c.users = 2;
                c.bot_rate = 0.5
            }),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut c = GenConfig::default();
            f(&mut c);
            assert!(c.validate().is_err(), "case {i} should be rejected: {c:?}");
        }
    }

    #[test]
    fn partial_toml_like_json_uses_defaults_and_rejects_unknown() {
        let c: GenConfig = serde_json::from_str(r#"{"seed":7,"events":10}"#).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.users, GenConfig::default().users);
        assert!(serde_json::from_str::<GenConfig>(r#"{"sed":7}"#).is_err());
    }
}
