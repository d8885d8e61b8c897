//! Reading an archive back: what a consumer (the tests, a one-off export) needs without a
//! query engine.

use crate::layout;
use crate::sink::{list_partitions, published_files, ArchiveError, ArchiveState};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::File;
use std::path::{Path, PathBuf};

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

/// What a reader sees of an archive at one moment: the published files, and the staged epochs
/// of a committed checkpoint (`_archive.json`) that no published file covers yet — together,
/// every event the pipeline has committed, each exactly once.
#[derive(Clone, Debug, Default)]
pub struct ArchiveSnapshot {
    /// (hour partition, file), as [`published_files`].
    pub published: Vec<(i64, PathBuf)>,
    /// (hour partition, epoch, Arrow IPC file) of committed, unpublished epochs.
    pub staged: Vec<(i64, u64, PathBuf)>,
    pub state: Option<ArchiveState>,
}

/// Lists an archive for a reader running beside the sink. The order matters: the state
/// first (so only epochs it calls committed are taken), then the staged files, then the
/// published ones — the sink publishes a partition before it deletes the staged epochs the
/// file covers, so an epoch gone from the staging listing is in the published one. A staged
/// file listed here may still vanish before it is read (published meanwhile): the reader
/// then takes a new snapshot. An archive that does not exist yet is empty.
pub fn archive_snapshot(root: &Path) -> Result<ArchiveSnapshot, ArchiveError> {
    if !root.exists() {
        return Ok(ArchiveSnapshot::default());
    }
    let state = ArchiveState::read(root)?;
    let committed = state.as_ref().and_then(|s| s.committed_epoch);
    let mut staged = Vec::new();
    let staging = root.join(layout::STAGING_DIR);
    if let (Some(c), true) = (committed, staging.is_dir()) {
        for (hour, dir) in list_partitions(&staging)? {
            let names = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect::<Vec<_>>(),
                // the sink removes emptied partition directories
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ArchiveError::Io {
                        what: "list",
                        path: dir,
                        source,
                    })
                }
            };
            for n in names {
                if let Some(e) = layout::parse_staged(&n).filter(|e| *e <= c) {
                    staged.push((hour, e, dir.join(n)));
                }
            }
        }
    }
    let published = published_files(root)?;
    let covered = |hour: i64, epoch: u64| {
        published.iter().any(|(h, p)| {
            *h == hour
                && p.file_name()
                    .and_then(|n| layout::parse_published(&n.to_string_lossy()))
                    .is_some_and(|(a, b)| a <= epoch && epoch <= b)
        })
    };
    staged.retain(|(h, e, _)| !covered(*h, *e));
    staged.sort();
    Ok(ArchiveSnapshot {
        published,
        staged,
        state,
    })
}

/// The rows of one staged epoch (Arrow IPC, the archive's schema).
pub fn read_staged(path: &Path) -> Result<Vec<RecordBatch>, ArchiveError> {
    let f = File::open(path).map_err(|source| ArchiveError::Io {
        what: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let arrow = |source| ArchiveError::Arrow {
        what: "read",
        path: path.to_path_buf(),
        source,
    };
    arrow::ipc::reader::FileReader::try_new(f, None)
        .map_err(arrow)?
        .map(|b| b.map_err(arrow))
        .collect()
}
