//! Rate limits per client address and per organization: token buckets in
//! this replica's memory (a browser keeps its connection to one replica;
//! N replicas allow up to N times the rate in all). Both maps are bounded:
//! past their size the least recently used bucket is forgotten, which
//! only ever lets a forgotten client start again with a full bucket.

use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets kept per map.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Calls per second with a burst of twice that.
pub struct RateLimit<K> {
    per_second: f64,
    burst: f64,
    buckets: quick_cache::sync::Cache<K, Arc<Mutex<Bucket>>>,
}

impl<K: Eq + Hash + Clone> RateLimit<K> {
    /// `per_second` 0 turns the limit off.
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            per_second: f64::from(per_second),
            burst: f64::from(per_second) * 2.0,
            buckets: quick_cache::sync::Cache::new(MAX_BUCKETS),
        }
    }

    /// Takes one call from `key`'s bucket; `Err(wait)` when it is empty.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let bucket = match self.buckets.get(key) {
            Some(bucket) => bucket,
            None => {
                let fresh = Arc::new(Mutex::new(Bucket {
                    tokens: self.burst,
                    refilled: now,
                }));
                self.buckets.insert(key.clone(), fresh.clone());
                fresh
            }
        };
        let mut bucket = bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_then_refusals() {
        let limit = RateLimit::new(5);
        for _ in 0..10 {
            assert!(limit.take(&"a").is_ok());
        }
        let wait = limit.take(&"a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(limit.take(&"b").is_ok(), "another key has its own bucket");
        assert!(RateLimit::new(0).take(&"a").is_ok());
    }
}
