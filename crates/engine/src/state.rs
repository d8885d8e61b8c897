//! Keyed state, organised by key group so a snapshot restores onto any shard count.

use crate::dedup::Dedup;
use cartpulse_model::Money;
use compact_str::CompactString;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
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
    pub events: u32,
    pub views: u32,
    pub adds: u32,
    pub removes: u32,
    pub update_qtys: u32,
    pub checkouts: u32,
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
}

/// A user's cart. Only users with something in their cart (or an abandonment pending) have
/// an entry, so browsing-only users cost no cart state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserState {
    /// Inline: most carts hold a line or two, and keeping them inside the hash-table slot
    /// saves a cache miss per event.
    pub lines: SmallVec<[CartLine; 2]>,
    /// Latest event time seen for this user.
    pub last_ts: i64,
    pub session_id: Option<CompactString>,
    /// Event time at which the cart counts as abandoned, while it is non-empty.
    pub abandon_at: Option<i64>,
    /// Time of the pending abandonment timer; at most one per user, however many events.
    pub abandon_timer: Option<i64>,
    pub orders: u32,
}

impl UserState {
    pub fn items(&self) -> u64 {
        self.lines.iter().map(|l| u64::from(l.qty)).sum()
    }

    pub fn value(&self) -> Money {
        Money(
            self.lines
                .iter()
                .map(|l| l.price.0 * i64::from(l.qty))
                .sum(),
        )
    }

    /// Nothing left worth keeping: the entry can be dropped to bound memory.
    pub fn is_idle(&self) -> bool {
        self.lines.is_empty() && self.abandon_at.is_none()
    }
}

/// One user's aggregate in one fixed window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowEntry {
    pub agg: UserAgg,
    /// Latest event time of this user in the window: a cart created by an out-of-order
    /// add still knows the user was active later.
    pub last_ts: i64,
}

/// All users' aggregates of one fixed (tumbling or sliding) window in one key group.
///
/// Windows are kept by window, not by user (as Flink keeps `(key, window)` state), so
/// firing a window is one sequential pass over its bucket instead of a random lookup per
/// user, and no per-user timer is needed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowBucket {
    pub users: HashMap<CompactString, WindowEntry>,
    pub fired: bool,
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
    /// Adds one event's contribution, as measured for its user window.
    pub fn add_event(&mut self, d: &UserAgg, new_user: bool, checkout_value: Money) {
        self.events += u64::from(d.events);
        self.distinct_users += u64::from(new_user);
        self.views += u64::from(d.views);
        self.adds += u64::from(d.adds);
        self.removes += u64::from(d.removes);
        self.update_qtys += u64::from(d.update_qtys);
        self.checkouts += u64::from(d.checkouts);
        self.qty_added += d.qty_added;
        self.qty_removed += d.qty_removed;
        self.value_added += d.value_added;
        self.value_removed += d.value_removed;
        self.checkout_value += checkout_value;
    }

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

/// A key group's share of one global window. `users` holds the user hashes seen, for an
/// exact distinct count, only when global windows differ from the user windows (otherwise
/// a user is new to a global window exactly when its user window entry is created).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GlobalEntry {
    pub end: i64,
    pub agg: GlobalAgg,
    pub users: hashbrown::HashSet<u64, std::hash::BuildHasherDefault<crate::dedup::IdHasher>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyGroupState {
    /// Carts by user.
    pub users: HashMap<CompactString, UserState>,
    pub dedup: Dedup,
    /// Fixed user windows: (end, start) → bucket.
    pub windows: BTreeMap<(i64, i64), WindowBucket>,
    /// Session windows by user (session user windows only).
    pub sessions: HashMap<CompactString, SmallVec<[UserWindow; 1]>>,
    /// Global window start → this group's partial.
    pub global: BTreeMap<i64, GlobalEntry>,
    /// Quantity of each product held in this group's carts.
    pub holds: HashMap<CompactString, i64>,
    /// Size of the last window bucket closed: the capacity for the next one.
    #[serde(skip)]
    pub bucket_hint: usize,
    /// Event-time timers (abandoned carts, session windows): fire time → users to look at.
    /// Derived from `users` and `sessions`, so not snapshotted but rebuilt on restore.
    #[serde(skip)]
    pub timers: BTreeMap<i64, Vec<CompactString>>,
}

impl KeyGroupState {
    /// Recreates the timers a restored group needs.
    pub fn rebuild_timers(&mut self, lateness: i64) {
        let mut timers: BTreeMap<i64, Vec<CompactString>> = BTreeMap::new();
        for (u, ws) in &self.sessions {
            for w in ws {
                timers.entry(w.end).or_default().push(u.clone());
                if lateness > 0 {
                    timers.entry(w.end + lateness).or_default().push(u.clone());
                }
            }
        }
        for (u, st) in self.users.iter_mut() {
            st.abandon_timer = st.abandon_at;
            if let Some(t) = st.abandon_at {
                timers.entry(t).or_default().push(u.clone());
            }
        }
        self.timers = timers;
    }

    /// Heap bytes held, estimated from table capacities and entry sizes: (cart state,
    /// everything else). Allocator overhead is not included.
    pub fn approx_bytes(&self) -> (usize, usize) {
        use std::mem::size_of;
        let carts = self.users.capacity() * (size_of::<(CompactString, UserState)>() + 1)
            + self
                .users
                .values()
                .filter(|u| u.lines.spilled())
                .map(|u| u.lines.capacity() * size_of::<CartLine>())
                .sum::<usize>();
        let windows: usize = self
            .windows
            .values()
            .map(|b| b.users.capacity() * (size_of::<(CompactString, WindowEntry)>() + 1) + 64)
            .sum();
        let other = windows
            + self.dedup.approx_bytes()
            + self.holds.capacity() * (size_of::<(CompactString, i64)>() + 1)
            + self.global.len() * size_of::<GlobalEntry>();
        (carts, other)
    }

    /// Earliest event time at which something in this group is due: a window to fire or
    /// close, a timer, a global window to hand over.
    pub fn next_due(&self, lateness: i64) -> Option<i64> {
        let bucket = self
            .windows
            .iter()
            .map(|(&(e, _), b)| {
                if b.fired {
                    e.saturating_add(lateness)
                } else {
                    e
                }
            })
            .min();
        let timer = self.timers.first_key_value().map(|(&t, _)| t);
        let global = self
            .global
            .first_key_value()
            .map(|(_, g)| g.end.saturating_add(lateness));
        [bucket, timer, global].into_iter().flatten().min()
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
