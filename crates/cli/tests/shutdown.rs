//! Graceful shutdown: SIGTERM takes a final checkpoint of the running state, exits 0, and
//! a restart resumes from it instead of starting over.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn manifest(ck: &Path) -> Option<serde_json::Value> {
    let b = std::fs::read(ck.join("manifest.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Starts `run --config`, waits until it has processed events, sends SIGTERM, and returns
/// (exit status, stderr).
fn run_then_term(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cartpulse"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // let it work a little: the generator source runs as fast as the pipeline allows
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "exited before SIGTERM");
    // SAFETY: signalling our own child by pid
    let r = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(r, 0);
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st, err);
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no exit 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_checkpoints_and_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let out = dir.path().join("out");
    let config = dir.path().join("cartpulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
shards = 2
[pipeline.checkpoint]
dir = "{}"
interval = "1h"     # only the shutdown checkpoint
[source]
type = "generator"
events = 0          # unbounded
seed = 3
[[sinks]]
type = "jsonl"
dir = "{}"
"#,
            ck.display(),
            out.display()
        ),
    )
    .unwrap();

    let (st, err) = run_then_term(&config);
    assert!(st.success(), "exit {st:?}\n{err}");
    assert!(err.contains("final checkpoint"), "{err}");
    let m = manifest(&ck).expect("SIGTERM wrote a checkpoint");
    assert_eq!(m["finished"], false, "a stop is not the end of the input");
    let first = m["latest"].as_u64().unwrap();
    let chk = ck.join(format!("chk-{first:012}"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chk.join("meta.json")).unwrap()).unwrap();
    let lines = meta["position"]["lines"].as_u64().unwrap();
    assert!(lines > 1000, "only {lines} events before the stop");
    let committed: usize = std::fs::read_dir(out.join("user_windows"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".jsonl")
        })
        .count();
    assert!(committed > 0, "the final checkpoint committed the output");

    // a restart resumes from the stop's checkpoint, not from the beginning
    let (st, err) = run_then_term(&config);
    assert!(st.success(), "exit {st:?}\n{err}");
    assert!(err.contains("restoring state"), "{err}");
    let m = manifest(&ck).unwrap();
    let second = m["latest"].as_u64().unwrap();
    assert!(
        second > first,
        "checkpoint ids go on: {first} then {second}"
    );
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ck.join(format!("chk-{second:012}")).join("meta.json")).unwrap(),
    )
    .unwrap();
    assert!(meta["position"]["lines"].as_u64().unwrap() > lines);
}
