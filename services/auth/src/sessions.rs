//! Login sessions as Auth's logic sees them: a small trait, so where they
//! are kept can change without touching sign-up, login, refresh or logout.
//! Today they live in Auth's own tables ([`LocalLoginSessions`]); the Session
//! service will keep them as its `LOGIN` sessions behind the same calls.
//!
//! Refresh tokens stay Auth's: they only name the session they belong to, and
//! every exchange asks the session whether it is still live.

use std::time::Duration;

use trellis_store::StoreError;

pub use crate::store::LocalLoginSessions;

/// A login session about to start, as the login saw it.
#[derive(Clone, Debug)]
pub struct NewLoginSession {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub user_agent: String,
    pub client_address: String,
}

/// How long a login session lasts.
#[derive(Clone, Copy, Debug)]
pub struct SessionLifetimes {
    /// It ends this long after its last use (sliding)...
    pub idle: Duration,
    /// ...and this long after login, however active.
    pub absolute: Duration,
}

impl Default for SessionLifetimes {
    fn default() -> Self {
        SessionLifetimes {
            idle: Duration::from_secs(24 * 3600),
            absolute: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Where login sessions are kept. Every call is scoped by organization.
#[tonic::async_trait]
pub trait LoginSessions: Send + Sync + 'static {
    /// Starts a session for a user who has just authenticated.
    async fn open(&self, session: &NewLoginSession) -> Result<(), StoreError>;

    /// Whether the session has neither ended nor expired.
    async fn is_live(&self, org_id: &str, session_id: &str) -> Result<bool, StoreError>;

    /// Records a use (a token refresh), sliding the idle expiry; `false` when
    /// the session is no longer live.
    async fn touch(&self, org_id: &str, session_id: &str) -> Result<bool, StoreError>;

    /// Ends one session of a user; whether it was live.
    async fn end(
        &self,
        org_id: &str,
        user_id: &str,
        session_id: &str,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// Ends every live session of a user; how many there were.
    async fn end_all(&self, org_id: &str, user_id: &str, reason: &str) -> Result<u64, StoreError>;
}
