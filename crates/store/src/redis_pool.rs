use std::time::Duration;

use bb8_redis::RedisConnectionManager;

use crate::database::redact_url;
use crate::error::StoreError;

pub type RedisPool = bb8::Pool<RedisConnectionManager>;

/// Builds the pool and PINGs once, so a wrong URL fails at start.
pub async fn connect_redis(url: &str, max_size: u32) -> Result<RedisPool, StoreError> {
    let connect_error = |source| StoreError::RedisConnect {
        url: redact_url(url),
        source,
    };
    let manager = RedisConnectionManager::new(url).map_err(connect_error)?;
    let pool = bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(3))
        .build(manager)
        .await
        .map_err(connect_error)?;
    {
        let mut connection = pool.get().await.map_err(|error| match error {
            bb8::RunError::User(source) => connect_error(source),
            bb8::RunError::TimedOut => connect_error(redis::RedisError::from((
                redis::ErrorKind::Io,
                "timed out connecting",
            ))),
        })?;
        let _: String = redis::cmd("PING")
            .query_async(&mut *connection)
            .await
            .map_err(connect_error)?;
    }
    Ok(pool)
}

/// Deletes every key that starts with `prefix` (SCAN, so Redis is never
/// blocked by one big KEYS): for tests and benchmarks that made their keys
/// under a prefix of their own. How many were deleted.
pub async fn remove_keys_under(pool: &RedisPool, prefix: &str) -> Result<u64, StoreError> {
    let mut connection = pool.get().await?;
    let pattern = format!("{prefix}*");
    let (mut cursor, mut removed) = (0_u64, 0_u64);
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut *connection)
            .await?;
        if !keys.is_empty() {
            let deleted: u64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut *connection)
                .await?;
            removed += deleted;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
