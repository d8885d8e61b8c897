//! Wiring: source reader → decoders → shards → committer.
//!
//! ```text
//!             chunk k            sub-batch (k, shard s)
//!  reader ──────────────► decoder k%P ──────────────► shard s ──► committer ──► sinks
//!    │  barrier k (position)                                         ▲   checkpoint store
//!    └───────────────────────────────────────────────────────────────┘
//! ```
//! Every channel is bounded, so a slow stage stalls the stages before it instead of
//! growing memory. Decoder `j` handles chunks `k ≡ j (mod P)` and shards read decoders
//! round-robin, which keeps source order without a reorder buffer.

use crate::checkpoint::CheckpointStore;
use crate::clock::{Clock, SystemClock};
use crate::committer::{CommitSummary, Committer, ToCommitter};
use crate::config::{ms, PipelineConfig};
use crate::error::EngineError;
use crate::live::{CartView, LiveState, Query, ShardStats};
use crate::metrics::Metrics;
use crate::operator::{OpBatch, OpRequest, Operator};
use crate::output::Stream;
use crate::shard::{ChunkEnd, Routed, Shard, ShardSettings, SubBatch};
use crate::sink::Sink;
use crate::source::{Poll, Source, SourceChunk};
use crate::stage::Stage;
use crate::state::KeyGroupState;
use cartpulse_model::keys::{groups_of, key_group, key_hash, shard_of};
use cartpulse_model::{DeadLetter, Decoder};
use compact_str::CompactString;
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a finished run reports.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Checkpoint the run resumed from.
    pub restored_from: Option<u64>,
    /// The checkpoint directory already held a finished run; nothing was done.
    pub already_finished: bool,
    pub commit: CommitSummary,
    pub elapsed: Duration,
}

pub struct Pipeline {
    pub config: PipelineConfig,
    pub source: Box<dyn Source>,
    pub sinks: Vec<Box<dyn Sink>>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// The analytics stage's logic (rules, funnels, models), if any.
    pub operator: Option<Box<dyn Operator>>,
    /// A shared copy of the checkpoints (object store), the commit point when set.
    pub replica: Option<Arc<dyn crate::checkpoint::CheckpointReplica>>,
    /// Product and user tables joined onto each event as it is decoded.
    pub enricher: Option<Arc<crate::enrich::Enricher>>,
}

impl Pipeline {
    pub fn new(config: PipelineConfig, source: Box<dyn Source>, sinks: Vec<Box<dyn Sink>>) -> Self {
        Pipeline {
            config,
            source,
            sinks,
            metrics: Arc::new(Metrics::new()),
            clock: Arc::new(SystemClock),
            operator: None,
            replica: None,
            enricher: None,
        }
    }

    /// Checkpoints also go to `r`, whose manifest becomes the commit point, and a start
    /// restores from it (see [`crate::checkpoint::CheckpointReplica`]).
    pub fn with_checkpoint_replica(
        mut self,
        r: Arc<dyn crate::checkpoint::CheckpointReplica>,
    ) -> Self {
        self.replica = Some(r);
        self
    }

    /// Joins `e`'s tables onto every decoded event (its metrics join this pipeline's).
    pub fn with_enricher(mut self, e: Arc<crate::enrich::Enricher>) -> Self {
        e.register(&self.metrics.registry);
        self.enricher = Some(e);
        self
    }

    /// Runs `op` as the analytics stage after the shards.
    pub fn with_operator(mut self, op: Box<dyn Operator>) -> Self {
        self.operator = Some(op);
        self
    }

    /// Runs to the end of input.
    pub fn run(self) -> Result<RunSummary, EngineError> {
        self.start()?.join()
    }

    /// Starts every thread and returns at once.
    pub fn start(self) -> Result<Handle, EngineError> {
        let Pipeline {
            config: cfg,
            mut source,
            mut sinks,
            metrics,
            clock,
            mut operator,
            replica,
            enricher,
        } = self;
        cfg.validate()?;
        let started = Instant::now();
        let live = Arc::new(LiveState::default());
        let stop = Arc::new(AtomicBool::new(false));

        let store = match (&cfg.checkpoint.dir, replica) {
            (Some(d), Some(r)) => Some(CheckpointStore::open_replicated(
                d,
                cfg.checkpoint.retain,
                r,
            )?),
            (Some(d), None) => Some(CheckpointStore::open(d, cfg.checkpoint.retain)?),
            (None, _) => None,
        };
        let restored = match &store {
            Some(s) => s.restore_latest(cfg.key_groups)?,
            None => None,
        };
        let restored_id = restored.as_ref().map(|r| r.meta.id);
        if restored.as_ref().is_some_and(|r| r.meta.finished) {
            tracing::info!(
                checkpoint = restored_id,
                "input already fully processed; nothing to do"
            );
            for s in &mut sinks {
                s.recover(restored_id)?;
            }
            let summary = RunSummary {
                restored_from: restored_id,
                already_finished: true,
                commit: CommitSummary {
                    last_checkpoint: restored_id,
                    finished: true,
                    ..Default::default()
                },
                elapsed: started.elapsed(),
            };
            live.inner.lock().expect("lock").finished = true;
            return Ok(Handle {
                api: Api {
                    metrics,
                    live,
                    queries: Vec::new(),
                    key_groups: cfg.key_groups,
                    op_requests: None,
                },
                stop,
                join: std::thread::spawn(move || Ok(summary)),
            });
        }
        if let Some(r) = &restored {
            tracing::info!(
                checkpoint = r.meta.id,
                groups = r.groups.len(),
                "restoring state"
            );
        }
        if let (Some(op), Some(bytes)) = (
            operator.as_mut(),
            restored.as_ref().and_then(|r| r.operator.as_ref()),
        ) {
            op.restore(bytes).map_err(|why| {
                EngineError::Failed(format!("cannot restore the analytics stage: {why}"))
            })?;
        }
        source.open(restored.as_ref().map(|r| &r.meta.position))?;
        for s in &mut sinks {
            s.recover(restored_id)?;
        }
        let decoder = source.decoder();
        let source_name = source.name().to_string();
        let source_max = restored.as_ref().map_or(i64::MIN, |r| r.meta.source_max);
        let mut groups = restored.map(|r| r.groups).unwrap_or_default();

        let n = cfg.shards;
        let p = cfg.parsers();
        let kgs = cfg.key_groups;
        let mut settings = ShardSettings::from_config(&cfg);
        settings.emit_events = sinks.iter().any(|s| s.wants(Stream::Events));
        settings.emit_carts = sinks.iter().any(|s| s.wants(Stream::Carts));
        let (ctx, crx) = bounded::<ToCommitter>(n * 64);
        let (ack_tx, ack_rx) = bounded::<(u64, Value)>(1024);

        // decoder j → shard s channels
        let mut shard_inputs: Vec<Vec<Receiver<SubBatch>>> = (0..n).map(|_| Vec::new()).collect();
        // buffers flow back upstream once used, so steady state allocates nothing new
        let (event_bufs_tx, event_bufs_rx): (Vec<_>, Vec<_>) =
            (0..p).map(|_| bounded::<Vec<Routed>>(4 * n)).unzip();
        let (chunk_bufs_tx, chunk_bufs_rx) = bounded::<Vec<u8>>(2 * p + 2);
        let mut decoder_outputs: Vec<Vec<Sender<SubBatch>>> = Vec::new();
        for _ in 0..p {
            let mut outs = Vec::new();
            for inputs in shard_inputs.iter_mut() {
                let (tx, rx) = bounded(cfg.channel_capacity);
                outs.push(tx);
                inputs.push(rx);
            }
            decoder_outputs.push(outs);
        }

        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut queries = Vec::new();
        let mut op_txs = Vec::new();
        let mut op_rxs = Vec::new();
        if operator.is_some() {
            for _ in 0..n {
                let (tx, rx) = bounded::<OpBatch>(cfg.channel_capacity.max(4));
                op_txs.push(tx);
                op_rxs.push(rx);
            }
        }
        let op_requests = operator.take().map(|op| {
            let (rtx, rrx) = bounded::<OpRequest>(64);
            let stage = Stage {
                id: n,
                op,
                snapshots: settings.snapshots,
                tx: ctx.clone(),
            };
            let inputs = std::mem::take(&mut op_rxs);
            threads.push(spawn("analytics".into(), move || stage.run(inputs, rrx)));
            rtx
        });
        for (s, inputs) in shard_inputs.into_iter().enumerate() {
            let range = groups_of(s as u32, kgs, n as u32);
            let owned: Vec<KeyGroupState> = range
                .clone()
                .map(|g| groups.remove(&g).unwrap_or_default())
                .collect();
            let mut shard = Shard::new(
                s,
                settings.clone(),
                range.start,
                owned,
                source_max,
                ctx.clone(),
                metrics.clone(),
            );
            if let Some(tx) = op_txs.get(s) {
                shard = shard.with_operator(tx.clone());
            }
            let (qtx, qrx) = bounded::<Query>(64);
            queries.push(qtx);
            let recycle = event_bufs_tx.clone();
            threads.push(spawn(format!("shard-{s}"), move || {
                shard.run(inputs, qrx, recycle)
            }));
        }

        let mut job_txs = Vec::new();
        for ((j, outs), event_bufs) in decoder_outputs.into_iter().enumerate().zip(event_bufs_rx) {
            let (jtx, jrx) = bounded::<Job>(2);
            job_txs.push(jtx);
            let dec = DecoderTask {
                event_bufs,
                chunk_bufs: chunk_bufs_tx.clone(),
                decoder: decoder.clone(),
                source_name: source_name.clone(),
                key_groups: kgs,
                outs,
                metrics: metrics.clone(),
                enricher: enricher.clone(),
            };
            threads.push(spawn(format!("decode-{j}"), move || dec.run(jrx)));
        }

        let reader = Reader {
            source,
            jobs: job_txs,
            committer: ctx.clone(),
            acks: ack_rx,
            stop: stop.clone(),
            clock: clock.clone(),
            chunk_bytes: cfg.chunk_bytes,
            interval: cfg.checkpoint.interval,
            idle_timeout: cfg.idle_timeout,
            next_checkpoint: restored_id.map_or(1, |c| c + 1),
            metrics: metrics.clone(),
            chunk_bufs: chunk_bufs_rx,
        };
        let reader_thread = spawn("reader".into(), move || reader.run());
        drop(ctx);

        let with_stage = op_requests.is_some();
        let mut committer = Committer::new(
            n,
            restored_id.map_or(1, |c| c + 1),
            source_max.saturating_sub(settings.bound),
            sinks,
            store,
            source_name,
            kgs,
            ms(cfg.allowed_lateness),
            metrics.clone(),
            live.clone(),
            clock,
            ack_tx,
        );
        if with_stage {
            committer = committer.with_stage();
        }
        let join = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                let r = committer.run(crx);
                // on failure the other threads unblock as their channels close
                drop(threads);
                if r.is_ok() {
                    // the reader hands the final checkpoint's completion to the source (and
                    // gives up within a minute): the run is over when the source knows
                    let _ = reader_thread.join();
                }
                r.map(|commit| RunSummary {
                    restored_from: restored_id,
                    already_finished: false,
                    commit,
                    elapsed: started.elapsed(),
                })
            })
            .expect("spawn committer");
        Ok(Handle {
            api: Api {
                metrics,
                live,
                queries,
                key_groups: kgs,
                op_requests,
            },
            stop,
            join,
        })
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn pipeline thread")
}

/// A running pipeline.
pub struct Handle {
    pub api: Api,
    stop: Arc<AtomicBool>,
    join: JoinHandle<Result<RunSummary, EngineError>>,
}

/// Read access to a running pipeline, cheap to clone into request handlers.
#[derive(Clone)]
pub struct Api {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
    queries: Vec<Sender<Query>>,
    key_groups: u32,
    op_requests: Option<Sender<OpRequest>>,
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Handle {
    /// Asks for a graceful stop: a last checkpoint of the state as it is, then exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    pub fn join(self) -> Result<RunSummary, EngineError> {
        self.join
            .join()
            .map_err(|_| EngineError::Failed("committer thread panicked".into()))?
    }
}

impl Api {
    /// Asks the analytics stage (`None` when the pipeline has none or it does not answer in
    /// time); see `Operator::request`.
    pub fn analytics(&self, kind: &str, body: Value) -> Option<Result<Value, String>> {
        let tx = self.op_requests.as_ref()?;
        let (reply, rx) = bounded(1);
        tx.send_timeout(
            OpRequest {
                kind: kind.to_string(),
                body,
                reply,
            },
            QUERY_TIMEOUT,
        )
        .ok()?;
        rx.recv_timeout(QUERY_TIMEOUT).ok()
    }

    pub fn cart(&self, user: &str) -> Option<CartView> {
        if self.queries.is_empty() {
            return None;
        }
        let kg = key_group(key_hash(user.as_bytes()), self.key_groups);
        let s = shard_of(kg, self.key_groups, self.queries.len() as u32) as usize;
        let (tx, rx) = bounded(1);
        self.queries[s]
            .send_timeout(
                Query::Cart {
                    user: CompactString::from(user),
                    reply: tx,
                },
                QUERY_TIMEOUT,
            )
            .ok()?;
        rx.recv_timeout(QUERY_TIMEOUT).ok().flatten()
    }

    /// Products by quantity held in carts, largest first.
    pub fn top_holds(&self, n: usize) -> Vec<(CompactString, i64)> {
        let mut all: hashbrown::HashMap<CompactString, i64> = hashbrown::HashMap::new();
        for q in &self.queries {
            let (tx, rx) = bounded(1);
            if q.send_timeout(Query::Holds { reply: tx }, QUERY_TIMEOUT)
                .is_ok()
            {
                if let Ok(v) = rx.recv_timeout(QUERY_TIMEOUT) {
                    for (k, c) in v {
                        *all.entry(k).or_insert(0) += c;
                    }
                }
            }
        }
        let mut v: Vec<_> = all.into_iter().filter(|(_, c)| *c > 0).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.queries
            .iter()
            .filter_map(|q| {
                let (tx, rx) = bounded(1);
                q.send_timeout(Query::Stats { reply: tx }, QUERY_TIMEOUT)
                    .ok()?;
                rx.recv_timeout(QUERY_TIMEOUT).ok()
            })
            .collect()
    }
}

struct Job {
    seq: u64,
    chunk: SourceChunk,
    barrier: Option<u64>,
    end: ChunkEnd,
    /// Event time implied by an idle source (wall clock), folded into the chunk maximum.
    tick_max: i64,
    read_at: Instant,
}

struct Reader {
    source: Box<dyn Source>,
    jobs: Vec<Sender<Job>>,
    committer: Sender<ToCommitter>,
    acks: Receiver<(u64, Value)>,
    stop: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    chunk_bytes: usize,
    interval: Duration,
    idle_timeout: Option<Duration>,
    next_checkpoint: u64,
    metrics: Arc<Metrics>,
    chunk_bufs: Receiver<Vec<u8>>,
}

impl Reader {
    fn run(mut self) {
        if let Err(e) = self.read() {
            let _ = self.committer.send(ToCommitter::Failed(e));
        }
    }

    fn read(&mut self) -> Result<(), String> {
        let mut seq = 0u64;
        let mut last_barrier = Instant::now();
        let mut last_data = Instant::now();
        loop {
            while let Ok((id, pos)) = self.acks.try_recv() {
                self.source
                    .checkpoint_complete(id, &pos)
                    .map_err(|e| e.to_string())?;
            }
            if self.stop.load(Ordering::SeqCst) {
                self.send(
                    &mut seq,
                    SourceChunk::default(),
                    true,
                    ChunkEnd::Stop,
                    i64::MIN,
                )?;
                return self.await_final_ack();
            }
            while let Ok(buf) = self.chunk_bufs.try_recv() {
                self.source.recycle(buf);
            }
            let due = last_barrier.elapsed() >= self.interval;
            if let Some(lag) = self.source.lag() {
                self.metrics.source_lag.set(lag as i64);
            }
            match self
                .source
                .poll(self.chunk_bytes)
                .map_err(|e| e.to_string())?
            {
                Poll::Chunk(c) => {
                    last_data = Instant::now();
                    self.send(&mut seq, c, due, ChunkEnd::No, i64::MIN)?;
                }
                Poll::Idle => {
                    let idle = self.idle_timeout.filter(|t| last_data.elapsed() >= *t);
                    if idle.is_some() || due {
                        // an idle live source lets event time follow the wall clock
                        let tick = if idle.is_some() {
                            self.clock.now_ms()
                        } else {
                            i64::MIN
                        };
                        self.send(&mut seq, SourceChunk::default(), due, ChunkEnd::No, tick)?;
                    }
                }
                Poll::End => {
                    self.send(
                        &mut seq,
                        SourceChunk::default(),
                        true,
                        ChunkEnd::Flush,
                        i64::MIN,
                    )?;
                    return self.await_final_ack();
                }
            }
            if due {
                last_barrier = Instant::now();
            }
        }
    }

    /// Waits for the final checkpoint to complete and tells the source: a queue-like source
    /// acknowledges upstream only then, so without it a clean stop would leave its last
    /// messages to be delivered again (harmless with dedup, but not clean). Gives up when the
    /// committer ends without it (it failed, or checkpoints are off) or after a minute.
    fn await_final_ack(&mut self) -> Result<(), String> {
        let last = self.next_checkpoint.saturating_sub(1);
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok((id, pos)) = self
            .acks
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.source
                .checkpoint_complete(id, &pos)
                .map_err(|e| e.to_string())?;
            if id >= last {
                break;
            }
        }
        Ok(())
    }

    fn send(
        &mut self,
        seq: &mut u64,
        chunk: SourceChunk,
        barrier: bool,
        end: ChunkEnd,
        tick_max: i64,
    ) -> Result<(), String> {
        let barrier = if barrier {
            let id = self.next_checkpoint;
            self.next_checkpoint += 1;
            self.committer
                .send(ToCommitter::Barrier {
                    checkpoint: id,
                    position: self.source.position(),
                    finished: end == ChunkEnd::Flush,
                    injected: Instant::now(),
                })
                .map_err(|_| "committer is gone")?;
            Some(id)
        } else {
            None
        };
        self.metrics.source_bytes.inc_by(chunk.data.len() as u64);
        let j = (*seq % self.jobs.len() as u64) as usize;
        self.jobs[j]
            .send(Job {
                seq: *seq,
                chunk,
                barrier,
                end,
                tick_max,
                read_at: Instant::now(),
            })
            .map_err(|_| "decoder is gone".to_string())?;
        *seq += 1;
        Ok(())
    }
}

/// Counts one dead letter under its reason (a reason not in the list has no counter).
fn count_dead(counts: &mut [u64; crate::metrics::DEAD_LETTER_CODES], reason: &str) {
    if let Some(i) = crate::metrics::dead_letter_codes().position(|c| c == reason) {
        counts[i] += 1;
    }
}

struct DecoderTask {
    event_bufs: Receiver<Vec<Routed>>,
    chunk_bufs: Sender<Vec<u8>>,
    decoder: Decoder,
    source_name: String,
    key_groups: u32,
    outs: Vec<Sender<SubBatch>>,
    metrics: Arc<Metrics>,
    enricher: Option<Arc<crate::enrich::Enricher>>,
}

impl DecoderTask {
    fn run(self, jobs: Receiver<Job>) {
        let n = self.outs.len();
        // by `metrics::dead_letter_codes()`: decoding's reasons, then enrichment's
        let mut dead_counts = [0u64; crate::metrics::DEAD_LETTER_CODES];
        for job in jobs {
            let mut subs: Vec<SubBatch> = (0..n)
                .map(|_| SubBatch {
                    seq: job.seq,
                    events: self.event_bufs.try_recv().unwrap_or_default(),
                    dead: Vec::new(),
                    chunk_max: i64::MIN,
                    barrier: job.barrier,
                    end: job.end,
                    read_at: job.read_at,
                })
                .collect();
            let per_shard = job.chunk.data.len() / 160 / n + 16;
            for s in subs.iter_mut() {
                s.events.reserve(per_shard);
            }
            let dead_to = (job.seq % n as u64) as usize;
            let mut max_so_far = i64::MIN;
            let mut records = 0u64;
            let mut decoded = 0u64;
            // the tables as of this chunk: a reload in the middle of it is seen by the next
            let mut view = self.enricher.as_ref().map(|e| e.snapshot());
            let mut visit = |rec: &[u8], offset: u64, subs: &mut Vec<SubBatch>| {
                records += 1;
                let mut dead = |reason, detail, raw, original_len| {
                    count_dead(&mut dead_counts, reason);
                    subs[dead_to].dead.push(DeadLetter {
                        reason,
                        detail,
                        source: self.source_name.clone(),
                        position: offset.to_string(),
                        raw,
                        original_len,
                    });
                };
                let mut ev = match self.decoder.decode(rec) {
                    Ok(ev) => ev,
                    Err(e) => {
                        let (raw, original_len) = match e {
                            cartpulse_model::DecodeError::TooLong { limit, len } => {
                                (rec[..limit.min(rec.len())].to_vec(), Some(len))
                            }
                            _ => (rec.to_vec(), None),
                        };
                        return dead(e.code(), e.to_string(), raw, original_len);
                    }
                };
                if let Some(v) = &mut view {
                    if let Err(miss) = v.apply(&mut ev) {
                        return dead(miss.reason, miss.detail, rec.to_vec(), None);
                    }
                }
                decoded += 1;
                let user_hash = key_hash(ev.user_id.as_bytes());
                let kg = key_group(user_hash, self.key_groups);
                let s = shard_of(kg, self.key_groups, n as u32) as usize;
                let ts = ev.ts;
                // dedup is by (user, event id): copies of an event carry the same user, and
                // another user's event is never dropped for a reused id
                let id_hash =
                    xxhash_rust::xxh3::xxh3_64_with_seed(ev.event_id.as_bytes(), user_hash);
                subs[s].events.push(Routed {
                    kg,
                    pos: (records - 1) as u32,
                    id_hash,
                    user_hash,
                    max_before: max_so_far,
                    ev,
                });
                max_so_far = max_so_far.max(ts);
            };
            let data = &job.chunk.data;
            match &job.chunk.frames {
                Some(frames) => {
                    for (i, &(a, b)) in frames.iter().enumerate() {
                        // framed sources number records from `base_offset` (a Kafka offset,
                        // or 0: the index in the chunk)
                        visit(
                            &data[a as usize..b as usize],
                            job.chunk.base_offset + i as u64,
                            &mut subs,
                        );
                    }
                }
                None => {
                    let mut start = 0usize;
                    while start < data.len() {
                        let end =
                            memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
                        let mut line = &data[start..end];
                        if line.last() == Some(&b'\r') {
                            line = &line[..line.len() - 1];
                        }
                        if !line.iter().all(|c| c.is_ascii_whitespace()) {
                            visit(line, job.chunk.base_offset + start as u64, &mut subs);
                        }
                        start = end + 1;
                    }
                }
            }
            if let (Some(e), Some(v)) = (&self.enricher, &mut view) {
                e.record(v);
            }
            let _ = self.chunk_bufs.try_send(job.chunk.data);
            for d in job.chunk.dead {
                count_dead(&mut dead_counts, d.reason);
                subs[dead_to].dead.push(d);
            }
            let chunk_max = max_so_far.max(job.tick_max);
            self.metrics.source_records.inc_by(records);
            self.metrics.events_decoded.inc_by(decoded);
            for (c, code) in dead_counts
                .iter_mut()
                .zip(crate::metrics::dead_letter_codes())
            {
                if *c > 0 {
                    self.metrics
                        .dead_letters
                        .with_label_values(&[code])
                        .inc_by(*c);
                    *c = 0;
                }
            }
            for (s, mut sub) in subs.into_iter().enumerate() {
                sub.chunk_max = chunk_max;
                if self.outs[s].send(sub).is_err() {
                    return;
                }
            }
        }
    }
}
