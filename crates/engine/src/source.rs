//! The one trait every source implements.
//!
//! A source hands out chunks of raw records plus the position after them; it never decodes
//! (decoding runs in parallel on the decoder threads). Its position goes into every
//! checkpoint, and `checkpoint_complete` tells it when input up to a position is covered by
//! durable output, so a queue-like source may acknowledge upstream only then.

use cartpulse_model::{DeadLetter, Decoder};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name}: {message}")]
    Io {
        source_name: String,
        message: String,
        /// Whether trying again later can help (a broker restarting) or not (a bad path).
        retryable: bool,
    },
    #[error("{source_name}: cannot resume from checkpointed position {position}: {why}")]
    BadPosition {
        source_name: String,
        position: String,
        why: String,
    },
}

/// Raw records read from a source.
#[derive(Debug, Default)]
pub struct SourceChunk {
    /// Newline-terminated records, or framed records when `frames` is set.
    pub data: Vec<u8>,
    /// Record boundaries `(start, end)` into `data` for sources whose records may contain
    /// newlines (message brokers); `None` means one record per line.
    pub frames: Option<Vec<(u32, u32)>>,
    /// Position of `data[0]` for line sources (byte offset), or of the first frame for
    /// framed ones (frame `i` is at `base_offset + i`), used in dead-letter positions.
    pub base_offset: u64,
    /// Records the source itself already rejected (e.g. longer than the limit).
    pub dead: Vec<DeadLetter>,
}

#[derive(Debug)]
pub enum Poll {
    Chunk(SourceChunk),
    /// Nothing now; the source may have more later.
    Idle,
    /// Nothing ever again.
    End,
}

pub trait Source: Send {
    /// Short name used in logs, metrics and dead-letter records.
    fn name(&self) -> &str;

    /// Prepares to read, resuming after `restored` when a checkpoint holds a position.
    fn open(&mut self, restored: Option<&Value>) -> Result<(), SourceError>;

    /// How records become events (a CSV source knows its header only after `open`).
    fn decoder(&self) -> Decoder;

    /// Returns up to about `max_bytes` of records. Blocks at most briefly (≈ 50 ms) when no
    /// data is ready, returning `Idle`.
    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError>;

    /// Position after the last chunk returned by `poll`.
    fn position(&self) -> Value;

    /// Output covering input up to `position` is durable.
    fn checkpoint_complete(
        &mut self,
        _checkpoint: u64,
        _position: &Value,
    ) -> Result<(), SourceError> {
        Ok(())
    }

    /// A chunk buffer the pipeline is done with, for reuse by the next `poll`.
    fn recycle(&mut self, _buf: Vec<u8>) {}

    /// Bytes or records known to be waiting upstream, if the source can tell.
    fn lag(&self) -> Option<u64> {
        None
    }
}
