use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use trellis::auth::v1::{GetJwksRequest, Jwk, auth_service_client::AuthServiceClient};

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching the JWKS failed: {0}")]
    Fetch(String),
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where the public signing keys come from.
pub trait JwksSource: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<Result<Vec<Jwk>, JwksError>>;
}

/// Keys held in memory: for tests, and for Auth itself, which knows its keys.
#[derive(Default)]
pub struct StaticJwks {
    keys: RwLock<Vec<Jwk>>,
}

impl StaticJwks {
    pub fn new(keys: Vec<Jwk>) -> Self {
        StaticJwks {
            keys: RwLock::new(keys),
        }
    }

    /// Replaces the published keys (rotation, retirement).
    pub fn set(&self, keys: Vec<Jwk>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }
}

impl JwksSource for StaticJwks {
    fn fetch(&self) -> BoxFuture<Result<Vec<Jwk>, JwksError>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move { Ok(keys) })
    }
}

/// Keys fetched from Auth's `GetJwks` over gRPC.
pub struct AuthServiceJwks {
    client: AuthServiceClient<tonic::transport::Channel>,
    timeout: Duration,
}

impl AuthServiceJwks {
    /// `channel` should be lazy, so services can start before Auth.
    pub fn new(channel: tonic::transport::Channel, timeout: Duration) -> Self {
        AuthServiceJwks {
            client: AuthServiceClient::new(channel),
            timeout,
        }
    }
}

impl JwksSource for AuthServiceJwks {
    fn fetch(&self) -> BoxFuture<Result<Vec<Jwk>, JwksError>> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(GetJwksRequest {});
        request.set_timeout(self.timeout);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, client.get_jwks(request)).await {
                Ok(Ok(response)) => Ok(response.into_inner().keys),
                Ok(Err(status)) => Err(JwksError::Fetch(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                ))),
                Err(_) => Err(JwksError::Fetch("timed out".into())),
            }
        })
    }
}

/// The public key bytes a verdict was reached with.
pub(crate) type KeyFingerprint = [u8; 32];

/// One usable verification key.
pub(crate) struct VerificationKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) decoding: DecodingKey,
    pub(crate) fingerprint: KeyFingerprint,
}

/// Key ids are looked up, never used as paths or queries; still, refusing odd
/// ones up front keeps hostile `kid`s from even triggering a refresh.
pub(crate) fn is_plausible_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !kid.contains("..")
}

fn parse_key(jwk: &Jwk) -> Option<VerificationKey> {
    if !is_plausible_kid(&jwk.kid) || !(jwk.r#use.is_empty() || jwk.r#use == "sig") {
        return None;
    }
    match (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()) {
        ("OKP", "Ed25519", "EdDSA" | "") => {
            // jsonwebtoken slices the first 32 bytes without checking.
            let x = URL_SAFE_NO_PAD.decode(&jwk.x).ok()?;
            let fingerprint: KeyFingerprint = x.try_into().ok()?;
            Some(VerificationKey {
                algorithm: Algorithm::EdDSA,
                decoding: DecodingKey::from_ed_components(&jwk.x).ok()?,
                fingerprint,
            })
        }
        _ => None,
    }
}

/// The current public keys by `kid`, refreshed in the background and on an
/// unknown `kid`, at most once per `min_refresh_interval`.
pub struct JwksCache {
    source: Arc<dyn JwksSource>,
    keys: RwLock<Arc<HashMap<String, Arc<VerificationKey>>>>,
    /// Time of the last fetch attempt; the async mutex makes refreshes
    /// single-flight.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    min_refresh_interval: Duration,
}

impl JwksCache {
    pub fn new(source: Arc<dyn JwksSource>, min_refresh_interval: Duration) -> Self {
        JwksCache {
            source,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_attempt: tokio::sync::Mutex::new(None),
            min_refresh_interval,
        }
    }

    pub(crate) fn get(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// Whether `kid` is still published with the key of `fingerprint`.
    pub(crate) fn publishes(&self, kid: &str, fingerprint: &KeyFingerprint) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .is_some_and(|key| key.fingerprint == *fingerprint)
    }

    /// Fetches the key set now, ignoring the rate limit. Keys missing from
    /// the answer are retired at once.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut last = self.last_attempt.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    /// Refreshes unless one was attempted within the rate-limit window;
    /// callers arriving during a refresh wait for it instead of fetching again.
    pub(crate) async fn refresh_rate_limited(&self) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(error) = self.fetch_and_store().await {
            tracing::warn!(%error, "JWKS refresh failed; keeping the previous keys");
        }
    }

    async fn fetch_and_store(&self) -> Result<usize, JwksError> {
        let jwks = self.source.fetch().await?;
        let mut keys = HashMap::with_capacity(jwks.len());
        for jwk in &jwks {
            match parse_key(jwk) {
                Some(key) => {
                    keys.insert(jwk.kid.clone(), Arc::new(key));
                }
                None => tracing::warn!(kid = %jwk.kid, kty = %jwk.kty, "ignoring unusable JWK"),
            }
        }
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(count)
    }

    /// Refreshes every `every` until the cache is dropped.
    pub fn spawn_background_refresh(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cache) = weak.upgrade() else { break };
                if let Err(error) = cache.refresh().await {
                    tracing::warn!(%error, "periodic JWKS refresh failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn plausible_kids_are_short_and_plain() {
        for kid in ["k-1", "k_1", "k.1", "K9", "k-019a2b3c.d_e", &"k".repeat(64)] {
            assert!(is_plausible_kid(kid), "{kid}");
        }
        for kid in ["", "..", "a..b", "a/b", "a b", "a\0", "é", &"k".repeat(65)] {
            assert!(!is_plausible_kid(kid), "{kid:?}");
        }
    }

    struct Counting(AtomicUsize);

    impl JwksSource for Counting {
        fn fetch(&self) -> BoxFuture<Result<Vec<Jwk>, JwksError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    #[tokio::test]
    async fn keys_are_refreshed_in_the_background_until_the_cache_goes() {
        let source = Arc::new(Counting(AtomicUsize::new(0)));
        let cache = Arc::new(JwksCache::new(source.clone(), Duration::ZERO));
        cache.spawn_background_refresh(Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(source.0.load(Ordering::SeqCst) >= 3);
        drop(cache);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopped_at = source.0.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(source.0.load(Ordering::SeqCst), stopped_at, "it stops");
    }
}
