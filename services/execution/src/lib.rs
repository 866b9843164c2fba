//! Execution server: `trellis.execution.v1.ExecutionService` and
//! `WorkerService`.
//!
//! The durable queue's store is built ([`store`]); until the rest of the
//! Execution issue lands every RPC answers UNIMPLEMENTED. Health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use trellis_runtime::{Server, ServerContext, ServiceSet, SetupError};
use trellis_store::ServiceMigrations;

use trellis::execution::v1::execution_service_server::{ExecutionService, ExecutionServiceServer};
use trellis::execution::v1::worker_service_server::{WorkerService, WorkerServiceServer};

#[derive(Clone, Debug, Default)]
pub struct ExecutionApi;

#[tonic::async_trait]
impl ExecutionService for ExecutionApi {}

#[derive(Clone, Debug, Default)]
pub struct WorkerApi;

#[tonic::async_trait]
impl WorkerService for WorkerApi {}

/// Execution's flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug)]
pub struct ExecutionArgs {
    /// Listen address of the Execution server (port 0 = any free port).
    #[arg(
        long,
        env = "TRELLIS_EXECUTION_ADDR",
        default_value = "127.0.0.1:50055"
    )]
    pub execution_addr: SocketAddr,
    /// Where the other servers reach the Execution server; unset = this
    /// process's own when it runs one, else --execution-addr.
    #[arg(long, env = "TRELLIS_EXECUTION_URL")]
    pub execution_url: Option<String>,
}

/// The Execution server as `trellis serve execution` starts it.
pub struct ExecutionServer;

impl Server for ExecutionServer {
    const NAME: &'static str = "execution";
    const MIGRATIONS: ServiceMigrations = MIGRATIONS;
    type Args = ExecutionArgs;

    fn listen_address(args: &ExecutionArgs) -> SocketAddr {
        args.execution_addr
    }

    fn upstream_url(args: &ExecutionArgs) -> Option<&str> {
        args.execution_url.as_deref()
    }

    async fn create(
        _args: &ExecutionArgs,
        context: ServerContext,
    ) -> Result<ServiceSet, SetupError> {
        let max_message_bytes = context.limits.max_message_bytes;
        Ok(ServiceSet::new(Self::NAME)
            .add_service(
                ExecutionServiceServer::new(ExecutionApi)
                    .max_decoding_message_size(max_message_bytes),
            )
            .add_service(
                WorkerServiceServer::new(WorkerApi).max_decoding_message_size(max_message_bytes),
            ))
    }
}

pub mod store;

pub use store::MIGRATIONS;
