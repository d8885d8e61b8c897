//! A Redis stream read through a consumer group.
//!
//! Entries are read with `XREADGROUP` and acknowledged with `XACK` only in
//! `checkpoint_complete`, for the entries the completed checkpoint covers. At start the
//! consumer first re-reads its own pending entries (delivered to this consumer name before a
//! crash and never acknowledged), then new ones. Entries another consumer of the group left
//! pending for longer than `claim_idle` (it died) are taken over with `XAUTOCLAIM`. Copies of
//! entries whose originals did make it into a checkpoint are removed by the engine's dedup
//! on (user_id, event_id).

use super::{client, connect, is_connection_error, redact};
use crate::ingest::{io_err, run_id, Backoff, Framer};
use cartpulse_engine::{Poll, Source, SourceError};
use cartpulse_model::{write_json_str, DeadLetter, DecodeOptions, Decoder};
use redis::{Client, Connection, RedisError, Value};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// One field (`field`) holds the canonical JSON event.
    #[default]
    Json,
    /// The entry's fields are the event's fields (`user_id`, `action`, `qty`, …); the entry
    /// id is the event id unless an `event_id` field is present.
    Fields,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// `redis://[user:password@]host:port[/db]`
    pub url: String,
    pub stream: String,
    pub group: String,
    /// This reader's name in the group; keep it stable across restarts, so the entries it
    /// had read but not acknowledged are read again by it at once.
    pub consumer: String,
    pub format: StreamFormat,
    /// The field holding the JSON event (format `json`).
    pub field: String,
    /// Create the group (and the stream) when missing, starting at `start_id`.
    pub create_group: bool,
    /// Where a newly created group starts: `0` for the whole stream, `$` for new entries.
    pub start_id: String,
    /// Entries per read.
    pub count: usize,
    /// Entries pending on another consumer for longer than this are claimed; `0s` never.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// Quantity assumed for `add` events without one.
    pub default_qty: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RedisStreamConfig {
    fn default() -> Self {
        RedisStreamConfig {
            url: "redis://127.0.0.1:6379".into(),
            stream: "cart-events".into(),
            group: "cartpulse".into(),
            consumer: "cartpulse".into(),
            format: StreamFormat::Json,
            field: "event".into(),
            create_group: true,
            start_id: "0".into(),
            count: 1000,
            claim_idle: Duration::from_secs(30),
            default_qty: None,
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

pub struct RedisStreamSource {
    cfg: RedisStreamConfig,
    name: String,
    max_record: usize,
    client: Option<Client>,
    conn: Option<Connection>,
    run: u64,
    /// Entries handed out so far; the position carries it, so an ack covers a prefix.
    seq: u64,
    /// Handed out, not yet acknowledged: (sequence number, entry id).
    unacked: VecDeque<(u64, String)>,
    inflight: HashSet<String>,
    /// Cursor while re-reading this consumer's own pending entries at start.
    history: Option<String>,
    claim_cursor: String,
    next_claim: Instant,
    last_id: Option<String>,
    backoff: Backoff,
    lag: Option<u64>,
    lag_checked: Option<Instant>,
    framer: Framer,
    dead: Vec<DeadLetter>,
}

const WAIT: Duration = Duration::from_millis(50);
const LAG_EVERY: Duration = Duration::from_secs(2);

/// An entry as read: id and field/value pairs (`None`: deleted from the stream meanwhile).
type Entry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

impl RedisStreamSource {
    pub fn new(cfg: RedisStreamConfig, max_record_bytes: usize) -> RedisStreamSource {
        RedisStreamSource {
            name: format!("redis_stream:{}/{}", cfg.stream, cfg.group),
            backoff: Backoff::new(Duration::from_millis(100), cfg.max_backoff),
            next_claim: Instant::now(),
            cfg,
            max_record: max_record_bytes,
            client: None,
            conn: None,
            run: run_id(),
            seq: 0,
            unacked: VecDeque::new(),
            inflight: HashSet::new(),
            history: Some("0".into()),
            claim_cursor: "0-0".into(),
            last_id: None,
            lag: None,
            lag_checked: None,
            framer: Framer::default(),
            dead: Vec::new(),
        }
    }

    fn err(&self, m: impl std::fmt::Display, retryable: bool) -> SourceError {
        io_err(&self.name, m, retryable)
    }

    fn connect(&mut self) -> Result<(), RedisError> {
        let c = connect(
            self.client.as_ref().expect("opened"),
            self.cfg.connect_timeout,
            Duration::from_secs(5).max(self.cfg.connect_timeout),
        )?;
        self.conn = Some(c);
        Ok(())
    }

    fn create_group(&mut self) -> Result<(), String> {
        let conn = self.conn.as_mut().expect("connected");
        let r: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.start_id)
            .arg("MKSTREAM")
            .query(conn);
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) if e.code() == Some("WRONGTYPE") => Err(format!(
                "source.stream: key `{}` exists and is not a stream",
                self.cfg.stream
            )),
            Err(e) => Err(format!(
                "source.group: cannot create consumer group `{}` on `{}`: {e}",
                self.cfg.group, self.cfg.stream
            )),
        }
    }

    fn check_group(&mut self) -> Result<(), String> {
        let conn = self.conn.as_mut().expect("connected");
        let r: Result<Value, RedisError> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.cfg.stream)
            .query(conn);
        match r {
            Ok(v) => {
                if group_info(&v, &self.cfg.group).is_some() {
                    Ok(())
                } else {
                    Err(format!(
                        "source.group: consumer group `{}` does not exist on stream `{}` \
                         (create_group = false)",
                        self.cfg.group, self.cfg.stream
                    ))
                }
            }
            Err(e) if e.code() == Some("WRONGTYPE") => Err(format!(
                "source.stream: key `{}` is not a stream",
                self.cfg.stream
            )),
            Err(e) => Err(format!(
                "source.stream: stream `{}` does not exist or cannot be read: {e}",
                self.cfg.stream
            )),
        }
    }

    fn read(&mut self, block: bool) -> Result<(Vec<Entry>, bool), RedisError> {
        let conn = self.conn.as_mut().expect("connected");
        let count = self.cfg.count.max(1);
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(count);
        let from = match &self.history {
            Some(cursor) => cursor.clone(),
            None => {
                if block {
                    c.arg("BLOCK").arg(WAIT.as_millis() as u64);
                }
                ">".to_string()
            }
        };
        c.arg("STREAMS").arg(&self.cfg.stream).arg(&from);
        let v: Value = c.query(conn)?;
        let entries = match v {
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut kv) if kv.len() == 2 => Some(parse_entries(kv.pop()?)),
                    _ => None,
                })
                .flatten()
                .collect(),
            Value::Map(streams) => streams
                .into_iter()
                .flat_map(|(_, e)| parse_entries(e))
                .collect(),
            _ => Vec::new(),
        };
        let full = entries.len() >= count;
        if self.history.is_some() {
            match entries.last() {
                Some((id, _)) => self.history = Some(id.clone()),
                None => {
                    tracing::info!(source = %self.name, "own pending entries re-read; reading new entries");
                    self.history = None;
                }
            }
        }
        Ok((entries, full))
    }

    fn claim(&mut self) -> Result<Vec<Entry>, RedisError> {
        let conn = self.conn.as_mut().expect("connected");
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg(self.cfg.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.cfg.count.max(1))
            .query(conn)?;
        let mut parts = match v {
            Value::Array(p) => p.into_iter(),
            _ => Vec::new().into_iter(),
        };
        let next = parts
            .next()
            .and_then(|v| as_string(&v))
            .unwrap_or_else(|| "0-0".into());
        let entries = parts.next().map(parse_entries).unwrap_or_default();
        if next == "0-0" {
            // a full pass over the pending list: the next one after a while
            self.next_claim =
                Instant::now() + (self.cfg.claim_idle / 2).max(Duration::from_millis(200));
        }
        self.claim_cursor = next;
        let before = entries.len();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|(id, _)| !self.inflight.contains(id))
            .collect();
        if !entries.is_empty() {
            tracing::info!(
                source = %self.name,
                claimed = entries.len(),
                own = before - entries.len(),
                "claimed entries a dead consumer left pending"
            );
        }
        Ok(entries)
    }

    fn hand_out(&mut self, entries: Vec<Entry>) {
        for (id, fields) in entries {
            if !self.inflight.insert(id.clone()) {
                continue; // already handed out by this process and not yet acknowledged
            }
            self.unacked.push_back((self.seq, id.clone()));
            self.seq += 1;
            let Some(fields) = fields else {
                continue; // deleted from the stream: nothing to read, only to acknowledge
            };
            match self.cfg.format {
                StreamFormat::Json => {
                    match fields
                        .iter()
                        .find(|(k, _)| k.as_slice() == self.cfg.field.as_bytes())
                    {
                        Some((_, v)) => self.framer.push(v),
                        None => self.dead.push(DeadLetter {
                            reason: "missing_field",
                            detail: format!("stream entry has no field `{}`", self.cfg.field),
                            source: self.name.clone(),
                            position: id.clone(),
                            raw: fields_text(&fields),
                            original_len: None,
                        }),
                    }
                }
                StreamFormat::Fields => {
                    let rec = fields_json(&id, &fields);
                    self.framer.push(&rec);
                }
            }
            self.last_id = Some(id);
        }
    }

    fn lose(&mut self, e: &RedisError) {
        if self.conn.take().is_some() {
            tracing::warn!(source = %self.name, error = %e, "connection lost; reconnecting");
        }
        self.backoff.failed();
    }

    fn check_lag(&mut self) {
        if self.lag_checked.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return;
        }
        self.lag_checked = Some(Instant::now());
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let r: Result<Value, RedisError> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.cfg.stream)
            .query(conn);
        if let Ok(v) = r {
            if let Some(info) = group_info(&v, &self.cfg.group) {
                // `lag` (Redis 7): entries not yet delivered to the group
                self.lag = info
                    .iter()
                    .find(|(k, _)| k == "lag")
                    .and_then(|(_, v)| match v {
                        Value::Int(n) => Some((*n).max(0) as u64),
                        _ => None,
                    });
            }
        }
    }

    fn step(&mut self, max_bytes: usize) -> Result<(), RedisError> {
        if !self.cfg.claim_idle.is_zero()
            && self.history.is_none()
            && Instant::now() >= self.next_claim
        {
            let e = self.claim()?;
            self.hand_out(e);
        }
        let mut block = self.framer.is_empty();
        loop {
            let (entries, full) = self.read(block)?;
            block = false;
            self.hand_out(entries);
            if !(full || self.history.is_some()) || self.framer.len() >= max_bytes {
                return Ok(());
            }
        }
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_entries(v: Value) -> Vec<Entry> {
    let Value::Array(list) = v else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            if parts.is_empty() {
                return None;
            }
            let fields = if parts.len() > 1 { parts.pop() } else { None };
            let id = as_string(&parts[0])?;
            let fields = match fields {
                Some(Value::Array(kv)) => {
                    let mut out = Vec::with_capacity(kv.len() / 2);
                    let mut it = kv.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        let b = |x: Value| match x {
                            Value::BulkString(b) => b,
                            Value::SimpleString(s) => s.into_bytes(),
                            Value::Int(i) => i.to_string().into_bytes(),
                            _ => Vec::new(),
                        };
                        out.push((b(k), b(v)));
                    }
                    Some(out)
                }
                Some(Value::Map(kv)) => Some(
                    kv.into_iter()
                        .filter_map(|(k, v)| match (k, v) {
                            (Value::BulkString(k), Value::BulkString(v)) => Some((k, v)),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            };
            Some((id, fields))
        })
        .collect()
}

/// The key/value pairs of our group in an `XINFO GROUPS` reply.
fn group_info(v: &Value, group: &str) -> Option<Vec<(String, Value)>> {
    let Value::Array(groups) = v else {
        return None;
    };
    groups.iter().find_map(|g| {
        let pairs: Vec<(String, Value)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|c| Some((as_string(&c[0])?, c.get(1)?.clone())))
                .collect(),
            Value::Map(kv) => kv
                .iter()
                .filter_map(|(k, v)| Some((as_string(k)?, v.clone())))
                .collect(),
            _ => return None,
        };
        let name = pairs
            .iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, v)| as_string(v))?;
        (name == group).then_some(pairs)
    })
}

fn fields_text(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
    }
    out
}

/// The entry's fields as a JSON object; numeric fields unquoted when they are numbers.
fn fields_json(id: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>(),
    );
    out.push(b'{');
    let mut has_id = false;
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let k = String::from_utf8_lossy(k);
        let v = String::from_utf8_lossy(v);
        has_id |= k == "event_id";
        write_json_str(&mut out, &k);
        out.push(b':');
        if matches!(k.as_ref(), "qty" | "price" | "ts") && crate::ingest::is_plain_decimal(&v) {
            out.extend_from_slice(v.as_bytes());
        } else {
            write_json_str(&mut out, &v);
        }
    }
    if !has_id {
        if !fields.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"event_id\":");
        write_json_str(&mut out, id);
    }
    out.push(b'}');
    out
}

impl Source for RedisStreamSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&mut self, _restored: Option<&Json>) -> Result<(), SourceError> {
        // Nothing to restore: entries the checkpoint did not cover were never acknowledged,
        // so they are still pending on this consumer (read again first) or, if this
        // consumer's name changed, claimed once idle.
        if self.cfg.stream.is_empty() || self.cfg.group.is_empty() || self.cfg.consumer.is_empty() {
            return Err(self.err(
                "source.stream, source.group and source.consumer must not be empty",
                false,
            ));
        }
        if self.cfg.format == StreamFormat::Json && self.cfg.field.is_empty() {
            return Err(self.err(
                "source.field: name the field that holds the JSON event",
                false,
            ));
        }
        self.client = Some(client(&self.cfg.url).map_err(|m| self.err(m, false))?);
        self.connect().map_err(|e| {
            self.err(
                format!(
                    "source.url: cannot connect to {}: {e}",
                    redact(&self.cfg.url)
                ),
                true,
            )
        })?;
        let r = if self.cfg.create_group {
            self.create_group()
        } else {
            self.check_group()
        };
        r.map_err(|m| self.err(m, false))?;
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        Decoder::Json(DecodeOptions {
            max_record_bytes: self.max_record,
            default_qty: self.cfg.default_qty,
        })
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        if self.conn.is_none() {
            if !self.backoff.ready(WAIT) {
                return Ok(Poll::Idle);
            }
            if let Err(e) = self.connect() {
                tracing::warn!(source = %self.name, error = %e, "reconnect failed");
                self.backoff.failed();
                return Ok(Poll::Idle);
            }
            self.backoff.reset();
            tracing::info!(source = %self.name, "reconnected");
        }
        self.check_lag();
        if let Err(e) = self.step(max_bytes) {
            if is_connection_error(&e) {
                self.lose(&e);
            } else if e.code() == Some("NOGROUP") && self.cfg.create_group {
                tracing::warn!(source = %self.name, "consumer group vanished; creating it again");
                self.create_group().map_err(|m| self.err(m, false))?;
            } else if self.framer.is_empty() && self.dead.is_empty() {
                return Err(self.err(format!("reading `{}`: {e}", self.cfg.stream), false));
            }
        }
        if self.framer.is_empty() && self.dead.is_empty() {
            return Ok(Poll::Idle);
        }
        let mut chunk = self.framer.take();
        chunk.dead = std::mem::take(&mut self.dead);
        Ok(Poll::Chunk(chunk))
    }

    fn position(&self) -> Json {
        json!({ "run": self.run, "seq": self.seq, "last_id": self.last_id })
    }

    fn checkpoint_complete(
        &mut self,
        _checkpoint: u64,
        position: &Json,
    ) -> Result<(), SourceError> {
        if position["run"].as_u64() != Some(self.run) {
            return Ok(());
        }
        let upto = position["seq"].as_u64().unwrap_or(0);
        let n = self.unacked.iter().take_while(|(s, _)| *s < upto).count();
        if n == 0 {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(()); // acknowledged after the reconnect, with the next checkpoint
        };
        let ids: Vec<&String> = self.unacked.iter().take(n).map(|(_, id)| id).collect();
        let mut done = 0;
        for part in ids.chunks(1000) {
            let r: Result<u64, RedisError> = redis::cmd("XACK")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(part)
                .query(conn);
            match r {
                Ok(_) => done += part.len(),
                Err(e) => {
                    self.lose(&e);
                    break;
                }
            }
        }
        for (_, id) in self.unacked.drain(..done) {
            self.inflight.remove(&id);
        }
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        self.lag
    }
}
