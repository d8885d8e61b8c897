//! The analytics stage: one thread after the shards that sees every accepted event in
//! source order, each with the user's cart as the shard left it, plus the abandoned carts the
//! shards' timers fired.
//!
//! Rules, funnels and models need features keyed by things other than the user (a device, an
//! IP, a product), so they cannot live in the user-partitioned shards. Instead each shard
//! hands over, per chunk, its share of the chunk's events tagged with their position in the
//! chunk; the stage merges the shares back into input order. So the stage's input — and with
//! it every alert — is a function of the input order alone, like the shards' output, and its
//! state is snapshotted at the same barriers, so it is exactly-once too.

use crate::output::Records;
use crate::state::CartLine;
use cartpulse_model::{CartEvent, Money};
use compact_str::CompactString;
use serde_json::Value;

/// An accepted (deduplicated) event with what the shard knew when it applied it.
#[derive(Clone, Debug)]
pub struct OpEvent {
    pub ev: CartEvent,
    /// Too late for its window (still applied to the cart).
    pub late: bool,
    /// Quantity as applied (a remove without quantity removes the whole line).
    pub qty: u32,
    /// Unit price as applied (from the cart line when the event had none).
    pub price: Money,
    /// The user's cart after the event.
    pub cart_items: u64,
    pub cart_value: Money,
    pub cart_lines: u32,
    /// The user's quantity of the event's product after the event.
    pub line_qty: u32,
    /// The cart's value when the event is a checkout.
    pub order_value: Money,
    /// Orders the user placed so far (in the cart state's memory).
    pub orders: u32,
}

/// A cart whose owner went quiet for `abandon_after` (fired by event time or, for an idle
/// live source, by the wall clock).
#[derive(Clone, Debug)]
pub struct OpAbandoned {
    pub user_id: CompactString,
    pub session_id: Option<CompactString>,
    pub last_activity: i64,
    pub abandoned_at: i64,
    pub items: u64,
    pub value: Money,
    pub lines: Vec<CartLine>,
}

#[derive(Clone, Debug)]
pub enum OpInput {
    Event(Box<OpEvent>),
    Abandoned(Box<OpAbandoned>),
}

/// The analytics stage's logic, supplied by the analytics crate.
pub trait Operator: Send {
    /// One input, in order. Alerts and other records go into `out` (`Stream::Alerts`).
    fn on_input(&mut self, input: &OpInput, out: &mut Records);

    /// The stage's state at a barrier.
    fn snapshot(&self) -> Result<Vec<u8>, String>;

    /// State from the last completed checkpoint, before any input.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;

    /// A request from the HTTP API or an admin command (a query, a rule reload), answered
    /// between batches: `kind` names it, `body` carries its arguments.
    fn request(&mut self, kind: &str, body: &Value) -> Result<Value, String>;
}

/// Key-group id under which the stage's snapshot is stored (real groups are `< key_groups`).
pub const OPERATOR_GROUP: u32 = u32::MAX;

/// One shard's share of one chunk, for the stage.
pub(crate) struct OpBatch {
    pub seq: u64,
    /// `(position in chunk, input)`, in position order; abandoned carts fired before the
    /// event at a position carry that position, those fired at the chunk's end `u32::MAX`.
    pub items: Vec<(u32, OpInput)>,
    pub barrier: Option<u64>,
    pub end: crate::shard::ChunkEnd,
}

/// A request for the stage, with where to send the answer.
pub(crate) struct OpRequest {
    pub kind: String,
    pub body: Value,
    pub reply: crossbeam_channel::Sender<Result<Value, String>>,
}
