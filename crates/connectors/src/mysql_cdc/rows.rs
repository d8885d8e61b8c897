//! Column values (from binlog rows or snapshot rows) to canonical event lines.

use crate::ingest::{is_plain_decimal, EventLine};
use mysql_async::Value;

/// How a time column's value is to be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TsKind {
    /// `TIMESTAMP` as the binlog carries it: epoch seconds, as an integer or `sec.usec` text.
    EpochSeconds,
    /// Anything else: `DATETIME`/`DATE` values are read as UTC, integers as epoch
    /// milliseconds, text as RFC 3339 (left to the decoder).
    #[default]
    Natural,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Ts {
    Ms(i64),
    Text(String),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn ts_of(v: &Value, kind: TsKind) -> Option<Ts> {
    match (v, kind) {
        (Value::NULL, _) => None,
        (Value::Date(y, mo, d, h, mi, s, us), _) => {
            if *y == 0 || *mo == 0 || *d == 0 {
                return None; // the zero date: no time at all
            }
            let days = days_from_civil(i64::from(*y), i64::from(*mo), i64::from(*d));
            Some(Ts::Ms(
                days * 86_400_000
                    + i64::from(*h) * 3_600_000
                    + i64::from(*mi) * 60_000
                    + i64::from(*s) * 1000
                    + i64::from(*us) / 1000,
            ))
        }
        (Value::Int(i), TsKind::EpochSeconds) => Some(Ts::Ms(i * 1000)),
        (Value::UInt(u), TsKind::EpochSeconds) => Some(Ts::Ms(*u as i64 * 1000)),
        (Value::Int(i), TsKind::Natural) => Some(Ts::Ms(*i)),
        (Value::UInt(u), TsKind::Natural) => Some(Ts::Ms(*u as i64)),
        (Value::Bytes(b), TsKind::EpochSeconds) => {
            let t = std::str::from_utf8(b).ok()?;
            let (sec, frac) = t.split_once('.').unwrap_or((t, ""));
            let sec: i64 = sec.parse().ok()?;
            let mut ms = 0i64;
            for (i, c) in frac.bytes().take(3).enumerate() {
                ms += i64::from(c.checked_sub(b'0')?) * [100, 10, 1][i];
            }
            Some(Ts::Ms(sec * 1000 + ms))
        }
        (Value::Bytes(b), TsKind::Natural) => {
            let t = String::from_utf8_lossy(b).into_owned();
            match t.parse::<i64>() {
                Ok(ms) => Some(Ts::Ms(ms)),
                Err(_) => Some(Ts::Text(t)),
            }
        }
        (Value::Double(f), _) => Some(Ts::Ms(*f as i64)),
        (Value::Float(f), _) => Some(Ts::Ms(*f as i64)),
        (Value::Time(..), _) => None,
    }
}

/// Identifier text (user, sku, order id, category) of a value; `None` for NULL.
pub(crate) fn text_of(v: &Value) -> Option<String> {
    Some(match v {
        Value::NULL => return None,
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Double(f) => f.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Date(y, mo, d, h, mi, s, us) => {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
        }
        Value::Time(neg, d, h, mi, s, us) => format!(
            "{}{}:{mi:02}:{s:02}.{us:06}",
            if *neg { "-" } else { "" },
            u64::from(*d) * 24 + u64::from(*h)
        ),
    })
}

/// A number as the decoder should see it: plain decimal text goes in unquoted, anything else
/// quoted, so a bad quantity or price becomes a dead letter with the value in it rather than
/// silently vanishing.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Num {
    Plain(String),
    Odd(String),
}

pub(crate) fn num_of(v: &Value) -> Option<Num> {
    let t = match v {
        Value::NULL => return None,
        Value::Int(i) => return Some(Num::Plain(i.to_string())),
        Value::UInt(u) => return Some(Num::Plain(u.to_string())),
        Value::Double(f) => f.to_string(),
        Value::Float(f) => f.to_string(),
        other => text_of(other)?,
    };
    if is_plain_decimal(&t) {
        Some(Num::Plain(t))
    } else {
        Some(Num::Odd(t))
    }
}

/// The fields of one cart event taken from a row.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Fields {
    pub user: Option<String>,
    pub sku: Option<String>,
    pub qty: Option<Num>,
    pub price: Option<Num>,
    pub category: Option<String>,
    pub order_id: Option<String>,
    pub ts: Option<Ts>,
}

impl Fields {
    /// Whether `new` is the same cart line (user and sku) as `self`.
    pub fn same_line(&self, new: &Fields) -> bool {
        self.user == new.user && self.sku == new.sku
    }

    /// Whether a change from `self` to `new` is invisible in a cart (only the time or
    /// unmapped columns changed).
    pub fn same_content(&self, new: &Fields) -> bool {
        self.same_line(new) && self.qty == new.qty && self.price == new.price
    }
}

fn put_num<'a>(line: EventLine<'a>, k: &str, n: &Option<Num>) -> EventLine<'a> {
    match n {
        Some(Num::Plain(t)) => line.num(k, t),
        Some(Num::Odd(t)) => line.str(k, t),
        None => line,
    }
}

/// Appends one event line. `ts` falls back to `default_ts` (the binlog event's time, or the
/// snapshot's) when the row has no usable time.
pub(crate) fn write_event(
    out: &mut Vec<u8>,
    id: &str,
    action: &str,
    f: &Fields,
    ts: Option<&Ts>,
    default_ts: i64,
    with_qty: bool,
) {
    let mut line = EventLine::new(out).str("event_id", id);
    line = match ts.or(f.ts.as_ref()) {
        Some(Ts::Ms(ms)) => line.int("ts", *ms),
        Some(Ts::Text(t)) => line.str("ts", t),
        None => line.int("ts", default_ts),
    };
    line = line
        .opt_str("user_id", f.user.as_deref())
        .str("action", action)
        .opt_str("sku", f.sku.as_deref());
    if with_qty {
        line = put_num(line, "qty", &f.qty);
    }
    line = put_num(line, "price", &f.price);
    line.opt_str("category", f.category.as_deref())
        .opt_str("order_id", f.order_id.as_deref())
        .end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartpulse_model::{decode_json, Action, DecodeOptions};

    #[test]
    fn times_become_epoch_milliseconds() {
        let d = Value::Date(2025, 11, 24, 16, 0, 0, 123_456);
        assert_eq!(ts_of(&d, TsKind::Natural), Some(Ts::Ms(1_764_000_000_123)));
        assert_eq!(
            ts_of(
                &Value::Bytes(b"1764000000.5".to_vec()),
                TsKind::EpochSeconds
            ),
            Some(Ts::Ms(1_764_000_000_500))
        );
        assert_eq!(
            ts_of(&Value::Int(1_764_000_000), TsKind::EpochSeconds),
            Some(Ts::Ms(1_764_000_000_000))
        );
        assert_eq!(
            ts_of(&Value::Int(1_764_000_000_123), TsKind::Natural),
            Some(Ts::Ms(1_764_000_000_123))
        );
        assert_eq!(
            ts_of(
                &Value::Bytes(b"2025-11-24T16:00:00Z".to_vec()),
                TsKind::Natural
            ),
            Some(Ts::Text("2025-11-24T16:00:00Z".into()))
        );
        assert_eq!(
            ts_of(&Value::Date(0, 0, 0, 0, 0, 0, 0), TsKind::Natural),
            None
        );
        assert_eq!(ts_of(&Value::NULL, TsKind::Natural), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn rows_become_lines_the_decoder_accepts() {
        let f = Fields {
            user: text_of(&Value::Bytes(b"u1".to_vec())),
            sku: text_of(&Value::Int(42)),
            qty: num_of(&Value::Int(3)),
            price: num_of(&Value::Bytes(b"19.99".to_vec())),
            ts: Some(Ts::Ms(1_764_000_000_000)),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_event(&mut out, "mysql-bin.000001:4#0", "add", &f, None, 0, true);
        let ev = decode_json(&out[..out.len() - 1], &DecodeOptions::default()).unwrap();
        assert_eq!(ev.action, Action::Add);
        assert_eq!(ev.sku.as_deref(), Some("42"));
        assert_eq!(ev.qty, Some(3));
        assert_eq!(ev.price.unwrap().to_string(), "19.99");
        assert_eq!(ev.ts, 1_764_000_000_000);
        assert_eq!(ev.event_id, "mysql-bin.000001:4#0");

        // a negative quantity reaches the decoder, which rejects it with a reason
        let bad = Fields {
            qty: num_of(&Value::Int(-1)),
            ..f.clone()
        };
        out.clear();
        write_event(&mut out, "x", "add", &bad, None, 0, true);
        assert!(decode_json(&out[..out.len() - 1], &DecodeOptions::default()).is_err());

        // a remove carries no quantity when asked not to; the time falls back
        let g = Fields { ts: None, ..f };
        out.clear();
        write_event(&mut out, "y", "remove", &g, None, 7, false);
        let ev = decode_json(&out[..out.len() - 1], &DecodeOptions::default()).unwrap();
        assert_eq!((ev.qty, ev.ts), (None, 7));
    }
}
