use crate::config::ConfigError;
use crate::sink::SinkError;
use crate::source::SourceError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("checkpoint {}: {why}", path.display())]
    Incompatible { path: PathBuf, why: String },
    #[error("pipeline failed: {0}")]
    Failed(String),
    /// The shared copy of the checkpoints (an object store) could not be read or written.
    #[error("checkpoint replica {replica}: {why}")]
    Replica { replica: String, why: String },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.into();
    move |source| EngineError::Io { path, source }
}
