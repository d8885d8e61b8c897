//! Kafka consumer-group scale-out end to end, against a real Kafka-API broker (Tansu, started
//! here on a free loopback port; `scripts/services.d/kafka.sh` installs it).
//!
//! Generated events are produced into an 8-partition topic keyed by user (each user's
//! events in one partition, in file order), at a pace, while several `cartpulse run`
//! processes share the topic through one consumer group. Processes are SIGKILLed, started
//! again, added and stopped while the input flows. At the end every partition's task runs to
//! the end of its input (bounded mode), and the committed output of all processes together
//! must equal `cartpulse replay` of each partition's events: every per-user record, every
//! abandoned cart, every dead letter once, and the merged global windows equal.

mod common;
mod live;

use cartpulse_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use cartpulse_kafka::rdkafka::ClientConfig;
use common::{cmd, gen, lines, replay};
use live::{free_port, stop_all, wait_for, Proc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PARTITIONS: usize = 8;
const TOPIC: &str = "cart-events";

/// A server the test script installs under the target directory (`rel`), or a panic naming
/// the script that installs it.
fn installed(rel: &str, what: &str, script: &str) -> PathBuf {
    let target = common::bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let p = target.join(rel);
    assert!(
        p.exists(),
        "{what} is missing at {}: scripts/test.sh installs it (scripts/services.d/{script})",
        p.display()
    );
    p
}

fn tansu() -> PathBuf {
    installed("tansu/tansu", "the Kafka-API broker", "kafka.sh")
}

struct Broker {
    _proc: Proc,
    addr: String,
}

fn start_broker(dir: &Path) -> Broker {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut c = std::process::Command::new(tansu());
    c.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "memory://tansu/"]);
    let proc = Proc::spawn("tansu", c, &dir.join("tansu.log"));
    let addr = format!("127.0.0.1:{port}");
    wait_for(
        "broker port",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            std::net::TcpStream::connect(&addr)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    let o = std::process::Command::new(tansu())
        .args(["topic", "create", TOPIC, "--broker", &url])
        .args(["--partitions", &PARTITIONS.to_string()])
        .output()
        .expect("tansu topic create");
    assert!(o.status.success(), "topic create: {o:?}");
    Broker { _proc: proc, addr }
}

/// Partition of a user: the test's own hash, so the oracle files split the same way.
fn partition_of(user: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % PARTITIONS as u64) as usize
}

/// Splits the generated events by partition (malformed lines without a user go to the
/// partition of their line number), writing one oracle file per partition.
fn split(events: &Path, dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(events).unwrap();
    let mut parts = vec![Vec::new(); PARTITIONS];
    for (i, line) in text.lines().enumerate() {
        let p = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["user_id"].as_str().map(partition_of))
            .unwrap_or(i % PARTITIONS);
        parts[p].push(line.to_string());
    }
    for (p, l) in parts.iter().enumerate() {
        let mut body = l.join("\n");
        body.push('\n');
        std::fs::write(dir.join(format!("part-{p}.jsonl")), body).unwrap();
    }
    parts
}

/// Produces every partition's lines in order, spread over `over`.
fn produce(addr: String, parts: Vec<Vec<String>>, over: Duration) -> std::thread::JoinHandle<()> {
    produce_to(addr, parts, over, true)
}

/// `keyed`: line `i` of part `p` goes to partition `p`; otherwise round-robin over every
/// partition, as a producer that does not key by user would spread them.
fn produce_to(
    addr: String,
    parts: Vec<Vec<String>>,
    over: Duration,
    keyed: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let total: usize = parts.iter().map(Vec::len).sum();
        let rounds = 40usize;
        let start = Instant::now();
        let mut sent = 0usize;
        for r in 0..rounds {
            for (part, lines) in parts.iter().enumerate() {
                let a = lines.len() * r / rounds;
                let b = lines.len() * (r + 1) / rounds;
                for l in &lines[a..b] {
                    let key = format!("{part}");
                    let target = if keyed { part } else { sent % PARTITIONS };
                    let mut rec = BaseRecord::to(TOPIC)
                        .partition(target as i32)
                        .key(&key)
                        .payload(l.as_bytes());
                    loop {
                        match p.send(rec) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                rec = back;
                                p.poll(Duration::from_millis(10));
                            }
                        }
                    }
                    sent += 1;
                }
            }
            p.flush(Duration::from_secs(30)).expect("flush");
            let due = over.mul_f64((r + 1) as f64 / rounds as f64);
            if let Some(w) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(w);
            }
        }
        assert_eq!(sent, total);
    })
}

struct Setup {
    dir: tempfile::TempDir,
    broker: Broker,
    parts: Vec<Vec<String>>,
    config: PathBuf,
    /// The topic the tasks read: the input, or the internal re-keyed copy.
    task_topic: String,
}

fn setup(events: u64, seed: u64) -> Setup {
    setup_with(events, seed, &[], "")
}

/// `bad` lines are put in the middle of every partition; `sinks` is more [[sinks]] TOML.
fn setup_with(events: u64, seed: u64, bad: &[&str], sinks: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("CARTPULSE_KEEP_TEST_DIR").is_some() {
        eprintln!("test dir: {}", dir.path().display());
    }
    let broker = start_broker(dir.path());
    let ev = dir.path().join("events.jsonl");
    gen(events, seed, &ev, &[]);
    let mut parts = split(&ev, dir.path());
    if !bad.is_empty() {
        for (p, lines) in parts.iter_mut().enumerate() {
            let mid = lines.len() / 2;
            for (i, b) in bad.iter().enumerate() {
                lines.insert(mid + i, b.to_string());
            }
            let mut body = lines.join("\n");
            body.push('\n');
            std::fs::write(dir.path().join(format!("part-{p}.jsonl")), body).unwrap();
        }
    }
    let d = |n: &str| dir.path().join(n).display().to_string();
    let pipeline = "[pipeline]\nshards = 1\nparsers = 1\n\n[analytics]\nenabled = false\n";
    let config = dir.path().join("group.toml");
    std::fs::write(
        &config,
        format!(
            "{pipeline}\n[pipeline.checkpoint]\ndir = {:?}\ninterval = \"300ms\"\n\n\
             [source]\ntype = \"kafka\"\nbrokers = {:?}\ntopics = [{TOPIC:?}]\ngroup_id = \"cartpulse-test\"\n\
             end_after_idle = \"4s\"\nsession_timeout = \"6s\"\n\n\
             [[sinks]]\ntype = \"jsonl\"\ndir = {:?}\n{}",
            d("chk"),
            broker.addr,
            d("out"),
            sinks.replace("BROKERS", &broker.addr),
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("oracle.toml"), pipeline).unwrap();
    Setup {
        dir,
        broker,
        parts,
        config,
        task_topic: TOPIC.to_string(),
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::env::var_os("CARTPULSE_KEEP_TEST_DIR").is_some() {
            let d = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = d.keep();
        }
    }
}

impl Setup {
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn member(&self, n: u32) -> Proc {
        let mut c = cmd();
        c.env("RUST_LOG", "info,librdkafka=warn")
            .args(["--log-format", "json", "run"])
            .arg("--config")
            .arg(&self.config);
        Proc::spawn(
            &format!("member {n}"),
            c,
            &self.path(&format!("member-{n}-{}.log", now_ms())),
        )
    }

    fn finished(&self) -> Result<(), String> {
        let mut not: Vec<usize> = Vec::new();
        for p in 0..PARTITIONS {
            let m = self.path(&format!("chk/{}-{p}/manifest.json", self.task_topic));
            let done = std::fs::read(&m)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["finished"] == true);
            if !done {
                not.push(p);
            }
        }
        if not.is_empty() {
            Ok(())
        } else {
            Err(format!("partitions not finished: {not:?}"))
        }
    }

    fn wait_finished(&self, procs: &mut [Proc]) {
        wait_for(
            "every partition to finish",
            Duration::from_secs(150),
            Duration::from_millis(200),
            || {
                for p in procs.iter_mut() {
                    if let Some(s) = p.exited() {
                        if !s.success() {
                            return Err(format!("{} exited with {s}:\n{}", p.name, p.log_tail(30)))
                                .map_err(|e| panic!("{e}"));
                        }
                    }
                }
                self.finished()
            },
        );
        eprintln!("every partition finished");
    }

    /// The oracle: each partition's events replayed alone from a file.
    fn check_against_replay(&self) {
        let oracle = replay_partitions(self);
        let out = self.path("out");
        for stream in ["user_windows", "abandoned_carts", "late_events"] {
            let got = all_lines(&out, stream);
            let want = all_lines(&oracle, stream);
            assert!(
                !want.is_empty() || stream == "late_events",
                "{stream}: oracle is empty"
            );
            common::assert_same_lines(&format!("group vs replay [{stream}]"), &got, &want);
        }
        // dead letters name their source and position (offset vs byte), so compare what
        // was rejected and why
        let dl = |d: &Path| {
            let mut v: Vec<String> = all_lines(d, "dead_letter")
                .iter()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    format!("{} {}", v["reason"], v["raw"])
                })
                .collect();
            v.sort();
            v
        };
        common::assert_same_lines("group vs replay [dead_letter]", &dl(&out), &dl(&oracle));
        let merged = |d: &Path, name: &str| {
            let f = self.path(name);
            let o = cmd()
                .args(["merge", "--dir"])
                .arg(d)
                .arg("--out")
                .arg(&f)
                .output()
                .unwrap();
            assert!(o.status.success(), "merge: {o:?}");
            std::fs::read_to_string(f).unwrap()
        };
        let g = merged(&out, "merged-group.jsonl");
        let w = merged(&oracle, "merged-oracle.jsonl");
        assert!(!w.is_empty());
        assert_eq!(g, w, "merged global windows differ");
        // every event of the input is counted once in the merged global windows
        let events: i64 = w
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["events"]
                    .as_i64()
                    .unwrap()
            })
            .sum();
        assert!(events > 0);
    }
}

/// Waits until `m` owns a task, lets it work for `after`, then SIGKILLs it (no final
/// checkpoint, no goodbye to the group); returns the tasks it had.
fn kill_once_working(m: &mut Proc, after: Duration) -> Vec<String> {
    wait_for(
        &format!("{} to own a task", m.name),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            if tasks_owned(&m.log()).is_empty() {
                Err(m.log_tail(5))
            } else {
                Ok(())
            }
        },
    );
    std::thread::sleep(after);
    // SAFETY: kill(2) on the process this test started.
    unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
    let _ = m.stop(Duration::from_secs(1));
    tasks_owned(&m.log()).into_keys().collect()
}

/// The oracle: each partition's file `part-{p}.jsonl` replayed alone into
/// `oracle/{task_topic}-{p}`.
fn replay_partitions(s: &Setup) -> PathBuf {
    let oracle = s.path("oracle");
    for p in 0..PARTITIONS {
        replay(
            &s.path(&format!("part-{p}.jsonl")),
            &oracle.join(format!("{}-{p}", s.task_topic)),
            &["--config", s.path("oracle.toml").to_str().unwrap()],
        );
    }
    oracle
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Sorted committed lines of `stream` over every task folder under `root`.
fn all_lines(root: &Path, stream: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut tasks: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    tasks.sort();
    for t in tasks {
        v.extend(lines(&t, stream));
    }
    v.sort();
    v
}

/// Every `task started` of a member's (JSON) log: the task and the offset it was assigned at
/// (`None`: no checkpoint, read from the group's start position).
fn tasks_started(log: &str) -> Vec<(String, Option<i64>)> {
    let mut v = Vec::new();
    for l in log.lines() {
        let Ok(j) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let f = &j["fields"];
        if f["message"] != "task started" {
            continue;
        }
        let task = f["task"].as_str().unwrap_or_default().to_string();
        let offset = f["offset"]
            .as_str()
            .and_then(|o| o.strip_prefix("Some("))
            .and_then(|o| o.strip_suffix(')'))
            .and_then(|o| o.parse().ok());
        v.push((task, offset));
    }
    v
}

fn tasks_owned(log: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (t, _) in tasks_started(log) {
        *m.entry(t).or_default() += 1;
    }
    m
}

#[test]
fn three_members_one_killed_and_restarted_equal_replay() {
    let s = setup(60_000, 11);
    let producer = produce(
        s.broker.addr.clone(),
        s.parts.clone(),
        Duration::from_secs(12),
    );
    let a = s.member(1);
    let mut b = s.member(2);
    let c = s.member(3);
    // mid-stream: B dies without a word; its partitions move to A and C after the session
    // timeout, restored from B's last checkpoints
    let killed = kill_once_working(&mut b, Duration::from_secs(2));
    let killed_at = Instant::now();
    let (a_before, c_before) = (tasks_started(&a.log()).len(), tasks_started(&c.log()).len());
    // the group notices after the session timeout and hands the partitions to A and C
    wait_for(
        "the killed member's partitions to be taken over",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let taken: Vec<String> = tasks_started(&a.log())[a_before..]
                .iter()
                .chain(&tasks_started(&c.log())[c_before..])
                .map(|(t, _)| t.clone())
                .collect();
            if killed.iter().all(|k| taken.contains(k)) {
                Ok(())
            } else {
                Err(format!("taken over so far: {taken:?} of {killed:?}"))
            }
        },
    );
    eprintln!(
        "SIGKILL to every partition of the killed member running again elsewhere: {:.2} s (session timeout 6 s)",
        killed_at.elapsed().as_secs_f64()
    );
    let b2 = s.member(4);
    producer.join().expect("producer");
    let mut procs = vec![a, b2, c];
    s.wait_finished(&mut procs);
    stop_all(&mut procs, Duration::from_secs(30));
    // The partitions of the killed member were taken over from its checkpoints, at the
    // offset they recorded, not re-read from the start of the partition.
    let after: Vec<(String, Option<i64>)> =
        procs.iter().flat_map(|p| tasks_started(&p.log())).collect();
    for t in &killed {
        let resumed: Vec<Option<i64>> = after
            .iter()
            .filter(|(n, _)| n == t)
            .map(|(_, o)| *o)
            .collect();
        assert!(
            resumed.iter().any(|o| o.is_some_and(|o| o > 0)),
            "{t}, owned by the killed member, was never resumed from a checkpoint offset: {resumed:?}"
        );
    }
    s.check_against_replay();
}

#[test]
fn scaling_from_one_to_three_and_back_equals_replay() {
    let s = setup(50_000, 12);
    let producer = produce(
        s.broker.addr.clone(),
        s.parts.clone(),
        Duration::from_secs(14),
    );
    let mut a = s.member(1);
    std::thread::sleep(Duration::from_secs(4));
    let mut b = s.member(2);
    let mut c = s.member(3);
    std::thread::sleep(Duration::from_secs(6));
    // graceful leave: SIGTERM, final checkpoint of every task, then the group rebalances
    for p in [&mut b, &mut c] {
        let st = p.stop(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "{} exit {st:?}\n{}",
            p.name,
            p.log_tail(30)
        );
        assert!(
            !tasks_owned(&p.log()).is_empty(),
            "{} never owned a task",
            p.name
        );
    }
    producer.join().expect("producer");
    s.wait_finished(std::slice::from_mut(&mut a));
    let st = a.stop(Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "member 1 exit {st:?}\n{}",
        a.log_tail(30)
    );
    s.check_against_replay();
}

/// Every message of `topic` (all partitions, from the start, committed only), until the
/// topic has been silent for eight seconds. Partitions are assigned, not subscribed: no
/// group join, and every partition read from its first offset.
fn read_topic(addr: &str, topic: &str) -> Vec<(String, String)> {
    use cartpulse_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use cartpulse_kafka::rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use cartpulse_kafka::rdkafka::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("reader-{topic}-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    assert!(tpl.count() > 0, "topic {topic} has no partitions");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last = Instant::now();
    // a loaded broker can pause between fetches; only a long silence means the end
    while last.elapsed() < Duration::from_secs(8) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
            let val = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            out.push((key, val));
            last = Instant::now();
        }
    }
    out
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic_and_the_partitions_keep_flowing() {
    let bad = [
        "not json at all",
        r#"{"event_id":"bad-1","ts":"yesterday","user_id":"u1","action":"add","sku":"p1","qty":1,"price":1.0}"#,
        r#"{"event_id":"bad-2","ts":1764000000000,"user_id":"u1","action":"fly","sku":"p1"}"#,
        r#"{"event_id":"bad-3","ts":1764000000000,"user_id":"u1","action":"add","sku":"p1","qty":"two","price":1.0}"#,
        r#"{"event_id":"bad-4","ts":1764000000000,"action":"add","sku":"p1","qty":1,"price":1.0}"#,
        r#"[1,2,3]"#,
    ];
    let sinks = "\n[[sinks]]\ntype = \"kafka\"\nbrokers = \"BROKERS\"\ntopic_prefix = \"out.\"\ntransactional = true\n";
    let port = free_port();
    let sinks = format!("{sinks}\n[http]\nenabled = true\naddr = \"127.0.0.1:{port}\"\n");
    let s = setup_with(20_000, 13, &bad, &sinks);
    let producer = produce(
        s.broker.addr.clone(),
        s.parts.clone(),
        Duration::from_secs(4),
    );
    let mut a = s.member(1);
    producer.join().expect("producer");
    // every metric docs/metrics-kafka.md names is on the member's /metrics
    let doc = std::fs::read_to_string(live::repo_root().join("docs/metrics-kafka.md")).unwrap();
    let names: Vec<&str> = doc
        .split('`')
        .filter(|w| w.starts_with("cartpulse_kafka_"))
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(
        "the kafka metrics on /metrics",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let text = live::get(addr, "/metrics", &[])
                .map_err(|e| e.to_string())?
                .text();
            match names.iter().find(|n| !text.contains(*n)) {
                None => Ok(()),
                Some(n) => Err(format!("{n} missing")),
            }
        },
    );
    s.wait_finished(std::slice::from_mut(&mut a));
    let st = a.stop(Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "member exit {st:?}\n{}",
        a.log_tail(30)
    );
    // the jsonl output equals replay, bad lines included (as dead letters)
    s.check_against_replay();

    // every bad message of every partition is in the dead-letter topic once, with its reason
    let dl = read_topic(&s.broker.addr, "out.dead_letter");
    assert_eq!(dl.len(), bad.len() * PARTITIONS, "dead letters: {dl:#?}");
    let mut by_raw: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (_, v) in &dl {
        let j: serde_json::Value = serde_json::from_str(v).expect("dead letter is JSON");
        let reason = j["reason"].as_str().expect("reason").to_string();
        assert!(!reason.is_empty());
        assert!(
            j["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("kafka:")),
            "{v}"
        );
        let e = by_raw
            .entry(j["raw"].to_string())
            .or_insert((0, reason.clone()));
        e.0 += 1;
        assert_eq!(e.1, reason, "one payload, two reasons");
    }
    assert_eq!(by_raw.len(), bad.len());
    assert!(by_raw.values().all(|(n, _)| *n == PARTITIONS));
    let reasons: std::collections::BTreeSet<&str> =
        by_raw.values().map(|(_, r)| r.as_str()).collect();
    for r in [
        "not_json",
        "invalid_ts",
        "unknown_action",
        "wrong_type",
        "missing_field",
        "not_object",
    ] {
        assert!(reasons.contains(r), "no {r} among {reasons:?}");
    }

    // the result topic holds exactly the replay's user windows, keyed window + user
    let want = all_lines(&s.path("oracle"), "user_windows");
    let got_topic = read_topic(&s.broker.addr, "out.user_windows");
    let mut got: Vec<String> = got_topic.iter().map(|(_, v)| v.clone()).collect();
    got.sort();
    common::assert_same_lines("user_windows topic vs replay", &got, &want);
    let keys: std::collections::BTreeSet<&str> =
        got_topic.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), got_topic.len(), "keys are unique per result");
}

/// Every partition of `topic` as it is (committed records, in offset order) into
/// `dir/part-{p}.jsonl`.
fn dump_partitions(addr: &str, topic: &str, dir: &Path) -> usize {
    use cartpulse_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use cartpulse_kafka::rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use cartpulse_kafka::rdkafka::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("dump-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut parts = vec![String::new(); PARTITIONS];
    let mut n = 0;
    let mut last = Instant::now();
    // a loaded broker can pause between fetches; only a long silence means the end
    while last.elapsed() < Duration::from_secs(8) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            parts[m.partition() as usize]
                .push_str(&String::from_utf8_lossy(m.payload().unwrap_or_default()));
            parts[m.partition() as usize].push('\n');
            n += 1;
            last = Instant::now();
        }
    }
    for (p, body) in parts.iter().enumerate() {
        std::fs::write(dir.join(format!("part-{p}.jsonl")), body).unwrap();
    }
    n
}

#[test]
fn unkeyed_input_is_rekeyed_by_user_through_an_internal_topic() {
    let mut s = setup(30_000, 14);
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        // The killed member's copy stalls its input partitions until the broker aborts its
        // open transaction (transaction.timeout.ms, 10 s) and the group reassigns them: the
        // tasks must not take that silence for the end of their input.
        text.replace(
            "group_id = \"cartpulse-test\"\n",
            "group_id = \"cartpulse-test\"\nkeyed_by_user = false\n",
        )
        .replace("end_after_idle = \"4s\"", "end_after_idle = \"25s\""),
    )
    .unwrap();
    s.task_topic = "cartpulse-test.repartition".into();
    let producer = produce_to(
        s.broker.addr.clone(),
        s.parts.clone(),
        Duration::from_secs(8),
        false,
    );
    let a = s.member(1);
    let mut b = s.member(2);
    kill_once_working(&mut b, Duration::from_secs(1));
    let b2 = s.member(3);
    producer.join().expect("producer");
    let mut procs = vec![a, b2];
    s.wait_finished(&mut procs);
    stop_all(&mut procs, Duration::from_secs(30));
    // The oracle is the internal topic as the tasks read it: each of its partitions replayed
    // alone must give exactly the group's output.
    let copied = dump_partitions(&s.broker.addr, &s.task_topic, s.dir.path());
    let input: usize = s.parts.iter().map(Vec::len).sum();
    assert!(
        copied >= input,
        "the internal topic holds {copied} of {input} input messages"
    );
    // every user's events are in one partition of the internal topic
    let mut home: BTreeMap<String, usize> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let body = std::fs::read_to_string(s.path(&format!("part-{p}.jsonl"))).unwrap();
        for l in body.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let u = v["user_id"].as_str().unwrap().to_string();
            let e = home.entry(u.clone()).or_insert(p);
            assert_eq!(*e, p, "user {u} is in partitions {e} and {p}");
        }
    }
    // every input event is in it, once or (after an aborted copy) more
    let ids = |lines: &mut dyn Iterator<Item = String>| -> std::collections::BTreeSet<String> {
        lines
            .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap()["event_id"].to_string())
            .collect()
    };
    let want = ids(&mut s.parts.iter().flatten().cloned());
    let got = ids(&mut (0..PARTITIONS).flat_map(|p| {
        std::fs::read_to_string(s.path(&format!("part-{p}.jsonl")))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    }));
    assert_eq!(
        got, want,
        "event ids in the internal topic differ from the input's"
    );
    s.check_against_replay();
}

fn moto_server() -> PathBuf {
    installed(
        "moto-venv/bin/moto_server",
        "the S3-compatible server",
        "s3.sh",
    )
}

/// Members on "different machines": each has its own local checkpoint directory and shares
/// checkpoints only through an S3 bucket (moto's S3 server). One is SIGKILLed; the partitions
/// it had restart elsewhere from the bucket, not from its directory, and the results topic
/// (transactional Kafka sink, whose staged epochs travel with the checkpoints) holds exactly
/// the replay's records.
#[test]
fn members_without_a_shared_directory_share_checkpoints_through_s3() {
    let s = setup(30_000, 15);
    let port = free_port();
    let mut c = std::process::Command::new(moto_server());
    c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let _s3 = Proc::spawn("moto", c, &s.path("moto.log"));
    let s3: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(
        "the S3 server",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            live::request(s3, "PUT", "/cartpulse-chk", &[], &[])
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.status == 200 {
                        Ok(())
                    } else {
                        Err(r.text())
                    }
                })
        },
    );
    // one config per member: its own checkpoint working copy and jsonl folder
    let base = std::fs::read_to_string(&s.config).unwrap();
    let member_config = |n: u32| -> PathBuf {
        let text = base
            .replace(
                &format!("dir = {:?}\ninterval", s.path("chk").display().to_string()),
                &format!("dir = {:?}\ninterval", s.path(&format!("chk-{n}")).display().to_string()),
            )
            .replace(
                &format!("dir = {:?}\n", s.path("out").display().to_string()),
                &format!("dir = {:?}\n", s.path(&format!("out-{n}")).display().to_string()),
            )
            .replace(
                "session_timeout = \"6s\"\n",
                &format!(
                    "session_timeout = \"6s\"\ncheckpoint_store = \"s3://cartpulse-chk/group\"\n\
                     [source.checkpoint_store_options]\naws_endpoint = \"http://{s3}\"\naws_allow_http = \"true\"\n\
                     aws_region = \"us-east-1\"\naws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\n"
                ),
            )
            + &format!(
                "\n[[sinks]]\ntype = \"kafka\"\nbrokers = {:?}\ntopic_prefix = \"s3.\"\ntransactional = true\n",
                s.broker.addr
            );
        assert!(
            text.contains(&format!("chk-{n}")) && text.contains(&format!("out-{n}")),
            "{text}"
        );
        let p = s.path(&format!("member-{n}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let start = |n: u32| {
        let mut c = cmd();
        c.env("RUST_LOG", "info,librdkafka=warn")
            .args(["--log-format", "json", "run", "--config"])
            .arg(member_config(n));
        Proc::spawn(
            &format!("member {n}"),
            c,
            &s.path(&format!("member-{n}.log")),
        )
    };
    let producer = produce(
        s.broker.addr.clone(),
        s.parts.clone(),
        Duration::from_secs(10),
    );
    let a = start(1);
    let mut b = start(2);
    let killed = kill_once_working(&mut b, Duration::from_secs(3));
    let c3 = start(3);
    producer.join().expect("producer");
    let mut procs = [a, c3];
    // a partition is finished when some member's working copy says so
    wait_for(
        "every partition to finish",
        Duration::from_secs(150),
        Duration::from_millis(200),
        || {
            for p in procs.iter_mut() {
                if let Some(st) = p.exited() {
                    assert!(
                        st.success(),
                        "{} exited with {st}:\n{}",
                        p.name,
                        p.log_tail(30)
                    );
                }
            }
            let not: Vec<usize> = (0..PARTITIONS)
                .filter(|p| {
                    ![1, 3].iter().any(|n| {
                        std::fs::read(s.path(&format!("chk-{n}/{TOPIC}-{p}/manifest.json")))
                            .ok()
                            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                            .is_some_and(|v| v["finished"] == true)
                    })
                })
                .collect();
            if not.is_empty() {
                Ok(())
            } else {
                Err(format!("partitions not finished: {not:?}"))
            }
        },
    );
    stop_all(&mut procs, Duration::from_secs(30));
    // the killed member's partitions resumed from the bucket at a checkpoint offset, in
    // processes whose own directories never held them before
    let after: Vec<(String, Option<i64>)> =
        procs.iter().flat_map(|p| tasks_started(&p.log())).collect();
    for t in &killed {
        assert!(
            after
                .iter()
                .any(|(n, o)| n == t && o.is_some_and(|o| o > 0)),
            "{t} was never resumed from a shared checkpoint: {after:?}"
        );
    }
    // the oracle: each partition replayed alone
    let oracle = replay_partitions(&s);
    for stream in ["user_windows", "abandoned_carts"] {
        let want = all_lines(&oracle, stream);
        assert!(!want.is_empty(), "{stream}: oracle is empty");
        let got_topic = read_topic(&s.broker.addr, &format!("s3.{stream}"));
        let mut by_key: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in &got_topic {
            if let Some(old) = by_key.insert(k, v) {
                // Tansu shows an aborted transaction's records to read_committed readers (a
                // real Kafka does not): a copy may appear, but never a different value
                assert_eq!(old, v, "{stream}: key {k} has two values");
            }
        }
        let mut got: Vec<String> = by_key.values().map(|v| v.to_string()).collect();
        got.sort();
        common::assert_same_lines(&format!("{stream} topic vs replay"), &got, &want);
    }
}

/// Avro in the Confluent wire format on the topic, writer schemas from a directory: the group
/// gives the replay's results of the same events as JSON, and undecodable frames (bad magic
/// byte, unknown schema id, a truncated datum) are dead letters with their reasons.
#[test]
fn confluent_avro_payloads_equal_the_json_replay() {
    let s = setup(15_000, 16);
    let schemas = s.path("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(
        schemas.join("7.avsc"),
        cartpulse_avro::CART_EVENT_WRITER_SCHEMA,
    )
    .unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "session_timeout = \"6s\"\n",
        &format!(
            "session_timeout = \"6s\"\nformat = \"avro\"\n[source.avro]\nwire = \"confluent\"\nschema_dir = {:?}\n",
            schemas.display().to_string()
        ),
    );
    std::fs::write(&s.config, text).unwrap();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.broker.addr)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let opts = cartpulse_model::DecodeOptions::default();
    let bad: [&[u8]; 3] = [
        b"{\"json\":true}",
        &[0, 0, 0, 0, 99, 2, 4],
        &[0, 0, 0, 0, 7, 0x80],
    ];
    for (part, lines) in s.parts.iter().enumerate() {
        let mut frames: Vec<Vec<u8>> = lines
            .iter()
            .map(|l| {
                let e = cartpulse_model::decode_json(l.as_bytes(), &opts)
                    .expect("generated events decode");
                cartpulse_avro::encode::confluent_frame(7, &cartpulse_avro::encode::event_datum(&e))
            })
            .collect();
        let mid = frames.len() / 2;
        for (i, b) in bad.iter().enumerate() {
            frames.insert(mid + i, b.to_vec());
        }
        for f in &frames {
            let mut rec = BaseRecord::<[u8], [u8]>::to(TOPIC)
                .partition(part as i32)
                .payload(f);
            while let Err((_, r)) = p.send(rec) {
                rec = r;
                p.poll(Duration::from_millis(10));
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let mut a = s.member(1);
    s.wait_finished(std::slice::from_mut(&mut a));
    let st = a.stop(Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "member exit {st:?}\n{}",
        a.log_tail(30)
    );
    let oracle = replay_partitions(&s);
    for stream in ["user_windows", "abandoned_carts"] {
        let want = all_lines(&oracle, stream);
        assert!(!want.is_empty(), "{stream}: oracle is empty");
        common::assert_same_lines(
            &format!("avro group vs json replay [{stream}]"),
            &all_lines(&s.path("out"), stream),
            &want,
        );
    }
    let mut reasons: Vec<String> = all_lines(&s.path("out"), "dead_letter")
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    reasons.sort();
    let mut want: Vec<String> = ["avro_bad_magic", "avro_unknown_schema", "avro_malformed"]
        .iter()
        .flat_map(|r| std::iter::repeat_n(r.to_string(), PARTITIONS))
        .collect();
    want.sort();
    assert_eq!(reasons, want);
}
