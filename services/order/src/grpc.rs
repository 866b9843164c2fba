//! The gRPC face of [`OrderApi`]: unpack (caller, message), call the
//! handler, convert. Errors become statuses in `grpc_result` alone.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis::order::v1 as pb;
use trellis::order::v1::order_service_server::OrderService;
use trellis_runtime::{TaskStream, grpc_result, status_of};
use trellis_tenancy::{CallContext, TenantContext};

use crate::api::{self, OrderApi};
use crate::error::OrderServiceError;

#[derive(Clone)]
pub struct GrpcAdapter(pub Arc<OrderApi>);

/// The user the tenancy layer verified, the call's context (for calls on
/// its behalf) and the message.
fn unpack<T>(request: Request<T>) -> Result<(CallContext, TenantContext, T), Status> {
    let tenant = TenantContext::from_request(&request)
        .cloned()
        .map_err(|_| status_of(OrderServiceError::MissingCaller))?;
    Ok((
        CallContext::from_request(&request),
        tenant,
        request.into_inner(),
    ))
}

#[tonic::async_trait]
impl OrderService for GrpcAdapter {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let (context, tenant, message) = unpack(request)?;
        let placed = self.0.place(&context, &tenant, message).await;
        grpc_result(placed.map(|o| pb::PlaceOrderResponse { order: Some(o) }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        let found = self.0.get(&tenant, &message.order_id).await;
        grpc_result(found.map(|o| pb::GetOrderResponse { order: Some(o) }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        grpc_result(self.0.list(&tenant, message).await)
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let (_, tenant, message) = unpack(request)?;
        let cancelled = self.0.cancel(&tenant, message).await;
        grpc_result(cancelled.map(|o| pb::CancelOrderResponse { order: Some(o) }))
    }

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<TaskStream<pb::WatchOrderResponse>>, Status> {
        let (_, tenant, message) = unpack(request)?;
        grpc_result(api::watch(&self.0.orders, &tenant, message).await)
    }
}
