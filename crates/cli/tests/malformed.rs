//! Malformed input: every bad line becomes exactly one dead letter with the right reason,
//! every good line is counted, and the run still exits 0.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

const T: i64 = 1_764_000_000_000;
const MIB: usize = 1 << 20;

fn good(i: usize) -> String {
    format!(
        r#"{{"event_id":"g{i}","ts":{},"user_id":"u{}","session_id":"s1","action":"add","sku":"p{}","qty":1,"price":2.5}}"#,
        T + i as i64 * 137,
        i % 7,
        i % 3
    )
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                s.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A well-formed event padded (with an unknown field) to exactly `len` bytes.
fn padded_good(id: &str, ts: i64, len: usize) -> String {
    let head = format!(
        r#"{{"event_id":"{id}","ts":{ts},"user_id":"upad","action":"view","sku":"p1","pad":""#
    );
    let pad = len - head.len() - 2;
    let s = format!("{head}{}\"}}", "x".repeat(pad));
    assert_eq!(s.len(), len);
    s
}

enum Kind {
    Good,
    /// (reason, expected original_len for too_long)
    Bad(&'static str),
    /// Ignored silently (blank).
    Blank,
}

struct Built {
    bytes: Vec<u8>,
    /// line start offset → (kind, line bytes without terminator)
    lines: Vec<(usize, Kind, Vec<u8>)>,
}

fn build() -> Built {
    let t = |i: i64| T + 50_000 + i;
    let mut items: Vec<(Kind, Vec<u8>, &'static [u8])> = Vec::new();
    let mut gi = 0;
    let mut next_good = |items: &mut Vec<(Kind, Vec<u8>, &'static [u8])>, term: &'static [u8]| {
        items.push((Kind::Good, good(gi).into_bytes(), term));
        gi += 1;
    };
    for _ in 0..5 {
        next_good(&mut items, b"\n");
    }
    let bad: Vec<(&'static str, Vec<u8>)> = vec![
        ("not_json", b"this is not json".to_vec()),
        (
            "not_json",
            format!(r#"{{"event_id":"x2","ts":{},"user_id":"u1","act"#, t(2)).into_bytes(),
        ),
        ("not_object", br#"[{"event_id":"x3","ts":1}]"#.to_vec()),
        ("not_object", b"42".to_vec()),
        ("not_object", br#""just a string""#.to_vec()),
        ("not_object", b"null".to_vec()),
        (
            "wrong_type",
            br#"{"event_id":"x6","ts":true,"user_id":"u1","action":"view","sku":"p1"}"#.to_vec(),
        ),
        (
            "wrong_type",
            format!(r#"{{"event_id":"x7","ts":{},"user_id":{{}},"action":"view","sku":"p1"}}"#, t(7))
                .into_bytes(),
        ),
        (
            "missing_field",
            format!(r#"{{"event_id":"x8","ts":{},"action":"view","sku":"p1"}}"#, t(8)).into_bytes(),
        ),
        (
            "missing_field",
            format!(r#"{{"event_id":"x9","ts":{},"user_id":"u1","action":"add","qty":1,"price":1}}"#, t(9))
                .into_bytes(),
        ),
        (
            "missing_field",
            format!(r#"{{"event_id":"x10","ts":{},"user_id":"u1","action":"add","sku":"p1"}}"#, t(10))
                .into_bytes(),
        ),
        ("missing_field", b"{}".to_vec()),
        (
            "unknown_action",
            format!(r#"{{"event_id":"x11","ts":{},"user_id":"u1","action":"buy","sku":"p1"}}"#, t(11))
                .into_bytes(),
        ),
        (
            "negative_qty",
            format!(
                r#"{{"event_id":"x12","ts":{},"user_id":"u1","action":"add","sku":"p1","qty":-2,"price":1}}"#,
                t(12)
            )
            .into_bytes(),
        ),
        (
            "invalid_utf8",
            [
                format!(r#"{{"event_id":"x13","ts":{},"user_id":"u"#, t(13)).as_bytes(),
                &[0xff, 0xfe][..],
                br#"","action":"view","sku":"p1"}"#,
            ]
            .concat(),
        ),
        (
            "duplicate_field",
            format!(r#"{{"event_id":"x14","ts":{},"ts":{},"user_id":"u1","action":"view","sku":"p1"}}"#, t(14), t(14))
                .into_bytes(),
        ),
        (
            "invalid_ts",
            br#"{"event_id":"x15","ts":"yesterday","user_id":"u1","action":"view","sku":"p1"}"#.to_vec(),
        ),
        (
            "invalid_qty",
            format!(
                r#"{{"event_id":"x16","ts":{},"user_id":"u1","action":"add","sku":"p1","qty":1.5,"price":1}}"#,
                t(16)
            )
            .into_bytes(),
        ),
        (
            "invalid_price",
            format!(
                r#"{{"event_id":"x17","ts":{},"user_id":"u1","action":"add","sku":"p1","qty":1,"price":-3}}"#,
                t(17)
            )
            .into_bytes(),
        ),
        (
            "invalid_price",
            format!(
                r#"{{"event_id":"x18","ts":{},"user_id":"u1","action":"add","sku":"p1","qty":1,"price":"abc"}}"#,
                t(18)
            )
            .into_bytes(),
        ),
        (
            "not_json",
            format!(
                r#"{{"event_id":"x19","ts":{},"user_id":"u1","action":"view","sku":"p1","deep":{}1{}}}"#,
                t(19),
                "[".repeat(70),
                "]".repeat(70)
            )
            .into_bytes(),
        ),
        (
            "not_json",
            format!(r#"{{"event_id":"x20","ts":{},"user_id":"u1","action":"view","sku":"p1"}} trailing"#, t(20))
                .into_bytes(),
        ),
        (
            "not_json",
            [
                format!(r#"{{"event_id":"x21","ts":{},"user_id":"u"#, t(21)).as_bytes(),
                &[0u8][..],
                br#"","action":"view","sku":"p1"}"#,
            ]
            .concat(),
        ),
    ];
    for (reason, line) in bad {
        items.push((Kind::Bad(reason), line, b"\n"));
        next_good(&mut items, b"\n");
    }
    // oversize: just over the limit (decoder or source path, depending on chunking), and a
    // 3 MiB line the file source must skip without buffering it whole
    items.push((
        Kind::Bad("too_long"),
        padded_good("big1", t(30), MIB + 1).into_bytes(),
        b"\n",
    ));
    next_good(&mut items, b"\n");
    items.push((
        Kind::Bad("too_long"),
        padded_good("big3", t(31), 3 * MIB).into_bytes(),
        b"\n",
    ));
    next_good(&mut items, b"\n");
    // exactly at the limit: accepted
    items.push((Kind::Good, padded_good("limit", T, MIB).into_bytes(), b"\n"));
    // blank and whitespace-only lines are skipped silently
    items.push((Kind::Blank, Vec::new(), b"\n"));
    items.push((Kind::Blank, b"   \t ".to_vec(), b"\n"));
    items.push((Kind::Blank, Vec::new(), b"\r\n"));
    // CRLF endings on good and bad lines
    for _ in 0..4 {
        next_good(&mut items, b"\r\n");
    }
    items.push((Kind::Bad("not_json"), b"crlf garbage".to_vec(), b"\r\n"));
    // an exact duplicate of a good line: dropped, not a dead letter
    items.push((Kind::Blank, good(2).into_bytes(), b"\n"));
    for _ in 0..3 {
        next_good(&mut items, b"\n");
    }
    // last line without a newline
    next_good(&mut items, b"");

    let mut bytes = Vec::new();
    let mut lines = Vec::new();
    for (kind, line, term) in items {
        lines.push((bytes.len(), kind, line.clone()));
        bytes.extend_from_slice(&line);
        bytes.extend_from_slice(term);
    }
    Built { bytes, lines }
}

fn check(shards: &str) -> BTreeMap<&'static str, Vec<String>> {
    let b = build();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.jsonl");
    std::fs::write(&input, &b.bytes).unwrap();
    let out = dir.path().join("out");
    replay(&input, &out, &["--shards", shards]);
    let streams: BTreeMap<&'static str, Vec<String>> =
        STREAMS.iter().map(|s| (*s, lines(&out, s))).collect();
    let source = format!("file:{}", input.display());

    let mut dead: BTreeMap<usize, Value> = BTreeMap::new();
    for l in &streams["dead_letter"] {
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("dead letter is not json ({e}): {l:.300}"));
        let pos: usize = v["position"]
            .as_str()
            .expect("position is a string")
            .parse()
            .expect("position is a byte offset");
        assert!(
            dead.insert(pos, v).is_none(),
            "two dead letters for the line at byte {pos}"
        );
    }
    let mut n_bad = 0;
    let mut n_good = 0;
    for (off, kind, line) in &b.lines {
        match kind {
            Kind::Good => {
                n_good += 1;
                assert!(
                    !dead.contains_key(off),
                    "good line at byte {off} dead-lettered: {:?}",
                    dead[off]
                );
            }
            Kind::Blank => assert!(
                !dead.contains_key(off),
                "ignored line at byte {off} dead-lettered: {:?}",
                dead[off]
            ),
            Kind::Bad(reason) => {
                n_bad += 1;
                let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).to_string();
                let v = dead.get(off).unwrap_or_else(|| {
                    panic!("no dead letter for bad line at byte {off} ({reason}): {shown}")
                });
                assert_eq!(
                    v["reason"],
                    *reason,
                    "line at byte {off}: {shown}; got {:.300}",
                    v.to_string()
                );
                assert_eq!(v["source"], source.as_str());
                assert!(
                    v["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{v:.300}"
                );
                if *reason == "too_long" {
                    assert_eq!(
                        v["original_len"],
                        line.len(),
                        "original_len of the line at byte {off}"
                    );
                    assert_eq!(v["truncated"], true);
                    let raw = v["raw"].as_str().expect("raw text");
                    assert_eq!(raw.len(), MIB, "raw holds the first max_record_bytes");
                    assert_eq!(raw.as_bytes(), &line[..MIB]);
                } else if *reason == "invalid_utf8" {
                    assert!(v.get("raw").is_none());
                    assert_eq!(v["raw_base64"], base64(line));
                } else {
                    assert_eq!(
                        v["raw"].as_str().map(str::as_bytes),
                        Some(&line[..]),
                        "raw of the line at byte {off}"
                    );
                    assert!(v.get("original_len").is_none());
                }
            }
        }
    }
    assert_eq!(dead.len(), n_bad, "dead letters for lines that are not bad");
    assert!(n_bad >= 25);

    // every good line counted exactly once (none is late: timestamps only grow)
    let sum = |stream: &str| -> i64 {
        streams[stream]
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["events"]
                    .as_i64()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(
        sum("user_windows"),
        n_good as i64,
        "events over user_windows"
    );
    assert_eq!(
        sum("global_windows"),
        n_good as i64,
        "events over global_windows"
    );
    assert!(
        streams["late_events"].is_empty(),
        "{:?}",
        streams["late_events"]
    );
    let padded: Vec<&String> = streams["user_windows"]
        .iter()
        .filter(|l| l.contains(r#""user_id":"upad""#))
        .collect();
    assert_eq!(
        padded.len(),
        1,
        "the line of exactly max_record_bytes is an event"
    );
    streams
}

#[test]
fn every_bad_line_is_one_dead_letter_and_every_good_line_counts() {
    let a = check("1");
    let b = check("2");
    for s in STREAMS {
        let mut x = a[s].clone();
        let mut y = b[s].clone();
        x.sort();
        y.sort();
        if s == "dead_letter" {
            // the source path differs between the two temp files; compare without it
            let strip = |v: &mut Vec<String>| {
                for l in v.iter_mut() {
                    let mut r: Value = serde_json::from_str(l).unwrap();
                    r.as_object_mut().unwrap().remove("source");
                    *l = r.to_string();
                }
                v.sort();
            };
            strip(&mut x);
            strip(&mut y);
        }
        assert_same_lines(&format!("shards 1 vs 2 [{s}]"), &y, &x);
    }
}

/// A file of nothing but garbage still completes, with only dead letters.
#[test]
fn only_garbage_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("junk.jsonl");
    std::fs::write(&input, b"\xff\xfe\n{\n}\n[]\n\n").unwrap();
    let out = dir.path().join("out");
    replay(&input, &out, &["--shards", "2"]);
    let dead = lines(&out, "dead_letter");
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec!["invalid_utf8", "not_json", "not_json", "not_object"]
    );
    for s in [
        "user_windows",
        "global_windows",
        "abandoned_carts",
        "late_events",
    ] {
        assert!(lines(&out, s).is_empty(), "{s}");
    }
}

/// An oversize last line without a trailing newline: one dead letter with its full length,
/// and the good lines before it still count.
#[test]
fn oversize_last_line_without_newline() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tail.jsonl");
    let mut bytes = Vec::new();
    for i in 0..3 {
        bytes.extend_from_slice(good(i).as_bytes());
        bytes.push(b'\n');
    }
    let start = bytes.len();
    let big = padded_good("tail", T + 1, 2 * MIB + 5);
    bytes.extend_from_slice(big.as_bytes());
    std::fs::write(&input, &bytes).unwrap();
    let out = dir.path().join("out");
    replay(&input, &out, &["--shards", "2"]);
    let dead = lines(&out, "dead_letter");
    assert_eq!(dead.len(), 1, "{:.300?}", dead);
    let v: Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(v["reason"], "too_long");
    assert_eq!(v["original_len"], big.len());
    assert_eq!(v["position"], start.to_string());
    let events: i64 = lines(&out, "user_windows")
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["events"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(events, 3);
}
