//! The built-in fulfillment worker: leases the `trellis.order-fulfillment` queue
//! through `WorkerService` with a worker account, exactly as an external
//! worker would, and settles each order. Confirming is a conditional update
//! (pending to confirmed), so an execution run twice after a lost lease
//! confirms once; a cancelled order's execution ends FAILED. On the last
//! attempt a failure fails the order and gives its stock back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tonic::transport::Channel;
use trellis::execution::v1 as exec;
use trellis::execution::v1::worker_service_client::WorkerServiceClient;
use trellis_runtime::time::now_ms;
use trellis_runtime::{Shutdown, TaskError};
use trellis_tenancy::AsService;
use uuid::Uuid;

use crate::relay::FULFILLMENT_QUEUE;
use crate::store::{OrderState, Orders};

/// Executions one lease call takes.
const LEASE_ITEMS: i32 = 16;
const LEASE_SECONDS: i32 = 30;
/// How often an idle worker asks again when nothing pokes it (orders
/// placed through another replica).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// After a failed lease call.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct Fulfillment {
    pub orders: Orders,
    pub workers: WorkerServiceClient<AsService<Channel>>,
    pub work_ready: Arc<Notify>,
    /// The relay, to hand released stock to at once.
    pub outbox_ready: Arc<dyn Fn() + Send + Sync>,
}

#[derive(serde::Deserialize)]
struct Payload {
    order_id: Uuid,
}

/// How one leased execution ends.
enum Outcome {
    Complete(exec::ExecutionStatus, String),
    Fail { error: String, retryable: bool },
}

impl Fulfillment {
    async fn settle(&self, leased: &exec::LeasedExecution) -> Outcome {
        let Some(execution) = &leased.execution else {
            return Outcome::Fail {
                error: "leased without an execution".into(),
                retryable: false,
            };
        };
        let (Ok(org_id), Ok(payload)) = (
            Uuid::parse_str(&leased.organization_id),
            serde_json::from_slice::<Payload>(&execution.payload),
        ) else {
            return Outcome::Complete(exec::ExecutionStatus::Failed, "not an order".into());
        };
        let last_attempt = execution.attempt >= execution.max_attempts;
        let settled = async {
            let Some(order) = self.orders.get(org_id, payload.order_id).await? else {
                return Ok(Outcome::Complete(
                    exec::ExecutionStatus::Failed,
                    "order not found".into(),
                ));
            };
            let now = now_ms();
            // This execution is the order's, made by the relay's call whose
            // answer may not be recorded yet: record it first, so no reader
            // sees the order settled without its execution.
            if order.execution_id.is_none()
                && let Ok(execution_id) = Uuid::parse_str(&execution.execution_id)
            {
                self.orders
                    .enqueued(org_id, order.id, execution_id, now)
                    .await?;
            }
            Ok::<_, trellis_store::StoreError>(match order.state {
                OrderState::Pending if execution.cancel_requested => {
                    if self
                        .orders
                        .fail(org_id, order.id, "fulfillment cancelled", now)
                        .await?
                        .is_some()
                    {
                        (self.outbox_ready)();
                    }
                    Outcome::Fail {
                        error: "cancel requested".into(),
                        retryable: false,
                    }
                }
                OrderState::Pending | OrderState::Confirmed => {
                    // Confirmed already: an earlier run of this execution
                    // did it and lost its lease before completing.
                    self.orders.confirm(org_id, order.id, now).await?;
                    Outcome::Complete(exec::ExecutionStatus::Passed, String::new())
                }
                OrderState::Cancelled => {
                    Outcome::Complete(exec::ExecutionStatus::Failed, "order cancelled".into())
                }
                OrderState::Failed => Outcome::Complete(
                    exec::ExecutionStatus::Failed,
                    format!("order failed: {}", order.failure_reason),
                ),
            })
        }
        .await;
        match settled {
            Ok(outcome) => outcome,
            Err(error) => {
                if last_attempt {
                    let reason = format!("fulfillment failed: {error}");
                    match self
                        .orders
                        .fail(org_id, payload.order_id, &reason, now_ms())
                        .await
                    {
                        Ok(Some(_)) => (self.outbox_ready)(),
                        Ok(None) => {}
                        // The reconciler settles it once the store is back.
                        Err(error) => tracing::warn!(%error, "failing an order failed"),
                    }
                }
                Outcome::Fail {
                    error: error.to_string(),
                    retryable: !last_attempt,
                }
            }
        }
    }

    async fn process(&self, leased: exec::LeasedExecution) {
        let outcome = self.settle(&leased).await;
        let mut workers = self.workers.clone();
        let lease_id = leased.lease_id.clone();
        let reported = match outcome {
            Outcome::Complete(status, analysis) => workers
                .complete(exec::CompleteRequest {
                    lease_id,
                    status: status as i32,
                    output: Vec::new(),
                    analysis,
                })
                .await
                .map(drop),
            Outcome::Fail { error, retryable } => workers
                .fail(exec::FailRequest {
                    lease_id,
                    error,
                    retryable,
                })
                .await
                .map(drop),
        };
        // The lease expires and the execution is run again: settling is
        // idempotent.
        if let Err(status) = reported {
            tracing::warn!(code = ?status.code(), message = status.message(), "reporting a fulfillment failed");
        }
    }

    async fn lease(&self) -> Result<Vec<exec::LeasedExecution>, tonic::Status> {
        let mut request = tonic::Request::new(exec::LeaseRequest {
            queues: vec![FULFILLMENT_QUEUE.into()],
            max_items: LEASE_ITEMS,
            lease_seconds: LEASE_SECONDS,
        });
        request.set_timeout(Duration::from_secs(5));
        Ok(self
            .workers
            .clone()
            .lease(request)
            .await?
            .into_inner()
            .leases)
    }
}

/// One worker loop, until shutdown.
pub async fn run(worker: Arc<Fulfillment>, mut shutdown: Shutdown) -> Result<(), TaskError> {
    loop {
        // Registered before asking, so a poke during the call is kept.
        let poked = worker.work_ready.notified();
        tokio::pin!(poked);
        poked.as_mut().enable();
        let pause = match worker.lease().await {
            Ok(leases) if leases.is_empty() => IDLE_POLL,
            Ok(leases) => {
                let mut running = tokio::task::JoinSet::new();
                for leased in leases {
                    let worker = worker.clone();
                    running.spawn(async move { worker.process(leased).await });
                }
                while running.join_next().await.is_some() {}
                continue;
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "leasing fulfillment work failed; retrying");
                ERROR_PAUSE
            }
        };
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = &mut poked => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
