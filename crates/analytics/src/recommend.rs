//! Recommendations for the items a shopper holds, from mined rules and live co-occurrence.
//!
//! Both sources give, for a candidate item, a confidence (how often baskets with the held
//! evidence also held the candidate) and a lift; a candidate keeps its strongest evidence,
//! and candidates rank by confidence, then lift, then name.

use crate::rules::Rule;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

/// One recommended item, as `GET /api/recommendations` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub item: String,
    /// Confidence of the strongest evidence, in [0, 1].
    pub score: f64,
    /// Why, in words: the rule, or how often the items were bought together.
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommenderConfig {
    /// Partners whose co-occurrence is tracked per item.
    pub max_partners: usize,
    /// Co-occurrence seen in fewer baskets than this is not used: one basket with two items
    /// would otherwise be "bought together in 1 of 1 baskets", a confidence of 1.
    pub min_together: u64,
}

impl Default for RecommenderConfig {
    fn default() -> Self {
        RecommenderConfig {
            max_partners: 64,
            min_together: 2,
        }
    }
}

/// A co-occurrence counter with room for `max_partners`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Partner {
    item: u32,
    count: u64,
    /// How much of `count` may belong to evicted partners (see `observe_pair`).
    overcount: u64,
}

/// A rule with one consequent item, in the recommender's own ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRule {
    antecedent: Vec<u32>,
    consequent: u32,
    confidence: f64,
    lift: f64,
}

/// Live item and pair counts plus mined rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recommender {
    config: RecommenderConfig,
    names: Vec<String>,
    ids: HashMap<String, u32>,
    baskets: u64,
    /// Baskets containing each item. One counter per catalogue item: the catalogue bounds it.
    item_baskets: Vec<u64>,
    partners: Vec<Vec<Partner>>,
    rules: Vec<StoredRule>,
    /// Rules by the smallest id of their antecedent, so only rules that can match are tested.
    rules_by_first: HashMap<u32, Vec<usize>>,
}

impl Recommender {
    pub fn new(config: RecommenderConfig) -> Self {
        Recommender {
            config,
            ..Default::default()
        }
    }

    /// Baskets observed so far.
    pub fn baskets_observed(&self) -> u64 {
        self.baskets
    }

    /// Counts one basket (a set: repeated items count once).
    pub fn observe_basket<S: AsRef<str>>(&mut self, items: &[S]) {
        let mut ids: Vec<u32> = items.iter().map(|s| self.intern(s.as_ref())).collect();
        ids.sort_unstable();
        ids.dedup();
        self.baskets += 1;
        for &x in &ids {
            self.item_baskets[x as usize] += 1;
            for &y in &ids {
                if x != y {
                    self.observe_pair(x, y);
                }
            }
        }
    }

    /// Counts `y` as bought with `x`.
    ///
    /// Pairs grow with the square of the catalogue, so each item keeps at most
    /// `max_partners` counters. When they are full, the weakest is evicted and the newcomer
    /// inherits its count plus one (the Space-Saving scheme): a newcomer starting from 1
    /// would be the next one evicted, so a partner that only becomes popular late would
    /// never get in, whereas with inherited counts every partner bought with `x` in more
    /// than 1/`max_partners` of the pairs is guaranteed to be tracked. The inherited part is
    /// remembered as `overcount`, and evidence only ever cites `count - overcount`, the part
    /// actually seen.
    fn observe_pair(&mut self, x: u32, y: u32) {
        let cap = self.config.max_partners;
        let list = &mut self.partners[x as usize];
        if let Some(p) = list.iter_mut().find(|p| p.item == y) {
            p.count += 1;
        } else if list.len() < cap {
            list.push(Partner {
                item: y,
                count: 1,
                overcount: 0,
            });
        } else if let Some(weakest) = list.iter_mut().min_by_key(|p| p.count) {
            *weakest = Partner {
                item: y,
                count: weakest.count + 1,
                overcount: weakest.count,
            };
        }
    }

    /// Replaces the mined rules. `names` resolves the rules' item ids (the `names()` of the
    /// baskets they were mined from).
    ///
    /// Only rules with a single consequent item are kept: a rule `A ⇒ {c, d}` has at most the
    /// confidence of `A ⇒ c` (fewer baskets hold both c and d), and when it passed the
    /// mining's confidence threshold so did `A ⇒ c`, so single-item rules carry the best
    /// evidence for every item.
    pub fn set_rules<S: AsRef<str>>(&mut self, rules: &[Rule], names: &[S]) {
        self.rules.clear();
        self.rules_by_first.clear();
        for r in rules {
            let [consequent] = r.consequent[..] else {
                continue;
            };
            let consequent = self.intern(names[consequent as usize].as_ref());
            let mut antecedent: Vec<u32> = r
                .antecedent
                .iter()
                .map(|&a| self.intern(names[a as usize].as_ref()))
                .collect();
            antecedent.sort_unstable();
            let Some(&first) = antecedent.first() else {
                continue;
            };
            self.rules_by_first
                .entry(first)
                .or_default()
                .push(self.rules.len());
            self.rules.push(StoredRule {
                antecedent,
                consequent,
                confidence: r.confidence,
                lift: r.lift,
            });
        }
    }

    /// Up to `n` items to suggest to a shopper holding `held`, best first. Held items are
    /// never suggested; held items never seen before simply carry no evidence.
    pub fn recommend<S: AsRef<str>>(&self, held: &[S], n: usize) -> Vec<Recommendation> {
        let mut held: Vec<u32> = held
            .iter()
            .filter_map(|s| self.ids.get(s.as_ref()).copied())
            .collect();
        held.sort_unstable();
        held.dedup();
        let is_held = |id: u32| held.binary_search(&id).is_ok();

        // candidate -> (confidence, lift, evidence)
        let mut best: HashMap<u32, (f64, f64, String)> = HashMap::new();
        let mut offer = |item: u32, confidence: f64, lift: f64, evidence: &dyn Fn() -> String| {
            let better = best
                .get(&item)
                .is_none_or(|&(c, l, _)| confidence.total_cmp(&c).then(lift.total_cmp(&l)).is_gt());
            if better {
                best.insert(item, (confidence, lift, evidence()));
            }
        };

        for &h in &held {
            for &i in self.rules_by_first.get(&h).into_iter().flatten() {
                let r = &self.rules[i];
                if !is_held(r.consequent) && r.antecedent.iter().all(|&a| is_held(a)) {
                    offer(r.consequent, r.confidence, r.lift, &|| {
                        let a: Vec<&str> = r.antecedent.iter().map(|&a| self.name(a)).collect();
                        format!(
                            "rule {{{}}} => {{{}}}: confidence {:.3}, lift {:.3}",
                            a.join(", "),
                            self.name(r.consequent),
                            r.confidence,
                            r.lift
                        )
                    });
                }
            }
        }

        for &x in &held {
            let with_x = self.item_baskets[x as usize];
            for p in &self.partners[x as usize] {
                let together = p.count - p.overcount;
                if is_held(p.item) || together < self.config.min_together.max(1) {
                    continue;
                }
                let confidence = together as f64 / with_x as f64;
                let base = self.item_baskets[p.item as usize] as f64 / self.baskets as f64;
                offer(p.item, confidence, confidence / base, &|| {
                    format!(
                        "bought together in {together} of {with_x} baskets with {}",
                        self.name(x)
                    )
                });
            }
        }

        let mut out: Vec<(f64, Recommendation)> = best
            .into_iter()
            .map(|(item, (score, lift, evidence))| {
                let item = self.name(item).to_owned();
                (
                    lift,
                    Recommendation {
                        item,
                        score,
                        evidence,
                    },
                )
            })
            .collect();
        out.sort_by(|(la, a), (lb, b)| {
            b.score
                .total_cmp(&a.score)
                .then(lb.total_cmp(la))
                .then_with(|| a.item.cmp(&b.item))
        });
        out.truncate(n);
        out.into_iter().map(|(_, r)| r).collect()
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        self.item_baskets.push(0);
        self.partners.push(Vec::new());
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// Reads association rules as `cartpulse fpgrowth` writes them (`rules.jsonl`: one
/// `{"antecedent": [..], "consequent": [..], "support", "confidence", "lift"}` per line) into
/// rules over the returned item names.
pub fn parse_rules_jsonl(text: &str) -> Result<(Vec<Rule>, Vec<String>), String> {
    #[derive(Deserialize)]
    struct Line {
        antecedent: Vec<String>,
        consequent: Vec<String>,
        #[serde(default)]
        support: f64,
        confidence: f64,
        lift: f64,
    }
    let mut names: Vec<String> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |n: String| -> u32 {
        *ids.entry(n.clone()).or_insert_with(|| {
            names.push(n);
            (names.len() - 1) as u32
        })
    };
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if l.antecedent.is_empty() || l.consequent.is_empty() {
            return Err(format!(
                "line {}: antecedent and consequent must not be empty",
                i + 1
            ));
        }
        let mut antecedent: Vec<u32> = l.antecedent.into_iter().map(&mut intern).collect();
        let mut consequent: Vec<u32> = l.consequent.into_iter().map(&mut intern).collect();
        antecedent.sort_unstable();
        consequent.sort_unstable();
        rules.push(Rule {
            antecedent,
            consequent,
            count: 0,
            support: l.support,
            confidence: l.confidence,
            lift: l.lift,
        });
    }
    Ok((rules, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop(min_together: u64) -> Recommender {
        let mut r = Recommender::new(RecommenderConfig {
            max_partners: 64,
            min_together,
        });
        // milk in 3 of 4 baskets, bread in 3, eggs in 2; milk+bread 2, milk+eggs 2,
        // bread+eggs 1
        r.observe_basket(&["milk", "bread"]);
        r.observe_basket(&["milk", "bread", "eggs", "milk"]);
        r.observe_basket(&["milk", "eggs"]);
        r.observe_basket(&["bread"]);
        r
    }

    fn rec(item: &str, score: f64, evidence: &str) -> Recommendation {
        Recommendation {
            item: item.into(),
            score,
            evidence: evidence.into(),
        }
    }

    #[test]
    fn co_occurrence_ranks_by_confidence_then_lift() {
        let r = shop(1);
        assert_eq!(r.baskets_observed(), 4);
        // both 2 of 3 baskets with milk; lift eggs (2/3)/(2/4) = 4/3 beats bread (2/3)/(3/4)
        assert_eq!(
            r.recommend(&["milk"], 5),
            vec![
                rec(
                    "eggs",
                    2.0 / 3.0,
                    "bought together in 2 of 3 baskets with milk"
                ),
                rec(
                    "bread",
                    2.0 / 3.0,
                    "bought together in 2 of 3 baskets with milk"
                ),
            ]
        );
        assert_eq!(r.recommend(&["milk"], 1).len(), 1);
        // eggs: 2 of 3 with milk beats 1 of 3 with bread
        assert_eq!(
            r.recommend(&["bread", "milk"], 5),
            vec![rec(
                "eggs",
                2.0 / 3.0,
                "bought together in 2 of 3 baskets with milk"
            )]
        );
    }

    #[test]
    fn thin_evidence_is_ignored() {
        let r = shop(2);
        // bread+eggs were bought together once only
        assert_eq!(
            r.recommend(&["eggs"], 5),
            vec![rec(
                "milk",
                1.0,
                "bought together in 2 of 2 baskets with eggs"
            )]
        );
        assert!(r.recommend(&["unknown"], 5).is_empty());
        assert!(r.recommend::<&str>(&[], 5).is_empty());
    }

    #[test]
    fn rules_need_the_whole_antecedent_and_beat_weaker_co_occurrence() {
        let mut r = shop(1);
        let names = ["bread", "milk", "eggs", "jam"];
        let rule = |a: Vec<u32>, c: Vec<u32>, confidence, lift| Rule {
            antecedent: a,
            consequent: c,
            count: 10,
            support: 0.1,
            confidence,
            lift,
        };
        r.set_rules(
            &[
                rule(vec![0, 1], vec![2], 0.9, 2.0),
                rule(vec![1], vec![3], 0.5, 3.0),
                // two consequent items: left to the single-item rules
                rule(vec![0], vec![2, 3], 0.95, 5.0),
            ],
            &names,
        );
        assert_eq!(
            r.recommend(&["milk", "bread"], 5),
            vec![
                rec(
                    "eggs",
                    0.9,
                    "rule {milk, bread} => {eggs}: confidence 0.900, lift 2.000"
                ),
                rec(
                    "jam",
                    0.5,
                    "rule {milk} => {jam}: confidence 0.500, lift 3.000"
                ),
            ]
        );
        // {milk, bread} => eggs does not apply without bread; co-occurrence does
        assert_eq!(
            r.recommend(&["milk"], 5),
            vec![
                rec(
                    "eggs",
                    2.0 / 3.0,
                    "bought together in 2 of 3 baskets with milk"
                ),
                rec(
                    "bread",
                    2.0 / 3.0,
                    "bought together in 2 of 3 baskets with milk"
                ),
                rec(
                    "jam",
                    0.5,
                    "rule {milk} => {jam}: confidence 0.500, lift 3.000"
                ),
            ]
        );
    }

    #[test]
    fn partner_lists_are_bounded_and_cite_only_what_was_seen() {
        let mut r = Recommender::new(RecommenderConfig {
            max_partners: 2,
            min_together: 1,
        });
        for _ in 0..3 {
            r.observe_basket(&["a", "b"]);
        }
        r.observe_basket(&["a", "c"]);
        // a's partners are full (b:3, c:1): d evicts c and inherits its 1
        r.observe_basket(&["a", "d"]);
        assert!(r.partners.iter().all(|p| p.len() <= 2));
        assert_eq!(
            r.recommend(&["a"], 5),
            vec![
                rec("b", 3.0 / 5.0, "bought together in 3 of 5 baskets with a"),
                rec("d", 1.0 / 5.0, "bought together in 1 of 5 baskets with a"),
            ]
        );
    }

    #[test]
    fn serializes_for_the_api() {
        let json = serde_json::to_string(&rec("eggs", 0.5, "x")).unwrap();
        assert_eq!(json, r#"{"item":"eggs","score":0.5,"evidence":"x"}"#);
    }

    #[test]
    fn rules_files_from_fpgrowth_are_read_by_name() {
        let text = "{\"antecedent\":[\"bread\"],\"consequent\":[\"butter\"],\"support\":0.2,\"confidence\":0.8,\"lift\":2.0}\n\n\
                    {\"antecedent\":[\"bread\",\"milk\"],\"consequent\":[\"eggs\"],\"support\":0.1,\"confidence\":0.5,\"lift\":1.5}\n";
        let (rules, names) = parse_rules_jsonl(text).unwrap();
        let mut r = Recommender::new(RecommenderConfig::default());
        r.set_rules(&rules, &names);
        let got = r.recommend(&["bread"], 5);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].item, "butter");
        assert!(
            got[0].evidence.contains("{bread} => {butter}"),
            "{}",
            got[0].evidence
        );
        let got = r.recommend(&["milk", "bread"], 5);
        assert_eq!(
            got.iter().map(|g| g.item.as_str()).collect::<Vec<_>>(),
            ["butter", "eggs"]
        );
        let e = parse_rules_jsonl("{\"antecedent\":[]}").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
    }
}
