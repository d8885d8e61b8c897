//! The batch views as SQL over the archive (`events`, the lake's schema).
//!
//! Every aggregate restates the speed layer's definition (crates/engine/src/shard.rs,
//! `fn event`) over the archived, cleaned events: `qty` and `price` there are the values the
//! pipeline used, so `value_added` is plain `SUM(qty * price)` over adds, in exact
//! `DECIMAL(18,4)` arithmetic. Window views leave out `late` rows, as the speed layer did.
//!
//! Each day-partitioned view covers the day `[day, day + 24h)` (of the window start, session
//! start or checkout) and reads only as much input around it as it needs (`Need`).

use crate::config::BatchJob;
use cartpulse_engine::WindowSpec;

pub const DAY_MS: i64 = 86_400_000;

/// A view recomputed per day, written to `OUT/<name>/dt=YYYY-MM-DD/part-0.parquet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DayView {
    UserWindows,
    GlobalWindows,
    UserDaily,
    ProductDaily,
    ConversionDaily,
    ConversionCategory,
    Orders,
    Sessions,
}

impl DayView {
    pub const ALL: [DayView; 8] = [
        DayView::UserWindows,
        DayView::GlobalWindows,
        DayView::UserDaily,
        DayView::ProductDaily,
        DayView::ConversionDaily,
        DayView::ConversionCategory,
        DayView::Orders,
        DayView::Sessions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DayView::UserWindows => "user_windows",
            DayView::GlobalWindows => "global_windows",
            DayView::UserDaily => "user_daily",
            DayView::ProductDaily => "product_daily",
            DayView::ConversionDaily => "conversion_daily",
            DayView::ConversionCategory => "conversion_category",
            DayView::Orders => "orders",
            DayView::Sessions => "sessions",
        }
    }
}

/// Views over all history, rebuilt from the daily partials.
pub const TOTAL_VIEWS: [&str; 3] = ["users", "products", "retention"];

fn extent_ms(w: &WindowSpec) -> i64 {
    w.extent().as_millis() as i64
}

/// Input an evaluation of day `d` needs: events with `lo <= t < hi`.
pub fn input_range(job: &BatchJob, d: i64) -> (i64, i64) {
    let mut lb = job.config.lookback.as_millis() as i64;
    let mut ext = extent_ms(&job.user_window).max(extent_ms(&job.global_window));
    if job.user_window.is_session() {
        // session windows chain: `user_windows` reads a day on either side
        lb = lb.max(DAY_MS);
        ext = ext.max(DAY_MS);
    }
    (d - lb, d + DAY_MS + ext.max(lb))
}

/// The shared input: the archive's rows in `[lo, hi)` with numeric time and money defaults.
fn base(lo: i64, hi: i64) -> String {
    format!(
        "ev AS (SELECT event_id, CAST(ts AS BIGINT) AS t, user_id, session_id, action, sku, \
         category, order_id, CAST(COALESCE(qty, 0) AS BIGINT) AS q, \
         COALESCE(price, CAST(0 AS DECIMAL(18,4))) AS p, \
         COALESCE(order_value, CAST(0 AS DECIMAL(18,4))) AS ov, late \
         FROM events WHERE CAST(ts AS BIGINT) >= {lo} AND CAST(ts AS BIGINT) < {hi})"
    )
}

/// The speed layer's per-window counters (`UserAgg`).
const AGGS: &str = "COUNT(*) AS events, \
    SUM(CASE WHEN action = 'view' THEN 1 ELSE 0 END) AS views, \
    SUM(CASE WHEN action = 'add' THEN 1 ELSE 0 END) AS adds, \
    SUM(CASE WHEN action = 'remove' THEN 1 ELSE 0 END) AS removes, \
    SUM(CASE WHEN action = 'update_qty' THEN 1 ELSE 0 END) AS update_qtys, \
    SUM(CASE WHEN action = 'checkout' THEN 1 ELSE 0 END) AS checkouts, \
    SUM(CASE WHEN action = 'add' THEN q ELSE 0 END) AS qty_added, \
    SUM(CASE WHEN action = 'remove' THEN q ELSE 0 END) AS qty_removed, \
    CAST(SUM(CASE WHEN action = 'add' THEN q * p ELSE 0 END) AS DECIMAL(18,4)) AS value_added, \
    CAST(SUM(CASE WHEN action = 'remove' THEN q * p ELSE 0 END) AS DECIMAL(18,4)) AS value_removed, \
    CAST(SUM(CASE WHEN action = 'add' THEN q * p WHEN action = 'remove' THEN -(q * p) ELSE 0 END) \
    AS DECIMAL(18,4)) AS value_delta";

/// `ws`/`we` (window start/end) for every fixed window holding `t`, one row each; `from` is
/// the relation to assign.
fn assign(w: &WindowSpec, from: &str) -> String {
    let floor = |t: &str, n: i64| format!("({t} - ((({t} % {n}) + {n}) % {n}))");
    match *w {
        WindowSpec::Tumbling { size } => {
            let s = size.as_millis() as i64;
            format!(
                "SELECT *, {f} AS ws, {f} + {s} AS we FROM {from}",
                f = floor("t", s)
            )
        }
        WindowSpec::Sliding { size, slide } => {
            let (s, l) = (size.as_millis() as i64, slide.as_millis() as i64);
            let ks: Vec<String> = (0..s / l).map(|k| format!("({k})")).collect();
            format!(
                "SELECT x.*, {f} - k.k * {l} AS ws, {f} - k.k * {l} + {s} AS we \
                 FROM {from} x CROSS JOIN (VALUES {ks}) AS k(k)",
                f = floor("x.t", l),
                ks = ks.join(",")
            )
        }
        WindowSpec::Session { .. } => unreachable!("sessions are merged, not assigned"),
    }
}

/// The day-`d` slice of `view`, evaluated over the input of `input_range`, exact up to
/// `horizon` (nothing at or after it is trusted complete).
pub fn day_sql(job: &BatchJob, view: DayView, d: i64, horizon: i64) -> String {
    let (lo, hi) = input_range(job, d);
    let hi = hi.min(horizon);
    let day_end = (d + DAY_MS).min(horizon);
    match view {
        DayView::UserWindows => user_windows(&job.user_window, d, horizon),
        DayView::GlobalWindows => {
            let w = &job.global_window;
            format!(
                "WITH {b}, e AS (SELECT * FROM ev WHERE NOT late), w AS ({a}) \
                 SELECT ws AS window_start, we AS window_end, COUNT(*) AS events, \
                 COUNT(DISTINCT user_id) AS distinct_users, \
                 SUM(CASE WHEN action = 'view' THEN 1 ELSE 0 END) AS views, \
                 SUM(CASE WHEN action = 'add' THEN 1 ELSE 0 END) AS adds, \
                 SUM(CASE WHEN action = 'remove' THEN 1 ELSE 0 END) AS removes, \
                 SUM(CASE WHEN action = 'update_qty' THEN 1 ELSE 0 END) AS update_qtys, \
                 SUM(CASE WHEN action = 'checkout' THEN 1 ELSE 0 END) AS checkouts, \
                 SUM(CASE WHEN action = 'add' THEN q ELSE 0 END) AS qty_added, \
                 SUM(CASE WHEN action = 'remove' THEN q ELSE 0 END) AS qty_removed, \
                 CAST(SUM(CASE WHEN action = 'add' THEN q * p ELSE 0 END) AS DECIMAL(18,4)) AS value_added, \
                 CAST(SUM(CASE WHEN action = 'remove' THEN q * p ELSE 0 END) AS DECIMAL(18,4)) AS value_removed, \
                 CAST(SUM(CASE WHEN action = 'add' THEN q * p WHEN action = 'remove' THEN -(q * p) ELSE 0 END) AS DECIMAL(18,4)) AS value_delta, \
                 CAST(SUM(CASE WHEN action = 'checkout' THEN ov ELSE 0 END) AS DECIMAL(18,4)) AS checkout_value \
                 FROM w WHERE ws >= {d} AND ws < {de} AND we <= {horizon} \
                 GROUP BY ws, we ORDER BY ws",
                b = base(d, (d + DAY_MS + extent_ms(w)).min(horizon)),
                a = assign(w, "e"),
                de = d + DAY_MS,
            )
        }
        DayView::UserDaily => format!(
            "WITH {b} SELECT CAST(to_timestamp_millis({d}) AS DATE) AS day, user_id, {AGGS}, \
             CAST(SUM(CASE WHEN action = 'checkout' THEN ov ELSE 0 END) AS DECIMAL(18,4)) AS order_value, \
             COUNT(DISTINCT session_id) AS sessions, MIN(t) AS first_ms, MAX(t) AS last_ms \
             FROM ev GROUP BY user_id ORDER BY user_id",
            b = base(d, day_end)
        ),
        DayView::ProductDaily => format!(
            "WITH {b} SELECT CAST(to_timestamp_millis({d}) AS DATE) AS day, sku, \
             MAX(category) AS category, {AGGS}, \
             COUNT(DISTINCT CASE WHEN action = 'view' THEN user_id END) AS users_viewed, \
             COUNT(DISTINCT CASE WHEN action = 'add' THEN user_id END) AS users_added \
             FROM ev WHERE sku IS NOT NULL GROUP BY sku ORDER BY sku",
            b = base(d, day_end)
        ),
        DayView::ConversionDaily => format!(
            "WITH {b}, u AS (SELECT user_id, \
             MAX(CASE WHEN action = 'add' THEN 1 ELSE 0 END) AS added, \
             MAX(CASE WHEN action = 'checkout' THEN 1 ELSE 0 END) AS bought FROM ev GROUP BY user_id) \
             SELECT CAST(to_timestamp_millis({d}) AS DATE) AS day, COUNT(*) AS active_users, \
             COALESCE(SUM(added), 0) AS users_added, COALESCE(SUM(bought), 0) AS users_checked_out, \
             COALESCE(SUM(added * bought), 0) AS users_converted, \
             CAST(SUM(added * bought) AS DOUBLE) / CAST(NULLIF(SUM(added), 0) AS DOUBLE) AS conversion \
             FROM u",
            b = base(d, day_end)
        ),
        DayView::ConversionCategory => format!(
            "WITH {b}, a AS (SELECT DISTINCT category, user_id FROM ev \
             WHERE action = 'add' AND category IS NOT NULL), \
             c AS (SELECT DISTINCT user_id FROM ev WHERE action = 'checkout') \
             SELECT CAST(to_timestamp_millis({d}) AS DATE) AS day, a.category, \
             COUNT(*) AS users_added, COUNT(c.user_id) AS users_converted, \
             CAST(COUNT(c.user_id) AS DOUBLE) / CAST(COUNT(*) AS DOUBLE) AS conversion \
             FROM a LEFT JOIN c ON a.user_id = c.user_id GROUP BY a.category ORDER BY a.category",
            b = base(d, day_end)
        ),
        // A checkout buys what its user's cart holds: the cart events since the user's
        // previous checkout, in event-time order; a line's quantity is its last update_qty
        // (if any) plus the adds and minus the removes after it.
        DayView::Orders => format!(
            "WITH {b}, \
             c AS (SELECT * FROM ev WHERE action IN ('add', 'remove', 'update_qty', 'checkout')), \
             r AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY t, event_id) AS rn, \
               SUM(CASE WHEN action = 'checkout' THEN 1 ELSE 0 END) OVER (PARTITION BY user_id \
               ORDER BY t, event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n FROM c), \
             g AS (SELECT *, CASE WHEN action = 'checkout' THEN n - 1 ELSE n END AS gen FROM r), \
             lu AS (SELECT user_id, gen, sku, MAX(CASE WHEN action = 'update_qty' THEN rn END) AS lu_rn \
               FROM g WHERE action <> 'checkout' AND sku IS NOT NULL GROUP BY user_id, gen, sku), \
             net AS (SELECT g.user_id, g.gen, g.sku, SUM(CASE \
                 WHEN lu.lu_rn IS NOT NULL AND g.rn < lu.lu_rn THEN 0 \
                 WHEN g.action = 'update_qty' THEN g.q \
                 WHEN g.action = 'add' THEN g.q WHEN g.action = 'remove' THEN -g.q ELSE 0 END) AS units \
               FROM g JOIN lu ON g.user_id = lu.user_id AND g.gen = lu.gen AND g.sku = lu.sku \
               GROUP BY g.user_id, g.gen, g.sku), \
             o AS (SELECT user_id, gen, t, event_id, order_id, ov FROM g \
               WHERE action = 'checkout' AND t >= {d} AND t < {day_end}) \
             SELECT CAST(to_timestamp_millis({d}) AS DATE) AS day, o.order_id, \
             o.event_id AS checkout_event_id, o.user_id, o.t AS checkout_ms, \
             MAX(o.ov) AS order_value, \
             string_agg(replace(net.sku, ',', ';'), ',' ORDER BY net.sku) AS items, \
             COUNT(*) AS item_count, SUM(net.units) AS units \
             FROM o JOIN net ON o.user_id = net.user_id AND o.gen = net.gen \
             WHERE net.units > 0 \
             GROUP BY o.order_id, o.event_id, o.user_id, o.t ORDER BY o.t, o.event_id",
            b = base(lo, day_end)
        ),
        // The intent model's training set: per session (starting this day), what happened
        // before its first checkout, and whether there was one.
        DayView::Sessions => format!(
            "WITH {b}, \
             s AS (SELECT user_id, session_id, MIN(t) AS start_ms, \
               MIN(CASE WHEN action = 'checkout' THEN t END) AS checkout_ms \
               FROM ev WHERE session_id IS NOT NULL GROUP BY user_id, session_id \
               HAVING MIN(t) >= {d} AND MIN(t) < {day_end}), \
             f AS (SELECT ev.*, s.start_ms, s.checkout_ms FROM ev JOIN s \
               ON ev.user_id = s.user_id AND ev.session_id = s.session_id \
               WHERE s.checkout_ms IS NULL OR ev.t < s.checkout_ms) \
             SELECT CAST(to_timestamp_millis({d}) AS DATE) AS day, s.user_id, s.session_id, \
             s.start_ms, \
             COALESCE(MAX(f.t) - s.start_ms, 0) AS dwell_ms, \
             CAST((((s.start_ms % {DAY_MS}) + {DAY_MS}) % {DAY_MS}) / 3600000 AS INT) AS hour_of_day, \
             COUNT(f.t) AS events, \
             COALESCE(SUM(CASE WHEN f.action = 'view' THEN 1 ELSE 0 END), 0) AS views, \
             COALESCE(SUM(CASE WHEN f.action = 'add' THEN 1 ELSE 0 END), 0) AS adds, \
             COALESCE(SUM(CASE WHEN f.action = 'remove' THEN 1 ELSE 0 END), 0) AS removes, \
             COALESCE(SUM(CASE WHEN f.action = 'update_qty' THEN 1 ELSE 0 END), 0) AS update_qtys, \
             COUNT(DISTINCT f.sku) AS distinct_skus, \
             CAST(COALESCE(SUM(CASE WHEN f.action = 'add' THEN f.q * f.p \
               WHEN f.action = 'remove' THEN -(f.q * f.p) ELSE 0 END), 0) AS DECIMAL(18,4)) AS cart_value, \
             s.checkout_ms IS NOT NULL AS label \
             FROM s LEFT JOIN f ON s.user_id = f.user_id AND s.session_id = f.session_id \
             GROUP BY s.user_id, s.session_id, s.start_ms, s.checkout_ms \
             ORDER BY s.start_ms, s.user_id, s.session_id",
            b = base(lo, hi)
        ),
    }
}

fn user_windows(w: &WindowSpec, d: i64, horizon: i64) -> String {
    let de = d + DAY_MS;
    match *w {
        WindowSpec::Session { gap } => {
            let g = gap.as_millis() as i64;
            // gaps and islands: a new session wherever the previous event (in time) is at
            // least `gap` earlier, which is when the engine's [t, t + gap) windows stop
            // overlapping
            format!(
                "WITH {b}, e AS (SELECT * FROM ev WHERE NOT late), \
                 s1 AS (SELECT *, CASE WHEN t - LAG(t) OVER (PARTITION BY user_id ORDER BY t) < {g} \
                   THEN 0 ELSE 1 END AS brk FROM e), \
                 s2 AS (SELECT *, SUM(brk) OVER (PARTITION BY user_id ORDER BY t, event_id \
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM s1), \
                 w AS (SELECT MIN(t) AS window_start, MAX(t) + {g} AS window_end, user_id, {AGGS} \
                   FROM s2 GROUP BY user_id, sid) \
                 SELECT * FROM w WHERE window_start >= {d} AND window_start < {de} \
                 AND window_end <= {horizon} ORDER BY window_start, user_id",
                // sessions chain: read a day on either side
                b = base(d - DAY_MS, (de + DAY_MS).min(horizon)),
            )
        }
        _ => format!(
            "WITH {b}, e AS (SELECT * FROM ev WHERE NOT late), w AS ({a}) \
             SELECT ws AS window_start, we AS window_end, user_id, {AGGS} \
             FROM w WHERE ws >= {d} AND ws < {de} AND we <= {horizon} \
             GROUP BY ws, we, user_id ORDER BY ws, user_id",
            b = base(d, (de + extent_ms(w)).min(horizon)),
            a = assign(w, "e"),
        ),
    }
}

/// SQL of a total view over the daily partials (registered as `user_daily` and
/// `product_daily`).
pub fn total_sql(view: &str) -> String {
    match view {
        "users" => "SELECT user_id, COUNT(*) AS active_days, SUM(events) AS events, \
            SUM(views) AS views, SUM(adds) AS adds, SUM(removes) AS removes, \
            SUM(update_qtys) AS update_qtys, SUM(checkouts) AS checkouts, \
            SUM(qty_added) AS qty_added, SUM(qty_removed) AS qty_removed, \
            CAST(SUM(value_added) AS DECIMAL(18,4)) AS value_added, \
            CAST(SUM(value_removed) AS DECIMAL(18,4)) AS value_removed, \
            CAST(SUM(order_value) AS DECIMAL(18,4)) AS order_value, \
            MIN(first_ms) AS first_ms, MAX(last_ms) AS last_ms \
            FROM user_daily GROUP BY user_id ORDER BY user_id"
            .into(),
        "products" => "SELECT sku, MAX(category) AS category, SUM(events) AS events, \
            SUM(views) AS views, SUM(adds) AS adds, SUM(removes) AS removes, \
            SUM(checkouts) AS checkouts, SUM(qty_added) AS qty_added, \
            SUM(qty_removed) AS qty_removed, \
            CAST(SUM(value_added) AS DECIMAL(18,4)) AS value_added, \
            CAST(SUM(value_removed) AS DECIMAL(18,4)) AS value_removed \
            FROM product_daily GROUP BY sku ORDER BY sku"
            .into(),
        // cohort = a user's first active day; a cell counts the cohort's users active
        // `days_since` days later
        "retention" => "WITH a AS (SELECT DISTINCT user_id, day FROM user_daily), \
            f AS (SELECT user_id, MIN(day) AS cohort_day FROM a GROUP BY user_id), \
            n AS (SELECT cohort_day, COUNT(*) AS cohort_users FROM f GROUP BY cohort_day) \
            SELECT f.cohort_day, \
            CAST(CAST(a.day AS INT) - CAST(f.cohort_day AS INT) AS BIGINT) AS days_since, \
            COUNT(*) AS active_users, MAX(n.cohort_users) AS cohort_users, \
            CAST(COUNT(*) AS DOUBLE) / CAST(MAX(n.cohort_users) AS DOUBLE) AS retention \
            FROM a JOIN f ON a.user_id = f.user_id JOIN n ON f.cohort_day = n.cohort_day \
            GROUP BY f.cohort_day, days_since ORDER BY f.cohort_day, days_since"
            .into(),
        _ => unreachable!("unknown total view {view}"),
    }
}
