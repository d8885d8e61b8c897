//! The PostgreSQL wire protocol against a real PostgreSQL client library (tokio-postgres):
//! simple and extended queries, typed parameters, session statements, limits, errors and
//! password login. The catalog is over an empty archive; what the merged views hold is
//! checked end to end in the CLI's serving tests.

use cartpulse_batch::BatchJob;
use cartpulse_engine::PipelineConfig;
use cartpulse_serving::{pg, Catalog, PgConfig, ServingConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn server(cfg: ServingConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("lake");
    std::fs::create_dir_all(&archive).unwrap();
    let job = BatchJob::new(
        &archive,
        dir.path().join("views"),
        &PipelineConfig::default(),
    );
    let pgc = cfg.postgres.clone();
    let catalog = Arc::new(Catalog::new(&archive, None, job, None, cfg).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        pg::serve(listener, catalog, pgc, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        stop: Some(tx),
        _dir: dir,
    }
}

async fn connect(
    addr: SocketAddr,
    user: &str,
    password: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .dbname("cartpulse")
        .connect_timeout(Duration::from_secs(5));
    if let Some(p) = password {
        c.password(p);
    }
    let (client, conn) = c.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A simple query's rows as text, as psql would print them.
async fn text_rows(c: &Client, q: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(q)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_with_typed_parameters() {
    let s = server(ServingConfig {
        max_rows: 100,
        ..Default::default()
    })
    .await;
    let c = connect(s.addr, "anyone", None).await.unwrap();

    // simple protocol: text values, exact decimals, several statements in order, and the
    // session statements drivers send
    let rows = text_rows(
        &c,
        "SET application_name = 'x'; BEGIN; SELECT 1 AS one, CAST(12.3400 AS DECIMAL(18,4)) AS d, \
         'a' AS s, CAST(NULL AS BIGINT) AS n, DATE '2026-12-06' AS day; SHOW TimeZone; COMMIT",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec![
                Some("1".into()),
                Some("12.3400".into()),
                Some("a".into()),
                None,
                Some("2026-12-06".into())
            ],
            vec![Some("UTC".into())]
        ]
    );
    // the merged views are there, empty before any event
    let rows = text_rows(&c, "SELECT COUNT(*) FROM events").await;
    assert_eq!(rows, vec![vec![Some("0".into())]]);
    let rows = text_rows(
        &c,
        "SELECT table_name FROM information_schema.tables WHERE table_name = 'conversion_daily'",
    )
    .await;
    assert_eq!(rows.len(), 1);

    // extended protocol: parameter types come from the planner; binary values both ways
    let t = "SELECT x, d FROM (VALUES (1, CAST(1.50 AS DECIMAL(10,2))), (2, CAST(2.25 AS DECIMAL(10,2))), \
             (3, CAST(3.00 AS DECIMAL(10,2)))) AS t(x, d)";
    let st = c
        .prepare(&format!("{t} WHERE x >= $1 ORDER BY x"))
        .await
        .unwrap();
    assert_eq!(st.params(), &[tokio_postgres::types::Type::INT8]);
    let got: Vec<i64> = c
        .query(&st, &[&2i64])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, vec![2, 3]);
    // a prepared statement runs again with other values, each time on a fresh snapshot
    let got = c.query(&st, &[&3i64]).await.unwrap();
    assert_eq!(got.len(), 1);
    // text parameter; numeric result read as text through a cast
    let r = c
        .query_one(
            "SELECT CAST(d AS VARCHAR) FROM (VALUES ('a', CAST(1.50 AS DECIMAL(10,2)))) AS t(k, d) WHERE k = $1",
            &[&"a"],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "1.50");
    // a parameter typed by the client (here: text it is cast from)
    let st = c
        .prepare_typed(
            "SELECT CAST($1 AS BIGINT) * 2",
            &[tokio_postgres::types::Type::TEXT],
        )
        .await
        .unwrap();
    let r = c.query_one(&st, &[&"21"]).await.unwrap();
    assert_eq!(r.get::<_, i64>(0), 42);
    // a timestamp parameter
    let when = chrono::DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let r = c
        .query_one(
            "SELECT COUNT(*) FROM (VALUES (TIMESTAMP '2026-12-06 09:00:00'), (TIMESTAMP '2026-12-06 11:00:00')) AS t(ts) WHERE ts < $1",
            &[&when.naive_utc()],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 1);

    // errors: SQLSTATE codes, and the connection keeps working after each
    for (q, want) in [
        ("SELEC 1", "42601"),
        ("SELECT nope FROM events", "42601"),
        ("SELECT * FROM nowhere", "42601"),
        ("CREATE TABLE t AS SELECT 1", "0A000"),
        ("SELECT * FROM generate_series(1, 1000)", "54000"),
    ] {
        let e = c.simple_query(q).await.unwrap_err();
        assert_eq!(code(&e), want, "{q}: {e}");
        let e = c.query(q, &[]).await.unwrap_err();
        assert_eq!(code(&e), want, "{q} (extended): {e}");
    }
    // after a failed statement in a simple query, the rest does not run
    let e = c
        .simple_query("SELECT 1; SELECT nope FROM events; SELECT 3")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42601");
    assert_eq!(
        text_rows(&c, "SELECT 7").await,
        vec![vec![Some("7".into())]]
    );
    // a wrong number of parameters
    let e = c
        .query("SELECT $1::BIGINT + $2::BIGINT", &[&1i64])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("parameter"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_time_limit_is_cancelled() {
    let s = server(ServingConfig {
        query_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let c = connect(s.addr, "anyone", None).await.unwrap();
    // 10^12 pairs through a nested-loop join in a few MiB: it cannot finish in time
    let e = c
        .simple_query(
            "SELECT COUNT(*) FROM generate_series(1, 100000) a \
             CROSS JOIN generate_series(1, 10000000) b WHERE a.value + b.value < 0",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    // the join only notices the cancel when it next yields; meanwhile other queries run
    assert_eq!(
        text_rows(&c, "SELECT 1").await,
        vec![vec![Some("1".into())]]
    );
    // and it does stop: the process goes idle long before the join could have finished
    let t = std::time::Instant::now();
    loop {
        let busy = cpu_seconds();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = cpu_seconds() - busy;
        if busy < 0.1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still {busy:.2}s of CPU per 0.5s a minute after the cancel"
        );
    }
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // fields after the parenthesised command name; utime and stime are the 12th and 13th
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the running system
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login() {
    let s = server(ServingConfig {
        postgres: PgConfig {
            user: "grafana".into(),
            password: Some("s3cret".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let c = connect(s.addr, "grafana", Some("s3cret")).await.unwrap();
    assert_eq!(
        text_rows(&c, "SELECT 1").await,
        vec![vec![Some("1".into())]]
    );
    for (user, pw) in [
        ("grafana", Some("wrong")),
        ("other", Some("s3cret")),
        ("grafana", None),
    ] {
        assert!(
            connect(s.addr, user, pw).await.is_err(),
            "{user}/{pw:?} must not log in"
        );
    }
}
