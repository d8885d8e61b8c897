//! Carts kept as Redis hashes (`cart:{user}` → sku → qty), turned into cart events.
//!
//! A keyspace notification says *that* a cart key changed, not how; the source reads the
//! hash and diffs it against the last cart it knows for that user, producing `add`,
//! `remove` and `update_qty` events. The known carts are the source's position, so they are
//! checkpointed with everything else, and after a restart the diff continues from exactly the
//! carts the restored state holds.
//!
//! Notifications are fire-and-forget: none arrive while the source is down or its
//! subscription is being re-established. So whenever a subscription starts (at start-up and
//! after every reconnect) the source SCANs all cart keys and diffs them too; carts it knows
//! whose key is gone become removals. Subscribing before scanning means a change is either
//! notified or seen by the scan, never neither.
//!
//! The server must publish keyspace events for hashes and generic commands:
//! `CONFIG SET notify-keyspace-events Khgx` (or `notify-keyspace-events "Khgx"` in
//! redis.conf). Several changes to one cart between two reads become one diff: intermediate
//! quantities are not seen, the cart's state always is.

use super::{client, connect, is_connection_error, redact};
use crate::ingest::{io_err, Backoff, EventLine};
use cartpulse_engine::{Poll, Source, SourceChunk, SourceError};
use cartpulse_model::{DeadLetter, DecodeOptions, Decoder};
use redis::{Client, Connection, RedisError, Value};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisCartsConfig {
    /// `redis://[user:password@]host:port[/db]`
    pub url: String,
    /// Key of one user's cart hash; `{user}` stands for the user id. Fields are SKUs,
    /// values quantities.
    pub key_pattern: String,
    /// Keys per SCAN step of the resync.
    pub scan_count: usize,
    /// Refuse to start when the server does not publish the keyspace events needed
    /// (turn off where CONFIG is not allowed and notifications are known to be on).
    pub check_notifications: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RedisCartsConfig {
    fn default() -> Self {
        RedisCartsConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_pattern: "cart:{user}".into(),
            scan_count: 1000,
            check_notifications: true,
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

enum Note {
    /// The subscription is (again) in place: a resync scan must follow.
    Subscribed,
    Key(String),
    Lost(String),
}

type Cart = BTreeMap<String, u32>;

struct Scan {
    cursor: u64,
    seen: HashSet<String>,
}

pub struct RedisCartsSource {
    cfg: RedisCartsConfig,
    name: String,
    max_record: usize,
    client: Option<Client>,
    conn: Option<Connection>,
    prefix: String,
    suffix: String,
    notes: Option<Receiver<Note>>,
    stop: Arc<AtomicBool>,
    listener: Option<std::thread::JoinHandle<()>>,
    carts: HashMap<String, Cart>,
    /// Events produced so far: the event id, restored with the carts.
    changes: u64,
    dirty: VecDeque<String>,
    dirty_set: HashSet<String>,
    scan: Option<Scan>,
    backoff: Backoff,
    out: Vec<u8>,
    dead: Vec<DeadLetter>,
}

const WAIT: Duration = Duration::from_millis(50);
/// Carts read per round trip.
const BATCH: usize = 200;

impl RedisCartsSource {
    pub fn new(cfg: RedisCartsConfig, max_record_bytes: usize) -> RedisCartsSource {
        RedisCartsSource {
            name: format!("redis_carts:{}", cfg.key_pattern),
            backoff: Backoff::new(Duration::from_millis(100), cfg.max_backoff),
            cfg,
            max_record: max_record_bytes,
            client: None,
            conn: None,
            prefix: String::new(),
            suffix: String::new(),
            notes: None,
            stop: Arc::new(AtomicBool::new(false)),
            listener: None,
            carts: HashMap::new(),
            changes: 0,
            dirty: VecDeque::new(),
            dirty_set: HashSet::new(),
            scan: None,
            out: Vec::new(),
            dead: Vec::new(),
        }
    }

    fn err(&self, m: impl std::fmt::Display, retryable: bool) -> SourceError {
        io_err(&self.name, m, retryable)
    }

    fn key_of(&self, user: &str) -> String {
        format!("{}{user}{}", self.prefix, self.suffix)
    }

    fn user_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        let u = key.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        (!u.is_empty()).then_some(u)
    }

    fn glob(&self) -> String {
        format!(
            "{}*{}",
            glob_escape(&self.prefix),
            glob_escape(&self.suffix)
        )
    }

    fn mark(&mut self, user: &str) {
        if self.dirty_set.insert(user.to_string()) {
            self.dirty.push_back(user.to_string());
        }
    }

    fn check_config(&mut self) -> Result<(), String> {
        let conn = self.conn.as_mut().expect("connected");
        let r: Result<Vec<String>, RedisError> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query(conn);
        let flags = match r {
            Ok(v) => v.get(1).cloned().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "cannot read notify-keyspace-events; assuming it is on");
                return Ok(());
            }
        };
        let has = |c: char| flags.contains(c);
        if !has('K') || !(has('h') || has('A')) {
            return Err(format!(
                "source.url: {} does not publish keyspace events for hashes \
                 (notify-keyspace-events = \"{flags}\"); enable them with \
                 CONFIG SET notify-keyspace-events Khgx (or set check_notifications = false)",
                redact(&self.cfg.url)
            ));
        }
        if !(has('g') || has('A')) {
            tracing::warn!(source = %self.name, flags = %flags, "notify-keyspace-events lacks `g`: a deleted cart key is only noticed at the next resync");
        }
        Ok(())
    }

    fn start_listener(&mut self) -> Result<(), String> {
        let client = self.client.clone().expect("opened");
        let db = client.get_connection_info().redis_settings().db();
        let pattern = format!("__keyspace@{db}__:{}", self.glob());
        let prefix = format!("__keyspace@{db}__:");
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = self.stop.clone();
        let timeout = self.cfg.connect_timeout;
        let max_backoff = self.cfg.max_backoff;
        let name = self.name.clone();
        self.listener = Some(
            std::thread::Builder::new()
                .name("redis-carts-notify".into())
                .spawn(move || {
                    listen(
                        client,
                        pattern,
                        prefix,
                        tx,
                        stop,
                        timeout,
                        max_backoff,
                        name,
                    )
                })
                .map_err(|e| format!("cannot start the notification thread: {e}"))?,
        );
        // the first subscription must work before start-up counts as done
        match rx.recv_timeout(timeout) {
            Ok(Note::Subscribed) => {
                self.scan = Some(Scan {
                    cursor: 0,
                    seen: HashSet::new(),
                });
                self.notes = Some(rx);
                Ok(())
            }
            Ok(Note::Lost(e)) => Err(format!(
                "source.url: cannot subscribe to keyspace events: {e}"
            )),
            _ => Err("source.url: keyspace subscription did not start in time".into()),
        }
    }

    fn drain_notes(&mut self, wait: Duration) {
        let Some(rx) = &self.notes else { return };
        let mut got = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(n) => got.push(n),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                got.push(Note::Lost("notification thread ended".into()));
            }
        }
        while let Ok(n) = rx.try_recv() {
            got.push(n);
        }
        for n in got {
            match n {
                Note::Key(k) => {
                    if let Some(u) = self.user_of(&k).map(str::to_string) {
                        self.mark(&u);
                    }
                }
                Note::Subscribed => {
                    tracing::info!(source = %self.name, "subscribed again; rescanning carts");
                    self.scan = Some(Scan {
                        cursor: 0,
                        seen: HashSet::new(),
                    });
                }
                Note::Lost(e) => {
                    tracing::warn!(source = %self.name, error = %e, "keyspace notifications interrupted; a rescan follows the resubscription");
                }
            }
        }
    }

    fn scan_step(&mut self) -> Result<(), RedisError> {
        let glob = self.glob();
        let Some(scan) = self.scan.as_mut() else {
            return Ok(());
        };
        let conn = self.conn.as_mut().expect("connected");
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(scan.cursor)
            .arg("MATCH")
            .arg(&glob)
            .arg("COUNT")
            .arg(self.cfg.scan_count.max(1))
            .query(conn)?;
        scan.cursor = next;
        let mut users = Vec::new();
        for k in &keys {
            if let Some(u) = self.user_of(k) {
                users.push(u.to_string());
            }
        }
        let scan = self.scan.as_mut().expect("scanning");
        for u in &users {
            scan.seen.insert(u.clone());
        }
        let finished = next == 0;
        for u in users {
            self.mark(&u);
        }
        if finished {
            let scan = self.scan.take().expect("scanning");
            let gone: Vec<String> = self
                .carts
                .keys()
                .filter(|u| !scan.seen.contains(*u))
                .cloned()
                .collect();
            for u in gone {
                self.mark(&u);
            }
            tracing::debug!(source = %self.name, carts = scan.seen.len(), "resync scan done");
        }
        Ok(())
    }

    /// Reads the dirty carts (in batches) and writes the diffs, until `max_bytes`.
    fn flush_dirty(&mut self, max_bytes: usize) -> Result<(), RedisError> {
        while !self.dirty.is_empty() && self.out.len() < max_bytes {
            let users: Vec<String> = self.dirty.iter().take(BATCH).cloned().collect();
            let keys: Vec<String> = users.iter().map(|u| self.key_of(u)).collect();
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("HGETALL").arg(k);
            }
            let conn = self.conn.as_mut().expect("connected");
            let replies: Vec<Result<Value, RedisError>> = match p.query::<Vec<Value>>(conn) {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) if is_connection_error(&e) => return Err(e),
                // one bad key (not a hash) fails the pipeline: read them one by one
                Err(_) => keys
                    .iter()
                    .map(|k| redis::cmd("HGETALL").arg(k).query::<Value>(conn))
                    .collect(),
            };
            for (u, r) in users.iter().zip(replies) {
                match r {
                    Ok(v) => self.diff(u, v),
                    Err(e) if is_connection_error(&e) => return Err(e),
                    Err(e) => self.dead.push(DeadLetter {
                        reason: "not_a_cart",
                        detail: format!("cannot read the cart hash: {e}"),
                        source: self.name.clone(),
                        position: self.key_of(u),
                        raw: Vec::new(),
                        original_len: None,
                    }),
                }
                self.dirty.pop_front();
                self.dirty_set.remove(u);
            }
        }
        Ok(())
    }

    fn diff(&mut self, user: &str, v: Value) {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = match v {
            Value::Array(kv) => {
                let mut it = kv.into_iter();
                let mut out = Vec::new();
                while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                    (it.next(), it.next())
                {
                    out.push((k, v));
                }
                out
            }
            Value::Map(kv) => kv
                .into_iter()
                .filter_map(|(k, v)| match (k, v) {
                    (Value::BulkString(k), Value::BulkString(v)) => Some((k, v)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let old = self.carts.remove(user).unwrap_or_default();
        let mut new = Cart::new();
        for (k, v) in pairs {
            let sku = String::from_utf8_lossy(&k).into_owned();
            match std::str::from_utf8(&v)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            {
                Some(0) => {}
                Some(q) => {
                    new.insert(sku, q);
                }
                None => {
                    // keep what was known for the line rather than invent a removal
                    if let Some(&q) = old.get(&sku) {
                        new.insert(sku.clone(), q);
                    }
                    let mut raw = k.clone();
                    raw.push(b'=');
                    raw.extend_from_slice(&v);
                    self.dead.push(DeadLetter {
                        reason: "bad_qty",
                        detail: "a cart hash value is not a non-negative integer quantity".into(),
                        source: self.name.clone(),
                        position: self.key_of(user),
                        raw,
                        original_len: None,
                    });
                }
            }
        }
        let ts = now_ms();
        let mut skus: Vec<&String> = old.keys().chain(new.keys()).collect();
        skus.sort();
        skus.dedup();
        for sku in skus {
            let (action, qty) = match (old.get(sku), new.get(sku)) {
                (None, Some(&n)) => ("add", n),
                (Some(&o), None) => ("remove", o),
                (Some(&o), Some(&n)) if o != n => ("update_qty", n),
                _ => continue,
            };
            let id = format!("rc:{}", self.changes);
            self.changes += 1;
            EventLine::new(&mut self.out)
                .str("event_id", &id)
                .int("ts", ts)
                .str("user_id", user)
                .str("action", action)
                .str("sku", sku)
                .int("qty", i64::from(qty))
                .end();
        }
        if !new.is_empty() {
            self.carts.insert(user.to_string(), new);
        }
    }

    fn work(&mut self, max_bytes: usize) -> Result<(), RedisError> {
        self.drain_notes(Duration::ZERO);
        if self.scan.is_some() && self.dirty.len() < 10 * BATCH {
            self.scan_step()?;
        }
        self.flush_dirty(max_bytes)?;
        if self.out.is_empty() && self.dead.is_empty() && self.scan.is_none() {
            // nothing pending: wait briefly for a change, then serve it at once
            self.drain_notes(WAIT);
            self.flush_dirty(max_bytes)?;
        }
        Ok(())
    }
}

fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[allow(clippy::too_many_arguments)]
fn listen(
    client: Client,
    pattern: String,
    prefix: String,
    tx: Sender<Note>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
    max_backoff: Duration,
    name: String,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), max_backoff);
    while !stop.load(Ordering::Relaxed) {
        if !backoff.ready(Duration::from_millis(200)) {
            continue;
        }
        let mut conn = match connect(&client, timeout, Duration::from_millis(200)) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Note::Lost(e.to_string()));
                backoff.failed();
                continue;
            }
        };
        let mut ps = conn.as_pubsub();
        if let Err(e) = ps.psubscribe(&pattern) {
            let _ = tx.send(Note::Lost(e.to_string()));
            backoff.failed();
            continue;
        }
        backoff.reset();
        if tx.send(Note::Subscribed).is_err() {
            return;
        }
        let mut since = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match ps.get_message() {
                Ok(m) => {
                    since = Instant::now();
                    if let Some(k) = m.get_channel_name().strip_prefix(&prefix) {
                        if tx.send(Note::Key(k.to_string())).is_err() {
                            return;
                        }
                    }
                }
                Err(e) if e.is_timeout() => {
                    // a silent subscription is fine; a dead one is found by a ping
                    if since.elapsed() > Duration::from_secs(5) {
                        since = Instant::now();
                        if let Err(e) = ps.ping::<String>() {
                            if !e.is_timeout() {
                                tracing::warn!(source = %name, error = %e, "keyspace subscription lost");
                                let _ = tx.send(Note::Lost(e.to_string()));
                                backoff.failed();
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "keyspace subscription lost");
                    let _ = tx.send(Note::Lost(e.to_string()));
                    backoff.failed();
                    break;
                }
            }
        }
    }
}

impl Source for RedisCartsSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&mut self, restored: Option<&Json>) -> Result<(), SourceError> {
        let Some((prefix, suffix)) = self.cfg.key_pattern.split_once("{user}") else {
            return Err(self.err(
                format!(
                    "source.key_pattern: `{}` must contain `{{user}}`",
                    self.cfg.key_pattern
                ),
                false,
            ));
        };
        if suffix.contains("{user}") {
            return Err(self.err("source.key_pattern: `{user}` may appear only once", false));
        }
        (self.prefix, self.suffix) = (prefix.to_string(), suffix.to_string());
        if let Some(v) = restored {
            let bad = |why: &str| SourceError::BadPosition {
                source_name: self.name.clone(),
                position: v.to_string(),
                why: why.into(),
            };
            self.changes = v["changes"]
                .as_u64()
                .ok_or_else(|| bad("expected \"changes\""))?;
            let carts = v["carts"]
                .as_object()
                .ok_or_else(|| bad("expected \"carts\""))?;
            for (user, lines) in carts {
                let lines = lines
                    .as_object()
                    .ok_or_else(|| bad("a cart is not an object"))?;
                let mut cart = Cart::new();
                for (sku, q) in lines {
                    let q = q
                        .as_u64()
                        .ok_or_else(|| bad("a quantity is not a number"))?;
                    cart.insert(sku.clone(), q as u32);
                }
                self.carts.insert(user.clone(), cart);
            }
        }
        self.client = Some(client(&self.cfg.url).map_err(|m| self.err(m, false))?);
        let c = connect(
            self.client.as_ref().expect("set"),
            self.cfg.connect_timeout,
            Duration::from_secs(5),
        )
        .map_err(|e| {
            self.err(
                format!(
                    "source.url: cannot connect to {}: {e}",
                    redact(&self.cfg.url)
                ),
                true,
            )
        })?;
        self.conn = Some(c);
        if self.cfg.check_notifications {
            self.check_config().map_err(|m| self.err(m, false))?;
        }
        self.start_listener().map_err(|m| self.err(m, true))?;
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        Decoder::Json(DecodeOptions {
            max_record_bytes: self.max_record,
            default_qty: None,
        })
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        if self.conn.is_none() {
            self.drain_notes(Duration::ZERO);
            if !self.backoff.ready(WAIT) {
                return Ok(Poll::Idle);
            }
            match connect(
                self.client.as_ref().expect("opened"),
                self.cfg.connect_timeout,
                Duration::from_secs(5),
            ) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.backoff.reset();
                }
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, "reconnect failed");
                    self.backoff.failed();
                    return Ok(Poll::Idle);
                }
            }
        }
        if let Err(e) = self.work(max_bytes) {
            if !is_connection_error(&e) {
                return Err(self.err(e, false));
            }
            tracing::warn!(source = %self.name, error = %e, "connection lost; reconnecting");
            self.conn = None;
            self.backoff.failed();
        }
        if self.out.is_empty() && self.dead.is_empty() {
            return Ok(Poll::Idle);
        }
        Ok(Poll::Chunk(SourceChunk {
            data: std::mem::take(&mut self.out),
            dead: std::mem::take(&mut self.dead),
            ..Default::default()
        }))
    }

    fn position(&self) -> Json {
        json!({ "changes": self.changes, "carts": self.carts })
    }

    fn lag(&self) -> Option<u64> {
        Some(self.dirty.len() as u64)
    }
}

impl Drop for RedisCartsSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
    }
}
