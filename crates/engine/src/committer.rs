//! The committer: the single thread that turns shard output into durable, exactly-once
//! results.
//!
//! It merges the shards' partial global windows, stages every record into the sinks under
//! the epoch it belongs to, and completes a checkpoint once every shard has delivered its
//! snapshot for it: sinks pre-commit, the checkpoint and manifest are written (the commit
//! point), then sinks commit. A crash before the manifest discards the epoch's output on
//! restart; a crash after it rolls the commit forward.

use crate::checkpoint::{CheckpointMeta, CheckpointStore, SNAPSHOT_VERSION};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::live::{GlobalWindowView, LiveState, RECENT_WINDOWS};
use crate::metrics::Metrics;
use crate::output::{self, Records, Stream};
use crate::sink::Sink;
use crate::state::{Gauges, GlobalAgg};
use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

pub(crate) enum ToCommitter {
    Barrier {
        checkpoint: u64,
        position: Value,
        finished: bool,
        injected: Instant,
    },
    Records {
        shard: usize,
        records: Records,
    },
    Partial {
        start: i64,
        end: i64,
        agg: GlobalAgg,
    },
    Watermark {
        shard: usize,
        wm: i64,
        gauges: Gauges,
    },
    Snapshot {
        shard: usize,
        checkpoint: u64,
        source_max: i64,
        groups: Vec<(u32, Vec<u8>)>,
    },
    Done,
    Failed(String),
}

struct PendingCheckpoint {
    barrier: Option<(Value, bool, Instant)>,
    snapshots: Vec<crate::checkpoint::ShardSnapshot>,
    source_max: i64,
}

impl Default for PendingCheckpoint {
    fn default() -> Self {
        PendingCheckpoint {
            barrier: None,
            snapshots: Vec::new(),
            // nothing read yet: no watermark at all
            source_max: i64::MIN,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CommitSummary {
    pub last_checkpoint: Option<u64>,
    pub finished: bool,
    pub emitted: [u64; Stream::COUNT],
    pub checkpoints: u64,
}

pub(crate) struct Committer {
    pub shards: usize,
    /// Threads that snapshot at barriers and report `Done`: the shards, and the analytics
    /// stage when there is one (participant `shards`).
    pub participants: usize,
    pub epoch_of: Vec<u64>,
    pub sinks: Vec<Box<dyn Sink>>,
    pub store: Option<CheckpointStore>,
    pub source_name: String,
    pub key_groups: u32,
    pub lateness: i64,
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
    pub clock: Arc<dyn Clock>,
    pub acks: Sender<(u64, Value)>,
    pub latest_wm: Vec<i64>,
    pending: BTreeMap<u64, PendingCheckpoint>,
    /// Global windows waiting for every shard's watermark: (end, start) → merged partials.
    windows: BTreeMap<(i64, i64), GlobalAgg>,
    reports: Vec<VecDeque<(i64, Gauges)>>,
    epoch_counts: BTreeMap<u64, [u64; Stream::COUNT]>,
    summary: CommitSummary,
}

impl Committer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shards: usize,
        first_epoch: u64,
        initial_wm: i64,
        sinks: Vec<Box<dyn Sink>>,
        store: Option<CheckpointStore>,
        source_name: String,
        key_groups: u32,
        lateness: i64,
        metrics: Arc<Metrics>,
        live: Arc<LiveState>,
        clock: Arc<dyn Clock>,
        acks: Sender<(u64, Value)>,
    ) -> Self {
        Committer {
            shards,
            participants: shards,
            epoch_of: vec![first_epoch; shards],
            sinks,
            store,
            source_name,
            key_groups,
            lateness,
            metrics,
            live,
            clock,
            acks,
            latest_wm: vec![initial_wm; shards],
            pending: BTreeMap::new(),
            windows: BTreeMap::new(),
            reports: vec![VecDeque::new(); shards],
            epoch_counts: BTreeMap::new(),
            summary: CommitSummary::default(),
        }
    }

    /// Adds the analytics stage as a checkpoint participant.
    pub fn with_stage(mut self) -> Self {
        self.participants = self.shards + 1;
        let first = self.epoch_of[0];
        self.epoch_of.push(first);
        self
    }

    pub fn run(mut self, rx: Receiver<ToCommitter>) -> Result<CommitSummary, EngineError> {
        self.live.inner.lock().expect("live lock").ready = true;
        let r = self.commit_loop(rx);
        self.live.inner.lock().expect("live lock").ready = false;
        r
    }

    fn commit_loop(&mut self, rx: Receiver<ToCommitter>) -> Result<CommitSummary, EngineError> {
        let mut done = 0;
        while done < self.participants || !self.pending.is_empty() {
            let Ok(msg) = rx.recv() else {
                return Err(EngineError::Failed(
                    "pipeline threads stopped before finishing".into(),
                ));
            };
            match msg {
                ToCommitter::Barrier {
                    checkpoint,
                    position,
                    finished,
                    injected,
                } => {
                    self.pending.entry(checkpoint).or_default().barrier =
                        Some((position, finished, injected));
                    self.try_complete(checkpoint)?;
                }
                ToCommitter::Records { shard, records } => {
                    let epoch = self.epoch_of[shard];
                    self.write(epoch, &records)?;
                }
                ToCommitter::Partial { start, end, agg } => {
                    self.windows.entry((end, start)).or_default().merge(&agg);
                }
                ToCommitter::Watermark { shard, wm, gauges } => {
                    self.latest_wm[shard] = wm;
                    self.reports[shard].push_back((wm, gauges));
                    self.complete_windows(self.epoch_of[shard])?;
                    let mut total = Gauges::default();
                    for r in &self.reports {
                        if let Some((_, g)) = r.back() {
                            total.add(g);
                        }
                    }
                    let min_wm = self.latest_wm.iter().copied().min().unwrap_or(i64::MIN);
                    self.metrics.watermark_ms.set(min_wm.clamp(0, i64::MAX));
                    if min_wm > 0 && min_wm < i64::MAX {
                        self.metrics
                            .watermark_lag_ms
                            .set(self.clock.now_ms() - min_wm);
                    }
                    self.metrics
                        .carts
                        .with_label_values(&["active"])
                        .set(total.active_carts);
                    self.metrics
                        .carts
                        .with_label_values(&["items"])
                        .set(total.items_in_carts);
                    self.metrics
                        .carts
                        .with_label_values(&["value"])
                        .set(total.value_in_carts.0);
                    let mut l = self.live.inner.lock().expect("live lock");
                    l.watermark = min_wm;
                    l.gauges = total;
                }
                ToCommitter::Snapshot {
                    shard,
                    checkpoint,
                    source_max,
                    groups,
                } => {
                    self.epoch_of[shard] = checkpoint + 1;
                    let p = self.pending.entry(checkpoint).or_default();
                    p.snapshots.push((shard, groups));
                    p.source_max = p.source_max.max(source_max);
                    self.try_complete(checkpoint)?;
                }
                ToCommitter::Done => done += 1,
                ToCommitter::Failed(why) => return Err(EngineError::Failed(why)),
            }
        }
        Ok(self.summary.clone())
    }

    fn write(&mut self, epoch: u64, records: &Records) -> Result<(), EngineError> {
        let counts = self.epoch_counts.entry(epoch).or_default();
        for s in Stream::ALL {
            let n = records.counts[s.index()];
            if n == 0 {
                continue;
            }
            counts[s.index()] += n;
            for sink in &mut self.sinks {
                if sink.wants(s) {
                    sink.write(epoch, s, &records.bufs[s.index()], n)?;
                }
            }
        }
        let abandoned = &records.bufs[Stream::AbandonedCarts.index()];
        if !abandoned.is_empty() {
            let mut l = self.live.inner.lock().expect("live lock");
            // only the tail can survive the bound, so parse only the tail
            for line in abandoned
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .rev()
                .take(crate::live::RECENT_ABANDONED)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if let Ok(v) = serde_json::from_slice(line) {
                    l.recent_abandoned.push_back(v);
                }
            }
            while l.recent_abandoned.len() > crate::live::RECENT_ABANDONED {
                l.recent_abandoned.pop_front();
            }
        }
        Ok(())
    }

    /// Emits every global window whose end (plus lateness) every shard has passed.
    fn complete_windows(&mut self, epoch: u64) -> Result<(), EngineError> {
        let min_wm = self.latest_wm.iter().copied().min().unwrap_or(i64::MIN);
        let mut recs = Records::default();
        while let Some((&(end, start), _)) = self.windows.first_key_value() {
            let thr = end.saturating_add(self.lateness);
            if thr > min_wm {
                break;
            }
            let agg = self.windows.pop_first().expect("non-empty").1;
            // carts-now as of the chunk at which each shard passed the window's end: the same
            // chunk for all shards, so the figure does not depend on the shard count
            let mut gauges = Gauges::default();
            for r in &mut self.reports {
                while r.len() > 1 && r[0].0 < thr {
                    r.pop_front();
                }
                if let Some((_, g)) = r.front() {
                    gauges.add(g);
                }
            }
            output::global_window(recs.begin(Stream::GlobalWindows), start, end, &agg, &gauges);
            let mut l = self.live.inner.lock().expect("live lock");
            l.recent_windows.push_back(GlobalWindowView {
                window_start: start,
                window_end: end,
                agg,
                gauges,
            });
            if l.recent_windows.len() > RECENT_WINDOWS {
                l.recent_windows.pop_front();
            }
        }
        // every open or future window ends after min_wm, so reports at or before it are
        // never needed again (the newest is kept for the carts-now total)
        for r in &mut self.reports {
            while r.len() > 1 && r[0].0 <= min_wm {
                r.pop_front();
            }
        }
        if !recs.is_empty() {
            self.write(epoch, &recs)?;
        }
        Ok(())
    }

    fn try_complete(&mut self, id: u64) -> Result<(), EngineError> {
        let ready = self
            .pending
            .get(&id)
            .is_some_and(|p| p.barrier.is_some() && p.snapshots.len() == self.participants);
        if !ready {
            return Ok(());
        }
        let p = self.pending.remove(&id).expect("present");
        let (position, finished, injected) = p.barrier.expect("checked");
        for sink in &mut self.sinks {
            sink.pre_commit(id)?;
        }
        if let Some(store) = &self.store {
            let meta = CheckpointMeta {
                id,
                source: self.source_name.clone(),
                position: position.clone(),
                source_max: p.source_max,
                key_groups: self.key_groups,
                snapshot_version: SNAPSHOT_VERSION,
                created_ms: self.clock.now_ms(),
                finished,
            };
            let bytes = store.write(&meta, &p.snapshots)?;
            self.metrics.checkpoint_bytes.set(bytes as i64);
            self.live
                .inner
                .lock()
                .expect("live lock")
                .last_checkpoint_bytes = Some(bytes);
        }
        for sink in &mut self.sinks {
            sink.commit(id)?;
        }
        self.metrics
            .checkpoint_duration
            .observe(injected.elapsed().as_secs_f64());
        self.metrics
            .checkpoints
            .with_label_values(&["completed"])
            .inc();
        let now = self.clock.now_ms();
        self.metrics.last_checkpoint_ms.set(now);
        if let Some(c) = self.epoch_counts.remove(&id) {
            for s in Stream::ALL {
                self.summary.emitted[s.index()] += c[s.index()];
                self.metrics
                    .emitted
                    .with_label_values(&[s.name()])
                    .inc_by(c[s.index()]);
            }
        }
        self.summary.last_checkpoint = Some(id);
        self.summary.finished = finished;
        self.summary.checkpoints += 1;
        {
            let mut l = self.live.inner.lock().expect("live lock");
            l.last_checkpoint = Some(id);
            l.last_checkpoint_ms = Some(now);
            l.last_checkpoint_duration_ms = Some(injected.elapsed().as_secs_f64() * 1e3);
            l.finished = finished;
        }
        let _ = self.acks.send((id, position));
        tracing::debug!(checkpoint = id, finished, "checkpoint complete");
        Ok(())
    }
}
