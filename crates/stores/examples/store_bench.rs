//! Rows per second through each store sink: `write` + `pre_commit` + `commit` of epochs of
//! `user_windows` records (the widest, most numerous stream), against real servers.
//!
//! ```text
//! cargo run --release -p cartpulse-stores --example store_bench -- postgres [rows]
//! cargo run --release -p cartpulse-stores --example store_bench -- postgres-staging [rows]
//! cargo run --release -p cartpulse-stores --example store_bench -- redis [rows]
//! cargo run --release -p cartpulse-stores --example store_bench -- clickhouse URL [rows]
//! cargo run --release -p cartpulse-stores --example store_bench -- elasticsearch-client [rows]
//! cargo run --release -p cartpulse-stores --example store_bench -- dump-rows DIR [rows]
//! ```
//!
//! `postgres-staging` compares the two ways of staging rows (COPY, multi-row INSERT) on the
//! same rows. `elasticsearch-client` measures only the sink's side (staging, NDJSON, the
//! answer's parsing) against a local endpoint that accepts everything: no Elasticsearch can
//! be installed here.
//!
//! `dump-rows` writes the same rows (same epochs) as input for each store's own bulk-load
//! tooling, the baselines of `scripts/bench_stores.sh`: `pg_all.tsv` (COPY text, the
//! `user_windows` table's columns plus `epoch`), `pg_epoch_<e>.tsv` (the same, per epoch),
//! `redis_same.resp` (the very commands the Redis sink sends per epoch, without MULTI/EXEC),
//! `redis_zadd.resp` (one ZADD per row, nothing else) and `ch_rows.json` (the JSONEachRow
//! lines the ClickHouse sink posts, `epoch`, `seq` and `version` included).

use cartpulse_engine::{Sink, Stream};
use cartpulse_stores::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

const EPOCH_ROWS: u64 = 50_000;

fn records(epoch: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 300);
    for i in 0..n {
        let u = (epoch * n + i) % 200_000;
        let start = (epoch * n + i) / 200_000 * 10_000;
        out.extend_from_slice(
            format!(
                r#"{{"window_start":{start},"window_end":{},"user_id":"u{u:07}","events":5,"views":2,"adds":2,"removes":1,"update_qtys":0,"checkouts":0,"qty_added":3,"qty_removed":1,"value_added":59.97,"value_removed":19.99,"value_delta":39.98}}
"#,
                start + 10_000
            )
            .as_bytes(),
        );
    }
    out
}

fn drive(mut s: Box<dyn Sink>, rows: u64) {
    s.recover(None).unwrap();
    let epochs = rows.div_ceil(EPOCH_ROWS);
    let data: Vec<Vec<u8>> = (1..=epochs).map(|e| records(e, EPOCH_ROWS)).collect();
    let t = Instant::now();
    for (i, d) in data.iter().enumerate() {
        let e = i as u64 + 1;
        // the committer hands records over in slices, as the shards send them
        let mut at = 0;
        while at < d.len() {
            let mut end = (at + (256 << 10)).min(d.len());
            while end < d.len() && d[end - 1] != b'\n' {
                end += 1;
            }
            let n = d[at..end].iter().filter(|&&b| b == b'\n').count() as u64;
            s.write(e, Stream::UserWindows, &d[at..end], n).unwrap();
            at = end;
        }
        s.pre_commit(e).unwrap();
        s.commit(e).unwrap();
    }
    let el = t.elapsed();
    let total = epochs * EPOCH_ROWS;
    println!(
        "{}: {total} rows in {epochs} epochs, {:.2} s, {:.0} rows/s",
        s.name(),
        el.as_secs_f64(),
        total as f64 / el.as_secs_f64()
    );
}

/// RESP encoding of one command, as `redis-cli --pipe` reads it.
fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The baselines' input files (see the module docs), from the rows `drive` sends.
fn dump_rows(dir: &std::path::Path, rows: u64) {
    use cartpulse_stores::schema;
    use serde_json::value::RawValue;
    use std::collections::{BTreeSet, HashMap};
    std::fs::create_dir_all(dir).unwrap();
    let s = schema::schema(Stream::UserWindows).unwrap();
    let epochs = rows.div_ceil(EPOCH_ROWS);
    let (mut pg_all, mut same, mut zadd, mut ch) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let defaults = RedisConfig::default();
    let ttl = defaults.window_ttl.as_millis().to_string();
    let cap = format!("{}", -(defaults.windows_per_user as i64) - 1);
    for e in 1..=epochs {
        let data = records(e, EPOCH_ROWS);
        let mut pg = Vec::new();
        let mut trims = BTreeSet::new();
        for (seq, line) in std::str::from_utf8(&data).unwrap().lines().enumerate() {
            let r: HashMap<&str, &RawValue> = serde_json::from_str(line).unwrap();
            let raw = |f: &str| r[f].get();
            let text = |f: &str| {
                let v = raw(f);
                match serde_json::from_str::<String>(v) {
                    Ok(t) => t,
                    Err(_) => v.to_string(),
                }
            };
            // PostgreSQL COPY text: the table's typed columns, then the epoch
            let cols: Vec<String> = s.fields.iter().map(|f| text(f.name)).collect();
            pg.extend_from_slice(format!("{}\t{e}\n", cols.join("\t")).as_bytes());
            // Redis: what RedisSink::commands emits for a user_windows row
            let k = format!("cartpulse_bench:user_windows:{}", text("user_id"));
            let end = text("window_end");
            resp(
                &mut same,
                &[
                    b"ZREMRANGEBYSCORE",
                    k.as_bytes(),
                    end.as_bytes(),
                    end.as_bytes(),
                ],
            );
            resp(
                &mut same,
                &[b"ZADD", k.as_bytes(), end.as_bytes(), line.as_bytes()],
            );
            resp(&mut same, &[b"PEXPIRE", k.as_bytes(), ttl.as_bytes()]);
            resp(
                &mut zadd,
                &[b"ZADD", k.as_bytes(), end.as_bytes(), line.as_bytes()],
            );
            trims.insert(k);
            // ClickHouse: the sink's JSONEachRow line (fields as raw JSON, then epoch, seq,
            // version)
            ch.push(b'{');
            for f in s.fields {
                ch.extend_from_slice(format!("\"{}\":{},", f.name, raw(f.name)).as_bytes());
            }
            let seq = seq as u64;
            ch.extend_from_slice(
                format!(
                    "\"epoch\":{e},\"seq\":{seq},\"version\":{}}}\n",
                    (e << 32) | seq
                )
                .as_bytes(),
            );
        }
        for k in &trims {
            resp(
                &mut same,
                &[b"ZREMRANGEBYRANK", k.as_bytes(), b"0", cap.as_bytes()],
            );
        }
        resp(
            &mut same,
            &[
                b"SET",
                b"cartpulse_bench:committed_epoch",
                e.to_string().as_bytes(),
            ],
        );
        std::fs::write(dir.join(format!("pg_epoch_{e}.tsv")), &pg).unwrap();
        pg_all.extend_from_slice(&pg);
    }
    for (name, b) in [
        ("pg_all.tsv", &pg_all),
        ("redis_same.resp", &same),
        ("redis_zadd.resp", &zadd),
        ("ch_rows.json", &ch),
    ] {
        std::fs::write(dir.join(name), b).unwrap();
    }
    println!(
        "{} rows in {epochs} epochs written to {}",
        epochs * EPOCH_ROWS,
        dir.display()
    );
}

fn pg_staging(rows: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = "host=127.0.0.1 user=postgres dbname=test";
    let (c, conn) = rt
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    rt.block_on(c.batch_execute(
        "DROP TABLE IF EXISTS bench_stage; CREATE UNLOGGED TABLE bench_stage \
         (epoch BIGINT, seq BIGINT, stream TEXT, key TEXT, payload JSONB, PRIMARY KEY (epoch, seq))",
    ))
    .unwrap();
    let data = records(1, rows);
    let lines: Vec<&str> = std::str::from_utf8(&data).unwrap().lines().collect();
    // COPY text rows
    let mut copy = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        copy.extend_from_slice(format!("1\t{i}\tuser_windows\tk{i}\t{l}\n").as_bytes());
    }
    let t = Instant::now();
    rt.block_on(async {
        use futures_util::SinkExt;
        let sink = c.copy_in("COPY bench_stage FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(copy)).await.unwrap();
        sink.finish().await.unwrap();
    });
    let copy_s = t.elapsed().as_secs_f64();
    rt.block_on(c.batch_execute("TRUNCATE bench_stage"))
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        for (b, chunk) in lines.chunks(1000).enumerate() {
            let mut sql = String::from("INSERT INTO bench_stage VALUES ");
            let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync>> = Vec::new();
            for (j, l) in chunk.iter().enumerate() {
                let n = params.len();
                if j > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(1, ${}, 'user_windows', ${}, ${}::text::jsonb)",
                    n + 1,
                    n + 2,
                    n + 3
                ));
                params.push(Box::new((b * 1000 + j) as i64));
                params.push(Box::new(format!("k{}", b * 1000 + j)));
                params.push(Box::new(l.to_string()));
            }
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref()).collect();
            c.execute(sql.as_str(), &refs).await.unwrap();
        }
    });
    let insert_s = t.elapsed().as_secs_f64();
    rt.block_on(c.batch_execute("DROP TABLE bench_stage"))
        .unwrap();
    println!(
        "postgres staging of {rows} rows: COPY {:.0} rows/s, multi-row INSERT (1000 rows/statement) {:.0} rows/s",
        rows as f64 / copy_s,
        rows as f64 / insert_s
    );
}

/// Accepts every `_bulk` request with `errors: false`.
fn accept_all() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let a = r#"{"took":1,"errors":false,"items":[]}"#;
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{a}",
                        a.len()
                    )
                    .unwrap();
                }
            });
        }
    });
    port
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("postgres");
    let stage = std::env::temp_dir().join(format!("cartpulse-store-bench-{}", std::process::id()));
    let rows_at = |i: usize| {
        args.get(i)
            .map(|r| r.parse().unwrap())
            .unwrap_or(500_000u64)
    };
    match which {
        "postgres" => drive(
            Box::new(
                PostgresSink::new(PostgresConfig {
                    url: "host=127.0.0.1 user=postgres dbname=test".into(),
                    schema: "cartpulse_bench".into(),
                    ..Default::default()
                })
                .unwrap(),
            ),
            rows_at(1),
        ),
        "postgres-staging" => pg_staging(rows_at(1)),
        "dump-rows" => dump_rows(
            std::path::Path::new(args.get(1).expect("dump-rows DIR")),
            rows_at(2),
        ),
        "redis" => drive(
            Box::new(
                RedisSink::new(RedisConfig {
                    prefix: "cartpulse_bench:".into(),
                    stage_dir: Some(stage.clone()),
                    ..Default::default()
                })
                .unwrap(),
            ),
            rows_at(1),
        ),
        "clickhouse" => drive(
            Box::new(
                ClickHouseSink::new(ClickHouseConfig {
                    url: args.get(1).cloned().expect("clickhouse URL"),
                    database: "cartpulse_bench".into(),
                    stage_dir: Some(stage.clone()),
                    ..Default::default()
                })
                .unwrap(),
            ),
            rows_at(2),
        ),
        "elasticsearch-client" => drive(
            Box::new(
                ElasticSink::new(ElasticConfig {
                    url: format!("http://127.0.0.1:{}", accept_all()),
                    stage_dir: Some(stage.clone()),
                    timeout: Duration::from_secs(60),
                    ..Default::default()
                })
                .unwrap(),
            ),
            rows_at(1),
        ),
        other => panic!("unknown store {other}"),
    }
    let _ = std::fs::remove_dir_all(&stage);
}
