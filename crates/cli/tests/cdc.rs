//! Binlog CDC end to end: a private MariaDB with the binlog on, `cartpulse run` with the
//! `mysql_cdc` source, row changes while it runs, a SIGKILL, more changes while it is down,
//! a restart — and the committed output must equal a `cartpulse replay` of the events those
//! changes stand for. Then schema changes: followed by column name, or a clear stop.

mod common;
mod live;
mod sources;

use cartpulse_connectors::mysql_cdc::testkit::MariaDb;
use common::Rng;
use serde_json::json;
use sources::*;
use std::collections::BTreeMap;
use std::time::Duration;

const SCHEMA: &str = "CREATE DATABASE shop; USE shop;
    CREATE TABLE cart_items (
        id INT PRIMARY KEY,
        user_id VARCHAR(32) NOT NULL,
        sku VARCHAR(32) NOT NULL,
        qty INT NOT NULL,
        price DECIMAL(10,2) NOT NULL,
        updated_at DATETIME(3) NOT NULL
    ) ENGINE=InnoDB;
    CREATE TABLE orders (
        id INT AUTO_INCREMENT PRIMARY KEY,
        order_id VARCHAR(32) NOT NULL,
        user_id VARCHAR(32) NOT NULL,
        created_at DATETIME(3) NOT NULL
    ) ENGINE=InnoDB;";

const BASE: i64 = 1_764_000_000;
const PRICES: [&str; 5] = ["9.99", "5.00", "19.90", "0.50", "120.00"];

#[derive(Clone, Debug)]
struct Row {
    user: String,
    sku: String,
    qty: u32,
    price: &'static str,
}

/// The shop's tables as the test changes them, and the cart events those changes stand for.
struct Shop {
    rows: BTreeMap<u32, Row>,
    next_id: u32,
    /// Event time of the next change, epoch seconds.
    t: i64,
    orders: u32,
    events: Vec<String>,
    rng: Rng,
}

impl Shop {
    fn new(seed: u64) -> Shop {
        Shop {
            rows: BTreeMap::new(),
            next_id: 1,
            t: BASE,
            orders: 0,
            events: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    fn event(
        &mut self,
        ts_ms: i64,
        user: &str,
        action: &str,
        sku: Option<&str>,
        qty: Option<u32>,
        price: Option<&str>,
    ) {
        let mut v = json!({
            "event_id": format!("x{}", self.events.len()),
            "ts": ts_ms,
            "user_id": user,
            "action": action,
        });
        if let Some(s) = sku {
            v["sku"] = json!(s);
        }
        if let Some(q) = qty {
            v["qty"] = json!(q);
        }
        if let Some(p) = price {
            v["price"] = json!(p);
        }
        self.events.push(v.to_string());
    }

    /// A (user, sku) pair no row has: one row per cart line, as cart tables are.
    fn free_line(&mut self) -> (String, String) {
        loop {
            let u = format!("u{}", self.rng.below(8));
            let s = format!("p{}", self.rng.below(12));
            if !self.rows.values().any(|r| r.user == u && r.sku == s) {
                return (u, s);
            }
        }
    }

    fn insert_sql(&mut self) -> String {
        let (user, sku) = self.free_line();
        let id = self.next_id;
        self.next_id += 1;
        let qty = 1 + self.rng.below(4) as u32;
        let price = PRICES[self.rng.below(5) as usize];
        let t = self.t;
        self.event(t * 1000, &user, "add", Some(&sku), Some(qty), Some(price));
        let sql = format!(
            "INSERT INTO cart_items (id, user_id, sku, qty, price, updated_at) \
             VALUES ({id}, '{user}', '{sku}', {qty}, {price}, FROM_UNIXTIME({t}));"
        );
        self.rows.insert(
            id,
            Row {
                user,
                sku,
                qty,
                price,
            },
        );
        sql
    }

    /// One random change (one autocommit statement, or an order and its cart's deletion).
    fn change(&mut self) -> String {
        self.t += 1;
        let t = self.t;
        let ids: Vec<u32> = self.rows.keys().copied().collect();
        let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
        let k = if ids.len() < 6 { 0 } else { self.rng.below(10) };
        match k {
            0..=2 => self.insert_sql(),
            3 | 4 => {
                let id = pick(&mut self.rng);
                let q = 1 + self.rng.below(5) as u32;
                let r = self.rows.get_mut(&id).unwrap();
                let changed = r.qty != q;
                r.qty = q;
                let r = r.clone();
                if changed {
                    self.event(
                        t * 1000,
                        &r.user,
                        "update_qty",
                        Some(&r.sku),
                        Some(q),
                        Some(r.price),
                    );
                }
                format!("UPDATE cart_items SET qty = {q}, updated_at = FROM_UNIXTIME({t}) WHERE id = {id};")
            }
            5 => {
                let id = pick(&mut self.rng);
                let p = PRICES[self.rng.below(5) as usize];
                let r = self.rows.get_mut(&id).unwrap();
                let changed = r.price != p;
                r.price = p;
                let r = r.clone();
                if changed {
                    self.event(
                        t * 1000,
                        &r.user,
                        "update_qty",
                        Some(&r.sku),
                        Some(r.qty),
                        Some(p),
                    );
                }
                format!("UPDATE cart_items SET price = {p}, updated_at = FROM_UNIXTIME({t}) WHERE id = {id};")
            }
            6 => {
                // the row moves to another sku: the old line goes, a new one comes
                let id = pick(&mut self.rng);
                let user = self.rows[&id].user.clone();
                let sku = loop {
                    let s = format!("p{}", self.rng.below(12));
                    if !self.rows.values().any(|r| r.user == user && r.sku == s) {
                        break s;
                    }
                };
                let old = self.rows[&id].clone();
                self.event(
                    t * 1000,
                    &old.user,
                    "remove",
                    Some(&old.sku),
                    Some(old.qty),
                    Some(old.price),
                );
                self.event(
                    t * 1000,
                    &old.user,
                    "add",
                    Some(&sku),
                    Some(old.qty),
                    Some(old.price),
                );
                self.rows.get_mut(&id).unwrap().sku = sku.clone();
                format!("UPDATE cart_items SET sku = '{sku}', updated_at = FROM_UNIXTIME({t}) WHERE id = {id};")
            }
            7 | 8 => {
                let id = pick(&mut self.rng);
                let r = self.rows.remove(&id).unwrap();
                self.event(
                    t * 1000,
                    &r.user,
                    "remove",
                    Some(&r.sku),
                    Some(r.qty),
                    Some(r.price),
                );
                format!("SET TIMESTAMP = {t}; DELETE FROM cart_items WHERE id = {id};")
            }
            _ => {
                // an order, then the application empties the cart
                let user = self.rows[&pick(&mut self.rng)].user.clone();
                self.orders += 1;
                let o = format!("o{}", self.orders);
                let v = json!({
                    "event_id": format!("x{}", self.events.len()),
                    "ts": t * 1000,
                    "user_id": user,
                    "action": "checkout",
                    "order_id": o,
                });
                self.events.push(v.to_string());
                let gone: Vec<u32> = self
                    .rows
                    .iter()
                    .filter(|(_, r)| r.user == user)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    let r = self.rows.remove(&id).unwrap();
                    self.event(
                        t * 1000,
                        &r.user,
                        "remove",
                        Some(&r.sku),
                        Some(r.qty),
                        Some(r.price),
                    );
                }
                format!(
                    "SET TIMESTAMP = {t}; INSERT INTO orders (order_id, user_id, created_at) VALUES ('{o}', '{user}', FROM_UNIXTIME({t})); \
                     DELETE FROM cart_items WHERE user_id = '{user}';"
                )
            }
        }
    }

    fn batch(&mut self, db: &MariaDb, n: usize) {
        let mut sql = String::from("USE shop; SET time_zone = '+00:00';\n");
        for _ in 0..n {
            sql.push_str(&self.change());
            sql.push('\n');
        }
        db.sql(&sql);
    }

    /// The final order: far after everything, so every window and abandoned cart fires.
    fn sentinel(&mut self, db: &MariaDb) {
        let ms = self.t * 1000 + SENTINEL_AFTER_MS;
        self.events.push(
            json!({"event_id": "sentinel", "ts": ms, "user_id": "zz-sentinel", "action": "checkout", "order_id": "o-last"})
                .to_string(),
        );
        db.sql(&format!(
            "USE shop; SET time_zone = '+00:00'; INSERT INTO orders (order_id, user_id, created_at) \
             VALUES ('o-last', 'zz-sentinel', FROM_UNIXTIME({}.{:03}));",
            ms / 1000,
            ms % 1000
        ));
    }

    fn carts(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut c: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for r in self.rows.values() {
            c.entry(r.user.clone())
                .or_default()
                .insert(r.sku.clone(), u64::from(r.qty));
        }
        c
    }
}

fn table_carts(db: &MariaDb) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut c: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for l in db
        .sql("SELECT user_id, sku, qty FROM shop.cart_items")
        .lines()
    {
        let f: Vec<&str> = l.split('\t').collect();
        c.entry(f[0].into())
            .or_default()
            .insert(f[1].into(), f[2].parse().unwrap());
    }
    c
}

fn source_toml(db: &MariaDb) -> String {
    format!(
        "[source]\ntype = \"mysql_cdc\"\nurl = \"{}\"\nserver_id = 901\nheartbeat = \"1s\"\n\
         snapshot_page_rows = 7\nmax_backoff = \"500ms\"\n\n[source.cart_items]\n\n[source.orders]\n",
        db.url("shop")
    )
}

/// The snapshot: rows that exist before the source first starts, in primary-key order.
fn seed(shop: &mut Shop, db: &MariaDb, n: usize) {
    let mut sql = String::from("USE shop; SET time_zone = '+00:00';\n");
    for _ in 0..n {
        shop.t += 1;
        sql.push_str(&shop.insert_sql());
        sql.push('\n');
    }
    db.sql(&sql);
}

#[test]
fn binlog_cdc_survives_sigkill_with_exactly_the_output_of_a_replay() {
    let db = MariaDb::start(&["--binlog-row-metadata=FULL"]);
    db.sql(SCHEMA);
    let mut shop = Shop::new(11);
    seed(&mut shop, &db, 30);
    shop.t += 60;

    let dirs = Dirs::new();
    let config = write_config(&dirs, &source_toml(&db));
    let mut run = spawn_run(&dirs, &config, 1);
    // the snapshot's position is fixed once the source is open, i.e. before the first
    // checkpoint: later changes belong to the stream
    wait_checkpoints(&dirs, &mut run, 1, Duration::from_secs(30));
    for i in 0..4 {
        shop.batch(&db, 40);
        if i == 2 {
            let c = checkpoints(&dirs);
            wait_checkpoints(&dirs, &mut run, c + 2, Duration::from_secs(10));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crash(&mut run);
    let committed = checkpoints(&dirs);
    assert!(committed >= 3, "killed after {committed} checkpoints");

    // while it is down
    shop.batch(&db, 40);
    shop.batch(&db, 40);

    let mut run = spawn_run(&dirs, &config, 2);
    shop.batch(&db, 40);
    std::thread::sleep(Duration::from_millis(300));
    shop.batch(&db, 40);
    shop.sentinel(&db);

    assert_eq!(
        shop.carts(),
        table_carts(&db),
        "the test's model of the table"
    );
    let want = expected(&dirs, &shop.events);
    wait_for_output(&dirs, &mut run, &want, Duration::from_secs(60));
    // every cart was abandoned after its last change: the last report is the final cart
    assert_eq!(
        last_abandoned_carts(&want),
        shop.carts(),
        "final cart state"
    );
    run.stop(Duration::from_secs(10));
}

#[test]
fn schema_changes_are_followed_by_name_and_a_dropped_column_stops_the_run() {
    let db = MariaDb::start(&["--binlog-row-metadata=FULL"]);
    db.sql(SCHEMA);
    let mut shop = Shop::new(23);
    seed(&mut shop, &db, 10);
    let dirs = Dirs::new();
    let config = write_config(&dirs, &source_toml(&db));
    let mut run = spawn_run(&dirs, &config, 1);
    wait_checkpoints(&dirs, &mut run, 1, Duration::from_secs(30));
    shop.batch(&db, 30);
    // a column before the mapped ones: every position after it shifts
    db.sql("USE shop; ALTER TABLE cart_items ADD COLUMN note VARCHAR(20) NULL AFTER user_id, ADD COLUMN extra INT NULL FIRST;");
    shop.batch(&db, 30);
    // a type change of a mapped column, still the same name
    db.sql("USE shop; ALTER TABLE cart_items MODIFY qty BIGINT NOT NULL;");
    shop.batch(&db, 30);
    shop.sentinel(&db);
    let want = expected(&dirs, &shop.events);
    wait_for_output(&dirs, &mut run, &want, Duration::from_secs(60));

    db.sql("USE shop; ALTER TABLE cart_items DROP COLUMN qty;");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = run.exited() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running after the column went\n{}",
            run.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = run.log();
    assert!(
        log.contains("source.cart_items.qty")
            && log.contains("`qty`")
            && log.contains("`shop`.`cart_items`"),
        "{}",
        run.log_tail(20)
    );
}
