//! The shopper simulation: sessions, carts, abnormal actors and prices.
//!
//! It is a discrete-event simulation driven by one min-heap of "next thing
//! to happen" entries (a session's next event, the next session arrival, an
//! abnormal actor's next outing, the next price change).  Popping the heap in
//! order yields events already sorted by timestamp, so the disorder stage in
//! [`crate::Generator`] only has to *add* lateness, never sort.
//!
//! Carts belong to users, not sessions, and every cart operation is decided
//! against the cart as it is at that moment.  That is what makes the stream
//! replayable: an abandoned cart is still there in the user's next session, a
//! remove never removes more than the user's cart holds, and checkout empties
//! it.  Users normally have one session at a time; abnormal actors always do.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::catalog::Catalog;
use crate::config::GenConfig;
use crate::format::IP_SPACE;
use crate::queue::Queue;

pub(crate) const NONE: u32 = u32::MAX;

/// Heap task ids: session slots use the low range, the rest are tagged.
const TASK_ARRIVAL: u32 = u32::MAX;
const TASK_PRICE: u32 = u32::MAX - 1;
const TASK_ACTOR: u32 = 1 << 31;

/// Normal session shape.  Chosen so the mean session length is known in
/// closed form, which is what lets the arrival rate hit `events_per_sec`.
const P_BROWSE: f64 = 0.45;
const BROWSE_STOP: f64 = 0.2; // views = 1 + Geom(0.2): mean 5
const SHOP_MIN: u32 = 3;
const SHOP_STOP: f64 = 0.125; // steps = 3 + Geom(0.125): mean 10
const P_REGULAR: f64 = 0.2; // share of users that shop 3x as often
const MAX_HUMAN_GAP_MS: i64 = 180_000;
/// Mean of [`human_gap`] in ms (ignoring its cap).
const HUMAN_GAP_MEAN_MS: f64 = 0.8 * 10_000.0 + 0.2 * 48_000.0;

const HOARD_STOP: f64 = 0.25; // steps = 2 + Geom(0.25): mean 5
const HOARDER_CHECKOUT: f64 = 0.05;
const FARM_CHECKOUT: f64 = 0.7;
const BOT_MIN_EVENTS: u32 = 300;
const BOT_MAX_EVENTS: u32 = 900;
/// Abnormal outing frequency relative to a normal user's session frequency.
const HOARDER_GAP_FACTOR: f64 = 1.0;
const FARM_GAP_FACTOR: f64 = 1.0;
const BOT_GAP_FACTOR: f64 = 2.0;
const MIN_ACTOR_GAP_MS: f64 = 5_000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    View,
    Add,
    Remove,
    UpdateQty,
    Checkout,
}

/// One logical event before formatting.  `Copy` and small so the disorder
/// stage can hold it back without touching the allocator.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub id: u64,
    pub ts: i64,
    pub user: u32,
    pub session: u64,
    pub action: Action,
    pub product: u32,
    pub qty: u32,
    pub price_cents: i64,
    pub category: u32,
    pub order: u64,
    pub device: u32,
    pub ip: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActorKind {
    Hoarder,
    Farm,
    Bot,
}

/// A labelled abnormal actor: one account, or a farm's group of accounts.
pub(crate) struct Actor {
    pub kind: ActorKind,
    pub users: Vec<u32>,
    /// Shared device/IP of a farm (for single accounts, their own).
    pub device: u32,
    pub ip: u32,
    /// Products a farm inflates.
    pub targets: Vec<u32>,
    mean_gap_ms: f64,
    active: u32,
    /// A hoarder that has put a hoarding quantity in a cart (not just looked around).
    pub hoarded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Browse,
    Shop,
    Hoard,
    Farm,
    Bot,
}

#[derive(Clone, Copy, Debug)]
struct Session {
    kind: Kind,
    user: u32,
    id: u64,
    device: u32,
    ip: u32,
    actor: u32,
    steps_left: u32,
    step: u32,
    interest: u32,
    viewed: u32,
    added: bool,
    checkout: bool,
    finishing: bool,
    /// Farm: the product being cycled; bot: the catalogue scan cursor.
    target: u32,
    cycles: u32,
}

#[derive(Clone, Copy, Debug)]
struct CartLine {
    product: u32,
    qty: u32,
}

pub(crate) struct PriceChangeRec {
    pub ts: i64,
    /// First event id generated after the change (and so priced by it).
    pub from_event: u64,
    pub product: u32,
    pub old_cents: i64,
    pub new_cents: i64,
}

pub(crate) struct Sim {
    rng: SmallRng,
    pub cat: Catalog,
    queue: Queue,
    sessions: Vec<Session>,
    free: Vec<u32>,
    carts: Vec<Vec<CartLine>>,
    /// Open sessions per user.
    active: Vec<u16>,
    dev1: Vec<u32>,
    dev2: Vec<u32>,
    ip: Vec<u32>,
    /// Normal users; the first `n_regular` are the frequent shoppers.
    normals: Vec<u32>,
    n_regular: usize,
    p_pick_regular: f64,
    pub actors: Vec<Actor>,
    arrival_clock: f64,
    lambda_max_per_ms: f64,
    amplitude: f64,
    peak_hour: f64,
    price_gap_mean_ms: f64,
    checkout_rate: f64,
    next_session: u64,
    next_order: u64,
    next_event: u64,
    pub price_changes: Vec<PriceChangeRec>,
}

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults or reads memory
    // architecturally, whatever the address, and SSE is baseline on x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline]
fn exp_sample(rng: &mut SmallRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.gen::<f64>()).ln()
}

/// Failures before the first success of a Bernoulli(p) trial.
#[inline]
pub(crate) fn geom(rng: &mut SmallRng, p: f64) -> u64 {
    if p >= 1.0 {
        return 0;
    }
    if p <= 0.0 {
        return u64::MAX;
    }
    let u = 1.0 - rng.gen::<f64>();
    (u.ln() / (1.0 - p).ln()).floor() as u64
}

/// Think time between a human's clicks: mostly seconds, sometimes a minute
/// or two of reading reviews, never more than three minutes.
#[inline]
/// A user's fixed propensity to buy, relative to `checkout_rate` (mean 1): some customers
/// buy most times they shop, others rarely. From the user's number, so no draw is spent.
fn propensity(user: u32) -> f64 {
    let h = (u64::from(user) ^ 0x9e37_79b9).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 62;
    0.25 + 0.5 * h as f64
}

fn human_gap(rng: &mut SmallRng) -> i64 {
    let g = if rng.gen::<f64>() < 0.8 {
        1000.0 + exp_sample(rng, 9000.0)
    } else {
        3000.0 + exp_sample(rng, 45_000.0)
    };
    g.min(MAX_HUMAN_GAP_MS as f64) as i64
}

fn human_qty(rng: &mut SmallRng) -> u32 {
    match rng.gen_range(0..50) {
        0..=39 => 1,
        40..=46 => 2,
        _ => 3,
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `k -> (k*a + b) mod m` with `gcd(a, m) = 1`: a bijection, so ids derived
/// from distinct keys are distinct while looking unrelated to the user id.
struct Scramble {
    a: u64,
    b: u64,
    m: u64,
}

impl Scramble {
    fn new(rng: &mut SmallRng, m: u64) -> Self {
        let mut a = ((m as f64 * 0.618_033_988_7) as u64) | 1;
        while gcd(a, m) != 1 {
            a += 2;
        }
        Self {
            a: a % m.max(1),
            b: rng.gen_range(0..m),
            m,
        }
    }
    fn map(&self, k: u64) -> u32 {
        ((k as u128 * self.a as u128 + self.b as u128) % self.m as u128) as u32
    }
}

impl Sim {
    /// `cfg` must already be validated.
    pub fn new(cfg: &GenConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let cat = Catalog::build(&mut rng, cfg.products, cfg.categories, cfg.zipf_exponent);
        let n = cfg.users as usize;

        // Disjoint random sets of abnormal users.
        let (nh, nf, nb) = cfg.abnormal_counts();
        let k = (nh + nf + nb) as usize;
        let mut perm: Vec<u32> = (0..cfg.users).collect();
        for i in 0..k {
            let j = rng.gen_range(i..n);
            perm.swap(i, j);
        }
        let hoarders = &perm[..nh as usize];
        let farmers = &perm[nh as usize..(nh + nf) as usize];
        let bots = &perm[(nh + nf) as usize..k];
        let mut abnormal = vec![false; n];
        for &u in &perm[..k] {
            abnormal[u as usize] = true;
        }
        let groups = if nf == 0 {
            0
        } else {
            (nf / cfg.farm_size).max(1) as usize
        };

        // Devices: up to two per normal user, one per farm, all distinct.
        let dev_scr = Scramble::new(&mut rng, 2 * n as u64 + groups as u64);
        let ip_scr = Scramble::new(&mut rng, IP_SPACE as u64);
        let mut dev1 = Vec::with_capacity(n);
        let mut dev2 = Vec::with_capacity(n);
        let mut ip = Vec::with_capacity(n);
        let mut prev_shared = false;
        for u in 0..n {
            dev1.push(dev_scr.map(2 * u as u64));
            let second = !abnormal[u] && rng.gen_bool(0.4);
            dev2.push(if second {
                dev_scr.map(2 * u as u64 + 1)
            } else {
                NONE
            });
            // A few two-person households share one address: shared IPs
            // alone must not be proof of a farm.
            let shared =
                u > 0 && !prev_shared && !abnormal[u] && !abnormal[u - 1] && rng.gen_bool(0.03);
            prev_shared = shared;
            ip.push(if shared {
                ip[u - 1]
            } else {
                ip_scr.map(u as u64)
            });
        }

        let mut normals: Vec<u32> = (0..cfg.users).filter(|&u| !abnormal[u as usize]).collect();
        for i in (1..normals.len()).rev() {
            let j = rng.gen_range(0..=i);
            normals.swap(i, j);
        }
        let n_normal = normals.len();
        let n_regular = ((n_normal as f64 * P_REGULAR).round() as usize).min(n_normal);
        let w_reg = 3.0 * n_regular as f64;
        let p_pick_regular = w_reg / (w_reg + (n_normal - n_regular) as f64);

        // Arrival rate: solve eps = lambda * (E[normal len] + abnormal load)
        // where abnormal actors go out at a multiple of a normal user's
        // session frequency lambda / n_normal.
        let checkout = cfg.checkout_rate;
        let e_len = P_BROWSE * (1.0 + (1.0 - BROWSE_STOP) / BROWSE_STOP)
            + (1.0 - P_BROWSE) * (SHOP_MIN as f64 + (1.0 - SHOP_STOP) / SHOP_STOP + 0.1 + checkout);
        let e_hoard = 2.0 + (1.0 - HOARD_STOP) / HOARD_STOP + HOARDER_CHECKOUT;
        let e_farm = 2.0 + 2.0 * 5.5 + FARM_CHECKOUT;
        let e_bot = (BOT_MIN_EVENTS + BOT_MAX_EVENTS) as f64 / 2.0;
        let abnormal_load = (nh as f64 * e_hoard / HOARDER_GAP_FACTOR
            + nf as f64 * e_farm / FARM_GAP_FACTOR
            + nb as f64 * e_bot / BOT_GAP_FACTOR)
            / n_normal as f64;
        let lambda_per_s = cfg.events_per_sec / (e_len + abnormal_load);
        let user_session_gap_ms = 1000.0 * n_normal as f64 / lambda_per_s;
        let gap = |f: f64| (f * user_session_gap_ms).max(MIN_ACTOR_GAP_MS);

        let mut actors = Vec::new();
        for &u in hoarders {
            actors.push(Actor {
                kind: ActorKind::Hoarder,
                users: vec![u],
                device: dev1[u as usize],
                ip: ip[u as usize],
                targets: Vec::new(),
                mean_gap_ms: gap(HOARDER_GAP_FACTOR),
                active: 0,
                hoarded: false,
            });
        }
        for g in 0..groups {
            let lo = g * farmers.len() / groups;
            let hi = (g + 1) * farmers.len() / groups;
            let n_targets = rng.gen_range(2..=4);
            let targets = (0..n_targets)
                .map(|_| rng.gen_range(0..cat.len()))
                .collect();
            let (device, fip) = (
                dev_scr.map(2 * n as u64 + g as u64),
                ip_scr.map(n as u64 + g as u64),
            );
            for &u in &farmers[lo..hi] {
                dev1[u as usize] = device;
                ip[u as usize] = fip;
            }
            actors.push(Actor {
                kind: ActorKind::Farm,
                users: farmers[lo..hi].to_vec(),
                device,
                ip: fip,
                targets,
                mean_gap_ms: gap(FARM_GAP_FACTOR),
                active: 0,
                hoarded: false,
            });
        }
        for &u in bots {
            actors.push(Actor {
                kind: ActorKind::Bot,
                users: vec![u],
                device: dev1[u as usize],
                ip: ip[u as usize],
                targets: Vec::new(),
                mean_gap_ms: gap(BOT_GAP_FACTOR),
                active: 0,
                hoarded: false,
            });
        }

        let amplitude = cfg.diurnal_amplitude;
        let mut sim = Sim {
            rng,
            cat,
            queue: Queue::default(),
            sessions: Vec::new(),
            free: Vec::new(),
            carts: vec![Vec::new(); n],
            active: vec![0; n],
            dev1,
            dev2,
            ip,
            normals,
            n_regular,
            p_pick_regular,
            actors,
            arrival_clock: cfg.start_ms as f64,
            lambda_max_per_ms: lambda_per_s * (1.0 + amplitude) / 1000.0,
            amplitude,
            peak_hour: cfg.peak_hour_utc,
            price_gap_mean_ms: if cfg.price_change_rate > 0.0 {
                1000.0 / (cfg.price_change_rate * cfg.events_per_sec)
            } else {
                f64::INFINITY
            },
            checkout_rate: checkout,
            next_session: 0,
            next_order: 0,
            next_event: 0,
            price_changes: Vec::new(),
        };

        // Start in steady state rather than with an empty shop: open as many
        // fresh sessions as are concurrently active on average.  (Fresh, not
        // mid-funnel, so no cart holds items the stream never showed being
        // added.)  Their first clicks follow the renewal-theory residual of
        // the think time: a random instant falls in a long gap more often
        // than in a short one, so spreading them uniformly over one mean gap
        // would open the stream with a burst.
        let start = cfg.start_ms;
        let mean_dur_ms = (e_len - 1.0).max(0.0) * HUMAN_GAP_MEAN_MS;
        let concurrent = lambda_per_s * sim.diurnal(start as f64) * mean_dur_ms / 1000.0;
        let concurrent = concurrent.round() as usize;
        for _ in 0..concurrent {
            let gap = loop {
                let g = human_gap(&mut sim.rng);
                if sim.rng.gen_range(0..=MAX_HUMAN_GAP_MS) < g {
                    break g;
                }
            };
            let t = start + sim.rng.gen_range(0..gap);
            sim.spawn_normal(t);
        }
        let first = sim.next_arrival();
        sim.push(first, TASK_ARRIVAL);
        if sim.price_gap_mean_ms.is_finite() {
            let t = start + exp_sample(&mut sim.rng, sim.price_gap_mean_ms) as i64;
            sim.push(t, TASK_PRICE);
        }
        // Each actor's first outing falls anywhere in its first cycle, as if
        // it had been running before the stream started.
        for a in 0..sim.actors.len() {
            let g = sim.actors[a].mean_gap_ms;
            let t = start + (sim.rng.gen::<f64>() * g) as i64;
            sim.push(t, TASK_ACTOR | a as u32);
        }
        sim
    }

    #[inline]
    fn push(&mut self, ts: i64, task: u32) {
        self.queue.push((ts, task, 0));
    }

    /// Session start rate multiplier over the day (mean 1).
    fn diurnal(&self, t_ms: f64) -> f64 {
        let hour = t_ms.rem_euclid(86_400_000.0) / 3_600_000.0;
        1.0 + self.amplitude * (std::f64::consts::TAU * (hour - self.peak_hour) / 24.0).cos()
    }

    /// Next normal session start of a non-homogeneous Poisson process
    /// (thinning), so the daily rhythm needs no precomputed schedule.
    fn next_arrival(&mut self) -> i64 {
        let peak = 1.0 + self.amplitude;
        loop {
            self.arrival_clock += exp_sample(&mut self.rng, 1.0 / self.lambda_max_per_ms);
            if self.rng.gen::<f64>() * peak < self.diurnal(self.arrival_clock) {
                return self.arrival_clock as i64;
            }
        }
    }

    /// Prefers a user without an open session.  When the population is too
    /// small for the configured rate, a busy user gets a second concurrent
    /// session (another tab) rather than the stream silently falling short
    /// of `events_per_sec`; both then share the user's cart.
    fn pick_normal_user(&mut self) -> u32 {
        let n = self.normals.len();
        let r = self.n_regular;
        let mut u = 0;
        for _ in 0..16 {
            let i = if r > 0 && (r == n || self.rng.gen::<f64>() < self.p_pick_regular) {
                self.rng.gen_range(0..r)
            } else {
                self.rng.gen_range(r..n)
            };
            u = self.normals[i];
            if self.active[u as usize] == 0 {
                break;
            }
        }
        u
    }

    fn new_session(&mut self, kind: Kind, user: u32, actor: u32) -> Session {
        let u = user as usize;
        let device = if self.dev2[u] != NONE && self.rng.gen_bool(0.3) {
            self.dev2[u]
        } else {
            self.dev1[u]
        };
        let id = self.next_session;
        self.next_session += 1;
        Session {
            kind,
            user,
            id,
            device,
            ip: self.ip[u],
            actor,
            steps_left: 0,
            step: 0,
            interest: 0,
            viewed: NONE,
            added: false,
            checkout: false,
            finishing: false,
            target: 0,
            cycles: 0,
        }
    }

    fn start(&mut self, s: Session, ts: i64) {
        self.active[s.user as usize] += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = s;
                slot
            }
            None => {
                self.sessions.push(s);
                (self.sessions.len() - 1) as u32
            }
        };
        self.queue.push((ts, slot, s.user));
    }

    fn spawn_normal(&mut self, ts: i64) {
        let user = self.pick_normal_user();
        if self.active[user as usize] == u16::MAX {
            return;
        }
        let browse = self.rng.gen::<f64>() < P_BROWSE;
        let mut s = self.new_session(if browse { Kind::Browse } else { Kind::Shop }, user, NONE);
        s.interest = self.cat.by_category.sample(&mut self.rng) as u32;
        if browse {
            s.steps_left = 1 + geom(&mut self.rng, BROWSE_STOP).min(200) as u32;
        } else {
            s.steps_left = SHOP_MIN + geom(&mut self.rng, SHOP_STOP).min(200) as u32;
            s.checkout = self.rng.gen::<f64>() < self.checkout_rate * propensity(user);
        }
        self.start(s, ts);
    }

    fn start_actor(&mut self, a: usize, ts: i64) {
        let kind = self.actors[a].kind;
        let n_products = self.cat.len();
        match kind {
            ActorKind::Hoarder => {
                let user = self.actors[a].users[0];
                let mut s = self.new_session(Kind::Hoard, user, a as u32);
                s.steps_left = 2 + geom(&mut self.rng, HOARD_STOP).min(100) as u32;
                s.checkout = self.rng.gen::<f64>() < HOARDER_CHECKOUT;
                self.actors[a].active = 1;
                self.start(s, ts);
            }
            ActorKind::Bot => {
                let user = self.actors[a].users[0];
                let mut s = self.new_session(Kind::Bot, user, a as u32);
                s.steps_left = self.rng.gen_range(BOT_MIN_EVENTS..=BOT_MAX_EVENTS);
                s.target = self.rng.gen_range(0..n_products);
                self.actors[a].active = 1;
                self.start(s, ts);
            }
            ActorKind::Farm => {
                // One burst: every account runs the same script, staggered by
                // a second or so, so their add/remove cycles and checkouts
                // land together.
                let cycles = self.rng.gen_range(3..=8);
                let checkout = self.rng.gen::<f64>() < FARM_CHECKOUT;
                let (device, ip) = (self.actors[a].device, self.actors[a].ip);
                let members = self.actors[a].users.len();
                let mut t = ts;
                for i in 0..members {
                    let user = self.actors[a].users[i];
                    let ti = self.rng.gen_range(0..self.actors[a].targets.len());
                    let mut s = self.new_session(Kind::Farm, user, a as u32);
                    s.device = device;
                    s.ip = ip;
                    s.target = self.actors[a].targets[ti];
                    s.cycles = cycles;
                    s.checkout = checkout;
                    s.steps_left = 2 + 2 * cycles + checkout as u32;
                    self.start(s, t);
                    t += self.rng.gen_range(200..=1500);
                }
                self.actors[a].active = members as u32;
            }
        }
    }

    fn change_price(&mut self, ts: i64) {
        let p = self.cat.global.sample(&mut self.rng);
        let old = self.cat.price[p];
        // Integer per-mille factor: markdowns of 5–30% are commoner than
        // 3–15% rises.  Cents stay integers throughout.
        let permille: i64 = if self.rng.gen_bool(0.6) {
            1000 - self.rng.gen_range(50..=300)
        } else {
            1000 + self.rng.gen_range(30..=150)
        };
        let mut new = (old * permille + 500) / 1000;
        if new >= 200 {
            new = new / 100 * 100 - 1; // keep the x.99 look
        }
        if new == old {
            new = if old > 100 { old - 100 } else { old + 1 };
        }
        let new = new.max(1);
        self.cat.price[p] = new;
        self.cat.products[p].price_cents = new;
        self.price_changes.push(PriceChangeRec {
            ts,
            from_event: self.next_event,
            product: p as u32,
            old_cents: old,
            new_cents: new,
        });
    }

    /// Runs the simulation up to and including its next event.
    pub fn next_event(&mut self) -> Event {
        loop {
            let (ts, task, _) = self.queue.peek().expect("arrival task is perpetual");
            match task {
                TASK_ARRIVAL => {
                    self.queue.pop();
                    self.spawn_normal(ts);
                    let t = self.next_arrival();
                    self.push(t, TASK_ARRIVAL);
                }
                TASK_PRICE => {
                    self.queue.pop();
                    self.change_price(ts);
                    let t = ts + 1 + exp_sample(&mut self.rng, self.price_gap_mean_ms) as i64;
                    self.push(t, TASK_PRICE);
                }
                t if t & TASK_ACTOR != 0 => {
                    self.queue.pop();
                    self.start_actor((t & !TASK_ACTOR) as usize, ts);
                }
                slot => {
                    let (ev, next) = self.step(slot as usize, ts);
                    match next {
                        Some(nts) => {
                            self.queue.replace_top((nts, slot, ev.user));
                        }
                        None => {
                            self.queue.pop();
                            self.end_session(slot, ts);
                        }
                    }
                    self.prefetch_next();
                    return ev;
                }
            }
        }
    }

    /// Sessions and carts are scattered over megabytes, so stepping a
    /// session is a cache miss or two; asking for the next session's memory
    /// now lets that latency overlap with formatting the current line.
    #[inline]
    fn prefetch_next(&self) {
        if let Some(e) = self.queue.peek() {
            self.prefetch_task(e);
        }
        for &e in self.queue.upcoming() {
            self.prefetch_task(e);
        }
    }

    #[inline(always)]
    fn prefetch_task(&self, (_, task, user): crate::queue::Entry) {
        if task < TASK_ACTOR {
            let s = self.sessions.as_ptr().wrapping_add(task as usize) as *const u8;
            prefetch(s);
            prefetch(s.wrapping_add(std::mem::size_of::<Session>() - 1));
            prefetch(self.carts.as_ptr().wrapping_add(user as usize) as *const u8);
        }
    }

    fn end_session(&mut self, slot: u32, ts: i64) {
        let s = self.sessions[slot as usize];
        self.active[s.user as usize] -= 1;
        self.free.push(slot);
        if s.actor != NONE {
            let a = s.actor as usize;
            self.actors[a].active -= 1;
            if self.actors[a].active == 0 {
                let gap = exp_sample(&mut self.rng, self.actors[a].mean_gap_ms);
                self.push(ts + 1 + gap as i64, TASK_ACTOR | a as u32);
            }
        }
    }

    #[inline]
    fn event(&mut self, s: &Session, ts: i64, action: Action, product: u32, qty: u32) -> Event {
        let id = self.next_event;
        self.next_event += 1;
        let (price_cents, category, order) = if action == Action::Checkout {
            let o = self.next_order;
            self.next_order += 1;
            (0, 0, o)
        } else {
            (
                self.cat.price[product as usize],
                self.cat.category[product as usize],
                0,
            )
        };
        Event {
            id,
            ts,
            user: s.user,
            session: s.id,
            action,
            product,
            qty,
            price_cents,
            category,
            order,
            device: s.device,
            ip: s.ip,
        }
    }

    fn cart_add(&mut self, user: u32, product: u32, qty: u32) {
        let cart = &mut self.carts[user as usize];
        match cart.iter_mut().find(|l| l.product == product) {
            Some(l) => l.qty = l.qty.saturating_add(qty),
            None => cart.push(CartLine { product, qty }),
        }
    }

    /// Takes `qty` of `product` out; the caller guarantees it is there.
    fn cart_take(&mut self, user: u32, product: u32, qty: u32) {
        let cart = &mut self.carts[user as usize];
        let i = cart
            .iter()
            .position(|l| l.product == product)
            .expect("removing a product that is in the cart");
        debug_assert!(cart[i].qty >= qty);
        cart[i].qty -= qty;
        if cart[i].qty == 0 {
            cart.swap_remove(i);
        }
    }

    /// Removes all (usually) or part of a random cart line.
    fn remove_random(&mut self, user: u32, p_whole: f64) -> (u32, u32) {
        let len = self.carts[user as usize].len();
        let i = self.rng.gen_range(0..len);
        let line = self.carts[user as usize][i];
        let qty = if line.qty > 1 && self.rng.gen::<f64>() >= p_whole {
            self.rng.gen_range(1..line.qty)
        } else {
            line.qty
        };
        self.cart_take(user, line.product, qty);
        (line.product, qty)
    }

    /// Sets a random line to `f(old qty)`; returns (product, new qty).
    fn update_random(
        &mut self,
        user: u32,
        f: impl FnOnce(&mut SmallRng, u32) -> u32,
    ) -> (u32, u32) {
        let len = self.carts[user as usize].len();
        let i = self.rng.gen_range(0..len);
        let old = self.carts[user as usize][i].qty;
        let new = f(&mut self.rng, old).max(1);
        self.carts[user as usize][i].qty = new;
        (self.carts[user as usize][i].product, new)
    }

    fn checkout(&mut self, s: &Session, ts: i64) -> Event {
        self.carts[s.user as usize].clear();
        self.event(s, ts, Action::Checkout, 0, 0)
    }

    /// Emits the session's next event and says when (if ever) it clicks again.
    fn step(&mut self, slot: usize, ts: i64) -> (Event, Option<i64>) {
        let mut s = self.sessions[slot];
        let out = match s.kind {
            Kind::Browse => self.step_browse(&mut s, ts),
            Kind::Shop => self.step_shop(&mut s, ts),
            Kind::Hoard => self.step_hoard(&mut s, ts),
            Kind::Farm => self.step_farm(&mut s, ts),
            Kind::Bot => self.step_bot(&mut s, ts),
        };
        self.sessions[slot] = s;
        out
    }

    fn view_for(&mut self, s: &Session) -> u32 {
        if self.rng.gen::<f64>() < 0.7 {
            self.cat.in_category(&mut self.rng, s.interest)
        } else {
            self.cat.global.sample(&mut self.rng) as u32
        }
    }

    fn step_browse(&mut self, s: &mut Session, ts: i64) -> (Event, Option<i64>) {
        let p = self.view_for(s);
        let ev = self.event(s, ts, Action::View, p, 1);
        s.steps_left -= 1;
        let next = (s.steps_left > 0).then(|| ts + human_gap(&mut self.rng));
        (ev, next)
    }

    fn step_shop(&mut self, s: &mut Session, ts: i64) -> (Event, Option<i64>) {
        if s.finishing {
            if self.carts[s.user as usize].is_empty() {
                // A concurrent session of the same user already bought it
                // all; this tab just has a last look around.
                let p = self.view_for(s);
                return (self.event(s, ts, Action::View, p, 1), None);
            }
            return (self.checkout(s, ts), None);
        }
        s.steps_left -= 1;
        let user = s.user;
        let force_add = s.steps_left == 0 && !s.added;
        // Intent shows: a shopper who will buy puts more of what they look at in the cart
        // and takes less out (what the purchase-intent model learns from).
        let (p_add, p_remove) = if s.checkout { (0.6, 0.03) } else { (0.3, 0.09) };
        let ev = if s.viewed != NONE && (force_add || self.rng.gen::<f64>() < p_add) {
            let (p, q) = (s.viewed, human_qty(&mut self.rng));
            self.cart_add(user, p, q);
            s.added = true;
            s.viewed = NONE;
            self.event(s, ts, Action::Add, p, q)
        } else {
            // The cart is only looked at when the dice ask for it: it is
            // a cache miss, and most steps are views.
            let r = self.rng.gen::<f64>();
            let in_cart = r < 0.13 && !self.carts[user as usize].is_empty();
            if in_cart && r < p_remove {
                let (p, q) = self.remove_random(user, 0.75);
                self.event(s, ts, Action::Remove, p, q)
            } else if in_cart && r < 0.13 {
                let (p, q) = self.update_random(user, |rng, q| match q {
                    1 => rng.gen_range(2..=3),
                    q if q >= 5 || rng.gen_bool(0.5) => q - 1,
                    q => q + 1,
                });
                self.event(s, ts, Action::UpdateQty, p, q)
            } else {
                let p = self.view_for(s);
                s.viewed = p;
                self.event(s, ts, Action::View, p, 1)
            }
        };
        if s.steps_left == 0 {
            if !s.added {
                // A shopper always puts something in the cart eventually.
                s.steps_left = 1;
            } else if s.checkout && !self.carts[user as usize].is_empty() {
                s.finishing = true;
            } else {
                return (ev, None); // abandoned: the user just stops
            }
        }
        (ev, Some(ts + human_gap(&mut self.rng)))
    }

    fn hoard_qty(&mut self, p: u32) -> u32 {
        if self.rng.gen::<f64>() < 0.65 {
            self.rng.gen_range(20..=200)
        } else {
            let stock = self.cat.stock[p as usize] as u64;
            let share = self.rng.gen_range(40..=90);
            ((stock * share / 100) as u32).clamp(20, 10_000)
        }
    }

    fn step_hoard(&mut self, s: &mut Session, ts: i64) -> (Event, Option<i64>) {
        if s.finishing {
            return (self.checkout(s, ts), None);
        }
        s.steps_left -= 1;
        let user = s.user;
        let force_add = s.steps_left == 0 && !s.added;
        let ev = if s.viewed != NONE && (force_add || self.rng.gen::<f64>() < 0.6) {
            let p = s.viewed;
            let q = if self.rng.gen::<f64>() < 0.8 {
                self.actors[s.actor as usize].hoarded = true;
                self.hoard_qty(p)
            } else {
                human_qty(&mut self.rng)
            };
            self.cart_add(user, p, q);
            s.added = true;
            s.viewed = NONE;
            self.event(s, ts, Action::Add, p, q)
        } else {
            let r = self.rng.gen::<f64>();
            let in_cart = r < 0.16 && !self.carts[user as usize].is_empty();
            if in_cart && r < 0.12 {
                let (p, q) = self.update_random(user, |rng, q| {
                    let bump = (q as u64 * rng.gen_range(20..=100) / 100).max(1) as u32;
                    q.saturating_add(bump).min(q.max(10_000))
                });
                self.event(s, ts, Action::UpdateQty, p, q)
            } else if in_cart && r < 0.16 {
                let (p, q) = self.remove_random(user, 0.3);
                self.event(s, ts, Action::Remove, p, q)
            } else {
                // Hoarders go after what is in demand.
                let p = self.cat.global.sample(&mut self.rng) as u32;
                s.viewed = p;
                self.event(s, ts, Action::View, p, 1)
            }
        };
        if s.steps_left == 0 {
            if !s.added {
                s.steps_left = 1;
            } else if s.checkout && !self.carts[user as usize].is_empty() {
                s.finishing = true;
            } else {
                return (ev, None);
            }
        }
        (ev, Some(ts + human_gap(&mut self.rng)))
    }

    /// Script: view, add, then `cycles` x (remove 1, add 1), then maybe
    /// checkout — the rapid cycling is what inflates "added to cart" counts.
    fn step_farm(&mut self, s: &mut Session, ts: i64) -> (Event, Option<i64>) {
        let t = s.target;
        let k = s.step;
        let ev = if k == 0 {
            self.event(s, ts, Action::View, t, 1)
        } else if k == 1 || (k < 2 + 2 * s.cycles && (k - 2) % 2 == 1) {
            self.cart_add(s.user, t, 1);
            self.event(s, ts, Action::Add, t, 1)
        } else if k < 2 + 2 * s.cycles {
            self.cart_take(s.user, t, 1);
            self.event(s, ts, Action::Remove, t, 1)
        } else {
            self.checkout(s, ts)
        };
        s.step += 1;
        let next = (s.step < s.steps_left).then(|| ts + self.rng.gen_range(300..=1500));
        (ev, next)
    }

    /// Scrapes the catalogue in order and probes stock with add/remove, at
    /// a pace no human clicks.
    fn step_bot(&mut self, s: &mut Session, ts: i64) -> (Event, Option<i64>) {
        s.steps_left -= 1;
        let user = s.user;
        let r = self.rng.gen::<f64>();
        let ev = if s.viewed != NONE && r < 0.12 {
            let p = s.viewed;
            self.cart_add(user, p, 1);
            s.viewed = NONE;
            self.event(s, ts, Action::Add, p, 1)
        } else if r < 0.24 && !self.carts[user as usize].is_empty() {
            let (p, q) = self.remove_random(user, 1.0);
            self.event(s, ts, Action::Remove, p, q)
        } else {
            let p = s.target;
            s.target = (p + 1 + self.rng.gen_range(0..3)) % self.cat.len();
            s.viewed = p;
            self.event(s, ts, Action::View, p, 1)
        };
        let next = (s.steps_left > 0).then(|| ts + self.rng.gen_range(20..=120));
        (ev, next)
    }
}
