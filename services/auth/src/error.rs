//! Everything Auth can answer besides success. Variants say what went wrong
//! in Auth's terms; [`ServiceError`] below is the one place they become
//! status codes, messages and error details.

use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, FieldViolation};
use trellis_runtime::ServiceError;
use trellis_store::StoreError;

use crate::password::HashError;
use crate::sessions::LoginSessionsError;
use crate::throttle::PublicRpc;

pub type Result<T, E = AuthServiceError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AuthServiceError {
    /// Request fields out of bounds or malformed, each named.
    #[error("{}", violations_text(.0))]
    InvalidFields(Vec<FieldViolation>),
    /// Emails are unique across Trellis: sign-up (and accepting an
    /// invitation) says so, which reveals no more than a sign-up attempt.
    #[error("email already registered")]
    EmailTaken,
    #[error("a member of this organization has this email")]
    MemberExists,
    #[error("a pending invitation for this email exists")]
    InvitationPending,
    /// Wrong email and wrong password alike.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Unknown client, wrong secret and revoked account alike.
    #[error("invalid client credentials")]
    InvalidClientCredentials,
    #[error("user is suspended")]
    Suspended,
    /// An authenticated RPC reached without the tenancy layer's caller.
    #[error("missing bearer token")]
    MissingToken,
    /// The caller's login session ended, or its user or organization is gone.
    #[error("session ended")]
    SessionEnded,
    /// Unknown, expired or no longer usable refresh token.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// An already-exchanged refresh token came back: its session was ended.
    #[error("refresh token already used; session revoked")]
    RefreshTokenReused,
    #[error("requires role admin")]
    AdminRequired,
    #[error("user not found: {0}")]
    UserNotFound(String),
    #[error("organization not found: {0}")]
    OrganizationNotFound(String),
    /// The invitation token names no pending invitation.
    #[error("invitation not found")]
    UnknownInvitationToken,
    #[error("invitation not found: {0}")]
    InvitationNotFound(String),
    #[error("invitation is no longer pending")]
    InvitationNotPending,
    #[error("an organization must keep at least one active admin")]
    LastAdmin,
    #[error("user is not suspended")]
    NotSuspended,
    /// Inviting: the plan's seats are taken, counting pending invitations.
    #[error("the {plan} plan allows {max_users} users, counting pending invitations")]
    SeatsExhausted { plan: &'static str, max_users: i64 },
    /// Accepting: the seats filled up since the invitation was sent.
    #[error("the organization has no free seats on its plan")]
    NoFreeSeats,
    /// Lost to concurrent sign-ups; retrying the call can succeed.
    #[error("too many concurrent sign-ups for this organization name; retry")]
    SlugContended,
    /// Too many failed (or in-flight) logins; the caller may retry after the delay.
    #[error("too many login attempts; retry later")]
    Throttled(Duration),
    /// Too many calls of a public RPC from one client address.
    #[error("{}", .0.throttled_message())]
    RateLimited(PublicRpc, Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sessions(#[from] LoginSessionsError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("internal: {0}")]
    Internal(String),
}

impl AuthServiceError {
    /// One field's violation.
    pub fn invalid(violation: FieldViolation) -> Self {
        AuthServiceError::InvalidFields(vec![violation])
    }
}

fn violations_text(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What to suggest when every hashing thread is busy and the queue is full.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Whole seconds, rounded up, so clients never retry early.
fn retry_info(retry_after: Duration) -> ErrorDetails {
    ErrorDetails::with_retry_info(Some(Duration::from_secs(
        retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
    )))
}

impl ServiceError for AuthServiceError {
    const DOMAIN: &'static str = "auth.trellis";

    fn code(&self) -> Code {
        use AuthServiceError::*;
        match self {
            InvalidFields(_) => Code::InvalidArgument,
            EmailTaken | MemberExists | InvitationPending => Code::AlreadyExists,
            InvalidCredentials
            | InvalidClientCredentials
            | MissingToken
            | SessionEnded
            | InvalidRefreshToken
            | RefreshTokenReused => Code::Unauthenticated,
            Suspended | AdminRequired => Code::PermissionDenied,
            UserNotFound(_)
            | OrganizationNotFound(_)
            | UnknownInvitationToken
            | InvitationNotFound(_) => Code::NotFound,
            InvitationNotPending | LastAdmin | NotSuspended => Code::FailedPrecondition,
            SeatsExhausted { .. } | NoFreeSeats | Throttled(_) | RateLimited(..) => {
                Code::ResourceExhausted
            }
            Hash(HashError::Busy) => Code::ResourceExhausted,
            SlugContended => Code::Aborted,
            Store(error) => error.code(),
            Sessions(LoginSessionsError::Unavailable(_)) => Code::Unavailable,
            Sessions(LoginSessionsError::Failed(_)) | Hash(HashError::Failed(_)) | Internal(_) => {
                Code::Internal
            }
        }
    }

    fn reason(&self) -> &'static str {
        use AuthServiceError::*;
        match self {
            InvalidFields(_) => "INVALID_FIELDS",
            EmailTaken => "EMAIL_TAKEN",
            MemberExists => "MEMBER_EXISTS",
            InvitationPending => "INVITATION_PENDING",
            InvalidCredentials => "INVALID_CREDENTIALS",
            InvalidClientCredentials => "INVALID_CLIENT",
            Suspended => "USER_SUSPENDED",
            MissingToken => "MISSING_TOKEN",
            SessionEnded => "SESSION_ENDED",
            InvalidRefreshToken => "INVALID_REFRESH_TOKEN",
            RefreshTokenReused => "REFRESH_TOKEN_REUSED",
            AdminRequired => "ADMIN_REQUIRED",
            UserNotFound(_) => "USER_NOT_FOUND",
            OrganizationNotFound(_) => "ORGANIZATION_NOT_FOUND",
            UnknownInvitationToken | InvitationNotFound(_) => "INVITATION_NOT_FOUND",
            InvitationNotPending => "INVITATION_NOT_PENDING",
            LastAdmin => "LAST_ADMIN",
            NotSuspended => "NOT_SUSPENDED",
            SeatsExhausted { .. } | NoFreeSeats => "SEATS_EXHAUSTED",
            SlugContended => "SLUG_CONTENDED",
            Throttled(_) => "LOGIN_THROTTLED",
            RateLimited(..) => "RATE_LIMITED",
            Hash(HashError::Busy) => "HASHING_BUSY",
            Store(error) => error.reason(),
            Sessions(LoginSessionsError::Unavailable(_)) => "SESSIONS_UNAVAILABLE",
            Sessions(LoginSessionsError::Failed(_)) | Hash(HashError::Failed(_)) | Internal(_) => {
                "INTERNAL"
            }
        }
    }

    fn message(&self) -> String {
        match self {
            AuthServiceError::Hash(HashError::Busy) => {
                "too many logins in progress; retry later".into()
            }
            AuthServiceError::Store(error) => error.message(),
            AuthServiceError::Sessions(LoginSessionsError::Unavailable(_)) => {
                "sessions temporarily unavailable, retry later".into()
            }
            other => other.to_string(),
        }
    }

    fn details(&self) -> ErrorDetails {
        match self {
            AuthServiceError::InvalidFields(violations) => {
                ErrorDetails::with_bad_request(violations.clone())
            }
            AuthServiceError::Throttled(retry_after)
            | AuthServiceError::RateLimited(_, retry_after) => retry_info(*retry_after),
            AuthServiceError::Hash(HashError::Busy) => retry_info(BUSY_RETRY),
            _ => ErrorDetails::new(),
        }
    }
}
