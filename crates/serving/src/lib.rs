//! The Lambda architecture's serving layer: one query surface over the batch views (exact up
//! to their horizon) and the speed layer (after it), with DataFusion SQL.
//!
//! * [`catalog`]: the tables and merged views one query sees, and running a query under its
//!   limits (read-only, one statement, time, memory, rows).
//! * [`live`]: the speed layer's committed window results after the horizon, fed by a sink.
//! * [`answer`]: an answer as JSON (exact decimals) or as a text table.
//! * [`http`]: the HTTP routes' requests as SQL.
//! * [`pg`]: the same SQL over the PostgreSQL wire protocol.

pub mod answer;
pub mod catalog;
pub mod config;
pub mod http;
pub mod live;
pub mod pg;

pub use catalog::{Answer, Catalog, Described, TABLES};
pub use config::{PgConfig, ServingConfig};
pub use http::HttpQuery;
pub use live::{LiveWindowSink, LiveWindows};

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The query is wrong: syntax, an unknown table or column, a type error, a statement
    /// that would write.
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("the query ran past its time limit ({0:?}) and was cancelled")]
    Timeout(Duration),
    /// Every query slot stayed taken for the whole time limit.
    #[error(
        "all {0} query slots ([serving] max_queries) stayed busy for the query's time limit \
         (cancelled queries hold theirs until they stop); try again"
    )]
    Busy(usize),
    /// Past `memory_limit_mb`.
    #[error("the query needs more memory than its limit allows: {0}")]
    TooBig(String),
    /// A PostgreSQL client cannot be told an answer was cut, so there it is an error.
    #[error(
        "the answer has more than {0} rows ([serving] max_rows); narrow the query or add a LIMIT"
    )]
    TooManyRows(usize),
    #[error("serving config: {0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Archive(#[from] cartpulse_lake::ArchiveError),
    #[error(transparent)]
    Batch(#[from] cartpulse_batch::BatchError),
}

impl From<datafusion::error::DataFusionError> for ServingError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        ServingError::Internal(e.strip_backtrace())
    }
}

impl From<datafusion::arrow::error::ArrowError> for ServingError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        ServingError::Internal(e.to_string())
    }
}

impl ServingError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            ServingError::BadQuery(_) => 400,
            ServingError::TooBig(_) | ServingError::TooManyRows(_) => 413,
            ServingError::Timeout(_) => 504,
            ServingError::Busy(_) => 503,
            _ => 500,
        }
    }

    /// A stable name of the kind of error, for clients.
    pub fn kind(&self) -> &'static str {
        match self {
            ServingError::BadQuery(_) => "bad_query",
            ServingError::TooBig(_) => "memory_limit",
            ServingError::TooManyRows(_) => "too_many_rows",
            ServingError::Timeout(_) => "timeout",
            ServingError::Busy(_) => "busy",
            _ => "internal",
        }
    }
}
