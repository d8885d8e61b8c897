//! Keyed state, organised by key group so a snapshot restores onto any shard count.

use crate::dedup::Dedup;
use cartpulse_model::Money;
use compact_str::CompactString;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CartLine {
    pub sku: CompactString,
    pub qty: u32,
    /// Last unit price seen for this line.
    pub price: Money,
}

/// Per-window, per-user aggregate.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserAgg {
    pub events: u64,
    pub views: u64,
    pub adds: u64,
    pub removes: u64,
    pub update_qtys: u64,
    pub checkouts: u64,
    pub qty_added: i64,
    pub qty_removed: i64,
    pub value_added: Money,
    pub value_removed: Money,
}

impl UserAgg {
    pub fn merge(&mut self, o: &UserAgg) {
        self.events += o.events;
        self.views += o.views;
        self.adds += o.adds;
        self.removes += o.removes;
        self.update_qtys += o.update_qtys;
        self.checkouts += o.checkouts;
        self.qty_added += o.qty_added;
        self.qty_removed += o.qty_removed;
        self.value_added += o.value_added;
        self.value_removed += o.value_removed;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserWindow {
    pub start: i64,
    pub end: i64,
    pub agg: UserAgg,
    /// Emitted at least once; a later change is re-emitted as an update.
    pub fired: bool,
    pub dirty: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserState {
    pub lines: Vec<CartLine>,
    /// Latest event time seen for this user.
    pub last_ts: i64,
    pub session_id: Option<CompactString>,
    /// Event time at which the cart counts as abandoned, while it is non-empty.
    pub abandon_at: Option<i64>,
    /// Time of the pending abandonment timer; at most one per user, however many events.
    pub abandon_timer: Option<i64>,
    pub windows: Vec<UserWindow>,
    /// Global windows `(start, end)` this user is already counted in (distinct users).
    pub global_counted: Vec<(i64, i64)>,
    pub orders: u32,
}

impl UserState {
    pub fn items(&self) -> u64 {
        self.lines.iter().map(|l| u64::from(l.qty)).sum()
    }

    pub fn value(&self) -> Money {
        Money(self.lines.iter().map(|l| l.price.0 * i64::from(l.qty)).sum())
    }

    /// Nothing left worth keeping: the entry can be dropped to bound memory.
    pub fn is_idle(&self) -> bool {
        self.lines.is_empty() && self.windows.is_empty() && self.global_counted.is_empty()
    }
}

/// A key group's share of one global window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GlobalAgg {
    pub events: u64,
    pub distinct_users: u64,
    pub views: u64,
    pub adds: u64,
    pub removes: u64,
    pub update_qtys: u64,
    pub checkouts: u64,
    pub qty_added: i64,
    pub qty_removed: i64,
    pub value_added: Money,
    pub value_removed: Money,
    pub checkout_value: Money,
}

impl GlobalAgg {
    pub fn merge(&mut self, o: &GlobalAgg) {
        self.events += o.events;
        self.distinct_users += o.distinct_users;
        self.views += o.views;
        self.adds += o.adds;
        self.removes += o.removes;
        self.update_qtys += o.update_qtys;
        self.checkouts += o.checkouts;
        self.qty_added += o.qty_added;
        self.qty_removed += o.qty_removed;
        self.value_added += o.value_added;
        self.value_removed += o.value_removed;
        self.checkout_value += o.checkout_value;
    }
}

/// Carts-now figures, summed over a shard and then over shards.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Gauges {
    pub active_carts: i64,
    pub items_in_carts: i64,
    pub value_in_carts: Money,
}

impl Gauges {
    pub fn add(&mut self, o: &Gauges) {
        self.active_carts += o.active_carts;
        self.items_in_carts += o.items_in_carts;
        self.value_in_carts += o.value_in_carts;
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyGroupState {
    pub users: HashMap<CompactString, UserState>,
    pub dedup: Dedup,
    /// Global window start → (end, this group's partial).
    pub global: BTreeMap<i64, (i64, GlobalAgg)>,
    /// Quantity of each product held in this group's carts.
    pub holds: HashMap<CompactString, i64>,
    /// Event-time timers: fire time → users to look at. Derived from `users`, so it is not
    /// snapshotted but rebuilt on restore.
    #[serde(skip)]
    pub timers: BTreeMap<i64, Vec<CompactString>>,
}

impl KeyGroupState {
    pub fn add_timer(&mut self, at: i64, user: &CompactString) {
        self.timers.entry(at).or_default().push(user.clone());
    }

    /// Recreates the timers a restored group needs.
    pub fn rebuild_timers(&mut self, lateness: i64, global_lateness: i64) {
        let mut timers: BTreeMap<i64, Vec<CompactString>> = BTreeMap::new();
        for (u, st) in self.users.iter_mut() {
            for w in &st.windows {
                timers.entry(w.end).or_default().push(u.clone());
                if lateness > 0 {
                    timers.entry(w.end + lateness).or_default().push(u.clone());
                }
            }
            st.abandon_timer = st.abandon_at;
            if let Some(t) = st.abandon_at {
                timers.entry(t).or_default().push(u.clone());
            }
            for &(_, end) in &st.global_counted {
                timers.entry(end + global_lateness).or_default().push(u.clone());
            }
        }
        self.timers = timers;
    }

    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges::default();
        for st in self.users.values() {
            if !st.lines.is_empty() {
                g.active_carts += 1;
                g.items_in_carts += st.items() as i64;
                g.value_in_carts += st.value();
            }
        }
        g
    }
}
