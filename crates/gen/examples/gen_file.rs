//! Writes a stream and its ground truth for inspection:
//! `cargo run -p cartpulse-gen --release --example gen_file -- OUT.jsonl [EVENTS] [TRUTH.json] [CONFIG.json]`.

use std::path::PathBuf;

use cartpulse_gen::{write_file, GenConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .expect("usage: gen_file OUT [EVENTS] [TRUTH] [CONFIG]"),
    );
    let events = args
        .next()
        .map(|a| a.parse().expect("EVENTS must be an integer"));
    let truth = args.next().map(PathBuf::from);
    let mut cfg: GenConfig = match args.next() {
        Some(p) => serde_json::from_slice(&std::fs::read(p).expect("read config")).expect("config"),
        None => GenConfig::default(),
    };
    if let Some(n) = events {
        cfg.events = n;
    }
    let st = write_file(cfg, &out, truth.as_deref()).expect("generation failed");
    eprintln!(
        "{} events ({} delayed, {} duplicates), {} bytes in {:.2?}: {:.2} M events/s",
        st.events,
        st.delayed,
        st.duplicates,
        st.bytes,
        st.elapsed,
        st.events_per_sec() / 1e6
    );
}
