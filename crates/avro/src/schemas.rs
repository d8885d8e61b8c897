//! Writer schemas: one fixed schema (plain wire), or schemas by id from a directory and/or a
//! Confluent Schema Registry, each fetched once and kept for the life of the decoder (ids in
//! a registry are immutable).

use crate::ConfigError;
use apache_avro::Schema;
use cartpulse_model::DecodeError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A writer schema with what decoding needs to know about it, worked out once.
#[derive(Debug)]
pub(crate) struct Writer {
    pub schema: Schema,
    /// Same as the reader schema: resolution would change nothing and is skipped.
    pub is_reader: bool,
    /// The writer's `price` field, whose decimal scale says what its bytes mean.
    pub price: Option<Schema>,
}

impl Writer {
    pub fn new(schema: Schema, reader: &Schema) -> Writer {
        let price = match &schema {
            Schema::Record(r) => r
                .fields
                .iter()
                .find(|f| f.name == "price")
                .map(|f| f.schema.clone()),
            _ => None,
        };
        Writer {
            is_reader: schema.canonical_form() == reader.canonical_form(),
            schema,
            price,
        }
    }
}

pub(crate) fn parse_schema(text: &str) -> Result<Schema, String> {
    Schema::parse_str(text).map_err(|e| format!("not an Avro schema: {e}"))
}

pub(crate) fn read_schema_file(key: &'static str, path: &Path) -> Result<Schema, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read `{}`: {e}", path.display())))?;
    parse_schema(&text).map_err(|e| ConfigError::new(key, format!("`{}`: {e}", path.display())))
}

enum Entry {
    Ready(Arc<Writer>),
    Failed { why: String, at: Instant },
}

/// Schemas by id (Confluent wire format).
pub(crate) struct ById {
    reader: Arc<Schema>,
    dir: Option<PathBuf>,
    /// The registry's base URL without a trailing slash.
    url: Option<String>,
    agent: ureq::Agent,
    retry_after: Duration,
    cache: RwLock<HashMap<u32, Entry>>,
    /// Held while fetching, so decoder threads missing the same id ask upstream once.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for ById {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self.cache.read().map_or(0, |c| c.len());
        f.debug_struct("ById")
            .field("dir", &self.dir)
            .field("url", &self.url)
            .field("cached", &known)
            .finish()
    }
}

impl ById {
    pub fn new(
        reader: Arc<Schema>,
        dir: Option<PathBuf>,
        url: Option<String>,
        timeout: Duration,
        retry_after: Duration,
    ) -> Result<ById, ConfigError> {
        let mut cache = HashMap::new();
        if let Some(d) = &dir {
            // every schema already there is parsed now, so a broken file stops the start
            // rather than dead-lettering its messages one by one
            let list = std::fs::read_dir(d).map_err(|e| {
                ConfigError::new(
                    "schema_dir",
                    format!("cannot list the directory `{}`: {e}", d.display()),
                )
            })?;
            for entry in list.flatten() {
                let path = entry.path();
                let Some(id) = schema_file_id(&path) else {
                    continue;
                };
                let schema = read_schema_file("schema_dir", &path)?;
                cache.insert(id, Entry::Ready(Arc::new(Writer::new(schema, &reader))));
            }
        }
        let url = match url {
            None => None,
            Some(u) => {
                let u = u.trim_end_matches('/').to_string();
                let rest = u.strip_prefix("http://").ok_or_else(|| {
                    ConfigError::new(
                        "registry_url",
                        format!(
                            "expected an `http://host:port` URL, got `{u}` (this build has no TLS client)"
                        ),
                    )
                })?;
                if rest.is_empty() {
                    return Err(ConfigError::new(
                        "registry_url",
                        format!("expected an `http://host:port` URL, got `{u}`"),
                    ));
                }
                Some(u)
            }
        };
        Ok(ById {
            reader,
            dir,
            url,
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
            retry_after,
            cache: RwLock::new(cache),
            fetching: Mutex::new(()),
        })
    }

    pub fn get(&self, id: u32) -> Result<Arc<Writer>, DecodeError> {
        if let Some(r) = self.cached(id) {
            return r;
        }
        let _one_at_a_time = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.cached(id) {
            return r;
        }
        let entry = match self.fetch(id) {
            Ok(s) => Entry::Ready(Arc::new(Writer::new(s, &self.reader))),
            Err(why) => {
                tracing::warn!(schema_id = id, error = %why, "avro writer schema unavailable");
                Entry::Failed {
                    why,
                    at: Instant::now(),
                }
            }
        };
        let r = answer(id, &entry);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry);
        r
    }

    /// The remembered answer, unless it is a failure old enough to ask again.
    fn cached(&self, id: u32) -> Option<Result<Arc<Writer>, DecodeError>> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        match cache.get(&id)? {
            Entry::Failed { at, .. } if at.elapsed() >= self.retry_after => None,
            e => Some(answer(id, e)),
        }
    }

    fn fetch(&self, id: u32) -> Result<Schema, String> {
        let mut looked = Vec::new();
        if let Some(d) = &self.dir {
            let path = d.join(format!("{id}.avsc"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    return parse_schema(&text).map_err(|e| format!("`{}`: {e}", path.display()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    looked.push(format!("no `{}`", path.display()));
                }
                Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
            }
        }
        if let Some(url) = &self.url {
            return self.fetch_from_registry(url, id);
        }
        Err(looked.join(", "))
    }

    fn fetch_from_registry(&self, url: &str, id: u32) -> Result<Schema, String> {
        let at = format!("{url}/schemas/ids/{id}");
        let body = match self.agent.get(&at).call() {
            Ok(r) => r
                .into_string()
                .map_err(|e| format!("reading the answer of {at}: {e}"))?,
            Err(ureq::Error::Status(404, _)) => {
                return Err(format!("not registered (404 from {at})"));
            }
            Err(ureq::Error::Status(code, _)) => {
                return Err(format!("the registry answered {code} to {at}"));
            }
            Err(e) => return Err(format!("registry unreachable ({at}): {e}")),
        };
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{at} did not answer JSON: {e}"))?;
        if let Some(t) = v.get("schemaType").and_then(|t| t.as_str()) {
            if t != "AVRO" {
                return Err(format!("schema {id} is of type {t}, not AVRO"));
            }
        }
        let text = v
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| format!("{at}: the answer has no \"schema\" string"))?;
        parse_schema(text)
    }
}

fn answer(id: u32, e: &Entry) -> Result<Arc<Writer>, DecodeError> {
    match e {
        Entry::Ready(w) => Ok(w.clone()),
        Entry::Failed { why, .. } => Err(DecodeError::AvroUnknownSchema {
            id,
            why: why.clone(),
        }),
    }
}

/// `17.avsc` → 17.
fn schema_file_id(path: &Path) -> Option<u32> {
    if path.extension()? != "avsc" {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}
