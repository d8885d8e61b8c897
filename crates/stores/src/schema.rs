//! What each output stream looks like to a store: its typed columns and its key.
//!
//! One table drives every store, so the Postgres and ClickHouse DDL, the Elasticsearch ids
//! and the Redis keys cannot drift apart. Values are taken from the record as raw JSON text,
//! never through a float, so money keeps its four decimals exactly.

use crate::StoreError;
use cartpulse_engine::Stream;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Integers (counts, epoch milliseconds).
    Int,
    /// Exact decimal with up to 4 places.
    Money,
    /// A nested JSON value kept as JSON (cart lines, the late event).
    Json,
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The listed fields identify the result; a later record with the same key replaces it.
    Fields(&'static [&'static str]),
    /// The `alert_id` field (opaque records from the rule engine); records without one are
    /// kept as appended rows.
    AlertId,
    /// Append-only: the row is identified by where it was staged (epoch, sequence number),
    /// which a replayed commit reproduces exactly.
    Appended,
}

#[derive(Clone, Copy, Debug)]
pub struct StreamSchema {
    pub stream: Stream,
    pub key: Key,
    pub fields: &'static [Field],
    /// Also keep the whole record as JSON (`payload`), for records whose shape is open.
    pub payload: bool,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

use Kind::{Int, Json, Money, Text};

const USER_WINDOWS: &[Field] = &[
    f("user_id", Text),
    f("window_start", Int),
    f("window_end", Int),
    f("events", Int),
    f("views", Int),
    f("adds", Int),
    f("removes", Int),
    f("update_qtys", Int),
    f("checkouts", Int),
    f("qty_added", Int),
    f("qty_removed", Int),
    f("value_added", Money),
    f("value_removed", Money),
    f("value_delta", Money),
];

const GLOBAL_WINDOWS: &[Field] = &[
    f("window_start", Int),
    f("window_end", Int),
    f("events", Int),
    f("distinct_users", Int),
    f("views", Int),
    f("adds", Int),
    f("removes", Int),
    f("update_qtys", Int),
    f("checkouts", Int),
    f("qty_added", Int),
    f("qty_removed", Int),
    f("value_added", Money),
    f("value_removed", Money),
    f("value_delta", Money),
    f("checkout_value", Money),
    f("active_carts", Int),
    f("items_in_carts", Int),
    f("value_in_carts", Money),
];

const ABANDONED: &[Field] = &[
    f("user_id", Text),
    f("abandoned_at", Int),
    f("session_id", Text),
    f("last_activity", Int),
    f("items", Int),
    f("value", Money),
    f("lines", Json),
];

const CARTS: &[Field] = &[
    f("user_id", Text),
    f("items", Int),
    f("value", Money),
    f("last_activity", Int),
    f("lines", Json),
];

const ALERTS: &[Field] = &[f("alert_id", Text)];

const LATE: &[Field] = &[
    f("reason", Text),
    f("watermark", Int),
    f("late_by_ms", Int),
    f("event", Json),
];

const DEAD: &[Field] = &[
    f("reason", Text),
    f("error", Text),
    f("source", Text),
    f("position", Text),
];

/// The streams a store can hold (`events`, the raw history, belongs to the lake).
pub const SCHEMAS: &[StreamSchema] = &[
    StreamSchema {
        stream: Stream::UserWindows,
        key: Key::Fields(&["user_id", "window_start", "window_end"]),
        fields: USER_WINDOWS,
        payload: false,
    },
    StreamSchema {
        stream: Stream::GlobalWindows,
        key: Key::Fields(&["window_start", "window_end"]),
        fields: GLOBAL_WINDOWS,
        payload: false,
    },
    StreamSchema {
        stream: Stream::AbandonedCarts,
        key: Key::Fields(&["user_id", "abandoned_at"]),
        fields: ABANDONED,
        payload: false,
    },
    StreamSchema {
        stream: Stream::Carts,
        key: Key::Fields(&["user_id"]),
        fields: CARTS,
        payload: false,
    },
    StreamSchema {
        stream: Stream::Alerts,
        key: Key::AlertId,
        fields: ALERTS,
        payload: true,
    },
    StreamSchema {
        stream: Stream::LateEvents,
        key: Key::Appended,
        fields: LATE,
        payload: false,
    },
    StreamSchema {
        stream: Stream::DeadLetter,
        key: Key::Appended,
        fields: DEAD,
        payload: true,
    },
];

pub fn schema(stream: Stream) -> Option<&'static StreamSchema> {
    SCHEMAS.iter().find(|s| s.stream == stream)
}

pub fn stream_by_name(name: &str) -> Option<Stream> {
    Stream::ALL.into_iter().find(|s| s.name() == name)
}

/// The top-level fields of one JSON record, as raw JSON text.
pub struct Fields<'a> {
    pub line: &'a str,
    items: Vec<(&'a str, &'a RawValue)>,
}

impl<'a> Fields<'a> {
    pub fn parse(line: &'a [u8]) -> Result<Fields<'a>, StoreError> {
        let line = std::str::from_utf8(line)
            .map_err(|e| StoreError::fatal(format!("record is not UTF-8: {e}")))?;
        let mut de = serde_json::Deserializer::from_str(line);
        let items = de
            .deserialize_map(FieldsVisitor)
            .map_err(|e| StoreError::fatal(format!("record is not a JSON object ({e}): {line}")))?;
        Ok(Fields { line, items })
    }

    pub fn raw(&self, name: &str) -> Option<&'a str> {
        self.items
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.get())
            .filter(|v| *v != "null")
    }

    /// A field as text: strings unquoted, anything else as its JSON text.
    pub fn text(&self, name: &str) -> Option<String> {
        let raw = self.raw(name)?;
        if raw.starts_with('"') {
            serde_json::from_str::<String>(raw).ok()
        } else {
            Some(raw.to_string())
        }
    }

    pub fn is_update(&self) -> bool {
        self.raw("update") == Some("true")
    }

    /// Whether a `carts` record says the cart is gone.
    pub fn cart_is_empty(&self) -> bool {
        self.raw("lines")
            .is_none_or(|l| l.trim_start_matches('[').trim_start().starts_with(']'))
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Vec<(&'de str, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut v = Vec::with_capacity(20);
        // keys are borrowed: the pipeline's encoders never escape a field name
        while let Some(k) = map.next_key::<&'de str>()? {
            let val: &'de RawValue = map.next_value()?;
            v.push((k, val));
        }
        Ok(v)
    }
}

/// The key of a record as one string (Redis keys, Elasticsearch ids, dedup within an
/// epoch): the key fields' text joined by `:`, or `<epoch>-<seq>` for appended rows.
pub fn key_of(s: &StreamSchema, r: &Fields, epoch: u64, seq: u64) -> Result<String, StoreError> {
    match s.key {
        Key::Fields(names) => {
            let mut k = String::new();
            for (i, n) in names.iter().enumerate() {
                if i > 0 {
                    k.push(':');
                }
                let v = r.text(n).ok_or_else(|| {
                    StoreError::fatal(format!(
                        "{} record without key field `{n}`: {}",
                        s.stream.name(),
                        r.line
                    ))
                })?;
                k.push_str(&v);
            }
            Ok(k)
        }
        Key::AlertId => Ok(r
            .text("alert_id")
            .unwrap_or_else(|| appended_key(epoch, seq))),
        Key::Appended => Ok(appended_key(epoch, seq)),
    }
}

pub fn appended_key(epoch: u64, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

/// Iterates the non-empty lines of newline-terminated records.
pub fn lines(records: &[u8]) -> impl Iterator<Item = &[u8]> {
    records
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_keep_money_exact() {
        let line = br#"{"user_id":"u\"1","window_start":10,"window_end":20,"value_added":99999999999999.9999,"lines":[],"update":true}"#;
        let r = Fields::parse(line).unwrap();
        assert_eq!(r.raw("value_added"), Some("99999999999999.9999"));
        assert_eq!(r.text("user_id").as_deref(), Some("u\"1"));
        assert!(r.is_update() && r.cart_is_empty());
        let s = schema(Stream::UserWindows).unwrap();
        assert_eq!(key_of(s, &r, 3, 4).unwrap(), "u\"1:10:20");
        let a = schema(Stream::Alerts).unwrap();
        assert_eq!(key_of(a, &r, 3, 4).unwrap(), "3-4");
        let r = Fields::parse(br#"{"alert_id":"a9","lines":[{"sku":"p"}]}"#).unwrap();
        assert_eq!(key_of(a, &r, 3, 4).unwrap(), "a9");
        assert!(!r.cart_is_empty());
        assert!(Fields::parse(b"[1]").is_err());
    }
}
