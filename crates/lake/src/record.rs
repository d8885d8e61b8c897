//! The archive's row schema and the decoder from the engine's `events` records into Arrow
//! columns.
//!
//! The schema uses only types every warehouse reader maps without a cast: timestamps in
//! milliseconds with the UTC zone, money as `DECIMAL(18,4)` (exact, like the engine's
//! fixed-point `Money`), plain UTF-8 strings. Partition columns (`dt`, `hour`) live only in the
//! directory names, as Hive lays them out.

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use cartpulse_model::{decode_json, CartEvent, DecodeOptions, Money, ProductInfo, UserInfo};
use memchr::memmem::Finder;
use std::sync::{Arc, OnceLock};

pub const PRICE_PRECISION: u8 = 18;
pub const PRICE_SCALE: i8 = 4;

/// The archive's Arrow schema.
pub fn schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let s = |name, nullable| Field::new(name, DataType::Utf8, nullable);
        let money = |name| {
            Field::new(
                name,
                DataType::Decimal128(PRICE_PRECISION, PRICE_SCALE),
                true,
            )
        };
        Arc::new(Schema::new(vec![
            s("event_id", false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            s("user_id", false),
            s("session_id", true),
            s("action", false),
            s("sku", true),
            Field::new("qty", DataType::Int32, true),
            money("price"),
            s("category", true),
            s("device_id", true),
            s("ip", true),
            s("order_id", true),
            s("currency", true),
            // null: the price is the event's own
            s("price_source", true),
            money("order_value"),
            Field::new("late", DataType::Boolean, false),
            // joined by enrichment; null without a product or user table (or on a miss)
            s("product_name", true),
            s("product_brand", true),
            money("product_price"),
            Field::new("product_stock", DataType::Int64, true),
            s("user_segment", true),
            s("user_region", true),
            Field::new("user_signup_date", DataType::Date32, true),
        ]))
    })
    .clone()
}

/// One `events` record that is not what the engine writes.
#[derive(Debug, thiserror::Error)]
#[error("events record {line:?}: {why}")]
pub struct RecordError {
    pub line: String,
    pub why: String,
}

/// The fields the engine appends to the canonical event (see `output::event`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extras {
    pub price_source: Option<&'static str>,
    pub order_value: Option<Money>,
    pub late: bool,
}

/// Finds the appended fields. A `,"key":` sequence can only be structural: inside a JSON
/// string every quote is escaped, so a user id cannot fake one. The records are flat objects
/// written by `output::event`, so a key search is exact and much cheaper than a second parse.
pub struct ExtrasScanner {
    source: Finder<'static>,
    order_value: Finder<'static>,
    late: Finder<'static>,
    product: Finder<'static>,
    user: Finder<'static>,
}

impl Default for ExtrasScanner {
    fn default() -> Self {
        ExtrasScanner {
            source: Finder::new(b",\"price_source\":\""),
            order_value: Finder::new(b",\"order_value\":"),
            late: Finder::new(b",\"late\":true"),
            product: Finder::new(b",\"product_"),
            user: Finder::new(b",\"user_"),
        }
    }
}

impl ExtrasScanner {
    pub fn scan(&self, line: &[u8]) -> Result<Extras, String> {
        let mut x = Extras::default();
        if let Some(i) = self.source.find(line) {
            let v = &line[i + self.source.needle().len()..];
            x.price_source = Some(if v.starts_with(b"cart\"") {
                "cart"
            } else if v.starts_with(b"catalog\"") {
                "catalog"
            } else if v.starts_with(b"missing\"") {
                "missing"
            } else if v.starts_with(b"event\"") {
                "event"
            } else {
                return Err("unknown price_source".into());
            });
        }
        if let Some(i) = self.order_value.find(line) {
            let v = &line[i + self.order_value.needle().len()..];
            let end = v
                .iter()
                .position(|&c| c == b',' || c == b'}')
                .ok_or("unterminated order_value")?;
            x.order_value = Some(Money::parse(&v[..end]).map_err(|e| format!("order_value: {e}"))?);
        }
        x.late = self.late.find(line).is_some();
        Ok(x)
    }

    /// The attributes enrichment appended (`product_*`, `user_*`): always the last fields,
    /// so they are read in one pass from the first of them to the end.
    pub fn enrichment(
        &self,
        line: &[u8],
    ) -> Result<(Option<ProductInfo>, Option<UserInfo>), String> {
        let first_user = self
            .user
            .find_iter(line)
            .find(|&i| !line[i + self.user.needle().len()..].starts_with(b"id\""));
        let start = match (self.product.find(line), first_user) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(i) => i,
                None => return Ok((None, None)),
            },
        };
        let (mut p, mut u) = (None::<ProductInfo>, None::<UserInfo>);
        let mut rest = &line[start..];
        while let Some(r) = rest.strip_prefix(b",\"") {
            let k_end = memchr::memchr(b'"', r).ok_or("unterminated key")?;
            let key = std::str::from_utf8(&r[..k_end]).map_err(|_| "key is not UTF-8")?;
            let v = r[k_end + 1..]
                .strip_prefix(b":")
                .ok_or("no `:` after a key")?;
            let (value, len) = json_value(v)?;
            let set = match key.split_once('_') {
                Some(("product", f)) => p.get_or_insert_with(Default::default).set(f, &value),
                Some(("user", f)) => u.get_or_insert_with(Default::default).set(f, &value),
                _ => Err("unexpected field after the enrichment fields".to_string()),
            };
            set.map_err(|e| format!("{key}: {e}"))?;
            rest = &v[len..];
        }
        if rest != b"}" {
            return Err("enrichment fields are not the last of the record".into());
        }
        Ok((p, u))
    }
}

/// A flat JSON value (a string or a number) as text, and the bytes it took.
fn json_value(v: &[u8]) -> Result<(std::borrow::Cow<'_, str>, usize), String> {
    if v.first() == Some(&b'"') {
        let mut i = 1;
        let mut escaped = false;
        while i < v.len() {
            match v[i] {
                b'\\' => {
                    escaped = true;
                    i += 2;
                    continue;
                }
                b'"' => break,
                _ => i += 1,
            }
        }
        if i >= v.len() {
            return Err("unterminated string".into());
        }
        let text = if escaped {
            std::borrow::Cow::Owned(
                serde_json::from_slice::<String>(&v[..=i]).map_err(|e| e.to_string())?,
            )
        } else {
            std::borrow::Cow::Borrowed(std::str::from_utf8(&v[1..i]).map_err(|e| e.to_string())?)
        };
        Ok((text, i + 1))
    } else {
        let end = v
            .iter()
            .position(|&c| c == b',' || c == b'}')
            .ok_or("unterminated number")?;
        let t = std::str::from_utf8(&v[..end]).map_err(|e| e.to_string())?;
        Ok((std::borrow::Cow::Borrowed(t), end))
    }
}

/// Column builders for a batch of archive rows.
pub struct Columns {
    event_id: StringBuilder,
    ts: TimestampMillisecondBuilder,
    user_id: StringBuilder,
    session_id: StringBuilder,
    action: StringBuilder,
    sku: StringBuilder,
    qty: Int32Builder,
    price: Decimal128Builder,
    category: StringBuilder,
    device_id: StringBuilder,
    ip: StringBuilder,
    order_id: StringBuilder,
    currency: StringBuilder,
    price_source: StringBuilder,
    order_value: Decimal128Builder,
    late: BooleanBuilder,
    product_name: StringBuilder,
    product_brand: StringBuilder,
    product_price: Decimal128Builder,
    product_stock: Int64Builder,
    user_segment: StringBuilder,
    user_region: StringBuilder,
    user_signup_date: Date32Builder,
    rows: usize,
}

impl Default for Columns {
    fn default() -> Self {
        let money = || {
            Decimal128Builder::new()
                .with_precision_and_scale(PRICE_PRECISION, PRICE_SCALE)
                .expect("valid decimal type")
        };
        Columns {
            event_id: StringBuilder::new(),
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            user_id: StringBuilder::new(),
            session_id: StringBuilder::new(),
            action: StringBuilder::new(),
            sku: StringBuilder::new(),
            qty: Int32Builder::new(),
            price: money(),
            category: StringBuilder::new(),
            device_id: StringBuilder::new(),
            ip: StringBuilder::new(),
            order_id: StringBuilder::new(),
            currency: StringBuilder::new(),
            price_source: StringBuilder::new(),
            order_value: money(),
            late: BooleanBuilder::new(),
            product_name: StringBuilder::new(),
            product_brand: StringBuilder::new(),
            product_price: money(),
            product_stock: Int64Builder::new(),
            user_segment: StringBuilder::new(),
            user_region: StringBuilder::new(),
            user_signup_date: Date32Builder::new(),
            rows: 0,
        }
    }
}

impl Columns {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn push(&mut self, e: &CartEvent, x: &Extras) {
        self.event_id.append_value(&e.event_id);
        self.ts.append_value(e.ts);
        self.user_id.append_value(&e.user_id);
        self.session_id.append_option(e.session_id.as_deref());
        self.action.append_value(e.action.as_str());
        self.sku.append_option(e.sku.as_deref());
        // the decoder caps quantities far below i32::MAX
        self.qty.append_option(e.qty.map(|q| q as i32));
        self.price.append_option(e.price.map(|p| i128::from(p.0)));
        self.category.append_option(e.category.as_deref());
        self.device_id.append_option(e.device_id.as_deref());
        self.ip.append_option(e.ip.as_deref());
        self.order_id.append_option(e.order_id.as_deref());
        self.currency.append_option(e.currency.as_deref());
        self.price_source.append_option(x.price_source);
        self.order_value
            .append_option(x.order_value.map(|v| i128::from(v.0)));
        self.late.append_value(x.late);
        let p = e.product.as_deref();
        self.product_name
            .append_option(p.and_then(|p| p.name.as_deref()));
        self.product_brand
            .append_option(p.and_then(|p| p.brand.as_deref()));
        self.product_price
            .append_option(p.and_then(|p| p.price).map(|v| i128::from(v.0)));
        self.product_stock.append_option(p.and_then(|p| p.stock));
        let u = e.user.as_deref();
        self.user_segment
            .append_option(u.and_then(|u| u.segment.as_deref()));
        self.user_region
            .append_option(u.and_then(|u| u.region.as_deref()));
        self.user_signup_date
            .append_option(u.and_then(|u| u.signup_date));
        self.rows += 1;
    }

    /// Takes the rows built so far as a batch, leaving the builders empty.
    pub fn finish(&mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.sku.finish()),
            Arc::new(self.qty.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(self.ip.finish()),
            Arc::new(self.order_id.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.price_source.finish()),
            Arc::new(self.order_value.finish()),
            Arc::new(self.late.finish()),
            Arc::new(self.product_name.finish()),
            Arc::new(self.product_brand.finish()),
            Arc::new(self.product_price.finish()),
            Arc::new(self.product_stock.finish()),
            Arc::new(self.user_segment.finish()),
            Arc::new(self.user_region.finish()),
            Arc::new(self.user_signup_date.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(schema(), cols).expect("columns match the schema")
    }
}

/// Decodes `events` records (one JSON object per line).
pub struct RecordDecoder {
    opts: DecodeOptions,
    extras: ExtrasScanner,
}

impl Default for RecordDecoder {
    fn default() -> Self {
        RecordDecoder {
            opts: DecodeOptions {
                max_record_bytes: usize::MAX,
                default_qty: None,
            },
            extras: ExtrasScanner::default(),
        }
    }
}

impl RecordDecoder {
    pub fn decode(&self, line: &[u8]) -> Result<(CartEvent, Extras), RecordError> {
        let fail = |why: String| RecordError {
            line: String::from_utf8_lossy(line).into_owned(),
            why,
        };
        let mut e = decode_json(line, &self.opts).map_err(|e| fail(e.to_string()))?;
        let x = self.extras.scan(line).map_err(&fail)?;
        let (p, u) = self.extras.enrichment(line).map_err(fail)?;
        e.product = p.map(Arc::new);
        e.user = u.map(Arc::new);
        Ok((e, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Int32Type, TimestampMillisecondType};

    #[test]
    fn engine_records_become_typed_rows() {
        let d = RecordDecoder::default();
        let mut c = Columns::default();
        let lines: [&[u8]; 3] = [
            br#"{"event_id":"e1","ts":1764000000055,"user_id":"u1","session_id":"s1","action":"remove","sku":"p1","qty":2,"price":12.99,"category":"c4","price_source":"cart","late":true}"#,
            br#"{"event_id":"e2","ts":1764000000056,"user_id":"u\"late\":true","action":"checkout","order_id":"o1","order_value":25.98}"#,
            br#"{"event_id":"e3","ts":1764000000057,"user_id":"u3","action":"add","sku":"p9","qty":1,"price":0,"price_source":"missing"}"#,
        ];
        for l in lines {
            let (e, x) = d.decode(l).unwrap();
            c.push(&e, &x);
        }
        let b = c.finish();
        assert_eq!(b.num_rows(), 3);
        assert!(c.is_empty());
        let late = b.column_by_name("late").unwrap().as_boolean();
        // the quoted `"late":true` inside a user id is not the field
        assert_eq!(
            (0..3).map(|i| late.value(i)).collect::<Vec<_>>(),
            [true, false, false]
        );
        let price = b
            .column_by_name("price")
            .unwrap()
            .as_primitive::<Decimal128Type>();
        assert_eq!(price.value(0), 129_900);
        assert!(price.is_null(1));
        assert_eq!(price.value(2), 0);
        let ov = b
            .column_by_name("order_value")
            .unwrap()
            .as_primitive::<Decimal128Type>();
        assert_eq!(ov.value(1), 259_800);
        assert!(ov.is_null(0));
        let src = b.column_by_name("price_source").unwrap().as_string::<i32>();
        assert_eq!(src.value(0), "cart");
        assert!(src.is_null(1));
        assert_eq!(src.value(2), "missing");
        let qty = b.column_by_name("qty").unwrap().as_primitive::<Int32Type>();
        assert_eq!(qty.value(0), 2);
        let ts = b
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(2), 1_764_000_000_057);
        assert_eq!(
            b.column_by_name("user_id")
                .unwrap()
                .as_string::<i32>()
                .value(1),
            "u\"late\":true"
        );
    }

    #[test]
    fn enrichment_fields_become_columns() {
        use arrow::datatypes::{Date32Type, Int64Type};
        let d = RecordDecoder::default();
        let mut c = Columns::default();
        let lines: [&[u8]; 3] = [
            br#"{"event_id":"e1","ts":1,"user_id":"u1","action":"add","sku":"p1","qty":1,"price":2.5,"category":"c","price_source":"catalog","product_name":"Mug \"XL\", blue","product_brand":"Acme","product_price":2.5,"product_stock":7,"user_segment":"vip","user_region":"eu","user_signup_date":"2024-03-01"}"#,
            br#"{"event_id":"e2","ts":2,"user_id":"user_x","action":"view","sku":"p2","user_region":"us"}"#,
            br#"{"event_id":"e3","ts":3,"user_id":"u3","action":"view","sku":"p3"}"#,
        ];
        for l in lines {
            let (e, x) = d.decode(l).unwrap();
            c.push(&e, &x);
        }
        let b = c.finish();
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        assert_eq!(s("product_name").value(0), "Mug \"XL\", blue");
        assert_eq!(s("product_brand").value(0), "Acme");
        assert_eq!(s("price_source").value(0), "catalog");
        assert!(s("product_name").is_null(1) && s("product_name").is_null(2));
        assert_eq!(s("user_region").value(1), "us");
        assert!(s("user_segment").is_null(1));
        assert!(s("user_region").is_null(2));
        let stock = b.column_by_name("product_stock").unwrap();
        assert_eq!(stock.as_primitive::<Int64Type>().value(0), 7);
        let day = b.column_by_name("user_signup_date").unwrap();
        assert_eq!(day.as_primitive::<Date32Type>().value(0), 19_783);
        let price = b.column_by_name("product_price").unwrap();
        assert_eq!(price.as_primitive::<Decimal128Type>().value(0), 25_000);
        assert!(d
            .decode(
                br#"{"event_id":"e","ts":1,"user_id":"u","action":"view","product_stock":"many"}"#
            )
            .is_err());
    }

    #[test]
    fn malformed_records_are_errors() {
        let d = RecordDecoder::default();
        assert!(d.decode(b"{\"event_id\":\"e1\"").is_err());
        let e = d
            .decode(br#"{"event_id":"e1","ts":1,"user_id":"u","action":"view","sku":"p","order_value":1.23456}"#)
            .unwrap_err();
        assert!(e.why.contains("order_value"), "{e}");
    }
}
