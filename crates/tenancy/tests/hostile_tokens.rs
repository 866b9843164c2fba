//! Every hostile token is refused with UNAUTHENTICATED before the handler
//! runs, for the reason expected (so a case cannot pass for the wrong one),
//! and the valid control token keeps working after each one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use hmac::Mac;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};
use trellis_tenancy::{
    AccessClaims, AuthError, AuthLayer, JwksCache, JwksError, JwksSource, MethodCallers, Principal,
    RequestContextLayer, Role, SessionCheck, SessionGuard, SessionState, SigningKey, StaticJwks,
    TenantContext, TokenVerifier, VerifierConfig,
};

const ISSUER: &str = "https://auth.trellis.test";
const AUDIENCE: &str = "trellis";
const ORG: &str = "0b6f3a52-8a8e-4c47-9d0e-3f1c2a7b5e11";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE,
        "sub": "5d1c7e0a-2f4b-4a9e-8c3d-6b7a8e9f0a12", "org": ORG, "role": "developer",
        "sid": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "jti": "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b",
        "iat": now(), "nbf": now() - 5, "exp": now() + 600,
    })
}

/// A service account's claims: no org, role or sid.
fn service_claims(scope: &str) -> Value {
    let claims = with(claims(), "scope", json!(scope));
    without(without(without(claims, "org"), "role"), "sid")
}

fn header(kid: &str) -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid})
}

fn b64(value: &Value) -> String {
    B64.encode(serde_json::to_vec(value).unwrap())
}

fn dalek(key: &SigningKey) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_pkcs8_der(key.pkcs8_der()).unwrap()
}

/// A token signed with `key` over exactly these JSON parts.
fn signed(header: &Value, claims: &Value, key: &SigningKey) -> String {
    signed_raw(&b64(header), &b64(claims), key)
}

fn signed_raw(header: &str, claims: &str, key: &SigningKey) -> String {
    let input = format!("{header}.{claims}");
    let signature = dalek(key).sign(input.as_bytes());
    format!("{input}.{}", B64.encode(signature.to_bytes()))
}

fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header), b64(claims), B64.encode(signature))
}

fn hmac_token(alg: &str, secret: &[u8], kid: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": alg, "typ": "at+jwt", "kid": kid})),
        b64(&claims())
    );
    let tag = match alg {
        "HS512" => {
            let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    format!("{input}.{}", B64.encode(tag))
}

fn with(mut value: Value, key: &str, new: Value) -> Value {
    value[key] = new;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

/// The peer every harness call comes from, as tonic's transport reports it.
const PEER: &str = "198.51.100.7:50000";

type Handler = tower::util::BoxCloneService<
    http::Request<()>,
    http::Response<String>,
    std::convert::Infallible,
>;

struct Harness {
    service: trellis_tenancy::RequestContext<trellis_tenancy::Authenticate<Handler>>,
    handler_calls: Arc<AtomicUsize>,
    jwks_source: Arc<StaticJwks>,
    jwks: Arc<JwksCache>,
    verifier: Arc<TokenVerifier>,
}

impl Harness {
    async fn new(published: &[&SigningKey]) -> Self {
        Self::build(published, 30, None).await
    }

    /// With `sessions`, every call's login session is also checked.
    async fn guarded(published: &[&SigningKey], sessions: Option<Arc<SessionGuard>>) -> Self {
        Self::build(published, 30, sessions).await
    }

    async fn build(
        published: &[&SigningKey],
        leeway_secs: u64,
        sessions: Option<Arc<SessionGuard>>,
    ) -> Self {
        let jwks_source = Arc::new(StaticJwks::new(
            published.iter().map(|k| k.public_jwk()).collect(),
        ));
        // No refresh rate limit here, so retirement and rotation are visible at once.
        let jwks = Arc::new(JwksCache::new(jwks_source.clone(), Duration::ZERO));
        jwks.refresh().await.unwrap();
        let verifier = Arc::new(TokenVerifier::new(
            jwks.clone(),
            VerifierConfig {
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                leeway_secs,
                max_lifetime_secs: 3600,
                cache_capacity: 1000,
            },
        ));
        let handler_calls = Arc::new(AtomicUsize::new(0));
        let calls = handler_calls.clone();
        let handler = tower::service_fn(move |request: http::Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let tenant = request.extensions().get::<TenantContext>().cloned();
            let spoofed: Vec<String> = request
                .headers()
                .keys()
                .filter(|name| {
                    name.as_str().starts_with("x-trellis-") || name.as_str() == "x-user-id"
                })
                .map(|name| name.to_string())
                .collect();
            async move {
                let body = format!("{:?}|{}", tenant.map(|t| t.role), spoofed.join(","));
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("grpc-status", "0")
                        .body(body)
                        .unwrap(),
                )
            }
        });
        let authenticate = AuthLayer::new(verifier.clone(), MethodCallers::from_contract())
            .with_session_guard(sessions)
            .layer(tower::util::BoxCloneService::new(handler));
        let service = RequestContextLayer::default().layer(authenticate);
        Harness {
            service,
            handler_calls,
            jwks_source,
            jwks,
            verifier,
        }
    }

    async fn call_with(&mut self, path: &str, headers: &[(&str, &str)]) -> (i32, String) {
        let mut builder = http::Request::builder().uri(format!("http://trellis{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(PEER.parse().unwrap()),
            });
        let response = self
            .service
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap();
        let code = response.headers()["grpc-status"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (code, response.into_body())
    }

    async fn call(&mut self, authorization: &str) -> i32 {
        self.call_with(
            "/trellis.cart.v1.CartService/GetCart",
            &[("authorization", authorization)],
        )
        .await
        .0
    }

    fn calls(&self) -> usize {
        self.handler_calls.load(Ordering::SeqCst)
    }

    /// Why the verifier refuses `token`.
    async fn refusal(&self, token: &str) -> &'static str {
        match self.verifier.verify(token).await {
            Ok(tenant) => panic!("accepted: {tenant:?}"),
            Err(error) => error.reason(),
        }
    }
}

const UNAUTHENTICATED: i32 = tonic::Code::Unauthenticated as i32;

/// `signature` with its scalar S raised by the group order L: the same
/// signature to a lax verifier, a second cache key to a lax cache.
fn malleated(signature: &[u8]) -> Vec<u8> {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = signature.to_vec();
    let mut carry = 0u16;
    for (byte, l) in out[32..].iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    out
}

/// The same bytes in base64url with the unused low bits of the last
/// character set: a lax decoder reads it as the original.
fn non_canonical(part: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let unused_bits = (part.len() * 6) % 8;
    assert!(unused_bits > 0, "{part} has no spare bits");
    let last = *part.as_bytes().last().unwrap();
    let index = ALPHABET.iter().position(|&c| c == last).unwrap();
    let mut out = part[..part.len() - 1].to_owned();
    out.push(ALPHABET[index | 1] as char);
    assert_ne!(out, part);
    out
}

/// (name, token, why it must be refused)
type Hostile = (&'static str, String, &'static str);

/// What the forgeries are made from: the published key, an attacker's key
/// under the same `kid`, a token of a key since retired, and a valid token
/// in its three parts.
struct Forger {
    key: SigningKey,
    attacker: SigningKey,
    retired_token: String,
    valid: String,
    valid_header: String,
    valid_payload: String,
    valid_signature: String,
}

impl Forger {
    fn new(key: SigningKey, retired_token: String) -> Forger {
        let valid = signed(&header("key-a"), &claims(), &key);
        let parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        Forger {
            attacker: SigningKey::generate("key-a"),
            retired_token,
            valid_header: parts[0].clone(),
            valid_payload: parts[1].clone(),
            valid_signature: parts[2].clone(),
            valid,
            key,
        }
    }

    /// `alg` none in every spelling, HMAC keyed with the public key, other
    /// asymmetric algorithms.
    fn algorithm_confusion(&self) -> Vec<Hostile> {
        let Forger {
            key,
            valid_payload,
            valid_signature,
            ..
        } = self;
        let public_x = B64.decode(&key.public_jwk().x).unwrap();
        vec![
            (
                "alg none",
                unsigned(&with(header("key-a"), "alg", json!("none")), &claims(), b""),
                "malformed",
            ),
            (
                "alg None",
                unsigned(&with(header("key-a"), "alg", json!("None")), &claims(), b""),
                "malformed",
            ),
            (
                "alg NONE",
                unsigned(&with(header("key-a"), "alg", json!("NONE")), &claims(), b""),
                "malformed",
            ),
            (
                "alg nOnE",
                unsigned(&with(header("key-a"), "alg", json!("nOnE")), &claims(), b""),
                "malformed",
            ),
            (
                "alg none with a real signature",
                format!(
                    "{}.{valid_payload}.{valid_signature}",
                    b64(&with(header("key-a"), "alg", json!("none")))
                ),
                "malformed",
            ),
            (
                "HS256 keyed with the raw public key",
                hmac_token("HS256", &public_x, "key-a"),
                "algorithm_not_allowed",
            ),
            (
                "HS256 keyed with the base64 public key",
                hmac_token("HS256", key.public_jwk().x.as_bytes(), "key-a"),
                "algorithm_not_allowed",
            ),
            (
                "HS512 keyed with the public key",
                hmac_token("HS512", &public_x, "key-a"),
                "algorithm_not_allowed",
            ),
            (
                "RS256 with garbage signature",
                unsigned(
                    &with(header("key-a"), "alg", json!("RS256")),
                    &claims(),
                    &[7u8; 256],
                ),
                "algorithm_not_allowed",
            ),
            (
                "ES256 zero signature",
                unsigned(
                    &with(header("key-a"), "alg", json!("ES256")),
                    &claims(),
                    &[0u8; 64],
                ),
                "algorithm_not_allowed",
            ),
        ]
    }

    /// Signatures that are missing, cut, flipped, malleated, re-encoded or
    /// moved, or made by a key that merely reuses a published `kid`.
    fn signature_tampering(&self) -> Vec<Hostile> {
        let Forger {
            attacker,
            valid_header,
            valid_payload,
            valid_signature,
            ..
        } = self;
        let mut flipped = B64.decode(valid_signature).unwrap();
        flipped[10] ^= 0x01;
        let admin_payload = b64(&with(claims(), "role", json!("admin")));
        vec![
            (
                "EdDSA zero signature",
                unsigned(&header("key-a"), &claims(), &[0u8; 64]),
                "bad_signature",
            ),
            (
                "empty signature",
                format!("{valid_header}.{valid_payload}."),
                "bad_signature",
            ),
            (
                "truncated signature",
                format!(
                    "{valid_header}.{valid_payload}.{}",
                    &valid_signature[..valid_signature.len() - 10]
                ),
                "bad_signature",
            ),
            (
                "bit-flipped signature",
                format!("{valid_header}.{valid_payload}.{}", B64.encode(&flipped)),
                "bad_signature",
            ),
            (
                "malleated signature (S + L)",
                format!(
                    "{valid_header}.{valid_payload}.{}",
                    B64.encode(malleated(&B64.decode(valid_signature).unwrap()))
                ),
                "bad_signature",
            ),
            (
                "non-canonical base64 signature",
                format!(
                    "{valid_header}.{valid_payload}.{}",
                    non_canonical(valid_signature)
                ),
                "malformed",
            ),
            (
                "payload swapped under a valid signature",
                format!("{valid_header}.{admin_payload}.{valid_signature}"),
                "bad_signature",
            ),
            (
                "signed by an unpublished key reusing the kid",
                signed(&header("key-a"), &claims(), attacker),
                "bad_signature",
            ),
        ]
    }

    /// Wrong number of parts, bad base64 or JSON, and tokens over the size
    /// limit.
    fn broken_structure(&self) -> Vec<Hostile> {
        let Forger {
            key,
            valid,
            valid_header,
            valid_payload,
            valid_signature,
            ..
        } = self;
        let oversized = signed(
            &header("key-a"),
            &with(claims(), "pad", json!("x".repeat(9000))),
            key,
        );
        vec![
            (
                "two parts",
                format!("{valid_header}.{valid_payload}"),
                "malformed",
            ),
            (
                "four parts",
                format!("{valid}.{valid_signature}"),
                "malformed",
            ),
            (
                "five parts (JWE)",
                format!(
                    "{}.{}.{}.{}.{}",
                    b64(&json!({"alg": "dir", "enc": "A256GCM", "typ": "at+jwt", "kid": "key-a"})),
                    "",
                    B64.encode([1u8; 12]),
                    valid_payload,
                    B64.encode([2u8; 16])
                ),
                "malformed",
            ),
            ("one part", valid_header.clone(), "malformed"),
            (
                "bad base64 header",
                format!("!!!{valid_header}.{valid_payload}.{valid_signature}"),
                "malformed",
            ),
            (
                "bad base64 payload",
                format!("{valid_header}.%%{valid_payload}.{valid_signature}"),
                "bad_signature",
            ),
            (
                "header not JSON",
                signed_raw(&B64.encode("not json"), valid_payload, key),
                "malformed",
            ),
            (
                "payload not JSON",
                signed_raw(valid_header, &B64.encode("not json"), key),
                "invalid_claims",
            ),
            ("oversized token", oversized, "too_large"),
        ]
    }

    /// `kid`s that are missing, unknown, hostile or huge, and a key that was
    /// retired.
    fn key_selection(&self) -> Vec<Hostile> {
        let Forger {
            key,
            attacker,
            retired_token,
            ..
        } = self;
        let long_kid = "k".repeat(1000);
        vec![
            (
                "missing kid",
                signed(&without(header("key-a"), "kid"), &claims(), key),
                "bad_kid",
            ),
            (
                "unknown kid",
                signed(&header("key-unknown"), &claims(), attacker),
                "unknown_key",
            ),
            (
                "path traversal kid",
                signed(&header("../../../../etc/passwd"), &claims(), key),
                "bad_kid",
            ),
            (
                "SQL injection kid",
                signed(&header("key-a' OR '1'='1"), &claims(), key),
                "bad_kid",
            ),
            (
                "NUL in kid",
                signed(&header("key-a\u{0}"), &claims(), key),
                "bad_kid",
            ),
            ("empty kid", signed(&header(""), &claims(), key), "bad_kid"),
            (
                "1000-byte kid",
                signed(&header(&long_kid), &claims(), key),
                "bad_kid",
            ),
            ("retired key", retired_token.clone(), "unknown_key"),
        ]
    }

    /// Headers that bring their own key or certificate, critical extensions,
    /// nesting, encryption, and any `typ` but `at+jwt`.
    fn header_tricks(&self) -> Vec<Hostile> {
        let Forger { key, attacker, .. } = self;
        let attacker_jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": attacker.public_jwk().x});
        vec![
            (
                "embedded jwk",
                signed(
                    &with(header("key-a"), "jwk", attacker_jwk),
                    &claims(),
                    attacker,
                ),
                "forbidden_header",
            ),
            (
                "jku",
                signed(
                    &with(header("key-a"), "jku", json!("https://evil.test/jwks.json")),
                    &claims(),
                    key,
                ),
                "forbidden_header",
            ),
            (
                "x5u",
                signed(
                    &with(header("key-a"), "x5u", json!("https://evil.test/cert.pem")),
                    &claims(),
                    key,
                ),
                "forbidden_header",
            ),
            (
                "x5c",
                signed(
                    &with(header("key-a"), "x5c", json!(["MIIBszCCAVmgAwIBAgIU"])),
                    &claims(),
                    key,
                ),
                "forbidden_header",
            ),
            (
                "x5t",
                signed(
                    &with(header("key-a"), "x5t", json!("dGh1bWJwcmludA")),
                    &claims(),
                    key,
                ),
                "forbidden_header",
            ),
            (
                "x5t#S256",
                signed(
                    &with(header("key-a"), "x5t#S256", json!("dGh1bWJwcmludA")),
                    &claims(),
                    key,
                ),
                "forbidden_header",
            ),
            (
                "crit",
                signed(
                    &with(header("key-a"), "crit", json!(["exp"])),
                    &claims(),
                    key,
                ),
                "forbidden_header",
            ),
            (
                "cty JWT (a nested token)",
                signed(&with(header("key-a"), "cty", json!("JWT")), &claims(), key),
                "forbidden_header",
            ),
            (
                "enc in a JWS header",
                signed(
                    &with(header("key-a"), "enc", json!("A256GCM")),
                    &claims(),
                    key,
                ),
                "forbidden_header",
            ),
            (
                "missing typ",
                signed(&without(header("key-a"), "typ"), &claims(), key),
                "wrong_type",
            ),
            (
                "typ JWT",
                signed(&with(header("key-a"), "typ", json!("JWT")), &claims(), key),
                "wrong_type",
            ),
            (
                "typ refresh",
                signed(
                    &with(header("key-a"), "typ", json!("refresh+jwt")),
                    &claims(),
                    key,
                ),
                "wrong_type",
            ),
        ]
    }

    /// Expired, not yet valid, issued in the future, or living too long.
    fn bad_times(&self) -> Vec<Hostile> {
        let Forger { key, .. } = self;
        vec![
            (
                "expired",
                signed(&header("key-a"), &with(claims(), "exp", at(-3600)), key),
                "expired",
            ),
            (
                "expired beyond leeway",
                signed(&header("key-a"), &with(claims(), "exp", at(-45)), key),
                "expired",
            ),
            (
                "not yet valid",
                signed(&header("key-a"), &with(claims(), "nbf", at(3600)), key),
                "not_yet_valid",
            ),
            (
                "issued in the future",
                signed(&header("key-a"), &with(claims(), "iat", at(3600)), key),
                "issued_in_future",
            ),
            (
                "lifetime longer than the maximum",
                signed(&header("key-a"), &with(claims(), "exp", at(7200)), key),
                "lifetime_too_long",
            ),
            (
                "issued long ago, valid for long",
                signed(
                    &header("key-a"),
                    &with(with(claims(), "iat", at(-86_400)), "nbf", at(-86_400)),
                    key,
                ),
                "lifetime_too_long",
            ),
        ]
    }

    /// Missing, mistyped or wrong registered claims, and tenant claims that are
    /// not ours.
    /// Scopes that would make a token more than it is: a worker or service
    /// token naming a tenant, session or role, a user token widened by a
    /// scope, scopes that are none of ours.
    fn scope_tricks(&self) -> Vec<Hostile> {
        let Forger { key, .. } = self;
        let user_with_scope = |scope: &str| with(claims(), "scope", json!(scope));
        vec![
            (
                "worker token with an org claim",
                signed(
                    &header("key-a"),
                    &with(service_claims("worker"), "org", json!(ORG)),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "worker token with a role",
                signed(
                    &header("key-a"),
                    &with(service_claims("worker"), "role", json!("admin")),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "service token with a sid",
                signed(
                    &header("key-a"),
                    &with(
                        service_claims("service"),
                        "sid",
                        json!("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"),
                    ),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "user token widened to worker",
                signed(&header("key-a"), &user_with_scope("worker"), key),
                "invalid_claims",
            ),
            (
                "user token widened to service",
                signed(&header("key-a"), &user_with_scope("service"), key),
                "invalid_claims",
            ),
            (
                "user token with two scopes",
                signed(&header("key-a"), &user_with_scope("user worker"), key),
                "invalid_claims",
            ),
            (
                "unknown scope",
                signed(&header("key-a"), &service_claims("admin"), key),
                "invalid_claims",
            ),
            (
                "empty scope",
                signed(&header("key-a"), &service_claims(""), key),
                "invalid_claims",
            ),
            (
                "scope not a string",
                signed(
                    &header("key-a"),
                    &with(service_claims("worker"), "scope", json!(["worker"])),
                    key,
                ),
                "invalid_claims",
            ),
        ]
    }

    fn bad_claims(&self) -> Vec<Hostile> {
        let Forger { key, .. } = self;
        vec![
            (
                "missing iat",
                signed(&header("key-a"), &without(claims(), "iat"), key),
                "invalid_claims",
            ),
            (
                "exp as string",
                signed(
                    &header("key-a"),
                    &with(claims(), "exp", json!((now() + 600).to_string())),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "nbf as string",
                signed(
                    &header("key-a"),
                    &with(claims(), "nbf", json!((now() - 5).to_string())),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "missing exp",
                signed(&header("key-a"), &without(claims(), "exp"), key),
                "invalid_claims",
            ),
            (
                "missing nbf",
                signed(&header("key-a"), &without(claims(), "nbf"), key),
                "invalid_claims",
            ),
            (
                "wrong iss",
                signed(
                    &header("key-a"),
                    &with(claims(), "iss", json!("https://evil.test")),
                    key,
                ),
                "wrong_issuer",
            ),
            (
                "missing iss",
                signed(&header("key-a"), &without(claims(), "iss"), key),
                "invalid_claims",
            ),
            (
                "wrong aud",
                signed(
                    &header("key-a"),
                    &with(claims(), "aud", json!("someone-else")),
                    key,
                ),
                "wrong_audience",
            ),
            // Our tokens carry one audience; typed claims refuse any array.
            (
                "aud as an array naming us among others",
                signed(
                    &header("key-a"),
                    &with(claims(), "aud", json!([AUDIENCE, "someone-else"])),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "aud as an array of others",
                signed(
                    &header("key-a"),
                    &with(claims(), "aud", json!(["someone-else"])),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "missing aud",
                signed(&header("key-a"), &without(claims(), "aud"), key),
                "invalid_claims",
            ),
            (
                "sub not a uuid",
                signed(
                    &header("key-a"),
                    &with(claims(), "sub", json!("admin")),
                    key,
                ),
                "invalid_claims",
            ),
            (
                "missing org",
                signed(&header("key-a"), &without(claims(), "org"), key),
                "invalid_claims",
            ),
            (
                "unknown role",
                signed(
                    &header("key-a"),
                    &with(claims(), "role", json!("superadmin")),
                    key,
                ),
                "invalid_claims",
            ),
        ]
    }
}

fn at(offset: i64) -> Value {
    json!(now() + offset)
}

/// Sends each of `cases` to a harness that publishes `key-a` and has just
/// retired `key-retired` (whose token it had verified and cached): each is
/// UNAUTHENTICATED for its expected reason without reaching the handler,
/// the control token works after each, and none takes a place in the
/// verified-token cache.
async fn refused_one_by_one(cases: fn(&Forger) -> Vec<Hostile>) {
    let key = SigningKey::generate("key-a");
    let retiring = SigningKey::generate("key-retired");
    let mut harness = Harness::new(&[&key, &retiring]).await;
    let control = format!("Bearer {}", signed(&header("key-a"), &claims(), &key));
    let retired_token = signed(&header("key-retired"), &claims(), &retiring);
    // Verified (and cached) while its key is published; must stop working on retirement.
    assert_eq!(harness.call(&format!("Bearer {retired_token}")).await, 0);
    harness.jwks_source.set(vec![key.public_jwk()]);
    harness.jwks.refresh().await.unwrap();
    // Retired: refused from now on, its cached verdict gone with its key.
    assert_eq!(
        harness.call(&format!("Bearer {retired_token}")).await,
        UNAUTHENTICATED
    );
    let hostile = cases(&Forger::new(key, retired_token));

    let mut handled = harness.calls();
    let mut wrong_reasons = Vec::new();
    for (name, token, reason) in &hostile {
        let code = harness.call(&format!("Bearer {token}")).await;
        assert_eq!(code, UNAUTHENTICATED, "{name}: expected UNAUTHENTICATED");
        assert_eq!(harness.calls(), handled, "{name}: the handler ran");
        let refused_for = harness.refusal(token).await;
        if refused_for != *reason {
            wrong_reasons.push(format!(
                "{name}: refused as {refused_for}, expected {reason}"
            ));
        }
        assert_eq!(
            harness.call(&control).await,
            0,
            "control token refused after {name}"
        );
        handled += 1;
        assert_eq!(harness.calls(), handled);
    }
    assert!(wrong_reasons.is_empty(), "{wrong_reasons:#?}");
    // Not one of them took a place in the verified-token cache.
    assert_eq!(
        harness.verifier.cached_tokens(),
        1,
        "only the control token"
    );
}

/// One test per group of hostile tokens, and [`GROUPS`], every group the
/// tests send: the one list both are made from.
macro_rules! hostile_groups {
    ($( $test:ident => $group:ident ),+ $(,)?) => {
        const GROUPS: &[fn(&Forger) -> Vec<Hostile>] = &[$( Forger::$group ),+];
        $(
            #[tokio::test]
            async fn $test() {
                refused_one_by_one(Forger::$group).await;
            }
        )+
    };
}

hostile_groups! {
    confused_algorithms_never_reach_the_handler => algorithm_confusion,
    tampered_signatures_never_reach_the_handler => signature_tampering,
    broken_structures_never_reach_the_handler => broken_structure,
    hostile_kids_and_retired_keys_never_reach_the_handler => key_selection,
    header_tricks_never_reach_the_handler => header_tricks,
    bad_times_never_reach_the_handler => bad_times,
    bad_claims_never_reach_the_handler => bad_claims,
    scope_tricks_never_reach_the_handler => scope_tricks,
}

#[test]
fn the_suite_keeps_at_least_60_hostile_tokens() {
    let forger = Forger::new(SigningKey::generate("key-a"), String::new());
    let hostile: Vec<Hostile> = GROUPS.iter().flat_map(|group| group(&forger)).collect();
    assert!(
        hostile.len() >= 60,
        "the suite must keep at least 60 hostile tokens"
    );
    let mut names: Vec<&str> = hostile.iter().map(|(name, _, _)| *name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), hostile.len(), "each case is named once");
}

#[tokio::test]
async fn malformed_authorization_headers_never_reach_the_handler() {
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await;
    let control = format!("Bearer {}", signed(&header("key-a"), &claims(), &key));
    assert_eq!(harness.call(&control).await, 0);
    let handled = harness.calls();
    for authorization in ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc"] {
        assert_eq!(
            harness.call(authorization).await,
            UNAUTHENTICATED,
            "{authorization:?}"
        );
        assert_eq!(harness.calls(), handled);
    }
    let (code, _) = harness
        .call_with("/trellis.cart.v1.CartService/GetCart", &[])
        .await;
    assert_eq!(code, UNAUTHENTICATED, "no authorization header at all");
    assert_eq!(harness.calls(), handled);
    let another = signed(
        &header("key-a"),
        &with(claims(), "jti", json!(uuid::Uuid::new_v4())),
        &key,
    );
    assert_eq!(harness.call(&format!("Bearer {another}")).await, 0);
    assert_eq!(harness.verifier.cached_tokens(), 2);
    assert_eq!(
        format!("{:?}", harness.verifier),
        "TokenVerifier { cached_tokens: 2 }",
        "no key material, no tokens"
    );
}

#[tokio::test]
async fn each_method_admits_only_the_callers_the_contract_declares() {
    const GET_CART: &str = "/trellis.cart.v1.CartService/GetCart";
    const LEASE: &str = "/trellis.execution.v1.WorkerService/Lease";
    const INTERNAL: &str = "/trellis.session.v1.LoginSessionService/CheckLoginSession";
    const CHECK_SESSION: &str = "/trellis.auth.v1.AuthService/CheckSession";
    const DENIED: i32 = tonic::Code::PermissionDenied as i32;
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await;
    let bearer = |claims: &Value| format!("Bearer {}", signed(&header("key-a"), claims, &key));
    let (user, worker, service) = (
        bearer(&claims()),
        bearer(&service_claims("worker")),
        bearer(&service_claims("service")),
    );
    let cases = [
        ("user", &user, GET_CART, 0),
        ("user", &user, LEASE, DENIED),
        ("user", &user, INTERNAL, DENIED),
        ("user", &user, CHECK_SESSION, 0),
        ("worker", &worker, GET_CART, DENIED),
        ("worker", &worker, LEASE, 0),
        ("worker", &worker, INTERNAL, DENIED),
        ("worker", &worker, CHECK_SESSION, 0),
        ("service", &service, GET_CART, DENIED),
        ("service", &service, LEASE, DENIED),
        ("service", &service, INTERNAL, 0),
        ("service", &service, CHECK_SESSION, 0),
    ];
    // Twice: first verified in full, then from the verified-token cache.
    for pass in ["verified", "cached"] {
        for (kind, token, path, expected) in cases {
            let before = harness.calls();
            let (code, _) = harness
                .call_with(path, &[("authorization", token.as_str())])
                .await;
            assert_eq!(code, expected, "{pass}: {kind} token on {path}");
            let ran = harness.calls() - before;
            assert_eq!(ran, usize::from(expected == 0), "{pass}: {kind} on {path}");
        }
    }
    // A service token has no tenant for a hint to match.
    let (code, _) = harness
        .call_with(
            INTERNAL,
            &[
                ("authorization", service.as_str()),
                ("x-trellis-org-id", ORG),
            ],
        )
        .await;
    assert_eq!(code, DENIED);
}

#[tokio::test]
async fn public_methods_skip_verification_and_identity_headers_are_stripped() {
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await;
    let (code, body) = harness
        .call_with(
            "/trellis.auth.v1.AuthService/Login",
            &[("x-trellis-user-id", "forged"), ("x-user-id", "forged")],
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        body, "None|",
        "public call must see no tenant and no spoofed headers"
    );

    let token = format!("Bearer {}", signed(&header("key-a"), &claims(), &key));
    let (code, body) = harness
        .call_with(
            "/trellis.cart.v1.CartService/GetCart",
            &[
                ("authorization", &token),
                ("x-trellis-role", "admin"),
                ("x-trellis-org-id", ORG),
            ],
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        body, "Some(Developer)|",
        "role comes from the token, spoofed headers are gone"
    );
}

#[tokio::test]
async fn org_hint_must_match_the_token() {
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await;
    let token = format!("Bearer {}", signed(&header("key-a"), &claims(), &key));
    for hint in ["7c2f7e53-0a59-4d8e-9c1f-2b4e6a8d0f13", "not-a-uuid"] {
        // Twice: once through full verification, once through the cache.
        for _ in 0..2 {
            let (code, _) = harness
                .call_with(
                    "/trellis.cart.v1.CartService/GetCart",
                    &[("authorization", &token), ("x-trellis-org-id", hint)],
                )
                .await;
            assert_eq!(code, tonic::Code::PermissionDenied as i32, "hint {hint}");
        }
    }
    assert_eq!(harness.calls(), 0);
}

#[tokio::test]
async fn a_newly_published_key_is_picked_up_on_first_use() {
    let old = SigningKey::generate("key-old");
    let mut harness = Harness::new(&[&old]).await;
    let new = SigningKey::generate("key-new");
    harness
        .jwks_source
        .set(vec![old.public_jwk(), new.public_jwk()]);
    let token = format!("Bearer {}", signed(&header("key-new"), &claims(), &new));
    assert_eq!(harness.call(&token).await, 0);
    assert_eq!(harness.calls(), 1);
}

/// Claims as Auth mints them: an admin of a fresh organization.
fn admin_claims() -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: uuid::Uuid::new_v4(),
        org: uuid::Uuid::new_v4(),
        role: Role::Admin,
        sid: uuid::Uuid::new_v4(),
        iat: now(),
        nbf: now(),
        exp: now() + 60,
        jti: uuid::Uuid::new_v4(),
        scope: None,
    }
}

#[tokio::test]
async fn tokens_minted_by_the_signer_verify_into_the_tenant() {
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await;
    let claims = admin_claims();
    let token = format!("Bearer {}", key.sign(&claims).unwrap());
    let (code, body) = harness
        .call_with(
            "/trellis.cart.v1.CartService/GetCart",
            &[("authorization", &token)],
        )
        .await;
    assert_eq!((code, body.as_str()), (0, "Some(Admin)|"));
}

/// Answers what the test last said of the session, counting the questions;
/// `failing` makes the check fail with that code instead (Auth down, or
/// refusing the token), after `delay` (an Auth that does not answer).
struct ScriptedCheck {
    state: std::sync::Mutex<SessionState>,
    failing: std::sync::Mutex<Option<tonic::Code>>,
    delay: std::sync::Mutex<Duration>,
    asked: AtomicUsize,
}

impl ScriptedCheck {
    fn answering(state: SessionState) -> Arc<Self> {
        Arc::new(ScriptedCheck {
            state: std::sync::Mutex::new(state),
            failing: std::sync::Mutex::new(None),
            delay: std::sync::Mutex::new(Duration::ZERO),
            asked: AtomicUsize::new(0),
        })
    }
}

impl SessionCheck for ScriptedCheck {
    fn check(
        &self,
        _: &Principal,
        _: http::HeaderValue,
    ) -> trellis_tenancy::BoxFuture<Result<SessionState, tonic::Status>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let state = *self.state.lock().unwrap();
        let failing = *self.failing.lock().unwrap();
        let delay = *self.delay.lock().unwrap();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            match failing {
                Some(code) => Err(tonic::Status::new(code, "scripted failure")),
                None => Ok(state),
            }
        })
    }
}

#[tokio::test]
async fn the_session_guard_applies_the_current_role_and_ended_sessions() {
    let key = SigningKey::generate("key-a");
    let check = ScriptedCheck::answering(SessionState::Live(Some(Role::Viewer)));
    let fresh_for = Duration::from_millis(200);
    let guard = Arc::new(SessionGuard::new(
        check.clone(),
        fresh_for,
        Duration::ZERO,
        100,
    ));
    let mut harness = Harness::guarded(&[&key], Some(guard)).await;
    let claims = admin_claims();
    let token = format!("Bearer {}", key.sign(&claims).unwrap());
    let mut call = async || {
        harness
            .call_with(
                "/trellis.cart.v1.CartService/GetCart",
                &[("authorization", &token)],
            )
            .await
    };
    let asked = || check.asked.load(Ordering::SeqCst);

    // Demoted since the token was issued: the role now wins, on the slow
    // path and on the cached fast path alike.
    assert_eq!(call().await, (0, "Some(Viewer)|".to_owned()));
    assert_eq!(call().await, (0, "Some(Viewer)|".to_owned()));
    assert_eq!(asked(), 1, "the verdict is remembered");
    // An Auth that does not say the role: the token's claim stands.
    *check.state.lock().unwrap() = SessionState::Live(None);
    tokio::time::sleep(fresh_for * 2).await;
    assert_eq!(call().await, (0, "Some(Admin)|".to_owned()));
    assert_eq!(asked(), 2);
    // Ended: refused, and it never comes back.
    *check.state.lock().unwrap() = SessionState::Ended;
    tokio::time::sleep(fresh_for * 2).await;
    assert_eq!(call().await.0, UNAUTHENTICATED);
    *check.state.lock().unwrap() = SessionState::Live(Some(Role::Admin));
    tokio::time::sleep(fresh_for * 2).await;
    assert_eq!(call().await.0, UNAUTHENTICATED);
    assert_eq!(asked(), 3);
}

#[tokio::test]
async fn while_auth_cannot_answer_a_live_session_is_served_for_the_grace_then_unavailable() {
    let key = SigningKey::generate("key-a");
    let check = ScriptedCheck::answering(SessionState::Live(None));
    let (fresh_for, grace) = (Duration::from_millis(300), Duration::from_millis(1500));
    let guard = Arc::new(SessionGuard::new(check.clone(), fresh_for, grace, 100));
    let mut harness = Harness::guarded(&[&key], Some(guard)).await;
    let token = format!("Bearer {}", key.sign(&admin_claims()).unwrap());
    assert_eq!(harness.call(&token).await, 0);
    let started = std::time::Instant::now();
    *check.failing.lock().unwrap() = Some(tonic::Code::Unavailable);
    tokio::time::sleep(fresh_for + Duration::from_millis(50)).await;
    // Stale, Auth down, within the grace: served, and Auth was asked.
    assert_eq!(harness.call(&token).await, 0);
    assert_eq!(check.asked.load(Ordering::SeqCst), 2);
    tokio::time::sleep(
        (fresh_for + grace).saturating_sub(started.elapsed()) + Duration::from_millis(50),
    )
    .await;
    let (code, _) = harness
        .call_with(
            "/trellis.cart.v1.CartService/GetCart",
            &[("authorization", &token)],
        )
        .await;
    assert_eq!(code, tonic::Code::Unavailable as i32, "past the grace");
    assert_eq!(harness.calls(), 2);
    // Auth back: the session was never taken for ended.
    *check.failing.lock().unwrap() = None;
    assert_eq!(harness.call(&token).await, 0);
}

#[tokio::test]
async fn only_an_explicit_verdict_ends_a_session() {
    let key = SigningKey::generate("key-a");
    let check = ScriptedCheck::answering(SessionState::Live(None));
    let guard = Arc::new(SessionGuard::new(
        check.clone(),
        Duration::ZERO,
        Duration::ZERO,
        100,
    ));
    let mut harness = Harness::guarded(&[&key], Some(guard)).await;
    let token = format!("Bearer {}", key.sign(&admin_claims()).unwrap());
    // Auth refusing the token (say, a replica that has not loaded a new key
    // yet) is a failed check, not an ended session.
    *check.failing.lock().unwrap() = Some(tonic::Code::Unauthenticated);
    let (code, _) = harness
        .call_with(
            "/trellis.cart.v1.CartService/GetCart",
            &[("authorization", &token)],
        )
        .await;
    assert_eq!(code, tonic::Code::Unavailable as i32);
    *check.failing.lock().unwrap() = None;
    assert_eq!(harness.call(&token).await, 0, "not remembered as ended");
    *check.state.lock().unwrap() = SessionState::Ended;
    assert_eq!(harness.call(&token).await, UNAUTHENTICATED);
}

#[tokio::test]
async fn a_cached_token_presented_after_it_expires_is_refused() {
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::build(&[&key], 0, None).await;
    let expires = now() + 1;
    let token = signed(
        &header("key-a"),
        &with(claims(), "exp", json!(expires)),
        &key,
    );
    assert_eq!(harness.call(&format!("Bearer {token}")).await, 0);
    assert!(
        harness.verifier.cached(&token).is_some(),
        "a verified token is remembered"
    );
    while now() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        harness.verifier.cached(&token).is_none(),
        "the cached verdict ends at exp"
    );
    assert_eq!(
        harness.call(&format!("Bearer {token}")).await,
        UNAUTHENTICATED
    );
    assert_eq!(harness.refusal(&token).await, "expired");
    assert_eq!(harness.calls(), 1);
}

#[tokio::test]
async fn times_inside_the_leeway_pass_and_just_outside_it_do_not() {
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await; // 30 s leeway
    let token = |claim: &str, offset: i64| {
        let mut claims = with(claims(), claim, json!(now() + offset));
        if claim == "iat" {
            claims = with(claims, "exp", json!(now() + offset + 600));
        }
        signed(&header("key-a"), &claims, &key)
    };
    // A lifetime of exactly the maximum (3600 s) is allowed, a second more is not.
    let issued = now();
    let lasting = |seconds: i64| {
        let claims = with(claims(), "iat", json!(issued));
        signed(
            &header("key-a"),
            &with(claims, "exp", json!(issued + seconds)),
            &key,
        )
    };
    assert_eq!(harness.call(&format!("Bearer {}", lasting(3600))).await, 0);
    let longer = lasting(3601);
    assert_eq!(harness.refusal(&longer).await, "lifetime_too_long");
    for (claim, inside, outside, reason) in [
        ("exp", -25, -35, "expired"),
        ("nbf", 25, 35, "not_yet_valid"),
        ("iat", 25, 35, "issued_in_future"),
    ] {
        let accepted = token(claim, inside);
        assert_eq!(
            harness.call(&format!("Bearer {accepted}")).await,
            0,
            "{claim} {inside}"
        );
        // And remembered: a verdict inside the leeway is served from the cache.
        assert!(
            harness.verifier.cached(&accepted).is_some(),
            "{claim} {inside}"
        );
        let refused = token(claim, outside);
        assert_eq!(
            harness.call(&format!("Bearer {refused}")).await,
            UNAUTHENTICATED,
            "{claim} {outside}"
        );
        assert_eq!(harness.refusal(&refused).await, reason);
    }
}

#[tokio::test]
async fn a_token_of_exactly_the_size_limit_passes_and_one_byte_more_does_not() {
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await;
    // Base64 lengths skip some values; padding both parts reaches them all.
    let of_length = |target: usize| {
        (0..4)
            .flat_map(|head| (0..8192).map(move |body| (head, body)))
            .map(|(head, body)| {
                let header = with(header("key-a"), "x-pad", json!("h".repeat(head)));
                signed(
                    &header,
                    &with(claims(), "pad", json!("x".repeat(body))),
                    &key,
                )
            })
            .find(|token| token.len() == target)
            .expect("some padding hits the length")
    };
    let largest = of_length(trellis_tenancy::MAX_TOKEN_BYTES);
    assert_eq!(harness.call(&format!("Bearer {largest}")).await, 0);
    let over = of_length(trellis_tenancy::MAX_TOKEN_BYTES + 1);
    assert_eq!(harness.refusal(&over).await, "too_large");
}

#[tokio::test]
async fn a_new_key_under_the_same_kid_ends_cached_verdicts() {
    let first = SigningKey::generate("key-a");
    let second = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&first]).await;
    let token = signed(&header("key-a"), &claims(), &first);
    assert_eq!(harness.call(&format!("Bearer {token}")).await, 0);
    assert!(harness.verifier.cached(&token).is_some());
    harness.jwks_source.set(vec![second.public_jwk()]);
    harness.jwks.refresh().await.unwrap();
    assert!(harness.verifier.cached(&token).is_none());
    assert_eq!(
        harness.call(&format!("Bearer {token}")).await,
        UNAUTHENTICATED
    );
    assert_eq!(harness.refusal(&token).await, "bad_signature");
    let fresh = signed(&header("key-a"), &claims(), &second);
    assert_eq!(harness.call(&format!("Bearer {fresh}")).await, 0);
}

/// A verifier with the harness's settings over `jwks`.
fn verifier_over(jwks: Arc<JwksCache>) -> TokenVerifier {
    TokenVerifier::new(
        jwks,
        VerifierConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_secs: 30,
            max_lifetime_secs: 3600,
            cache_capacity: 10,
        },
    )
}

#[tokio::test]
async fn unusable_jwks_entries_are_ignored() {
    let good = SigningKey::generate("key-good");
    let enc = SigningKey::generate("key-enc");
    let jwk = |kid: &str, kty: &str, crv: &str, alg: &str, usage: &str, x: String| {
        trellis::auth::v1::Jwk {
            kty: kty.into(),
            crv: crv.into(),
            alg: alg.into(),
            kid: kid.into(),
            r#use: usage.into(),
            x,
            y: String::new(),
        }
    };
    let x = |bytes: usize| B64.encode(vec![9u8; bytes]);
    let mut enc_jwk = enc.public_jwk();
    enc_jwk.r#use = "enc".into();
    let source = Arc::new(StaticJwks::new(vec![
        good.public_jwk(),
        enc_jwk,
        jwk("key-oct", "oct", "", "HS256", "sig", x(32)),
        jwk("key-rsa", "RSA", "", "RS256", "sig", x(256)),
        jwk("key-ec", "EC", "P-256", "ES256", "sig", x(32)),
        jwk("key-short", "OKP", "Ed25519", "EdDSA", "sig", x(31)),
        jwk("key-long", "OKP", "Ed25519", "EdDSA", "sig", x(33)),
        jwk(
            "key-x25519",
            "OKP",
            "X25519",
            "",
            "sig",
            good.public_jwk().x,
        ),
        jwk(
            "key-es-alg",
            "OKP",
            "Ed25519",
            "ES256",
            "sig",
            good.public_jwk().x,
        ),
        jwk(
            "../bad kid",
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
            good.public_jwk().x,
        ),
    ]));
    let jwks = Arc::new(JwksCache::new(source, Duration::ZERO));
    assert_eq!(jwks.refresh().await.unwrap(), 1, "only the good key");
    let verifier = verifier_over(jwks);
    let token = signed(&header("key-enc"), &claims(), &enc);
    assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
    let token = signed(&header("key-good"), &claims(), &good);
    assert!(verifier.verify(&token).await.is_ok());
}

/// Counts fetches of a fixed key set.
struct CountingJwks {
    keys: Vec<trellis::auth::v1::Jwk>,
    fetches: AtomicUsize,
}

impl JwksSource for CountingJwks {
    fn fetch(&self) -> trellis_tenancy::BoxFuture<Result<Vec<trellis::auth::v1::Jwk>, JwksError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let keys = self.keys.clone();
        Box::pin(async move { Ok(keys) })
    }
}

#[tokio::test]
async fn unknown_kids_refresh_the_jwks_at_most_once_per_interval() {
    let key = SigningKey::generate("key-a");
    let source = Arc::new(CountingJwks {
        keys: vec![key.public_jwk()],
        fetches: AtomicUsize::new(0),
    });
    let jwks = Arc::new(JwksCache::new(source.clone(), Duration::from_secs(60)));
    jwks.refresh().await.unwrap();
    let verifier = verifier_over(jwks);
    for n in 0..50 {
        let token = signed(&header(&format!("key-unknown-{n}")), &claims(), &key);
        assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
    }
    // Implausible kids never even ask.
    let token = signed(&header("../../etc/passwd"), &claims(), &key);
    assert_eq!(verifier.verify(&token).await, Err(AuthError::BadKid));
    assert_eq!(
        source.fetches.load(Ordering::SeqCst),
        1,
        "50 unknown kids within the interval of the last fetch: none more"
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn refused_tokens_are_logged_with_reason_and_address_within_a_budget() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
    let _default = tracing::subscriber::set_default(subscriber);
    let key = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key]).await;
    let expired = signed(
        &header("key-a"),
        &with(claims(), "exp", json!(now() - 3600)),
        &key,
    );
    for _ in 0..200 {
        assert_eq!(
            harness.call(&format!("Bearer {expired}")).await,
            UNAUTHENTICATED
        );
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("bearer token refused"))
        .collect();
    assert!(
        (1..=20).contains(&lines.len()),
        "at most 10 a second: {} lines",
        lines.len()
    );
    for line in &lines {
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("reason=\"expired\""), "{line}");
        assert!(line.contains("client_address=198.51.100.7"), "{line}");
    }
    let signature = expired.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "never the token");
}

#[tokio::test]
async fn an_auth_that_hangs_costs_one_wait_a_session_not_one_a_call() {
    let key = SigningKey::generate("key-a");
    let check = ScriptedCheck::answering(SessionState::Live(None));
    let fresh_for = Duration::from_millis(100);
    let guard = Arc::new(SessionGuard::new(
        check.clone(),
        fresh_for,
        Duration::from_secs(30),
        100,
    ));
    let mut harness = Harness::guarded(&[&key], Some(guard)).await;
    let token = format!("Bearer {}", key.sign(&admin_claims()).unwrap());
    assert_eq!(harness.call(&token).await, 0);
    *check.failing.lock().unwrap() = Some(tonic::Code::DeadlineExceeded);
    *check.delay.lock().unwrap() = Duration::from_millis(300);
    tokio::time::sleep(fresh_for * 2).await;
    // The first call after the verdict went stale waits out the check...
    assert_eq!(harness.call(&token).await, 0);
    assert_eq!(check.asked.load(Ordering::SeqCst), 2);
    // ...the next ones are served from the verdict without asking.
    for _ in 0..20 {
        assert_eq!(harness.call(&token).await, 0);
    }
    assert_eq!(check.asked.load(Ordering::SeqCst), 2);
}
