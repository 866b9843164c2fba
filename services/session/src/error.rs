//! Everything the Session service can answer besides success, and the one
//! place those answers become status codes ([`ServiceError`]).

use tonic::Code;
use tonic_types::{ErrorDetails, FieldViolation};
use trellis_runtime::ServiceError;
use trellis_store::StoreError;

use crate::api::{MAX_LOGIN_SESSIONS_PER_USER, MAX_WORK_SESSIONS_PER_USER};

pub type Result<T, E = SessionServiceError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum SessionServiceError {
    /// A request field out of bounds or malformed.
    #[error("{}: {}", .0.field, .0.description)]
    InvalidField(FieldViolation),
    /// Expired, ended, another user's or another organization's: the same
    /// answer, so ids reveal nothing.
    #[error("session not found: {0}")]
    NotFound(uuid::Uuid),
    #[error("requires role admin or developer")]
    WriteRoleRequired,
    #[error("requires role admin to list another user's sessions")]
    AdminRequired,
    #[error("at most {MAX_WORK_SESSIONS_PER_USER} live work sessions per user; delete one first")]
    TooManyWorkSessions,
    /// A user RPC reached without the tenancy layer's caller (wiring bug).
    #[error("missing bearer token")]
    MissingCaller,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionServiceError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        SessionServiceError::InvalidField(FieldViolation::new(field, description))
    }
}

// Keeps the two caps' relation visible where the codes are decided.
const _: () = assert!(MAX_LOGIN_SESSIONS_PER_USER + MAX_WORK_SESSIONS_PER_USER <= 100);

impl ServiceError for SessionServiceError {
    const DOMAIN: &'static str = "session.trellis";

    fn code(&self) -> Code {
        use SessionServiceError::*;
        match self {
            InvalidField(_) => Code::InvalidArgument,
            NotFound(_) => Code::NotFound,
            WriteRoleRequired | AdminRequired => Code::PermissionDenied,
            TooManyWorkSessions => Code::ResourceExhausted,
            MissingCaller => Code::Unauthenticated,
            Store(error) => error.code(),
        }
    }

    fn reason(&self) -> &'static str {
        use SessionServiceError::*;
        match self {
            InvalidField(_) => "INVALID_FIELDS",
            NotFound(_) => "SESSION_NOT_FOUND",
            WriteRoleRequired => "WRITE_ROLE_REQUIRED",
            AdminRequired => "ADMIN_REQUIRED",
            TooManyWorkSessions => "TOO_MANY_SESSIONS",
            MissingCaller => "MISSING_TOKEN",
            Store(error) => error.reason(),
        }
    }

    fn message(&self) -> String {
        match self {
            SessionServiceError::Store(error) => error.message(),
            other => other.to_string(),
        }
    }

    fn details(&self) -> ErrorDetails {
        match self {
            SessionServiceError::InvalidField(violation) => {
                ErrorDetails::with_bad_request(vec![violation.clone()])
            }
            _ => ErrorDetails::new(),
        }
    }
}
