//! Order server: `trellis.order.v1.OrderService`.
//!
//! Laid out as the other services: `grpc`, `api` (handlers and the watch
//! stream), `error`, [`store`] (orders, numbers, idempotency claims, the
//! outbox), `relay` (the outbox relay, the reconciler and the sweep of
//! abandoned placements, acting as the Order service) and `fulfillment`
//! (the built-in worker, acting as a worker account). The Cart server is
//! called on the caller's behalf (the cart) and as this service (stock);
//! the Execution server as this service (fulfillment executions) and as a
//! worker.
#![forbid(unsafe_code)]

mod api;
mod error;
mod fulfillment;
mod grpc;
mod relay;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Notify;
use trellis::cart::v1::cart_service_client::CartServiceClient;
use trellis::cart::v1::catalog_service_client::CatalogServiceClient;
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
use trellis::execution::v1::worker_service_client::WorkerServiceClient;
use trellis::order::v1::order_service_server::OrderServiceServer;
use trellis_runtime::{ConfigError, JwtArgs, Server, ServerContext, ServiceSet, SetupError};
use trellis_store::ServiceMigrations;

pub use error::OrderServiceError;
pub use relay::FULFILLMENT_QUEUE;
pub use store::MIGRATIONS;

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
    /// Concurrent lease loops of the built-in fulfillment worker (each
    /// settles up to 16 orders at a time); 0 leaves the
    /// `trellis.order-fulfillment` queue to external workers.
    #[arg(long, env = "TRELLIS_FULFILLMENT_WORKERS", default_value_t = 2)]
    pub fulfillment_workers: usize,
}

/// The Order server as `trellis serve order` starts it.
pub struct OrderServer;

fn needs(what: &str) -> SetupError {
    ConfigError::Invalid(what.to_owned()).into()
}

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

    fn validate(args: &OrderArgs, _jwt: &JwtArgs) -> Result<(), ConfigError> {
        if args.fulfillment_workers > 64 {
            return Err(ConfigError::Invalid(
                "fulfillment-workers must be at most 64".into(),
            ));
        }
        Ok(())
    }

    async fn create(args: &OrderArgs, context: ServerContext) -> Result<ServiceSet, SetupError> {
        let max_message_bytes = context.limits.max_message_bytes;
        let upstreams = &context.upstreams;
        let carts = upstreams
            .for_caller("cart")
            .ok_or_else(|| needs("the Order server needs the Cart server's address"))?;
        let as_service = |server| {
            upstreams.as_service(server).ok_or_else(|| {
                needs(
                    "the Order server reserves stock and enqueues fulfillment as a service: \
                     set --service-client-id and --service-client-secret",
                )
            })
        };
        let orders = store::Orders::new(context.database.clone(), context.fanout.clone());
        let work_ready = Arc::new(Notify::new());
        let relay = Arc::new(relay::Relay {
            orders: orders.clone(),
            executions: ExecutionServiceClient::new(as_service("execution")?),
            catalog: CatalogServiceClient::new(as_service("cart")?),
            outbox_ready: Notify::new(),
            work_ready: work_ready.clone(),
        });
        let api = Arc::new(api::OrderApi {
            orders: orders.clone(),
            carts: CartServiceClient::new(carts),
            relay: relay.clone(),
        });
        let mut set = ServiceSet::new(Self::NAME)
            .add_service(
                OrderServiceServer::new(grpc::GrpcAdapter(api))
                    .max_decoding_message_size(max_message_bytes),
            )
            .with_background_task("order-outbox-relay", {
                let relay = relay.clone();
                move |shutdown| relay::run(relay, shutdown)
            });
        if args.fulfillment_workers > 0 {
            let workers = upstreams.as_worker("execution").ok_or_else(|| {
                needs(
                    "the Order server's fulfillment worker needs a worker account: set \
                     --fulfillment-client-id and --fulfillment-client-secret, or \
                     --fulfillment-workers 0 to leave the trellis.order-fulfillment queue to \
                     external workers",
                )
            })?;
            let worker = Arc::new(fulfillment::Fulfillment {
                orders,
                workers: WorkerServiceClient::new(workers),
                work_ready,
                outbox_ready: Arc::new(move || relay.outbox_ready.notify_one()),
            });
            for _ in 0..args.fulfillment_workers {
                let worker = worker.clone();
                set = set.with_background_task("order-fulfillment", move |shutdown| {
                    fulfillment::run(worker, shutdown)
                });
            }
        }
        Ok(set)
    }
}
