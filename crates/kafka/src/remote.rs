//! The shared checkpoint store as an object store (`object_store`: S3 and S3-compatible
//! servers, GCS, Azure, or a local path), so group members on different machines need no
//! shared filesystem. Each task's checkpoint directory is mirrored under
//! `<url>/<topic>-<partition>/`: after a checkpoint completed here, `chk-<id>/<files>` first,
//! then `manifest.json` (an object PUT is atomic, so a reader sees the old or the new
//! manifest). The local directory is only a working copy: before a task restores, it is made
//! to match the store's newest checkpoint (see `CheckpointReplica` for what that means for
//! exactly-once).

use cartpulse_engine::checkpoint::{checkpoint_folder, CheckpointReplica};
use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Where a group's checkpoints are shared: the URL and the store's options
/// (`aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
/// `aws_allow_http`, ... as `object_store` names them).
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    pub url: String,
    pub options: BTreeMap<String, String>,
}

pub struct Remote {
    describe: String,
    store: Arc<dyn ObjectStore>,
    base: ObjPath,
    rt: tokio::runtime::Runtime,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Remote {
    /// The replica of one task (`topic-partition`).
    pub fn new(cfg: &RemoteConfig, task: &str) -> Result<Remote, String> {
        let url = url::Url::parse(&cfg.url).map_err(|e| format!("`{}`: {e}", cfg.url))?;
        let (store, prefix) = object_store::parse_url_opts(&url, cfg.options.iter())
            .map_err(|e| format!("`{}`: {e}", cfg.url))?;
        let base = prefix.clone().join(task);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("checkpoint-store")
            .enable_all()
            .build()
            .map_err(err)?;
        Ok(Remote {
            describe: format!("{}/{task}", cfg.url.trim_end_matches('/')),
            store: Arc::from(store),
            base,
            rt,
        })
    }

    /// Checks that the store answers (a listing), so a wrong URL or credentials stop the
    /// start instead of the first checkpoint.
    pub fn probe(&self) -> Result<(), String> {
        self.rt.block_on(async {
            let mut l = self.store.list(Some(&self.base));
            l.try_next().await.map(|_| ()).map_err(err)
        })
    }

    fn manifest_path(&self) -> ObjPath {
        self.base.clone().join("manifest.json")
    }

    async fn get(&self, p: &ObjPath) -> Result<Option<Vec<u8>>, String> {
        match self.store.get(p).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(err)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }
}

/// Removes every `chk-*` folder and the manifest of a local working copy but `keep`.
fn clear_local(local: &Path, keep: Option<&str>) -> Result<(), String> {
    for e in std::fs::read_dir(local).map_err(err)? {
        let e = e.map_err(err)?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("chk-") && Some(name.as_str()) != keep {
            std::fs::remove_dir_all(e.path()).map_err(err)?;
        }
    }
    match std::fs::remove_file(local.join("manifest.json")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Files of a working copy the replica carries besides `chk-<id>/`: everything outside the
/// `chk-*` folders and the manifest (the sinks' staged epochs), as paths relative to `local`.
/// Hidden files (a stage's open `.pending` epoch) and `*.tmp` are work in progress.
fn extras(local: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut stack = vec![(local.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(err)? {
            let e = e.map_err(err)?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".fetch") {
                continue;
            }
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if rel.is_empty() && (name.starts_with("chk-") || name.starts_with("manifest.json")) {
                continue;
            }
            if e.file_type().map_err(err)?.is_dir() {
                stack.push((e.path(), r));
            } else {
                out.push(r);
            }
        }
    }
    Ok(out)
}

impl Remote {
    fn at(&self, rel: &str) -> ObjPath {
        rel.split('/')
            .fold(self.base.clone(), |p, part| p.join(part))
    }

    /// Every object under the task, as paths relative to it.
    async fn listing(&self) -> Result<Vec<(String, ObjPath)>, String> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.base))
            .try_collect()
            .await
            .map_err(err)?;
        Ok(objects
            .into_iter()
            .filter_map(|o| {
                let rel: Vec<String> = o
                    .location
                    .prefix_match(&self.base)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some((rel.join("/"), o.location))
            })
            .collect())
    }
}

impl CheckpointReplica for Remote {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn fetch(&self, local: &Path) -> Result<(), String> {
        self.rt.block_on(async {
            let Some(m) = self.get(&self.manifest_path()).await? else {
                // nothing committed anywhere: whatever is here never reached the commit point
                return clear_local(local, None);
            };
            let mut manifest: serde_json::Value =
                serde_json::from_slice(&m).map_err(|e| format!("manifest.json: {e}"))?;
            let latest = manifest["latest"]
                .as_u64()
                .ok_or("manifest.json without `latest`")?;
            let folder = checkpoint_folder(latest);
            // the local copy holds only the newest checkpoint
            manifest["completed"] = serde_json::json!([latest]);
            let bytes = serde_json::to_vec_pretty(&manifest).map_err(err)?;
            if std::fs::read(local.join("manifest.json")).ok().as_deref() == Some(&bytes[..])
                && local.join(&folder).is_dir()
            {
                return Ok(());
            }
            clear_local(local, None)?;
            for stale in extras(local)? {
                std::fs::remove_file(local.join(stale)).map_err(err)?;
            }
            let tmp = local.join(format!("{folder}.fetch"));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(err)?;
            }
            std::fs::create_dir_all(&tmp).map_err(err)?;
            let mut files = 0;
            for (rel, at) in self.listing().await? {
                let target = if let Some(name) = rel.strip_prefix(&format!("{folder}/")) {
                    files += 1;
                    tmp.join(name)
                } else if rel.starts_with("chk-") || rel == "manifest.json" {
                    continue;
                } else {
                    local.join(&rel)
                };
                let data = self
                    .get(&at)
                    .await?
                    .ok_or_else(|| format!("{at} vanished while being read"))?;
                if let Some(d) = target.parent() {
                    std::fs::create_dir_all(d).map_err(err)?;
                }
                std::fs::write(&target, data).map_err(err)?;
            }
            if files == 0 {
                return Err(format!("the manifest names {folder}, which holds no files"));
            }
            std::fs::rename(&tmp, local.join(&folder)).map_err(err)?;
            let mtmp = local.join("manifest.json.tmp");
            std::fs::write(&mtmp, &bytes).map_err(err)?;
            std::fs::rename(&mtmp, local.join("manifest.json")).map_err(err)?;
            tracing::info!(replica = %self.describe, checkpoint = latest, "checkpoint fetched");
            Ok(())
        })
    }

    fn publish(&self, local: &Path, id: u64, manifest: &[u8]) -> Result<(), String> {
        let keep: Vec<String> = serde_json::from_slice::<serde_json::Value>(manifest)
            .ok()
            .and_then(|m| m["completed"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_u64().map(checkpoint_folder))
            .collect();
        self.rt.block_on(async {
            let folder = checkpoint_folder(id);
            let mut files: Vec<String> = Vec::new();
            for e in std::fs::read_dir(local.join(&folder)).map_err(err)? {
                let e = e.map_err(err)?;
                files.push(format!("{folder}/{}", e.file_name().to_string_lossy()));
            }
            let extra = extras(local)?;
            for rel in files.iter().chain(&extra) {
                let data = std::fs::read(local.join(rel)).map_err(err)?;
                self.store
                    .put(&self.at(rel), PutPayload::from(data))
                    .await
                    .map_err(err)?;
            }
            // the commit point
            self.store
                .put(&self.manifest_path(), PutPayload::from(manifest.to_vec()))
                .await
                .map_err(err)?;
            // what the new manifest no longer needs: older checkpoints beyond the retained
            // ones, staged epochs committed and deleted here
            let listed = match self.listing().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "could not list the checkpoint store to prune it");
                    return Ok(());
                }
            };
            for (rel, at) in listed {
                let top = rel.split('/').next().unwrap_or_default();
                let stale = if top.starts_with("chk-") {
                    !keep.iter().any(|k| k == top)
                } else {
                    rel != "manifest.json" && !extra.contains(&rel)
                };
                if stale {
                    if let Err(e) = self.store.delete(&at).await {
                        tracing::warn!(error = %e, "could not prune the checkpoint store");
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replica protocol against the local-filesystem object store: publish, fetch into
    /// an empty working copy, and a stale working copy replaced by the replica's state.
    #[test]
    fn publish_then_fetch_makes_the_working_copy_match() {
        let shared = tempfile::tempdir().unwrap();
        let cfg = RemoteConfig {
            url: format!("file://{}", shared.path().display()),
            options: BTreeMap::new(),
        };
        let r = Remote::new(&cfg, "t-0").unwrap();
        r.probe().unwrap();
        let a = tempfile::tempdir().unwrap();
        // nothing shared yet: a stale local checkpoint is dropped
        std::fs::create_dir_all(a.path().join("chk-000000000009")).unwrap();
        std::fs::write(a.path().join("manifest.json"), b"{\"latest\":9}").unwrap();
        r.fetch(a.path()).unwrap();
        assert!(!a.path().join("manifest.json").exists());
        assert!(!a.path().join("chk-000000000009").exists());
        for id in [1u64, 2] {
            let d = a.path().join(checkpoint_folder(id));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("meta.json"), format!("{{\"id\":{id}}}")).unwrap();
            std::fs::write(d.join("shard-0.snap"), vec![id as u8; 100]).unwrap();
            let m = format!(
                "{{\"version\":1,\"latest\":{id},\"completed\":[1,{id}],\"finished\":false}}"
            );
            let m = if id == 2 {
                m.replace("[1,2]", "[2]")
            } else {
                m
            };
            r.publish(a.path(), id, m.as_bytes()).unwrap();
        }
        // a sink's staged epoch travels with the checkpoint
        std::fs::create_dir_all(a.path().join("kafka-stage")).unwrap();
        std::fs::write(
            a.path().join("kafka-stage/stage-000000000003.staged"),
            b"epoch 3",
        )
        .unwrap();
        std::fs::write(
            a.path().join("kafka-stage/.stage-000000000004.pending"),
            b"open",
        )
        .unwrap();
        let d = a.path().join(checkpoint_folder(3));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("meta.json"), b"{\"id\":3}").unwrap();
        r.publish(
            a.path(),
            3,
            b"{\"version\":1,\"latest\":3,\"completed\":[2,3],\"finished\":false}",
        )
        .unwrap();
        let b = tempfile::tempdir().unwrap();
        r.fetch(b.path()).unwrap();
        assert_eq!(
            std::fs::read(b.path().join("kafka-stage/stage-000000000003.staged")).unwrap(),
            b"epoch 3"
        );
        assert!(!b
            .path()
            .join("kafka-stage/.stage-000000000004.pending")
            .exists());
        // the staged epoch is dropped from the store once it is gone here
        std::fs::remove_file(a.path().join("kafka-stage/stage-000000000003.staged")).unwrap();
        r.publish(
            a.path(),
            3,
            b"{\"version\":1,\"latest\":3,\"completed\":[2,3],\"finished\":false}",
        )
        .unwrap();
        assert!(!shared
            .path()
            .join("t-0/kafka-stage/stage-000000000003.staged")
            .exists());
        std::fs::remove_dir_all(a.path().join(checkpoint_folder(3))).unwrap();
        r.publish(
            a.path(),
            2,
            b"{\"version\":1,\"latest\":2,\"completed\":[2],\"finished\":false}",
        )
        .unwrap();
        let b = tempfile::tempdir().unwrap();
        r.fetch(b.path()).unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.path().join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["latest"], 2);
        assert_eq!(m["completed"], serde_json::json!([2]));
        assert_eq!(
            std::fs::read(b.path().join("chk-000000000002/shard-0.snap")).unwrap(),
            vec![2u8; 100]
        );
        // the pruned checkpoint is gone from the store
        assert!(
            !shared.path().join("t-0/chk-000000000001").exists()
                || std::fs::read_dir(shared.path().join("t-0/chk-000000000001"))
                    .unwrap()
                    .next()
                    .is_none()
        );
        // fetching again is a no-op; a working copy ahead of the store is reset to it
        r.fetch(b.path()).unwrap();
        std::fs::create_dir_all(b.path().join("chk-000000000003")).unwrap();
        std::fs::write(b.path().join("manifest.json"), b"{\"latest\":3}").unwrap();
        r.fetch(b.path()).unwrap();
        assert!(!b.path().join("chk-000000000003").exists());
        assert!(b.path().join("chk-000000000002/meta.json").exists());
    }
}
