//! Files: JSON-lines/CSV replay source and a JSON-lines directory sink.

mod sink;
mod source;

pub use sink::JsonlDirSink;
pub use source::{FileFormat, FileSource, FileSourceConfig};
