//! Every hostile token is refused with UNAUTHENTICATED before the handler
//! runs, and the valid control token keeps working after each one.

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
    AccessClaims, AuthLayer, JwksCache, PublicMethods, Role, SessionCheck, SessionGuard,
    SessionState, SigningKey, StaticJwks, TenantContext, TokenVerifier, VerifierConfig,
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

struct Harness {
    service: trellis_tenancy::Authenticate<
        tower::util::BoxCloneService<
            http::Request<()>,
            http::Response<String>,
            std::convert::Infallible,
        >,
    >,
    handler_calls: Arc<AtomicUsize>,
    jwks_source: Arc<StaticJwks>,
    jwks: Arc<JwksCache>,
}

impl Harness {
    async fn new(published: &[&SigningKey]) -> Self {
        Self::guarded(published, None).await
    }

    /// With `sessions`, every call's login session is also checked.
    async fn guarded(published: &[&SigningKey], sessions: Option<Arc<SessionGuard>>) -> Self {
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
                leeway_secs: 30,
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
        let public = PublicMethods::standard().with_method("/trellis.auth.v1.AuthService/Login");
        let service = AuthLayer::new(verifier, public)
            .with_session_guard(sessions)
            .layer(tower::util::BoxCloneService::new(handler));
        Harness {
            service,
            handler_calls,
            jwks_source,
            jwks,
        }
    }

    async fn call_with(&mut self, path: &str, headers: &[(&str, &str)]) -> (i32, String) {
        let mut builder = http::Request::builder().uri(format!("http://trellis{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self
            .service
            .ready()
            .await
            .unwrap()
            .call(builder.body(()).unwrap())
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
}

const UNAUTHENTICATED: i32 = tonic::Code::Unauthenticated as i32;

#[tokio::test]
async fn hostile_tokens_never_reach_the_handler() {
    let key = SigningKey::generate("key-a");
    let retiring = SigningKey::generate("key-retired");
    let attacker = SigningKey::generate("key-a");
    let mut harness = Harness::new(&[&key, &retiring]).await;

    let control = format!("Bearer {}", signed(&header("key-a"), &claims(), &key));
    let retired_token = signed(&header("key-retired"), &claims(), &retiring);
    // Verified (and cached) while its key is published; must stop working on retirement.
    assert_eq!(harness.call(&format!("Bearer {retired_token}")).await, 0);
    harness.jwks_source.set(vec![key.public_jwk()]);
    harness.jwks.refresh().await.unwrap();

    let valid = signed(&header("key-a"), &claims(), &key);
    let (valid_header, valid_payload, valid_signature) = {
        let parts: Vec<&str> = valid.split('.').collect();
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
        )
    };
    let public_x = B64.decode(&key.public_jwk().x).unwrap();
    let mut flipped = B64.decode(&valid_signature).unwrap();
    flipped[10] ^= 0x01;
    let admin_payload = b64(&with(claims(), "role", json!("admin")));
    let attacker_jwk =
        serde_json::to_value(json!({"kty": "OKP", "crv": "Ed25519", "x": attacker.public_jwk().x}))
            .unwrap();
    let long_kid = "k".repeat(1000);
    let oversized = signed(
        &header("key-a"),
        &with(claims(), "pad", json!("x".repeat(9000))),
        &key,
    );

    let hostile: Vec<(&str, String)> = vec![
        (
            "alg none",
            unsigned(&with(header("key-a"), "alg", json!("none")), &claims(), b""),
        ),
        (
            "alg None",
            unsigned(&with(header("key-a"), "alg", json!("None")), &claims(), b""),
        ),
        (
            "alg NONE",
            unsigned(&with(header("key-a"), "alg", json!("NONE")), &claims(), b""),
        ),
        (
            "alg nOnE",
            unsigned(&with(header("key-a"), "alg", json!("nOnE")), &claims(), b""),
        ),
        (
            "alg none with a real signature",
            format!(
                "{}.{valid_payload}.{valid_signature}",
                b64(&with(header("key-a"), "alg", json!("none")))
            ),
        ),
        (
            "HS256 keyed with the raw public key",
            hmac_token("HS256", &public_x, "key-a"),
        ),
        (
            "HS256 keyed with the base64 public key",
            hmac_token("HS256", key.public_jwk().x.as_bytes(), "key-a"),
        ),
        (
            "HS512 keyed with the public key",
            hmac_token("HS512", &public_x, "key-a"),
        ),
        (
            "RS256 with garbage signature",
            unsigned(
                &with(header("key-a"), "alg", json!("RS256")),
                &claims(),
                &[7u8; 256],
            ),
        ),
        (
            "ES256 zero signature",
            unsigned(
                &with(header("key-a"), "alg", json!("ES256")),
                &claims(),
                &[0u8; 64],
            ),
        ),
        (
            "EdDSA zero signature",
            unsigned(&header("key-a"), &claims(), &[0u8; 64]),
        ),
        (
            "empty signature",
            format!("{valid_header}.{valid_payload}."),
        ),
        (
            "truncated signature",
            format!(
                "{valid_header}.{valid_payload}.{}",
                &valid_signature[..valid_signature.len() - 10]
            ),
        ),
        (
            "bit-flipped signature",
            format!("{valid_header}.{valid_payload}.{}", B64.encode(&flipped)),
        ),
        (
            "payload swapped under a valid signature",
            format!("{valid_header}.{admin_payload}.{valid_signature}"),
        ),
        (
            "signed by an unpublished key reusing the kid",
            signed(&header("key-a"), &claims(), &attacker),
        ),
        ("two parts", format!("{valid_header}.{valid_payload}")),
        ("four parts", format!("{valid}.{valid_signature}")),
        ("one part", valid_header.clone()),
        (
            "bad base64 header",
            format!("!!!{valid_header}.{valid_payload}.{valid_signature}"),
        ),
        (
            "bad base64 payload",
            format!("{valid_header}.%%{valid_payload}.{valid_signature}"),
        ),
        (
            "header not JSON",
            signed_raw(&B64.encode("not json"), &valid_payload, &key),
        ),
        (
            "payload not JSON",
            signed_raw(&valid_header, &B64.encode("not json"), &key),
        ),
        (
            "missing kid",
            signed(&without(header("key-a"), "kid"), &claims(), &key),
        ),
        (
            "unknown kid",
            signed(&header("key-unknown"), &claims(), &attacker),
        ),
        (
            "path traversal kid",
            signed(&header("../../../../etc/passwd"), &claims(), &key),
        ),
        (
            "SQL injection kid",
            signed(&header("key-a' OR '1'='1"), &claims(), &key),
        ),
        ("NUL in kid", signed(&header("key-a\u{0}"), &claims(), &key)),
        ("empty kid", signed(&header(""), &claims(), &key)),
        ("1000-byte kid", signed(&header(&long_kid), &claims(), &key)),
        (
            "embedded jwk",
            signed(
                &with(header("key-a"), "jwk", attacker_jwk),
                &claims(),
                &attacker,
            ),
        ),
        (
            "jku",
            signed(
                &with(header("key-a"), "jku", json!("https://evil.test/jwks.json")),
                &claims(),
                &key,
            ),
        ),
        (
            "x5u",
            signed(
                &with(header("key-a"), "x5u", json!("https://evil.test/cert.pem")),
                &claims(),
                &key,
            ),
        ),
        (
            "crit",
            signed(
                &with(header("key-a"), "crit", json!(["exp"])),
                &claims(),
                &key,
            ),
        ),
        (
            "expired",
            signed(
                &header("key-a"),
                &with(claims(), "exp", json!(now() - 3600)),
                &key,
            ),
        ),
        (
            "expired beyond leeway",
            signed(
                &header("key-a"),
                &with(claims(), "exp", json!(now() - 45)),
                &key,
            ),
        ),
        (
            "not yet valid",
            signed(
                &header("key-a"),
                &with(claims(), "nbf", json!(now() + 3600)),
                &key,
            ),
        ),
        (
            "exp as string",
            signed(
                &header("key-a"),
                &with(claims(), "exp", json!((now() + 600).to_string())),
                &key,
            ),
        ),
        (
            "nbf as string",
            signed(
                &header("key-a"),
                &with(claims(), "nbf", json!((now() - 5).to_string())),
                &key,
            ),
        ),
        (
            "missing exp",
            signed(&header("key-a"), &without(claims(), "exp"), &key),
        ),
        (
            "missing nbf",
            signed(&header("key-a"), &without(claims(), "nbf"), &key),
        ),
        (
            "wrong iss",
            signed(
                &header("key-a"),
                &with(claims(), "iss", json!("https://evil.test")),
                &key,
            ),
        ),
        (
            "missing iss",
            signed(&header("key-a"), &without(claims(), "iss"), &key),
        ),
        (
            "wrong aud",
            signed(
                &header("key-a"),
                &with(claims(), "aud", json!("someone-else")),
                &key,
            ),
        ),
        (
            "missing aud",
            signed(&header("key-a"), &without(claims(), "aud"), &key),
        ),
        (
            "missing typ",
            signed(&without(header("key-a"), "typ"), &claims(), &key),
        ),
        (
            "typ JWT",
            signed(&with(header("key-a"), "typ", json!("JWT")), &claims(), &key),
        ),
        (
            "typ refresh",
            signed(
                &with(header("key-a"), "typ", json!("refresh+jwt")),
                &claims(),
                &key,
            ),
        ),
        (
            "sub not a uuid",
            signed(
                &header("key-a"),
                &with(claims(), "sub", json!("admin")),
                &key,
            ),
        ),
        (
            "missing org",
            signed(&header("key-a"), &without(claims(), "org"), &key),
        ),
        (
            "unknown role",
            signed(
                &header("key-a"),
                &with(claims(), "role", json!("superadmin")),
                &key,
            ),
        ),
        ("oversized token", oversized),
        ("retired key", retired_token.clone()),
    ];
    assert!(
        hostile.len() >= 40,
        "the suite must keep at least 40 hostile tokens"
    );

    let mut handled = harness.calls();
    for (name, token) in &hostile {
        let code = harness.call(&format!("Bearer {token}")).await;
        assert_eq!(code, UNAUTHENTICATED, "{name}: expected UNAUTHENTICATED");
        assert_eq!(harness.calls(), handled, "{name}: the handler ran");
        assert_eq!(
            harness.call(&control).await,
            0,
            "control token refused after {name}"
        );
        handled += 1;
        assert_eq!(harness.calls(), handled);
    }

    // Malformed authorization headers, same rules.
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

/// Answers what the test last said of the session, counting the questions.
struct ScriptedCheck {
    state: std::sync::Mutex<SessionState>,
    asked: AtomicUsize,
}

impl SessionCheck for ScriptedCheck {
    fn check(
        &self,
        _: &TenantContext,
        _: http::HeaderValue,
    ) -> trellis_tenancy::BoxFuture<Result<SessionState, tonic::Status>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let state = *self.state.lock().unwrap();
        Box::pin(async move { Ok(state) })
    }
}

#[tokio::test]
async fn the_session_guard_applies_the_current_role_and_ended_sessions() {
    let key = SigningKey::generate("key-a");
    let check = Arc::new(ScriptedCheck {
        state: std::sync::Mutex::new(SessionState::Live(Some(Role::Viewer))),
        asked: AtomicUsize::new(0),
    });
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
