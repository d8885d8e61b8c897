//! PostgreSQL: one table per stream, exactly-once through a staging table.
//!
//! * `write` buffers the epoch's records as COPY rows; large epochs are flushed early.
//! * `pre_commit` COPYs what is left into `cartpulse_stage (epoch, seq, stream, key,
//!   payload)` in one transaction: durable, invisible to readers of the result tables.
//! * `commit` moves the epoch's staged rows into the result tables (upserts, the last record
//!   of a key in the epoch winning), deletes them from staging and records the epoch in
//!   `cartpulse_committed_epochs`, all in one transaction, skipped when the epoch is already
//!   recorded — so a replayed commit changes nothing.
//! * `recover(c)` commits staged epochs `≤ c` and deletes staged epochs `> c`; a fresh start
//!   (`None`) empties the sink's tables, as the file sink empties its directory.
//!
//! `max_prepared_transactions = 0` on ordinary servers rules out PREPARE TRANSACTION, which is
//! why the epoch is staged in ordinary rows instead.

use crate::retry::{retry, RetryConfig};
use crate::schema::{self, key_of, Fields, Key, Kind, StreamSchema};
use crate::{names, parse_streams, sink_error, StoreError};
use cartpulse_engine::{Sink, SinkError, Stream};
use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Sink name in logs and metrics (default `postgres`).
    pub name: Option<String>,
    /// libpq-style `key=value` string or `postgres://` URL.
    pub url: String,
    /// Schema holding the tables; created when missing.
    pub schema: String,
    /// Streams to store (`carts` makes the pipeline produce the opt-in carts stream).
    pub streams: Vec<String>,
    /// Buffered bytes of one epoch after which they are staged before `pre_commit`.
    pub flush_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub retry: RetryConfig,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            name: None,
            url: "host=127.0.0.1 user=postgres dbname=postgres".into(),
            schema: "cartpulse".into(),
            streams: names(&[
                Stream::UserWindows,
                Stream::GlobalWindows,
                Stream::AbandonedCarts,
                Stream::Carts,
                Stream::Alerts,
                Stream::LateEvents,
                Stream::DeadLetter,
            ]),
            flush_bytes: 8 << 20,
            connect_timeout: Duration::from_secs(5),
            retry: RetryConfig::default(),
        }
    }
}

/// Increase when the DDL in `migrations` grows a step.
const SCHEMA_VERSION: i32 = 1;

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn sql_type(k: Kind) -> &'static str {
    match k {
        Kind::Text => "TEXT",
        Kind::Int => "BIGINT",
        Kind::Money => "NUMERIC(18,4)",
        Kind::Json => "JSONB",
    }
}

/// The expression that reads field `f` out of the staged JSONB `payload`.
fn extract(f: &schema::Field) -> String {
    let lit = f.name.replace('\'', "''");
    match f.kind {
        Kind::Text => format!("payload->>'{lit}'"),
        Kind::Int => format!("(payload->>'{lit}')::BIGINT"),
        Kind::Money => format!("(payload->>'{lit}')::NUMERIC(18,4)"),
        Kind::Json => format!("payload->'{lit}'"),
    }
}

fn key_columns(s: &StreamSchema) -> Vec<&'static str> {
    match s.key {
        Key::Fields(k) => k.to_vec(),
        Key::AlertId => vec!["alert_id"],
        Key::Appended => vec!["epoch", "seq"],
    }
}

fn table_ddl(schema: &str, s: &StreamSchema) -> String {
    let keys = key_columns(s);
    let mut cols: Vec<String> = Vec::new();
    if s.key == Key::Appended {
        cols.push("epoch BIGINT NOT NULL".into());
        cols.push("seq BIGINT NOT NULL".into());
    }
    for f in s.fields {
        let null = if keys.contains(&f.name) {
            " NOT NULL"
        } else {
            ""
        };
        cols.push(format!("{} {}{null}", ident(f.name), sql_type(f.kind)));
    }
    if s.payload {
        cols.push("payload JSONB NOT NULL".into());
    }
    if s.key != Key::Appended {
        // the epoch that last wrote the row: which checkpoint a result came from
        cols.push("epoch BIGINT NOT NULL".into());
    }
    cols.push(format!(
        "PRIMARY KEY ({})",
        keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
    ));
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (\n  {}\n)",
        ident(schema),
        ident(s.stream.name()),
        cols.join(",\n  ")
    )
}

/// Ordered steps; step `i` takes the schema from version `i` to `i + 1`. Steps are never
/// edited once released: a change to the stream schemas is a new step (ALTER TABLE …).
fn migrations(schema: &str) -> Vec<Vec<String>> {
    let q = ident(schema);
    let mut v1 = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {q}.cartpulse_stage (
  epoch BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  stream TEXT NOT NULL,
  key TEXT NOT NULL,
  payload JSONB NOT NULL,
  PRIMARY KEY (epoch, seq)
)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {q}.cartpulse_committed_epochs (
  epoch BIGINT PRIMARY KEY,
  committed_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"
        ),
    ];
    v1.extend(schema::SCHEMAS.iter().map(|s| table_ddl(schema, s)));
    vec![v1]
}

/// Moves one stream's rows of `$1` from staging into its table.
fn apply_sql(schema: &str, s: &StreamSchema) -> Vec<String> {
    let q = ident(schema);
    let table = format!("{q}.{}", ident(s.stream.name()));
    let stream = s.stream.name();
    let latest = format!(
        "(SELECT DISTINCT ON (key) epoch, seq, key, payload FROM {q}.cartpulse_stage \
         WHERE epoch = $1 AND stream = '{stream}' ORDER BY key, seq DESC)"
    );
    let mut cols: Vec<String> = Vec::new();
    let mut vals: Vec<String> = Vec::new();
    match s.key {
        Key::Appended => {
            cols.extend(["epoch".into(), "seq".into()]);
            vals.extend(["epoch".into(), "seq".into()]);
        }
        Key::AlertId => {
            cols.push("alert_id".into());
            vals.push("key".into());
        }
        Key::Fields(_) => {}
    }
    for f in s.fields {
        if s.key == Key::AlertId && f.name == "alert_id" {
            continue;
        }
        cols.push(ident(f.name));
        vals.push(extract(f));
    }
    if s.payload {
        cols.push("payload".into());
        vals.push("payload".into());
    }
    if s.key != Key::Appended {
        cols.push("epoch".into());
        vals.push("epoch".into());
    }
    let keys = key_columns(s);
    let conflict = if s.key == Key::Appended {
        "ON CONFLICT DO NOTHING".to_string()
    } else {
        let set: Vec<String> = cols
            .iter()
            .filter(|c| !keys.iter().any(|k| ident(k) == **c || *k == c.as_str()))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", "),
            set.join(", ")
        )
    };
    let source = if s.key == Key::Appended {
        format!("{q}.cartpulse_stage WHERE epoch = $1 AND stream = '{stream}'")
    } else {
        format!("{latest} t")
    };
    let insert = |filter: &str| {
        format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {source}{filter} {conflict}",
            cols.join(", "),
            vals.join(", ")
        )
    };
    if s.stream == Stream::Carts {
        // a cart with no lines is gone: its row is deleted, not upserted
        let empty = "jsonb_array_length(COALESCE(t.payload->'lines', '[]'::jsonb)) = 0";
        vec![
            format!("DELETE FROM {table} c USING {latest} t WHERE c.user_id = t.key AND {empty}"),
            insert(&format!(" WHERE NOT ({empty})")),
        ]
    } else {
        vec![insert("")]
    }
}

fn classify(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // connection trouble, resources, shutdown, serialization/deadlock: the same
        // statement can succeed later
        let retryable = code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code.starts_with("58")
            || code == "40001"
            || code == "40P01";
        let mut m = format!("{} (SQLSTATE {code})", db.message());
        if let Some(d) = db.detail() {
            m.push_str(": ");
            m.push_str(d);
        }
        return StoreError {
            message: m,
            retryable,
        };
    }
    let m = e.to_string();
    let retryable = e.is_closed()
        || [
            "error connecting",
            "error communicating",
            "connection closed",
            "timeout",
        ]
        .iter()
        .any(|p| m.starts_with(p));
    StoreError {
        message: m,
        retryable,
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| d.code().code() == "23505")
}

/// The connection and the runtime that drives it. The sink runs on the committer's plain
/// thread, so it owns a current-thread runtime and blocks on it.
struct Conn {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    pg: tokio_postgres::Config,
    name: String,
    retry: RetryConfig,
}

impl Conn {
    fn connect(&mut self) -> Result<(), StoreError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, conn) = self.rt.block_on(self.pg.connect(NoTls)).map_err(classify)?;
            let name = self.name.clone();
            self.rt.spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(sink = name, error = %e, "postgres connection ended");
                }
            });
            self.client = Some(client);
        }
        Ok(())
    }

    /// Runs `op` with a live connection until it succeeds, reconnecting after failures.
    fn run<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&tokio::runtime::Runtime, &mut Client) -> Result<T, StoreError>,
    ) -> Result<T, SinkError> {
        let (name, cfg) = (self.name.clone(), self.retry.clone());
        retry(&name, &cfg, what, || {
            let r = match self.connect() {
                Ok(()) => op(&self.rt, self.client.as_mut().expect("connected")),
                Err(e) => Err(e),
            };
            if r.as_ref().is_err_and(|e| e.retryable) {
                self.client = None;
            }
            r
        })
    }
}

#[derive(Default)]
struct EpochBuf {
    rows: Vec<u8>,
    next_seq: u64,
}

pub struct PostgresSink {
    cfg: PostgresConfig,
    name: String,
    streams: Vec<Stream>,
    conn: Conn,
    pending: BTreeMap<u64, EpochBuf>,
    apply: Vec<(Stream, Vec<String>)>,
}

/// COPY text format: backslash, newline, carriage return and tab are escaped.
fn copy_escape(out: &mut Vec<u8>, s: &[u8]) {
    let mut last = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&s[last..i]);
        out.extend_from_slice(esc);
        last = i + 1;
    }
    out.extend_from_slice(&s[last..]);
}

impl PostgresSink {
    pub fn new(cfg: PostgresConfig) -> Result<PostgresSink, StoreError> {
        let name = cfg.name.clone().unwrap_or_else(|| "postgres".into());
        let streams = parse_streams(&name, &cfg.streams)?;
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|e| StoreError::fatal(format!("{name}: bad `url`: {e}")))?;
        pg.connect_timeout(cfg.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("cartpulse");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::fatal(format!("{name}: runtime: {e}")))?;
        let apply = streams
            .iter()
            .map(|s| {
                (
                    *s,
                    apply_sql(&cfg.schema, schema::schema(*s).expect("checked")),
                )
            })
            .collect();
        Ok(PostgresSink {
            conn: Conn {
                rt,
                client: None,
                pg,
                name: name.clone(),
                retry: cfg.retry.clone(),
            },
            cfg,
            name,
            streams,
            pending: BTreeMap::new(),
            apply,
        })
    }

    fn migrate(&mut self) -> Result<(), SinkError> {
        let schema = self.cfg.schema.clone();
        let steps = migrations(&schema);
        let q = ident(&schema);
        self.conn.run("migrate", |rt, c| {
            rt.block_on(async {
                let tx = c.transaction().await?;
                // one migrator per schema at a time; DDL of other schemas goes on in parallel
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('cartpulse-schema:' || $1::text))",
                    &[&schema],
                )
                .await?;
                tx.batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {q};
                     CREATE TABLE IF NOT EXISTS {q}.cartpulse_schema_version (version INT NOT NULL)"
                ))
                .await?;
                let v: i32 = tx
                    .query_one(
                        &format!("SELECT COALESCE(MAX(version), 0) FROM {q}.cartpulse_schema_version"),
                        &[],
                    )
                    .await?
                    .get(0);
                if v > SCHEMA_VERSION {
                    tx.rollback().await?;
                    return Ok(Err(StoreError::fatal(format!(
                        "schema {schema} is at version {v}, newer than this build's {SCHEMA_VERSION}"
                    ))));
                }
                for step in steps.iter().skip(v as usize) {
                    for stmt in step {
                        tx.batch_execute(stmt).await?;
                    }
                }
                tx.execute(&format!("DELETE FROM {q}.cartpulse_schema_version"), &[])
                    .await?;
                tx.execute(
                    &format!("INSERT INTO {q}.cartpulse_schema_version VALUES ($1)"),
                    &[&SCHEMA_VERSION],
                )
                .await?;
                tx.commit().await?;
                Ok(Ok(()))
            })
            .map_err(classify)?
        })
    }

    /// Stages the buffered rows of `epoch` in one transaction.
    fn flush(&mut self, epoch: u64) -> Result<(), SinkError> {
        let Some(buf) = self.pending.get_mut(&epoch) else {
            return Ok(());
        };
        if buf.rows.is_empty() {
            return Ok(());
        }
        let data = bytes::Bytes::from(std::mem::take(&mut buf.rows));
        let sql = format!(
            "COPY {}.cartpulse_stage (epoch, seq, stream, key, payload) FROM STDIN",
            ident(&self.cfg.schema)
        );
        let mut attempt = 0;
        self.conn.run("stage", |rt, c| {
            attempt += 1;
            let r = rt.block_on(async {
                let tx = c.transaction().await?;
                let sink = tx.copy_in(&sql).await?;
                futures_util::pin_mut!(sink);
                sink.send(data.clone()).await?;
                sink.finish().await?;
                tx.commit().await
            });
            match r {
                Ok(()) => Ok(()),
                // an earlier attempt committed but its answer was lost: the rows are there
                Err(e) if attempt > 1 && is_unique_violation(&e) => Ok(()),
                Err(e) => Err(classify(e)),
            }
        })
    }

    /// Makes `epoch` visible; a no-op when it already is.
    fn apply(&mut self, epoch: u64) -> Result<(), SinkError> {
        let q = ident(&self.cfg.schema);
        let e = epoch as i64;
        let apply = &self.apply;
        self.conn.run("commit", |rt, c| {
            rt.block_on(async {
                let tx = c.transaction().await?;
                let done = tx
                    .query_opt(
                        &format!("SELECT 1 FROM {q}.cartpulse_committed_epochs WHERE epoch = $1"),
                        &[&e],
                    )
                    .await?
                    .is_some();
                if !done {
                    for (_, stmts) in apply {
                        for s in stmts {
                            tx.execute(s.as_str(), &[&e]).await?;
                        }
                    }
                    tx.execute(
                        &format!("INSERT INTO {q}.cartpulse_committed_epochs (epoch) VALUES ($1)"),
                        &[&e],
                    )
                    .await?;
                }
                tx.execute(
                    &format!("DELETE FROM {q}.cartpulse_stage WHERE epoch = $1"),
                    &[&e],
                )
                .await?;
                tx.commit().await
            })
            .map_err(classify)
        })
    }
}

impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, stream: Stream) -> bool {
        self.streams.contains(&stream)
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError> {
        self.pending.clear();
        self.migrate()?;
        let q = ident(&self.cfg.schema);
        match committed {
            None => {
                let mut tables: Vec<String> = schema::SCHEMAS
                    .iter()
                    .map(|s| format!("{q}.{}", ident(s.stream.name())))
                    .collect();
                tables.push(format!("{q}.cartpulse_stage"));
                tables.push(format!("{q}.cartpulse_committed_epochs"));
                let sql = format!("TRUNCATE {}", tables.join(", "));
                self.conn.run("reset", |rt, c| {
                    rt.block_on(c.batch_execute(&sql)).map_err(classify)
                })?;
            }
            Some(c) => {
                let cv = c as i64;
                let (staged, newest) = self.conn.run("recover", |rt, cl| {
                    rt.block_on(async {
                        let staged: Vec<i64> = cl
                            .query(
                                &format!(
                                    "SELECT DISTINCT epoch FROM {q}.cartpulse_stage \
                                     WHERE epoch <= $1 ORDER BY epoch"
                                ),
                                &[&cv],
                            )
                            .await?
                            .iter()
                            .map(|r| r.get(0))
                            .collect();
                        let newest: Option<i64> = cl
                            .query_one(
                                &format!("SELECT MAX(epoch) FROM {q}.cartpulse_committed_epochs"),
                                &[],
                            )
                            .await?
                            .get(0);
                        Ok((staged, newest))
                    })
                    .map_err(classify)
                })?;
                if let Some(n) = newest.filter(|n| *n > cv) {
                    tracing::warn!(
                        sink = self.name,
                        committed_in_store = n,
                        checkpoint = c,
                        "the store holds epochs newer than the checkpoint being restored \
                         (was the checkpoint directory replaced?); they are not undone"
                    );
                }
                for e in staged {
                    tracing::info!(sink = self.name, epoch = e, "rolling staged epoch forward");
                    self.apply(e as u64)?;
                }
                self.conn.run("discard", |rt, cl| {
                    rt.block_on(cl.execute(
                        &format!("DELETE FROM {q}.cartpulse_stage WHERE epoch > $1"),
                        &[&cv],
                    ))
                    .map_err(classify)
                })?;
            }
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
        let Some(s) = schema::schema(stream) else {
            return Ok(());
        };
        let buf = self.pending.entry(epoch).or_default();
        let mut epoch_txt = itoa::Buffer::new();
        let epoch_txt = epoch_txt.format(epoch).as_bytes().to_vec();
        for line in schema::lines(records) {
            let seq = buf.next_seq;
            buf.next_seq += 1;
            let key = if s.key == Key::Appended {
                schema::appended_key(epoch, seq)
            } else {
                let r = Fields::parse(line).map_err(|e| sink_error(&self.name, e))?;
                key_of(s, &r, epoch, seq).map_err(|e| sink_error(&self.name, e))?
            };
            let out = &mut buf.rows;
            out.extend_from_slice(&epoch_txt);
            out.push(b'\t');
            out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
            out.push(b'\t');
            out.extend_from_slice(stream.name().as_bytes());
            out.push(b'\t');
            copy_escape(out, key.as_bytes());
            out.push(b'\t');
            copy_escape(out, line);
            out.push(b'\n');
        }
        if buf.rows.len() >= self.cfg.flush_bytes {
            self.flush(epoch)?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.flush(epoch)?;
        self.pending.remove(&epoch);
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        self.apply(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_escape_and_ddl_has_keys() {
        let mut out = Vec::new();
        copy_escape(&mut out, b"a\\b\tc\nd");
        assert_eq!(out, b"a\\\\b\\tc\\nd");
        let ddl = table_ddl("s", schema::schema(Stream::UserWindows).unwrap());
        assert!(
            ddl.contains("PRIMARY KEY (\"user_id\", \"window_start\", \"window_end\")"),
            "{ddl}"
        );
        assert!(ddl.contains("\"value_added\" NUMERIC(18,4)"), "{ddl}");
        let sql = apply_sql("s", schema::schema(Stream::Carts).unwrap());
        assert!(
            sql[0].starts_with("DELETE") && sql[1].contains("ON CONFLICT (\"user_id\") DO UPDATE"),
            "{sql:?}"
        );
    }
}
