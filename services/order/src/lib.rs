//! Order server: `trellis.order.v1.OrderService`.
//!
//! Until the Order issue lands every RPC answers UNIMPLEMENTED; health,
//! reflection and the tenancy layer are real.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use trellis_runtime::{Server, ServerContext, ServiceSet, SetupError};
use trellis_store::ServiceMigrations;

use trellis::order::v1::order_service_server::{OrderService, OrderServiceServer};

#[derive(Clone, Debug, Default)]
pub struct OrderApi;

#[tonic::async_trait]
impl OrderService for OrderApi {}

/// Order's flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug)]
pub struct OrderArgs {
    /// Listen address of the Order server (port 0 = any free port).
    #[arg(long, env = "TRELLIS_ORDER_ADDR", default_value = "127.0.0.1:50054")]
    pub order_addr: SocketAddr,
    /// Where the other servers reach the Order server; unset = this
    /// process's own when it runs one, else --order-addr.
    #[arg(long, env = "TRELLIS_ORDER_URL")]
    pub order_url: Option<String>,
}

/// The Order server as `trellis serve order` starts it.
pub struct OrderServer;

impl Server for OrderServer {
    const NAME: &'static str = "order";
    const MIGRATIONS: ServiceMigrations = MIGRATIONS;
    type Args = OrderArgs;

    fn listen_address(args: &OrderArgs) -> SocketAddr {
        args.order_addr
    }

    fn upstream_url(args: &OrderArgs) -> Option<&str> {
        args.order_url.as_deref()
    }

    async fn create(_args: &OrderArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let max_message_bytes = context.limits.max_message_bytes;
        Ok(ServiceSet::new(Self::NAME).add_service(
            OrderServiceServer::new(OrderApi).max_decoding_message_size(max_message_bytes),
        ))
    }
}

/// This service's tables; they arrive with the service's own issue.
pub const MIGRATIONS: ServiceMigrations = ServiceMigrations {
    service: "order",
    sqlite: &[],
    postgres: &[],
};
