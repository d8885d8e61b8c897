//! cartpulse's streaming engine: a sharded, event-time pipeline with exactly-once output.
//!
//! See ARCHITECTURE.md at the repository root for the map; the module docs explain each
//! part's reasoning.

pub mod checkpoint;
pub mod clock;
mod committer;
pub mod config;
pub mod dedup;
pub mod enrich;
pub mod error;
pub mod live;
pub mod metrics;
pub mod operator;
pub mod output;
pub mod pipeline;
mod shard;
pub mod sink;
pub mod source;
mod stage;
pub mod state;
pub mod window;

pub use committer::CommitSummary;
pub use config::{CheckpointConfig, ConfigError, PipelineConfig};
pub use error::EngineError;
pub use operator::{OpAbandoned, OpEvent, OpInput, Operator};
pub use output::{Records, Stream};
pub use pipeline::{Api, Handle, Pipeline, RunSummary};
pub use sink::{Sink, SinkError};
pub use source::{Poll, Source, SourceChunk, SourceError};
pub use window::WindowSpec;
