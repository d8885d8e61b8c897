#!/usr/bin/env python3
"""Writes a seeded, realistic basket file for `cartpulse fpgrowth` benchmarks.

One basket per line, item names (which contain spaces) separated by ", ". Popularity over
the catalogue follows Zipf's law; basket sizes run from 1 to 20 with a mean near 4; a few
planted co-purchase bundles give real multi-item patterns beyond what popularity alone
would produce. Items are unique within a basket. Same seed, same file.
"""

import argparse
import itertools
import math
import random


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--baskets", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=5000, help="catalogue size")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity exponent")
    p.add_argument("--mean-size", type=float, default=4.0)
    p.add_argument("--bundles", type=int, default=25)
    p.add_argument("--bundle-rate", type=float, default=0.1,
                   help="fraction of baskets built around a bundle")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    rng = random.Random(a.seed)
    names = [f"product {i:04d}" for i in range(a.items)]
    # popularity rank -> item, shuffled so that ids say nothing about popularity
    by_rank = names[:]
    rng.shuffle(by_rank)
    cum = list(itertools.accumulate(1.0 / (r + 1) ** a.zipf for r in range(a.items)))

    # bundles of 2-5 items from the middle of the catalogue: popular enough to be bought,
    # rare enough that their co-purchase stands out
    mid = by_rank[50:2000]
    bundles = [rng.sample(mid, rng.randint(2, 5)) for _ in range(a.bundles)]

    # size = 1 + geometric(p) has mean 1 + (1-p)/p; capped at 20
    p_geo = 1.0 / a.mean_size
    log_q = math.log(1.0 - p_geo)

    with open(a.out, "w", buffering=1 << 20) as f:
        for _ in range(a.baskets):
            size = min(20, 1 + int(math.log(1.0 - rng.random()) / log_q))
            basket = {}
            if rng.random() < a.bundle_rate:
                for item in rng.choice(bundles):
                    if rng.random() < 0.85:
                        basket[item] = None
            while len(basket) < size:
                for item in rng.choices(by_rank, cum_weights=cum, k=size - len(basket)):
                    basket[item] = None
            f.write(", ".join(basket))
            f.write("\n")


if __name__ == "__main__":
    main()
