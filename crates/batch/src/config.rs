//! Batch-layer settings: the `[batch]` config section and one job's inputs.

use cartpulse_engine::{PipelineConfig, WindowSpec};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The `[batch]` section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// How often a long-running process recomputes the views (`run_every`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How far before a day a cart or a session may have begun and still count for it:
    /// baskets are rebuilt from cart events up to this long before the checkout's day, and
    /// sessions from events up to this long on either side of their day.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// DataFusion partitions (threads) per query; 0 means the number of cores.
    pub threads: usize,
    /// Memory the batch layer's queries may hold at once, in MiB; past it, sorts and
    /// aggregations spill to `spill_dir` instead of growing. 0: no limit (nothing spills,
    /// and a day of history must fit in memory).
    pub memory_limit_mb: usize,
    /// Where spill files go (default: the system's temporary directory).
    pub spill_dir: Option<PathBuf>,
    /// Where `cartpulse run` writes the views when it runs the batch layer itself, every
    /// `interval`, over the archive of its `parquet` sink; unset: `run` leaves the batch
    /// layer to `cartpulse batch` (e.g. from cron).
    pub views_dir: Option<PathBuf>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            interval: Duration::from_secs(3600),
            lookback: Duration::from_secs(24 * 3600),
            threads: 0,
            memory_limit_mb: 0,
            spill_dir: None,
            views_dir: None,
        }
    }
}

impl BatchConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Duration::from_secs(1) {
            return Err("interval: expected at least 1s".into());
        }
        if self.lookback > Duration::from_secs(366 * 24 * 3600) {
            return Err("lookback: expected at most a year".into());
        }
        if self.memory_limit_mb != 0 && self.memory_limit_mb < 64 {
            return Err("memory_limit_mb: expected 0 (no limit) or at least 64".into());
        }
        Ok(())
    }
}

/// One recomputation: the archive to read, where the views go, and the windows to use
/// (the pipeline's, so that the batch views line up with the speed layer's).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchJob {
    pub archive: PathBuf,
    pub out: PathBuf,
    pub user_window: WindowSpec,
    pub global_window: WindowSpec,
    pub config: BatchConfig,
    /// The input has ended: every partition counts as closed, so the horizon is the end of
    /// the last hour holding an event (instead of the archive's `complete_before_ms`).
    pub complete: bool,
    /// No progress bar.
    pub quiet: bool,
}

impl BatchJob {
    pub fn new(archive: impl Into<PathBuf>, out: impl Into<PathBuf>, p: &PipelineConfig) -> Self {
        BatchJob {
            archive: archive.into(),
            out: out.into(),
            user_window: p.user_window.clone(),
            global_window: p.global_window.clone(),
            config: BatchConfig::default(),
            complete: false,
            quiet: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_defaults_and_unknown_keys() {
        let c: BatchConfig = toml::from_str("interval = \"1h\"").unwrap();
        assert_eq!(c, BatchConfig::default());
        let c: BatchConfig = toml::from_str("interval = \"10m\"\nlookback = \"2d\"").unwrap();
        assert_eq!(c.interval, Duration::from_secs(600));
        assert_eq!(c.lookback, Duration::from_secs(2 * 86400));
        let e = toml::from_str::<BatchConfig>("intervall = \"1h\"").unwrap_err();
        assert!(e.to_string().contains("intervall"), "{e}");
        assert!(BatchConfig {
            interval: Duration::ZERO,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
