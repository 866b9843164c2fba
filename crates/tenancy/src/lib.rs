//! Who is calling, and on whose behalf.
//!
//! Server side: [`RequestContextLayer`] captures what must travel with a call
//! (request id, trace context, deadline, credentials) and [`AuthLayer`]
//! verifies the bearer JWT, checks the caller's kind against what the
//! contract declares for the method, and puts a [`Principal`] (for users, a
//! [`TenantContext`]) in the request extensions; [`StreamLayer`] keeps
//! server streams to the same rules for as long as they are open. Client side: [`PropagateLayer`] forwards that context on every
//! service-to-service call.
#![forbid(unsafe_code)]

mod claims;
mod client;
mod client_address;
mod context;
mod jwks;
mod server;
mod service_token;
mod session_guard;
mod signing;
mod streams;
mod verifier;

pub use claims::{
    ACCESS_TOKEN_TYP, AccessClaims, Principal, Role, SERVICE_SCOPE, ServiceClaims, ServiceIdentity,
    ServiceKind, TenantContext, UnknownRole, WORKER_SCOPE,
};
pub use client::{DEFAULT_OUTBOUND_TIMEOUT, Propagate, PropagateLayer, set_current_traceparent};
pub use client_address::{
    Cidr, FORWARDED_FOR_HEADER, TrustedProxies, rate_limit_block, rate_limit_key,
};
pub use context::{
    CallContext, MAX_USER_AGENT_BYTES, REQUEST_ID_HEADER, RequestContext, RequestContextLayer,
    bounded_user_agent,
};
pub use jwks::{AuthServiceJwks, BoxFuture, JwksCache, JwksError, JwksSource, StaticJwks};
pub use server::{
    Accepts, AuthLayer, Authenticate, LogBudget, MethodCallers, ORG_HINT_HEADER, truncated,
};
pub use service_token::{AsService, AsServiceLayer, ServiceCredentials, ServiceTokens};
pub use session_guard::{AuthSessionCheck, SessionCheck, SessionGuard, SessionState};
pub use signing::{KeyError, SigningKey};
pub use streams::{
    EndedByRules, RulesFuture, StreamBody, StreamLayer, StreamLimits, StreamRules, StreamWatch,
};
pub use verifier::{AuthError, MAX_LEEWAY_SECS, MAX_TOKEN_BYTES, TokenVerifier, VerifierConfig};
