//! Cart server: `trellis.cart.v1.CatalogService` and `CartService`.
//!
//! Until the Cart issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use trellis_runtime::{ServerLimits, ServiceSet};

use trellis::cart::v1::cart_service_server::{CartService, CartServiceServer};
use trellis::cart::v1::catalog_service_server::{CatalogService, CatalogServiceServer};

#[derive(Clone, Debug, Default)]
pub struct CatalogApi;

#[tonic::async_trait]
impl CatalogService for CatalogApi {}

#[derive(Clone, Debug, Default)]
pub struct CartApi;

#[tonic::async_trait]
impl CartService for CartApi {}

pub fn service_set(limits: &ServerLimits) -> ServiceSet {
    ServiceSet::new("cart")
        .add_service(
            CatalogServiceServer::new(CatalogApi)
                .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            CartServiceServer::new(CartApi).max_decoding_message_size(limits.max_message_bytes),
        )
}

/// This service's tables; they arrive with the service's own issue.
pub const MIGRATIONS: trellis_store::ServiceMigrations = trellis_store::ServiceMigrations {
    service: "cart",
    sqlite: &[],
    postgres: &[],
};
