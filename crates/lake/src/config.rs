//! Archive settings.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Smallest files; what warehouses default to for cold data.
    #[default]
    Zstd,
    /// Fastest to write and read.
    Snappy,
    Uncompressed,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Archive root: `dir/dt=YYYY-MM-DD/hour=HH/part-*.parquet`.
    pub dir: PathBuf,
    /// Publish a partition once this many bytes (Arrow, uncompressed) are staged for it.
    #[serde(default = "default_roll_bytes")]
    pub roll_bytes: u64,
    /// Publish a partition once its oldest staged epoch is this old (wall clock), so a quiet
    /// partition still becomes visible.
    #[serde(default = "default_roll_interval", with = "humantime_serde")]
    pub roll_interval: Duration,
    /// An hour partition is closed (published, and counted complete in `_archive.json`) once
    /// the archive holds events this far (event time) past the hour's end.
    #[serde(default = "default_close_after", with = "humantime_serde")]
    pub close_after: Duration,
    #[serde(default)]
    pub compression: Compression,
    /// zstd level (1 fastest … 22 smallest); ignored by the other codecs.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Rows per Parquet row group: the unit readers skip by statistics and read in parallel.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

fn default_roll_bytes() -> u64 {
    256 << 20
}
fn default_roll_interval() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_close_after() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_zstd_level() -> i32 {
    3
}
fn default_row_group_rows() -> usize {
    128 * 1024
}

impl ArchiveConfig {
    pub fn new(dir: impl Into<PathBuf>) -> ArchiveConfig {
        ArchiveConfig {
            dir: dir.into(),
            roll_bytes: default_roll_bytes(),
            roll_interval: default_roll_interval(),
            close_after: default_close_after(),
            compression: Compression::default(),
            zstd_level: default_zstd_level(),
            row_group_rows: default_row_group_rows(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.roll_bytes == 0 {
            return Err("roll_bytes: expected at least 1".into());
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err("zstd_level: expected 1..=22".into());
        }
        if self.row_group_rows == 0 {
            return Err("row_group_rows: expected at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: ArchiveConfig = toml::from_str("dir = \"lake\"").unwrap();
        assert_eq!(c, ArchiveConfig::new("lake"));
        let c: ArchiveConfig = toml::from_str(
            "dir = \"lake\"\nroll_interval = \"1m\"\ncompression = \"snappy\"\nroll_bytes = 1024",
        )
        .unwrap();
        assert_eq!(c.roll_interval, Duration::from_secs(60));
        assert_eq!(c.compression, Compression::Snappy);
        assert_eq!(c.roll_bytes, 1024);
        let e = toml::from_str::<ArchiveConfig>("dir = \"lake\"\nroll_byte = 1").unwrap_err();
        assert!(e.to_string().contains("roll_byte"), "{e}");
        assert!(toml::from_str::<ArchiveConfig>("compression = \"lz4\"\ndir = \"x\"").is_err());
    }
}
