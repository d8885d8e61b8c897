//! The global view over a consumer group: each task emits its partition's partial of every
//! global window; the merge sums them per window. Every field of a global window is a count
//! or an exact sum, and with input keyed by user no user spans two partitions, so the sum of
//! per-partition distinct users is the exact distinct count (no sketch, no error). The
//! carts-now figures are each partition's carts as of the moment its own watermark passed
//! the window's end.

use cartpulse_model::Money;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Fields that hold money: summed exactly in fixed point, never through a float.
const MONEY: &[&str] = &[
    "value_added",
    "value_removed",
    "value_delta",
    "checkout_value",
    "value_in_carts",
];

enum Acc {
    Int(i64),
    Money(Money),
}

/// Sums partial global-window records (JSON lines, any order) into one record per window,
/// ordered by window.
pub fn merge_global_windows<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, String> {
    let mut windows: BTreeMap<(i64, i64), Vec<(String, Acc)>> = BTreeMap::new();
    for line in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let rec = serde_json::from_slice::<InOrder>(line)
            .map_err(|e| format!("not a global window record ({e})"))?
            .0;
        let get = |k: &str| -> Result<i64, String> {
            rec.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.get().parse().ok())
                .ok_or_else(|| format!("global window record without integer `{k}`"))
        };
        let key = (get("window_start")?, get("window_end")?);
        let acc = windows.entry(key).or_default();
        for (name, v) in &rec {
            if name == "window_start" || name == "window_end" {
                continue;
            }
            let text = v.get();
            let add = if MONEY.contains(&name.as_str()) {
                Acc::Money(Money::parse_str(text).map_err(|e| format!("`{name}`: {e:?}"))?)
            } else {
                Acc::Int(
                    text.parse()
                        .map_err(|_| format!("`{name}`: expected an integer, got {text}"))?,
                )
            };
            match acc.iter_mut().find(|(n, _)| n == name) {
                Some((_, a)) => match (a, add) {
                    (Acc::Int(x), Acc::Int(y)) => *x += y,
                    (Acc::Money(x), Acc::Money(y)) => *x += y,
                    _ => return Err(format!("`{name}` changes type between records")),
                },
                None => acc.push((name.clone(), add)),
            }
        }
    }
    let mut out = Vec::new();
    for ((start, end), fields) in windows {
        out.extend_from_slice(
            format!("{{\"window_start\":{start},\"window_end\":{end}").as_bytes(),
        );
        for (name, a) in fields {
            out.extend_from_slice(format!(",\"{name}\":").as_bytes());
            match a {
                Acc::Int(v) => out.extend_from_slice(v.to_string().as_bytes()),
                Acc::Money(m) => m.write_json(&mut out),
            }
        }
        out.extend_from_slice(b"}\n");
    }
    Ok(out)
}

/// A JSON object's members in their order, values kept as raw text.
struct InOrder(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = InOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Box<RawValue>>()? {
                    v.push((k, val));
                }
                Ok(InOrder(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_sum_exactly_per_window_in_window_order() {
        let a = br#"{"window_start":60,"window_end":120,"events":2,"distinct_users":1,"value_added":0.1,"active_carts":1}"#;
        let b = br#"{"window_start":0,"window_end":60,"events":1,"distinct_users":1,"value_added":19.99,"active_carts":0}"#;
        let c = br#"{"window_start":60,"window_end":120,"events":3,"distinct_users":2,"value_added":0.2,"active_carts":2}"#;
        let out = merge_global_windows([&a[..], &b[..], &c[..]]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"window_start\":0,\"window_end\":60,\"events\":1,\"distinct_users\":1,\"value_added\":19.99,\"active_carts\":0}\n\
             {\"window_start\":60,\"window_end\":120,\"events\":5,\"distinct_users\":3,\"value_added\":0.3,\"active_carts\":3}\n"
        );
    }

    #[test]
    fn a_record_that_is_not_a_window_is_an_error() {
        assert!(merge_global_windows([&b"{\"events\":1}"[..]]).is_err());
        assert!(merge_global_windows([&b"nope"[..]]).is_err());
    }
}
