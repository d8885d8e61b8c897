//! Retrying a store operation until it succeeds.
//!
//! Sinks run on the committer thread, so blocking here is the pipeline's backpressure: while a
//! store is down the committer stalls, the bounded channels fill and the source stops being
//! read. Nothing is dropped. Only errors that say the request itself is wrong (a SQL error, a
//! mapping conflict) end the run, because retrying them would block forever for nothing.

use crate::StoreError;
use cartpulse_engine::SinkError;
use prometheus::{IntCounterVec, Opts, Registry};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay after a failure; doubled after each further failure.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// `cartpulse_sink_retries_total{sink}`: one process-wide vector, so every sink counts into
/// the same series whether or not the pipeline's registry has it yet.
pub fn retries_metric() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        IntCounterVec::new(
            Opts::new(
                "cartpulse_sink_retries_total",
                "Store operations retried after a retryable failure, by sink",
            ),
            &["sink"],
        )
        .expect("valid metric")
    })
}

/// Exports `cartpulse_sink_retries_total` through `registry` (the pipeline's, served on
/// `/metrics`). Registering twice is harmless.
pub fn register_metrics(registry: &Registry) {
    match registry.register(Box::new(retries_metric().clone())) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
        Err(e) => tracing::warn!(error = %e, "cannot register cartpulse_sink_retries_total"),
    }
}

/// Runs `op` until it succeeds or fails with a non-retryable error, sleeping with exponential
/// backoff and full jitter in between (jitter keeps several sinks or processes that lost the
/// same store from hammering it in lockstep when it returns).
pub fn retry<T>(
    sink: &str,
    cfg: &RetryConfig,
    what: &str,
    mut op: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, SinkError> {
    let counter = retries_metric().with_label_values(&[sink]);
    let mut delay = cfg.initial.max(Duration::from_millis(1));
    let mut attempt = 0u64;
    loop {
        match op() {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!(
                        sink,
                        what,
                        attempts = attempt + 1,
                        "store operation succeeded after retries"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.retryable => {
                attempt += 1;
                counter.inc();
                let sleep = rand::thread_rng().gen_range(delay / 2..=delay);
                tracing::warn!(
                    sink,
                    what,
                    attempt,
                    retry_in_ms = sleep.as_millis() as u64,
                    error = %e.message,
                    "store operation failed; retrying"
                );
                std::thread::sleep(sleep);
                delay = (delay * 2).min(cfg.max.max(cfg.initial));
            }
            Err(e) => {
                return Err(SinkError {
                    sink: sink.to_string(),
                    message: format!("{what}: {}", e.message),
                    retryable: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_retryable_errors_and_counts_them() {
        let before = retries_metric().with_label_values(&["retry-test"]).get();
        let mut n = 0;
        let cfg = RetryConfig {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        };
        let v = retry("retry-test", &cfg, "op", || {
            n += 1;
            if n < 4 {
                Err(StoreError::retryable("down"))
            } else {
                Ok(n)
            }
        })
        .unwrap();
        assert_eq!(v, 4);
        assert_eq!(
            retries_metric().with_label_values(&["retry-test"]).get() - before,
            3
        );
        let e = retry("retry-test", &cfg, "op", || -> Result<(), _> {
            Err(StoreError::fatal("bad sql"))
        })
        .unwrap_err();
        assert!(!e.retryable && e.message.contains("bad sql"), "{e}");
        let r = Registry::new();
        register_metrics(&r);
        register_metrics(&r);
        assert!(r
            .gather()
            .iter()
            .any(|f| f.get_name() == "cartpulse_sink_retries_total"));
    }
}
