//! Basket analytics for cartpulse: which products are bought together.
//!
//! * [`fpgrowth`] mines every frequent itemset of a set of baskets (FP-Growth);
//! * [`rules`] turns frequent itemsets into association rules (support, confidence, lift);
//! * [`baskets`] reads the offline basket file format (one basket per line, comma-separated);
//! * [`recommend`] keeps live co-occurrence counts and combines them with mined rules into
//!   recommendations for the items a shopper holds;
//! * [`intent`] scores open carts for purchase intent (online logistic regression);
//! * [`live`] is the streaming analytics stage that runs all of it inside the pipeline.
//!
//! Items are dense `u32` ids everywhere: the offline path interns names in [`baskets`], the
//! live path in [`recommend::Recommender`].

pub mod baskets;
pub mod fpgrowth;
pub mod intent;
pub mod live;
pub mod recommend;
pub mod rules;

pub use baskets::{parse_baskets, read_baskets, BasketError, Baskets};
pub use fpgrowth::{fpgrowth, min_count_for_support, FrequentItemset};
pub use recommend::{Recommendation, Recommender, RecommenderConfig};
pub use rules::{generate_rules, itemset_map, Rule, RuleError};
