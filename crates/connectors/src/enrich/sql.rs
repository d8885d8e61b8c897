//! A reference table from PostgreSQL or MySQL/MariaDB: a whole table or a query's result,
//! read over the text protocol, so every value arrives in the database's own text form
//! (`12.50`, `2024-03-01`) and one parser serves both databases and CSV.

use super::{Attributes, Builder, Shape};
use cartpulse_engine::enrich::{Loaded, TableLoader};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Postgres,
    Mysql,
}

pub struct SqlTable {
    db: Db,
    url: String,
    sql: String,
    shape: Shape,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A table read that takes longer than this is a failed load (the old rows stay).
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);

impl SqlTable {
    /// Checks the URL now, so a typo fails at start-up rather than at the first load.
    pub fn new(db: Db, url: String, sql: String, shape: Shape) -> Result<Self, String> {
        let bad = |e: String| format!("expected a {db:?} URL: {e}");
        match db {
            Db::Postgres => {
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| bad(e.to_string()))?;
            }
            Db::Mysql => {
                mysql_async::Opts::from_url(&url).map_err(|e| bad(e.to_string()))?;
            }
        }
        Ok(SqlTable {
            db,
            url,
            sql,
            shape,
        })
    }

    fn read<T: Attributes>(&self) -> Result<Loaded<T>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let work = async {
            match self.db {
                Db::Postgres => self.postgres::<T>().await,
                Db::Mysql => self.mysql::<T>().await,
            }
        };
        rt.block_on(async {
            tokio::time::timeout(QUERY_TIMEOUT, work)
                .await
                .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))?
        })
    }

    async fn postgres<T: Attributes>(&self) -> Result<Loaded<T>, String> {
        use tokio_postgres::SimpleQueryMessage as M;
        let cfg: tokio_postgres::Config = self.url.parse().map_err(|e| format!("{e}"))?;
        let (client, conn) =
            tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| format!("cannot connect within {CONNECT_TIMEOUT:?}"))?
                .map_err(|e| format!("cannot connect: {e}"))?;
        let conn = tokio::spawn(conn);
        let msgs = client
            .simple_query(&self.sql)
            .await
            .map_err(|e| format!("query `{}`: {}", self.sql, pg_error(&e)))?;
        drop(client);
        let _ = conn.await;
        let mut b: Option<Builder<T>> = None;
        let mut values: Vec<Option<&str>> = Vec::new();
        for m in &msgs {
            match m {
                M::RowDescription(cols) if b.is_none() => {
                    let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                    b = Some(Builder::new(&self.shape, &names)?);
                }
                M::Row(r) => {
                    let b = match &mut b {
                        Some(b) => b,
                        None => {
                            let names: Vec<&str> = r.columns().iter().map(|c| c.name()).collect();
                            b.insert(Builder::new(&self.shape, &names)?)
                        }
                    };
                    values.clear();
                    values.extend((0..r.len()).map(|i| r.get(i)));
                    b.row(&values);
                }
                _ => {}
            }
        }
        b.map(|b| b.out)
            .ok_or_else(|| format!("query `{}` returned no result set", self.sql))
    }

    async fn mysql<T: Attributes>(&self) -> Result<Loaded<T>, String> {
        use mysql_async::prelude::Queryable;
        let opts = mysql_async::Opts::from_url(&self.url).map_err(|e| e.to_string())?;
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, mysql_async::Conn::new(opts))
            .await
            .map_err(|_| format!("cannot connect within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect: {e}"))?;
        let q = |e: mysql_async::Error| format!("query `{}`: {e}", self.sql);
        let mut result = conn.query_iter(self.sql.as_str()).await.map_err(q)?;
        let names: Vec<String> = result
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        if names.is_empty() {
            return Err(format!("query `{}` returned no result set", self.sql));
        }
        let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut b = Builder::<T>::new(&self.shape, &names_ref)?;
        let mut bad_text = 0u64;
        result
            .for_each(|row| {
                let texts: Vec<Option<String>> = (0..row.len())
                    .map(|i| match row.as_ref(i) {
                        None | Some(mysql_async::Value::NULL) => None,
                        Some(mysql_async::Value::Bytes(v)) => match std::str::from_utf8(v) {
                            Ok(s) => Some(s.to_string()),
                            Err(_) => {
                                bad_text += 1;
                                None
                            }
                        },
                        // the text protocol sends everything as bytes; a binary value
                        // (a driver setting) still has a plain text form
                        Some(v) => Some(v.as_sql(true).trim_matches('\'').to_string()),
                    })
                    .collect();
                let values: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
                b.row(&values);
            })
            .await
            .map_err(q)?;
        drop(result);
        let _ = conn.disconnect().await;
        if bad_text > 0 {
            tracing::warn!(
                values = bad_text,
                "enrichment values that are not UTF-8 read as NULL"
            );
        }
        Ok(b.out)
    }
}

/// The server's own message (`relation "products" does not exist`), not just "db error".
fn pg_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

impl<T: Attributes> TableLoader<T> for SqlTable {
    fn describe(&self) -> String {
        // the URL without its password
        let url = match url_without_password(&self.url) {
            Some(u) => u,
            None => format!("{:?} database", self.db),
        };
        format!("{url}: {}", self.sql)
    }

    fn load(&self) -> Result<Loaded<T>, String> {
        // a load may be asked for from inside a Tokio runtime (a caller's async code);
        // a runtime of its own on a plain thread never nests in it
        std::thread::scope(|s| {
            s.spawn(|| self.read::<T>())
                .join()
                .unwrap_or_else(|_| Err("the table reader panicked".into()))
        })
    }
}

fn url_without_password(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let user = auth.map(|a| a.split_once(':').map_or(a, |(u, _)| u));
    Some(match user {
        Some(u) => format!("{scheme}://{u}@{host}"),
        None => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptions_never_show_a_password() {
        assert_eq!(
            super::url_without_password("mysql://root:s3cret@db:3306/shop").unwrap(),
            "mysql://root@db:3306/shop"
        );
        assert_eq!(
            super::url_without_password("postgres://db/shop").unwrap(),
            "postgres://db/shop"
        );
    }
}
