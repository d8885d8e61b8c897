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
use crate::operator::{OpAbandoned, OpBatch, OpEvent, OpInput};
use crate::output::{self, Records, Stream};
use crate::state::{
    CartLine, Gauges, GlobalAgg, GlobalEntry, KeyGroupState, UserAgg, UserWindow, WindowBucket,
    WindowEntry,
};
use crate::window::WindowSpec;
use cartpulse_model::{Action, CartEvent, DeadLetter, Money};
use compact_str::CompactString;
use crossbeam_channel::{Receiver, Sender};
use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Instant;

/// Closed-window records written per batch at the least (see `Shard::drain`).
const DRAIN_SLICE: usize = 2048;

/// One event routed to a shard.
pub(crate) struct Routed {
    pub kg: u32,
    /// Index of the record in its chunk: lets the analytics stage merge the shards' shares
    /// back into input order.
    pub pos: u32,
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
    /// Some sink wants the `events` stream.
    pub emit_events: bool,
    /// Some sink wants the `carts` stream.
    pub emit_carts: bool,
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
            emit_events: false,
            emit_carts: false,
        }
    }
}

#[derive(Default)]
struct LocalCounts {
    /// Deduplicated events by action (business throughput).
    actions: [u64; 5],
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
    /// For every group, an alarm at or before its earliest due time, so firing visits only
    /// groups with work.
    alarms: Alarms,
    /// Closed windows whose records are still to be written: (start, end, entries).
    draining: std::collections::VecDeque<(
        i64,
        i64,
        hashbrown::hash_map::IntoIter<CompactString, WindowEntry>,
    )>,
    scratch: Vec<(i64, i64)>,
    fresh: Vec<bool>,
    partials: BTreeMap<(i64, i64), GlobalAgg>,
    /// Users whose cart changed since the last barrier, by key group (`carts` stream).
    changed_carts: hashbrown::HashSet<(u32, CompactString)>,
    /// The analytics stage, when there is one, and this chunk's inputs for it.
    op: Option<Sender<OpBatch>>,
    op_items: Vec<(u32, OpInput)>,
    /// Position (in its chunk) of the event being applied; `u32::MAX` at the chunk's end.
    cur_pos: u32,
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
        let mut alarms = Alarms::new(first_group, groups.len());
        for (i, g) in groups.iter_mut().enumerate() {
            g.rebuild_timers(set.lateness);
            gauges.add(&g.gauges());
            if let Some(t) = g.next_due(set.lateness) {
                alarms.set(first_group + i as u32, t);
            }
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
            alarms,
            draining: Default::default(),
            scratch: Vec::new(),
            fresh: Vec::new(),
            partials: BTreeMap::new(),
            changed_carts: Default::default(),
            op: None,
            op_items: Vec::new(),
            cur_pos: u32::MAX,
            tx,
            metrics,
        }
    }

    /// Feeds the analytics stage.
    pub fn with_operator(mut self, op: Sender<OpBatch>) -> Shard {
        self.op = Some(op);
        self
    }

    /// The shard's loop: sub-batches strictly in chunk order (chunk `seq` comes from decoder
    /// `seq % P`), queries in between.
    pub fn run(
        mut self,
        inputs: Vec<Receiver<SubBatch>>,
        queries: Receiver<Query>,
        recycle: Vec<Sender<Vec<Routed>>>,
    ) {
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
                    if let Err(e) = self.process(sub, &recycle[((seq - 1) % p) as usize]) {
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

    fn process(&mut self, mut sub: SubBatch, recycle: &Sender<Vec<Routed>>) -> Result<(), String> {
        // Dedup first, for the whole batch: the probes are independent, so the CPU overlaps
        // their cache misses instead of taking them one event at a time. Decisions are the
        // same as inline, since they depend only on the order of ids.
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.clear();
        for r in &sub.events {
            let st = &mut self.groups[(r.kg - self.first_group) as usize];
            // expiring against this event's own watermark keeps the decision a function of
            // the input order alone
            let wm_e = self
                .source_max
                .max(r.max_before)
                .saturating_sub(self.set.bound);
            st.dedup.expire(wm_e, self.set.horizon);
            let new = st.dedup.insert(r.id_hash, r.ev.ts);
            if new {
                // touch the user's cart now: these independent loads overlap, and the
                // real lookup below then finds the cache lines warm
                std::hint::black_box(st.users.get(r.ev.user_id.as_str()).map(|u| u.lines.len()));
            }
            fresh.push(new);
        }
        for (r, &new) in sub.events.iter().zip(&fresh) {
            if new {
                self.cur_pos = r.pos;
                self.event(r);
            } else {
                self.counts.duplicates += 1;
            }
        }
        self.fresh = fresh;
        if self.set.track_latency && !sub.events.is_empty() {
            self.record_latency(&sub.events, sub.read_at);
        }
        let mut events = std::mem::take(&mut sub.events);
        events.clear();
        let _ = recycle.try_send(events);
        for d in &sub.dead {
            let buf = self.out.begin(Stream::DeadLetter);
            d.write_json(buf);
            buf.push(b'\n');
        }
        self.source_max = self.source_max.max(sub.chunk_max);
        self.cur_pos = u32::MAX;
        let n_events = sub.events.len();
        match sub.end {
            ChunkEnd::Flush => self.advance(i64::MAX, true),
            ChunkEnd::Stop => {}
            ChunkEnd::No => self.advance(self.source_max.saturating_sub(self.set.bound), true),
        }
        if self.set.emit_carts && (sub.barrier.is_some() || sub.end != ChunkEnd::No) {
            self.write_changed_carts();
        }
        // a snapshot holds no half-written window: everything is out before a barrier
        let budget = if sub.barrier.is_some() || sub.end != ChunkEnd::No {
            usize::MAX
        } else {
            // at least twice what a batch can add, so the backlog always shrinks
            (2 * n_events).max(DRAIN_SLICE)
        };
        self.drain(budget);
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
        if let Some(op) = &self.op {
            let batch = OpBatch {
                seq: sub.seq,
                items: std::mem::take(&mut self.op_items),
                barrier: sub.barrier,
                end: sub.end,
            };
            op.send(batch)
                .map_err(|_| "analytics stage stopped".to_string())?;
        }
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

    /// The `carts` stream: each changed cart once per epoch, as it is at the barrier.
    fn write_changed_carts(&mut self) {
        let mut changed: Vec<_> = self.changed_carts.drain().collect();
        // a stable order, so a replay writes byte-identical output
        changed.sort_unstable();
        for (kg, user) in changed {
            let st = &self.groups[(kg - self.first_group) as usize];
            let out = self.out.begin(Stream::Carts);
            match st.users.get(user.as_str()) {
                Some(u) => output::cart(out, &user, &u.lines, u.last_ts),
                None => output::cart(out, &user, &[], 0),
            }
        }
    }

    /// Writes up to `budget` records of closed windows, oldest window first.
    fn drain(&mut self, mut budget: usize) {
        while budget > 0 {
            let Some((start, end, it)) = self.draining.front_mut() else {
                return;
            };
            let (start, end) = (*start, *end);
            let mut done = true;
            for (u, w) in it.by_ref() {
                output::user_window(
                    self.out.begin(Stream::UserWindows),
                    &u,
                    start,
                    end,
                    &w.agg,
                    false,
                );
                budget -= 1;
                if budget == 0 {
                    done = false;
                    break;
                }
            }
            if done {
                self.draining.pop_front();
            }
        }
    }

    fn report_state_size(&self) {
        let (mut carts, mut dedup, mut windows) = (0usize, 0usize, 0usize);
        for g in &self.groups {
            carts += g.users.len();
            dedup += g.dedup.len();
            windows += g.windows.values().map(|b| b.users.len()).sum::<usize>() + g.sessions.len();
        }
        let shard = self.id.to_string();
        let m = &self.metrics.state_keys;
        m.with_label_values(&["carts", &shard]).set(carts as i64);
        m.with_label_values(&["dedup_ids", &shard])
            .set(dedup as i64);
        m.with_label_values(&["window_entries", &shard])
            .set(windows as i64);
    }

    fn record_latency(&self, events: &[Routed], read_at: Instant) {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let in_pipeline = read_at.elapsed().as_micros().max(1) as u64;
        {
            let mut h = self.metrics.event_latency_us.lock().expect("latency lock");
            for r in events {
                let _ = h.record((now_us - r.ev.ts * 1000).max(1) as u64);
            }
        }
        let _ = self
            .metrics
            .pipeline_latency_us
            .lock()
            .expect("latency lock")
            .record_n(in_pipeline, events.len() as u64);
    }

    fn send(&self, m: ToCommitter) -> Result<(), String> {
        self.tx.send(m).map_err(|_| "committer is gone".to_string())
    }

    fn flush_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        for a in cartpulse_model::Action::ALL {
            let n = c.actions[a.index()];
            if n > 0 {
                self.metrics
                    .cart_events
                    .with_label_values(&[a.as_str()])
                    .inc_by(n);
            }
        }
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
        let wm_e = self
            .source_max
            .max(r.max_before)
            .saturating_sub(self.set.bound);
        if wm_e > self.wm {
            // Fire what is due *before* applying the event, exactly where the watermark
            // passed it in the input: results then do not depend on how the input was cut
            // into chunks, nor on the shard count.
            let crossed = self.crosses_global(self.wm, wm_e);
            if crossed || self.alarms.next().is_some_and(|t| t <= wm_e) {
                self.advance(wm_e, crossed);
            } else {
                self.wm = wm_e;
            }
        }
        let set = &self.set;
        let ev = &r.ev;
        self.counts.actions[ev.action.index()] += 1;
        let kg = r.kg;
        let gi = (kg - self.first_group) as usize;
        let st = &mut self.groups[gi];
        let KeyGroupState {
            users,
            windows,
            bucket_hint,
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
                // the user may have been active (say, viewing) later than this add's event
                // time: open windows remember when
                let mut seen = ev.ts;
                for b in windows.values() {
                    if let Some(w) = b.users.get(ev.user_id.as_str()) {
                        seen = seen.max(w.last_ts);
                    }
                }
                if let (WindowSpec::Session { gap }, Some(ws)) =
                    (&set.user_window, sessions.get(ev.user_id.as_str()))
                {
                    for w in ws {
                        seen = seen.max(w.end - gap.as_millis() as i64);
                    }
                }
                let u = users.entry(ev.user_id.clone()).or_default();
                u.last_ts = seen;
                Some(u)
            }
            None => None,
        };

        // what the event contributes, judged on the event's own fields
        let line_idx = match (&user, &ev.sku) {
            (Some(u), Some(sku)) => u.lines.iter().position(|l| l.sku == *sku),
            _ => None,
        };
        // the line's price and quantity before this event (plain copies, no clone)
        let line_now =
            line_idx.and_then(|i| user.as_ref().map(|u| (u.lines[i].price, u.lines[i].qty)));
        let (price, price_source) = match (ev.price, line_now) {
            (Some(p), _) => (p, output::PriceSource::Event),
            (None, Some((p, _))) => (p, output::PriceSource::Cart),
            // the price the user saw is the line's; the list price only stands in for it
            (None, None) => match ev.product.as_ref().and_then(|p| p.price) {
                Some(p) => (p, output::PriceSource::Catalog),
                None => {
                    if matches!(ev.action, Action::Add | Action::Remove | Action::UpdateQty) {
                        self.counts.missing_price += 1;
                    }
                    (Money::ZERO, output::PriceSource::Missing)
                }
            },
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
                let q = i64::from(ev.qty.unwrap_or_else(|| line_now.map_or(0, |l| l.1)));
                delta.qty_removed = q;
                delta.value_removed = Money(price.0 * q);
            }
            Action::UpdateQty => delta.update_qtys = 1,
            Action::Checkout => delta.checkouts = 1,
        }

        let late = is_late(&set.user_window, ev.ts, set.lateness, wm_e);
        let checkout_value = match (&user, ev.action) {
            (Some(u), Action::Checkout) => u.value(),
            _ => Money::ZERO,
        };
        if set.emit_events {
            let (qty, price, source) = match ev.action {
                Action::Add => (Some(delta.qty_added as u32), Some(price), price_source),
                Action::Remove => (Some(delta.qty_removed as u32), Some(price), price_source),
                Action::UpdateQty => (ev.qty, Some(price), price_source),
                Action::View | Action::Checkout => (ev.qty, ev.price, output::PriceSource::Event),
            };
            let order_value = (ev.action == Action::Checkout).then_some(checkout_value);
            output::event(
                self.out.begin(Stream::Events),
                ev,
                qty,
                price,
                source,
                order_value,
                late,
            );
        }
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
                };
                while let Some(i) = ws.iter().position(|o| o.start < w.end && w.start < o.end) {
                    let o = ws.swap_remove(i);
                    w.start = w.start.min(o.start);
                    w.end = w.end.max(o.end);
                    w.agg.merge(&o.agg);
                    w.fired |= o.fired;
                }
                if w.fired {
                    // a late event changed a fired session: re-emit it now, once per event
                    output::user_window(
                        self.out.begin(Stream::UserWindows),
                        &ev.user_id,
                        w.start,
                        w.end,
                        &w.agg,
                        true,
                    );
                }
                add_timer(timers, &mut self.alarms, kg, w.end, &ev.user_id);
                if set.lateness > 0 {
                    add_timer(
                        timers,
                        &mut self.alarms,
                        kg,
                        w.end + set.lateness,
                        &ev.user_id,
                    );
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
                    // a no-op unless earlier than the group's live alarm
                    self.alarms.set(kg, e);
                    let hint = *bucket_hint;
                    let b = windows.entry((e, s)).or_insert_with(|| WindowBucket {
                        // sized like the last bucket this group closed: no rehash on the way
                        users: HashMap::with_capacity(hint),
                        fired: false,
                    });
                    let fired = b.fired;
                    let w = match b.users.entry_ref(ev.user_id.as_str()) {
                        EntryRef::Occupied(o) => {
                            let w = o.into_mut();
                            w.agg.merge(&delta);
                            w.last_ts = w.last_ts.max(ev.ts);
                            w
                        }
                        EntryRef::Vacant(v) => {
                            created.push((s, e));
                            v.insert(WindowEntry {
                                agg: delta.clone(),
                                last_ts: ev.ts,
                            })
                        }
                    };
                    if fired {
                        // a late event within the allowed lateness: emit the window again
                        // now, once per event, as a window operator re-fires per element
                        let update = !created.contains(&(s, e));
                        output::user_window(
                            self.out.begin(Stream::UserWindows),
                            &ev.user_id,
                            s,
                            e,
                            &w.agg,
                            update,
                        );
                    }
                }
            }
            // global windows: this group's partial
            if !set.same_windows {
                self.scratch.clear();
                let scratch = &mut self.scratch;
                set.global_window.assign(ev.ts, |s, e| scratch.push((s, e)));
            }
            for &(s, e) in self.scratch.iter() {
                if e + set.lateness <= wm_e {
                    continue;
                }
                self.alarms.set(kg, e.saturating_add(set.lateness));
                let g = global.entry(s).or_insert_with(|| GlobalEntry {
                    end: e,
                    ..Default::default()
                });
                let new_user = if set.same_windows {
                    created.contains(&(s, e))
                } else {
                    g.users.insert(r.user_hash)
                };
                g.agg.add_event(&delta, new_user, checkout_value);
            }
        }

        // cart state follows every event, late or not: a late add is still in the cart
        let (qty, applied_price) = match ev.action {
            Action::Add => (delta.qty_added as u32, price),
            Action::Remove => (delta.qty_removed as u32, price),
            _ => (ev.qty.unwrap_or(0), price),
        };
        let Some(user) = user else {
            if ev.action == Action::Remove {
                self.counts.missing_line += 1;
            }
            if self.op.is_some() {
                self.op_items.push((
                    self.cur_pos,
                    OpInput::Event(Box::new(OpEvent {
                        ev: ev.clone(),
                        late,
                        qty,
                        price: applied_price,
                        cart_items: 0,
                        cart_value: Money::ZERO,
                        cart_lines: 0,
                        line_qty: 0,
                        order_value: checkout_value,
                        orders: 0,
                    })),
                ));
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
        // a view moves `last_activity` too: skipping it would make the record depend
        // on where the barriers fell, and a replay after a crash would differ
        if set.emit_carts {
            self.changed_carts.insert((kg, ev.user_id.clone()));
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
        if self.op.is_some() {
            let line_qty = ev
                .sku
                .as_ref()
                .and_then(|sku| user.lines.iter().find(|l| l.sku == *sku))
                .map_or(0, |l| l.qty);
            self.op_items.push((
                self.cur_pos,
                OpInput::Event(Box::new(OpEvent {
                    ev: ev.clone(),
                    late,
                    qty,
                    price: applied_price,
                    cart_items: user.items(),
                    cart_value: user.value(),
                    cart_lines: user.lines.len() as u32,
                    line_qty,
                    order_value: checkout_value,
                    orders: user.orders,
                })),
            ));
        }
        if user.lines.is_empty() {
            user.abandon_at = None;
            users.remove(ev.user_id.as_str());
        } else {
            let at = user.last_ts.saturating_add(set.abandon_after);
            if user.abandon_timer.is_none() {
                user.abandon_timer = Some(at);
                add_timer(timers, &mut self.alarms, kg, at, &ev.user_id);
            }
            user.abandon_at = Some(at);
        }
    }

    /// Whether a global window's hand-over time lies in `(from, to]`: the committer needs
    /// this shard's carts-now figures as of that point of the input.
    fn crosses_global(&self, from: i64, to: i64) -> bool {
        let (size, slide) = match self.set.global_window {
            WindowSpec::Tumbling { size } => (size, size),
            WindowSpec::Sliding { size, slide } => (size, slide),
            WindowSpec::Session { .. } => return false,
        };
        let (size, slide) = (size.as_millis() as i64, slide.as_millis() as i64);
        let k = |w: i64| {
            w.saturating_sub(size)
                .saturating_sub(self.set.lateness)
                .div_euclid(slide)
        };
        k(to) > k(from)
    }

    /// Moves the watermark to `wm`: fires due windows and timers (sessions, abandoned
    /// carts), hands closed global windows to the committer, and reports the watermark with
    /// the carts-now figures when `report` is set.
    fn advance(&mut self, wm: i64, report: bool) {
        if wm < self.wm {
            return;
        }
        let moved = wm > self.wm;
        self.wm = wm;
        let set = &self.set;
        while let Some(kg) = self.alarms.pop_due(wm) {
            let st = &mut self.groups[(kg - self.first_group) as usize];
            let mut closed = Vec::new();
            for (&(e, s), b) in st.windows.range_mut(..=(wm, i64::MAX)) {
                if e.saturating_add(set.lateness) <= wm {
                    closed.push((e, s));
                } else if !b.fired {
                    // still open to late updates: emit now, so updates follow it
                    for (u, w) in b.users.iter() {
                        output::user_window(
                            self.out.begin(Stream::UserWindows),
                            u,
                            s,
                            e,
                            &w.agg,
                            false,
                        );
                    }
                    b.fired = true;
                }
            }
            for k in closed {
                if let Some(b) = st.windows.remove(&k) {
                    st.bucket_hint = b.users.len();
                    if !b.fired {
                        // fired and closed at once: nothing can change it any more, so its
                        // records are written in slices between batches instead of in one
                        // burst that would hold up every event behind it
                        self.draining.push_back((k.1, k.0, b.users.into_iter()));
                    }
                }
            }
            while let Some(entry) = st.timers.first_entry() {
                if *entry.key() > wm {
                    break;
                }
                for u in entry.remove() {
                    let op = self
                        .op
                        .is_some()
                        .then_some((&mut self.op_items, self.cur_pos));
                    fire_user(st, &u, wm, set, &mut self.out, &mut self.alarms, kg, op);
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
            st.dedup.expire(wm, set.horizon);
            if let Some(next) = st.next_due(set.lateness) {
                self.alarms.set(kg, next);
            }
        }
        for ((start, end), agg) in std::mem::take(&mut self.partials) {
            let _ = self.tx.send(ToCommitter::Partial { start, end, agg });
        }
        if moved && report {
            self.report_state_size();
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

/// `(due time, key group)` in time order, at most one live alarm per group: the earliest
/// one set since the group was last visited. An alarm set later than a group's live one is
/// not needed (the group is visited at the earlier time and then sets its next one) and is
/// not pushed; one left behind by an earlier alarm is skipped when it comes up. Without
/// this, every superseded alarm, once popped, re-armed its group, so the heap kept every
/// alarm ever set and each watermark step revisited them all (cost growing with the run).
struct Alarms {
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    /// The live alarm of each group (`i64::MAX`: none), indexed from `first_group`.
    live: Vec<i64>,
    first_group: u32,
}

impl Alarms {
    fn new(first_group: u32, groups: usize) -> Alarms {
        Alarms {
            heap: BinaryHeap::new(),
            live: vec![i64::MAX; groups],
            first_group,
        }
    }

    /// Makes sure group `kg` is visited once the watermark reaches `at`.
    #[inline]
    fn set(&mut self, kg: u32, at: i64) {
        let live = &mut self.live[(kg - self.first_group) as usize];
        if at < *live {
            *live = at;
            self.heap.push(Reverse((at, kg)));
        }
    }

    /// The earliest alarm (possibly a superseded one: an early wake-up, never a late one).
    fn next(&self) -> Option<i64> {
        self.heap.peek().map(|a| a.0 .0)
    }

    /// The next group whose live alarm is at or before `wm`; it has no live alarm after this.
    fn pop_due(&mut self, wm: i64) -> Option<u32> {
        while let Some(&Reverse((t, kg))) = self.heap.peek() {
            if t > wm {
                return None;
            }
            self.heap.pop();
            let live = &mut self.live[(kg - self.first_group) as usize];
            if *live == t {
                *live = i64::MAX;
                return Some(kg);
            }
        }
        None
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

/// Adds a timer, raising an alarm when it is the group's new earliest.
fn add_timer(
    timers: &mut BTreeMap<i64, Vec<CompactString>>,
    alarms: &mut Alarms,
    kg: u32,
    at: i64,
    user: &CompactString,
) {
    alarms.set(kg, at);
    timers.entry(at).or_default().push(user.clone());
}

/// Session windows and the abandonment timer of one user.
#[allow(clippy::too_many_arguments)]
fn fire_user(
    st: &mut KeyGroupState,
    user: &CompactString,
    wm: i64,
    set: &ShardSettings,
    out: &mut Records,
    alarms: &mut Alarms,
    kg: u32,
    op: Option<(&mut Vec<(u32, OpInput)>, u32)>,
) {
    if let Some(ws) = st.sessions.get_mut(user.as_str()) {
        for w in ws.iter_mut() {
            if w.end <= wm && !w.fired {
                output::user_window(
                    out.begin(Stream::UserWindows),
                    user,
                    w.start,
                    w.end,
                    &w.agg,
                    false,
                );
                w.fired = true;
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
            if let Some((items, pos)) = op {
                items.push((
                    pos,
                    OpInput::Abandoned(Box::new(OpAbandoned {
                        user_id: user.clone(),
                        session_id: u.session_id.clone(),
                        last_activity: u.last_ts,
                        abandoned_at: at,
                        items: u.items(),
                        value: u.value(),
                        lines: u.lines.to_vec(),
                    })),
                ));
            }
            u.abandon_at = None;
        }
        // the deadline moved on since the timer was set: follow it
        Some(at) if u.abandon_timer.is_none() => {
            u.abandon_timer = Some(at);
            add_timer(&mut st.timers, alarms, kg, at, user);
        }
        _ => {}
    }
}
