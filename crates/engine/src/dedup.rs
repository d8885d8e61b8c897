//! Deduplication by event id with memory bounded by an event-time horizon.
//!
//! Ids are kept as 64-bit hashes (a collision among 10⁸ live ids has probability ~3·10⁻⁴;
//! see ARCHITECTURE.md) in arrival order, and forgotten once the watermark is `horizon`
//! past their event time. Because an event that old is already late (the config validator
//! enforces horizon ≥ window extent + lateness + out-of-orderness), forgetting it never lets
//! a duplicate into a window.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dedup {
    seen: hashbrown::HashSet<u64>,
    order: VecDeque<(i64, u64)>,
}

impl Dedup {
    /// Records `id`; returns false when it was already present.
    #[inline]
    pub fn insert(&mut self, id: u64, ts: i64) -> bool {
        if self.seen.insert(id) {
            self.order.push_back((ts, id));
            true
        } else {
            false
        }
    }

    /// Forgets ids whose event time is at least `horizon` behind `watermark`. Arrival order
    /// is nearly event-time order, so this stops at the first id still inside the horizon;
    /// a slightly older id behind it lives a little longer, which is harmless.
    pub fn expire(&mut self, watermark: i64, horizon: i64) {
        let limit = watermark.saturating_sub(horizon);
        while let Some(&(ts, id)) = self.order.front() {
            if ts > limit {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_then_forgets() {
        let mut d = Dedup::default();
        assert!(d.insert(1, 100));
        assert!(!d.insert(1, 100));
        assert!(d.insert(2, 200));
        d.expire(150, 50);
        assert_eq!(d.len(), 1);
        assert!(d.insert(1, 100));
    }
}
