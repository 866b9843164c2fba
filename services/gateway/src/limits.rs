//! Rate limits per client address and per organization, and calls in
//! progress per client address and in all. Rate limits are token buckets in
//! this replica's memory (a browser keeps its connection to one replica;
//! N replicas allow up to N times the rate in all). Both maps are bounded:
//! past their size the least recently used bucket is forgotten, which
//! only ever lets a forgotten client start again with a full bucket.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Calls in progress (streams until they end), per client address and in
/// all: a slow or stream-hoarding client holds its own slots, not everyone's.
pub struct InFlight {
    per_client: usize,
    total: usize,
    all: Arc<AtomicUsize>,
    clients: quick_cache::sync::Cache<String, Arc<AtomicUsize>>,
}

/// A call's slot, given back when dropped.
pub struct InFlightGuard {
    all: Arc<AtomicUsize>,
    client: Option<Arc<AtomicUsize>>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.all.fetch_sub(1, Ordering::AcqRel);
        if let Some(client) = &self.client {
            client.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl InFlight {
    pub fn new(per_client: usize, total: usize) -> Self {
        InFlight {
            per_client,
            total,
            all: Arc::new(AtomicUsize::new(0)),
            clients: quick_cache::sync::Cache::new(MAX_BUCKETS),
        }
    }

    /// A slot for a call of `client`, or None when it or everyone is at
    /// the limit.
    pub fn enter(&self, client: Option<&str>) -> Option<InFlightGuard> {
        if self.all.fetch_add(1, Ordering::AcqRel) >= self.total {
            self.all.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut guard = InFlightGuard {
            all: self.all.clone(),
            client: None,
        };
        if let Some(client) = client {
            let counter = match self.clients.get(client) {
                Some(counter) => counter,
                None => {
                    let fresh = Arc::new(AtomicUsize::new(0));
                    self.clients.insert(client.to_owned(), fresh.clone());
                    fresh
                }
            };
            if counter.fetch_add(1, Ordering::AcqRel) >= self.per_client {
                counter.fetch_sub(1, Ordering::AcqRel);
                return None; // the guard gives the overall slot back
            }
            guard.client = Some(counter);
        }
        Some(guard)
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    #[test]
    fn slots_per_client_and_in_all_come_back_when_dropped() {
        let in_flight = InFlight::new(2, 3);
        let a1 = in_flight.enter(Some("a")).unwrap();
        let _a2 = in_flight.enter(Some("a")).unwrap();
        assert!(
            in_flight.enter(Some("a")).is_none(),
            "a's two slots are taken"
        );
        let _b1 = in_flight.enter(Some("b")).unwrap();
        assert!(in_flight.enter(Some("c")).is_none(), "all three are taken");
        drop(a1);
        assert!(in_flight.enter(Some("a")).is_some());
    }
}
