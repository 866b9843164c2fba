use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::error::StoreError;

/// Opens transactions that will write.
///
/// On SQLite a plain `BEGIN` takes the write lock only at the first write;
/// if the transaction read first and another writer committed meanwhile,
/// that write fails at once with "database is locked" (no busy wait can
/// help). `BEGIN IMMEDIATE` takes the lock up front. And writers of one
/// file queue here first, in order, one at a time: SQLite's own wait for a
/// busy lock sleeps 1, 2, 5, 10... ms between looks, which under a few
/// concurrent writers costs far more than the writes.
pub trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<WriteTransaction<Self::Db>, sqlx::Error>> + Send;
}

/// A transaction from [`BeginWrite`]: use it as the transaction's
/// connection (`&mut *tx`), then `commit`. On SQLite it holds its file's
/// writer turn until it ends.
pub struct WriteTransaction<DB: sqlx::Database> {
    // Dropped first: the rollback is queued before the next writer's turn.
    tx: sqlx::Transaction<'static, DB>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<DB: sqlx::Database> WriteTransaction<DB> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl<DB: sqlx::Database> std::ops::Deref for WriteTransaction<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for WriteTransaction<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}

/// One writer turn per SQLite file in this process (bounded by the files
/// the process opens).
fn writer_turn(file: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static TURNS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Mutex::default);
    let mut turns = TURNS.lock().expect("writer turns poisoned");
    turns.entry(file.to_path_buf()).or_default().clone()
}

/// Waits for the writer turn of `pool`'s file: held while one statement
/// writes outside a transaction ([`crate::write_with_pool!`]).
pub async fn sqlite_writer_turn(pool: &SqlitePool) -> tokio::sync::OwnedMutexGuard<()> {
    writer_turn(pool.connect_options().get_filename())
        .lock_owned()
        .await
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<WriteTransaction<sqlx::Sqlite>, sqlx::Error> {
        let turn = writer_turn(self.connect_options().get_filename())
            .lock_owned()
            .await;
        let tx = self.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTransaction {
            tx,
            _turn: Some(turn),
        })
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<WriteTransaction<sqlx::Postgres>, sqlx::Error> {
        Ok(WriteTransaction {
            tx: self.begin().await?,
            _turn: None,
        })
    }
}

/// A relational pool; which one is decided by the URL at start.
#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone, Debug)]
pub struct DatabaseOptions {
    pub max_connections: u32,
    /// How long a query waits for a free connection before UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        DatabaseOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// `sqlite://<data_dir>/<name>.db`, the embedded default.
pub fn default_sqlite_url(data_dir: &Path, name: &str) -> String {
    format!("sqlite://{}", data_dir.join(format!("{name}.db")).display())
}

/// Query parameters whose values are secrets (`?password=` is how many
/// PostgreSQL URLs carry theirs), by their decoded names.
fn is_secret_parameter(name: &str) -> bool {
    let name = percent_decoded(name).to_ascii_lowercase();
    ["pass", "secret", "token", "key"]
        .iter()
        .any(|word| name.contains(word))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL without its passwords (in the user info or the query), for logs
/// and errors. The user info ends at the last '@', wherever a '?' or '/'
/// stands in the password; if a query holds an '@', more is hidden, never
/// less.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (user_info, after) = match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            (format!("{user}:***@"), host)
        }
        None => (String::new(), rest),
    };
    let (location, query) = match after.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (after, None),
    };
    let mut redacted = format!("{scheme}://{user_info}{location}");
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&parameters.join("&"));
    }
    redacted
}

impl Database {
    /// Opens the pool and checks one connection, so a wrong URL or a database
    /// that is down fails at start with the URL (password redacted) named.
    pub async fn connect(url: &str, options: &DatabaseOptions) -> Result<Database, StoreError> {
        let connect_error = |source| StoreError::Connect {
            url: redact_url(url),
            source,
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(parent) = Path::new(file)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                let mut builder = std::fs::DirBuilder::new();
                builder.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
                builder
                    .create(parent)
                    .map_err(|source| StoreError::DataDir {
                        path: parent.display().to_string(),
                        source,
                    })?;
            }
            // Password and token hashes live here: readable by the owner
            // only (SQLite gives its -wal and -shm files the same mode).
            #[cfg(unix)]
            if !file.is_empty() && !file.starts_with(':') {
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                options.open(file).map_err(|source| StoreError::DataDir {
                    path: file.to_owned(),
                    source,
                })?;
            }
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(connect_error)?
                .create_if_missing(true)
                // WAL lets readers run beside the single writer.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                // A file opened in-process cannot go stale, and the ping would
                // cost every query a round trip to the connection's thread
                // (sqlx still pings once on release).
                .test_before_acquire(false)
                .connect_with(connect)
                .await
                .map_err(connect_error)?;
            Ok(Database::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = PgConnectOptions::from_str(url).map_err(connect_error)?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(connect_error)?;
            Ok(Database::Postgres(pool))
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// Connections open and, of those, idle: the pool gauges of `/metrics`.
    pub fn pool_stats(&self) -> (u32, usize) {
        match self {
            Database::Sqlite(pool) => (pool.size(), pool.num_idle()),
            Database::Postgres(pool) => (pool.size(), pool.num_idle()),
        }
    }

    /// Round-trips a trivial query; for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Database::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/trellis"),
            "postgres://app:***@db:5432/trellis"
        );
        assert_eq!(redact_url("sqlite://data/auth.db"), "sqlite://data/auth.db");
        assert_eq!(
            redact_url("postgres://db/trellis?user=app&password=s3cret&sslmode=verify-full"),
            "postgres://db/trellis?user=app&password=***&sslmode=verify-full"
        );
        assert_eq!(
            redact_url("postgres://app:pw@db/x?sslpassword=k3y&PASSWORD=a%40b"),
            "postgres://app:***@db/x?sslpassword=***&PASSWORD=***"
        );
        assert_eq!(
            redact_url("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        // An '@', '?' or '/' inside the password must not leak any of it.
        assert_eq!(
            redact_url("postgres://app:p@ss@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(
            redact_url("postgres://app:p?ss/w@db/x?sslmode=require"),
            "postgres://app:***@db/x?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/x?%70assword=s3cret"),
            "postgres://db/x?%70assword=***"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
