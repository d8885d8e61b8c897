//! Real-time stores as exactly-once sinks: PostgreSQL, Redis, ClickHouse, Elasticsearch.
//!
//! Every store is a [`Sink`] and follows the engine's two-phase protocol (see
//! `cartpulse_engine::sink`): `pre_commit` makes an epoch durable but invisible, `commit`
//! makes it visible and can be replayed, `recover(c)` rolls epochs `≤ c` forward and drops
//! the rest. How each store gets there:
//!
//! * PostgreSQL stages rows in a table and moves them into the result tables in the same
//!   transaction that records the epoch as committed.
//! * Redis, ClickHouse and Elasticsearch stage the epoch in a local fsynced file
//!   ([`stage`]); `commit` replays it with writes that are idempotent per epoch (a Redis
//!   MULTI/EXEC guarded by the committed epoch, ClickHouse `ReplacingMergeTree` keys plus
//!   insert deduplication, Elasticsearch documents with deterministic ids).
//!
//! A store that is down blocks the committer, retrying with backoff ([`retry`]): the
//! pipeline slows to a stop instead of dropping results.

pub mod clickhouse;
pub mod elastic;
pub mod postgres;
pub mod redis_store;
pub mod retry;
pub mod schema;
pub mod stage;

use cartpulse_engine::{Sink, Stream};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use clickhouse::{ClickHouseConfig, ClickHouseSink};
pub use elastic::{ElasticConfig, ElasticSink};
pub use postgres::{PostgresConfig, PostgresSink};
pub use redis_store::{RedisConfig, RedisSink};
pub use retry::{register_metrics, retries_metric, RetryConfig};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub message: String,
    /// The store may accept the same request later (it is down, overloaded, restarting).
    pub retryable: bool,
}

impl StoreError {
    pub fn retryable(m: impl Into<String>) -> StoreError {
        StoreError {
            message: m.into(),
            retryable: true,
        }
    }

    pub fn fatal(m: impl Into<String>) -> StoreError {
        StoreError {
            message: m.into(),
            retryable: false,
        }
    }
}

/// One store, selected by `type` (`[[stores]]` in the config file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreSinkConfig {
    Postgres(PostgresConfig),
    Redis(RedisConfig),
    Clickhouse(ClickHouseConfig),
    Elasticsearch(ElasticConfig),
}

impl StoreSinkConfig {
    pub fn name(&self) -> String {
        match self {
            StoreSinkConfig::Postgres(c) => c.name.clone().unwrap_or_else(|| "postgres".into()),
            StoreSinkConfig::Redis(c) => c.name.clone().unwrap_or_else(|| "redis".into()),
            StoreSinkConfig::Clickhouse(c) => c.name.clone().unwrap_or_else(|| "clickhouse".into()),
            StoreSinkConfig::Elasticsearch(c) => {
                c.name.clone().unwrap_or_else(|| "elasticsearch".into())
            }
        }
    }

    /// Stores that stage in local files keep them under `<checkpoint dir>/stores/<name>`
    /// unless `stage_dir` says otherwise: the staged epochs belong with the checkpoints that
    /// decide whether they are rolled forward.
    pub fn default_stage_dir(&mut self, checkpoint_dir: &Path) {
        let d = checkpoint_dir.join("stores").join(self.name());
        let slot = match self {
            StoreSinkConfig::Postgres(_) => return,
            StoreSinkConfig::Redis(c) => &mut c.stage_dir,
            StoreSinkConfig::Clickhouse(c) => &mut c.stage_dir,
            StoreSinkConfig::Elasticsearch(c) => &mut c.stage_dir,
        };
        slot.get_or_insert(d);
    }
}

pub fn build_store_sink(cfg: &StoreSinkConfig) -> Result<Box<dyn Sink>, StoreError> {
    Ok(match cfg {
        StoreSinkConfig::Postgres(c) => Box::new(PostgresSink::new(c.clone())?),
        StoreSinkConfig::Redis(c) => Box::new(RedisSink::new(c.clone())?),
        StoreSinkConfig::Clickhouse(c) => Box::new(ClickHouseSink::new(c.clone())?),
        StoreSinkConfig::Elasticsearch(c) => Box::new(ElasticSink::new(c.clone())?),
    })
}

/// Resolves a config's `streams` list, rejecting names no store can hold.
pub(crate) fn parse_streams(sink: &str, names: &[String]) -> Result<Vec<Stream>, StoreError> {
    names
        .iter()
        .map(|n| {
            schema::stream_by_name(n)
                .filter(|s| schema::schema(*s).is_some())
                .ok_or_else(|| {
                    StoreError::fatal(format!(
                        "{sink}: unknown stream `{n}` in `streams`, expected some of: {}",
                        schema::SCHEMAS
                            .iter()
                            .map(|s| s.stream.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })
        .collect()
}

pub(crate) fn names(streams: &[Stream]) -> Vec<String> {
    streams.iter().map(|s| s.name().to_string()).collect()
}

pub(crate) fn require_stage_dir(sink: &str, d: &Option<PathBuf>) -> Result<PathBuf, StoreError> {
    d.clone().ok_or_else(|| {
        StoreError::fatal(format!(
            "{sink}: `stage_dir` is required when the pipeline has no checkpoint dir"
        ))
    })
}

pub(crate) fn sink_error(sink: &str, e: StoreError) -> cartpulse_engine::SinkError {
    cartpulse_engine::SinkError {
        sink: sink.to_string(),
        message: e.message,
        retryable: e.retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_with_defaults_and_reject_unknown_keys() {
        #[derive(Deserialize)]
        struct F {
            stores: Vec<StoreSinkConfig>,
        }
        let f: F = toml::from_str(
            r#"
[[stores]]
type = "postgres"
url = "host=127.0.0.1 user=postgres dbname=test"
schema = "shop"
[[stores]]
type = "redis"
url = "redis://127.0.0.1:6379/"
cart_ttl = "1h"
[[stores]]
type = "clickhouse"
url = "http://127.0.0.1:8123"
streams = ["user_windows", "global_windows"]
[[stores]]
type = "elasticsearch"
url = "http://127.0.0.1:9200"
[stores.retry]
max = "5s"
"#,
        )
        .unwrap();
        assert_eq!(f.stores.len(), 4);
        let mut ch = f.stores[2].clone();
        ch.default_stage_dir(Path::new("/ck"));
        match ch {
            StoreSinkConfig::Clickhouse(c) => {
                assert_eq!(c.stage_dir.unwrap(), Path::new("/ck/stores/clickhouse"))
            }
            _ => unreachable!(),
        }
        let e = toml::from_str::<F>("[[stores]]\ntype = \"redis\"\nurll = \"x\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("urll"), "{e}");
        let e = parse_streams("pg", &["windows".into()]).unwrap_err();
        assert!(e.message.contains("windows") && e.message.contains("user_windows"));
    }
}
