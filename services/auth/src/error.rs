use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use trellis_store::StoreError;

use crate::password::HashError;
use crate::throttle::PublicRpc;

/// Everything Auth can answer besides success, mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum AuthServiceError {
    #[error("invalid {}", .0.iter().map(|v| v.field.as_str()).collect::<Vec<_>>().join(", "))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    AlreadyExists(&'static str),
    /// Emails are unique across Trellis: sign-up (and accepting an
    /// invitation) says so, which reveals no more than a sign-up attempt.
    #[error("email already registered")]
    EmailTaken,
    /// Wrong email and wrong password alike.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("user is suspended")]
    Suspended,
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(&'static str),
    /// The plan's seat limit (users plus pending invitations).
    #[error("{0}")]
    SeatsExhausted(String),
    /// Lost to concurrent writes; retrying the call can succeed.
    #[error("{0}")]
    Aborted(&'static str),
    /// Too many failed (or in-flight) logins; the caller may retry after the delay.
    #[error("too many login attempts")]
    Throttled(std::time::Duration),
    /// Too many calls of a public RPC from one client address.
    #[error("{}", .0.throttled_message())]
    RateLimited(PublicRpc, std::time::Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("internal: {0}")]
    Internal(String),
}

/// What to suggest when every hashing thread is busy and the queue is full.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn retry_later(message: &str, retry_after: std::time::Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        // Whole seconds, rounded up, so clients never retry early.
        ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(
            retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
        ))),
    )
}

impl From<AuthServiceError> for Status {
    fn from(error: AuthServiceError) -> Status {
        match error {
            AuthServiceError::InvalidArgument(violations) => {
                let message = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            AuthServiceError::AlreadyExists(what) => Status::already_exists(what),
            AuthServiceError::EmailTaken => Status::already_exists("email already registered"),
            AuthServiceError::InvalidCredentials => Status::unauthenticated("invalid credentials"),
            AuthServiceError::Suspended => Status::permission_denied("user is suspended"),
            AuthServiceError::Unauthenticated(why) => Status::unauthenticated(why),
            AuthServiceError::PermissionDenied(why) => Status::permission_denied(why),
            AuthServiceError::NotFound(what) => Status::not_found(what),
            AuthServiceError::FailedPrecondition(why) => Status::failed_precondition(why),
            AuthServiceError::SeatsExhausted(why) => Status::resource_exhausted(why),
            AuthServiceError::Aborted(why) => Status::aborted(why),
            AuthServiceError::Throttled(retry_after) => {
                retry_later("too many login attempts; retry later", retry_after)
            }
            AuthServiceError::RateLimited(rpc, retry_after) => {
                retry_later(rpc.throttled_message(), retry_after)
            }
            AuthServiceError::Hash(HashError::Busy) => {
                retry_later("too many logins in progress; retry later", BUSY_RETRY)
            }
            AuthServiceError::Store(error) => error.into(),
            error @ (AuthServiceError::Hash(HashError::Failed(_))
            | AuthServiceError::Internal(_)) => {
                tracing::error!(%error, "auth internal error");
                Status::internal("internal error")
            }
        }
    }
}
