//! `cartpulse bench sources`: events/s from a live source through the whole pipeline, next to
//! the raw rate of the same client library reading the same data (Redis Streams with the
//! `redis` crate, RabbitMQ with `lapin`). Both readers consume a fresh copy of the same
//! generated events, so the difference is what the pipeline costs on top of the client.

use anyhow::{bail, Context, Result};
use cartpulse_connectors::rabbitmq::RabbitMqConfig;
use cartpulse_connectors::redis::RedisStreamConfig;
use cartpulse_connectors::{build_source, JsonlDirSink, SourceConfig};
use cartpulse_engine::{Pipeline, PipelineConfig, Sink};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SourcesBenchArgs {
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Which sources: redis, rabbitmq, http (the `POST /ingest` journal: load is the
    /// journal's accept rate without the network, raw read is plain file reads of it), cdc
    /// (a private MariaDB with the binlog on: needs the `mariadb-server` package).
    #[arg(long, value_delimiter = ',', default_value = "redis,rabbitmq,http")]
    which: Vec<String>,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Checkpoint interval of the pipeline runs: queue sources acknowledge per checkpoint,
    /// so RabbitMQ's rate is bounded by prefetch / interval.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    checkpoint_interval: Duration,
    #[arg(long, default_value = "bench-data/sources")]
    dir: PathBuf,
}

pub fn run(a: SourcesBenchArgs) -> Result<()> {
    let mut gen = cartpulse_gen::Generator::new(cartpulse_gen::GenConfig {
        events: a.events,
        seed: 42,
        ..Default::default()
    })?;
    let mut data = Vec::with_capacity(a.events as usize * 210);
    while gen.next_line(&mut data).is_some() {}
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let n = lines.len() as u64;
    println!("machine: {}", crate::bench::machine());
    println!(
        "{n} generated events ({:.0} bytes each), checkpoints every {:?}",
        data.len() as f64 / n as f64,
        a.checkpoint_interval
    );
    println!(
        "| source | load (client) | raw read (client) | pipeline | pipeline rate / raw rate |"
    );
    println!("|---|---|---|---|---|");
    let tag = std::process::id();
    for which in &a.which {
        let (load, raw, pipe) = match which.as_str() {
            "redis" => {
                let (s_raw, s_pipe) = (format!("bench-raw-{tag}"), format!("bench-pipe-{tag}"));
                let load = redis_load(&a.redis_url, &s_raw, &lines)?;
                redis_load(&a.redis_url, &s_pipe, &lines)?;
                let raw = redis_raw(&a.redis_url, &s_raw, n)?;
                let cfg = RedisStreamConfig {
                    url: a.redis_url.clone(),
                    stream: s_pipe.clone(),
                    count: 5000,
                    ..Default::default()
                };
                let pipe = pipeline(&a, "redis", SourceConfig::RedisStream(Box::new(cfg)), n)?;
                redis_drop(&a.redis_url, &[&s_raw, &s_pipe])?;
                (load, raw, pipe)
            }
            "rabbitmq" => {
                let (q_raw, q_pipe) = (format!("bench-raw-{tag}"), format!("bench-pipe-{tag}"));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let load = rt.block_on(amqp_load(&a.amqp_url, &q_raw, &lines))?;
                rt.block_on(amqp_load(&a.amqp_url, &q_pipe, &lines))?;
                let raw = rt.block_on(amqp_raw(&a.amqp_url, &q_raw, n))?;
                let cfg = RabbitMqConfig {
                    url: a.amqp_url.clone(),
                    queue: q_pipe.clone(),
                    ..Default::default()
                };
                let pipe = pipeline(&a, "rabbitmq", SourceConfig::Rabbitmq(Box::new(cfg)), n)?;
                rt.block_on(amqp_drop(&a.amqp_url, &[&q_raw, &q_pipe]))?;
                (load, raw, pipe)
            }
            "http" => {
                let journal_dir = a.dir.join(format!("journal-{tag}"));
                let _ = std::fs::remove_dir_all(&journal_dir);
                let cfg = cartpulse_connectors::http_ingest::HttpIngestConfig {
                    journal_dir: journal_dir.clone(),
                    max_pending_bytes: u64::MAX / 2,
                    ..Default::default()
                };
                let load = {
                    let built = build_source(&SourceConfig::Http(Box::new(cfg.clone())), 1 << 20)
                        .map_err(anyhow::Error::msg)?;
                    let journal = built.ingest.context("an http source has a journal")?;
                    let t = Instant::now();
                    let mut body = Vec::with_capacity(1 << 20);
                    for chunk in lines.chunks(1000) {
                        body.clear();
                        for l in chunk {
                            body.extend_from_slice(l);
                            body.push(b'\n');
                        }
                        let r = journal.append(&body).map_err(|e| anyhow::anyhow!("{e}"))?;
                        if r.accepted != chunk.len() as u64 {
                            bail!("http: {} of {} lines accepted", r.accepted, chunk.len());
                        }
                    }
                    t.elapsed().as_secs_f64()
                };
                let raw = journal_raw(&journal_dir)?;
                let pipe = pipeline(&a, "http", SourceConfig::Http(Box::new(cfg)), n)?;
                let _ = std::fs::remove_dir_all(&journal_dir);
                (load, raw, pipe)
            }
            "cdc" => cdc(&a, n)?,
            other => {
                bail!("--which: unknown source `{other}` (expected redis, rabbitmq, http or cdc)")
            }
        };
        let rate = |s: f64| format!("{:.0} k/s ({s:.2} s)", n as f64 / s / 1e3);
        println!(
            "| {which} | {} | {} | {} | {:.0} % |",
            rate(load),
            rate(raw),
            rate(pipe),
            raw / pipe * 100.0 // rates are n / seconds: the ratio of rates is raw s / pipeline s
        );
    }
    Ok(())
}

/// Runs the pipeline on `source` until every event was applied; seconds from its first
/// record to the last event applied.
fn pipeline(a: &SourcesBenchArgs, name: &str, source: SourceConfig, n: u64) -> Result<f64> {
    let _ = std::fs::remove_dir_all(a.dir.join(name));
    pipeline_resumed(a, name, source, n)
}

/// `pipeline` from the checkpoint an earlier run of `name` left.
fn pipeline_resumed(a: &SourcesBenchArgs, name: &str, source: SourceConfig, n: u64) -> Result<f64> {
    let run = a.dir.join(name);
    let mut cfg = PipelineConfig::default();
    cfg.checkpoint.dir = Some(run.join("chk"));
    cfg.checkpoint.interval = a.checkpoint_interval;
    let built = build_source(&source, cfg.max_record_bytes).map_err(anyhow::Error::msg)?;
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlDirSink::new(&run.join("out")))];
    let p = Pipeline::new(cfg, built.source, sinks);
    let metrics = p.metrics.clone();
    let handle = p.start()?;
    let t0 = Instant::now();
    let mut first = None;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        if first.is_none() && metrics.source_records.get() > 0 {
            first = Some(Instant::now());
        }
        let applied = ["view", "add", "remove", "update_qty", "checkout"]
            .iter()
            .map(|act| metrics.cart_events.with_label_values(&[act]).get())
            .sum::<u64>()
            + metrics.duplicates.get()
            + metrics.dead_letters_total();
        if applied >= n {
            break;
        }
        if handle.is_finished() || t0.elapsed() > Duration::from_secs(900) {
            handle.stop();
            let r = handle.join();
            bail!("{name}: the pipeline ended after {applied} of {n} events: {r:?}");
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    handle.stop();
    handle.join()?;
    Ok(secs)
}

/// Binlog CDC: a first run on the empty table checkpoints its binlog position; N rows are
/// inserted (the load); a second run catches up on them from the binlog (the pipeline);
/// `mysql_async`'s binlog stream reads the same binlog and decodes every row (raw).
fn cdc(a: &SourcesBenchArgs, n: u64) -> Result<(f64, f64, f64)> {
    use cartpulse_connectors::mysql_cdc::{testkit::MariaDb, CartTableConfig, MysqlCdcConfig};
    use mysql_async::prelude::Queryable;
    let db = MariaDb::start(&["--binlog-row-metadata=FULL"]);
    db.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.cart_items (id INT PRIMARY KEY, \
         user_id VARCHAR(32) NOT NULL, sku VARCHAR(32) NOT NULL, qty INT NOT NULL, \
         price DECIMAL(10,2) NOT NULL, updated_at DATETIME(3) NOT NULL) ENGINE=InnoDB",
    );
    let source = SourceConfig::MysqlCdc(Box::new(MysqlCdcConfig {
        url: db.url("shop"),
        server_id: 950,
        cart_items: Some(CartTableConfig::default()),
        orders: None,
        ..Default::default()
    }));
    pipeline(a, "cdc", source.clone(), 0)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = db.url("shop");
    let load = rt.block_on(async {
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url)?).await?;
        let t = Instant::now();
        let mut sql = String::new();
        for start in (0..n).step_by(1000) {
            sql.clear();
            sql.push_str("INSERT INTO cart_items VALUES ");
            for i in start..(start + 1000).min(n) {
                if i > start {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "({i},'u{:06}','p{:05}',{},{}.{:02},FROM_UNIXTIME({}))",
                    i % 100_000,
                    i % 10_000,
                    1 + i % 3,
                    1 + i % 200,
                    i % 100,
                    1_764_000_000 + i / 100
                ));
            }
            c.query_drop(&sql).await?;
        }
        let secs = t.elapsed().as_secs_f64();
        c.disconnect().await?;
        anyhow::Ok(secs)
    })?;
    let pipe = pipeline_resumed(a, "cdc", source, n)?;
    let raw = rt.block_on(async {
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url)?).await?;
        let first: Option<(String, u64)> = c.query_first("SHOW BINARY LOGS").await?;
        let (file, _) = first.context("no binary log")?;
        c.query_drop("SET @mariadb_slave_capability = 4").await?;
        let t = Instant::now();
        let req = mysql_async::BinlogStreamRequest::new(951)
            .with_filename(file.as_bytes())
            .with_pos(4u64);
        let mut stream = c.get_binlog_stream(req).await?;
        let (mut rows, mut sum) = (0u64, 0u64);
        while rows < n {
            use futures_util::StreamExt;
            use mysql_async::binlog::events::EventData;
            let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .context("cdc raw read: no binlog event for 30 s")?
                .context("cdc raw read: the stream ended")??;
            if let Some(EventData::RowsEvent(r)) = ev.read_data()? {
                let tme = stream
                    .get_tme(r.table_id())
                    .context("a rows event without its table map")?;
                for row in r.rows(tme) {
                    let (_, after) = row?;
                    if let Some(after) = after {
                        // the iterator has decoded every column, as the source needs
                        sum = sum.wrapping_add(after.len() as u64);
                        rows += 1;
                    }
                }
            }
        }
        std::hint::black_box(sum);
        anyhow::Ok(t.elapsed().as_secs_f64())
    })?;
    Ok((load, raw, pipe))
}

/// Reads the journal's segments with plain file reads, counting lines: the floor under the
/// HTTP source, which reads the same files.
fn journal_raw(dir: &std::path::Path) -> Result<f64> {
    let t = Instant::now();
    let mut lines = 0usize;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_file() {
            lines += memchr::memchr_iter(b'\n', &std::fs::read(&p)?).count();
        }
    }
    std::hint::black_box(lines);
    Ok(t.elapsed().as_secs_f64())
}

fn redis_conn(url: &str) -> Result<redis::Connection> {
    redis::Client::open(url)?
        .get_connection()
        .context("connecting to Redis")
}

/// XADDs every line as field `event`, pipelined 1000 at a time.
fn redis_load(url: &str, stream: &str, lines: &[&[u8]]) -> Result<f64> {
    let mut c = redis_conn(url)?;
    let t = Instant::now();
    for chunk in lines.chunks(1000) {
        let mut p = redis::pipe();
        for l in chunk {
            p.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("event")
                .arg(*l)
                .ignore();
        }
        p.query::<()>(&mut c)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// XREADGROUP 5000 at a time, touching each payload, XACK per batch: what the source does
/// minus decoding, checkpoints and the pipeline.
fn redis_raw(url: &str, stream: &str, n: u64) -> Result<f64> {
    let mut c = redis_conn(url)?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("raw")
        .arg("0")
        .query::<()>(&mut c)?;
    let t = Instant::now();
    let (mut seen, mut sum) = (0u64, 0u64);
    while seen < n {
        let v: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("raw")
            .arg("COUNT")
            .arg(5000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query(&mut c)?;
        let mut ids: Vec<Vec<u8>> = Vec::new();
        visit_entries(&v, &mut |id, payload| {
            sum = sum.wrapping_add(payload.iter().map(|&b| u64::from(b)).sum::<u64>());
            ids.push(id.to_vec());
        });
        if ids.is_empty() {
            bail!("redis raw read: {seen} of {n} entries, then none");
        }
        seen += ids.len() as u64;
        redis::cmd("XACK")
            .arg(stream)
            .arg("raw")
            .arg(&ids)
            .query::<u64>(&mut c)?;
    }
    std::hint::black_box(sum);
    Ok(t.elapsed().as_secs_f64())
}

/// Calls `f(id, value of the entry's last field)` for each entry of an XREADGROUP reply.
fn visit_entries(v: &redis::Value, f: &mut dyn FnMut(&[u8], &[u8])) {
    use redis::Value as V;
    let entries = |e: &V, f: &mut dyn FnMut(&[u8], &[u8])| {
        if let V::Array(es) = e {
            for en in es {
                if let V::Array(kv) = en {
                    if let (Some(V::BulkString(id)), Some(V::Array(fields))) =
                        (kv.first(), kv.get(1))
                    {
                        if let Some(V::BulkString(p)) = fields.last() {
                            f(id, p);
                        }
                    }
                }
            }
        }
    };
    match v {
        V::Array(streams) => {
            for s in streams {
                if let V::Array(kv) = s {
                    if let Some(e) = kv.get(1) {
                        entries(e, f);
                    }
                }
            }
        }
        V::Map(streams) => {
            for (_, e) in streams {
                entries(e, f);
            }
        }
        _ => {}
    }
}

fn redis_drop(url: &str, streams: &[&str]) -> Result<()> {
    let mut c = redis_conn(url)?;
    for s in streams {
        redis::cmd("DEL").arg(*s).query::<()>(&mut c)?;
    }
    Ok(())
}

async fn amqp_channel(url: &str) -> Result<(lapin::Connection, lapin::Channel)> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// Publishes every line persistently into a durable queue, with publisher confirms awaited
/// in batches of 1000.
async fn amqp_load(url: &str, queue: &str, lines: &[&[u8]]) -> Result<f64> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let (conn, ch) = amqp_channel(url).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let t = Instant::now();
    for chunk in lines.chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for l in chunk {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    l,
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    conn.close(0, "loaded".into()).await?;
    Ok(secs)
}

/// Consumes with the source's prefetch (10,000), touching each payload, acknowledging every
/// 1000 deliveries with `multiple`.
async fn amqp_raw(url: &str, queue: &str, n: u64) -> Result<f64> {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let (conn, ch) = amqp_channel(url).await?;
    ch.basic_qos(10_000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    let t = Instant::now();
    let (mut seen, mut sum) = (0u64, 0u64);
    while seen < n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("rabbitmq raw read: no delivery for 30 s")?
            .context("rabbitmq raw read: consumer ended")??;
        sum = sum.wrapping_add(d.data.iter().map(|&b| u64::from(b)).sum::<u64>());
        seen += 1;
        if seen % 1000 == 0 || seen == n {
            d.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    std::hint::black_box(sum);
    let secs = t.elapsed().as_secs_f64();
    conn.close(0, "read".into()).await?;
    Ok(secs)
}

async fn amqp_drop(url: &str, queues: &[&str]) -> Result<()> {
    let (conn, ch) = amqp_channel(url).await?;
    for q in queues {
        ch.queue_delete((*q).into(), lapin::options::QueueDeleteOptions::default())
            .await?;
    }
    conn.close(0, "done".into()).await?;
    Ok(())
}
