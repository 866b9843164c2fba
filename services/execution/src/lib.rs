//! Execution server: `trellis.execution.v1.ExecutionService` and
//! `WorkerService`.
//!
//! Until the Execution issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use trellis_runtime::{ServerLimits, ServiceSet};

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

pub fn service_set(limits: &ServerLimits) -> ServiceSet {
    ServiceSet::new("execution")
        .add_service(
            ExecutionServiceServer::new(ExecutionApi)
                .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi).max_decoding_message_size(limits.max_message_bytes),
        )
}

/// This service's tables; they arrive with the service's own issue.
pub const MIGRATIONS: trellis_store::ServiceMigrations = trellis_store::ServiceMigrations {
    service: "execution",
    sqlite: &[],
    postgres: &[],
};
