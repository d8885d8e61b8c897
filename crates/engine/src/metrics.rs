//! Prometheus metrics with one naming scheme for every component (`cartpulse_<what>_<unit>`).
//! Hot paths count locally and add once per chunk, so a counter costs nothing per event.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub source_records: IntCounter,
    pub source_bytes: IntCounter,
    pub events_decoded: IntCounter,
    pub dead_letters: IntCounterVec,
    pub duplicates: IntCounter,
    pub cart_events: IntCounterVec,
    pub late_events: IntCounter,
    pub missing_values: IntCounterVec,
    pub emitted: IntCounterVec,
    pub watermark_ms: IntGauge,
    pub source_lag: IntGauge,
    pub watermark_lag_ms: IntGauge,
    pub checkpoint_duration: Histogram,
    pub checkpoint_bytes: IntGauge,
    pub checkpoints: IntCounterVec,
    pub last_checkpoint_ms: IntGauge,
    pub state_keys: IntGaugeVec,
    pub carts: IntGaugeVec,
    pub processing_latency: Histogram,
    /// Per-event latency from event time to state update, in microseconds; recorded only
    /// when `PipelineConfig::track_event_latency` is on (benchmarks of live traffic).
    pub event_latency_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    /// Per-event time from the source handing its chunk to the pipeline to the state
    /// update, in microseconds (same switch as `event_latency_us`).
    pub pipeline_latency_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

/// How many reasons `dead_letter_codes` lists.
pub const DEAD_LETTER_CODES: usize =
    cartpulse_model::DecodeError::CODES.len() + crate::enrich::DEAD_LETTER_CODES.len();

/// Every reason a record can be dead-lettered for: decoding, then enrichment.
pub fn dead_letter_codes() -> impl Iterator<Item = &'static str> {
    cartpulse_model::DecodeError::CODES
        .into_iter()
        .chain(crate::enrich::DEAD_LETTER_CODES)
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            source_records: counter(
                &r,
                "cartpulse_source_records_total",
                "Records read from sources",
            ),
            source_bytes: counter(
                &r,
                "cartpulse_source_bytes_total",
                "Bytes read from sources",
            ),
            events_decoded: counter(
                &r,
                "cartpulse_events_decoded_total",
                "Records decoded into events",
            ),
            dead_letters: counter_vec(
                &r,
                "cartpulse_dead_letters_total",
                "Records sent to the dead-letter output, by reason",
                &["reason"],
            ),
            cart_events: counter_vec(
                &r,
                "cartpulse_cart_events_total",
                "Deduplicated cart events processed, by action",
                &["action"],
            ),
            duplicates: counter(
                &r,
                "cartpulse_duplicates_total",
                "Events dropped as duplicates of an earlier event id",
            ),
            late_events: counter(
                &r,
                "cartpulse_late_events_total",
                "Events behind the watermark, sent to the late side output",
            ),
            missing_values: counter_vec(
                &r,
                "cartpulse_missing_values_total",
                "Events processed with a missing optional value, by field",
                &["field"],
            ),
            emitted: counter_vec(
                &r,
                "cartpulse_records_emitted_total",
                "Records committed to sinks, by stream",
                &["stream"],
            ),
            watermark_ms: gauge(
                &r,
                "cartpulse_watermark_ms",
                "Current event-time watermark, epoch ms",
            ),
            source_lag: gauge(&r, "cartpulse_source_lag", "Input waiting upstream (bytes for files, messages for queues), when the source can tell"),
            watermark_lag_ms: gauge(
                &r,
                "cartpulse_watermark_lag_ms",
                "Wall clock minus watermark",
            ),
            checkpoint_duration: histogram(
                &r,
                "cartpulse_checkpoint_duration_seconds",
                "Time from barrier injection to a durable checkpoint",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            checkpoint_bytes: gauge(
                &r,
                "cartpulse_checkpoint_size_bytes",
                "Size of the last completed checkpoint",
            ),
            checkpoints: counter_vec(
                &r,
                "cartpulse_checkpoints_total",
                "Checkpoints by outcome",
                &["outcome"],
            ),
            last_checkpoint_ms: gauge(
                &r,
                "cartpulse_last_checkpoint_timestamp_ms",
                "Wall-clock time of the last completed checkpoint",
            ),
            state_keys: gauge_vec(
                &r,
                "cartpulse_state_entries",
                "Entries in keyed state, by kind and shard",
                &["kind", "shard"],
            ),
            carts: gauge_vec(
                &r,
                "cartpulse_carts",
                "Carts right now: active carts, items, and value in currency units × 10⁴",
                &["measure"],
            ),
            processing_latency: histogram(
                &r,
                "cartpulse_processing_latency_seconds",
                "Time from a chunk being read to its events updating state",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            ),
            event_latency_us: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            ),
            pipeline_latency_us: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            ),
            registry: r,
        };
        for code in dead_letter_codes() {
            m.dead_letters.with_label_values(&[code]);
        }
        for s in crate::output::Stream::ALL {
            m.emitted.with_label_values(&[s.name()]);
        }
        // every labelled series exists from the start, so dashboards and alert rules never
        // see "no data" for a counter that is simply still zero
        for a in cartpulse_model::Action::ALL {
            m.cart_events.with_label_values(&[a.as_str()]);
        }
        for f in ["price", "cart_line"] {
            m.missing_values.with_label_values(&[f]);
        }
        for o in ["completed", "failed"] {
            m.checkpoints.with_label_values(&[o]);
        }
        for k in ["active", "items", "value"] {
            m.carts.with_label_values(&[k]);
        }
        m
    }

    pub fn dead_letters_total(&self) -> u64 {
        dead_letter_codes()
            .map(|c| self.dead_letters.with_label_values(&[c]).get())
            .sum()
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("utf-8")
    }
}
