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
}

impl Stream {
    pub const ALL: [Stream; 5] = [
        Stream::UserWindows,
        Stream::GlobalWindows,
        Stream::AbandonedCarts,
        Stream::LateEvents,
        Stream::DeadLetter,
    ];

    /// Directory (file sink) / table / topic suffix.
    pub fn name(self) -> &'static str {
        match self {
            Stream::UserWindows => "user_windows",
            Stream::GlobalWindows => "global_windows",
            Stream::AbandonedCarts => "abandoned_carts",
            Stream::LateEvents => "late_events",
            Stream::DeadLetter => "dead_letter",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Per-stream byte buffers of newline-terminated JSON records.
#[derive(Debug, Default)]
pub struct Records {
    pub bufs: [Vec<u8>; 5],
    pub counts: [u64; 5],
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

pub fn late_event(out: &mut Vec<u8>, e: &CartEvent, watermark: i64) {
    out.extend_from_slice(b"{\"reason\":\"late\"");
    num(out, "watermark", watermark);
    num(out, "late_by_ms", watermark - e.ts);
    out.extend_from_slice(b",\"event\":");
    e.write_json(out);
    out.extend_from_slice(b"}\n");
}
