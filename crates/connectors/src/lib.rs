//! Sources and sinks, one folder per external system, all built from config through the
//! one registry below, so adding a connector means adding one variant here.

pub mod enrich;
pub mod file;
pub mod gen_source;
pub mod http_ingest;
mod ingest;
pub mod memory;
pub mod mysql_cdc;
pub mod rabbitmq;
pub mod redis;

use cartpulse_engine::{Sink, Source, Stream};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use file::{FileFormat, FileSource, FileSourceConfig, JsonlDirSink};
pub use gen_source::GenSource;
pub use memory::MemorySource;

/// Every source cartpulse can read, selected by `type` in the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    File(Box<FileSourceConfig>),
    /// The built-in simulator, released at wall-clock pace.
    Generator(cartpulse_gen::GenConfig),
    /// Row changes of a cart table and an orders table, from the MySQL/MariaDB binlog.
    MysqlCdc(Box<mysql_cdc::MysqlCdcConfig>),
    /// A Redis stream read through a consumer group.
    RedisStream(Box<redis::RedisStreamConfig>),
    /// Carts kept as Redis hashes, followed through keyspace notifications.
    RedisCarts(Box<redis::RedisCartsConfig>),
    /// A durable RabbitMQ queue, acknowledged per checkpoint.
    Rabbitmq(Box<rabbitmq::RabbitMqConfig>),
    /// `POST /ingest` on the HTTP server, through a local journal (`http_ingest`).
    Http(Box<http_ingest::HttpIngestConfig>),
    /// Kafka topics read by a consumer group: every partition is a task with its own state
    /// and checkpoint (`cartpulse_kafka::group`), run by `cartpulse run`.
    Kafka(Box<cartpulse_kafka::KafkaSourceConfig>),
}

/// Every sink cartpulse can write, selected by `type` in the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines per stream under `dir`, committed with each checkpoint.
    Jsonl {
        dir: PathBuf,
        /// Also write the `events` stream (every accepted event, cleaned).
        #[serde(default)]
        events: bool,
        /// Also write the `carts` stream (changed carts at each checkpoint).
        #[serde(default)]
        carts: bool,
    },
    /// The `events` stream archived as hour-partitioned Parquet (`cartpulse-lake`).
    Parquet(cartpulse_lake::ArchiveConfig),
    /// Every output stream to Kafka topics, keyed deterministically; transactional if asked.
    Kafka(cartpulse_kafka::KafkaSinkConfig),
}

impl SinkConfig {
    /// The same sink for one task of a consumer group: folders get a subfolder per task
    /// (`topic-partition`), so tasks never share a file, and a Kafka sink gets the task in
    /// its transactional id.
    pub fn for_task(&self, task: &str) -> SinkConfig {
        match self {
            SinkConfig::Jsonl { dir, events, carts } => SinkConfig::Jsonl {
                dir: dir.join(task),
                events: *events,
                carts: *carts,
            },
            SinkConfig::Parquet(c) => {
                let mut c = c.clone();
                c.dir = c.dir.join(task);
                SinkConfig::Parquet(c)
            }
            SinkConfig::Kafka(c) => SinkConfig::Kafka(c.clone()),
        }
    }
}

/// A source built from config, and for `type = "http"` the journal that `POST /ingest`
/// appends to (the HTTP server needs it).
pub struct BuiltSource {
    pub source: Box<dyn Source>,
    pub ingest: Option<std::sync::Arc<http_ingest::Journal>>,
}

/// Builds the configured source; fails only where start-up can already tell (an unusable
/// journal directory), naming the key.
pub fn build_source(cfg: &SourceConfig, max_record_bytes: usize) -> Result<BuiltSource, String> {
    if let SourceConfig::Http(c) = cfg {
        let journal = http_ingest::Journal::open((**c).clone(), max_record_bytes)?;
        return Ok(BuiltSource {
            source: Box::new(http_ingest::HttpIngestSource::new(journal.clone())),
            ingest: Some(journal),
        });
    }
    let source: Box<dyn Source> = match cfg {
        SourceConfig::File(c) => Box::new(FileSource::new((**c).clone(), max_record_bytes)),
        SourceConfig::Generator(g) => Box::new(GenSource::new(g.clone(), max_record_bytes)),
        SourceConfig::MysqlCdc(c) => Box::new(mysql_cdc::MysqlCdcSource::new(
            (**c).clone(),
            max_record_bytes,
        )),
        SourceConfig::RedisStream(c) => Box::new(redis::RedisStreamSource::new(
            (**c).clone(),
            max_record_bytes,
        )),
        SourceConfig::RedisCarts(c) => Box::new(redis::RedisCartsSource::new(
            (**c).clone(),
            max_record_bytes,
        )),
        SourceConfig::Rabbitmq(c) => {
            let d = rabbitmq::RabbitMqSource::payload_decoder(c, max_record_bytes)
                .map_err(|e| format!("[source] {e}"))?;
            Box::new(rabbitmq::RabbitMqSource::new((**c).clone(), max_record_bytes).with_decoder(d))
        }
        SourceConfig::Http(_) => unreachable!("built above"),
        SourceConfig::Kafka(_) => {
            return Err("key `source.type`: a kafka source runs as a consumer group, one pipeline per partition; it is read by `cartpulse run`".into())
        }
    };
    Ok(BuiltSource {
        source,
        ingest: None,
    })
}

/// Builds a sink; `task` and `checkpoint_dir` are set for a task of a consumer group.
pub fn build_sink(cfg: &SinkConfig) -> Box<dyn Sink> {
    build_task_sink(cfg, None, None)
}

pub fn build_task_sink(
    cfg: &SinkConfig,
    task: Option<&str>,
    checkpoint_dir: Option<&std::path::Path>,
) -> Box<dyn Sink> {
    match cfg {
        SinkConfig::Kafka(c) => Box::new(cartpulse_kafka::KafkaSink::new(
            c.clone(),
            task.map(str::to_string),
            checkpoint_dir.map(|d| d.join("kafka-stage")),
        )),
        SinkConfig::Jsonl { dir, events, carts } => Box::new(
            JsonlDirSink::new(dir)
                .with_stream(Stream::Events, *events)
                .with_stream(Stream::Carts, *carts),
        ),
        SinkConfig::Parquet(c) => Box::new(cartpulse_lake::ParquetArchiveSink::new(c.clone())),
    }
}
