//! Association rules from frequent itemsets, with the measures of mlxtend's
//! `association_rules`: support of the whole itemset, confidence, lift.

use crate::fpgrowth::FrequentItemset;
use hashbrown::HashMap;
use serde::Serialize;

/// `antecedent ⇒ consequent`: baskets holding the antecedent also hold the consequent with
/// probability `confidence`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// Item ids, ascending.
    pub antecedent: Vec<u32>,
    /// Item ids, ascending; disjoint from the antecedent.
    pub consequent: Vec<u32>,
    /// Baskets holding both sides.
    pub count: u64,
    /// `count / n_baskets`.
    pub support: f64,
    /// `count / count(antecedent)`.
    pub confidence: f64,
    /// `confidence / support(consequent)`: how much more likely the consequent is given the
    /// antecedent than in a random basket.
    pub lift: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error(
        "itemset {itemset:?} is listed but its subset {subset:?} is not: rules need every \
         subset of a frequent itemset, each with its items in ascending order"
    )]
    MissingSubset { itemset: Vec<u32>, subset: Vec<u32> },
    #[error("itemset {itemset:?} has {} items: more than 63 cannot be split into rules", itemset.len())]
    TooLarge { itemset: Vec<u32> },
}

/// The map [`generate_rules`] takes, from [`crate::fpgrowth()`]'s output.
pub fn itemset_map(itemsets: &[FrequentItemset]) -> HashMap<Vec<u32>, u64> {
    itemsets
        .iter()
        .map(|s| (s.items.clone(), s.count))
        .collect()
}

/// Every rule `A ⇒ C` with `A ∪ C` a listed itemset of two or more items, `A` and `C`
/// non-empty and disjoint, and `count(A ∪ C) / count(A) >= min_confidence`.
///
/// `itemsets` maps item ids in ascending order to basket counts and must hold every
/// subset of each itemset it holds (as frequent itemsets do). Rules come ordered by
/// itemset, then by antecedent bit pattern, so the output is deterministic.
pub fn generate_rules(
    itemsets: &HashMap<Vec<u32>, u64>,
    n_baskets: u64,
    min_confidence: f64,
) -> Result<Vec<Rule>, RuleError> {
    let mut keys: Vec<&Vec<u32>> = itemsets.keys().filter(|k| k.len() >= 2).collect();
    keys.sort_unstable();
    let n = n_baskets as f64;
    let mut rules = Vec::new();
    let (mut a, mut c) = (Vec::new(), Vec::new());
    for itemset in keys {
        let len = itemset.len();
        if len > 63 {
            return Err(RuleError::TooLarge {
                itemset: itemset.clone(),
            });
        }
        let count = itemsets[itemset];
        let lookup = |subset: &[u32]| {
            itemsets
                .get(subset)
                .copied()
                .ok_or_else(|| RuleError::MissingSubset {
                    itemset: itemset.clone(),
                    subset: subset.to_vec(),
                })
        };
        // Every bit pattern but none and all: bit i set puts item i in the antecedent.
        for mask in 1..(1u64 << len) - 1 {
            a.clear();
            c.clear();
            for (i, &item) in itemset.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    a.push(item);
                } else {
                    c.push(item);
                }
            }
            let confidence = count as f64 / lookup(&a)? as f64;
            if confidence >= min_confidence {
                let consequent_support = lookup(&c)? as f64 / n;
                rules.push(Rule {
                    antecedent: a.clone(),
                    consequent: c.clone(),
                    count,
                    support: count as f64 / n,
                    confidence,
                    lift: confidence / consequent_support,
                });
            }
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fpgrowth::fpgrowth;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Key = (Vec<u32>, Vec<u32>);

    fn by_sides(rules: &[Rule]) -> BTreeMap<Key, (u64, f64, f64, f64)> {
        let map: BTreeMap<_, _> = rules
            .iter()
            .map(|r| {
                (
                    (r.antecedent.clone(), r.consequent.clone()),
                    (r.count, r.support, r.confidence, r.lift),
                )
            })
            .collect();
        assert_eq!(map.len(), rules.len(), "a rule was reported twice");
        map
    }

    /// Every pair of disjoint non-empty item sets over the universe, counted straight from
    /// the baskets.
    fn brute_force(
        baskets: &[Vec<u32>],
        min_count: u64,
        min_confidence: f64,
    ) -> BTreeMap<Key, (u64, f64, f64, f64)> {
        let mut universe: Vec<u32> = baskets.iter().flatten().copied().collect();
        universe.sort_unstable();
        universe.dedup();
        let masks: Vec<u32> = baskets
            .iter()
            .map(|b| {
                b.iter()
                    .map(|id| 1u32 << universe.binary_search(id).unwrap())
                    .fold(0, |x, m| x | m)
            })
            .collect();
        let count = |s: u32| masks.iter().filter(|&&m| m & s == s).count() as u64;
        let items = |s: u32| -> Vec<u32> {
            (0..universe.len())
                .filter(|i| s & (1 << i) != 0)
                .map(|i| universe[i])
                .collect()
        };
        let n = baskets.len() as f64;
        let mut out = BTreeMap::new();
        let all = (1u32 << universe.len()) - 1;
        for a in 1..=all {
            for c in 1..=all {
                if a & c != 0 {
                    continue;
                }
                let both = count(a | c);
                if both < min_count.max(1) {
                    continue;
                }
                let confidence = both as f64 / count(a) as f64;
                if confidence >= min_confidence {
                    let lift = confidence / (count(c) as f64 / n);
                    out.insert(
                        (items(a), items(c)),
                        (both, both as f64 / n, confidence, lift),
                    );
                }
            }
        }
        out
    }

    /// Baskets: {a,b} {a,b} {a,c} {b} with a=1, b=2, c=3; all itemsets of count ≥ 1.
    #[test]
    fn hand_checked() {
        let t = vec![vec![1, 2], vec![1, 2], vec![1, 3], vec![2]];
        let sets = itemset_map(&fpgrowth(&t, 1));
        let rules = by_sides(&generate_rules(&sets, 4, 0.0).unwrap());
        let expected: BTreeMap<Key, (u64, f64, f64, f64)> = [
            // a⇒b: 2 of the 3 baskets with a; b is in 3 of 4 baskets: lift (2/3)/(3/4) = 8/9
            ((vec![1], vec![2]), (2, 0.5, 2.0 / 3.0, (2.0 / 3.0) / 0.75)),
            ((vec![2], vec![1]), (2, 0.5, 2.0 / 3.0, (2.0 / 3.0) / 0.75)),
            // a⇒c: 1 of 3; c is in 1 of 4 baskets: lift 4/3
            ((vec![1], vec![3]), (1, 0.25, 1.0 / 3.0, (1.0 / 3.0) / 0.25)),
            ((vec![3], vec![1]), (1, 0.25, 1.0, 1.0 / 0.75)),
        ]
        .into_iter()
        .collect();
        assert_eq!(rules, expected);
        let strong = generate_rules(&sets, 4, 0.9).unwrap();
        assert_eq!(strong.len(), 1);
        assert_eq!(
            (
                strong[0].antecedent.as_slice(),
                strong[0].consequent.as_slice()
            ),
            (&[3][..], &[1][..])
        );
    }

    #[test]
    fn three_item_itemset_gives_six_rules() {
        let t = vec![vec![1, 2, 3]; 2];
        let rules = generate_rules(&itemset_map(&fpgrowth(&t, 1)), 2, 0.0).unwrap();
        // 3 two-item sets × 2 splits + one three-item set × 6 splits
        assert_eq!(rules.len(), 12);
        assert!(rules.iter().all(|r| r.confidence == 1.0 && r.lift == 1.0));
    }

    #[test]
    fn missing_subset_is_an_error() {
        let mut sets = HashMap::new();
        sets.insert(vec![1, 2], 3);
        sets.insert(vec![1], 4);
        assert_eq!(
            generate_rules(&sets, 10, 0.0),
            Err(RuleError::MissingSubset {
                itemset: vec![1, 2],
                subset: vec![2]
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn equals_brute_force(
            baskets in (1u32..=8).prop_flat_map(|k| {
                prop::collection::vec(prop::collection::vec(0..k, 0..=8), 1..=30)
            }),
            min_count in 1u64..=8,
            min_confidence in prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0],
        ) {
            let sets = itemset_map(&fpgrowth(&baskets, min_count));
            let rules = generate_rules(&sets, baskets.len() as u64, min_confidence).unwrap();
            prop_assert_eq!(by_sides(&rules), brute_force(&baskets, min_count, min_confidence));
        }
    }
}
