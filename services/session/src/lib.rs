//! Session server: `trellis.session.v1.SessionService`.
//!
//! Until the Session issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use trellis_runtime::{Server, ServerContext, ServiceSet, SetupError};
use trellis_store::ServiceMigrations;

use trellis::session::v1::login_session_service_server::{
    LoginSessionService, LoginSessionServiceServer,
};
use trellis::session::v1::session_service_server::{SessionService, SessionServiceServer};

#[derive(Clone, Debug, Default)]
pub struct SessionApi;

#[tonic::async_trait]
impl SessionService for SessionApi {}

/// Internal: Auth keeps login sessions here (service tokens only).
#[derive(Clone, Debug, Default)]
pub struct LoginSessionApi;

#[tonic::async_trait]
impl LoginSessionService for LoginSessionApi {}

/// Session's flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug)]
pub struct SessionArgs {
    /// Listen address of the Session server (port 0 = any free port).
    #[arg(long, env = "TRELLIS_SESSION_ADDR", default_value = "127.0.0.1:50052")]
    pub session_addr: SocketAddr,
    /// Where the other servers reach the Session server; unset = this
    /// process's own when it runs one, else --session-addr.
    #[arg(long, env = "TRELLIS_SESSION_URL")]
    pub session_url: Option<String>,
}

/// The Session server as `trellis serve session` starts it.
pub struct SessionServer;

impl Server for SessionServer {
    const NAME: &'static str = "session";
    const MIGRATIONS: ServiceMigrations = MIGRATIONS;
    type Args = SessionArgs;

    fn listen_address(args: &SessionArgs) -> SocketAddr {
        args.session_addr
    }

    fn upstream_url(args: &SessionArgs) -> Option<&str> {
        args.session_url.as_deref()
    }

    async fn create(_args: &SessionArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let max_message_bytes = context.limits.max_message_bytes;
        Ok(ServiceSet::new(Self::NAME)
            .add_service(
                SessionServiceServer::new(SessionApi).max_decoding_message_size(max_message_bytes),
            )
            .add_service(
                LoginSessionServiceServer::new(LoginSessionApi)
                    .max_decoding_message_size(max_message_bytes),
            ))
    }
}

pub mod sessions;
pub mod store;

pub use store::MIGRATIONS;
