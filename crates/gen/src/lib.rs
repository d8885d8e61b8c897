//! `cartpulse-gen`: a seeded, realistic shopping-cart event simulator.
//!
//! The engine needs a stream whose ground truth is known — which accounts
//! hoard stock, which are click farms, which are bots — and whose transport
//! flaws (late and duplicated lines) are controlled, so detection quality and
//! watermark handling can be measured instead of guessed.  This crate makes
//! that stream, deterministically from a [`GenConfig`], fast enough (millions
//! of lines per second) that generating input is never the bottleneck of a
//! benchmark.
//!
//! # Line format
//!
//! One JSON object per `\n`-terminated line, keys in this fixed order:
//!
//! ```text
//! {"event_id":"e00000000042","ts":1764000000123,"user_id":"u000123","session_id":"s0000456","action":"add","sku":"p00789","qty":2,"price":19.99,"category":"c12","device_id":"d0000012","ip":"10.0.1.3"}
//! {"event_id":"e00000000043","ts":1764000000456,"user_id":"u000123","session_id":"s0000456","action":"checkout","order_id":"o000000007","device_id":"d0000012","ip":"10.0.1.3"}
//! ```
//!
//! * `view`, `add`, `remove`, `update_qty` carry `sku`, `qty`, `price`
//!   (unit price at event time, shortest exact decimal of integer cents) and
//!   `category`; `checkout` carries `order_id` instead.
//! * Cart semantics, per **user** (carts survive across sessions):
//!   `add` increases the line by `qty`; `remove` decreases it by `qty` (never
//!   more than is there); `update_qty` *sets* the line to `qty` (always > 0,
//!   only for a line that exists); `checkout` empties the cart.  `view` has
//!   `qty` 1.
//! * Ids are zero-padded counters that widen instead of wrapping.
//! * Lines are ordered by `ts` except that `out_of_order_rate` of them are
//!   held back by 1..=`max_delay_ms`, and `duplicate_rate` of them are sent a
//!   second time, byte-identical, 1–5 s later.  Every line's `ts` is at least
//!   `max ts seen so far - max_delay_ms - 5000`.

mod catalog;
mod config;
mod format;
mod queue;
mod sim;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use catalog::Product;
pub use config::{GenConfig, MAX_ENTITIES};

use format::{id_string, ip_string, write_line, Widths, DEVICE_ID_WIDTH, EVENT_ID_WIDTH};
use sim::{geom, ActorKind, Event, Sim};

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("invalid generator config: {0}")]
    InvalidConfig(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

/// Counters of what was emitted, for progress output and sanity checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GenStats {
    /// Lines emitted, duplicates included.
    pub events: u64,
    /// Lines that were re-sends of an earlier line.
    pub duplicates: u64,
    /// Lines emitted later than their timestamp order.
    pub delayed: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl GenStats {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Labels for scoring detectors.
///
/// Only actors that have emitted at least one line so far are listed, so a
/// detector is never blamed for missing an account it could not have seen
/// (a short stream covers only a few minutes of simulated time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub seed: u64,
    pub hoarders: Vec<String>,
    /// The hoarders that have put a hoarding quantity in a cart so far: the ones whose
    /// behaviour shows it (the others only browsed or bought normal amounts).
    #[serde(default)]
    pub hoarders_active: Vec<String>,
    /// All click-farm accounts, flattened from `click_farms`.
    pub click_farmers: Vec<String>,
    pub bots: Vec<String>,
    pub click_farms: Vec<ClickFarm>,
    pub price_changes: Vec<PriceChange>,
}

/// A group of accounts operated together from one device and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickFarm {
    pub accounts: Vec<String>,
    pub device_id: String,
    pub ip: String,
    /// Products the farm inflates.
    pub skus: Vec<String>,
}

/// Lets a consumer check prices: events with an id at or after
/// `from_event_id` carry the new price (timestamps alone are ambiguous when
/// several events share a millisecond).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChange {
    pub ts: i64,
    pub from_event_id: String,
    pub sku: String,
    pub old_price_cents: i64,
    pub new_price_cents: i64,
}

/// A line held back by the disorder stage.
struct Pending {
    line: Vec<u8>,
    ts: i64,
    user: u32,
    duplicate: bool,
}

/// Streaming generator: call [`Generator::next_line`] until it returns `None`.
pub struct Generator {
    cfg: GenConfig,
    sim: Sim,
    widths: Widths,
    /// Separate stream for transport flaws, so changing disorder settings
    /// leaves the simulated behaviour (and ground truth) untouched.
    drng: SmallRng,
    /// Next in-order event, waiting for earlier-due held-back lines.
    staged: Option<Event>,
    /// Held-back lines keyed by (emit-at ts, insertion seq).
    pending: BinaryHeap<Reverse<(i64, u64, u32)>>,
    slots: Vec<Pending>,
    free_slots: Vec<u32>,
    seq: u64,
    /// Event ids due for delay / duplication (geometric skips: one random
    /// draw per selected event instead of one per event).
    next_delay: u64,
    next_dup: u64,
    seen: Vec<bool>,
    stats: GenStats,
    created: Instant,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Result<Self, GenError> {
        cfg.validate()?;
        let sim = Sim::new(&cfg);
        let mut drng = SmallRng::seed_from_u64(cfg.seed ^ 0x5EED_D150_0DE7_u64);
        let next_delay = geom(&mut drng, cfg.out_of_order_rate);
        let next_dup = geom(&mut drng, cfg.duplicate_rate);
        Ok(Self {
            widths: Widths::new(cfg.users, cfg.products),
            seen: vec![false; cfg.users as usize],
            cfg,
            sim,
            drng,
            staged: None,
            pending: BinaryHeap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            seq: 0,
            next_delay,
            next_dup,
            stats: GenStats::default(),
            created: Instant::now(),
        })
    }

    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    /// Appends the next line (with trailing `'\n'`) to `buf` and returns its
    /// `ts`, or `None` once `cfg.events` lines were produced (never, when
    /// `cfg.events == 0`).  Appending lets callers batch many lines into one
    /// write.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> Option<i64> {
        if self.cfg.events != 0 && self.stats.events >= self.cfg.events {
            return None;
        }
        loop {
            if let Some(ev) = self.staged {
                if let Some(&Reverse((at, _, slot))) = self.pending.peek() {
                    if at <= ev.ts {
                        self.pending.pop();
                        return Some(self.emit_pending(slot, buf));
                    }
                }
                self.staged = None;
                let before = buf.len();
                write_line(buf, self.widths, &ev);
                self.account(buf.len() - before, ev.user);
                return Some(ev.ts);
            }
            let ev = self.sim.next_event();
            let delayed = ev.id == self.next_delay;
            if delayed {
                self.next_delay = ev
                    .id
                    .saturating_add(1)
                    .saturating_add(geom(&mut self.drng, self.cfg.out_of_order_rate));
            }
            let duplicated = ev.id == self.next_dup;
            if duplicated {
                self.next_dup = ev
                    .id
                    .saturating_add(1)
                    .saturating_add(geom(&mut self.drng, self.cfg.duplicate_rate));
            }
            if !delayed && !duplicated {
                self.staged = Some(ev);
                continue;
            }
            let emit_at = if delayed {
                ev.ts + self.drng.gen_range(1..=self.cfg.max_delay_ms)
            } else {
                ev.ts
            };
            let slot = self.alloc_slot(&ev);
            if duplicated {
                let dup_at = emit_at + self.drng.gen_range(1000..=5000);
                let dslot = if delayed {
                    let d = self.alloc_slot(&ev);
                    self.slots[d as usize].duplicate = true;
                    d
                } else {
                    self.slots[slot as usize].duplicate = true;
                    slot
                };
                self.push_pending(dup_at, dslot);
            }
            if delayed {
                self.push_pending(emit_at, slot);
            } else {
                self.staged = Some(ev);
            }
        }
    }

    fn alloc_slot(&mut self, ev: &Event) -> u32 {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Pending {
                    line: Vec::with_capacity(256),
                    ts: 0,
                    user: 0,
                    duplicate: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let p = &mut self.slots[slot as usize];
        p.line.clear();
        write_line(&mut p.line, self.widths, ev);
        p.ts = ev.ts;
        p.user = ev.user;
        p.duplicate = false;
        slot
    }

    fn push_pending(&mut self, at: i64, slot: u32) {
        self.seq += 1;
        self.pending.push(Reverse((at, self.seq, slot)));
    }

    fn emit_pending(&mut self, slot: u32, buf: &mut Vec<u8>) -> i64 {
        let p = &self.slots[slot as usize];
        buf.extend_from_slice(&p.line);
        let (len, ts, user, dup) = (p.line.len(), p.ts, p.user, p.duplicate);
        if dup {
            self.stats.duplicates += 1;
        } else {
            self.stats.delayed += 1;
        }
        self.free_slots.push(slot);
        self.account(len, user);
        ts
    }

    #[inline]
    fn account(&mut self, bytes: usize, user: u32) {
        self.stats.events += 1;
        self.stats.bytes += bytes as u64;
        self.seen[user as usize] = true;
    }

    /// Counters so far; `elapsed` is wall time since construction.
    pub fn stats(&self) -> GenStats {
        GenStats {
            elapsed: self.created.elapsed(),
            ..self.stats
        }
    }

    /// The catalogue with *current* prices.
    pub fn catalog(&self) -> &[Product] {
        &self.sim.cat.products
    }

    /// Formats a user index the way lines do, so callers can map ids.
    pub fn user_id(&self, user: u32) -> String {
        id_string(b'u', user as u64, self.widths.user)
    }

    pub fn ground_truth(&self) -> GroundTruth {
        let mut gt = GroundTruth {
            seed: self.cfg.seed,
            ..GroundTruth::default()
        };
        let seen = |u: &u32| self.seen[*u as usize];
        for a in &self.sim.actors {
            let ids: Vec<String> = a
                .users
                .iter()
                .filter(|u| seen(u))
                .map(|&u| self.user_id(u))
                .collect();
            if ids.is_empty() {
                continue;
            }
            match a.kind {
                ActorKind::Hoarder => {
                    if a.hoarded {
                        gt.hoarders_active.extend(ids.iter().cloned());
                    }
                    gt.hoarders.extend(ids)
                }
                ActorKind::Bot => gt.bots.extend(ids),
                ActorKind::Farm => {
                    gt.click_farmers.extend(ids.iter().cloned());
                    gt.click_farms.push(ClickFarm {
                        accounts: ids,
                        device_id: id_string(b'd', a.device as u64, DEVICE_ID_WIDTH),
                        ip: ip_string(a.ip),
                        skus: a
                            .targets
                            .iter()
                            .map(|&p| self.sim.cat.products[p as usize].sku.clone())
                            .collect(),
                    });
                }
            }
        }
        gt.price_changes = self
            .sim
            .price_changes
            .iter()
            .map(|c| PriceChange {
                ts: c.ts,
                from_event_id: id_string(b'e', c.from_event, EVENT_ID_WIDTH),
                sku: self.sim.cat.products[c.product as usize].sku.clone(),
                old_price_cents: c.old_cents,
                new_price_cents: c.new_cents,
            })
            .collect();
        gt
    }
}

/// Buffer size of [`write_file`]; large writes keep syscall overhead
/// negligible next to formatting.
const WRITE_BUF: usize = 1 << 20;

/// Writes `cfg.events` lines to `out` and, if asked, the ground truth as
/// pretty JSON to `truth`.
///
/// Generation stays on the calling thread; full 1 MiB buffers are handed to
/// a writer thread, because on a typical VM the kernel's page-cache copy
/// costs about as much CPU per byte as generating the bytes, and doing both
/// on one thread would halve throughput.
pub fn write_file(cfg: GenConfig, out: &Path, truth: Option<&Path>) -> Result<GenStats, GenError> {
    if cfg.events == 0 {
        return Err(GenError::InvalidConfig(
            "write_file needs a bounded stream (events > 0)".into(),
        ));
    }
    let started = Instant::now();
    let mut gen = Generator::new(cfg)?;
    let mut file = std::fs::File::create(out)?;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = std::thread::Builder::new()
        .name("cartpulse-gen-writer".into())
        .spawn(move || -> std::io::Result<()> {
            for mut b in full_rx {
                file.write_all(&b)?;
                b.clear();
                let _ = empty_tx.send(b);
            }
            file.flush()
        })?;
    let mut buf = Vec::with_capacity(WRITE_BUF + 4096);
    let mut writer_gone = false;
    while gen.next_line(&mut buf).is_some() {
        if buf.len() >= WRITE_BUF {
            let next = empty_rx
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(WRITE_BUF + 4096));
            if full_tx.send(std::mem::replace(&mut buf, next)).is_err() {
                writer_gone = true; // its error is reported by join below
                break;
            }
        }
    }
    if !writer_gone {
        let _ = full_tx.send(buf);
    }
    drop(full_tx);
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer thread panicked"))??;
    if let Some(path) = truth {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer_pretty(&mut f, &gen.ground_truth())?;
        f.write_all(b"\n")?;
        f.flush()?;
    }
    Ok(GenStats {
        elapsed: started.elapsed(),
        ..gen.stats()
    })
}
