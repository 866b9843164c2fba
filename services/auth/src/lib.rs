//! Auth server: `trellis.auth.v1.AuthService` and `OrganizationService`:
//! sign-up, login with brute-force protection, refresh-token rotation with
//! reuse detection, logout, signing keys, members and invitations.
//!
//! How the crate is laid out (the README's layout section says which parts
//! every service has):
//!
//! - `grpc`: the tonic trait impls, thin adapters over `api`;
//! - `api`: the handlers, inherent methods returning `error::Result`;
//! - `error`: the one error enum, and its mapping to statuses;
//! - `validate`, `convert`, `audit`, `settings`: request bounds,
//!   row-to-message conversion, audit events, settings and plans;
//! - `store`: Auth's tables;
//! - Auth's own: [`sessions`] (the login-session seam), `tokens` (opaque
//!   tokens), [`keys`], [`password`] (argon2 off the async workers),
//!   [`throttle`] (brute-force and per-address limits).
#![forbid(unsafe_code)]

mod api;
mod audit;
mod convert;
mod error;
mod grpc;
pub mod keys;
pub mod password;
pub mod service_accounts;
pub mod sessions;
mod settings;
mod store;
pub mod throttle;
mod tokens;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;

use trellis::auth::v1::auth_service_server::AuthServiceServer;
use trellis::auth::v1::organization_service_server::OrganizationServiceServer;
use trellis_runtime::{
    ConfigError, JwtArgs, Server, ServerContext, ServerLimits, ServiceSet, SetupError,
};
use trellis_store::{Database, ServiceMigrations};

pub use api::AuthApi;
pub use error::AuthServiceError;
pub use keys::{KeyStore, KeyStoreError, Rotation, replace_compromised_signer, rotate};
pub use password::{HashPriority, Passwords};
pub use sessions::{
    LoginSessions, LoginSessionsError, NewLoginSession, RemoteLoginSessions, SessionsResult,
};
pub use settings::{AuthArgs, AuthSettings};
pub use store::MIGRATIONS;
pub use store::{
    LegacyLoginSession, drop_legacy_login_sessions, legacy_login_sessions,
    remove_legacy_login_sessions,
};
pub use throttle::{PublicRpc, PublicRpcLimits, RateLimit, Throttle, ThrottlePolicy};

/// The Auth server as `trellis serve auth` starts it.
pub struct AuthServer;

impl Server for AuthServer {
    const NAME: &'static str = "auth";
    const MIGRATIONS: ServiceMigrations = MIGRATIONS;
    type Args = AuthArgs;
    /// Auth answers session checks: from the Session service for users, from
    /// its own accounts for workers and services.
    const ANSWERS_SESSION_CHECKS: bool = true;

    fn listen_address(args: &AuthArgs) -> SocketAddr {
        args.auth_addr
    }

    fn upstream_url(args: &AuthArgs) -> Option<&str> {
        args.auth_url.as_deref()
    }

    fn validate(args: &AuthArgs, jwt: &JwtArgs) -> Result<(), ConfigError> {
        args.validate(jwt)
    }

    /// Opens the signing keys and starts the hashing threads.
    async fn create(args: &AuthArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let (key_dir, generate) =
            KeyStore::location(&context.data_dir, args.signing_keys_dir.as_deref());
        let keys = KeyStore::open(key_dir, generate).map_err(SetupError::other)?;
        let hashing_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let passwords =
            Passwords::new(hashing_threads).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // Login sessions live in the Session service, called as this service.
        let sessions = context.upstreams.as_service("session").ok_or_else(|| {
            ConfigError::Invalid(
                "Auth keeps login sessions in the Session service and calls it as a service: \
                 set --service-client-id and --service-client-secret"
                    .into(),
            )
        })?;
        let deps = AuthDeps {
            keys: Arc::new(keys),
            sessions: Arc::new(RemoteLoginSessions::new(sessions)),
            database: context.database,
            passwords: Arc::new(passwords),
            throttle: Throttle::new(
                context.counters,
                ThrottlePolicy {
                    public_rpcs: args.public_rpc_limits.clone(),
                    ..ThrottlePolicy::default()
                },
            ),
            settings: args.settings(&context.jwt),
        };
        Ok(service_set(&context.limits, deps))
    }
}

/// What the Auth server needs; tests build it with their own parts.
pub struct AuthDeps {
    pub keys: Arc<KeyStore>,
    pub database: Database,
    /// Where login sessions live (see [`sessions`]).
    pub sessions: Arc<dyn LoginSessions>,
    pub passwords: Arc<Passwords>,
    pub settings: AuthSettings,
    pub throttle: Throttle,
}

/// Both Auth services over one state; which methods are public, the
/// contract says.
pub fn service_set(limits: &ServerLimits, deps: AuthDeps) -> ServiceSet {
    let api = grpc::GrpcAdapter(Arc::new(AuthApi {
        keys: deps.keys,
        service_accounts: store::ServiceAccounts::new(deps.database.clone()),
        store: store::AuthStore::new(deps.database),
        sessions: deps.sessions,
        passwords: deps.passwords,
        settings: deps.settings,
        throttle: deps.throttle,
    }));
    ServiceSet::new(AuthServer::NAME)
        .add_service(
            AuthServiceServer::new(api.clone()).max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            OrganizationServiceServer::new(api).max_decoding_message_size(limits.max_message_bytes),
        )
}
