//! The speed layer's window results after the batch horizon, as the serving layer holds them.
//!
//! [`LiveWindowSink`] is one more sink on the committer: it takes the `user_windows` and
//! `global_windows` streams, journals each epoch at `pre_commit` (fsynced, so a restart can
//! serve them again) and makes it visible at `commit` — so the serving layer only ever shows
//! committed results, exactly once. A re-emitted window (`"update": true`) replaces the
//! earlier record. Whatever the batch views cover (window end at or before their horizon) is
//! dropped from memory and, once a whole epoch is covered, from the journal.

use crate::ServingError;
use cartpulse_batch::{flat_fields, Horizon};
use cartpulse_engine::{Sink, SinkError, Stream};
use cartpulse_model::Money;
use datafusion::arrow::array::{ArrayRef, Decimal128Builder, Int64Builder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Value columns of a user window after (window_start, window_end, user_id); `true` = money.
pub const USER_COLUMNS: [(&str, bool); 11] = [
    ("events", false),
    ("views", false),
    ("adds", false),
    ("removes", false),
    ("update_qtys", false),
    ("checkouts", false),
    ("qty_added", false),
    ("qty_removed", false),
    ("value_added", true),
    ("value_removed", true),
    ("value_delta", true),
];

/// Value columns of a global window after (window_start, window_end): the batch view's,
/// then the carts-now gauges only the speed layer knows.
pub const GLOBAL_COLUMNS: [(&str, bool); 16] = [
    ("events", false),
    ("distinct_users", false),
    ("views", false),
    ("adds", false),
    ("removes", false),
    ("update_qtys", false),
    ("checkouts", false),
    ("qty_added", false),
    ("qty_removed", false),
    ("value_added", true),
    ("value_removed", true),
    ("value_delta", true),
    ("checkout_value", true),
    ("active_carts", false),
    ("items_in_carts", false),
    ("value_in_carts", true),
];

/// The gauges of [`GLOBAL_COLUMNS`] (its last three), absent from the batch view.
pub const GAUGES: usize = 3;

const MONEY: DataType = DataType::Decimal128(18, 4);

fn schema(user: bool) -> SchemaRef {
    let mut f = vec![
        Field::new("window_start", DataType::Int64, false),
        Field::new("window_end", DataType::Int64, false),
    ];
    if user {
        f.push(Field::new("user_id", DataType::Utf8, false));
    }
    let cols: &[(&str, bool)] = if user { &USER_COLUMNS } else { &GLOBAL_COLUMNS };
    for (name, money) in cols {
        let t = if *money { MONEY } else { DataType::Int64 };
        f.push(Field::new(*name, t, true));
    }
    Arc::new(Schema::new(f))
}

pub fn user_schema() -> SchemaRef {
    schema(true)
}

pub fn global_schema() -> SchemaRef {
    schema(false)
}

/// (window_start, window_end, user_id or "").
type Key = (i64, i64, String);

/// What a query sees: the horizon the live tables were cut at and the windows after it.
#[derive(Clone, Debug)]
pub struct LiveSnapshot {
    pub horizon: Option<i64>,
    pub user_windows: RecordBatch,
    pub global_windows: RecordBatch,
}

struct Inner {
    horizon: Option<i64>,
    user: BTreeMap<Key, Vec<i128>>,
    global: BTreeMap<Key, Vec<i128>>,
    /// Journaled epochs → largest window end in them.
    epochs: BTreeMap<u64, i64>,
    cache: Option<Arc<LiveSnapshot>>,
    checked: Option<Instant>,
}

/// The live windows, shared by the sink (writer) and the query side (readers).
pub struct LiveWindows {
    journal: PathBuf,
    views: PathBuf,
    inner: Mutex<Inner>,
}

/// How often the batch horizon is re-read (it moves once per batch run).
const HORIZON_CHECK: Duration = Duration::from_secs(1);

impl LiveWindows {
    /// `journal`: this store's directory; `views`: the batch views, whose `_horizon.json`
    /// says what the live side may forget.
    pub fn new(journal: impl Into<PathBuf>, views: impl Into<PathBuf>) -> Arc<LiveWindows> {
        Arc::new(LiveWindows {
            journal: journal.into(),
            views: views.into(),
            inner: Mutex::new(Inner {
                horizon: None,
                user: BTreeMap::new(),
                global: BTreeMap::new(),
                epochs: BTreeMap::new(),
                cache: None,
                checked: None,
            }),
        })
    }

    /// The windows after the current batch horizon (re-read at most once a second).
    pub fn snapshot(&self) -> Result<Arc<LiveSnapshot>, ServingError> {
        let mut g = self.inner.lock().expect("live lock");
        self.refresh(&mut g, false);
        if let Some(c) = &g.cache {
            return Ok(c.clone());
        }
        let s = Arc::new(LiveSnapshot {
            horizon: g.horizon,
            user_windows: to_batch(user_schema(), &g.user, true)?,
            global_windows: to_batch(global_schema(), &g.global, false)?,
        });
        g.cache = Some(s.clone());
        Ok(s)
    }

    fn refresh(&self, g: &mut Inner, force: bool) {
        if !force && g.checked.is_some_and(|t| t.elapsed() < HORIZON_CHECK) {
            return;
        }
        g.checked = Some(Instant::now());
        let h = match Horizon::read(&self.views) {
            Ok(h) => h.horizon_ms,
            // no batch run yet: nothing is covered
            Err(_) => None,
        };
        let Some(h) = h else { return };
        if g.horizon.is_some_and(|old| old >= h) {
            return;
        }
        g.horizon = Some(h);
        g.user.retain(|k, _| k.1 > h);
        g.global.retain(|k, _| k.1 > h);
        let done: Vec<u64> = g
            .epochs
            .iter()
            .filter(|(_, end)| **end <= h)
            .map(|(e, _)| *e)
            .collect();
        for e in done {
            g.epochs.remove(&e);
            let p = self.journal.join(journal_name(e));
            if let Err(err) = fs::remove_file(&p) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %err, "cannot delete a covered live-window journal file");
                }
            }
        }
        g.cache = None;
    }

    /// Applies one epoch's tagged lines (`U…` user window, `G…` global window).
    fn apply(&self, g: &mut Inner, epoch: u64, text: &[u8]) -> Result<(), String> {
        let mut max_end = i64::MIN;
        for line in text.split(|b| *b == b'\n').filter(|l| l.len() > 1) {
            let (user, json) = match line[0] {
                b'U' => (true, &line[1..]),
                b'G' => (false, &line[1..]),
                t => return Err(format!("unknown record tag {:?}", t as char)),
            };
            let json = std::str::from_utf8(json).map_err(|e| e.to_string())?;
            let (key, row) = parse_window(json, user)?;
            max_end = max_end.max(key.1);
            if g.horizon.is_some_and(|h| key.1 <= h) {
                continue; // the batch views have it
            }
            if user {
                g.user.insert(key, row);
            } else {
                g.global.insert(key, row);
            }
        }
        if max_end > i64::MIN {
            g.epochs.insert(epoch, max_end);
        }
        g.cache = None;
        Ok(())
    }
}

fn journal_name(epoch: u64) -> String {
    format!("w-{epoch:012}.jsonl")
}

fn parse_journal_name(n: &str) -> Option<u64> {
    n.strip_prefix("w-")?.strip_suffix(".jsonl")?.parse().ok()
}

/// One window record: its key and its values in [`USER_COLUMNS`]/[`GLOBAL_COLUMNS`] order
/// (money as units of 10⁻⁴, from the JSON text, never through a float).
fn parse_window(json: &str, user: bool) -> Result<(Key, Vec<i128>), String> {
    let fields = flat_fields(json)?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("window record without `{k}`: {json}"))
    };
    let int = |k: &str| -> Result<i64, String> {
        get(k)?
            .parse::<i64>()
            .map_err(|e| format!("`{k}` in {json}: {e}"))
    };
    let u = if user {
        serde_json::from_str::<String>(get("user_id")?).map_err(|e| e.to_string())?
    } else {
        String::new()
    };
    let key = (int("window_start")?, int("window_end")?, u);
    let cols: &[(&str, bool)] = if user { &USER_COLUMNS } else { &GLOBAL_COLUMNS };
    let mut row = Vec::with_capacity(cols.len());
    for (name, money) in cols {
        row.push(if *money {
            let m = Money::parse(get(name)?.as_bytes()).map_err(|e| format!("`{name}`: {e}"))?;
            i128::from(m.0)
        } else {
            i128::from(int(name)?)
        });
    }
    Ok((key, row))
}

fn to_batch(
    schema: SchemaRef,
    rows: &BTreeMap<Key, Vec<i128>>,
    user: bool,
) -> Result<RecordBatch, ServingError> {
    let mut start = Int64Builder::with_capacity(rows.len());
    let mut end = Int64Builder::with_capacity(rows.len());
    let mut uid = StringBuilder::new();
    let cols: &[(&str, bool)] = if user { &USER_COLUMNS } else { &GLOBAL_COLUMNS };
    let mut ints: Vec<Int64Builder> = Vec::new();
    let mut money: Vec<Decimal128Builder> = Vec::new();
    for (_, m) in cols {
        if *m {
            money.push(Decimal128Builder::new().with_data_type(MONEY));
        } else {
            ints.push(Int64Builder::with_capacity(rows.len()));
        }
    }
    for (k, row) in rows {
        start.append_value(k.0);
        end.append_value(k.1);
        if user {
            uid.append_value(&k.2);
        }
        let (mut i, mut m) = (0, 0);
        for ((_, is_money), v) in cols.iter().zip(row) {
            if *is_money {
                money[m].append_value(*v);
                m += 1;
            } else {
                ints[i].append_value(*v as i64);
                i += 1;
            }
        }
    }
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(start.finish()), Arc::new(end.finish())];
    if user {
        arrays.push(Arc::new(uid.finish()));
    }
    let (mut ints, mut money) = (ints.into_iter(), money.into_iter());
    for (_, m) in cols {
        if *m {
            arrays.push(Arc::new(
                money.next().expect("one builder per column").finish(),
            ));
        } else {
            arrays.push(Arc::new(
                ints.next().expect("one builder per column").finish(),
            ));
        }
    }
    Ok(RecordBatch::try_new(schema, arrays)?)
}

/// The sink feeding [`LiveWindows`]: journal at `pre_commit`, visible at `commit`.
pub struct LiveWindowSink {
    store: Arc<LiveWindows>,
    pending: BTreeMap<u64, Vec<u8>>,
}

impl LiveWindowSink {
    pub fn new(store: Arc<LiveWindows>) -> Self {
        LiveWindowSink {
            store,
            pending: BTreeMap::new(),
        }
    }

    fn err(&self, message: String, retryable: bool) -> SinkError {
        SinkError {
            sink: self.name().to_string(),
            message,
            retryable,
        }
    }

    fn dir(&self) -> &Path {
        &self.store.journal
    }
}

impl Sink for LiveWindowSink {
    fn name(&self) -> &str {
        "serving"
    }

    fn wants(&self, stream: Stream) -> bool {
        matches!(stream, Stream::UserWindows | Stream::GlobalWindows)
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError> {
        let dir = self.dir().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| self.err(format!("{}: {e}", dir.display()), false))?;
        let mut files: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .map_err(|e| self.err(format!("{}: {e}", dir.display()), false))?
            .filter_map(|e| {
                let e = e.ok()?;
                let n = parse_journal_name(&e.file_name().to_string_lossy())?;
                Some((n, e.path()))
            })
            .collect();
        files.sort();
        let store = self.store.clone();
        let mut g = store.inner.lock().expect("live lock");
        g.user.clear();
        g.global.clear();
        g.epochs.clear();
        g.cache = None;
        store.refresh(&mut g, true);
        for (epoch, path) in files {
            // a fresh start begins from empty results; epochs after the checkpoint were
            // never committed
            if committed.is_none_or(|c| epoch > c) {
                fs::remove_file(&path)
                    .map_err(|e| self.err(format!("{}: {e}", path.display()), false))?;
                continue;
            }
            let text =
                fs::read(&path).map_err(|e| self.err(format!("{}: {e}", path.display()), false))?;
            store
                .apply(&mut g, epoch, &text)
                .map_err(|e| self.err(format!("{}: {e}", path.display()), false))?;
        }
        self.pending.clear();
        Ok(())
    }

    fn write(
        &mut self,
        epoch: u64,
        stream: Stream,
        records: &[u8],
        _count: u64,
    ) -> Result<(), SinkError> {
        let tag = if stream == Stream::UserWindows {
            b'U'
        } else {
            b'G'
        };
        let buf = self.pending.entry(epoch).or_default();
        for line in records.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            buf.push(tag);
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        let Some(buf) = self.pending.get(&epoch).filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        let path = self.dir().join(journal_name(epoch));
        let tmp = self.dir().join(format!(".{}.tmp", journal_name(epoch)));
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(buf)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(self.dir())?.sync_all()
        })();
        res.map_err(|e| self.err(format!("{}: {e}", path.display()), true))
    }

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError> {
        let Some(buf) = self.pending.remove(&epoch) else {
            return Ok(());
        };
        let store = self.store.clone();
        let mut g = store.inner.lock().expect("live lock");
        store.refresh(&mut g, false);
        store
            .apply(&mut g, epoch, &buf)
            .map_err(|e| self.err(e, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};

    const U1: &str = r#"{"window_start":0,"window_end":10000,"user_id":"u1","events":2,"views":1,"adds":1,"removes":0,"update_qtys":0,"checkouts":0,"qty_added":3,"qty_removed":0,"value_added":12345678901234.5678,"value_removed":0,"value_delta":12345678901234.5678}"#;
    const G1: &str = r#"{"window_start":0,"window_end":10000,"events":2,"distinct_users":1,"views":1,"adds":1,"removes":0,"update_qtys":0,"checkouts":0,"qty_added":3,"qty_removed":0,"value_added":1.5,"value_removed":0,"value_delta":1.5,"checkout_value":0,"active_carts":1,"items_in_carts":3,"value_in_carts":4.5}"#;

    fn horizon(views: &Path, h: i64) {
        fs::create_dir_all(views).unwrap();
        let w = cartpulse_engine::WindowSpec::Tumbling {
            size: Duration::from_secs(10),
        };
        let hz = Horizon {
            horizon_ms: Some(h),
            horizon: None,
            first_partition_ms: None,
            complete: false,
            archive_complete_before_ms: None,
            user_window: w.clone(),
            global_window: w,
            late_rows_in_windows: false,
        };
        fs::write(
            views.join("_horizon.json"),
            serde_json::to_vec(&hz).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn only_committed_epochs_are_served_and_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let (j, v) = (d.path().join("journal"), d.path().join("views"));
        let store = LiveWindows::new(&j, &v);
        let mut s = LiveWindowSink::new(store.clone());
        s.recover(None).unwrap();
        s.write(1, Stream::UserWindows, format!("{U1}\n").as_bytes(), 1)
            .unwrap();
        s.write(1, Stream::GlobalWindows, format!("{G1}\n").as_bytes(), 1)
            .unwrap();
        s.pre_commit(1).unwrap();
        assert_eq!(store.snapshot().unwrap().user_windows.num_rows(), 0);
        s.commit(1).unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.user_windows.num_rows(), 1);
        // exact money, not a float's approximation
        let va = snap.user_windows.column_by_name("value_added").unwrap();
        assert_eq!(
            va.as_primitive::<Decimal128Type>().value(0),
            123_456_789_012_345_678
        );
        let ac = snap.global_windows.column_by_name("active_carts").unwrap();
        assert_eq!(ac.as_primitive::<Int64Type>().value(0), 1);

        // epoch 2 journaled but its checkpoint never completed
        let u2 = U1.replace(
            "\"window_start\":0,\"window_end\":10000",
            "\"window_start\":10000,\"window_end\":20000",
        );
        s.write(2, Stream::UserWindows, format!("{u2}\n").as_bytes(), 1)
            .unwrap();
        s.pre_commit(2).unwrap();
        drop(s);
        let store = LiveWindows::new(&j, &v);
        let mut s = LiveWindowSink::new(store.clone());
        s.recover(Some(1)).unwrap();
        assert_eq!(store.snapshot().unwrap().user_windows.num_rows(), 1);
        assert!(!j.join(journal_name(2)).exists());

        // the batch layer covers the window: memory and journal let go of it
        horizon(&v, 10_000);
        let mut g = store.inner.lock().unwrap();
        store.refresh(&mut g, true);
        drop(g);
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.horizon, Some(10_000));
        assert_eq!(snap.user_windows.num_rows(), 0);
        assert!(!j.join(journal_name(1)).exists());
    }

    #[test]
    fn an_update_replaces_the_first_emission() {
        let d = tempfile::tempdir().unwrap();
        let store = LiveWindows::new(d.path().join("j"), d.path().join("v"));
        let mut s = LiveWindowSink::new(store.clone());
        s.recover(None).unwrap();
        s.write(1, Stream::UserWindows, format!("{U1}\n").as_bytes(), 1)
            .unwrap();
        let upd = U1
            .replace("\"events\":2", "\"events\":3")
            .replace('}', ",\"update\":true}");
        s.write(1, Stream::UserWindows, format!("{upd}\n").as_bytes(), 1)
            .unwrap();
        s.pre_commit(1).unwrap();
        s.commit(1).unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.user_windows.num_rows(), 1);
        let ev = snap.user_windows.column_by_name("events").unwrap();
        assert_eq!(ev.as_primitive::<Int64Type>().value(0), 3);
    }
}
