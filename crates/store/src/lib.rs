//! Storage backends chosen by URL: SQLite (embedded default) or PostgreSQL
//! through sqlx, Redis through bb8-redis, each service's migrations kept in
//! its own history table, and one mapping of storage failures to statuses.
#![forbid(unsafe_code)]

mod counters;
mod database;
mod error;
mod migrate;
mod redis_pool;

pub use counters::{
    CounterUsage, Counters, DEFAULT_MAX_KEYS, Full, Gate, MemoryCounters, RedisCounters, Tally,
};
pub use database::{BeginWrite, Database, DatabaseOptions, default_sqlite_url, redact_url};
pub use error::StoreError;
pub use migrate::{EmbeddedMigration, ServiceMigrations, migrate};
pub use redis_pool::{RedisPool, connect_redis};
