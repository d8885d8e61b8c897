//! The one canonical cart event every source is decoded into.

use crate::enrich::{ProductInfo, UserInfo};
use crate::money::Money;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the user did. `Remove` without a quantity removes the whole line; `Checkout`
/// turns the cart into an order and empties it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    View,
    Add,
    Remove,
    UpdateQty,
    Checkout,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::View,
        Action::Add,
        Action::Remove,
        Action::UpdateQty,
        Action::Checkout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Add => "add",
            Action::Remove => "remove",
            Action::UpdateQty => "update_qty",
            Action::Checkout => "checkout",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "view" => Action::View,
            "add" => Action::Add,
            "remove" => Action::Remove,
            "update_qty" => Action::UpdateQty,
            "checkout" => Action::Checkout,
            _ => return None,
        })
    }

    /// Actions that must name the product they act on.
    pub fn needs_sku(self) -> bool {
        matches!(
            self,
            Action::View | Action::Add | Action::Remove | Action::UpdateQty
        )
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A cart event. Short identifiers (≤ 24 bytes) live inline in `CompactString`, so decoding
/// the usual event allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartEvent {
    pub event_id: CompactString,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    pub user_id: CompactString,
    pub session_id: Option<CompactString>,
    pub action: Action,
    pub sku: Option<CompactString>,
    pub qty: Option<u32>,
    pub price: Option<Money>,
    pub category: Option<CompactString>,
    pub device_id: Option<CompactString>,
    pub ip: Option<CompactString>,
    pub order_id: Option<CompactString>,
    pub currency: Option<CompactString>,
    /// The product table's row for `sku`, joined by enrichment (not part of the input form).
    #[serde(skip)]
    pub product: Option<Arc<ProductInfo>>,
    /// The user table's row for `user_id`, joined by enrichment.
    #[serde(skip)]
    pub user: Option<Arc<UserInfo>>,
}

impl CartEvent {
    /// Writes the canonical JSON line form (without newline); the decoder reads it back.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_open(out, self.qty, self.price);
        out.push(b'}');
    }

    /// The canonical form with `qty` and `price` replaced (a cleaned event carries the values
    /// the pipeline used), left open so the caller can append fields and the closing brace.
    pub fn write_json_open(&self, out: &mut Vec<u8>, qty: Option<u32>, price: Option<Money>) {
        out.extend_from_slice(b"{\"event_id\":");
        write_json_str(out, &self.event_id);
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.ts).as_bytes());
        out.extend_from_slice(b",\"user_id\":");
        write_json_str(out, &self.user_id);
        opt_str(out, "session_id", &self.session_id);
        out.extend_from_slice(b",\"action\":\"");
        out.extend_from_slice(self.action.as_str().as_bytes());
        out.push(b'"');
        opt_str(out, "sku", &self.sku);
        if let Some(q) = qty {
            out.extend_from_slice(b",\"qty\":");
            out.extend_from_slice(itoa::Buffer::new().format(q).as_bytes());
        }
        if let Some(p) = price {
            out.extend_from_slice(b",\"price\":");
            p.write_json(out);
        }
        opt_str(out, "category", &self.category);
        opt_str(out, "device_id", &self.device_id);
        opt_str(out, "ip", &self.ip);
        opt_str(out, "order_id", &self.order_id);
        opt_str(out, "currency", &self.currency);
    }

    pub fn to_json_string(&self) -> String {
        let mut v = Vec::with_capacity(192);
        self.write_json(&mut v);
        String::from_utf8(v).expect("json writer emits utf-8")
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

/// Appends `s` as a JSON string literal with the mandatory escapes.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}
