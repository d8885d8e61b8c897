//! `cartpulse fpgrowth` end to end: a small basket file mined by the built binary, checked
//! against hand-computed itemsets and rules, plus argument errors.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

fn fpgrowth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cartpulse"))
        .env("RUST_LOG", "warn")
        .arg("fpgrowth")
        .args(args)
        .output()
        .expect("run cartpulse")
}

/// The lines of a JSONL file, in a canonical order (the file's order is not part of the
/// interface).
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut v: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    v.sort_by_key(|r| r.to_string());
    v
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| r.to_string());
    v
}

/// Six baskets (a blank and a whitespace-only line are not baskets; CRLF, spaces around
/// names, a repeated item and a trailing comma are all tolerated):
///
/// | item | baskets |
/// |---|---|
/// | olive oil | 1 2 4 → 3 |
/// | sea salt | 1 2 5 6 → 4 |
/// | bread | 1 3 4 → 3 |
/// | dark chocolate | 5 → 1 |
///
/// Pairs: olive oil + sea salt 2 (1, 2), bread + olive oil 2 (1, 4), bread + sea salt 1,
/// sea salt + dark chocolate 1. Minimum support 0.3 of 6 baskets means a count of 2.
const BASKETS: &str = "olive oil, sea salt, bread\r\n\
                       sea salt,olive oil\r\n\
                       \r\n\
                       bread\n\
                       olive oil , bread, bread\n\
                       \x20\t\n\
                       sea salt, dark chocolate\n\
                       sea salt,\n";

fn mine(min_confidence: Option<&str>) -> (Vec<Value>, Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("baskets.txt");
    std::fs::write(&input, BASKETS).unwrap();
    let out = dir.path().join("not/yet/there");
    let mut args = vec![
        "--input",
        input.to_str().unwrap(),
        "--min-support",
        "0.3",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(c) = min_confidence {
        args.extend(["--min-confidence", c]);
    }
    let o = fpgrowth(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    (
        records(&out.join("itemsets.jsonl")),
        records(&out.join("rules.jsonl")),
        stderr,
    )
}

#[test]
fn itemsets_and_rules_match_hand_computed_values() {
    let (itemsets, rules, stderr) = mine(None);
    assert_eq!(
        itemsets,
        sorted(vec![
            json!({"items": ["bread"], "count": 3, "support": 0.5}),
            json!({"items": ["olive oil"], "count": 3, "support": 0.5}),
            json!({"items": ["sea salt"], "count": 4, "support": 4.0 / 6.0}),
            json!({"items": ["bread", "olive oil"], "count": 2, "support": 2.0 / 6.0}),
            json!({"items": ["olive oil", "sea salt"], "count": 2, "support": 2.0 / 6.0}),
        ])
    );
    let third = 2.0 / 6.0;
    assert_eq!(
        rules,
        sorted(vec![
            // 2 of the 3 baskets with bread hold olive oil, which is in 3 of 6: lift 4/3
            json!({"antecedent": ["bread"], "consequent": ["olive oil"],
                   "support": third, "confidence": 2.0 / 3.0, "lift": 4.0 / 3.0}),
            json!({"antecedent": ["olive oil"], "consequent": ["bread"],
                   "support": third, "confidence": 2.0 / 3.0, "lift": 4.0 / 3.0}),
            // sea salt is in 4 of 6 baskets: lift (2/3) / (4/6) = 1
            json!({"antecedent": ["olive oil"], "consequent": ["sea salt"],
                   "support": third, "confidence": 2.0 / 3.0, "lift": 1.0}),
            // 2 of the 4 baskets with sea salt hold olive oil (3 of 6): lift 0.5 / 0.5 = 1
            json!({"antecedent": ["sea salt"], "consequent": ["olive oil"],
                   "support": third, "confidence": 0.5, "lift": 1.0}),
        ])
    );
    assert!(stderr.contains("6 baskets"), "{stderr}");
    assert!(stderr.contains("4 items"), "{stderr}");
    assert!(stderr.contains("5 frequent itemsets"), "{stderr}");
    assert!(stderr.contains("4 rules"), "{stderr}");
}

#[test]
fn min_confidence_drops_weaker_rules() {
    let (itemsets, rules, _) = mine(Some("0.6"));
    assert_eq!(itemsets.len(), 5);
    let sides: Vec<(String, String)> = rules
        .iter()
        .map(|r| (r["antecedent"].to_string(), r["consequent"].to_string()))
        .collect();
    assert_eq!(
        sides,
        vec![
            (r#"["bread"]"#.into(), r#"["olive oil"]"#.into()),
            (r#"["olive oil"]"#.into(), r#"["bread"]"#.into()),
            (r#"["olive oil"]"#.into(), r#"["sea salt"]"#.into()),
        ]
    );
}

#[test]
fn missing_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-baskets.txt");
    let out = dir.path().join("out");
    let o = fpgrowth(&[
        "--input",
        missing.to_str().unwrap(),
        "--min-support",
        "0.1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("no-such-baskets.txt"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn out_of_range_arguments_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("baskets.txt");
    std::fs::write(&input, BASKETS).unwrap();
    let out = dir.path().join("out");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    for (flag, value) in [
        ("--min-support", "0"),
        ("--min-support", "1.5"),
        ("--min-support", "-0.2"),
        ("--min-support", "NaN"),
        ("--min-confidence", "1.01"),
        ("--min-confidence", "-0.1"),
    ] {
        let mut args = vec!["--input", i, "--out", o, flag, value];
        if flag != "--min-support" {
            args.extend(["--min-support", "0.5"]);
        }
        let r = fpgrowth(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{flag} {value} was accepted");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(!out.exists());
    }
}
