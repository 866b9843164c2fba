//! What an operator tunes (token lifetimes) and what a plan grants.

use std::time::Duration;

use crate::sessions::SessionLifetimes;
use crate::store::Plan;

/// Token lifetimes.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    /// A refresh token is refused this long after it was issued; its session
    /// usually ends sooner.
    pub refresh_token_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuer: "trellis".into(),
            audience: "trellis".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: SessionLifetimes::default().absolute,
        }
    }
}

/// What an organization's plan allows.
pub struct PlanLimits {
    pub plan: Plan,
    pub max_users: i64,
    pub max_concurrent_runs: i64,
    pub max_runs_per_month: i64,
}

/// Every sign-up starts here.
pub const FREE: PlanLimits = PlanLimits {
    plan: Plan::Free,
    max_users: 3,
    max_concurrent_runs: 1,
    max_runs_per_month: 100,
};
