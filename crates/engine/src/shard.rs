//! A shard: one thread owning the state of a contiguous range of key groups.
//!
//! Shards see every chunk in source order (empty sub-batches included), so all shards move
//! their watermark at the same chunk and the results do not depend on the shard count.
//! Within a chunk, each event is judged against the watermark *as of that event* — the
//! largest event time before it in source order, minus the out-of-orderness bound — which
//! makes lateness a pure function of the input order, independent of how the input was cut
//! into chunks and of when a checkpoint was taken.

use crate::committer::ToCommitter;
use crate::config::{ms, PipelineConfig};
use crate::live::{CartView, Query};
use crate::metrics::Metrics;
use crate::output::{self, Records, Stream};
use crate::state::{
    CartLine, Gauges, GlobalAgg, GlobalEntry, KeyGroupState, UserAgg, UserState, UserWindow,
    WindowEntry,
};
use crate::window::WindowSpec;
use cartpulse_model::{Action, CartEvent, DeadLetter, Money};
use compact_str::CompactString;
use crossbeam_channel::{Receiver, Sender};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// One event routed to a shard.
pub(crate) struct Routed {
    pub kg: u32,
    /// Hash of the event id, computed on the decoder threads.
    pub id_hash: u64,
    /// Hash of the user id (exact distinct counts when global windows differ from user windows).
    pub user_hash: u64,
    /// Largest event time before this event within its chunk (`i64::MIN` if none).
    pub max_before: i64,
    pub ev: CartEvent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkEnd {
    /// More input follows.
    No,
    /// Input is exhausted: fire every window and timer.
    Flush,
    /// Graceful stop: checkpoint the state as it is, fire nothing.
    Stop,
}

/// A shard's share of one source chunk.
pub(crate) struct SubBatch {
    pub seq: u64,
    pub events: Vec<Routed>,
    pub dead: Vec<DeadLetter>,
    /// Largest event time in the whole chunk (every shard gets it).
    pub chunk_max: i64,
    pub barrier: Option<u64>,
    pub end: ChunkEnd,
    pub read_at: Instant,
}

/// Settings a shard needs, in milliseconds.
#[derive(Clone, Debug)]
pub(crate) struct ShardSettings {
    pub bound: i64,
    pub lateness: i64,
    pub horizon: i64,
    pub abandon_after: i64,
    pub user_window: WindowSpec,
    pub global_window: WindowSpec,
    pub key_groups: u32,
    /// Global windows are the user windows (the default): a user is new to a global window
    /// exactly when its user window is created, so no separate bookkeeping is needed.
    pub same_windows: bool,
    /// Whether barriers carry state (only when a checkpoint store exists).
    pub snapshots: bool,
    pub track_latency: bool,
}

impl ShardSettings {
    pub fn from_config(c: &PipelineConfig) -> Self {
        ShardSettings {
            bound: ms(c.out_of_orderness),
            lateness: ms(c.allowed_lateness),
            horizon: ms(c.dedup_horizon),
            abandon_after: ms(c.abandon_after),
            user_window: c.user_window.clone(),
            global_window: c.global_window.clone(),
            key_groups: c.key_groups,
            same_windows: c.user_window == c.global_window && !c.user_window.is_session(),
            snapshots: c.checkpoint.dir.is_some(),
            track_latency: c.track_event_latency,
        }
    }
}

#[derive(Default)]
struct LocalCounts {
    duplicates: u64,
    late: u64,
    missing_price: u64,
    missing_line: u64,
}

pub(crate) struct Shard {
    id: usize,
    set: ShardSettings,
    first_group: u32,
    groups: Vec<KeyGroupState>,
    source_max: i64,
    wm: i64,
    gauges: Gauges,
    out: Records,
    counts: LocalCounts,
    /// Window entries changed by late events since the last fire pass:
    /// (key group, window end, window start, user); end `i64::MIN` means a session window.
    dirty: Vec<(u32, i64, i64, CompactString)>,
    scratch: Vec<(i64, i64)>,
    fresh: Vec<bool>,
    partials: BTreeMap<(i64, i64), GlobalAgg>,
    tx: Sender<ToCommitter>,
    metrics: Arc<Metrics>,
}

impl Shard {
    pub fn new(
        id: usize,
        set: ShardSettings,
        first_group: u32,
        groups: Vec<KeyGroupState>,
        source_max: i64,
        tx: Sender<ToCommitter>,
        metrics: Arc<Metrics>,
    ) -> Shard {
        let mut gauges = Gauges::default();
        let mut groups = groups;
        for g in &mut groups {
            g.rebuild_timers(set.lateness);
            gauges.add(&g.gauges());
        }
        Shard {
            id,
            wm: source_max.saturating_sub(set.bound),
            set,
            first_group,
            groups,
            source_max,
            gauges,
            out: Records::default(),
            counts: LocalCounts::default(),
            dirty: Vec::new(),
            scratch: Vec::new(),
            fresh: Vec::new(),
            partials: BTreeMap::new(),
            tx,
            metrics,
        }
    }

    /// The shard's loop: sub-batches strictly in chunk order (chunk `seq` comes from decoder
    /// `seq % P`), queries in between.
    pub fn run(mut self, inputs: Vec<Receiver<SubBatch>>, queries: Receiver<Query>) {
        let p = inputs.len() as u64;
        let mut seq = 0u64;
        loop {
            let input = &inputs[(seq % p) as usize];
            crossbeam_channel::select! {
                recv(input) -> msg => {
                    let Ok(sub) = msg else { return };
                    debug_assert_eq!(sub.seq, seq);
                    seq += 1;
                    let end = sub.end;
                    if let Err(e) = self.process(sub) {
                        let _ = self.tx.send(ToCommitter::Failed(format!("shard {}: {e}", self.id)));
                        return;
                    }
                    if end != ChunkEnd::No {
                        let _ = self.tx.send(ToCommitter::Done);
                        return;
                    }
                }
                recv(queries) -> q => {
                    if let Ok(q) = q { self.answer(q) }
                }
            }
        }
    }

    fn process(&mut self, sub: SubBatch) -> Result<(), String> {
        // Dedup first, for the whole batch: the probes are independent, so the CPU overlaps
        // their cache misses instead of taking them one event at a time. Decisions are the
        // same as inline, since they depend only on the order of ids.
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.clear();
        for r in &sub.events {
            let st = &mut self.groups[(r.kg - self.first_group) as usize];
            fresh.push(st.dedup.insert(r.id_hash, r.ev.ts));
        }
        for (r, &new) in sub.events.iter().zip(&fresh) {
            if new {
                self.event(r);
            } else {
                self.counts.duplicates += 1;
            }
        }
        self.fresh = fresh;
        if self.set.track_latency && !sub.events.is_empty() {
            self.record_latency(&sub.events);
        }
        for d in &sub.dead {
            let buf = self.out.begin(Stream::DeadLetter);
            d.write_json(buf);
            buf.push(b'\n');
        }
        self.source_max = self.source_max.max(sub.chunk_max);
        match sub.end {
            ChunkEnd::Flush => self.advance(i64::MAX),
            ChunkEnd::Stop => {}
            ChunkEnd::No => self.advance(self.source_max.saturating_sub(self.set.bound)),
        }
        self.flush_counts();
        if !self.out.is_empty() {
            let recs = std::mem::take(&mut self.out);
            self.send(ToCommitter::Records {
                shard: self.id,
                records: recs,
            })?;
        }
        self.metrics
            .processing_latency
            .observe(sub.read_at.elapsed().as_secs_f64());
        if let Some(id) = sub.barrier {
            let groups = if !self.set.snapshots {
                Vec::new()
            } else {
                self.groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        postcard::to_stdvec(g)
                            .map(|b| (self.first_group + i as u32, b))
                            .map_err(|e| format!("snapshot encoding: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
            self.send(ToCommitter::Snapshot {
                shard: self.id,
                checkpoint: id,
                source_max: self.source_max,
                groups,
            })?;
        }
        Ok(())
    }

    fn record_latency(&self, events: &[Routed]) {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut h = self.metrics.event_latency_us.lock().expect("latency lock");
        for r in events {
            let _ = h.record((now_us - r.ev.ts * 1000).max(1) as u64);
        }
    }

    fn send(&self, m: ToCommitter) -> Result<(), String> {
        self.tx.send(m).map_err(|_| "committer is gone".to_string())
    }

    fn flush_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        if c.duplicates > 0 {
            self.metrics.duplicates.inc_by(c.duplicates);
        }
        if c.late > 0 {
            self.metrics.late_events.inc_by(c.late);
        }
        if c.missing_price > 0 {
            self.metrics
                .missing_values
                .with_label_values(&["price"])
                .inc_by(c.missing_price);
        }
        if c.missing_line > 0 {
            self.metrics
                .missing_values
                .with_label_values(&["cart_line"])
                .inc_by(c.missing_line);
        }
    }

    fn event(&mut self, r: &Routed) {
        let set = &self.set;
        let wm_e = self.source_max.max(r.max_before).saturating_sub(set.bound);
        let ev = &r.ev;
        let kg = r.kg;
        let gi = (kg - self.first_group) as usize;
        let st = &mut self.groups[gi];
        let KeyGroupState {
            users,
            windows,
            sessions,
            global,
            holds,
            timers,
            ..
        } = st;
        // only actions that can put something in a cart create cart state
        let user = match users.get_mut(ev.user_id.as_str()) {
            Some(u) => Some(u),
            None if matches!(ev.action, Action::Add | Action::UpdateQty) => {
                Some(users.entry(ev.user_id.clone()).or_default())
            }
            None => None,
        };

        // what the event contributes, judged on the event's own fields
        let line_idx = match (&user, &ev.sku) {
            (Some(u), Some(sku)) => u.lines.iter().position(|l| l.sku == *sku),
            _ => None,
        };
        let line = |u: &Option<&mut UserState>| {
            line_idx.and_then(|i| u.as_ref().map(|u| u.lines[i].clone()))
        };
        let line_now = line(&user);
        let price = match (ev.price, &line_now) {
            (Some(p), _) => p,
            (None, Some(l)) => l.price,
            (None, None) => {
                if matches!(ev.action, Action::Add | Action::Remove | Action::UpdateQty) {
                    self.counts.missing_price += 1;
                }
                Money::ZERO
            }
        };
        let mut delta = UserAgg {
            events: 1,
            ..Default::default()
        };
        match ev.action {
            Action::View => delta.views = 1,
            Action::Add => {
                delta.adds = 1;
                let q = i64::from(ev.qty.unwrap_or(0));
                delta.qty_added = q;
                delta.value_added = Money(price.0 * q);
            }
            Action::Remove => {
                delta.removes = 1;
                let q = i64::from(
                    ev.qty
                        .unwrap_or_else(|| line_now.as_ref().map_or(0, |l| l.qty)),
                );
                delta.qty_removed = q;
                delta.value_removed = Money(price.0 * q);
            }
            Action::UpdateQty => delta.update_qtys = 1,
            Action::Checkout => delta.checkouts = 1,
        }

        let late = is_late(&set.user_window, ev.ts, set.lateness, wm_e);
        if late {
            self.counts.late += 1;
            output::late_event(self.out.begin(Stream::LateEvents), ev, wm_e);
        } else {
            let mut created: smallvec::SmallVec<[(i64, i64); 2]> = smallvec::SmallVec::new();
            if let WindowSpec::Session { gap } = set.user_window {
                let ws = match sessions.get_mut(ev.user_id.as_str()) {
                    Some(w) => w,
                    None => sessions.entry(ev.user_id.clone()).or_default(),
                };
                let mut w = UserWindow {
                    start: ev.ts,
                    end: ev.ts + gap.as_millis() as i64,
                    agg: delta.clone(),
                    fired: false,
                    dirty: false,
                };
                while let Some(i) = ws.iter().position(|o| o.start < w.end && w.start < o.end) {
                    let o = ws.swap_remove(i);
                    w.start = w.start.min(o.start);
                    w.end = w.end.max(o.end);
                    w.agg.merge(&o.agg);
                    w.fired |= o.fired;
                }
                if w.fired {
                    w.dirty = true;
                    self.dirty
                        .push((kg, i64::MIN, i64::MIN, ev.user_id.clone()));
                }
                timers.entry(w.end).or_default().push(ev.user_id.clone());
                if set.lateness > 0 {
                    timers
                        .entry(w.end + set.lateness)
                        .or_default()
                        .push(ev.user_id.clone());
                }
                ws.push(w);
            } else {
                self.scratch.clear();
                let scratch = &mut self.scratch;
                set.user_window.assign(ev.ts, |s, e| scratch.push((s, e)));
                for &(s, e) in self.scratch.iter() {
                    if e + set.lateness <= wm_e {
                        continue;
                    }
                    let b = windows.entry((e, s)).or_default();
                    let fired = b.fired;
                    match b.users.get_mut(ev.user_id.as_str()) {
                        Some(w) => {
                            w.agg.merge(&delta);
                            if fired && !w.dirty {
                                w.dirty = true;
                                self.dirty.push((kg, e, s, ev.user_id.clone()));
                            }
                        }
                        None => {
                            created.push((s, e));
                            b.users.insert(
                                ev.user_id.clone(),
                                WindowEntry {
                                    agg: delta.clone(),
                                    emitted: false,
                                    dirty: fired,
                                },
                            );
                            if fired {
                                self.dirty.push((kg, e, s, ev.user_id.clone()));
                            }
                        }
                    }
                }
            }
            // global windows: this group's partial
            if !set.same_windows {
                self.scratch.clear();
                let scratch = &mut self.scratch;
                set.global_window.assign(ev.ts, |s, e| scratch.push((s, e)));
            }
            let checkout_value = match (&user, ev.action) {
                (Some(u), Action::Checkout) => u.value(),
                _ => Money::ZERO,
            };
            for &(s, e) in self.scratch.iter() {
                if e + set.lateness <= wm_e {
                    continue;
                }
                let g = global.entry(s).or_insert_with(|| GlobalEntry {
                    end: e,
                    ..Default::default()
                });
                let new_user = if set.same_windows {
                    created.contains(&(s, e))
                } else {
                    g.users.insert(r.user_hash)
                };
                let g = &mut g.agg;
                g.events += 1;
                g.distinct_users += u64::from(new_user);
                g.views += u64::from(delta.views);
                g.adds += u64::from(delta.adds);
                g.removes += u64::from(delta.removes);
                g.update_qtys += u64::from(delta.update_qtys);
                g.checkouts += u64::from(delta.checkouts);
                g.qty_added += delta.qty_added;
                g.qty_removed += delta.qty_removed;
                g.value_added += delta.value_added;
                g.value_removed += delta.value_removed;
                g.checkout_value += checkout_value;
            }
        }

        // cart state follows every event, late or not: a late add is still in the cart
        let Some(user) = user else {
            if ev.action == Action::Remove {
                self.counts.missing_line += 1;
            }
            return;
        };
        if !user.lines.is_empty() {
            self.gauges.active_carts -= 1;
            self.gauges.items_in_carts -= user.items() as i64;
            self.gauges.value_in_carts -= user.value();
        }
        let mut hold = |sku: &CompactString, d: i64| {
            if d != 0 {
                let h = holds.entry_ref(sku.as_str()).or_insert(0);
                *h += d;
                if *h == 0 {
                    holds.remove(sku.as_str());
                }
            }
        };
        match ev.action {
            Action::View => {}
            Action::Add => {
                let q = ev.qty.unwrap_or(0);
                let sku = ev.sku.as_ref().expect("decoder guarantees sku");
                match line_idx {
                    Some(i) => {
                        let l = &mut user.lines[i];
                        l.qty = l.qty.saturating_add(q);
                        l.price = price;
                    }
                    None if q > 0 => user.lines.push(CartLine {
                        sku: sku.clone(),
                        qty: q,
                        price,
                    }),
                    None => {}
                }
                hold(sku, i64::from(q));
            }
            Action::Remove => {
                let sku = ev.sku.as_ref().expect("decoder guarantees sku");
                match line_idx {
                    Some(i) => {
                        let l = &mut user.lines[i];
                        let q = ev.qty.unwrap_or(l.qty).min(l.qty);
                        l.qty -= q;
                        hold(sku, -i64::from(q));
                        if l.qty == 0 {
                            user.lines.swap_remove(i);
                        }
                    }
                    None => self.counts.missing_line += 1,
                }
            }
            Action::UpdateQty => {
                let q = ev.qty.unwrap_or(0);
                let sku = ev.sku.as_ref().expect("decoder guarantees sku");
                match line_idx {
                    Some(i) => {
                        let old = user.lines[i].qty;
                        hold(sku, i64::from(q) - i64::from(old));
                        if q == 0 {
                            user.lines.swap_remove(i);
                        } else {
                            user.lines[i].qty = q;
                            user.lines[i].price = price;
                        }
                    }
                    None if q > 0 => {
                        hold(sku, i64::from(q));
                        user.lines.push(CartLine {
                            sku: sku.clone(),
                            qty: q,
                            price,
                        });
                    }
                    None => {}
                }
            }
            Action::Checkout => {
                for l in user.lines.drain(..) {
                    hold(&l.sku, -i64::from(l.qty));
                }
                user.orders += 1;
            }
        }
        if !user.lines.is_empty() {
            self.gauges.active_carts += 1;
            self.gauges.items_in_carts += user.items() as i64;
            self.gauges.value_in_carts += user.value();
        }
        user.last_ts = user.last_ts.max(ev.ts);
        if ev.session_id.is_some() && user.session_id != ev.session_id {
            user.session_id.clone_from(&ev.session_id);
        }
        if user.lines.is_empty() {
            user.abandon_at = None;
            users.remove(ev.user_id.as_str());
        } else {
            let at = user.last_ts.saturating_add(set.abandon_after);
            if user.abandon_timer.is_none() {
                user.abandon_timer = Some(at);
                timers.entry(at).or_default().push(ev.user_id.clone());
            }
            user.abandon_at = Some(at);
        }
    }

    /// Moves the watermark: fires windows and timers (sessions, abandoned carts), closes
    /// global windows, expires dedup entries, and reports to the committer.
    fn advance(&mut self, wm: i64) {
        if wm < self.wm {
            return;
        }
        let moved = wm > self.wm;
        self.wm = wm;
        let set = &self.set;
        for st in self.groups.iter_mut() {
            st.dedup.expire(wm, set.horizon);
            let mut closed = Vec::new();
            for (&(e, s), b) in st.windows.range_mut(..=(wm, i64::MAX)) {
                if !b.fired {
                    for (u, w) in b.users.iter_mut() {
                        output::user_window(
                            self.out.begin(Stream::UserWindows),
                            u,
                            s,
                            e,
                            &w.agg,
                            false,
                        );
                        w.emitted = true;
                        w.dirty = false;
                    }
                    b.fired = true;
                }
                if e.saturating_add(set.lateness) <= wm {
                    closed.push((e, s));
                }
            }
            for k in closed {
                st.windows.remove(&k);
            }
            while let Some(entry) = st.timers.first_entry() {
                if *entry.key() > wm {
                    break;
                }
                for u in entry.remove() {
                    fire_user(st, &u, wm, set, &mut self.out);
                }
            }
            while let Some((_, g)) = st.global.first_key_value() {
                if g.end.saturating_add(set.lateness) > wm {
                    break;
                }
                let (start, g) = st.global.pop_first().expect("non-empty");
                self.partials
                    .entry((start, g.end))
                    .or_default()
                    .merge(&g.agg);
            }
        }
        for (kg, e, s, u) in std::mem::take(&mut self.dirty) {
            let st = &mut self.groups[(kg - self.first_group) as usize];
            if e == i64::MIN {
                fire_user(st, &u, wm, set, &mut self.out);
            } else if let Some(w) = st
                .windows
                .get_mut(&(e, s))
                .and_then(|b| b.users.get_mut(u.as_str()))
            {
                if w.dirty && e <= wm {
                    output::user_window(
                        self.out.begin(Stream::UserWindows),
                        &u,
                        s,
                        e,
                        &w.agg,
                        w.emitted,
                    );
                    w.emitted = true;
                    w.dirty = false;
                }
            }
        }
        if !self.out.is_empty() {
            // window records must precede the global partials of the same pass in the epoch
            let recs = std::mem::take(&mut self.out);
            let _ = self.tx.send(ToCommitter::Records {
                shard: self.id,
                records: recs,
            });
        }
        for ((start, end), agg) in std::mem::take(&mut self.partials) {
            let _ = self.tx.send(ToCommitter::Partial { start, end, agg });
        }
        if moved {
            let _ = self.tx.send(ToCommitter::Watermark {
                shard: self.id,
                wm,
                gauges: self.gauges,
            });
        }
    }

    fn answer(&self, q: Query) {
        match q {
            Query::Cart { user, reply } => {
                let kg = cartpulse_model::keys::key_group(
                    cartpulse_model::keys::key_hash(user.as_bytes()),
                    self.set.key_groups,
                );
                let view = kg
                    .checked_sub(self.first_group)
                    .and_then(|i| self.groups.get(i as usize))
                    .and_then(|g| g.users.get(user.as_str()))
                    .map(|u| CartView {
                        user_id: user.clone(),
                        lines: u.lines.to_vec(),
                        items: u.items(),
                        value: u.value(),
                        last_activity: u.last_ts,
                        abandon_at: u.abandon_at,
                        session_id: u.session_id.as_ref().map(|s| s.to_string()),
                        orders: u.orders,
                    });
                let _ = reply.send(view);
            }
            Query::Holds { reply } => {
                let mut m: hashbrown::HashMap<CompactString, i64> = hashbrown::HashMap::new();
                for g in &self.groups {
                    for (k, v) in &g.holds {
                        *m.entry(k.clone()).or_insert(0) += v;
                    }
                }
                let _ = reply.send(m.into_iter().collect());
            }
            Query::Stats { reply } => {
                let users: usize = self.groups.iter().map(|g| g.users.len()).sum();
                let dedup: usize = self.groups.iter().map(|g| g.dedup.len()).sum();
                let lines: usize = self
                    .groups
                    .iter()
                    .flat_map(|g| g.users.values())
                    .map(|u| u.lines.len())
                    .sum();
                let (cart_state_bytes, other_state_bytes) = self
                    .groups
                    .iter()
                    .map(|g| g.approx_bytes())
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                let _ = reply.send(crate::live::ShardStats {
                    cart_state_bytes,
                    other_state_bytes,
                    users,
                    dedup_entries: dedup,
                    cart_lines: lines,
                    gauges: self.gauges,
                    watermark: self.wm,
                });
            }
        }
    }
}

/// Whether an event at `ts` is late for every user window it belongs to.
fn is_late(spec: &WindowSpec, ts: i64, lateness: i64, wm: i64) -> bool {
    let last_end = match *spec {
        WindowSpec::Tumbling { size } => {
            let size = size.as_millis() as i64;
            ts - ts.rem_euclid(size) + size
        }
        WindowSpec::Sliding { size, slide } => {
            ts - ts.rem_euclid(slide.as_millis() as i64) + size.as_millis() as i64
        }
        WindowSpec::Session { gap } => ts + gap.as_millis() as i64,
    };
    last_end.saturating_add(lateness) <= wm
}

/// Session windows and the abandonment timer of one user.
fn fire_user(
    st: &mut KeyGroupState,
    user: &CompactString,
    wm: i64,
    set: &ShardSettings,
    out: &mut Records,
) {
    if let Some(ws) = st.sessions.get_mut(user.as_str()) {
        for w in ws.iter_mut() {
            if w.end <= wm && (!w.fired || w.dirty) {
                output::user_window(
                    out.begin(Stream::UserWindows),
                    user,
                    w.start,
                    w.end,
                    &w.agg,
                    w.fired,
                );
                w.fired = true;
                w.dirty = false;
            }
        }
        let lateness = set.lateness;
        ws.retain(|w| w.end.saturating_add(lateness) > wm);
        if ws.is_empty() {
            st.sessions.remove(user.as_str());
        }
    }
    let Some(u) = st.users.get_mut(user.as_str()) else {
        return;
    };
    if u.abandon_timer.is_some_and(|t| t <= wm) {
        u.abandon_timer = None;
    }
    match u.abandon_at {
        Some(at) if at <= wm => {
            output::abandoned(
                out.begin(Stream::AbandonedCarts),
                user,
                u.session_id.as_deref(),
                u.last_ts,
                at,
                &u.lines,
                u.items(),
                u.value(),
            );
            u.abandon_at = None;
        }
        // the deadline moved on since the timer was set: follow it
        Some(at) if u.abandon_timer.is_none() => {
            u.abandon_timer = Some(at);
            st.timers.entry(at).or_default().push(user.clone());
        }
        _ => {}
    }
}
