//! Throughput check: `cargo run -p cartpulse-gen --release --example gen_bench [events]`.
//!
//! Writes into a reused in-memory buffer that is cleared every MiB, so the
//! number measures generation and formatting, not the disk.

use std::time::Instant;

use cartpulse_gen::{GenConfig, Generator};

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("events must be an integer"))
        .unwrap_or(5_000_000);
    let cfg = GenConfig {
        events,
        ..GenConfig::default()
    };
    let t0 = Instant::now();
    let mut gen = Generator::new(cfg).expect("valid config");
    let setup = t0.elapsed();
    let mut buf = Vec::with_capacity((1 << 20) + 4096);
    let mut bytes = 0u64;
    let t1 = Instant::now();
    while gen.next_line(&mut buf).is_some() {
        if buf.len() >= 1 << 20 {
            bytes += buf.len() as u64;
            buf.clear();
        }
    }
    bytes += buf.len() as u64;
    let secs = t1.elapsed().as_secs_f64();
    let st = gen.stats();
    println!(
        "setup {:.3}s; {} events ({} delayed, {} duplicates) in {:.3}s: {:.2} M events/s, {:.0} MiB/s, {:.0} B/event",
        setup.as_secs_f64(),
        st.events,
        st.delayed,
        st.duplicates,
        secs,
        st.events as f64 / secs / 1e6,
        bytes as f64 / secs / (1 << 20) as f64,
        bytes as f64 / st.events as f64,
    );
}
