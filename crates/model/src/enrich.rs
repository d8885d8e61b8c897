//! Reference data joined onto events: product attributes by sku, user attributes by user id.
//!
//! Both are shared behind `Arc`: one lookup table row is referenced by every event of that
//! product, so enriching an event is a pointer copy, not a string copy.

use crate::event::write_json_str;
use crate::money::Money;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// What the product table says about a sku.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductInfo {
    pub name: Option<CompactString>,
    pub category: Option<CompactString>,
    pub brand: Option<CompactString>,
    /// The list price, used when an event carries none and the cart has no line for it.
    pub price: Option<Money>,
    pub stock: Option<i64>,
}

/// What the user table says about a user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub segment: Option<CompactString>,
    pub region: Option<CompactString>,
    /// Days since 1970-01-01 (a calendar date; no time zone applies).
    pub signup_date: Option<i32>,
}

impl ProductInfo {
    /// The fields a product table can map, in the order they are written.
    pub const FIELDS: [&'static str; 5] = ["name", "category", "brand", "price", "stock"];

    /// Sets one field from its text form (the loaders read every column as text).
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        let s = || Some(CompactString::from(value));
        match field {
            "name" => self.name = s(),
            "category" => self.category = s(),
            "brand" => self.brand = s(),
            "price" => {
                self.price = Some(
                    Money::parse_str(value)
                        .map_err(|e| format!("`{value}` is not a price: {e}"))?,
                )
            }
            "stock" => {
                self.stock = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{value}` is not a whole number"))?,
                )
            }
            other => return Err(format!("unknown product field `{other}`")),
        }
        Ok(())
    }

    /// Appends `,"product_name":…` and the other known fields of the `events` stream.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        opt_str(out, "product_name", &self.name);
        opt_str(out, "product_brand", &self.brand);
        if let Some(p) = self.price {
            out.extend_from_slice(b",\"product_price\":");
            p.write_json(out);
        }
        if let Some(s) = self.stock {
            out.extend_from_slice(b",\"product_stock\":");
            out.extend_from_slice(itoa::Buffer::new().format(s).as_bytes());
        }
    }
}

impl UserInfo {
    pub const FIELDS: [&'static str; 3] = ["segment", "region", "signup_date"];

    pub fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        match field {
            "segment" => self.segment = Some(value.into()),
            "region" => self.region = Some(value.into()),
            "signup_date" => self.signup_date = Some(parse_date(value)?),
            other => return Err(format!("unknown user field `{other}`")),
        }
        Ok(())
    }

    pub fn write_json(&self, out: &mut Vec<u8>) {
        opt_str(out, "user_segment", &self.segment);
        opt_str(out, "user_region", &self.region);
        if let Some(d) = self.signup_date {
            out.extend_from_slice(b",\"user_signup_date\":\"");
            write_date(out, d);
            out.push(b'"');
        }
    }
}

fn opt_str(out: &mut Vec<u8>, key: &str, v: &Option<CompactString>) {
    if let Some(v) = v {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        write_json_str(out, v);
    }
}

const UNIX_EPOCH_CE_DAYS: i32 = 719_163;

/// `YYYY-MM-DD`, or the date part of an ISO timestamp (`2024-03-01 10:00:00`, `…T…Z`).
pub fn parse_date(text: &str) -> Result<i32, String> {
    use chrono::Datelike;
    let t = text.trim();
    let day = t.get(..10).unwrap_or(t);
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map_err(|_| format!("`{text}` is not a date (expected YYYY-MM-DD)"))?;
    Ok(d.num_days_from_ce() - UNIX_EPOCH_CE_DAYS)
}

/// Appends `YYYY-MM-DD` (this runs per event of the `events` stream: no allocation, no
/// format-string interpretation).
pub fn write_date(out: &mut Vec<u8>, days: i32) {
    use chrono::Datelike;
    let Some(d) = chrono::NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_CE_DAYS) else {
        out.extend_from_slice(itoa::Buffer::new().format(days).as_bytes());
        return;
    };
    let two = |out: &mut Vec<u8>, v: u32| {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8])
    };
    let y = d.year();
    if (0..10_000).contains(&y) {
        let y = y as u32;
        two(out, y / 100);
        two(out, y % 100);
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(y).as_bytes());
    }
    out.push(b'-');
    two(out, d.month());
    out.push(b'-');
    two(out, d.day());
}

pub fn format_date(days: i32) -> String {
    let mut v = Vec::with_capacity(10);
    write_date(&mut v, days);
    String::from_utf8(v).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_from_text_or_say_why_not() {
        let mut p = ProductInfo::default();
        p.set("price", "12.50").unwrap();
        p.set("stock", " 7 ").unwrap();
        p.set("name", "Mug \"XL\"").unwrap();
        assert_eq!(p.price, Some(Money(125_000)));
        assert_eq!(p.stock, Some(7));
        assert!(p.set("price", "cheap").unwrap_err().contains("not a price"));
        assert!(p.set("stock", "1.5").unwrap_err().contains("whole number"));
        let mut out = Vec::new();
        p.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#","product_name":"Mug \"XL\"","product_price":12.5,"product_stock":7"#
        );
    }

    #[test]
    fn dates_round_trip_through_days() {
        assert_eq!(parse_date("1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("2024-03-01T08:00:00Z").unwrap(), 19_783);
        assert_eq!(format_date(19_783), "2024-03-01");
        assert_eq!(format_date(-719_162), "0001-01-01");
        assert_eq!(format_date(2_932_896), "9999-12-31");
        assert!(parse_date("01/03/2024").is_err());
        let mut u = UserInfo::default();
        u.set("signup_date", "2024-03-01").unwrap();
        u.set("segment", "vip").unwrap();
        let mut out = Vec::new();
        u.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#","user_segment":"vip","user_signup_date":"2024-03-01""#
        );
    }
}
