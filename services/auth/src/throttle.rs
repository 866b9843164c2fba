//! Abuse limits for Auth's public RPCs, which need no token, so the
//! account and the client address are all there is to count by.
//!
//! Login failures are counted per account and client address (an attacker
//! at one address is stopped without locking the real user out elsewhere),
//! per address (stuffing across accounts), and per account (a hard cap
//! across addresses, which addresses that logged in successfully before are
//! exempt from). Sign-up, invitation acceptance and refresh are limited per
//! address ([`PublicRpc`]).
//!
//! Keys hold a fixed-size digest of the account, never the email, and an
//! IPv6 client counts as its /64: whatever a client sends, one key costs
//! the same few bytes.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use trellis_runtime::parse_duration;
use trellis_store::{Counters, Gate, StoreError};

/// At most `count` calls per `window` (written `10/1h`, `300/5m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u64,
    pub window: Duration,
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (count, window) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected COUNT/WINDOW, e.g. 10/1h"))?;
        let count: u64 = count
            .trim()
            .parse()
            .ok()
            .filter(|count| *count >= 1)
            .ok_or_else(|| format!("{text:?}: the count must be a positive number"))?;
        let window = parse_duration(window)?;
        if window < Duration::from_secs(1) || window > Duration::from_secs(7 * 24 * 3600) {
            return Err(format!("{text:?}: the window must be between 1s and 168h"));
        }
        Ok(RateLimit { count, window })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.window.as_secs())
    }
}

/// The public RPCs limited per client address. Login has its own, failure
/// based, limits; `GetJwks` is exempt: it is cheap, served from memory, and
/// every other server fetches it, often from one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicRpc {
    SignUp,
    AcceptInvitation,
    Refresh,
    IssueServiceToken,
}

impl PublicRpc {
    fn key(self) -> &'static str {
        match self {
            PublicRpc::SignUp => "sign-up",
            PublicRpc::AcceptInvitation => "accept-invitation",
            PublicRpc::Refresh => "refresh",
            PublicRpc::IssueServiceToken => "issue-service-token",
        }
    }

    /// What a client is told when it is over the limit.
    pub fn throttled_message(self) -> &'static str {
        match self {
            PublicRpc::SignUp => "too many sign-ups from this address; retry later",
            PublicRpc::AcceptInvitation => {
                "too many invitation acceptances from this address; retry later"
            }
            PublicRpc::Refresh => "too many token refreshes from this address; retry later",
            PublicRpc::IssueServiceToken => {
                "too many service-token requests from this address; retry later"
            }
        }
    }
}

/// Per-address limits of the public RPCs; flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct PublicRpcLimits {
    /// Sign-ups per client address (IPv6: per /64) and window. Each creates
    /// an organization and costs a password hash.
    #[arg(long, env = "TRELLIS_SIGN_UP_RATE", default_value = "10/1h")]
    pub sign_up_rate: RateLimit,
    /// Invitation acceptances per client address and window.
    #[arg(long, env = "TRELLIS_ACCEPT_INVITATION_RATE", default_value = "20/1h")]
    pub accept_invitation_rate: RateLimit,
    /// Token refreshes per client address and window: one client refreshes
    /// every access-token lifetime, so this leaves room for a few hundred
    /// clients behind one address.
    #[arg(long, env = "TRELLIS_REFRESH_RATE", default_value = "300/5m")]
    pub refresh_rate: RateLimit,
    /// Service-token requests per client address and window. Secrets are
    /// 256 random bits, so this bounds load, not guessing; there is no
    /// per-account limit, which anyone knowing a client id (the `sub` of
    /// its tokens) could fill to lock the account out.
    #[arg(
        long,
        env = "TRELLIS_ISSUE_SERVICE_TOKEN_RATE",
        default_value = "60/1m"
    )]
    pub issue_service_token_rate: RateLimit,
}

impl Default for PublicRpcLimits {
    fn default() -> Self {
        PublicRpcLimits {
            sign_up_rate: RateLimit {
                count: 10,
                window: Duration::from_secs(3600),
            },
            accept_invitation_rate: RateLimit {
                count: 20,
                window: Duration::from_secs(3600),
            },
            refresh_rate: RateLimit {
                count: 300,
                window: Duration::from_secs(300),
            },
            issue_service_token_rate: RateLimit {
                count: 60,
                window: Duration::from_secs(60),
            },
        }
    }
}

impl PublicRpcLimits {
    fn of(&self, rpc: PublicRpc) -> RateLimit {
        match rpc {
            PublicRpc::SignUp => self.sign_up_rate,
            PublicRpc::AcceptInvitation => self.accept_invitation_rate,
            PublicRpc::Refresh => self.refresh_rate,
            PublicRpc::IssueServiceToken => self.issue_service_token_rate,
        }
    }
}

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
    pub public_rpcs: PublicRpcLimits,
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
            public_rpcs: PublicRpcLimits::default(),
        }
    }
}

pub struct Throttle {
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

/// 128 bits of SHA-256 of the normalised email: the same size whatever was
/// sent, and no address in the keys. Not a secret: it only has to keep
/// accounts apart.
fn account_digest(email: &str) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(email.as_bytes())[..16])
}

/// The client as limits count it; calls with no peer address (in-process)
/// share one key.
fn address_key(address: Option<IpAddr>) -> String {
    address.map_or_else(|| "unknown".to_owned(), trellis_tenancy::rate_limit_key)
}

/// An IPv6 client's /48 is also limited, at this many times its /64's
/// limit: a site holds 65 536 /64s, an attacker with one must not get 65 536
/// times the tries.
const BLOCK_FACTOR: u64 = 16;

/// The address comes last in every key: it is the one part that may hold a
/// ':' (IPv6), and last it cannot make one key look like another.
struct Keys {
    pair: String,
    address: String,
    /// The /48 of an IPv6 client.
    block: Option<String>,
    account: String,
    known_good: String,
}

impl Keys {
    fn new(email: &str, address: Option<IpAddr>) -> Keys {
        let block = address.and_then(trellis_tenancy::rate_limit_block);
        let (account, address) = (account_digest(email), address_key(address));
        Keys {
            pair: format!("login:pair:{account}:{address}"),
            address: format!("login:address:{address}"),
            block: block.map(|block| format!("login:block:{block}")),
            account: format!("login:account:{account}"),
            known_good: format!("login:good:{account}:{address}"),
        }
    }
}

/// A login attempt admitted past the limits. It counts against them as a
/// failure would until it is settled with [`Throttle::failed`] or
/// [`Throttle::succeeded`]; dropped unsettled (an error, a cancelled
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
        keys.extend(self.keys.block.as_deref());
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

impl Throttle {
    pub fn new(counters: Arc<dyn Counters>, policy: ThrottlePolicy) -> Self {
        Throttle { counters, policy }
    }

    /// Counts a call of a public RPC from `address`: `Ok` to go on, or how
    /// long until the address may call it again. Every call counts, whatever
    /// its outcome, since each costs the server work (and a sign-up reveals
    /// whether an email is registered).
    pub async fn admit_call(
        &self,
        rpc: PublicRpc,
        address: Option<IpAddr>,
    ) -> Result<Result<(), Duration>, StoreError> {
        let limit = self.policy.public_rpcs.of(rpc);
        let key = format!("rate:{}:{}", rpc.key(), address_key(address));
        let mut counted = vec![(key, limit.count)];
        if let Some(block) = address.and_then(trellis_tenancy::rate_limit_block) {
            counted.push((
                format!("rate:{}:{block}", rpc.key()),
                limit.count.saturating_mul(BLOCK_FACTOR),
            ));
        }
        let mut wait = None;
        for (key, most) in counted {
            let tally = self.counters.increment(&key, limit.window).await?;
            if tally.count > most {
                wait = wait.max(Some(tally.resets_in));
            }
        }
        Ok(wait.map_or(Ok(()), Err))
    }

    /// Before checking a password: the admitted attempt, or how long to wait.
    /// Failures and attempts still being checked count alike, so concurrent
    /// guesses get no more tries than sequential ones. `email` is normalised
    /// and bounded by the caller.
    pub async fn admit(
        &self,
        email: &str,
        address: Option<IpAddr>,
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
        if let Some(block) = &keys.block {
            gates.push(Gate {
                key: block,
                limit: self.policy.address_failures.saturating_mul(BLOCK_FACTOR),
            });
        }
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
        if let Some(block) = &keys.block {
            self.counters
                .increment(block, self.policy.address_window)
                .await?;
        }
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

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn throttle() -> Throttle {
        let policy = ThrottlePolicy {
            pair_failures: 3,
            address_failures: 5,
            account_failures: 4,
            ..ThrottlePolicy::default()
        };
        Throttle::new(Arc::new(MemoryCounters::default()), policy)
    }

    async fn fail(throttle: &Throttle, email: &str, address: &str) -> Duration {
        let attempt = throttle.admit(email, ip(address)).await.unwrap().unwrap();
        throttle.failed(attempt).await.unwrap()
    }

    async fn admitted(throttle: &Throttle, email: &str, address: &str) -> bool {
        throttle.admit(email, ip(address)).await.unwrap().is_ok()
    }

    #[tokio::test]
    async fn an_address_is_stopped_for_one_account_without_locking_the_user_out() {
        let throttle = throttle();
        for _ in 0..3 {
            fail(&throttle, "ana@x.io", "10.0.0.1").await;
        }
        let retry = throttle
            .admit("ana@x.io", ip("10.0.0.1"))
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
            .admit("ana@x.io", ip("10.0.0.9"))
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
                    .admit("ana@x.io", ip("10.0.0.1"))
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let retry = throttle
            .admit("ana@x.io", ip("10.0.0.1"))
            .await
            .unwrap()
            .err()
            .expect("full");
        assert_eq!(retry, IN_FLIGHT_RETRY, "a short wait: they settle soon");
        // Across addresses the account cap (4) holds the same way.
        held.push(
            throttle
                .admit("ana@x.io", ip("10.0.0.2"))
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
        let throttle = Throttle::new(
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

    #[tokio::test]
    async fn keys_are_the_same_size_whatever_the_email() {
        let counters = Arc::new(MemoryCounters::default());
        let throttle = Throttle::new(counters.clone(), ThrottlePolicy::default());
        let huge = format!("{}@example.com", "a".repeat(3 << 20));
        for _ in 0..3 {
            let attempt = throttle
                .admit(&huge, ip("10.0.0.1"))
                .await
                .unwrap()
                .unwrap();
            throttle.failed(attempt).await.unwrap();
        }
        let usage = counters.usage();
        assert_eq!(usage.keys, 3, "pair, address and account");
        assert!(usage.bytes < 1024, "{usage:?}");
    }

    #[tokio::test]
    async fn ten_thousand_failures_with_distinct_emails_stay_bounded() {
        let counters = Arc::new(MemoryCounters::default());
        let throttle = Throttle::new(counters.clone(), ThrottlePolicy::default());
        let (mut refused, mut peak) = (0, counters.usage());
        for n in 0..10_000 {
            match throttle
                .admit(&format!("user{n}@example.com"), ip("203.0.113.9"))
                .await
                .unwrap()
            {
                Ok(attempt) => {
                    throttle.failed(attempt).await.unwrap();
                }
                Err(_) => refused += 1,
            }
            let usage = counters.usage();
            if usage.bytes > peak.bytes {
                peak = usage;
            }
        }
        let policy = ThrottlePolicy::default();
        assert_eq!(refused, 10_000 - policy.address_failures);
        // One address key, and a pair and an account key per admitted failure.
        assert_eq!(peak.keys as u64, 1 + 2 * policy.address_failures);
        assert!(peak.bytes < 32 * 1024, "{peak:?}");
        eprintln!(
            "10 000 failed logins, distinct emails, one address: peak {} keys, {} bytes",
            peak.keys, peak.bytes
        );
    }

    #[tokio::test]
    async fn failures_from_many_addresses_stay_within_the_cap() {
        let counters = Arc::new(MemoryCounters::with_max_keys(500));
        let throttle = Throttle::new(counters.clone(), ThrottlePolicy::default());
        for n in 0..3_000u32 {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string();
            fail(&throttle, &format!("user{n}@example.com"), &address).await;
        }
        assert!(counters.usage().keys <= 500, "{:?}", counters.usage());
    }

    #[tokio::test]
    async fn an_ipv6_client_is_counted_per_64() {
        let throttle = throttle();
        for n in 1..=3 {
            fail(&throttle, "ana@x.io", &format!("2001:db8:1:2::{n}")).await;
        }
        assert!(
            !admitted(&throttle, "ana@x.io", "2001:db8:1:2:ffff::1").await,
            "the same /64"
        );
        assert!(admitted(&throttle, "ana@x.io", "2001:db8:1:3::1").await);
    }

    #[tokio::test]
    async fn an_ipv6_site_is_limited_per_48_too() {
        let policy = ThrottlePolicy {
            address_failures: 2,
            public_rpcs: PublicRpcLimits {
                sign_up_rate: "1/1h".parse().unwrap(),
                ..PublicRpcLimits::default()
            },
            ..ThrottlePolicy::default()
        };
        let throttle = Throttle::new(Arc::new(MemoryCounters::default()), policy);
        // Sixteen /64s of one /48 each get their own sign-up, then no more.
        for n in 0..BLOCK_FACTOR {
            let address = ip(&format!("2001:db8:7:{n:x}::1"));
            assert_eq!(
                throttle
                    .admit_call(PublicRpc::SignUp, address)
                    .await
                    .unwrap(),
                Ok(()),
                "/64 #{n}"
            );
        }
        assert!(
            throttle
                .admit_call(PublicRpc::SignUp, ip("2001:db8:7:ff::1"))
                .await
                .unwrap()
                .is_err(),
            "a seventeenth /64 of the same /48"
        );
        assert_eq!(
            throttle
                .admit_call(PublicRpc::SignUp, ip("2001:db8:8::1"))
                .await
                .unwrap(),
            Ok(()),
            "another /48"
        );
        // Failed logins the same way: 2 per /64, 32 per /48.
        for n in 0..BLOCK_FACTOR {
            for _ in 0..2 {
                fail(
                    &throttle,
                    &format!("user{n}@x.io"),
                    &format!("2001:db8:9:{n:x}::1"),
                )
                .await;
            }
        }
        assert!(!admitted(&throttle, "someone@x.io", "2001:db8:9:ff::1").await);
        assert!(admitted(&throttle, "someone@x.io", "2001:db8:a::1").await);
    }

    #[tokio::test]
    async fn public_rpcs_are_limited_per_address() {
        let policy = ThrottlePolicy {
            // The same figure for both: counted together, three sign-ups
            // would use up the refreshes too.
            public_rpcs: PublicRpcLimits {
                sign_up_rate: "3/1h".parse().unwrap(),
                refresh_rate: "3/1h".parse().unwrap(),
                ..PublicRpcLimits::default()
            },
            ..ThrottlePolicy::default()
        };
        let throttle = Throttle::new(Arc::new(MemoryCounters::default()), policy);
        for _ in 0..3 {
            assert_eq!(
                throttle
                    .admit_call(PublicRpc::SignUp, ip("10.0.0.1"))
                    .await
                    .unwrap(),
                Ok(())
            );
        }
        let retry = throttle
            .admit_call(PublicRpc::SignUp, ip("10.0.0.1"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(retry > Duration::from_secs(3500), "{retry:?}");
        assert_eq!(
            throttle
                .admit_call(PublicRpc::SignUp, ip("10.0.0.2"))
                .await
                .unwrap(),
            Ok(()),
            "another address"
        );
        assert_eq!(
            throttle
                .admit_call(PublicRpc::Refresh, ip("10.0.0.1"))
                .await
                .unwrap(),
            Ok(()),
            "another RPC"
        );
    }

    #[test]
    fn rate_limits_parse_and_refuse_nonsense() {
        assert_eq!(
            "10/1h".parse::<RateLimit>(),
            Ok(RateLimit {
                count: 10,
                window: Duration::from_secs(3600)
            })
        );
        assert_eq!(
            "300/5m".parse::<RateLimit>().unwrap().window,
            Duration::from_secs(300)
        );
        for bad in [
            "10", "0/1h", "x/1h", "10/0s", "10/1y", "10/200h", "10/169h", "/1h",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
        // The window's bounds are inclusive.
        for edge in ["1/1s", "1/168h"] {
            assert!(edge.parse::<RateLimit>().is_ok(), "{edge}");
        }
        // Shown as the flag takes it, so a logged figure can be pasted back.
        let limit: RateLimit = "300/5m".parse().unwrap();
        assert_eq!(limit.to_string(), "300/300s");
        assert_eq!(limit.to_string().parse::<RateLimit>(), Ok(limit));
    }
}
