//! HTTP ingest: `POST /ingest` bodies land in a local journal before they are acknowledged,
//! and the pipeline reads the journal like a file.
//!
//! An HTTP client cannot replay what it was told was accepted, so "accepted" must mean
//! durable: each request's records are appended to the current journal segment and fsynced
//! before the answer goes out. The source reads the journal from the checkpointed offset,
//! so a crash between the answer and the next checkpoint loses nothing and doubles nothing.
//! Segments wholly before a completed checkpoint's position are deleted. When the pipeline
//! falls more than `max_pending_bytes` behind, requests get `429` with `Retry-After`
//! instead of an ever-growing journal.
//!
//! Segments are named by the global byte offset of their first record
//! (`00000000000000000000.ndjson`), so a position is one number.

use crate::ingest::io_err;
use cartpulse_engine::{Poll, Source, SourceChunk, SourceError};
use cartpulse_model::{DecodeOptions, Decoder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// `[source] type = "http"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpIngestConfig {
    /// Where accepted records wait for the pipeline (keep it on a durable disk).
    pub journal_dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Accepted but unread bytes beyond which requests are refused with 429.
    pub max_pending_bytes: u64,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// What a client is told to wait before retrying a refused request.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        HttpIngestConfig {
            journal_dir: PathBuf::from("ingest-journal"),
            segment_bytes: 64 << 20,
            max_pending_bytes: 256 << 20,
            max_body_bytes: 8 << 20,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// What one request did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IngestReport {
    /// Records journaled that decode as cart events.
    pub accepted: u64,
    /// Records journaled that will go to the dead-letter stream (they are kept, not lost).
    pub dead_lettered: u64,
    /// Why, for the first few dead-lettered records: `(index in the request, reason)`.
    pub errors: Vec<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the pipeline is {pending} bytes behind (limit {limit}): retry later")]
    Busy {
        pending: u64,
        limit: u64,
        retry_after: Duration,
    },
    #[error("request body: {0}")]
    BadBody(String),
    #[error("journal: {0}")]
    Journal(String),
}

const NAME: &str = "http";
const MAX_ERRORS_REPORTED: usize = 20;

struct Writer {
    file: Option<File>,
    /// Global offset where the open segment starts.
    seg_start: u64,
}

/// The journal: appended to by request handlers, read by [`HttpIngestSource`].
pub struct Journal {
    cfg: HttpIngestConfig,
    decoder: Decoder,
    writer: Mutex<Writer>,
    /// Global offset up to which records are durable (readers never read past it).
    written: AtomicU64,
    /// Global offset the pipeline has read up to (for backpressure).
    read: AtomicU64,
    /// Where the segment being appended to starts: a reader in that segment needs no
    /// directory listing to know where it ends (it does not end yet).
    seg_start: AtomicU64,
    grew: (Mutex<()>, Condvar),
}

fn seg_name(start: u64) -> String {
    format!("{start:020}.ndjson")
}

/// Segment start offsets in the directory, ascending.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            n.strip_suffix(".ndjson")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

impl Journal {
    /// Opens (or creates) the journal; a torn last record from a crash mid-write is cut off.
    pub fn open(cfg: HttpIngestConfig, max_record_bytes: usize) -> Result<Arc<Journal>, String> {
        let dir = &cfg.journal_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("source.journal_dir: cannot create {}: {e}", dir.display()))?;
        let segs = segments(dir)
            .map_err(|e| format!("source.journal_dir: cannot list {}: {e}", dir.display()))?;
        let (seg_start, len) = match segs.last() {
            Some(&s) => {
                let p = dir.join(seg_name(s));
                let data = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                // only whole records were ever acknowledged: drop a torn tail
                let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if keep < data.len() {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                    f.set_len(keep as u64)
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                }
                (s, keep as u64)
            }
            None => (0, 0),
        };
        Ok(Arc::new(Journal {
            decoder: Decoder::Json(DecodeOptions {
                max_record_bytes,
                ..Default::default()
            }),
            writer: Mutex::new(Writer {
                file: None,
                seg_start,
            }),
            written: AtomicU64::new(seg_start + len),
            read: AtomicU64::new(0),
            seg_start: AtomicU64::new(seg_start),
            grew: (Mutex::new(()), Condvar::new()),
            cfg,
        }))
    }

    pub fn config(&self) -> &HttpIngestConfig {
        &self.cfg
    }

    /// Appends a request body (NDJSON, or a JSON array of event objects) and makes it
    /// durable; records that do not decode are journaled too, so the pipeline dead-letters
    /// them with their reason, and counted in the report.
    pub fn append(&self, body: &[u8]) -> Result<IngestReport, IngestError> {
        let pending = self
            .written
            .load(Ordering::Acquire)
            .saturating_sub(self.read.load(Ordering::Acquire));
        if pending > self.cfg.max_pending_bytes {
            return Err(IngestError::Busy {
                pending,
                limit: self.cfg.max_pending_bytes,
                retry_after: self.cfg.retry_after,
            });
        }
        let lines = split_body(body)?;
        let mut report = IngestReport::default();
        let mut buf = Vec::with_capacity(body.len() + lines.len());
        for (i, l) in lines.iter().enumerate() {
            match self.decoder.decode(l) {
                Ok(_) => report.accepted += 1,
                Err(e) => {
                    report.dead_lettered += 1;
                    if report.errors.len() < MAX_ERRORS_REPORTED {
                        report.errors.push((i as u64, e.to_string()));
                    }
                }
            }
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        if buf.is_empty() {
            return Ok(report);
        }
        self.write_durably(&buf)
            .map_err(|e| IngestError::Journal(e.to_string()))?;
        let (m, cv) = &self.grew;
        let _g = m.lock().expect("journal signal");
        cv.notify_all();
        Ok(report)
    }

    fn write_durably(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().expect("journal writer");
        let end = self.written.load(Ordering::Acquire);
        if end - w.seg_start >= self.cfg.segment_bytes && end > w.seg_start {
            // roll: the next record starts a segment of its own
            w.file = None;
            w.seg_start = end;
            // published before `written` moves past it (Release below), so a reader that
            // sees the new data also sees that its own segment has ended
            self.seg_start.store(end, Ordering::Release);
        }
        if w.file.is_none() {
            let p = self.cfg.journal_dir.join(seg_name(w.seg_start));
            w.file = Some(OpenOptions::new().create(true).append(true).open(p)?);
            // the new name must survive a crash too
            File::open(&self.cfg.journal_dir)?.sync_all()?;
        }
        let f = w.file.as_mut().expect("opened above");
        f.write_all(buf)?;
        f.sync_data()?;
        self.written
            .store(end + buf.len() as u64, Ordering::Release);
        Ok(())
    }

    fn wait_for_growth(&self, past: u64, timeout: Duration) {
        let (m, cv) = &self.grew;
        let g = m.lock().expect("journal signal");
        if self.written.load(Ordering::Acquire) <= past {
            let _ = cv.wait_timeout(g, timeout);
        }
    }
}

/// One record per line of NDJSON (blank lines skipped), or one per element of a JSON array.
fn split_body(body: &[u8]) -> Result<Vec<std::borrow::Cow<'_, [u8]>>, IngestError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        // re-serialised compactly: an element may span lines, the journal holds one per line
        let items: Vec<Value> = serde_json::from_slice(body)
            .map_err(|e| IngestError::BadBody(format!("not a JSON array of events: {e}")))?;
        return Ok(items
            .iter()
            .map(|v| std::borrow::Cow::Owned(serde_json::to_vec(v).expect("serializable")))
            .collect());
    }
    Ok(body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(std::borrow::Cow::Borrowed)
        .collect())
}

/// The segment being read.
struct OpenSegment {
    start: u64,
    /// Where the next segment starts; `u64::MAX` while none was seen.
    end: u64,
    file: File,
}

/// Reads the journal from the checkpointed offset.
pub struct HttpIngestSource {
    journal: Arc<Journal>,
    pos: u64,
    seg: Option<OpenSegment>,
    spare: Vec<Vec<u8>>,
}

impl HttpIngestSource {
    pub fn new(journal: Arc<Journal>) -> Self {
        HttpIngestSource {
            journal,
            pos: 0,
            seg: None,
            spare: Vec::new(),
        }
    }

    /// Opens the segment holding `pos` and learns where it ends (one directory listing).
    fn locate(&mut self) -> Result<(), SourceError> {
        let segs = segments(self.dir()).map_err(|e| io_err(NAME, e, true))?;
        let Some(start) = segs.iter().rev().find(|&&s| s <= self.pos).copied() else {
            return Err(io_err(
                NAME,
                format!("no journal segment holds offset {}", self.pos),
                false,
            ));
        };
        let end = segs
            .iter()
            .find(|&&s| s > start)
            .copied()
            .unwrap_or(u64::MAX);
        match &mut self.seg {
            Some(seg) if seg.start == start => seg.end = end,
            _ => {
                let p = self.dir().join(seg_name(start));
                let file = File::open(&p)
                    .map_err(|e| io_err(NAME, format!("{}: {e}", p.display()), true))?;
                self.seg = Some(OpenSegment { start, end, file });
            }
        }
        Ok(())
    }

    fn dir(&self) -> &Path {
        &self.journal.cfg.journal_dir
    }
}

impl Source for HttpIngestSource {
    fn name(&self) -> &str {
        NAME
    }

    fn open(&mut self, restored: Option<&Value>) -> Result<(), SourceError> {
        let segs = segments(self.dir()).map_err(|e| io_err(NAME, e, false))?;
        self.pos =
            match restored {
                Some(v) => v.get("offset").and_then(Value::as_u64).ok_or_else(|| {
                    SourceError::BadPosition {
                        source_name: NAME.into(),
                        position: v.to_string(),
                        why: "expected {\"offset\": n}".into(),
                    }
                })?,
                // nothing checkpointed: everything still in the journal is unread
                None => segs.first().copied().unwrap_or(0),
            };
        if let Some(&first) = segs.first() {
            if self.pos < first {
                return Err(SourceError::BadPosition {
                    source_name: NAME.into(),
                    position: self.pos.to_string(),
                    why: format!(
                        "the journal in {} starts at {first}: records before it were deleted",
                        self.dir().display()
                    ),
                });
            }
        }
        self.journal.read.store(self.pos, Ordering::Release);
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        self.journal.decoder.clone()
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        let written = self.journal.written.load(Ordering::Acquire);
        if written <= self.pos {
            self.journal
                .wait_for_growth(self.pos, Duration::from_millis(50));
            return Ok(Poll::Idle);
        }
        // the writer's segment start, read after `written`: see `write_durably`
        let current = self.journal.seg_start.load(Ordering::Acquire);
        let relocate = match &self.seg {
            None => true,
            Some(seg) => self.pos >= seg.end || (seg.end == u64::MAX && seg.start != current),
        };
        if relocate {
            self.locate()?;
        }
        let seg = self.seg.as_ref().expect("located above");
        let want = (written.min(seg.end) - self.pos).min(max_bytes as u64) as usize;
        let mut data = self.spare.pop().unwrap_or_default();
        data.clear();
        data.resize(want, 0);
        seg.file
            .read_exact_at(&mut data, self.pos - seg.start)
            .map_err(|e| io_err(NAME, e, true))?;
        // whole records only: the rest is read next time
        let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if keep == 0 {
            return Err(io_err(
                NAME,
                format!(
                    "a journal record at offset {} is longer than {max_bytes} bytes",
                    self.pos
                ),
                false,
            ));
        }
        data.truncate(keep);
        let base = self.pos;
        self.pos += keep as u64;
        self.journal.read.store(self.pos, Ordering::Release);
        Ok(Poll::Chunk(SourceChunk {
            data,
            frames: None,
            base_offset: base,
            dead: Vec::new(),
        }))
    }

    fn position(&self) -> Value {
        serde_json::json!({ "offset": self.pos })
    }

    fn checkpoint_complete(&mut self, _: u64, position: &Value) -> Result<(), SourceError> {
        let Some(done) = position.get("offset").and_then(Value::as_u64) else {
            return Ok(());
        };
        // a segment can go once the next one starts at or before the covered offset
        let segs = segments(self.dir()).map_err(|e| io_err(NAME, e, true))?;
        for w in segs.windows(2) {
            if w[1] <= done {
                let _ = std::fs::remove_file(self.dir().join(seg_name(w[0])));
            }
        }
        Ok(())
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 4 {
            self.spare.push(buf);
        }
    }

    fn lag(&self) -> Option<u64> {
        Some(
            self.journal
                .written
                .load(Ordering::Acquire)
                .saturating_sub(self.pos),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path, segment_bytes: u64) -> Arc<Journal> {
        Journal::open(
            HttpIngestConfig {
                journal_dir: dir.to_path_buf(),
                segment_bytes,
                max_pending_bytes: 1 << 20,
                ..Default::default()
            },
            1 << 16,
        )
        .unwrap()
    }

    fn drain(src: &mut HttpIngestSource) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            match src.poll(1000).unwrap() {
                Poll::Chunk(c) => all.extend_from_slice(&c.data),
                _ => return all,
            }
        }
    }

    const GOOD: &str = r#"{"ts":1,"user_id":"u1","action":"add","sku":"p1","qty":1,"price":2.5}"#;

    #[test]
    fn ndjson_and_arrays_are_journaled_and_read_across_segments_and_restarts() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path(), 100);
        let r = j
            .append(format!("{GOOD}\n\n{{\"ts\":\"x\"}}\r\n{GOOD}").as_bytes())
            .unwrap();
        assert_eq!((r.accepted, r.dead_lettered), (2, 1));
        assert_eq!(r.errors[0].0, 1);
        let arr = format!("[{GOOD},\n {GOOD}]");
        assert_eq!(j.append(arr.as_bytes()).unwrap().accepted, 2);
        assert!(matches!(j.append(b"[1, 2"), Err(IngestError::BadBody(_))));
        assert!(segments(d.path()).unwrap().len() >= 2, "rolled");

        let mut src = HttpIngestSource::new(j.clone());
        src.open(None).unwrap();
        let all = drain(&mut src);
        assert_eq!(
            all.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count(),
            5
        );
        // appends while the reader sits in the writer's segment: the roll is noticed
        for _ in 0..3 {
            j.append(GOOD.as_bytes()).unwrap();
            let got = drain(&mut src);
            assert_eq!(got, format!("{GOOD}\n").into_bytes());
        }
        let pos = src.position();
        src.checkpoint_complete(1, &pos).unwrap();
        assert_eq!(
            segments(d.path()).unwrap().len(),
            1,
            "read segments deleted"
        );

        // a restart resumes after the checkpointed offset: only what came later is read
        drop(src);
        drop(j);
        let j = journal(d.path(), 100);
        j.append(GOOD.as_bytes()).unwrap();
        let mut src = HttpIngestSource::new(j);
        src.open(Some(&pos)).unwrap();
        assert_eq!(drain(&mut src), format!("{GOOD}\n").into_bytes());
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_full_journal_refuses() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path(), 1 << 20);
        j.append(GOOD.as_bytes()).unwrap();
        drop(j);
        let seg = d.path().join(seg_name(0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"ts\":1,\"us").unwrap();
        let j = Journal::open(
            HttpIngestConfig {
                journal_dir: d.path().to_path_buf(),
                max_pending_bytes: 100,
                ..Default::default()
            },
            1 << 16,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            format!("{GOOD}\n").into_bytes()
        );
        // nothing read yet and 72 bytes pending: one more request fits, then 429
        j.append(GOOD.as_bytes()).unwrap();
        assert!(matches!(
            j.append(GOOD.as_bytes()),
            Err(IngestError::Busy { .. })
        ));
        let mut src = HttpIngestSource::new(j.clone());
        src.open(None).unwrap();
        drain(&mut src);
        j.append(GOOD.as_bytes()).unwrap();
    }
}
