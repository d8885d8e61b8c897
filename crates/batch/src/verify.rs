//! Reconciliation: the speed layer's window outputs against the batch views, field by field.
//!
//! Every compared value is an exact integer: counts as they are, money as units of 10⁻⁴
//! (parsed from the JSON text with `Money::parse`, read from `DECIMAL(·,4)` in Parquet), so
//! equal means equal, never "close". A window the speed layer re-emitted (`"update":true`)
//! counts with its last record. Only windows ending at or before the batch horizon are
//! compared. The carts-now gauges of global windows (`active_carts`, `items_in_carts`,
//! `value_in_carts`) are snapshots of cart state, not a function of the window's events, so
//! the history cannot recompute them: they are left out.

use crate::run::Horizon;
use crate::BatchError;
use cartpulse_model::Money;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

const COUNTS: [&str; 8] = [
    "events",
    "views",
    "adds",
    "removes",
    "update_qtys",
    "checkouts",
    "qty_added",
    "qty_removed",
];
const MONEY: [&str; 3] = ["value_added", "value_removed", "value_delta"];

/// One stream to compare.
struct Spec {
    stream: &'static str,
    keyed_by_user: bool,
    counts: Vec<&'static str>,
    money: Vec<&'static str>,
}

fn specs() -> [Spec; 2] {
    [
        Spec {
            stream: "user_windows",
            keyed_by_user: true,
            counts: COUNTS.to_vec(),
            money: MONEY.to_vec(),
        },
        Spec {
            stream: "global_windows",
            keyed_by_user: false,
            counts: [&COUNTS[..], &["distinct_users"]].concat(),
            money: [&MONEY[..], &["checkout_value"]].concat(),
        },
    ]
}

/// (window_start, window_end, user_id or "").
type Key = (i64, i64, String);
type Row = BTreeMap<&'static str, i128>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDiff {
    pub window_start: i64,
    pub window_end: i64,
    pub user_id: Option<String>,
    pub field: &'static str,
    pub speed: String,
    pub batch: String,
}

#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub stream: &'static str,
    /// Windows present on both sides.
    pub compared: usize,
    pub equal: usize,
    /// Speed-layer windows ending after the horizon: not yet covered by the batch.
    pub beyond_horizon: usize,
    pub missing_in_batch: Vec<Key>,
    pub missing_in_speed: Vec<Key>,
    pub diffs: Vec<FieldDiff>,
}

impl StreamReport {
    pub fn ok(&self) -> bool {
        self.missing_in_batch.is_empty()
            && self.missing_in_speed.is_empty()
            && self.diffs.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub horizon_ms: Option<i64>,
    pub streams: Vec<StreamReport>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.streams.iter().all(StreamReport::ok)
    }

    /// A human report listing at most `max` problems per kind and stream.
    pub fn render(&self, max: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "horizon: {}",
            self.horizon_ms
                .map_or("none (nothing complete)".into(), |h| format!(
                    "{h} ({})",
                    chrono::DateTime::from_timestamp_millis(h)
                        .unwrap_or_default()
                        .to_rfc3339()
                ))
        );
        for r in &self.streams {
            let _ = writeln!(
                s,
                "{}: {} windows compared, {} equal, {} with differing fields ({} differences), \
                 {} only in speed, {} only in batch, {} after the horizon (not compared)",
                r.stream,
                r.compared,
                r.equal,
                r.compared - r.equal,
                r.diffs.len(),
                r.missing_in_batch.len(),
                r.missing_in_speed.len(),
                r.beyond_horizon
            );
            let key = |k: &Key| {
                if k.2.is_empty() {
                    format!("[{}, {})", k.0, k.1)
                } else {
                    format!("[{}, {}) user {}", k.0, k.1, k.2)
                }
            };
            for d in r.diffs.iter().take(max) {
                let k = (
                    d.window_start,
                    d.window_end,
                    d.user_id.clone().unwrap_or_default(),
                );
                let _ = writeln!(
                    s,
                    "  DIFF {} {}: speed {} != batch {}",
                    key(&k),
                    d.field,
                    d.speed,
                    d.batch
                );
            }
            for k in r.missing_in_batch.iter().take(max) {
                let _ = writeln!(s, "  ONLY IN SPEED {}", key(k));
            }
            for k in r.missing_in_speed.iter().take(max) {
                let _ = writeln!(s, "  ONLY IN BATCH {}", key(k));
            }
            let more = r.diffs.len().saturating_sub(max)
                + r.missing_in_batch.len().saturating_sub(max)
                + r.missing_in_speed.len().saturating_sub(max);
            if more > 0 {
                let _ = writeln!(s, "  … and {more} more");
            }
        }
        let _ = writeln!(s, "{}", if self.ok() { "EQUAL" } else { "MISMATCH" });
        s
    }
}

/// Compares `speed/<stream>/part-*.jsonl` (the JSONL sink's output) with the batch views in
/// `batch/<stream>/` up to the batch horizon.
pub fn verify(speed: &Path, batch: &Path) -> Result<VerifyReport, BatchError> {
    let hz = Horizon::read(batch)?;
    let mut streams = Vec::new();
    for spec in specs() {
        let speed_rows = read_speed(&speed.join(spec.stream), &spec)?;
        let batch_rows = read_batch(&batch.join(spec.stream), &spec)?;
        let mut r = StreamReport {
            stream: spec.stream,
            ..Default::default()
        };
        let Some(h) = hz.horizon_ms else {
            r.beyond_horizon = speed_rows.len();
            streams.push(r);
            continue;
        };
        for (k, sv) in &speed_rows {
            if k.1 > h {
                r.beyond_horizon += 1;
                continue;
            }
            let Some(bv) = batch_rows.get(k) else {
                r.missing_in_batch.push(k.clone());
                continue;
            };
            r.compared += 1;
            let mut same = true;
            for f in spec.counts.iter().chain(&spec.money) {
                let (a, b) = (sv.get(f), bv.get(f));
                if a != b {
                    same = false;
                    let show = |v: Option<&i128>| match v {
                        None => "absent".to_string(),
                        Some(&v) if spec.money.contains(f) => money_text(v),
                        Some(v) => v.to_string(),
                    };
                    r.diffs.push(FieldDiff {
                        window_start: k.0,
                        window_end: k.1,
                        user_id: spec.keyed_by_user.then(|| k.2.clone()),
                        field: f,
                        speed: show(a),
                        batch: show(b),
                    });
                }
            }
            r.equal += usize::from(same);
        }
        for k in batch_rows.keys() {
            if k.1 <= h && !speed_rows.contains_key(k) {
                r.missing_in_speed.push(k.clone());
            }
        }
        streams.push(r);
    }
    Ok(VerifyReport {
        horizon_ms: hz.horizon_ms,
        streams,
    })
}

fn money_text(units: i128) -> String {
    match i64::try_from(units) {
        Ok(v) => {
            let mut out = Vec::new();
            Money(v).write_json(&mut out);
            String::from_utf8(out).expect("ascii")
        }
        Err(_) => format!("{units}e-4"),
    }
}

fn bad(path: &Path, line: usize, why: impl std::fmt::Display) -> BatchError {
    BatchError::Invalid(format!("{}:{line}: {why}", path.display()))
}

fn read_speed(dir: &Path, spec: &Spec) -> Result<BTreeMap<Key, Row>, BatchError> {
    let mut files: Vec<PathBuf> = Vec::new();
    let rd = fs::read_dir(dir).map_err(|source| BatchError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in rd {
        let p = e
            .map_err(|source| BatchError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        let n = p.file_name().unwrap_or_default().to_string_lossy();
        if n.starts_with("part-") && n.ends_with(".jsonl") {
            files.push(p);
        }
    }
    // epoch order, so a window's update replaces its first emission
    files.sort();
    let mut rows = BTreeMap::new();
    for p in files {
        let text = fs::read_to_string(&p).map_err(|source| BatchError::Io {
            path: p.clone(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fields = flat_fields(line).map_err(|e| bad(&p, i + 1, e))?;
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| bad(&p, i + 1, format!("no `{k}`")))
            };
            let int = |k: &str| -> Result<i128, BatchError> {
                get(k)?
                    .parse::<i128>()
                    .map_err(|e| bad(&p, i + 1, format!("`{k}`: {e}")))
            };
            let user = if spec.keyed_by_user {
                let raw = get("user_id")?;
                serde_json::from_str::<String>(raw).map_err(|e| bad(&p, i + 1, e))?
            } else {
                String::new()
            };
            let key = (int("window_start")? as i64, int("window_end")? as i64, user);
            let mut row = Row::new();
            for &f in &spec.counts {
                row.insert(f, int(f)?);
            }
            for &f in &spec.money {
                let m = Money::parse(get(f)?.as_bytes())
                    .map_err(|e| bad(&p, i + 1, format!("`{f}`: {e}")))?;
                row.insert(f, i128::from(m.0));
            }
            rows.insert(key, row);
        }
    }
    Ok(rows)
}

/// Splits a flat JSON object into (key, raw value text). The speed layer's window records
/// hold only strings, numbers and booleans; a raw number text keeps every digit (a float
/// parse would not).
pub fn flat_fields(line: &str) -> Result<Vec<(String, &str)>, String> {
    let b = line.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let string_end = |start: usize| -> Result<usize, String> {
        let mut j = start + 1;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' => return Ok(j + 1),
                _ => j += 1,
            }
        }
        Err("unterminated string".into())
    };
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err("expected an object".into());
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        ws(&mut i);
        match b.get(i) {
            Some(b'}') => break,
            Some(b'"') => {}
            _ => return Err(format!("expected a key at byte {i}")),
        }
        let end = string_end(i)?;
        let key: String = serde_json::from_str(&line[i..end]).map_err(|e| e.to_string())?;
        i = end;
        ws(&mut i);
        if b.get(i) != Some(&b':') {
            return Err(format!("expected `:` at byte {i}"));
        }
        i += 1;
        ws(&mut i);
        let start = i;
        if b.get(i) == Some(&b'"') {
            i = string_end(i)?;
        } else {
            while i < b.len() && !matches!(b[i], b',' | b'}') && !b[i].is_ascii_whitespace() {
                if matches!(b[i], b'{' | b'[') {
                    return Err(format!("nested value for `{key}`"));
                }
                i += 1;
            }
        }
        if start == i {
            return Err(format!("no value for `{key}`"));
        }
        out.push((key, &line[start..i]));
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return Err(format!("expected `,` or `}}` at byte {i}")),
        }
    }
    Ok(out)
}

fn read_batch(dir: &Path, spec: &Spec) -> Result<BTreeMap<Key, Row>, BatchError> {
    let mut rows = BTreeMap::new();
    if !dir.exists() {
        return Ok(rows);
    }
    let mut files = Vec::new();
    for e in fs::read_dir(dir).map_err(|source| BatchError::Io {
        path: dir.to_path_buf(),
        source,
    })? {
        let p = e
            .map_err(|source| BatchError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path()
            .join("part-0.parquet");
        if p.exists() {
            files.push(p);
        }
    }
    files.sort();
    for p in files {
        let perr = |source| BatchError::Parquet {
            path: p.clone(),
            source,
        };
        let f = File::open(&p).map_err(|source| BatchError::Io {
            path: p.clone(),
            source,
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(perr)?
            .build()
            .map_err(perr)?;
        for b in reader {
            let b = b?;
            let col = |name: &str, to: &DataType| {
                let c = b
                    .column_by_name(name)
                    .ok_or_else(|| bad(&p, 0, format!("no column `{name}`")))?;
                Ok::<_, BatchError>(cast(c, to)?)
            };
            let ws = col("window_start", &DataType::Int64)?;
            let we = col("window_end", &DataType::Int64)?;
            let (ws, we) = (
                ws.as_primitive::<Int64Type>(),
                we.as_primitive::<Int64Type>(),
            );
            let user = if spec.keyed_by_user {
                Some(col("user_id", &DataType::Utf8)?)
            } else {
                None
            };
            let mut counts = Vec::new();
            for &f in &spec.counts {
                counts.push((f, col(f, &DataType::Int64)?));
            }
            let mut money = Vec::new();
            for &f in &spec.money {
                // same scale, wider precision: an exact cast
                money.push((f, col(f, &DataType::Decimal128(38, 4))?));
            }
            for i in 0..b.num_rows() {
                let u = user
                    .as_ref()
                    .map(|u| u.as_string::<i32>().value(i).to_string())
                    .unwrap_or_default();
                let mut row = Row::new();
                for (f, c) in &counts {
                    let c = c.as_primitive::<Int64Type>();
                    if c.is_valid(i) {
                        row.insert(*f, i128::from(c.value(i)));
                    }
                }
                for (f, c) in &money {
                    let c = c.as_primitive::<Decimal128Type>();
                    if c.is_valid(i) {
                        row.insert(*f, c.value(i));
                    }
                }
                rows.insert((ws.value(i), we.value(i), u), row);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_objects_keep_number_text() {
        let f = flat_fields(
            r#"{"window_start":10,"user_id":"u\"1","value_added":0.30000000000000004,"update":true}"#,
        )
        .unwrap();
        assert_eq!(f[0], ("window_start".to_string(), "10"));
        assert_eq!(f[1], ("user_id".to_string(), r#""u\"1""#));
        assert_eq!(f[2].1, "0.30000000000000004");
        assert_eq!(f[3].1, "true");
        assert!(flat_fields(r#"{"a":[1]}"#).is_err());
        assert!(flat_fields(r#"{"a":1"#).is_err());
    }

    #[test]
    fn money_is_shown_as_decimal() {
        assert_eq!(money_text(129_900), "12.99");
        assert_eq!(money_text(-5_000), "-0.5");
    }
}
