//! Everything the Execution server can answer besides success, and the one
//! place those answers become status codes.

use tonic::Code;
use tonic_types::{ErrorDetails, FieldViolation};
use trellis_runtime::ServiceError;
use trellis_store::StoreError;
use uuid::Uuid;

pub type Result<T, E = ExecutionServiceError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ExecutionServiceError {
    #[error("{}: {}", .0.field, .0.description)]
    InvalidField(FieldViolation),
    /// Unknown, or another organization's.
    #[error("execution not found: {0}")]
    NotFound(Uuid),
    /// Unknown, expired or ended (reclaimed, completed, failed).
    #[error("lease not found: {0}")]
    LeaseNotFound(Uuid),
    #[error("requires role admin or developer")]
    WriteRoleRequired,
    #[error("execution {0} is already final")]
    AlreadyFinal(Uuid),
    #[error("execution {0} is pending or running; cancel it first")]
    NotFinal(Uuid),
    /// Order fulfillment: settled through its order (CancelOrder).
    #[error("execution {0} is the platform's; act on its order instead")]
    PlatformExecution(Uuid),
    #[error("the {plan_limit} executions of this month's plan are used up")]
    MonthlyRunsUsed { plan_limit: i64 },
    /// resume_after names events no longer kept, or never handed out.
    #[error(
        "cannot replay the events after {asked}: this organization's retained events are \
         {oldest_retained} to {last}; list the executions again, then watch"
    )]
    ResumeOutOfRange {
        asked: i64,
        oldest_retained: i64,
        last: i64,
    },
    #[error("execution {0} holds the most log lines it may ({max})", max = crate::store::MAX_LOG_LINES)]
    LogFull(Uuid),
    #[error("missing bearer token")]
    MissingCaller,
    /// Auth could not say what the organization's plan allows.
    #[error("plan limits temporarily unavailable, retry later")]
    LimitsUnavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ExecutionServiceError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        ExecutionServiceError::InvalidField(FieldViolation::new(field, description))
    }
}

impl ServiceError for ExecutionServiceError {
    const DOMAIN: &'static str = "execution.trellis";

    fn code(&self) -> Code {
        use ExecutionServiceError::*;
        match self {
            InvalidField(_) => Code::InvalidArgument,
            NotFound(_) | LeaseNotFound(_) => Code::NotFound,
            WriteRoleRequired => Code::PermissionDenied,
            AlreadyFinal(_) | NotFinal(_) | PlatformExecution(_) => Code::FailedPrecondition,
            MonthlyRunsUsed { .. } | LogFull(_) => Code::ResourceExhausted,
            ResumeOutOfRange { .. } => Code::OutOfRange,
            MissingCaller => Code::Unauthenticated,
            LimitsUnavailable(_) => Code::Unavailable,
            Store(error) => error.code(),
        }
    }

    fn reason(&self) -> &'static str {
        use ExecutionServiceError::*;
        match self {
            InvalidField(_) => "INVALID_FIELDS",
            NotFound(_) => "EXECUTION_NOT_FOUND",
            LeaseNotFound(_) => "LEASE_NOT_FOUND",
            WriteRoleRequired => "WRITE_ROLE_REQUIRED",
            AlreadyFinal(_) => "ALREADY_FINAL",
            NotFinal(_) => "NOT_FINAL",
            PlatformExecution(_) => "PLATFORM_EXECUTION",
            MonthlyRunsUsed { .. } => "MONTHLY_RUNS_USED",
            ResumeOutOfRange { .. } => "RESUME_OUT_OF_RANGE",
            LogFull(_) => "LOG_FULL",
            MissingCaller => "MISSING_TOKEN",
            LimitsUnavailable(_) => "LIMITS_UNAVAILABLE",
            Store(error) => error.reason(),
        }
    }

    fn message(&self) -> String {
        match self {
            ExecutionServiceError::Store(error) => error.message(),
            other => other.to_string(),
        }
    }

    fn details(&self) -> ErrorDetails {
        match self {
            ExecutionServiceError::InvalidField(violation) => {
                ErrorDetails::with_bad_request(vec![violation.clone()])
            }
            _ => ErrorDetails::new(),
        }
    }
}
