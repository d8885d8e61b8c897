//! Scale-out through a Kafka consumer group, the way Kafka Streams does it: every input
//! partition is a *task* — its own pipeline with its own state, watermark, checkpoint
//! directory and outputs — and Kafka's group protocol (not ours) decides which process runs
//! which task.
//!
//! One consumer thread per process polls Kafka and hands each partition's messages, framed
//! into chunks, to the task that owns it. A rebalance runs inside that poll:
//!
//! * **revoke** (eager protocol: everything this process holds): every task is stopped with
//!   a final checkpoint into the shared checkpoint store, its offset committed to Kafka, and
//!   only then is the partition released;
//! * **assign**: for every partition, the task's newest checkpoint says where to resume; the
//!   task restores exactly that state and the consumer is assigned at exactly that offset,
//!   so nothing is read twice or skipped, whichever process had the partition before.
//!
//! Results are per partition. Per-user figures need nothing more when the topic is keyed by
//! user (all of a user's events are in one partition). Global windows are partial per
//! partition and summed by a merge (`merge.rs`): their counts and sums add up exactly, and
//! since users do not span partitions, neither do distinct users.

use crate::config::KafkaSourceConfig;
use crate::source::{CommitQueue, Feed, PartitionSource, TaskId};
use cartpulse_engine::checkpoint::CheckpointStore;
use cartpulse_engine::metrics::Metrics;
use cartpulse_engine::{Handle, Pipeline, RunSummary, SourceChunk};
use cartpulse_model::Decoder;
use crossbeam_channel::{bounded, Sender};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Builds the pipeline of one task. The CLI implements it from the config file, giving each
/// task its own checkpoint directory (in a store every process of the group shares) and its
/// own output folders.
pub trait TaskFactory: Send + Sync {
    /// The task's checkpoint directory.
    fn checkpoint_dir(&self, task: &TaskId) -> PathBuf;
    /// A pipeline around `source` (sinks, analytics, settings), not yet started.
    fn build(
        &self,
        task: &TaskId,
        source: Box<dyn cartpulse_engine::Source>,
    ) -> Result<Pipeline, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("task {task}: {why}")]
    Task { task: String, why: String },
    #[error("[source] {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// What a finished group member reports.
#[derive(Debug, Default)]
pub struct GroupSummary {
    pub rebalances: u64,
    /// Tasks run to the end of their input (bounded mode) by this process.
    pub finished: Vec<String>,
}

struct Slot {
    id: TaskId,
    tx: Option<Sender<Feed>>,
    handle: Option<Handle>,
    position: Arc<AtomicI64>,
    buf: SourceChunk,
    frames: Vec<(u32, u32)>,
    next: i64,
    first_at: Option<Instant>,
}

impl Slot {
    fn pending(&self) -> bool {
        !self.frames.is_empty()
    }
}

struct Tasks {
    slots: Vec<Slot>,
    failure: Option<GroupError>,
    summary: GroupSummary,
}

struct GroupMetrics {
    lag: IntGaugeVec,
    tasks: IntGauge,
    rebalances: IntCounter,
    dropped: IntCounter,
}

impl GroupMetrics {
    fn new(m: &Metrics) -> Self {
        let lag = IntGaugeVec::new(
            Opts::new(
                "cartpulse_kafka_consumer_lag_messages",
                "Messages in a partition after the position of the task that owns it (from the fetch high-water mark)",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let tasks = IntGauge::new(
            "cartpulse_kafka_tasks",
            "Input partitions (tasks) this process owns",
        )
        .expect("valid metric");
        let rebalances = IntCounter::new(
            "cartpulse_kafka_rebalances_total",
            "Consumer group rebalances this process went through",
        )
        .expect("valid metric");
        let dropped = IntCounter::new(
            "cartpulse_kafka_messages_after_end_total",
            "Messages of partitions whose task already finished (bounded mode), not processed",
        )
        .expect("valid metric");
        for c in [
            Box::new(lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tasks.clone()),
            Box::new(rebalances.clone()),
            Box::new(dropped.clone()),
        ] {
            // a second group in one process shares the first one's series
            let _ = m.registry.register(c);
        }
        GroupMetrics {
            lag,
            tasks,
            rebalances,
            dropped,
        }
    }
}

pub struct GroupContext {
    cfg: KafkaSourceConfig,
    factory: Box<dyn TaskFactory>,
    metrics: Arc<Metrics>,
    gm: GroupMetrics,
    commits: CommitQueue,
    decoder: Decoder,
    tasks: Mutex<Tasks>,
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: Statistics) {
        let tasks = self.tasks.lock().expect("tasks");
        for s in &tasks.slots {
            let pos = s.position.load(Ordering::Relaxed);
            let Some(p) = stats
                .topics
                .get(&s.id.topic)
                .and_then(|t| t.partitions.get(&s.id.partition))
            else {
                continue;
            };
            // ListOffsets is not trusted (some brokers answer it wrongly); the high-water
            // mark of the last fetch response is
            if p.hi_offset >= 0 && pos >= 0 {
                self.gm
                    .lag
                    .with_label_values(&[&s.id.topic, &s.id.partition.to_string()])
                    .set((p.hi_offset - pos).max(0));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // the end of a partition is how bounded mode learns it caught up, not a problem
        if matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.gm.rebalances.inc();
        let mut tasks = self.tasks.lock().expect("tasks");
        tasks.summary.rebalances += 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, &mut tasks, tpl);
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(?err, "rebalance error: releasing every partition");
                }
                self.release_all(consumer, &mut tasks);
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
        }
    }
}

impl GroupContext {
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tasks: &mut Tasks,
        tpl: &mut TopicPartitionList,
    ) {
        let ids: Vec<TaskId> = tpl
            .elements()
            .iter()
            .map(|e| TaskId {
                topic: e.topic().to_string(),
                partition: e.partition(),
            })
            .collect();
        tracing::info!(
            partitions = %ids.iter().map(TaskId::name).collect::<Vec<_>>().join(","),
            "assigned"
        );
        for id in ids {
            match self.start_task(&id) {
                Ok((slot, offset)) => {
                    let o = offset.map_or(Offset::Stored, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&id.topic, id.partition, o) {
                        tasks.failure.get_or_insert(GroupError::Kafka(e));
                    }
                    tasks.slots.push(slot);
                }
                Err(why) => {
                    tasks.failure.get_or_insert(GroupError::Task {
                        task: id.name(),
                        why,
                    });
                }
            }
        }
        self.gm.tasks.set(tasks.slots.len() as i64);
        if let Err(e) = consumer.assign(tpl) {
            tasks.failure.get_or_insert(GroupError::Kafka(e));
        }
    }

    /// Restores the task's position from its checkpoint and starts its pipeline. A task
    /// whose checkpoint says it finished gets no pipeline; its messages are dropped.
    fn start_task(&self, id: &TaskId) -> Result<(Slot, Option<i64>), String> {
        let dir = self.factory.checkpoint_dir(id);
        let replica = match self.cfg.remote() {
            Some(r) => Some(Arc::new(crate::remote::Remote::new(&r, &id.name())?)
                as Arc<dyn cartpulse_engine::checkpoint::CheckpointReplica>),
            None => None,
        };
        // with a shared object store, the working copy is first made to match it
        let store = match &replica {
            Some(r) => CheckpointStore::open_replicated(&dir, 1, r.clone()),
            None => CheckpointStore::open(&dir, 1),
        }
        .map_err(|e| e.to_string())?;
        let meta = store.latest_meta().map_err(|e| e.to_string())?;
        let offset = meta
            .as_ref()
            .and_then(|m| PartitionSource::offset_of(&m.position));
        let finished = meta.as_ref().is_some_and(|m| m.finished);
        let mut slot = Slot {
            id: id.clone(),
            tx: None,
            handle: None,
            position: Arc::new(AtomicI64::new(offset.unwrap_or(-1))),
            buf: SourceChunk::default(),
            frames: Vec::new(),
            next: offset.unwrap_or(-1),
            first_at: None,
        };
        if finished {
            tracing::info!(task = %id.name(), "finished earlier; not restarted");
            return Ok((slot, offset));
        }
        let (tx, rx) = bounded(4);
        let source = PartitionSource::new(
            id.clone(),
            rx,
            offset,
            self.cfg.end_after_idle,
            self.cfg.commit_offsets.then(|| self.commits.clone()),
            self.decoder.clone(),
        );
        slot.position = source.position.clone();
        let mut pipeline = self.factory.build(id, Box::new(source))?;
        if pipeline.config.checkpoint.dir.as_deref() != Some(dir.as_path()) {
            return Err(format!(
                "the task's pipeline checkpoints into {:?}, not its checkpoint directory {}",
                pipeline.config.checkpoint.dir,
                dir.display()
            ));
        }
        // one registry for the whole process: counters add up over tasks
        pipeline.metrics = self.metrics.clone();
        if let Some(r) = replica {
            pipeline = pipeline.with_checkpoint_replica(r);
        }
        let handle = pipeline.start().map_err(|e| e.to_string())?;
        tracing::info!(task = %id.name(), offset = ?offset, "task started");
        slot.tx = Some(tx);
        slot.handle = Some(handle);
        Ok((slot, offset))
    }

    /// Stops every task with a final checkpoint (all at once, then waits for each), and
    /// commits their offsets before the partitions are given up.
    fn release_all(&self, consumer: &BaseConsumer<Self>, tasks: &mut Tasks) {
        for s in &mut tasks.slots {
            s.tx = None;
            if let Some(h) = &s.handle {
                h.stop();
            }
        }
        let slots = std::mem::take(&mut tasks.slots);
        for s in slots {
            self.gm
                .lag
                .remove_label_values(&[&s.id.topic, &s.id.partition.to_string()])
                .ok();
            if let Some(h) = s.handle {
                match h.join() {
                    Ok(r) => note_finished(&mut tasks.summary, &s.id, &r),
                    Err(e) => {
                        tasks.failure.get_or_insert(GroupError::Task {
                            task: s.id.name(),
                            why: e.to_string(),
                        });
                    }
                }
            }
            tracing::info!(task = %s.id.name(), "task released");
        }
        self.gm.tasks.set(0);
        self.commit(consumer, CommitMode::Sync);
    }

    fn commit(&self, consumer: &BaseConsumer<Self>, mode: CommitMode) {
        let pending: Vec<(TaskId, i64)> = {
            let mut q = self.commits.lock().expect("commit queue");
            q.drain().collect()
        };
        if pending.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (id, o) in &pending {
            let _ = tpl.add_partition_offset(&id.topic, id.partition, Offset::Offset(*o));
        }
        // the checkpoint is what restarts resume from; a failed commit only delays what lag
        // tools show
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::debug!(error = %e, "offset commit failed");
        }
    }
}

fn note_finished(summary: &mut GroupSummary, id: &TaskId, r: &RunSummary) {
    if r.commit.finished && !r.already_finished {
        summary.finished.push(id.name());
    }
}

/// One member of the group: the consumer thread and the tasks it runs.
pub struct GroupMember {
    consumer: BaseConsumer<GroupContext>,
    stop: Arc<AtomicBool>,
    /// The re-keying copy of input not partitioned by user (repartition.rs).
    repartitioner: Repartitioner,
}

impl GroupMember {
    pub fn new(
        cfg: KafkaSourceConfig,
        factory: Box<dyn TaskFactory>,
        metrics: Arc<Metrics>,
        max_record_bytes: usize,
    ) -> Result<GroupMember, GroupError> {
        if let Some(r) = cfg.remote() {
            let why = |e: String| {
                GroupError::Config(crate::config::ConfigError {
                    key: "checkpoint_store".into(),
                    expected: format!("a checkpoint store that answers: {e}"),
                })
            };
            crate::remote::Remote::new(&r, "")
                .and_then(|s| s.probe())
                .map_err(why)?;
        }
        let gm = GroupMetrics::new(&metrics);
        let client = cfg.client_config();
        let decoder = cfg.decoder(max_record_bytes)?;
        let mut repartitioner = None;
        let mut cfg = cfg;
        if !cfg.keyed_by_user {
            let stop = Arc::new(AtomicBool::new(false));
            let th = crate::repartition::start(&cfg, decoder.clone(), stop.clone())?;
            repartitioner = Some((stop, th));
            // the tasks read the re-keyed copy
            cfg.topics = vec![crate::repartition::internal_topic(&cfg)];
        }
        let ctx = GroupContext {
            decoder,
            cfg,
            factory,
            metrics,
            gm,
            commits: Arc::default(),
            tasks: Mutex::new(Tasks {
                slots: Vec::new(),
                failure: None,
                summary: GroupSummary::default(),
            }),
        };
        let consumer: BaseConsumer<GroupContext> = client.create_with_context(ctx)?;
        let topics: Vec<&str> = consumer
            .context()
            .cfg
            .topics
            .iter()
            .map(String::as_str)
            .collect();
        consumer.subscribe(&topics)?;
        Ok(GroupMember {
            consumer,
            stop: Arc::new(AtomicBool::new(false)),
            repartitioner,
        })
    }

    /// Set to leave the group: every task checkpoints and the member exits.
    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Polls until stopped (or a task fails), then releases every task with a final
    /// checkpoint and leaves the group.
    pub fn run(mut self) -> Result<GroupSummary, GroupError> {
        let mut rep = self.repartitioner.take();
        let ctx = self.consumer.context();
        let flush_after = Duration::from_millis(20);
        let chunk_bytes = ctx.cfg.chunk_bytes;
        let single_topic = ctx.cfg.topics.len() == 1;
        let mut last_commit = Instant::now();
        let mut last_housekeeping = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let polled = self.consumer.poll(Duration::from_millis(50));
            let drained = polled.is_none();
            let mut tasks = ctx.tasks.lock().expect("tasks");
            if let Some(f) = tasks.failure.take() {
                drop(tasks);
                let _ = stop_repartitioner(&mut rep);
                self.shutdown();
                return Err(f);
            }
            if rep.as_ref().is_some_and(|(_, th)| th.is_finished()) {
                drop(tasks);
                let r = stop_repartitioner(&mut rep);
                self.shutdown();
                return Err(r.err().unwrap_or_else(|| GroupError::Task {
                    task: "repartition".into(),
                    why: "the repartitioner stopped".into(),
                }));
            }
            match polled {
                Some(Ok(m)) => {
                    let Some(slot) = tasks
                        .slots
                        .iter_mut()
                        .find(|s| s.id.partition == m.partition() && s.id.topic == m.topic())
                    else {
                        continue;
                    };
                    if slot.tx.is_none() {
                        ctx.gm.dropped.inc();
                        continue;
                    }
                    if slot.frames.is_empty() {
                        slot.buf.base_offset = m.offset().max(0) as u64;
                        slot.first_at = Some(Instant::now());
                    }
                    let payload = m.payload().unwrap_or(&[]);
                    let a = slot.buf.data.len() as u32;
                    slot.buf.data.extend_from_slice(payload);
                    slot.frames.push((a, slot.buf.data.len() as u32));
                    slot.next = m.offset() + 1;
                    if slot.buf.data.len() >= chunk_bytes {
                        send_chunk(slot);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // rdkafka names only the partition: with several topics every task of
                    // that number hears it, and the silence check in bounded mode covers
                    // the rest
                    for s in tasks.slots.iter_mut().filter(|s| s.id.partition == p) {
                        if single_topic || !s.pending() {
                            send_chunk(s);
                            if let Some(tx) = &s.tx {
                                let _ = tx.send(Feed::Eof);
                            }
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                None => {}
            }
            // Housekeeping (lingering chunks, ended tasks, offset commits) is per few
            // milliseconds, not per message: per message it cost more than the poll itself.
            let now = Instant::now();
            if !drained && now.duration_since(last_housekeeping) < HOUSEKEEPING {
                continue;
            }
            last_housekeeping = now;
            let Tasks {
                slots,
                failure,
                summary,
            } = &mut *tasks;
            for s in slots.iter_mut() {
                // a chunk goes when it is full, when Kafka has nothing more right now, or
                // after a short linger
                if drained
                    || s.first_at
                        .is_some_and(|t| now.duration_since(t) >= flush_after)
                {
                    send_chunk(s);
                }
                if s.handle.as_ref().is_some_and(Handle::is_finished) {
                    let h = s.handle.take().expect("checked");
                    s.tx = None;
                    match h.join() {
                        Ok(r) => {
                            tracing::info!(task = %s.id.name(), finished = r.commit.finished, "task ended");
                            note_finished(summary, &s.id, &r);
                        }
                        Err(e) => {
                            failure.get_or_insert(GroupError::Task {
                                task: s.id.name(),
                                why: e.to_string(),
                            });
                        }
                    }
                }
            }
            drop(tasks);
            if now.duration_since(last_commit) >= Duration::from_millis(200) {
                ctx.commit(&self.consumer, CommitMode::Async);
                last_commit = now;
            }
        }
        // the copy stops first, so what it copied is committed before the tasks' final
        // checkpoints
        let rep_result = stop_repartitioner(&mut rep);
        self.shutdown();
        let mut tasks = ctx.tasks.lock().expect("tasks");
        if let Some(f) = tasks.failure.take() {
            return Err(f);
        }
        rep_result?;
        Ok(std::mem::take(&mut tasks.summary))
    }

    fn shutdown(&self) {
        let ctx = self.consumer.context();
        let mut tasks = ctx.tasks.lock().expect("tasks");
        ctx.release_all(&self.consumer, &mut tasks);
        drop(tasks);
        self.consumer.unsubscribe();
    }
}

const HOUSEKEEPING: Duration = Duration::from_millis(5);

type Repartitioner = Option<(
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<(), GroupError>>,
)>;

fn stop_repartitioner(rep: &mut Repartitioner) -> Result<(), GroupError> {
    let Some((stop, th)) = rep.take() else {
        return Ok(());
    };
    stop.store(true, Ordering::SeqCst);
    th.join().unwrap_or_else(|_| {
        Err(GroupError::Task {
            task: "repartition".into(),
            why: "the repartitioner panicked".into(),
        })
    })
}

/// Hands the slot's buffered messages to its task; blocks while the task is saturated, so a
/// slow pipeline slows the consumer rather than growing memory.
fn send_chunk(slot: &mut Slot) {
    slot.first_at = None;
    if slot.frames.is_empty() {
        return;
    }
    let mut chunk = std::mem::take(&mut slot.buf);
    chunk.frames = Some(std::mem::take(&mut slot.frames));
    let Some(tx) = &slot.tx else { return };
    let _ = tx.send(Feed::Chunk {
        chunk,
        next: slot.next,
    });
}
