//! Exact money: a fixed-point decimal with four fractional digits stored in an `i64`.
//!
//! Four digits rather than cents because some feeds quote unit prices in tenths of a cent;
//! sums of `qty × price` over a whole day stay far inside `i64`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of fractional decimal digits kept.
pub const SCALE_DIGITS: u32 = 4;
/// `10^SCALE_DIGITS`.
pub const SCALE: i64 = 10_000;

/// Serialized as a decimal number in human-readable formats (JSON) and as the raw `i64`
/// in binary ones (snapshots), so neither loses a digit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // exact: |v| < 2^53, so v / 10^4 is the double nearest the decimal, and the
            // shortest round-trip form of that double is the decimal itself
            s.serialize_f64(self.0 as f64 / SCALE as f64)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let v = f64::deserialize(d)?;
            Ok(Money((v * SCALE as f64).round() as i64))
        } else {
            i64::deserialize(d).map(Money)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("not a decimal number")]
    Syntax,
    #[error("more than {SCALE_DIGITS} fractional digits")]
    TooPrecise,
    #[error("out of range")]
    Overflow,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_units(units: i64) -> Money {
        Money(units * SCALE)
    }

    /// Parses the text of a JSON number (`19.99`, `5`, `1e2`, `-0.5`) exactly, without floats.
    ///
    /// Extra fractional digits that are all zero are accepted (`19.9900000`); any other
    /// precision beyond four digits is an error, because silently rounding money is a bug.
    pub fn parse(text: &[u8]) -> Result<Money, MoneyError> {
        let mut i = 0;
        let neg = text.first() == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut mantissa: i128 = 0;
        let mut frac_digits: i32 = 0;
        let mut digits = 0;
        let mut seen_dot = false;
        while i < text.len() {
            let c = text[i];
            match c {
                b'0'..=b'9' => {
                    mantissa = mantissa * 10 + i128::from(c - b'0');
                    if mantissa > i128::from(i64::MAX) * 1_000_000 {
                        return Err(MoneyError::Overflow);
                    }
                    digits += 1;
                    if seen_dot {
                        frac_digits += 1;
                    }
                }
                b'.' if !seen_dot => seen_dot = true,
                b'e' | b'E' => break,
                _ => return Err(MoneyError::Syntax),
            }
            i += 1;
        }
        if digits == 0 {
            return Err(MoneyError::Syntax);
        }
        let mut exp: i32 = 0;
        if i < text.len() {
            // exponent part
            i += 1;
            let eneg = match text.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            if i >= text.len() {
                return Err(MoneyError::Syntax);
            }
            for &c in &text[i..] {
                if !c.is_ascii_digit() {
                    return Err(MoneyError::Syntax);
                }
                exp = exp.saturating_mul(10).saturating_add(i32::from(c - b'0'));
            }
            if eneg {
                exp = -exp;
            }
        }
        // value = mantissa * 10^(exp - frac_digits); we want value * 10^SCALE_DIGITS.
        let mut shift = exp - frac_digits + SCALE_DIGITS as i32;
        while shift < 0 {
            if mantissa % 10 != 0 {
                return Err(MoneyError::TooPrecise);
            }
            mantissa /= 10;
            shift += 1;
        }
        while shift > 0 {
            mantissa = mantissa.checked_mul(10).ok_or(MoneyError::Overflow)?;
            if mantissa > i128::from(i64::MAX) {
                return Err(MoneyError::Overflow);
            }
            shift -= 1;
        }
        let v = i64::try_from(mantissa).map_err(|_| MoneyError::Overflow)?;
        Ok(Money(if neg { -v } else { v }))
    }

    pub fn parse_str(text: &str) -> Result<Money, MoneyError> {
        Money::parse(text.trim().as_bytes())
    }

    pub fn checked_mul_qty(self, qty: i64) -> Option<Money> {
        self.0.checked_mul(qty).map(Money)
    }

    /// Writes the shortest exact decimal form (`39.98`, `5`, `-0.5`) as a JSON number.
    pub fn write_json(self, out: &mut Vec<u8>) {
        let v = self.0;
        if v < 0 {
            out.push(b'-');
        }
        let abs = v.unsigned_abs();
        let int = abs / SCALE as u64;
        let mut frac = abs % SCALE as u64;
        let mut b = itoa::Buffer::new();
        out.extend_from_slice(b.format(int).as_bytes());
        if frac != 0 {
            let mut width = SCALE_DIGITS as usize;
            while frac.is_multiple_of(10) {
                frac /= 10;
                width -= 1;
            }
            out.push(b'.');
            let s = b.format(frac);
            for _ in s.len()..width {
                out.push(b'0');
            }
            out.extend_from_slice(s.as_bytes());
        }
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0 + o.0)
    }
}
impl std::ops::AddAssign for Money {
    fn add_assign(&mut self, o: Money) {
        self.0 += o.0;
    }
}
impl std::ops::Sub for Money {
    type Output = Money;
    fn sub(self, o: Money) -> Money {
        Money(self.0 - o.0)
    }
}
impl std::ops::SubAssign for Money {
    fn sub_assign(&mut self, o: Money) {
        self.0 -= o.0;
    }
}
impl std::ops::Neg for Money {
    type Output = Money;
    fn neg(self) -> Money {
        Money(-self.0)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::with_capacity(24);
        self.write_json(&mut v);
        f.write_str(std::str::from_utf8(&v).expect("ascii"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(Money::parse(b"19.99"), Ok(Money(199_900)));
        assert_eq!(Money::parse(b"5"), Ok(Money(50_000)));
        assert_eq!(Money::parse(b"-0.5"), Ok(Money(-5_000)));
        assert_eq!(Money::parse(b"1e2"), Ok(Money(1_000_000)));
        assert_eq!(Money::parse(b"1.5E-1"), Ok(Money(1_500)));
        assert_eq!(Money::parse(b"19.990000"), Ok(Money(199_900)));
        assert_eq!(Money::parse(b"0.00001"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse(b"abc"), Err(MoneyError::Syntax));
        assert_eq!(Money::parse(b""), Err(MoneyError::Syntax));
        assert_eq!(Money::parse(b"1e999"), Err(MoneyError::Overflow));
    }

    #[test]
    fn formats_shortest() {
        let f = |m: i64| Money(m).to_string();
        assert_eq!(f(399_800), "39.98");
        assert_eq!(f(50_000), "5");
        assert_eq!(f(51_000), "5.1");
        assert_eq!(f(-5_000), "-0.5");
        assert_eq!(f(1), "0.0001");
        assert_eq!(f(0), "0");
    }

    #[test]
    fn json_is_a_decimal_and_binary_is_exact() {
        assert_eq!(serde_json::to_string(&Money(399_800)).unwrap(), "39.98");
        assert_eq!(
            serde_json::from_str::<Money>("39.98").unwrap(),
            Money(399_800)
        );
        let big = Money(123_456_789_012_345);
        assert_eq!(serde_json::to_string(&big).unwrap(), "12345678901.2345");
    }

    proptest! {
        #[test]
        fn json_roundtrip(v in -100_000_000_000_000i64..100_000_000_000_000) {
            let s = serde_json::to_string(&Money(v)).unwrap();
            prop_assert_eq!(s.parse::<f64>().unwrap(), v as f64 / 10_000.0);
            prop_assert_eq!(Money::parse(s.as_bytes()), Ok(Money(v)));
        }

        #[test]
        fn format_parse_roundtrip(v in -1_000_000_000_000i64..1_000_000_000_000) {
            let s = Money(v).to_string();
            prop_assert_eq!(Money::parse(s.as_bytes()), Ok(Money(v)));
            // and the text is what a float formatter would agree with, to 4 places
            let f: f64 = s.parse().unwrap();
            prop_assert!((f * 10_000.0 - v as f64).abs() < 1.0);
        }
    }
}
