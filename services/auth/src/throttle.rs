//! Brute-force protection for Login. Failures are counted per account and
//! client address (an attacker at one address is stopped without locking the
//! real user out elsewhere), per address (stuffing across accounts), and per
//! account (a hard cap across addresses, which addresses that logged in
//! successfully before are exempt from).

use std::sync::Arc;
use std::time::Duration;

use trellis_store::{Counters, StoreError};

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

/// Keys hold no secrets, but an address inside a key must not forge another.
fn clean(part: &str) -> String {
    part.replace([':', ' '], "_")
}

impl LoginThrottle {
    pub fn new(counters: Arc<dyn Counters>, policy: ThrottlePolicy) -> Self {
        LoginThrottle { counters, policy }
    }

    fn keys(email: &str, address: &str) -> [String; 4] {
        let (email, address) = (clean(email), clean(address));
        [
            format!("login:pair:{email}:{address}"),
            format!("login:address:{address}"),
            format!("login:account:{email}"),
            format!("login:good:{email}:{address}"),
        ]
    }

    /// Before checking a password: `Err(retry_after)` when this attempt may
    /// not proceed.
    pub async fn admit(
        &self,
        email: &str,
        address: &str,
    ) -> Result<Result<(), Duration>, StoreError> {
        let [pair, by_address, account, good] = Self::keys(email, address);
        let pair = self.counters.get(&pair).await?;
        if pair.count >= self.policy.pair_failures {
            return Ok(Err(pair.resets_in));
        }
        let by_address = self.counters.get(&by_address).await?;
        if by_address.count >= self.policy.address_failures {
            return Ok(Err(by_address.resets_in));
        }
        let account = self.counters.get(&account).await?;
        if account.count >= self.policy.account_failures
            && self.counters.get(&good).await?.count == 0
        {
            return Ok(Err(account.resets_in));
        }
        Ok(Ok(()))
    }

    /// Records a failure; returns how long to hold the answer (the tarpit).
    pub async fn failed(&self, email: &str, address: &str) -> Result<Duration, StoreError> {
        let [pair, by_address, account, _] = Self::keys(email, address);
        let pair = self
            .counters
            .increment(&pair, self.policy.pair_window)
            .await?;
        self.counters
            .increment(&by_address, self.policy.address_window)
            .await?;
        self.counters
            .increment(&account, self.policy.account_window)
            .await?;
        let over = pair.count.saturating_sub(self.policy.tarpit_after);
        Ok((self.policy.tarpit_step * over as u32).min(self.policy.tarpit_max))
    }

    /// A successful login clears this address's failures for the account
    /// and marks the address as known good for it.
    pub async fn succeeded(&self, email: &str, address: &str) -> Result<(), StoreError> {
        let [pair, _, _, good] = Self::keys(email, address);
        self.counters.delete(&pair).await?;
        self.counters
            .increment(&good, self.policy.known_good_for)
            .await?;
        Ok(())
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

    #[tokio::test]
    async fn an_address_is_stopped_for_one_account_without_locking_the_user_out() {
        let throttle = throttle();
        for _ in 0..3 {
            assert!(
                throttle
                    .admit("ana@x.io", "10.0.0.1")
                    .await
                    .unwrap()
                    .is_ok()
            );
            throttle.failed("ana@x.io", "10.0.0.1").await.unwrap();
        }
        let retry = throttle
            .admit("ana@x.io", "10.0.0.1")
            .await
            .unwrap()
            .unwrap_err();
        assert!(retry > Duration::from_secs(14 * 60));
        assert!(
            throttle
                .admit("ana@x.io", "10.0.0.2")
                .await
                .unwrap()
                .is_ok(),
            "other address"
        );
        assert!(
            throttle
                .admit("bob@x.io", "10.0.0.1")
                .await
                .unwrap()
                .is_ok(),
            "other account"
        );
    }

    #[tokio::test]
    async fn the_account_cap_spares_known_good_addresses() {
        let throttle = throttle();
        throttle.succeeded("ana@x.io", "10.0.0.9").await.unwrap();
        for n in 0..4 {
            throttle
                .failed("ana@x.io", &format!("10.0.1.{n}"))
                .await
                .unwrap();
        }
        assert!(
            throttle
                .admit("ana@x.io", "10.0.2.1")
                .await
                .unwrap()
                .is_err(),
            "capped"
        );
        assert!(
            throttle
                .admit("ana@x.io", "10.0.0.9")
                .await
                .unwrap()
                .is_ok(),
            "known good"
        );
    }

    #[tokio::test]
    async fn the_tarpit_grows_with_failures_and_is_capped() {
        let throttle = LoginThrottle::new(
            Arc::new(MemoryCounters::default()),
            ThrottlePolicy::default(),
        );
        let mut delays = Vec::new();
        for _ in 0..5 {
            delays.push(throttle.failed("ana@x.io", "10.0.0.1").await.unwrap());
        }
        assert_eq!(delays, [0, 0, 0, 250, 500].map(Duration::from_millis));
        let policy = ThrottlePolicy::default();
        assert_eq!(
            (policy.tarpit_step * 20).min(policy.tarpit_max),
            Duration::from_secs(2)
        );
    }
}
