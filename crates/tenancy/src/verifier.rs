use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};

use crate::claims::{ACCESS_TOKEN_TYP, Principal, SignedClaims};
use crate::jwks::{JwksCache, KeyFingerprint, is_plausible_kid};

/// Longer bearer values are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Upper bound on clock-skew tolerance for `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 30;

/// Why a token was refused. Every variant answers `UNAUTHENTICATED`; the
/// detail is for logs, the client sees only [`AuthError::client_message`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed authorization header")]
    MalformedHeader,
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm not allowed: {0}")]
    AlgorithmNotAllowed(String),
    #[error("wrong token type")]
    WrongType,
    #[error("forbidden header parameter: {0}")]
    ForbiddenHeader(&'static str),
    #[error("missing or invalid kid")]
    BadKid,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime longer than allowed")]
    LifetimeTooLong,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
}

impl AuthError {
    pub fn client_message(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing bearer token",
            AuthError::MalformedHeader => "malformed authorization header",
            AuthError::Expired => "access token expired",
            _ => "invalid access token",
        }
    }

    /// A short, stable name of the kind of refusal, for logs and tests; it
    /// never carries anything taken from the token.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::MalformedHeader => "malformed_header",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::WrongType => "wrong_type",
            AuthError::ForbiddenHeader(_) => "forbidden_header",
            AuthError::BadKid => "bad_kid",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::LifetimeTooLong => "lifetime_too_long",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::InvalidClaims(_) => "invalid_claims",
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::unauthenticated(self.client_message())
    }

    fn from_jwt(error: &jsonwebtoken::errors::Error) -> AuthError {
        use jsonwebtoken::errors::ErrorKind;
        match error.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(_)
            | ErrorKind::InvalidClaimFormat(_)
            | ErrorKind::InvalidSubject
            | ErrorKind::Json(_) => AuthError::InvalidClaims(error.to_string()),
            _ => AuthError::Malformed(error.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct VerifierConfig {
    pub issuer: String,
    pub audience: String,
    /// Clamped to [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
    /// Longest `exp - iat` accepted: a token minted to live longer came from
    /// a misconfigured or compromised signer.
    pub max_lifetime_secs: u64,
    /// How many verified tokens to remember.
    pub cache_capacity: usize,
}

struct Verified {
    principal: Principal,
    kid: String,
    /// The key it was verified with: a new key under the same `kid` ends
    /// the verdict.
    key: KeyFingerprint,
}

/// Verifies access JWTs against a [`JwksCache`], remembering verified tokens
/// so a repeated token costs a lookup rather than an Ed25519 check (~40 µs).
pub struct TokenVerifier {
    jwks: Arc<JwksCache>,
    validation: Validation,
    leeway: i64,
    max_lifetime: i64,
    verified: quick_cache::sync::Cache<String, Arc<Verified>>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl TokenVerifier {
    pub fn new(jwks: Arc<JwksCache>, config: VerifierConfig) -> Self {
        let leeway = config.leeway_secs.min(MAX_LEEWAY_SECS);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[config.issuer]);
        validation.set_audience(&[config.audience]);
        TokenVerifier {
            jwks,
            validation,
            leeway: leeway as i64,
            max_lifetime: i64::try_from(config.max_lifetime_secs).unwrap_or(i64::MAX),
            verified: quick_cache::sync::Cache::new(config.cache_capacity.max(1)),
        }
    }

    /// Clock skew tolerated past `exp`: a stream ends when its token would
    /// be refused.
    pub fn leeway(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.leeway.unsigned_abs())
    }

    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// How many verified tokens are remembered.
    pub fn cached_tokens(&self) -> usize {
        self.verified.len()
    }

    /// The cached verdict for `token`, if it is still within `exp` and the
    /// key it was verified with is still published under its `kid`.
    pub fn cached(&self, token: &str) -> Option<Principal> {
        let hit = self.verified.get(token)?;
        let expired = hit.principal.expires_at() + self.leeway < now_secs();
        if expired || !self.jwks.publishes(&hit.kid, &hit.key) {
            self.verified.remove(token);
            return None;
        }
        Some(hit.principal.clone())
    }

    /// Full verification: header rules, key lookup (refreshing the JWKS once,
    /// rate-limited, for an unknown `kid`), signature and claims.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.cached(token) {
            return Ok(principal);
        }
        let kid = self.check_header(token)?;
        let key = match self.jwks.get(&kid) {
            Some(key) => key,
            None => {
                self.jwks.refresh_rate_limited().await;
                self.jwks.get(&kid).ok_or(AuthError::UnknownKey)?
            }
        };
        if key.algorithm != Algorithm::EdDSA {
            return Err(AuthError::AlgorithmNotAllowed(
                "key/algorithm mismatch".into(),
            ));
        }
        // jsonwebtoken checks `exp`/`nbf` only when present in the numeric
        // form; the typed claims make both mandatory integers.
        let claims = decode::<SignedClaims>(token, &key.decoding, &self.validation)
            .map_err(|e| AuthError::from_jwt(&e))?
            .claims;
        if claims.iat() > now_secs() + self.leeway {
            return Err(AuthError::IssuedInFuture);
        }
        if claims.exp().saturating_sub(claims.iat()) > self.max_lifetime {
            return Err(AuthError::LifetimeTooLong);
        }
        let principal = claims
            .into_principal()
            .map_err(|why| AuthError::InvalidClaims(why.into()))?;
        self.verified.insert(
            token.to_owned(),
            Arc::new(Verified {
                principal: principal.clone(),
                kid,
                key: key.fingerprint,
            }),
        );
        Ok(principal)
    }

    /// Header checks that need no key; returns the `kid`.
    fn check_header(&self, token: &str) -> Result<String, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(AuthError::Malformed("a JWS has three parts".into()));
        }
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(AuthError::WrongType);
        }
        // Keys come only from our JWKS, never from the token itself; no
        // extension (`crit`), nesting (`cty`) or encryption (`enc`) is used.
        let forbidden = [
            ("jwk", header.jwk.is_some()),
            ("jku", header.jku.is_some()),
            ("x5u", header.x5u.is_some()),
            ("x5c", header.x5c.is_some()),
            ("x5t", header.x5t.is_some()),
            ("x5t#S256", header.x5t_s256.is_some()),
            ("crit", header.crit.is_some()),
            ("cty", header.cty.is_some()),
            ("enc", header.enc.is_some()),
        ];
        if let Some((name, _)) = forbidden.into_iter().find(|(_, present)| *present) {
            return Err(AuthError::ForbiddenHeader(name));
        }
        match header.kid {
            Some(kid) if is_plausible_kid(&kid) => Ok(kid),
            _ => Err(AuthError::BadKid),
        }
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("cached_tokens", &self.verified.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_learn_only_whether_to_log_in_again() {
        let status = AuthError::Expired.to_status();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unauthenticated, "access token expired")
        );
        assert_eq!(AuthError::Missing.client_message(), "missing bearer token");
        assert_eq!(
            AuthError::MalformedHeader.client_message(),
            "malformed authorization header"
        );
        for hidden in [
            AuthError::BadSignature,
            AuthError::UnknownKey,
            AuthError::IssuedInFuture,
            AuthError::Malformed("header: {\"alg\": ...}".into()),
        ] {
            assert_eq!(
                hidden.client_message(),
                "invalid access token",
                "{hidden:?}"
            );
        }
    }
}
