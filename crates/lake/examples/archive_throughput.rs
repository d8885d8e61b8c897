//! Archive sink throughput: feeds an `events` stream file (the JSONL sink's
//! `events/part-*.jsonl`, concatenated) through `ParquetArchiveSink` in epochs, as the
//! committer would, and reports events/s for staging alone and end to end (with Parquet
//! publication).
//!
//! ```sh
//! cargo run --release -p cartpulse-lake --example archive_throughput -- EVENTS.jsonl [EPOCH_EVENTS] [zstd|zstd1|snappy|uncompressed]
//! ```

use cartpulse_engine::{Sink, Stream};
use cartpulse_lake::{ArchiveConfig, Compression, ParquetArchiveSink};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: archive_throughput EVENTS.jsonl [EPOCH_EVENTS]");
    let per_epoch: usize = args
        .next()
        .map_or(200_000, |s| s.parse().expect("a number"));
    let mut cfg = ArchiveConfig::new("");
    match args.next().as_deref() {
        None | Some("zstd") => {}
        Some("zstd1") => cfg.zstd_level = 1,
        Some("snappy") => cfg.compression = Compression::Snappy,
        Some("uncompressed") => cfg.compression = Compression::Uncompressed,
        Some(o) => panic!("unknown compression {o}"),
    }
    let data = std::fs::read(&path).expect("read the events file");
    // epochs of whole lines, handed over in 1 MiB writes like the committer's batches
    let mut epochs: Vec<Vec<&[u8]>> = Vec::new();
    let (mut start, mut n, mut cur) = (0, 0, Vec::new());
    let mut chunk_start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        n += 1;
        if i + 1 - chunk_start >= 1 << 20 {
            cur.push(&data[chunk_start..=i]);
            chunk_start = i + 1;
        }
        if n == per_epoch {
            if chunk_start <= i {
                cur.push(&data[chunk_start..=i]);
            }
            epochs.push(std::mem::take(&mut cur));
            chunk_start = i + 1;
            n = 0;
        }
        start = i + 1;
    }
    if chunk_start < start {
        cur.push(&data[chunk_start..start]);
    }
    if !cur.is_empty() {
        epochs.push(cur);
    }
    let events = data.iter().filter(|&&b| b == b'\n').count();
    let dir = tempfile::tempdir().expect("temp dir");
    cfg.dir = dir.path().to_path_buf();
    let mut sink = ParquetArchiveSink::new(cfg);
    sink.recover(None).expect("recover");
    let t = Instant::now();
    let mut staging = 0.0;
    for (e, chunks) in epochs.iter().enumerate() {
        let epoch = e as u64 + 1;
        let s = Instant::now();
        for c in chunks {
            sink.write(epoch, Stream::Events, c, 0).expect("write");
        }
        sink.pre_commit(epoch).expect("pre_commit");
        staging += s.elapsed().as_secs_f64();
        sink.commit(epoch).expect("commit");
    }
    let before_final = t.elapsed().as_secs_f64();
    sink.publish_all().expect("publish");
    let total = t.elapsed().as_secs_f64();
    let st = sink.stats().clone();
    drop(sink);
    println!(
        "{events} events in {} epochs ({:.1} MB of JSON)",
        epochs.len(),
        data.len() as f64 / 1e6
    );
    println!(
        "staging (decode + Arrow IPC + fsync): {:.2}s, {:.2} M events/s",
        staging,
        events as f64 / staging / 1e6
    );
    println!(
        "end to end (incl. Parquet publication of {} files, {:.1} MB): {:.2}s, {:.2} M events/s \
         (publication during the epochs: {:.2}s)",
        st.files_published,
        st.bytes_published as f64 / 1e6,
        total,
        events as f64 / total / 1e6,
        before_final - staging
    );
}
