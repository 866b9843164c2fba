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
