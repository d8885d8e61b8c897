//! Change data capture from the row-based binary log of MySQL or MariaDB (what Canal and
//! Debezium do), turning changes of a cart-items table and an orders table into cart events.
//!
//! Mapping (one event per row change, two when a row moves to another user or sku):
//!
//! | change | event |
//! |---|---|
//! | cart row inserted | `add` (qty, price) |
//! | cart row updated, same user and sku | `update_qty` with the new quantity (and price); nothing when neither changed |
//! | cart row updated to another user or sku | `remove` of the old line, `add` of the new |
//! | cart row deleted | `remove` of the row's quantity |
//! | order row inserted | `checkout` (user, order id) |
//!
//! `update_qty` carries the absolute quantity rather than a delta: it is self-correcting, and
//! exact as long as a (user, sku) pair has one row, which is what a cart table holds.
//!
//! **Snapshot, then stream, no gap and no double.** Existing cart rows are read first, paged by
//! primary key inside one `START TRANSACTION WITH CONSISTENT SNAPSHOT`. On MariaDB the binlog
//! position of exactly that snapshot is read from `Binlog_snapshot_file/position` without
//! locking anything; elsewhere (MySQL) `FLUSH TABLES WITH READ LOCK` is held just long
//! enough to open the snapshot and read `SHOW MASTER STATUS`, as Debezium does. The stream
//! then starts at that position: every transaction after it is a change the snapshot did not
//! see.
//!
//! A crash mid-snapshot does not start over (that would count the rows read so far twice):
//! the position records the last primary key handed out, and the restart opens a new
//! snapshot for the rest. Each primary-key range thus has the binlog position its snapshot
//! was taken at, and while streaming a change to a row is applied only if its transaction
//! starts at or after its range's position. Once the stream is past every range's position
//! the ranges are dropped from the position.
//!
//! **Position.** The binlog file and offset of the start of the transaction being read (or
//! the end of the last one), plus how many mapped rows of that transaction were already
//! handed out; the GTID of the last complete transaction is kept for reference. Event ids are
//! the transaction's GTID (or file:offset) and the row's index within it, so a resumed
//! transaction yields the same ids.
//!
//! **Schema changes.** Mapped columns are resolved by name per table version: from the
//! binlog's own column names when the server writes them (`binlog_row_metadata = FULL`,
//! recommended), otherwise from `information_schema`, re-read on every DDL statement that
//! names the table and checked against the binlog's column count and types. A mapped column
//! that no longer resolves stops the source with an error naming the table and the column;
//! rows are never decoded by stale positions.

mod rows;
mod schema;
#[doc(hidden)]
pub mod testkit;
#[cfg(test)]
mod tests;

use crate::ingest::{io_err, Backoff};
use cartpulse_engine::{Poll, Source, SourceChunk, SourceError};
use cartpulse_model::{DecodeOptions, Decoder};
use futures_util::{FutureExt, StreamExt};
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, Value};
use rows::{num_of, text_of, ts_of, write_event, Fields, Ts};
use schema::{Kind, Layout, TableDef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use mysql_async;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlCdcConfig {
    /// `mysql://user:password@host:port/database`; the database is the default for table
    /// names without one. The user needs SELECT, REPLICATION SLAVE and REPLICATION CLIENT
    /// (and RELOAD for the snapshot on MySQL).
    pub url: String,
    /// Replica id this reader registers with; unique among the server's replicas.
    pub server_id: u32,
    pub cart_items: Option<CartTableConfig>,
    pub orders: Option<OrdersTableConfig>,
    /// Read the cart rows that exist at the first start before following the binlog.
    pub snapshot: bool,
    /// Rows per snapshot query.
    pub snapshot_page_rows: usize,
    /// How often the server sends a heartbeat on an idle binlog; three missed in a row
    /// count as a dead connection.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for MysqlCdcConfig {
    fn default() -> Self {
        MysqlCdcConfig {
            url: "mysql://root@127.0.0.1:3306/shop".into(),
            server_id: 4242,
            cart_items: None,
            orders: None,
            snapshot: true,
            snapshot_page_rows: 5000,
            heartbeat: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Columns of the cart-items table. An empty name leaves an optional field unmapped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CartTableConfig {
    /// `table` or `database.table`.
    pub table: String,
    pub user_id: String,
    pub sku: String,
    pub qty: String,
    pub price: String,
    /// Event time of inserts and updates (`DATETIME`/`TIMESTAMP`, read as UTC; integers are
    /// epoch milliseconds). Deletes, and rows without it, take the binlog event's time.
    pub ts: String,
    pub category: String,
}

impl Default for CartTableConfig {
    fn default() -> Self {
        CartTableConfig {
            table: "cart_items".into(),
            user_id: "user_id".into(),
            sku: "sku".into(),
            qty: "qty".into(),
            price: "price".into(),
            ts: "updated_at".into(),
            category: String::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersTableConfig {
    pub table: String,
    pub user_id: String,
    pub order_id: String,
    pub ts: String,
}

impl Default for OrdersTableConfig {
    fn default() -> Self {
        OrdersTableConfig {
            table: "orders".into(),
            user_id: "user_id".into(),
            order_id: "order_id".into(),
            ts: "created_at".into(),
        }
    }
}

/// A place in the binlog.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BinPos {
    file: String,
    pos: u64,
}

impl BinPos {
    fn seq(&self) -> (u64, &str) {
        // `base.000123`: the number orders files even past 999999
        let n = self
            .file
            .rsplit_once('.')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        (n, &self.file)
    }
}

impl Ord for BinPos {
    fn cmp(&self, o: &Self) -> Ordering {
        self.seq().cmp(&o.seq()).then(self.pos.cmp(&o.pos))
    }
}

impl PartialOrd for BinPos {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl std::fmt::Display for BinPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// Rows with a primary key up to `upto` (from the previous range's end; `None`: no end)
/// were read by a snapshot taken at `at`.
#[derive(Clone, Debug, PartialEq)]
struct Segment {
    upto: Option<Vec<Json>>,
    at: BinPos,
}

#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    done: bool,
    /// Primary key of the last row handed out.
    after: Option<Vec<Json>>,
    segments: Vec<Segment>,
    /// Rows handed out under the last segment.
    rows_in_segment: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Txn {
    Idle,
    /// A GTID event was read; a `BEGIN` (or, for DDL, the statement itself) follows.
    AfterGtid,
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Snapshot,
    Stream,
}

/// A failure while reading: worth retrying (connection trouble) or not.
enum Fail {
    Retry(String),
    Fatal(String),
}

struct Mapped {
    def: usize,
    tme: Arc<TableMapEvent<'static>>,
    layout: Layout,
}

pub struct MysqlCdcSource {
    cfg: MysqlCdcConfig,
    name: String,
    max_record: usize,
    rt: tokio::runtime::Runtime,
    opts: Option<Opts>,
    defs: Vec<TableDef>,
    /// For `information_schema`, lag and key comparisons, never for the stream.
    qconn: Option<Conn>,
    row_meta_full: bool,
    mariadb: bool,
    phase: Phase,
    stream: Option<BinlogStream>,
    maps: HashMap<u64, Option<Mapped>>,
    cur_file: String,
    /// Where a restart resumes: the start of the open transaction, or after the last one.
    safe: BinPos,
    txn: Txn,
    pending_gtid: Option<String>,
    last_gtid: Option<String>,
    /// Mapped rows of the open transaction read so far, and how many of them a previous
    /// reader already handed out.
    rows_in_txn: u64,
    skip_rows: u64,
    last_heard: Instant,
    /// Whether this stream has sent its format description yet.
    fde_seen: bool,
    snap: Option<Snapshot>,
    snap_conn: Option<Conn>,
    backoff: Backoff,
    lag: Option<u64>,
    lag_checked: Option<Instant>,
    out: Vec<u8>,
    spare: Vec<Vec<u8>>,
    /// An error met after data was gathered: the data goes out first.
    fatal: Option<String>,
    stream_bytes: u64,
}

const WAIT: Duration = Duration::from_millis(50);
const LAG_EVERY: Duration = Duration::from_secs(2);

// MariaDB event types that mysql_common does not parse
const MARIADB_GTID_EVENT: u8 = 162;
const MARIADB_COMPRESSED: std::ops::RangeInclusive<u8> = 165..=171;

impl MysqlCdcSource {
    pub fn new(cfg: MysqlCdcConfig, max_record_bytes: usize) -> MysqlCdcSource {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the source's tokio runtime");
        let name = format!("mysql_cdc:{}", redact(&cfg.url));
        MysqlCdcSource {
            backoff: Backoff::new(Duration::from_millis(200), cfg.max_backoff),
            cfg,
            name,
            max_record: max_record_bytes,
            rt,
            opts: None,
            defs: Vec::new(),
            qconn: None,
            row_meta_full: false,
            mariadb: false,
            phase: Phase::Stream,
            stream: None,
            maps: HashMap::new(),
            cur_file: String::new(),
            safe: BinPos {
                file: String::new(),
                pos: 4,
            },
            txn: Txn::Idle,
            pending_gtid: None,
            last_gtid: None,
            rows_in_txn: 0,
            skip_rows: 0,
            last_heard: Instant::now(),
            fde_seen: false,
            snap: None,
            snap_conn: None,
            lag: None,
            lag_checked: None,
            out: Vec::new(),
            spare: Vec::new(),
            fatal: None,
            stream_bytes: 0,
        }
    }

    fn err(&self, m: impl std::fmt::Display, retryable: bool) -> SourceError {
        io_err(&self.name, m, retryable)
    }

    /// Runs a future on the source's runtime with a time limit.
    fn run<T>(
        rt: &tokio::runtime::Runtime,
        limit: Duration,
        f: impl Future<Output = Result<T, mysql_async::Error>>,
    ) -> Result<T, Fail> {
        match rt.block_on(async { tokio::time::timeout(limit, f).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Fail::Retry(format!("no answer within {limit:?}"))),
        }
    }

    fn opts(&self) -> Opts {
        self.opts.clone().expect("opened")
    }

    fn connect(&self) -> Result<Conn, Fail> {
        let opts = self.opts();
        Self::run(&self.rt, self.cfg.connect_timeout, Conn::new(opts))
    }

    fn table_defs(&self, default_db: Option<&str>) -> Result<Vec<TableDef>, String> {
        let split = |key: &'static str, t: &str| -> Result<(String, String), String> {
            match t.split_once('.') {
                Some((d, t)) if !d.is_empty() && !t.is_empty() => Ok((d.into(), t.into())),
                None if !t.is_empty() => match default_db {
                    Some(d) => Ok((d.into(), t.into())),
                    None => Err(format!(
                        "{key}.table: `{t}` names no database: write `database.{t}` or put \
                         the database in source.url"
                    )),
                },
                _ => Err(format!(
                    "{key}.table: expected `table` or `database.table`, got `{t}`"
                )),
            }
        };
        let keep = |v: Vec<(&'static str, &String)>| -> Vec<(&'static str, String)> {
            v.into_iter()
                .filter(|(_, c)| !c.is_empty())
                .map(|(f, c)| (f, c.clone()))
                .collect()
        };
        let mut defs = Vec::new();
        if let Some(c) = &self.cfg.cart_items {
            let (db, table) = split("source.cart_items", &c.table)?;
            for (f, v) in [("user_id", &c.user_id), ("sku", &c.sku), ("qty", &c.qty)] {
                if v.is_empty() {
                    return Err(format!("source.cart_items.{f}: a column name is required"));
                }
            }
            defs.push(TableDef {
                kind: Kind::Cart,
                db,
                table,
                key: "source.cart_items",
                cols: keep(vec![
                    ("user_id", &c.user_id),
                    ("sku", &c.sku),
                    ("qty", &c.qty),
                    ("price", &c.price),
                    ("ts", &c.ts),
                    ("category", &c.category),
                ]),
                info: Vec::new(),
                pk: Vec::new(),
                engine: String::new(),
            });
        }
        if let Some(c) = &self.cfg.orders {
            let (db, table) = split("source.orders", &c.table)?;
            if c.user_id.is_empty() {
                return Err("source.orders.user_id: a column name is required".into());
            }
            defs.push(TableDef {
                kind: Kind::Orders,
                db,
                table,
                key: "source.orders",
                cols: keep(vec![
                    ("user_id", &c.user_id),
                    ("order_id", &c.order_id),
                    ("ts", &c.ts),
                ]),
                info: Vec::new(),
                pk: Vec::new(),
                engine: String::new(),
            });
        }
        if defs.is_empty() {
            return Err(
                "source: map at least one table ([source.cart_items] or [source.orders])".into(),
            );
        }
        Ok(defs)
    }

    fn cart_def(&self) -> Option<usize> {
        self.defs.iter().position(|d| d.kind == Kind::Cart)
    }

    /// Checks the server writes a binlog this source can read; notes what it supports.
    fn check_server(&mut self) -> Result<(), Fail> {
        let conn = self.qconn.as_mut().expect("connected");
        let version = conn.server_version();
        let row: Option<(String, String, String, String)> = Self::run(
            &self.rt,
            self.cfg.connect_timeout,
            conn.query_first("SELECT VERSION(), @@log_bin, @@binlog_format, @@binlog_row_image"),
        )?;
        let (ver, log_bin, format, image) = row.unwrap_or_default();
        self.mariadb = ver.to_ascii_lowercase().contains("mariadb");
        if log_bin != "1" && !log_bin.eq_ignore_ascii_case("on") {
            return Err(Fail::Fatal(format!(
                "source.url: the server's binary log is off (log_bin = {log_bin}); start it \
                 with --log-bin --binlog-format=ROW"
            )));
        }
        if !format.eq_ignore_ascii_case("row") {
            return Err(Fail::Fatal(format!(
                "source.url: binlog_format is {format}; change data capture needs ROW \
                 (SET GLOBAL binlog_format = 'ROW', or --binlog-format=ROW)"
            )));
        }
        if !image.eq_ignore_ascii_case("full") {
            return Err(Fail::Fatal(format!(
                "source.url: binlog_row_image is {image}; deletes and updates need the full \
                 old row (SET GLOBAL binlog_row_image = 'FULL')"
            )));
        }
        // older servers have no binlog_row_metadata at all: names come from
        // information_schema then
        let meta: Result<Option<String>, Fail> = Self::run(
            &self.rt,
            self.cfg.connect_timeout,
            conn.query_first("SELECT @@binlog_row_metadata"),
        );
        self.row_meta_full = matches!(meta, Ok(Some(m)) if m.eq_ignore_ascii_case("full"));
        tracing::info!(
            source = %self.name,
            server = %ver,
            version = ?version,
            row_metadata_full = self.row_meta_full,
            "binlog checks passed"
        );
        Ok(())
    }

    fn load_defs(&mut self) -> Result<(), Fail> {
        for i in 0..self.defs.len() {
            self.load_def(i)?;
        }
        Ok(())
    }

    /// Reads table definition `i` from information_schema. The query connection idles
    /// between schema changes and may have been dropped meanwhile: a lost connection is
    /// reopened and the read tried again (three times) before the source gives up, since the
    /// engine treats a source error as the end of the run.
    fn load_def(&mut self, i: usize) -> Result<(), Fail> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.qconn.is_none() {
                self.qconn = Some(self.connect()?);
            }
            let conn = self.qconn.as_mut().expect("connected");
            let def = &mut self.defs[i];
            let r = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), def.load(conn)).await
            });
            let why = match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(schema::LoadError::Definition(m))) => return Err(Fail::Fatal(m)),
                Ok(Err(schema::LoadError::Query(m, e))) => match classify(&e) {
                    Fail::Retry(_) => m,
                    Fail::Fatal(_) => return Err(Fail::Fatal(m)),
                },
                Err(_) => "information_schema did not answer".to_string(),
            };
            self.qconn = None;
            if attempt >= 3 {
                return Err(Fail::Retry(why));
            }
            tracing::warn!(source = %self.name, error = %why, attempt, "reading a table definition failed; reconnecting");
            std::thread::sleep(Duration::from_millis(200 * attempt));
        }
    }

    fn master_position(&mut self) -> Result<BinPos, Fail> {
        let conn = self.qconn.as_mut().expect("connected");
        let limit = self.cfg.connect_timeout;
        let row: Option<mysql_async::Row> =
            match Self::run(&self.rt, limit, conn.query_first("SHOW MASTER STATUS")) {
                Ok(r) => r,
                // MySQL 8.4 renamed it
                Err(_) => Self::run(&self.rt, limit, conn.query_first("SHOW BINARY LOG STATUS"))?,
            };
        let row = row.ok_or_else(|| {
            Fail::Fatal("source.url: SHOW MASTER STATUS is empty: is the binary log on?".into())
        })?;
        let file: Option<String> = row.get(0);
        let pos: Option<u64> = row.get(1);
        match (file, pos) {
            (Some(file), Some(pos)) => Ok(BinPos { file, pos }),
            _ => Err(Fail::Fatal("SHOW MASTER STATUS: unexpected columns".into())),
        }
    }

    /// Opens a consistent snapshot on a connection of its own and returns the binlog
    /// position it corresponds to.
    fn begin_snapshot(&mut self) -> Result<BinPos, Fail> {
        let mut conn = self.connect()?;
        let limit = self.cfg.connect_timeout;
        let rt = &self.rt;
        Self::run(rt, limit, conn.query_drop("SET time_zone = '+00:00'"))?;
        Self::run(
            rt,
            limit,
            conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
        )?;
        let at = if self.mariadb {
            // MariaDB reports the binlog position of the snapshot itself: no lock needed
            Self::run(
                rt,
                limit,
                conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT"),
            )?;
            let rows: Vec<(String, String)> = Self::run(
                rt,
                limit,
                conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'"),
            )?;
            let get = |k: &str| {
                rows.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            match (get("Binlog_snapshot_file"), get("Binlog_snapshot_position")) {
                (Some(f), Some(p)) if !f.is_empty() => BinPos {
                    file: f,
                    pos: p
                        .parse()
                        .map_err(|_| Fail::Fatal(format!("bad snapshot position {p}")))?,
                },
                _ => {
                    return Err(Fail::Fatal(
                        "the server reports no Binlog_snapshot_file: is the binary log on?".into(),
                    ))
                }
            }
        } else {
            // a global read lock only while the snapshot opens and the position is read
            Self::run(rt, limit, conn.query_drop("FLUSH TABLES WITH READ LOCK")).map_err(|e| {
                match e {
                    Fail::Fatal(m) => Fail::Fatal(format!(
                        "source.snapshot: FLUSH TABLES WITH READ LOCK failed (the user needs the \
                     RELOAD privilege, or set snapshot = false): {m}"
                    )),
                    r => r,
                }
            })?;
            let r = (|| {
                Self::run(
                    rt,
                    limit,
                    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT"),
                )?;
                let row: Option<mysql_async::Row> =
                    match Self::run(rt, limit, conn.query_first("SHOW MASTER STATUS")) {
                        Ok(r) => r,
                        Err(_) => Self::run(rt, limit, conn.query_first("SHOW BINARY LOG STATUS"))?,
                    };
                let row = row.ok_or_else(|| Fail::Fatal("SHOW MASTER STATUS is empty".into()))?;
                Ok(BinPos {
                    file: row.get::<String, _>(0).unwrap_or_default(),
                    pos: row.get::<u64, _>(1).unwrap_or(4),
                })
            })();
            Self::run(rt, limit, conn.query_drop("UNLOCK TABLES"))?;
            r?
        };
        self.snap_conn = Some(conn);
        tracing::info!(source = %self.name, at = %at, "snapshot opened");
        Ok(at)
    }

    /// Starts (or continues, after a crash or a lost connection) the snapshot.
    fn start_snapshot_segment(&mut self) -> Result<(), Fail> {
        let at = self.begin_snapshot()?;
        let snap = self.snap.get_or_insert(Snapshot {
            done: false,
            after: None,
            segments: Vec::new(),
            rows_in_segment: 0,
        });
        match snap.segments.last_mut() {
            Some(last) if snap.rows_in_segment > 0 => {
                // rows read under the previous snapshot keep their range and its position
                last.upto = snap.after.clone();
                snap.segments.push(Segment { upto: None, at });
            }
            // nothing was read under it: the new snapshot simply replaces it
            Some(last) => last.at = at,
            None => snap.segments.push(Segment { upto: None, at }),
        }
        snap.rows_in_segment = 0;
        self.safe = snap.segments[0].at.clone();
        self.phase = Phase::Snapshot;
        Ok(())
    }
}

impl MysqlCdcSource {
    fn snapshot_page(&mut self) -> Result<(), Fail> {
        let di = self.cart_def().expect("a snapshot needs the cart table");
        let def = &self.defs[di];
        let snap = self.snap.as_mut().expect("snapshot state");
        let mut select: Vec<String> = def.cols.iter().map(|(_, c)| quote(c)).collect();
        select.extend(def.pk.iter().map(|c| quote(c)));
        let (cond, params) = match &snap.after {
            None => (String::new(), Vec::new()),
            Some(after) => keyset_after(&def.pk, after),
        };
        let sql = format!(
            "SELECT {} FROM {} {cond} ORDER BY {} LIMIT {}",
            select.join(", "),
            def.qualified(),
            def.pk
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            self.cfg.snapshot_page_rows.max(1)
        );
        let conn = self.snap_conn.as_mut().expect("snapshot connection");
        let rows: Vec<mysql_async::Row> =
            Self::run(&self.rt, Duration::from_secs(300), conn.exec(sql, params))?;
        let layout = snapshot_layout(def);
        let now = now_ms();
        let n = def.cols.len();
        let tag = format!("snap:{}.{}:", def.db, def.table);
        for row in &rows {
            let vals: Vec<Value> = (0..row.len())
                .map(|i| row.as_ref(i).cloned().unwrap_or(Value::NULL))
                .collect();
            let f = fields_of(&layout, |i| vals.get(i).cloned());
            let pk: Vec<Json> = vals[n..].iter().map(json_of).collect();
            let id = format!("{tag}{}", Json::Array(pk.clone()));
            write_event(&mut self.out, &id, "add", &f, None, now, true);
            snap.after = Some(pk);
            snap.rows_in_segment += 1;
        }
        if rows.len() < self.cfg.snapshot_page_rows.max(1) {
            snap.done = true;
            if let Some(last) = snap.segments.last_mut() {
                last.upto = None;
            }
            let start = snap.segments[0].at.clone();
            if let Some(mut c) = self.snap_conn.take() {
                let _ = Self::run(&self.rt, WAIT * 20, c.query_drop("COMMIT"));
                let _ = Self::run(&self.rt, WAIT * 20, c.disconnect());
            }
            tracing::info!(source = %self.name, from = %start, "snapshot done; following the binlog");
            self.safe = start;
            self.rows_in_txn = 0;
            self.skip_rows = 0;
            self.phase = Phase::Stream;
        }
        Ok(())
    }

    fn connect_stream(&mut self) -> Result<(), Fail> {
        let mut conn = self.connect()?;
        let limit = self.cfg.connect_timeout;
        let hb = self.cfg.heartbeat.as_nanos().max(1_000_000);
        Self::run(
            &self.rt,
            limit,
            conn.query_drop(format!("SET @master_heartbeat_period = {hb}")),
        )?;
        if self.mariadb {
            // without it MariaDB rewrites GTID events into plain BEGIN statements
            Self::run(
                &self.rt,
                limit,
                conn.query_drop("SET @mariadb_slave_capability = 4"),
            )?;
        }
        let file = self.safe.file.clone();
        let req = BinlogStreamRequest::new(self.cfg.server_id)
            .with_filename(file.as_bytes())
            .with_pos(self.safe.pos);
        let stream = Self::run(&self.rt, limit, conn.get_binlog_stream(req))?;
        self.stream = Some(stream);
        self.fde_seen = false;
        self.maps.clear();
        self.txn = Txn::Idle;
        self.cur_file = file;
        self.pending_gtid = None;
        // rows of the open transaction already handed out are skipped when it is re-read
        self.skip_rows = self.skip_rows.max(self.rows_in_txn);
        self.rows_in_txn = 0;
        self.last_heard = Instant::now();
        tracing::info!(source = %self.name, from = %self.safe, skip_rows = self.skip_rows, "reading the binlog");
        Ok(())
    }

    fn lose_stream(&mut self, why: &str) {
        if self.stream.take().is_some() {
            tracing::warn!(source = %self.name, error = why, at = %self.safe, "binlog connection lost; reconnecting");
        }
        self.qconn = None;
        self.backoff.failed();
    }

    /// Where a change in the transaction being read stands against the snapshot ranges:
    /// whether the snapshot that read its row's key range had not seen it yet.
    fn applies(&mut self, pk: &[Json]) -> Result<bool, Fail> {
        let Some(snap) = &self.snap else {
            return Ok(true);
        };
        if snap.segments.len() == 1 {
            return Ok(self.safe >= snap.segments[0].at);
        }
        let segments = snap.segments.clone();
        let di = self
            .cart_def()
            .expect("snapshot ranges belong to the cart table");
        for seg in &segments {
            let inside = match &seg.upto {
                None => true,
                Some(upto) => self.pk_cmp(di, pk, upto)? != Ordering::Greater,
            };
            if inside {
                return Ok(self.safe >= seg.at);
            }
        }
        Ok(true)
    }

    /// Compares primary keys the way the server orders them: integers here, text by the
    /// column's collation on the server (only needed while resuming an interrupted snapshot).
    fn pk_cmp(&mut self, di: usize, a: &[Json], b: &[Json]) -> Result<Ordering, Fail> {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let o = match (x, y) {
                (Json::Number(p), Json::Number(q)) => {
                    match (p.as_i64(), q.as_i64(), p.as_u64(), q.as_u64()) {
                        (Some(p), Some(q), ..) => p.cmp(&q),
                        (_, _, Some(p), Some(q)) => p.cmp(&q),
                        _ => p
                            .as_f64()
                            .partial_cmp(&q.as_f64())
                            .unwrap_or(Ordering::Equal),
                    }
                }
                (Json::String(p), Json::String(q)) if p == q => Ordering::Equal,
                (Json::String(p), Json::String(q)) => {
                    let def = &self.defs[di];
                    let col = def
                        .info
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(&def.pk[i]));
                    match col.and_then(|c| Some((c.charset.clone()?, c.collation.clone()?))) {
                        Some((cs, coll)) => {
                            let sql = format!(
                                "SELECT STRCMP(CONVERT(? USING {cs}) COLLATE {coll}, CONVERT(? USING {cs}) COLLATE {coll})"
                            );
                            if self.qconn.is_none() {
                                self.qconn = Some(self.connect()?);
                            }
                            let conn = self.qconn.as_mut().expect("connected");
                            let r: Option<i64> = Self::run(
                                &self.rt,
                                self.cfg.connect_timeout,
                                conn.exec_first(sql, (p.as_str(), q.as_str())),
                            )?;
                            r.unwrap_or(0).cmp(&0)
                        }
                        None => p.as_bytes().cmp(q.as_bytes()),
                    }
                }
                (Json::Null, Json::Null) => Ordering::Equal,
                (Json::Null, _) => Ordering::Less,
                (_, Json::Null) => Ordering::Greater,
                (p, q) => p.to_string().cmp(&q.to_string()),
            };
            if o != Ordering::Equal {
                return Ok(o);
            }
        }
        Ok(a.len().cmp(&b.len()))
    }

    fn txn_base(&self) -> String {
        match &self.pending_gtid {
            Some(g) => g.clone(),
            None => self.safe.to_string(),
        }
    }

    fn end_txn(&mut self) {
        self.txn = Txn::Idle;
        self.rows_in_txn = 0;
        self.skip_rows = 0;
        if let Some(g) = self.pending_gtid.take() {
            self.last_gtid = Some(g);
        }
    }

    /// Moves the resume point forward (never back: the server re-sends a file's format
    /// description, with its own small offset, when a stream starts mid-file).
    fn advance(&mut self, to: BinPos) {
        if to > self.safe {
            self.safe = to;
        }
        // past every snapshot position: changes no longer need the range check
        if let Some(s) = &self.snap {
            if s.done && s.segments.iter().all(|g| self.safe >= g.at) {
                self.snap = None;
            }
        }
    }

    fn handle(&mut self, ev: Event) -> Result<(), Fail> {
        let h = ev.header();
        let raw = h.event_type_raw();
        let log_pos = u64::from(h.log_pos());
        let ev_ms = i64::from(h.timestamp()) * 1000;
        self.last_heard = Instant::now();
        tracing::trace!(event_type = raw, end = log_pos, file = %self.cur_file, txn = ?self.txn, rows = self.rows_in_txn, skip = self.skip_rows, "binlog event");
        if raw == MARIADB_GTID_EVENT {
            let d = ev.data();
            // seq_no (8 bytes), domain (4), flags (1): FL_STANDALONE marks a statement that
            // is its own transaction (DDL); otherwise rows and an XID or COMMIT follow, with no
            // BEGIN of their own
            let mut standalone = true;
            if d.len() >= 13 {
                let seq = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
                let domain = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
                self.pending_gtid = Some(format!("{domain}-{}-{seq}", h.server_id()));
                standalone = d[12] & 1 != 0;
            }
            self.txn = if standalone {
                Txn::AfterGtid
            } else {
                Txn::Open
            };
            return Ok(());
        }
        if MARIADB_COMPRESSED.contains(&raw) {
            return Err(Fail::Fatal(
                "the binlog holds compressed events (log_bin_compress = ON), which this \
                 source cannot read; turn compression off"
                    .into(),
            ));
        }
        let data = ev.read_data().map_err(|e| {
            Fail::Fatal(format!(
                "cannot parse a binlog event (type {raw}) at {}:{log_pos}: {e}",
                self.cur_file
            ))
        })?;
        let mut heartbeat = false;
        match data {
            Some(EventData::HeartbeatEvent) => heartbeat = true,
            Some(EventData::FormatDescriptionEvent(_)) => self.fde_seen = true,
            // The stream opens with an artificial rotate to the file asked for, sent before
            // the format description that says whether events carry checksums, so its name
            // still has the checksum's four bytes stuck to it: the file is known anyway.
            Some(EventData::RotateEvent(_)) if !self.fde_seen && log_pos == 0 => return Ok(()),
            Some(EventData::RotateEvent(r)) => {
                self.cur_file = r.name().into_owned();
                if self.txn == Txn::Idle {
                    let to = BinPos {
                        file: self.cur_file.clone(),
                        pos: r.position(),
                    };
                    self.advance(to);
                }
                return Ok(());
            }
            Some(EventData::GtidEvent(g)) => {
                self.pending_gtid = Some(format!("{}:{}", uuid(&g.sid()), g.gno()));
                self.txn = Txn::AfterGtid;
            }
            Some(EventData::QueryEvent(q)) => {
                let sql = q.query();
                let word = sql
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match (word.as_str(), self.txn) {
                    ("BEGIN", _) => self.txn = Txn::Open,
                    ("COMMIT" | "ROLLBACK", Txn::Open) => self.end_txn(),
                    ("XA", _) => {}
                    (_, Txn::Open) => {}
                    _ => {
                        let schema = q.schema().into_owned();
                        let sql = sql.into_owned();
                        self.on_ddl(&schema, &sql)?;
                        self.end_txn();
                    }
                }
            }
            Some(EventData::XidEvent(_)) => self.end_txn(),
            Some(EventData::TableMapEvent(t)) => self.on_table_map(t.into_owned())?,
            Some(EventData::RowsEvent(r)) => self.on_rows(&r, ev_ms)?,
            _ => {}
        }
        if !heartbeat && self.txn == Txn::Idle && log_pos > 0 {
            let to = BinPos {
                file: self.cur_file.clone(),
                pos: log_pos,
            };
            self.advance(to);
        }
        Ok(())
    }

    fn on_ddl(&mut self, schema: &str, sql: &str) -> Result<(), Fail> {
        let touched: Vec<usize> = (0..self.defs.len())
            .filter(|&i| self.defs[i].touched_by(schema, sql))
            .collect();
        for i in touched {
            let key = self.defs[i].key;
            let q = self.defs[i].qualified();
            let head = sql
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            if head == "TRUNCATE" {
                return Err(Fail::Fatal(format!(
                    "{key}.table: {q} was truncated at {}: a TRUNCATE writes no row events, \
                     so the removed rows cannot become events; the source stops rather than \
                     keep carts that no longer exist",
                    self.safe
                )));
            }
            tracing::info!(source = %self.name, table = %q, statement = sql, "schema change; re-reading the table definition");
            match self.load_def(i) {
                Ok(()) => {}
                Err(Fail::Fatal(m)) => {
                    return Err(Fail::Fatal(format!(
                        "{m} — after `{}` at {}",
                        sql.trim(),
                        self.safe
                    )))
                }
                Err(retry) => return Err(retry),
            }
            // the next TABLE_MAP of this table is resolved afresh
            let (db, t) = (self.defs[i].db.clone(), self.defs[i].table.clone());
            self.maps.retain(|_, m| {
                m.as_ref()
                    .is_none_or(|m| !(self.defs[m.def].db == db && self.defs[m.def].table == t))
            });
        }
        Ok(())
    }

    fn on_table_map(&mut self, tme: TableMapEvent<'static>) -> Result<(), Fail> {
        let db = tme.database_name();
        let table = tme.table_name();
        let Some(di) = self
            .defs
            .iter()
            .position(|d| d.db == db && d.table == table)
        else {
            self.maps.insert(tme.table_id(), None);
            return Ok(());
        };
        let names = if self.row_meta_full {
            schema::binlog_names(&tme)
        } else {
            None
        };
        let layout = match schema::layout(&self.defs[di], &tme, names.as_deref()) {
            Ok(l) => l,
            Err(first) if names.is_none() => {
                // the cached definition may be older than this table version
                match self.load_def(di) {
                    Ok(()) => schema::layout(&self.defs[di], &tme, None)
                        .map_err(|m| Fail::Fatal(format!("{m} (at {})", self.safe)))?,
                    Err(Fail::Fatal(m)) => {
                        return Err(Fail::Fatal(format!(
                            "{m} (at {}; before: {first})",
                            self.safe
                        )))
                    }
                    Err(retry) => return Err(retry),
                }
            }
            Err(m) => return Err(Fail::Fatal(format!("{m} (at {})", self.safe))),
        };
        if self.snap.is_some()
            && self.defs[di].kind == Kind::Cart
            && layout.pk.len() != self.defs[di].pk.len()
        {
            return Err(Fail::Fatal(format!(
                "{}.table: a primary key column of {} is gone while the snapshot ranges still \
                 need it (at {})",
                self.defs[di].key,
                self.defs[di].qualified(),
                self.safe
            )));
        }
        self.maps.insert(
            tme.table_id(),
            Some(Mapped {
                def: di,
                tme: Arc::new(tme),
                layout,
            }),
        );
        Ok(())
    }

    fn on_rows(&mut self, r: &RowsEventData<'_>, ev_ms: i64) -> Result<(), Fail> {
        let Some(Some(m)) = self.maps.get(&r.table_id()) else {
            return Ok(());
        };
        let (di, tme, layout) = (m.def, m.tme.clone(), m.layout.clone());
        let kind = self.defs[di].kind;
        let base = self.txn_base();
        let at = self.safe.clone();
        for row in r.rows(&tme) {
            let (before, after) = row.map_err(|e| {
                Fail::Fatal(format!(
                    "cannot decode a row of {} in the transaction at {at}: {e}",
                    self.defs[di].qualified()
                ))
            })?;
            let idx = self.rows_in_txn;
            self.rows_in_txn += 1;
            if idx < self.skip_rows {
                continue;
            }
            let get = |row: &mysql_async::binlog::row::BinlogRow| {
                let vals: Vec<Value> = (0..row.len())
                    .map(|i| match row.as_ref(i) {
                        Some(mysql_async::binlog::value::BinlogValue::Value(v)) => v.clone(),
                        _ => Value::NULL,
                    })
                    .collect();
                vals
            };
            let b = before.as_ref().map(get);
            let a = after.as_ref().map(get);
            let id = format!("{base}#{idx}");
            match kind {
                Kind::Orders => {
                    if let (None, Some(a)) = (&b, &a) {
                        let f = fields_of(&layout, |i| a.get(i).cloned());
                        write_event(&mut self.out, &id, "checkout", &f, None, ev_ms, false);
                    }
                }
                Kind::Cart => {
                    let pk = |v: &Vec<Value>| -> Vec<Json> {
                        layout
                            .pk
                            .iter()
                            .map(|&i| json_of(v.get(i).unwrap_or(&Value::NULL)))
                            .collect()
                    };
                    // outside an interrupted snapshot's catch-up every change applies
                    let filtering = self.snap.is_some();
                    let applies_b = match &b {
                        Some(v) => !filtering || self.applies(&pk(v))?,
                        None => false,
                    };
                    let applies_a = match &a {
                        Some(v) => !filtering || self.applies(&pk(v))?,
                        None => false,
                    };
                    let fb = b
                        .as_ref()
                        .filter(|_| applies_b)
                        .map(|v| fields_of(&layout, |i| v.get(i).cloned()));
                    let fa = a
                        .as_ref()
                        .filter(|_| applies_a)
                        .map(|v| fields_of(&layout, |i| v.get(i).cloned()));
                    let removal_ts = Ts::Ms(ev_ms);
                    match (fb, fa) {
                        (None, Some(fa)) => {
                            write_event(&mut self.out, &id, "add", &fa, None, ev_ms, true)
                        }
                        (Some(fb), None) => write_event(
                            &mut self.out,
                            &id,
                            "remove",
                            &fb,
                            Some(&removal_ts),
                            ev_ms,
                            true,
                        ),
                        (Some(fb), Some(fa)) if fb.same_line(&fa) => {
                            if !fb.same_content(&fa) {
                                write_event(
                                    &mut self.out,
                                    &id,
                                    "update_qty",
                                    &fa,
                                    None,
                                    ev_ms,
                                    true,
                                );
                            }
                        }
                        (Some(fb), Some(fa)) => {
                            let t = fa.ts.clone().unwrap_or(Ts::Ms(ev_ms));
                            write_event(
                                &mut self.out,
                                &format!("{id}-"),
                                "remove",
                                &fb,
                                Some(&t),
                                ev_ms,
                                true,
                            );
                            write_event(
                                &mut self.out,
                                &format!("{id}+"),
                                "add",
                                &fa,
                                None,
                                ev_ms,
                                true,
                            );
                        }
                        (None, None) => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn poll_stream(&mut self, max_bytes: usize) -> Result<(), Fail> {
        if self.stream.is_none() {
            if !self.backoff.ready(WAIT) {
                return Ok(());
            }
            if let Err(f) = self.connect_stream() {
                return match f {
                    Fail::Retry(m) => {
                        tracing::warn!(source = %self.name, error = %m, "cannot reach the server; retrying");
                        self.backoff.failed();
                        Ok(())
                    }
                    fatal => Err(fatal),
                };
            }
            self.backoff.reset();
        }
        let start = self.out.len();
        let mut first = true;
        while self.out.len() < max_bytes {
            let stream = self.stream.as_mut().expect("connected");
            let next = if first {
                first = false;
                match self
                    .rt
                    .block_on(async { tokio::time::timeout(WAIT, stream.next()).await })
                {
                    Ok(n) => n,
                    Err(_) => break,
                }
            } else {
                match self.rt.block_on(async { stream.next().now_or_never() }) {
                    Some(n) => n,
                    None => break,
                }
            };
            match next {
                Some(Ok(ev)) => {
                    self.stream_bytes += u64::from(ev.header().event_size());
                    self.handle(ev)?
                }
                Some(Err(e)) => match classify(&e) {
                    Fail::Retry(m) => {
                        self.lose_stream(&m);
                        break;
                    }
                    Fail::Fatal(m) => {
                        let hint = if matches!(&e, mysql_async::Error::Server(s) if s.code == 1236)
                        {
                            format!(
                                "binlog position {} cannot be read on the server ({m}); if the \
                                 file was purged, the source cannot resume exactly: start over \
                                 with a fresh checkpoint directory (new snapshot)",
                                self.safe
                            )
                        } else {
                            format!("binlog stream failed at {}: {m}", self.safe)
                        };
                        return Err(Fail::Fatal(hint));
                    }
                },
                None => {
                    self.lose_stream("the server closed the binlog stream");
                    break;
                }
            }
        }
        let silent = self.last_heard.elapsed();
        if self.out.len() == start
            && self.stream.is_some()
            && silent > self.cfg.heartbeat * 3 + Duration::from_secs(1)
        {
            self.lose_stream(&format!("no event or heartbeat for {silent:?}"));
        }
        Ok(())
    }

    fn check_lag(&mut self) {
        if self.lag_checked.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return;
        }
        self.lag_checked = Some(Instant::now());
        if self.qconn.is_none() {
            match self.connect() {
                Ok(c) => self.qconn = Some(c),
                Err(_) => return,
            }
        }
        let conn = self.qconn.as_mut().expect("connected");
        let r: Result<Vec<mysql_async::Row>, Fail> =
            Self::run(&self.rt, WAIT * 4, conn.query("SHOW BINARY LOGS"));
        let Ok(logs) = r else {
            self.qconn = None;
            return;
        };
        let mut lag = 0u64;
        let mut counting = false;
        for row in logs {
            let (Some(file), Some(size)) = (row.get::<String, _>(0), row.get::<u64, _>(1)) else {
                continue;
            };
            let p = BinPos {
                file: file.clone(),
                pos: size,
            };
            if file == self.safe.file {
                counting = true;
                lag += size.saturating_sub(self.safe.pos);
            } else if counting || p > self.safe {
                counting = true;
                lag += size;
            }
        }
        self.lag = Some(lag);
    }

    fn fail(&mut self, f: Fail) -> Result<Poll, SourceError> {
        match f {
            Fail::Retry(m) => Err(self.err(m, true)),
            Fail::Fatal(m) => {
                if self.out.is_empty() {
                    Err(self.err(m, false))
                } else {
                    self.fatal = Some(m);
                    Ok(Poll::Chunk(self.take_chunk()))
                }
            }
        }
    }

    fn take_chunk(&mut self) -> SourceChunk {
        let mut next = self.spare.pop().unwrap_or_default();
        next.clear();
        SourceChunk {
            data: std::mem::replace(&mut self.out, next),
            ..Default::default()
        }
    }
}

impl Source for MysqlCdcSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&mut self, restored: Option<&Json>) -> Result<(), SourceError> {
        let opts = Opts::from_url(&self.cfg.url).map_err(|e| {
            self.err(
                format!(
                    "source.url: not a MySQL URL ({}): {e}",
                    redact(&self.cfg.url)
                ),
                false,
            )
        })?;
        let default_db = opts.db_name().map(str::to_string);
        self.opts = Some(opts);
        self.defs = self
            .table_defs(default_db.as_deref())
            .map_err(|m| self.err(m, false))?;
        let fail = |s: &Self, f: Fail| match f {
            Fail::Retry(m) => s.err(
                format!("source.url: cannot reach {}: {m}", redact(&s.cfg.url)),
                true,
            ),
            Fail::Fatal(m) => s.err(m, false),
        };
        match self.connect() {
            Ok(c) => self.qconn = Some(c),
            Err(f) => return Err(fail(self, f)),
        }
        self.check_server().map_err(|f| fail(self, f))?;
        self.load_defs().map_err(|f| fail(self, f))?;

        let restored = match restored {
            Some(v) => Some(parse_position(v).map_err(|why| SourceError::BadPosition {
                source_name: self.name.clone(),
                position: v.to_string(),
                why,
            })?),
            None => None,
        };
        let wants_snapshot = self.cfg.snapshot && self.cart_def().is_some();
        match restored {
            Some((at, rows, gtid, snap)) => {
                self.safe = at;
                self.skip_rows = rows;
                self.last_gtid = gtid;
                self.snap = snap;
                if self.snap.as_ref().is_some_and(|s| !s.done) {
                    self.check_snapshot_table()
                        .map_err(|m| self.err(m, false))?;
                    self.start_snapshot_segment().map_err(|f| fail(self, f))?;
                } else {
                    self.phase = Phase::Stream;
                }
            }
            None if wants_snapshot => {
                self.check_snapshot_table()
                    .map_err(|m| self.err(m, false))?;
                self.start_snapshot_segment().map_err(|f| fail(self, f))?;
                self.safe = self.snap.as_ref().expect("started").segments[0].at.clone();
            }
            None => {
                self.safe = self.master_position().map_err(|f| fail(self, f))?;
                self.phase = Phase::Stream;
            }
        }
        self.cur_file = self.safe.file.clone();
        if self.phase == Phase::Stream {
            // start-up errors (privileges, a purged position) surface here, not later
            self.connect_stream().map_err(|f| fail(self, f))?;
            let stream = self.stream.as_mut().expect("connected");
            match self
                .rt
                .block_on(async { tokio::time::timeout(WAIT * 4, stream.next()).await })
            {
                Ok(Some(Ok(ev))) => self.handle(ev).map_err(|f| fail(self, f))?,
                Ok(Some(Err(e))) => {
                    let m = format!("source.url: cannot read the binlog at {}: {e}", self.safe);
                    return Err(self.err(m, matches!(classify(&e), Fail::Retry(_))));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        Decoder::Json(DecodeOptions {
            max_record_bytes: self.max_record,
            default_qty: None,
        })
    }

    fn poll(&mut self, max_bytes: usize) -> Result<Poll, SourceError> {
        if let Some(m) = self.fatal.take() {
            return Err(self.err(m, false));
        }
        let r = match self.phase {
            Phase::Snapshot => {
                let r = match self.snap_conn {
                    Some(_) => self.snapshot_page(),
                    None if self.backoff.ready(WAIT) => self.start_snapshot_segment(),
                    None => Ok(()),
                };
                match r {
                    Err(Fail::Retry(m)) => {
                        tracing::warn!(source = %self.name, error = %m, "snapshot interrupted; it continues from the last row read");
                        self.snap_conn = None;
                        self.backoff.failed();
                        Ok(())
                    }
                    r => {
                        if r.is_ok() {
                            self.backoff.reset();
                        }
                        r
                    }
                }
            }
            Phase::Stream => {
                self.check_lag();
                self.poll_stream(max_bytes)
            }
        };
        if let Err(f) = r {
            return self.fail(f);
        }
        if self.out.is_empty() {
            return Ok(Poll::Idle);
        }
        Ok(Poll::Chunk(self.take_chunk()))
    }

    fn position(&self) -> Json {
        let mut v = json!({
            "file": self.safe.file,
            "pos": self.safe.pos,
            "rows": self.rows_in_txn.max(self.skip_rows),
        });
        if let Some(g) = &self.last_gtid {
            v["gtid"] = json!(g);
        }
        if let Some(s) = &self.snap {
            v["snapshot"] = json!({
                "done": s.done,
                "after": s.after,
                "rows_in_segment": s.rows_in_segment,
                "segments": s.segments.iter().map(|g| json!({
                    "upto": g.upto,
                    "file": g.at.file,
                    "pos": g.at.pos,
                })).collect::<Vec<_>>(),
            });
        }
        v
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 4 {
            self.spare.push(buf);
        }
    }

    fn lag(&self) -> Option<u64> {
        self.lag
    }
}

impl MysqlCdcSource {
    fn check_snapshot_table(&self) -> Result<(), String> {
        let def = &self.defs[self.cart_def().expect("cart table")];
        if def.pk.is_empty() {
            return Err(format!(
                "{}.table: {} has no primary key; the snapshot pages through the table by it \
                 (add one, or set source.snapshot = false)",
                def.key,
                def.qualified()
            ));
        }
        if !def.engine.eq_ignore_ascii_case("innodb") {
            return Err(format!(
                "{}.table: {} uses the {} engine; a consistent snapshot needs a transactional \
                 one (InnoDB), or set source.snapshot = false",
                def.key,
                def.qualified(),
                def.engine
            ));
        }
        Ok(())
    }
}

type Restored = (BinPos, u64, Option<String>, Option<Snapshot>);

fn parse_position(v: &Json) -> Result<Restored, String> {
    let file = v["file"].as_str().ok_or("expected \"file\"")?.to_string();
    let pos = v["pos"].as_u64().ok_or("expected \"pos\"")?;
    let rows = v["rows"].as_u64().unwrap_or(0);
    let gtid = v["gtid"].as_str().map(str::to_string);
    let snap = match v.get("snapshot") {
        None | Some(Json::Null) => None,
        Some(s) => {
            let key = |j: &Json| -> Option<Vec<Json>> { j.as_array().cloned() };
            let mut segments = Vec::new();
            for g in s["segments"]
                .as_array()
                .ok_or("snapshot: expected \"segments\"")?
            {
                segments.push(Segment {
                    upto: key(&g["upto"]),
                    at: BinPos {
                        file: g["file"]
                            .as_str()
                            .ok_or("segment: expected \"file\"")?
                            .to_string(),
                        pos: g["pos"].as_u64().ok_or("segment: expected \"pos\"")?,
                    },
                });
            }
            if segments.is_empty() {
                return Err("snapshot: no segments".into());
            }
            Some(Snapshot {
                done: s["done"].as_bool().unwrap_or(false),
                after: key(&s["after"]),
                segments,
                rows_in_segment: s["rows_in_segment"].as_u64().unwrap_or(0),
            })
        }
    };
    Ok((BinPos { file, pos }, rows, gtid, snap))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

fn uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `WHERE (k1, k2, …) > (v1, v2, …)`, spelled out so every server uses the index for it.
fn keyset_after(pk: &[String], after: &[Json]) -> (String, Vec<Value>) {
    let mut ors = Vec::new();
    let mut params = Vec::new();
    for i in 0..pk.len() {
        let mut ands = Vec::new();
        for j in 0..i {
            ands.push(format!("{} = ?", quote(&pk[j])));
            params.push(value_of(&after[j]));
        }
        ands.push(format!("{} > ?", quote(&pk[i])));
        params.push(value_of(&after[i]));
        ors.push(format!("({})", ands.join(" AND ")));
    }
    (format!("WHERE {}", ors.join(" OR ")), params)
}

fn value_of(j: &Json) -> Value {
    match j {
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (_, Some(u)) => Value::UInt(u),
            _ => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::Bytes(s.clone().into_bytes()),
        _ => Value::NULL,
    }
}

fn json_of(v: &Value) -> Json {
    match v {
        Value::NULL => Json::Null,
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Double(f) => json!(f),
        Value::Float(f) => json!(f),
        other => Json::String(text_of(other).unwrap_or_default()),
    }
}

fn snapshot_layout(def: &TableDef) -> Layout {
    let mut l = Layout::default();
    for (i, (field, _)) in def.cols.iter().enumerate() {
        match *field {
            "user_id" => l.user = i,
            "sku" => l.sku = Some(i),
            "qty" => l.qty = Some(i),
            "price" => l.price = Some(i),
            "ts" => l.ts = Some(i),
            "category" => l.category = Some(i),
            "order_id" => l.order_id = Some(i),
            _ => {}
        }
    }
    l
}

fn fields_of(l: &Layout, get: impl Fn(usize) -> Option<Value>) -> Fields {
    let g = |i: Option<usize>| i.and_then(&get).unwrap_or(Value::NULL);
    Fields {
        user: text_of(&g(Some(l.user))),
        sku: text_of(&g(l.sku)),
        qty: num_of(&g(l.qty)),
        price: num_of(&g(l.price)),
        category: text_of(&g(l.category)),
        order_id: text_of(&g(l.order_id)),
        ts: ts_of(&g(l.ts), l.ts_kind),
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

fn classify(e: &mysql_async::Error) -> Fail {
    use mysql_async::Error as E;
    match e {
        E::Io(_) => Fail::Retry(e.to_string()),
        E::Driver(mysql_async::DriverError::ConnectionClosed) => Fail::Retry(e.to_string()),
        // shutting down, connection killed, lost, network timeouts
        E::Server(s) if matches!(s.code, 1053 | 1152 | 1158..=1161 | 1927 | 2006 | 2013) => {
            Fail::Retry(e.to_string())
        }
        _ => Fail::Fatal(e.to_string()),
    }
}
