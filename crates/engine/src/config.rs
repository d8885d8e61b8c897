//! Pipeline settings. Every struct is a serde type with defaults and `deny_unknown_fields`,
//! so a typo in a config file fails at start-up with the key's name instead of being ignored.

use crate::window::WindowSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Shards (threads owning state). Defaults to the number of cores.
    pub shards: usize,
    /// Decoder threads. Defaults to the number of shards.
    pub parsers: usize,
    /// Virtual partitions of keyed state; fixed for the life of a checkpoint directory.
    pub key_groups: u32,
    /// Bytes per source chunk: the unit of parallel decoding and of backpressure.
    pub chunk_bytes: usize,
    /// Sub-batches buffered between each decoder and each shard.
    pub channel_capacity: usize,
    /// Longest record accepted.
    pub max_record_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub out_of_orderness: Duration,
    /// How long a fired window still accepts late events (re-emitting an update).
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A live source silent this long lets event time follow the wall clock, so windows and
    /// abandoned-cart timers fire although no event arrives. `None` disables it.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// How long (event time) an event id is remembered for deduplication.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Per-user windows.
    pub user_window: WindowSpec,
    /// Global windows (tumbling or sliding).
    pub global_window: WindowSpec,
    /// Inactivity after which a non-empty cart is reported abandoned.
    #[serde(with = "humantime_serde")]
    pub abandon_after: Duration,
    pub checkpoint: CheckpointConfig,
    /// Record each event's latency (wall clock at state update minus event time) in
    /// `Metrics::event_latency_us`. Meaningful only when event time is wall-clock time.
    pub track_event_latency: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Where checkpoints live; without one, output is still committed per epoch but a
    /// restart begins from scratch.
    pub dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Completed checkpoints kept.
    pub retain: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: None,
            interval: Duration::from_secs(10),
            retain: 3,
        }
    }
}

pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            shards: default_parallelism(),
            parsers: 0,
            key_groups: cartpulse_model::keys::DEFAULT_KEY_GROUPS,
            chunk_bytes: 1 << 20,
            channel_capacity: 8,
            max_record_bytes: 1 << 20,
            out_of_orderness: Duration::from_secs(5),
            allowed_lateness: Duration::ZERO,
            idle_timeout: None,
            dedup_horizon: Duration::from_secs(600),
            user_window: WindowSpec::Tumbling {
                size: Duration::from_secs(10),
            },
            global_window: WindowSpec::Tumbling {
                size: Duration::from_secs(10),
            },
            abandon_after: Duration::from_secs(30 * 60),
            checkpoint: CheckpointConfig::default(),
            track_event_latency: false,
        }
    }
}

/// A setting that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{key}`: {why}")]
pub struct ConfigError {
    pub key: &'static str,
    pub why: String,
}

impl PipelineConfig {
    pub fn parsers(&self) -> usize {
        if self.parsers == 0 {
            self.shards.max(1)
        } else {
            self.parsers
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, why: String| Err(ConfigError { key, why });
        if self.shards == 0 || self.shards > self.key_groups as usize {
            return bad(
                "shards",
                format!(
                    "expected 1..={} (the number of key groups)",
                    self.key_groups
                ),
            );
        }
        if self.key_groups == 0 || self.key_groups > 32_768 {
            return bad("key_groups", "expected 1..=32768".into());
        }
        if self.chunk_bytes < 1024 {
            return bad("chunk_bytes", "expected at least 1024".into());
        }
        if self.channel_capacity == 0 {
            return bad("channel_capacity", "expected at least 1".into());
        }
        if self.max_record_bytes == 0 {
            return bad("max_record_bytes", "expected at least 1".into());
        }
        self.user_window.validate().map_err(|why| ConfigError {
            key: "user_window",
            why,
        })?;
        self.global_window.validate().map_err(|why| ConfigError {
            key: "global_window",
            why,
        })?;
        if matches!(self.global_window, WindowSpec::Session { .. }) {
            return bad(
                "global_window",
                "expected a tumbling or sliding window (a global session has no key)".into(),
            );
        }
        // A duplicate that outlives its dedup entry must already be late, or it would be
        // counted twice: see ARCHITECTURE.md, "dedup and lateness".
        let extent = self.user_window.extent().max(self.global_window.extent());
        let need = extent + self.allowed_lateness + self.out_of_orderness;
        if self.dedup_horizon < need {
            return bad(
                "dedup_horizon",
                format!(
                    "expected at least the window extent + allowed_lateness + out_of_orderness = {}",
                    humantime::format_duration(need)
                ),
            );
        }
        if self.checkpoint.interval < Duration::from_millis(10) {
            return bad("checkpoint.interval", "expected at least 10ms".into());
        }
        if self.checkpoint.retain == 0 {
            return bad("checkpoint.retain", "expected at least 1".into());
        }
        Ok(())
    }
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
