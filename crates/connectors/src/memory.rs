//! An in-memory source of JSON lines: for benchmarks and tests that must not measure disk.

use cartpulse_engine::{Poll, Source, SourceChunk, SourceError};
use cartpulse_model::{DecodeOptions, Decoder};
use serde_json::Value;
use std::sync::Arc;

pub struct MemorySource {
    data: Arc<Vec<u8>>,
    offset: usize,
    /// After the data: `End` (finish the run) or stay `Idle` (keep the pipeline alive).
    end_when_done: bool,
}

impl MemorySource {
    pub fn new(data: Arc<Vec<u8>>, end_when_done: bool) -> MemorySource {
        MemorySource {
            data,
            offset: 0,
            end_when_done,
        }
    }
}

impl Source for MemorySource {
    fn name(&self) -> &str {
        "memory"
    }

    fn open(&mut self, restored: Option<&Value>) -> Result<(), SourceError> {
        self.offset = restored
            .and_then(|v| v.get("offset"))
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        Decoder::Json(DecodeOptions::default())
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        if self.offset >= self.data.len() {
            if self.end_when_done {
                return Ok(Poll::End);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            return Ok(Poll::Idle);
        }
        let rest = &self.data[self.offset..];
        let cut = if rest.len() <= max_bytes {
            rest.len()
        } else {
            memchr::memrchr(b'\n', &rest[..max_bytes]).map_or(rest.len(), |i| i + 1)
        };
        let chunk = SourceChunk {
            data: rest[..cut].to_vec(),
            base_offset: self.offset as u64,
            ..Default::default()
        };
        self.offset += cut;
        Ok(Poll::Chunk(chunk))
    }

    fn position(&self) -> Value {
        serde_json::json!({ "offset": self.offset })
    }
}
