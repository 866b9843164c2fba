//! Windowed counters (rate limits, failed-login tallies): in memory by
//! default, in Redis when configured so every replica sees the same counts.
//!
//! A limit on failures checked before the outcome is known (a password
//! being verified) would let a burst of concurrent attempts all pass it.
//! [`Counters::enter`] closes that gap: an attempt holds a slot beside the
//! counter until it settles, and the limit applies to both together.

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

/// A limit that an attempt must pass: the count at `key` plus the attempts
/// in flight on it must stay below `limit`.
#[derive(Clone, Copy, Debug)]
pub struct Gate<'a> {
    pub key: &'a str,
    pub limit: u64,
}

/// The gate that turned an attempt away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// Index into the gates passed to [`Counters::enter`].
    pub gate: usize,
    /// Its settled count.
    pub settled: Tally,
    pub in_flight: u64,
}

/// Where the attempts in flight on `key` are kept.
fn in_flight_key(key: &str) -> String {
    format!("{key}:in-flight")
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
    /// Puts `attempt` in flight on every gate, or on none if one is full.
    /// It stays there until [`Counters::leave`], or `hold_for` at most, so
    /// a holder that dies cannot keep a slot.
    fn enter<'a>(
        &'a self,
        attempt: &'a str,
        gates: &'a [Gate<'a>],
        hold_for: Duration,
    ) -> BoxFuture<'a, Result<Result<(), Full>, StoreError>>;
    /// Takes `attempt` out of flight on the gates at `keys`.
    fn leave<'a>(
        &'a self,
        attempt: &'a str,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Keys one group of a [`MemoryCounters`] holds at most, unless told
/// otherwise: a few MiB (see [`MemoryCounters::usage`]).
pub const DEFAULT_MAX_KEYS: usize = 50_000;

/// Groups (first key segments) kept apart at most; keys of any further
/// namespace share the default group.
const MAX_GROUPS: usize = 16;

struct Entry {
    count: u64,
    expires: Instant,
    /// Last counted or read.
    touched: Instant,
}

/// How much a [`MemoryCounters`] holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterUsage {
    /// Counted keys.
    pub keys: usize,
    /// Gate keys with attempts in flight.
    pub in_flight_keys: usize,
    /// Approximate heap held by both maps.
    pub bytes: usize,
}

/// Keys by group: the namespace before the first ':' (`login`, `rate`).
type Groups = HashMap<String, HashMap<String, Entry>>;

/// Counters in this process's memory, bounded. Each namespace (the key's
/// first segment: `login`, `rate`) holds at most `max_keys` keys, so a flood
/// of one kind (cheap per-address call counts) cannot push out another
/// (failed-login counts). Past the cap, expired keys are swept, then the
/// lowest counts go first, the least recently used among equals: a limit an
/// attacker has filled is the last thing forgotten. Eviction still forgets
/// counts, so a deployment facing attackers with many addresses should
/// count in Redis.
pub struct MemoryCounters {
    entries: Mutex<Groups>,
    /// Per gate key: attempt -> until when it may hold its slot.
    in_flight: Mutex<HashMap<String, HashMap<String, Instant>>>,
    max_keys: usize,
}

impl Default for MemoryCounters {
    fn default() -> Self {
        MemoryCounters::with_max_keys(DEFAULT_MAX_KEYS)
    }
}

fn namespace(key: &str) -> &str {
    key.split_once(':').map_or("", |(namespace, _)| namespace)
}

/// The group `key` is kept in, created if there is room for another.
/// Groups are never removed, so a key's group never changes.
fn group_mut<'a>(groups: &'a mut Groups, key: &str) -> &'a mut HashMap<String, Entry> {
    let mut name = namespace(key);
    if !groups.contains_key(name) && groups.len() >= MAX_GROUPS {
        name = "";
    }
    groups.entry(name.to_owned()).or_default()
}

fn entry_mut<'a>(groups: &'a mut Groups, key: &str) -> Option<&'a mut Entry> {
    let name = if groups.contains_key(namespace(key)) {
        namespace(key)
    } else {
        ""
    };
    groups.get_mut(name)?.get_mut(key)
}

impl MemoryCounters {
    /// At most `max_keys` keys per namespace.
    pub fn with_max_keys(max_keys: usize) -> Self {
        MemoryCounters {
            entries: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    pub fn usage(&self) -> CounterUsage {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let entry_bytes: usize = entries
            .values()
            .flat_map(HashMap::keys)
            .map(|key| key.capacity() + size_of::<(String, Entry)>())
            .sum();
        let in_flight_bytes: usize = in_flight
            .iter()
            .map(|(key, slots)| {
                key.capacity()
                    + size_of::<(String, HashMap<String, Instant>)>()
                    + slots
                        .keys()
                        .map(|id| id.capacity() + size_of::<(String, Instant)>())
                        .sum::<usize>()
            })
            .sum();
        CounterUsage {
            keys: entries.values().map(HashMap::len).sum(),
            in_flight_keys: in_flight.len(),
            bytes: entry_bytes + in_flight_bytes,
        }
    }

    fn tally(count: u64, expires: Instant, now: Instant) -> Tally {
        Tally {
            count,
            resets_in: expires.saturating_duration_since(now),
        }
    }

    /// The tally of `key`; reading it counts as a use.
    fn current(&self, key: &str, now: Instant) -> Tally {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entry_mut(&mut entries, key) {
            Some(entry) if entry.expires > now => {
                entry.touched = now;
                Self::tally(entry.count, entry.expires, now)
            }
            _ => Tally {
                count: 0,
                resets_in: Duration::ZERO,
            },
        }
    }

    /// Makes room for one more key in `group`: drops expired keys, then an
    /// eighth of the rest, lowest counts first and least recently used among
    /// equals, so the sweep's cost is spread over many inserts.
    fn make_room(group: &mut HashMap<String, Entry>, max_keys: usize, now: Instant) {
        if group.len() < max_keys {
            return;
        }
        group.retain(|_, entry| entry.expires > now);
        if group.len() < max_keys {
            return;
        }
        let evict = (max_keys / 8).max(1);
        let mut ranks: Vec<(u64, Instant)> = group
            .values()
            .map(|entry| (entry.count, entry.touched))
            .collect();
        let (_, &mut last_evicted, _) = ranks.select_nth_unstable(evict - 1);
        group.retain(|_, entry| (entry.count, entry.touched) > last_evicted);
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
        let entry = if entry_mut(&mut entries, key).is_some() {
            entry_mut(&mut entries, key).expect("found just now")
        } else {
            let group = group_mut(&mut entries, key);
            Self::make_room(group, self.max_keys, now);
            group.entry(key.to_owned()).or_insert(Entry {
                count: 0,
                expires: now + window,
                touched: now,
            })
        };
        if entry.expires <= now {
            entry.count = 0;
            entry.expires = now + window;
        }
        entry.count += 1;
        entry.touched = now;
        let tally = Self::tally(entry.count, entry.expires, now);
        Box::pin(std::future::ready(Ok(tally)))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Tally, StoreError>> {
        Box::pin(std::future::ready(Ok(self.current(key, Instant::now()))))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let name = if entries.contains_key(namespace(key)) {
            namespace(key)
        } else {
            ""
        };
        if let Some(group) = entries.get_mut(name) {
            group.remove(key);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn enter<'a>(
        &'a self,
        attempt: &'a str,
        gates: &'a [Gate<'a>],
        hold_for: Duration,
    ) -> BoxFuture<'a, Result<Result<(), Full>, StoreError>> {
        let now = Instant::now();
        // Lock order: in_flight, then entries (inside `current`).
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for (index, gate) in gates.iter().enumerate() {
            let holding = in_flight.get_mut(gate.key).map_or(0, |slots| {
                slots.retain(|_, until| *until > now);
                slots.len() as u64
            });
            let settled = self.current(gate.key, now);
            if settled.count + holding >= gate.limit {
                let full = Full {
                    gate: index,
                    settled,
                    in_flight: holding,
                };
                return Box::pin(std::future::ready(Ok(Err(full))));
            }
        }
        let new_keys = gates
            .iter()
            .filter(|gate| !in_flight.contains_key(gate.key))
            .count();
        if in_flight.len() + new_keys > self.max_keys {
            // Holds are as many as calls in flight, so this is only reached
            // when holders died without leaving; their holds have run out.
            in_flight.retain(|_, slots| {
                slots.retain(|_, until| *until > now);
                !slots.is_empty()
            });
            if in_flight.len() + new_keys > self.max_keys {
                let full = Full {
                    gate: 0,
                    settled: self.current(gates[0].key, now),
                    in_flight: 0,
                };
                return Box::pin(std::future::ready(Ok(Err(full))));
            }
        }
        for gate in gates {
            in_flight
                .entry(gate.key.to_owned())
                .or_default()
                .insert(attempt.to_owned(), now + hold_for);
        }
        Box::pin(std::future::ready(Ok(Ok(()))))
    }

    fn leave<'a>(
        &'a self,
        attempt: &'a str,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if let Some(slots) = in_flight.get_mut(*key) {
                slots.remove(attempt);
                if slots.is_empty() {
                    in_flight.remove(*key);
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Checks every gate, then puts the attempt in flight on all of them, in
/// one atomic step. Attempts in flight are a sorted set per gate scored by
/// when their hold ends (Redis's clock, so replicas' clocks don't matter).
/// KEYS: count 1, in flight 1, count 2, in flight 2, ...
/// ARGV: attempt, hold in ms, limit 1, limit 2, ...
/// Returns {0} when entered, else {gate (1-based), count, count's PTTL, in flight}.
/// All keys must live on one Redis node (no cluster slot spreading).
const ENTER: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local gates = #KEYS / 2
for i = 1, gates do
  local in_flight = KEYS[2 * i]
  redis.call('ZREMRANGEBYSCORE', in_flight, '-inf', now)
  local count = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local holding = redis.call('ZCARD', in_flight)
  if count + holding >= tonumber(ARGV[2 + i]) then
    return {i, count, redis.call('PTTL', KEYS[2 * i - 1]), holding}
  end
end
for i = 1, gates do
  redis.call('ZADD', KEYS[2 * i], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[2 * i], ARGV[2])
end
return {0}
";

pub struct RedisCounters {
    pool: RedisPool,
    prefix: String,
    enter: redis::Script,
}

impl RedisCounters {
    /// Keys are namespaced with `prefix`, e.g. `trellis:auth:`.
    pub fn new(pool: RedisPool, prefix: impl Into<String>) -> Self {
        RedisCounters {
            pool,
            prefix: prefix.into(),
            enter: redis::Script::new(ENTER),
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

    fn enter<'a>(
        &'a self,
        attempt: &'a str,
        gates: &'a [Gate<'a>],
        hold_for: Duration,
    ) -> BoxFuture<'a, Result<Result<(), Full>, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.enter.prepare_invoke();
            for gate in gates {
                let key = format!("{}{}", self.prefix, gate.key);
                invocation.key(&key).key(in_flight_key(&key));
            }
            invocation
                .arg(attempt)
                .arg(hold_for.as_millis().max(1) as u64);
            for gate in gates {
                invocation.arg(gate.limit);
            }
            let mut connection = self.pool.get().await?;
            let answer: Vec<i64> = invocation.invoke_async(&mut *connection).await?;
            Ok(match answer.as_slice() {
                [0] => Ok(()),
                &[gate, count, pttl, holding] => Err(Full {
                    gate: (gate - 1) as usize,
                    settled: Self::tally(count.max(0) as u64, pttl),
                    in_flight: holding.max(0) as u64,
                }),
                other => {
                    return Err(StoreError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "unexpected answer from the admission script",
                        format!("{other:?}"),
                    ))));
                }
            })
        })
    }

    fn leave<'a>(
        &'a self,
        attempt: &'a str,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("ZREM")
                    .arg(in_flight_key(&format!("{}{key}", self.prefix)))
                    .arg(attempt)
                    .ignore();
            }
            let mut connection = self.pool.get().await?;
            let () = pipe.query_async(&mut *connection).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(counters: &MemoryCounters, key: &str) -> u64 {
        counters.current(key, Instant::now()).count
    }

    #[tokio::test]
    async fn keys_are_capped_and_the_lowest_counts_go_first() {
        let counters = MemoryCounters::with_max_keys(80);
        let window = Duration::from_secs(600);
        // A filled limit, not counted for a while but still read.
        for _ in 0..100 {
            counters.increment("login:capped", window).await.unwrap();
        }
        counters.increment("login:busy", window).await.unwrap();
        for n in 0..1_000 {
            counters
                .increment(&format!("login:k{n}"), window)
                .await
                .unwrap();
            counters.increment("login:busy", window).await.unwrap();
            assert!(counters.usage().keys <= 80, "at {n}");
        }
        assert_eq!(count(&counters, "login:capped"), 100, "never evicted");
        assert_eq!(count(&counters, "login:busy"), 1_001, "never evicted");
        assert_eq!(count(&counters, "login:k999"), 1, "recent keys stay");
        assert_eq!(
            count(&counters, "login:k0"),
            0,
            "the oldest of the least went first"
        );
    }

    #[tokio::test]
    async fn a_flood_of_one_namespace_leaves_another_alone() {
        let counters = MemoryCounters::with_max_keys(50);
        let window = Duration::from_secs(600);
        counters.increment("login:good:ana", window).await.unwrap();
        for n in 0..5_000 {
            counters
                .increment(&format!("rate:{n}"), window)
                .await
                .unwrap();
        }
        assert_eq!(count(&counters, "login:good:ana"), 1);
        assert!(counters.usage().keys <= 51);
        // Namespaces past the 16th share one group, capped all the same.
        for n in 0..100 {
            counters
                .increment(&format!("ns{n}:x"), window)
                .await
                .unwrap();
        }
        assert!(counters.usage().keys <= 50 * (MAX_GROUPS + 1));
        assert_eq!(count(&counters, "ns99:x"), 1, "still counted");
        counters.delete("ns99:x").await.unwrap();
        assert_eq!(count(&counters, "ns99:x"), 0);
    }

    #[tokio::test]
    async fn reading_a_key_keeps_it() {
        let counters = MemoryCounters::with_max_keys(16);
        let window = Duration::from_secs(600);
        counters.increment("login:good", window).await.unwrap();
        for n in 0..200 {
            counters
                .increment(&format!("login:k{n}"), window)
                .await
                .unwrap();
            // Read at each login from that address.
            assert_eq!(counters.get("login:good").await.unwrap().count, 1, "at {n}");
        }
    }

    #[tokio::test]
    async fn expired_keys_make_room_before_live_ones_are_evicted() {
        let counters = MemoryCounters::with_max_keys(4);
        counters
            .increment("live", Duration::from_secs(600))
            .await
            .unwrap();
        for n in 0..3 {
            counters
                .increment(&format!("brief{n}"), Duration::from_millis(1))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        counters
            .increment("new", Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(count(&counters, "live"), 1);
        assert_eq!(counters.usage().keys, 2, "the expired ones were swept");
    }

    #[tokio::test]
    async fn holds_are_capped_too() {
        let counters = MemoryCounters::with_max_keys(2);
        let hold = Duration::from_secs(60);
        let gate = |key| [Gate { key, limit: 10 }];
        assert_eq!(
            counters.enter("a", &gate("g1"), hold).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            counters.enter("b", &gate("g2"), hold).await.unwrap(),
            Ok(())
        );
        assert!(
            counters
                .enter("c", &gate("g3"), hold)
                .await
                .unwrap()
                .is_err(),
            "a third gate key would pass the cap"
        );
        assert_eq!(
            counters.enter("d", &gate("g1"), hold).await.unwrap(),
            Ok(())
        );
        counters.leave("b", &["g2"]).await.unwrap();
        assert_eq!(
            counters.enter("c", &gate("g3"), hold).await.unwrap(),
            Ok(())
        );
        assert!(counters.usage().bytes > 0);
    }
}
