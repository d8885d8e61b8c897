//! The one config file format: TOML, every section a serde type with defaults, unknown
//! keys rejected. Errors name the file, the key and what was expected.

use anyhow::Context;
use cartpulse_connectors::{SinkConfig, SourceConfig};
use cartpulse_engine::PipelineConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    pub pipeline: PipelineConfig,
    pub source: Option<SourceConfig>,
    pub sinks: Vec<SinkConfig>,
    /// Real-time stores (`[[stores]]`): Postgres, Redis, ClickHouse, Elasticsearch.
    pub stores: Vec<cartpulse_stores::StoreSinkConfig>,
    pub http: HttpConfig,
    /// The analytics stage: rules, features, funnel, price and stock alerts.
    pub analytics: cartpulse_analytics::live::AnalyticsConfig,
    /// The batch layer (`cartpulse batch`; scheduled inside `run` when `views_dir` is set).
    pub batch: cartpulse_batch::BatchConfig,
    /// Product and user tables joined onto every event (`[enrich.products]`, `[enrich.users]`).
    pub enrich: cartpulse_connectors::enrich::EnrichConfig,
    /// The serving layer: merged views and SQL over HTTP (`[serving] enabled = true`).
    pub serving: cartpulse_serving::ServingConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the HTTP API while running (`run` only; `demo` always serves).
    pub enabled: bool,
    pub addr: SocketAddr,
    /// Bearer token for every endpoint but health; required off loopback.
    pub token: Option<String>,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: Option<usize>,
    /// Token for admin endpoints (reloading rules); defaults to `token`.
    pub admin_token: Option<String>,
    /// Token for `POST /ingest` (the HTTP source); defaults to `token`.
    pub ingest_token: Option<String>,
}

impl HttpConfig {
    pub fn serve_options(&self) -> cartpulse_serve::ServeOptions {
        cartpulse_serve::ServeOptions {
            token: self.token.clone(),
            max_body_bytes: self.max_body_bytes,
            admin_token: self.admin_token.clone(),
            ingest_token: self.ingest_token.clone(),
            ingest_max_body_bytes: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: false,
            addr: "127.0.0.1:8080".parse().expect("valid"),
            token: None,
            max_body_bytes: None,
            admin_token: None,
            ingest_token: None,
        }
    }
}

impl AppConfig {
    pub fn load(path: &Path) -> anyhow::Result<AppConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<AppConfig, String> {
        let cfg: AppConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.pipeline
            .validate()
            .map_err(|e| format!("[pipeline] {e}"))?;
        cfg.batch.validate().map_err(|e| format!("[batch] {e}"))?;
        if cfg.batch.views_dir.is_some() && cfg.archive_dir().is_none() {
            return Err(
                "key `batch.views_dir`: expected a [[sinks]] entry with type = \"parquet\" \
                        (the archive the batch layer reads)"
                    .into(),
            );
        }
        cfg.serving
            .validate()
            .map_err(|e| format!("[serving] {e}"))?;
        if cfg.serving.enabled {
            if cfg.batch.views_dir.is_none() {
                return Err(
                    "key `serving.enabled`: expected [batch] views_dir to be set \
                     (the serving layer merges the batch views with the speed layer)"
                        .into(),
                );
            }
            if !cfg.http.enabled {
                return Err("key `serving.enabled`: expected [http] enabled = true \
                     (the merged views are served over HTTP)"
                    .into());
            }
            if cfg.pipeline.checkpoint.dir.is_none() && cfg.serving.dir.is_none() {
                return Err(
                    "key `serving.dir`: expected a directory for the live windows' \
                     journal (or [pipeline.checkpoint] dir, under which it defaults to serving/)"
                        .into(),
                );
            }
        }
        Ok(cfg)
    }

    /// Loads the enrichment tables (`None` without any); `origin` names the file in errors.
    pub fn enricher(
        &self,
        origin: &str,
    ) -> anyhow::Result<Option<std::sync::Arc<cartpulse_engine::enrich::Enricher>>> {
        cartpulse_connectors::enrich::build(&self.enrich)
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }

    /// The archive written by the `parquet` sink, if there is one.
    pub fn archive_dir(&self) -> Option<&Path> {
        self.sinks.iter().find_map(|s| match s {
            SinkConfig::Parquet(a) => Some(a.dir.as_path()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = AppConfig::parse("[pipeline]\nshardz = 2\n").unwrap_err();
        assert!(e.contains("shardz") && e.contains("expected one of"), "{e}");
        let e = AppConfig::parse("[pipeline]\nout_of_orderness = \"five\"\n").unwrap_err();
        assert!(e.contains("out_of_orderness"), "{e}");
        let e = AppConfig::parse("[pipeline]\nshards = 0\n").unwrap_err();
        assert!(e.contains("`shards`") && e.contains("expected"), "{e}");
        let e = AppConfig::parse("[source]\ntype = \"kinesis\"\n").unwrap_err();
        assert!(e.contains("kinesis"), "{e}");
        let e = AppConfig::parse("[source]\ntype = \"kafka\"\ntopix = [\"a\"]\n").unwrap_err();
        assert!(e.contains("topix"), "{e}");
        AppConfig::parse("[source]\ntype = \"kafka\"\ntopics = [\"a\"]\nformat = \"csv\"\ncsv_header = \"ts,user_id,action\"\n").unwrap();
    }

    #[test]
    fn full_example_parses() {
        let c = AppConfig::parse(
            r#"
[pipeline]
shards = 2
out_of_orderness = "5s"
user_window = { kind = "session", gap = "5m" }
[pipeline.checkpoint]
dir = "/tmp/ck"
interval = "10s"
[source]
type = "file"
path = "events.csv"
format = "csv"
[source.csv]
has_header = true
ts_format = { pattern = "%Y-%m-%d %H:%M:%S UTC" }
default_qty = 1
[source.csv.columns]
ts = "event_time"
user_id = "user_id"
action = "event_type"
sku = "product_id"
price = "price"
[source.csv.actions]
cart = "add"
remove_from_cart = "remove"
purchase = "checkout"
[[sinks]]
type = "jsonl"
dir = "out"
[http]
enabled = true
addr = "127.0.0.1:9000"
"#,
        )
        .unwrap();
        assert_eq!(c.pipeline.shards, 2);
        assert_eq!(c.sinks.len(), 1);
    }
}
