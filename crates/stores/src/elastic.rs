//! Elasticsearch through the `_bulk` API: one index per stream (`<prefix><stream>`), each
//! result a document whose `_id` is derived from the stream's key, written at commit from the
//! local staging file.
//!
//! Exactly-once: `index` with a deterministic `_id` is idempotent, so a replayed commit
//! rewrites the same documents; an emptied cart is a `delete` (a `404` for it is success).
//! Appended streams get `_id = <epoch>-<seq>`, fixed by the staged file.
//!
//! `_bulk` answers 200 even when items fail, so every item's status is checked: `429` and
//! `5xx` items are sent again (alone) after a backoff; any other failure — a mapping
//! conflict, a document the index rejects — stops the pipeline with the item's error, since
//! sending it again cannot help.
//!
//! Money fields are mapped as `scaled_float` with a scaling factor of 10000: stored as exact
//! integers of 1/10000, never as a binary float.

use crate::retry::{retry, RetryConfig};
use crate::schema::{self, Fields, Kind};
use crate::stage::FileStage;
use crate::{names, parse_streams, require_stage_dir, sink_error, StoreError};
use cartpulse_engine::{Sink, SinkError, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticConfig {
    pub name: Option<String>,
    pub url: String,
    pub index_prefix: String,
    /// `Authorization: ApiKey …` when set.
    pub api_key: Option<String>,
    pub streams: Vec<String>,
    pub stage_dir: Option<PathBuf>,
    /// Documents per `_bulk` request.
    pub batch_docs: usize,
    /// Bytes per `_bulk` request (a request is cut at whichever limit comes first).
    pub batch_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
}

impl Default for ElasticConfig {
    fn default() -> Self {
        ElasticConfig {
            name: None,
            url: "http://127.0.0.1:9200".into(),
            index_prefix: "cartpulse-".into(),
            api_key: None,
            streams: names(&[
                Stream::UserWindows,
                Stream::GlobalWindows,
                Stream::AbandonedCarts,
                Stream::Alerts,
                Stream::LateEvents,
                Stream::DeadLetter,
            ]),
            stage_dir: None,
            batch_docs: 5000,
            batch_bytes: 5 << 20,
            timeout: Duration::from_secs(60),
            retry: RetryConfig::default(),
        }
    }
}

fn mapping(s: Stream) -> Value {
    let mut props = serde_json::Map::new();
    for f in schema::schema(s).expect("known").fields {
        let m = match f.kind {
            Kind::Text => json!({"type": "keyword"}),
            Kind::Int => json!({"type": "long"}),
            Kind::Money => json!({"type": "scaled_float", "scaling_factor": 10000}),
            // kept in _source as written, not indexed: its shape is the producer's
            Kind::Json => json!({"type": "object", "enabled": false}),
        };
        props.insert(f.name.to_string(), m);
    }
    json!({"mappings": {"properties": props}})
}

/// One document operation of a bulk request: its two (or, for `delete`, one) NDJSON lines.
struct Op {
    lines: Vec<u8>,
    delete: bool,
}

pub struct ElasticSink {
    cfg: ElasticConfig,
    name: String,
    streams: Vec<Stream>,
    agent: ureq::Agent,
    stage: FileStage,
}

fn http_error(e: ureq::Error) -> StoreError {
    match e {
        ureq::Error::Status(status, resp) => {
            let body = resp.into_string().unwrap_or_default();
            StoreError {
                message: format!("HTTP {status}: {}", body.trim()),
                retryable: status == 429 || status >= 500,
            }
        }
        e => StoreError::retryable(e.to_string()),
    }
}

impl ElasticSink {
    pub fn new(cfg: ElasticConfig) -> Result<ElasticSink, StoreError> {
        let name = cfg.name.clone().unwrap_or_else(|| "elasticsearch".into());
        let streams = parse_streams(&name, &cfg.streams)?;
        let stage = FileStage::open(&require_stage_dir(&name, &cfg.stage_dir)?)?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(cfg.timeout)
            .build();
        Ok(ElasticSink {
            cfg,
            name,
            streams,
            agent,
            stage,
        })
    }

    fn index(&self, s: Stream) -> String {
        format!("{}{}", self.cfg.index_prefix, s.name())
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(
            method,
            &format!("{}/{}", self.cfg.url.trim_end_matches('/'), path),
        );
        match &self.cfg.api_key {
            Some(k) => r.set("Authorization", &format!("ApiKey {k}")),
            None => r,
        }
    }

    fn setup(&self, fresh: bool) -> Result<(), SinkError> {
        for s in &self.streams {
            let index = self.index(*s);
            if fresh {
                retry(&self.name, &self.cfg.retry, "delete index", || {
                    match self.req("DELETE", &index).call() {
                        Ok(_) | Err(ureq::Error::Status(404, _)) => Ok(()),
                        Err(e) => Err(http_error(e)),
                    }
                })?;
            }
            let body = mapping(*s).to_string();
            retry(&self.name, &self.cfg.retry, "create index", || {
                match self
                    .req("PUT", &index)
                    .set("Content-Type", "application/json")
                    .send_string(&body)
                {
                    Ok(_) => Ok(()),
                    Err(ureq::Error::Status(400, r)) => {
                        let b = r.into_string().unwrap_or_default();
                        if b.contains("resource_already_exists_exception") {
                            Ok(())
                        } else {
                            Err(StoreError::fatal(format!("create index {index}: {b}")))
                        }
                    }
                    Err(e) => Err(http_error(e)),
                }
            })?;
        }
        Ok(())
    }

    /// Sends `ops` until every item has succeeded; retries only the items that failed with
    /// a retryable status.
    fn bulk(&self, mut ops: Vec<Op>) -> Result<(), SinkError> {
        retry(&self.name, &self.cfg.retry, "bulk", || {
            let mut body = Vec::with_capacity(ops.iter().map(|o| o.lines.len()).sum());
            for o in &ops {
                body.extend_from_slice(&o.lines);
            }
            let resp = self
                .req("POST", "_bulk")
                .set("Content-Type", "application/x-ndjson")
                .send_bytes(&body)
                .map_err(http_error)?;
            let text = resp
                .into_string()
                .map_err(|e| StoreError::retryable(format!("bulk answer: {e}")))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| StoreError::retryable(format!("bulk answer {text:.200}: {e}")))?;
            if v["errors"] != Value::Bool(true) {
                ops.clear();
                return Ok(());
            }
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.len() != ops.len() {
                return Err(StoreError::fatal(format!(
                    "bulk answered {} items for {} operations",
                    items.len(),
                    ops.len()
                )));
            }
            let mut again = Vec::new();
            let mut last = String::new();
            for (op, item) in ops.drain(..).zip(items) {
                let r = item
                    .as_object()
                    .and_then(|o| o.values().next())
                    .cloned()
                    .unwrap_or(Value::Null);
                let status = r["status"].as_u64().unwrap_or(0);
                if (200..300).contains(&status) || (op.delete && status == 404) {
                    continue;
                }
                if status == 429 || status >= 500 {
                    last = format!("item {status}: {}", r["error"]);
                    again.push(op);
                    continue;
                }
                return Err(StoreError::fatal(format!(
                    "document rejected (HTTP {status}, {} {}): {} — {}",
                    r["_index"].as_str().unwrap_or("?"),
                    r["_id"].as_str().unwrap_or("?"),
                    r["error"],
                    String::from_utf8_lossy(&op.lines).trim()
                )));
            }
            ops = again;
            if ops.is_empty() {
                Ok(())
            } else {
                Err(StoreError::retryable(format!(
                    "{} items to retry, last {last}",
                    ops.len()
                )))
            }
        })
    }

    fn apply(&mut self, epoch: u64) -> Result<(), SinkError> {
        let Some(staged) = self
            .stage
            .read(epoch)
            .map_err(|e| sink_error(&self.name, e))?
        else {
            return Ok(());
        };
        let mut ops = Vec::new();
        let mut bytes = 0;
        for (stream, seq, line) in staged.records() {
            if !self.streams.contains(&stream) {
                continue;
            }
            let s = schema::schema(stream).expect("checked");
            let r = Fields::parse(line).map_err(|e| sink_error(&self.name, e))?;
            let id = schema::key_of(s, &r, epoch, seq).map_err(|e| sink_error(&self.name, e))?;
            let delete = stream == Stream::Carts && r.cart_is_empty();
            let action = if delete { "delete" } else { "index" };
            let mut lines =
                serde_json::to_vec(&json!({action: {"_index": self.index(stream), "_id": id}}))
                    .expect("serializes");
            lines.push(b'\n');
            if !delete {
                lines.extend_from_slice(line);
                lines.push(b'\n');
            }
            bytes += lines.len();
            ops.push(Op { lines, delete });
            if ops.len() >= self.cfg.batch_docs || bytes >= self.cfg.batch_bytes {
                self.bulk(std::mem::take(&mut ops))?;
                bytes = 0;
            }
        }
        if !ops.is_empty() {
            self.bulk(ops)?;
        }
        self.stage
            .done(epoch)
            .map_err(|e| sink_error(&self.name, e))
    }
}

impl Sink for ElasticSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, stream: Stream) -> bool {
        self.streams.contains(&stream)
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError> {
        let roll = self
            .stage
            .recover(committed)
            .map_err(|e| sink_error(&self.name, e))?;
        self.setup(committed.is_none())?;
        for e in roll {
            tracing::info!(sink = self.name, epoch = e, "rolling staged epoch forward");
            self.apply(e)?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        epoch: u64,
        stream: Stream,
        records: &[u8],
        _count: u64,
    ) -> Result<(), SinkError> {
        self.stage
            .write(epoch, stream, records)
            .map_err(|e| sink_error(&self.name, e))
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.stage
            .seal(epoch)
            .map_err(|e| sink_error(&self.name, e))
    }

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.apply(epoch)
    }
}
