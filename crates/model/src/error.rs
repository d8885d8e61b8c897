//! Why a record could not become an event. Every variant has a stable `code()` that is used
//! as the `reason` label of the dead-letter counter, so dashboards do not depend on wording.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record is not valid utf-8 (first bad byte at {0})")]
    InvalidUtf8(usize),
    #[error("record of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong { len: usize, limit: usize },
    #[error("not json: {0}")]
    NotJson(String),
    #[error("expected a json object, found {0}")]
    NotObject(&'static str),
    #[error("field `{field}` has the wrong type: expected {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{0}` appears twice")]
    DuplicateField(&'static str),
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    #[error("negative quantity {0}")]
    NegativeQty(i64),
    #[error("invalid quantity `{0}`")]
    InvalidQty(String),
    #[error("invalid timestamp `{0}`")]
    InvalidTs(String),
    #[error("invalid price `{value}`: {why}")]
    InvalidPrice { value: String, why: String },
    #[error("csv record: {0}")]
    Csv(String),
    /// Confluent framing expected (magic byte 0 and a 4-byte schema id), something else found.
    #[error("not an Avro message in the Confluent wire format: {0}")]
    AvroBadMagic(String),
    /// The writer schema the record names cannot be had (not registered, registry down,
    /// does not parse).
    #[error("avro writer schema {id}: {why}")]
    AvroUnknownSchema { id: u32, why: String },
    /// The bytes are not a datum of the writer schema (truncated, garbled, trailing bytes).
    #[error("malformed avro datum: {0}")]
    AvroMalformed(String),
    /// The writer schema cannot be resolved into the reader schema.
    #[error("avro writer schema cannot be read with the reader schema: {0}")]
    AvroIncompatible(String),
}

impl DecodeError {
    /// Stable machine-readable reason, used as a metric label and in dead-letter records.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::InvalidUtf8(_) => "invalid_utf8",
            DecodeError::TooLong { .. } => "too_long",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotObject(_) => "not_object",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::DuplicateField(_) => "duplicate_field",
            DecodeError::UnknownAction(_) => "unknown_action",
            DecodeError::NegativeQty(_) => "negative_qty",
            DecodeError::InvalidQty(_) => "invalid_qty",
            DecodeError::InvalidTs(_) => "invalid_ts",
            DecodeError::InvalidPrice { .. } => "invalid_price",
            DecodeError::Csv(_) => "csv",
            DecodeError::AvroBadMagic(_) => "avro_bad_magic",
            DecodeError::AvroUnknownSchema { .. } => "avro_unknown_schema",
            DecodeError::AvroMalformed(_) => "avro_malformed",
            DecodeError::AvroIncompatible(_) => "avro_incompatible",
        }
    }

    pub const CODES: [&'static str; 17] = [
        "invalid_utf8",
        "too_long",
        "not_json",
        "not_object",
        "wrong_type",
        "missing_field",
        "duplicate_field",
        "unknown_action",
        "negative_qty",
        "invalid_qty",
        "invalid_ts",
        "invalid_price",
        "csv",
        "avro_bad_magic",
        "avro_unknown_schema",
        "avro_malformed",
        "avro_incompatible",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed() {
        let samples = [
            DecodeError::Csv("x".into()),
            DecodeError::AvroBadMagic("x".into()),
            DecodeError::AvroUnknownSchema {
                id: 1,
                why: "x".into(),
            },
            DecodeError::AvroMalformed("x".into()),
            DecodeError::AvroIncompatible("x".into()),
        ];
        for e in samples {
            assert!(DecodeError::CODES.contains(&e.code()), "{}", e.code());
        }
    }
}
