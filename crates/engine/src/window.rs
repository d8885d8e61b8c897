//! Window assignment: tumbling, sliding and session windows over event time.
//!
//! Windows are half-open `[start, end)` in epoch milliseconds, aligned to the Unix epoch.
//! A window is complete once the watermark reaches `end`; an event is late for a window
//! when `end + allowed_lateness <= watermark` at the moment it arrives.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    Tumbling {
        #[serde(with = "humantime_serde")]
        size: Duration,
    },
    Sliding {
        #[serde(with = "humantime_serde")]
        size: Duration,
        #[serde(with = "humantime_serde")]
        slide: Duration,
    },
    /// A key's events closer than `gap` share one window.
    Session {
        #[serde(with = "humantime_serde")]
        gap: Duration,
    },
}

impl WindowSpec {
    pub fn validate(&self) -> Result<(), String> {
        let ms = |d: Duration| d.as_millis();
        match *self {
            WindowSpec::Tumbling { size } if ms(size) == 0 => {
                Err("size must be at least 1ms".into())
            }
            WindowSpec::Sliding { size, slide } if ms(slide) == 0 || ms(size) == 0 => {
                Err("size and slide must be at least 1ms".into())
            }
            WindowSpec::Sliding { size, slide } if ms(size) % ms(slide) != 0 => {
                Err("size must be a multiple of slide".into())
            }
            WindowSpec::Session { gap } if ms(gap) == 0 => Err("gap must be at least 1ms".into()),
            _ => Ok(()),
        }
    }

    /// Longest span from an event's time to the end of a window holding it.
    pub fn extent(&self) -> Duration {
        match *self {
            WindowSpec::Tumbling { size } | WindowSpec::Sliding { size, .. } => size,
            WindowSpec::Session { gap } => gap,
        }
    }

    /// Calls `f(start, end)` for every fixed window holding `ts` (none for sessions, which
    /// are built by merging instead).
    #[inline]
    pub fn assign(&self, ts: i64, mut f: impl FnMut(i64, i64)) {
        match *self {
            WindowSpec::Tumbling { size } => {
                let size = size.as_millis() as i64;
                let start = ts - ts.rem_euclid(size);
                f(start, start + size);
            }
            WindowSpec::Sliding { size, slide } => {
                let size = size.as_millis() as i64;
                let slide = slide.as_millis() as i64;
                let mut start = ts - ts.rem_euclid(slide);
                while start > ts - size {
                    f(start, start + size);
                    start -= slide;
                }
            }
            WindowSpec::Session { .. } => {}
        }
    }

    pub fn is_session(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn windows(spec: &WindowSpec, ts: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        spec.assign(ts, |s, e| v.push((s, e)));
        v.sort();
        v
    }

    #[test]
    fn tumbling_aligns_to_epoch() {
        let t = WindowSpec::Tumbling {
            size: Duration::from_secs(10),
        };
        assert_eq!(
            windows(&t, 1_764_000_000_123),
            vec![(1_764_000_000_000, 1_764_000_010_000)]
        );
        assert_eq!(windows(&t, -1), vec![(-10_000, 0)]);
    }

    #[test]
    fn config_round_trip_and_rejects_unknown_keys() {
        let s: WindowSpec =
            toml::from_str("kind = \"sliding\"\nsize = \"1m\"\nslide = \"10s\"").unwrap();
        assert_eq!(
            s,
            WindowSpec::Sliding {
                size: Duration::from_secs(60),
                slide: Duration::from_secs(10)
            }
        );
        assert!(
            toml::from_str::<WindowSpec>("kind = \"tumbling\"\nsize = \"1m\"\nslid = \"1s\"")
                .is_err()
        );
    }

    proptest! {
        /// Every window assigned contains ts, and it is exactly the brute-force set.
        #[test]
        fn sliding_matches_brute_force(ts in -100_000i64..100_000, slide in 1i64..50, k in 1i64..6) {
            let size = slide * k;
            let spec = WindowSpec::Sliding { size: Duration::from_millis(size as u64), slide: Duration::from_millis(slide as u64) };
            let got = windows(&spec, ts);
            let mut want = Vec::new();
            let mut s = (ts - size - slide).div_euclid(slide) * slide;
            while s <= ts {
                if s <= ts && ts < s + size { want.push((s, s + size)); }
                s += slide;
            }
            prop_assert_eq!(got, want);
        }
    }
}
