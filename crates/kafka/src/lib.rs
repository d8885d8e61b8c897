//! Kafka for cartpulse: a consumer-group source whose partitions are tasks with their own
//! state and checkpoints (`group`), the per-partition engine source (`source`), a sink that
//! writes every output stream to topics with deterministic keys, idempotently and optionally
//! in transactions committed with the checkpoint (`sink`), and the merge of per-partition
//! global windows into the global view (`merge`).

pub mod admin;
pub mod config;
pub mod group;
pub mod merge;
pub mod remote;
pub mod repartition;
pub mod sink;
pub mod source;

pub use config::{ConfigError, KafkaSinkConfig, KafkaSourceConfig, StartFrom};
pub use group::{GroupError, GroupMember, GroupSummary, TaskFactory};
/// The client library, for tests and tools that talk to the same broker.
pub use rdkafka;
pub use sink::KafkaSink;
pub use source::{PartitionSource, TaskId};
