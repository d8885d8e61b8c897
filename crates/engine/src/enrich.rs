//! Enrichment: product attributes (by sku) and user attributes (by user id) joined onto each
//! event right after it is decoded, from tables held in memory and reloaded on an interval.
//!
//! The decoder threads take a snapshot of the tables once per chunk (one read lock per
//! table), so the per-event cost is a hash lookup and an `Arc` copy, and a reload swaps the
//! whole table at once: no event ever sees half of an old table and half of a new one. A
//! reload that fails keeps the table it has (counted and logged); only the first load must
//! succeed, so a process never starts with an empty table it was told to use.

use cartpulse_model::{CartEvent, ProductInfo, UserInfo};
use compact_str::CompactString;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Dead-letter reasons of enrichment (`on_miss = "dead_letter"`).
pub const DEAD_LETTER_CODES: [&str; 2] = ["enrich_product_missing", "enrich_user_missing"];

/// What to do with an event whose key is not in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMiss {
    /// Keep the event without the table's attributes.
    #[default]
    Keep,
    /// Keep it with the table's configured default attributes.
    Default,
    /// Send it to the dead-letter output (`enrich_product_missing` / `enrich_user_missing`).
    DeadLetter,
}

pub type Rows<T> = hashbrown::HashMap<CompactString, Arc<T>>;

/// One full read of a reference table.
pub struct Loaded<T> {
    pub rows: Rows<T>,
    /// Rows skipped because a value could not be read (a price that is not a number, …).
    pub bad_rows: u64,
    /// The first of them, for the log.
    pub first_bad: Option<String>,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded {
            rows: Rows::default(),
            bad_rows: 0,
            first_bad: None,
        }
    }
}

/// Reads a whole reference table (a CSV file, a database table or query).
pub trait TableLoader<T>: Send + Sync {
    /// Where the table comes from, for logs and errors.
    fn describe(&self) -> String;
    fn load(&self) -> Result<Loaded<T>, String>;
}

pub struct TableSpec<T> {
    pub loader: Box<dyn TableLoader<T>>,
    pub on_miss: OnMiss,
    /// The attributes an event gets with `OnMiss::Default`.
    pub default: T,
    /// Reload interval; `None` loads once.
    pub refresh: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("enrichment table `{table}` ({from}): {why}")]
pub struct EnrichError {
    pub table: &'static str,
    pub from: String,
    pub why: String,
}

struct Table<T> {
    name: &'static str,
    loader: Box<dyn TableLoader<T>>,
    on_miss: OnMiss,
    default: Arc<T>,
    refresh: Option<Duration>,
    current: RwLock<Arc<Rows<T>>>,
}

impl<T> Table<T> {
    fn new(name: &'static str, spec: TableSpec<T>, m: &EnrichMetrics) -> Result<Self, EnrichError> {
        let t = Table {
            name,
            loader: spec.loader,
            on_miss: spec.on_miss,
            default: Arc::new(spec.default),
            refresh: spec.refresh,
            current: RwLock::new(Arc::new(Rows::default())),
        };
        t.reload(m).map_err(|why| EnrichError {
            table: name,
            from: t.loader.describe(),
            why,
        })?;
        Ok(t)
    }

    fn reload(&self, m: &EnrichMetrics) -> Result<(), String> {
        let outcome = |o: &str| m.refreshes.with_label_values(&[self.name, o]).inc();
        let loaded = match self.loader.load() {
            Ok(l) => l,
            Err(e) => {
                outcome("failed");
                return Err(e);
            }
        };
        if loaded.bad_rows > 0 {
            tracing::warn!(
                table = self.name,
                from = %self.loader.describe(),
                skipped = loaded.bad_rows,
                first = loaded.first_bad.as_deref().unwrap_or(""),
                "enrichment rows skipped: a value could not be read"
            );
        }
        m.bad_rows
            .with_label_values(&[self.name])
            .inc_by(loaded.bad_rows);
        m.rows
            .with_label_values(&[self.name])
            .set(loaded.rows.len() as i64);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded.rows);
        outcome("ok");
        Ok(())
    }

    fn snapshot(&self) -> TableView<T> {
        TableView {
            rows: self
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            on_miss: self.on_miss,
            default: self.default.clone(),
        }
    }
}

struct EnrichMetrics {
    lookups: IntCounterVec,
    rows: IntGaugeVec,
    refreshes: IntCounterVec,
    bad_rows: IntCounterVec,
    filled: IntCounterVec,
}

impl EnrichMetrics {
    fn new() -> Self {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        EnrichMetrics {
            lookups: cv(
                "cartpulse_enrich_lookups_total",
                "Enrichment lookups by table and result (hit, miss)",
                &["table", "result"],
            ),
            rows: IntGaugeVec::new(
                Opts::new(
                    "cartpulse_enrich_rows",
                    "Rows in each enrichment table as last loaded",
                ),
                &["table"],
            )
            .expect("valid metric"),
            refreshes: cv(
                "cartpulse_enrich_refreshes_total",
                "Enrichment table loads by outcome (ok, failed)",
                &["table", "outcome"],
            ),
            bad_rows: cv(
                "cartpulse_enrich_bad_rows_total",
                "Enrichment table rows skipped because a value could not be read",
                &["table"],
            ),
            filled: cv(
                "cartpulse_enrich_filled_total",
                "Event fields the event lacked, filled from an enrichment table",
                &["field"],
            ),
        }
    }
}

/// The product and user tables of one process, shared by all its decoder threads.
pub struct Enricher {
    products: Option<Table<ProductInfo>>,
    users: Option<Table<UserInfo>>,
    metrics: EnrichMetrics,
}

impl Enricher {
    /// Loads every configured table; a table that cannot be read fails here, at start-up.
    pub fn new(
        products: Option<TableSpec<ProductInfo>>,
        users: Option<TableSpec<UserInfo>>,
    ) -> Result<Enricher, EnrichError> {
        let metrics = EnrichMetrics::new();
        let products = products
            .map(|s| Table::new("products", s, &metrics))
            .transpose()?;
        let users = users
            .map(|s| Table::new("users", s, &metrics))
            .transpose()?;
        for t in products
            .as_ref()
            .map(|t| t.name)
            .into_iter()
            .chain(users.as_ref().map(|t| t.name))
        {
            for r in ["hit", "miss"] {
                metrics.lookups.with_label_values(&[t, r]);
            }
            metrics.refreshes.with_label_values(&[t, "failed"]);
            metrics.bad_rows.with_label_values(&[t]);
        }
        metrics.filled.with_label_values(&["category"]);
        Ok(Enricher {
            products,
            users,
            metrics,
        })
    }

    /// Adds the enrichment metrics to `r`; a registry that has them already (several
    /// pipelines of one process share one registry and one enricher) is left as it is.
    pub fn register(&self, r: &Registry) {
        let m = &self.metrics;
        for c in [&m.lookups, &m.refreshes, &m.bad_rows, &m.filled] {
            let _ = r.register(Box::new(c.clone()));
        }
        let _ = r.register(Box::new(m.rows.clone()));
    }

    /// The tables as they are now, for one chunk of events.
    pub fn snapshot(&self) -> View {
        View {
            products: self.products.as_ref().map(Table::snapshot),
            users: self.users.as_ref().map(Table::snapshot),
            counts: Counts::default(),
        }
    }

    /// Adds what a view counted to the metrics.
    pub fn record(&self, v: &mut View) {
        let c = std::mem::take(&mut v.counts);
        let m = &self.metrics;
        for (t, hit, miss) in [
            ("products", c.product_hits, c.product_misses),
            ("users", c.user_hits, c.user_misses),
        ] {
            if hit > 0 {
                m.lookups.with_label_values(&[t, "hit"]).inc_by(hit);
            }
            if miss > 0 {
                m.lookups.with_label_values(&[t, "miss"]).inc_by(miss);
            }
        }
        if c.filled_category > 0 {
            m.filled
                .with_label_values(&["category"])
                .inc_by(c.filled_category);
        }
    }

    /// Reloads every table now (what the refresh thread does on its interval).
    pub fn reload(&self) -> Result<(), EnrichError> {
        let err = |table: &'static str, from: String, why| EnrichError { table, from, why };
        if let Some(t) = &self.products {
            t.reload(&self.metrics)
                .map_err(|w| err(t.name, t.loader.describe(), w))?;
        }
        if let Some(t) = &self.users {
            t.reload(&self.metrics)
                .map_err(|w| err(t.name, t.loader.describe(), w))?;
        }
        Ok(())
    }

    /// Reloads each table with a `refresh` interval on its own thread until the handle is
    /// dropped. A failed reload keeps the table it has.
    pub fn start_refresh(self: &Arc<Self>) -> RefreshHandle {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::new();
        let mut spawn = |name: &'static str, every: Duration, f: Box<dyn Fn() + Send>| {
            let stop = stop_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("enrich-{name}"))
                    .spawn(move || {
                        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                            stop.recv_timeout(every)
                        {
                            f();
                        }
                    })
                    .expect("spawn enrichment refresh thread"),
            );
        };
        if let Some(every) = self.products.as_ref().and_then(|t| t.refresh) {
            let me = self.clone();
            spawn(
                "products",
                every,
                Box::new(move || me.refresh_one(me.products.as_ref())),
            );
        }
        if let Some(every) = self.users.as_ref().and_then(|t| t.refresh) {
            let me = self.clone();
            spawn(
                "users",
                every,
                Box::new(move || me.refresh_one(me.users.as_ref())),
            );
        }
        RefreshHandle {
            stop: Mutex::new(Some(stop_tx)),
            threads: Mutex::new(threads),
        }
    }

    fn refresh_one<T>(&self, t: Option<&Table<T>>) {
        if let Some(t) = t {
            if let Err(why) = t.reload(&self.metrics) {
                tracing::warn!(table = t.name, from = %t.loader.describe(), error = %why,
                    "enrichment reload failed; keeping the rows loaded before");
            }
        }
    }
}

/// Stops the refresh threads when dropped.
pub struct RefreshHandle {
    stop: Mutex<Option<crossbeam_channel::Sender<()>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Drop for RefreshHandle {
    fn drop(&mut self) {
        // dropping the sender wakes every thread's `recv_timeout` with `Disconnected`
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
    }
}

struct TableView<T> {
    rows: Arc<Rows<T>>,
    on_miss: OnMiss,
    default: Arc<T>,
}

impl<T> TableView<T> {
    /// The row for `key`, the default, or `Err` when the event must be dead-lettered.
    fn find(&self, key: &str, hits: &mut u64, misses: &mut u64) -> Result<Option<Arc<T>>, ()> {
        match self.rows.get(key) {
            Some(r) => {
                *hits += 1;
                Ok(Some(r.clone()))
            }
            None => {
                *misses += 1;
                match self.on_miss {
                    OnMiss::Keep => Ok(None),
                    OnMiss::Default => Ok(Some(self.default.clone())),
                    OnMiss::DeadLetter => Err(()),
                }
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    product_hits: u64,
    product_misses: u64,
    user_hits: u64,
    user_misses: u64,
    filled_category: u64,
}

/// An event that must go to the dead-letter output instead.
#[derive(Debug, PartialEq, Eq)]
pub struct Miss {
    pub reason: &'static str,
    pub detail: String,
}

/// The tables of one chunk; counts locally, added to the metrics by `Enricher::record`.
pub struct View {
    products: Option<TableView<ProductInfo>>,
    users: Option<TableView<UserInfo>>,
    counts: Counts,
}

impl View {
    /// Joins the tables onto `ev`. An event without a sku (a checkout) has no product to
    /// look up, which is not a miss. A category the event lacks comes from the product.
    pub fn apply(&mut self, ev: &mut CartEvent) -> Result<(), Miss> {
        let c = &mut self.counts;
        if let (Some(t), Some(sku)) = (&self.products, &ev.sku) {
            ev.product = t
                .find(sku, &mut c.product_hits, &mut c.product_misses)
                .map_err(|()| Miss {
                    reason: DEAD_LETTER_CODES[0],
                    detail: format!("sku `{sku}` is not in the product table"),
                })?;
            if ev.category.is_none() {
                if let Some(cat) = ev.product.as_ref().and_then(|p| p.category.clone()) {
                    ev.category = Some(cat);
                    c.filled_category += 1;
                }
            }
        }
        if let Some(t) = &self.users {
            ev.user = t
                .find(&ev.user_id, &mut c.user_hits, &mut c.user_misses)
                .map_err(|()| Miss {
                    reason: DEAD_LETTER_CODES[1],
                    detail: format!("user `{}` is not in the user table", ev.user_id),
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartpulse_model::Action;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A table whose content changes with every load (`generation` in the brand), or that
    /// fails while `fail` is set.
    struct Counting {
        loads: Arc<AtomicU64>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl TableLoader<ProductInfo> for Counting {
        fn describe(&self) -> String {
            "test table".into()
        }
        fn load(&self) -> Result<Loaded<ProductInfo>, String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("database is down".into());
            }
            let n = self.loads.fetch_add(1, Ordering::SeqCst);
            let mut l = Loaded::default();
            l.rows.insert(
                "s1".into(),
                Arc::new(ProductInfo {
                    category: Some("mugs".into()),
                    brand: Some(format!("gen{n}").into()),
                    stock: Some(5),
                    ..Default::default()
                }),
            );
            Ok(l)
        }
    }

    fn ev(user: &str, sku: Option<&str>, category: Option<&str>) -> CartEvent {
        CartEvent {
            event_id: "e".into(),
            ts: 0,
            user_id: user.into(),
            session_id: None,
            action: if sku.is_some() {
                Action::Add
            } else {
                Action::Checkout
            },
            sku: sku.map(Into::into),
            qty: Some(1),
            price: None,
            category: category.map(Into::into),
            device_id: None,
            ip: None,
            order_id: None,
            currency: None,
            product: None,
            user: None,
        }
    }

    fn spec(on_miss: OnMiss, refresh: Option<Duration>) -> (TableSpec<ProductInfo>, Counting) {
        let loads = Arc::new(AtomicU64::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mk = || Counting {
            loads: loads.clone(),
            fail: fail.clone(),
        };
        (
            TableSpec {
                loader: Box::new(mk()),
                on_miss,
                default: ProductInfo {
                    category: Some("unknown".into()),
                    ..Default::default()
                },
                refresh,
            },
            mk(),
        )
    }

    #[test]
    fn hits_fill_the_category_and_misses_follow_the_policy() {
        let users = TableSpec {
            loader: Box::new(FixedUsers),
            on_miss: OnMiss::DeadLetter,
            default: UserInfo::default(),
            refresh: None,
        };
        let e = Enricher::new(Some(spec(OnMiss::Default, None).0), Some(users)).unwrap();
        let mut v = e.snapshot();

        let mut hit = ev("u1", Some("s1"), None);
        v.apply(&mut hit).unwrap();
        assert_eq!(hit.category.as_deref(), Some("mugs"));
        assert_eq!(hit.product.as_ref().unwrap().stock, Some(5));
        assert_eq!(hit.user.as_ref().unwrap().segment.as_deref(), Some("vip"));

        // the event's own category wins over the table's
        let mut own = ev("u1", Some("s1"), Some("gifts"));
        v.apply(&mut own).unwrap();
        assert_eq!(own.category.as_deref(), Some("gifts"));

        let mut miss = ev("u1", Some("nope"), None);
        v.apply(&mut miss).unwrap();
        assert_eq!(miss.category.as_deref(), Some("unknown"));

        let mut checkout = ev("u1", None, None);
        v.apply(&mut checkout).unwrap();
        assert!(checkout.product.is_none());

        let m = v.apply(&mut ev("stranger", Some("s1"), None)).unwrap_err();
        assert_eq!(m.reason, "enrich_user_missing");
        assert!(m.detail.contains("stranger"), "{}", m.detail);

        e.record(&mut v);
        let r = Registry::new();
        e.register(&r);
        e.register(&r); // a second pipeline of the same process
        let get = |t: &str, res: &str| e.metrics.lookups.with_label_values(&[t, res]).get();
        assert_eq!(get("products", "hit"), 3);
        assert_eq!(get("products", "miss"), 1);
        assert_eq!(get("users", "hit"), 4);
        assert_eq!(get("users", "miss"), 1);
        assert_eq!(
            e.metrics.filled.with_label_values(&["category"]).get(),
            3,
            "the hit, the defaulted miss and the product hit of the dead-lettered event"
        );
        assert!(r
            .gather()
            .iter()
            .any(|f| f.get_name() == "cartpulse_enrich_rows"));
    }

    struct FixedUsers;
    impl TableLoader<UserInfo> for FixedUsers {
        fn describe(&self) -> String {
            "users".into()
        }
        fn load(&self) -> Result<Loaded<UserInfo>, String> {
            let mut l = Loaded::default();
            l.rows.insert(
                "u1".into(),
                Arc::new(UserInfo {
                    segment: Some("vip".into()),
                    ..Default::default()
                }),
            );
            Ok(l)
        }
    }

    #[test]
    fn a_first_load_that_fails_stops_start_up_and_a_later_one_keeps_the_old_rows() {
        let (s, ctl) = spec(OnMiss::Keep, None);
        ctl.fail.store(true, Ordering::SeqCst);
        let err = Enricher::new(Some(s), None).err().unwrap().to_string();
        assert!(
            err.contains("products") && err.contains("database is down"),
            "{err}"
        );

        let (s, ctl) = spec(OnMiss::Keep, None);
        let e = Enricher::new(Some(s), None).unwrap();
        ctl.fail.store(true, Ordering::SeqCst);
        assert!(e.reload().is_err());
        let mut x = ev("u", Some("s1"), None);
        e.snapshot().apply(&mut x).unwrap();
        assert_eq!(x.product.unwrap().brand.as_deref(), Some("gen0"));
        let failed = e
            .metrics
            .refreshes
            .with_label_values(&["products", "failed"]);
        assert_eq!(failed.get(), 1);
    }

    #[test]
    fn the_refresh_thread_swaps_whole_tables_and_stops_when_dropped() {
        let (s, ctl) = spec(OnMiss::Keep, Some(Duration::from_millis(10)));
        let e = Arc::new(Enricher::new(Some(s), None).unwrap());
        let before = e.snapshot();
        let h = e.start_refresh();
        let t0 = std::time::Instant::now();
        while ctl.loads.load(Ordering::SeqCst) < 3 {
            assert!(t0.elapsed() < Duration::from_secs(10), "no reload happened");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(h);
        let after = ctl.loads.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            ctl.loads.load(Ordering::SeqCst),
            after,
            "reloads after the stop"
        );
        // a snapshot taken before keeps the table it was taken of
        let mut x = ev("u", Some("s1"), None);
        let mut b = before;
        b.apply(&mut x).unwrap();
        assert_eq!(x.product.unwrap().brand.as_deref(), Some("gen0"));
        let mut y = ev("u", Some("s1"), None);
        e.snapshot().apply(&mut y).unwrap();
        assert_ne!(y.product.unwrap().brand.as_deref(), Some("gen0"));
    }
}
