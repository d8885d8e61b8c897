//! RabbitMQ end to end: events published to a durable queue on the broker at 127.0.0.1:5672,
//! `cartpulse run` with the `rabbitmq` source, a SIGKILL mid-way (the broker redelivers every
//! unacknowledged message), a restart — and the committed output must equal a replay of the
//! published events: exactly once despite the redelivery.

mod common;
mod live;
mod sources;

use cartpulse_connectors::rabbitmq::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use cartpulse_connectors::rabbitmq::lapin::types::FieldTable;
use cartpulse_connectors::rabbitmq::lapin::{BasicProperties, Connection, ConnectionProperties};
use sources::*;
use std::time::{Duration, Instant};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The queue, deleted when the test ends (also on panic).
struct Queue(String);

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = rt().block_on(async {
            let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            let _ = ch
                .queue_delete(self.0.as_str().into(), QueueDeleteOptions::default())
                .await;
            conn.close(0, "done".into()).await
        });
    }
}

/// Publishes persistent messages with publisher confirms, in order.
fn publish(queue: &str, lines: &[String]) {
    rt().block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("the RabbitMQ broker on 127.0.0.1:5672");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .unwrap();
        let mut confirms = Vec::with_capacity(lines.len());
        for l in lines {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    l.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            c.await.unwrap();
        }
        conn.close(0, "done".into()).await.unwrap();
    });
}

/// Messages ready in the queue (neither delivered nor unacknowledged).
fn ready(queue: &str) -> u32 {
    rt().block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .unwrap();
        conn.close(0, "done".into()).await.unwrap();
        q.message_count()
    })
}

#[test]
fn rabbitmq_redelivery_after_sigkill_is_deduplicated_to_exactly_once() {
    let dirs = Dirs::new();
    let gen = dirs.path("gen.jsonl");
    // 200 events/s of event time: the input spans more than the dedup horizon, so
    // re-reading would not hide behind deduplication
    common::gen(30_000, 7, &gen, &["--rate", "200"]);
    let mut events: Vec<String> = std::fs::read_to_string(&gen)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    events.push(sentinel(max_ts(&events)));

    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let queue = Queue(format!("cartpulse-e2e-{}-{t}", std::process::id()));
    publish(&queue.0, &events);

    let config = write_config(
        &dirs,
        &format!(
            "[source]\ntype = \"rabbitmq\"\nurl = \"{URL}\"\nqueue = \"{}\"\nprefetch = 3000\n\
             max_backoff = \"500ms\"",
            queue.0
        ),
    );
    let mut run = spawn_run(&dirs, &config, 1);
    // kill once a few checkpoints (and their acks) are done, but long before the end
    wait_checkpoints(&dirs, &mut run, 3, Duration::from_secs(30));
    crash(&mut run);
    let left = ready(&queue.0) as usize;
    assert!(
        left > 0 && left < events.len(),
        "killed mid-way: {left} of {} messages left",
        events.len()
    );

    let want = expected(&dirs, &events);
    let mut run = spawn_run(&dirs, &config, 2);
    let start = Instant::now();
    wait_for_output(&dirs, &mut run, &want, Duration::from_secs(90));
    eprintln!("caught up {:?} after the restart", start.elapsed());
    let st = run.stop(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "clean stop\n{}",
        run.log_tail(10)
    );

    // Started once more: whatever the last run had not acknowledged (the engine hands a
    // source no completion for the final checkpoint of a stop) comes again and is dropped
    // as duplicate; the output does not change, and the queue ends empty.
    let mut run = spawn_run(&dirs, &config, 3);
    let c = checkpoints(&dirs);
    wait_checkpoints(&dirs, &mut run, c + 3, Duration::from_secs(30));
    wait_for_output(&dirs, &mut run, &want, Duration::from_secs(30));
    crash(&mut run);
    assert_eq!(ready(&queue.0), 0, "every message acknowledged");
}
