//! The `[serving]` config section: query limits and where the speed layer's windows are kept.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Serve merged views and SQL (`/api/sql`, `/api/views/…`) from `cartpulse run`. Needs a
    /// `parquet` sink (the history) and `[batch] views_dir` (the batch views).
    pub enabled: bool,
    /// A query running longer is cancelled and answered with an error.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Memory one query may hold for joins, sorts and aggregations (MiB); past it the query
    /// fails with "resources exhausted" instead of growing the process.
    pub memory_limit_mb: usize,
    /// Rows returned at most; an answer cut there says `"truncated": true`.
    pub max_rows: usize,
    /// DataFusion partitions (threads) per query; 0 means the number of cores.
    pub threads: usize,
    /// Where the speed layer's window records after the batch horizon are journaled, so a
    /// restart serves them again; default `<checkpoint dir>/serving`.
    pub dir: Option<PathBuf>,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            enabled: false,
            query_timeout: Duration::from_secs(30),
            memory_limit_mb: 1024,
            max_rows: 10_000,
            threads: 0,
            dir: None,
        }
    }
}

impl ServingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.query_timeout < Duration::from_millis(10) {
            return Err("query_timeout: expected at least 10ms".into());
        }
        if self.memory_limit_mb < 16 {
            return Err("memory_limit_mb: expected at least 16".into());
        }
        if self.max_rows == 0 {
            return Err("max_rows: expected at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: ServingConfig = toml::from_str("enabled = true\nquery_timeout = \"5s\"").unwrap();
        assert!(c.enabled);
        assert_eq!(c.query_timeout, Duration::from_secs(5));
        assert_eq!(c.max_rows, 10_000);
        let e = toml::from_str::<ServingConfig>("max_row = 5").unwrap_err();
        assert!(e.to_string().contains("max_row"), "{e}");
        let c = ServingConfig {
            max_rows: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("max_rows"));
    }
}
