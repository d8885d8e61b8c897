//! Durable local staging for the stores that have no transaction spanning a whole epoch
//! (Redis, ClickHouse, Elasticsearch).
//!
//! `write` appends to `.stage-<epoch>.pending`; `pre_commit` fsyncs it and renames it to
//! `stage-<epoch>.staged` (durable, still invisible in the store); `commit` replays the staged
//! file into the store and then deletes it. Because the staged file is fixed once sealed, a
//! replayed commit sends exactly the same rows in the same batches with the same sequence
//! numbers, which is what makes the stores' idempotent writes line up.
//!
//! File layout: frames of `<stream name> <byte length>\n<records>`, one per `write` call.

use crate::schema::{lines, stream_by_name};
use crate::StoreError;
use cartpulse_engine::Stream;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct FileStage {
    dir: PathBuf,
    open: BTreeMap<u64, BufWriter<File>>,
}

fn pending_name(epoch: u64) -> String {
    format!(".stage-{epoch:012}.pending")
}

fn staged_name(epoch: u64) -> String {
    format!("stage-{epoch:012}.staged")
}

fn parse_name(name: &str) -> Option<(u64, bool)> {
    if let Some(r) = name.strip_prefix(".stage-") {
        return r.strip_suffix(".pending")?.parse().ok().map(|e| (e, false));
    }
    name.strip_prefix("stage-")?
        .strip_suffix(".staged")?
        .parse()
        .ok()
        .map(|e| (e, true))
}

fn io(what: &str, p: &Path, e: std::io::Error) -> StoreError {
    // a full or failing local disk does not heal by retrying in a loop
    StoreError::fatal(format!("staging: {what} {}: {e}", p.display()))
}

fn sync_dir(d: &Path) -> Result<(), StoreError> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("sync", d, e))
}

/// A sealed epoch, read back for commit.
pub struct StagedEpoch {
    pub epoch: u64,
    frames: Vec<(Stream, std::ops::Range<usize>)>,
    data: Vec<u8>,
}

impl StagedEpoch {
    /// Every record in staging order with its sequence number in the epoch.
    pub fn records(&self) -> impl Iterator<Item = (Stream, u64, &[u8])> {
        self.frames
            .iter()
            .flat_map(move |(s, r)| lines(&self.data[r.clone()]).map(move |l| (*s, l)))
            .enumerate()
            .map(|(i, (s, l))| (s, i as u64, l))
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

impl FileStage {
    pub fn open(dir: &Path) -> Result<FileStage, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        Ok(FileStage {
            dir: dir.to_path_buf(),
            open: BTreeMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write(&mut self, epoch: u64, stream: Stream, records: &[u8]) -> Result<(), StoreError> {
        if !self.open.contains_key(&epoch) {
            let p = self.dir.join(pending_name(epoch));
            let f = File::create(&p).map_err(|e| io("create", &p, e))?;
            self.open
                .insert(epoch, BufWriter::with_capacity(1 << 20, f));
        }
        let w = self.open.get_mut(&epoch).expect("inserted");
        let mut head = Vec::with_capacity(32);
        head.extend_from_slice(stream.name().as_bytes());
        head.push(b' ');
        head.extend_from_slice(itoa::Buffer::new().format(records.len()).as_bytes());
        head.push(b'\n');
        w.write_all(&head)
            .and_then(|_| w.write_all(records))
            .map_err(|e| io("write", &self.dir.join(pending_name(epoch)), e))
    }

    /// Makes the epoch durable: after this returns, a crash cannot lose it. An epoch that
    /// received no records leaves no file.
    pub fn seal(&mut self, epoch: u64) -> Result<(), StoreError> {
        let Some(w) = self.open.remove(&epoch) else {
            return Ok(());
        };
        let p = self.dir.join(pending_name(epoch));
        let f = w
            .into_inner()
            .map_err(|e| io("flush", &p, e.into_error()))?;
        f.sync_all().map_err(|e| io("sync", &p, e))?;
        drop(f);
        let to = self.dir.join(staged_name(epoch));
        fs::rename(&p, &to).map_err(|e| io("rename", &p, e))?;
        sync_dir(&self.dir)
    }

    /// The sealed epoch, or `None` when it has nothing staged (empty, or already committed).
    pub fn read(&self, epoch: u64) -> Result<Option<StagedEpoch>, StoreError> {
        let p = self.dir.join(staged_name(epoch));
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &p, e)),
        };
        let mut frames = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let bad = || {
                StoreError::fatal(format!(
                    "staging: corrupt frame in {} at byte {at}",
                    p.display()
                ))
            };
            let nl = memchr::memchr(b'\n', &data[at..]).ok_or_else(bad)? + at;
            let head = std::str::from_utf8(&data[at..nl]).map_err(|_| bad())?;
            let (name, len) = head.split_once(' ').ok_or_else(bad)?;
            let stream = stream_by_name(name).ok_or_else(bad)?;
            let len: usize = len.parse().map_err(|_| bad())?;
            let end = nl + 1 + len;
            if end > data.len() {
                return Err(bad());
            }
            frames.push((stream, nl + 1..end));
            at = end;
        }
        Ok(Some(StagedEpoch {
            epoch,
            frames,
            data,
        }))
    }

    /// Forgets a committed epoch. Not synced: if the removal is lost in a crash, the epoch is
    /// replayed, which the stores absorb.
    pub fn done(&self, epoch: u64) -> Result<(), StoreError> {
        let p = self.dir.join(staged_name(epoch));
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &p, e)),
        }
    }

    /// Drops every pending file and every staged epoch after `committed`; returns the staged
    /// epochs at or before it (to roll forward), oldest first.
    pub fn recover(&mut self, committed: Option<u64>) -> Result<Vec<u64>, StoreError> {
        self.open.clear();
        let mut keep = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| io("list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("list", &self.dir, e))?;
            let name = entry.file_name();
            let Some((epoch, sealed)) = name.to_str().and_then(parse_name) else {
                continue;
            };
            match committed {
                Some(c) if sealed && epoch <= c => keep.push(epoch),
                _ => {
                    let p = entry.path();
                    fs::remove_file(&p).map_err(|e| io("remove", &p, e))?;
                }
            }
        }
        sync_dir(&self.dir)?;
        keep.sort_unstable();
        Ok(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_read_recover() {
        let d = tempfile::tempdir().unwrap();
        let mut s = FileStage::open(d.path()).unwrap();
        s.write(1, Stream::UserWindows, b"{\"a\":1}\n{\"a\":2}\n")
            .unwrap();
        s.write(1, Stream::Carts, b"{\"c\":1}\n").unwrap();
        s.write(2, Stream::Alerts, b"{\"x\":1}\n").unwrap();
        s.seal(1).unwrap();
        s.seal(3).unwrap();
        let e = s.read(1).unwrap().unwrap();
        let got: Vec<_> = e.records().map(|(s, i, l)| (s, i, l.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (Stream::UserWindows, 0, b"{\"a\":1}".to_vec()),
                (Stream::UserWindows, 1, b"{\"a\":2}".to_vec()),
                (Stream::Carts, 2, b"{\"c\":1}".to_vec()),
            ]
        );
        assert!(s.read(2).unwrap().is_none());
        // crash: epoch 2 was never sealed
        let mut s = FileStage::open(d.path()).unwrap();
        assert_eq!(s.recover(Some(1)).unwrap(), vec![1]);
        assert_eq!(s.recover(Some(0)).unwrap(), Vec::<u64>::new());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
