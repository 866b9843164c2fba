//! Helpers shared by the end-to-end tests: real servers on port 0, real
//! clients, tokens signed by a test key.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use trellis_cli::{Cli, Command, ServeArgs};
use trellis_runtime::{ServerLimits, ServiceSet, Shutdown, ShutdownTrigger};
use trellis_tenancy::{
    AccessClaims, JwksCache, Role, SigningKey, StaticJwks, TokenVerifier, VerifierConfig,
};

pub const ISSUER: &str = "trellis";
pub const AUDIENCE: &str = "trellis";

/// Written past the harness's capture so a skipped check is never silent.
pub fn loud(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// `variable`'s value, or `None` after saying loudly that `what` on
/// `backend` was skipped.
fn backend_url(variable: &str, backend: &str, what: &str) -> Option<String> {
    let url = std::env::var(variable).ok();
    if url.is_none() {
        loud(&format!("SKIPPED: {what} on {backend} (set {variable})"));
    }
    url
}

/// The PostgreSQL URL for backend tests, or `None` (said loudly).
pub fn postgres_url(what: &str) -> Option<String> {
    backend_url("TRELLIS_TEST_DATABASE_URL", "PostgreSQL", what)
}

/// The Redis URL for backend tests, or `None` (said loudly).
pub fn redis_url(what: &str) -> Option<String> {
    backend_url("TRELLIS_TEST_REDIS_URL", "Redis", what)
}

pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trellis-{label}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `trellis up` arguments with every server on an ephemeral port.
pub fn up_args(data_dir: &std::path::Path, extra: &[&str]) -> ServeArgs {
    let mut argv = vec![
        "trellis".to_owned(),
        "up".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    for service in ["auth", "session", "cart", "order", "execution"] {
        argv.push(format!("--{service}-addr"));
        argv.push("127.0.0.1:0".into());
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    match Cli::parse_from(argv).command {
        Command::Up(args) => args,
        _ => unreachable!(),
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn claims(org: uuid::Uuid, role: Role) -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: uuid::Uuid::new_v4(),
        org,
        role,
        sid: uuid::Uuid::new_v4(),
        iat: now(),
        nbf: now(),
        exp: now() + 600,
        jti: uuid::Uuid::new_v4(),
        scope: None,
    }
}

pub fn bearer(key: &SigningKey, claims: &AccessClaims) -> String {
    format!("Bearer {}", key.sign(claims).unwrap())
}

/// A verifier that trusts exactly `key`.
pub async fn verifier_for(key: &SigningKey) -> Arc<TokenVerifier> {
    let jwks = Arc::new(JwksCache::new(
        Arc::new(StaticJwks::new(vec![key.public_jwk()])),
        Duration::from_secs(10),
    ));
    jwks.refresh().await.unwrap();
    Arc::new(TokenVerifier::new(
        jwks,
        VerifierConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_secs: 30,
            max_lifetime_secs: 3600,
            cache_capacity: 1000,
        },
    ))
}

pub struct TestServer {
    pub address: SocketAddr,
    pub trigger: ShutdownTrigger,
    pub task: tokio::task::JoinHandle<Result<(), trellis_runtime::ServeError>>,
}

/// Serves `set` through the real runtime stack on an ephemeral port.
pub async fn spawn_server(
    set: ServiceSet,
    verifier: Arc<TokenVerifier>,
    limits: ServerLimits,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(async move {
        trellis_runtime::serve(set, listener, &limits, verifier, shutdown).await
    });
    TestServer {
        address,
        trigger,
        task,
    }
}

pub async fn channel(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub fn with_metadata<T>(message: T, pairs: &[(&str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in pairs {
        request.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

/// `message` carrying `authorization: Bearer <access_token>`.
pub fn authed<T>(message: T, access_token: &str) -> tonic::Request<T> {
    with_metadata(
        message,
        &[("authorization", &format!("Bearer {access_token}"))],
    )
}
