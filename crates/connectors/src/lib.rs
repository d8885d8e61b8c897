//! Sources and sinks, one folder per external system, all built from config through the
//! one registry below, so adding a connector means adding one variant here.

pub mod file;
pub mod gen_source;
pub mod memory;

use cartpulse_engine::{Sink, Source};
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
}

/// Every sink cartpulse can write, selected by `type` in the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines per stream under `dir`, committed with each checkpoint.
    Jsonl { dir: PathBuf },
}

pub fn build_source(cfg: &SourceConfig, max_record_bytes: usize) -> Box<dyn Source> {
    match cfg {
        SourceConfig::File(c) => Box::new(FileSource::new((**c).clone(), max_record_bytes)),
        SourceConfig::Generator(g) => Box::new(GenSource::new(g.clone(), max_record_bytes)),
    }
}

pub fn build_sink(cfg: &SinkConfig) -> Box<dyn Sink> {
    match cfg {
        SinkConfig::Jsonl { dir } => Box::new(JsonlDirSink::new(dir)),
    }
}
