//! Helpers shared by the end-to-end tests: real servers on port 0, real
//! clients, tokens signed by a test key.
#![allow(dead_code)]

mod recording_sessions;
#[allow(unused_imports)]
pub use recording_sessions::{CSRF_TOKEN, RecordingSessions};

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
/// `backend` was skipped. With `TRELLIS_REQUIRE_BACKENDS` set (CI sets it)
/// a missing backend fails the test instead.
fn backend_url(variable: &str, backend: &str, what: &str) -> Option<String> {
    let url = std::env::var(variable).ok();
    if url.is_none() {
        assert!(
            std::env::var_os("TRELLIS_REQUIRE_BACKENDS").is_none(),
            "{what} on {backend}: set {variable} (TRELLIS_REQUIRE_BACKENDS is set)"
        );
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

/// Where a server keeps what a scenario exercises. Which backends a run has
/// is decided here alone, and a missing one is said loudly.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The embedded default: SQLite files, in-memory counters.
    Sqlite,
    Postgres,
    /// In-memory counters (the embedded default, named for throttling).
    Memory,
    Redis,
}

impl Backend {
    /// The backend a `backend_suite!` test is named after.
    pub fn named(name: &str) -> Backend {
        match name {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            "memory" => Backend::Memory,
            "redis" => Backend::Redis,
            other => panic!("no backend named {other}"),
        }
    }

    /// The `trellis up` flags that select this backend, or `None` (said
    /// loudly) when the run has no such backend. PostgreSQL gets a schema of
    /// the test's own and Redis keys a prefix of their own, so runs never
    /// share rows, migration history or counts.
    pub async fn flags(self, what: &str) -> Option<BackendFlags> {
        Some(match self {
            Backend::Sqlite | Backend::Memory => BackendFlags {
                flags: Vec::new(),
                schema: None,
            },
            Backend::Postgres => {
                let schema = Schema::fresh(&postgres_url(what)?).await;
                BackendFlags {
                    flags: vec!["--database-url".into(), schema.url.clone()],
                    schema: Some(schema),
                }
            }
            Backend::Redis => {
                let url = redis_url(what)?;
                let prefix = format!("trellis-test:{}:", uuid::Uuid::new_v4().simple());
                BackendFlags {
                    flags: vec![
                        "--redis-url".into(),
                        url,
                        "--redis-key-prefix".into(),
                        prefix,
                    ],
                    schema: None,
                }
            }
        })
    }
}

/// `trellis up` flags for one backend, and what to drop afterwards.
pub struct BackendFlags {
    pub flags: Vec<String>,
    schema: Option<Schema>,
}

impl BackendFlags {
    pub fn as_args(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }

    pub async fn remove(self) {
        if let Some(schema) = self.schema {
            schema.drop().await;
        }
    }
}

/// A PostgreSQL schema of a test's own in the test database, and the URL
/// whose connections use it.
pub struct Schema {
    pub url: String,
    name: String,
    admin: trellis_store::Database,
}

impl Schema {
    pub async fn fresh(url: &str) -> Schema {
        use trellis_store::{Database, DatabaseOptions};
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(url, &DatabaseOptions::default())
            .await
            .unwrap();
        let Database::Postgres(pool) = &admin else {
            panic!("TRELLIS_TEST_DATABASE_URL is not a PostgreSQL URL")
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(pool)
            .await
            .unwrap();
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}options=-c%20search_path%3D{name}");
        Schema { url, name, admin }
    }

    pub async fn drop(self) {
        let trellis_store::Database::Postgres(pool) = &self.admin else {
            unreachable!("a schema is made on PostgreSQL only")
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.name
        )))
        .execute(pool)
        .await
        .unwrap();
        self.admin.close().await;
    }
}

/// A database of a test's own: a new SQLite file, or a new schema in the
/// PostgreSQL test database (dropped by [`TestDatabase::remove`]), so a
/// test never sees another's rows or migration history.
pub struct TestDatabase {
    pub database: trellis_store::Database,
    cleanup: Cleanup,
}

/// What [`TestDatabase::remove`] takes away.
enum Cleanup {
    /// The SQLite file's directory.
    Dir(PathBuf),
    Schema(Schema),
}

impl TestDatabase {
    /// `None` (said loudly) when the run has no such backend.
    pub async fn fresh(backend: Backend, what: &str) -> Option<TestDatabase> {
        use trellis_store::{Database, DatabaseOptions};
        let options = DatabaseOptions::default();
        match backend {
            Backend::Sqlite | Backend::Memory => {
                let dir = temp_dir("db");
                let url = trellis_store::default_sqlite_url(&dir, "test");
                let database = Database::connect(&url, &options).await.unwrap();
                Some(TestDatabase {
                    database,
                    cleanup: Cleanup::Dir(dir),
                })
            }
            Backend::Postgres => {
                let schema = Schema::fresh(&postgres_url(what)?).await;
                let database = Database::connect(&schema.url, &options).await.unwrap();
                Some(TestDatabase {
                    database,
                    cleanup: Cleanup::Schema(schema),
                })
            }
            Backend::Redis => panic!("Redis is not a database"),
        }
    }

    pub async fn remove(self) {
        self.database.close().await;
        match self.cleanup {
            Cleanup::Dir(dir) => std::fs::remove_dir_all(dir).unwrap(),
            Cleanup::Schema(schema) => schema.drop().await,
        }
    }
}

/// One `#[tokio::test]` per backend for a scenario:
///
/// - `backend_suite!(scenario, "what it tests": sqlite, postgres);` calls
///   `scenario(&[&str])` with the `trellis up` flags of each backend;
/// - `backend_suite!(database scenario, "what": sqlite, postgres);` calls
///   `scenario(&Database)` with a [`TestDatabase`] of its own.
///
/// Either makes `scenario::sqlite` and `scenario::postgres`.
#[macro_export]
macro_rules! backend_suite {
    (database $scenario:ident, $what:literal: $($backend:ident),+ $(,)?) => {
        mod $scenario {
            $(
                #[tokio::test]
                async fn $backend() {
                    let backend = $crate::common::Backend::named(stringify!($backend));
                    let Some(test) = $crate::common::TestDatabase::fresh(backend, $what).await
                    else {
                        return;
                    };
                    super::$scenario(&test.database).await;
                    test.remove().await;
                }
            )+
        }
    };
    ($scenario:ident, $what:literal: $($backend:ident),+ $(,)?) => {
        mod $scenario {
            $(
                #[tokio::test]
                async fn $backend() {
                    let backend = $crate::common::Backend::named(stringify!($backend));
                    let Some(flags) = backend.flags($what).await else {
                        return;
                    };
                    super::$scenario(&flags.as_args()).await;
                    flags.remove().await;
                }
            )+
        }
    };
}

/// A loopback port nothing listens on yet (free when asked; a test that
/// binds it later can lose a race only to another process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    for service in trellis_cli::ServiceName::ALL {
        argv.push(format!("--{}-addr", service.as_str()));
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
    verifier_with_leeway(key, 30).await
}

/// [`verifier_for`] with another clock-skew leeway (0: a token ends at its `exp`).
pub async fn verifier_with_leeway(key: &SigningKey, leeway_secs: u64) -> Arc<TokenVerifier> {
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
            leeway_secs,
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

/// Signs up a new organization named after `name` (unique email and
/// organization name), its admin with password `Correct-Horse-9`.
pub async fn sign_up(
    auth: &mut trellis::auth::v1::auth_service_client::AuthServiceClient<Channel>,
    name: &str,
) -> trellis::auth::v1::SignUpResponse {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    auth.sign_up(trellis::auth::v1::SignUpRequest {
        email: format!("{name}.{unique}@example.com"),
        password: "Correct-Horse-9".into(),
        name: name.into(),
        organization_name: format!("{name} {unique}"),
    })
    .await
    .unwrap()
    .into_inner()
}

/// A new organization's admin with a WORK session whose cart holds
/// `quantity` of a product made for it: what an order is placed from.
/// Returns the access token and the session id.
pub async fn buyer_with_cart(
    auth: Channel,
    sessions: Channel,
    cart: Channel,
    name: &str,
    quantity: i32,
) -> (String, String) {
    use trellis::cart::v1 as pb;
    let token = sign_up(
        &mut trellis::auth::v1::auth_service_client::AuthServiceClient::new(auth),
        name,
    )
    .await
    .access_token;
    let session_id =
        trellis::session::v1::session_service_client::SessionServiceClient::new(sessions)
            .create_session(authed(
                trellis::session::v1::CreateSessionRequest::default(),
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap()
            .session_id;
    let product_id = pb::catalog_service_client::CatalogServiceClient::new(cart.clone())
        .create_product(authed(
            pb::CreateProductRequest {
                sku: "TACO".into(),
                name: "taco".into(),
                category: "food".into(),
                price: Some(trellis::common::v1::Money {
                    amount_minor: 350,
                    currency: "USD".into(),
                }),
                stock: Some(10),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
        .product_id;
    pb::cart_service_client::CartServiceClient::new(cart)
        .add_item(authed(
            pb::AddItemRequest {
                session_id: session_id.clone(),
                product_id,
                quantity,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    (token, session_id)
}

/// A pickup order of the session's cart, for Ana.
pub fn pickup_order(
    session_id: &str,
    idempotency_key: &str,
) -> trellis::order::v1::PlaceOrderRequest {
    use trellis::order::v1 as pb;
    pb::PlaceOrderRequest {
        session_id: session_id.to_owned(),
        customer: Some(pb::Customer {
            name: "Ana".into(),
            phone: "+1 555 0100".into(),
            email: String::new(),
        }),
        delivery: Some(pb::Delivery {
            r#type: pb::DeliveryType::Pickup as i32,
            address: String::new(),
            requested_for: None,
        }),
        idempotency_key: idempotency_key.to_owned(),
    }
}
