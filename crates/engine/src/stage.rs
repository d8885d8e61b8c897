//! The analytics stage's thread: merges the shards' shares of each chunk back into input
//! order, runs the operator over them, and takes part in checkpoints like a shard.

use crate::committer::ToCommitter;
use crate::operator::{OpBatch, OpRequest, Operator, OPERATOR_GROUP};
use crate::output::Records;
use crate::shard::ChunkEnd;
use crossbeam_channel::{Receiver, Sender};

pub(crate) struct Stage {
    /// Participant index at the committer (one past the last shard).
    pub id: usize,
    pub op: Box<dyn Operator>,
    pub snapshots: bool,
    pub tx: Sender<ToCommitter>,
}

impl Stage {
    pub fn run(mut self, inputs: Vec<Receiver<OpBatch>>, requests: Receiver<OpRequest>) {
        if let Err(e) = self.run_inner(&inputs, &requests) {
            let _ = self
                .tx
                .send(ToCommitter::Failed(format!("analytics stage: {e}")));
        }
    }

    fn run_inner(
        &mut self,
        inputs: &[Receiver<OpBatch>],
        requests: &Receiver<OpRequest>,
    ) -> Result<(), String> {
        let mut seq = 0u64;
        let mut merged = Vec::new();
        loop {
            let mut barrier = None;
            let mut end = ChunkEnd::No;
            merged.clear();
            for input in inputs {
                // requests are answered while waiting, so a query never waits for input
                let batch = loop {
                    crossbeam_channel::select! {
                        recv(input) -> b => break b.map_err(|_| "a shard stopped".to_string())?,
                        recv(requests) -> r => if let Ok(r) = r { self.answer(r) },
                    }
                };
                debug_assert_eq!(batch.seq, seq);
                barrier = barrier.or(batch.barrier);
                if batch.end != ChunkEnd::No {
                    end = batch.end;
                }
                merged.extend(batch.items);
            }
            seq += 1;
            // each share is in position order and ties stay within one shard, so a stable
            // sort (which merges the presorted runs) restores the input order
            merged.sort_by_key(|(pos, _)| *pos);
            let mut out = Records::default();
            for (_, input) in merged.drain(..) {
                self.op.on_input(&input, &mut out);
            }
            if !out.is_empty() {
                self.send(ToCommitter::Records {
                    shard: self.id,
                    records: out,
                })?;
            }
            if let Some(id) = barrier {
                let groups = if self.snapshots {
                    vec![(OPERATOR_GROUP, self.op.snapshot()?)]
                } else {
                    Vec::new()
                };
                self.send(ToCommitter::Snapshot {
                    shard: self.id,
                    checkpoint: id,
                    source_max: i64::MIN,
                    groups,
                })?;
            }
            if end != ChunkEnd::No {
                self.send(ToCommitter::Done)?;
                return Ok(());
            }
        }
    }

    fn answer(&mut self, r: OpRequest) {
        let _ = r.reply.send(self.op.request(&r.kind, &r.body));
    }

    fn send(&self, m: ToCommitter) -> Result<(), String> {
        self.tx.send(m).map_err(|_| "committer stopped".to_string())
    }
}
