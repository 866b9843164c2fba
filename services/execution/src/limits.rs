//! Organizations' plan limits as the queue enforces them, asked of Auth as
//! this service (`OrganizationService.GetPlanLimits`) and remembered for
//! [`LIMITS_TTL`]: a plan change reaches the queue within that long. While
//! Auth cannot answer, the last answer stands; an organization never asked
//! about gets the most conservative limits instead (one run at a time, no
//! new runs) until Auth answers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use trellis::auth::v1::GetPlanLimitsRequest;
use trellis::auth::v1::organization_service_client::OrganizationServiceClient;
use trellis_tenancy::AsService;
use uuid::Uuid;

use crate::error::{ExecutionServiceError, Result};

pub const LIMITS_TTL: Duration = Duration::from_secs(30);
/// Organizations whose limits are remembered at once.
const CAPACITY: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    pub max_concurrent_runs: i64,
    pub max_runs_per_month: i64,
}

pub struct PlanLimits {
    auth: OrganizationServiceClient<AsService<Channel>>,
    known: quick_cache::sync::Cache<Uuid, (RunLimits, Instant)>,
}

impl PlanLimits {
    pub fn new(auth: AsService<Channel>) -> Self {
        PlanLimits {
            auth: OrganizationServiceClient::new(auth),
            known: quick_cache::sync::Cache::new(CAPACITY),
        }
    }

    /// The organization's limits; an error only when Auth has never
    /// answered for it and cannot now.
    pub async fn of(&self, org_id: Uuid) -> Result<RunLimits> {
        let remembered = self.known.get(&org_id);
        if let Some((limits, at)) = remembered
            && at.elapsed() < LIMITS_TTL
        {
            return Ok(limits);
        }
        let mut request = tonic::Request::new(GetPlanLimitsRequest {
            organization_id: org_id.to_string(),
        });
        // Auth slow or away: a lease or create waits this long at most.
        request.set_timeout(std::time::Duration::from_secs(2));
        let asked = self.auth.clone().get_plan_limits(request).await;
        match asked {
            Ok(answer) => {
                let plan = answer.into_inner().limits.unwrap_or_default();
                let limits = RunLimits {
                    max_concurrent_runs: i64::from(plan.max_concurrent_runs),
                    max_runs_per_month: i64::from(plan.max_runs_per_month),
                };
                self.known.insert(org_id, (limits, Instant::now()));
                Ok(limits)
            }
            Err(status) => match remembered {
                Some((limits, _)) => {
                    tracing::warn!(org = %org_id, %status, "plan limits stale: Auth did not answer");
                    Ok(limits)
                }
                None => Err(ExecutionServiceError::LimitsUnavailable(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                ))),
            },
        }
    }

    /// Concurrency limits of `orgs`, for one lease: one run at a time for an
    /// organization Auth cannot answer for.
    pub async fn concurrency_of(&self, orgs: &[Uuid]) -> HashMap<Uuid, i64> {
        let mut limits = HashMap::with_capacity(orgs.len());
        for &org in orgs {
            let limit = match self.of(org).await {
                Ok(run_limits) => run_limits.max_concurrent_runs,
                Err(_) => 1,
            };
            limits.insert(org, limit);
        }
        limits
    }
}
