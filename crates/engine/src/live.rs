//! Read access to the running pipeline for the HTTP API: per-user carts and product holds
//! are asked of the owning shard; global figures are kept by the committer.

use crate::state::{CartLine, Gauges, GlobalAgg};
use cartpulse_model::Money;
use compact_str::CompactString;
use crossbeam_channel::Sender;
use serde::Serialize;
use std::sync::Mutex;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CartView {
    pub user_id: CompactString,
    pub lines: Vec<CartLine>,
    pub items: u64,
    pub value: Money,
    pub last_activity: i64,
    pub abandon_at: Option<i64>,
    pub session_id: Option<String>,
    pub orders: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardStats {
    pub users: usize,
    pub dedup_entries: usize,
    pub cart_lines: usize,
    /// Estimated heap bytes of cart state and of all other keyed state.
    pub cart_state_bytes: usize,
    pub other_state_bytes: usize,
    pub gauges: Gauges,
    pub watermark: i64,
}

pub enum Query {
    Cart {
        user: CompactString,
        reply: Sender<Option<CartView>>,
    },
    Holds {
        reply: Sender<Vec<(CompactString, i64)>>,
    },
    Stats {
        reply: Sender<ShardStats>,
    },
}

/// One completed global window as served live.
#[derive(Clone, Debug, Serialize)]
pub struct GlobalWindowView {
    pub window_start: i64,
    pub window_end: i64,
    #[serde(flatten)]
    pub agg: GlobalAgg,
    #[serde(flatten)]
    pub gauges: Gauges,
}

/// Figures the committer publishes as it merges.
#[derive(Debug, Default)]
pub struct LiveState {
    pub inner: Mutex<LiveInner>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LiveInner {
    /// Recent completed global windows, oldest first (bounded).
    pub recent_windows: std::collections::VecDeque<GlobalWindowView>,
    pub watermark: i64,
    /// Carts now, summed over shards as of their latest report.
    pub gauges: Gauges,
    pub last_checkpoint: Option<u64>,
    pub last_checkpoint_ms: Option<i64>,
    pub last_checkpoint_duration_ms: Option<f64>,
    pub last_checkpoint_bytes: Option<u64>,
    /// Latest abandoned-cart records (marketing triggers), newest last (bounded).
    pub recent_abandoned: std::collections::VecDeque<serde_json::Value>,
    pub finished: bool,
    /// State restored and the source opened; false again once stopping.
    pub ready: bool,
}

pub const RECENT_WINDOWS: usize = 360;
pub const RECENT_ABANDONED: usize = 50;
