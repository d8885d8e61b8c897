//! The `[serving]` config section: query limits and where the speed layer's windows are kept.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Serve merged views and SQL (`/api/sql`, `/api/views/…`) from `cartpulse run`. Needs a
    /// `parquet` sink (the history) and `[batch] views_dir` (the batch views).
    pub enabled: bool,
    /// A query running longer is cancelled and answered with an error.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Memory one query may hold for joins, sorts and aggregations (MiB); past it the query
    /// fails with "resources exhausted" instead of growing the process.
    pub memory_limit_mb: usize,
    /// Rows returned at most; an answer cut there says `"truncated": true`.
    pub max_rows: usize,
    /// DataFusion partitions (threads) per query; 0 means the number of cores.
    pub threads: usize,
    /// Queries running at once. A cancelled query keeps its slot until its threads have
    /// stopped (an operator in the middle of a long computation stops only when it next
    /// yields); a query finding every slot taken waits, within its time limit.
    pub max_queries: usize,
    /// Where the speed layer's window records after the batch horizon are journaled, so a
    /// restart serves them again; default `<checkpoint dir>/serving`.
    pub dir: Option<PathBuf>,
    /// The same SQL over the PostgreSQL wire protocol (`[serving.postgres]`).
    pub postgres: PgConfig,
}

/// `[serving.postgres]`: psql, Grafana's PostgreSQL data source and PostgreSQL drivers
/// connect here.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PgConfig {
    /// Address to listen on, e.g. `"127.0.0.1:5433"`; unset, there is no PostgreSQL server.
    pub listen: Option<SocketAddr>,
    /// The user a client logs in as when a password is set.
    pub user: String,
    /// MD5 password authentication when set (or from `CARTPULSE_PG_PASSWORD`, which wins).
    /// Without a password every client is trusted, so the address must be a loopback one.
    pub password: Option<String>,
}

/// Overrides `[serving.postgres] password`, so the secret need not sit in the config file.
pub const PG_PASSWORD_ENV: &str = "CARTPULSE_PG_PASSWORD";

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            listen: None,
            user: "cartpulse".into(),
            password: None,
        }
    }
}

impl PgConfig {
    pub fn effective_password(&self) -> Option<String> {
        std::env::var(PG_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| self.password.clone())
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(addr) = self.listen {
            if self.effective_password().is_none() && !addr.ip().is_loopback() {
                return Err(format!(
                    "postgres.listen: {addr} is not a loopback address; expected \
                     postgres.password (or {PG_PASSWORD_ENV}) to be set so clients must log in"
                ));
            }
            if self.user.is_empty() {
                return Err("postgres.user: expected a user name".into());
            }
        }
        Ok(())
    }
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            enabled: false,
            query_timeout: Duration::from_secs(30),
            memory_limit_mb: 1024,
            max_rows: 10_000,
            threads: 0,
            max_queries: 8,
            dir: None,
            postgres: PgConfig::default(),
        }
    }
}

impl ServingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.query_timeout < Duration::from_millis(10) {
            return Err("query_timeout: expected at least 10ms".into());
        }
        if self.memory_limit_mb < 16 {
            return Err("memory_limit_mb: expected at least 16".into());
        }
        if self.max_rows == 0 {
            return Err("max_rows: expected at least 1".into());
        }
        if self.max_queries == 0 {
            return Err("max_queries: expected at least 1".into());
        }
        self.postgres.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: ServingConfig = toml::from_str("enabled = true\nquery_timeout = \"5s\"").unwrap();
        assert!(c.enabled);
        assert_eq!(c.query_timeout, Duration::from_secs(5));
        assert_eq!(c.max_rows, 10_000);
        let e = toml::from_str::<ServingConfig>("max_row = 5").unwrap_err();
        assert!(e.to_string().contains("max_row"), "{e}");
        let c = ServingConfig {
            max_rows: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("max_rows"));
        // trusting every client is only for loopback
        let c: ServingConfig = toml::from_str("[postgres]\nlisten = \"0.0.0.0:5433\"").unwrap();
        if std::env::var(PG_PASSWORD_ENV).is_err() {
            assert!(c.validate().unwrap_err().contains("postgres.password"));
        }
        let c: ServingConfig =
            toml::from_str("[postgres]\nlisten = \"0.0.0.0:5433\"\npassword = \"s\"").unwrap();
        c.validate().unwrap();
        let e = toml::from_str::<ServingConfig>("[postgres]\nlisten = \"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }
}
