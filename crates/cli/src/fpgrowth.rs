//! `cartpulse fpgrowth`: mines a basket file offline with the pipeline's FP-Growth and
//! writes every frequent itemset and association rule as JSON lines.

use anyhow::{bail, Context, Result};
use cartpulse_analytics::{
    fpgrowth, generate_rules, itemset_map, min_count_for_support, read_baskets,
};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct FpgrowthArgs {
    /// Basket file: one basket per line, item names separated by commas.
    #[arg(long)]
    input: PathBuf,
    /// Minimum fraction of baskets holding an itemset, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    min_support: f64,
    /// Minimum confidence of a rule, in [0, 1].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    min_confidence: f64,
    /// Output directory for itemsets.jsonl and rules.jsonl (created if missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize)]
struct ItemsetRecord<'a> {
    items: Vec<&'a str>,
    count: u64,
    support: f64,
}

#[derive(Serialize)]
struct RuleRecord<'a> {
    antecedent: Vec<&'a str>,
    consequent: Vec<&'a str>,
    support: f64,
    confidence: f64,
    lift: f64,
}

pub fn run(a: FpgrowthArgs) -> Result<()> {
    // written so that NaN fails too
    if !(a.min_support > 0.0 && a.min_support <= 1.0) {
        bail!(
            "--min-support must be a fraction in (0, 1], got {}",
            a.min_support
        );
    }
    if !(a.min_confidence >= 0.0 && a.min_confidence <= 1.0) {
        bail!(
            "--min-confidence must be in [0, 1], got {}",
            a.min_confidence
        );
    }
    if !a.input.exists() {
        bail!("input file {} does not exist", a.input.display());
    }
    if !a.input.is_file() {
        bail!("input {} is not a file", a.input.display());
    }

    let t0 = Instant::now();
    let baskets = read_baskets(&a.input)?;
    let t_read = t0.elapsed();
    let n = baskets.len() as u64;
    let itemsets = match min_count_for_support(n, a.min_support) {
        Some(min_count) => fpgrowth(baskets.iter(), min_count),
        None => Vec::new(),
    };
    let t_mine = t0.elapsed();
    let rules = generate_rules(&itemset_map(&itemsets), n, a.min_confidence)?;
    let t_rules = t0.elapsed();

    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating output directory {}", a.out.display()))?;
    let names = baskets.names();
    // Sorting ids by the rank of their name sorts by name (byte order, like Python's
    // `sorted`) while comparing integers.
    let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
    by_name.sort_unstable_by(|&x, &y| names[x as usize].cmp(&names[y as usize]));
    let mut rank = vec![0u32; names.len()];
    for (r, &id) in by_name.iter().enumerate() {
        rank[id as usize] = r as u32;
    }
    let sorted_ranks = |ids: &[u32]| {
        let mut r: Vec<u32> = ids.iter().map(|&id| rank[id as usize]).collect();
        r.sort_unstable();
        r
    };
    let to_names = |ranks: &[u32]| -> Vec<&str> {
        ranks
            .iter()
            .map(|&r| names[by_name[r as usize] as usize].as_str())
            .collect()
    };

    let mut sets: Vec<(Vec<u32>, u64)> = itemsets
        .iter()
        .map(|s| (sorted_ranks(&s.items), s.count))
        .collect();
    sets.sort_unstable_by(|(x, _), (y, _)| x.len().cmp(&y.len()).then_with(|| x.cmp(y)));
    write_jsonl(
        &a.out.join("itemsets.jsonl"),
        sets.iter(),
        |(ranks, count)| ItemsetRecord {
            items: to_names(ranks),
            count: *count,
            support: *count as f64 / n as f64,
        },
    )?;
    write_jsonl(&a.out.join("rules.jsonl"), rules.iter(), |r| RuleRecord {
        antecedent: to_names(&sorted_ranks(&r.antecedent)),
        consequent: to_names(&sorted_ranks(&r.consequent)),
        support: r.support,
        confidence: r.confidence,
        lift: r.lift,
    })?;
    let total = t0.elapsed().as_secs_f64();

    eprintln!(
        "fpgrowth: {} baskets, {} items, {} frequent itemsets, {} rules in {:.3}s \
         (read {:.3}, mine {:.3}, rules {:.3}, write {:.3})",
        n,
        names.len(),
        itemsets.len(),
        rules.len(),
        total,
        t_read.as_secs_f64(),
        (t_mine - t_read).as_secs_f64(),
        (t_rules - t_mine).as_secs_f64(),
        total - t_rules.as_secs_f64(),
    );
    Ok(())
}

fn write_jsonl<T, R: Serialize>(
    path: &Path,
    items: impl Iterator<Item = T>,
    record: impl Fn(T) -> R,
) -> Result<()> {
    let ctx = || format!("writing {}", path.display());
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).with_context(ctx)?);
    for item in items {
        serde_json::to_writer(&mut w, &record(item)).with_context(ctx)?;
        w.write_all(b"\n").with_context(ctx)?;
    }
    w.flush().with_context(ctx)
}
