//! Windowed counters (rate limits, failed-login tallies): in memory by
//! default, in Redis when configured so every replica sees the same counts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::redis_pool::RedisPool;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A count and how long until its window closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub resets_in: Duration,
}

pub trait Counters: Send + Sync + 'static {
    /// Adds one to `key`; a key's window starts at its first increment.
    fn increment<'a>(
        &'a self,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<Tally, StoreError>>;
    /// The current tally (zero when absent or expired).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Tally, StoreError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Past this many keys, expired ones are swept on the next write.
const SWEEP_AT: usize = 100_000;

#[derive(Default)]
pub struct MemoryCounters {
    entries: Mutex<HashMap<String, (u64, Instant)>>,
}

impl MemoryCounters {
    fn tally(count: u64, expires: Instant, now: Instant) -> Tally {
        Tally {
            count,
            resets_in: expires.saturating_duration_since(now),
        }
    }
}

impl Counters for MemoryCounters {
    fn increment<'a>(
        &'a self,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<Tally, StoreError>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= SWEEP_AT {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        let entry = entries.entry(key.to_owned()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += 1;
        let tally = Self::tally(entry.0, entry.1, now);
        Box::pin(std::future::ready(Ok(tally)))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Tally, StoreError>> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let tally = match entries.get(key) {
            Some(&(count, expires)) if expires > now => Self::tally(count, expires, now),
            _ => Tally {
                count: 0,
                resets_in: Duration::ZERO,
            },
        };
        Box::pin(std::future::ready(Ok(tally)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Box::pin(std::future::ready(Ok(())))
    }
}

pub struct RedisCounters {
    pool: RedisPool,
    prefix: String,
}

impl RedisCounters {
    /// Keys are namespaced with `prefix`, e.g. `trellis:auth:`.
    pub fn new(pool: RedisPool, prefix: impl Into<String>) -> Self {
        RedisCounters {
            pool,
            prefix: prefix.into(),
        }
    }

    fn tally(count: u64, pttl: i64) -> Tally {
        Tally {
            count,
            resets_in: Duration::from_millis(pttl.max(0) as u64),
        }
    }
}

impl Counters for RedisCounters {
    fn increment<'a>(
        &'a self,
        key: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<Tally, StoreError>> {
        Box::pin(async move {
            let key = format!("{}{key}", self.prefix);
            let mut connection = self.pool.get().await?;
            // One round trip, atomic: the expiry is set only by the first increment.
            let (count, _, pttl): (u64, i64, i64) = redis::pipe()
                .atomic()
                .incr(&key, 1)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(window.as_millis() as u64)
                .arg("NX")
                .cmd("PTTL")
                .arg(&key)
                .query_async(&mut *connection)
                .await?;
            Ok(Self::tally(count, pttl))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Tally, StoreError>> {
        Box::pin(async move {
            let key = format!("{}{key}", self.prefix);
            let mut connection = self.pool.get().await?;
            let (count, pttl): (Option<u64>, i64) = redis::pipe()
                .get(&key)
                .cmd("PTTL")
                .arg(&key)
                .query_async(&mut *connection)
                .await?;
            Ok(Self::tally(count.unwrap_or(0), pttl))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = format!("{}{key}", self.prefix);
            let mut connection = self.pool.get().await?;
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut *connection)
                .await?;
            Ok(())
        })
    }
}
