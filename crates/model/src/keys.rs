//! Key groups: the unit of state ownership.
//!
//! State is kept per key group — a fixed number of virtual partitions hashed from the user
//! id — never per shard. A checkpoint therefore restores onto any number of shards (each
//! shard takes a contiguous range of groups, as Flink does with its max parallelism), and a
//! later scale-out can hand whole groups between processes.

/// Default number of key groups; also the upper bound on useful shards.
pub const DEFAULT_KEY_GROUPS: u32 = 256;

#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[inline]
pub fn key_group(hash: u64, key_groups: u32) -> u32 {
    // multiply-shift instead of modulo: uniform and cheaper
    ((u128::from(hash) * u128::from(key_groups)) >> 64) as u32
}

/// Shard owning `kg` when `key_groups` are split into `shards` contiguous ranges.
#[inline]
pub fn shard_of(kg: u32, key_groups: u32, shards: u32) -> u32 {
    ((u64::from(kg) * u64::from(shards)) / u64::from(key_groups)) as u32
}

/// The key groups owned by `shard`.
pub fn groups_of(shard: u32, key_groups: u32, shards: u32) -> std::ops::Range<u32> {
    let start = (0..key_groups)
        .find(|&g| shard_of(g, key_groups, shards) == shard)
        .unwrap_or(key_groups);
    let end = (start..key_groups)
        .find(|&g| shard_of(g, key_groups, shards) != shard)
        .unwrap_or(key_groups);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_groups() {
        for shards in 1..=9 {
            let mut next = 0;
            for s in 0..shards {
                let r = groups_of(s, 256, shards);
                assert_eq!(r.start, next);
                for g in r.clone() {
                    assert_eq!(shard_of(g, 256, shards), s);
                }
                next = r.end;
            }
            assert_eq!(next, 256);
        }
        assert!(key_group(u64::MAX, 256) < 256);
    }
}
