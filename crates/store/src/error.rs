/// A storage failure. What clients see of one is decided in
/// `trellis_runtime::ServiceError` (unavailable or internal, never details).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot open {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("migrations of {service} failed: {source}")]
    Migrate {
        service: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("cannot reach Redis at {url}: {source}")]
    RedisConnect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// A topic or message the fan-out refuses (a server's bug, not input).
    #[error("fan-out: {0}")]
    FanOut(String),
    #[error("redis pool: {0}")]
    RedisPool(#[from] bb8::RunError<redis::RedisError>),
}

impl StoreError {
    /// Whether the backend is unreachable or overloaded rather than the
    /// request being wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(error)) => {
                // A PostgreSQL going down or coming up: connection
                // exceptions (08), shutting down or not yet accepting
                // (57P01-57P03), out of connections or memory (53). Only
                // PostgreSQL's SQLSTATEs have five characters; SQLite's
                // codes are numbers (531 is a constraint).
                error.code().is_some_and(|code| {
                    code.len() == 5
                        && (code.starts_with("08")
                            || code.starts_with("57P0")
                            || code.starts_with("53"))
                })
            }
            // A connection made while a server restarts can read garbage
            // ("unexpected response from SSLRequest").
            StoreError::Sqlx(error) => matches!(
                error,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            StoreError::Redis(error) => {
                error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
            }
            StoreError::RedisPool(_) => true,
            StoreError::Connect { .. } | StoreError::RedisConnect { .. } => true,
            _ => false,
        }
    }
}
