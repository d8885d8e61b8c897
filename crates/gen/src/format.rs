//! Hand-rolled line formatting.
//!
//! The generator must sustain millions of lines per second, so lines are
//! assembled from byte slices and `itoa` digits straight into a reusable
//! buffer: no `format!`, no serde and no allocation per event.  Money is kept
//! as integer cents end to end, so a price can never pick up binary
//! floating-point noise on its way to the text.

use crate::sim::{Action, Event};

const ZEROS: &[u8; 32] = b"00000000000000000000000000000000";

/// Minimum zero-padded digit counts of the id fields; ids grow past them
/// rather than wrap, so an unbounded stream stays unique.
pub(crate) const EVENT_ID_WIDTH: usize = 11;
pub(crate) const SESSION_ID_WIDTH: usize = 7;
pub(crate) const ORDER_ID_WIDTH: usize = 9;
pub(crate) const DEVICE_ID_WIDTH: usize = 7;

/// Size of the private IP space used for users and farms: `10.a.b.c` with
/// `c` in `1..=254`, so no address looks like a network or broadcast address.
pub(crate) const IP_SPACE: u32 = 256 * 256 * 254;

#[inline]
pub(crate) fn push_u64(buf: &mut Vec<u8>, n: u64) {
    let mut b = itoa::Buffer::new();
    buf.extend_from_slice(b.format(n).as_bytes());
}

/// Zero-pads to `width` digits so ids sort and compare as fixed-width text.
#[inline]
pub(crate) fn push_padded(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(n).as_bytes();
    if s.len() < width {
        buf.extend_from_slice(&ZEROS[..width - s.len()]);
    }
    buf.extend_from_slice(s);
}

/// Writes cents as the shortest exact decimal (`1999` → `19.99`, `510` →
/// `5.1`, `500` → `5`), which is what a JSON number parser round-trips
/// without ambiguity.  Straightforward reference for the fast path in
/// [`write_line`], which the tests hold it against.
#[cfg(test)]
pub(crate) fn push_price(buf: &mut Vec<u8>, cents: i64) {
    let neg = cents < 0;
    let c = cents.unsigned_abs();
    if neg {
        buf.push(b'-');
    }
    push_u64(buf, c / 100);
    let frac = (c % 100) as u8;
    if frac != 0 {
        buf.push(b'.');
        buf.push(b'0' + frac / 10);
        if frac % 10 != 0 {
            buf.push(b'0' + frac % 10);
        }
    }
}

/// Decodes an index of the IP space into its three variable octets.
#[inline]
pub(crate) fn ip_octets(idx: u32) -> (u32, u32, u32) {
    (idx / (256 * 254), (idx / 254) % 256, idx % 254 + 1)
}

pub(crate) fn push_ip(buf: &mut Vec<u8>, idx: u32) {
    let (a, b, c) = ip_octets(idx);
    buf.extend_from_slice(b"10.");
    push_u64(buf, a as u64);
    buf.push(b'.');
    push_u64(buf, b as u64);
    buf.push(b'.');
    push_u64(buf, c as u64);
}

pub(crate) fn ip_string(idx: u32) -> String {
    let mut v = Vec::with_capacity(16);
    push_ip(&mut v, idx);
    String::from_utf8(v).expect("ascii")
}

pub(crate) fn id_string(prefix: u8, n: u64, width: usize) -> String {
    let mut v = Vec::with_capacity(width + 1);
    v.push(prefix);
    push_padded(&mut v, n, width);
    String::from_utf8(v).expect("ascii")
}

/// Widths that depend on the configured population sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Widths {
    pub user: usize,
    pub product: usize,
}

impl Widths {
    pub fn new(users: u32, products: u32) -> Self {
        let digits = |n: u32| itoa::Buffer::new().format(n.saturating_sub(1)).len();
        Self {
            user: digits(users).max(6),
            product: digits(products).max(5),
        }
    }
}

/// Line assembly area on the stack.
///
/// Pieces are copied with compile-time-known lengths and digits are written
/// in place, so building a line costs no `memcpy` calls and no capacity
/// checks; the finished line goes into the caller's buffer in one copy.
struct Line {
    b: [u8; LINE_MAX],
    n: usize,
}

/// Longest possible line: every numeric field at its widest (u64/i64) plus
/// the fixed text stays well below this.
const LINE_MAX: usize = 512;

const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

#[inline(always)]
fn digit_count(n: u64) -> usize {
    let mut d = 1;
    let mut x = n;
    while x >= 10_000 {
        x /= 10_000;
        d += 4;
    }
    if x >= 1000 {
        d + 3
    } else if x >= 100 {
        d + 2
    } else if x >= 10 {
        d + 1
    } else {
        d
    }
}

impl Line {
    #[inline(always)]
    fn put<const N: usize>(&mut self, s: &[u8; N]) {
        self.b[self.n..self.n + N].copy_from_slice(s);
        self.n += N;
    }

    #[inline(always)]
    fn put_byte(&mut self, c: u8) {
        self.b[self.n] = c;
        self.n += 1;
    }

    /// Writes `n` as exactly `len` digits (zero-padded), right to left.
    #[inline(always)]
    fn put_digits(&mut self, mut n: u64, len: usize) {
        let out = &mut self.b[self.n..self.n + len];
        let mut i = len;
        while i >= 2 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            out[i - 2..i].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
            i -= 2;
        }
        if i == 1 {
            out[0] = b'0' + (n % 10) as u8;
        }
        self.n += len;
    }

    #[inline(always)]
    fn put_uint(&mut self, n: u64) {
        self.put_digits(n, digit_count(n));
    }

    #[inline(always)]
    fn put_padded(&mut self, n: u64, width: usize) {
        self.put_digits(n, digit_count(n).max(width));
    }

    #[inline(always)]
    fn put_price(&mut self, cents: i64) {
        if cents < 0 {
            self.put_byte(b'-');
        }
        let c = cents.unsigned_abs();
        self.put_uint(c / 100);
        let frac = (c % 100) as u8;
        if frac != 0 {
            self.put_byte(b'.');
            self.put_byte(b'0' + frac / 10);
            if frac % 10 != 0 {
                self.put_byte(b'0' + frac % 10);
            }
        }
    }
}

/// Appends one complete JSON line (with `\n`) for `ev`.
///
/// Key order is fixed because the engine's parser is allowed to rely on it.
pub(crate) fn write_line(buf: &mut Vec<u8>, w: Widths, ev: &Event) {
    let mut l = Line {
        b: [0; LINE_MAX],
        n: 0,
    };
    l.put(b"{\"event_id\":\"e");
    l.put_padded(ev.id, EVENT_ID_WIDTH);
    l.put(b"\",\"ts\":");
    if ev.ts < 0 {
        l.put_byte(b'-');
    }
    l.put_uint(ev.ts.unsigned_abs());
    l.put(b",\"user_id\":\"u");
    l.put_padded(ev.user as u64, w.user);
    l.put(b"\",\"session_id\":\"s");
    l.put_padded(ev.session, SESSION_ID_WIDTH);
    match ev.action {
        Action::View => l.put(b"\",\"action\":\"view"),
        Action::Add => l.put(b"\",\"action\":\"add"),
        Action::Remove => l.put(b"\",\"action\":\"remove"),
        Action::UpdateQty => l.put(b"\",\"action\":\"update_qty"),
        Action::Checkout => l.put(b"\",\"action\":\"checkout"),
    }
    if ev.action == Action::Checkout {
        l.put(b"\",\"order_id\":\"o");
        l.put_padded(ev.order, ORDER_ID_WIDTH);
        l.put_byte(b'"');
    } else {
        l.put(b"\",\"sku\":\"p");
        l.put_padded(ev.product as u64, w.product);
        l.put(b"\",\"qty\":");
        l.put_uint(ev.qty as u64);
        l.put(b",\"price\":");
        l.put_price(ev.price_cents);
        l.put(b",\"category\":\"c");
        l.put_uint(ev.category as u64);
        l.put_byte(b'"');
    }
    l.put(b",\"device_id\":\"d");
    l.put_padded(ev.device as u64, DEVICE_ID_WIDTH);
    l.put(b"\",\"ip\":\"10.");
    let (a, b, c) = ip_octets(ev.ip);
    l.put_uint(a as u64);
    l.put_byte(b'.');
    l.put_uint(b as u64);
    l.put_byte(b'.');
    l.put_uint(c as u64);
    l.put(b"\"}\n");
    buf.extend_from_slice(&l.b[..l.n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(c: i64) -> String {
        let mut v = Vec::new();
        push_price(&mut v, c);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn prices_are_shortest_exact_decimals() {
        assert_eq!(price(1999), "19.99");
        assert_eq!(price(500), "5");
        assert_eq!(price(510), "5.1");
        assert_eq!(price(505), "5.05");
        assert_eq!(price(1), "0.01");
        assert_eq!(price(10), "0.1");
        assert_eq!(price(0), "0");
        assert_eq!(price(-250), "-2.5");
        assert_eq!(price(123_456_789), "1234567.89");
    }

    #[test]
    fn padding_and_ip() {
        let mut v = Vec::new();
        push_padded(&mut v, 42, 11);
        assert_eq!(v, b"00000000042");
        v.clear();
        push_padded(&mut v, 123_456_789_012, 11);
        assert_eq!(v, b"123456789012");
        assert_eq!(ip_string(0), "10.0.0.1");
        assert_eq!(ip_string(253), "10.0.0.254");
        assert_eq!(ip_string(254), "10.0.1.1");
        assert_eq!(ip_string(IP_SPACE - 1), "10.255.255.254");
    }

    #[test]
    fn fast_digits_match_itoa() {
        let mut l = Line {
            b: [0; LINE_MAX],
            n: 0,
        };
        let mut cases: Vec<u64> = vec![0, 1, 9, 10, 99, 100, 101, 999, 1000, u64::MAX];
        for k in 0..20 {
            let p = 10u64.pow(k);
            cases.extend([p - 1, p, p + 1]);
        }
        for n in cases {
            for width in [0, 1, 5, 11] {
                l.n = 0;
                l.put_padded(n, width);
                let mut v = Vec::new();
                push_padded(&mut v, n, width);
                assert_eq!(&l.b[..l.n], &v[..], "{n} width {width}");
            }
            l.n = 0;
            l.put_price(n as i64);
            let mut v = Vec::new();
            push_price(&mut v, n as i64);
            assert_eq!(&l.b[..l.n], &v[..], "price {n}");
        }
    }

    #[test]
    fn widths_grow_with_population() {
        let w = Widths::new(100_000, 10_000);
        assert_eq!((w.user, w.product), (6, 5));
        let w = Widths::new(2_000_000, 100_001);
        assert_eq!((w.user, w.product), (7, 6));
    }

    #[test]
    fn line_layout_is_exact() {
        let ev = Event {
            id: 42,
            ts: 1_764_000_000_123,
            user: 123,
            session: 456,
            action: Action::Add,
            product: 789,
            qty: 2,
            price_cents: 1999,
            category: 12,
            order: 0,
            device: 12,
            ip: 256,
        };
        let w = Widths::new(100_000, 10_000);
        let mut v = Vec::new();
        write_line(&mut v, w, &ev);
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            "{\"event_id\":\"e00000000042\",\"ts\":1764000000123,\"user_id\":\"u000123\",\
             \"session_id\":\"s0000456\",\"action\":\"add\",\"sku\":\"p00789\",\"qty\":2,\
             \"price\":19.99,\"category\":\"c12\",\"device_id\":\"d0000012\",\"ip\":\"10.0.1.3\"}\n"
        );
        v.clear();
        let co = Event {
            action: Action::Checkout,
            order: 7,
            ..ev
        };
        write_line(&mut v, w, &co);
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            "{\"event_id\":\"e00000000042\",\"ts\":1764000000123,\"user_id\":\"u000123\",\
             \"session_id\":\"s0000456\",\"action\":\"checkout\",\"order_id\":\"o000000007\",\
             \"device_id\":\"d0000012\",\"ip\":\"10.0.1.3\"}\n"
        );
    }
}
