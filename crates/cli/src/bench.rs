//! `cartpulse bench`: the numbers in BENCHMARKS.md come from here.
//!
//! - `replay`: end-to-end throughput from a JSON-lines file (each run in a child process,
//!   so peak RSS and CPU time are that run's own);
//! - `latency`: per-event latency under live generated traffic at a fixed rate;
//! - `checkpoint`: size and time of a checkpoint holding N active carts, restore time, and
//!   memory per cart line.

use anyhow::{bail, Context, Result};
use cartpulse_connectors::{GenSource, JsonlDirSink, MemorySource};
use cartpulse_engine::{CheckpointConfig, Pipeline, PipelineConfig, Sink, Source};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Replay throughput from a generated file.
    Replay {
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        shards: Vec<usize>,
        /// Where the input file and outputs go.
        #[arg(long, default_value = "bench-data")]
        dir: PathBuf,
        /// Also run with checkpoints (exactly-once mode) at this interval.
        #[arg(long, value_parser = humantime::parse_duration)]
        checkpoint_interval: Option<Duration>,
        /// Also run with enrichment: the generator's catalogue as the product table and one
        /// row per generated user as the user table (both CSV).
        #[arg(long)]
        enrich: bool,
    },
    /// Event-to-state latency under live traffic.
    Latency {
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long)]
        shards: Option<usize>,
        /// Checkpoint interval (`off` for none).
        #[arg(long, default_value = "10s")]
        checkpoint_interval: String,
    },
    /// Decoder alone: JSON lines → events on one thread (the hottest code path).
    Decode {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
    },
    /// Kafka: a group member's pipeline against the raw consume rate on the same topic.
    Kafka(crate::bench_kafka::KafkaBenchArgs),
    /// Redis Streams and RabbitMQ: the pipeline against the raw rate of the same client.
    Sources(crate::bench_sources::SourcesBenchArgs),
    /// Checkpoint cost with many active carts.
    Checkpoint {
        #[arg(long, default_value_t = 1_000_000)]
        carts: u64,
        #[arg(long, default_value_t = 2)]
        lines: u64,
        #[arg(long)]
        shards: Option<usize>,
    },
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        What::Replay {
            events,
            shards,
            dir,
            checkpoint_interval,
            enrich,
        } => replay(events, &shards, &dir, checkpoint_interval, enrich),
        What::Latency {
            rate,
            seconds,
            shards,
            checkpoint_interval,
        } => latency(rate, seconds, shards, &checkpoint_interval),
        What::Decode { events } => decode(events),
        What::Kafka(k) => crate::bench_kafka::run(k),
        What::Sources(s) => crate::bench_sources::run(s),
        What::Checkpoint {
            carts,
            lines,
            shards,
        } => checkpoint(carts, lines, shards),
    }
}

/// Writes `events` generated events (seed 42) to `path`.
pub(crate) fn gen_file(events: u64, path: &Path) -> Result<()> {
    eprintln!("generating {events} events into {}", path.display());
    let cfg = cartpulse_gen::GenConfig {
        events,
        seed: 42,
        ..Default::default()
    };
    cartpulse_gen::write_file(cfg, path, None)?;
    Ok(())
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    format!(
        "{} × {cpu}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

/// Runs a child process and returns (wall seconds, user+sys seconds, peak RSS bytes).
fn run_child(cmd: &mut std::process::Command) -> Result<(f64, f64, u64)> {
    let start = Instant::now();
    let child = cmd.spawn().context("spawning child")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in; pid is our own child, not yet reaped.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed().as_secs_f64();
    if r < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("child failed with status {status}");
    }
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        wall,
        cpu(ru.ru_utime) + cpu(ru.ru_stime),
        ru.ru_maxrss as u64 * 1024,
    ))
}

/// A config with the generator's product catalogue and users as enrichment tables.
fn enrich_config(dir: &Path) -> Result<PathBuf> {
    use std::io::Write;
    let cfg = cartpulse_gen::GenConfig {
        seed: 42,
        ..Default::default()
    };
    let products = dir.join("products.csv");
    crate::write_catalog(&cfg, &products)?;
    let gen = cartpulse_gen::Generator::new(cfg.clone())?;
    let users = dir.join("users.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&users)?);
    writeln!(w, "user_id,segment,region,signup_date")?;
    for u in 0..cfg.users {
        let seg = ["new", "regular", "vip"][u as usize % 3];
        let region = ["eu", "us", "apac", "latam"][u as usize % 4];
        writeln!(
            w,
            "{},{seg},{region},2024-{:02}-{:02}",
            gen.user_id(u),
            u % 12 + 1,
            u % 28 + 1
        )?;
    }
    w.flush()?;
    let path = dir.join("enrich.toml");
    std::fs::write(
        &path,
        format!(
            "[enrich.products]\nfrom = \"csv\"\npath = \"{}\"\n[enrich.users]\nfrom = \"csv\"\npath = \"{}\"\n",
            products.display(),
            users.display()
        ),
    )?;
    Ok(path)
}

fn replay(
    events: u64,
    shards: &[usize],
    dir: &Path,
    ckpt: Option<Duration>,
    enrich: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let input = dir.join(format!("events-{events}-seed42.jsonl"));
    if !input.exists() {
        gen_file(events, &input)?;
    }
    let bytes = std::fs::metadata(&input)?.len();
    let exe = std::env::current_exe()?;
    println!("machine: {}", machine());
    println!("input: {events} events, {:.1} MB", bytes as f64 / 1e6);
    println!(
        "| shards | checkpoints | enrichment | wall s | M events/s | MB/s in | CPU s | peak RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut modes = vec![(None, None)];
    if let Some(i) = ckpt {
        modes.push((Some(i), None));
    }
    if enrich {
        modes.push((None, Some(enrich_config(dir)?)));
    }
    for &n in shards {
        for (mode, enrich) in &modes {
            let out = dir.join(format!("out-{n}"));
            let ck = dir.join(format!("ckpt-{n}"));
            let _ = std::fs::remove_dir_all(&ck);
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("replay")
                .arg("--input")
                .arg(&input)
                .arg("--out")
                .arg(&out)
                .arg("--shards")
                .arg(n.to_string())
                .arg("--quiet")
                .env("RUST_LOG", "warn");
            if let Some(c) = enrich {
                cmd.arg("--config").arg(c);
            }
            if let Some(i) = mode {
                cmd.arg("--checkpoint-dir")
                    .arg(&ck)
                    .arg("--checkpoint-interval")
                    .arg(humantime::format_duration(*i).to_string());
            }
            let (wall, cpu, rss) = run_child(&mut cmd)?;
            println!(
                "| {n} | {} | {} | {wall:.2} | {:.2} | {:.0} | {cpu:.2} | {:.0} |",
                mode.map_or("off".to_string(), |i| format!(
                    "every {}",
                    humantime::format_duration(i)
                )),
                if enrich.is_some() {
                    "products + users"
                } else {
                    "off"
                },
                events as f64 / wall / 1e6,
                bytes as f64 / wall / 1e6,
                rss as f64 / 1e6
            );
        }
    }
    Ok(())
}

fn decode(events: u64) -> Result<()> {
    let mut gen = cartpulse_gen::Generator::new(cartpulse_gen::GenConfig {
        events,
        seed: 42,
        ..Default::default()
    })?;
    let mut data = Vec::with_capacity(events as usize * 210);
    while gen.next_line(&mut data).is_some() {}
    let opts = cartpulse_model::DecodeOptions::default();
    let mut best = f64::MAX;
    let mut checksum = 0i64;
    for _ in 0..5 {
        let t = Instant::now();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &data) {
            let line = &data[start..end];
            start = end + 1;
            let e = cartpulse_model::decode_json(line, &opts).expect("generated lines decode");
            checksum = checksum.wrapping_add(e.ts);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("machine: {}", machine());
    println!(
        "decode {events} JSON lines ({:.0} bytes each) on one thread, best of 5: {:.2} M events/s, {:.0} MB/s (checksum {checksum})",
        data.len() as f64 / events as f64,
        events as f64 / best / 1e6,
        data.len() as f64 / best / 1e6
    );
    Ok(())
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn latency(rate: f64, seconds: u64, shards: Option<usize>, interval: &str) -> Result<()> {
    let interval = match interval {
        "off" => None,
        s => Some(humantime::parse_duration(s).context("--checkpoint-interval")?),
    };
    let now = cartpulse_engine::clock::Clock::now_ms(&cartpulse_engine::clock::SystemClock);
    let gen = cartpulse_gen::GenConfig {
        events: 0,
        start_ms: now,
        events_per_sec: rate,
        // events the generator holds back on purpose would count their deliberate delay
        out_of_order_rate: 0.0,
        duplicate_rate: 0.0,
        // a flat rate: the daily rhythm would make the offered load depend on the hour
        diurnal_amplitude: 0.0,
        ..Default::default()
    };
    let tmp = tempdir("latency")?;
    let mut cfg = PipelineConfig {
        idle_timeout: Some(Duration::from_secs(1)),
        track_event_latency: true,
        checkpoint: CheckpointConfig {
            dir: interval.map(|_| tmp.join("ckpt")),
            interval: interval.unwrap_or(Duration::from_secs(10)),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Some(n) = shards {
        cfg.shards = n;
    }
    let source: Box<dyn Source> = Box::new(GenSource::new(gen, cfg.max_record_bytes));
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlDirSink::new(&tmp.join("out")))];
    let shards_used = cfg.shards;
    let handle = Pipeline::new(cfg, source, sinks).start()?;
    let metrics = handle.api.metrics.clone();
    // warm-up excluded from the figures
    std::thread::sleep(Duration::from_secs(2));
    metrics.event_latency_us.lock().expect("lock").reset();
    metrics.pipeline_latency_us.lock().expect("lock").reset();
    let before = metrics.events_decoded.get();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let n = metrics.events_decoded.get() - before;
    let el = t0.elapsed().as_secs_f64();
    let h = metrics.event_latency_us.lock().expect("lock").clone();
    let hp = metrics.pipeline_latency_us.lock().expect("lock").clone();
    handle.stop();
    handle.join()?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!("machine: {}", machine());
    println!(
        "live generator at {rate} events/s target, {shards_used} shards, checkpoints {}: {:.0} events/s processed over {el:.1}s",
        interval.map_or("off".to_string(), |i| format!("every {}", humantime::format_duration(i))),
        n as f64 / el
    );
    let line = |h: &hdrhistogram::Histogram<u64>| {
        format!(
            "p50 {:.2} ms | p90 {:.2} ms | p99 {:.2} ms | p99.9 {:.2} ms | max {:.2} ms | events {}",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.9) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            h.max() as f64 / 1e3,
            h.len()
        )
    };
    println!("source hands the event over -> state updated (the pipeline's own latency):");
    println!("{}", line(&hp));
    println!("event time -> state updated (adds the generator's own pacing and event time's 1 ms resolution):");
    println!("{}", line(&h));
    Ok(())
}

fn tempdir(what: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("cartpulse-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn checkpoint(carts: u64, lines: u64, shards: Option<usize>) -> Result<()> {
    let t0 = 1_764_000_000_000i64;
    let mut data = Vec::with_capacity((carts * lines * 110) as usize);
    let mut i = 0i64;
    for u in 0..carts {
        for l in 0..lines {
            use std::io::Write;
            writeln!(
                data,
                r#"{{"event_id":"b{u}-{l}","ts":{},"user_id":"u{u:07}","action":"add","sku":"p{:05}","qty":1,"price":9.99}}"#,
                t0 + i,
                (u * 7 + l) % 50_000
            )?;
            i += 1;
        }
    }
    let data = Arc::new(data);
    let tmp = tempdir("checkpoint")?;
    let mut cfg = PipelineConfig {
        checkpoint: CheckpointConfig {
            dir: Some(tmp.join("ckpt")),
            interval: Duration::from_secs(3600),
            retain: 2,
        },
        ..Default::default()
    };
    if let Some(n) = shards {
        cfg.shards = n;
    }
    let base_rss = rss_bytes();
    let source: Box<dyn Source> = Box::new(MemorySource::new(data.clone(), false));
    let handle = Pipeline::new(cfg.clone(), source, Vec::new()).start()?;
    let want = (carts * lines) as usize;
    let t = Instant::now();
    loop {
        let stats = handle.api.shard_stats();
        let have: usize = stats.iter().map(|s| s.cart_lines).sum();
        if have >= want {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("state did not reach {want} cart lines ({have})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = handle.api.shard_stats();
    let state_rss = rss_bytes().saturating_sub(base_rss);
    let dedup: usize = stats.iter().map(|s| s.dedup_entries).sum();
    let cart_bytes: usize = stats.iter().map(|s| s.cart_state_bytes).sum();
    let other_bytes: usize = stats.iter().map(|s| s.other_state_bytes).sum();
    let metrics = handle.api.metrics.clone();
    handle.stop();
    handle.join()?;
    let ck_bytes = metrics.checkpoint_bytes.get();
    let ck_secs = metrics.checkpoint_duration.get_sample_sum();
    // restore: a new pipeline over the same directory
    let t = Instant::now();
    let source: Box<dyn Source> = Box::new(MemorySource::new(data, false));
    let h2 = Pipeline::new(cfg, source, Vec::new()).start()?;
    let restore = t.elapsed().as_secs_f64();
    h2.stop();
    h2.join()?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!("machine: {}", machine());
    println!(
        "{carts} active carts, {want} cart lines, {dedup} dedup ids held: checkpoint {:.1} MB written in {ck_secs:.2} s (barrier to durable manifest), restored in {restore:.2} s",
        ck_bytes as f64 / 1e6
    );
    println!(
        "cart state (tables at capacity, estimated from entry sizes): {:.1} MB = {:.0} bytes per cart line; other keyed state (dedup ids, open windows, holds): {:.1} MB",
        cart_bytes as f64 / 1e6,
        cart_bytes as f64 / want as f64,
        other_bytes as f64 / 1e6
    );
    println!(
        "resident memory for that state (RSS growth, includes dedup ids and allocator slack): {:.0} MB, {:.0} bytes per cart line",
        state_rss as f64 / 1e6,
        state_rss as f64 / want as f64
    );
    Ok(())
}
