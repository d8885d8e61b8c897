//! Where things live in an archive, and the names that make recovery a pure function of the
//! directory listing.
//!
//! ```text
//! ROOT/dt=2025-11-24/hour=16/part-000000000003-000000000007.parquet   published
//! ROOT/dt=2025-11-24/hour=16/.part-000000000003-000000000007.parquet.tmp   being written
//! ROOT/_staging/dt=2025-11-24/hour=16/e-000000000008.arrow   one epoch, durable, not visible
//! ROOT/_archive.json   how far the archive is complete
//! ```
//!
//! A published file is named by the first and last epoch it covers: it holds every staged
//! epoch of its partition in that range. So after a crash, a staged epoch inside a published
//! range is known to be in that file already (drop it), and one outside is not (keep it):
//! publishing again yields the same name, and no row lands twice. Hive, Spark, DuckDB and
//! ClickHouse skip names starting with `_` or `.`, and the `*.parquet` glob matches neither a
//! staged nor a temporary file.

use chrono::{DateTime, NaiveDate, Timelike};

pub const HOUR_MS: i64 = 3_600_000;
pub const STAGING_DIR: &str = "_staging";
pub const STATE_FILE: &str = "_archive.json";

/// Hours since the Unix epoch: the partition key of an event time (ms).
pub fn hour_of(ts: i64) -> i64 {
    ts.div_euclid(HOUR_MS)
}

/// `dt=YYYY-MM-DD/hour=HH` (UTC) of a partition key.
pub fn partition_path(hour: i64) -> String {
    let t = DateTime::from_timestamp_millis(hour.saturating_mul(HOUR_MS)).unwrap_or_default();
    format!("dt={}/hour={:02}", t.format("%Y-%m-%d"), t.hour())
}

/// The partition key of directory names `dt=YYYY-MM-DD` and `hour=HH`.
pub fn parse_partition(dt: &str, hour: &str) -> Option<i64> {
    let day = NaiveDate::parse_from_str(dt.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
    let h: i64 = hour.strip_prefix("hour=")?.parse().ok()?;
    if !(0..24).contains(&h) {
        return None;
    }
    let days = day
        .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?)
        .num_days();
    Some(days * 24 + h)
}

pub fn published_name(first: u64, last: u64) -> String {
    format!("part-{first:012}-{last:012}.parquet")
}

pub fn temp_name(first: u64, last: u64) -> String {
    format!(".part-{first:012}-{last:012}.parquet.tmp")
}

/// The epoch range of a published file.
pub fn parse_published(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name
        .strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b).then_some((a, b))
}

pub fn is_temp(name: &str) -> bool {
    name.starts_with(".part-") && name.ends_with(".parquet.tmp")
}

pub fn staged_name(epoch: u64) -> String {
    format!("e-{epoch:012}.arrow")
}

pub fn parse_staged(name: &str) -> Option<u64> {
    name.strip_prefix("e-")?
        .strip_suffix(".arrow")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partitions_are_utc_hours() {
        // 2025-11-24T16:00:00.055Z
        let h = hour_of(1_764_000_000_055);
        assert_eq!(partition_path(h), "dt=2025-11-24/hour=16");
        assert_eq!(parse_partition("dt=2025-11-24", "hour=16"), Some(h));
        assert_eq!(partition_path(hour_of(-1)), "dt=1969-12-31/hour=23");
        assert_eq!(parse_partition("dt=2025-11-24", "hour=24"), None);
        assert_eq!(parse_partition("2025-11-24", "hour=1"), None);
    }

    #[test]
    fn names_round_trip_and_reject_foreign_files() {
        assert_eq!(
            published_name(3, 17),
            "part-000000000003-000000000017.parquet"
        );
        assert_eq!(parse_published(&published_name(3, 17)), Some((3, 17)));
        assert_eq!(
            parse_published("part-000000000009-000000000003.parquet"),
            None
        );
        assert_eq!(parse_published("part-000000000003.jsonl"), None);
        assert_eq!(parse_published(&temp_name(3, 17)), None);
        assert!(is_temp(&temp_name(3, 17)));
        assert_eq!(parse_staged(&staged_name(42)), Some(42));
        assert_eq!(parse_staged("e-42.arrow.tmp"), None);
        // the names sort like the epochs they hold
        assert!(published_name(9, 9) < published_name(10, 12));
    }

    proptest! {
        #[test]
        fn every_hour_round_trips(hour in -200_000i64..2_000_000) {
            let p = partition_path(hour);
            let (dt, h) = p.split_once('/').unwrap();
            prop_assert_eq!(parse_partition(dt, h), Some(hour));
        }
    }
}
