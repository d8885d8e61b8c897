//! `ParquetArchiveSink`: the `events` stream into hour-partitioned Parquet, exactly once.
//!
//! Two stages, so that a checkpoint every 10 s does not mean a tiny file every 10 s:
//!
//! 1. **Stage** (per epoch): rows are appended to an Arrow IPC file per (epoch, partition)
//!    under `_staging/`; `pre_commit` finishes and fsyncs them. Durable, invisible.
//! 2. **Publish** (at `commit`, for committed epochs only): a partition whose staged bytes
//!    reach `roll_bytes`, whose oldest staged epoch is `roll_interval` old, or whose hour is
//!    closed (events `close_after` past its end are committed) is rewritten as one Parquet
//!    file named by the epoch range it covers, written to a temporary name, fsynced, renamed
//!    into place; only then are its staged files deleted.
//!
//! `recover(c)` needs no log: staged epochs after `c` are discarded, staged epochs inside a
//! published file's range are already in it (deleted), the rest are committed and wait for
//! the next publication. Every step is idempotent, so a crash anywhere repeats or finishes
//! it. When the sink is dropped (end of input, or a stop after the final checkpoint) every
//! committed staged epoch is published, because the engine's `Sink` trait has no
//! end-of-stream call; after a crash the next run's `recover` publishes them instead.

use crate::config::{ArchiveConfig, Compression};
use crate::layout::{self, HOUR_MS, STAGING_DIR, STATE_FILE};
use crate::record::{schema, Columns, RecordDecoder};
use arrow::array::AsArray;
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::TimestampMillisecondType;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use cartpulse_engine::{Sink, SinkError, Stream};
use parquet::arrow::ArrowWriter;
use parquet::basic::ZstdLevel;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Rows buffered per open staging file before they go to disk as one IPC batch.
const STAGE_BATCH_ROWS: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Arrow {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("writing {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error("{0}")]
    Inconsistent(String),
    #[error("config: {0}")]
    Config(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn arrow_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(arrow::error::ArrowError) -> ArchiveError + 'a {
    move |source| ArchiveError::Arrow {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How far the archive is complete; rewritten atomically at each commit that changes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveState {
    /// Last checkpoint epoch whose events are in the archive (published or staged).
    pub committed_epoch: Option<u64>,
    /// Largest event time committed, epoch ms.
    pub max_event_ms: Option<i64>,
    /// Every hour partition ending at or before this (epoch ms, hour-aligned) is closed: all
    /// its events that arrived in time are published. Later, only events that reach the
    /// pipeline after `close_after` can add a file to it.
    pub complete_before_ms: Option<i64>,
}

impl ArchiveState {
    pub fn read(root: &Path) -> Result<Option<ArchiveState>, ArchiveError> {
        let p = root.join(STATE_FILE);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ArchiveError::Inconsistent(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &p)(e)),
        }
    }
}

/// An epoch's rows for one partition, being written.
struct OpenStage {
    path: PathBuf,
    cols: Columns,
    writer: FileWriter<BufWriter<File>>,
    max_ts: i64,
}

/// A durable staged epoch of one partition.
#[derive(Clone, Debug)]
struct Staged {
    path: PathBuf,
    bytes: u64,
}

#[derive(Default)]
struct PartitionStage {
    epochs: BTreeMap<u64, Staged>,
    /// When the oldest unpublished epoch was staged (recovered ones count from the restart).
    since: Option<Instant>,
}

pub struct ParquetArchiveSink {
    cfg: ArchiveConfig,
    name: String,
    decoder: RecordDecoder,
    open: BTreeMap<(u64, i64), OpenStage>,
    /// Partition key of the previous record: runs of one hour skip the map lookup.
    last: Option<(u64, i64)>,
    /// Pre-committed (and, up to `committed`, committed) epochs by partition.
    staged: BTreeMap<i64, PartitionStage>,
    /// Largest event time per epoch not yet committed.
    epoch_max_ts: BTreeMap<u64, i64>,
    state: ArchiveState,
    props: WriterProperties,
    stats: ArchiveStats,
}

/// What the sink has done, for benchmarks and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    pub rows_staged: u64,
    pub rows_published: u64,
    pub files_published: u64,
    pub bytes_published: u64,
}

impl ParquetArchiveSink {
    /// Never fails: a bad setting is reported by the first call, `recover`, at start-up.
    pub fn new(cfg: ArchiveConfig) -> ParquetArchiveSink {
        let compression = match cfg.compression {
            Compression::Zstd => parquet::basic::Compression::ZSTD(
                ZstdLevel::try_new(cfg.zstd_level).unwrap_or_default(),
            ),
            Compression::Snappy => parquet::basic::Compression::SNAPPY,
            Compression::Uncompressed => parquet::basic::Compression::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(cfg.row_group_rows.max(1)))
            .set_created_by(concat!("cartpulse-lake ", env!("CARGO_PKG_VERSION")).into())
            .build();
        ParquetArchiveSink {
            name: format!("parquet:{}", cfg.dir.display()),
            cfg,
            decoder: RecordDecoder::default(),
            open: BTreeMap::new(),
            last: None,
            staged: BTreeMap::new(),
            epoch_max_ts: BTreeMap::new(),
            state: ArchiveState::default(),
            props,
            stats: ArchiveStats::default(),
        }
    }

    pub fn stats(&self) -> &ArchiveStats {
        &self.stats
    }

    pub fn state(&self) -> &ArchiveState {
        &self.state
    }

    fn root(&self) -> &Path {
        &self.cfg.dir
    }

    fn staging_dir(&self, hour: i64) -> PathBuf {
        self.root()
            .join(STAGING_DIR)
            .join(layout::partition_path(hour))
    }

    fn partition_dir(&self, hour: i64) -> PathBuf {
        self.root().join(layout::partition_path(hour))
    }

    /// Brings the directory to the state of checkpoint `committed` (see the module docs).
    pub fn recover_archive(&mut self, committed: Option<u64>) -> Result<(), ArchiveError> {
        self.cfg.validate().map_err(ArchiveError::Config)?;
        self.open.clear();
        self.last = None;
        self.staged.clear();
        self.epoch_max_ts.clear();
        let root = self.root().to_path_buf();
        fs::create_dir_all(&root).map_err(io("create", &root))?;
        let Some(c) = committed else {
            // a fresh start reprocesses the input from its beginning: earlier output would
            // be counted twice
            for (_, dir) in list_partitions(&root)? {
                for name in list_names(&dir)? {
                    if layout::parse_published(&name).is_some() || layout::is_temp(&name) {
                        let p = dir.join(&name);
                        fs::remove_file(&p).map_err(io("remove", &p))?;
                    }
                }
                sync_dir(&dir)?;
            }
            let staging = root.join(STAGING_DIR);
            if staging.exists() {
                fs::remove_dir_all(&staging).map_err(io("remove", &staging))?;
            }
            let st = root.join(STATE_FILE);
            if st.exists() {
                fs::remove_file(&st).map_err(io("remove", &st))?;
            }
            sync_dir(&root)?;
            self.state = ArchiveState::default();
            return Ok(());
        };
        // published epoch ranges per partition
        let mut published: BTreeMap<i64, Vec<(u64, u64)>> = BTreeMap::new();
        for (hour, dir) in list_partitions(&root)? {
            for name in list_names(&dir)? {
                if layout::is_temp(&name) {
                    let p = dir.join(&name);
                    fs::remove_file(&p).map_err(io("remove", &p))?;
                } else if let Some((a, b)) = layout::parse_published(&name) {
                    if b > c {
                        return Err(ArchiveError::Inconsistent(format!(
                            "{} holds epochs up to {b}, but the checkpoint being restored is {c}: \
                             the archive is ahead of the checkpoint directory (was it restored \
                             from an older copy?)",
                            dir.join(&name).display()
                        )));
                    }
                    published.entry(hour).or_default().push((a, b));
                }
            }
        }
        let staging = root.join(STAGING_DIR);
        if staging.exists() {
            for (hour, dir) in list_partitions(&staging)? {
                let ranges = published.get(&hour).map(Vec::as_slice).unwrap_or(&[]);
                for name in list_names(&dir)? {
                    let p = dir.join(&name);
                    let Some(e) = layout::parse_staged(&name) else {
                        continue;
                    };
                    let done = ranges.iter().any(|&(a, b)| (a..=b).contains(&e));
                    if e > c || done {
                        fs::remove_file(&p).map_err(io("remove", &p))?;
                        continue;
                    }
                    let bytes = fs::metadata(&p).map_err(io("stat", &p))?.len();
                    let ps = self.staged.entry(hour).or_default();
                    ps.epochs.insert(e, Staged { path: p, bytes });
                    ps.since.get_or_insert_with(Instant::now);
                }
                sync_dir(&dir)?;
            }
        }
        self.state = ArchiveState::read(&root)?.unwrap_or_default();
        if self.state.committed_epoch.is_some_and(|s| s > c) {
            return Err(ArchiveError::Inconsistent(format!(
                "{} says epoch {} is committed, but the checkpoint being restored is {c}",
                root.join(STATE_FILE).display(),
                self.state.committed_epoch.unwrap_or_default()
            )));
        }
        // the committed staged epochs may hold later events than the state file says
        let mut max_ts = self.state.max_event_ms;
        for ps in self.staged.values() {
            for s in ps.epochs.values() {
                max_ts = max_ts.max(max_ts_of(&s.path)?);
            }
        }
        self.state.max_event_ms = max_ts;
        self.state.committed_epoch = Some(c);
        self.publish_due(false)?;
        Ok(())
    }

    /// Stages newline-terminated `events` records into `epoch`.
    pub fn stage(&mut self, epoch: u64, records: &[u8]) -> Result<(), ArchiveError> {
        for line in records.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let (e, x) = self.decoder.decode(line)?;
            let key = (epoch, layout::hour_of(e.ts));
            if self.last != Some(key) && !self.open.contains_key(&key) {
                let stage = self.open_stage(epoch, key.1)?;
                self.open.insert(key, stage);
            }
            self.last = Some(key);
            let st = self.open.get_mut(&key).expect("opened");
            st.cols.push(&e, &x);
            st.max_ts = st.max_ts.max(e.ts);
            if st.cols.len() >= STAGE_BATCH_ROWS {
                let b = st.cols.finish();
                st.writer.write(&b).map_err(arrow_err("stage", &st.path))?;
            }
            self.stats.rows_staged += 1;
        }
        Ok(())
    }

    fn open_stage(&self, epoch: u64, hour: i64) -> Result<OpenStage, ArchiveError> {
        let dir = self.staging_dir(hour);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(layout::staged_name(epoch));
        let f = File::create(&path).map_err(io("create", &path))?;
        let writer = FileWriter::try_new(BufWriter::with_capacity(1 << 20, f), &schema())
            .map_err(arrow_err("stage", &path))?;
        Ok(OpenStage {
            path,
            cols: Columns::default(),
            writer,
            max_ts: i64::MIN,
        })
    }

    /// Makes `epoch` durable (still invisible).
    pub fn seal(&mut self, epoch: u64) -> Result<(), ArchiveError> {
        let keys: Vec<(u64, i64)> = self
            .open
            .range((epoch, i64::MIN)..=(epoch, i64::MAX))
            .map(|(k, _)| *k)
            .collect();
        let mut dirs = BTreeSet::new();
        for key in keys {
            let mut st = self.open.remove(&key).expect("listed");
            if !st.cols.is_empty() {
                let b = st.cols.finish();
                st.writer.write(&b).map_err(arrow_err("stage", &st.path))?;
            }
            st.writer.finish().map_err(arrow_err("stage", &st.path))?;
            let f = st
                .writer
                .into_inner()
                .map_err(arrow_err("stage", &st.path))?
                .into_inner()
                .map_err(|e| io("flush", &st.path)(e.into_error()))?;
            f.sync_all().map_err(io("sync", &st.path))?;
            let bytes = f.metadata().map_err(io("stat", &st.path))?.len();
            let m = self.epoch_max_ts.entry(epoch).or_insert(i64::MIN);
            *m = (*m).max(st.max_ts);
            let ps = self.staged.entry(key.1).or_default();
            ps.epochs.insert(
                epoch,
                Staged {
                    path: st.path,
                    bytes,
                },
            );
            ps.since.get_or_insert_with(Instant::now);
            dirs.insert(key.1);
        }
        if self.last.is_some_and(|k| k.0 == epoch) {
            self.last = None;
        }
        // new files are durable only once their directory entries are
        for hour in dirs {
            let d = self.staging_dir(hour);
            sync_dir(&d)?;
            if let Some(p) = d.parent() {
                sync_dir(p)?;
            }
        }
        Ok(())
    }

    /// Marks every staged epoch up to `epoch` committed and publishes what is due.
    pub fn commit_epoch(&mut self, epoch: u64) -> Result<(), ArchiveError> {
        let later = self.epoch_max_ts.split_off(&(epoch + 1));
        let done = std::mem::replace(&mut self.epoch_max_ts, later);
        for (_, m) in done {
            if m != i64::MIN {
                self.state.max_event_ms = Some(self.state.max_event_ms.map_or(m, |o| o.max(m)));
            }
        }
        self.state.committed_epoch = Some(epoch);
        self.publish_due(false)
    }

    /// Publishes every committed staged epoch, due or not.
    pub fn publish_all(&mut self) -> Result<(), ArchiveError> {
        self.publish_due(true)
    }

    fn publish_due(&mut self, all: bool) -> Result<(), ArchiveError> {
        let Some(c) = self.state.committed_epoch else {
            return Ok(());
        };
        // hours ending at or before this are closed
        let complete_before = self.state.max_event_ms.map(|m| {
            let close = i64::try_from(self.cfg.close_after.as_millis()).unwrap_or(i64::MAX);
            layout::hour_of(m.saturating_sub(close)) * HOUR_MS
        });
        let due: Vec<i64> = self
            .staged
            .iter()
            .filter(|(hour, ps)| {
                if ps.epochs.range(..=c).next().is_none() {
                    return false;
                }
                let bytes: u64 = ps.epochs.range(..=c).map(|(_, s)| s.bytes).sum();
                let closed = complete_before.is_some_and(|cb| (*hour + 1) * HOUR_MS <= cb);
                all || closed
                    || bytes >= self.cfg.roll_bytes
                    || ps
                        .since
                        .is_some_and(|t| t.elapsed() >= self.cfg.roll_interval)
            })
            .map(|(h, _)| *h)
            .collect();
        for hour in due {
            self.publish(hour, c)?;
        }
        let complete_before = complete_before
            .max(self.state.complete_before_ms)
            // never past a partition that still has committed rows waiting
            .map(|cb| {
                self.staged
                    .iter()
                    .filter(|(_, ps)| ps.epochs.range(..=c).next().is_some())
                    .map(|(h, _)| h * HOUR_MS)
                    .fold(cb, i64::min)
            });
        let new = ArchiveState {
            complete_before_ms: complete_before.max(self.state.complete_before_ms),
            ..self.state.clone()
        };
        self.write_state(&new)?;
        self.state = new;
        Ok(())
    }

    /// Rewrites the committed staged epochs of partition `hour` as one Parquet file.
    fn publish(&mut self, hour: i64, committed: u64) -> Result<(), ArchiveError> {
        let ps = self.staged.get_mut(&hour).expect("due partition");
        let rest = ps.epochs.split_off(&(committed + 1));
        let take = std::mem::replace(&mut ps.epochs, rest);
        ps.since = (!ps.epochs.is_empty()).then(Instant::now);
        if ps.epochs.is_empty() {
            self.staged.remove(&hour);
        }
        let (Some(&first), Some(&last)) = (take.keys().next(), take.keys().next_back()) else {
            return Ok(());
        };
        let mut batches = Vec::new();
        for s in take.values() {
            let f = File::open(&s.path).map_err(io("open", &s.path))?;
            let r = FileReader::try_new(f, None).map_err(arrow_err("read", &s.path))?;
            for b in r {
                batches.push(b.map_err(arrow_err("read", &s.path))?);
            }
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let dir = self.partition_dir(hour);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let tmp = dir.join(layout::temp_name(first, last));
        let to = dir.join(layout::published_name(first, last));
        if rows > 0 {
            let all = concat_batches(&schema(), &batches).map_err(arrow_err("concat", &tmp))?;
            drop(batches);
            // in time order, so row-group statistics on `ts` let readers skip most of a file
            let order =
                sort_to_indices(all.column(1), None, None).map_err(arrow_err("sort", &tmp))?;
            let sorted = take_record_batch(&all, &order).map_err(arrow_err("sort", &tmp))?;
            drop(all);
            let f = File::create(&tmp).map_err(io("create", &tmp))?;
            let mut w = ArrowWriter::try_new(
                BufWriter::with_capacity(1 << 20, f),
                schema(),
                Some(self.props.clone()),
            )
            .map_err(|source| ArchiveError::Parquet {
                path: tmp.clone(),
                source,
            })?;
            w.write(&sorted).map_err(|source| ArchiveError::Parquet {
                path: tmp.clone(),
                source,
            })?;
            let f = w
                .into_inner()
                .map_err(|source| ArchiveError::Parquet {
                    path: tmp.clone(),
                    source,
                })?
                .into_inner()
                .map_err(|e| io("flush", &tmp)(e.into_error()))?;
            f.sync_all().map_err(io("sync", &tmp))?;
            let bytes = f.metadata().map_err(io("stat", &tmp))?.len();
            fs::rename(&tmp, &to).map_err(io("rename", &tmp))?;
            sync_dir(&dir)?;
            if let Some(p) = dir.parent() {
                sync_dir(p)?;
            }
            self.stats.rows_published += rows as u64;
            self.stats.files_published += 1;
            self.stats.bytes_published += bytes;
        }
        for s in take.values() {
            fs::remove_file(&s.path).map_err(io("remove", &s.path))?;
        }
        let sd = self.staging_dir(hour);
        if fs::read_dir(&sd).is_ok_and(|mut d| d.next().is_none()) {
            // empty staging directories of old hours would pile up otherwise
            let _ = fs::remove_dir(&sd);
            if let Some(day) = sd.parent() {
                // fails (and is meant to) while other hours of the day are staged
                let _ = fs::remove_dir(day);
            }
        }
        Ok(())
    }

    fn write_state(&self, st: &ArchiveState) -> Result<(), ArchiveError> {
        if *st == self.state && self.root().join(STATE_FILE).exists() {
            return Ok(());
        }
        let p = self.root().join(STATE_FILE);
        let tmp = self.root().join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(st).expect("plain struct");
        fs::write(&tmp, text).map_err(io("write", &tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &tmp))?;
        fs::rename(&tmp, &p).map_err(io("rename", &tmp))?;
        sync_dir(self.root())
    }

    fn sink_err(&self, e: ArchiveError) -> SinkError {
        let retryable = matches!(&e, ArchiveError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock));
        SinkError {
            sink: self.name.clone(),
            message: e.to_string(),
            retryable,
        }
    }
}

impl Drop for ParquetArchiveSink {
    fn drop(&mut self) {
        if let Err(e) = self.publish_all() {
            tracing::error!(sink = %self.name, error = %e,
                "publishing committed events at shutdown failed; the next run publishes them");
        }
    }
}

impl Sink for ParquetArchiveSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, stream: Stream) -> bool {
        stream == Stream::Events
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError> {
        self.recover_archive(committed)
            .map_err(|e| self.sink_err(e))
    }

    fn write(
        &mut self,
        epoch: u64,
        stream: Stream,
        records: &[u8],
        _count: u64,
    ) -> Result<(), SinkError> {
        if stream != Stream::Events {
            return Ok(());
        }
        self.stage(epoch, records).map_err(|e| self.sink_err(e))
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.seal(epoch).map_err(|e| self.sink_err(e))
    }

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.commit_epoch(epoch).map_err(|e| self.sink_err(e))
    }
}

fn sync_dir(d: &Path) -> Result<(), ArchiveError> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", d))
}

fn list_names(d: &Path) -> Result<Vec<String>, ArchiveError> {
    let mut v = Vec::new();
    for e in fs::read_dir(d).map_err(io("list", d))? {
        let e = e.map_err(io("list", d))?;
        if let Ok(n) = e.file_name().into_string() {
            v.push(n);
        }
    }
    v.sort();
    Ok(v)
}

/// Hour partitions under `root` (`dt=…/hour=…`), by key.
pub fn list_partitions(root: &Path) -> Result<Vec<(i64, PathBuf)>, ArchiveError> {
    let mut v = Vec::new();
    for dt in list_names(root)? {
        if !dt.starts_with("dt=") {
            continue;
        }
        let dd = root.join(&dt);
        if !dd.is_dir() {
            continue;
        }
        for h in list_names(&dd)? {
            if let Some(key) = layout::parse_partition(&dt, &h) {
                v.push((key, dd.join(h)));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Published Parquet files of an archive, by partition, in name order.
pub fn published_files(root: &Path) -> Result<Vec<(i64, PathBuf)>, ArchiveError> {
    let mut v = Vec::new();
    for (hour, dir) in list_partitions(root)? {
        for name in list_names(&dir)? {
            if layout::parse_published(&name).is_some() {
                v.push((hour, dir.join(name)));
            }
        }
    }
    Ok(v)
}

fn max_ts_of(path: &Path) -> Result<Option<i64>, ArchiveError> {
    let f = File::open(path).map_err(io("open", path))?;
    let r = FileReader::try_new(f, None).map_err(arrow_err("read", path))?;
    let mut m = None;
    for b in r {
        let b = b.map_err(arrow_err("read", path))?;
        let ts = b.column(1).as_primitive::<TimestampMillisecondType>();
        if let Some(x) = arrow::compute::max(ts) {
            m = m.max(Some(x));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::time::Duration;

    const T0: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z

    fn rec(id: u32, ts: i64) -> String {
        format!(
            "{{\"event_id\":\"e{id}\",\"ts\":{ts},\"user_id\":\"u{}\",\"action\":\"add\",\"sku\":\"p1\",\"qty\":1,\"price\":2.5}}\n",
            id % 7
        )
    }

    fn records(ids: std::ops::Range<u32>, ts: i64) -> Vec<u8> {
        ids.map(|i| rec(i, ts + i64::from(i)))
            .collect::<String>()
            .into_bytes()
    }

    fn cfg(d: &Path) -> ArchiveConfig {
        ArchiveConfig {
            // nothing is due by size or age unless a test says so
            roll_bytes: u64::MAX,
            roll_interval: Duration::from_secs(3600),
            ..ArchiveConfig::new(d)
        }
    }

    fn sink(c: ArchiveConfig, committed: Option<u64>) -> ParquetArchiveSink {
        let mut s = ParquetArchiveSink::new(c);
        s.recover(committed).unwrap();
        s
    }

    /// A crash: no shutdown publication.
    fn crash(s: ParquetArchiveSink) {
        std::mem::forget(s);
    }

    /// (file name, event ids) of every published file, in order.
    fn published(root: &Path) -> Vec<(String, Vec<String>)> {
        published_files(root)
            .unwrap()
            .into_iter()
            .map(|(_, p)| {
                let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
                let mut ids = Vec::new();
                for b in r {
                    let b = b.unwrap();
                    let c = b.column_by_name("event_id").unwrap().as_string::<i32>();
                    ids.extend(c.iter().map(|v| v.unwrap().to_string()));
                }
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                (rel, ids)
            })
            .collect()
    }

    fn all_ids(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = published(root).into_iter().flat_map(|(_, i)| i).collect();
        v.sort();
        v
    }

    fn ids(r: std::ops::Range<u32>) -> Vec<String> {
        let mut v: Vec<String> = r.map(|i| format!("e{i}")).collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_visible_before_commit_and_small_epochs_are_merged() {
        let d = tempfile::tempdir().unwrap();
        let mut s = sink(cfg(d.path()), None);
        s.write(1, Stream::Events, &records(0..10, T0), 10).unwrap();
        s.pre_commit(1).unwrap();
        assert!(published(d.path()).is_empty());
        s.commit(1).unwrap();
        // committed, but neither big, old nor closed: still staged
        assert!(published(d.path()).is_empty());
        s.write(2, Stream::Events, &records(10..20, T0), 10)
            .unwrap();
        s.pre_commit(2).unwrap();
        s.commit(2).unwrap();
        s.write(3, Stream::Events, &records(20..25, T0), 5).unwrap();
        s.pre_commit(3).unwrap();
        // epoch 3 is not committed: shutdown publishes 1..=2 only, in one file
        drop(s);
        let p = published(d.path());
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].0,
            "dt=2025-11-24/hour=16/part-000000000001-000000000002.parquet"
        );
        assert_eq!(all_ids(d.path()), ids(0..20));
        // and a restart from checkpoint 2 discards epoch 3
        let s = sink(cfg(d.path()), Some(2));
        assert!(s.staged.is_empty());
        drop(s);
        assert_eq!(all_ids(d.path()), ids(0..20));
    }

    #[test]
    fn partitions_roll_by_size_and_close_with_event_time() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.close_after = Duration::from_secs(60);
        let mut s = sink(c, None);
        // hour 16 and hour 17 in one epoch
        let mut r = records(0..10, T0);
        r.extend(records(10..20, T0 + HOUR_MS));
        s.write(1, Stream::Events, &r, 20).unwrap();
        s.pre_commit(1).unwrap();
        s.commit(1).unwrap();
        assert!(published(d.path()).is_empty());
        assert_eq!(s.state().complete_before_ms, Some(T0));
        // 17:00:59.999 + 1 min: hour 16 is closed
        s.write(
            2,
            Stream::Events,
            &records(20..21, T0 + HOUR_MS + 60_000 - 20),
            1,
        )
        .unwrap();
        s.pre_commit(2).unwrap();
        s.commit(2).unwrap();
        let p = published(d.path());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].0,
            "dt=2025-11-24/hour=16/part-000000000001-000000000001.parquet"
        );
        assert_eq!(s.state().complete_before_ms, Some(T0 + HOUR_MS));
        let st = ArchiveState::read(d.path()).unwrap().unwrap();
        assert_eq!(st.complete_before_ms, Some(T0 + HOUR_MS));
        assert_eq!(st.committed_epoch, Some(2));
        crash(s);
        // size: any staged byte is enough
        let mut c = cfg(d.path());
        c.roll_bytes = 1;
        let mut s = sink(c, Some(2));
        // recovery published hour 17 (epochs 1..=2) at once
        assert_eq!(published(d.path()).len(), 2);
        s.write(3, Stream::Events, &records(30..31, T0 + HOUR_MS), 1)
            .unwrap();
        s.pre_commit(3).unwrap();
        s.commit(3).unwrap();
        let names: Vec<String> = published(d.path()).into_iter().map(|p| p.0).collect();
        assert_eq!(
            names,
            [
                "dt=2025-11-24/hour=16/part-000000000001-000000000001.parquet",
                "dt=2025-11-24/hour=17/part-000000000001-000000000002.parquet",
                "dt=2025-11-24/hour=17/part-000000000003-000000000003.parquet",
            ]
        );
        assert_eq!(all_ids(d.path()), {
            let mut v = ids(0..21);
            v.extend(ids(30..31));
            v.sort();
            v
        });
    }

    #[test]
    fn recovery_is_idempotent_wherever_publication_stopped() {
        let d = tempfile::tempdir().unwrap();
        let mut s = sink(cfg(d.path()), None);
        for e in 1..=3u64 {
            let lo = (e as u32 - 1) * 10;
            s.write(e, Stream::Events, &records(lo..lo + 10, T0), 10)
                .unwrap();
            s.pre_commit(e).unwrap();
            s.commit(e).unwrap();
        }
        // keep copies of the staged files, then publish
        let staged: Vec<(PathBuf, Vec<u8>)> = s.staged[&layout::hour_of(T0)]
            .epochs
            .values()
            .map(|st| (st.path.clone(), fs::read(&st.path).unwrap()))
            .collect();
        s.publish_all().unwrap();
        crash(s);
        // crash after the rename, before the staged files were deleted; plus a torn temp file
        for (p, b) in &staged {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b).unwrap();
        }
        let part = d.path().join("dt=2025-11-24/hour=16");
        fs::write(part.join(layout::temp_name(4, 4)), b"torn").unwrap();
        let s = sink(cfg(d.path()), Some(3));
        assert!(
            s.staged.is_empty(),
            "staged epochs inside a published range are dropped"
        );
        drop(s);
        assert!(!part.join(layout::temp_name(4, 4)).exists());
        assert_eq!(published(d.path()).len(), 1);
        assert_eq!(all_ids(d.path()), ids(0..30));

        // a crash before the rename: the staged files are all there is, publish again
        let d = tempfile::tempdir().unwrap();
        let mut s = sink(cfg(d.path()), None);
        s.write(1, Stream::Events, &records(0..10, T0), 10).unwrap();
        s.pre_commit(1).unwrap();
        s.commit(1).unwrap();
        crash(s);
        drop(sink(cfg(d.path()), Some(1)));
        assert_eq!(all_ids(d.path()), ids(0..10));
    }

    #[test]
    fn a_fresh_start_clears_and_an_archive_ahead_of_the_checkpoint_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = sink(cfg(d.path()), None);
        s.write(5, Stream::Events, &records(0..3, T0), 3).unwrap();
        s.pre_commit(5).unwrap();
        s.commit(5).unwrap();
        drop(s);
        assert_eq!(all_ids(d.path()), ids(0..3));
        // a foreign file in a partition is left alone
        let foreign = d.path().join("dt=2025-11-24/hour=16/notes.txt");
        fs::write(&foreign, b"mine").unwrap();
        let mut s = ParquetArchiveSink::new(cfg(d.path()));
        let e = s.recover(Some(4)).unwrap_err();
        assert!(e.message.contains("ahead of the checkpoint"), "{e}");
        std::mem::forget(s);
        drop(sink(cfg(d.path()), None));
        assert!(published(d.path()).is_empty());
        assert!(foreign.exists());
        assert!(ArchiveState::read(d.path()).unwrap().is_none());
    }

    #[test]
    fn only_the_events_stream_is_wanted() {
        let d = tempfile::tempdir().unwrap();
        let s = ParquetArchiveSink::new(cfg(d.path()));
        for st in Stream::ALL {
            assert_eq!(s.wants(st), st == Stream::Events, "{st:?}");
        }
    }
}
