//! Brute-force protection for Login. Failures are counted per account and
//! client address (an attacker at one address is stopped without locking the
//! real user out elsewhere), per address (stuffing across accounts), and per
//! account (a hard cap across addresses, which addresses that logged in
//! successfully before are exempt from).

use std::sync::Arc;
use std::time::Duration;

use trellis_store::{Counters, Gate, StoreError};

#[derive(Clone, Debug)]
pub struct ThrottlePolicy {
    pub pair_failures: u64,
    pub pair_window: Duration,
    pub address_failures: u64,
    pub address_window: Duration,
    pub account_failures: u64,
    pub account_window: Duration,
    /// Failures from one address before each further answer is slowed.
    pub tarpit_after: u64,
    pub tarpit_step: Duration,
    pub tarpit_max: Duration,
    /// How long an address stays "known good" for an account after a login.
    pub known_good_for: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            pair_failures: 5,
            pair_window: Duration::from_secs(15 * 60),
            address_failures: 50,
            address_window: Duration::from_secs(15 * 60),
            account_failures: 100,
            account_window: Duration::from_secs(3600),
            tarpit_after: 3,
            tarpit_step: Duration::from_millis(250),
            tarpit_max: Duration::from_secs(2),
            known_good_for: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

pub struct LoginThrottle {
    counters: Arc<dyn Counters>,
    policy: ThrottlePolicy,
}

/// How long an attempt may hold its place while its password is checked:
/// well past the request timeout, so only a crashed server's attempts ever
/// reach it.
const HOLD_FOR: Duration = Duration::from_secs(60);

/// The wait to suggest when a limit is full only of attempts still being
/// checked: they settle within milliseconds.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// Keys hold no secrets, but an address inside a key must not forge another.
fn clean(part: &str) -> String {
    part.replace([':', ' '], "_")
}

struct Keys {
    pair: String,
    address: String,
    account: String,
    known_good: String,
}

impl Keys {
    fn new(email: &str, address: &str) -> Keys {
        let (email, address) = (clean(email), clean(address));
        Keys {
            pair: format!("login:pair:{email}:{address}"),
            address: format!("login:address:{address}"),
            account: format!("login:account:{email}"),
            known_good: format!("login:good:{email}:{address}"),
        }
    }
}

/// A login attempt admitted past the limits. It counts against them as a
/// failure would until it is settled with [`LoginThrottle::failed`] or
/// [`LoginThrottle::succeeded`]; dropped unsettled (an error, a cancelled
/// call), it gives its place back.
#[must_use = "settle the attempt with failed() or succeeded()"]
pub struct Attempt {
    id: String,
    keys: Keys,
    /// Whether the account gate was entered (not for known-good addresses).
    account_gated: bool,
    counters: Arc<dyn Counters>,
    settled: bool,
}

impl Attempt {
    fn gate_keys(&self) -> Vec<&str> {
        let mut keys = vec![self.keys.pair.as_str(), self.keys.address.as_str()];
        if self.account_gated {
            keys.push(&self.keys.account);
        }
        keys
    }

    async fn leave(mut self) -> Result<(), StoreError> {
        self.settled = true;
        self.counters.leave(&self.id, &self.gate_keys()).await
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // its hold runs out by itself
        };
        let counters = self.counters.clone();
        let id = std::mem::take(&mut self.id);
        let keys: Vec<String> = self.gate_keys().into_iter().map(str::to_owned).collect();
        runtime.spawn(async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            if let Err(error) = counters.leave(&id, &keys).await {
                tracing::warn!(%error, "releasing an unsettled login attempt");
            }
        });
    }
}

impl LoginThrottle {
    pub fn new(counters: Arc<dyn Counters>, policy: ThrottlePolicy) -> Self {
        LoginThrottle { counters, policy }
    }

    /// Before checking a password: the admitted attempt, or how long to wait.
    /// Failures and attempts still being checked count alike, so concurrent
    /// guesses get no more tries than sequential ones.
    pub async fn admit(
        &self,
        email: &str,
        address: &str,
    ) -> Result<Result<Attempt, Duration>, StoreError> {
        let keys = Keys::new(email, address);
        let account_gated = self.counters.get(&keys.known_good).await?.count == 0;
        let mut gates = vec![
            Gate {
                key: &keys.pair,
                limit: self.policy.pair_failures,
            },
            Gate {
                key: &keys.address,
                limit: self.policy.address_failures,
            },
        ];
        if account_gated {
            gates.push(Gate {
                key: &keys.account,
                limit: self.policy.account_failures,
            });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Err(full) = self.counters.enter(&id, &gates, HOLD_FOR).await? {
            let limit = gates[full.gate].limit;
            return Ok(Err(if full.settled.count >= limit {
                full.settled.resets_in
            } else {
                IN_FLIGHT_RETRY
            }));
        }
        Ok(Ok(Attempt {
            id,
            keys,
            account_gated,
            counters: self.counters.clone(),
            settled: false,
        }))
    }

    /// Records a failure; returns how long to hold the answer (the tarpit).
    pub async fn failed(&self, attempt: Attempt) -> Result<Duration, StoreError> {
        let keys = &attempt.keys;
        // Counted before the attempt leaves, so it is never in neither.
        let pair = self
            .counters
            .increment(&keys.pair, self.policy.pair_window)
            .await?;
        self.counters
            .increment(&keys.address, self.policy.address_window)
            .await?;
        self.counters
            .increment(&keys.account, self.policy.account_window)
            .await?;
        attempt.leave().await?;
        let over = pair.count.saturating_sub(self.policy.tarpit_after);
        Ok((self.policy.tarpit_step * over as u32).min(self.policy.tarpit_max))
    }

    /// A successful login clears this address's failures for the account
    /// and marks the address as known good for it.
    pub async fn succeeded(&self, attempt: Attempt) -> Result<(), StoreError> {
        let keys = &attempt.keys;
        self.counters.delete(&keys.pair).await?;
        self.counters
            .increment(&keys.known_good, self.policy.known_good_for)
            .await?;
        attempt.leave().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_store::MemoryCounters;

    fn throttle() -> LoginThrottle {
        let policy = ThrottlePolicy {
            pair_failures: 3,
            address_failures: 5,
            account_failures: 4,
            ..ThrottlePolicy::default()
        };
        LoginThrottle::new(Arc::new(MemoryCounters::default()), policy)
    }

    async fn fail(throttle: &LoginThrottle, email: &str, address: &str) -> Duration {
        let attempt = throttle.admit(email, address).await.unwrap().unwrap();
        throttle.failed(attempt).await.unwrap()
    }

    async fn admitted(throttle: &LoginThrottle, email: &str, address: &str) -> bool {
        throttle.admit(email, address).await.unwrap().is_ok()
    }

    #[tokio::test]
    async fn an_address_is_stopped_for_one_account_without_locking_the_user_out() {
        let throttle = throttle();
        for _ in 0..3 {
            fail(&throttle, "ana@x.io", "10.0.0.1").await;
        }
        let retry = throttle
            .admit("ana@x.io", "10.0.0.1")
            .await
            .unwrap()
            .err()
            .expect("throttled");
        assert!(retry > Duration::from_secs(14 * 60));
        assert!(
            admitted(&throttle, "ana@x.io", "10.0.0.2").await,
            "other address"
        );
        assert!(
            admitted(&throttle, "bob@x.io", "10.0.0.1").await,
            "other account"
        );
    }

    #[tokio::test]
    async fn the_account_cap_spares_known_good_addresses() {
        let throttle = throttle();
        let login = throttle
            .admit("ana@x.io", "10.0.0.9")
            .await
            .unwrap()
            .unwrap();
        throttle.succeeded(login).await.unwrap();
        for n in 0..4 {
            fail(&throttle, "ana@x.io", &format!("10.0.1.{n}")).await;
        }
        assert!(!admitted(&throttle, "ana@x.io", "10.0.2.1").await, "capped");
        assert!(
            admitted(&throttle, "ana@x.io", "10.0.0.9").await,
            "known good"
        );
    }

    #[tokio::test]
    async fn attempts_being_checked_count_against_every_limit() {
        let throttle = throttle();
        // Three guesses in flight fill the pair limit before any has failed.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                throttle
                    .admit("ana@x.io", "10.0.0.1")
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let retry = throttle
            .admit("ana@x.io", "10.0.0.1")
            .await
            .unwrap()
            .err()
            .expect("full");
        assert_eq!(retry, IN_FLIGHT_RETRY, "a short wait: they settle soon");
        // Across addresses the account cap (4) holds the same way.
        held.push(
            throttle
                .admit("ana@x.io", "10.0.0.2")
                .await
                .unwrap()
                .unwrap(),
        );
        assert!(!admitted(&throttle, "ana@x.io", "10.0.0.3").await);
        // A success gives its place back; a failure keeps it as a failure.
        throttle.succeeded(held.pop().unwrap()).await.unwrap();
        throttle.failed(held.pop().unwrap()).await.unwrap();
        assert!(admitted(&throttle, "ana@x.io", "10.0.0.4").await);
        // Dropped unsettled (an error, a cancelled call): its place is freed.
        drop(held);
        tokio::task::yield_now().await;
        assert!(admitted(&throttle, "ana@x.io", "10.0.0.1").await);
    }

    #[tokio::test]
    async fn the_tarpit_grows_with_failures_and_is_capped() {
        let throttle = LoginThrottle::new(
            Arc::new(MemoryCounters::default()),
            ThrottlePolicy::default(),
        );
        let mut delays = Vec::new();
        for _ in 0..5 {
            delays.push(fail(&throttle, "ana@x.io", "10.0.0.1").await);
        }
        assert_eq!(delays, [0, 0, 0, 250, 500].map(Duration::from_millis));
        let policy = ThrottlePolicy::default();
        assert_eq!(
            (policy.tarpit_step * 20).min(policy.tarpit_max),
            Duration::from_secs(2)
        );
    }
}
