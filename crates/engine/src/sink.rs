//! The one trait every sink implements: a two-phase-commit participant.
//!
//! Records arrive tagged with an epoch (the span between two checkpoints). `pre_commit`
//! makes an epoch durable but invisible; after the checkpoint manifest is written,
//! `commit` makes it visible. `commit` must be idempotent, because after a crash between
//! the manifest and the commit the restarted pipeline calls it again (roll forward), and
//! `recover` must discard every epoch later than the last committed one.

use crate::output::Stream;

#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: String,
    pub message: String,
    pub retryable: bool,
}

pub trait Sink: Send {
    fn name(&self) -> &str;

    /// Called once before any write. `committed` is the last epoch whose checkpoint is
    /// durable (`None` on a fresh start, which begins from empty output).
    fn recover(&mut self, committed: Option<u64>) -> Result<(), SinkError>;

    /// Stages newline-terminated JSON records of `stream` into `epoch`.
    fn write(
        &mut self,
        epoch: u64,
        stream: Stream,
        records: &[u8],
        count: u64,
    ) -> Result<(), SinkError>;

    /// Whether this sink takes `stream`. The opt-in streams (`events`, a copy of the input,
    /// and `carts`) are produced only when some sink wants them.
    fn wants(&self, stream: Stream) -> bool {
        !stream.opt_in()
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), SinkError>;

    fn commit(&mut self, epoch: u64) -> Result<(), SinkError>;
}
