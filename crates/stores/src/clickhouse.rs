//! ClickHouse over its HTTP interface: one `ReplacingMergeTree` table per stream, ordered by
//! the stream's key, rows inserted as `JSONEachRow` at commit from the local staging file.
//!
//! Exactly-once: a replayed commit (crash after the checkpoint, before the staged file was
//! removed) sends the same rows in the same batches. Two mechanisms absorb it:
//!
//! * every row carries `version = epoch << 32 | seq`, and the table keeps one row per key
//!   with the highest version — a replayed row is identical to the first, and a later
//!   epoch's update wins. Merges happen in the background, so readers that need exact
//!   figures query with `FINAL` (as they must for upserts in ClickHouse anyway);
//! * on servers that have it (22.2 and later), each batch is inserted with
//!   `insert_deduplication_token = <epoch>-<stream>-<batch#>` and the tables are created with
//!   `non_replicated_deduplication_window`, so a replayed batch is dropped on arrival and raw
//!   row counts stay exact too. Debian's `clickhouse-server` (18.16) predates both settings;
//!   there the first mechanism alone holds.

use crate::retry::{retry, RetryConfig};
use crate::schema::{self, Fields, Key, Kind, StreamSchema};
use crate::stage::FileStage;
use crate::{names, parse_streams, require_stage_dir, sink_error, StoreError};
use cartpulse_engine::{Sink, SinkError, Stream};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub name: Option<String>,
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub streams: Vec<String>,
    pub stage_dir: Option<PathBuf>,
    /// Rows per INSERT.
    pub batch_rows: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            name: None,
            url: "http://127.0.0.1:8123".into(),
            database: "cartpulse".into(),
            user: None,
            password: None,
            streams: names(&[
                Stream::UserWindows,
                Stream::GlobalWindows,
                Stream::AbandonedCarts,
                Stream::Alerts,
                Stream::LateEvents,
                Stream::DeadLetter,
            ]),
            stage_dir: None,
            batch_rows: 100_000,
            timeout: Duration::from_secs(60),
            retry: RetryConfig::default(),
        }
    }
}

/// Exception codes after which the same request can succeed later (overload, timeouts,
/// network, read-only while restarting).
const RETRYABLE_CODES: &[u32] = &[
    3, 159, 164, 202, 203, 209, 210, 236, 241, 242, 252, 285, 319, 394, 425, 999,
];

fn ch_type(k: Kind) -> &'static str {
    match k {
        Kind::Text | Kind::Json => "String",
        Kind::Int => "Int64",
        Kind::Money => "Decimal(18, 4)",
    }
}

fn order_by(s: &StreamSchema) -> Vec<&'static str> {
    match s.key {
        Key::Fields(k) => k.to_vec(),
        Key::AlertId => vec!["alert_id"],
        Key::Appended => vec!["epoch", "seq"],
    }
}

fn table_ddl(db: &str, s: &StreamSchema, dedup_window: bool) -> String {
    let mut cols: Vec<String> = s
        .fields
        .iter()
        .map(|f| format!("`{}` {}", f.name, ch_type(f.kind)))
        .collect();
    if s.payload {
        cols.push("payload String".into());
    }
    cols.push("epoch UInt64".into());
    cols.push("seq UInt64".into());
    cols.push("version UInt64".into());
    let settings = if dedup_window {
        " SETTINGS non_replicated_deduplication_window = 1000"
    } else {
        ""
    };
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{}` ({}) ENGINE = ReplacingMergeTree(version) ORDER BY ({}){settings}",
        s.stream.name(),
        cols.join(", "),
        order_by(s).join(", ")
    )
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
}

/// One `JSONEachRow` line for a staged record.
fn row(
    out: &mut Vec<u8>,
    s: &StreamSchema,
    line: &[u8],
    epoch: u64,
    seq: u64,
) -> Result<(), StoreError> {
    let r = Fields::parse(line)?;
    out.push(b'{');
    for f in s.fields {
        let v = if s.key == Key::AlertId && f.name == "alert_id" {
            Some(schema::key_of(s, &r, epoch, seq)?)
        } else {
            match (f.kind, r.raw(f.name)) {
                (_, None) => None,
                (Kind::Json, Some(raw)) => Some(raw.to_string()),
                (Kind::Text, Some(raw)) if !raw.starts_with('"') => Some(raw.to_string()),
                (_, Some(raw)) => {
                    // numbers and strings go through as the exact text the pipeline wrote
                    out.push(b'"');
                    out.extend_from_slice(f.name.as_bytes());
                    out.extend_from_slice(b"\":");
                    out.extend_from_slice(raw.as_bytes());
                    out.push(b',');
                    continue;
                }
            }
        };
        if let Some(v) = v {
            out.push(b'"');
            out.extend_from_slice(f.name.as_bytes());
            out.extend_from_slice(b"\":");
            json_string(out, &v);
            out.push(b',');
        }
    }
    if s.payload {
        out.extend_from_slice(b"\"payload\":");
        json_string(out, r.line);
        out.push(b',');
    }
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"\"epoch\":");
    out.extend_from_slice(n.format(epoch).as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(n.format(seq).as_bytes());
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(n.format((epoch << 32) | (seq & 0xffff_ffff)).as_bytes());
    out.extend_from_slice(b"}\n");
    Ok(())
}

pub struct ClickHouseSink {
    cfg: ClickHouseConfig,
    name: String,
    streams: Vec<Stream>,
    agent: ureq::Agent,
    stage: FileStage,
    /// Whether the server knows `insert_deduplication_token` (22.2+); learnt in `recover`.
    tokens: bool,
}

impl ClickHouseSink {
    pub fn new(cfg: ClickHouseConfig) -> Result<ClickHouseSink, StoreError> {
        let name = cfg.name.clone().unwrap_or_else(|| "clickhouse".into());
        let streams = parse_streams(&name, &cfg.streams)?;
        if !cfg
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::fatal(format!(
                "{name}: `database` must be letters, digits and _, got {:?}",
                cfg.database
            )));
        }
        let stage = FileStage::open(&require_stage_dir(&name, &cfg.stage_dir)?)?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(cfg.timeout)
            .build();
        Ok(ClickHouseSink {
            cfg,
            name,
            streams,
            agent,
            stage,
            tokens: false,
        })
    }

    /// One HTTP request: `query` in the URL, `body` as the data.
    fn request(
        &self,
        query: &str,
        settings: &[(&str, &str)],
        body: &[u8],
    ) -> Result<String, StoreError> {
        let mut req = self.agent.post(&self.cfg.url).query("query", query);
        if let Some(u) = &self.cfg.user {
            req = req.query("user", u);
        }
        if let Some(p) = &self.cfg.password {
            req = req.query("password", p);
        }
        for (k, v) in settings {
            req = req.query(k, v);
        }
        match req.send_bytes(body) {
            Ok(resp) => resp
                .into_string()
                .map_err(|e| StoreError::retryable(format!("reading the answer: {e}"))),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let code = text
                    .split("Code: ")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|c| c.parse::<u32>().ok());
                let retryable = match code {
                    Some(c) => RETRYABLE_CODES.contains(&c),
                    None => matches!(status, 429 | 502 | 503 | 504),
                };
                Err(StoreError {
                    message: format!("HTTP {status}: {}", text.trim()),
                    retryable,
                })
            }
            Err(e) => Err(StoreError::retryable(e.to_string())),
        }
    }

    fn run(
        &self,
        what: &str,
        query: &str,
        settings: &[(&str, &str)],
        body: &[u8],
    ) -> Result<String, SinkError> {
        retry(&self.name, &self.cfg.retry, what, || {
            self.request(query, settings, body)
        })
    }

    fn setup(&mut self) -> Result<(), SinkError> {
        let v = self.run("version", "SELECT version()", &[], b"")?;
        let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        self.tokens = (major, minor) >= (22, 2);
        tracing::info!(
            sink = self.name,
            version = v.trim(),
            dedup_tokens = self.tokens,
            "clickhouse connected"
        );
        let db = self.cfg.database.clone();
        self.run(
            "create database",
            &format!("CREATE DATABASE IF NOT EXISTS `{db}`"),
            &[],
            b"",
        )?;
        for s in &self.streams {
            let ddl = table_ddl(&db, schema::schema(*s).expect("checked"), self.tokens);
            self.run("create table", &ddl, &[], b"")?;
        }
        Ok(())
    }

    fn apply(&mut self, epoch: u64) -> Result<(), SinkError> {
        let Some(staged) = self
            .stage
            .read(epoch)
            .map_err(|e| sink_error(&self.name, e))?
        else {
            return Ok(());
        };
        // rows of each stream in staging order, cut into batches of batch_rows
        let mut bufs: Vec<(Stream, Vec<u8>, usize, usize)> = Vec::new();
        let flush = |this: &Self, s: Stream, body: &[u8], batch: usize| -> Result<(), SinkError> {
            let query = format!(
                "INSERT INTO `{}`.`{}` FORMAT JSONEachRow",
                this.cfg.database,
                s.name()
            );
            let token = format!("{epoch}-{}-{batch}", s.name());
            let settings: Vec<(&str, &str)> = if this.tokens {
                vec![("insert_deduplication_token", token.as_str())]
            } else {
                Vec::new()
            };
            this.run("insert", &query, &settings, body).map(|_| ())
        };
        for (stream, seq, line) in staged.records() {
            if !self.streams.contains(&stream) {
                continue;
            }
            let s = schema::schema(stream).expect("checked");
            let i = match bufs.iter().position(|b| b.0 == stream) {
                Some(i) => i,
                None => {
                    bufs.push((stream, Vec::new(), 0, 0));
                    bufs.len() - 1
                }
            };
            let b = &mut bufs[i];
            row(&mut b.1, s, line, epoch, seq).map_err(|e| sink_error(&self.name, e))?;
            b.2 += 1;
            if b.2 >= self.cfg.batch_rows {
                flush(self, stream, &b.1, b.3)?;
                b.1.clear();
                b.2 = 0;
                b.3 += 1;
            }
        }
        for (stream, body, rows, batch) in &bufs {
            if *rows > 0 {
                flush(self, *stream, body, *batch)?;
            }
        }
        self.stage
            .done(epoch)
            .map_err(|e| sink_error(&self.name, e))
    }
}

impl Sink for ClickHouseSink {
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
        self.setup()?;
        if committed.is_none() {
            for s in self.streams.clone() {
                let q = format!("TRUNCATE TABLE `{}`.`{}`", self.cfg.database, s.name());
                self.run("reset", &q, &[], b"")?;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_raw_numbers_and_quote_json() {
        let mut out = Vec::new();
        let s = schema::schema(Stream::AbandonedCarts).unwrap();
        row(
            &mut out,
            s,
            br#"{"user_id":"u1","last_activity":5,"abandoned_at":9,"items":2,"value":99999999999999.9999,"lines":[{"sku":"p","qty":2,"price":1.5}]}"#,
            3,
            7,
        )
        .unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r#""value":99999999999999.9999,"#), "{line}");
        assert!(
            line.contains(r#""lines":"[{\"sku\":\"p\",\"qty\":2,\"price\":1.5}]""#),
            "{line}"
        );
        assert!(
            line.ends_with(&format!("\"version\":{}}}\n", (3u64 << 32) | 7)),
            "{line}"
        );
        let ddl = table_ddl("db", s, true);
        assert!(
            ddl.contains(
                "ORDER BY (user_id, abandoned_at) SETTINGS non_replicated_deduplication_window"
            ),
            "{ddl}"
        );
    }
}
