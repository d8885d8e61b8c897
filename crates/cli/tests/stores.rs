//! End to end, exactly-once into the real-time stores (README "Stores"), through the
//! `cartpulse` binary, compared with the JSONL output of an uninterrupted run of the same
//! input read through each store's own data model: the same rows, none missing, none twice.
//!
//! * `<store>_store_is_exactly_once_under_sigkill`: `cartpulse run --config` with a file
//!   source (malformed lines included) and the store, SIGKILLed at random moments and
//!   restarted until it finishes.
//! * `<store>_outage_of_30s_mid_stream_loses_nothing`: a generated stream released at
//!   wall-clock pace; mid-stream the store's server is killed and started again 30 s later on
//!   the same port and data. cartpulse must stay up and keep retrying meanwhile
//!   (`cartpulse_sink_retries_total` on its `/metrics`), must not have finished when the store
//!   returns, and must then catch up.
//!
//! The SIGKILL tests use the shared PostgreSQL (127.0.0.1:5432, database `test`) and Redis
//! (127.0.0.1:6379) under a schema / key prefix of their own. Every server a test stops is
//! one it started: PostgreSQL 15 (/usr/lib/postgresql/15/bin, run as the `postgres` OS user),
//! `redis-server` with an append-only file, and Debian's `clickhouse-server`
//! (scripts/services.d/clickhouse.sh installs it; the ClickHouse tests always start one).

mod common;
mod live;

use common::*;
use live::{free_port, get, parse_exposition, request, wait_for, Proc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_SHARED: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
const REDIS_SHARED: &str = "redis://127.0.0.1:6379/";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long the store is down in the outage tests (the issue asks for 30 s), and how far
/// into the stream it goes down.
const OUTAGE: Duration = Duration::from_secs(30);
const OUTAGE_AT: Duration = Duration::from_secs(5);
/// The outage tests' generated stream: `GEN_EVENTS` at `GEN_RATE` a second of wall clock.
const GEN_EVENTS: u64 = 88_000;
const GEN_RATE: u64 = 2_000;
/// Redis caps small enough to trim in these runs; alerts are kept whole (see `Redis`).
const WINDOWS_PER_USER: usize = 3;
const GLOBAL_WINDOWS_KEPT: usize = 40;
const ABANDONED_KEPT: usize = 300;

/// Streams keyed by their fields in every store; the rest (alerts by id, appended streams)
/// are compared on their own.
const KEYED: [&str; 4] = ["user_windows", "global_windows", "abandoned_carts", "carts"];

// ---------------------------------------------------------------------------------------
// Runs: one input (pipeline settings and source) for the reference run and the store run.

struct Scenario {
    dir: tempfile::TempDir,
    pipeline: String,
    source: String,
    /// The appended streams this input fills (so their comparison is not vacuous).
    appended: &'static [&'static str],
}

impl Scenario {
    /// 150k generated events in a file, with a malformed line every 3000 (dead letters are
    /// appended rows, the easiest to duplicate). An out-of-orderness bound of 1 s makes some
    /// of the generator's out-of-order events late: `late_events` rows too.
    fn file() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("gen.jsonl");
        gen(150_000, 11, &raw, &["--rate", "200"]);
        let mut input = String::new();
        for (i, l) in std::fs::read_to_string(&raw).unwrap().lines().enumerate() {
            if i % 3000 == 2999 {
                input.push_str(&format!("{{\"broken\": {i}\n"));
            }
            input.push_str(l);
            input.push('\n');
        }
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, input).unwrap();
        Scenario {
            pipeline: "abandon_after = \"2m\"\nout_of_orderness = \"1s\"\n".into(),
            source: format!("type = \"file\"\npath = {:?}\n", path.display().to_string()),
            appended: &["dead_letter", "late_events"],
            dir,
        }
    }

    /// The generator as a live source, its first event at `start_ms` and the rest released
    /// as the wall clock reaches them (a run started later than the stream's end reads it
    /// all at once: the reference). A bound of 1 s makes some of its out-of-order events
    /// late, so the appended `late_events` stream has rows too (it has no malformed lines).
    fn generated(start_ms: i64) -> Scenario {
        Scenario {
            dir: tempfile::tempdir().unwrap(),
            pipeline: "abandon_after = \"10s\"\nout_of_orderness = \"1s\"\n".into(),
            source: format!(
                "type = \"generator\"\nseed = 5\nevents = {GEN_EVENTS}\nstart_ms = {start_ms}\n\
                 events_per_sec = {GEN_RATE}.0\nusers = 2000\ndiurnal_amplitude = 0.0\n"
            ),
            appended: &["late_events"],
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<name>.toml` with checkpoints in `<name>-ck` every 100 ms and `outputs` (sinks,
    /// stores, `[http]`).
    fn config(&self, name: &str, outputs: &str) -> PathBuf {
        let text = format!(
            "[pipeline]\nshards = 2\n{}\n[pipeline.checkpoint]\ndir = {:?}\ninterval = \"100ms\"\n\n\
             [source]\n{}\n{outputs}\n",
            self.pipeline,
            self.path(&format!("{name}-ck")).display().to_string(),
            self.source,
        );
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The uninterrupted run, through the JSONL sink (with the opt-in `carts` stream).
    fn reference(&self) -> Reference {
        let out = self.path("ref-out");
        let cfg = self.config(
            "ref",
            &format!(
                "[[sinks]]\ntype = \"jsonl\"\ndir = {:?}\ncarts = true\n",
                out.display().to_string()
            ),
        );
        let time = run_to_end(&cfg);
        Reference {
            out,
            time,
            appended: self.appended,
        }
    }
}

fn run_cmd(cfg: &Path) -> Command {
    let mut c = cmd();
    c.arg("run").arg("--config").arg(cfg);
    c
}

fn run_to_end(cfg: &Path) -> Duration {
    let t = Instant::now();
    let o = run_cmd(cfg).output().unwrap();
    assert!(
        o.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed()
}

/// Runs `cfg` at most four times, each SIGKILLed at a random moment within `horizon` (at
/// first twice the reference's run time) unless it finishes first, then once more to the end
/// if none did. A first run that finishes before its kill tests nothing: then everything
/// starts over (a fresh start empties the store) with kills twice as soon.
fn run_with_sigkills(cfg: &Path, ck: &Path, ref_time: Duration) {
    let mut rng = Rng::new(std::process::id() as u64);
    let mut horizon = ref_time.mul_f64(2.0).max(Duration::from_millis(600));
    loop {
        let mut kills = 0;
        let mut finished = false;
        for _ in 0..4 {
            let wait = Duration::from_millis(100 + rng.below(horizon.as_millis() as u64));
            let mut child = run_cmd(cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let t = Instant::now();
            while t.elapsed() < wait && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
            }
            let st = child.wait_with_output().unwrap();
            if st.status.signal() == Some(libc::SIGKILL) {
                kills += 1;
            } else {
                assert!(
                    st.status.success(),
                    "run failed: {}",
                    String::from_utf8_lossy(&st.stderr)
                );
                finished = true;
                break;
            }
        }
        eprintln!(
            "reference run {ref_time:?}; kills within {horizon:?}: {kills}, finished early: {finished}"
        );
        if kills >= 1 {
            if !finished {
                run_to_end(cfg);
            }
            return;
        }
        assert!(
            horizon > Duration::from_millis(100),
            "no run was killed: the runs end too soon to test anything"
        );
        std::fs::remove_dir_all(ck).unwrap();
        horizon /= 2;
    }
}

/// The SIGKILL test of one store.
fn sigkill_scenario(store: &dyn Store) {
    let sc = Scenario::file();
    let reference = sc.reference();
    let cfg = sc.config("store", &store.toml());
    run_with_sigkills(&cfg, &sc.path("store-ck"), reference.time);
    store.assert_holds(&reference);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `cartpulse_sink_retries_total{sink}` on cartpulse's `/metrics` (0 before the first).
fn retries(http: SocketAddr, sink: &str) -> Result<f64, String> {
    let r = get(http, "/metrics", &[]).map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("/metrics answered {}: {}", r.status, r.text()));
    }
    let (_, samples) = parse_exposition(&r.text());
    Ok(samples
        .iter()
        .filter(|s| {
            s.name == "cartpulse_sink_retries_total"
                && s.labels.iter().any(|(k, v)| k == "sink" && v == sink)
        })
        .map(|s| s.value)
        .sum())
}

/// The outage test of one store, which runs on a server of the test's own.
fn outage_scenario(store: &mut dyn Store) {
    let start_ms = now_ms();
    let sc = Scenario::generated(start_ms);
    let stream_starts = Instant::now();
    let stream_ends = stream_starts + Duration::from_millis(GEN_EVENTS * 1000 / GEN_RATE);
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cfg = sc.config(
        "store",
        &format!(
            "{}\n[http]\nenabled = true\naddr = \"{http}\"\n",
            store.toml()
        ),
    );
    let mut run = Proc::spawn("cartpulse run", run_cmd(&cfg), &sc.path("run.log"));
    let alive = |run: &mut Proc| {
        if let Some(st) = run.exited() {
            panic!("cartpulse exited with {st}\n{}", run.log_tail(30));
        }
    };

    // it got going: epochs with results are in the store, for a few seconds of the stream
    wait_for(
        "the first results in the store",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            alive(&mut run);
            match store.committed() {
                Some(n) if n > 0 => Ok(n),
                other => Err(format!("committed epoch {other:?}")),
            }
        },
    );
    while stream_starts.elapsed() < OUTAGE_AT {
        alive(&mut run);
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = store.committed().expect("the store is up");
    let retries_before = retries(http, store.sink()).unwrap();
    store.server().stop();
    let down = Instant::now();
    assert!(
        down + OUTAGE + Duration::from_secs(3) < stream_ends,
        "the store went down too late for the outage to fall mid-stream"
    );

    // cartpulse waits: alive, and retrying the store
    let waiting = wait_for(
        "cartpulse to retry the store",
        OUTAGE - Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            alive(&mut run);
            let n = retries(http, store.sink())?;
            if n >= retries_before + 3.0 {
                Ok(n)
            } else {
                Err(format!("{n} retries (before the outage: {retries_before})"))
            }
        },
    );
    while down.elapsed() < OUTAGE {
        alive(&mut run);
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = retries(http, store.sink()).unwrap();
    assert!(
        during > waiting,
        "retries went on through the outage: {waiting} after a few seconds, {during} at its end"
    );
    assert!(
        run.exited().is_none(),
        "cartpulse finished while the store was down\n{}",
        run.log_tail(30)
    );
    assert_eq!(
        store.committed(),
        None,
        "the store is down for the whole outage"
    );

    // the store comes back on the same port with the same data; cartpulse catches up
    store.server().start();
    let back = Instant::now();
    let st = wait_for(
        "cartpulse to finish after the outage",
        Duration::from_secs(90),
        Duration::from_millis(100),
        || run.exited().ok_or_else(|| "still running".to_string()),
    );
    assert!(st.success(), "cartpulse exit {st}\n{}", run.log_tail(30));
    let after = store.committed().unwrap_or(0);
    eprintln!(
        "committed epoch {before} when the store went down, {after} at the end; \
         {retries_before} → {during} retries; finished {:?} after the store came back",
        back.elapsed()
    );
    assert!(
        after > before,
        "epochs after the outage reached the store ({before} → {after})"
    );

    let reference = sc.reference();
    store.assert_holds(&reference);
}

// ---------------------------------------------------------------------------------------
// The reference and the comparison.

struct Reference {
    out: PathBuf,
    time: Duration,
    appended: &'static [&'static str],
}

impl Reference {
    fn records(&self, stream: &str) -> Vec<Value> {
        lines(&self.out, stream)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The final state of a keyed stream (alerts: by id): the last record of each key, in
    /// commit order; a cart without lines removes the key.
    fn keyed(&self, stream: &str) -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        for v in self.records(stream) {
            let k = key(stream, &v);
            if is_gone_cart(stream, &v) {
                m.remove(&k);
            } else {
                m.insert(k, v);
            }
        }
        m
    }
}

fn is_gone_cart(stream: &str, v: &Value) -> bool {
    stream == "carts" && v["lines"].as_array().is_some_and(|l| l.is_empty())
}

/// A field as the stores' key text (ClickHouse quotes 64-bit integers in JSON).
fn txt(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn key(stream: &str, v: &Value) -> String {
    let f = |k: &str| txt(&v[k]);
    match stream {
        "user_windows" => format!("{}|{}|{}", f("user_id"), f("window_start"), f("window_end")),
        "global_windows" => format!("{}|{}", f("window_start"), f("window_end")),
        "abandoned_carts" => format!("{}|{}", f("user_id"), f("abandoned_at")),
        "carts" => f("user_id"),
        "alerts" => {
            assert!(v["alert_id"].is_string(), "an alert without an id: {v}");
            f("alert_id")
        }
        _ => unreachable!(),
    }
}

/// Numbers compared by value (`59.9700` is `59.97`, ClickHouse's `"7"` is `7`), `update`
/// ignored, fields the store adds (`epoch`, `seq`, …) ignored.
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Number(a), Value::String(b)) => b.parse::<f64>().ok() == a.as_f64(),
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .filter(|(k, _)| *k != "update")
            .all(|(k, v)| b.get(k).is_some_and(|g| same(v, g))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (a, b) => a == b,
    }
}

/// `got` (key, record) pairs as read from the store must hold each wanted key exactly once,
/// with the wanted record, and nothing else.
fn assert_keyed(what: &str, want: &BTreeMap<String, Value>, got: Vec<(String, Value)>) {
    let n = got.len();
    let got: BTreeMap<String, Value> = got.into_iter().collect();
    assert_eq!(n, got.len(), "{what}: a key held twice");
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let surplus: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && surplus.is_empty(),
        "{what}: {} held, {} expected; {} missing (first: {:?}), {} surplus (first: {:?})",
        got.len(),
        want.len(),
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        surplus.len(),
        surplus.iter().take(3).collect::<Vec<_>>()
    );
    for (k, w) in want {
        assert!(same(w, &got[k]), "{what} {k}: want {w}, got {}", got[k]);
    }
}

/// The same multiset of records.
fn assert_multiset(what: &str, want: &[Value], mut got: Vec<Value>) {
    assert_eq!(want.len(), got.len(), "{what}: row count");
    for w in want {
        let i = got
            .iter()
            .position(|g| same(w, g))
            .unwrap_or_else(|| panic!("{what}: {w} missing"));
        got.swap_remove(i);
    }
}

/// PostgreSQL and ClickHouse: a table per stream (`rows` reads one, nested JSON as JSON).
fn assert_tables(r: &Reference, rows: &dyn Fn(&str) -> Vec<Value>) {
    for stream in KEYED {
        let want = r.keyed(stream);
        assert!(!want.is_empty(), "{stream}: the reference has rows");
        let got = rows(stream)
            .into_iter()
            // ClickHouse keeps a gone cart as its latest row, without lines
            .filter(|v| !is_gone_cart(stream, v))
            .map(|v| (key(stream, &v), v))
            .collect();
        assert_keyed(stream, &want, got);
    }
    let alerts = rows("alerts")
        .into_iter()
        .map(|mut v| {
            let p = v["payload"].take();
            (key("alerts", &p), p)
        })
        .collect();
    assert_keyed("alerts", &r.keyed("alerts"), alerts);
    for (stream, col) in [("dead_letter", Some("payload")), ("late_events", None)] {
        let want = r.records(stream);
        assert!(
            !r.appended.contains(&stream) || !want.is_empty(),
            "{stream}: the reference has rows"
        );
        let got = rows(stream)
            .into_iter()
            .map(|mut v| match col {
                Some(c) => v[c].take(),
                None => v,
            })
            .collect();
        assert_multiset(stream, &want, got);
    }
}

// ---------------------------------------------------------------------------------------
// The stores.

trait Store {
    /// The `[[stores]]` entry (retries capped at 1 s, so a store that returns is seen soon).
    fn toml(&self) -> String;
    /// Its sink name, the label of `cartpulse_sink_retries_total`.
    fn sink(&self) -> &str;
    /// The newest epoch whose results the store holds; `None` when it cannot be read.
    fn committed(&self) -> Option<u64>;
    /// Asserts the store holds exactly the reference's results, as its data model says.
    fn assert_holds(&self, r: &Reference);
    /// The test's own server (outage tests).
    fn server(&mut self) -> &mut Server;
}

const RETRY: &str = "retry = { initial = \"100ms\", max = \"1s\" }";

fn no_server() -> ! {
    panic!("this store runs on the shared server, which the tests never stop")
}

/// A server process a test started: stopped for real (killed) and started again on the
/// same port with the same data directory; stopped when dropped.
struct Server {
    what: &'static str,
    port: u16,
    command: Box<dyn Fn(u16) -> Command>,
    ready: Box<dyn Fn(u16) -> Result<(), String>>,
    /// How it is stopped: the signal of an abrupt stop that keeps acknowledged writes.
    signal: libc::c_int,
    child: Option<Child>,
    log: PathBuf,
    /// Holds the data directory; dropped after the process is stopped.
    _dir: tempfile::TempDir,
}

impl Server {
    fn new(
        what: &'static str,
        dir: tempfile::TempDir,
        signal: libc::c_int,
        command: impl Fn(u16) -> Command + 'static,
        ready: impl Fn(u16) -> Result<(), String> + 'static,
    ) -> Server {
        let mut s = Server {
            what,
            port: 0,
            command: Box::new(command),
            ready: Box::new(ready),
            signal,
            child: None,
            log: dir.path().join(format!("{what}.log")),
            _dir: dir,
        };
        // another process may take the chosen port first: then try another one
        for attempt in 1..=3 {
            s.port = quiet_port();
            match s.launch() {
                Ok(()) => return s,
                Err(e) if attempt < 3 => eprintln!("{what} on port {}: {e}; retrying", s.port),
                Err(e) => panic!("{what} did not start: {e}"),
            }
        }
        unreachable!()
    }

    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "{} is running", self.what);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = (self.command)(self.port)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.what));
        let t = Instant::now();
        loop {
            let last = match (self.ready)(self.port) {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => e,
            };
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            if let Some(st) = child.try_wait().unwrap() {
                return Err(format!("exited with {st}: {last}\n{tail}"));
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not ready after 60 s: {last}\n{tail}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts it again, on its port and data directory.
    fn start(&mut self) {
        let port = self.port;
        self.launch()
            .unwrap_or_else(|e| panic!("{} did not start again on port {port}: {e}", self.what));
    }

    /// Kills it with its signal and waits until it is gone.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the process this guard started and has not reaped yet.
        unsafe { libc::kill(c.id() as libc::pid_t, self.signal) };
        let t = Instant::now();
        while c.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port below the kernel's ephemeral range, so that no outgoing connection takes
/// it while its server is down.
fn quiet_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32768);
    if low <= 12_000 {
        return free_port();
    }
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rng = Rng::new((std::process::id() as u64) << 20 ^ now_ms() as u64 ^ n << 50);
    loop {
        let p = (10_000 + rng.below(low - 10_000)) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

// --- PostgreSQL

struct Pg {
    url: String,
    schema: String,
    server: Option<Server>,
}

impl Pg {
    fn shared() -> Pg {
        Pg {
            url: PG_SHARED.into(),
            schema: format!("e2e_{}", std::process::id()),
            server: None,
        }
    }

    /// A PostgreSQL 15 server of this test's own, as the `postgres` OS user (the server
    /// refuses to run as root), its data and socket in a temporary directory.
    fn own() -> Pg {
        let dir = tempfile::tempdir().unwrap();
        let ids = postgres_ids();
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let as_postgres = move |bin: &str, cwd: &Path| {
            let mut c = Command::new(Path::new(PG_BIN).join(bin));
            if let Some((uid, gid)) = ids {
                c.uid(uid).gid(gid);
            }
            c.current_dir(cwd).env("LC_ALL", "C");
            c
        };
        let o = as_postgres("initdb", dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap_or_else(|e| panic!("run {PG_BIN}/initdb: {e}"));
        assert!(
            o.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let cwd = dir.path().to_path_buf();
        let data2 = data.clone();
        let server = Server::new(
            "postgres",
            dir,
            // immediate shutdown (`pg_ctl stop -m immediate`): every server process quits at
            // once, without a checkpoint; the next start recovers from the WAL
            libc::SIGQUIT,
            move |port| {
                let mut c = as_postgres("postgres", &cwd);
                c.arg("-D")
                    .arg(&data2)
                    .args(["-p", &port.to_string()])
                    .args(["-c", "listen_addresses=127.0.0.1"])
                    .arg("-c")
                    .arg(format!("unix_socket_directories={}", cwd.display()))
                    .args(["-c", "max_connections=20"]);
                c
            },
            move |port| {
                let dir = pg_strings(&pg_url(port), "SELECT current_setting('data_directory')")?;
                if dir.first().map(PathBuf::from) == Some(data.clone()) {
                    Ok(())
                } else {
                    Err(format!("another server answers on port {port}: {dir:?}"))
                }
            },
        );
        Pg {
            url: pg_url(server.port),
            schema: "cartpulse".into(),
            server: Some(server),
        }
    }

    fn strings(&self, sql: &str) -> Result<Vec<String>, String> {
        pg_strings(&self.url, sql)
    }

    fn rows(&self, table: &str) -> Vec<Value> {
        self.strings(&format!(
            "SELECT row_to_json(t)::text FROM \"{}\".{table} t",
            self.schema
        ))
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect()
    }
}

fn pg_url(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5")
}

/// The `postgres` user's uid and gid when this runs as root (else the server runs as us).
fn postgres_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: a valid C string; the entry is read at once, before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no `postgres` OS user (package postgresql)");
    // SAFETY: non-null, as checked.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// The first column of every row of `sql`, as text, over a new connection.
fn pg_strings(url: &str, sql: &str) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.map_err(|e| e.to_string())?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    })
}

impl Store for Pg {
    fn toml(&self) -> String {
        format!(
            "[[stores]]\ntype = \"postgres\"\nname = \"pg-e2e\"\nurl = \"{}\"\nschema = \"{}\"\n{RETRY}\n",
            self.url, self.schema
        )
    }

    fn sink(&self) -> &str {
        "pg-e2e"
    }

    fn committed(&self) -> Option<u64> {
        let v = self
            .strings(&format!(
                "SELECT coalesce(max(epoch), 0)::text FROM \"{}\".cartpulse_committed_epochs",
                self.schema
            ))
            .ok()?;
        v.first()?.parse().ok()
    }

    fn assert_holds(&self, r: &Reference) {
        assert_tables(r, &|table| self.rows(table));
    }

    fn server(&mut self) -> &mut Server {
        self.server.as_mut().unwrap_or_else(|| no_server())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.server.is_none() {
            let _ = self.strings(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ));
        }
    }
}

// --- Redis

struct Redis {
    url: String,
    prefix: String,
    server: Option<Server>,
}

impl Redis {
    fn shared() -> Redis {
        Redis {
            url: REDIS_SHARED.into(),
            prefix: format!("e2e_{}:", std::process::id()),
            server: None,
        }
    }

    /// A `redis-server` of this test's own, with an append-only file so that its data
    /// survives a stop as a deployment's would.
    fn own() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let ours = d.canonicalize().unwrap();
        let server = Server::new(
            "redis",
            dir,
            libc::SIGKILL,
            move |port| {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                    ])
                    .arg("--dir")
                    .arg(&d);
                c
            },
            move |port| {
                let mut c = redis_con(&redis_url(port)).map_err(|e| e.to_string())?;
                let dir: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("dir")
                    .query(&mut c)
                    .map_err(|e| e.to_string())?;
                if dir.get(1).map(PathBuf::from) == Some(ours.clone()) {
                    Ok(())
                } else {
                    Err(format!("another server answers on port {port}: {dir:?}"))
                }
            },
        );
        Redis {
            url: redis_url(server.port),
            prefix: "cartpulse:".into(),
            server: Some(server),
        }
    }

    fn con(&self) -> redis::Connection {
        redis_con(&self.url).unwrap()
    }

    fn keys(&self, c: &mut redis::Connection, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{}{pattern}", self.prefix))
            .query(c)
            .unwrap()
    }

    /// Every member of the sorted sets matching `pattern`, with its score.
    fn zsets(&self, c: &mut redis::Connection, pattern: &str) -> Vec<(String, Value, f64)> {
        let mut out = Vec::new();
        for k in self.keys(c, pattern) {
            let m: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(c)
                .unwrap();
            for (member, score) in m {
                let v = serde_json::from_str(&member).unwrap_or(Value::String(member));
                out.push((k.clone(), v, score));
            }
        }
        out
    }
}

fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

fn redis_con(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))
}

/// What a capped sorted set keeps: the `cap` records with the highest `score`, of the
/// latest records by key.
fn newest(records: impl Iterator<Item = Value>, cap: usize, score: &str) -> Vec<Value> {
    let mut v: Vec<Value> = records.collect();
    v.sort_by_key(|r| std::cmp::Reverse(r[score].as_i64().unwrap()));
    v.truncate(cap);
    v
}

/// The results a website reads from Redis (README "Stores"): `cart:{user}`,
/// `user_windows:{user}` and `global_windows` (newest windows, capped), `abandoned` (users
/// by time, capped) with `abandoned:{user}` hashes, `alerts` (list, newest first) and
/// `alert:{id}`. Alerts are kept whole (`alerts_kept` above their count): which alerts of
/// one epoch a cap keeps depends on the order of shards within the epoch, not a result.
impl Store for Redis {
    fn toml(&self) -> String {
        format!(
            "[[stores]]\ntype = \"redis\"\nname = \"redis-e2e\"\nurl = \"{}\"\nprefix = \"{}\"\n\
             windows_per_user = {WINDOWS_PER_USER}\nglobal_windows_kept = {GLOBAL_WINDOWS_KEPT}\n\
             abandoned_kept = {ABANDONED_KEPT}\nalerts_kept = 1000000\n{RETRY}\n",
            self.url, self.prefix
        )
    }

    fn sink(&self) -> &str {
        "redis-e2e"
    }

    fn committed(&self) -> Option<u64> {
        let mut c = redis_con(&self.url).ok()?;
        redis::cmd("GET")
            .arg(format!("{}committed_epoch", self.prefix))
            .query::<Option<u64>>(&mut c)
            .ok()?
            .or(Some(0))
    }

    fn assert_holds(&self, r: &Reference) {
        let mut c = self.con();
        let p = &self.prefix;

        let carts = self
            .keys(&mut c, "cart:*")
            .into_iter()
            .map(|k| {
                let v: String = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
                (
                    k[p.len() + "cart:".len()..].to_string(),
                    serde_json::from_str(&v).unwrap(),
                )
            })
            .collect();
        assert_keyed("cart:{user}", &r.keyed("carts"), carts);

        // user windows: the newest per user
        let mut by_user: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for v in r.keyed("user_windows").into_values() {
            by_user.entry(txt(&v["user_id"])).or_default().push(v);
        }
        let want: BTreeMap<String, Value> = by_user
            .into_values()
            .flat_map(|w| newest(w.into_iter(), WINDOWS_PER_USER, "window_end"))
            .map(|v| (key("user_windows", &v), v))
            .collect();
        let got = self
            .zsets(&mut c, "user_windows:*")
            .into_iter()
            .map(|(k, v, score)| {
                assert_eq!(k, format!("{p}user_windows:{}", txt(&v["user_id"])));
                assert_eq!(Some(score as i64), v["window_end"].as_i64(), "score of {v}");
                (key("user_windows", &v), v)
            })
            .collect();
        assert_keyed("user_windows:{user}", &want, got);

        let want = newest(
            r.keyed("global_windows").into_values(),
            GLOBAL_WINDOWS_KEPT,
            "window_end",
        )
        .into_iter()
        .map(|v| (key("global_windows", &v), v))
        .collect();
        let got = self
            .zsets(&mut c, "global_windows")
            .into_iter()
            .map(|(_, v, score)| {
                assert_eq!(Some(score as i64), v["window_end"].as_i64(), "score of {v}");
                (key("global_windows", &v), v)
            })
            .collect();
        assert_keyed("global_windows", &want, got);

        // abandoned carts: the latest of each user in a hash, the newest users in `abandoned`
        let mut latest: BTreeMap<String, Value> = BTreeMap::new();
        for v in r.records("abandoned_carts") {
            latest.insert(txt(&v["user_id"]), v);
        }
        assert!(!latest.is_empty(), "the reference has abandoned carts");
        let hashes = self
            .keys(&mut c, "abandoned:*")
            .into_iter()
            .map(|k| {
                let h: BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
                // text fields as they are, numbers and `lines` as the JSON they are
                let v: serde_json::Map<String, Value> = h
                    .into_iter()
                    .map(|(f, s)| {
                        let v = match serde_json::from_str::<Value>(&s) {
                            Ok(j) if !j.is_string() => j,
                            _ => Value::String(s),
                        };
                        (f, v)
                    })
                    .collect();
                (k[p.len() + "abandoned:".len()..].to_string(), v.into())
            })
            .collect();
        assert_keyed("abandoned:{user}", &latest, hashes);
        let mut users: Vec<(i64, String)> = latest
            .iter()
            .map(|(u, v)| (v["abandoned_at"].as_i64().unwrap(), u.clone()))
            .collect();
        // a sorted set ranks by score, then member
        users.sort_by(|a, b| b.cmp(a));
        users.truncate(ABANDONED_KEPT);
        users.reverse();
        let got: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(format!("{p}abandoned"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut c)
            .unwrap();
        let got: Vec<(i64, String)> = got.into_iter().map(|(u, s)| (s as i64, u)).collect();
        assert_eq!(got, users, "abandoned: the newest users by time");

        // alerts: every one pushed once, and the latest version of each by id
        let want = r.records("alerts");
        assert!(!want.is_empty(), "the reference has alerts");
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{p}alerts"))
            .arg(0)
            .arg(-1)
            .query(&mut c)
            .unwrap();
        let list = list
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_multiset("alerts", &want, list);
        let by_id = self
            .keys(&mut c, "alert:*")
            .into_iter()
            .map(|k| {
                let v: String = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
                (
                    k[p.len() + "alert:".len()..].to_string(),
                    serde_json::from_str(&v).unwrap(),
                )
            })
            .collect();
        assert_keyed("alert:{id}", &r.keyed("alerts"), by_id);
    }

    fn server(&mut self) -> &mut Server {
        self.server.as_mut().unwrap_or_else(|| no_server())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.server.is_some() {
            return;
        }
        if let Ok(mut c) = redis_con(&self.url) {
            let keys = self.keys(&mut c, "*");
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut c);
            }
        }
    }
}

// --- ClickHouse

struct ClickHouse {
    server: Server,
    database: String,
}

fn clickhouse_binary() -> PathBuf {
    for p in [
        "/usr/sbin/clickhouse-server",
        "/usr/bin/clickhouse-server",
        "/usr/bin/clickhouse",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "no clickhouse server binary (looked in /usr/sbin and /usr/bin): run scripts/services.d/clickhouse.sh"
    );
}

impl ClickHouse {
    /// A `clickhouse-server` of this test's own: HTTP on a free port, data in a temporary
    /// directory (the config of crates/stores/tests/clickhouse.rs).
    fn start() -> ClickHouse {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(
            d.join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#,
        )
        .unwrap();
        let tcp = quiet_port();
        let server = Server::new(
            "clickhouse",
            dir,
            libc::SIGKILL,
            move |http| {
                std::fs::write(
                    d.join("config.xml"),
                    format!(
                        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{p}/data/</path>
  <tmp_path>{p}/tmp/</tmp_path>
  <user_files_path>{p}/user_files/</user_files_path>
  <format_schema_path>{p}/format_schemas/</format_schema_path>
  <users_config>{p}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
"#,
                        p = d.display()
                    ),
                )
                .unwrap();
                let bin = clickhouse_binary();
                let mut c = Command::new(&bin);
                if bin.ends_with("clickhouse") {
                    c.arg("server");
                }
                c.arg(format!("--config-file={}", d.join("config.xml").display()))
                    .current_dir(&d);
                c
            },
            |http| ch_query(http, "SELECT 1").map(|_| ()),
        );
        ClickHouse {
            server,
            database: format!("e2e_{}", std::process::id()),
        }
    }

    fn rows(&self, table: &str) -> Vec<Value> {
        let text = ch_query(
            self.server.port,
            &format!(
                "SELECT * FROM `{}`.`{table}` FINAL FORMAT JSONEachRow",
                self.database
            ),
        )
        .unwrap();
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                // nested JSON is stored as text: compare it as JSON
                for f in ["lines", "event", "payload"] {
                    if let Some(Value::String(s)) = v.get(f) {
                        let parsed = serde_json::from_str(s).unwrap();
                        v[f] = parsed;
                    }
                }
                v
            })
            .collect()
    }
}

fn ch_query(port: u16, q: &str) -> Result<String, String> {
    let r = request(
        ([127, 0, 0, 1], port).into(),
        "POST",
        "/",
        &[],
        q.as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    if r.status == 200 {
        Ok(r.text())
    } else {
        Err(format!("HTTP {}: {}", r.status, r.text()))
    }
}

/// `ReplacingMergeTree` tables read with `FINAL`, every stream (with `carts`) stored.
impl Store for ClickHouse {
    fn toml(&self) -> String {
        format!(
            "[[stores]]\ntype = \"clickhouse\"\nname = \"ch-e2e\"\nurl = \"http://127.0.0.1:{}\"\n\
             database = \"{}\"\nstreams = [\"user_windows\", \"global_windows\", \"abandoned_carts\", \
             \"carts\", \"alerts\", \"late_events\", \"dead_letter\"]\n{RETRY}\n",
            self.server.port, self.database
        )
    }

    fn sink(&self) -> &str {
        "ch-e2e"
    }

    fn committed(&self) -> Option<u64> {
        let v = ch_query(
            self.server.port,
            &format!("SELECT max(epoch) FROM `{}`.`carts`", self.database),
        )
        .ok()?;
        Some(v.trim().parse().unwrap_or(0))
    }

    fn assert_holds(&self, r: &Reference) {
        assert_tables(r, &|table| self.rows(table));
    }

    fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn postgres_store_is_exactly_once_under_sigkill() {
    sigkill_scenario(&Pg::shared());
}

#[test]
fn redis_store_is_exactly_once_under_sigkill() {
    sigkill_scenario(&Redis::shared());
}

#[test]
fn clickhouse_store_is_exactly_once_under_sigkill() {
    sigkill_scenario(&ClickHouse::start());
}

#[test]
fn postgres_outage_of_30s_mid_stream_loses_nothing() {
    outage_scenario(&mut Pg::own());
}

#[test]
fn redis_outage_of_30s_mid_stream_loses_nothing() {
    outage_scenario(&mut Redis::own());
}

#[test]
fn clickhouse_outage_of_30s_mid_stream_loses_nothing() {
    outage_scenario(&mut ClickHouse::start());
}
