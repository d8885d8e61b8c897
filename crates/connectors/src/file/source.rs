//! File replay: JSON lines or CSV, read in chunks cut at line boundaries.
//!
//! The position is the byte offset of the first byte not yet handed out, so a restart
//! seeks there and re-reads nothing that a checkpoint already covers. A line longer than
//! the limit is never buffered whole: its first `max_record_bytes` go to the dead-letter
//! output with its true length, and the rest is skipped up to the next newline.

use cartpulse_engine::{Poll, Source, SourceChunk, SourceError};
use cartpulse_model::{CsvConfig, CsvDecoder, DeadLetter, DecodeOptions, Decoder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Pick by extension: `.csv` is CSV, anything else JSON lines.
    #[default]
    Auto,
    Json,
    Csv,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileSourceConfig {
    pub path: PathBuf,
    pub format: FileFormat,
    pub csv: CsvConfig,
    /// Quantity assumed for JSON `add` events without one (`None`: such events are dead letters).
    pub default_qty: Option<u32>,
}

impl Default for FileSourceConfig {
    fn default() -> Self {
        FileSourceConfig {
            path: PathBuf::new(),
            format: FileFormat::Auto,
            csv: CsvConfig::default(),
            default_qty: None,
        }
    }
}

pub struct FileSource {
    cfg: FileSourceConfig,
    name: String,
    max_record: usize,
    file: Option<File>,
    /// Offset of the first byte not handed out.
    offset: u64,
    /// Bytes read past `offset` that do not yet end in a newline.
    carry: Vec<u8>,
    eof: bool,
    decoder: Option<Decoder>,
    len: u64,
    /// Buffers handed back by the decoders after use.
    spare: Vec<Vec<u8>>,
}

impl FileSource {
    pub fn new(cfg: FileSourceConfig, max_record_bytes: usize) -> FileSource {
        FileSource {
            name: format!("file:{}", cfg.path.display()),
            cfg,
            max_record: max_record_bytes,
            file: None,
            offset: 0,
            carry: Vec::new(),
            eof: false,
            decoder: None,
            len: 0,
            spare: Vec::new(),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Io {
            source_name: self.name.clone(),
            message: e.to_string(),
            retryable: false,
        }
    }

    fn is_csv(&self) -> bool {
        match self.cfg.format {
            FileFormat::Csv => true,
            FileFormat::Json => false,
            FileFormat::Auto => self
                .cfg
                .path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
        }
    }

    /// Reads more bytes onto `carry`; returns how many.
    fn fill(&mut self, want: usize) -> Result<usize, SourceError> {
        let f = self.file.as_mut().expect("opened");
        let old = self.carry.len();
        self.carry.reserve(want);
        // read_to_end reads into spare capacity without zero-filling it first
        match f.by_ref().take(want as u64).read_to_end(&mut self.carry) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.carry.truncate(old);
                Err(self.err(e))
            }
        }
    }

    /// Skips the rest of an oversize line that began at `start`, returning its dead letter.
    fn skip_oversize(&mut self, start: u64) -> Result<DeadLetter, SourceError> {
        let prefix: Vec<u8> = self.carry[..self.max_record].to_vec();
        let mut len = self.carry.len() as u64;
        self.carry.clear();
        loop {
            let got = self.fill(1 << 16)?;
            if got == 0 {
                self.eof = true;
                break;
            }
            if let Some(i) = memchr::memchr(b'\n', &self.carry) {
                len += i as u64;
                self.carry.drain(..=i);
                self.offset = start + len + 1;
                break;
            }
            len += self.carry.len() as u64;
            self.carry.clear();
        }
        if self.eof {
            self.offset = start + len;
        }
        Ok(DeadLetter {
            reason: "too_long",
            detail: format!(
                "record of {len} bytes exceeds the limit of {} bytes",
                self.max_record
            ),
            source: self.name.clone(),
            position: start.to_string(),
            raw: prefix,
            original_len: Some(len as usize),
        })
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&mut self, restored: Option<&Value>) -> Result<(), SourceError> {
        let mut f = File::open(&self.cfg.path).map_err(|e| self.err(e))?;
        self.len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let opts = DecodeOptions {
            max_record_bytes: self.max_record,
            default_qty: self.cfg.default_qty,
        };
        let mut header_end = 0u64;
        self.decoder = Some(if self.is_csv() {
            let mut header = None;
            if self.cfg.csv.has_header {
                let mut buf = vec![0u8; 64 * 1024];
                let n = f.read(&mut buf).map_err(|e| self.err(e))?;
                let line_end = memchr::memchr(b'\n', &buf[..n]).unwrap_or(n);
                header_end = (line_end + 1).min(n) as u64;
                let mut h = &buf[..line_end];
                if h.last() == Some(&b'\r') {
                    h = &h[..h.len() - 1];
                }
                header = Some(h.to_vec());
            }
            Decoder::Csv(Box::new(
                CsvDecoder::new(&self.cfg.csv, header.as_deref(), opts)
                    .map_err(|e| self.err(format!("csv mapping: {e}")))?,
            ))
        } else {
            Decoder::Json(opts)
        });
        self.offset = match restored {
            Some(v) => {
                let off = v.get("offset").and_then(Value::as_u64).ok_or_else(|| {
                    SourceError::BadPosition {
                        source_name: self.name.clone(),
                        position: v.to_string(),
                        why: "expected {\"offset\": n}".into(),
                    }
                })?;
                if off > self.len {
                    return Err(SourceError::BadPosition {
                        source_name: self.name.clone(),
                        position: v.to_string(),
                        why: format!(
                            "the file is only {} bytes long (was it replaced?)",
                            self.len
                        ),
                    });
                }
                off.max(header_end)
            }
            None => header_end,
        };
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| self.err(e))?;
        self.file = Some(f);
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        self.decoder.clone().expect("decoder is set by open")
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        loop {
            if self.eof && self.carry.is_empty() {
                return Ok(Poll::End);
            }
            let mut got = 0;
            if !self.eof {
                got = self.fill(max_bytes.saturating_sub(self.carry.len()).max(4096))?;
                if got == 0 {
                    self.eof = true;
                }
            }
            let base = self.offset;
            if let Some(last) = memchr::memrchr(b'\n', &self.carry) {
                // the tail moves into a recycled buffer, so steady-state reading allocates
                // (and the kernel zeroes) no new pages
                let mut next = self.spare.pop().unwrap_or_default();
                next.clear();
                next.extend_from_slice(&self.carry[last + 1..]);
                self.carry.truncate(last + 1);
                let data = std::mem::replace(&mut self.carry, next);
                self.offset += data.len() as u64;
                return Ok(Poll::Chunk(SourceChunk {
                    data,
                    frames: None,
                    base_offset: base,
                    dead: Vec::new(),
                }));
            }
            if self.carry.len() > self.max_record {
                let dead = self.skip_oversize(base)?;
                return Ok(Poll::Chunk(SourceChunk {
                    data: Vec::new(),
                    frames: None,
                    base_offset: base,
                    dead: vec![dead],
                }));
            }
            if self.eof {
                // last line without a newline
                let data = std::mem::take(&mut self.carry);
                self.offset += data.len() as u64;
                return Ok(Poll::Chunk(SourceChunk {
                    data,
                    frames: None,
                    base_offset: base,
                    dead: Vec::new(),
                }));
            }
            let _ = got;
        }
    }

    fn position(&self) -> Value {
        serde_json::json!({ "offset": self.offset })
    }

    fn lag(&self) -> Option<u64> {
        Some(self.len.saturating_sub(self.offset))
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 4 {
            self.spare.push(buf);
        }
    }
}

impl FileSource {
    /// Bytes in the file, for progress reporting.
    pub fn total_bytes(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(src: &mut FileSource, max: usize) -> (Vec<u8>, Vec<DeadLetter>) {
        let mut data = Vec::new();
        let mut dead = Vec::new();
        loop {
            match src.poll(max).unwrap() {
                Poll::Chunk(c) => {
                    data.extend_from_slice(&c.data);
                    dead.extend(c.dead);
                }
                Poll::End => return (data, dead),
                Poll::Idle => unreachable!(),
            }
        }
    }

    #[test]
    fn chunks_on_lines_skips_oversize_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        // longer than one read, so the source itself must skip it (a shorter oversize line
        // reaches the decoder, which dead-letters it just the same)
        let long = "x".repeat(20_000);
        let text = format!("a\nbb\n{long}\nccc\nlast");
        std::fs::write(&p, &text).unwrap();
        let cfg = FileSourceConfig {
            path: p.clone(),
            ..Default::default()
        };
        let mut s = FileSource::new(cfg.clone(), 1000);
        s.open(None).unwrap();
        let (data, dead) = drain(&mut s, 4096);
        assert_eq!(String::from_utf8(data).unwrap(), "a\nbb\nccc\nlast");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].original_len, Some(20_000));
        assert_eq!(dead[0].position, "5");
        assert_eq!(dead[0].raw.len(), 1000);

        let mut s = FileSource::new(cfg, 1000);
        s.open(Some(&serde_json::json!({"offset": 20_006})))
            .unwrap();
        match s.poll(4096).unwrap() {
            Poll::Chunk(c) => assert_eq!(c.data, b"ccc\n"),
            other => panic!("{other:?}"),
        }
    }
}
