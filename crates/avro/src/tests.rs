use crate::encode::{confluent_frame, event_datum};
use crate::*;
use apache_avro::types::Value;
use apache_avro::Schema;
use cartpulse_model::{Action, CartEvent, DecodeError, DecodeOptions, Money, RecordDecoder};
use proptest::prelude::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A producer's first schema: no `currency`, `qty` an `int`, `ts` a plain `long`, price a
/// decimal with two places.
const V1: &str = r#"{"type":"record","name":"Cart","namespace":"shop","fields":[
  {"name":"event_id","type":"string"},
  {"name":"ts","type":"long"},
  {"name":"user_id","type":"string"},
  {"name":"action","type":"string"},
  {"name":"sku","type":["null","string"],"default":null},
  {"name":"qty","type":["null","int"],"default":null},
  {"name":"price","type":["null",{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}],"default":null}
]}"#;

/// Its successor: a `coupon` field cartpulse does not know, `currency` added, `qty` a long.
const V2: &str = r#"{"type":"record","name":"Cart","namespace":"shop","fields":[
  {"name":"event_id","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"user_id","type":"string"},
  {"name":"action","type":"string"},
  {"name":"sku","type":["null","string"],"default":null},
  {"name":"qty","type":["null","long"],"default":null},
  {"name":"price","type":["null",{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}],"default":null},
  {"name":"coupon","type":{"type":"record","name":"Coupon","fields":[{"name":"code","type":"string"}]}},
  {"name":"currency","type":"string","default":"USD"}
]}"#;

fn s(text: &str) -> Schema {
    Schema::parse_str(text).unwrap()
}

fn u<T>(i: u32, v: T) -> Value
where
    Value: From<T>,
{
    Value::Union(i, Box::new(Value::from(v)))
}

fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn v1(id: &str, action: &str, qty: Option<i32>, cents: Option<i64>) -> Vec<u8> {
    let rec = Value::Record(vec![
        ("event_id".into(), id.into()),
        ("ts".into(), Value::Long(1_764_000_000_123)),
        ("user_id".into(), "u1".into()),
        ("action".into(), action.into()),
        ("sku".into(), u(1, "p1")),
        ("qty".into(), qty.map_or_else(null, |q| u(1, q))),
        (
            "price".into(),
            cents.map_or_else(null, |c| {
                Value::Union(1, Box::new(Value::Decimal(encode::decimal_bytes(c))))
            }),
        ),
    ]);
    apache_avro::to_avro_datum(&s(V1), rec).unwrap()
}

fn v2(id: &str, currency: &str) -> Vec<u8> {
    let rec = Value::Record(vec![
        ("event_id".into(), id.into()),
        ("ts".into(), Value::TimestampMillis(1_764_000_000_456)),
        ("user_id".into(), "u2".into()),
        ("action".into(), "add".into()),
        ("sku".into(), u(1, "p2")),
        ("qty".into(), u(1, 3i64)),
        (
            "price".into(),
            Value::Union(1, Box::new(Value::Decimal(encode::decimal_bytes(1999)))),
        ),
        (
            "coupon".into(),
            Value::Record(vec![("code".into(), "XMAS".into())]),
        ),
        ("currency".into(), currency.into()),
    ]);
    apache_avro::to_avro_datum(&s(V2), rec).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn decoder(cfg: AvroConfig) -> AvroDecoder {
    AvroDecoder::new(&cfg, DecodeOptions::default()).unwrap()
}

fn dir_with_v1_v2() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "1.avsc", V1);
    write(d.path(), "2.avsc", V2);
    write(d.path(), "notes.txt", "not a schema, not looked at");
    d
}

fn by_dir(d: &Path) -> AvroDecoder {
    decoder(AvroConfig {
        schema_dir: Some(d.to_path_buf()),
        ..Default::default()
    })
}

fn event() -> CartEvent {
    CartEvent {
        event_id: "e1".into(),
        ts: 1_764_000_000_123,
        user_id: "u1".into(),
        session_id: Some("s1".into()),
        action: Action::Add,
        sku: Some("p1".into()),
        qty: Some(2),
        price: Some(Money(199_900)),
        category: Some("c1".into()),
        device_id: None,
        ip: Some("10.0.0.1".into()),
        order_id: None,
        currency: Some("EUR".into()),
        product: None,
        user: None,
    }
}

#[test]
fn plain_wire_with_a_schema_file() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "cart.avsc", CART_EVENT_WRITER_SCHEMA);
    let dec = decoder(AvroConfig {
        wire: Wire::Plain,
        schema_file: Some(f),
        ..Default::default()
    });
    let e = event();
    assert_eq!(dec.decode(&event_datum(&e)).unwrap(), e);
}

#[test]
fn confluent_wire_from_a_schema_directory_with_two_versions() {
    let d = dir_with_v1_v2();
    let dec = by_dir(d.path());
    let a = dec
        .decode(&confluent_frame(1, &v1("a", "add", Some(2), Some(1999))))
        .unwrap();
    assert_eq!(a.event_id, "a");
    assert_eq!(a.ts, 1_764_000_000_123);
    assert_eq!(a.qty, Some(2));
    // scale 2 on the wire, four places in Money: 19.99 exactly
    assert_eq!(a.price, Some(Money(199_900)));
    assert_eq!(a.currency, None);
    let b = dec.decode(&confluent_frame(2, &v2("b", "GBP"))).unwrap();
    assert_eq!(b.event_id, "b");
    assert_eq!(b.ts, 1_764_000_000_456);
    assert_eq!(b.user_id, "u2");
    assert_eq!(b.qty, Some(3));
    assert_eq!(b.price, Some(Money(199_900)));
    assert_eq!(b.currency.as_deref(), Some("GBP"));
}

#[test]
fn schema_evolution_follows_avro_resolution() {
    // a reader that knows `currency` with a default: v1 (without it) gets the default,
    // v2 (with it, plus a field the reader does not know) keeps its own value
    let d = dir_with_v1_v2();
    let reader = CART_EVENT_READER_SCHEMA.replace(
        r#"{"name": "currency", "type": ["null", "string"], "default": null}"#,
        r#"{"name": "currency", "type": ["string", "null"], "default": "EUR"}"#,
    );
    assert_ne!(reader, CART_EVENT_READER_SCHEMA);
    let r = write(d.path(), "reader.json", &reader);
    let dec = decoder(AvroConfig {
        schema_dir: Some(d.path().to_path_buf()),
        reader_schema: Some(r),
        ..Default::default()
    });
    let a = dec
        .decode(&confluent_frame(1, &v1("a", "view", None, None)))
        .unwrap();
    assert_eq!(a.currency.as_deref(), Some("EUR"));
    assert_eq!(a.price, None);
    let b = dec.decode(&confluent_frame(2, &v2("b", "GBP"))).unwrap();
    assert_eq!(b.currency.as_deref(), Some("GBP"));
}

#[test]
fn missing_values_follow_the_json_rules() {
    let d = dir_with_v1_v2();
    let dec = by_dir(d.path());
    let code = |b: Vec<u8>| dec.decode(&confluent_frame(1, &b)).unwrap_err().code();
    assert_eq!(code(v1("a", "add", None, None)), "missing_field");
    assert_eq!(code(v1("a", "update_qty", None, None)), "missing_field");
    assert_eq!(code(v1("a", "buy", Some(1), None)), "unknown_action");
    assert_eq!(code(v1("a", "add", Some(-1), None)), "negative_qty");
    assert_eq!(code(v1("a", "add", Some(1), Some(-5))), "invalid_price");
    // the same record as JSON fails the same way
    let json = r#"{"event_id":"a","ts":1,"user_id":"u1","action":"add","sku":"p1"}"#;
    assert_eq!(
        cartpulse_model::decode_json(json.as_bytes(), &DecodeOptions::default())
            .unwrap_err()
            .code(),
        "missing_field"
    );
    // and a default quantity applies alike
    let dec = AvroDecoder::new(
        &AvroConfig {
            schema_dir: Some(d.path().to_path_buf()),
            ..Default::default()
        },
        DecodeOptions {
            default_qty: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let e = dec
        .decode(&confluent_frame(1, &v1("a", "add", None, None)))
        .unwrap();
    assert_eq!(e.qty, Some(1));
    // an empty event id gets the content id, as in JSON
    let e = dec
        .decode(&confluent_frame(1, &v1("", "view", None, None)))
        .unwrap();
    assert!(e.event_id.starts_with('g'), "{}", e.event_id);
}

#[test]
fn writer_without_a_required_field_is_a_missing_field() {
    let d = tempfile::tempdir().unwrap();
    let no_ts = r#"{"type":"record","name":"X","fields":[
      {"name":"user_id","type":"string"},{"name":"action","type":"string"},{"name":"sku","type":"string"}]}"#;
    write(d.path(), "5.avsc", no_ts);
    let dec = by_dir(d.path());
    let rec = Value::Record(vec![
        ("user_id".into(), "u".into()),
        ("action".into(), "view".into()),
        ("sku".into(), "p".into()),
    ]);
    let datum = apache_avro::to_avro_datum(&s(no_ts), rec).unwrap();
    let err = dec.decode(&confluent_frame(5, &datum)).unwrap_err();
    assert_eq!(err, DecodeError::MissingField("ts"));
}

#[test]
fn bad_bytes_are_dead_letters_with_a_reason() {
    let d = dir_with_v1_v2();
    let dec = by_dir(d.path());
    let good = confluent_frame(1, &v1("a", "add", Some(2), Some(1999)));
    let code = |b: &[u8]| dec.decode(b).unwrap_err().code();
    assert_eq!(code(&good[..good.len() - 3]), "avro_malformed");
    assert_eq!(code(&good[..6]), "avro_malformed");
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"xx");
    assert_eq!(code(&trailing), "avro_malformed");
    assert_eq!(code(b"{\"json\":true}"), "avro_bad_magic");
    assert_eq!(code(&[0, 0, 0]), "avro_bad_magic");
    assert_eq!(code(b""), "avro_bad_magic");
    // a v1 datum under v2's id: fails somewhere, never panics
    let wrong = confluent_frame(2, &v1("a", "add", Some(2), Some(1999)));
    assert!(dec.decode(&wrong).is_err());
    // huge length prefixes do not allocate
    let mut huge = vec![0, 0, 0, 0, 1];
    huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
    assert_eq!(code(&huge), "avro_malformed");
    let opts = DecodeOptions {
        max_record_bytes: 8,
        ..Default::default()
    };
    let small = AvroDecoder::new(
        &AvroConfig {
            schema_dir: Some(d.path().to_path_buf()),
            ..Default::default()
        },
        opts,
    )
    .unwrap();
    assert_eq!(small.decode(&good).unwrap_err().code(), "too_long");
}

#[test]
fn unknown_schema_id() {
    let d = dir_with_v1_v2();
    let dec = by_dir(d.path());
    let err = dec
        .decode(&confluent_frame(9, &v1("a", "view", None, None)))
        .unwrap_err();
    assert_eq!(err.code(), "avro_unknown_schema");
    assert!(err.to_string().contains("9.avsc"), "{err}");
}

#[test]
fn a_schema_dropped_into_the_directory_later_is_found() {
    let d = tempfile::tempdir().unwrap();
    let dec = decoder(AvroConfig {
        schema_dir: Some(d.path().to_path_buf()),
        retry_unknown_after: std::time::Duration::ZERO,
        ..Default::default()
    });
    let msg = confluent_frame(7, &v1("a", "view", None, None));
    assert_eq!(dec.decode(&msg).unwrap_err().code(), "avro_unknown_schema");
    write(d.path(), "7.avsc", V1);
    assert_eq!(dec.decode(&msg).unwrap().event_id, "a");
}

#[test]
fn incompatible_writer_types() {
    let d = tempfile::tempdir().unwrap();
    let odd = r#"{"type":"record","name":"X","fields":[
      {"name":"ts","type":"long"},{"name":"user_id","type":"string"},{"name":"action","type":"string"},
      {"name":"sku","type":"string"},{"name":"qty","type":"boolean"}]}"#;
    write(d.path(), "3.avsc", odd);
    let dec = by_dir(d.path());
    let rec = Value::Record(vec![
        ("ts".into(), Value::Long(1)),
        ("user_id".into(), "u".into()),
        ("action".into(), "add".into()),
        ("sku".into(), "p".into()),
        ("qty".into(), Value::Boolean(true)),
    ]);
    let datum = apache_avro::to_avro_datum(&s(odd), rec).unwrap();
    let err = dec.decode(&confluent_frame(3, &datum)).unwrap_err();
    assert_eq!(err.code(), "avro_incompatible", "{err}");
}

#[test]
fn decimals_are_exact_in_any_scale() {
    use crate::decode::decimal_text;
    assert_eq!(decimal_text(&[0x07, 0xd0], 2).unwrap(), "20.00");
    assert_eq!(decimal_text(&[0xff], 4).unwrap(), "-0.0001");
    assert_eq!(decimal_text(&[0x05], 0).unwrap(), "5");
    assert_eq!(decimal_text(&[0x00, 0x05], 3).unwrap(), "0.005");
    let mut wide = vec![0u8; 20];
    wide[19] = 1;
    assert_eq!(decimal_text(&wide, 1).unwrap(), "0.1");
    let mut big = vec![0u8; 20];
    big[0] = 1;
    assert_eq!(decimal_text(&big, 1).unwrap_err().code(), "invalid_price");

    // six places on the wire: exact when the extra digits are zero, an error otherwise
    let d = tempfile::tempdir().unwrap();
    let six = r#"{"type":"record","name":"X","fields":[
      {"name":"ts","type":"long"},{"name":"user_id","type":"string"},{"name":"action","type":"string"},
      {"name":"sku","type":"string"},{"name":"qty","type":"int"},
      {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":6}}]}"#;
    write(d.path(), "6.avsc", six);
    let dec = by_dir(d.path());
    let msg = |unscaled: i64| {
        let rec = Value::Record(vec![
            ("ts".into(), Value::Long(1)),
            ("user_id".into(), "u".into()),
            ("action".into(), "add".into()),
            ("sku".into(), "p".into()),
            ("qty".into(), Value::Int(1)),
            (
                "price".into(),
                Value::Decimal(encode::decimal_bytes(unscaled)),
            ),
        ]);
        confluent_frame(6, &apache_avro::to_avro_datum(&s(six), rec).unwrap())
    };
    assert_eq!(
        dec.decode(&msg(19_990_000)).unwrap().price,
        Some(Money(199_900))
    );
    assert_eq!(
        dec.decode(&msg(19_990_001)).unwrap_err().code(),
        "invalid_price"
    );
}

#[test]
fn other_writer_representations() {
    // ids as numbers, action as an enum, ts in micros, price as a double or a string
    let d = tempfile::tempdir().unwrap();
    let other = r#"{"type":"record","name":"X","fields":[
      {"name":"event_id","type":"long"},
      {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
      {"name":"user_id","type":"int"},
      {"name":"action","type":{"type":"enum","name":"A","symbols":["view","add","wishlist"]}},
      {"name":"sku","type":"string"},{"name":"qty","type":"float"},
      {"name":"price","type":["double","string"]}]}"#;
    write(d.path(), "8.avsc", other);
    let dec = by_dir(d.path());
    let msg = |action: (u32, &str), price: Value| {
        let rec = Value::Record(vec![
            ("event_id".into(), Value::Long(42)),
            ("ts".into(), Value::TimestampMicros(1_764_000_000_123_456)),
            ("user_id".into(), Value::Int(7)),
            ("action".into(), Value::Enum(action.0, action.1.into())),
            ("sku".into(), "p".into()),
            ("qty".into(), Value::Float(2.0)),
            ("price".into(), price),
        ]);
        confluent_frame(8, &apache_avro::to_avro_datum(&s(other), rec).unwrap())
    };
    let e = dec
        .decode(&msg(
            (1, "add"),
            Value::Union(0, Box::new(Value::Double(19.99))),
        ))
        .unwrap();
    assert_eq!(e.event_id, "42");
    assert_eq!(e.user_id, "7");
    assert_eq!(e.ts, 1_764_000_000_123);
    assert_eq!(e.action, Action::Add);
    assert_eq!(e.qty, Some(2));
    assert_eq!(e.price, Some(Money(199_900)));
    let e = dec.decode(&msg((1, "add"), u(1, "0.0005"))).unwrap();
    assert_eq!(e.price, Some(Money(5)));
    let err = dec.decode(&msg((2, "wishlist"), u(1, "1"))).unwrap_err();
    assert_eq!(err.code(), "unknown_action");
}

/// A Confluent Schema Registry stand-in: answers `GET /schemas/ids/{id}` like the real one,
/// counting requests.
fn registry(schemas: Vec<(u32, &'static str)>) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { break };
            h.fetch_add(1, Ordering::SeqCst);
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            loop {
                let mut hdr = String::new();
                if r.read_line(&mut hdr).unwrap() == 0 || hdr == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let id: Option<u32> = path
                .strip_prefix("/schemas/ids/")
                .and_then(|s| s.parse().ok());
            let (status, body) = match schemas.iter().find(|(i, _)| Some(*i) == id) {
                Some((_, text)) => ("200 OK", serde_json::json!({ "schema": text }).to_string()),
                None => (
                    "404 Not Found",
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                ),
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, hits)
}

#[test]
fn registry_schemas_are_fetched_once() {
    let (url, hits) = registry(vec![(11, V1), (12, V2), (13, "{not a schema")]);
    let dec = decoder(AvroConfig {
        registry_url: Some(format!("{url}/")),
        ..Default::default()
    });
    for i in 0..20 {
        let e = dec
            .decode(&confluent_frame(
                11,
                &v1(&format!("a{i}"), "view", None, None),
            ))
            .unwrap();
        assert_eq!(e.event_id, format!("a{i}"));
        assert_eq!(
            dec.decode(&confluent_frame(12, &v2("b", "GBP")))
                .unwrap()
                .currency
                .as_deref(),
            Some("GBP")
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // unknown ids and schemas that do not parse are dead letters, asked for once a while
    for _ in 0..5 {
        let e = dec
            .decode(&confluent_frame(99, &v1("a", "view", None, None)))
            .unwrap_err();
        assert_eq!(e.code(), "avro_unknown_schema");
        assert!(e.to_string().contains("404"), "{e}");
        let e = dec
            .decode(&confluent_frame(13, &v1("a", "view", None, None)))
            .unwrap_err();
        assert_eq!(e.code(), "avro_unknown_schema");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[test]
fn an_unreachable_registry_is_a_dead_letter_not_a_panic() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dec = decoder(AvroConfig {
        registry_url: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    });
    let e = dec
        .decode(&confluent_frame(1, &v1("a", "view", None, None)))
        .unwrap_err();
    assert_eq!(e.code(), "avro_unknown_schema");
    assert!(e.to_string().contains("unreachable"), "{e}");
}

#[test]
fn directory_first_then_registry() {
    let (url, hits) = registry(vec![(2, V2)]);
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "1.avsc", V1);
    let dec = decoder(AvroConfig {
        registry_url: Some(url),
        schema_dir: Some(d.path().to_path_buf()),
        ..Default::default()
    });
    dec.decode(&confluent_frame(1, &v1("a", "view", None, None)))
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    dec.decode(&confluent_frame(2, &v2("b", "GBP"))).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_configuration_names_the_key() {
    let d = tempfile::tempdir().unwrap();
    let err = |cfg: AvroConfig| AvroDecoder::new(&cfg, DecodeOptions::default()).unwrap_err();
    let e = err(AvroConfig::default());
    assert_eq!(e.key, "registry_url");
    assert!(
        e.to_string()
            .contains("expected registry_url or schema_dir"),
        "{e}"
    );
    let e = err(AvroConfig {
        wire: Wire::Plain,
        ..Default::default()
    });
    assert_eq!(e.key, "schema_file");
    let e = err(AvroConfig {
        wire: Wire::Plain,
        schema_file: Some(d.path().join("missing.avsc")),
        ..Default::default()
    });
    assert!(
        e.to_string().starts_with("avro.schema_file: cannot read"),
        "{e}"
    );
    let bad = write(d.path(), "bad.avsc", r#"{"type":"record","name":"X"}"#);
    let e = err(AvroConfig {
        wire: Wire::Plain,
        schema_file: Some(bad.clone()),
        ..Default::default()
    });
    assert!(e.to_string().contains("not an Avro schema"), "{e}");
    let e = err(AvroConfig {
        wire: Wire::Plain,
        schema_file: Some(bad.clone()),
        registry_url: Some("http://x".into()),
        ..Default::default()
    });
    assert_eq!(e.key, "registry_url");
    let e = err(AvroConfig {
        registry_url: Some("https://registry:8081".into()),
        ..Default::default()
    });
    assert!(e.to_string().contains("http://host:port"), "{e}");
    let sd = tempfile::tempdir().unwrap();
    write(sd.path(), "4.avsc", "{broken");
    let e = err(AvroConfig {
        schema_dir: Some(sd.path().to_path_buf()),
        ..Default::default()
    });
    assert_eq!(e.key, "schema_dir");
    assert!(e.to_string().contains("4.avsc"), "{e}");
    let e = err(AvroConfig {
        schema_dir: Some(d.path().join("nope")),
        ..Default::default()
    });
    assert!(e.to_string().contains("cannot list"), "{e}");
    let r = write(
        d.path(),
        "r.avsc",
        r#"{"type":"record","name":"R","fields":[{"name":"ts","type":"long"},{"name":"user_id","type":"string"},{"name":"action","type":"string"},{"name":"price","type":"double"}]}"#,
    );
    let e = err(AvroConfig {
        schema_dir: Some(d.path().to_path_buf()),
        reader_schema: Some(r),
        ..Default::default()
    });
    assert_eq!(e.key, "reader_schema");
    assert!(e.to_string().contains("`price`"), "{e}");
}

#[test]
fn config_reads_from_toml() {
    let c: AvroConfig = toml::from_str(
        "wire = \"confluent\"\nregistry_url = \"http://127.0.0.1:8081\"\nregistry_timeout = \"2s\"",
    )
    .unwrap();
    assert_eq!(c.registry_timeout, std::time::Duration::from_secs(2));
    assert!(toml::from_str::<AvroConfig>("wire = \"json\"").is_err());
    assert!(toml::from_str::<AvroConfig>("schema = \"x\"").is_err());
}

fn opt_ident() -> impl Strategy<Value = Option<compact_str::CompactString>> {
    proptest::option::of("[a-zA-Z0-9_é\"\\\\ -]{1,30}".prop_map(compact_str::CompactString::from))
}

prop_compose! {
    fn events()(
        id in "[a-z0-9]{1,30}", ts in -1_000_000_000_000i64..4_000_000_000_000,
        user in "[a-zA-Z0-9 é]{1,20}", act in 0usize..5, sku in "[a-z0-9]{1,12}",
        qty in proptest::option::of(0u32..i32::MAX as u32),
        price in proptest::option::of(0i64..i64::MAX),
        session in opt_ident(), category in opt_ident(), ip in opt_ident(),
        order in opt_ident(), currency in opt_ident(),
    ) -> CartEvent {
        let action = Action::ALL[act];
        CartEvent {
            event_id: id.into(), ts, user_id: user.into(), session_id: session, action,
            sku: if action.needs_sku() { Some(sku.into()) } else { None },
            qty: match action {
                Action::Add | Action::UpdateQty => Some(qty.unwrap_or(1)),
                _ => qty,
            },
            price: price.map(Money), category, device_id: None, ip,
            order_id: order, currency, product: None, user: None,
        }
    }
}

proptest! {
    #[test]
    fn round_trip_plain_and_confluent(e in events()) {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "w.avsc", CART_EVENT_WRITER_SCHEMA);
        write(d.path(), "3.avsc", CART_EVENT_WRITER_SCHEMA);
        let plain = decoder(AvroConfig { wire: Wire::Plain, schema_file: Some(f), ..Default::default() });
        let datum = event_datum(&e);
        prop_assert_eq!(plain.decode(&datum).unwrap(), e.clone());
        prop_assert_eq!(by_dir(d.path()).decode(&confluent_frame(3, &datum)).unwrap(), e.clone());
        // and agrees with the JSON decoder on the same event
        let json = cartpulse_model::decode_json(e.to_json_string().as_bytes(), &DecodeOptions::default()).unwrap();
        prop_assert_eq!(json, e);
    }
}
