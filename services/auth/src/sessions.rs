//! Login sessions as Auth's logic sees them: a small trait, so where they
//! are kept stays out of sign-up, login, refresh and logout. The Session
//! service owns them ([`RemoteLoginSessions`] calls its internal
//! `LoginSessionService` as this service); tests put doubles behind it.
//!
//! Refresh tokens stay Auth's: they only name the session they belong to, and
//! every exchange asks the session whether it is still live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;
use trellis::session::v1 as pb;
use trellis::session::v1::login_session_service_client::LoginSessionServiceClient;
use trellis_tenancy::AsService;

/// A login session about to start, as the login saw it.
#[derive(Clone, Debug)]
pub struct NewLoginSession {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub user_agent: String,
    pub client_address: String,
}

/// Why the sessions could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LoginSessionsError {
    /// Reachable again soon, probably: the caller may retry.
    #[error("the session service is unavailable: {0}")]
    Unavailable(String),
    #[error("the session service failed: {0}")]
    Failed(String),
}

impl From<tonic::Status> for LoginSessionsError {
    fn from(status: tonic::Status) -> Self {
        let text = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                LoginSessionsError::Unavailable(text)
            }
            _ => LoginSessionsError::Failed(text),
        }
    }
}

pub type SessionsResult<T> = Result<T, LoginSessionsError>;

/// Where login sessions are kept. Every call is scoped by organization.
#[tonic::async_trait]
pub trait LoginSessions: Send + Sync + 'static {
    /// Starts a session for a user who has just authenticated; its CSRF
    /// token.
    async fn open(&self, session: &NewLoginSession) -> SessionsResult<String>;

    /// Whether the session has neither ended nor expired.
    async fn is_live(&self, org_id: &str, session_id: &str) -> SessionsResult<bool>;

    /// Records a use (a token refresh, a session check), sliding the idle
    /// expiry; the session's CSRF token, `None` when it is no longer live.
    async fn touch(&self, org_id: &str, session_id: &str) -> SessionsResult<Option<String>>;

    /// Ends one session of a user; whether it was live.
    async fn end(
        &self,
        org_id: &str,
        user_id: &str,
        session_id: &str,
        reason: &str,
    ) -> SessionsResult<bool>;

    /// Ends every live session of a user; how many there were.
    async fn end_all(&self, org_id: &str, user_id: &str, reason: &str) -> SessionsResult<u64>;
}

/// How long a "live" answer is reused before the Session service is asked
/// again: session checks (every server's guard asks Auth) then cost no hop
/// when they come in bursts. A logout through Auth forgets it at once; one
/// made at the Session service directly takes up to this much longer to be
/// seen, on top of the guards' --session-check-ttl.
pub const LIVE_ANSWER_TTL: Duration = Duration::from_secs(1);
/// Sessions whose "live" answer is remembered at once.
const LIVE_ANSWERS: usize = 100_000;

/// Login sessions in the Session service, reached as this service (its own
/// service token, never the user's).
#[derive(Clone)]
pub struct RemoteLoginSessions {
    client: LoginSessionServiceClient<AsService<tonic::transport::Channel>>,
    /// (organization, session) -> (answered at, CSRF token) of live ones.
    live: Arc<quick_cache::sync::Cache<(String, String), (Instant, String)>>,
}

impl RemoteLoginSessions {
    pub fn new(channel: AsService<tonic::transport::Channel>) -> Self {
        RemoteLoginSessions {
            client: LoginSessionServiceClient::new(channel),
            live: Arc::new(quick_cache::sync::Cache::new(LIVE_ANSWERS)),
        }
    }

    fn recently_live(&self, org_id: &str, session_id: &str) -> Option<String> {
        let key = (org_id.to_owned(), session_id.to_owned());
        match self.live.get(&key) {
            Some((at, csrf)) if at.elapsed() < LIVE_ANSWER_TTL => Some(csrf),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl LoginSessions for RemoteLoginSessions {
    async fn open(&self, session: &NewLoginSession) -> SessionsResult<String> {
        let opened = self
            .client
            .clone()
            .open_login_session(pb::OpenLoginSessionRequest {
                organization_id: session.org_id.clone(),
                session_id: session.id.clone(),
                user_id: session.user_id.clone(),
                user_agent: session.user_agent.clone(),
                client_address: session.client_address.clone(),
            })
            .await?;
        Ok(opened.into_inner().csrf_token)
    }

    async fn is_live(&self, org_id: &str, session_id: &str) -> SessionsResult<bool> {
        if self.recently_live(org_id, session_id).is_some() {
            return Ok(true);
        }
        let checked = self
            .client
            .clone()
            .check_login_session(pb::CheckLoginSessionRequest {
                organization_id: org_id.to_owned(),
                session_id: session_id.to_owned(),
            })
            .await?;
        Ok(checked.into_inner().live)
    }

    async fn touch(&self, org_id: &str, session_id: &str) -> SessionsResult<Option<String>> {
        // A use within the last second is written already (the Session
        // service writes uses at most once a minute anyway).
        if let Some(csrf) = self.recently_live(org_id, session_id) {
            return Ok(Some(csrf));
        }
        let touched = self
            .client
            .clone()
            .touch_login_session(pb::TouchLoginSessionRequest {
                organization_id: org_id.to_owned(),
                session_id: session_id.to_owned(),
            })
            .await?
            .into_inner();
        let key = (org_id.to_owned(), session_id.to_owned());
        if touched.live {
            self.live
                .insert(key, (Instant::now(), touched.csrf_token.clone()));
            Ok(Some(touched.csrf_token))
        } else {
            self.live.remove(&key);
            Ok(None)
        }
    }

    async fn end(
        &self,
        org_id: &str,
        user_id: &str,
        session_id: &str,
        reason: &str,
    ) -> SessionsResult<bool> {
        self.live
            .remove(&(org_id.to_owned(), session_id.to_owned()));
        let ended = self
            .client
            .clone()
            .end_login_session(pb::EndLoginSessionRequest {
                organization_id: org_id.to_owned(),
                user_id: user_id.to_owned(),
                session_id: session_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?;
        Ok(ended.into_inner().ended)
    }

    async fn end_all(&self, org_id: &str, user_id: &str, reason: &str) -> SessionsResult<u64> {
        // Which remembered sessions are this user's is not kept: forget
        // them all (logout-all and suspension are rare).
        self.live.clear();
        let ended = self
            .client
            .clone()
            .end_user_login_sessions(pb::EndUserLoginSessionsRequest {
                organization_id: org_id.to_owned(),
                user_id: user_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?;
        Ok(u64::try_from(ended.into_inner().ended).unwrap_or(0))
    }
}
