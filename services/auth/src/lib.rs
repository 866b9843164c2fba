//! Auth server: `trellis.auth.v1.AuthService` and `OrganizationService`.
//!
//! Until the Auth issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use trellis_runtime::{ServerLimits, ServiceSet};

use trellis::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use trellis::auth::v1::organization_service_server::{
    OrganizationService, OrganizationServiceServer,
};

pub const DEFAULT_PORT: u16 = 50051;

/// RPCs callable without a token (`API.md`).
pub const PUBLIC_METHODS: [&str; 5] = [
    "/trellis.auth.v1.AuthService/SignUp",
    "/trellis.auth.v1.AuthService/Login",
    "/trellis.auth.v1.AuthService/Refresh",
    "/trellis.auth.v1.AuthService/GetJwks",
    "/trellis.auth.v1.OrganizationService/AcceptInvitation",
];

#[derive(Clone, Debug, Default)]
pub struct AuthApi;

#[tonic::async_trait]
impl AuthService for AuthApi {}

#[derive(Clone, Debug, Default)]
pub struct OrganizationApi;

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {}

pub fn service_set(limits: &ServerLimits) -> ServiceSet {
    let set = ServiceSet::new("auth")
        .add_service(
            AuthServiceServer::new(AuthApi).max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            OrganizationServiceServer::new(OrganizationApi)
                .max_decoding_message_size(limits.max_message_bytes),
        );
    PUBLIC_METHODS
        .iter()
        .fold(set, |set, method| set.public_method(method))
}

/// This service's tables; they arrive with the service's own issue.
pub const MIGRATIONS: trellis_store::ServiceMigrations = trellis_store::ServiceMigrations {
    service: "auth",
    sqlite: &[],
    postgres: &[],
};
