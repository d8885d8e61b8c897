//! The Lambda architecture's batch layer: every view recomputed from the Parquet archive
//! (`cartpulse-lake`) with DataFusion SQL, incrementally by partition, and the
//! reconciliation of the speed layer's window outputs against it.
//!
//! * [`run_batch`] / [`run_batch_async`]: one recomputation ([`BatchJob`]);
//!   [`run_every`] schedules it every `[batch] interval`.
//! * [`verify`]: field-by-field, exact comparison with the speed layer.
//!
//! Views (under `OUT/`): per day (`<view>/dt=YYYY-MM-DD/part-0.parquet`) `user_windows`,
//! `global_windows`, `user_daily`, `product_daily`, `conversion_daily`,
//! `conversion_category`, `orders`, `sessions` (the intent model's training set); over all
//! history `users`, `products`, `retention`; `baskets.txt` for `cartpulse fpgrowth`; and
//! `_horizon.json`, the event time up to which they are exact.

pub mod config;
pub mod run;
pub mod verify;
pub mod views;

pub use config::{BatchConfig, BatchJob};
pub use run::{run_batch, run_batch_async, run_every, BatchReport, Horizon};
pub use verify::{flat_fields, verify, VerifyReport};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] cartpulse_lake::ArchiveError),
    #[error("query failed: {source}\n  in: {sql}")]
    Query {
        sql: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// A query needed more at once than `[batch] memory_limit_mb` leaves it, even spilling.
    #[error(
        "query ran out of memory under [batch] memory_limit_mb = {limit_mb} (raise it, or set 0 for no limit): {source}\n  in: {sql}"
    )]
    Memory {
        limit_mb: usize,
        sql: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
    #[error("{0}")]
    Invalid(String),
}
