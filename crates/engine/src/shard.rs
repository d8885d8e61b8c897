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
use crate::state::{CartLine, Gauges, GlobalAgg, KeyGroupState, UserAgg, UserWindow};
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
    /// Users whose fired windows changed (late updates) since the last fire pass.
    dirty: Vec<(u32, CompactString)>,
    scratch: Vec<(i64, i64)>,
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
            g.rebuild_timers(set.lateness, set.lateness);
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
        for r in sub.events {
            self.event(r);
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
            self.send(ToCommitter::Records { shard: self.id, records: recs })?;
        }
        self.metrics
            .processing_latency
            .observe(sub.read_at.elapsed().as_secs_f64());
        if let Some(id) = sub.barrier {
            let groups = self
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    postcard::to_stdvec(g)
                        .map(|b| (self.first_group + i as u32, b))
                        .map_err(|e| format!("snapshot encoding: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.send(ToCommitter::Snapshot {
                shard: self.id,
                checkpoint: id,
                source_max: self.source_max,
                groups,
            })?;
        }
        Ok(())
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
            self.metrics.missing_values.with_label_values(&["price"]).inc_by(c.missing_price);
        }
        if c.missing_line > 0 {
            self.metrics.missing_values.with_label_values(&["cart_line"]).inc_by(c.missing_line);
        }
    }

    fn event(&mut self, r: Routed) {
        let set = &self.set;
        let wm_e = self.source_max.max(r.max_before).saturating_sub(set.bound);
        let ev = r.ev;
        let gi = (r.kg - self.first_group) as usize;
        let st = &mut self.groups[gi];
        let id_hash = xxhash_rust::xxh3::xxh3_64(ev.event_id.as_bytes());
        if !st.dedup.insert(id_hash, ev.ts) {
            self.counts.duplicates += 1;
            return;
        }
        let KeyGroupState {
            users,
            global,
            holds,
            timers,
            ..
        } = st;
        let user = match users.get_mut(ev.user_id.as_str()) {
            Some(u) => u,
            None => users.entry(ev.user_id.clone()).or_default(),
        };

        // what the event contributes, judged on the event's own fields
        let line_idx = ev
            .sku
            .as_ref()
            .and_then(|s| user.lines.iter().position(|l| l.sku == *s));
        let line_price = line_idx.map(|i| user.lines[i].price);
        let price = match (ev.price, line_price) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
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
                        .unwrap_or_else(|| line_idx.map_or(0, |i| user.lines[i].qty)),
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
            output::late_event(self.out.begin(Stream::LateEvents), &ev, wm_e);
        } else {
            // user windows
            if let WindowSpec::Session { gap } = set.user_window {
                let mut w = UserWindow {
                    start: ev.ts,
                    end: ev.ts + gap.as_millis() as i64,
                    agg: delta.clone(),
                    fired: false,
                    dirty: false,
                };
                while let Some(i) = user
                    .windows
                    .iter()
                    .position(|o| o.start < w.end && w.start < o.end)
                {
                    let o = user.windows.swap_remove(i);
                    w.start = w.start.min(o.start);
                    w.end = w.end.max(o.end);
                    w.agg.merge(&o.agg);
                    w.fired |= o.fired;
                }
                if w.fired {
                    w.dirty = true;
                    self.dirty.push((r.kg, ev.user_id.clone()));
                }
                timers.entry(w.end).or_default().push(ev.user_id.clone());
                if set.lateness > 0 {
                    timers.entry(w.end + set.lateness).or_default().push(ev.user_id.clone());
                }
                user.windows.push(w);
            } else {
                self.scratch.clear();
                let scratch = &mut self.scratch;
                set.user_window.assign(ev.ts, |s, e| scratch.push((s, e)));
                for &(s, e) in self.scratch.iter() {
                    if e + set.lateness <= wm_e {
                        continue;
                    }
                    match user.windows.iter_mut().find(|w| w.start == s && w.end == e) {
                        Some(w) => {
                            w.agg.merge(&delta);
                            if w.fired && !w.dirty {
                                w.dirty = true;
                                self.dirty.push((r.kg, ev.user_id.clone()));
                            }
                        }
                        None => {
                            user.windows.push(UserWindow {
                                start: s,
                                end: e,
                                agg: delta.clone(),
                                fired: false,
                                dirty: false,
                            });
                            timers.entry(e).or_default().push(ev.user_id.clone());
                            if set.lateness > 0 {
                                timers.entry(e + set.lateness).or_default().push(ev.user_id.clone());
                            }
                        }
                    }
                }
            }
            // global windows: this group's partial
            self.scratch.clear();
            let scratch = &mut self.scratch;
            set.global_window.assign(ev.ts, |s, e| scratch.push((s, e)));
            let checkout_value = if ev.action == Action::Checkout {
                user.value()
            } else {
                Money::ZERO
            };
            for &(s, e) in self.scratch.iter() {
                if e + set.lateness <= wm_e {
                    continue;
                }
                let g = &mut global.entry(s).or_insert_with(|| (e, GlobalAgg::default())).1;
                g.events += 1;
                g.views += delta.views;
                g.adds += delta.adds;
                g.removes += delta.removes;
                g.update_qtys += delta.update_qtys;
                g.checkouts += delta.checkouts;
                g.qty_added += delta.qty_added;
                g.qty_removed += delta.qty_removed;
                g.value_added += delta.value_added;
                g.value_removed += delta.value_removed;
                g.checkout_value += checkout_value;
                if !user.global_counted.contains(&(s, e)) {
                    user.global_counted.push((s, e));
                    g.distinct_users += 1;
                    timers.entry(e + set.lateness).or_default().push(ev.user_id.clone());
                }
            }
        }

        // cart state follows every event, late or not: a late add is still in the cart
        let had = !user.lines.is_empty();
        if had {
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
        let _ = had;

        user.last_ts = user.last_ts.max(ev.ts);
        if ev.session_id.is_some() {
            user.session_id = ev.session_id;
        }
        if user.lines.is_empty() {
            user.abandon_at = None;
        } else {
            let at = user.last_ts.saturating_add(set.abandon_after);
            if user.abandon_timer.is_none() {
                user.abandon_timer = Some(at);
                timers.entry(at).or_default().push(ev.user_id.clone());
            }
            user.abandon_at = Some(at);
        }
    }

    /// Moves the watermark: fires timers (windows, abandoned carts), closes global windows,
    /// expires dedup entries, and reports to the committer.
    fn advance(&mut self, wm: i64) {
        if wm < self.wm {
            return;
        }
        let moved = wm > self.wm;
        self.wm = wm;
        let set = &self.set;
        for (gi, st) in self.groups.iter_mut().enumerate() {
            st.dedup.expire(wm, set.horizon);
            while let Some(entry) = st.timers.first_entry() {
                if *entry.key() > wm {
                    break;
                }
                for u in entry.remove() {
                    fire_user(st, &u, wm, set, &mut self.out);
                }
            }
            while let Some((_, &(end, _))) = st.global.first_key_value() {
                if end.saturating_add(set.lateness) > wm {
                    break;
                }
                let (start, (end, agg)) = st.global.pop_first().expect("non-empty");
                self.partials.entry((start, end)).or_default().merge(&agg);
            }
            let _ = gi;
        }
        for (kg, u) in std::mem::take(&mut self.dirty) {
            let st = &mut self.groups[(kg - self.first_group) as usize];
            fire_user(st, &u, wm, set, &mut self.out);
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
            let _ = self.tx.send(ToCommitter::Partial {
                start,
                end,
                agg,
            });
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
                        lines: u.lines.clone(),
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
                let _ = reply.send(crate::live::ShardStats {
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

fn fire_user(
    st: &mut KeyGroupState,
    user: &CompactString,
    wm: i64,
    set: &ShardSettings,
    out: &mut Records,
) {
    let Some(u) = st.users.get_mut(user.as_str()) else {
        return;
    };
    for w in u.windows.iter_mut() {
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
    u.windows.retain(|w| w.end.saturating_add(lateness) > wm);
    u.global_counted.retain(|&(_, e)| e.saturating_add(lateness) > wm);
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
    if u.is_idle() {
        st.users.remove(user.as_str());
    }
}
