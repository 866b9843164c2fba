//! `AuthService`: sign-up, login with brute-force protection, refresh-token
//! rotation with reuse detection, logout, who-am-I and the JWKS.

use tonic_types::FieldViolation;
use trellis::auth::v1 as pb;
use trellis_tenancy::TenantContext;

use super::AuthApi;
use crate::audit::{Caller, audit, audit_throttled};
use crate::convert::{Issued, organization_message, role_message, user_message};
use crate::error::{AuthServiceError, Result};
use crate::password::{self, HashPriority};
use crate::settings::FREE;
use crate::store::{
    OrganizationRow, PresentedToken, Refreshed, Role, SignUpError, TokenOwner, UserRow, UserStatus,
};
use crate::throttle::PublicRpc;
use crate::tokens::{new_opaque_token, token_hash};
use crate::validate;
use trellis_runtime::time::{millis as ms, now_ms};

impl AuthApi {
    pub async fn sign_up(&self, caller: &Caller, input: pb::SignUpRequest) -> Result<Issued> {
        let password_violations = password::policy_violations("password", &input.password);
        let fields = (
            validate::email("email", &input.email),
            validate::name("name", &input.name),
            validate::name("organization_name", &input.organization_name),
        );
        let (email, name, organization_name) = match fields {
            (Ok(email), Ok(name), Ok(organization)) if password_violations.is_empty() => {
                (email, name, organization)
            }
            (email, name, organization) => {
                let mut violations: Vec<FieldViolation> =
                    [email.err(), name.err(), organization.err()]
                        .into_iter()
                        .flatten()
                        .collect();
                violations.extend(password_violations);
                return Err(AuthServiceError::InvalidFields(violations));
            }
        };
        if let Err(error) = self.admit_call(PublicRpc::SignUp, caller).await {
            audit_throttled("sign_up", caller);
            return Err(error);
        }
        // Before the costly hash: the answer says no more than the insert's.
        if self.store.user_by_email(&email).await?.is_some() {
            audit("sign_up", caller, "", "", "email_taken");
            return Err(AuthServiceError::EmailTaken);
        }
        let now = now_ms();
        let org = OrganizationRow {
            id: uuid::Uuid::new_v4().to_string(),
            slug: validate::slug_of(&organization_name),
            name: organization_name,
            plan: FREE.plan,
            max_users: FREE.max_users,
            max_concurrent_runs: FREE.max_concurrent_runs,
            max_runs_per_month: FREE.max_runs_per_month,
            created_at: now,
        };
        let admin = UserRow {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org.id.clone(),
            email,
            name,
            password_hash: self
                .passwords
                .hash(input.password, HashPriority::NewPassword)
                .await?,
            role: Role::Admin,
            status: UserStatus::Active,
            created_at: now,
            last_login_at: None,
        };
        let org = match self.store.sign_up(&org, &admin).await {
            Ok(org) => org,
            Err(SignUpError::EmailTaken) => {
                audit("sign_up", caller, "", "", "email_taken");
                return Err(AuthServiceError::EmailTaken);
            }
            Err(SignUpError::SlugContended(_)) => return Err(AuthServiceError::SlugContended),
            Err(SignUpError::Store(error)) => return Err(error.into()),
        };
        let issued = self.start_session(&admin, &org, caller).await?;
        audit("sign_up", caller, &org.id, &admin.id, "ok");
        Ok(issued)
    }

    pub async fn login(&self, caller: &Caller, input: pb::LoginRequest) -> Result<Issued> {
        let password_too_long = (input.password.len() > password::MAX_PASSWORD_BYTES)
            .then(|| FieldViolation::new("password", "must be at most 1024 bytes"));
        let email = match (
            validate::login_email("email", &input.email),
            password_too_long,
        ) {
            (Ok(email), None) => email,
            (email, password) => {
                let violations = [email.err(), password].into_iter().flatten().collect();
                return Err(AuthServiceError::InvalidFields(violations));
            }
        };
        // Keyed by the email as typed (normalised), known or not, so a
        // throttled answer says nothing about whether the account exists.
        let attempt = match self.throttle.admit(&email, caller.address).await? {
            Ok(attempt) => attempt,
            Err(retry_after) => {
                audit_throttled("login", caller);
                return Err(AuthServiceError::Throttled(retry_after));
            }
        };
        let user = self.store.user_by_email(&email).await?;
        let matches = self
            .passwords
            .verify(
                input.password.clone(),
                user.as_ref().map(|u| u.password_hash.clone()),
            )
            .await?;
        let user = match user {
            Some(user) if matches => user,
            other => {
                let (org, id) = other.map(|u| (u.org_id, u.id)).unwrap_or_default();
                audit("login", caller, &org, &id, "invalid_credentials");
                let tarpit = self.throttle.failed(attempt).await?;
                tokio::time::sleep(tarpit).await;
                return Err(AuthServiceError::InvalidCredentials);
            }
        };
        self.throttle.succeeded(attempt).await?;
        if self.passwords.needs_rehash(&user.password_hash) {
            // The only moment the password is known: raise the hash to
            // today's parameters. A failure here must not fail the login.
            match self
                .passwords
                .hash(input.password, HashPriority::Login)
                .await
            {
                Ok(fresh) => {
                    if let Err(error) = self
                        .store
                        .set_password_hash(&user.org_id, &user.id, &fresh)
                        .await
                    {
                        tracing::warn!(%error, "storing the re-hashed password failed");
                    }
                }
                Err(error) => tracing::warn!(%error, "re-hashing the password failed"),
            }
        }
        // Checked after the password, so guessers learn nothing about status.
        if user.status != UserStatus::Active {
            audit("login", caller, &user.org_id, &user.id, "suspended");
            return Err(AuthServiceError::Suspended);
        }
        let org = self
            .store
            .organization(&user.org_id)
            .await?
            .ok_or_else(|| {
                AuthServiceError::Internal(format!("user {} has no organization", user.id))
            })?;
        let issued = self.start_session(&user, &org, caller).await?;
        audit("login", caller, &user.org_id, &user.id, "ok");
        Ok(issued)
    }

    /// Someone presented an already-exchanged refresh token, so two parties
    /// hold copies: end the session for both. The error to answer.
    async fn reused(&self, caller: &Caller, owner: &TokenOwner) -> Result<AuthServiceError> {
        self.sessions
            .end(
                &owner.org_id,
                &owner.user_id,
                &owner.session_id,
                "refresh token reused",
            )
            .await?;
        audit(
            "refresh",
            caller,
            &owner.org_id,
            &owner.user_id,
            "reused_session_revoked",
        );
        Ok(AuthServiceError::RefreshTokenReused)
    }

    pub async fn refresh(&self, caller: &Caller, input: pb::RefreshRequest) -> Result<Issued> {
        let presented = input.refresh_token;
        validate::opaque_token("refresh_token", &presented).map_err(AuthServiceError::invalid)?;
        if let Err(error) = self.admit_call(PublicRpc::Refresh, caller).await {
            audit_throttled("refresh", caller);
            return Err(error);
        }
        if presented.is_empty() {
            return Err(AuthServiceError::InvalidRefreshToken);
        }
        let now = now_ms();
        let presented_hash = token_hash(&presented);
        // The session slides before the token is exchanged: once the
        // exchange commits, a racing copy of the same token is reuse and
        // ends the session, and the exchange that won must still answer.
        let owner = match self.store.refresh_token(&presented_hash, now).await? {
            PresentedToken::Unused(owner) => owner,
            PresentedToken::Used(owner) => return Err(self.reused(caller, &owner).await?),
            PresentedToken::Unknown => {
                audit("refresh", caller, "", "", "invalid");
                return Err(AuthServiceError::InvalidRefreshToken);
            }
        };
        let Some(csrf_token) = self
            .sessions
            .touch(&owner.org_id, &owner.session_id)
            .await?
        else {
            audit(
                "refresh",
                caller,
                &owner.org_id,
                &owner.user_id,
                "session_ended",
            );
            return Err(AuthServiceError::InvalidRefreshToken);
        };
        let new_token = new_opaque_token();
        let outcome = self
            .store
            .rotate_refresh(
                &presented_hash,
                &token_hash(&new_token),
                now,
                now + ms(self.settings.refresh_token_ttl),
            )
            .await?;
        let TokenOwner {
            session_id,
            org_id,
            user_id,
        } = match outcome {
            Refreshed::Rotated(owner) => owner,
            Refreshed::Reused(owner) => return Err(self.reused(caller, &owner).await?),
            Refreshed::Invalid => {
                audit("refresh", caller, "", "", "invalid");
                return Err(AuthServiceError::InvalidRefreshToken);
            }
        };
        let user = self.store.user(&org_id, &user_id).await?;
        let org = self.store.organization(&org_id).await?;
        let (Some(user), Some(org)) = (user, org) else {
            return Err(AuthServiceError::InvalidRefreshToken);
        };
        if user.status != UserStatus::Active {
            self.sessions
                .end_all(&org_id, &user_id, "user suspended")
                .await?;
            return Err(AuthServiceError::InvalidRefreshToken);
        }
        let (access_token, expires_in) = self.access_token(&user, &session_id)?;
        audit("refresh", caller, &org_id, &user_id, "ok");
        Ok(Issued {
            access_token,
            refresh_token: new_token,
            expires_in,
            session_id,
            csrf_token,
            user: user_message(&user),
            organization: organization_message(&org),
        })
    }

    /// Ends the caller's own session.
    pub async fn logout(&self, caller: &Caller, tenant: &TenantContext) -> Result<()> {
        let (org, user) = (tenant.org_id.to_string(), tenant.user_id.to_string());
        self.sessions
            .end(&org, &user, &tenant.session_id.to_string(), "logout")
            .await?;
        audit("logout", caller, &org, &user, "ok");
        Ok(())
    }

    /// Ends every session of the caller; how many were live.
    pub async fn logout_all(&self, caller: &Caller, tenant: &TenantContext) -> Result<u64> {
        let (org, user) = (tenant.org_id.to_string(), tenant.user_id.to_string());
        let revoked = self.sessions.end_all(&org, &user, "logout all").await?;
        audit("logout_all", caller, &org, &user, "ok");
        Ok(revoked)
    }

    pub async fn who_am_i(&self, tenant: &TenantContext) -> Result<pb::WhoAmIResponse> {
        let (user, org) = self.live_caller(tenant).await?;
        Ok(pb::WhoAmIResponse {
            user: Some(user_message(&user)),
            organization: Some(organization_message(&org)),
            session_id: tenant.session_id.to_string(),
        })
    }

    /// The caller's role if its session is live (what other servers' session
    /// guards ask); an ended session is an answer, not an error.
    /// A check is a use of the session: it slides its expiry (written back
    /// at most once a minute by the Session service).
    pub async fn check_session(&self, tenant: &TenantContext) -> Result<pb::CheckSessionResponse> {
        let role = match self.used_user(tenant).await {
            Ok(user) => role_message(user.role),
            Err(AuthServiceError::SessionEnded) => pb::Role::Unspecified,
            Err(error) => return Err(error),
        };
        Ok(pb::CheckSessionResponse {
            live: role != pb::Role::Unspecified,
            role: role as i32,
        })
    }

    pub fn jwks(&self) -> pb::GetJwksResponse {
        pb::GetJwksResponse {
            keys: self.keys.jwks(),
        }
    }
}
