//! The generator as a live source: events are released when the wall clock reaches their
//! event time, so the demo behaves like a shop with real traffic.

use cartpulse_engine::{Poll, Source, SourceChunk, SourceError};
use cartpulse_gen::{GenConfig, Generator};
use cartpulse_model::{DecodeOptions, Decoder};
use serde_json::Value;
use std::time::{Duration, Instant};

pub struct GenSource {
    cfg: GenConfig,
    gen: Option<Generator>,
    /// Lines handed out (the position: the generator is deterministic, so it can be replayed).
    lines: u64,
    pending: Vec<u8>,
    pending_ts: Option<i64>,
    /// Wall-clock instant corresponding to `cfg.start_ms`.
    epoch: Instant,
    max_record: usize,
}

impl GenSource {
    /// `cfg.start_ms` is the event time of the first event; it is released immediately.
    pub fn new(cfg: GenConfig, max_record_bytes: usize) -> GenSource {
        GenSource {
            cfg,
            gen: None,
            lines: 0,
            pending: Vec::with_capacity(256),
            pending_ts: None,
            epoch: Instant::now(),
            max_record: max_record_bytes,
        }
    }

    fn err(e: impl std::fmt::Display) -> SourceError {
        SourceError::Io {
            source_name: "generator".into(),
            message: e.to_string(),
            retryable: false,
        }
    }

    fn next(&mut self) -> bool {
        self.pending.clear();
        match self
            .gen
            .as_mut()
            .expect("opened")
            .next_line(&mut self.pending)
        {
            Some(ts) => {
                self.pending_ts = Some(ts);
                true
            }
            None => {
                self.pending_ts = None;
                false
            }
        }
    }
}

impl Source for GenSource {
    fn name(&self) -> &str {
        "generator"
    }

    fn open(&mut self, restored: Option<&Value>) -> Result<(), SourceError> {
        if let Some(v) = restored {
            if let Some(s) = v.get("start_ms").and_then(Value::as_i64) {
                self.cfg.start_ms = s;
            }
        }
        let skip = restored
            .and_then(|v| v.get("lines"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.gen = Some(Generator::new(self.cfg.clone()).map_err(Self::err)?);
        let now_ms = cartpulse_engine::clock::Clock::now_ms(&cartpulse_engine::clock::SystemClock);
        let behind = (now_ms - self.cfg.start_ms).max(0) as u64;
        self.epoch = Instant::now() - Duration::from_millis(behind);
        for _ in 0..skip {
            if !self.next() {
                break;
            }
        }
        self.lines = skip;
        self.next();
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        Decoder::Json(DecodeOptions {
            max_record_bytes: self.max_record,
            default_qty: None,
        })
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        let now = self.cfg.start_ms + self.epoch.elapsed().as_millis() as i64;
        let mut data = Vec::new();
        while let Some(ts) = self.pending_ts {
            if ts > now || data.len() >= max_bytes {
                break;
            }
            data.extend_from_slice(&self.pending);
            self.lines += 1;
            self.next();
        }
        if !data.is_empty() {
            return Ok(Poll::Chunk(SourceChunk {
                data,
                ..Default::default()
            }));
        }
        match self.pending_ts {
            None => Ok(Poll::End),
            Some(ts) => {
                let wait = (ts - now).clamp(0, 50) as u64;
                std::thread::sleep(Duration::from_millis(wait.max(1)));
                Ok(Poll::Idle)
            }
        }
    }

    fn position(&self) -> Value {
        serde_json::json!({ "lines": self.lines, "start_ms": self.cfg.start_ms })
    }
}
