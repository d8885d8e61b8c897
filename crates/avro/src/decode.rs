//! One message to one event: framing, writer schema, datum, resolution, then the rules every
//! format shares.

use crate::schemas::{read_schema_file, ById, Writer};
use crate::{AvroConfig, ConfigError, Wire, CART_EVENT_READER_SCHEMA};
use apache_avro::types::Value;
use apache_avro::Schema;
use cartpulse_model::json::{parse_price, parse_qty};
use cartpulse_model::time::parse_rfc3339_ms;
use cartpulse_model::{
    finish, Action, CartEvent, DecodeError, DecodeOptions, Decoder, Money, RawFields, RecordDecoder,
};
use compact_str::CompactString;
use std::sync::Arc;

/// Decodes Avro messages into cart events; shared by every decoder thread.
#[derive(Debug)]
pub struct AvroDecoder {
    opts: DecodeOptions,
    reader: Arc<Schema>,
    writers: Writers,
}

#[derive(Debug)]
enum Writers {
    Plain(Arc<Writer>),
    ById(ById),
}

impl AvroDecoder {
    /// Reads and checks every schema the configuration names, so a mistake stops the start
    /// (naming the key) instead of dead-lettering every message. Registry schemas are
    /// fetched when first needed.
    pub fn new(cfg: &AvroConfig, opts: DecodeOptions) -> Result<AvroDecoder, ConfigError> {
        // A length prefix in a garbled datum must not make apache-avro allocate more than a
        // record can hold. The limit is process-wide and set once: the first source wins.
        apache_avro::util::max_allocation_bytes(opts.max_record_bytes.max(1 << 20));
        let reader = match &cfg.reader_schema {
            Some(p) => read_schema_file("reader_schema", p)?,
            None => Schema::parse_str(CART_EVENT_READER_SCHEMA).expect("built-in schema parses"),
        };
        check_reader(&reader)?;
        let reader = Arc::new(reader);
        let writers = match cfg.wire {
            Wire::Plain => {
                for (key, set) in [
                    ("registry_url", cfg.registry_url.is_some()),
                    ("schema_dir", cfg.schema_dir.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            key,
                            "only for wire = \"confluent\"; wire = \"plain\" takes schema_file",
                        ));
                    }
                }
                let path = cfg.schema_file.as_ref().ok_or_else(|| {
                    ConfigError::new(
                        "schema_file",
                        "expected the writer schema file (.avsc) for wire = \"plain\"",
                    )
                })?;
                let schema = read_schema_file("schema_file", path)?;
                Writers::Plain(Arc::new(Writer::new(schema, &reader)))
            }
            Wire::Confluent => {
                if cfg.schema_file.is_some() {
                    return Err(ConfigError::new(
                        "schema_file",
                        "only for wire = \"plain\"; wire = \"confluent\" finds writer schemas by id in registry_url or schema_dir",
                    ));
                }
                if cfg.registry_url.is_none() && cfg.schema_dir.is_none() {
                    return Err(ConfigError::new(
                        "registry_url",
                        "expected registry_url or schema_dir (or both) for wire = \"confluent\"",
                    ));
                }
                Writers::ById(ById::new(
                    reader.clone(),
                    cfg.schema_dir.clone(),
                    cfg.registry_url.clone(),
                    cfg.registry_timeout,
                    cfg.retry_unknown_after,
                )?)
            }
        };
        Ok(AvroDecoder {
            opts,
            reader,
            writers,
        })
    }

    /// The decoder as a source hands it to the engine.
    pub fn into_decoder(self) -> Decoder {
        Decoder::Custom(Arc::new(self))
    }
}

impl RecordDecoder for AvroDecoder {
    fn decode(&self, record: &[u8]) -> Result<CartEvent, DecodeError> {
        if record.len() > self.opts.max_record_bytes {
            return Err(DecodeError::TooLong {
                len: record.len(),
                limit: self.opts.max_record_bytes,
            });
        }
        let (writer, mut datum) = match &self.writers {
            Writers::Plain(w) => (w.clone(), record),
            Writers::ById(s) => {
                let (id, datum) = confluent_frame(record)?;
                (s.get(id)?, datum)
            }
        };
        let value = apache_avro::from_avro_datum(&writer.schema, &mut datum, None)
            .map_err(|e| DecodeError::AvroMalformed(short(e)))?;
        if !datum.is_empty() {
            // a datum of another schema often decodes "successfully" into a prefix
            return Err(DecodeError::AvroMalformed(format!(
                "{} bytes left after the datum",
                datum.len()
            )));
        }
        let Value::Record(mut fields) = value else {
            return Err(DecodeError::AvroIncompatible(
                "the writer schema is not a record".into(),
            ));
        };
        normalise(&mut fields, &writer)?;
        let fields = if writer.is_reader {
            fields
        } else {
            match Value::Record(fields).resolve(&self.reader) {
                Ok(Value::Record(f)) => f,
                Ok(_) => {
                    return Err(DecodeError::AvroIncompatible(
                        "the reader schema is not a record".into(),
                    ))
                }
                Err(e) => return Err(DecodeError::AvroIncompatible(short(e))),
            }
        };
        to_event(record, fields, &self.opts)
    }
}

/// Splits a Confluent-framed message into schema id and datum.
fn confluent_frame(record: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if record.len() < 5 {
        return Err(DecodeError::AvroBadMagic(format!(
            "{} bytes, at least 5 expected (byte 0 and a 4-byte schema id)",
            record.len()
        )));
    }
    if record[0] != 0 {
        return Err(DecodeError::AvroBadMagic(format!(
            "first byte 0x{:02x}, expected 0x00",
            record[0]
        )));
    }
    let id = u32::from_be_bytes([record[1], record[2], record[3], record[4]]);
    Ok((id, &record[5..]))
}

/// An apache-avro error as dead-letter detail: some quote whole schemas, so it is cut.
fn short(e: impl std::fmt::Display) -> String {
    const MAX: usize = 400;
    let mut s = e.to_string();
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

const IDENTS: [&str; 9] = [
    "event_id",
    "user_id",
    "session_id",
    "sku",
    "category",
    "device_id",
    "ip",
    "order_id",
    "currency",
];

/// The reader must name the required fields and hold, for every event field it has, the
/// kind the writer's values are normalised to; otherwise every message would fail.
fn check_reader(reader: &Schema) -> Result<(), ConfigError> {
    let bad = |m: String| ConfigError::new("reader_schema", m);
    let Schema::Record(r) = reader else {
        return Err(bad("expected a record schema".into()));
    };
    for required in ["ts", "user_id", "action"] {
        if !r.fields.iter().any(|f| f.name == required) {
            return Err(bad(format!("the record has no field `{required}`")));
        }
    }
    for f in &r.fields {
        let (kind, what) = match f.name.as_str() {
            "ts" => (Schema::Long, "long (epoch milliseconds)"),
            "qty" => (Schema::Long, "long"),
            "price" => (
                Schema::String,
                "string (writer decimals arrive as exact decimal text)",
            ),
            n if n == "action" || IDENTS.contains(&n) => (Schema::String, "string"),
            _ => continue,
        };
        let ok = match &f.schema {
            Schema::Union(u) => u.variants().contains(&kind),
            s => *s == kind,
        };
        if !ok {
            return Err(bad(format!(
                "field `{}` must accept a {what}, alone or in a union",
                f.name
            )));
        }
    }
    Ok(())
}

/// Brings the writer's values of the event fields to the kinds the reader holds (see the
/// crate docs for why this comes before resolution).
fn normalise(fields: &mut [(String, Value)], w: &Writer) -> Result<(), DecodeError> {
    for (name, v) in fields.iter_mut() {
        let (branch, inner) = match std::mem::replace(v, Value::Null) {
            Value::Union(i, b) => (Some(i), *b),
            other => (None, other),
        };
        *v = match name.as_str() {
            "ts" => match inner {
                Value::Int(t) => Value::Long(i64::from(t)),
                Value::TimestampMillis(t) | Value::LocalTimestampMillis(t) => Value::Long(t),
                Value::TimestampMicros(t) | Value::LocalTimestampMicros(t) => {
                    Value::Long(t.div_euclid(1_000))
                }
                Value::TimestampNanos(t) | Value::LocalTimestampNanos(t) => {
                    Value::Long(t.div_euclid(1_000_000))
                }
                other => other,
            },
            "action" => text(inner),
            "qty" => match inner {
                Value::Int(q) => Value::Long(i64::from(q)),
                Value::Float(q) => Value::Double(f64::from(q)),
                other => other,
            },
            "price" => match inner {
                Value::Decimal(d) => {
                    let scale = decimal_scale(w.price.as_ref(), branch).ok_or_else(|| {
                        DecodeError::InvalidPrice {
                            value: "decimal".into(),
                            why: "the writer schema gives no scale for it".into(),
                        }
                    })?;
                    let bytes = Vec::<u8>::try_from(&d)
                        .map_err(|e| DecodeError::AvroMalformed(short(e)))?;
                    Value::String(decimal_text(&bytes, scale)?)
                }
                Value::BigDecimal(d) => Value::String(d.to_string()),
                // the float's own shortest form, so `0.1f32` is 0.1 and not 0.100000001…
                Value::Float(p) => Value::String(p.to_string()),
                Value::Int(p) => Value::Long(i64::from(p)),
                other => other,
            },
            n if IDENTS.contains(&n) => match inner {
                Value::Int(i) => Value::Long(i64::from(i)),
                Value::Uuid(u) => Value::String(u.to_string()),
                other => text(other),
            },
            _ => inner,
        };
    }
    Ok(())
}

/// Enum symbols and UTF-8 bytes as strings.
fn text(v: Value) -> Value {
    match v {
        Value::Enum(_, s) => Value::String(s),
        Value::Bytes(b) | Value::Fixed(_, b) => match String::from_utf8(b) {
            Ok(s) => Value::String(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        other => other,
    }
}

fn decimal_scale(price: Option<&Schema>, branch: Option<u32>) -> Option<usize> {
    let s = match (price?, branch) {
        (Schema::Union(u), Some(i)) => u.variants().get(i as usize)?,
        (s, _) => s,
    };
    match s {
        Schema::Decimal(d) => Some(d.scale),
        _ => None,
    }
}

/// A decimal's two's-complement big-endian unscaled value and its scale as decimal text,
/// exactly (`[0x07, 0xd0]`, 2 → `20.00`).
pub(crate) fn decimal_text(bytes: &[u8], scale: usize) -> Result<String, DecodeError> {
    let overflow = || DecodeError::InvalidPrice {
        value: format!("decimal of {} bytes", bytes.len()),
        why: "out of range".into(),
    };
    if bytes.is_empty() {
        return Ok("0".into());
    }
    let neg = bytes[0] & 0x80 != 0;
    let sign = if neg { 0xff } else { 0x00 };
    // wider than i128 is fine only as sign extension
    let keep = bytes.len().min(16);
    let (extra, tail) = bytes.split_at(bytes.len() - keep);
    if extra.iter().any(|&b| b != sign) || (!extra.is_empty() && (tail[0] & 0x80 != 0) != neg) {
        return Err(overflow());
    }
    let mut buf = [sign; 16];
    buf[16 - keep..].copy_from_slice(tail);
    let v = i128::from_be_bytes(buf);
    let digits = v.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + scale + 3);
    if v < 0 {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
    Ok(out)
}

/// The resolved record as the event, under the rules the JSON decoder applies: a field
/// error is reported in field order, then the required fields, then the per-action rules.
fn to_event(
    record: &[u8],
    fields: Vec<(String, Value)>,
    opts: &DecodeOptions,
) -> Result<CartEvent, DecodeError> {
    let mut f = RawFields::default();
    let mut ts = None;
    let mut action = None;
    let mut user = None;
    for (name, v) in fields {
        let v = match v {
            Value::Union(_, b) => *b,
            v => v,
        };
        match name.as_str() {
            "ts" => ts = ts_of(v)?,
            "action" => action = action_of(v)?,
            "qty" => f.qty = qty_of(v)?,
            "price" => f.price = price_of(v)?,
            "event_id" => f.event_id = ident("event_id", v)?,
            "user_id" => user = ident("user_id", v)?,
            "session_id" => f.session_id = ident("session_id", v)?,
            "sku" => f.sku = ident("sku", v)?,
            "category" => f.category = ident("category", v)?,
            "device_id" => f.device_id = ident("device_id", v)?,
            "ip" => f.ip = ident("ip", v)?,
            "order_id" => f.order_id = ident("order_id", v)?,
            "currency" => f.currency = ident("currency", v)?,
            _ => {}
        }
    }
    f.ts = ts.ok_or(DecodeError::MissingField("ts"))?;
    f.user_id = user
        .filter(|u| !u.is_empty())
        .ok_or(DecodeError::MissingField("user_id"))?;
    f.action = action.ok_or(DecodeError::MissingField("action"))?;
    finish(record, f, opts)
}

/// Identifier fields: strings as they are, numbers by their text, as in JSON.
fn ident(field: &'static str, v: Value) -> Result<Option<CompactString>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(CompactString::from(s))),
        Value::Long(n) => Ok(Some(CompactString::from(n.to_string()))),
        _ => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn ts_of(v: Value) -> Result<Option<i64>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::Long(t) => Ok(Some(t)),
        Value::String(s) => parse_rfc3339_ms(&s)
            .map(Some)
            .ok_or(DecodeError::InvalidTs(s)),
        _ => Err(DecodeError::WrongType {
            field: "ts",
            expected: "epoch milliseconds or an RFC 3339 string",
        }),
    }
}

fn action_of(v: Value) -> Result<Option<Action>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Action::parse(&s)
            .map(Some)
            .ok_or(DecodeError::UnknownAction(s)),
        _ => Err(DecodeError::WrongType {
            field: "action",
            expected: "a string",
        }),
    }
}

fn qty_of(v: Value) -> Result<Option<u32>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::Long(q) if q < 0 => Err(DecodeError::NegativeQty(q)),
        Value::Long(q) => u32::try_from(q)
            .map(Some)
            .map_err(|_| DecodeError::InvalidQty(q.to_string())),
        Value::Double(q) => parse_qty(&q.to_string()).map(Some),
        _ => Err(DecodeError::WrongType {
            field: "qty",
            expected: "a non-negative integer",
        }),
    }
}

fn price_of(v: Value) -> Result<Option<Money>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => parse_price(&s).map(Some),
        Value::Double(p) => parse_price(&p.to_string()).map(Some),
        Value::Long(p) => parse_price(&p.to_string()).map(Some),
        _ => Err(DecodeError::WrongType {
            field: "price",
            expected: "a decimal number",
        }),
    }
}
