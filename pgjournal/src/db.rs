//! One PostgreSQL connection owned by one thread, every call bounded by a
//! timeout.
//!
//! Why tokio-postgres on a private current-thread runtime and not the sync
//! `postgres` crate (which is the same thing underneath): the sync crate
//! offers no timeout for a query, and a network that stops forwarding
//! without resetting the connection (a cut link, a stuck proxy) would then
//! hang the journal writer, the lease keeper or a standby for as long as
//! TCP keeps the connection open — minutes. Here every call is wrapped in
//! `tokio::time::timeout`; on a timeout or an error the connection is
//! dropped (its socket closed) and the next call connects again.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, Statement};
use tracing::debug;

/// A lazily connected client with a private runtime.
pub struct Db {
    rt: tokio::runtime::Runtime,
    url: String,
    client: Option<Client>,
    /// The task driving the connection: aborted (its socket closed at
    /// once, its pending requests dropped) when a call fails or times out.
    connection: Option<tokio::task::JoinHandle<()>>,
    /// Statements prepared on the current connection (cleared when it is
    /// replaced): a prepared statement saves a round trip per call.
    prepared: HashMap<&'static str, Statement>,
    /// Bound on connecting and on each call.
    pub timeout: Duration,
}

/// What a call could not do.
#[derive(Debug, Clone)]
pub enum DbError {
    /// Connecting, or the call, failed: the connection was dropped.
    Failed(String),
    /// No answer within the timeout: the connection was dropped.
    TimedOut,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Failed(e) => write!(f, "{e}"),
            DbError::TimedOut => write!(f, "no answer from PostgreSQL in time"),
        }
    }
}

impl Db {
    /// Not connected yet: the first call connects.
    pub fn new(url: &str, timeout: Duration) -> std::io::Result<Db> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Db { rt, url: url.to_owned(), client: None, connection: None, prepared: HashMap::new(), timeout })
    }

    /// Connects when not connected.
    fn connect(&mut self) -> Result<(), DbError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.reset();
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|e| DbError::Failed(format!("{e}")))?;
        config.connect_timeout(self.timeout);
        if config.get_application_name().is_none() {
            config.application_name("emq-router");
        }
        let fut = config.connect(NoTls);
        let (client, connection) = match self.rt.block_on(async { tokio::time::timeout(self.timeout, fut).await }) {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(DbError::Failed(describe(&e))),
            Err(_) => return Err(DbError::TimedOut),
        };
        let task = self.rt.spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        self.client = Some(client);
        self.connection = Some(task);
        Ok(())
    }

    /// Runs `f` on the client (connecting first) within the timeout
    /// (`timeout` overrides it when set). `f` gets the client by value and
    /// hands it back with its result, so that a timeout drops the future
    /// and the connection with it.
    pub fn call<T, F, Fut>(&mut self, timeout: Option<Duration>, f: F) -> Result<T, DbError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = (Client, Result<T, tokio_postgres::Error>)>,
    {
        self.connect()?;
        let limit = timeout.unwrap_or(self.timeout);
        let client = self.client.take().expect("connected");
        match self.rt.block_on(async { tokio::time::timeout(limit, f(client)).await }) {
            Ok((client, Ok(v))) => {
                self.client = Some(client);
                Ok(v)
            }
            Ok((_, Err(e))) => {
                self.reset();
                Err(DbError::Failed(describe(&e)))
            }
            Err(_) => {
                self.reset();
                Err(DbError::TimedOut)
            }
        }
    }

    /// `sql` prepared on the current connection (connecting first; prepared
    /// once per connection).
    pub fn prepared(&mut self, sql: &'static str) -> Result<Statement, DbError> {
        self.connect()?;
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let st = self.call(None, |c| async move {
            let r = c.prepare(sql).await;
            (c, r)
        })?;
        self.prepared.insert(sql, st.clone());
        Ok(st)
    }

    /// Drops the connection (closing its socket).
    pub fn reset(&mut self) {
        self.client = None;
        self.prepared.clear();
        if let Some(task) = self.connection.take() {
            task.abort();
        }
    }
}

/// The server's message (with its SQLSTATE) when there is one: the default
/// Display of a database error is only "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}
