//! Re-keying an input topic that is not partitioned by user, the way Kafka Streams does it:
//! every group member also runs a *repartitioner* — a consumer of the input topics (in a group
//! of its own, so Kafka spreads the input partitions over the members too) that copies each
//! message unchanged into an internal topic, keyed by the message's user id. The tasks then
//! read the internal topic, where all of a user's events share a partition.
//!
//! The copy is consume-transform-produce in Kafka transactions, one transactional producer
//! per input partition (as Kafka Streams' first exactly-once design does): the messages
//! copied from a partition and the partition's input offset (`send_offsets_to_transaction`)
//! commit together, so after a crash the input is re-read exactly from the last committed
//! copy. The transactional id names the partition, not the process, so the member that takes
//! a partition over fences the one that had it: `init_transactions` aborts the dead owner's
//! open transaction before the new owner reads the committed offset. That is what unblocks
//! `read_committed` readers of the internal topic on a broker that never times transactions
//! out (Tansu does not; Kafka does after `transaction.timeout.ms`), and it fences a paused
//! member that wakes up after losing its partitions. Where a broker shows aborted
//! transactions to `read_committed` readers anyway (Tansu does), a message may reach the
//! internal topic twice; the tasks' dedup on (user, event id) removes the copy, so the
//! results are unchanged as long as events carry ids (or identical bytes: a missing id is
//! derived from the record).
//!
//! A message that does not decode is copied too (without a key), so its dead letter, with the
//! reason, comes out of the task that reads it, like any other.

use crate::config::KafkaSourceConfig;
use crate::group::GroupError;
use cartpulse_model::Decoder;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);
/// A transaction is committed this often (or at a rebalance): the latency the extra hop adds.
const COMMIT_EVERY: Duration = Duration::from_millis(100);
const MAX_IN_TXN: usize = 20_000;

/// The internal topic of a config whose input is not keyed by user.
pub fn internal_topic(cfg: &KafkaSourceConfig) -> String {
    cfg.repartition_topic
        .clone()
        .unwrap_or_else(|| format!("{}.repartition", cfg.group_id))
}

type Part = (String, i32);

/// The copy of one owned input partition: its producer, in an open transaction, and the
/// input offset that transaction covers.
struct Lane {
    producer: ThreadedProducer<DefaultProducerContext>,
    next_offset: Option<i64>,
    produced: usize,
    started: Instant,
}

struct Ctx {
    cfg: KafkaSourceConfig,
    lanes: Mutex<HashMap<Part, Lane>>,
    failed: Mutex<Option<GroupError>>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let r = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            _ => {
                // what was copied from partitions about to go is committed before they go, or
                // their next owner copies it again
                let mut lanes = self.lanes.lock().expect("lanes");
                let r = lanes
                    .iter_mut()
                    .map(|(part, lane)| settle(consumer, part, lane, false))
                    .filter(|r| !r.as_ref().is_err_and(fenced))
                    .collect::<Result<(), _>>();
                lanes.clear();
                r.and(consumer.unassign().map_err(GroupError::from))
            }
        };
        if let Err(e) = r {
            self.failed.lock().expect("failed").get_or_insert(e);
        }
    }
}

impl Ctx {
    /// Takes the partitions over: first fences their previous owners (aborting whatever they
    /// left open), then reads the offsets committed with their last copies, then assigns.
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), GroupError> {
        let mut lanes = self.lanes.lock().expect("lanes");
        for e in tpl.elements() {
            let part = (e.topic().to_string(), e.partition());
            let producer = lane_producer(&self.cfg, &part)?;
            lanes.insert(
                part,
                Lane {
                    producer,
                    next_offset: None,
                    produced: 0,
                    started: Instant::now(),
                },
            );
        }
        let committed = consumer.committed_offsets(tpl.clone(), TIMEOUT)?;
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                tpl.set_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
            }
        }
        tracing::info!(
            partitions = lanes.len(),
            "repartitioner assigned its input partitions"
        );
        consumer.assign(tpl)?;
        Ok(())
    }
}

/// The producer of one input partition's copies, its transaction open.
fn lane_producer(
    cfg: &KafkaSourceConfig,
    (topic, partition): &Part,
) -> Result<ThreadedProducer<DefaultProducerContext>, GroupError> {
    let tid = format!("{}.repartition-{topic}-{partition}", cfg.group_id);
    let producer: ThreadedProducer<_> = cfg
        .plain_client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("transactional.id", &tid)
        // a member that dies leaves its transaction open until the partition's next owner
        // fences it or (on Kafka) this passes
        .set("transaction.timeout.ms", "10000")
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    producer.begin_transaction()?;
    Ok(producer)
}

/// Commits the lane's transaction with its input offset; with `again`, opens the next one.
fn settle(
    consumer: &BaseConsumer<Ctx>,
    (topic, partition): &Part,
    lane: &mut Lane,
    again: bool,
) -> Result<(), GroupError> {
    if let Some(o) = lane.next_offset {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, *partition, Offset::Offset(o))?;
        let gm = consumer.group_metadata().ok_or_else(|| GroupError::Task {
            task: "repartition".into(),
            why: "the consumer has no group metadata to commit offsets with".into(),
        })?;
        lane.producer
            .send_offsets_to_transaction(&tpl, &gm, TIMEOUT)?;
    }
    lane.producer.commit_transaction(TIMEOUT)?;
    lane.next_offset = None;
    lane.produced = 0;
    lane.started = Instant::now();
    if again {
        lane.producer.begin_transaction()?;
    }
    Ok(())
}

/// Whether a commit failed because another member owns the partition now.
fn fenced(e: &GroupError) -> bool {
    matches!(
        e,
        GroupError::Kafka(KafkaError::Transaction(t))
            if matches!(t.code(), RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// Creates the internal topic (as many partitions as the first input topic) when missing.
fn ensure_topic(cfg: &KafkaSourceConfig, topic: &str) -> Result<(), GroupError> {
    let probe: BaseConsumer = cfg.plain_client_config().create()?;
    let md = probe.fetch_metadata(Some(&cfg.topics[0]), TIMEOUT)?;
    let parts = match (cfg.repartition_partitions, md.topics().first()) {
        (Some(n), _) => n,
        (None, Some(t)) if !t.partitions().is_empty() => t.partitions().len() as i32,
        _ => {
            return Err(GroupError::Task {
                task: "repartition".into(),
                why: format!(
                    "input topic `{}` has no partitions (does it exist?)",
                    cfg.topics[0]
                ),
            })
        }
    };
    crate::admin::create_topics(
        &cfg.plain_client_config(),
        &[(topic, parts, cfg.repartition_replication)],
        TIMEOUT,
    )
    .map_err(|why| GroupError::Task {
        task: "repartition".into(),
        why: format!("internal topic: {why}"),
    })?;
    Ok(())
}

/// Starts the repartitioner of this process; it runs until `stop` is set, then commits what
/// it copied and leaves its group.
pub(crate) fn start(
    cfg: &KafkaSourceConfig,
    decoder: Decoder,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<(), GroupError>>, GroupError> {
    let topic = internal_topic(cfg);
    ensure_topic(cfg, &topic)?;
    let ctx = Ctx {
        cfg: cfg.clone(),
        lanes: Mutex::new(HashMap::new()),
        failed: Mutex::new(None),
    };
    let mut cc = cfg.client_config();
    cc.set("group.id", format!("{}.repartition", cfg.group_id))
        // the group's offsets move only inside the transactions
        .set("enable.auto.commit", "false")
        // no end-of-partition events: nothing here waits for the end of the input
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "0");
    let consumer: BaseConsumer<Ctx> = cc.create_with_context(ctx)?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let th = std::thread::Builder::new()
        .name("repartition".into())
        .spawn(move || run(consumer, decoder, topic, stop))
        .map_err(|e| GroupError::Task {
            task: "repartition".into(),
            why: e.to_string(),
        })?;
    Ok(th)
}

fn run(
    consumer: BaseConsumer<Ctx>,
    decoder: Decoder,
    topic: String,
    stop: Arc<AtomicBool>,
) -> Result<(), GroupError> {
    let mut copied = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let polled = consumer.poll(Duration::from_millis(20));
        if let Some(e) = consumer.context().failed.lock().expect("failed").take() {
            return Err(e);
        }
        let mut lanes = consumer.context().lanes.lock().expect("lanes");
        match polled {
            Some(Ok(m)) => {
                // a message of a partition that has no lane was fenced away from this member;
                // its new owner copies it
                if let Some(lane) = lanes.get_mut(&(m.topic().to_string(), m.partition())) {
                    copy(lane, &decoder, &topic, m.payload().unwrap_or(&[]))?;
                    lane.next_offset = Some(m.offset() + 1);
                    copied += 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "repartition consumer error"),
        }
        let mut lost = Vec::new();
        for (part, lane) in lanes.iter_mut() {
            if lane.produced >= MAX_IN_TXN
                || (lane.produced > 0 && lane.started.elapsed() >= COMMIT_EVERY)
            {
                match settle(&consumer, part, lane, true) {
                    Ok(()) => {}
                    Err(e) if fenced(&e) => {
                        tracing::warn!(
                            topic = %part.0,
                            partition = part.1,
                            "another member took this input partition over; its copy is theirs"
                        );
                        lost.push(part.clone());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for part in lost {
            lanes.remove(&part);
        }
    }
    let mut lanes = consumer.context().lanes.lock().expect("lanes");
    for (part, lane) in lanes.iter_mut() {
        match settle(&consumer, part, lane, false) {
            // taken over while stopping: the new owner copies it
            Err(e) if !fenced(&e) => return Err(e),
            _ => {}
        }
    }
    lanes.clear();
    drop(lanes);
    consumer.unsubscribe();
    tracing::info!(copied, "repartitioner stopped");
    Ok(())
}

/// Sends one input message to the internal topic, keyed by its user when it decodes.
fn copy(lane: &mut Lane, decoder: &Decoder, topic: &str, payload: &[u8]) -> Result<(), GroupError> {
    let user = decoder.decode(payload).ok().map(|e| e.user_id);
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
    if let Some(u) = &user {
        rec = rec.key(u.as_bytes());
    }
    loop {
        match lane.producer.send(rec) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
    lane.produced += 1;
    Ok(())
}
