//! Session server: `trellis.session.v1.SessionService`.
//!
//! Until the Session issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use trellis_runtime::{ServerLimits, ServiceSet};

use trellis::session::v1::session_service_server::{SessionService, SessionServiceServer};

#[derive(Clone, Debug, Default)]
pub struct SessionApi;

#[tonic::async_trait]
impl SessionService for SessionApi {}

pub fn service_set(limits: &ServerLimits) -> ServiceSet {
    ServiceSet::new("session").add_service(
        SessionServiceServer::new(SessionApi).max_decoding_message_size(limits.max_message_bytes),
    )
}

/// This service's tables; they arrive with the service's own issue.
pub const MIGRATIONS: trellis_store::ServiceMigrations = trellis_store::ServiceMigrations {
    service: "session",
    sqlite: &[],
    postgres: &[],
};
