//! Whole-stream properties: the guarantees consumers rely on.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::*;

fn generate(cfg: GenConfig) -> (Vec<u8>, Generator) {
    let mut g = Generator::new(cfg).unwrap();
    let mut buf = Vec::new();
    while g.next_line(&mut buf).is_some() {}
    (buf, g)
}

fn lines(buf: &[u8]) -> Vec<&str> {
    let s = std::str::from_utf8(buf).unwrap();
    assert!(s.ends_with('\n'));
    s.lines().collect()
}

/// Keys in textual order (serde_json's map does not preserve it).
fn keys(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while let Some(off) = line[i..].find("\":") {
        let end = i + off;
        let start = line[..end].rfind('"').unwrap() + 1;
        assert!(b[start - 2] == b'{' || b[start - 2] == b',', "{line}");
        out.push(&line[start..end]);
        i = end + 2;
    }
    out
}

/// Cheap field access for tests that scan hundreds of thousands of lines.
fn event_id(line: &str) -> &str {
    &line[13..25]
}

fn ts_of(line: &str) -> i64 {
    let rest = &line[line.find("\"ts\":").unwrap() + 5..];
    rest[..rest.find(',').unwrap()].parse().unwrap()
}

fn id_num(v: &Value, key: &str) -> u64 {
    v[key].as_str().unwrap()[1..].parse().unwrap()
}

/// A mid-sized stream shared by several tests.
fn stream_cfg() -> GenConfig {
    GenConfig {
        seed: 7,
        events: 200_000,
        users: 20_000,
        products: 5_000,
        categories: 100,
        // Slow enough that 200k events span ~11 minutes, several session
        // lengths, so funnels complete and abnormal actors get to act.
        events_per_sec: 250.0,
        hoarder_rate: 0.005,
        click_farm_rate: 0.005,
        bot_rate: 0.005,
        ..GenConfig::default()
    }
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() {
    let cfg = GenConfig {
        events: 30_000,
        users: 20_000,
        products: 2_000,
        ..GenConfig::default()
    };
    let (a, ga) = generate(cfg.clone());
    let (b, gb) = generate(cfg.clone());
    assert_eq!(a, b);
    assert_eq!(ga.ground_truth(), gb.ground_truth());
    let (c, _) = generate(GenConfig { seed: 43, ..cfg });
    assert_ne!(a, c);
    assert_eq!(lines(&a).len(), 30_000);
}

#[test]
fn disorder_settings_do_not_change_behaviour() {
    // Transport flaws use their own random stream: with them switched off
    // the same logical events come out, just in order and once.
    let cfg = GenConfig {
        events: 20_000,
        users: 20_000,
        products: 2_000,
        ..GenConfig::default()
    };
    let (a, _) = generate(cfg.clone());
    let (b, _) = generate(GenConfig {
        out_of_order_rate: 0.0,
        duplicate_rate: 0.0,
        ..cfg
    });
    let ids = |buf: &[u8]| -> HashSet<String> {
        lines(buf)
            .iter()
            .map(|l| event_id(l).to_string())
            .collect::<HashSet<_>>()
    };
    let (ia, ib) = (ids(&a), ids(&b));
    let common = ia.intersection(&ib).count();
    assert!(common as f64 > 0.97 * ib.len() as f64, "{common}");
    let la: HashSet<&str> = lines(&a).into_iter().collect();
    let shared = lines(&b).iter().filter(|l| la.contains(*l)).count();
    assert!(shared as f64 > 0.97 * ib.len() as f64);
}

#[test]
fn every_line_is_well_formed() {
    let (buf, g) = generate(stream_cfg());
    let catalog: HashMap<&str, &Product> =
        g.catalog().iter().map(|p| (p.sku.as_str(), p)).collect();
    let item_keys = [
        "event_id",
        "ts",
        "user_id",
        "session_id",
        "action",
        "sku",
        "qty",
        "price",
        "category",
        "device_id",
        "ip",
    ];
    let checkout_keys = [
        "event_id",
        "ts",
        "user_id",
        "session_id",
        "action",
        "order_id",
        "device_id",
        "ip",
    ];
    let mut actions: HashMap<String, u64> = HashMap::new();
    let start = g.config().start_ms;
    for line in lines(&buf) {
        assert!(!line.contains(' '), "{line}");
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let action = v["action"].as_str().unwrap();
        *actions.entry(action.to_string()).or_default() += 1;
        assert!(v["ts"].as_i64().unwrap() >= start);
        for (k, p) in [
            ("event_id", 'e'),
            ("user_id", 'u'),
            ("session_id", 's'),
            ("device_id", 'd'),
        ] {
            let s = v[k].as_str().unwrap();
            assert!(s.starts_with(p) && s[1..].bytes().all(|b| b.is_ascii_digit()));
        }
        let ip = v["ip"].as_str().unwrap();
        let oct: Vec<u32> = ip.split('.').map(|o| o.parse().unwrap()).collect();
        assert!(oct.len() == 4 && oct[0] == 10 && oct.iter().all(|&o| o < 256));
        if action == "checkout" {
            assert_eq!(keys(line), checkout_keys);
            assert!(v["order_id"].as_str().unwrap().starts_with('o'));
            continue;
        }
        assert!(
            matches!(action, "view" | "add" | "remove" | "update_qty"),
            "{action}"
        );
        assert_eq!(keys(line), item_keys);
        assert!(v["qty"].as_u64().unwrap() > 0);
        if action == "view" {
            assert_eq!(v["qty"].as_u64(), Some(1));
        }
        let price_text = line.split("\"price\":").nth(1).unwrap();
        let price_text = &price_text[..price_text.find(',').unwrap()];
        if let Some((int, frac)) = price_text.split_once('.') {
            assert!(!int.is_empty() && (1..=2).contains(&frac.len()), "{line}");
            assert!(!frac.ends_with('0'), "{line}");
        }
        assert!(v["price"].as_f64().unwrap() > 0.0);
        let sku = v["sku"].as_str().unwrap();
        assert_eq!(catalog[sku].category, v["category"].as_str().unwrap());
    }
    for a in ["view", "add", "remove", "update_qty", "checkout"] {
        assert!(actions.get(a).copied().unwrap_or(0) > 100, "{actions:?}");
    }
    // Funnel shape: mostly views, adds well ahead of removes.
    assert!(actions["view"] > actions["add"]);
    assert!(actions["add"] > 2 * actions["remove"]);
    assert!(actions["add"] > actions["checkout"]);
}

#[test]
fn lateness_is_bounded_and_rates_match() {
    let cfg = GenConfig {
        events: 300_000,
        ..stream_cfg()
    };
    let max_delay = cfg.max_delay_ms;
    let (buf, g) = generate(cfg.clone());
    let mut first: HashMap<&str, &str> = HashMap::new();
    let mut max_ts = 0;
    let (mut originals, mut disordered, mut dups) = (0u64, 0u64, 0u64);
    for line in lines(&buf) {
        let id = event_id(line);
        let ts = ts_of(line);
        if let Some(orig) = first.get(id) {
            assert_eq!(*orig, line, "duplicate must be byte-identical");
            dups += 1;
            assert!(ts >= max_ts - max_delay - 5000, "{line} vs max {max_ts}");
        } else {
            first.insert(id, line);
            originals += 1;
            assert!(ts >= max_ts - max_delay, "{line} vs max {max_ts}");
            if ts < max_ts {
                disordered += 1;
            }
        }
        max_ts = max_ts.max(ts);
    }
    let n = cfg.events as f64;
    let frac = disordered as f64 / originals as f64;
    assert!(
        (0.007..=0.013).contains(&frac),
        "disordered fraction {frac}"
    );
    assert!((200..=400).contains(&dups), "duplicates {dups} for {n}");
    let st = g.stats();
    assert_eq!(st.events, cfg.events);
    assert_eq!(st.duplicates, dups);
    assert!(st.delayed >= disordered);
    assert_eq!(st.bytes, buf.len() as u64);
}

#[test]
fn duplicates_follow_within_five_seconds() {
    let cfg = GenConfig {
        events: 100_000,
        duplicate_rate: 0.01,
        ..stream_cfg()
    };
    let (buf, _) = generate(cfg);
    let mut first: HashMap<&str, i64> = HashMap::new();
    let mut max_ts = 0;
    let mut n = 0;
    for line in lines(&buf) {
        let ts = ts_of(line);
        let id = event_id(line);
        if first.contains_key(id) {
            n += 1;
            // Re-sent at least a second after the original's emit time.
            assert!(max_ts >= ts + 1000 - 50, "{line}");
        } else {
            first.insert(id, ts);
        }
        max_ts = max_ts.max(ts);
    }
    assert!((800..=1200).contains(&n), "{n}");
}

#[test]
fn event_rate_follows_config() {
    let cfg = GenConfig {
        events: 100_000,
        out_of_order_rate: 0.0,
        duplicate_rate: 0.0,
        ..GenConfig::default()
    };
    let (buf, g) = generate(cfg.clone());
    let ls = lines(&buf);
    let ts = ts_of;
    let span_s = (ts(ls[ls.len() - 1]) - ts(ls[0])) as f64 / 1000.0;
    // 16:00 UTC sits where the daily curve is 1 + 0.4 * cos(-4h) = 1.2.
    let expect = cfg.events as f64 / (cfg.events_per_sec * 1.2);
    assert!(
        (span_s / expect - 1.0).abs() < 0.2,
        "span {span_s}s, expected about {expect}s"
    );
    // In order when disorder is off.
    assert!(ls.windows(2).all(|w| ts(w[0]) <= ts(w[1])));
    assert_eq!(g.stats().delayed + g.stats().duplicates, 0);
}

struct Parsed {
    id: u64,
    user: String,
    session: String,
    action: String,
    sku: String,
    qty: u64,
    price: Option<f64>,
    device: String,
    ip: String,
    ts: i64,
}

fn parse_all(buf: &[u8]) -> Vec<Parsed> {
    let mut seen = HashSet::new();
    let mut out: Vec<Parsed> = lines(buf)
        .iter()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let id = id_num(&v, "event_id");
            seen.insert(id).then(|| Parsed {
                id,
                user: v["user_id"].as_str().unwrap().to_string(),
                session: v["session_id"].as_str().unwrap().to_string(),
                action: v["action"].as_str().unwrap().to_string(),
                sku: v["sku"].as_str().unwrap_or("").to_string(),
                qty: v["qty"].as_u64().unwrap_or(0),
                price: v["price"].as_f64(),
                device: v["device_id"].as_str().unwrap().to_string(),
                ip: v["ip"].as_str().unwrap().to_string(),
                ts: v["ts"].as_i64().unwrap(),
            })
        })
        .collect();
    // Generation order; only the gap-free prefix, since lines still held back
    // when the stream stopped were never written.
    out.sort_by_key(|p| p.id);
    let prefix = out
        .iter()
        .enumerate()
        .take_while(|(i, p)| p.id == *i as u64)
        .count();
    out.truncate(prefix);
    out
}

/// Replays cart operations per user in generation order, panicking on any
/// impossible operation; returns the number of checkouts.
fn replay_carts(events: &[Parsed]) -> u32 {
    let mut carts: HashMap<&str, HashMap<&str, u64>> = HashMap::new();
    let mut checkouts = 0;
    for e in events {
        let cart = carts.entry(&e.user).or_default();
        match e.action.as_str() {
            "add" => *cart.entry(&e.sku).or_default() += e.qty,
            "remove" => {
                let have = cart.get_mut(e.sku.as_str()).unwrap_or_else(|| {
                    panic!("e{} removes {} not in {}'s cart", e.id, e.sku, e.user)
                });
                assert!(*have >= e.qty, "e{} removes {} of {}", e.id, e.qty, have);
                *have -= e.qty;
                if *have == 0 {
                    cart.remove(e.sku.as_str());
                }
            }
            "update_qty" => {
                let have = cart
                    .get_mut(e.sku.as_str())
                    .unwrap_or_else(|| panic!("e{} updates a missing line", e.id));
                assert!(e.qty > 0);
                *have = e.qty;
            }
            "checkout" => {
                assert!(!cart.is_empty(), "e{} checks out an empty cart", e.id);
                cart.clear();
                checkouts += 1;
            }
            _ => {}
        }
    }
    checkouts
}

#[test]
fn carts_replay_without_going_negative() {
    let (buf, g) = generate(stream_cfg());
    let events = parse_all(&buf);
    assert!(events.len() > 190_000);
    let checkouts = replay_carts(&events);
    assert!(checkouts > 100);

    // Checkout share of normal shopping sessions (those that added).
    let truth = g.ground_truth();
    let abnormal: HashSet<&str> = truth
        .hoarders
        .iter()
        .chain(&truth.click_farmers)
        .chain(&truth.bots)
        .map(String::as_str)
        .collect();
    let first_ts = events[0].ts;
    let mut sessions: HashMap<&str, (i64, bool, bool)> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| !abnormal.contains(e.user.as_str()))
    {
        let s = sessions.entry(&e.session).or_insert((e.ts, false, false));
        s.1 |= e.action == "add";
        s.2 |= e.action == "checkout";
    }
    let horizon = first_ts + (events.last().unwrap().ts - first_ts) / 2;
    let (mut added, mut bought) = (0, 0);
    for (start, add, co) in sessions.values() {
        if *start < horizon && *add {
            added += 1;
            bought += *co as u32;
        }
    }
    let rate = bought as f64 / added as f64;
    assert!((0.2..=0.4).contains(&rate), "checkout rate {rate}");
}

#[test]
fn ground_truth_matches_stream() {
    let (buf, g) = generate(stream_cfg());
    let truth = g.ground_truth();
    let events = parse_all(&buf);
    assert!(!truth.hoarders.is_empty());
    assert!(!truth.bots.is_empty());
    assert!(truth.click_farms.len() >= 2);
    assert!(!truth.price_changes.is_empty());

    let mut by_user: HashMap<&str, Vec<&Parsed>> = HashMap::new();
    for e in &events {
        by_user.entry(&e.user).or_default().push(e);
    }
    let all_users: HashSet<String> = lines(&buf)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["user_id"].as_str().unwrap().to_string()
        })
        .collect();
    for u in truth
        .hoarders
        .iter()
        .chain(&truth.click_farmers)
        .chain(&truth.bots)
    {
        assert!(all_users.contains(u), "{u} listed but never seen");
    }
    let abnormal: HashSet<&str> = truth
        .hoarders
        .iter()
        .chain(&truth.click_farmers)
        .chain(&truth.bots)
        .map(String::as_str)
        .collect();

    // Farms: every line of every account uses the farm's device and IP, and
    // no normal user shares that device.
    let mut farm_devices = HashSet::new();
    for farm in &truth.click_farms {
        assert!(farm.accounts.len() >= 2 || truth.click_farms.len() > 1);
        farm_devices.insert(farm.device_id.as_str());
        let skus: HashSet<&str> = farm.skus.iter().map(String::as_str).collect();
        for acc in &farm.accounts {
            for e in by_user.get(acc.as_str()).into_iter().flatten() {
                assert_eq!(e.device, farm.device_id);
                assert_eq!(e.ip, farm.ip);
                if e.action != "checkout" {
                    assert!(skus.contains(e.sku.as_str()));
                }
            }
        }
    }
    // Normal users: one or two devices each, never shared with anyone.
    let mut device_owner: HashMap<&str, &str> = HashMap::new();
    let mut devices_per_user: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut ip_users: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in &events {
        if farm_devices.contains(e.device.as_str()) {
            assert!(abnormal.contains(e.user.as_str()));
            continue;
        }
        let owner = device_owner.entry(&e.device).or_insert(&e.user);
        assert_eq!(*owner, e.user, "device {} shared", e.device);
        devices_per_user
            .entry(&e.user)
            .or_default()
            .insert(&e.device);
        ip_users.entry(&e.ip).or_default().insert(&e.user);
    }
    assert!(devices_per_user.values().all(|d| d.len() <= 2));
    let shared_ips = ip_users.values().filter(|u| u.len() > 1).count();
    assert!((shared_ips as f64) < 0.1 * ip_users.len() as f64);
    assert!(ip_users.values().all(|u| u.len() <= 3));

    // Behaviour: hoarders add implausible amounts, normal users do not.
    // (An actor whose only lines came after the replayable prefix has none
    // here.)
    let max_add = |u: &str| {
        by_user
            .get(u)
            .into_iter()
            .flatten()
            .filter(|e| e.action == "add")
            .map(|e| e.qty)
            .max()
            .unwrap_or(0)
    };
    let big = truth.hoarders.iter().filter(|h| max_add(h) >= 20).count();
    assert!(
        big * 2 >= truth.hoarders.len(),
        "{big} of {}",
        truth.hoarders.len()
    );
    for (u, evs) in &by_user {
        if !abnormal.contains(u) {
            assert!(evs.iter().all(|e| e.action != "add" || e.qty <= 3));
        }
    }
    // Bots: sustained several events per second.
    for b in &truth.bots {
        let Some(evs) = by_user.get(b.as_str()) else {
            continue;
        };
        let fast = evs.windows(2).filter(|w| w[1].ts - w[0].ts <= 200).count();
        assert!(fast * 2 >= evs.len().saturating_sub(1), "{b}");
    }
    // Humans never click twice within 800 ms.
    for (u, evs) in &by_user {
        if !abnormal.contains(u) {
            for w in evs.windows(2) {
                if w[0].session == w[1].session {
                    assert!(w[1].ts - w[0].ts >= 800, "{u}");
                }
            }
        }
    }
}

#[test]
fn prices_follow_price_changes() {
    let cfg = GenConfig {
        price_change_rate: 0.002,
        ..stream_cfg()
    };
    let (buf, g) = generate(cfg);
    let truth = g.ground_truth();
    assert!(truth.price_changes.len() > 100);
    // Undo the changes to recover the opening prices.
    let mut price: HashMap<String, i64> = g
        .catalog()
        .iter()
        .map(|p| (p.sku.clone(), p.price_cents))
        .collect();
    for c in truth.price_changes.iter().rev() {
        assert_eq!(price[&c.sku], c.new_price_cents);
        assert_ne!(c.old_price_cents, c.new_price_cents);
        price.insert(c.sku.clone(), c.old_price_cents);
    }
    let mut changes = truth.price_changes.iter().peekable();
    let mut changed_seen = 0;
    for e in parse_all(&buf) {
        while let Some(c) = changes.peek() {
            if c.from_event_id[1..].parse::<u64>().unwrap() <= e.id {
                price.insert(c.sku.clone(), c.new_price_cents);
                changes.next();
            } else {
                break;
            }
        }
        if let Some(p) = e.price {
            let cents = price[&e.sku];
            assert!(
                (p * 100.0 - cents as f64).abs() < 1e-6,
                "e{}: {p} vs {cents}",
                e.id
            );
            changed_seen += truth.price_changes.iter().any(|c| c.sku == e.sku) as u32;
        }
    }
    assert!(changed_seen > 0);
}

#[test]
fn small_population_still_meets_rate_with_valid_carts() {
    // 2000 users cannot keep 2000 events/s going one session at a time;
    // users then open concurrent sessions on one shared cart.
    let cfg = GenConfig {
        events: 100_000,
        users: 2_000,
        products: 1_000,
        out_of_order_rate: 0.0,
        duplicate_rate: 0.0,
        ..GenConfig::default()
    };
    let (buf, _) = generate(cfg.clone());
    let events = parse_all(&buf);
    assert_eq!(events.len(), 100_000);
    let span_s = (events.last().unwrap().ts - events[0].ts) as f64 / 1000.0;
    let expect = cfg.events as f64 / (cfg.events_per_sec * 1.2);
    assert!(
        (span_s / expect - 1.0).abs() < 0.2,
        "span {span_s}s vs {expect}s"
    );
    assert!(replay_carts(&events) > 100);
}

#[test]
fn unbounded_stream_keeps_going() {
    let mut g = Generator::new(GenConfig {
        events: 0,
        users: 5_000,
        products: 500,
        ..GenConfig::default()
    })
    .unwrap();
    let mut buf = Vec::new();
    for _ in 0..50_000 {
        assert!(g.next_line(&mut buf).is_some());
    }
    assert_eq!(g.stats().events, 50_000);
}

#[test]
fn tiny_populations_work() {
    let (buf, _) = generate(GenConfig {
        events: 5_000,
        users: 3,
        products: 1,
        categories: 4,
        ..GenConfig::default()
    });
    assert_eq!(lines(&buf).len(), 5_000);
}

#[test]
fn write_file_writes_stream_and_truth() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let truth = dir.path().join("truth.json");
    let cfg = GenConfig {
        events: 20_000,
        ..stream_cfg()
    };
    let stats = write_file(cfg.clone(), &out, Some(&truth)).unwrap();
    let (mem, g) = generate(cfg.clone());
    assert_eq!(std::fs::read(&out).unwrap(), mem);
    assert_eq!(stats.events, 20_000);
    assert_eq!(stats.bytes, mem.len() as u64);
    let t: GroundTruth = serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
    assert_eq!(t, g.ground_truth());
    let unbounded = GenConfig { events: 0, ..cfg };
    assert!(matches!(
        write_file(unbounded, &out, None),
        Err(GenError::InvalidConfig(_))
    ));
}
