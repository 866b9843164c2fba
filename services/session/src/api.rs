//! The Session service's logic: handlers as plain methods over one state,
//! returning [`Result`]; [`crate::grpc`] adapts them to tonic. Every store
//! call names the caller's organization, so another organization's session
//! is never found, whatever its id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use trellis_runtime::time::{millis as ms, now_ms, timestamp};

use trellis::session::v1 as pb;
use trellis_store::Page;
use trellis_tenancy::{Role, TenantContext};
use uuid::Uuid;

use crate::error::{Result, SessionServiceError};
use crate::sessions::{Lifetimes, Opening, checked_metadata, new_session};
use crate::store::{SessionKind, SessionRecord, SessionStore};

/// A login beyond this many live LOGIN sessions ends the user's oldest.
pub const MAX_LOGIN_SESSIONS_PER_USER: usize = 50;
/// CreateSession beyond this many live WORK sessions is refused. With the
/// login cap it bounds what listing one user's sessions reads.
pub const MAX_WORK_SESSIONS_PER_USER: usize = 50;
/// Sessions one CheckSessions call may name.
pub const MAX_CHECKED_SESSIONS: usize = 500;
/// "Active" in GetSessionStats: used within this long.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// What was seen of the client that opens a session.
#[derive(Clone, Debug, Default)]
pub struct Client {
    pub user_agent: String,
    pub address: String,
}

pub struct SessionApi {
    pub store: Arc<dyn SessionStore>,
    pub lifetimes: Lifetimes,
}

fn id(field: &str, value: &str) -> Result<Uuid> {
    if value.is_empty() {
        return Err(SessionServiceError::invalid(field, "required"));
    }
    Uuid::parse_str(value).map_err(|_| SessionServiceError::invalid(field, "must be a UUID"))
}

/// Every page of a user's sessions at once: the caps keep it small.
fn whole_user() -> Page {
    Page {
        limit: (MAX_LOGIN_SESSIONS_PER_USER + MAX_WORK_SESSIONS_PER_USER) as i64 * 2,
        after: None,
    }
}

impl SessionApi {
    fn idle_ms(&self) -> i64 {
        ms(self.lifetimes.idle)
    }

    /// The caller's own live session, recording the use; NOT_FOUND for any
    /// other (whose expiry a stranger's reads never extend).
    async fn own(&self, tenant: &TenantContext, session_id: &str) -> Result<SessionRecord> {
        let session_id = id("session_id", session_id)?;
        let now = now_ms();
        let not_found = || SessionServiceError::NotFound(session_id);
        let session = self
            .store
            .get(tenant.org_id, session_id, now)
            .await?
            .filter(|s| s.user_id == tenant.user_id)
            .ok_or_else(not_found)?;
        if session.used_at(now, self.idle_ms()).is_none() {
            return Ok(session);
        }
        self.store
            .touch(tenant.org_id, session_id, now, self.idle_ms())
            .await?
            .ok_or_else(not_found)
    }

    /// The user's live sessions of `kind`, oldest first.
    async fn live_of_kind(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        kind: SessionKind,
    ) -> Result<Vec<SessionRecord>> {
        let mut sessions = self
            .store
            .list_for_user(org_id, user_id, now_ms(), &whole_user())
            .await?;
        sessions.retain(|s| s.kind == kind);
        sessions.reverse();
        Ok(sessions)
    }

    pub async fn create(
        &self,
        tenant: &TenantContext,
        client: Client,
        request: pb::CreateSessionRequest,
    ) -> Result<pb::Session> {
        if !tenant.role.can_write() {
            return Err(SessionServiceError::WriteRoleRequired);
        }
        let metadata = checked_metadata(&request.metadata)
            .map_err(|e| SessionServiceError::invalid("metadata", e.to_string()))?;
        // A soft cap: creates racing past it overshoot by at most their
        // number, never without bound.
        let live = self
            .live_of_kind(tenant.org_id, tenant.user_id, SessionKind::Work)
            .await?;
        if live.len() >= MAX_WORK_SESSIONS_PER_USER {
            return Err(SessionServiceError::TooManyWorkSessions);
        }
        let session = new_session(
            Opening {
                org_id: tenant.org_id,
                user_id: tenant.user_id,
                kind: SessionKind::Work,
                metadata,
                user_agent: client.user_agent,
                client_address: client.address,
            },
            now_ms(),
            self.lifetimes,
        );
        self.store.insert(&session).await?;
        Ok(session_message(&session, true))
    }

    pub async fn get(&self, tenant: &TenantContext, session_id: &str) -> Result<pb::Session> {
        Ok(session_message(&self.own(tenant, session_id).await?, true))
    }

    pub async fn list(
        &self,
        tenant: &TenantContext,
        request: pb::ListSessionsRequest,
    ) -> Result<pb::ListSessionsResponse> {
        let user_id = match request.user_id.as_str() {
            "" => tenant.user_id,
            other => id("user_id", other)?,
        };
        if user_id != tenant.user_id && tenant.role != Role::Admin {
            return Err(SessionServiceError::AdminRequired);
        }
        let page = Page::parse(request.page_size, &request.page_token)
            .map_err(|e| SessionServiceError::invalid(e.field(), e.to_string()))?;
        let sessions = self
            .store
            .list_for_user(tenant.org_id, user_id, now_ms(), &page)
            .await?;
        let owner = user_id == tenant.user_id;
        let cursors: Vec<(i64, String)> = sessions
            .iter()
            .map(|s| (s.created_at, s.id.to_string()))
            .collect();
        Ok(pb::ListSessionsResponse {
            next_page_token: page.next_token(&cursors, |(created, id)| (*created, id.as_str())),
            sessions: sessions.iter().map(|s| session_message(s, owner)).collect(),
        })
    }

    pub async fn delete(&self, tenant: &TenantContext, session_id: &str) -> Result<()> {
        let parsed = id("session_id", session_id)?;
        // Only the owner's: read first, so another user's id is NOT_FOUND
        // and left alone.
        self.own(tenant, session_id).await?;
        match self.store.delete(tenant.org_id, parsed, now_ms()).await? {
            Some(_) => Ok(()),
            None => Err(SessionServiceError::NotFound(parsed)),
        }
    }

    pub async fn delete_others(&self, tenant: &TenantContext) -> Result<i32> {
        let ended = self
            .store
            .delete_for_user(
                tenant.org_id,
                tenant.user_id,
                Some(tenant.session_id),
                now_ms(),
            )
            .await?;
        Ok(i32::try_from(ended).unwrap_or(i32::MAX))
    }

    pub async fn stats(&self, tenant: &TenantContext) -> Result<pb::GetSessionStatsResponse> {
        let now = now_ms();
        let counts = self
            .store
            .counts(tenant.org_id, now, now - ms(ACTIVE_WINDOW))
            .await?;
        Ok(pb::GetSessionStatsResponse {
            total_sessions: counts.total,
            active_sessions: counts.active,
            oldest_session: counts.oldest_created_at.map(timestamp),
            newest_session: counts.newest_created_at.map(timestamp),
        })
    }

    /// Internal: which of these sessions of one organization are live.
    pub async fn check_many(
        &self,
        request: pb::CheckSessionsRequest,
    ) -> Result<pb::CheckSessionsResponse> {
        let org_id = id("organization_id", &request.organization_id)?;
        if request.session_ids.len() > MAX_CHECKED_SESSIONS {
            return Err(SessionServiceError::invalid(
                "session_ids",
                format!("at most {MAX_CHECKED_SESSIONS} per call"),
            ));
        }
        let now = now_ms();
        let mut live = Vec::new();
        for session_id in &request.session_ids {
            let session_id = id("session_ids", session_id)?;
            if let Some(session) = self.store.get(org_id, session_id, now).await? {
                live.push(pb::LiveSession {
                    session_id: session.id.to_string(),
                    user_id: session.user_id.to_string(),
                    expires_at: Some(timestamp(session.expires_at())),
                });
            }
        }
        Ok(pb::CheckSessionsResponse { live })
    }

    /// Internal: a login session for a user Auth has just authenticated. Its
    /// id is Auth's (the token's `sid`).
    pub async fn open_login(&self, request: pb::OpenLoginSessionRequest) -> Result<String> {
        let org_id = id("organization_id", &request.organization_id)?;
        let user_id = id("user_id", &request.user_id)?;
        let session_id = id("session_id", &request.session_id)?;
        let now = now_ms();
        let mut session = new_session(
            Opening {
                org_id,
                user_id,
                kind: SessionKind::Login,
                metadata: Default::default(),
                user_agent: trellis_tenancy::bounded_user_agent(&request.user_agent),
                client_address: bounded_address(&request.client_address)?,
            },
            now,
            self.lifetimes,
        );
        session.id = session_id;
        let live = self
            .live_of_kind(org_id, user_id, SessionKind::Login)
            .await?;
        let excess = (live.len() + 1).saturating_sub(MAX_LOGIN_SESSIONS_PER_USER);
        for oldest in live.iter().take(excess) {
            self.store.delete(org_id, oldest.id, now).await?;
        }
        self.store.insert(&session).await?;
        Ok(session.csrf_token)
    }

    /// Internal: whether a login session is live, without recording a use.
    pub async fn check_login(&self, request: pb::CheckLoginSessionRequest) -> Result<bool> {
        let org_id = id("organization_id", &request.organization_id)?;
        let session_id = id("session_id", &request.session_id)?;
        Ok(self
            .store
            .get(org_id, session_id, now_ms())
            .await?
            .is_some_and(|s| s.kind == SessionKind::Login))
    }

    /// Internal: records a use; the CSRF token when the session is live.
    pub async fn touch_login(
        &self,
        request: pb::TouchLoginSessionRequest,
    ) -> Result<Option<String>> {
        let org_id = id("organization_id", &request.organization_id)?;
        let session_id = id("session_id", &request.session_id)?;
        Ok(self
            .store
            .touch(org_id, session_id, now_ms(), self.idle_ms())
            .await?
            .filter(|s| s.kind == SessionKind::Login)
            .map(|s| s.csrf_token))
    }

    pub async fn end_login(&self, request: pb::EndLoginSessionRequest) -> Result<bool> {
        let org_id = id("organization_id", &request.organization_id)?;
        let user_id = id("user_id", &request.user_id)?;
        let session_id = id("session_id", &request.session_id)?;
        let now = now_ms();
        // Another user's session is not this user's to end.
        match self.store.get(org_id, session_id, now).await? {
            Some(session) if session.user_id == user_id && session.kind == SessionKind::Login => {}
            _ => return Ok(false),
        }
        let ended = self.store.delete(org_id, session_id, now).await?.is_some();
        if ended {
            tracing::info!(target: "audit", event = "session_ended", org = %org_id, user = %user_id, session = %session_id, reason = %bounded_reason(&request.reason));
        }
        Ok(ended)
    }

    /// Internal: ends every live session of a user, WORK ones included (a
    /// suspended user or a logout-all leaves nothing usable behind).
    pub async fn end_user_logins(&self, request: pb::EndUserLoginSessionsRequest) -> Result<i64> {
        let org_id = id("organization_id", &request.organization_id)?;
        let user_id = id("user_id", &request.user_id)?;
        let ended = self
            .store
            .delete_for_user(org_id, user_id, None, now_ms())
            .await?;
        tracing::info!(target: "audit", event = "sessions_ended", org = %org_id, user = %user_id, ended, reason = %bounded_reason(&request.reason));
        Ok(i64::try_from(ended).unwrap_or(i64::MAX))
    }
}

/// An address as Auth saw it: an IP, or nothing.
fn bounded_address(raw: &str) -> Result<String> {
    match raw {
        "" => Ok(String::new()),
        text => text
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .map_err(|_| SessionServiceError::invalid("client_address", "must be an IP address")),
    }
}

/// A reason for the audit log: short, printable.
fn bounded_reason(raw: &str) -> String {
    trellis_tenancy::bounded_user_agent(raw)
        .chars()
        .take(64)
        .collect()
}

/// The message for `session`; the CSRF token only for its owner.
pub fn session_message(session: &SessionRecord, owner: bool) -> pb::Session {
    pb::Session {
        session_id: session.id.to_string(),
        user_id: session.user_id.to_string(),
        organization_id: session.org_id.to_string(),
        created_at: Some(timestamp(session.created_at)),
        last_activity_at: Some(timestamp(session.last_activity_at)),
        expires_at: Some(timestamp(session.expires_at())),
        metadata: session
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
        csrf_token: if owner {
            session.csrf_token.clone()
        } else {
            String::new()
        },
        kind: match session.kind {
            SessionKind::Login => pb::SessionKind::Login,
            SessionKind::Work => pb::SessionKind::Work,
        } as i32,
        user_agent: session.user_agent.clone(),
        client_address: session.client_address.clone(),
    }
}
