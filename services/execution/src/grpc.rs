//! The gRPC face of [`ExecutionApi`]: unpack, call the handler, convert.
//! Errors become statuses in `grpc_result` alone.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis::execution::v1 as pb;
use trellis::execution::v1::execution_service_server::ExecutionService;
use trellis::execution::v1::worker_service_server::WorkerService;
use trellis_runtime::{TaskStream, grpc_result, status_of};
use trellis_tenancy::TenantContext;

use crate::api::ExecutionApi;
use crate::error::ExecutionServiceError;
use crate::watch;

#[derive(Clone)]
pub struct GrpcAdapter(pub Arc<ExecutionApi>);

fn unpack<T>(request: Request<T>) -> Result<(TenantContext, T), Status> {
    let tenant = TenantContext::from_request(&request)
        .cloned()
        .map_err(|_| status_of(ExecutionServiceError::MissingCaller))?;
    Ok((tenant, request.into_inner()))
}

#[tonic::async_trait]
impl ExecutionService for GrpcAdapter {
    async fn create_execution(
        &self,
        request: Request<pb::CreateExecutionRequest>,
    ) -> Result<Response<pb::CreateExecutionResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        let created = self.0.create(&tenant, message).await;
        grpc_result(created.map(|e| pb::CreateExecutionResponse { execution: Some(e) }))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::GetExecutionResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        let found = self.0.get(&tenant, &message.execution_id).await;
        grpc_result(found.map(|e| pb::GetExecutionResponse { execution: Some(e) }))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        grpc_result(self.0.list(&tenant, message).await)
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        let cancelled = self.0.cancel(&tenant, &message.execution_id).await;
        grpc_result(cancelled.map(|e| pb::CancelExecutionResponse { execution: Some(e) }))
    }

    async fn delete_execution(
        &self,
        request: Request<pb::DeleteExecutionRequest>,
    ) -> Result<Response<pb::DeleteExecutionResponse>, Status> {
        let (tenant, message) = unpack(request)?;
        let deleted = self.0.delete(&tenant, &message.execution_id).await;
        grpc_result(deleted.map(|()| pb::DeleteExecutionResponse {}))
    }

    /// Internal: the tenancy layer admits service tokens only.
    async fn enqueue_execution(
        &self,
        request: Request<pb::EnqueueExecutionRequest>,
    ) -> Result<Response<pb::EnqueueExecutionResponse>, Status> {
        let made = self.0.enqueue_for(request.into_inner()).await;
        grpc_result(made.map(|e| pb::EnqueueExecutionResponse { execution: Some(e) }))
    }

    async fn watch_executions(
        &self,
        request: Request<pb::WatchExecutionsRequest>,
    ) -> Result<Response<TaskStream<pb::WatchExecutionsResponse>>, Status> {
        let (tenant, message) = unpack(request)?;
        grpc_result(watch::watch_executions(&self.0.queue, &tenant, message).await)
    }

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<TaskStream<pb::StreamLogsResponse>>, Status> {
        let (tenant, message) = unpack(request)?;
        grpc_result(watch::stream_logs(&self.0.queue, &tenant, message).await)
    }
}

/// Workers: the tenancy layer admits worker tokens only.
#[tonic::async_trait]
impl WorkerService for GrpcAdapter {
    async fn lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let leased = self.0.lease(request.into_inner()).await;
        grpc_result(leased.map(|leases| pb::LeaseResponse { leases }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        grpc_result(self.0.heartbeat(request.into_inner()).await)
    }

    async fn append_logs(
        &self,
        request: Request<pb::AppendLogsRequest>,
    ) -> Result<Response<pb::AppendLogsResponse>, Status> {
        let appended = self.0.append_logs(request.into_inner()).await;
        grpc_result(appended.map(|last_sequence| pb::AppendLogsResponse { last_sequence }))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let done = self.0.complete(request.into_inner()).await;
        grpc_result(done.map(|e| pb::CompleteResponse { execution: Some(e) }))
    }

    async fn fail(
        &self,
        request: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let failed = self.0.fail(request.into_inner()).await;
        grpc_result(failed.map(|e| pb::FailResponse { execution: Some(e) }))
    }
}
