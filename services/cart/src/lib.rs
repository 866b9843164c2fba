//! Cart server: `trellis.cart.v1.CatalogService` and `CartService`.
//!
//! Until the Cart issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use trellis_runtime::{Server, ServerContext, ServiceSet, SetupError};
use trellis_store::ServiceMigrations;

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

/// Cart's flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug)]
pub struct CartArgs {
    /// Listen address of the Cart server (port 0 = any free port).
    #[arg(long, env = "TRELLIS_CART_ADDR", default_value = "127.0.0.1:50053")]
    pub cart_addr: SocketAddr,
    /// Where the other servers reach the Cart server; unset = this
    /// process's own when it runs one, else --cart-addr.
    #[arg(long, env = "TRELLIS_CART_URL")]
    pub cart_url: Option<String>,
}

/// The Cart server as `trellis serve cart` starts it.
pub struct CartServer;

impl Server for CartServer {
    const NAME: &'static str = "cart";
    const MIGRATIONS: ServiceMigrations = MIGRATIONS;
    type Args = CartArgs;

    fn listen_address(args: &CartArgs) -> SocketAddr {
        args.cart_addr
    }

    fn upstream_url(args: &CartArgs) -> Option<&str> {
        args.cart_url.as_deref()
    }

    async fn create(_args: &CartArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let max_message_bytes = context.limits.max_message_bytes;
        Ok(ServiceSet::new(Self::NAME)
            .add_service(
                CatalogServiceServer::new(CatalogApi).max_decoding_message_size(max_message_bytes),
            )
            .add_service(
                CartServiceServer::new(CartApi).max_decoding_message_size(max_message_bytes),
            ))
    }
}

/// This service's tables; they arrive with the service's own issue.
pub const MIGRATIONS: ServiceMigrations = ServiceMigrations {
    service: "cart",
    sqlite: &[],
    postgres: &[],
};
