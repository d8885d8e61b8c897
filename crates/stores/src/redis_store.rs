//! Redis: what a website reads while the pipeline runs — each user's cart, their latest
//! window results, the global windows, recent abandoned carts and alerts.
//!
//! Keys (all under `prefix`, default `cartpulse:`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `cart:{user}` | string | the cart record as JSON; deleted when the cart is empty |
//! | `user_windows:{user}` | sorted set | window records scored by `window_end`, newest `windows_per_user` kept |
//! | `global_windows` | sorted set | global window records scored by `window_end`, newest `global_windows_kept` kept |
//! | `abandoned` | sorted set | user ids scored by `abandoned_at`, newest `abandoned_kept` kept |
//! | `abandoned:{user}` | hash | the user's latest abandoned cart (`lines` as JSON) |
//! | `alerts` | list | alert records, newest first, capped at `alerts_kept` |
//! | `alert:{alert_id}` | string | the latest version of an alert |
//! | `committed_epoch` | string | the last epoch applied |
//!
//! Exactly-once: epochs are staged in a local fsynced file ([`crate::stage`]); `commit`
//! applies an epoch's commands and sets `committed_epoch` in one MULTI/EXEC, skipped when
//! `committed_epoch` already covers the epoch (the alerts LPUSH is the one write that is not
//! idempotent by itself).

use crate::retry::{retry, RetryConfig};
use crate::schema::{self, Fields, Kind};
use crate::stage::{FileStage, StagedEpoch};
use crate::{names, parse_streams, require_stage_dir, sink_error, StoreError};
use cartpulse_engine::{Sink, SinkError, Stream};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub name: Option<String>,
    pub url: String,
    pub prefix: String,
    pub streams: Vec<String>,
    /// Where epochs are staged; default `<checkpoint dir>/stores/<name>`.
    pub stage_dir: Option<PathBuf>,
    /// Expiry of `cart:*` keys (`0s`: never).
    #[serde(with = "humantime_serde")]
    pub cart_ttl: Duration,
    /// Expiry of `user_windows:*` keys.
    #[serde(with = "humantime_serde")]
    pub window_ttl: Duration,
    /// Expiry of `abandoned:{user}` hashes.
    #[serde(with = "humantime_serde")]
    pub abandoned_ttl: Duration,
    /// Expiry of `alert:*` keys.
    #[serde(with = "humantime_serde")]
    pub alert_ttl: Duration,
    pub windows_per_user: usize,
    pub global_windows_kept: usize,
    pub abandoned_kept: usize,
    pub alerts_kept: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            name: None,
            url: "redis://127.0.0.1:6379/".into(),
            prefix: "cartpulse:".into(),
            streams: names(&[
                Stream::Carts,
                Stream::UserWindows,
                Stream::GlobalWindows,
                Stream::AbandonedCarts,
                Stream::Alerts,
            ]),
            stage_dir: None,
            cart_ttl: Duration::from_secs(7 * 86400),
            window_ttl: Duration::from_secs(86400),
            abandoned_ttl: Duration::from_secs(7 * 86400),
            alert_ttl: Duration::from_secs(7 * 86400),
            windows_per_user: 12,
            global_windows_kept: 1440,
            abandoned_kept: 10_000,
            alerts_kept: 1000,
            timeout: Duration::from_secs(30),
            retry: RetryConfig::default(),
        }
    }
}

fn classify(e: redis::RedisError) -> StoreError {
    let retryable = !matches!(e.retry_method(), redis::RetryMethod::NoRetry);
    StoreError {
        message: e.to_string(),
        retryable,
    }
}

/// Escapes glob characters so that SCAN MATCH sees the prefix literally.
fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o.push('*');
    o
}

pub struct RedisSink {
    cfg: RedisConfig,
    name: String,
    streams: Vec<Stream>,
    client: redis::Client,
    con: Option<redis::Connection>,
    stage: FileStage,
}

impl RedisSink {
    pub fn new(cfg: RedisConfig) -> Result<RedisSink, StoreError> {
        let name = cfg.name.clone().unwrap_or_else(|| "redis".into());
        let streams = parse_streams(&name, &cfg.streams)?;
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| StoreError::fatal(format!("{name}: bad `url`: {e}")))?;
        let stage = FileStage::open(&require_stage_dir(&name, &cfg.stage_dir)?)?;
        Ok(RedisSink {
            cfg,
            name,
            streams,
            client,
            con: None,
            stage,
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.cfg.prefix.clone();
        for p in parts {
            k.push_str(p);
        }
        k
    }

    /// Runs `op` on a live connection until it succeeds, reconnecting after failures.
    fn run<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut redis::Connection) -> Result<T, StoreError>,
    ) -> Result<T, SinkError> {
        let (name, cfg, timeout) = (self.name.clone(), self.cfg.retry.clone(), self.cfg.timeout);
        let client = &self.client;
        let con = &mut self.con;
        retry(&name, &cfg, what, || {
            if con.is_none() {
                let c = client
                    .get_connection_with_timeout(timeout)
                    .map_err(classify)?;
                c.set_read_timeout(Some(timeout)).map_err(classify)?;
                c.set_write_timeout(Some(timeout)).map_err(classify)?;
                *con = Some(c);
            }
            let r = op(con.as_mut().expect("connected"));
            if r.as_ref().is_err_and(|e| e.retryable) {
                *con = None;
            }
            r
        })
    }

    fn committed_epoch(&mut self) -> Result<Option<u64>, SinkError> {
        let k = self.key(&["committed_epoch"]);
        self.run("read committed epoch", |c| {
            redis::cmd("GET")
                .arg(&k)
                .query::<Option<u64>>(c)
                .map_err(classify)
        })
    }

    fn ttl(p: &mut redis::Pipeline, key: &str, ttl: Duration) {
        if !ttl.is_zero() {
            p.cmd("PEXPIRE")
                .arg(key)
                .arg(ttl.as_millis() as u64)
                .ignore();
        }
    }

    /// The epoch's writes as one transaction.
    fn commands(&self, e: &StagedEpoch) -> Result<redis::Pipeline, StoreError> {
        let c = &self.cfg;
        let mut p = redis::pipe();
        p.atomic();
        // sorted sets trimmed once at the end, to their cap
        let mut trims: BTreeSet<(String, usize)> = BTreeSet::new();
        for (stream, _, line) in e.records() {
            if !self.streams.contains(&stream) {
                continue;
            }
            let r = Fields::parse(line)?;
            let text = |f: &str| {
                r.text(f).ok_or_else(|| {
                    StoreError::fatal(format!(
                        "{} record without `{f}`: {}",
                        stream.name(),
                        r.line
                    ))
                })
            };
            match stream {
                Stream::Carts => {
                    let k = self.key(&["cart:", &text("user_id")?]);
                    if r.cart_is_empty() {
                        p.cmd("DEL").arg(&k).ignore();
                    } else {
                        p.cmd("SET").arg(&k).arg(r.line).ignore();
                        Self::ttl(&mut p, &k, c.cart_ttl);
                    }
                }
                Stream::UserWindows | Stream::GlobalWindows => {
                    let end = text("window_end")?;
                    let (k, cap) = if stream == Stream::UserWindows {
                        (
                            self.key(&["user_windows:", &text("user_id")?]),
                            c.windows_per_user,
                        )
                    } else {
                        (self.key(&["global_windows"]), c.global_windows_kept)
                    };
                    // an update replaces the window's earlier result (same end, same window)
                    p.cmd("ZREMRANGEBYSCORE")
                        .arg(&k)
                        .arg(&end)
                        .arg(&end)
                        .ignore();
                    p.cmd("ZADD").arg(&k).arg(&end).arg(r.line).ignore();
                    if stream == Stream::UserWindows {
                        Self::ttl(&mut p, &k, c.window_ttl);
                    }
                    trims.insert((k, cap));
                }
                Stream::AbandonedCarts => {
                    let user = text("user_id")?;
                    let z = self.key(&["abandoned"]);
                    p.cmd("ZADD")
                        .arg(&z)
                        .arg(text("abandoned_at")?)
                        .arg(&user)
                        .ignore();
                    trims.insert((z, c.abandoned_kept));
                    let h = self.key(&["abandoned:", &user]);
                    p.cmd("DEL").arg(&h).ignore();
                    let mut hset = redis::cmd("HSET");
                    hset.arg(&h);
                    let s = schema::schema(Stream::AbandonedCarts).expect("known");
                    for f in s.fields {
                        let v = match f.kind {
                            Kind::Json => r.raw(f.name).map(str::to_string),
                            _ => r.text(f.name),
                        };
                        if let Some(v) = v {
                            hset.arg(f.name).arg(v);
                        }
                    }
                    p.add_command(hset).ignore();
                    Self::ttl(&mut p, &h, c.abandoned_ttl);
                }
                Stream::Alerts => {
                    let l = self.key(&["alerts"]);
                    p.cmd("LPUSH").arg(&l).arg(r.line).ignore();
                    p.cmd("LTRIM")
                        .arg(&l)
                        .arg(0)
                        .arg(c.alerts_kept.saturating_sub(1))
                        .ignore();
                    if let Some(id) = r.text("alert_id") {
                        let k = self.key(&["alert:", &id]);
                        p.cmd("SET").arg(&k).arg(r.line).ignore();
                        Self::ttl(&mut p, &k, c.alert_ttl);
                    }
                }
                // no website reads these from Redis
                _ => {}
            }
        }
        for (k, cap) in trims {
            p.cmd("ZREMRANGEBYRANK")
                .arg(&k)
                .arg(0)
                .arg(-(cap as i64) - 1)
                .ignore();
        }
        p.cmd("SET")
            .arg(self.key(&["committed_epoch"]))
            .arg(e.epoch)
            .ignore();
        Ok(p)
    }

    fn apply(&mut self, epoch: u64) -> Result<(), SinkError> {
        let Some(staged) = self
            .stage
            .read(epoch)
            .map_err(|e| sink_error(&self.name, e))?
        else {
            return Ok(());
        };
        if self.committed_epoch()?.is_some_and(|c| c >= epoch) {
            // applied before a crash that kept the staged file: only the cleanup is left
            return self
                .stage
                .done(epoch)
                .map_err(|e| sink_error(&self.name, e));
        }
        let p = self
            .commands(&staged)
            .map_err(|e| sink_error(&self.name, e))?;
        drop(staged);
        let ck = self.key(&["committed_epoch"]);
        let mut attempt = 0;
        self.run("commit", |c| {
            attempt += 1;
            if attempt > 1 {
                // the EXEC may have gone through before the connection failed
                let done: Option<u64> = redis::cmd("GET").arg(&ck).query(c).map_err(classify)?;
                if done.is_some_and(|d| d >= epoch) {
                    return Ok(());
                }
            }
            p.exec(c).map_err(classify)
        })?;
        self.stage
            .done(epoch)
            .map_err(|e| sink_error(&self.name, e))
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, stream: Stream) -> bool {
        self.streams.contains(&stream)
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError> {
        let roll = self
            .stage
            .recover(committed)
            .map_err(|e| sink_error(&self.name, e))?;
        match committed {
            None => {
                let pattern = glob_escape(&self.cfg.prefix);
                self.run("reset", |c| {
                    let mut cursor = 0u64;
                    loop {
                        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query(c)
                            .map_err(classify)?;
                        if !keys.is_empty() {
                            redis::cmd("UNLINK").arg(&keys).exec(c).map_err(classify)?;
                        }
                        if next == 0 {
                            return Ok(());
                        }
                        cursor = next;
                    }
                })?;
            }
            Some(c) => {
                if let Some(n) = self.committed_epoch()?.filter(|n| *n > c) {
                    tracing::warn!(
                        sink = self.name,
                        committed_in_store = n,
                        checkpoint = c,
                        "the store holds epochs newer than the checkpoint being restored; they are not undone"
                    );
                }
                for e in roll {
                    tracing::info!(sink = self.name, epoch = e, "rolling staged epoch forward");
                    self.apply(e)?;
                }
            }
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
        self.stage
            .write(epoch, stream, records)
            .map_err(|e| sink_error(&self.name, e))
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.stage
            .seal(epoch)
            .map_err(|e| sink_error(&self.name, e))
    }

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.apply(epoch)
    }
}
