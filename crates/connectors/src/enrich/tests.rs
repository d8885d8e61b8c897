//! The three table readers against a CSV file and the machine's real PostgreSQL and
//! MariaDB, with the same rows in each: they must produce the same table.

use super::*;
use cartpulse_model::{Action, CartEvent, Money};
use std::process::Command;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY_URL: &str = "mysql://root@127.0.0.1:3306/test";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn psql(sql: &str) {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn mariadb(sql: &str) {
    let o = Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", "test", "-e", sql])
        .output()
        .expect("run mariadb");
    assert!(
        o.status.success(),
        "mariadb {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn products_config(from: TableFrom) -> TableConfig {
    TableConfig {
        from,
        path: None,
        ..TableConfig::csv(PathBuf::new())
    }
}

fn ev(user: &str, sku: &str) -> CartEvent {
    CartEvent {
        event_id: "e1".into(),
        ts: 0,
        user_id: user.into(),
        session_id: None,
        action: Action::Add,
        sku: Some(sku.into()),
        qty: Some(1),
        price: None,
        category: None,
        device_id: None,
        ip: None,
        order_id: None,
        currency: None,
        product: None,
        user: None,
    }
}

fn enriched(e: &Enricher, user: &str, sku: &str) -> CartEvent {
    let mut x = ev(user, sku);
    e.snapshot().apply(&mut x).expect("enriched");
    x
}

/// What every reader must make of the three product rows below.
fn check_products(e: &Enricher) {
    let mug = enriched(e, "u", "mug-1");
    let p = mug.product.as_ref().expect("mug-1 is in the table");
    assert_eq!(p.name.as_deref(), Some("Mug, \"large\""));
    assert_eq!(p.brand.as_deref(), Some("Acme"));
    assert_eq!(p.price, Some(Money(129_900)));
    assert_eq!(p.stock, Some(4));
    assert_eq!(
        mug.category.as_deref(),
        Some("kitchen"),
        "category filled from the table"
    );
    // NULLs stay unset
    let pen = enriched(e, "u", "pen-2");
    let p = pen.product.as_ref().unwrap();
    assert_eq!((p.brand.as_deref(), p.stock), (None, None));
    assert_eq!(p.price, Some(Money(5_000)));
    assert!(enriched(e, "u", "absent").product.is_none());
}

#[test]
fn csv_postgres_and_mariadb_tables_give_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("products.csv");
    std::fs::write(
        &path,
        "sku,title,category,brand,price,stock\n\
         mug-1,\"Mug, \"\"large\"\"\",kitchen,Acme,12.99,4\n\
         pen-2,Pen,office,,0.5,\n\
         bad-3,Broken,office,Acme,cheap,1\n",
    )
    .unwrap();
    let mut c = products_config(TableFrom::Csv);
    c.path = Some(path);
    c.columns.insert("name".into(), "title".into());
    let e = build(&EnrichConfig {
        products: Some(c),
        users: None,
    })
    .unwrap()
    .unwrap();
    check_products(&e);

    let table = unique("products");
    let create = format!(
        "CREATE TABLE {table} (sku VARCHAR(32) PRIMARY KEY, title VARCHAR(64), category VARCHAR(32), \
         brand VARCHAR(32), price DECIMAL(10,2), stock INT)"
    );
    let insert = format!(
        "INSERT INTO {table} VALUES ('mug-1', 'Mug, \"large\"', 'kitchen', 'Acme', 12.99, 4), \
         ('pen-2', 'Pen', 'office', NULL, 0.50, NULL)"
    );
    psql(&create);
    psql(&insert);
    mariadb(&create);
    mariadb(&insert);
    for (from, url) in [(TableFrom::Postgres, PG_URL), (TableFrom::Mysql, MY_URL)] {
        let mut c = products_config(from);
        c.url = Some(url.into());
        c.table = Some(table.clone());
        c.columns.insert("name".into(), "title".into());
        let e = build(&EnrichConfig {
            products: Some(c.clone()),
            users: None,
        })
        .unwrap()
        .unwrap();
        check_products(&e);
        // a query as the table, with its own column names
        c.table = None;
        c.columns.clear();
        c.query = Some(format!(
            "SELECT sku AS code, title AS name, price FROM {table} WHERE stock IS NOT NULL"
        ));
        c.key = Some("code".into());
        let e = build(&EnrichConfig {
            products: Some(c),
            users: None,
        })
        .unwrap()
        .unwrap();
        assert!(enriched(&e, "u", "pen-2").product.is_none(), "{from:?}");
        let mug = enriched(&e, "u", "mug-1");
        assert_eq!(mug.product.unwrap().price, Some(Money(129_900)), "{from:?}");
        assert_eq!(
            mug.category, None,
            "{from:?}: no category column in the query"
        );
    }
    psql(&format!("DROP TABLE {table}"));
    mariadb(&format!("DROP TABLE {table}"));
}

#[test]
fn user_tables_read_dates_in_each_database_form() {
    let table = unique("users");
    psql(&format!(
        "CREATE TABLE {table} (user_id TEXT PRIMARY KEY, segment TEXT, region TEXT, signup_date DATE)"
    ));
    psql(&format!(
        "INSERT INTO {table} VALUES ('u1', 'vip', 'eu-west', '2024-03-01'), ('u2', NULL, 'us', NULL)"
    ));
    mariadb(&format!(
        "CREATE TABLE {table} (user_id VARCHAR(16) PRIMARY KEY, segment VARCHAR(16), region VARCHAR(16), signup_date DATETIME)"
    ));
    mariadb(&format!(
        "INSERT INTO {table} VALUES ('u1', 'vip', 'eu-west', '2024-03-01 09:30:00'), ('u2', NULL, 'us', NULL)"
    ));
    for (from, url) in [(TableFrom::Postgres, PG_URL), (TableFrom::Mysql, MY_URL)] {
        let mut c = products_config(from);
        c.url = Some(url.into());
        c.table = Some(table.clone());
        c.on_miss = OnMiss::DeadLetter;
        let e = build(&EnrichConfig {
            products: None,
            users: Some(c),
        })
        .unwrap()
        .unwrap();
        let u1 = enriched(&e, "u1", "x");
        let u = u1.user.unwrap();
        assert_eq!(u.segment.as_deref(), Some("vip"), "{from:?}");
        assert_eq!(u.signup_date, Some(19_783), "{from:?}");
        assert_eq!(
            enriched(&e, "u2", "x").user.unwrap().region.as_deref(),
            Some("us")
        );
        let miss = e.snapshot().apply(&mut ev("u9", "x")).unwrap_err();
        assert_eq!(miss.reason, "enrich_user_missing", "{from:?}");
    }
    psql(&format!("DROP TABLE {table}"));
    mariadb(&format!("DROP TABLE {table}"));
}

#[test]
fn a_table_that_changes_is_seen_after_a_reload() {
    let table = unique("stock");
    psql(&format!(
        "CREATE TABLE {table} (sku TEXT PRIMARY KEY, stock INT)"
    ));
    psql(&format!("INSERT INTO {table} VALUES ('mug-1', 10)"));
    let mut c = products_config(TableFrom::Postgres);
    c.url = Some(PG_URL.into());
    c.table = Some(table.clone());
    let e = build(&EnrichConfig {
        products: Some(c),
        users: None,
    })
    .unwrap()
    .unwrap();
    assert_eq!(enriched(&e, "u", "mug-1").product.unwrap().stock, Some(10));
    psql(&format!("UPDATE {table} SET stock = 2"));
    assert_eq!(
        enriched(&e, "u", "mug-1").product.unwrap().stock,
        Some(10),
        "before"
    );
    e.reload().unwrap();
    assert_eq!(
        enriched(&e, "u", "mug-1").product.unwrap().stock,
        Some(2),
        "after"
    );
    // the table goes away: the reload fails, the rows stay
    psql(&format!("DROP TABLE {table}"));
    let err = e.reload().unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(enriched(&e, "u", "mug-1").product.unwrap().stock, Some(2));
}

#[test]
fn bad_config_and_unreadable_tables_fail_at_start_naming_the_key() {
    let build1 = |c: TableConfig| {
        build(&EnrichConfig {
            products: Some(c),
            users: None,
        })
        .err()
        .expect("an error")
    };
    let mut c = products_config(TableFrom::Csv);
    let e = build1(c.clone());
    assert!(e.contains("enrich.products.path"), "{e}");
    c.path = Some("/nonexistent/products.csv".into());
    let e = build1(c.clone());
    assert!(
        e.contains("products") && e.contains("/nonexistent/products.csv"),
        "{e}"
    );
    c.columns.insert("colour".into(), "c".into());
    let e = build1(c.clone());
    assert!(
        e.contains("enrich.products.columns.colour") && e.contains("brand"),
        "{e}"
    );
    c.columns.clear();
    c.on_miss = OnMiss::Default;
    let e = build1(c.clone());
    assert!(e.contains("enrich.products.default"), "{e}");
    c.default.insert("price".into(), "free".into());
    let e = build1(c.clone());
    assert!(e.contains("enrich.products.default.price"), "{e}");

    let mut c = products_config(TableFrom::Postgres);
    let e = build1(c.clone());
    assert!(e.contains("enrich.products.url"), "{e}");
    c.url = Some(PG_URL.into());
    let e = build1(c.clone());
    assert!(
        e.contains("enrich.products.table") && e.contains("query"),
        "{e}"
    );
    c.table = Some("products; DROP TABLE x".into());
    let e = build1(c.clone());
    assert!(e.contains("enrich.products.table"), "{e}");
    c.table = Some(unique("no_such_table"));
    let e = build1(c.clone());
    assert!(e.contains("does not exist"), "{e}");
    let mut c = products_config(TableFrom::Mysql);
    c.url = Some("mysql://root@127.0.0.1:1/test".into());
    c.table = Some("t".into());
    let e = build1(c);
    assert!(e.contains("cannot connect"), "{e}");

    // a CSV without the key column
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.csv");
    std::fs::write(&p, "code,name\nA,B\n").unwrap();
    let mut c = products_config(TableFrom::Csv);
    c.path = Some(p);
    let e = build1(c);
    assert!(e.contains("no key column `sku`"), "{e}");
}

#[test]
fn unreadable_rows_are_skipped_and_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.csv");
    std::fs::write(
        &p,
        "sku,price,stock\nA,1.00,3\nB,one,3\n,2.00,1\nA,9.99,9\nC,2.00,x\n",
    )
    .unwrap();
    let mut c = products_config(TableFrom::Csv);
    c.path = Some(p);
    let e = build(&EnrichConfig {
        products: Some(c),
        users: None,
    })
    .unwrap()
    .unwrap();
    let reg = prometheus::Registry::new();
    e.register(&reg);
    let text = {
        use prometheus::Encoder;
        let mut b = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&reg.gather(), &mut b)
            .unwrap();
        String::from_utf8(b).unwrap()
    };
    assert!(
        text.contains("cartpulse_enrich_bad_rows_total{table=\"products\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("cartpulse_enrich_rows{table=\"products\"} 1"),
        "{text}"
    );
    // the first row of a repeated key is the one kept
    assert_eq!(
        enriched(&e, "u", "A").product.unwrap().price,
        Some(Money(10_000))
    );
}
