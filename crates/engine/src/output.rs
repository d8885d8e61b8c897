//! The output streams of the built-in pipeline and their JSON line encodings.
//!
//! Records are encoded by the shard that produces them (in parallel) and travel to the
//! committer as ready bytes.

use crate::state::{CartLine, Gauges, GlobalAgg, UserAgg};
use cartpulse_model::{write_json_str, CartEvent, Money};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    UserWindows,
    GlobalWindows,
    AbandonedCarts,
    LateEvents,
    DeadLetter,
    /// Every deduplicated event in canonical JSON, with `"late":true` on late ones: the
    /// history the archive keeps. Produced only when a sink wants it (it costs a copy of
    /// the input).
    Events,
    /// Rule alerts from the analytics stage.
    Alerts,
    /// The current cart of every user whose cart changed in the epoch (empty `lines`: the
    /// cart is gone), written at each checkpoint barrier: what a store serving "the cart
    /// right now" upserts. Opt-in like `Events`.
    Carts,
}

impl Stream {
    pub const COUNT: usize = 8;
    pub const ALL: [Stream; Stream::COUNT] = [
        Stream::UserWindows,
        Stream::GlobalWindows,
        Stream::AbandonedCarts,
        Stream::LateEvents,
        Stream::DeadLetter,
        Stream::Events,
        Stream::Alerts,
        Stream::Carts,
    ];

    /// Directory (file sink) / table / topic suffix.
    pub fn name(self) -> &'static str {
        match self {
            Stream::UserWindows => "user_windows",
            Stream::GlobalWindows => "global_windows",
            Stream::AbandonedCarts => "abandoned_carts",
            Stream::LateEvents => "late_events",
            Stream::DeadLetter => "dead_letter",
            Stream::Events => "events",
            Stream::Alerts => "alerts",
            Stream::Carts => "carts",
        }
    }

    /// Streams produced only when a sink asks for them (`Sink::wants`).
    pub fn opt_in(self) -> bool {
        matches!(self, Stream::Events | Stream::Carts)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Per-stream byte buffers of newline-terminated JSON records.
#[derive(Debug, Default)]
pub struct Records {
    pub bufs: [Vec<u8>; Stream::COUNT],
    pub counts: [u64; Stream::COUNT],
}

impl Records {
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    #[inline]
    pub fn begin(&mut self, s: Stream) -> &mut Vec<u8> {
        self.counts[s.index()] += 1;
        &mut self.bufs[s.index()]
    }
}

fn num(out: &mut Vec<u8>, key: &str, v: impl itoa::Integer) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn money(out: &mut Vec<u8>, key: &str, v: Money) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    v.write_json(out);
}

fn window_head(out: &mut Vec<u8>, start: i64, end: i64) {
    out.extend_from_slice(b"{\"window_start\":");
    out.extend_from_slice(itoa::Buffer::new().format(start).as_bytes());
    num(out, "window_end", end);
}

pub fn user_window(out: &mut Vec<u8>, user: &str, start: i64, end: i64, a: &UserAgg, update: bool) {
    window_head(out, start, end);
    out.extend_from_slice(b",\"user_id\":");
    write_json_str(out, user);
    num(out, "events", a.events);
    num(out, "views", a.views);
    num(out, "adds", a.adds);
    num(out, "removes", a.removes);
    num(out, "update_qtys", a.update_qtys);
    num(out, "checkouts", a.checkouts);
    num(out, "qty_added", a.qty_added);
    num(out, "qty_removed", a.qty_removed);
    money(out, "value_added", a.value_added);
    money(out, "value_removed", a.value_removed);
    money(out, "value_delta", a.value_added - a.value_removed);
    if update {
        out.extend_from_slice(b",\"update\":true");
    }
    out.extend_from_slice(b"}\n");
}

pub fn global_window(out: &mut Vec<u8>, start: i64, end: i64, a: &GlobalAgg, g: &Gauges) {
    window_head(out, start, end);
    num(out, "events", a.events);
    num(out, "distinct_users", a.distinct_users);
    num(out, "views", a.views);
    num(out, "adds", a.adds);
    num(out, "removes", a.removes);
    num(out, "update_qtys", a.update_qtys);
    num(out, "checkouts", a.checkouts);
    num(out, "qty_added", a.qty_added);
    num(out, "qty_removed", a.qty_removed);
    money(out, "value_added", a.value_added);
    money(out, "value_removed", a.value_removed);
    money(out, "value_delta", a.value_added - a.value_removed);
    money(out, "checkout_value", a.checkout_value);
    num(out, "active_carts", g.active_carts);
    num(out, "items_in_carts", g.items_in_carts);
    money(out, "value_in_carts", g.value_in_carts);
    out.extend_from_slice(b"}\n");
}

pub fn cart_lines(out: &mut Vec<u8>, lines: &[CartLine]) {
    out.push(b'[');
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"sku\":");
        write_json_str(out, &l.sku);
        num(out, "qty", l.qty);
        money(out, "price", l.price);
        out.push(b'}');
    }
    out.push(b']');
}

#[allow(clippy::too_many_arguments)]
pub fn abandoned(
    out: &mut Vec<u8>,
    user: &str,
    session: Option<&str>,
    last_activity: i64,
    abandoned_at: i64,
    lines: &[CartLine],
    items: u64,
    value: Money,
) {
    out.extend_from_slice(b"{\"user_id\":");
    write_json_str(out, user);
    if let Some(s) = session {
        out.extend_from_slice(b",\"session_id\":");
        write_json_str(out, s);
    }
    num(out, "last_activity", last_activity);
    num(out, "abandoned_at", abandoned_at);
    num(out, "items", items);
    money(out, "value", value);
    out.extend_from_slice(b",\"lines\":");
    cart_lines(out, lines);
    out.extend_from_slice(b"}\n");
}

/// Where a cleaned event's unit price came from when the event itself had none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceSource {
    Event,
    /// The price of the product's line in the user's cart.
    Cart,
    /// The list price of the enrichment product table.
    Catalog,
    /// Nowhere: counted as zero (and in `cartpulse_missing_values_total`).
    Missing,
}

/// An accepted event for the `events` stream: the event as the pipeline used it — quantity
/// and unit price resolved (a remove without quantity removes the whole line), the cart's
/// value on a checkout — so the batch layer can recompute every aggregate with plain SQL —
/// and the attributes enrichment joined onto it (`product_*`, `user_*`).
pub fn event(
    out: &mut Vec<u8>,
    e: &CartEvent,
    qty: Option<u32>,
    price: Option<Money>,
    price_source: PriceSource,
    order_value: Option<Money>,
    late: bool,
) {
    e.write_json_open(out, qty, price);
    match price_source {
        PriceSource::Event => {}
        PriceSource::Cart => out.extend_from_slice(b",\"price_source\":\"cart\""),
        PriceSource::Catalog => out.extend_from_slice(b",\"price_source\":\"catalog\""),
        PriceSource::Missing => out.extend_from_slice(b",\"price_source\":\"missing\""),
    }
    if let Some(v) = order_value {
        money(out, "order_value", v);
    }
    if late {
        out.extend_from_slice(b",\"late\":true");
    }
    if let Some(p) = &e.product {
        p.write_json(out);
    }
    if let Some(u) = &e.user {
        u.write_json(out);
    }
    out.extend_from_slice(b"}\n");
}

/// A user's cart as it is now, for the `carts` stream.
pub fn cart(out: &mut Vec<u8>, user: &str, lines: &[CartLine], last_activity: i64) {
    out.extend_from_slice(b"{\"user_id\":");
    write_json_str(out, user);
    let items: u64 = lines.iter().map(|l| u64::from(l.qty)).sum();
    let value = Money(lines.iter().map(|l| l.price.0 * i64::from(l.qty)).sum());
    num(out, "items", items);
    money(out, "value", value);
    num(out, "last_activity", last_activity);
    out.extend_from_slice(b",\"lines\":");
    cart_lines(out, lines);
    out.extend_from_slice(b"}\n");
}

pub fn late_event(out: &mut Vec<u8>, e: &CartEvent, watermark: i64) {
    out.extend_from_slice(b"{\"reason\":\"late\"");
    num(out, "watermark", watermark);
    num(out, "late_by_ms", watermark - e.ts);
    out.extend_from_slice(b",\"event\":");
    e.write_json(out);
    out.extend_from_slice(b"}\n");
}
