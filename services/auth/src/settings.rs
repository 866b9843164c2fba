//! What an operator tunes (Auth's flags, token lifetimes) and what a plan
//! grants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use trellis_runtime::{ConfigError, JwtArgs, parse_duration};

use crate::store::Plan;
use crate::throttle::PublicRpcLimits;

/// Auth's flags of `trellis serve`/`up`.
#[derive(clap::Args, Clone, Debug)]
pub struct AuthArgs {
    /// Listen address of the Auth server (port 0 = any free port).
    #[arg(long, env = "TRELLIS_AUTH_ADDR", default_value = "127.0.0.1:50051")]
    pub auth_addr: SocketAddr,
    /// Where the other servers reach Auth (the JWKS, session checks, service
    /// tokens); unset = this process's own Auth when it runs one, else
    /// --auth-addr (`http://127.0.0.1:50051`).
    #[arg(long, env = "TRELLIS_AUTH_URL")]
    pub auth_url: Option<String>,
    /// Auth's signing keys (a mounted Secret); unset = `<data-dir>/keys`,
    /// generated on first start.
    #[arg(long, env = "TRELLIS_SIGNING_KEYS_DIR")]
    pub signing_keys_dir: Option<PathBuf>,
    /// Lifetime of access tokens issued by Auth.
    #[arg(long, env = "TRELLIS_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,
    /// A refresh token is refused this long after it was issued (each
    /// refresh issues a new one); its login session usually ends sooner
    /// (--session-idle-ttl, --session-absolute-ttl).
    #[arg(long, env = "TRELLIS_REFRESH_TOKEN_TTL", default_value = "720h", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,
    /// Lifetime of the tokens service accounts get from IssueServiceToken;
    /// clients renew them before they expire.
    #[arg(long, env = "TRELLIS_SERVICE_TOKEN_TTL", default_value = "10m", value_parser = parse_duration)]
    pub service_token_ttl: Duration,
    #[command(flatten)]
    pub public_rpc_limits: PublicRpcLimits,
}

impl AuthArgs {
    pub fn validate(&self, jwt: &JwtArgs) -> Result<(), ConfigError> {
        for (name, ttl) in [
            ("access-token-ttl", self.access_token_ttl),
            ("service-token-ttl", self.service_token_ttl),
        ] {
            if ttl > jwt.jwt_max_lifetime {
                return Err(ConfigError::Invalid(format!(
                    "{name} ({}s) must not exceed jwt-max-lifetime ({}s): every server would refuse Auth's tokens",
                    ttl.as_secs(),
                    jwt.jwt_max_lifetime.as_secs()
                )));
            }
            if ttl < Duration::from_secs(5) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least 5s, got {}ms",
                    ttl.as_millis()
                )));
            }
        }
        Ok(())
    }

    pub fn settings(&self, jwt: &JwtArgs) -> AuthSettings {
        AuthSettings {
            issuer: jwt.jwt_issuer.clone(),
            audience: jwt.jwt_audience.clone(),
            access_token_ttl: self.access_token_ttl,
            refresh_token_ttl: self.refresh_token_ttl,
            service_token_ttl: self.service_token_ttl,
        }
    }
}

/// Token lifetimes.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    /// A refresh token is refused this long after it was issued; its session
    /// usually ends sooner.
    pub refresh_token_ttl: Duration,
    /// Lifetime of a service account's token (`IssueServiceToken`).
    pub service_token_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuer: "trellis".into(),
            audience: "trellis".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            service_token_ttl: Duration::from_secs(10 * 60),
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
