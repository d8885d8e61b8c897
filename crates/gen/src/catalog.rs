//! Product catalogue and the weighted samplers used to pick from it.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::format::id_string;

/// One catalogue entry, as other crates (engine enrichment, serving) see it.
///
/// `price_cents` is the *current* price: it follows the generator's price
/// changes so a consumer holding the catalogue can check event prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub category: String,
    pub name: String,
    pub brand: String,
    pub price_cents: i64,
    pub stock: u32,
}

/// Walker/Vose alias table: O(1) weighted sampling.
///
/// Sampling happens several times per event on the hot path, so a binary
/// search over a CDF (log n cache misses) would cost more than formatting.
#[derive(Debug, Clone)]
pub(crate) struct Alias {
    /// (acceptance threshold, alias index) packed together for locality.
    table: Vec<(f32, u32)>,
}

impl Alias {
    /// `weights` must be non-negative with a positive sum.
    pub fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        assert!(n > 0 && n <= u32::MAX as usize);
        let sum: f64 = weights.iter().sum();
        assert!(sum > 0.0 && sum.is_finite(), "alias weights must sum > 0");
        let mut p: Vec<f64> = weights.iter().map(|w| w * n as f64 / sum).collect();
        let mut table = vec![(1.0f32, 0u32); n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| p[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            table[s] = (p[s] as f32, l as u32);
            p[l] -= 1.0 - p[s];
            if p[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers are 1.0 up to rounding error.
        for i in small.into_iter().chain(large) {
            table[i] = (1.0, i as u32);
        }
        Self { table }
    }

    #[inline]
    pub fn sample<R: Rng>(&self, rng: &mut R) -> usize {
        let n = self.table.len();
        let x = rng.gen::<f64>() * n as f64;
        let i = (x as usize).min(n - 1);
        let (threshold, alias) = self.table[i];
        if ((x - i as f64) as f32) < threshold {
            i
        } else {
            alias as usize
        }
    }
}

/// Zipf weights `1/rank^s` assigned to a random permutation, so the popular
/// items are scattered over ids and categories instead of being `p00000..`.
pub(crate) fn zipf_weights<R: Rng>(rng: &mut R, n: usize, s: f64) -> Vec<f64> {
    let mut ranks: Vec<u32> = (0..n as u32).collect();
    ranks.shuffle(rng);
    ranks
        .iter()
        .map(|&r| 1.0 / ((r as f64) + 1.0).powf(s))
        .collect()
}

/// Standard normal via Box–Muller; only used while building the catalogue,
/// so its cost does not matter and no extra dependency is needed.
fn std_normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

const BRANDS: &[&str] = &[
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Soylent",
    "Cyberdyne",
    "Wonka",
    "Gringotts",
    "Oscorp",
    "Monarch",
    "Aperture",
    "BlueSun",
    "Duff",
    "Krusty",
    "Nakatomi",
    "Paper Street",
    "Pied Piper",
    "Sterling",
    "Virtucon",
    "Zorg",
    "Ollivander",
    "Buy n Large",
    "Dunder",
];

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Deluxe",
    "Eco",
    "Compact",
    "Premium",
    "Smart",
    "Ultra",
    "Lite",
    "Pro",
    "Vintage",
    "Rugged",
    "Essential",
    "Organic",
    "Wireless",
    "Cozy",
    "Sleek",
];

const NOUNS: &[&str] = &[
    "Kettle",
    "Headphones",
    "Backpack",
    "Sneakers",
    "Lamp",
    "Blender",
    "Jacket",
    "Notebook",
    "Charger",
    "Mug",
    "Tent",
    "Drone",
    "Watch",
    "Pillow",
    "Skillet",
    "Speaker",
    "Camera",
    "Scarf",
    "Keyboard",
    "Toaster",
    "Bottle",
    "Sunglasses",
    "Puzzle",
    "Candle",
    "Router",
    "Yoga Mat",
    "Desk",
    "Helmet",
    "Perfume",
    "Board Game",
];

/// The catalogue plus the derived lookup tables the simulation needs.
///
/// Hot per-product fields live in flat vectors next to the public
/// [`Product`] list so the event loop touches 4–8 bytes per lookup instead of
/// a whole `Product`.
pub(crate) struct Catalog {
    pub products: Vec<Product>,
    pub price: Vec<i64>,
    pub category: Vec<u32>,
    pub stock: Vec<u32>,
    /// Popularity over the whole catalogue.
    pub global: Alias,
    /// Category choice weighted by total popularity, so picking a category
    /// and then a product inside it matches global popularity.
    pub by_category: Alias,
    /// Products of each category and their popularity sampler (`None` for an
    /// empty category, which `by_category` never picks).
    pub members: Vec<Vec<u32>>,
    pub member_alias: Vec<Option<Alias>>,
}

impl Catalog {
    pub fn build<R: Rng>(rng: &mut R, products: u32, categories: u32, zipf_s: f64) -> Self {
        let n = products as usize;
        let nc = categories as usize;
        let weight = zipf_weights(rng, n, zipf_s);

        // Category sizes are skewed too (some departments are much bigger),
        // but each category gets a product first while there are enough.
        let cat_size_alias = Alias::new(&zipf_weights(rng, nc, 0.7));
        let mut category = vec![0u32; n];
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(rng);
        for (k, &p) in order.iter().enumerate() {
            category[p as usize] = if k < nc {
                k as u32
            } else {
                cat_size_alias.sample(rng) as u32
            };
        }

        // A log-normal median per category, then log-normal spread per
        // product: groceries and electronics live on different price scales.
        let cat_median: Vec<f64> = (0..nc)
            .map(|_| (2500f64.ln() + 0.8 * std_normal(rng)).exp())
            .collect();

        let mut products_v = Vec::with_capacity(n);
        let mut price = Vec::with_capacity(n);
        let mut stock = Vec::with_capacity(n);
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); nc];
        let mut member_w: Vec<Vec<f64>> = vec![Vec::new(); nc];
        for p in 0..n {
            let c = category[p] as usize;
            let raw = (cat_median[c] * (0.5 * std_normal(rng)).exp()).clamp(99.0, 999_999.0);
            // Rounded to whole currency units once, then all price arithmetic
            // is integer cents; retail-style endings make the text realistic.
            let units = (raw / 100.0).round().max(1.0) as i64;
            let cents = match rng.gen_range(0..20) {
                0..=13 => units * 100 - 1,
                14..=16 => (units * 100 - 51).max(49),
                _ => units * 100,
            };
            // Log-uniform 5..2000: most items have modest stock, a few are
            // warehouse staples, so "large share of stock" differs per item.
            let st = (5f64.ln() + rng.gen::<f64>() * (2000f64 / 5.0).ln())
                .exp()
                .round() as u32;
            let brand = BRANDS[rng.gen_range(0..BRANDS.len())];
            let name = format!(
                "{} {} {} {}",
                brand,
                ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())],
                NOUNS[c % NOUNS.len()],
                rng.gen_range(100..1000)
            );
            products_v.push(Product {
                sku: id_string(
                    b'p',
                    p as u64,
                    crate::format::Widths::new(1, products).product,
                ),
                category: format!("c{c}"),
                name,
                brand: brand.to_string(),
                price_cents: cents,
                stock: st,
            });
            price.push(cents);
            stock.push(st);
            members[c].push(p as u32);
            member_w[c].push(weight[p]);
        }
        let cat_weight: Vec<f64> = member_w.iter().map(|w| w.iter().sum()).collect();
        let member_alias = member_w
            .iter()
            .map(|w| (!w.is_empty()).then(|| Alias::new(w)))
            .collect();
        Self {
            products: products_v,
            price,
            category,
            stock,
            global: Alias::new(&weight),
            by_category: Alias::new(&cat_weight),
            members,
            member_alias,
        }
    }

    /// A product of category `c` by popularity, or a global pick when the
    /// category is empty.
    #[inline]
    pub fn in_category<R: Rng>(&self, rng: &mut R, c: u32) -> u32 {
        match &self.member_alias[c as usize] {
            Some(a) => self.members[c as usize][a.sample(rng)],
            None => self.global.sample(rng) as u32,
        }
    }

    pub fn len(&self) -> u32 {
        self.price.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn alias_matches_weights() {
        let mut rng = SmallRng::seed_from_u64(1);
        let w = [1.0, 2.0, 0.0, 7.0];
        let a = Alias::new(&w);
        let mut counts = [0u32; 4];
        let n = 200_000;
        for _ in 0..n {
            counts[a.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[2], 0);
        for i in [0, 1, 3] {
            let expect = w[i] / 10.0;
            let got = counts[i] as f64 / n as f64;
            assert!((got - expect).abs() < 0.01, "{i}: {got} vs {expect}");
        }
    }

    #[test]
    fn catalogue_shape() {
        let mut rng = SmallRng::seed_from_u64(2);
        let c = Catalog::build(&mut rng, 1000, 50, 1.1);
        assert_eq!(c.products.len(), 1000);
        assert!(c.members.iter().all(|m| !m.is_empty()));
        assert_eq!(c.products[7].sku, "p00007");
        assert!(c.price.iter().all(|&p| p > 0));
        assert!(c.stock.iter().all(|&s| (5..=2000).contains(&s)));
        // Zipf: the most popular product should be drawn far more than average.
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[c.global.sample(&mut rng)] += 1;
        }
        let max = *counts.iter().max().unwrap();
        assert!(max > 5_000, "top product drawn only {max} times");
        // More categories than products: empty categories are never chosen.
        let c = Catalog::build(&mut rng, 10, 20, 1.1);
        for _ in 0..1000 {
            let cat = c.by_category.sample(&mut rng);
            assert!(!c.members[cat].is_empty());
        }
    }
}
