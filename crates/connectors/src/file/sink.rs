//! JSON-lines files per stream, committed with the checkpoint (two-phase).
//!
//! `DIR/<stream>/part-<epoch>.jsonl` appears only when the checkpoint that closes the epoch
//! is durable. Until then the records sit in `DIR/<stream>/.part-<epoch>.jsonl.pending`
//! (a name no `*.jsonl` glob matches), fsynced by `pre_commit` and renamed by `commit`.

use cartpulse_engine::{Sink, SinkError, Stream};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct JsonlDirSink {
    dir: PathBuf,
    streams: Vec<Stream>,
    open: BTreeMap<(u64, Stream), BufWriter<File>>,
}

fn final_name(epoch: u64) -> String {
    format!("part-{epoch:012}.jsonl")
}

fn pending_name(epoch: u64) -> String {
    format!(".part-{epoch:012}.jsonl.pending")
}

/// Epoch of a file this sink wrote, and whether it is pending.
fn parse_name(name: &str) -> Option<(u64, bool)> {
    if let Some(rest) = name.strip_prefix(".part-") {
        return rest
            .strip_suffix(".jsonl.pending")?
            .parse()
            .ok()
            .map(|e| (e, true));
    }
    name.strip_prefix("part-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
        .map(|e| (e, false))
}

impl JsonlDirSink {
    pub fn new(dir: &Path) -> JsonlDirSink {
        JsonlDirSink {
            dir: dir.to_path_buf(),
            streams: Stream::ALL.into_iter().filter(|s| !s.opt_in()).collect(),
            open: BTreeMap::new(),
        }
    }

    /// Also take the opt-in stream `s` (`events`, `carts`).
    pub fn with_stream(mut self, s: Stream, on: bool) -> JsonlDirSink {
        if on && !self.streams.contains(&s) {
            self.streams.push(s);
        }
        self
    }

    fn err(&self, what: &str, path: &Path, e: std::io::Error) -> SinkError {
        SinkError {
            sink: format!("jsonl:{}", self.dir.display()),
            message: format!("{what} {}: {e}", path.display()),
            retryable: matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
        }
    }

    fn stream_dir(&self, s: Stream) -> PathBuf {
        self.dir.join(s.name())
    }

    fn sync_dir(&self, d: &Path) -> Result<(), SinkError> {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.err("sync", d, e))
    }
}

impl Sink for JsonlDirSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    fn wants(&self, stream: Stream) -> bool {
        self.streams.contains(&stream)
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError> {
        for s in self.streams.clone() {
            let d = self.stream_dir(s);
            fs::create_dir_all(&d).map_err(|e| self.err("create", &d, e))?;
            let entries = fs::read_dir(&d).map_err(|e| self.err("list", &d, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| self.err("list", &d, e))?;
                let name = entry.file_name();
                let Some((epoch, pending)) = name.to_str().and_then(parse_name) else {
                    continue;
                };
                let path = entry.path();
                match committed {
                    // roll forward: the checkpoint covering it is durable
                    Some(c) if epoch <= c && pending => {
                        let to = d.join(final_name(epoch));
                        fs::rename(&path, &to).map_err(|e| self.err("rename", &path, e))?;
                    }
                    Some(c) if epoch <= c => {}
                    // after the last durable checkpoint, or a fresh start: not ours to keep
                    _ => fs::remove_file(&path).map_err(|e| self.err("remove", &path, e))?,
                }
            }
            self.sync_dir(&d)?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        epoch: u64,
        stream: Stream,
        records: &[u8],
        _count: u64,
    ) -> Result<(), SinkError> {
        let key = (epoch, stream);
        if !self.open.contains_key(&key) {
            let p = self.stream_dir(stream).join(pending_name(epoch));
            let f = File::create(&p).map_err(|e| self.err("create", &p, e))?;
            self.open.insert(key, BufWriter::with_capacity(1 << 20, f));
        }
        let w = self.open.get_mut(&key).expect("inserted");
        w.write_all(records).map_err(|e| SinkError {
            sink: "jsonl".into(),
            message: format!("write epoch {epoch} {}: {e}", stream.name()),
            retryable: false,
        })
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        let keys: Vec<_> = self
            .open
            .range((epoch, Stream::ALL[0])..=(epoch, Stream::ALL[Stream::COUNT - 1]))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let mut w = self.open.remove(&key).expect("listed");
            let p = self.stream_dir(key.1).join(pending_name(epoch));
            w.flush().map_err(|e| self.err("flush", &p, e))?;
            let f = w
                .into_inner()
                .map_err(|e| self.err("flush", &p, e.into_error()))?;
            f.sync_all().map_err(|e| self.err("sync", &p, e))?;
        }
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        for s in self.streams.clone() {
            let d = self.stream_dir(s);
            let from = d.join(pending_name(epoch));
            if from.exists() {
                let to = d.join(final_name(epoch));
                fs::rename(&from, &to).map_err(|e| self.err("rename", &from, e))?;
                self.sync_dir(&d)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.join("user_windows"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn two_phase_and_recovery() {
        let d = tempfile::tempdir().unwrap();
        let mut s = JsonlDirSink::new(d.path());
        s.recover(None).unwrap();
        s.write(1, Stream::UserWindows, b"a\n", 1).unwrap();
        s.write(2, Stream::UserWindows, b"b\n", 1).unwrap();
        s.pre_commit(1).unwrap();
        assert_eq!(
            files(d.path()),
            vec![
                ".part-000000000001.jsonl.pending",
                ".part-000000000002.jsonl.pending"
            ]
        );
        // crash here after the manifest named checkpoint 1: restart rolls 1 forward, drops 2
        let mut s = JsonlDirSink::new(d.path());
        s.recover(Some(1)).unwrap();
        assert_eq!(files(d.path()), vec!["part-000000000001.jsonl"]);
        assert_eq!(
            fs::read(d.path().join("user_windows/part-000000000001.jsonl")).unwrap(),
            b"a\n"
        );
        // a fresh start clears old output
        let mut s = JsonlDirSink::new(d.path());
        s.recover(None).unwrap();
        assert!(files(d.path()).is_empty());
    }
}
