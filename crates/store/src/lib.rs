//! Storage backends chosen by URL: SQLite (embedded default) or PostgreSQL
//! through sqlx, Redis through bb8-redis, each service's migrations kept in
//! its own history table, keyset paging, and the helpers every service's
//! SQL shares.
#![forbid(unsafe_code)]

mod counters;
mod database;
mod error;
mod fanout;
mod migrate;
mod page;
mod redis_pool;
mod row;

pub use counters::{
    CounterUsage, Counters, DEFAULT_MAX_KEYS, Full, Gate, MemoryCounters, RedisCounters, Tally,
};
pub use database::{
    BeginWrite, Database, DatabaseOptions, WriteTransaction, default_sqlite_url, redact_url,
    sqlite_writer_turn,
};
pub use error::StoreError;
pub use fanout::{
    FanOut, MAX_MESSAGE_BYTES, MAX_TOPIC_BYTES, MemoryFanOut, PgFanOut, RedisFanOut, Subscription,
    Wake,
};
pub use migrate::{EmbeddedMigration, ServiceMigrations, migrate};
pub use page::{Page, PageError, newest_first};
pub use redis_pool::{RedisPool, connect_redis, remove_keys_under};
pub use row::{UnknownName, corrupt, stored_uuid};
/// For [`row!`]: the sqlx its expansions name.
#[doc(hidden)]
pub use sqlx;

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds: the body
/// (one SQL text for both backends) is compiled once per backend. Written
/// like a closure, `with_pool!(&db, |pool| { ... })`, so rustfmt formats it.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::Database::Sqlite($pool) => $body,
            $crate::Database::Postgres($pool) => $body,
        }
    };
}

/// [`with_pool!`] for a write outside a transaction (one statement, in
/// autocommit): on SQLite it waits for its file's writer turn first, as
/// [`BeginWrite`] does, so it never meets another writer inside SQLite,
/// whose busy wait sleeps up to 100 ms a look, and a transaction holding
/// the turn never sleeps there behind it (a convoy every writer of the
/// file joins).
#[macro_export]
macro_rules! write_with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::Database::Sqlite($pool) => {
                let _turn = $crate::sqlite_writer_turn($pool).await;
                $body
            }
            $crate::Database::Postgres($pool) => $body,
        }
    };
}

/// Whether `error` is a unique-constraint violation, on either backend.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}
