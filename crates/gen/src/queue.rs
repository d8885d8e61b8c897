//! Event queue of the simulation.
//!
//! A 4-ary min-heap of `(ts, task, hint)` triples (`hint` is payload the
//! caller uses for prefetching; it never decides order since tasks are
//! unique).  With tens of thousands of open
//! sessions the queue is bigger than L1/L2, and every event re-files one
//! session; a 4-ary layout halves the depth of a binary heap and keeps each
//! set of siblings within one or two cache lines, which measurably beats
//! `std::collections::BinaryHeap` here.  Ties on `ts` are broken by task id,
//! which is unique while queued, so the order is fully deterministic.

pub(crate) type Entry = (i64, u32, u32);

#[derive(Debug, Default)]
pub(crate) struct Queue {
    v: Vec<Entry>,
}

const D: usize = 4;

impl Queue {
    #[inline]
    pub fn peek(&self) -> Option<Entry> {
        self.v.first().copied()
    }

    /// The root's children: the entries most likely to be due right after
    /// the current minimum.
    #[inline]
    pub fn upcoming(&self) -> &[Entry] {
        let n = self.v.len();
        &self.v[n.min(1)..n.min(1 + D)]
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.v.len()
    }

    pub fn push(&mut self, e: Entry) {
        self.v.push(e);
        let mut i = self.v.len() - 1;
        while i > 0 {
            let parent = (i - 1) / D;
            if self.v[parent] <= e {
                break;
            }
            self.v[i] = self.v[parent];
            i = parent;
        }
        self.v[i] = e;
    }

    pub fn pop(&mut self) -> Option<Entry> {
        let last = self.v.pop()?;
        if self.v.is_empty() {
            return Some(last);
        }
        let top = self.v[0];
        self.sift_down(last);
        Some(top)
    }

    /// Replaces the minimum with `e`: one sift instead of a pop and a push.
    #[inline]
    pub fn replace_top(&mut self, e: Entry) {
        debug_assert!(!self.v.is_empty());
        self.sift_down(e);
    }

    /// Places `e` starting from the root hole.
    #[inline]
    fn sift_down(&mut self, e: Entry) {
        let n = self.v.len();
        let mut i = 0;
        loop {
            let first = D * i + 1;
            if first >= n {
                break;
            }
            let end = (first + D).min(n);
            let mut best = first;
            let mut best_v = self.v[first];
            for c in first + 1..end {
                let cv = self.v[c];
                if cv < best_v {
                    best = c;
                    best_v = cv;
                }
            }
            if e <= best_v {
                break;
            }
            self.v[i] = best_v;
            i = best;
        }
        self.v[i] = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn pops_in_order_under_mixed_operations() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut q = Queue::default();
        let mut reference = std::collections::BTreeSet::new();
        let mut next_task = 0u32;
        for _ in 0..20_000 {
            match rng.gen_range(0..3) {
                0 | 1 => {
                    let e = (rng.gen_range(0..1000), next_task, 0);
                    next_task += 1;
                    q.push(e);
                    reference.insert(e);
                }
                _ => {
                    if let Some(top) = q.peek() {
                        assert_eq!(Some(&top), reference.first());
                        if rng.gen_bool(0.5) {
                            assert_eq!(q.pop(), reference.pop_first());
                        } else {
                            let e = (top.0 + rng.gen_range(0..500), top.1, 0);
                            reference.pop_first();
                            reference.insert(e);
                            q.replace_top(e);
                        }
                    }
                }
            }
            assert_eq!(q.len(), reference.len());
        }
        while let Some(e) = q.pop() {
            assert_eq!(Some(e), reference.pop_first());
        }
        assert!(reference.is_empty());
    }
}
