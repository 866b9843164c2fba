//! Order server: `trellis.order.v1.OrderService`.
//!
//! Until the Order issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use trellis_runtime::{ServerLimits, ServiceSet};

use trellis::order::v1::order_service_server::{OrderService, OrderServiceServer};

#[derive(Clone, Debug, Default)]
pub struct OrderApi;

#[tonic::async_trait]
impl OrderService for OrderApi {}

pub fn service_set(limits: &ServerLimits) -> ServiceSet {
    ServiceSet::new("order").add_service(
        OrderServiceServer::new(OrderApi).max_decoding_message_size(limits.max_message_bytes),
    )
}

/// This service's tables; they arrive with the service's own issue.
pub const MIGRATIONS: trellis_store::ServiceMigrations = trellis_store::ServiceMigrations {
    service: "order",
    sqlite: &[],
    postgres: &[],
};
