//! One input partition as an engine [`Source`]: the group's consumer thread (group.rs) polls
//! Kafka and feeds each partition's messages, already framed into chunks, to the pipeline
//! that owns the partition (its *task*). The position is the next offset to read; it goes
//! into the task's checkpoint and, once the checkpoint completes, is committed to Kafka.

use cartpulse_engine::{Poll, Source, SourceChunk, SourceError};
use cartpulse_model::Decoder;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A Kafka topic partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub topic: String,
    pub partition: i32,
}

impl TaskId {
    /// Folder and name of the task: `topic-partition`, as Kafka names log directories.
    pub fn name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

/// What the consumer thread hands a task.
#[derive(Debug)]
pub(crate) enum Feed {
    /// Messages in offset order; `next` is the offset after the last one.
    Chunk { chunk: SourceChunk, next: i64 },
    /// The partition's end was reached (a fetch returned nothing more).
    Eof,
}

/// Offsets whose checkpoint completed, waiting for the consumer thread to commit them.
pub(crate) type CommitQueue = Arc<Mutex<HashMap<TaskId, i64>>>;

pub struct PartitionSource {
    id: TaskId,
    name: String,
    rx: Receiver<Feed>,
    /// Next offset to read; `None` until a checkpoint or a message says.
    next: Option<i64>,
    /// The offset the consumer was assigned at, checked against the restored checkpoint.
    assigned: Option<i64>,
    end_after_idle: Option<Duration>,
    last_data: Instant,
    caught_up: bool,
    commits: Option<CommitQueue>,
    decoder: Decoder,
    /// Shared with the consumer thread's statistics, for the lag gauge.
    pub(crate) position: Arc<std::sync::atomic::AtomicI64>,
}

impl PartitionSource {
    pub(crate) fn new(
        id: TaskId,
        rx: Receiver<Feed>,
        assigned: Option<i64>,
        end_after_idle: Option<Duration>,
        commits: Option<CommitQueue>,
        decoder: Decoder,
    ) -> Self {
        PartitionSource {
            name: format!("kafka:{}", id.name()),
            id,
            rx,
            next: assigned,
            assigned,
            end_after_idle,
            last_data: Instant::now(),
            caught_up: false,
            commits,
            decoder,
            position: Arc::new(std::sync::atomic::AtomicI64::new(assigned.unwrap_or(-1))),
        }
    }

    /// The next offset recorded in a checkpoint's source position of this task.
    pub fn offset_of(position: &Value) -> Option<i64> {
        position["offset"].as_i64()
    }
}

impl Source for PartitionSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&mut self, restored: Option<&Value>) -> Result<(), SourceError> {
        let Some(pos) = restored else {
            return Ok(());
        };
        let bad = |why: String| SourceError::BadPosition {
            source_name: self.name.clone(),
            position: pos.to_string(),
            why,
        };
        if pos["topic"].as_str() != Some(self.id.topic.as_str())
            || pos["partition"].as_i64() != Some(i64::from(self.id.partition))
        {
            return Err(bad(format!(
                "the checkpoint belongs to another partition than {}",
                self.id.name()
            )));
        }
        let restored = Self::offset_of(pos);
        // The group thread read the same checkpoint to assign the consumer; a difference
        // means another process wrote a checkpoint in between (it still believed it owned
        // the partition), and reading on would count input twice or not at all.
        if restored != self.assigned {
            return Err(bad(format!(
                "the consumer was assigned at offset {:?} but the checkpoint now says {:?}; another process wrote this partition's checkpoint after it was assigned here",
                self.assigned, restored
            )));
        }
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        self.decoder.clone()
    }

    fn poll(&mut self, _max_bytes: usize) -> Result<Poll, SourceError> {
        match self.rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Feed::Chunk { chunk, next }) => {
                self.next = Some(next);
                self.position
                    .store(next, std::sync::atomic::Ordering::Relaxed);
                self.last_data = Instant::now();
                self.caught_up = false;
                Ok(Poll::Chunk(chunk))
            }
            Ok(Feed::Eof) => {
                self.caught_up = true;
                Ok(Poll::Idle)
            }
            Err(RecvTimeoutError::Timeout) => {
                let ended = self
                    .end_after_idle
                    .is_some_and(|d| self.caught_up && self.last_data.elapsed() >= d);
                Ok(if ended { Poll::End } else { Poll::Idle })
            }
            // the consumer thread let go of this partition: nothing more will come, and the
            // pipeline is being stopped for its final checkpoint
            Err(RecvTimeoutError::Disconnected) => Ok(Poll::Idle),
        }
    }

    fn position(&self) -> Value {
        json!({
            "topic": self.id.topic,
            "partition": self.id.partition,
            "offset": self.next,
        })
    }

    fn checkpoint_complete(
        &mut self,
        _checkpoint: u64,
        position: &Value,
    ) -> Result<(), SourceError> {
        if let (Some(q), Some(o)) = (&self.commits, Self::offset_of(position)) {
            q.lock().expect("commit queue").insert(self.id.clone(), o);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(
        assigned: Option<i64>,
        idle: Option<Duration>,
    ) -> (PartitionSource, crossbeam_channel::Sender<Feed>) {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let id = TaskId {
            topic: "t".into(),
            partition: 3,
        };
        (
            PartitionSource::new(
                id,
                rx,
                assigned,
                idle,
                Some(Default::default()),
                Decoder::Json(Default::default()),
            ),
            tx,
        )
    }

    #[test]
    fn position_follows_chunks_and_is_queued_for_commit_on_completion() {
        let (mut s, tx) = source(None, None);
        s.open(None).unwrap();
        assert_eq!(s.position()["offset"], Value::Null);
        tx.send(Feed::Chunk {
            chunk: SourceChunk::default(),
            next: 17,
        })
        .unwrap();
        assert!(matches!(s.poll(1).unwrap(), Poll::Chunk(_)));
        let pos = s.position();
        assert_eq!(pos, json!({"topic": "t", "partition": 3, "offset": 17}));
        s.checkpoint_complete(1, &pos).unwrap();
        let q = s.commits.clone().unwrap();
        assert_eq!(q.lock().unwrap().get(&s.id), Some(&17));
    }

    #[test]
    fn a_checkpoint_that_disagrees_with_the_assignment_is_refused() {
        let (mut s, _tx) = source(Some(10), None);
        let e = s
            .open(Some(&json!({"topic": "t", "partition": 3, "offset": 12})))
            .unwrap_err();
        assert!(e.to_string().contains("another process"), "{e}");
        let (mut s, _tx) = source(Some(10), None);
        let e = s
            .open(Some(&json!({"topic": "t", "partition": 4, "offset": 10})))
            .unwrap_err();
        assert!(e.to_string().contains("another partition"), "{e}");
        let (mut s, _tx) = source(Some(10), None);
        s.open(Some(&json!({"topic": "t", "partition": 3, "offset": 10})))
            .unwrap();
    }

    #[test]
    fn bounded_mode_ends_only_after_end_of_partition_and_silence() {
        let (mut s, tx) = source(Some(0), Some(Duration::from_millis(120)));
        // silence without having reached the end is not the end
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(s.poll(1).unwrap(), Poll::Idle));
        tx.send(Feed::Eof).unwrap();
        assert!(matches!(s.poll(1).unwrap(), Poll::Idle));
        let t0 = Instant::now();
        loop {
            match s.poll(1).unwrap() {
                Poll::End => break,
                Poll::Idle => assert!(t0.elapsed() < Duration::from_secs(5)),
                Poll::Chunk(_) => unreachable!(),
            }
        }
        // data after the end-of-partition mark resets the wait
        let (mut s, tx) = source(Some(0), Some(Duration::from_millis(100)));
        tx.send(Feed::Eof).unwrap();
        tx.send(Feed::Chunk {
            chunk: SourceChunk::default(),
            next: 5,
        })
        .unwrap();
        assert!(matches!(s.poll(1).unwrap(), Poll::Idle));
        assert!(matches!(s.poll(1).unwrap(), Poll::Chunk(_)));
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(s.poll(1).unwrap(), Poll::Idle));
    }
}
