//! Deduplication by event id with memory bounded by an event-time horizon.
//!
//! Ids are kept as 64-bit hashes (a collision among 10⁸ live ids has probability ~3·10⁻⁴;
//! see ARCHITECTURE.md) in arrival order, and forgotten once the watermark is `horizon`
//! past their event time. Because an event that old is already late (the config validator
//! enforces horizon ≥ window extent + lateness + out-of-orderness), forgetting it never lets
//! a duplicate into a window.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The keys are already uniform 64-bit hashes: hashing them again is wasted work.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type IdSet = hashbrown::HashSet<u64, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dedup {
    seen: IdSet,
    order: VecDeque<(i64, u64)>,
}

impl Dedup {
    /// Records `id`; returns false when it was already present.
    #[inline]
    pub fn insert(&mut self, id: u64, ts: i64) -> bool {
        // hashbrown takes its 7-bit tag from the top bits and the slot from the low bits;
        // an xxh3 value is uniform in both
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

    pub fn approx_bytes(&self) -> usize {
        self.seen.capacity() * 9 + self.order.capacity() * 16
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
