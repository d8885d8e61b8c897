//! Kafka settings, as serde types with defaults. Anything librdkafka understands can be passed
//! through `properties` (TLS, SASL, timeouts); the keys cartpulse itself must control are
//! refused at start-up, so a config cannot silently break exactly-once.

use cartpulse_avro::{AvroConfig, PayloadFormat};
use cartpulse_model::{CsvConfig, DecodeOptions, Decoder};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a partition with neither a checkpoint nor a committed group offset starts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port]`.
    pub brokers: String,
    pub topics: Vec<String>,
    /// The consumer group every cartpulse process of one job joins; Kafka's group protocol
    /// decides which process owns which partition.
    pub group_id: String,
    pub start: StartFrom,
    /// Quantity assumed for `add` events without one (`None`: such events are dead letters).
    pub default_qty: Option<u32>,
    /// Message payload: `json` (default), `csv` (with `csv_header`, or `[source.csv]` naming
    /// columns by index) or `avro` (with a `[source.avro]` table).
    pub format: PayloadFormat,
    pub csv: Option<CsvConfig>,
    pub csv_header: Option<String>,
    pub avro: Option<AvroConfig>,
    /// Whether the input topics are partitioned by user id (all of a user's events in one
    /// partition, as a producer keying by user id gives). When not, every member re-keys the
    /// input through `repartition_topic` first (see repartition.rs).
    pub keyed_by_user: bool,
    /// The internal topic of re-keyed input; default `{group_id}.repartition`.
    pub repartition_topic: Option<String>,
    /// Partitions of the internal topic when cartpulse creates it; default: as many as the
    /// first input topic has.
    pub repartition_partitions: Option<i32>,
    pub repartition_replication: i32,
    /// The checkpoint store every member shares, as an object store URL (`s3://bucket/prefix`,
    /// `gs://...`, `az://...`, `file:///path`); the local `pipeline.checkpoint.dir` is then
    /// each process's working copy. Without it, `pipeline.checkpoint.dir` itself must be
    /// shared (a network filesystem).
    pub checkpoint_store: Option<String>,
    /// Options of the store, as `object_store` names them: `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`, ...
    pub checkpoint_store_options: BTreeMap<String, String>,
    /// Bounded mode: a partition whose end was reached and that stays silent this long is
    /// finished (every window fires, the final checkpoint is marked finished). `None` reads
    /// forever.
    #[serde(with = "humantime_serde")]
    pub end_after_idle: Option<Duration>,
    /// Kafka's group session timeout; a process that dies is replaced after this long.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Commit offsets to Kafka after every completed checkpoint, so standard lag tools see
    /// progress. The checkpoint, not the committed offset, is what a restart resumes from.
    pub commit_offsets: bool,
    /// Bytes of messages handed to a partition's pipeline at once.
    pub chunk_bytes: usize,
    /// Extra librdkafka properties (`security.protocol`, `ssl.ca.location`,
    /// `sasl.mechanisms`, `sasl.username`, `sasl.password`, ...).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        KafkaSourceConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["cart-events".into()],
            group_id: "cartpulse".into(),
            start: StartFrom::Earliest,
            default_qty: None,
            format: PayloadFormat::Json,
            csv: None,
            csv_header: None,
            avro: None,
            checkpoint_store: None,
            checkpoint_store_options: BTreeMap::new(),
            keyed_by_user: true,
            repartition_topic: None,
            repartition_partitions: None,
            repartition_replication: 1,
            end_after_idle: None,
            session_timeout: Duration::from_secs(10),
            commit_offsets: true,
            chunk_bytes: 256 * 1024,
            properties: BTreeMap::new(),
        }
    }
}

/// Keys cartpulse sets itself; overriding them would break positions or delivery guarantees.
const CONSUMER_OWNED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
    "isolation.level",
    "partition.assignment.strategy",
];

const PRODUCER_OWNED: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "transactional.id",
    "acks",
];

/// A config problem found at start-up: the key and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {expected}")]
pub struct ConfigError {
    pub key: String,
    pub expected: String,
}

fn check_common(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    owned: &[&str],
) -> Result<(), ConfigError> {
    if brokers.trim().is_empty() {
        return Err(ConfigError {
            key: "brokers".into(),
            expected: "expected host:port of at least one broker".into(),
        });
    }
    for k in properties.keys() {
        if owned.contains(&k.as_str()) {
            return Err(ConfigError {
                key: format!("properties.\"{k}\""),
                expected: "expected a property cartpulse does not set itself; this one is managed by cartpulse (its own key or exactly-once needs it)".into(),
            });
        }
    }
    Ok(())
}

impl KafkaSourceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_common(&self.brokers, &self.properties, CONSUMER_OWNED)?;
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError {
                key: "topics".into(),
                expected: "expected a list of one or more topic names".into(),
            });
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError {
                key: "group_id".into(),
                expected: "expected a consumer group name".into(),
            });
        }
        if self.repartition_partitions.is_some_and(|p| p < 1) {
            return Err(ConfigError {
                key: "repartition_partitions".into(),
                expected: "expected at least 1".into(),
            });
        }
        if self.repartition_replication < 1 {
            return Err(ConfigError {
                key: "repartition_replication".into(),
                expected: "expected at least 1".into(),
            });
        }
        if self.keyed_by_user
            && (self.repartition_topic.is_some() || self.repartition_partitions.is_some())
        {
            return Err(ConfigError {
                key: "repartition_topic".into(),
                expected: "only with keyed_by_user = false".into(),
            });
        }
        if let Some(u) = &self.checkpoint_store {
            if let Err(e) = url::Url::parse(u) {
                return Err(ConfigError {
                    key: "checkpoint_store".into(),
                    expected: format!(
                        "expected an object store URL such as s3://bucket/prefix ({e})"
                    ),
                });
            }
        } else if !self.checkpoint_store_options.is_empty() {
            return Err(ConfigError {
                key: "checkpoint_store_options".into(),
                expected: "only with checkpoint_store".into(),
            });
        }
        if self.chunk_bytes < 1024 {
            return Err(ConfigError {
                key: "chunk_bytes".into(),
                expected: "expected at least 1024".into(),
            });
        }
        self.decoder(1 << 20).map(|_| ())
    }

    /// The shared checkpoint store, when one is configured.
    pub fn remote(&self) -> Option<crate::remote::RemoteConfig> {
        self.checkpoint_store
            .as_ref()
            .map(|url| crate::remote::RemoteConfig {
                url: url.clone(),
                options: self.checkpoint_store_options.clone(),
            })
    }

    /// The decoder of the configured payload format (schema files are read here, so a bad
    /// one stops the start with its key).
    pub fn decoder(&self, max_record_bytes: usize) -> Result<Decoder, ConfigError> {
        cartpulse_avro::message_decoder(
            &cartpulse_avro::Payload {
                format: self.format,
                csv: self.csv.as_ref(),
                csv_header: self.csv_header.as_deref(),
                avro: self.avro.as_ref(),
            },
            DecodeOptions {
                max_record_bytes,
                default_qty: self.default_qty,
            },
        )
        .map_err(|e| ConfigError {
            key: e.key,
            expected: e.expected,
        })
    }

    /// The user's properties and the brokers, nothing else: for admin clients and producers.
    pub(crate) fn plain_client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = self.plain_client_config();
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set(
                "auto.offset.reset",
                match self.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            // only committed transactions count as input
            .set("isolation.level", "read_committed")
            // eager: a rebalance revokes everything and reassigns, and every task restores
            // from its own checkpoint; simple and correct (see group.rs)
            .set("partition.assignment.strategy", "range,roundrobin")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 3).max(100).to_string(),
            )
            .set("statistics.interval.ms", "1000");
        c
    }
}

/// How records are keyed in the output topics: deterministic, so a consumer can deduplicate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    /// Output topic of stream `s` is `{topic_prefix}{s}` (e.g. `cartpulse.user_windows`).
    pub topic_prefix: String,
    /// Streams written; empty means every stream the pipeline produces by default.
    pub streams: Vec<String>,
    /// Write each epoch in a Kafka transaction committed when its checkpoint completes, so a
    /// `read_committed` consumer sees every result exactly once. Without it results are
    /// at-least-once with deterministic keys (the idempotent producer is always on).
    pub transactional: bool,
    /// Prefix of the transactional id; the task (topic and partition) is appended, so the
    /// process that takes a partition over fences the one that had it.
    pub transactional_id_prefix: String,
    /// Where epochs are staged between `pre_commit` and `commit` (defaults to a folder in
    /// the task's checkpoint directory).
    pub stage_dir: Option<std::path::PathBuf>,
    /// Create missing output topics at start (an existing topic is left as it is).
    pub create_topics: bool,
    /// Partitions and replication factor of topics cartpulse creates.
    pub topic_partitions: i32,
    pub replication_factor: i32,
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "cartpulse.".into(),
            streams: Vec::new(),
            transactional: false,
            transactional_id_prefix: "cartpulse".into(),
            stage_dir: None,
            create_topics: true,
            topic_partitions: 8,
            replication_factor: 1,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSinkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_common(&self.brokers, &self.properties, PRODUCER_OWNED)?;
        if self.topic_partitions < 1 {
            return Err(ConfigError {
                key: "topic_partitions".into(),
                expected: "expected at least 1".into(),
            });
        }
        if self.replication_factor < 1 {
            return Err(ConfigError {
                key: "replication_factor".into(),
                expected: "expected at least 1".into(),
            });
        }
        for s in &self.streams {
            if cartpulse_engine::Stream::ALL.iter().all(|x| x.name() != s) {
                return Err(ConfigError {
                    key: "streams".into(),
                    expected: format!(
                        "expected stream names among {}; got `{s}`",
                        cartpulse_engine::Stream::ALL
                            .iter()
                            .map(|x| x.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn client_config(&self, transactional_id: Option<&str>) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all");
        if let Some(id) = transactional_id {
            c.set("transactional.id", id);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_keys_are_refused_with_their_name() {
        let mut c = KafkaSourceConfig::default();
        c.properties
            .insert("enable.auto.commit".into(), "true".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "properties.\"enable.auto.commit\"");
        let mut c = KafkaSourceConfig::default();
        c.properties
            .insert("security.protocol".into(), "sasl_ssl".into());
        c.validate().unwrap();
        let cc = c.client_config();
        assert_eq!(cc.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(cc.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn unknown_stream_names_are_refused() {
        let c = KafkaSinkConfig {
            streams: vec!["user_windows".into(), "nope".into()],
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "streams");
        assert!(e.expected.contains("nope"), "{}", e.expected);
    }
}
