//! Auth's logic: one state behind both gRPC services, and handlers that are
//! plain methods returning [`Result`]. They know nothing of tonic beyond the
//! message types; [`crate::grpc`] adapts them.

mod auth;
mod organizations;
mod service_tokens;

use std::sync::Arc;

use trellis_tenancy::{AccessClaims, TenantContext};

use crate::audit::Caller;
use crate::convert::{Issued, organization_message, user_message};
use crate::error::{AuthServiceError, Result};
use crate::keys::KeyStore;
use crate::password::Passwords;
use crate::sessions::{LoginSessions, NewLoginSession};
use crate::settings::AuthSettings;
use crate::store::{
    AuthStore, NewRefreshToken, OrganizationRow, ServiceAccounts, UserRow, UserStatus,
};
use crate::throttle::{PublicRpc, Throttle};
use crate::tokens::{new_opaque_token, token_hash};
use trellis_runtime::time::{millis as ms, now_ms};

pub struct AuthApi {
    pub(crate) keys: Arc<KeyStore>,
    pub(crate) store: AuthStore,
    pub(crate) sessions: Arc<dyn LoginSessions>,
    pub(crate) passwords: Arc<Passwords>,
    pub(crate) settings: AuthSettings,
    pub(crate) throttle: Throttle,
    pub(crate) service_accounts: ServiceAccounts,
}

impl AuthApi {
    /// Counts a public call from the caller's address against its limit.
    async fn admit_call(&self, rpc: PublicRpc, caller: &Caller) -> Result<()> {
        match self.throttle.admit_call(rpc, caller.address).await? {
            Ok(()) => Ok(()),
            Err(retry_after) => Err(AuthServiceError::RateLimited(rpc, retry_after)),
        }
    }

    fn access_token(&self, user: &UserRow, session_id: &str) -> Result<(String, i64)> {
        let now = now_ms() / 1000;
        let ttl = self.settings.access_token_ttl.as_secs() as i64;
        let parse = |id: &str| {
            uuid::Uuid::parse_str(id)
                .map_err(|e| AuthServiceError::Internal(format!("stored id {id:?}: {e}")))
        };
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: parse(&user.id)?,
            org: parse(&user.org_id)?,
            role: user.role,
            sid: parse(session_id)?,
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: uuid::Uuid::new_v4(),
            scope: None,
        };
        let token = self
            .keys
            .signing_key()
            .sign(&claims)
            .map_err(|e| AuthServiceError::Internal(format!("signing: {e}")))?;
        Ok((token, ttl))
    }

    /// Starts a login session (recording the login on the user) and issues
    /// its tokens.
    async fn start_session(
        &self,
        user: &UserRow,
        org: &OrganizationRow,
        caller: &Caller,
    ) -> Result<Issued> {
        let session = NewLoginSession {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: user.org_id.clone(),
            user_id: user.id.clone(),
            user_agent: caller.user_agent.clone(),
            client_address: caller.address_text(),
        };
        let csrf_token = self.sessions.open(&session).await?;
        let now = now_ms();
        let refresh_token = new_opaque_token();
        let recorded = self
            .store
            .record_login(&NewRefreshToken {
                hash: token_hash(&refresh_token),
                session_id: session.id.clone(),
                org_id: session.org_id.clone(),
                user_id: session.user_id.clone(),
                now,
                expires_at: now + ms(self.settings.refresh_token_ttl),
            })
            .await;
        if let Err(error) = recorded {
            // No token will ever name this session: end it rather than
            // leave it live until it expires.
            if let Err(error) = self
                .sessions
                .end(
                    &session.org_id,
                    &session.user_id,
                    &session.id,
                    "login failed",
                )
                .await
            {
                tracing::warn!(%error, "ending the session of a failed login");
            }
            return Err(error.into());
        }
        let (access_token, expires_in) = self.access_token(user, &session.id)?;
        let user = UserRow {
            last_login_at: Some(now),
            ..user.clone()
        };
        Ok(Issued {
            access_token,
            refresh_token,
            expires_in,
            session_id: session.id,
            csrf_token,
            user: user_message(&user),
            organization: organization_message(org),
        })
    }

    /// The caller, if its login session is still live and it is active.
    async fn live_user(&self, tenant: &TenantContext) -> Result<UserRow> {
        let org_id = tenant.org_id.to_string();
        let live = self
            .sessions
            .is_live(&org_id, &tenant.session_id.to_string())
            .await?;
        self.active_user(tenant, live).await
    }

    /// As [`Self::live_user`], recording a use of the session.
    async fn used_user(&self, tenant: &TenantContext) -> Result<UserRow> {
        let org_id = tenant.org_id.to_string();
        let live = self
            .sessions
            .touch(&org_id, &tenant.session_id.to_string())
            .await?
            .is_some();
        self.active_user(tenant, live).await
    }

    async fn active_user(&self, tenant: &TenantContext, session_live: bool) -> Result<UserRow> {
        let org_id = tenant.org_id.to_string();
        if !session_live {
            return Err(AuthServiceError::SessionEnded);
        }
        match self
            .store
            .user(&org_id, &tenant.user_id.to_string())
            .await?
        {
            Some(user) if user.status == UserStatus::Active => Ok(user),
            _ => Err(AuthServiceError::SessionEnded),
        }
    }

    /// The caller and its organization, if its login session is still live.
    async fn live_caller(&self, tenant: &TenantContext) -> Result<(UserRow, OrganizationRow)> {
        let user = self.live_user(tenant).await?;
        match self.store.organization(&user.org_id).await? {
            Some(org) => Ok((user, org)),
            None => Err(AuthServiceError::SessionEnded),
        }
    }
}
