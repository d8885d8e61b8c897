//! Output streams to Kafka topics (`{topic_prefix}{stream}`), keyed deterministically by the
//! same key the stores use (`cartpulse_stores::schema`: window + user, window, user +
//! abandonment time, alert id), so a compacted topic or a consumer keeps one value per result.
//!
//! Two modes, both with the idempotent producer (no duplicates from producer retries):
//!
//! * **at-least-once** (default): records are produced as they arrive and `pre_commit` waits
//!   until the broker acknowledged all of them. After a crash the replayed epoch is produced
//!   again, with the same keys and values.
//! * **transactional**: each epoch is staged in a local fsynced file (`pre_commit`), and
//!   `commit` produces it inside one Kafka transaction that also records the epoch as the
//!   committed offset of a marker group (`send_offsets_to_transaction`), atomically with the
//!   records. A commit replayed after a crash first asks the marker: an epoch already there
//!   is not produced again. The transactional id is per task, so the process that takes over
//!   a partition fences the one that had it (`init_transactions`).

use crate::config::KafkaSinkConfig;
use cartpulse_engine::{Sink, SinkError, Stream};
use cartpulse_stores::schema::{self, Fields};
use cartpulse_stores::stage::FileStage;
use cartpulse_stores::{retry, RetryConfig, StoreError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Remembers the first failed delivery since the last flush.
#[derive(Default)]
pub struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.failed
                .lock()
                .expect("deliveries")
                .get_or_insert_with(|| e.to_string());
        }
    }
}

pub struct KafkaSink {
    name: String,
    cfg: KafkaSinkConfig,
    /// Task this sink writes for (`topic-partition`), part of the transactional id and of
    /// the key of per-partition partial records (global windows).
    task: Option<String>,
    streams: Vec<Stream>,
    producer: Option<ThreadedProducer<Deliveries>>,
    stage: Option<FileStage>,
    stage_dir: Option<PathBuf>,
    marker: Option<BaseConsumer>,
    retry: RetryConfig,
}

fn kafka_err(e: KafkaError) -> StoreError {
    // a fenced or otherwise fatal producer cannot heal; anything else (broker down,
    // timeouts, a transaction to abort and redo) is worth another attempt
    let fatal = match &e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    };
    if fatal {
        StoreError::fatal(e.to_string())
    } else {
        StoreError::retryable(e.to_string())
    }
}

impl KafkaSink {
    /// `task` is the partition this sink's pipeline owns, in a consumer group; `stage_dir`
    /// is where transactional epochs are staged when the config names none.
    pub fn new(cfg: KafkaSinkConfig, task: Option<String>, stage_dir: Option<PathBuf>) -> Self {
        let streams = if cfg.streams.is_empty() {
            Stream::ALL
                .iter()
                .copied()
                .filter(|s| !s.opt_in())
                .collect()
        } else {
            Stream::ALL
                .iter()
                .copied()
                .filter(|s| cfg.streams.iter().any(|n| n == s.name()))
                .collect()
        };
        KafkaSink {
            name: "kafka".into(),
            stage_dir: cfg.stage_dir.clone().or(stage_dir),
            cfg,
            task,
            streams,
            producer: None,
            stage: None,
            marker: None,
            retry: RetryConfig::default(),
        }
    }

    fn topic(&self, s: Stream) -> String {
        format!("{}{}", self.cfg.topic_prefix, s.name())
    }

    fn transactional_id(&self) -> String {
        match &self.task {
            Some(t) => format!("{}-{t}", self.cfg.transactional_id_prefix),
            None => self.cfg.transactional_id_prefix.clone(),
        }
    }

    /// The marker: the committed offset of partition 0 of the first output topic, in a
    /// group named after the transactional id, holds the last committed epoch.
    fn marker_tpl(&self, epoch: Option<u64>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let topic = self.topic(self.streams[0]);
        let o = epoch.map_or(Offset::Invalid, |e| Offset::Offset(e as i64));
        let _ = tpl.add_partition_offset(&topic, 0, o);
        tpl
    }

    /// Creates the output topics that do not exist yet.
    fn create_topics(&self) -> Result<(), StoreError> {
        let names: Vec<String> = self.streams.iter().map(|s| self.topic(*s)).collect();
        let topics: Vec<(&str, i32, i32)> = names
            .iter()
            .map(|n| {
                (
                    n.as_str(),
                    self.cfg.topic_partitions,
                    self.cfg.replication_factor,
                )
            })
            .collect();
        crate::admin::create_topics(&self.cfg.client_config(None), &topics, TIMEOUT)
            .map_err(StoreError::retryable)
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        if self.cfg.create_topics {
            self.create_topics()?;
        }
        let tid = self.transactional_id();
        let txn = self.cfg.transactional;
        let producer: ThreadedProducer<Deliveries> = self
            .cfg
            .client_config(txn.then_some(tid.as_str()))
            .create_with_context(Deliveries::default())
            .map_err(kafka_err)?;
        if txn {
            // aborts whatever a previous owner of this id left open and fences it
            producer.init_transactions(TIMEOUT).map_err(kafka_err)?;
            let mut c = rdkafka::ClientConfig::new();
            for (k, v) in &self.cfg.properties {
                c.set(k, v);
            }
            let marker: BaseConsumer = c
                .set("bootstrap.servers", &self.cfg.brokers)
                .set("group.id", &tid)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(kafka_err)?;
            self.marker = Some(marker);
        }
        self.producer = Some(producer);
        Ok(())
    }

    fn committed_marker(&self) -> Result<Option<u64>, StoreError> {
        let m = self.marker.as_ref().expect("connected");
        let tpl = m
            .committed_offsets(self.marker_tpl(None), TIMEOUT)
            .map_err(kafka_err)?;
        Ok(tpl.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }))
    }

    fn key(&self, stream: Stream, line: &[u8], epoch: u64, seq: u64) -> Result<String, StoreError> {
        let f = Fields::parse(line)?;
        let k = match schema::schema(stream) {
            Some(s) => schema::key_of(s, &f, epoch, seq)?,
            None => f.text("user_id").unwrap_or_default().to_string(),
        };
        // global windows of one partition are partials: the partition is part of the key
        Ok(match (&self.task, stream) {
            (Some(t), Stream::GlobalWindows) => format!("{t}:{k}"),
            _ => k,
        })
    }

    fn produce(&self, epoch: u64, stream: Stream, records: &[u8]) -> Result<(), StoreError> {
        let p = self.producer.as_ref().expect("connected");
        let topic = self.topic(stream);
        for (seq, line) in records
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let key = self.key(stream, line, epoch, seq as u64)?;
            let mut rec = BaseRecord::to(&topic).key(&key).payload(line);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(kafka_err(e)),
                }
            }
        }
        Ok(())
    }

    /// Waits for every produced record's acknowledgement; a failed delivery fails the flush.
    fn flush(&self) -> Result<(), StoreError> {
        let p = self.producer.as_ref().expect("connected");
        p.flush(TIMEOUT).map_err(kafka_err)?;
        if let Some(e) = p.context().failed.lock().expect("deliveries").take() {
            return Err(StoreError::retryable(format!("delivery failed: {e}")));
        }
        Ok(())
    }

    /// Produces staged epoch `epoch` in one transaction that also moves the marker to it.
    fn apply(&mut self, epoch: u64) -> Result<(), SinkError> {
        let name = self.name.clone();
        let retry_cfg = self.retry.clone();
        retry::retry(&name, &retry_cfg, "transaction", || {
            let stage = self.stage.as_ref().expect("transactional");
            let Some(staged) = stage.read(epoch)? else {
                return Ok(());
            };
            if self.committed_marker()?.is_some_and(|m| m >= epoch) {
                return stage.done(epoch);
            }
            let p = self.producer.as_ref().expect("connected");
            p.begin_transaction().map_err(kafka_err)?;
            let r = (|| {
                for (stream, _, records) in staged.records() {
                    self.produce(epoch, stream, records)?;
                }
                let m = self.marker.as_ref().expect("connected");
                let cgm = m
                    .group_metadata()
                    .ok_or_else(|| StoreError::fatal("no group metadata for the marker"))?;
                p.send_offsets_to_transaction(&self.marker_tpl(Some(epoch)), &cgm, TIMEOUT)
                    .map_err(kafka_err)?;
                p.commit_transaction(TIMEOUT).map_err(kafka_err)
            })();
            if let Err(e) = r {
                let _ = p.abort_transaction(TIMEOUT);
                let _ = p.context().failed.lock().expect("deliveries").take();
                return Err(e);
            }
            stage.done(epoch)
        })
    }

    fn sink_err(&self, e: StoreError) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message: e.message,
            retryable: e.retryable,
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, stream: Stream) -> bool {
        self.streams.contains(&stream)
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError> {
        let (name, retry_cfg) = (self.name.clone(), self.retry.clone());
        retry::retry(&name, &retry_cfg, "connect", || self.connect())?;
        if !self.cfg.transactional {
            return Ok(());
        }
        let dir = self.stage_dir.clone().ok_or_else(|| {
            self.sink_err(StoreError::fatal(
                "transactional mode needs stage_dir (or a checkpoint directory)",
            ))
        })?;
        let mut stage = FileStage::open(&dir).map_err(|e| self.sink_err(e))?;
        let roll = stage.recover(committed).map_err(|e| self.sink_err(e))?;
        self.stage = Some(stage);
        for e in roll {
            tracing::info!(sink = self.name, epoch = e, "rolling staged epoch forward");
            self.apply(e)?;
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
        if let Some(stage) = &mut self.stage {
            let r = stage.write(epoch, stream, records);
            return r.map_err(|e| self.sink_err(e));
        }
        let (name, retry_cfg) = (self.name.clone(), self.retry.clone());
        retry::retry(&name, &retry_cfg, "produce", || {
            self.produce(epoch, stream, records)
        })
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        if let Some(stage) = &mut self.stage {
            let r = stage.seal(epoch);
            return r.map_err(|e| self.sink_err(e));
        }
        let (name, retry_cfg) = (self.name.clone(), self.retry.clone());
        retry::retry(&name, &retry_cfg, "flush", || self.flush())
    }

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        if self.cfg.transactional {
            return self.apply(epoch);
        }
        Ok(())
    }
}
