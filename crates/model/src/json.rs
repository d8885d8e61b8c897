//! Hand-written decoder for one JSON cart event per line.
//!
//! This is the hottest code in cartpulse: replay throughput is bounded by how fast a line
//! turns into a `CartEvent`. A generic `serde_json::Value` walk allocates per field; this
//! decoder validates the full JSON grammar (so a truncated or garbled line is always caught),
//! borrows every unescaped string straight from the input, and only allocates for
//! identifiers longer than 24 bytes.

use crate::error::DecodeError;
use crate::event::{Action, CartEvent};
use crate::money::Money;
use crate::time::parse_rfc3339_ms;
use compact_str::CompactString;
use std::borrow::Cow;

/// Nesting limit for values of unknown fields: deeper input is rejected instead of
/// risking the stack.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// Longest record accepted, in bytes.
    pub max_record_bytes: usize,
    /// Quantity assumed for `add`/`view` events without `qty`; `None` makes it required for `add`.
    pub default_qty: Option<u32>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_record_bytes: 1 << 20,
            default_qty: None,
        }
    }
}

enum Val<'a> {
    Str(Cow<'a, str>),
    Num(&'a str),
    Null,
    /// booleans, objects, arrays: never a valid event field
    Other,
}

/// Bytes that end the fast scan of a string: quote, backslash, control characters.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

struct Cur<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Cur<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err<T>(&self, what: &str) -> PResult<T> {
        match self.peek() {
            Some(c) if c.is_ascii_graphic() => {
                Err(format!("{what} at byte {}, found `{}`", self.i, c as char))
            }
            Some(c) => Err(format!("{what} at byte {}, found byte 0x{c:02x}", self.i)),
            None => Err(format!("{what} at byte {}, found end of input", self.i)),
        }
    }

    /// Parses a string whose opening quote is at `self.i`.
    fn string(&mut self) -> PResult<Cow<'a, str>> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.i += 1;
        let start = self.i;
        // fast path: skip ordinary bytes by table, then look at the byte that stopped us
        let run = self.b[start..]
            .iter()
            .position(|&c| SPECIAL[c as usize])
            .unwrap_or(self.b.len() - start);
        self.i = start + run;
        match self.peek() {
            Some(b'"') => {
                let s = &self.s[start..self.i];
                self.i += 1;
                return Ok(Cow::Borrowed(s));
            }
            Some(b'\\') => {}
            Some(_) => return self.err("control character in string"),
            None => return self.err("unterminated string"),
        }
        let mut out = String::with_capacity(self.i - start + 16);
        out.push_str(&self.s[start..self.i]);
        loop {
            let run = self.i;
            while let Some(&c) = self.b.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(&self.s[run..self.i]);
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.peek() {
                        Some(c) => c,
                        None => return self.err("unterminated escape"),
                    };
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.b.get(self.i) != Some(&b'\\')
                                    || self.b.get(self.i + 1) != Some(&b'u')
                                {
                                    return self.err("unpaired surrogate escape");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("invalid low surrogate escape");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return self.err("unpaired surrogate escape");
                            } else {
                                hi
                            };
                            match char::from_u32(cp) {
                                Some(ch) => out.push(ch),
                                None => return self.err("invalid unicode escape"),
                            }
                        }
                        _ => {
                            self.i -= 1;
                            return self.err("invalid escape");
                        }
                    }
                }
                Some(_) => return self.err("control character in string"),
                None => return self.err("unterminated string"),
            }
        }
    }

    fn hex4(&mut self) -> PResult<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return self.err("invalid unicode escape"),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    /// Scans a number per the JSON grammar and returns its text.
    fn number(&mut self) -> PResult<&'a str> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.err("invalid number");
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.err("invalid number");
            }
            self.digits();
        }
        Ok(&self.s[start..self.i])
    }

    #[inline]
    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> PResult<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    fn value(&mut self, depth: usize) -> PResult<Val<'a>> {
        match self.peek() {
            Some(b'"') => Ok(Val::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => Ok(Val::Num(self.number()?)),
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(Val::Null)
            }
            Some(b't') => {
                self.literal(b"true")?;
                Ok(Val::Other)
            }
            Some(b'f') => {
                self.literal(b"false")?;
                Ok(Val::Other)
            }
            Some(b'{') => {
                self.skip_container(depth + 1, b'}')?;
                Ok(Val::Other)
            }
            Some(b'[') => {
                self.skip_container(depth + 1, b']')?;
                Ok(Val::Other)
            }
            _ => self.err("expected a value"),
        }
    }

    fn skip_container(&mut self, depth: usize, close: u8) -> PResult<()> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            if close == b'}' {
                if self.peek() != Some(b'"') {
                    return self.err("expected a key");
                }
                self.string()?;
                self.ws();
                if self.peek() != Some(b':') {
                    return self.err("expected `:`");
                }
                self.i += 1;
                self.ws();
            }
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected `,` or the end of the container"),
            }
        }
    }
}

const F_EVENT_ID: u16 = 1;
const F_TS: u16 = 1 << 1;
const F_USER: u16 = 1 << 2;
const F_SESSION: u16 = 1 << 3;
const F_ACTION: u16 = 1 << 4;
const F_SKU: u16 = 1 << 5;
const F_QTY: u16 = 1 << 6;
const F_PRICE: u16 = 1 << 7;
const F_CATEGORY: u16 = 1 << 8;
const F_DEVICE: u16 = 1 << 9;
const F_IP: u16 = 1 << 10;
const F_ORDER: u16 = 1 << 11;
const F_CURRENCY: u16 = 1 << 12;

fn field_of(key: &str) -> Option<(u16, &'static str)> {
    Some(match key {
        "event_id" => (F_EVENT_ID, "event_id"),
        "ts" => (F_TS, "ts"),
        "user_id" => (F_USER, "user_id"),
        "session_id" => (F_SESSION, "session_id"),
        "action" => (F_ACTION, "action"),
        "sku" => (F_SKU, "sku"),
        "qty" => (F_QTY, "qty"),
        "price" => (F_PRICE, "price"),
        "category" => (F_CATEGORY, "category"),
        "device_id" => (F_DEVICE, "device_id"),
        "ip" => (F_IP, "ip"),
        "order_id" => (F_ORDER, "order_id"),
        "currency" => (F_CURRENCY, "currency"),
        _ => return None,
    })
}

/// Decodes one record into an event. `line` excludes the trailing newline.
pub fn decode_json(line: &[u8], opts: &DecodeOptions) -> Result<CartEvent, DecodeError> {
    if line.len() > opts.max_record_bytes {
        return Err(DecodeError::TooLong {
            len: line.len(),
            limit: opts.max_record_bytes,
        });
    }
    let s = std::str::from_utf8(line).map_err(|e| DecodeError::InvalidUtf8(e.valid_up_to()))?;
    let mut c = Cur { s, b: line, i: 0 };
    c.ws();
    match c.peek() {
        Some(b'{') => {}
        Some(b'[') => return Err(DecodeError::NotObject("an array")),
        Some(b'"') => return Err(DecodeError::NotObject("a string")),
        Some(b'-' | b'0'..=b'9') => return Err(DecodeError::NotObject("a number")),
        Some(b't' | b'f' | b'n')
            if c.value(0).is_ok() && {
                c.ws();
                c.peek().is_none()
            } =>
        {
            return Err(DecodeError::NotObject("a literal"))
        }
        _ => {
            return Err(DecodeError::NotJson(
                c.err::<()>("expected `{`").unwrap_err(),
            ))
        }
    }
    c.i += 1;
    c.ws();

    let mut seen = 0u16;
    let mut f = RawFields::default();
    let mut ts = None;
    let mut action = None;
    // A field error is remembered, not returned at once: the rest of the line must still be
    // valid JSON, and a syntax error is the more fundamental reason.
    let mut err: Option<DecodeError> = None;

    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            if c.peek() != Some(b'"') {
                return Err(DecodeError::NotJson(
                    c.err::<()>("expected a key").unwrap_err(),
                ));
            }
            let key = c.string().map_err(DecodeError::NotJson)?;
            c.ws();
            if c.peek() != Some(b':') {
                return Err(DecodeError::NotJson(
                    c.err::<()>("expected `:`").unwrap_err(),
                ));
            }
            c.i += 1;
            c.ws();
            match field_of(&key) {
                None => {
                    c.value(0).map_err(DecodeError::NotJson)?;
                }
                Some((bit, name)) => {
                    if seen & bit != 0 && err.is_none() {
                        err = Some(DecodeError::DuplicateField(name));
                    }
                    seen |= bit;
                    let r = match bit {
                        F_TS => c.ts(&mut err).map(|v| ts = v),
                        F_ACTION => c.action(&mut err).map(|v| action = v),
                        F_QTY => c.qty(&mut err).map(|v| f.qty = v),
                        F_PRICE => c.price(&mut err).map(|v| f.price = v),
                        _ => c.ident(name, &mut err).map(|v| match bit {
                            F_EVENT_ID => f.event_id = v,
                            F_USER => f.user_id = v.unwrap_or_default(),
                            F_SESSION => f.session_id = v,
                            F_SKU => f.sku = v,
                            F_CATEGORY => f.category = v,
                            F_DEVICE => f.device_id = v,
                            F_IP => f.ip = v,
                            F_ORDER => f.order_id = v,
                            _ => f.currency = v,
                        }),
                    };
                    r.map_err(DecodeError::NotJson)?;
                }
            }
            c.ws();
            match c.peek() {
                Some(b',') => {
                    c.i += 1;
                    c.ws();
                }
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                _ => {
                    return Err(DecodeError::NotJson(
                        c.err::<()>("expected `,` or `}`").unwrap_err(),
                    ))
                }
            }
        }
    }
    c.ws();
    if c.peek().is_some() {
        return Err(DecodeError::NotJson(
            c.err::<()>("trailing characters after the object")
                .unwrap_err(),
        ));
    }
    if let Some(e) = err {
        return Err(e);
    }
    f.ts = ts.ok_or(DecodeError::MissingField("ts"))?;
    if f.user_id.is_empty() {
        return Err(DecodeError::MissingField("user_id"));
    }
    f.action = action.ok_or(DecodeError::MissingField("action"))?;
    finish(line, f, opts)
}

impl Cur<'_> {
    /// An identifier: strings as they are, numbers by their text (many shops use numeric
    /// ids); null means absent.
    fn ident(
        &mut self,
        field: &'static str,
        err: &mut Option<DecodeError>,
    ) -> PResult<Option<CompactString>> {
        match self.peek() {
            Some(b'"') => Ok(Some(CompactString::from(self.string()?.as_ref()))),
            Some(b'-' | b'0'..=b'9') => Ok(Some(CompactString::from(self.number()?))),
            _ => {
                if !matches!(self.value(0)?, Val::Null) && err.is_none() {
                    *err = Some(DecodeError::WrongType {
                        field,
                        expected: "a string",
                    });
                }
                Ok(None)
            }
        }
    }

    fn ts(&mut self, err: &mut Option<DecodeError>) -> PResult<Option<i64>> {
        let r = match self.value(0)? {
            Val::Null => return Ok(None),
            Val::Num(n) => parse_ts_number(n),
            Val::Str(s) => parse_rfc3339_ms(&s).ok_or_else(|| DecodeError::InvalidTs(s.into())),
            Val::Other => Err(DecodeError::WrongType {
                field: "ts",
                expected: "epoch milliseconds or an RFC 3339 string",
            }),
        };
        Ok(keep(r, err))
    }

    fn action(&mut self, err: &mut Option<DecodeError>) -> PResult<Option<Action>> {
        let r = match self.value(0)? {
            Val::Null => return Ok(None),
            Val::Str(s) => Action::parse(&s).ok_or_else(|| DecodeError::UnknownAction(s.into())),
            _ => Err(DecodeError::WrongType {
                field: "action",
                expected: "a string",
            }),
        };
        Ok(keep(r, err))
    }

    fn qty(&mut self, err: &mut Option<DecodeError>) -> PResult<Option<u32>> {
        let r = match self.value(0)? {
            Val::Null => return Ok(None),
            Val::Num(n) => parse_qty(n),
            Val::Str(_) => Err(DecodeError::WrongType {
                field: "qty",
                expected: "a number, not a string",
            }),
            Val::Other => Err(DecodeError::WrongType {
                field: "qty",
                expected: "a non-negative integer",
            }),
        };
        Ok(keep(r, err))
    }

    fn price(&mut self, err: &mut Option<DecodeError>) -> PResult<Option<Money>> {
        let r = match self.value(0)? {
            Val::Null => return Ok(None),
            Val::Num(n) => parse_price(n),
            Val::Str(s) => parse_price(&s),
            Val::Other => Err(DecodeError::WrongType {
                field: "price",
                expected: "a decimal number",
            }),
        };
        Ok(keep(r, err))
    }
}

/// The value of a typed field, or `None` with the first error remembered.
fn keep<T>(r: Result<T, DecodeError>, err: &mut Option<DecodeError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            if err.is_none() {
                *err = Some(e);
            }
            None
        }
    }
}

/// Fields after type checks, before the per-action rules every format shares. A format
/// decoder fills it (required fields `ts`, `user_id`, `action` it has to find itself, or
/// fail with `MissingField`) and hands it to [`finish`].
#[derive(Clone, Debug, Default)]
pub struct RawFields {
    pub event_id: Option<CompactString>,
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
}

/// Applies the rules that depend on the action, and derives a missing event id from the
/// record's bytes so a re-sent copy of the same record still deduplicates.
pub fn finish(
    raw_record: &[u8],
    f: RawFields,
    opts: &DecodeOptions,
) -> Result<CartEvent, DecodeError> {
    let sku = f.sku.filter(|s| !s.is_empty());
    if f.action.needs_sku() && sku.is_none() {
        return Err(DecodeError::MissingField("sku"));
    }
    let qty = match (f.action, f.qty) {
        (Action::Add, None) => Some(opts.default_qty.ok_or(DecodeError::MissingField("qty"))?),
        (Action::UpdateQty, None) => return Err(DecodeError::MissingField("qty")),
        (Action::View, None) => opts.default_qty,
        (_, q) => q,
    };
    let event_id = match f.event_id.filter(|s| !s.is_empty()) {
        Some(id) => id,
        None => content_id(raw_record),
    };
    Ok(CartEvent {
        event_id,
        ts: f.ts,
        user_id: f.user_id,
        session_id: f.session_id,
        action: f.action,
        sku,
        qty,
        price: f.price,
        category: f.category,
        device_id: f.device_id,
        ip: f.ip,
        order_id: f.order_id,
        currency: f.currency,
        product: None,
        user: None,
    })
}

/// Deterministic id for records that carry none: `g` + 64-bit content hash in hex.
pub fn content_id(raw: &[u8]) -> CompactString {
    let h = xxhash_rust::xxh3::xxh3_64(raw);
    let mut s = CompactString::with_capacity(17);
    s.push('g');
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        s.push(HEX[((h >> (i * 4)) & 0xf) as usize] as char);
    }
    s
}

fn parse_ts_number(n: &str) -> Result<i64, DecodeError> {
    n.parse::<i64>()
        .map_err(|_| DecodeError::InvalidTs(n.to_string()))
}

/// A quantity given as number text: a non-negative integer (`2.0` counts as one).
pub fn parse_qty(n: &str) -> Result<u32, DecodeError> {
    match n.parse::<i64>() {
        Ok(v) if v < 0 => Err(DecodeError::NegativeQty(v)),
        Ok(v) => u32::try_from(v).map_err(|_| DecodeError::InvalidQty(n.to_string())),
        Err(_) => {
            // `2.0` is an integer to a JavaScript producer; anything with a real fraction is not
            match Money::parse(n.as_bytes()) {
                Ok(m) if m.0 % crate::money::SCALE == 0 => {
                    let v = m.0 / crate::money::SCALE;
                    if v < 0 {
                        Err(DecodeError::NegativeQty(v))
                    } else {
                        u32::try_from(v).map_err(|_| DecodeError::InvalidQty(n.to_string()))
                    }
                }
                _ => Err(DecodeError::InvalidQty(n.to_string())),
            }
        }
    }
}

/// A price given as decimal text, exactly; negative prices are rejected.
pub fn parse_price(n: &str) -> Result<Money, DecodeError> {
    match Money::parse_str(n) {
        Ok(m) if m.0 < 0 => Err(DecodeError::InvalidPrice {
            value: n.to_string(),
            why: "negative".into(),
        }),
        Ok(m) => Ok(m),
        Err(e) => Err(DecodeError::InvalidPrice {
            value: n.to_string(),
            why: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Result<CartEvent, DecodeError> {
        decode_json(s.as_bytes(), &DecodeOptions::default())
    }

    const SAMPLE: &str = r#"{"event_id":"e00000000042","ts":1764000000123,"user_id":"u000123","session_id":"s0000456","action":"add","sku":"p00789","qty":2,"price":19.99,"category":"c12"}"#;

    #[test]
    fn decodes_the_canonical_line() {
        let e = d(SAMPLE).unwrap();
        assert_eq!(e.event_id, "e00000000042");
        assert_eq!(e.ts, 1_764_000_000_123);
        assert_eq!(e.user_id, "u000123");
        assert_eq!(e.session_id.as_deref(), Some("s0000456"));
        assert_eq!(e.action, Action::Add);
        assert_eq!(e.sku.as_deref(), Some("p00789"));
        assert_eq!(e.qty, Some(2));
        assert_eq!(e.price, Some(Money(199_900)));
        assert_eq!(e.category.as_deref(), Some("c12"));
        // and the writer round-trips it
        assert_eq!(d(&e.to_json_string()).unwrap(), e);
    }

    #[test]
    fn keeps_optional_fields_and_ignores_unknown_ones() {
        let e = d(r#"{"event_id":"x","ts":"2025-11-24T16:00:00.123Z","user_id":"u","action":"checkout","order_id":"o1","device_id":"d\u00e9","ip":"1.2.3.4","currency":"EUR","extra":{"a":[1,2,{"b":null}]},"flag":true}"#).unwrap();
        assert_eq!(e.ts, 1_764_000_000_123);
        assert_eq!(e.order_id.as_deref(), Some("o1"));
        assert_eq!(e.device_id.as_deref(), Some("dé"));
        assert_eq!(e.currency.as_deref(), Some("EUR"));
        assert_eq!(e.sku, None);
    }

    #[test]
    fn missing_event_id_gets_a_content_id() {
        let line = r#"{"ts":1,"user_id":"u","action":"view","sku":"p"}"#;
        let a = d(line).unwrap();
        let b = d(line).unwrap();
        assert!(a.event_id.starts_with('g'));
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(
            a.event_id,
            d(r#"{"ts":2,"user_id":"u","action":"view","sku":"p"}"#)
                .unwrap()
                .event_id
        );
    }

    #[test]
    fn classifies_bad_records() {
        let code = |s: &str| d(s).unwrap_err().code();
        assert_eq!(code("not json"), "not_json");
        assert_eq!(code(r#"{"ts":1,"user_id":"u""#), "not_json");
        assert_eq!(code(r#"{"ts":1,} "#), "not_json");
        assert_eq!(code(r#"{"ts":1} x"#), "not_json");
        assert_eq!(code("[1,2]"), "not_object");
        assert_eq!(code("42"), "not_object");
        assert_eq!(
            code(r#"{"ts":"x","user_id":"u","action":"view","sku":"p"}"#),
            "invalid_ts"
        );
        assert_eq!(
            code(r#"{"ts":true,"user_id":"u","action":"view","sku":"p"}"#),
            "wrong_type"
        );
        assert_eq!(
            code(r#"{"user_id":"u","action":"view","sku":"p"}"#),
            "missing_field"
        );
        assert_eq!(
            code(r#"{"ts":1,"action":"view","sku":"p"}"#),
            "missing_field"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"u","action":"add","qty":1}"#),
            "missing_field"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"u","action":"buy","sku":"p"}"#),
            "unknown_action"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"u","action":"add","sku":"p","qty":-1}"#),
            "negative_qty"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"u","action":"add","sku":"p","qty":1.5}"#),
            "invalid_qty"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"u","action":"add","sku":"p","qty":"2"}"#),
            "wrong_type"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"u","action":"add","sku":"p","qty":1,"price":-3}"#),
            "invalid_price"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":{},"action":"view","sku":"p"}"#),
            "wrong_type"
        );
        assert_eq!(
            code(r#"{"ts":1,"ts":2,"user_id":"u","action":"view","sku":"p"}"#),
            "duplicate_field"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"u\x","action":"view","sku":"p"}"#),
            "not_json"
        );
        assert_eq!(
            code(r#"{"ts":1,"user_id":"\ud800","action":"view","sku":"p"}"#),
            "not_json"
        );
        let bad_utf8 = b"{\"ts\":1,\"user_id\":\"\xff\",\"action\":\"view\",\"sku\":\"p\"}";
        assert_eq!(
            decode_json(bad_utf8, &DecodeOptions::default())
                .unwrap_err()
                .code(),
            "invalid_utf8"
        );
        let opts = DecodeOptions {
            max_record_bytes: 10,
            ..Default::default()
        };
        assert_eq!(
            decode_json(SAMPLE.as_bytes(), &opts).unwrap_err().code(),
            "too_long"
        );
    }

    #[test]
    fn accepts_numeric_ids_and_integral_float_qty() {
        let e = d(r#"{"ts":1,"user_id":123,"action":"add","sku":789,"qty":2.0,"price":"5.50"}"#)
            .unwrap();
        assert_eq!(e.user_id, "123");
        assert_eq!(e.sku.as_deref(), Some("789"));
        assert_eq!(e.qty, Some(2));
        assert_eq!(e.price, Some(Money(55_000)));
    }

    proptest! {
        /// Agrees with serde_json on whether arbitrary short inputs are valid JSON objects.
        #[test]
        fn syntax_agrees_with_serde_json(s in r#"[{}\[\]",:0-9a-z\\. -]{0,40}"#) {
            let ours = d(&s);
            let theirs = serde_json::from_str::<serde_json::Value>(&s);
            if let Err(DecodeError::NotJson(_)) = ours {
                prop_assert!(theirs.is_err(), "we rejected valid json {s:?}");
            }
            if theirs.is_err() {
                prop_assert!(ours.is_err(), "we accepted invalid json {s:?}");
            }
        }

        #[test]
        fn roundtrips_generated_events(
            id in "[a-z0-9]{1,30}", ts in 0i64..4_000_000_000_000, user in "[a-zA-Z0-9 \"\\\\é]{1,20}",
            qty in 0u32..1000, cents in 0i64..10_000_000, act in 0usize..4)
        {
            let e = CartEvent {
                event_id: id.into(), ts, user_id: user.into(), session_id: None,
                action: [Action::View, Action::Add, Action::Remove, Action::UpdateQty][act],
                sku: Some("p1".into()), qty: Some(qty), price: Some(Money(cents * 100)),
                category: None, device_id: None, ip: None, order_id: None, currency: None,
                product: None, user: None,
            };
            prop_assert_eq!(d(&e.to_json_string()).unwrap(), e);
        }
    }
}
