//! Exactly-once under SIGKILL: a replay killed at random points and resumed from its
//! checkpoint directory must leave exactly the records of an uninterrupted run — nothing
//! missing, nothing twice — whatever the shard counts before and after the crash.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The tests here time their kills against a measured run, so they run one at a time —
/// also under cargo-nextest, which runs every test in its own process: hence a file lock.
struct Serial(std::fs::File);

impl Drop for Serial {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn serial() -> Serial {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("cartpulse-crash-tests.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open lock file");
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", path.display());
    Serial(f)
}

struct Fixture {
    input: PathBuf,
    reference: BTreeMap<&'static str, Vec<String>>,
    /// Wall time of an uninterrupted run with checkpoints every 100 ms.
    run_time: Duration,
    /// Checkpoints such a run completes (the last one is the final, finished one).
    checkpoints: u64,
}

const INTERVAL: &str = "100ms";

/// Generated events (200 events/s, so the input spans more event time than the dedup
/// horizon of 10 min and abandon_after of 30 min: re-reading input would not be hidden by
/// deduplication, and carts are abandoned mid-stream), plus a malformed line every 5000
/// (dead letters are not deduplicated either).
fn write_input(dir: &Path, events: u64) -> PathBuf {
    // generated once per build directory and shared by every test process: the input is
    // deterministic, and a file kept in a static would never be deleted
    let input = dir.join(format!("events-{events}.jsonl"));
    if input.exists() {
        return input;
    }
    let raw = dir.join(format!("generated-{}.jsonl", std::process::id()));
    gen(events, 5, &raw, &["--rate", "200"]);
    let text = std::fs::read_to_string(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    let mut with_bad = String::with_capacity(text.len() + 10_000);
    for (i, l) in text.lines().enumerate() {
        if i % 5000 == 4999 {
            with_bad.push_str(&format!("{{\"bad line\": {i}\n"));
        }
        with_bad.push_str(l);
        with_bad.push('\n');
    }
    let tmp = dir.join(format!("events-{events}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, with_bad).unwrap();
    std::fs::rename(&tmp, &input).unwrap();
    input
}

/// Runs that complete fewer checkpoints leave too few places to crash in between.
const MIN_CHECKPOINTS: u64 = 4;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crash-fixture");
        std::fs::create_dir_all(&shared).unwrap();
        // scratch outputs are deleted when this function returns
        let dir = tempfile::tempdir_in(&shared).unwrap();
        // ~400k events; more if the engine is so fast that a run takes only a few
        // checkpoint intervals
        let mut events = 400_000;
        loop {
            let input = write_input(&shared, events);
            let out = dir.path().join(format!("reference-{events}"));
            replay(&input, &out, &["--shards", "2"]);
            let reference = sorted_streams(&out);
            assert!(reference["user_windows"].len() > 100_000);
            assert!(!reference["global_windows"].is_empty());
            assert!(!reference["abandoned_carts"].is_empty());
            assert_eq!(reference["dead_letter"].len() as u64, events / 5000);
            // time uninterrupted checkpointed runs (best of two), and check they agree too
            let mut best = Duration::MAX;
            let mut checkpoints = u64::MAX;
            for i in 0..2 {
                let out = dir.path().join(format!("timed-{events}-{i}"));
                let ck = dir.path().join(format!("timed-ck-{events}-{i}"));
                let t = Instant::now();
                replay(&input, &out, &ckpt_args(&ck, "2"));
                best = best.min(t.elapsed());
                assert_same_streams(
                    "checkpointed run vs reference",
                    &sorted_streams(&out),
                    &reference,
                );
                let m = manifest(&ck).expect("a finished run has a manifest");
                assert!(m.1, "a finished run's manifest says finished");
                checkpoints = checkpoints.min(m.0);
            }
            eprintln!(
                "{events} events: uninterrupted checkpointed run {best:?}, {checkpoints} checkpoints"
            );
            if checkpoints >= MIN_CHECKPOINTS || events >= 1_600_000 {
                return Fixture {
                    input,
                    reference,
                    run_time: best,
                    checkpoints,
                };
            }
            events *= 2;
        }
    })
}

fn ckpt_args<'a>(ck: &'a Path, shards: &'a str) -> Vec<&'a str> {
    vec![
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--checkpoint-interval",
        INTERVAL,
        "--shards",
        shards,
    ]
}

fn spawn(input: &Path, out: &Path, ck: &Path, shards: &str) -> Child {
    cmd()
        .args(replay_args(input, out, &ckpt_args(ck, shards)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replay")
}

/// (latest checkpoint, finished) from the manifest, if there is one.
fn manifest(ck: &Path) -> Option<(u64, bool)> {
    let b = std::fs::read(ck.join("manifest.json")).ok()?;
    let v: Value = serde_json::from_slice(&b).expect("manifest is json");
    Some((
        v["latest"].as_u64().unwrap(),
        v["finished"].as_bool().unwrap(),
    ))
}

/// When to send SIGKILL.
#[derive(Clone, Copy, Debug)]
enum At {
    /// This long after the start.
    Time(Duration),
    /// This long after the manifest first names checkpoint `k` or a later one.
    Checkpoint(u64, Duration),
    /// This long after the manifest first says the input is finished (the commit point of
    /// the last checkpoint; the sink's renames may still be under way).
    Finished(Duration),
}

#[derive(Debug)]
#[allow(dead_code)] // `at` and `after` are for the Debug output
struct Kill {
    at: At,
    after: Duration,
    /// The process was still running when the signal was sent.
    killed: bool,
    manifest: Option<(u64, bool)>,
}

impl Kill {
    /// Killed while running, after at least one checkpoint, before the last one.
    fn mid_run(&self) -> bool {
        self.killed && self.manifest.is_some_and(|(_, finished)| !finished)
    }
}

fn run_and_kill(input: &Path, out: &Path, ck: &Path, shards: &str, at: At) -> Kill {
    let start = Instant::now();
    let mut child = spawn(input, out, ck, shards);
    let mut deadline = match at {
        At::Time(d) => Some(start + d),
        At::Checkpoint(..) | At::Finished(_) => None,
    };
    let mut killed = false;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "replay failed before the kill: {st:?}");
            break;
        }
        let now = Instant::now();
        if deadline.is_none() {
            let m = manifest(ck);
            deadline = match at {
                At::Checkpoint(k, extra) if m.is_some_and(|(latest, _)| latest >= k) => {
                    Some(now + extra)
                }
                At::Finished(extra) if m.is_some_and(|(_, finished)| finished) => Some(now + extra),
                _ => None,
            };
        }
        if deadline.is_some_and(|d| now >= d) {
            child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on unix
            let st = child.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            // it may have exited on its own between try_wait and kill
            killed = st.signal() == Some(libc::SIGKILL);
            if !killed {
                assert!(st.success(), "replay failed: {st:?}");
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Kill {
        at,
        after: start.elapsed(),
        killed,
        manifest: manifest(ck),
    }
}

/// Just after a random checkpoint before the final one.
fn after_a_checkpoint(rng: &mut Rng, f: &Fixture) -> At {
    let k = 1 + rng.below(f.checkpoints.saturating_sub(1).max(1));
    At::Checkpoint(k, Duration::from_secs_f64(rng.range_f64(0.0, 0.1)))
}

/// The committed output equals the reference, and nothing uncommitted is left behind.
fn assert_complete(label: &str, out: &Path, f: &Fixture) {
    assert_same_streams(label, &sorted_streams(out), &f.reference);
    for s in STREAMS {
        for name in all_files(out, s) {
            assert!(
                name.starts_with("part-") && name.ends_with(".jsonl"),
                "{label}: stray file {s}/{name} after a completed run"
            );
        }
    }
}

#[test]
fn sigkill_and_resume_is_exactly_once() {
    let _g = serial();
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0xC0FFEE);
    let rt = f.run_time.as_secs_f64();
    let iterations = 8;
    let mut mid_run = 0;
    let mut kills = Vec::new();
    for i in 0..iterations {
        let out = dir.path().join(format!("out-{i}"));
        let ck = dir.path().join(format!("ck-{i}"));
        let shards = ["1", "2"][i % 2];
        // even iterations: spread over the run's wall time (some land before the first
        // checkpoint); odd ones: just after a randomly chosen checkpoint
        let at = if i % 2 == 0 {
            let frac = (i as f64 + rng.range_f64(0.0, 2.0)) / iterations as f64;
            At::Time(Duration::from_secs_f64(rt * (0.05 + 0.9 * frac)))
        } else {
            after_a_checkpoint(&mut rng, f)
        };
        let k = run_and_kill(&f.input, &out, &ck, shards, at);
        mid_run += usize::from(k.mid_run());
        let mut second = None;
        if k.killed && rng.below(2) == 0 {
            // crash the restarted run too, after one of its own checkpoints
            let next = k.manifest.map_or(1, |m| m.0 + 1) + rng.below(2);
            let at = At::Checkpoint(next, Duration::from_secs_f64(rng.range_f64(0.0, 0.1)));
            let k2 = run_and_kill(&f.input, &out, &ck, shards, at);
            mid_run += usize::from(k2.mid_run());
            second = Some(k2);
        }
        eprintln!("iteration {i} (shards {shards}): {k:?}, then {second:?}");
        replay(&f.input, &out, &ckpt_args(&ck, shards));
        assert_eq!(manifest(&ck).map(|m| m.1), Some(true), "finished run");
        assert_complete(&format!("iteration {i}"), &out, f);
        kills.push((k, second));
    }
    eprintln!("{mid_run} kills landed mid-run (after a checkpoint, before the end)");
    assert!(mid_run > 0, "no kill landed mid-run: {kills:?}");
    assert!(
        mid_run >= 3,
        "only {mid_run} kills landed mid-run: {kills:?}"
    );
}

/// Kills until one lands mid-run (after a checkpoint, before the end), then resumes with a
/// different shard count.
fn kill_mid_run_then_resume(from: &str, to: &str, seed: u64) {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    for attempt in 0..8 {
        let out = dir.path().join(format!("out-{attempt}"));
        let ck = dir.path().join(format!("ck-{attempt}"));
        let k = run_and_kill(&f.input, &out, &ck, from, after_a_checkpoint(&mut rng, f));
        eprintln!("shards {from} → {to}, attempt {attempt}: {k:?}");
        if !k.mid_run() {
            continue;
        }
        replay(&f.input, &out, &ckpt_args(&ck, to));
        assert_complete(
            &format!("killed with {from} shards, resumed with {to}"),
            &out,
            f,
        );
        return;
    }
    panic!("no kill landed mid-run in 8 attempts");
}

#[test]
fn resume_with_fewer_shards() {
    let _g = serial();
    kill_mid_run_then_resume("2", "1", 1);
}

#[test]
fn resume_with_more_shards() {
    let _g = serial();
    kill_mid_run_then_resume("1", "2", 2);
}

fn snapshot_tree(d: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(d).unwrap().to_string_lossy().to_string();
                m.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    m
}

#[test]
fn rerunning_a_finished_run_changes_nothing() {
    let _g = serial();
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ck = dir.path().join("ck");
    replay(&f.input, &out, &ckpt_args(&ck, "2"));
    assert_complete("first run", &out, f);
    let before_out = snapshot_tree(&out);
    let before_ck = snapshot_tree(&ck);
    for shards in ["2", "1"] {
        let o = replay(&f.input, &out, &ckpt_args(&ck, shards));
        assert!(o.status.success());
        assert!(
            snapshot_tree(&out) == before_out,
            "output changed by a rerun with {shards} shards"
        );
        assert!(
            snapshot_tree(&ck) == before_ck,
            "checkpoints changed by a rerun with {shards} shards"
        );
    }
    assert_complete("after reruns", &out, f);
}

/// Kills near the very end of a run — around the final flush, the last checkpoint and its
/// commit (renames) — followed by a rerun: the rerun rolls forward or redoes the tail.
#[test]
fn late_kills_roll_forward() {
    let _g = serial();
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(77);
    let mut killed = 0;
    let mut after_commit_point = 0;
    for i in 0..6 {
        let out = dir.path().join(format!("out-{i}"));
        let ck = dir.path().join(format!("ck-{i}"));
        let at = match i % 3 {
            0 => At::Time(f.run_time.mul_f64(rng.range_f64(0.85, 1.05))),
            // right after the last checkpoint before the final one
            1 => At::Checkpoint(
                f.checkpoints.saturating_sub(1).max(1),
                Duration::from_secs_f64(rng.range_f64(0.0, 0.15)),
            ),
            // between the final manifest and the end of the process
            _ => At::Finished(Duration::from_micros(rng.below(3_000))),
        };
        let k = run_and_kill(&f.input, &out, &ck, "2", at);
        killed += usize::from(k.killed);
        after_commit_point += usize::from(k.killed && k.manifest.is_some_and(|m| m.1));
        eprintln!("late kill {i}: {k:?}");
        replay(&f.input, &out, &ckpt_args(&ck, "2"));
        assert_complete(&format!("late kill {i}"), &out, f);
    }
    eprintln!(
        "{killed} of 6 late kills hit a running process, {after_commit_point} after the final commit point"
    );
    assert!(killed > 0, "no late kill hit a running process");
}
