//! CSV records with a configurable column and value mapping, so a public clickstream export
//! (`event_time,event_type,product_id,…`) loads without code changes.
//!
//! Records are framed by lines (quoted fields are fine, embedded newlines are not) so that
//! a file can be cut into chunks and decoded in parallel like JSON lines.

use crate::error::DecodeError;
use crate::event::Action;
use crate::json::{finish, parse_price, parse_qty, DecodeOptions, RawFields};
use crate::time::TsFormat;
use crate::CartEvent;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which column holds each event field: a header name, or a 0-based index written as `"#3"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CsvColumns {
    pub event_id: Option<String>,
    pub ts: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub action: String,
    pub sku: Option<String>,
    pub qty: Option<String>,
    pub price: Option<String>,
    pub category: Option<String>,
    pub device_id: Option<String>,
    pub ip: Option<String>,
    pub order_id: Option<String>,
    pub currency: Option<String>,
}

impl Default for CsvColumns {
    fn default() -> Self {
        CsvColumns {
            event_id: Some("event_id".into()),
            ts: "ts".into(),
            user_id: "user_id".into(),
            session_id: Some("session_id".into()),
            action: "action".into(),
            sku: Some("sku".into()),
            qty: Some("qty".into()),
            price: Some("price".into()),
            category: Some("category".into()),
            device_id: None,
            ip: None,
            order_id: None,
            currency: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CsvConfig {
    pub delimiter: char,
    /// Whether the first line names the columns.
    pub has_header: bool,
    pub columns: CsvColumns,
    /// Source value → action (`cart = "add"`); values not listed must already be action names.
    pub actions: BTreeMap<String, Action>,
    pub ts_format: TsFormat,
    /// Quantity when the record has none (clickstreams have no quantity column).
    pub default_qty: Option<u32>,
}

impl Default for CsvConfig {
    fn default() -> Self {
        CsvConfig {
            delimiter: ',',
            has_header: true,
            columns: CsvColumns::default(),
            actions: BTreeMap::new(),
            ts_format: TsFormat::EpochMs,
            default_qty: None,
        }
    }
}

impl CsvConfig {
    /// The mapping for the widely published e-commerce clickstream export
    /// (`event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session`).
    pub fn clickstream_preset() -> CsvConfig {
        CsvConfig {
            delimiter: ',',
            has_header: true,
            columns: CsvColumns {
                event_id: None,
                ts: "event_time".into(),
                user_id: "user_id".into(),
                session_id: Some("user_session".into()),
                action: "event_type".into(),
                sku: Some("product_id".into()),
                qty: None,
                price: Some("price".into()),
                category: Some("category_id".into()),
                device_id: None,
                ip: None,
                order_id: None,
                currency: None,
            },
            actions: [
                ("cart", Action::Add),
                ("remove_from_cart", Action::Remove),
                ("purchase", Action::Checkout),
                ("view", Action::View),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ts_format: TsFormat::Pattern("%Y-%m-%d %H:%M:%S UTC".into()),
            default_qty: Some(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CsvMappingError {
    #[error("column `{column}` for field `{field}` is not in the header {header:?}")]
    MissingColumn {
        field: &'static str,
        column: String,
        header: Vec<String>,
    },
    #[error("column reference `{0}` is not a header name or `#index`")]
    BadIndex(String),
    #[error("delimiter must be a single ascii character, got {0:?}")]
    Delimiter(char),
}

/// A mapping resolved against a header: field → column index.
#[derive(Clone, Debug)]
pub struct CsvDecoder {
    delimiter: u8,
    idx: [Option<usize>; 13],
    actions: BTreeMap<String, Action>,
    ts_format: TsFormat,
    opts: DecodeOptions,
}

const FIELDS: [&str; 13] = [
    "event_id",
    "ts",
    "user_id",
    "session_id",
    "action",
    "sku",
    "qty",
    "price",
    "category",
    "device_id",
    "ip",
    "order_id",
    "currency",
];

impl CsvDecoder {
    /// Resolves column names; `header` is `None` when the file has none (then only `#i`
    /// references work).
    pub fn new(
        cfg: &CsvConfig,
        header: Option<&[u8]>,
        mut opts: DecodeOptions,
    ) -> Result<CsvDecoder, CsvMappingError> {
        if !cfg.delimiter.is_ascii() {
            return Err(CsvMappingError::Delimiter(cfg.delimiter));
        }
        let delimiter = cfg.delimiter as u8;
        let names: Vec<String> = match header {
            Some(h) => split_record(h, delimiter)
                .map(|f| f.into_iter().map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let c = &cfg.columns;
        let refs: [Option<&String>; 13] = [
            c.event_id.as_ref(),
            Some(&c.ts),
            Some(&c.user_id),
            c.session_id.as_ref(),
            Some(&c.action),
            c.sku.as_ref(),
            c.qty.as_ref(),
            c.price.as_ref(),
            c.category.as_ref(),
            c.device_id.as_ref(),
            c.ip.as_ref(),
            c.order_id.as_ref(),
            c.currency.as_ref(),
        ];
        let mut idx = [None; 13];
        for (i, r) in refs.iter().enumerate() {
            let Some(r) = r else { continue };
            if let Some(n) = r.strip_prefix('#') {
                idx[i] = Some(
                    n.parse()
                        .map_err(|_| CsvMappingError::BadIndex(r.to_string()))?,
                );
            } else if let Some(p) = names.iter().position(|h| h == *r) {
                idx[i] = Some(p);
            } else if matches!(i, 1 | 2 | 4) || header.is_none() {
                return Err(CsvMappingError::MissingColumn {
                    field: FIELDS[i],
                    column: r.to_string(),
                    header: names.clone(),
                });
            }
            // optional columns absent from the header are simply not read: the default
            // mapping names them all, and a feed without `qty` should still load
        }
        if cfg.default_qty.is_some() {
            opts.default_qty = cfg.default_qty;
        }
        Ok(CsvDecoder {
            delimiter,
            idx,
            actions: cfg.actions.clone(),
            ts_format: cfg.ts_format.clone(),
            opts,
        })
    }

    pub fn decode(&self, line: &[u8]) -> Result<CartEvent, DecodeError> {
        if line.len() > self.opts.max_record_bytes {
            return Err(DecodeError::TooLong {
                len: line.len(),
                limit: self.opts.max_record_bytes,
            });
        }
        std::str::from_utf8(line).map_err(|e| DecodeError::InvalidUtf8(e.valid_up_to()))?;
        let fields = split_record(line, self.delimiter)?;
        let get = |i: usize| -> Option<&str> {
            self.idx[i]
                .and_then(|c| fields.get(c))
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
        };
        let id = |i: usize| get(i).map(CompactString::from);
        let ts_text = get(1).ok_or(DecodeError::MissingField("ts"))?;
        let ts = self
            .ts_format
            .parse_ms(ts_text)
            .ok_or_else(|| DecodeError::InvalidTs(ts_text.to_string()))?;
        let user_id = id(2).ok_or(DecodeError::MissingField("user_id"))?;
        let act = get(4).ok_or(DecodeError::MissingField("action"))?;
        let action = match self.actions.get(act) {
            Some(a) => *a,
            None => Action::parse(act).ok_or_else(|| DecodeError::UnknownAction(act.into()))?,
        };
        let qty = get(6).map(parse_qty).transpose()?;
        let price = get(7).map(parse_price).transpose()?;
        finish(
            line,
            RawFields {
                event_id: id(0),
                ts,
                user_id,
                session_id: id(3),
                action,
                sku: id(5),
                qty,
                price,
                category: id(8),
                device_id: id(9),
                ip: id(10),
                order_id: id(11),
                currency: id(12),
            },
            &self.opts,
        )
    }
}

/// Splits one CSV record with RFC 4180 quoting.
fn split_record(line: &[u8], delim: u8) -> Result<Vec<String>, DecodeError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delim)
        .flexible(true)
        .from_reader(line);
    let mut rec = csv::StringRecord::new();
    match rdr.read_record(&mut rec) {
        Ok(true) => Ok(rec.iter().map(str::to_string).collect()),
        Ok(false) => Err(DecodeError::Csv("empty record".into())),
        Err(e) => Err(DecodeError::Csv(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickstream_preset_loads_public_rows() {
        let header = b"event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";
        let d = CsvDecoder::new(
            &CsvConfig::clickstream_preset(),
            Some(header),
            DecodeOptions::default(),
        )
        .unwrap();
        let e = d
            .decode(b"2019-10-01 00:00:00 UTC,cart,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c")
            .unwrap();
        assert_eq!(e.action, Action::Add);
        assert_eq!(e.qty, Some(1));
        assert_eq!(e.price, Some(crate::Money(357_900)));
        assert_eq!(e.user_id, "541312140");
        assert_eq!(e.ts, 1_569_888_000_000);
        assert!(e.event_id.starts_with('g'));
        let bad = d.decode(b"2019-10-01 00:00:00 UTC,wishlist,1,2,,b,1.0,5,s");
        assert_eq!(bad.unwrap_err().code(), "unknown_action");
        let bad = d.decode(b"yesterday,cart,1,2,,b,1.0,5,s");
        assert_eq!(bad.unwrap_err().code(), "invalid_ts");
    }

    #[test]
    fn quoted_fields_and_missing_columns() {
        let d = CsvDecoder::new(
            &CsvConfig::default(),
            Some(b"event_id,ts,user_id,action,sku,qty,price"),
            DecodeOptions::default(),
        )
        .unwrap();
        let e = d.decode(br#"e1,5,"u,1",add,p1,2,"1.50""#).unwrap();
        assert_eq!(e.user_id, "u,1");
        assert_eq!(e.qty, Some(2));
        let err = CsvDecoder::new(
            &CsvConfig::default(),
            Some(b"event_id,when,user_id,action"),
            DecodeOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`ts`"), "{err}");
    }
}
