//! The serving layer over the PostgreSQL wire protocol, so `psql`, Grafana's PostgreSQL data
//! source and any PostgreSQL driver query the merged views directly.
//!
//! Every statement goes through [`Catalog`], exactly like `/api/sql`: a fresh context per
//! statement (one consistent moment of archive, batch views and live windows), read-only,
//! under the same time, memory and row limits. The protocol adds:
//!
//! * the extended protocol (Parse/Describe/Bind/Execute) with `$n` parameters, whose types
//!   come from the planner (or the client), decoded from text or binary;
//! * several statements in one simple query, run in order, stopping at the first error;
//! * the session statements drivers send on their own (`SET`, `BEGIN`/`COMMIT`/`ROLLBACK`,
//!   `DISCARD`, `DEALLOCATE`, `SHOW <setting>`), answered without effect: nothing here
//!   writes and each statement sees its own snapshot, so a transaction changes nothing.
//!
//! An answer longer than `max_rows` is an error (SQLSTATE 54000), not a silently cut result:
//! a PostgreSQL client has no way to see a truncation flag.

use crate::catalog::{Answer, Catalog};
use crate::config::PgConfig;
use crate::ServingError;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures_util::Sink;
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuthStartupHandler};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The version clients are told (psql and drivers read it to pick their features).
const SERVER_VERSION: &str = "16.6";

/// Settings `SHOW` answers (lower-case names), as a PostgreSQL 16 server configured like this
/// one would.
const SETTINGS: [(&str, &str); 13] = [
    ("server_version", SERVER_VERSION),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO, MDY"),
    ("timezone", "UTC"),
    ("intervalstyle", "postgres"),
    ("integer_datetimes", "on"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
    ("search_path", "public"),
    ("max_identifier_length", "63"),
];

/// Serves the catalog over the PostgreSQL protocol on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    catalog: Arc<Catalog>,
    cfg: PgConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let login = cfg.effective_password().map(|password| {
        Arc::new(Login {
            user: cfg.user.clone(),
            password,
        })
    });
    let handlers = Arc::new(Handlers {
        backend: Arc::new(Backend {
            parser: Arc::new(StatementParser {
                catalog: catalog.clone(),
            }),
            catalog,
        }),
        login,
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let h = handlers.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, h).await {
                            tracing::debug!(%peer, error = %e, "postgres connection ended");
                        }
                    });
                }
                // out of file descriptors and the like: keep serving the connections there are
                Err(e) => {
                    tracing::warn!(error = %e, "postgres listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

struct Handlers {
    backend: Arc<Backend>,
    login: Option<Arc<Login>>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    // one per connection: the MD5 handler keeps the connection's expected answer
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(match &self.login {
            Some(l) => {
                let mut params = DefaultServerParameterProvider::default();
                params.server_version = SERVER_VERSION.into();
                params.default_transaction_read_only = true;
                Startup::Md5(Md5PasswordAuthStartupHandler::new(
                    l.clone(),
                    Arc::new(params),
                ))
            }
            None => Startup::Trust(Trust),
        })
    }
}

/// No authentication: only allowed on a loopback address (checked with the config).
struct Trust;

impl NoopStartupHandler for Trust {}

enum Startup {
    Trust(Trust),
    Md5(Md5PasswordAuthStartupHandler<Login, DefaultServerParameterProvider>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Trust(t) => t.on_startup(client, message).await,
            Startup::Md5(m) => m.on_startup(client, message).await,
        }
    }
}

/// The one user and password of `[serving.postgres]`.
#[derive(Debug)]
struct Login {
    user: String,
    password: String,
}

#[async_trait]
impl AuthSource for Login {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let nonce = salt();
        // an unknown user fails at the password step like a wrong password: whether a
        // user exists is not told
        let secret = if login.user() == Some(self.user.as_str()) {
            self.password.clone()
        } else {
            format!("{:?}{:?}", salt(), salt())
        };
        let user = login.user().unwrap_or_default();
        let hash = hash_md5_password(user, &secret, &nonce);
        Ok(Password::new(Some(nonce.to_vec()), hash.into_bytes()))
    }
}

/// Four unpredictable bytes per login (the MD5 exchange's salt).
fn salt() -> [u8; 4] {
    use std::hash::BuildHasher;
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = std::collections::hash_map::RandomState::new().hash_one((n, nanos));
    (h as u32).to_le_bytes()
}

/// A statement as the protocol sees it.
#[derive(Clone, Debug)]
pub enum PgStatement {
    /// A query for the catalog, with what Describe answers.
    Query {
        sql: String,
        schema: SchemaRef,
        /// Each `$n`'s type as the client sends it: the client's own, else the planner's,
        /// else text.
        params: Vec<Type>,
    },
    /// A session statement answered without effect (the tag says which).
    Session(Session),
    /// `SHOW <setting>`: one row.
    Show { name: String, value: String },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Session {
    Set,
    Begin,
    Commit,
    Rollback,
    Discard,
    Deallocate,
}

impl Session {
    fn response(self) -> Response {
        match self {
            Session::Set => Response::Execution(Tag::new("SET")),
            Session::Discard => Response::Execution(Tag::new("DISCARD ALL")),
            Session::Deallocate => Response::Execution(Tag::new("DEALLOCATE")),
            Session::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Session::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Session::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
        }
    }
}

/// What a statement of the given text is, before any planning: a session statement, a
/// `SHOW`, or a query (its text as given when it is the only statement).
fn split(sql: &str) -> Result<Vec<Piece>, ServingError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| ServingError::BadQuery(e.to_string()))?;
    let alone = statements.len() == 1;
    Ok(statements
        .into_iter()
        .map(|s| match &s {
            Statement::Set(_) => Piece::Session(Session::Set),
            Statement::StartTransaction { .. } => Piece::Session(Session::Begin),
            Statement::Commit { .. } => Piece::Session(Session::Commit),
            Statement::Rollback { .. } => Piece::Session(Session::Rollback),
            Statement::Discard { .. } => Piece::Session(Session::Discard),
            Statement::Deallocate { .. } => Piece::Session(Session::Deallocate),
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.to_lowercase())
                    .collect::<Vec<_>>()
                    .join(".");
                match SETTINGS.iter().find(|(n, _)| *n == name) {
                    Some((n, v)) => Piece::Show(n.to_string(), v.to_string()),
                    None => Piece::Query(s.to_string()),
                }
            }
            _ if alone => Piece::Query(sql.to_string()),
            _ => Piece::Query(s.to_string()),
        })
        .collect())
}

enum Piece {
    Session(Session),
    Show(String, String),
    Query(String),
}

struct StatementParser {
    catalog: Arc<Catalog>,
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut pieces = split(sql).map_err(pg_error)?;
        if pieces.len() != 1 {
            return Err(pg_error(ServingError::BadQuery(format!(
                "a prepared statement holds one statement, got {}",
                pieces.len()
            ))));
        }
        Ok(Some(match pieces.remove(0) {
            Piece::Session(s) => PgStatement::Session(s),
            Piece::Show(name, value) => PgStatement::Show { name, value },
            Piece::Query(sql) => {
                let d = self.catalog.describe(&sql).await.map_err(pg_error)?;
                let n = d.params.len().max(types.len());
                let params = (0..n)
                    .map(|i| {
                        if let Some(Some(t)) = types.get(i) {
                            return t.clone();
                        }
                        match d.params.get(i) {
                            Some(Some(dt)) => into_pg_type(dt).unwrap_or(Type::TEXT),
                            _ => Type::TEXT,
                        }
                    })
                    .collect();
                PgStatement::Query {
                    sql,
                    schema: d.schema,
                    params,
                }
            }
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(match stmt {
            PgStatement::Query { params, .. } => params.clone(),
            _ => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        // a statement's Describe comes before Bind chose the formats: text, as PostgreSQL says
        let format = format.unwrap_or(&Format::UnifiedText);
        match stmt {
            PgStatement::Query { schema, .. } => arrow_schema_to_pg_fields(schema, format, None),
            PgStatement::Show { name, .. } => {
                arrow_schema_to_pg_fields(&show_schema(name), format, None)
            }
            PgStatement::Session(_) => Ok(Vec::new()),
        }
    }
}

struct Backend {
    catalog: Arc<Catalog>,
    parser: Arc<StatementParser>,
}

impl Backend {
    async fn answer(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        format: &Format,
    ) -> Result<Response, ServingError> {
        let a = self.catalog.query(sql, params).await?;
        if a.truncated {
            return Err(ServingError::TooManyRows(self.catalog.config().max_rows));
        }
        rows(a, format)
    }
}

/// An answer as the protocol's row description and data rows.
fn rows(a: Answer, format: &Format) -> Result<Response, ServingError> {
    let fields = Arc::new(
        arrow_schema_to_pg_fields(&a.schema, format, None)
            .map_err(|e| ServingError::Internal(format!("answer columns: {e}")))?,
    );
    let f = fields.clone();
    let data = a
        .batches
        .into_iter()
        .flat_map(move |b| encode_recordbatch(f.clone(), b));
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures_util::stream::iter(data),
    )))
}

fn show_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}

fn show(name: &str, value: &str, format: &Format) -> Result<Response, ServingError> {
    let schema = show_schema(name);
    let col: ArrayRef = Arc::new(StringArray::from(vec![value]));
    let batch = RecordBatch::try_new(schema.clone(), vec![col])?;
    rows(
        Answer {
            schema,
            batches: vec![batch],
            rows: 1,
            truncated: false,
            horizon: None,
            elapsed: Duration::ZERO,
        },
        format,
    )
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let pieces = match split(query) {
            Ok(p) => p,
            Err(e) => return Ok(vec![Response::Error(Box::new(error_info(&e)))]),
        };
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            let r = match p {
                Piece::Session(s) => Ok(s.response()),
                Piece::Show(name, value) => show(&name, &value, &Format::UnifiedText),
                Piece::Query(sql) => self.answer(&sql, Vec::new(), &Format::UnifiedText).await,
            };
            match r {
                Ok(r) => out.push(r),
                // PostgreSQL runs no statement after a failed one
                Err(e) => {
                    log_failure(query, &e);
                    out.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = PgStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let format = &portal.result_column_format;
        let r = match &portal.statement.statement {
            PgStatement::Session(s) => Ok(s.response()),
            PgStatement::Show { name, value } => show(name, value, format),
            PgStatement::Query { sql, params, .. } => {
                let values = params
                    .iter()
                    .enumerate()
                    .map(|(i, t)| param(portal, i, t))
                    .collect::<PgWireResult<Vec<_>>>()?;
                self.answer(sql, values, format)
                    .await
                    .inspect_err(|e| log_failure(sql, e))
            }
        };
        r.map_err(pg_error)
    }
}

/// Parameter `i` of the portal as a value of the type the client was told (or told us).
fn param(portal: &Portal<PgStatement>, i: usize, t: &Type) -> PgWireResult<ScalarValue> {
    let p = |e: PgWireError| pg_error(ServingError::BadQuery(format!("parameter ${}: {e}", i + 1)));
    Ok(match *t {
        Type::BOOL => ScalarValue::Boolean(portal.parameter(i, t).map_err(p)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter(i, t).map_err(p)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter(i, t).map_err(p)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter(i, t).map_err(p)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter(i, t).map_err(p)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter(i, t).map_err(p)?),
        // exact: through its decimal text, cast by the catalog to the column's scale
        Type::NUMERIC => ScalarValue::Utf8(
            portal
                .parameter::<rust_decimal::Decimal>(i, t)
                .map_err(p)?
                .map(|d| d.to_string()),
        ),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<chrono::NaiveDate>(i, t)
                .map_err(p)?
                .map(|d| (d - chrono::NaiveDate::default()).num_days() as i32),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::NaiveDateTime>(i, t)
                .map_err(p)?
                .map(|d| d.and_utc().timestamp_micros()),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, t)
                .map_err(p)?
                .map(|d| d.timestamp_micros()),
            Some("UTC".into()),
        ),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            ScalarValue::Utf8(portal.parameter::<String>(i, t).map_err(p)?)
        }
        _ => {
            return Err(pg_error(ServingError::BadQuery(format!(
            "parameter ${}: type {t} is not supported (use text, a number, a date or a timestamp)",
            i + 1
        ))))
        }
    })
}

fn log_failure(sql: &str, e: &ServingError) {
    match e {
        ServingError::BadQuery(_) | ServingError::TooManyRows(_) => {
            tracing::debug!(sql, error = %e, "postgres query refused")
        }
        _ => tracing::warn!(sql, error = %e, "postgres query failed"),
    }
}

/// The SQLSTATE a PostgreSQL client expects for each kind of failure.
fn error_info(e: &ServingError) -> ErrorInfo {
    let code = match e {
        ServingError::BadQuery(m) if m.contains("not supported") || m.contains("not allowed") => {
            "0A000"
        }
        ServingError::BadQuery(_) => "42601",
        ServingError::TooBig(_) => "53200",
        ServingError::Timeout(_) => "57014",
        // insufficient_resources: nothing is wrong with the statement, retrying may work
        ServingError::Busy(_) => "53000",
        ServingError::TooManyRows(_) => "54000",
        _ => "XX000",
    };
    ErrorInfo::new("ERROR".into(), code.into(), e.to_string())
}

fn pg_error(e: ServingError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_statements_and_settings_are_recognised() {
        let p = split("SET extra_float_digits = 3; BEGIN; SHOW TimeZone; SHOW datafusion.execution.batch_size; COMMIT; select 1").unwrap();
        assert!(matches!(p[0], Piece::Session(Session::Set)));
        assert!(matches!(p[1], Piece::Session(Session::Begin)));
        assert!(matches!(&p[2], Piece::Show(n, v) if n == "timezone" && v == "UTC"));
        // not a PostgreSQL setting: DataFusion's own SHOW answers (or refuses) it
        assert!(matches!(&p[3], Piece::Query(_)));
        assert!(matches!(p[4], Piece::Session(Session::Commit)));
        assert!(matches!(&p[5], Piece::Query(q) if q.eq_ignore_ascii_case("select 1")));
        // a statement alone keeps its text exactly
        let p = split("select  'a;b'  ").unwrap();
        assert!(matches!(&p[0], Piece::Query(q) if q == "select  'a;b'  "));
        assert!(matches!(split("selec 1"), Err(ServingError::BadQuery(_))));
    }

    #[test]
    fn salts_differ() {
        let s: std::collections::HashSet<[u8; 4]> = (0..100).map(|_| salt()).collect();
        assert!(s.len() > 95, "{}", s.len());
    }

    #[test]
    fn sqlstates() {
        assert_eq!(
            error_info(&ServingError::Timeout(Duration::from_secs(1))).code,
            "57014"
        );
        assert_eq!(error_info(&ServingError::TooManyRows(5)).code, "54000");
        assert_eq!(error_info(&ServingError::Busy(8)).code, "53000");
        assert_eq!(
            error_info(&ServingError::BadQuery("x".into())).code,
            "42601"
        );
    }
}
