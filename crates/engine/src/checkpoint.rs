//! The checkpoint store: snapshots of all key groups plus the source position, published
//! by an atomic manifest.
//!
//! Layout of a checkpoint directory:
//! ```text
//! manifest.json               {"latest": 12, "completed": [10,11,12], ...}   ← commit point
//! chk-000000000012/meta.json  source position, watermark input, key groups
//! chk-000000000012/shard-0.snap, shard-1.snap, …
//! ```
//! A checkpoint directory is complete before the manifest names it (written as `*.tmp`,
//! synced, renamed), so a crash at any instant leaves either the old or the new manifest.
//! Snapshot files are versioned (`SNAPSHOT_VERSION`) and checksummed; key groups inside
//! are independent, so a checkpoint written by 2 shards restores onto 1 or 8.

use crate::error::{io_err, EngineError};
use crate::state::KeyGroupState;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CPSNAP\0\0";
/// Version of the state encoding. A release that changes `KeyGroupState` bumps it and keeps
/// a decoder for every older version it promises to read.
pub const SNAPSHOT_VERSION: u32 = 1;
const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub latest: u64,
    pub completed: Vec<u64>,
    /// The input was consumed to its end and every window flushed.
    pub finished: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub id: u64,
    pub source: String,
    pub position: Value,
    /// Largest event time read so far: restores the watermark.
    pub source_max: i64,
    pub key_groups: u32,
    pub snapshot_version: u32,
    pub created_ms: i64,
    pub finished: bool,
}

/// Encoded key groups of one shard: `(shard, [(key group, bytes)])`.
pub type ShardSnapshot = (usize, Vec<(u32, Vec<u8>)>);

pub struct Restored {
    pub meta: CheckpointMeta,
    pub groups: HashMap<u32, KeyGroupState>,
    /// The analytics stage's state, when the pipeline had one.
    pub operator: Option<Vec<u8>>,
}

/// A shared copy of a checkpoint directory elsewhere (an object store), so a process on
/// another machine can restore what this one checkpointed. With a replica, *its* manifest is
/// the commit point: checkpoint `c` counts once the replica holds `chk-c/`, everything else in
/// the directory (sinks stage epochs there, e.g. the Kafka sink's `kafka-stage/`) and then the
/// manifest; the sinks commit after that. The local directory is a working copy made to match
/// the replica on open, so whoever restores `c`, on any machine, finds the staged epochs to
/// roll forward. (Output staged outside the directory, like the jsonl sink's pending files,
/// stays on the machine that wrote it.)
pub trait CheckpointReplica: Send + Sync {
    /// Where the copy is, for messages.
    fn describe(&self) -> String;
    /// Makes `local` a copy of the replica: its manifest, the newest checkpoint's folder and
    /// every other file; local checkpoints the replica does not name are removed (they never
    /// reached the commit point).
    fn fetch(&self, local: &Path) -> Result<(), String>;
    /// Uploads `local/chk-<id>/` and every file outside `chk-*` folders, then `manifest`;
    /// then deletes what the replica holds that the manifest no longer needs.
    fn publish(&self, local: &Path, id: u64, manifest: &[u8]) -> Result<(), String>;
}

pub struct CheckpointStore {
    dir: PathBuf,
    retain: usize,
    replica: Option<std::sync::Arc<dyn CheckpointReplica>>,
}

/// The folder of checkpoint `id` inside a checkpoint directory.
pub fn checkpoint_folder(id: u64) -> String {
    format!("chk-{id:012}")
}

fn chk_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(checkpoint_folder(id))
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), EngineError> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

impl CheckpointStore {
    pub fn open(dir: &Path, retain: usize) -> Result<CheckpointStore, EngineError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            retain: retain.max(1),
            replica: None,
        })
    }

    /// A store whose commit point is `replica` (see [`CheckpointReplica`]); `dir` is first
    /// made a copy of the replica's newest checkpoint.
    pub fn open_replicated(
        dir: &Path,
        retain: usize,
        replica: std::sync::Arc<dyn CheckpointReplica>,
    ) -> Result<CheckpointStore, EngineError> {
        let mut s = Self::open(dir, retain)?;
        replica.fetch(dir).map_err(|why| EngineError::Replica {
            replica: replica.describe(),
            why,
        })?;
        s.replica = Some(replica);
        Ok(s)
    }

    pub fn manifest(&self) -> Result<Option<Manifest>, EngineError> {
        let p = self.dir.join("manifest.json");
        match fs::read(&p) {
            Ok(b) => {
                let m: Manifest = serde_json::from_slice(&b).map_err(|e| EngineError::Corrupt {
                    path: p.clone(),
                    why: e.to_string(),
                })?;
                if m.version > MANIFEST_VERSION {
                    return Err(EngineError::Incompatible {
                        path: p,
                        why: format!(
                            "manifest version {} is newer than this release reads ({MANIFEST_VERSION})",
                            m.version
                        ),
                    });
                }
                Ok(Some(m))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EngineError::Io { path: p, source: e }),
        }
    }

    /// The newest complete checkpoint's metadata (source position, finished), without
    /// reading its state: what a consumer group needs to assign a partition.
    pub fn latest_meta(&self) -> Result<Option<CheckpointMeta>, EngineError> {
        let Some(m) = self.manifest()? else {
            return Ok(None);
        };
        let mp = chk_dir(&self.dir, m.latest).join("meta.json");
        let meta = serde_json::from_slice(&fs::read(&mp).map_err(io_err(&mp))?).map_err(|e| {
            EngineError::Corrupt {
                path: mp.clone(),
                why: e.to_string(),
            }
        })?;
        Ok(Some(meta))
    }

    /// Loads the newest complete checkpoint.
    pub fn restore_latest(&self, key_groups: u32) -> Result<Option<Restored>, EngineError> {
        let Some(meta) = self.latest_meta()? else {
            return Ok(None);
        };
        let dir = chk_dir(&self.dir, meta.id);
        if meta.key_groups != key_groups {
            return Err(EngineError::Incompatible {
                path: dir,
                why: format!(
                    "written with {} key groups but the config says {key_groups}; key_groups is fixed for the life of a checkpoint directory",
                    meta.key_groups
                ),
            });
        }
        let mut groups = HashMap::new();
        let mut operator = None;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("snap") {
                continue;
            }
            let data = fs::read(&path).map_err(io_err(&path))?;
            for (kg, bytes) in decode_snapshot(&data).map_err(|why| EngineError::Corrupt {
                path: path.clone(),
                why,
            })? {
                if kg == crate::operator::OPERATOR_GROUP {
                    operator = Some(bytes.to_vec());
                    continue;
                }
                let st: KeyGroupState =
                    postcard::from_bytes(bytes).map_err(|e| EngineError::Corrupt {
                        path: path.clone(),
                        why: format!("key group {kg}: {e}"),
                    })?;
                if groups.insert(kg, st).is_some() {
                    return Err(EngineError::Corrupt {
                        path: path.clone(),
                        why: format!("key group {kg} appears twice"),
                    });
                }
            }
        }
        Ok(Some(Restored {
            meta,
            groups,
            operator,
        }))
    }

    /// Writes checkpoint `meta.id` and publishes it. Returns the bytes written.
    pub fn write(
        &self,
        meta: &CheckpointMeta,
        shards: &[ShardSnapshot],
    ) -> Result<u64, EngineError> {
        let final_dir = chk_dir(&self.dir, meta.id);
        let tmp = self.dir.join(format!("chk-{:012}.tmp", meta.id));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut bytes = 0u64;
        for (shard, groups) in shards {
            let data = encode_snapshot(groups);
            bytes += data.len() as u64;
            write_synced(&tmp.join(format!("shard-{shard}.snap")), &data)?;
        }
        let m = serde_json::to_vec_pretty(meta).expect("meta serializes");
        bytes += m.len() as u64;
        write_synced(&tmp.join("meta.json"), &m)?;
        sync_dir(&tmp)?;
        if final_dir.exists() {
            // left by a run that crashed before publishing it: never named by a manifest
            fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        sync_dir(&self.dir)?;

        let mut completed = self.manifest()?.map(|m| m.completed).unwrap_or_default();
        completed.retain(|&c| c < meta.id);
        completed.push(meta.id);
        let keep_from = completed.len().saturating_sub(self.retain);
        let pruned: Vec<u64> = completed.drain(..keep_from).collect();
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            latest: meta.id,
            completed,
            finished: meta.finished,
        };
        let mp = self.dir.join("manifest.json");
        let mtmp = self.dir.join("manifest.json.tmp");
        let mbytes = serde_json::to_vec_pretty(&manifest).expect("serializes");
        if let Some(r) = &self.replica {
            r.publish(&self.dir, meta.id, &mbytes)
                .map_err(|why| EngineError::Replica {
                    replica: r.describe(),
                    why,
                })?;
        }
        write_synced(&mtmp, &mbytes)?;
        fs::rename(&mtmp, &mp).map_err(io_err(&mp))?;
        sync_dir(&self.dir)?;

        for id in pruned {
            let d = chk_dir(&self.dir, id);
            if let Err(e) = fs::remove_dir_all(&d) {
                tracing::warn!(path = %d.display(), error = %e, "could not prune old checkpoint");
            }
        }
        Ok(bytes)
    }
}

fn encode_snapshot(groups: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let total: usize = groups.iter().map(|(_, b)| b.len() + 12).sum();
    let mut out = Vec::with_capacity(total + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for (kg, b) in groups {
        out.extend_from_slice(&kg.to_le_bytes());
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn decode_snapshot(data: &[u8]) -> Result<Vec<(u32, &[u8])>, String> {
    if data.len() < 24 || &data[..8] != MAGIC {
        return Err("not a cartpulse snapshot".into());
    }
    let (body, sum) = data.split_at(data.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
        return Err("checksum mismatch (truncated or damaged file)".into());
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "snapshot version {version} cannot be read by this release (reads {SNAPSHOT_VERSION})"
        ));
    }
    let n = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as usize;
    let mut at = 16;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if at + 12 > body.len() {
            return Err("truncated group header".into());
        }
        let kg = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(body[at + 4..at + 12].try_into().expect("8 bytes")) as usize;
        at += 12;
        if at + len > body.len() {
            return Err("truncated group".into());
        }
        out.push((kg, &body[at..at + len]));
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64) -> CheckpointMeta {
        CheckpointMeta {
            id,
            source: "t".into(),
            position: Value::from(id * 10),
            source_max: 5,
            key_groups: 4,
            snapshot_version: SNAPSHOT_VERSION,
            created_ms: 0,
            finished: false,
        }
    }

    #[test]
    fn write_restore_prune_and_detect_damage() {
        let d = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(d.path(), 2).unwrap();
        assert!(store.restore_latest(4).unwrap().is_none());
        let mut st = KeyGroupState::default();
        st.users.insert("u1".into(), Default::default());
        let enc = postcard::to_stdvec(&st).unwrap();
        let empty = postcard::to_stdvec(&KeyGroupState::default()).unwrap();
        for id in 1..=3 {
            store
                .write(
                    &meta(id),
                    &[
                        (0, vec![(0, enc.clone()), (1, empty.clone())]),
                        (1, vec![(2, empty.clone()), (3, empty.clone())]),
                    ],
                )
                .unwrap();
        }
        let r = store.restore_latest(4).unwrap().unwrap();
        assert_eq!(r.meta.id, 3);
        assert_eq!(r.groups.len(), 4);
        assert!(r.groups[&0].users.contains_key("u1"));
        assert!(!chk_dir(d.path(), 1).exists(), "pruned");
        assert!(chk_dir(d.path(), 2).exists());
        assert!(store.restore_latest(8).is_err(), "key group count is fixed");
        let snap = chk_dir(d.path(), 3).join("shard-0.snap");
        let mut b = fs::read(&snap).unwrap();
        let n = b.len();
        b[n / 2] ^= 0xff;
        fs::write(&snap, b).unwrap();
        let err = store.restore_latest(4).err().unwrap().to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
