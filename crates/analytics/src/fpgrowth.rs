//! FP-Growth: every itemset contained in at least `min_count` baskets.
//!
//! The FP-tree lives in flat vectors indexed by node id (parent, item and count per node,
//! the nodes of each item listed per item), because millions of baskets make millions of
//! nodes and boxed nodes would cost an allocation and a pointer chase each. Items are re-ranked by descending frequency so
//! that frequent items sit near the root and paths share prefixes. Mining recurses over
//! conditional trees, which are kept in a pool (one per recursion depth) so their vectors
//! are allocated once and reused for every item at that depth.

use hashbrown::HashMap;
use serde::Serialize;

/// An itemset and the number of baskets that contain all of its items.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FrequentItemset {
    /// Item ids, ascending.
    pub items: Vec<u32>,
    pub count: u64,
}

/// The smallest basket count `c` with `c as f64 / n as f64 >= min_support`, or `None` when
/// no count up to `n` qualifies (no baskets, `min_support` above 1 or NaN).
///
/// Found by searching the very comparison a support check makes, not by `ceil(f * n)`:
/// `0.07 * 100.0` is `7.000000000000001`, yet `7.0 / 100.0 >= 0.07` holds, so the ceiling
/// would wrongly demand 8 baskets. Never returns 0: an itemset no basket contains is not
/// reported whatever the threshold.
pub fn min_count_for_support(n_baskets: u64, min_support: f64) -> Option<u64> {
    if n_baskets == 0 || min_support.is_nan() {
        return None;
    }
    let n = n_baskets as f64;
    let ok = |c: u64| c as f64 / n >= min_support;
    if !ok(n_baskets) {
        return None;
    }
    // Correctly rounded division by a fixed n is monotone in the numerator, so `ok` is a
    // step function over 1..=n and binary search finds its edge.
    let (mut lo, mut hi) = (1u64, n_baskets);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// Every itemset (single items included) contained in at least `min_count` baskets, with its
/// count, in no particular order. A basket is a set: an item listed twice in one basket
/// counts once. Empty baskets contain no itemset. `min_count` 0 is treated as 1.
///
/// `baskets` is iterated twice (item counts, then the tree), hence `Clone`; `&[Vec<u32>]`
/// and [`crate::Baskets::iter`] both fit. Ids need not be dense: sparse ids are remapped.
pub fn fpgrowth<I>(baskets: I, min_count: u64) -> Vec<FrequentItemset>
where
    I: IntoIterator + Clone,
    I::Item: AsRef<[u32]>,
{
    fpgrowth_keyed(baskets, min_count, KEY_BITS)
}

/// Bits per rank in the sort keys of `Tree::build_sorted`; tests pass fewer to reach the
/// paths taken when ranks do not fit.
const KEY_BITS: u32 = 21;

fn fpgrowth_keyed<I>(baskets: I, min_count: u64, key_bits: u32) -> Vec<FrequentItemset>
where
    I: IntoIterator + Clone,
    I::Item: AsRef<[u32]>,
{
    let min_count = min_count.max(1);
    let dense = dense_ids(baskets.clone());
    if dense.universe == 0 {
        return Vec::new();
    }

    // Pass 1: in how many baskets each item occurs. `seen` holds the last basket (+1) that
    // counted an item, which makes duplicates within a basket count once without sorting.
    let mut counts = vec![0u64; dense.universe];
    let mut seen = vec![0usize; dense.universe];
    for (b, basket) in baskets.clone().into_iter().enumerate() {
        for &id in basket.as_ref() {
            let d = dense.get(id) as usize;
            if seen[d] != b + 1 {
                seen[d] = b + 1;
                counts[d] += 1;
            }
        }
    }
    drop(seen);
    let mut frequent: Vec<u32> = (0..dense.universe as u32)
        .filter(|&d| counts[d as usize] >= min_count)
        .collect();
    if frequent.is_empty() {
        return Vec::new();
    }
    frequent.sort_unstable_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
    let mut rank = vec![NONE; dense.universe];
    for (r, &d) in frequent.iter().enumerate() {
        rank[d as usize] = r as u32;
    }

    // Pass 2: every basket as its frequent items' ranks, ascending, back to back.
    let occurrences: u64 = frequent.iter().map(|&d| counts[d as usize]).sum();
    let mut tx_items: Vec<u32> = Vec::with_capacity(occurrences as usize);
    let mut tx_ends: Vec<usize> = Vec::new();
    for basket in baskets {
        let start = tx_items.len();
        tx_items.extend(
            basket
                .as_ref()
                .iter()
                .map(|&id| rank[dense.get(id) as usize])
                .filter(|&r| r != NONE),
        );
        let tx = &mut tx_items[start..];
        tx.sort_unstable();
        let mut len = 0;
        for i in 0..tx.len() {
            if i == 0 || tx[i] != tx[len - 1] {
                tx[len] = tx[i];
                len += 1;
            }
        }
        tx_items.truncate(start + len);
        if len > 0 {
            tx_ends.push(tx_items.len());
        }
    }
    drop(rank);
    let k = frequent.len();
    let mut pool: Vec<Tree> = (0..=k).map(|_| Tree::default()).collect();
    pool[0].reset(frequent.iter().map(|&d| dense.original(d)));
    pool[0].build_sorted(&tx_items, &tx_ends, key_bits);
    drop((tx_items, tx_ends));

    let mut miner = Miner {
        min_count,
        out: Vec::new(),
        suffix: Vec::new(),
        cond_count: Vec::new(),
        new_rank: Vec::new(),
        touched: Vec::new(),
        freq: Vec::new(),
        path_items: Vec::new(),
        path_ends: Vec::new(),
        path_w: Vec::new(),
        ranks: Vec::new(),
    };
    miner.mine(&mut pool);
    miner.out
}

const NONE: u32 = u32::MAX;

/// Maps caller ids to dense indices. Interned ids (the normal case) are already dense and
/// map to themselves; a hash map is only built when ids are so sparse that arrays indexed
/// by them would be mostly empty.
struct DenseIds {
    map: Option<HashMap<u32, u32>>,
    back: Vec<u32>,
    universe: usize,
}

impl DenseIds {
    fn new<I>(baskets: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<[u32]>,
    {
        let (mut max_id, mut occurrences) = (None::<u32>, 0usize);
        for basket in baskets {
            for &id in basket.as_ref() {
                max_id = Some(max_id.map_or(id, |m| m.max(id)));
                occurrences += 1;
            }
        }
        match max_id {
            None => DenseIds {
                map: None,
                back: Vec::new(),
                universe: 0,
            },
            Some(m) if (m as usize) <= 2 * occurrences + 1024 => DenseIds {
                map: None,
                back: Vec::new(),
                universe: m as usize + 1,
            },
            Some(_) => DenseIds {
                map: Some(HashMap::new()),
                back: Vec::new(),
                universe: 0,
            },
        }
    }

    fn get(&self, id: u32) -> u32 {
        match &self.map {
            None => id,
            Some(m) => m[&id],
        }
    }

    fn original(&self, d: u32) -> u32 {
        if self.map.is_none() {
            d
        } else {
            self.back[d as usize]
        }
    }
}

/// Builds the sparse-id map; split from `new` because it needs a second look at the baskets.
fn dense_ids<I>(baskets: I) -> DenseIds
where
    I: IntoIterator + Clone,
    I::Item: AsRef<[u32]>,
{
    let mut d = DenseIds::new(baskets.clone());
    if let Some(map) = &mut d.map {
        for basket in baskets {
            for &id in basket.as_ref() {
                map.entry(id).or_insert_with(|| {
                    d.back.push(id);
                    (d.back.len() - 1) as u32
                });
            }
        }
        d.universe = d.back.len();
    }
    d
}

/// An FP-tree node; parent, item and count sit together because mining reads them together,
/// and a tree of millions of nodes misses the cache on nearly every node it visits.
#[derive(Debug, Clone, Copy)]
struct Node {
    parent: u32,
    /// Rank within the tree (0 = most frequent).
    item: u32,
    count: u64,
}

/// An FP-tree. Node 0 is the root; `ids` maps ranks back to the caller's item ids.
///
/// Where the textbook tree threads a node-link chain through the nodes of each item, this
/// one lists each item's nodes in one slice of `item_nodes` (built once the tree is
/// complete): following a chain is one dependent cache miss per node, while the addresses
/// in a list are known up front, so the CPU overlaps the misses.
#[derive(Default)]
struct Tree {
    nodes: Vec<Node>,
    /// Child lookup while inserting into a conditional tree (see `insert_listed`).
    first_child: Vec<u32>,
    next_sibling: Vec<u32>,
    root_child: Vec<u32>,
    /// Total count of each item in this tree.
    support: Vec<u64>,
    ids: Vec<u32>,
    /// The nodes of item r are `item_nodes[item_start[r]..item_start[r + 1]]`, ascending.
    item_start: Vec<usize>,
    item_nodes: Vec<u32>,
    /// Scratch for `index_items`.
    slot: Vec<usize>,
}

impl Tree {
    fn reset(&mut self, ids: impl Iterator<Item = u32>) {
        self.nodes.clear();
        self.first_child.clear();
        self.next_sibling.clear();
        self.ids.clear();
        self.ids.extend(ids);
        let k = self.ids.len();
        self.root_child.clear();
        self.root_child.resize(k, NONE);
        self.support.clear();
        self.support.resize(k, 0);
        self.nodes.push(Node {
            parent: NONE,
            item: NONE,
            count: 0,
        });
        self.first_child.push(NONE);
        self.next_sibling.push(NONE);
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn new_node(&mut self, parent: u32, item: u32, count: u64) -> u32 {
        let n = u32::try_from(self.len())
            .ok()
            .filter(|&n| n != NONE)
            .expect("FP-tree with more than 2^32 - 1 nodes");
        self.nodes.push(Node {
            parent,
            item,
            count,
        });
        if parent == 0 {
            self.root_child[item as usize] = n;
        }
        n
    }

    /// Builds the tree of transactions `items[ends[i-1]..ends[i]]` (ranks ascending, none
    /// empty) by sorting them lexicographically first. In that order a transaction can only
    /// share a prefix with the one before it, so insertion needs no child lookup at all
    /// (under the most frequent items a node can have thousands of children), and nodes come
    /// out in depth-first order, so a node's parent is usually close by in memory.
    fn build_sorted(&mut self, items: &[u32], ends: &[usize], bits: u32) {
        let tx = |i: u32| {
            let i = i as usize;
            &items[if i == 0 { 0 } else { ends[i - 1] }..ends[i]]
        };
        // The first three ranks packed big-endian (rank + 1, 0 past the end), then one bit
        // for "longer than three": equal keys without that bit are equal transactions, so
        // most comparisons never touch the item vector.
        let packable = (self.ids.len() as u64) < (1u64 << bits) - 1;
        let key = |t: &[u32]| -> u64 {
            if !packable {
                return 0;
            }
            let head = (0..3).fold(0u64, |acc, j| {
                (acc << bits) | t.get(j).map_or(0, |&r| u64::from(r) + 1)
            });
            (head << 1) | u64::from(t.len() > 3)
        };
        let mut order: Vec<(u64, u32)> = (0..ends.len() as u32).map(|i| (key(tx(i)), i)).collect();
        order.sort_unstable();
        // Equal keys of transactions longer than three (of all of them when ranks do not fit
        // a key) still need their full order.
        let mut i = 0;
        while i < order.len() {
            let key = order[i].0;
            let j = i + order[i..].iter().take_while(|o| o.0 == key).count();
            if j - i > 1 && (!packable || key & 1 == 1) {
                order[i..j].sort_unstable_by(|a, b| tx(a.1).cmp(tx(b.1)));
            }
            i = j;
        }

        self.nodes.reserve(items.len());
        let mut path: Vec<u32> = Vec::new();
        let (mut prev, mut cur): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
        for &(key, i) in &order {
            cur.clear();
            if packable && key & 1 == 0 {
                // the key holds the whole transaction: no visit to the item vector
                for j in (0..3).rev() {
                    let r = (key >> (1 + bits * j)) & ((1 << bits) - 1);
                    if r == 0 {
                        break;
                    }
                    cur.push(r as u32 - 1);
                }
            } else {
                cur.extend_from_slice(tx(i));
            }
            let shared = prev.iter().zip(&cur).take_while(|(a, b)| a == b).count();
            path.truncate(shared);
            for &node in &path {
                self.nodes[node as usize].count += 1;
            }
            for &r in &cur[shared..] {
                let parent = path.last().copied().unwrap_or(0);
                path.push(self.new_node(parent, r, 1));
            }
            for &r in &cur {
                self.support[r as usize] += 1;
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        self.index_items();
    }

    /// Inserts `ranks` (ascending) with weight `w`, finding children by scanning sibling
    /// lists: conditional trees hold only the items frequent together with the suffix, so
    /// their nodes have few children.
    fn insert_listed(&mut self, ranks: &[u32], w: u64) {
        let mut node = 0u32;
        for &r in ranks {
            self.support[r as usize] += w;
            let mut child = if node == 0 {
                self.root_child[r as usize]
            } else {
                let mut c = self.first_child[node as usize];
                while c != NONE && self.nodes[c as usize].item != r {
                    c = self.next_sibling[c as usize];
                }
                c
            };
            if child != NONE {
                self.nodes[child as usize].count += w;
            } else {
                child = self.new_node(node, r, w);
                self.first_child.push(NONE);
                self.next_sibling.push(NONE);
                if node != 0 {
                    self.next_sibling[child as usize] = self.first_child[node as usize];
                    self.first_child[node as usize] = child;
                }
            }
            node = child;
        }
    }

    /// Lists every item's nodes (a counting sort of the nodes by item).
    fn index_items(&mut self) {
        let k = self.ids.len();
        self.item_start.clear();
        self.item_start.resize(k + 1, 0);
        for n in &self.nodes[1..] {
            self.item_start[n.item as usize + 1] += 1;
        }
        for r in 0..k {
            self.item_start[r + 1] += self.item_start[r];
        }
        self.item_nodes.clear();
        self.item_nodes.resize(self.len() - 1, 0);
        self.slot.clear();
        self.slot.extend_from_slice(&self.item_start[..k]);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            let slot = &mut self.slot[n.item as usize];
            self.item_nodes[*slot] = i as u32;
            *slot += 1;
        }
    }

    /// Nodes are numbered in creation order, and a node's parent is created before it, so
    /// the tree is one chain exactly when every node's parent is the node before it.
    fn is_single_path(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .skip(1)
            .all(|(i, n)| n.parent as usize == i - 1)
    }
}

/// Mining state; the scratch vectors are shared by all recursion levels because each level
/// is done with them before it recurses.
struct Miner {
    min_count: u64,
    out: Vec<FrequentItemset>,
    /// Caller ids of the items every itemset found in the current tree extends.
    suffix: Vec<u32>,
    cond_count: Vec<u64>,
    new_rank: Vec<u32>,
    touched: Vec<u32>,
    freq: Vec<u32>,
    path_items: Vec<u32>,
    path_ends: Vec<usize>,
    path_w: Vec<u64>,
    ranks: Vec<u32>,
}

impl Miner {
    /// Mines `pool[0]`; `pool[1..]` holds the trees of deeper levels.
    fn mine(&mut self, pool: &mut [Tree]) {
        let (tree, deeper) = pool.split_first_mut().expect("a tree per recursion level");
        if tree.is_single_path() {
            self.emit_path(tree, 1);
            return;
        }
        for r in (0..tree.ids.len() as u32).rev() {
            self.suffix.push(tree.ids[r as usize]);
            self.emit(tree.support[r as usize]);
            if self.build_conditional(tree, r, &mut deeper[0]) {
                self.mine(deeper);
            }
            self.suffix.pop();
        }
    }

    /// Emits every non-empty subset of the chain from node `start` down, each extending the
    /// suffix. Counts never grow along a path, so a subset's count is its deepest node's.
    fn emit_path(&mut self, tree: &Tree, start: usize) {
        for j in start..tree.len() {
            let n = tree.nodes[j];
            self.suffix.push(tree.ids[n.item as usize]);
            self.emit(n.count);
            self.emit_path(tree, j + 1);
            self.suffix.pop();
        }
    }

    fn emit(&mut self, count: u64) {
        let mut items = self.suffix.clone();
        items.sort_unstable();
        self.out.push(FrequentItemset { items, count });
    }

    /// Builds into `cond` the tree of item `r`'s prefix paths, keeping only items frequent
    /// among them; false when none is.
    fn build_conditional(&mut self, tree: &Tree, r: u32, cond: &mut Tree) -> bool {
        let k = tree.ids.len();
        if self.cond_count.len() < k {
            self.cond_count.resize(k, 0);
            self.new_rank.resize(k, NONE);
        }
        self.path_items.clear();
        self.path_ends.clear();
        self.path_w.clear();
        let nodes = &tree.item_nodes[tree.item_start[r as usize]..tree.item_start[r as usize + 1]];
        for &node in nodes {
            let Node { parent, count, .. } = tree.nodes[node as usize];
            let mut p = parent;
            while p != 0 {
                let Node { parent, item, .. } = tree.nodes[p as usize];
                self.path_items.push(item);
                if self.cond_count[item as usize] == 0 {
                    self.touched.push(item);
                }
                self.cond_count[item as usize] += count;
                p = parent;
            }
            self.path_ends.push(self.path_items.len());
            self.path_w.push(count);
        }

        self.freq.clear();
        let min_count = self.min_count;
        let cond_count = &self.cond_count;
        self.freq.extend(
            self.touched
                .iter()
                .copied()
                .filter(|&q| cond_count[q as usize] >= min_count),
        );
        let built = !self.freq.is_empty();
        if built {
            self.freq.sort_unstable_by(|&a, &b| {
                cond_count[b as usize]
                    .cmp(&cond_count[a as usize])
                    .then(a.cmp(&b))
            });
            for (i, &q) in self.freq.iter().enumerate() {
                self.new_rank[q as usize] = i as u32;
            }
            cond.reset(self.freq.iter().map(|&q| tree.ids[q as usize]));
            let mut start = 0;
            for (&end, &w) in self.path_ends.iter().zip(&self.path_w) {
                self.ranks.clear();
                self.ranks.extend(
                    self.path_items[start..end]
                        .iter()
                        .map(|&q| self.new_rank[q as usize])
                        .filter(|&nr| nr != NONE),
                );
                self.ranks.sort_unstable();
                cond.insert_listed(&self.ranks, w);
                start = end;
            }
            cond.index_items();
        }
        for &q in &self.touched {
            self.cond_count[q as usize] = 0;
            self.new_rank[q as usize] = NONE;
        }
        self.touched.clear();
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn as_map(sets: &[FrequentItemset]) -> BTreeMap<Vec<u32>, u64> {
        let map: BTreeMap<_, _> = sets.iter().map(|s| (s.items.clone(), s.count)).collect();
        assert_eq!(map.len(), sets.len(), "an itemset was reported twice");
        map
    }

    /// Counts every subset of the item universe directly.
    fn brute_force(baskets: &[Vec<u32>], min_count: u64) -> BTreeMap<Vec<u32>, u64> {
        let mut universe: Vec<u32> = baskets.iter().flatten().copied().collect();
        universe.sort_unstable();
        universe.dedup();
        assert!(universe.len() <= 16);
        let masks: Vec<u32> = baskets
            .iter()
            .map(|b| {
                b.iter()
                    .map(|id| 1u32 << universe.binary_search(id).unwrap())
                    .fold(0, |a, m| a | m)
            })
            .collect();
        let mut out = BTreeMap::new();
        for subset in 1u32..(1 << universe.len()) {
            let count = masks.iter().filter(|&&m| m & subset == subset).count() as u64;
            if count >= min_count.max(1) {
                let items = (0..universe.len())
                    .filter(|i| subset & (1 << i) != 0)
                    .map(|i| universe[i])
                    .collect();
                out.insert(items, count);
            }
        }
        out
    }

    /// The worked example of Han, Kamber & Pei, "Data Mining: Concepts and Techniques",
    /// table 6.1, minimum support count 2.
    #[test]
    fn textbook_example() {
        let t: Vec<Vec<u32>> = vec![
            vec![1, 2, 5],
            vec![2, 4],
            vec![2, 3],
            vec![1, 2, 4],
            vec![1, 3],
            vec![2, 3],
            vec![1, 3],
            vec![1, 2, 3, 5],
            vec![1, 2, 3],
        ];
        let expected: BTreeMap<Vec<u32>, u64> = [
            (vec![1], 6),
            (vec![2], 7),
            (vec![3], 6),
            (vec![4], 2),
            (vec![5], 2),
            (vec![1, 2], 4),
            (vec![1, 3], 4),
            (vec![1, 5], 2),
            (vec![2, 3], 4),
            (vec![2, 4], 2),
            (vec![2, 5], 2),
            (vec![1, 2, 3], 2),
            (vec![1, 2, 5], 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(as_map(&fpgrowth(&t, 2)), expected);
    }

    #[test]
    fn duplicates_and_empty_baskets() {
        let t: Vec<Vec<u32>> = vec![vec![7, 7, 3], vec![], vec![3, 3, 3], vec![]];
        let expected: BTreeMap<Vec<u32>, u64> = [(vec![3], 2), (vec![7], 1), (vec![3, 7], 1)]
            .into_iter()
            .collect();
        assert_eq!(as_map(&fpgrowth(&t, 1)), expected);
        assert!(fpgrowth(&t, 3).is_empty());
        assert!(fpgrowth(&Vec::<Vec<u32>>::new(), 1).is_empty());
        assert!(fpgrowth(&vec![Vec::<u32>::new(); 3], 1).is_empty());
    }

    #[test]
    fn single_path_enumerates_every_subset() {
        let t = vec![vec![1, 2, 3], vec![1, 2, 3], vec![1, 2], vec![1]];
        let expected: BTreeMap<Vec<u32>, u64> = [
            (vec![1], 4),
            (vec![2], 3),
            (vec![3], 2),
            (vec![1, 2], 3),
            (vec![1, 3], 2),
            (vec![2, 3], 2),
            (vec![1, 2, 3], 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(as_map(&fpgrowth(&t, 2)), expected);
    }

    #[test]
    fn sparse_ids_are_remapped() {
        let t = vec![vec![4_000_000_000, 9], vec![9, 4_000_000_000], vec![9]];
        let expected: BTreeMap<Vec<u32>, u64> = [
            (vec![9], 3),
            (vec![4_000_000_000], 2),
            (vec![9, 4_000_000_000], 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(as_map(&fpgrowth(&t, 2)), expected);
    }

    #[test]
    fn min_count_matches_the_float_comparison() {
        assert_eq!(min_count_for_support(100, 0.07), Some(7));
        assert_eq!(min_count_for_support(3, 1.0 / 3.0), Some(1));
        assert_eq!(min_count_for_support(10, 0.3), Some(3));
        assert_eq!(min_count_for_support(10, 1.0), Some(10));
        assert_eq!(min_count_for_support(10, 1e-9), Some(1));
        assert_eq!(min_count_for_support(10, 1.5), None);
        assert_eq!(min_count_for_support(0, 0.5), None);
        assert_eq!(min_count_for_support(10, f64::NAN), None);
        for n in 1..300u64 {
            for f in [0.001, 0.01, 0.07, 0.1, 0.29, 0.3, 0.33, 0.5, 0.7, 0.9, 0.99] {
                let c = min_count_for_support(n, f).unwrap();
                assert!(c as f64 / n as f64 >= f);
                assert!(c == 1 || ((c - 1) as f64 / n as f64) < f);
            }
        }
    }

    fn baskets_strategy() -> impl Strategy<Value = (Vec<Vec<u32>>, u64)> {
        (1u32..=8).prop_flat_map(|n_items| {
            (
                prop::collection::vec(prop::collection::vec(0..n_items, 0..=10), 0..=30),
                1u64..=31,
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn equals_brute_force((baskets, min_count) in baskets_strategy()) {
            prop_assert_eq!(as_map(&fpgrowth(&baskets, min_count)), brute_force(&baskets, min_count));
        }

        #[test]
        fn equals_brute_force_whatever_fits_a_sort_key(
            (baskets, min_count) in baskets_strategy(),
            key_bits in prop_oneof![Just(0u32), Just(2), Just(3)],
        ) {
            prop_assert_eq!(
                as_map(&fpgrowth_keyed(&baskets, min_count, key_bits)),
                brute_force(&baskets, min_count)
            );
        }

        #[test]
        fn equals_brute_force_with_sparse_ids(
            (baskets, min_count) in baskets_strategy(),
            spread in 100_000u32..500_000_000,
        ) {
            let sparse: Vec<Vec<u32>> = baskets
                .iter()
                .map(|b| b.iter().map(|&i| i * spread + 7).collect())
                .collect();
            prop_assert_eq!(as_map(&fpgrowth(&sparse, min_count)), brute_force(&sparse, min_count));
        }
    }
}
