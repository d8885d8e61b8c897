//! An answer as JSON or as a text table.
//!
//! The JSON is written by arrow's encoder straight into the body, never through
//! `serde_json::Value`: decimals keep every digit (`"value_added": 1234.5600` stays a JSON
//! number with its exact text), which a float round-trip would not promise.

use crate::{Answer, ServingError};
use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use std::io::Write;

impl Answer {
    /// `{"columns":[{"name","type"}…],"rows":[{…}…],"row_count":n,"truncated":b,
    /// "horizon_ms":h,"elapsed_ms":t}`.
    pub fn to_json(&self) -> Result<Vec<u8>, ServingError> {
        let mut out = Vec::with_capacity(256 + self.rows * 64);
        out.extend_from_slice(b"{\"columns\":");
        let cols: Vec<serde_json::Value> = self
            .schema
            .fields()
            .iter()
            .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect();
        serde_json::to_writer(&mut out, &cols)
            .map_err(|e| ServingError::Internal(e.to_string()))?;
        out.extend_from_slice(b",\"rows\":");
        {
            let mut w = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, JsonArray>(&mut out);
            for b in &self.batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        if self.rows == 0 {
            // the writer writes nothing at all for no rows
            if out.ends_with(b":") {
                out.extend_from_slice(b"[]");
            }
        }
        write!(
            out,
            ",\"row_count\":{},\"truncated\":{},\"horizon_ms\":{},\"elapsed_ms\":{:.3}}}",
            self.rows,
            self.truncated,
            self.horizon.map_or("null".to_string(), |h| h.to_string()),
            self.elapsed.as_secs_f64() * 1000.0
        )
        .map_err(|e| ServingError::Internal(e.to_string()))?;
        Ok(out)
    }

    /// A text table, as a terminal shows it.
    pub fn to_table(&self) -> Result<String, ServingError> {
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&self.batches)?.to_string())
    }
}
