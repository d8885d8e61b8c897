//! Against the RabbitMQ broker on 127.0.0.1:5672 (guest/guest), each test on queues of its
//! own, deleted when the test ends.

use super::*;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::BasicProperties;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Unique queue names, deleted on drop (also when the test panics).
struct Queues(Vec<String>);

impl Queues {
    fn new(n: usize, tag: &str) -> Queues {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Queues(
            (0..n)
                .map(|i| format!("cartpulse-test-{tag}-{}-{t}-{i}", std::process::id()))
                .collect(),
        )
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(async {
            let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            for q in &self.0 {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            conn.close(0, "done".into()).await
        });
    }
}

fn publish(queue: &str, bodies: &[Vec<u8>]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .unwrap();
        for b in bodies {
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        conn.close(0, "done".into()).await.unwrap();
    });
}

fn body(i: u32) -> Vec<u8> {
    // a pretty-printed event: payloads may span lines, so records travel as frames
    format!(
        "{{\n  \"event_id\": \"e{i}\",\n  \"ts\": {},\n  \"user_id\": \"u{}\",\n  \"action\": \"view\",\n  \"sku\": \"p1\"\n}}",
        1_764_000_000_000u64 + u64::from(i),
        i % 5
    )
    .into_bytes()
}

fn cfg(queue: &str) -> RabbitMqConfig {
    RabbitMqConfig {
        url: URL.into(),
        queue: queue.into(),
        prefetch: 100,
        connect_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    }
}

fn ids(recs: &[Vec<u8>]) -> Vec<String> {
    recs.iter()
        .map(|r| {
            cartpulse_model::decode_json(r, &DecodeOptions::default())
                .unwrap()
                .event_id
                .to_string()
        })
        .collect()
}

fn read_n(s: &mut RabbitMqSource, n: usize, max_bytes: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "only {} of {n}",
            got.len()
        );
        if let Poll::Chunk(c) = s.poll(max_bytes).unwrap() {
            let frames = c.frames.expect("framed records");
            got.extend(
                frames
                    .iter()
                    .map(|&(a, b)| c.data[a as usize..b as usize].to_vec()),
            );
        }
    }
    got
}

fn read_for(s: &mut RabbitMqSource, d: Duration) -> usize {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        if let Poll::Chunk(c) = s.poll(1 << 20).unwrap() {
            n += c.frames.map_or(0, |f| f.len());
        }
    }
    n
}

#[test]
fn messages_are_acknowledged_only_when_a_checkpoint_covers_them() {
    let q = Queues::new(1, "ack");
    publish(&q.0[0], &(0..10).map(body).collect::<Vec<_>>());
    let mut a = RabbitMqSource::new(cfg(&q.0[0]), 1 << 20);
    a.open(None).unwrap();
    let first = read_n(&mut a, 4, 1);
    let covered = a.position();
    let rest = read_n(&mut a, 6, 1 << 20);
    assert_eq!(
        ids(&[first, rest].concat()),
        (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    a.checkpoint_complete(1, &covered).unwrap();
    drop(a); // crash: six delivered, not acknowledged

    let mut b = RabbitMqSource::new(cfg(&q.0[0]), 1 << 20);
    b.open(Some(&covered)).unwrap();
    let again = read_n(&mut b, 6, 1 << 20);
    assert_eq!(
        ids(&again),
        (4..10).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    let p = b.position();
    b.checkpoint_complete(1, &p).unwrap();
    drop(b);

    let mut c = RabbitMqSource::new(cfg(&q.0[0]), 1 << 20);
    c.open(None).unwrap();
    assert_eq!(
        read_for(&mut c, Duration::from_millis(500)),
        0,
        "all acknowledged"
    );
    assert_eq!(c.lag(), Some(0));
}

#[test]
fn a_lost_connection_is_reopened_and_old_tags_are_not_acknowledged() {
    let q = Queues::new(1, "reconnect");
    publish(&q.0[0], &(0..5).map(body).collect::<Vec<_>>());
    let mut s = RabbitMqSource::new(cfg(&q.0[0]), 1 << 20);
    s.open(None).unwrap();
    read_n(&mut s, 5, 1 << 20);
    let stale = s.position();
    // the broker closes our connection (as on a broker restart or a network cut)
    let name = s.name().to_string();
    let list = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl (package rabbitmq-server)");
    let text = String::from_utf8_lossy(&list.stdout);
    let pid = text
        .lines()
        .find(|l| l.contains(&name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("our connection `{name}` in:\n{text}"))
        .to_string();
    let st = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &pid, "test"])
        .status()
        .unwrap();
    assert!(st.success());
    // the source notices, reconnects, and the unacknowledged five come again
    let again = read_n(&mut s, 5, 1 << 20);
    assert_eq!(
        ids(&again),
        (0..5).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    // acking the old connection's tags would ack the wrong messages: it is ignored
    s.checkpoint_complete(1, &stale).unwrap();
    drop(s);
    let mut t = RabbitMqSource::new(cfg(&q.0[0]), 1 << 20);
    t.open(None).unwrap();
    assert_eq!(
        read_n(&mut t, 5, 1 << 20).len(),
        5,
        "nothing was acknowledged"
    );
}

#[test]
fn start_up_errors_name_the_config_key() {
    let q = Queues::new(2, "errors");
    let open_err = |c: RabbitMqConfig| {
        let mut s = RabbitMqSource::new(c, 1 << 20);
        s.open(None).expect_err("must not open").to_string()
    };
    let e = open_err(RabbitMqConfig {
        url: "http://x".into(),
        ..cfg(&q.0[0])
    });
    assert!(
        e.contains("source.url") && e.contains("not an AMQP URL"),
        "{e}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = open_err(RabbitMqConfig {
        url: format!("amqp://guest:secret@127.0.0.1:{port}/%2f"),
        ..cfg(&q.0[0])
    });
    assert!(e.contains("source.url") && !e.contains("secret"), "{e}");
    let e = open_err(RabbitMqConfig {
        declare: false,
        ..cfg(&q.0[1])
    });
    assert!(
        e.contains("source.queue") && e.contains("does not exist"),
        "{e}"
    );
}
