//! Helpers shared by the binary-driven tests: running `cartpulse`, reading its committed
//! output, and exact decimal parsing for money.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const STREAMS: [&str; 5] = [
    "user_windows",
    "global_windows",
    "abandoned_carts",
    "late_events",
    "dead_letter",
];

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cartpulse"))
}

pub fn cmd() -> Command {
    let mut c = Command::new(bin());
    // keep the logs short; errors still reach stderr
    c.env("RUST_LOG", "warn");
    c
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `cartpulse gen --events n --seed s --out path [extra...]`
pub fn gen(events: u64, seed: u64, out: &Path, extra: &[&str]) {
    let o = cmd()
        .arg("gen")
        .args(["--events", &events.to_string(), "--seed", &seed.to_string()])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("run cartpulse gen");
    assert!(o.status.success(), "gen failed: {}", show(&o));
}

/// Arguments of `cartpulse replay` as a vector, for spawning.
pub fn replay_args(input: &Path, out: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec!["replay".into(), "--quiet".into(), "--input".into()];
    v.push(input.into());
    v.push("--out".into());
    v.push(out.into());
    for e in extra {
        v.push(e.into());
    }
    v
}

/// Runs replay to completion and asserts it exits 0.
pub fn replay(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let o = cmd()
        .args(replay_args(input, out, extra))
        .output()
        .expect("run cartpulse replay");
    assert!(o.status.success(), "replay failed: {}", show(&o));
    o
}

/// Committed output files of one stream (`part-*.jsonl`), sorted by name.
pub fn part_files(out: &Path, stream: &str) -> Vec<PathBuf> {
    let d = out.join(stream);
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&d) {
        Ok(rd) => rd
            .map(|e| e.expect("dir entry").path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                n.starts_with("part-") && n.ends_with(".jsonl")
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Every file (committed or not) under `out/<stream>`.
pub fn all_files(out: &Path, stream: &str) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(out.join(stream)) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .to_string()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The committed lines of one stream, in file order.
pub fn lines(out: &Path, stream: &str) -> Vec<String> {
    let mut v = Vec::new();
    for p in part_files(out, stream) {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} does not end with a newline",
            p.display()
        );
        v.extend(text.lines().map(str::to_string));
    }
    v
}

/// Sorted committed lines of every stream: the multiset a consumer sees.
pub fn sorted_streams(out: &Path) -> BTreeMap<&'static str, Vec<String>> {
    STREAMS
        .iter()
        .map(|s| {
            let mut l = lines(out, s);
            l.sort();
            (*s, l)
        })
        .collect()
}

/// Compares two multisets of lines and panics with a readable diff summary.
pub fn assert_same_lines(what: &str, got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let mut g: BTreeMap<&str, i64> = BTreeMap::new();
    for l in got {
        *g.entry(l.as_str()).or_default() += 1;
    }
    for l in want {
        *g.entry(l.as_str()).or_default() -= 1;
    }
    let extra: Vec<_> = g.iter().filter(|(_, c)| **c > 0).collect();
    let missing: Vec<_> = g.iter().filter(|(_, c)| **c < 0).collect();
    panic!(
        "{what}: {} lines vs {} expected; {} surplus (first: {:?}), {} missing (first: {:?})",
        got.len(),
        want.len(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>(),
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
}

pub fn assert_same_streams(
    what: &str,
    got: &BTreeMap<&'static str, Vec<String>>,
    want: &BTreeMap<&'static str, Vec<String>>,
) {
    for s in STREAMS {
        assert_same_lines(&format!("{what} [{s}]"), &got[s], &want[s]);
    }
}

/// Exact decimal text (`-12.5`, `39.98`, `7`) → units of 1/10000. Panics on anything else.
pub fn dec(s: &str) -> i64 {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    assert!(
        !int.is_empty() && int.bytes().all(|c| c.is_ascii_digit()),
        "not a plain decimal: {s:?}"
    );
    assert!(
        frac.bytes().all(|c| c.is_ascii_digit()),
        "not a plain decimal: {s:?}"
    );
    let frac_trim = frac.trim_end_matches('0');
    assert!(frac_trim.len() <= 4, "more than 4 fractional digits: {s:?}");
    let mut v: i64 = int.parse::<i64>().unwrap() * 10_000;
    let mut scale = 1000;
    for c in frac_trim.bytes() {
        v += i64::from(c - b'0') * scale;
        scale /= 10;
    }
    if neg {
        -v
    } else {
        v
    }
}

/// The raw text of the number stored under top-level-unique `key` in a record line the
/// engine wrote (so money is compared exactly, without going through f64).
pub fn raw_num<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let i = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no `{key}` in {line}"))
        + pat.len();
    let rest = &line[i..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

pub fn money_field(line: &str, key: &str) -> i64 {
    dec(raw_num(line, key))
}

/// A money value in an input record: a JSON number (via its shortest text) or a string.
pub fn money_value(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => {
            let t = n.to_string();
            if t.contains(['e', 'E']) {
                Some((n.as_f64().unwrap() * 10_000.0).round() as i64)
            } else {
                Some(dec(&t))
            }
        }
        serde_json::Value::String(s) => Some(dec(s)),
        _ => None,
    }
}

/// Small deterministic PRNG (xorshift64*), so the tests need no extra dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 16) % n.max(1)
    }
    /// Uniform in `[a, b)`.
    pub fn range_f64(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Every Parquet file under `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// All rows of every Parquet file under `dir`; panics when there is none.
pub fn read_parquet(dir: &Path) -> Vec<cartpulse_lake::arrow::array::RecordBatch> {
    use cartpulse_lake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let files = parquet_files(dir);
    assert!(
        !files.is_empty(),
        "no Parquet files under {}",
        dir.display()
    );
    files
        .iter()
        .flat_map(|f| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        })
        .collect()
}
