//! Writing events as Avro, in [`CART_EVENT_WRITER_SCHEMA`]: for producers and tests that
//! want the messages cartpulse reads, and for the decode benchmark.

use crate::CART_EVENT_WRITER_SCHEMA;
use apache_avro::types::Value;
use apache_avro::{Decimal, Schema};
use cartpulse_model::CartEvent;
use std::sync::OnceLock;

/// [`CART_EVENT_WRITER_SCHEMA`], parsed.
pub fn writer_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| Schema::parse_str(CART_EVENT_WRITER_SCHEMA).expect("built-in schema parses"))
}

/// The event as a value of [`CART_EVENT_WRITER_SCHEMA`].
pub fn event_value(e: &CartEvent) -> Value {
    let opt = |v: &Option<compact_str::CompactString>| match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.to_string()))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    Value::Record(vec![
        ("event_id".into(), Value::String(e.event_id.to_string())),
        ("ts".into(), Value::TimestampMillis(e.ts)),
        ("user_id".into(), Value::String(e.user_id.to_string())),
        ("session_id".into(), opt(&e.session_id)),
        (
            "action".into(),
            Value::Enum(e.action.index() as u32, e.action.as_str().into()),
        ),
        ("sku".into(), opt(&e.sku)),
        (
            "qty".into(),
            match e.qty {
                // beyond i32 does not fit the schema's `int`; such an event is not writable
                Some(q) => Value::Union(1, Box::new(Value::Int(q as i32))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
        (
            "price".into(),
            match e.price {
                Some(p) => Value::Union(1, Box::new(Value::Decimal(decimal_bytes(p.0)))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
        ("category".into(), opt(&e.category)),
        ("device_id".into(), opt(&e.device_id)),
        ("ip".into(), opt(&e.ip)),
        ("order_id".into(), opt(&e.order_id)),
        ("currency".into(), opt(&e.currency)),
    ])
}

/// The event as a bare datum of [`CART_EVENT_WRITER_SCHEMA`] (`wire = "plain"`).
pub fn event_datum(e: &CartEvent) -> Vec<u8> {
    apache_avro::to_avro_datum(writer_schema(), event_value(e))
        .expect("an event is a value of the writer schema")
}

/// `datum` in the Confluent wire format: byte 0, the schema id big-endian, the datum.
pub fn confluent_frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Shortest two's-complement big-endian bytes of `v` (what Avro decimals hold).
pub fn decimal_bytes(v: i64) -> Decimal {
    let b = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let redundant = (b[start] == 0x00 && b[start + 1] & 0x80 == 0)
            || (b[start] == 0xff && b[start + 1] & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    Decimal::from(b[start..].to_vec())
}
