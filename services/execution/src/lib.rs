//! Execution server: `trellis.execution.v1.ExecutionService` and
//! `WorkerService`.
//!
//! Laid out as the other services: `grpc`, `api` (handlers), `watch` (the
//! live streams), `error`, `limits` (plan limits from Auth) and [`store`]
//! (the durable queue, its events and logs). Background tasks reclaim
//! expired leases and prune events past the retention window.
#![forbid(unsafe_code)]

mod api;
mod error;
mod grpc;
mod limits;
pub mod store;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use trellis::execution::v1::execution_service_server::ExecutionServiceServer;
use trellis::execution::v1::worker_service_server::WorkerServiceServer;
use trellis_runtime::{
    ConfigError, JwtArgs, Server, ServerContext, ServiceSet, SetupError, Shutdown, TaskError,
    parse_duration,
};
use trellis_store::ServiceMigrations;

pub use api::{RETRY_BASE, month_start, retry_in_ms};
pub use error::ExecutionServiceError;
pub use limits::LIMITS_TTL;
pub use store::MIGRATIONS;

/// How often expired leases are looked for (their attempts retried).
const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);
/// Expired leases ended per round.
const RECLAIM_BATCH: i64 = 500;
/// How often events past the retention window are dropped, and how many
/// per statement (so one statement never holds the table long).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 5_000;

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
    /// How long execution events are kept for WatchExecutions'
    /// resume_after; resuming from an older one is OUT_OF_RANGE.
    #[arg(long, env = "TRELLIS_EXECUTION_EVENT_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub execution_event_retention: Duration,
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

    fn validate(args: &ExecutionArgs, _jwt: &JwtArgs) -> Result<(), ConfigError> {
        if args.execution_event_retention < Duration::from_secs(60) {
            return Err(ConfigError::Invalid(
                "execution-event-retention must be at least 1m".into(),
            ));
        }
        Ok(())
    }

    /// Plan limits come from Auth, asked as this service.
    async fn create(
        args: &ExecutionArgs,
        context: ServerContext,
    ) -> Result<ServiceSet, SetupError> {
        let max_message_bytes = context.limits.max_message_bytes;
        let auth = context.upstreams.as_service("auth").ok_or_else(|| {
            ConfigError::Invalid(
                "the Execution server asks Auth for plan limits as a service: \
                 set --service-client-id and --service-client-secret"
                    .into(),
            )
        })?;
        let queue = store::Queue::new(context.database.clone(), context.fanout.clone());
        context.metrics.gauge(
            "trellis_execution_queue_pending",
            "Executions waiting to be leased, all organizations and queues together.",
            format!("server=\"{}\"", Self::NAME),
            Arc::new({
                let queue = queue.clone();
                move || {
                    let queue = queue.clone();
                    Box::pin(async move { queue.pending_total().await.ok().map(|n| n as f64) })
                }
            }),
        );
        let api = grpc::GrpcAdapter(Arc::new(api::ExecutionApi {
            queue: queue.clone(),
            limits: limits::PlanLimits::new(auth),
        }));
        Ok(ServiceSet::new(Self::NAME)
            .add_service(
                ExecutionServiceServer::new(api.clone())
                    .max_decoding_message_size(max_message_bytes),
            )
            .add_service(WorkerServiceServer::new(api).max_decoding_message_size(max_message_bytes))
            .with_background_task("lease-reclaimer", {
                let queue = queue.clone();
                move |shutdown| reclaim(queue, shutdown)
            })
            .with_background_task("event-pruner", {
                let retention = args.execution_event_retention;
                move |shutdown| prune(queue, retention, shutdown)
            }))
    }
}

/// Ends the attempts whose worker stopped heartbeating (retried with
/// backoff while attempts remain), until shutdown. A failed round is logged
/// and tried again.
async fn reclaim(queue: store::Queue, mut shutdown: Shutdown) -> Result<(), TaskError> {
    loop {
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = tokio::time::sleep(RECLAIM_INTERVAL) => {}
        }
        let now = trellis_runtime::time::now_ms();
        match queue
            .reclaim_expired(now, RECLAIM_BATCH, &retry_in_ms)
            .await
        {
            Ok(0) => {}
            Ok(reclaimed) => tracing::info!(reclaimed, "expired leases reclaimed"),
            Err(error) => tracing::warn!(%error, "reclaiming expired leases failed; retrying"),
        }
    }
}

/// Drops events older than `retention`, until shutdown.
async fn prune(
    queue: store::Queue,
    retention: Duration,
    mut shutdown: Shutdown,
) -> Result<(), TaskError> {
    loop {
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
        let before = trellis_runtime::time::now_ms() - trellis_runtime::time::millis(retention);
        loop {
            match queue.prune_events(before, PRUNE_BATCH).await {
                Ok(pruned) if pruned < PRUNE_BATCH as u64 => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "pruning execution events failed; retrying");
                    break;
                }
            }
        }
    }
}
