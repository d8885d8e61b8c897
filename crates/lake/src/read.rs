//! Reading an archive back: what a consumer (the tests, a one-off export) needs without a
//! query engine.

use crate::sink::{published_files, ArchiveError};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::path::Path;

/// Every published row, file by file in partition and name order.
pub fn read_archive(root: &Path) -> Result<Vec<RecordBatch>, ArchiveError> {
    let mut out = Vec::new();
    for (_, p) in published_files(root)? {
        let perr = |source| ArchiveError::Parquet {
            path: p.clone(),
            source,
        };
        let f = File::open(&p).map_err(|source| ArchiveError::Io {
            what: "open",
            path: p.clone(),
            source,
        })?;
        for b in ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(perr)?
            .build()
            .map_err(perr)?
        {
            out.push(b.map_err(|source| ArchiveError::Arrow {
                what: "read",
                path: p.clone(),
                source,
            })?);
        }
    }
    Ok(out)
}
