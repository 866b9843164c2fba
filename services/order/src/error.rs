//! Everything the Order server can answer besides success, and the one
//! place those answers become status codes.

use tonic::Code;
use tonic_types::{ErrorDetails, FieldViolation};
use trellis_runtime::ServiceError;
use trellis_store::StoreError;
use uuid::Uuid;

pub type Result<T, E = OrderServiceError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum OrderServiceError {
    #[error("{}: {}", .0.field, .0.description)]
    InvalidField(FieldViolation),
    /// Unknown, another organization's, or (for non-admins) another user's.
    #[error("order not found: {0}")]
    NotFound(Uuid),
    #[error("session not found: {0}")]
    SessionNotFound(Uuid),
    #[error("requires role admin or developer")]
    WriteRoleRequired,
    #[error("the cart is empty")]
    EmptyCart,
    #[error("the cart mixes currencies ({0}); place one order per currency")]
    MixedCurrencies(String),
    /// Cart's own words about which product is short.
    #[error("{0}")]
    ShortStock(String),
    #[error("this idempotency_key was used for a different request")]
    KeyReused,
    #[error("an order with this idempotency_key is still being placed; retry")]
    InFlight,
    #[error("order {0} is {1} and can no longer be cancelled")]
    NotPending(Uuid, &'static str),
    #[error("missing bearer token")]
    MissingCaller,
    /// Another service answered in a way that is not the caller's doing
    /// (the detail goes to the log).
    #[error("the {service} service is unavailable, retry later ({detail})")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
    #[error("the {service} service failed: {detail}")]
    Upstream {
        service: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OrderServiceError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        OrderServiceError::InvalidField(FieldViolation::new(field, description))
    }

    /// How another service's refusal reaches our caller: its outages stay
    /// retryable, anything else is our fault (logged, INTERNAL).
    pub fn upstream(service: &'static str, status: &tonic::Status) -> Self {
        let detail = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                OrderServiceError::Unavailable { service, detail }
            }
            _ => OrderServiceError::Upstream { service, detail },
        }
    }
}

impl ServiceError for OrderServiceError {
    const DOMAIN: &'static str = "order.trellis";

    fn code(&self) -> Code {
        use OrderServiceError::*;
        match self {
            InvalidField(_) => Code::InvalidArgument,
            NotFound(_) | SessionNotFound(_) => Code::NotFound,
            WriteRoleRequired => Code::PermissionDenied,
            EmptyCart | MixedCurrencies(_) | ShortStock(_) | KeyReused | NotPending(..) => {
                Code::FailedPrecondition
            }
            InFlight => Code::Aborted,
            MissingCaller => Code::Unauthenticated,
            Unavailable { .. } => Code::Unavailable,
            Upstream { .. } => Code::Internal,
            Store(error) => error.code(),
        }
    }

    fn reason(&self) -> &'static str {
        use OrderServiceError::*;
        match self {
            InvalidField(_) => "INVALID_FIELDS",
            NotFound(_) => "ORDER_NOT_FOUND",
            SessionNotFound(_) => "SESSION_NOT_FOUND",
            WriteRoleRequired => "WRITE_ROLE_REQUIRED",
            EmptyCart => "EMPTY_CART",
            MixedCurrencies(_) => "MIXED_CURRENCIES",
            ShortStock(_) => "SHORT_STOCK",
            KeyReused => "IDEMPOTENCY_KEY_REUSED",
            InFlight => "ORDER_IN_FLIGHT",
            NotPending(..) => "ORDER_NOT_PENDING",
            MissingCaller => "MISSING_TOKEN",
            Unavailable { .. } => "UPSTREAM_UNAVAILABLE",
            Upstream { .. } => "UPSTREAM_FAILED",
            Store(error) => error.reason(),
        }
    }

    fn message(&self) -> String {
        match self {
            OrderServiceError::Store(error) => error.message(),
            // The detail (addresses, another service's words) is for the log.
            OrderServiceError::Unavailable { service, .. } => {
                format!("the {service} service is unavailable, retry later")
            }
            other => other.to_string(),
        }
    }

    fn details(&self) -> ErrorDetails {
        match self {
            OrderServiceError::InvalidField(violation) => {
                ErrorDetails::with_bad_request(vec![violation.clone()])
            }
            _ => ErrorDetails::new(),
        }
    }
}
