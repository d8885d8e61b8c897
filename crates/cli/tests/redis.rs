//! Redis end to end, on a private `redis-server`: a stream read through a consumer group
//! survives a SIGKILL (the consumer's pending entries are read again and deduplicated) with
//! exactly the output of a replay; and carts kept as hashes become cart events whose windows
//! equal a replay of the diffs.

mod common;
mod live;
mod sources;

use cartpulse_connectors::redis::redis;
use cartpulse_connectors::redis::testkit::RedisServer;
use serde_json::Value;
use sources::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn xadd_all(c: &mut redis::Connection, stream: &str, lines: &[String]) {
    for part in lines.chunks(1000) {
        let mut p = redis::pipe();
        for l in part {
            p.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("event")
                .arg(l)
                .ignore();
        }
        let _: () = p.query(c).unwrap();
    }
}

fn pending(c: &mut redis::Connection) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg("events")
        .arg("cartpulse")
        .query(c)
        .unwrap();
    match v {
        redis::Value::Array(p) => match p.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    }
}

/// Entries not yet delivered to the group (XINFO GROUPS `lag`, Redis 7).
fn lag(c: &mut redis::Connection) -> i64 {
    let v: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("events")
        .query(c)
        .unwrap();
    let redis::Value::Array(groups) = v else {
        return -1;
    };
    for g in groups {
        if let redis::Value::Array(kv) = g {
            for p in kv.chunks(2) {
                if matches!(&p[0], redis::Value::BulkString(k) if k == b"lag") {
                    if let redis::Value::Int(n) = p[1] {
                        return n;
                    }
                }
            }
        }
    }
    -1
}

#[test]
fn redis_stream_consumer_survives_sigkill_with_exactly_once_output() {
    let srv = RedisServer::start();
    let mut c = srv.conn();
    let dirs = Dirs::new();
    let gen = dirs.path("gen.jsonl");
    common::gen(150_000, 9, &gen, &["--rate", "200"]);
    let mut events: Vec<String> = std::fs::read_to_string(&gen)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    events.push(sentinel(max_ts(&events)));
    xadd_all(&mut c, "events", &events);

    let config = write_config(
        &dirs,
        &format!(
            "[source]\ntype = \"redis_stream\"\nurl = \"{}\"\nstream = \"events\"\ngroup = \"cartpulse\"\n\
             consumer = \"c1\"\ncount = 500\nmax_backoff = \"500ms\"",
            srv.url()
        ),
    );
    let mut run = spawn_run(&dirs, &config, 1);
    // a stream has no prefetch limit: the run is fast, so kill it as soon as a checkpoint
    // has been acknowledged while more entries are read and pending
    wait_checkpoints(&dirs, &mut run, 2, Duration::from_secs(30));
    crash(&mut run);
    let left = pending(&mut c);
    let undelivered = lag(&mut c);
    eprintln!("killed with {left} entries pending, {undelivered} not yet delivered");
    assert!(left > 0, "entries read but not acknowledged at the crash");

    let want = expected(&dirs, &events);
    let mut run = spawn_run(&dirs, &config, 2);
    wait_for_output(&dirs, &mut run, &want, Duration::from_secs(90));
    // every entry a checkpoint covered is acknowledged while running
    let c0 = checkpoints(&dirs);
    wait_checkpoints(&dirs, &mut run, c0 + 2, Duration::from_secs(10));
    assert_eq!(pending(&mut c), 0);
    run.stop(Duration::from_secs(10));
}

#[test]
fn redis_cart_hashes_become_events_with_the_windows_of_a_replay() {
    let srv = RedisServer::start();
    let mut c = srv.conn();
    let dirs = Dirs::new();
    // carts that exist before the start: the first scan reports them
    for u in 0..20 {
        let _: () = redis::cmd("HSET")
            .arg(format!("cart:u{u}"))
            .arg(format!("p{}", u % 3))
            .arg(1 + u % 4)
            .query(&mut c)
            .unwrap();
    }
    let config = write_config(
        &dirs,
        &format!(
            "[source]\ntype = \"redis_carts\"\nurl = \"{}\"\nkey_pattern = \"cart:{{user}}\"",
            srv.url()
        ),
    );
    // the sink also writes every accepted event, which is what the replay is fed (one shard,
    // so that stream is in source order)
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "[pipeline]\nshards = 2\n",
            &format!("[pipeline]\nshards = 1\n{WINDOWS}"),
        )
        .replace("type = \"jsonl\"", "type = \"jsonl\"\nevents = true");
    std::fs::write(&config, text).unwrap();
    let mut run = spawn_run(&dirs, &config, 1);
    wait_checkpoints(&dirs, &mut run, 1, Duration::from_secs(30));
    let mut rng = common::Rng::new(5);
    for _ in 0..400 {
        let key = format!("cart:u{}", rng.below(30));
        let sku = format!("p{}", rng.below(6));
        match rng.below(6) {
            0..=3 => {
                let _: () = redis::cmd("HSET")
                    .arg(&key)
                    .arg(&sku)
                    .arg(1 + rng.below(5))
                    .query(&mut c)
                    .unwrap();
            }
            4 => {
                let _: () = redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&sku)
                    .query(&mut c)
                    .unwrap();
            }
            _ => {
                let _: () = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // the carts in Redis now, which the events must add up to
    let keys: Vec<String> = redis::cmd("KEYS").arg("cart:*").query(&mut c).unwrap();
    let mut carts = BTreeMap::new();
    for k in keys {
        let h: BTreeMap<String, u64> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
        if !h.is_empty() {
            carts.insert(k["cart:".len()..].to_string(), h);
        }
    }
    let start = std::time::Instant::now();
    loop {
        let folded = fold(&common::lines(&dirs.path("out"), "events"));
        if folded == carts {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "carts {carts:?}\nfolded {folded:?}\n{}",
            run.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = run.stop(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{}", run.log_tail(20));
    // the windows are those of a replay of the very events the source produced
    let events = common::lines(&dirs.path("out"), "events");
    assert!(events.len() > 300, "{} events", events.len());
    let want = expected_with(&dirs, &events, WINDOWS, 1_000);
    common::assert_same_streams(
        "redis carts run vs replay",
        &common::sorted_streams(&dirs.path("out")),
        &want,
    );
}

/// Pipeline settings of the carts test: its events carry wall-clock time, so windows and
/// the out-of-orderness bound are short enough to close within the test.
const WINDOWS: &str = "user_window = { kind = \"tumbling\", size = \"1s\" }\n\
    global_window = { kind = \"tumbling\", size = \"1s\" }\nout_of_orderness = \"1s\"\n";

type Carts = BTreeMap<String, BTreeMap<String, u64>>;

/// The carts a list of `events` stream records adds up to.
fn fold(lines: &[String]) -> Carts {
    let mut carts = Carts::new();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let cart = carts
            .entry(v["user_id"].as_str().unwrap().to_string())
            .or_default();
        let sku = v["sku"].as_str().unwrap().to_string();
        let q = v["qty"].as_u64().unwrap();
        match v["action"].as_str().unwrap() {
            "add" => *cart.entry(sku).or_default() += q,
            "update_qty" => {
                cart.insert(sku, q);
            }
            "remove" => {
                cart.remove(&sku);
            }
            a => panic!("action {a}"),
        }
    }
    carts.retain(|_, c| !c.is_empty());
    carts
}
