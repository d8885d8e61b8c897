//! Avro payloads: a message is one Avro datum, either bare (`wire = "plain"`, the writer
//! schema from a file) or in the Confluent wire format (`wire = "confluent"`: byte 0, a
//! 4-byte big-endian schema id, then the datum), the writer schema looked up by id in a local
//! directory (`<id>.avsc`) and/or a Confluent Schema Registry (`GET /schemas/ids/{id}`).
//!
//! Every datum is decoded with its writer schema and then resolved into the reader schema by
//! Avro's rules (fields matched by name, writer-only fields dropped, reader-only fields take
//! their default, union branches matched), so producers on an older or newer schema decode
//! alike. The resolved record then goes through the same per-action rules as JSON
//! ([`cartpulse_model::finish`]): a missing `qty` on `add`, a missing `sku`, a negative price
//! are the same dead letters whatever the wire format.
//!
//! Between decoding and resolution the writer's values of the known fields are brought to
//! the few kinds the reader schema holds (see [`CART_EVENT_READER_SCHEMA`]): `int` to `long`,
//! timestamp logical types to epoch milliseconds, enum symbols to strings, and decimals to
//! their exact decimal text. Decimals need this because apache-avro's resolution neither
//! rescales between a writer's and a reader's `scale` nor accepts a `bytes` decimal shorter
//! than the reader's precision needs, and money must not pass through a float.
//!
//! Nothing here panics on input: bad framing, unknown schema ids, truncated or garbled data
//! and incompatible schemas are `DecodeError`s with stable codes (`avro_bad_magic`,
//! `avro_unknown_schema`, `avro_malformed`, `avro_incompatible`), so the engine dead-letters
//! the message and goes on.

mod decode;
pub mod encode;
pub mod payload;
mod schemas;
#[cfg(test)]
mod tests;

pub use decode::AvroDecoder;
pub use payload::{message_decoder, Payload, PayloadError, PayloadFormat};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How a message carries its datum.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Wire {
    /// The bare datum; every message is written with `schema_file`.
    Plain,
    /// Byte 0, the writer schema's registry id (4 bytes, big-endian), then the datum.
    #[default]
    Confluent,
}

/// The `avro` table of a source whose `format` is `avro`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AvroConfig {
    /// `plain` or `confluent`.
    pub wire: Wire,
    /// The writer schema (`.avsc`) of every message; `plain` only.
    pub schema_file: Option<PathBuf>,
    /// A Confluent Schema Registry, e.g. `http://127.0.0.1:8081`; `confluent` only. Plain
    /// HTTP: this build has no TLS client.
    pub registry_url: Option<String>,
    /// A directory of writer schemas named `<id>.avsc`; `confluent` only. Looked at before
    /// the registry; files present at start are parsed then, later ones when first needed.
    pub schema_dir: Option<PathBuf>,
    /// The reader schema (`.avsc`); defaults to [`CART_EVENT_READER_SCHEMA`]. Its fields
    /// named like the event's (`event_id`, `ts`, `user_id`, …) are read; a custom one exists
    /// to give defaults (say `"currency": "EUR"`).
    pub reader_schema: Option<PathBuf>,
    /// Longest wait for one registry request.
    #[serde(with = "humantime_serde")]
    pub registry_timeout: Duration,
    /// A schema id that could not be had (not registered, registry down) is answered from
    /// memory — its messages dead-lettered as `avro_unknown_schema` — for this long before it
    /// is asked for again, so a bad id does not cost one request per message.
    #[serde(with = "humantime_serde")]
    pub retry_unknown_after: Duration,
}

impl Default for AvroConfig {
    fn default() -> Self {
        AvroConfig {
            wire: Wire::Confluent,
            schema_file: None,
            registry_url: None,
            schema_dir: None,
            reader_schema: None,
            registry_timeout: Duration::from_secs(5),
            retry_unknown_after: Duration::from_secs(10),
        }
    }
}

/// A configuration the decoder cannot start with: the key (relative to the `avro` table)
/// and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("avro.{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl ConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key,
            message: message.into(),
        }
    }
}

/// The built-in reader schema: every event field, each nullable with a `null` default, so a
/// writer schema lacking one still resolves and the missing value is judged by the same
/// rules as a JSON record without it. Identifiers may be strings or numbers, `ts` epoch
/// milliseconds or RFC 3339 text, `price` exact decimal text (what writer decimals become),
/// a double or whole units, as in JSON.
pub const CART_EVENT_READER_SCHEMA: &str = r#"{
  "type": "record",
  "name": "CartEvent",
  "namespace": "cartpulse",
  "fields": [
    {"name": "event_id", "type": ["null", "string", "long"], "default": null},
    {"name": "ts", "type": ["null", "long", "string"], "default": null},
    {"name": "user_id", "type": ["null", "string", "long"], "default": null},
    {"name": "session_id", "type": ["null", "string", "long"], "default": null},
    {"name": "action", "type": ["null", "string"], "default": null},
    {"name": "sku", "type": ["null", "string", "long"], "default": null},
    {"name": "qty", "type": ["null", "long", "double"], "default": null},
    {"name": "price", "type": ["null", "string", "double", "long"], "default": null},
    {"name": "category", "type": ["null", "string", "long"], "default": null},
    {"name": "device_id", "type": ["null", "string", "long"], "default": null},
    {"name": "ip", "type": ["null", "string"], "default": null},
    {"name": "order_id", "type": ["null", "string", "long"], "default": null},
    {"name": "currency", "type": ["null", "string"], "default": null}
  ]
}"#;

/// A writer schema for producers starting from scratch: `ts` as `timestamp-millis`, `price`
/// as an exact `decimal(18, 4)` (cartpulse's money has four fractional digits).
pub const CART_EVENT_WRITER_SCHEMA: &str = r#"{
  "type": "record",
  "name": "CartEvent",
  "namespace": "cartpulse",
  "fields": [
    {"name": "event_id", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "user_id", "type": "string"},
    {"name": "session_id", "type": ["null", "string"], "default": null},
    {"name": "action", "type": {"type": "enum", "name": "Action", "symbols": ["view", "add", "remove", "update_qty", "checkout"]}},
    {"name": "sku", "type": ["null", "string"], "default": null},
    {"name": "qty", "type": ["null", "int"], "default": null},
    {"name": "price", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 4}], "default": null},
    {"name": "category", "type": ["null", "string"], "default": null},
    {"name": "device_id", "type": ["null", "string"], "default": null},
    {"name": "ip", "type": ["null", "string"], "default": null},
    {"name": "order_id", "type": ["null", "string"], "default": null},
    {"name": "currency", "type": ["null", "string"], "default": null}
  ]
}"#;
