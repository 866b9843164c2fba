//! Who is calling, and the structured `audit` events of authentication
//! attempts and admin actions. Never a password or a token.

use std::net::IpAddr;

use tonic::Request;
use trellis_tenancy::{CallContext, LogBudget};

/// Who is calling, as the audit log and the session record see it.
pub struct Caller {
    pub user_agent: String,
    /// The client's address: the peer, or what a trusted proxy forwarded.
    pub address: Option<IpAddr>,
    pub request_id: String,
}

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Caller {
        let context = CallContext::from_request(request);
        Caller {
            user_agent: CallContext::user_agent_of(request),
            address: context.client_address(),
            request_id: context.request_id().to_owned(),
        }
    }

    /// For audit lines and the session record.
    pub fn address_text(&self) -> String {
        self.address.map(|a| a.to_string()).unwrap_or_default()
    }
}

/// One event per authentication attempt.
pub fn audit(event: &str, caller: &Caller, org: &str, user: &str, result: &str) {
    tracing::info!(
        target: "audit",
        event,
        org,
        user,
        result,
        client_address = %caller.address_text(),
        request_id = %caller.request_id,
    );
}

/// One event per admin action (and invitation acceptance).
pub fn audit_admin(
    event: &str,
    caller: &Caller,
    org: &str,
    actor: &str,
    target: &str,
    result: &str,
) {
    tracing::info!(
        target: "audit",
        event,
        org,
        user = actor,
        target_id = target,
        result,
        client_address = %caller.address_text(),
        request_id = %caller.request_id,
    );
}

/// Throttled attempts are refused before any credential is looked at; a
/// flood of them is summed up rather than written line by line.
static THROTTLED_AUDIT: LogBudget = LogBudget::new(10);

/// The event of a call turned away by a limit.
pub fn audit_throttled(event: &str, caller: &Caller) {
    if let Some(suppressed) = THROTTLED_AUDIT.admit() {
        tracing::info!(
            target: "audit",
            event,
            result = "throttled",
            suppressed,
            client_address = %caller.address_text(),
            request_id = %caller.request_id,
        );
    }
}
