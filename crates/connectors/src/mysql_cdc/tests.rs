//! Against a real MariaDB with the binlog on (one private server per test, see `testkit`).

use super::testkit::MariaDb;
use super::*;
use cartpulse_model::{decode_json, Action, CartEvent};
use std::collections::BTreeMap;

const SCHEMA: &str = "CREATE DATABASE shop; USE shop;
    CREATE TABLE cart_items (
        id INT AUTO_INCREMENT PRIMARY KEY,
        user_id VARCHAR(32) NOT NULL,
        sku VARCHAR(32) NOT NULL,
        qty INT NOT NULL,
        price DECIMAL(10,2),
        updated_at DATETIME(3) NOT NULL
    ) ENGINE=InnoDB;
    CREATE TABLE orders (
        id INT AUTO_INCREMENT PRIMARY KEY,
        order_id VARCHAR(32) NOT NULL,
        user_id VARCHAR(32) NOT NULL,
        created_at DATETIME(3) NOT NULL
    ) ENGINE=InnoDB;";

fn config(db: &MariaDb) -> MysqlCdcConfig {
    MysqlCdcConfig {
        url: db.url("shop"),
        server_id: 77,
        cart_items: Some(CartTableConfig::default()),
        orders: Some(OrdersTableConfig::default()),
        heartbeat: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(500),
        ..Default::default()
    }
}

fn source(cfg: MysqlCdcConfig, restored: Option<&Json>) -> MysqlCdcSource {
    logs();
    let mut s = MysqlCdcSource::new(cfg, 1 << 20);
    s.open(restored).expect("open");
    s
}

/// Polls until `n` events were read (or panics after 20 s), with `max_bytes` per poll.
fn read_n(s: &mut MysqlCdcSource, n: usize, max_bytes: usize) -> Vec<CartEvent> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} of {n} events: {got:?}",
            got.len()
        );
        match s.poll(max_bytes).expect("poll") {
            Poll::Chunk(c) => got.extend(lines(&c.data)),
            Poll::Idle => {}
            Poll::End => panic!("a binlog never ends"),
        }
    }
    got
}

/// Polls until nothing arrives for a while.
fn read_rest(s: &mut MysqlCdcSource) -> Vec<CartEvent> {
    let mut got = Vec::new();
    let mut quiet = 0;
    while quiet < 10 {
        match s.poll(1 << 20).expect("poll") {
            Poll::Chunk(c) => {
                got.extend(lines(&c.data));
                quiet = 0;
            }
            _ => quiet += 1,
        }
    }
    got
}

fn lines(data: &[u8]) -> Vec<CartEvent> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            decode_json(l, &DecodeOptions::default())
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)))
        })
        .collect()
}

/// Source logs on stderr (shown for failing tests): `RUST_LOG=cartpulse_connectors=debug`.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cartpulse_connectors=info".into()),
        )
        .with_test_writer()
        .try_init();
}

type Carts = BTreeMap<String, BTreeMap<String, u32>>;

/// What the engine's cart state does with these events.
fn fold(events: &[CartEvent]) -> Carts {
    let mut carts = Carts::new();
    for e in events {
        let cart = carts.entry(e.user_id.to_string()).or_default();
        let sku = e.sku.as_deref().unwrap_or_default().to_string();
        match e.action {
            Action::Add => *cart.entry(sku).or_default() += e.qty.unwrap_or(0),
            Action::Remove => {
                let q = cart.get(&sku).copied().unwrap_or(0);
                let left = q.saturating_sub(e.qty.unwrap_or(q));
                if left == 0 {
                    cart.remove(&sku);
                } else {
                    cart.insert(sku, left);
                }
            }
            Action::UpdateQty => {
                if e.qty == Some(0) {
                    cart.remove(&sku);
                } else {
                    cart.insert(sku, e.qty.unwrap_or(0));
                }
            }
            Action::Checkout => cart.clear(),
            Action::View => {}
        }
    }
    carts.retain(|_, c| !c.is_empty());
    carts
}

fn table_carts(db: &MariaDb) -> Carts {
    let mut carts = Carts::new();
    for l in db
        .sql("SELECT user_id, sku, SUM(qty) FROM shop.cart_items GROUP BY user_id, sku")
        .lines()
    {
        let f: Vec<&str> = l.split('\t').collect();
        let q: u32 = f[2].parse().unwrap();
        if q > 0 {
            carts
                .entry(f[0].to_string())
                .or_default()
                .insert(f[1].to_string(), q);
        }
    }
    carts
}

fn ids(events: &[CartEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.to_string()).collect()
}

fn assert_unique_ids(events: &[CartEvent]) {
    let mut seen = std::collections::HashSet::new();
    for e in events {
        assert!(
            seen.insert((e.user_id.clone(), e.event_id.clone())),
            "duplicate {e:?}"
        );
    }
}

#[test]
fn snapshot_then_changes_become_cart_events() {
    let db = MariaDb::start(&["--binlog-row-metadata=FULL"]);
    db.sql(SCHEMA);
    db.sql(
        "INSERT INTO shop.cart_items (user_id, sku, qty, price, updated_at) VALUES
         ('u1', 'p1', 2, 9.99, '2025-11-24 16:00:00.000'),
         ('u1', 'p2', 1, 5.00, '2025-11-24 16:00:01.000'),
         ('u2', 'p1', 3, 9.99, '2025-11-24 16:00:02.500');",
    );
    let mut s = source(config(&db), None);
    let snap = read_n(&mut s, 3, 1 << 20);
    assert!(snap.iter().all(|e| e.action == Action::Add));
    assert_eq!(snap[2].ts, 1_764_000_002_500);
    assert_eq!(snap[0].event_id, "snap:shop.cart_items:[1]");
    assert_eq!(snap[0].price.unwrap().to_string(), "9.99");

    db.sql(
        "USE shop;
         INSERT INTO cart_items (user_id, sku, qty, price, updated_at) VALUES ('u3', 'p9', 1, 1.50, '2025-11-24 16:00:10');
         UPDATE cart_items SET qty = 5, updated_at = '2025-11-24 16:00:11' WHERE id = 1;
         UPDATE cart_items SET updated_at = '2025-11-24 16:00:12' WHERE id = 2;
         UPDATE cart_items SET sku = 'p3', updated_at = '2025-11-24 16:00:13' WHERE id = 2;
         SET TIMESTAMP = 1764000020;
         DELETE FROM cart_items WHERE id = 3;
         INSERT INTO orders (order_id, user_id, created_at) VALUES ('o1', 'u1', '2025-11-24 16:00:30');
         DELETE FROM cart_items WHERE user_id = 'u1';",
    );
    let ev = read_n(&mut s, 8, 1 << 20);
    type Seen<'a> = (Action, &'a str, Option<&'a str>, Option<u32>, i64);
    let got: Vec<Seen> = ev
        .iter()
        .map(|e| (e.action, e.user_id.as_str(), e.sku.as_deref(), e.qty, e.ts))
        .collect();
    let t = |s: i64| 1_764_000_000_000 + s * 1000;
    assert_eq!(
        got,
        vec![
            (Action::Add, "u3", Some("p9"), Some(1), t(10)),
            (Action::UpdateQty, "u1", Some("p1"), Some(5), t(11)),
            // the touch of updated_at alone made no event; the sku change is a move
            (Action::Remove, "u1", Some("p2"), Some(1), t(13)),
            (Action::Add, "u1", Some("p3"), Some(1), t(13)),
            (Action::Remove, "u2", Some("p1"), Some(3), t(20)),
            (Action::Checkout, "u1", None, None, t(30)),
            (Action::Remove, "u1", Some("p1"), Some(5), t(20)),
            (Action::Remove, "u1", Some("p3"), Some(1), t(20)),
        ]
    );
    assert_eq!(ev[5].order_id.as_deref(), Some("o1"));
    // ids: the transaction's GTID and the row's index in it
    assert!(
        ev[0].event_id.starts_with("0-1-") && ev[0].event_id.ends_with("#0"),
        "{}",
        ev[0].event_id
    );
    assert!(ev[2].event_id.ends_with("#0-") && ev[3].event_id.ends_with("#0+"));
    assert!(
        ev[7].event_id.ends_with("#1"),
        "two rows of one DELETE: {}",
        ev[7].event_id
    );
    assert_unique_ids(&[snap.clone(), ev.clone()].concat());
    assert_eq!(fold(&[snap, ev].concat()), table_carts(&db));

    let p = s.position();
    assert!(
        p.get("snapshot").is_none(),
        "past the snapshot position: {p}"
    );
    assert!(
        p["gtid"].as_str().is_some_and(|g| g.starts_with("0-1-")),
        "{p}"
    );
}

#[test]
fn resumes_exactly_mid_transaction_and_mid_snapshot() {
    let db = MariaDb::start(&["--binlog-row-metadata=FULL"]);
    db.sql(SCHEMA);
    let mut rows = Vec::new();
    for i in 1..=6 {
        rows.push(format!(
            "('u{}', 'p{i}', {i}, 1.00, '2025-11-24 16:00:00')",
            i % 3
        ));
    }
    db.sql(&format!(
        "INSERT INTO shop.cart_items (user_id, sku, qty, price, updated_at) VALUES {};",
        rows.join(",")
    ));
    let cfg = MysqlCdcConfig {
        snapshot_page_rows: 2,
        ..config(&db)
    };
    // first reader: two snapshot pages (ids 1..4), then it dies
    let mut s = source(cfg.clone(), None);
    let mut all = read_n(&mut s, 4, 1);
    let p1 = s.position();
    assert_eq!(p1["snapshot"]["after"], json!([4]), "{p1}");
    drop(s);

    // changes while it is down: rows already read (1, 2) and rows not yet read (5, 6, new)
    db.sql(
        "USE shop;
         UPDATE cart_items SET qty = 10 WHERE id = 1;
         UPDATE cart_items SET qty = 50 WHERE id = 5;
         DELETE FROM cart_items WHERE id = 6;
         DELETE FROM cart_items WHERE id = 2;
         INSERT INTO cart_items (user_id, sku, qty, price, updated_at) VALUES ('u7', 'p7', 7, 1.00, '2025-11-24 16:00:00');",
    );
    let mut s = source(cfg.clone(), Some(&p1));
    let second = read_rest(&mut s);
    // the rest of the snapshot (5 with its new quantity, the new row 7) and the changes to
    // rows 1 and 2 from the binlog; the binlog's changes to 5, 6, 7 belong to the new
    // snapshot's range and time, so they are not applied twice
    let kinds: Vec<(Action, &str, Option<u32>)> = second
        .iter()
        .map(|e| (e.action, e.sku.as_deref().unwrap(), e.qty))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Action::Add, "p5", Some(50)),
            (Action::Add, "p7", Some(7)),
            (Action::UpdateQty, "p1", Some(10)),
            (Action::Remove, "p2", Some(2)),
        ]
    );
    all.extend(second);
    assert_eq!(fold(&all), table_carts(&db));

    // a transaction of three statements, cut after its first row
    db.sql(
        "USE shop; BEGIN;
         INSERT INTO cart_items (user_id, sku, qty, price, updated_at) VALUES ('u8', 'a', 1, 1, NOW());
         INSERT INTO cart_items (user_id, sku, qty, price, updated_at) VALUES ('u8', 'b', 2, 1, NOW());
         INSERT INTO cart_items (user_id, sku, qty, price, updated_at) VALUES ('u8', 'c', 3, 1, NOW());
         COMMIT;",
    );
    let first = read_n(&mut s, 1, 1);
    assert_eq!(first[0].sku.as_deref(), Some("a"));
    let p2 = s.position();
    assert_eq!(p2["rows"], 1, "{p2}");
    drop(s);
    let mut s = source(cfg, Some(&p2));
    let rest = read_rest(&mut s);
    assert_eq!(
        rest.iter()
            .map(|e| e.sku.as_deref().unwrap())
            .collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    let txn: Vec<String> = ids(&[first.clone(), rest.clone()].concat());
    let base = txn[0]
        .strip_suffix("#0")
        .expect("first row of its transaction");
    assert_eq!(
        txn,
        vec![
            format!("{base}#0"),
            format!("{base}#1"),
            format!("{base}#2")
        ]
    );
    all.extend(first);
    all.extend(rest);
    assert_unique_ids(&all);
    assert_eq!(fold(&all), table_carts(&db));
    assert!(s.position().get("snapshot").is_none());
}

#[test]
fn schema_changes_are_followed_by_name_or_stop_the_source() {
    for meta in ["FULL", "NO_LOG"] {
        let db = MariaDb::start(&[&format!("--binlog-row-metadata={meta}")]);
        db.sql(SCHEMA);
        let cfg = MysqlCdcConfig {
            snapshot: false,
            ..config(&db)
        };
        let mut s = source(cfg.clone(), None);
        // a column inserted before `qty` shifts every position after it
        db.sql(
            "USE shop;
             ALTER TABLE cart_items ADD COLUMN note VARCHAR(10) AFTER user_id;
             INSERT INTO cart_items (user_id, note, sku, qty, price, updated_at) VALUES ('u1', 'n', 'p1', 4, 2.50, NOW());",
        );
        let ev = read_n(&mut s, 1, 1 << 20);
        assert_eq!(
            (ev[0].sku.as_deref(), ev[0].qty),
            (Some("p1"), Some(4)),
            "{meta}"
        );
        assert_eq!(ev[0].price.unwrap().to_string(), "2.5", "{meta}");
        let before = s.position();

        // a row written under the old definition, read only after the next change
        drop(s);
        db.sql(
            "USE shop;
             INSERT INTO cart_items (user_id, note, sku, qty, price, updated_at) VALUES ('u2', 'n', 'p2', 2, 1, NOW());
             ALTER TABLE cart_items ADD COLUMN extra INT FIRST;",
        );
        let mut s = MysqlCdcSource::new(cfg.clone(), 1 << 20);
        s.open(Some(&before)).expect("open");
        let r = (0..40).find_map(|_| match s.poll(1 << 20) {
            Ok(Poll::Chunk(c)) => Some(Ok(lines(&c.data))),
            Ok(_) => None,
            Err(e) => Some(Err(e.to_string())),
        });
        match (meta, r) {
            // names in the binlog: decoded right although the table changed since
            ("FULL", Some(Ok(ev))) => {
                assert_eq!((ev[0].sku.as_deref(), ev[0].qty), (Some("p2"), Some(2)))
            }
            // names only from information_schema, which no longer fits the row: refuse
            ("NO_LOG", Some(Err(e))) => {
                assert!(
                    e.contains("cart_items") && e.contains("binlog_row_metadata = FULL"),
                    "{e}"
                )
            }
            (m, r) => panic!("{m}: {r:?}"),
        }
        drop(s);

        // a mapped column goes away: a clear stop naming table, column and config key
        let mut s = MysqlCdcSource::new(
            MysqlCdcConfig {
                snapshot: false,
                ..cfg
            },
            1 << 20,
        );
        s.open(None).expect("open");
        db.sql("USE shop; ALTER TABLE cart_items CHANGE qty quantity INT NOT NULL;");
        let e = (0..40)
            .find_map(|_| s.poll(1 << 20).err())
            .expect("the source stops");
        let e = e.to_string();
        assert!(
            e.contains("source.cart_items.qty") && e.contains("`qty`") && e.contains("cart_items"),
            "{meta}: {e}"
        );
    }
}

#[test]
fn start_up_errors_name_the_config_key() {
    let open_err = |cfg: MysqlCdcConfig| {
        let mut s = MysqlCdcSource::new(cfg, 1 << 20);
        s.open(None).expect_err("must not open").to_string()
    };
    let e = open_err(MysqlCdcConfig {
        url: "mysql//nohost".into(),
        cart_items: Some(CartTableConfig::default()),
        ..Default::default()
    });
    assert!(e.contains("source.url"), "{e}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = open_err(MysqlCdcConfig {
        url: format!("mysql://root@127.0.0.1:{port}/shop"),
        cart_items: Some(CartTableConfig::default()),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    assert!(
        e.contains("source.url") && e.contains("cannot reach"),
        "{e}"
    );
    let e = open_err(MysqlCdcConfig::default());
    assert!(e.contains("[source.cart_items]"), "{e}");

    // the shared server runs without a binlog
    let e = open_err(MysqlCdcConfig {
        url: "mysql://root@127.0.0.1:3306/mysql".into(),
        cart_items: Some(CartTableConfig::default()),
        ..Default::default()
    });
    assert!(e.contains("log_bin"), "{e}");

    let db = MariaDb::start(&[]);
    db.sql(SCHEMA);
    let e = open_err(MysqlCdcConfig {
        cart_items: Some(CartTableConfig {
            table: "carts".into(),
            ..Default::default()
        }),
        ..config(&db)
    });
    assert!(
        e.contains("source.cart_items.table") && e.contains("`shop`.`carts` does not exist"),
        "{e}"
    );
    let e = open_err(MysqlCdcConfig {
        cart_items: Some(CartTableConfig {
            qty: "quantity".into(),
            ..Default::default()
        }),
        ..config(&db)
    });
    assert!(
        e.contains("source.cart_items.qty") && e.contains("`quantity`"),
        "{e}"
    );
    db.sql(
        "CREATE TABLE shop.nokey (user_id TEXT, sku TEXT, qty INT, price INT, updated_at DATETIME)",
    );
    let e = open_err(MysqlCdcConfig {
        cart_items: Some(CartTableConfig {
            table: "nokey".into(),
            ..Default::default()
        }),
        orders: None,
        ..config(&db)
    });
    assert!(
        e.contains("no primary key") && e.contains("snapshot = false"),
        "{e}"
    );
}

#[test]
fn reconnects_after_a_server_crash_and_reports_lag() {
    let mut db = MariaDb::start(&["--binlog-row-metadata=FULL"]);
    db.sql(SCHEMA);
    let cfg = MysqlCdcConfig {
        snapshot: false,
        ..config(&db)
    };
    let mut s = source(cfg, None);
    let insert = |db: &MariaDb, from: u32, to: u32| {
        let v: Vec<String> = (from..to)
            .map(|i| format!("('u{i}', 'p', 1, 1, NOW())"))
            .collect();
        db.sql(&format!(
            "INSERT INTO shop.cart_items (user_id, sku, qty, price, updated_at) VALUES {}",
            v.join(",")
        ));
    };
    insert(&db, 0, 200);
    // the first poll measures the backlog before reading it
    let mut got = Vec::new();
    if let Poll::Chunk(c) = s.poll(1).unwrap() {
        got.extend(lines(&c.data));
    }
    assert!(s.lag().is_some_and(|l| l > 0), "lag {:?}", s.lag());
    got.extend(read_n(&mut s, 200 - got.len(), 1 << 20));

    db.restart();
    insert(&db, 200, 300);
    got.extend(read_n(&mut s, 100, 1 << 20));
    assert_unique_ids(&got);
    let users: Vec<String> = got.iter().map(|e| e.user_id.to_string()).collect();
    assert_eq!(users, (0..300).map(|i| format!("u{i}")).collect::<Vec<_>>());
}
