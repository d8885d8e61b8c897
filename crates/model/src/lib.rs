//! cartpulse's data model: the canonical cart event, exact money, key groups, and the
//! decoders that turn records into events — or into dead letters that say why not.

pub mod csv;
pub mod enrich;
pub mod error;
pub mod event;
pub mod json;
pub mod keys;
pub mod money;
pub mod time;

pub use crate::csv::{CsvConfig, CsvDecoder};
pub use enrich::{ProductInfo, UserInfo};
pub use error::DecodeError;
pub use event::{write_json_str, Action, CartEvent};
pub use json::{decode_json, finish, DecodeOptions, RawFields};
pub use money::Money;
use std::sync::Arc;

/// A record that could not become an event, kept with its original bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: &'static str,
    pub detail: String,
    /// Where the record came from, e.g. `file:/data/x.jsonl`.
    pub source: String,
    /// Position within the source (byte offset, partition/offset, …).
    pub position: String,
    pub raw: Vec<u8>,
    /// Length of the original record when `raw` holds only a prefix of it.
    pub original_len: Option<usize>,
}

impl DeadLetter {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"reason\":");
        write_json_str(out, self.reason);
        out.extend_from_slice(b",\"error\":");
        write_json_str(out, &self.detail);
        out.extend_from_slice(b",\"source\":");
        write_json_str(out, &self.source);
        out.extend_from_slice(b",\"position\":");
        write_json_str(out, &self.position);
        match std::str::from_utf8(&self.raw) {
            Ok(s) => {
                out.extend_from_slice(b",\"raw\":");
                write_json_str(out, s);
            }
            Err(_) => {
                // bytes that are not text survive as base64, never lossily
                out.extend_from_slice(b",\"raw_base64\":");
                write_json_str(out, &base64(&self.raw));
            }
        }
        if let Some(n) = self.original_len {
            out.extend_from_slice(b",\"original_len\":");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b",\"truncated\":true");
        }
        out.push(b'}');
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                s.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A decoder that lives outside this crate, so formats with heavy dependencies (Avro) do
/// not weigh on everything that only needs the model. One instance is shared by every
/// decoder thread, hence `Sync`.
pub trait RecordDecoder: Send + Sync + std::fmt::Debug {
    /// One framed record to an event, or the reason it cannot be one. Implementations are
    /// expected to end in [`json::finish`], so every format applies the same per-action
    /// rules.
    fn decode(&self, record: &[u8]) -> Result<CartEvent, DecodeError>;
}

/// Wire formats a source can carry.
#[derive(Clone, Debug)]
pub enum Decoder {
    Json(DecodeOptions),
    Csv(Box<CsvDecoder>),
    /// A format implemented in another crate (see [`RecordDecoder`]).
    Custom(Arc<dyn RecordDecoder>),
}

impl Decoder {
    #[inline]
    pub fn decode(&self, record: &[u8]) -> Result<CartEvent, DecodeError> {
        match self {
            Decoder::Json(o) => decode_json(record, o),
            Decoder::Csv(d) => d.decode(record),
            Decoder::Custom(d) => d.decode(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_bytes() {
        let mut out = Vec::new();
        DeadLetter {
            reason: "invalid_utf8",
            detail: "x".into(),
            source: "s".into(),
            position: "1".into(),
            raw: vec![0xff, b'a'],
            original_len: None,
        }
        .write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["raw_base64"], "/2E=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
