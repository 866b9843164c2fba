//! Server half of `bench/auth_overhead.sh`: one authenticated unary RPC
//! (`AuthService/WhoAmI`), served either by a bare tonic server or through
//! the full Trellis stack (request context, access log, concurrency limit,
//! JWT verification with an EdDSA token). Counts handled calls, so the script
//! can check that every reply was a success (h2load cannot see gRPC errors).
//!
//! `trellis-tls` is the same stack serving TLS (a certificate made at start),
//! for the cost of TLS per call once connections are up.
//!
//! Usage: bench_server <bare|bare-token|trellis|trellis-tls> <port> <token-file>

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use trellis::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use trellis::auth::v1::{WhoAmIRequest, WhoAmIResponse};
use trellis_runtime::{ServerLimits, ServiceSet, Shutdown, TelemetryArgs};
use trellis_tenancy::{
    AccessClaims, JwksCache, Principal, Role, SessionCheck, SessionGuard, SessionState, SigningKey,
    StaticJwks, TenantContext, TokenVerifier, VerifierConfig,
};

/// The production path asks Auth about each session every few seconds; here
/// the answer is always "live", so the guard's cache cost is what's measured.
struct AlwaysLive;

impl SessionCheck for AlwaysLive {
    fn check(
        &self,
        principal: &Principal,
        _: http::HeaderValue,
    ) -> trellis_tenancy::BoxFuture<Result<SessionState, Status>> {
        let role = match principal {
            Principal::User(tenant) => Some(tenant.role),
            Principal::Worker(_) | Principal::Service(_) => None,
        };
        Box::pin(async move { Ok(SessionState::Live(role)) })
    }
}

struct Bench {
    handled: Arc<AtomicU64>,
    authenticated: bool,
}

#[tonic::async_trait]
impl AuthService for Bench {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let session_id = if self.authenticated {
            TenantContext::from_request(&request)?
                .session_id
                .to_string()
        } else {
            String::from("bare")
        };
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(WhoAmIResponse {
            session_id,
            ..Default::default()
        }))
    }
}

/// A fresh signing key and an access token it signed.
fn signed_token() -> (SigningKey, String) {
    let key = SigningKey::generate("bench-key");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = AccessClaims {
        iss: "trellis".into(),
        aud: "trellis".into(),
        sub: uuid::Uuid::new_v4(),
        org: uuid::Uuid::new_v4(),
        role: Role::Developer,
        sid: uuid::Uuid::new_v4(),
        iat: now,
        nbf: now,
        exp: now + 3600,
        jti: uuid::Uuid::new_v4(),
        scope: None,
    };
    let token = key.sign(&claims).unwrap();
    (key, token)
}

/// TLS with a certificate for 127.0.0.1 made now, its files beside
/// `token_file`.
fn self_signed_tls(token_file: &str) -> Arc<trellis_runtime::ServerTls> {
    let dir = std::path::Path::new(token_file).parent().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    let args = trellis_runtime::TlsArgs {
        tls_cert: Some(dir.join("tls.crt")),
        tls_key: Some(dir.join("tls.key")),
        ..Default::default()
    };
    trellis_runtime::ServerTls::load(&args, &[b"h2"])
        .unwrap()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, port, token_file] = args.as_slice() else {
        eprintln!("usage: bench_server <bare|bare-token|trellis|trellis-tls> <port> <token-file>");
        std::process::exit(2);
    };
    // The production default: human logs at info (successful RPCs log at debug).
    let log = std::env::var("TRELLIS_LOG").unwrap_or_else(|_| "info".into());
    let _telemetry = trellis_runtime::init_tracing(
        &TelemetryArgs {
            log,
            ..TelemetryArgs::default()
        },
        "trellis-bench",
    )
    .unwrap();
    // One worker: the script pins the server to one core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let address = format!("127.0.0.1:{port}");
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            trellis_runtime::wait_for_signal().await;
            trigger.trigger();
        });
        match mode.as_str() {
            "bare" | "bare-token" => {
                let service = AuthServiceServer::new(Bench {
                    handled: handled.clone(),
                    authenticated: false,
                });
                // bare-token: the same bytes on the wire as the trellis mode
                // (a real access token), but nothing verifies it.
                let token = if mode == "bare" {
                    "none".to_owned()
                } else {
                    signed_token().1
                };
                std::fs::write(token_file, token).unwrap();
                let mut stop = shutdown;
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        // As the Trellis servers accept: without Nagle.
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                        async move { stop.wait().await },
                    )
                    .await
                    .map_err(|e| e.to_string())
            }
            "trellis" | "trellis-tls" => {
                let (key, token) = signed_token();
                let jwks = Arc::new(JwksCache::new(
                    Arc::new(StaticJwks::new(vec![key.public_jwk()])),
                    Duration::from_secs(10),
                ));
                jwks.refresh().await.unwrap();
                let verifier = Arc::new(TokenVerifier::new(
                    jwks,
                    VerifierConfig {
                        issuer: "trellis".into(),
                        audience: "trellis".into(),
                        leeway_secs: 30,
                        max_lifetime_secs: 3600,
                        cache_capacity: 100_000,
                    },
                ));
                std::fs::write(token_file, token).unwrap();
                let tls = (mode == "trellis-tls").then(|| self_signed_tls(token_file));
                let set = ServiceSet::new("bench")
                    .with_tls(tls)
                    .with_session_guard(Some(Arc::new(SessionGuard::new(
                        Arc::new(AlwaysLive),
                        Duration::from_secs(5),
                        Duration::from_secs(60),
                        100_000,
                    ))))
                    .add_service(AuthServiceServer::new(Bench {
                        handled: handled.clone(),
                        authenticated: true,
                    }));
                trellis_runtime::serve(set, listener, &ServerLimits::default(), verifier, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            }
            other => Err(format!("unknown mode {other}")),
        }
    });
    println!("handled {}", handled.load(Ordering::Relaxed));
    if let Err(error) = result {
        eprintln!("bench_server: {error}");
        std::process::exit(1);
    }
}
