//! Timestamp parsing shared by the decoders.

use chrono::{DateTime, NaiveDateTime};

/// RFC 3339 (`2025-11-24T16:00:00.123Z`, `…+08:00`) to epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|d| d.timestamp_millis())
}

/// How a text column holds time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TsFormat {
    EpochMs,
    EpochS,
    Rfc3339,
    /// A chrono `strftime` pattern read as UTC when it has no offset, e.g. `%Y-%m-%d %H:%M:%S UTC`.
    Pattern(String),
}

impl TsFormat {
    pub fn parse_ms(&self, s: &str) -> Option<i64> {
        let s = s.trim();
        match self {
            TsFormat::EpochMs => s.parse().ok(),
            TsFormat::EpochS => s
                .parse::<i64>()
                .ok()
                .and_then(|v| v.checked_mul(1000))
                .or_else(|| s.parse::<f64>().ok().map(|f| (f * 1000.0).round() as i64)),
            TsFormat::Rfc3339 => parse_rfc3339_ms(s),
            TsFormat::Pattern(p) => DateTime::parse_from_str(s, p)
                .map(|d| d.timestamp_millis())
                .ok()
                .or_else(|| {
                    NaiveDateTime::parse_from_str(s, p)
                        .ok()
                        .map(|d| d.and_utc().timestamp_millis())
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            parse_rfc3339_ms("2025-11-24T16:00:00.123Z"),
            Some(1_764_000_000_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2025-11-25T00:00:00.123+08:00"),
            Some(1_764_000_000_123)
        );
        let p = TsFormat::Pattern("%Y-%m-%d %H:%M:%S UTC".into());
        assert_eq!(
            p.parse_ms("2019-10-01 00:00:00 UTC"),
            Some(1_569_888_000_000)
        );
        assert_eq!(
            TsFormat::EpochS.parse_ms("1569888000"),
            Some(1_569_888_000_000)
        );
        assert_eq!(TsFormat::EpochMs.parse_ms("x"), None);
    }
}
