//! The payload format of a message source (Kafka, RabbitMQ, Redis streams): one message is
//! one record, in JSON, CSV or Avro. It lives here, beside Avro, because this is the one
//! crate that knows every format; message sources take a [`PayloadFormat`] from their config
//! and build their [`Decoder`] with [`message_decoder`] at start-up, so a bad schema file or
//! column mapping stops the start with its key instead of dead-lettering every message.

use crate::{AvroConfig, AvroDecoder};
use cartpulse_model::{CsvConfig, CsvDecoder, DecodeOptions, Decoder};
use serde::{Deserialize, Serialize};

/// `format` of a message source.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Json,
    /// One CSV record per message, mapped by the source's `csv` table.
    Csv,
    /// One Avro datum per message (plain or Confluent-framed), by the source's `avro` table.
    Avro,
}

/// A message source's payload settings as they appear in its config table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Payload<'a> {
    pub format: PayloadFormat,
    pub csv: Option<&'a CsvConfig>,
    /// The header line messages' CSV columns are named by (messages carry no header of their
    /// own); without it, columns are given by index (`"#3"`).
    pub csv_header: Option<&'a str>,
    pub avro: Option<&'a AvroConfig>,
}

/// A problem with a source's payload settings: the key (relative to the source table) and
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {expected}")]
pub struct PayloadError {
    pub key: String,
    pub expected: String,
}

/// Builds the decoder of a message source, checking that the tables present fit the format.
pub fn message_decoder(p: &Payload<'_>, opts: DecodeOptions) -> Result<Decoder, PayloadError> {
    let stray = |key: &str, f: &str| PayloadError {
        key: key.into(),
        expected: format!("only with format = \"{f}\""),
    };
    if p.format != PayloadFormat::Csv {
        if p.csv.is_some() {
            return Err(stray("csv", "csv"));
        }
        if p.csv_header.is_some() {
            return Err(stray("csv_header", "csv"));
        }
    }
    if p.format != PayloadFormat::Avro && p.avro.is_some() {
        return Err(stray("avro", "avro"));
    }
    match p.format {
        PayloadFormat::Json => Ok(Decoder::Json(opts)),
        PayloadFormat::Csv => {
            let default = CsvConfig {
                has_header: false,
                ..CsvConfig::default()
            };
            let cfg = p.csv.unwrap_or(&default);
            let header = match p.csv_header {
                Some(h) => Some(h.as_bytes()),
                // without a header line, the default column names would name nothing
                None if p.csv.is_none() => {
                    return Err(PayloadError {
                        key: "csv_header".into(),
                        expected: "expected the header line naming the messages' columns, or a [csv.columns] table giving them by index (\"#0\", \"#1\", ...)".into(),
                    })
                }
                None => None,
            };
            let d = CsvDecoder::new(cfg, header, opts).map_err(|e| PayloadError {
                key: "csv.columns".into(),
                expected: e.to_string(),
            })?;
            Ok(Decoder::Csv(Box::new(d)))
        }
        PayloadFormat::Avro => {
            let cfg = p.avro.ok_or_else(|| PayloadError {
                key: "avro".into(),
                expected: "expected an [avro] table (wire, and schema_file or registry_url/schema_dir) for format = \"avro\"".into(),
            })?;
            let d = AvroDecoder::new(cfg, opts).map_err(|e| PayloadError {
                key: format!("avro.{}", e.key),
                expected: e.message,
            })?;
            Ok(d.into_decoder())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_messages_are_decoded_by_the_configured_header() {
        let p = Payload {
            format: PayloadFormat::Csv,
            csv_header: Some("ts,user_id,action,sku,qty,price"),
            ..Default::default()
        };
        let d = message_decoder(&p, DecodeOptions::default()).unwrap();
        let e = d.decode(b"1764000000000,u1,add,p1,2,9.99").unwrap();
        assert_eq!(e.user_id, "u1");
        assert_eq!(e.qty, Some(2));
        assert!(d.decode(b"1764000000000,u1,fly,p1,2,9.99").is_err());
    }

    #[test]
    fn tables_that_do_not_fit_the_format_are_refused_by_key() {
        let csv = CsvConfig::default();
        let p = Payload {
            format: PayloadFormat::Json,
            csv: Some(&csv),
            ..Default::default()
        };
        assert_eq!(
            message_decoder(&p, DecodeOptions::default())
                .unwrap_err()
                .key,
            "csv"
        );
        let p = Payload {
            format: PayloadFormat::Avro,
            ..Default::default()
        };
        assert_eq!(
            message_decoder(&p, DecodeOptions::default())
                .unwrap_err()
                .key,
            "avro"
        );
        let p = Payload {
            format: PayloadFormat::Csv,
            ..Default::default()
        };
        assert_eq!(
            message_decoder(&p, DecodeOptions::default())
                .unwrap_err()
                .key,
            "csv_header"
        );
        let avro = AvroConfig::default();
        let p = Payload {
            format: PayloadFormat::Avro,
            avro: Some(&avro),
            ..Default::default()
        };
        // confluent without registry or directory
        assert_eq!(
            message_decoder(&p, DecodeOptions::default())
                .unwrap_err()
                .key,
            "avro.registry_url"
        );
    }
}
