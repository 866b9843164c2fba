//! What an order still owes other services, carried out as the Order
//! service: the outbox relay creates each order's fulfillment execution
//! (the order id is its idempotency key, so a repeat is harmless) and gives
//! back stock of failed and cancelled orders; the reconciler settles
//! pending orders whose execution ended without a worker saying so (its
//! last lease expired); and reservations of abandoned placements go back.
//! Each keeps working while the other servers are away and catches up when
//! they return.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tonic::transport::Channel;
use trellis::cart::v1::ReleaseStockRequest;
use trellis::cart::v1::catalog_service_client::CatalogServiceClient;
use trellis::execution::v1 as exec;
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
use trellis_runtime::time::now_ms;
use trellis_runtime::{Shutdown, TaskError};
use trellis_tenancy::AsService;
use uuid::Uuid;

use crate::error::{OrderServiceError, Result};
use crate::store::{Chore, Due, OrderRecord, Orders};

/// The queue the built-in fulfillment worker serves.
/// (Queues named `trellis.*` are the platform's: users cannot create in them.)
pub const FULFILLMENT_QUEUE: &str = "trellis.order-fulfillment";
/// A stand-in image: the built-in worker runs no container.
const FULFILLMENT_IMAGE: &str = "trellis/order-fulfillment";
/// Outbox rows per round.
const OUTBOX_BATCH: i64 = 100;
/// A pending order is asked about once its execution has been quiet this
/// long, and again this long after.
const RECONCILE_AFTER: Duration = Duration::from_secs(60);
/// A placement unfinished this long died (calls are bounded far below).
const ABANDONED_AFTER: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long one call to another service may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Relay {
    pub orders: Orders,
    pub executions: ExecutionServiceClient<AsService<Channel>>,
    pub catalog: CatalogServiceClient<AsService<Channel>>,
    /// Pokes the relay (an order was stored) and the local fulfillment
    /// workers (an execution was made).
    pub outbox_ready: Notify,
    pub work_ready: Arc<Notify>,
}

/// Retry in 1 s, doubling, at most a minute.
fn backoff_ms(attempts: i64) -> i64 {
    1000_i64
        .saturating_mul(1 << attempts.clamp(0, 6))
        .min(60_000)
}

impl Relay {
    /// Creates (or finds) the order's fulfillment execution.
    pub async fn enqueue(&self, order: &OrderRecord) -> Result<exec::Execution> {
        let payload = serde_json::json!({ "order_id": order.id.to_string() }).to_string();
        let mut request = tonic::Request::new(exec::EnqueueExecutionRequest {
            organization_id: order.org_id.to_string(),
            created_by: order.user_id.to_string(),
            execution: Some(exec::CreateExecutionRequest {
                queue: FULFILLMENT_QUEUE.into(),
                image: FULFILLMENT_IMAGE.into(),
                payload: payload.into_bytes(),
                max_attempts: 3,
                idempotency_key: order.id.to_string(),
                config: [("order_number".to_string(), order.number.to_string())].into(),
                ..Default::default()
            }),
        });
        request.set_timeout(CALL_TIMEOUT);
        let made = self
            .executions
            .clone()
            .enqueue_execution(request)
            .await
            .map_err(|status| OrderServiceError::upstream("execution", &status))?;
        made.into_inner()
            .execution
            .ok_or_else(|| OrderServiceError::Upstream {
                service: "execution",
                detail: "no execution in the answer".into(),
            })
    }

    /// Makes the execution now and records it; the outbox row stays for
    /// the relay when that fails.
    pub async fn enqueue_and_record(&self, order: &OrderRecord) -> Result<()> {
        let execution = self.enqueue(order).await?;
        let execution_id =
            Uuid::parse_str(&execution.execution_id).map_err(|_| OrderServiceError::Upstream {
                service: "execution",
                detail: "an execution id that is not a UUID".into(),
            })?;
        self.orders
            .enqueued(order.org_id, order.id, execution_id, now_ms())
            .await?;
        self.work_ready.notify_waiters();
        Ok(())
    }

    pub async fn release(&self, org_id: Uuid, order_id: Uuid) -> Result<()> {
        let mut request = tonic::Request::new(ReleaseStockRequest {
            organization_id: org_id.to_string(),
            order_id: order_id.to_string(),
        });
        request.set_timeout(CALL_TIMEOUT);
        self.catalog
            .clone()
            .release_stock(request)
            .await
            .map_err(|status| OrderServiceError::upstream("cart", &status))?;
        Ok(())
    }

    async fn carry_out(&self, due: &Due) -> Result<()> {
        match due.chore {
            Chore::Enqueue => match self.orders.get(due.org_id, due.order_id).await? {
                Some(order) => self.enqueue_and_record(&order).await,
                // Gone (never happens: orders are not deleted): nothing owed.
                None => {
                    self.orders
                        .enqueued(due.org_id, due.order_id, Uuid::nil(), now_ms())
                        .await?;
                    Ok(())
                }
            },
            Chore::Release => {
                self.release(due.org_id, due.order_id).await?;
                self.orders.released(due.order_id).await?;
                Ok(())
            }
        }
    }

    /// One pass over the outbox rows due; true when it was full (more wait).
    async fn outbox_round(&self) -> Result<bool> {
        let due = self.orders.due(now_ms(), OUTBOX_BATCH).await?;
        let mut failures = 0;
        let mut last_error = None;
        for row in &due {
            if let Err(error) = self.carry_out(row).await {
                failures += 1;
                last_error = Some(error.to_string());
                self.orders
                    .retry_later(row, now_ms() + backoff_ms(row.attempts))
                    .await?;
            }
        }
        if let Some(error) = last_error {
            tracing::warn!(failures, %error, "order outbox: retrying later");
        }
        Ok(due.len() as i64 == OUTBOX_BATCH && failures == 0)
    }

    /// Pending orders whose execution went quiet: ask it again (the
    /// idempotency key answers the first one, as it is now) and settle the
    /// order when the execution is final.
    async fn reconcile_round(&self) -> Result<()> {
        let before = now_ms() - trellis_runtime::time::millis(RECONCILE_AFTER);
        for order in self.orders.stale_pending(before, OUTBOX_BATCH).await? {
            let execution = self.enqueue(&order).await?;
            use exec::ExecutionStatus as S;
            let now = now_ms();
            match S::try_from(execution.status).unwrap_or(S::Unspecified) {
                S::Passed => {
                    self.orders.confirm(order.org_id, order.id, now).await?;
                }
                S::Pending | S::Running | S::Unspecified => {
                    self.orders.touch(order.org_id, order.id, now).await?;
                }
                ended => {
                    let reason = format!(
                        "fulfillment ended {}: {}",
                        ended.as_str_name(),
                        execution.error
                    );
                    if self
                        .orders
                        .fail(order.org_id, order.id, &reason, now)
                        .await?
                        .is_some()
                    {
                        self.outbox_ready.notify_one();
                    }
                }
            }
        }
        Ok(())
    }

    /// Placements that died after reserving: give the stock back and the
    /// key up. A reservation made later for that order id is refused.
    async fn abandoned_round(&self) -> Result<()> {
        let before = now_ms() - trellis_runtime::time::millis(ABANDONED_AFTER);
        for (key, order_id) in self.orders.abandoned_claims(before, OUTBOX_BATCH).await? {
            // The key first: a call that took the claim over meanwhile keeps
            // it, and its reservation.
            if self.orders.unclaim(&key).await? {
                self.release(key.org_id, order_id).await?;
            }
        }
        Ok(())
    }
}

/// The relay's background task, until shutdown.
pub async fn run(relay: Arc<Relay>, mut shutdown: Shutdown) -> Result<(), TaskError> {
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        let more = match relay.outbox_round().await {
            Ok(more) => more,
            Err(error) => {
                tracing::warn!(%error, "order outbox round failed; retrying");
                false
            }
        };
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            if let Err(error) = relay.reconcile_round().await {
                tracing::warn!(%error, "reconciling pending orders failed; retrying");
            }
            if let Err(error) = relay.abandoned_round().await {
                tracing::warn!(%error, "releasing abandoned reservations failed; retrying");
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = relay.outbox_ready.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
