//! The Lambda architecture's master dataset: every accepted event, archived to Parquet
//! partitioned by event hour (`dt=YYYY-MM-DD/hour=HH`, UTC), published exactly once with the
//! pipeline's checkpoints. See `sink` for the two stages (staged Arrow per epoch, Parquet per
//! partition) and `layout` for the names recovery relies on.

pub mod config;
pub mod layout;
pub mod read;
pub mod record;
pub mod sink;

pub use config::{ArchiveConfig, Compression};
pub use read::{archive_snapshot, read_archive, read_staged, ArchiveSnapshot};
pub use record::schema;
pub use sink::{published_files, ArchiveError, ArchiveState, ArchiveStats, ParquetArchiveSink};

// the versions the archive is written with, for readers that want the same
pub use arrow;
pub use parquet;
