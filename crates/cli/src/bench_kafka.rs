//! `cartpulse bench kafka`: events/s from Kafka through the whole pipeline of one consumer-
//! group member, next to the raw consume rate of the same client (librdkafka via rdkafka)
//! on the same topic, so the pipeline's own cost is the difference. With the whole topic
//! produced before the member starts, the pipeline run is also the catch-up time of that
//! backlog. Needs a broker (`scripts/bench_kafka.sh` starts one).

use crate::config::AppConfig;
use anyhow::{bail, Context, Result};
use cartpulse_connectors::{SinkConfig, SourceConfig};
use cartpulse_engine::metrics::Metrics;
use cartpulse_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cartpulse_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use cartpulse_kafka::rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use cartpulse_kafka::rdkafka::{ClientConfig, Message};
use cartpulse_kafka::KafkaSourceConfig;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct KafkaBenchArgs {
    /// Broker address (host:port).
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Shards per partition's pipeline.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Run the analytics stage (rules, funnel) in every task too.
    #[arg(long)]
    analytics: bool,
    /// Where the generated input, checkpoints and outputs go.
    #[arg(long, default_value = "bench-data/kafka")]
    dir: std::path::PathBuf,
}

pub fn run(a: KafkaBenchArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let input = a.dir.join(format!("events-{}.jsonl", a.events));
    if !input.exists() {
        crate::bench::gen_file(a.events, &input)?;
    }
    let topic = format!(
        "bench-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    create_topic(&a.brokers, &topic, a.partitions)?;
    println!("{}", crate::bench::machine());
    let (n, bytes, secs) = produce(&a.brokers, &topic, &input)?;
    println!(
        "produce    {n} events ({:.0} MB) keyed by user into {} partitions: {secs:.2} s, {:.2} M events/s",
        bytes as f64 / 1e6,
        a.partitions,
        n as f64 / secs / 1e6
    );
    let secs = raw_consume(&a.brokers, &topic, a.partitions, n)?;
    let raw = n as f64 / secs;
    println!(
        "raw        BaseConsumer over every partition, payloads touched: {secs:.2} s, {:.2} M events/s",
        raw / 1e6
    );
    let (total, steady) = pipeline(&a, &topic, n)?;
    let rate = n as f64 / steady;
    println!(
        "pipeline   one group member, {} task(s) x {} shard(s), analytics {}, checkpoints every 10 s, jsonl out: \
         {steady:.2} s from first record to last event applied ({:.2} M events/s, {:.0}% of raw); \
         {total:.2} s from start incl. joining the group",
        a.partitions,
        a.shards,
        if a.analytics { "on" } else { "off" },
        rate / 1e6,
        100.0 * rate / raw
    );
    Ok(())
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    cartpulse_kafka::admin::create_topics(
        &client(brokers),
        &[(topic, partitions, 1)],
        Duration::from_secs(30),
    )
    .map_err(anyhow::Error::msg)
}

fn produce(brokers: &str, topic: &str, input: &Path) -> Result<(u64, u64, f64)> {
    let p: BaseProducer = client(brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?;
    let f = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(input).with_context(|| format!("{}", input.display()))?,
    );
    let t0 = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    for line in f.split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        // the user id is the key, so a user's events share a partition (the default
        // partitioner hashes the key)
        let key = user_of(&line).unwrap_or_default().to_vec();
        let mut rec = BaseRecord::to(topic).key(&key).payload(&line);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
        n += 1;
        bytes += line.len() as u64;
        if n % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))?;
    Ok((n, bytes, t0.elapsed().as_secs_f64()))
}

/// The `user_id` value of a generated JSON line.
fn user_of(line: &[u8]) -> Option<&[u8]> {
    let k = b"\"user_id\":\"";
    let at = memchr::memmem::find(line, k)? + k.len();
    let len = memchr::memchr(b'"', &line[at..])?;
    Some(&line[at..at + len])
}

fn raw_consume(brokers: &str, topic: &str, partitions: i32, n: u64) -> Result<f64> {
    let c: BaseConsumer = client(brokers)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let t0 = Instant::now();
    let (mut seen, mut sum) = (0u64, 0u64);
    while seen < n {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("raw consume: {seen} of {n} after 10 minutes");
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            // touch the payload like a decoder would have to
            sum = sum.wrapping_add(m.payload().map_or(0, |p| p.iter().map(|&b| b as u64).sum()));
            seen += 1;
        }
    }
    std::hint::black_box(sum);
    Ok(t0.elapsed().as_secs_f64())
}

/// Runs one group member over the topic until every event was applied by a shard; returns
/// (seconds from start, seconds from the first record read).
fn pipeline(a: &KafkaBenchArgs, topic: &str, n: u64) -> Result<(f64, f64)> {
    let run = a.dir.join(topic);
    let mut app = AppConfig::default();
    app.pipeline.shards = a.shards;
    app.pipeline.checkpoint.dir = Some(run.join("chk"));
    app.pipeline.checkpoint.interval = Duration::from_secs(10);
    app.analytics.enabled = a.analytics;
    app.sinks = vec![SinkConfig::Jsonl {
        dir: run.join("out"),
        events: false,
        carts: false,
    }];
    let kcfg = KafkaSourceConfig {
        brokers: a.brokers.clone(),
        topics: vec![topic.to_string()],
        group_id: format!("{topic}-pipeline"),
        session_timeout: Duration::from_secs(6),
        commit_offsets: true,
        ..Default::default()
    };
    app.source = Some(SourceConfig::Kafka(Box::new(kcfg.clone())));
    let metrics = Arc::new(Metrics::new());
    let t0 = Instant::now();
    let member = crate::group::join(app, kcfg, "bench".into(), metrics.clone())?;
    let stop = member.stopper();
    let th = std::thread::spawn(move || member.run());
    let mut first: Option<Instant> = None;
    let done = loop {
        std::thread::sleep(Duration::from_millis(20));
        if first.is_none() && metrics.source_records.get() > 0 {
            first = Some(Instant::now());
        }
        let applied: u64 = ["view", "add", "remove", "update_qty", "checkout"]
            .iter()
            .map(|act| metrics.cart_events.with_label_values(&[act]).get())
            .sum::<u64>()
            + metrics.duplicates.get()
            + metrics.dead_letters_total();
        if applied >= n {
            break Instant::now();
        }
        if th.is_finished() || t0.elapsed() > Duration::from_secs(1800) {
            stop.store(true, Ordering::SeqCst);
            let r = th.join();
            bail!("pipeline ended before applying {n} events ({applied} applied): {r:?}");
        }
    };
    stop.store(true, Ordering::SeqCst);
    th.join()
        .map_err(|_| anyhow::anyhow!("group member panicked"))??;
    let first = first.unwrap_or(t0);
    Ok(((done - t0).as_secs_f64(), (done - first).as_secs_f64()))
}
