//! Auth server: `trellis.auth.v1.AuthService` and `OrganizationService`.
//!
//! Signing keys and `GetJwks` are real; the other RPCs answer UNIMPLEMENTED
//! until the rest of the Auth issue lands.
#![forbid(unsafe_code)]

pub mod keys;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use trellis::auth::v1::organization_service_server::{
    OrganizationService, OrganizationServiceServer,
};
use trellis::auth::v1::{GetJwksRequest, GetJwksResponse};
use trellis_runtime::{ServerLimits, ServiceSet};

pub use keys::{KeyStore, KeyStoreError, Rotation, rotate};

pub const DEFAULT_PORT: u16 = 50051;

/// RPCs callable without a token (`API.md`).
pub const PUBLIC_METHODS: [&str; 5] = [
    "/trellis.auth.v1.AuthService/SignUp",
    "/trellis.auth.v1.AuthService/Login",
    "/trellis.auth.v1.AuthService/Refresh",
    "/trellis.auth.v1.AuthService/GetJwks",
    "/trellis.auth.v1.OrganizationService/AcceptInvitation",
];

pub struct AuthApi {
    keys: Arc<KeyStore>,
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn get_jwks(
        &self,
        _: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(GetJwksResponse {
            keys: self.keys.jwks(),
        }))
    }
}

#[derive(Clone, Debug, Default)]
pub struct OrganizationApi;

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {}

pub fn service_set(limits: &ServerLimits, keys: Arc<KeyStore>) -> ServiceSet {
    let set = ServiceSet::new("auth")
        .add_service(
            AuthServiceServer::new(AuthApi { keys })
                .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            OrganizationServiceServer::new(OrganizationApi)
                .max_decoding_message_size(limits.max_message_bytes),
        );
    PUBLIC_METHODS
        .iter()
        .fold(set, |set, method| set.public_method(method))
}

/// This service's tables; they arrive with the rest of the Auth issue.
pub const MIGRATIONS: trellis_store::ServiceMigrations = trellis_store::ServiceMigrations {
    service: "auth",
    sqlite: &[],
    postgres: &[],
};
