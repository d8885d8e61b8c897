//! RabbitMQ: a durable queue consumed with manual acknowledgement.
//!
//! A message is acknowledged only when output covering it is durable: `checkpoint_complete`
//! sends one `basic.ack` with `multiple` up to the last delivery tag the checkpoint covers.
//! Nothing is ever nacked or requeued on purpose; after a crash or a lost connection the
//! broker redelivers every unacknowledged message, in queue order, and the engine's dedup on
//! (user_id, event_id) drops the copies whose originals made it into a checkpoint.
//!
//! Consequence worth knowing: the broker hands out at most `prefetch` unacknowledged messages,
//! and acks come once per checkpoint, so throughput is bounded by `prefetch / checkpoint
//! interval`. Size the two together.
//!
//! lapin runs its I/O on a thread of its own but heartbeats and RPC replies on the tokio
//! runtime it is started in. A `current_thread` runtime would only make progress while the
//! pipeline's reader sits in `poll`, so a reader stalled by backpressure would miss
//! heartbeats and lose the connection; the source therefore owns a one-worker runtime.

use crate::ingest::{io_err, run_id, Backoff, Framer};
use cartpulse_engine::{Poll, Source, SourceError};
use cartpulse_model::{DecodeOptions, Decoder};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub use lapin;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://user:pass@host:port/vhost` (the default vhost `/` is `%2f`).
    pub url: String,
    pub queue: String,
    /// Unacknowledged messages the broker may send ahead (AMQP allows at most 65535).
    pub prefetch: u16,
    /// Declare the queue (durable) when it is missing; otherwise it must exist.
    pub declare: bool,
    pub consumer_tag: String,
    /// Quantity assumed for `add` events without one.
    pub default_qty: Option<u32>,
    /// Message payload: `json` (default), `csv` (with `csv_header` or `[csv]` by index) or
    /// `avro` (with an `[avro]` table).
    pub format: cartpulse_avro::PayloadFormat,
    pub csv: Option<cartpulse_model::CsvConfig>,
    pub csv_header: Option<String>,
    pub avro: Option<cartpulse_avro::AvroConfig>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue: "cart-events".into(),
            prefetch: 10_000,
            declare: true,
            consumer_tag: "cartpulse".into(),
            default_qty: None,
            format: Default::default(),
            csv: None,
            csv_header: None,
            avro: None,
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

struct Live {
    conn: Connection,
    channel: Channel,
    /// Passive declares for the lag gauge run here: one that fails closes its channel, and
    /// that must not be the consuming one.
    probe: Channel,
    consumer: Consumer,
}

pub struct RabbitMqSource {
    cfg: RabbitMqConfig,
    name: String,
    rt: tokio::runtime::Runtime,
    live: Option<Live>,
    run: u64,
    /// Incremented per connection: delivery tags are only meaningful on their channel.
    generation: u64,
    last_tag: u64,
    acked_tag: u64,
    backoff: Backoff,
    lag: Option<u64>,
    lag_checked: Option<Instant>,
    framer: Framer,
    decoder: Decoder,
}

const LAG_EVERY: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_millis(50);
/// How long a poll goes on collecting after its first delivery.
const LINGER: Duration = Duration::from_millis(5);

impl RabbitMqSource {
    /// The decoder of the configured payload format; fails on a bad `csv`/`avro` table.
    pub fn payload_decoder(
        cfg: &RabbitMqConfig,
        max_record_bytes: usize,
    ) -> Result<Decoder, cartpulse_avro::PayloadError> {
        cartpulse_avro::message_decoder(
            &cartpulse_avro::Payload {
                format: cfg.format,
                csv: cfg.csv.as_ref(),
                csv_header: cfg.csv_header.as_deref(),
                avro: cfg.avro.as_ref(),
            },
            DecodeOptions {
                max_record_bytes,
                default_qty: cfg.default_qty,
            },
        )
    }

    /// Decodes messages with `d` instead of JSON (see [`Self::payload_decoder`]).
    pub fn with_decoder(mut self, d: Decoder) -> Self {
        self.decoder = d;
        self
    }

    pub fn new(cfg: RabbitMqConfig, max_record_bytes: usize) -> RabbitMqSource {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rabbitmq-source")
            .enable_all()
            .build()
            .expect("build the source's tokio runtime");
        RabbitMqSource {
            name: format!("rabbitmq:{}", cfg.queue),
            backoff: Backoff::new(Duration::from_millis(100), cfg.max_backoff),
            decoder: Decoder::Json(DecodeOptions {
                max_record_bytes,
                default_qty: cfg.default_qty,
            }),
            cfg,
            rt,
            live: None,
            run: run_id(),
            generation: 0,
            last_tag: 0,
            acked_tag: 0,
            lag: None,
            lag_checked: None,
            framer: Framer::default(),
        }
    }

    async fn connect(cfg: &RabbitMqConfig, name: &str) -> Result<(Live, u64), (String, bool)> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = Connection::connect(&cfg.url, props).await.map_err(|e| {
            (
                format!("source.url: cannot connect to {}: {e}", redact(&cfg.url)),
                true,
            )
        })?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| (format!("cannot open a channel: {e}"), true))?;
        channel
            .basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| (format!("source.prefetch: basic.qos refused: {e}"), false))?;
        let opts = QueueDeclareOptions {
            durable: true,
            passive: !cfg.declare,
            ..Default::default()
        };
        let q = channel
            .queue_declare(cfg.queue.as_str().into(), opts, FieldTable::default())
            .await
            .map_err(|e| {
                let why = if cfg.declare {
                    "cannot declare the durable queue (does it exist with other settings?)"
                } else {
                    "the queue does not exist (declare = false)"
                };
                (format!("source.queue: `{}`: {why}: {e}", cfg.queue), false)
            })?;
        let probe = conn
            .create_channel()
            .await
            .map_err(|e| (format!("cannot open a channel: {e}"), true))?;
        let consumer = channel
            .basic_consume(
                cfg.queue.as_str().into(),
                cfg.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                (
                    format!("source.queue: cannot consume `{}`: {e}", cfg.queue),
                    true,
                )
            })?;
        Ok((
            Live {
                conn,
                channel,
                probe,
                consumer,
            },
            u64::from(q.message_count()),
        ))
    }

    fn establish(&mut self) -> Result<(), (String, bool)> {
        let cfg = self.cfg.clone();
        let name = self.name.clone();
        let (live, ready) = self.rt.block_on(async {
            tokio::time::timeout(cfg.connect_timeout, Self::connect(&cfg, &name))
                .await
                .unwrap_or_else(|_| {
                    Err((
                        format!(
                            "source.url: no answer from {} within {:?}",
                            redact(&cfg.url),
                            cfg.connect_timeout
                        ),
                        true,
                    ))
                })
        })?;
        self.generation += 1;
        self.last_tag = 0;
        self.acked_tag = 0;
        self.lag = Some(ready);
        self.lag_checked = Some(Instant::now());
        self.live = Some(live);
        self.backoff.reset();
        Ok(())
    }

    /// Drops a broken connection; every message it had not acknowledged will be redelivered.
    fn lose(&mut self, why: &str) {
        if let Some(live) = self.live.take() {
            tracing::warn!(source = %self.name, error = why, "connection lost; reconnecting");
            // closing is best effort: the broker requeues on any kind of disconnect
            let _ = self.rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(1),
                    live.conn.close(0, "reconnect".into()),
                )
                .await
            });
        }
        let d = self.backoff.failed();
        tracing::debug!(source = %self.name, delay = ?d, "next reconnect attempt");
    }

    fn check_lag(&mut self) {
        if self.lag_checked.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return;
        }
        self.lag_checked = Some(Instant::now());
        let Some(live) = &self.live else { return };
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = self.cfg.queue.clone();
        let r = self.rt.block_on(async {
            tokio::time::timeout(
                WAIT,
                live.probe
                    .queue_declare(q.as_str().into(), opts, FieldTable::default()),
            )
            .await
        });
        if let Ok(Ok(q)) = r {
            self.lag = Some(u64::from(q.message_count()));
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Source for RabbitMqSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&mut self, _restored: Option<&Value>) -> Result<(), SourceError> {
        // The restored position needs no action: everything the checkpoint did not cover
        // was never acknowledged, so the broker delivers it again.
        if let Err(e) = self.cfg.url.parse::<lapin::uri::AMQPUri>() {
            return Err(io_err(
                &self.name,
                format!(
                    "source.url: not an AMQP URL ({}): {e}",
                    redact(&self.cfg.url)
                ),
                false,
            ));
        }
        if self.cfg.queue.is_empty() {
            return Err(io_err(
                &self.name,
                "source.queue: expected a queue name",
                false,
            ));
        }
        self.establish()
            .map_err(|(m, retryable)| io_err(&self.name, m, retryable))
    }

    fn decoder(&self) -> Decoder {
        self.decoder.clone()
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        if self.live.is_none() {
            if !self.backoff.ready(WAIT) {
                return Ok(Poll::Idle);
            }
            if let Err((m, retryable)) = self.establish() {
                if !retryable {
                    return Err(io_err(&self.name, m, false));
                }
                tracing::warn!(source = %self.name, error = %m, "reconnect failed");
                self.backoff.failed();
                return Ok(Poll::Idle);
            }
            tracing::info!(source = %self.name, "reconnected");
        }
        self.check_lag();
        let live = self.live.as_mut().expect("connected");
        let framer = &mut self.framer;
        let mut last_tag = self.last_tag;
        // Wait briefly for the first delivery, then keep taking deliveries for a few
        // milliseconds more: they arrive one by one, and a chunk of a handful of messages
        // costs the pipeline as much as a full one.
        let broken = self.rt.block_on(async {
            let mut until = tokio::time::Instant::now() + WAIT;
            let mut first = true;
            while framer.len() < max_bytes {
                let next = match tokio::time::timeout_at(until, live.consumer.next()).await {
                    Ok(n) => n,
                    Err(_) => return None,
                };
                if first {
                    first = false;
                    until = tokio::time::Instant::now() + LINGER;
                }
                match next {
                    Some(Ok(d)) => {
                        framer.push(&d.data);
                        last_tag = d.delivery_tag;
                    }
                    Some(Err(e)) => return Some(e.to_string()),
                    None => return Some("the broker cancelled the consumer".to_string()),
                }
            }
            None
        });
        self.last_tag = last_tag;
        if let Some(why) = broken {
            self.lose(&why);
        }
        if self.framer.is_empty() {
            return Ok(Poll::Idle);
        }
        Ok(Poll::Chunk(self.framer.take()))
    }

    fn position(&self) -> Value {
        json!({ "run": self.run, "connection": self.generation, "delivery_tag": self.last_tag })
    }

    fn checkpoint_complete(
        &mut self,
        _checkpoint: u64,
        position: &Value,
    ) -> Result<(), SourceError> {
        let same_run = position["run"].as_u64() == Some(self.run)
            && position["connection"].as_u64() == Some(self.generation);
        let tag = position["delivery_tag"].as_u64().unwrap_or(0);
        if !same_run || tag <= self.acked_tag {
            // tags of an earlier connection died with it: the broker redelivers those
            return Ok(());
        }
        let Some(live) = &self.live else {
            return Ok(());
        };
        let r = self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                live.channel
                    .basic_ack(tag, BasicAckOptions { multiple: true }),
            )
            .await
        });
        match r {
            Ok(Ok(())) => self.acked_tag = tag,
            Ok(Err(e)) => self.lose(&format!("basic.ack failed: {e}")),
            Err(_) => self.lose("basic.ack timed out"),
        }
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        self.lag
    }
}

#[cfg(test)]
mod tests;
