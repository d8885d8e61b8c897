//! Where enrichment tables come from: a CSV file, a PostgreSQL or a MySQL/MariaDB table or
//! query (`[enrich.products]`, `[enrich.users]`). Every reader hands rows over as text,
//! by column name, and one builder turns them into typed attributes, so the three readers
//! agree on what a price, a stock figure or a date is.

mod csv;
mod sql;

use cartpulse_engine::enrich::{Enricher, Loaded, OnMiss, TableLoader, TableSpec};
use cartpulse_model::{ProductInfo, UserInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[enrich]`: the product table (joined by sku) and the user table (joined by user id).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichConfig {
    pub products: Option<TableConfig>,
    pub users: Option<TableConfig>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TableFrom {
    Csv,
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub from: TableFrom,
    /// The CSV file (`from = "csv"`; the first line names the columns).
    pub path: Option<PathBuf>,
    /// `postgres://user@host/db` or `mysql://user@host:3306/db`.
    pub url: Option<String>,
    /// A table to read whole …
    pub table: Option<String>,
    /// … or a query whose result is the table.
    pub query: Option<String>,
    /// The key column; `sku` for products, `user_id` for users.
    pub key: Option<String>,
    /// Field → column, for columns not named like the field (`name = "title"`).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Reload interval (`"5m"`); without it the table is read once at start.
    #[serde(default, with = "humantime_serde")]
    pub refresh: Option<Duration>,
    #[serde(default)]
    pub on_miss: OnMiss,
    /// Field → value given to events whose key is missing, with `on_miss = "default"`.
    #[serde(default)]
    pub default: BTreeMap<String, String>,
}

impl TableConfig {
    /// A CSV table whose columns are named like the fields, read once.
    pub fn csv(path: PathBuf) -> Self {
        TableConfig {
            from: TableFrom::Csv,
            path: Some(path),
            url: None,
            table: None,
            query: None,
            key: None,
            columns: BTreeMap::new(),
            refresh: None,
            on_miss: OnMiss::Keep,
            default: BTreeMap::new(),
        }
    }
}

/// A record type a table can fill: products or users.
pub trait Attributes: Default + Send + Sync + 'static {
    const TABLE: &'static str;
    const KEY: &'static str;
    fn fields() -> &'static [&'static str];
    fn set(&mut self, field: &str, value: &str) -> Result<(), String>;
}

impl Attributes for ProductInfo {
    const TABLE: &'static str = "products";
    const KEY: &'static str = "sku";
    fn fields() -> &'static [&'static str] {
        &ProductInfo::FIELDS
    }
    fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        ProductInfo::set(self, field, value)
    }
}

impl Attributes for UserInfo {
    const TABLE: &'static str = "users";
    const KEY: &'static str = "user_id";
    fn fields() -> &'static [&'static str] {
        &UserInfo::FIELDS
    }
    fn set(&mut self, field: &str, value: &str) -> Result<(), String> {
        UserInfo::set(self, field, value)
    }
}

/// Builds the enricher `[enrich]` describes and loads its tables (`None` without tables).
/// Errors name the key (`enrich.products.url`) and what was expected, or the table that
/// could not be read.
pub fn build(cfg: &EnrichConfig) -> Result<Option<Arc<Enricher>>, String> {
    let products = cfg.products.as_ref().map(spec::<ProductInfo>).transpose()?;
    let users = cfg.users.as_ref().map(spec::<UserInfo>).transpose()?;
    if products.is_none() && users.is_none() {
        return Ok(None);
    }
    Enricher::new(products, users)
        .map(|e| Some(Arc::new(e)))
        .map_err(|e| e.to_string())
}

fn spec<T: Attributes>(c: &TableConfig) -> Result<TableSpec<T>, String> {
    let key = |k: &str| format!("key `enrich.{}.{k}`", T::TABLE);
    for f in c.columns.keys().chain(c.default.keys()) {
        if !T::fields().contains(&f.as_str()) {
            let what = if c.columns.contains_key(f) {
                "columns"
            } else {
                "default"
            };
            return Err(format!(
                "{}: expected one of {}",
                key(&format!("{what}.{f}")),
                T::fields().join(", ")
            ));
        }
    }
    let mut default = T::default();
    for (f, v) in &c.default {
        default
            .set(f, v)
            .map_err(|e| format!("{}: {e}", key(&format!("default.{f}"))))?;
    }
    if c.on_miss == OnMiss::Default && c.default.is_empty() {
        return Err(format!(
            "{}: expected at least one field with on_miss = \"default\"",
            key("default")
        ));
    }
    if c.refresh == Some(Duration::ZERO) {
        return Err(format!("{}: expected a positive interval", key("refresh")));
    }
    let shape = Shape {
        key: c.key.clone().unwrap_or_else(|| T::KEY.to_string()),
        columns: T::fields()
            .iter()
            .map(|f| {
                let col = c.columns.get(*f);
                (
                    *f,
                    col.cloned().unwrap_or_else(|| f.to_string()),
                    col.is_some(),
                )
            })
            .collect(),
    };
    let loader: Box<dyn TableLoader<T>> = match c.from {
        TableFrom::Csv => {
            if c.url.is_some() || c.table.is_some() || c.query.is_some() {
                return Err(format!(
                    "{}: expected only `path` with from = \"csv\" (url, table and query are for databases)",
                    key("from")
                ));
            }
            let path = c.path.clone().ok_or_else(|| {
                format!("{}: expected a CSV file with from = \"csv\"", key("path"))
            })?;
            Box::new(csv::CsvTable::new(path, shape))
        }
        TableFrom::Postgres | TableFrom::Mysql => {
            if c.path.is_some() {
                return Err(format!(
                    "{}: expected no `path` with a database (use url and table or query)",
                    key("path")
                ));
            }
            let url = c
                .url
                .clone()
                .ok_or_else(|| format!("{}: expected the database URL", key("url")))?;
            let sql = match (&c.table, &c.query) {
                (Some(t), None) => {
                    if t.is_empty()
                        || !t
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')
                    {
                        return Err(format!(
                            "{}: expected a table name (letters, digits, `_` and `.`), or a `query`",
                            key("table")
                        ));
                    }
                    format!("SELECT * FROM {t}")
                }
                (None, Some(q)) => q.clone(),
                _ => {
                    return Err(format!(
                        "{}: expected exactly one of `table` and `query`",
                        key("table")
                    ))
                }
            };
            let db = if c.from == TableFrom::Postgres {
                sql::Db::Postgres
            } else {
                sql::Db::Mysql
            };
            Box::new(
                sql::SqlTable::new(db, url, sql, shape)
                    .map_err(|e| format!("{}: {e}", key("url")))?,
            )
        }
    };
    Ok(TableSpec {
        loader,
        on_miss: c.on_miss,
        default,
        refresh: c.refresh,
    })
}

/// Which columns a table's rows are read from.
#[derive(Clone, Debug)]
struct Shape {
    key: String,
    /// (field, column, named in `columns`): an explicitly named column must exist, a field
    /// whose same-named column is absent is simply not in this table.
    columns: Vec<(&'static str, String, bool)>,
}

/// Turns text rows into a table. Rows whose value cannot be read, or whose key is empty
/// or repeated, are skipped and counted (the first is kept for the log).
struct Builder<T> {
    key_at: usize,
    fields: Vec<(&'static str, usize)>,
    out: Loaded<T>,
}

impl<T: Attributes> Builder<T> {
    fn new(shape: &Shape, header: &[&str]) -> Result<Self, String> {
        let find = |c: &str| header.iter().position(|h| h.trim() == c);
        let key_at = find(&shape.key).ok_or_else(|| {
            format!(
                "no key column `{}` (columns: {})",
                shape.key,
                header.join(", ")
            )
        })?;
        let mut fields = Vec::new();
        for (f, col, explicit) in &shape.columns {
            match find(col) {
                Some(i) => fields.push((*f, i)),
                None if *explicit => {
                    return Err(format!(
                        "no column `{col}` (mapped to `{f}`; columns: {})",
                        header.join(", ")
                    ))
                }
                None => {}
            }
        }
        Ok(Builder {
            key_at,
            fields,
            out: Loaded::default(),
        })
    }

    /// One row; `None` (or an empty CSV cell) is NULL, which leaves the field unset.
    fn row(&mut self, values: &[Option<&str>]) {
        let key = values.get(self.key_at).copied().flatten().unwrap_or("");
        let bad = |out: &mut Loaded<T>, why: String| {
            out.bad_rows += 1;
            if out.first_bad.is_none() {
                out.first_bad = Some(why);
            }
        };
        if key.is_empty() {
            return bad(&mut self.out, "a row without a key".into());
        }
        let mut attrs = T::default();
        for &(f, i) in &self.fields {
            if let Some(v) = values.get(i).copied().flatten() {
                if let Err(e) = attrs.set(f, v) {
                    return bad(&mut self.out, format!("key `{key}`, `{f}`: {e}"));
                }
            }
        }
        match self.out.rows.entry(key.into()) {
            hashbrown::hash_map::Entry::Occupied(_) => bad(
                &mut self.out,
                format!("key `{key}` appears more than once; the first row is kept"),
            ),
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(Arc::new(attrs));
            }
        }
    }
}

#[cfg(test)]
mod tests;
