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

/// Snapshotted as one blob of `(ts, id)` pairs in arrival order; the set is rebuilt on
/// restore. This keeps the synchronous part of a checkpoint close to a memcpy: dedup ids
/// are most of the state of a busy shard.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: IdSet,
    order: VecDeque<(i64, u64)>,
}

impl Serialize for Dedup {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut blob = Vec::with_capacity(self.order.len() * 16);
        for &(ts, id) in &self.order {
            blob.extend_from_slice(&ts.to_le_bytes());
            blob.extend_from_slice(&id.to_le_bytes());
        }
        s.serialize_bytes(&blob)
    }
}

impl<'de> Deserialize<'de> for Dedup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let blob: serde_bytes_compat::ByteBuf = Deserialize::deserialize(d)?;
        let blob = blob.0;
        if !blob.len().is_multiple_of(16) {
            return Err(serde::de::Error::custom(
                "dedup blob is not a whole number of entries",
            ));
        }
        let mut dd = Dedup::default();
        dd.seen.reserve(blob.len() / 16);
        dd.order.reserve(blob.len() / 16);
        for c in blob.chunks_exact(16) {
            let ts = i64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let id = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            dd.insert(id, ts);
        }
        Ok(dd)
    }
}

/// Reads a byte string whether the format hands it over as bytes or as a sequence.
mod serde_bytes_compat {
    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_borrowed_bytes<E: serde::de::Error>(
                    self,
                    v: &'de [u8],
                ) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<ByteBuf, A::Error> {
                    let mut v = Vec::new();
                    while let Some(b) = a.next_element::<u8>()? {
                        v.push(b);
                    }
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
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
    fn snapshot_round_trip_keeps_order_and_set() {
        let mut d = Dedup::default();
        for i in 0..100u64 {
            d.insert(i * 7, i as i64);
        }
        let b = postcard::to_stdvec(&d).unwrap();
        let mut r: Dedup = postcard::from_bytes(&b).unwrap();
        assert_eq!(r.order, d.order);
        assert!(!r.insert(7 * 42, 0));
        r.expire(50, 0);
        assert_eq!(r.len(), 49);
    }

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
