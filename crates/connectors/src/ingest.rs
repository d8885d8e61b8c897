//! Pieces the network sources share: reconnect backoff, the canonical event line they write
//! when they build events themselves (CDC, Redis carts), and framing for brokers whose
//! payloads may contain newlines.

use cartpulse_engine::SourceError;
use cartpulse_model::write_json_str;
use std::time::{Duration, Instant};

pub(crate) fn io_err(
    source: &str,
    message: impl std::fmt::Display,
    retryable: bool,
) -> SourceError {
    SourceError::Io {
        source_name: source.to_string(),
        message: message.to_string(),
        retryable,
    }
}

/// Exponential backoff between reconnect attempts, so a broker that is down is not
/// hammered, while a short blip costs only the first, short, delay.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    not_before: Option<Instant>,
    pub failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            not_before: None,
            failures: 0,
        }
    }

    /// Whether an attempt may be made now; otherwise sleeps a little (at most `nap`) so the
    /// caller's poll loop stays responsive.
    pub fn ready(&self, nap: Duration) -> bool {
        match self.not_before {
            None => true,
            Some(t) => {
                let now = Instant::now();
                if now >= t {
                    true
                } else {
                    std::thread::sleep((t - now).min(nap));
                    Instant::now() >= t
                }
            }
        }
    }

    /// Records a failed attempt; returns the delay until the next one.
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.not_before = Some(Instant::now() + d);
        self.next = (self.next * 2).min(self.max);
        self.failures += 1;
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
        self.not_before = None;
        self.failures = 0;
    }
}

/// Writes one canonical JSON event line (see `cartpulse_model::json`), newline-terminated.
pub(crate) struct EventLine<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> EventLine<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> EventLine<'a> {
        out.push(b'{');
        EventLine { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        write_json_str(self.out, v);
        self
    }

    pub fn opt_str(self, k: &str, v: Option<&str>) -> Self {
        match v {
            Some(v) => self.str(k, v),
            None => self,
        }
    }

    pub fn int(mut self, k: &str, v: i64) -> Self {
        self.key(k);
        self.out.extend_from_slice(v.to_string().as_bytes());
        self
    }

    /// A number given as its decimal text (exact money is never passed through a float).
    pub fn num(mut self, k: &str, text: &str) -> Self {
        self.key(k);
        self.out.extend_from_slice(text.as_bytes());
        self
    }

    pub fn end(self) {
        self.out.extend_from_slice(b"}\n");
    }
}

/// Whether `s` is a JSON number the decoder accepts as written (so it can be copied into a
/// line unquoted): optional minus, digits, optional fraction.
pub(crate) fn is_plain_decimal(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    !int.is_empty()
        && int.bytes().all(|c| c.is_ascii_digit())
        && (int.len() == 1 || !int.starts_with('0'))
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()))
}

/// Records whose payload may hold newlines travel as frames into one buffer.
#[derive(Default)]
pub(crate) struct Framer {
    pub data: Vec<u8>,
    pub frames: Vec<(u32, u32)>,
}

impl Framer {
    pub fn push(&mut self, payload: &[u8]) {
        let a = self.data.len() as u32;
        self.data.extend_from_slice(payload);
        self.frames.push((a, self.data.len() as u32));
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn take(&mut self) -> cartpulse_engine::SourceChunk {
        cartpulse_engine::SourceChunk {
            data: std::mem::take(&mut self.data),
            frames: Some(std::mem::take(&mut self.frames)),
            ..Default::default()
        }
    }
}

/// An id for this process's life, so acknowledgements of positions a previous process
/// wrote (delivery tags, sequence numbers) are never applied to this one's deliveries.
pub(crate) fn run_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_line_is_canonical_json() {
        let mut out = Vec::new();
        EventLine::new(&mut out)
            .str("event_id", "a\"b")
            .int("ts", 1_700_000_000_000)
            .str("action", "add")
            .num("price", "19.99")
            .end();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event_id"], "a\"b");
        assert_eq!(v["price"].to_string(), "19.99");
        assert!(out.ends_with(b"}\n"));
        let ev = cartpulse_model::decode_json(&out[..out.len() - 1], &Default::default());
        assert!(ev.is_err(), "no user_id: the decoder must refuse it");
    }

    #[test]
    fn plain_decimals() {
        for ok in ["0", "12", "-3", "19.99", "0.5"] {
            assert!(is_plain_decimal(ok), "{ok}");
        }
        for bad in ["", "01", "1.", ".5", "1e3", "NaN", "1,5", "- 1"] {
            assert!(!is_plain_decimal(bad), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        assert!(b.ready(Duration::ZERO));
        assert_eq!(b.failed(), Duration::from_millis(10));
        assert!(!b.ready(Duration::ZERO));
        assert_eq!(b.failed(), Duration::from_millis(20));
        assert_eq!(b.failed(), Duration::from_millis(35));
        assert_eq!(b.failed(), Duration::from_millis(35));
        b.reset();
        assert!(b.ready(Duration::ZERO));
        assert_eq!(b.failed(), Duration::from_millis(10));
    }
}
