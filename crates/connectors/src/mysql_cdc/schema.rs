//! Which columns of a mapped table hold which event field, resolved by name — from the
//! binlog's own column names when the server writes them (`binlog_row_metadata = FULL`),
//! otherwise from `information_schema`, re-read whenever a DDL statement touches the table.

use super::rows::TsKind;
use mysql_async::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Cart,
    Orders,
}

/// A column of a table as `information_schema` describes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct InfoCol {
    pub name: String,
    pub data_type: String,
    pub charset: Option<String>,
    pub collation: Option<String>,
}

/// One mapped table: the config, and what the server says about it.
#[derive(Clone, Debug)]
pub(crate) struct TableDef {
    pub kind: Kind,
    pub db: String,
    pub table: String,
    /// `source.cart_items` or `source.orders`, for messages.
    pub key: &'static str,
    /// (event field, column name); the event field is also the config key.
    pub cols: Vec<(&'static str, String)>,
    pub info: Vec<InfoCol>,
    pub pk: Vec<String>,
    pub engine: String,
}

/// Why a table definition could not be read.
#[derive(Debug)]
pub enum LoadError {
    /// The query failed (the message, and the driver's error to classify).
    Query(String, mysql_async::Error),
    /// The table is not there or not usable.
    Definition(String),
}

impl TableDef {
    pub fn qualified(&self) -> String {
        format!(
            "`{}`.`{}`",
            self.db.replace('`', "``"),
            self.table.replace('`', "``")
        )
    }

    /// Reads columns, primary key and engine; errors name the config key and keep the
    /// driver's error, so a dropped connection can be told from a missing table.
    pub async fn load(&mut self, conn: &mut Conn) -> Result<(), LoadError> {
        let rows: Vec<(String, String, Option<String>, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLLATION_NAME \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 ORDER BY ORDINAL_POSITION",
                (&self.db, &self.table),
            )
            .await
            .map_err(|e| {
                LoadError::Query(
                    format!("{}.table: cannot read information_schema: {e}", self.key),
                    e,
                )
            })?;
        if rows.is_empty() {
            return Err(LoadError::Definition(format!(
                "{}.table: table {} does not exist (or is not visible to this user)",
                self.key,
                self.qualified()
            )));
        }
        self.info = rows
            .into_iter()
            .map(|(name, data_type, charset, collation)| InfoCol {
                name,
                data_type: data_type.to_ascii_lowercase(),
                charset,
                collation,
            })
            .collect();
        let names: Vec<&str> = self.info.iter().map(|c| c.name.as_str()).collect();
        for (field, col) in &self.cols {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(col)) {
                return Err(LoadError::Definition(format!(
                    "{}.{field}: column `{col}` not found in {} (columns: {})",
                    self.key,
                    self.qualified(),
                    names.join(", ")
                )));
            }
        }
        self.pk = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
                 ORDER BY SEQ_IN_INDEX",
                (&self.db, &self.table),
            )
            .await
            .map_err(|e| {
                LoadError::Query(
                    format!("{}.table: cannot read information_schema: {e}", self.key),
                    e,
                )
            })?;
        let engine: Option<Option<String>> = conn
            .exec_first(
                "SELECT ENGINE FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&self.db, &self.table),
            )
            .await
            .map_err(|e| {
                LoadError::Query(
                    format!("{}.table: cannot read information_schema: {e}", self.key),
                    e,
                )
            })?;
        self.engine = engine.flatten().unwrap_or_default();
        Ok(())
    }

    /// Whether a statement may change this table's definition.
    pub fn touched_by(&self, default_db: &str, sql: &str) -> bool {
        let lower = sql.to_ascii_lowercase();
        let t = self.table.to_ascii_lowercase();
        let mentions = lower.match_indices(&t).any(|(i, _)| {
            let before = lower[..i].chars().next_back();
            let after = lower[i + t.len()..].chars().next();
            let ident = |c: Option<char>| {
                c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            };
            !ident(before) && !ident(after)
        });
        // an unqualified name refers to the statement's default database
        mentions
            && (default_db.eq_ignore_ascii_case(&self.db)
                || lower.contains(&self.db.to_ascii_lowercase()))
    }
}

/// Where each event field sits in a row of one table version.
#[derive(Clone, Debug, Default)]
pub(crate) struct Layout {
    pub user: usize,
    pub sku: Option<usize>,
    pub qty: Option<usize>,
    pub price: Option<usize>,
    pub ts: Option<usize>,
    pub category: Option<usize>,
    pub order_id: Option<usize>,
    pub pk: Vec<usize>,
    pub ts_kind: TsKind,
}

/// Column names the binlog carries for this table version, if the server writes them.
pub(crate) fn binlog_names(tme: &TableMapEvent<'_>) -> Option<Vec<String>> {
    for f in tme.iter_optional_meta() {
        if let Ok(OptionalMetadataField::ColumnName(names)) = f {
            let v: Result<Vec<String>, _> = names
                .iter_names()
                .map(|n| n.map(|n| n.name().into_owned()))
                .collect();
            return v.ok();
        }
    }
    None
}

/// The broad kind of a column type, to check a binlog row against `information_schema`
/// when the binlog carries no names.
fn family_of_binlog(t: ColumnType) -> &'static str {
    use ColumnType::*;
    match t {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
        | MYSQL_TYPE_INT24 | MYSQL_TYPE_YEAR | MYSQL_TYPE_BIT => "int",
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE | MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => "num",
        MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_TIME2 => "time",
        _ => "other",
    }
}

fn family_of_info(data_type: &str) -> &'static str {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "bit" => {
            "int"
        }
        "float" | "double" | "decimal" | "numeric" | "real" => "num",
        "timestamp" | "datetime" | "date" | "time" => "time",
        _ => "other",
    }
}

/// Resolves the mapped columns of `def` in one table version. `names` are the binlog's
/// names (authoritative) or, without them, `information_schema`'s, which are checked against
/// the binlog's column count and types so a table changed since is never mis-decoded.
pub(crate) fn layout(
    def: &TableDef,
    tme: &TableMapEvent<'_>,
    from_binlog: Option<&[String]>,
) -> Result<Layout, String> {
    let n = tme.columns_count() as usize;
    let names: Vec<&str> = match from_binlog {
        Some(b) => b.iter().map(String::as_str).collect(),
        None => {
            if def.info.len() != n {
                return Err(format!(
                    "{} has {} columns in the binlog but {} in information_schema: its \
                     definition changed since this row was written, and without \
                     binlog_row_metadata = FULL the rows cannot be decoded by name",
                    def.qualified(),
                    n,
                    def.info.len()
                ));
            }
            for (i, c) in def.info.iter().enumerate() {
                let bt = tme.get_column_type(i).ok().flatten();
                if let Some(bt) = bt {
                    let (a, b) = (family_of_binlog(bt), family_of_info(&c.data_type));
                    if a != b && !(a == "other" || b == "other") {
                        return Err(format!(
                            "{}: column {} (`{}`) is {} in information_schema but {bt:?} in \
                             the binlog: the table changed since this row was written; set \
                             binlog_row_metadata = FULL so rows are decoded by name",
                            def.qualified(),
                            i + 1,
                            c.name,
                            c.data_type
                        ));
                    }
                }
            }
            def.info.iter().map(|c| c.name.as_str()).collect()
        }
    };
    let find = |col: &str| names.iter().position(|n| n.eq_ignore_ascii_case(col));
    let mut l = Layout::default();
    for (field, col) in &def.cols {
        let i = find(col).ok_or_else(|| {
            format!(
                "{}.{field}: column `{col}` of {} no longer exists (columns now: {}); the \
                 source stops rather than mis-read rows: map the field to an existing column",
                def.key,
                def.qualified(),
                names.join(", ")
            )
        })?;
        match *field {
            "user_id" => l.user = i,
            "sku" => l.sku = Some(i),
            "qty" => l.qty = Some(i),
            "price" => l.price = Some(i),
            "ts" => {
                l.ts = Some(i);
                l.ts_kind = match tme.get_column_type(i).ok().flatten() {
                    Some(ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2) => {
                        TsKind::EpochSeconds
                    }
                    _ => TsKind::Natural,
                };
            }
            "category" => l.category = Some(i),
            "order_id" => l.order_id = Some(i),
            _ => {}
        }
    }
    for p in &def.pk {
        // a primary key column that is gone only matters while snapshot ranges are open;
        // the caller decides
        if let Some(i) = find(p) {
            l.pk.push(i);
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TableDef {
        TableDef {
            kind: Kind::Cart,
            db: "shop".into(),
            table: "cart_items".into(),
            key: "source.cart_items",
            cols: vec![],
            info: vec![],
            pk: vec![],
            engine: String::new(),
        }
    }

    #[test]
    fn ddl_detection_by_whole_name() {
        let d = def();
        assert!(d.touched_by("shop", "ALTER TABLE cart_items ADD COLUMN x INT"));
        assert!(d.touched_by("other", "alter table `shop`.`cart_items` drop column qty"));
        assert!(d.touched_by("shop", "RENAME TABLE cart_items TO old_cart"));
        assert!(!d.touched_by("shop", "ALTER TABLE cart_items_archive ADD x INT"));
        assert!(!d.touched_by("shop", "CREATE TABLE my_cart_items (x INT)"));
        assert!(!d.touched_by("other", "ALTER TABLE cart_items ADD x INT"));
    }
}
