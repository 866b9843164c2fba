//! Auth server: `trellis.auth.v1.AuthService` and `OrganizationService`:
//! sign-up, login with brute-force protection, refresh-token rotation with
//! reuse detection, logout, signing keys, members and invitations.
#![forbid(unsafe_code)]

mod error;
pub mod keys;
mod organizations;
pub mod password;
pub mod sessions;
mod store;
pub mod throttle;
mod tokens;
mod validate;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use tonic_types::FieldViolation;
use trellis::auth::v1 as pb;
use trellis::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use trellis::auth::v1::organization_service_server::OrganizationServiceServer;
use trellis_runtime::{ServerLimits, ServiceSet};
use trellis_store::Database;
use trellis_tenancy::{AccessClaims, CallContext, LogBudget, Role, TenantContext};

pub use error::AuthServiceError;
pub use keys::{KeyStore, KeyStoreError, Rotation, replace_compromised_signer, rotate};
pub use password::{HashPriority, Passwords};
pub use sessions::{LocalLoginSessions, LoginSessions, NewLoginSession, SessionLifetimes};
pub use store::MIGRATIONS;
use store::{
    AuthStore, NewRefreshToken, OrganizationRow, PresentedToken, Refreshed, SignUpError,
    TokenOwner, UserRow,
};
pub use throttle::{PublicRpc, PublicRpcLimits, RateLimit, Throttle, ThrottlePolicy};
use tokens::{new_opaque_token, token_hash};

/// RPCs callable without a token (`API.md`).
pub const PUBLIC_METHODS: [&str; 5] = [
    "/trellis.auth.v1.AuthService/SignUp",
    "/trellis.auth.v1.AuthService/Login",
    "/trellis.auth.v1.AuthService/Refresh",
    "/trellis.auth.v1.AuthService/GetJwks",
    "/trellis.auth.v1.OrganizationService/AcceptInvitation",
];

/// Token lifetimes.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    /// A refresh token is refused this long after it was issued; its session
    /// usually ends sooner.
    pub refresh_token_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuer: "trellis".into(),
            audience: "trellis".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: SessionLifetimes::default().absolute,
        }
    }
}

/// What the Auth server needs.
pub struct AuthDeps {
    pub keys: Arc<KeyStore>,
    pub database: Database,
    /// Where login sessions live (see [`sessions`]).
    pub sessions: Arc<dyn LoginSessions>,
    pub passwords: Arc<Passwords>,
    pub settings: AuthSettings,
    pub throttle: Throttle,
}

struct Plan {
    name: &'static str,
    max_users: i64,
    max_concurrent_runs: i64,
    max_runs_per_month: i64,
}

const FREE: Plan = Plan {
    name: "free",
    max_users: 3,
    max_concurrent_runs: 1,
    max_runs_per_month: 100,
};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ms(duration: Duration) -> i64 {
    duration.as_millis() as i64
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn role_from_str(role: &str) -> Role {
    match role {
        "admin" => Role::Admin,
        "developer" => Role::Developer,
        _ => Role::Viewer,
    }
}

fn role_message(role: &str) -> pb::Role {
    match role {
        "admin" => pb::Role::Admin,
        "developer" => pb::Role::Developer,
        _ => pb::Role::Viewer,
    }
}

fn user_message(user: &UserRow) -> pb::User {
    pb::User {
        user_id: user.id.clone(),
        organization_id: user.org_id.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        role: role_message(&user.role) as i32,
        status: match user.status.as_str() {
            "active" => pb::UserStatus::Active,
            "invited" => pb::UserStatus::Invited,
            _ => pb::UserStatus::Suspended,
        } as i32,
        created_at: Some(timestamp(user.created_at)),
        last_login_at: user.last_login_at.map(timestamp),
    }
}

fn organization_message(org: &OrganizationRow) -> pb::Organization {
    pb::Organization {
        organization_id: org.id.clone(),
        name: org.name.clone(),
        slug: org.slug.clone(),
        plan: match org.plan.as_str() {
            "free" => pb::Plan::Free,
            "team" => pb::Plan::Team,
            _ => pb::Plan::Enterprise,
        } as i32,
        limits: Some(pb::PlanLimits {
            max_users: org.max_users as i32,
            max_concurrent_runs: org.max_concurrent_runs as i32,
            max_runs_per_month: org.max_runs_per_month as i32,
        }),
        created_at: Some(timestamp(org.created_at)),
    }
}

/// Lower-case ASCII letters and digits joined by single dashes.
fn slug_of(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "org".to_owned()
    } else {
        slug.chars()
            .take(48)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned()
    }
}

/// Who is calling, as the audit log records it.
struct Caller {
    user_agent: String,
    /// The client's address: the peer, or what a trusted proxy forwarded.
    address: Option<std::net::IpAddr>,
    request_id: String,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Caller {
        let context = CallContext::from_request(request);
        let user_agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(validate::user_agent)
            .unwrap_or_default();
        Caller {
            user_agent,
            address: context.client_address(),
            request_id: context.request_id().to_owned(),
        }
    }

    /// For audit lines and the session record.
    fn address_text(&self) -> String {
        self.address.map(|a| a.to_string()).unwrap_or_default()
    }
}

/// One structured event per admin action (and invitation acceptance).
fn audit_admin(event: &str, caller: &Caller, org: &str, actor: &str, target: &str, result: &str) {
    tracing::info!(
        target: "audit",
        event,
        org,
        user = actor,
        target_id = target,
        result,
        client_address = %caller.address_text(),
        request_id = %caller.request_id,
    );
}

/// Throttled attempts are refused before any credential is looked at; a
/// flood of them is summed up rather than written line by line.
static THROTTLED_AUDIT: LogBudget = LogBudget::new(10);

/// The audit event of a call turned away by a limit.
fn audit_throttled(event: &str, caller: &Caller) {
    if let Some(suppressed) = THROTTLED_AUDIT.admit() {
        tracing::info!(
            target: "audit",
            event,
            result = "throttled",
            suppressed,
            client_address = %caller.address_text(),
            request_id = %caller.request_id,
        );
    }
}

/// One structured event per authentication attempt: never a password or token.
fn audit(event: &str, caller: &Caller, org: &str, user: &str, result: &str) {
    tracing::info!(
        target: "audit",
        event,
        org,
        user,
        result,
        client_address = %caller.address_text(),
        request_id = %caller.request_id,
    );
}

/// What SignUp, Login, Refresh and AcceptInvitation answer: their response
/// messages share field names and numbers.
struct Issued {
    access_token: String,
    refresh_token: String,
    expires_in: i64,
    session_id: String,
    user: pb::User,
    organization: pb::Organization,
}

macro_rules! from_issued {
    ($($response:ty),*) => {$(
        impl From<Issued> for $response {
            fn from(issued: Issued) -> Self {
                Self {
                    access_token: issued.access_token,
                    refresh_token: issued.refresh_token,
                    expires_in: issued.expires_in,
                    session_id: issued.session_id,
                    user: Some(issued.user),
                    organization: Some(issued.organization),
                }
            }
        }
    )*};
}

from_issued!(
    pb::SignUpResponse,
    pb::LoginResponse,
    pb::RefreshResponse,
    pb::AcceptInvitationResponse
);

pub struct AuthApi {
    keys: Arc<KeyStore>,
    store: AuthStore,
    sessions: Arc<dyn LoginSessions>,
    passwords: Arc<Passwords>,
    settings: AuthSettings,
    throttle: Throttle,
}

impl AuthApi {
    /// Counts a public call from the caller's address against its limit.
    async fn admit_call(&self, rpc: PublicRpc, caller: &Caller) -> Result<(), AuthServiceError> {
        match self.throttle.admit_call(rpc, caller.address).await? {
            Ok(()) => Ok(()),
            Err(retry_after) => Err(AuthServiceError::RateLimited(rpc, retry_after)),
        }
    }

    fn access_token(
        &self,
        user: &UserRow,
        session_id: &str,
    ) -> Result<(String, i64), AuthServiceError> {
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
            role: role_from_str(&user.role),
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
    ) -> Result<Issued, AuthServiceError> {
        let session = NewLoginSession {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: user.org_id.clone(),
            user_id: user.id.clone(),
            user_agent: caller.user_agent.clone(),
            client_address: caller.address_text(),
        };
        self.sessions.open(&session).await?;
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
            user: user_message(&user),
            organization: organization_message(org),
        })
    }

    /// The caller, if its login session is still live and it is active.
    async fn live_user(&self, tenant: &TenantContext) -> Result<UserRow, AuthServiceError> {
        let org_id = tenant.org_id.to_string();
        let live = self
            .sessions
            .is_live(&org_id, &tenant.session_id.to_string())
            .await?;
        if !live {
            return Err(AuthServiceError::Unauthenticated("session ended"));
        }
        match self
            .store
            .user(&org_id, &tenant.user_id.to_string())
            .await?
        {
            Some(user) if user.status == "active" => Ok(user),
            _ => Err(AuthServiceError::Unauthenticated("session ended")),
        }
    }

    /// The caller and its organization, if its login session is still live.
    async fn live_caller(
        &self,
        tenant: &TenantContext,
    ) -> Result<(UserRow, OrganizationRow), AuthServiceError> {
        let user = self.live_user(tenant).await?;
        match self.store.organization(&user.org_id).await? {
            Some(org) => Ok((user, org)),
            None => Err(AuthServiceError::Unauthenticated("session ended")),
        }
    }

    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<pb::SignUpResponse, AuthServiceError> {
        let caller = Caller::of(&request);
        let input = request.into_inner();
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
                return Err(AuthServiceError::InvalidArgument(violations));
            }
        };
        if let Err(error) = self.admit_call(PublicRpc::SignUp, &caller).await {
            audit_throttled("sign_up", &caller);
            return Err(error);
        }
        // Before the costly hash: the answer says no more than the insert's.
        if self.store.user_by_email(&email).await?.is_some() {
            audit("sign_up", &caller, "", "", "email_taken");
            return Err(AuthServiceError::EmailTaken);
        }
        let now = now_ms();
        let org = OrganizationRow {
            id: uuid::Uuid::new_v4().to_string(),
            slug: slug_of(&organization_name),
            name: organization_name,
            plan: FREE.name.into(),
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
            role: "admin".into(),
            status: "active".into(),
            created_at: now,
            last_login_at: None,
        };
        let org = match self.store.sign_up(&org, &admin).await {
            Ok(org) => org,
            Err(SignUpError::EmailTaken) => {
                audit("sign_up", &caller, "", "", "email_taken");
                return Err(AuthServiceError::EmailTaken);
            }
            Err(SignUpError::SlugContended(_)) => {
                return Err(AuthServiceError::Aborted(
                    "too many concurrent sign-ups for this organization name; retry",
                ));
            }
            Err(SignUpError::Store(error)) => return Err(error.into()),
        };
        let issued = self.start_session(&admin, &org, &caller).await?;
        audit("sign_up", &caller, &org.id, &admin.id, "ok");
        Ok(issued.into())
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<pb::LoginResponse, AuthServiceError> {
        let caller = Caller::of(&request);
        let input = request.into_inner();
        let password_too_long = (input.password.len() > password::MAX_PASSWORD_BYTES)
            .then(|| FieldViolation::new("password", "must be at most 1024 bytes"));
        let email = match (
            validate::login_email("email", &input.email),
            password_too_long,
        ) {
            (Ok(email), None) => email,
            (email, password) => {
                let violations = [email.err(), password].into_iter().flatten().collect();
                return Err(AuthServiceError::InvalidArgument(violations));
            }
        };
        // Keyed by the email as typed (normalised), known or not, so a
        // throttled answer says nothing about whether the account exists.
        let attempt = match self.throttle.admit(&email, caller.address).await? {
            Ok(attempt) => attempt,
            Err(retry_after) => {
                audit_throttled("login", &caller);
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
                audit("login", &caller, &org, &id, "invalid_credentials");
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
        if user.status != "active" {
            audit("login", &caller, &user.org_id, &user.id, "suspended");
            return Err(AuthServiceError::Suspended);
        }
        let org = self
            .store
            .organization(&user.org_id)
            .await?
            .ok_or_else(|| {
                AuthServiceError::Internal(format!("user {} has no organization", user.id))
            })?;
        let issued = self.start_session(&user, &org, &caller).await?;
        audit("login", &caller, &user.org_id, &user.id, "ok");
        Ok(issued.into())
    }

    /// Someone presented an already-exchanged refresh token, so two parties
    /// hold copies: end the session for both. The error to answer.
    async fn reused(
        &self,
        caller: &Caller,
        owner: &TokenOwner,
    ) -> Result<AuthServiceError, AuthServiceError> {
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
        Ok(AuthServiceError::Unauthenticated(
            "refresh token already used; session revoked",
        ))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<pb::RefreshResponse, AuthServiceError> {
        let caller = Caller::of(&request);
        let presented = request.into_inner().refresh_token;
        validate::opaque_token("refresh_token", &presented)
            .map_err(|violation| AuthServiceError::InvalidArgument(vec![violation]))?;
        if let Err(error) = self.admit_call(PublicRpc::Refresh, &caller).await {
            audit_throttled("refresh", &caller);
            return Err(error);
        }
        if presented.is_empty() {
            return Err(AuthServiceError::Unauthenticated("invalid refresh token"));
        }
        let now = now_ms();
        let presented_hash = token_hash(&presented);
        // The session slides before the token is exchanged: once the
        // exchange commits, a racing copy of the same token is reuse and
        // ends the session, and the exchange that won must still answer.
        let owner = match self.store.refresh_token(&presented_hash, now).await? {
            PresentedToken::Unused(owner) => owner,
            PresentedToken::Used(owner) => return Err(self.reused(&caller, &owner).await?),
            PresentedToken::Unknown => {
                audit("refresh", &caller, "", "", "invalid");
                return Err(AuthServiceError::Unauthenticated("invalid refresh token"));
            }
        };
        if !self
            .sessions
            .touch(&owner.org_id, &owner.session_id)
            .await?
        {
            audit(
                "refresh",
                &caller,
                &owner.org_id,
                &owner.user_id,
                "session_ended",
            );
            return Err(AuthServiceError::Unauthenticated("invalid refresh token"));
        }
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
            Refreshed::Reused(owner) => return Err(self.reused(&caller, &owner).await?),
            Refreshed::Invalid => {
                audit("refresh", &caller, "", "", "invalid");
                return Err(AuthServiceError::Unauthenticated("invalid refresh token"));
            }
        };
        let user = self.store.user(&org_id, &user_id).await?;
        let org = self.store.organization(&org_id).await?;
        let (Some(user), Some(org)) = (user, org) else {
            return Err(AuthServiceError::Unauthenticated("invalid refresh token"));
        };
        if user.status != "active" {
            self.sessions
                .end_all(&org_id, &user_id, "user suspended")
                .await?;
            return Err(AuthServiceError::Unauthenticated("invalid refresh token"));
        }
        let (access_token, expires_in) = self.access_token(&user, &session_id)?;
        audit("refresh", &caller, &org_id, &user_id, "ok");
        Ok(Issued {
            access_token,
            refresh_token: new_token,
            expires_in,
            session_id,
            user: user_message(&user),
            organization: organization_message(&org),
        }
        .into())
    }
}

fn tenant<T>(request: &Request<T>) -> Result<TenantContext, Status> {
    TenantContext::from_request(request).cloned()
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        Ok(Response::new(AuthApi::sign_up(self, request).await?))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        Ok(Response::new(AuthApi::login(self, request).await?))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        Ok(Response::new(AuthApi::refresh(self, request).await?))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let tenant = tenant(&request)?;
        let caller = Caller::of(&request);
        let (org, user) = (tenant.org_id.to_string(), tenant.user_id.to_string());
        self.sessions
            .end(&org, &user, &tenant.session_id.to_string(), "logout")
            .await?;
        audit("logout", &caller, &org, &user, "ok");
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn logout_all(
        &self,
        request: Request<pb::LogoutAllRequest>,
    ) -> Result<Response<pb::LogoutAllResponse>, Status> {
        let tenant = tenant(&request)?;
        let caller = Caller::of(&request);
        let (org, user) = (tenant.org_id.to_string(), tenant.user_id.to_string());
        let revoked = self.sessions.end_all(&org, &user, "logout all").await?;
        audit("logout_all", &caller, &org, &user, "ok");
        Ok(Response::new(pb::LogoutAllResponse {
            revoked_sessions: revoked as i32,
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let tenant = tenant(&request)?;
        let (user, org) = self.live_caller(&tenant).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            user: Some(user_message(&user)),
            organization: Some(organization_message(&org)),
            session_id: tenant.session_id.to_string(),
        }))
    }

    async fn check_session(
        &self,
        request: Request<pb::CheckSessionRequest>,
    ) -> Result<Response<pb::CheckSessionResponse>, Status> {
        let tenant = tenant(&request)?;
        let role = match self.live_user(&tenant).await {
            Ok(user) => role_message(&user.role),
            Err(AuthServiceError::Unauthenticated(_)) => pb::Role::Unspecified,
            Err(error) => return Err(error.into()),
        };
        Ok(Response::new(pb::CheckSessionResponse {
            live: role != pb::Role::Unspecified,
            role: role as i32,
        }))
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.keys.jwks(),
        }))
    }
}

pub fn service_set(limits: &ServerLimits, deps: AuthDeps) -> ServiceSet {
    // One state behind both services.
    let api = Arc::new(AuthApi {
        keys: deps.keys,
        store: AuthStore::new(deps.database),
        sessions: deps.sessions,
        passwords: deps.passwords,
        settings: deps.settings,
        throttle: deps.throttle,
    });
    let set = ServiceSet::new("auth")
        .add_service(
            AuthServiceServer::from_arc(api.clone())
                .max_decoding_message_size(limits.max_message_bytes),
        )
        .add_service(
            OrganizationServiceServer::from_arc(api)
                .max_decoding_message_size(limits.max_message_bytes),
        );
    PUBLIC_METHODS
        .iter()
        .fold(set, |set, method| set.public_method(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_dashed_and_never_empty() {
        assert_eq!(slug_of("Taco Palace, Inc."), "taco-palace-inc");
        assert_eq!(slug_of("  ¡Hola!  "), "hola");
        assert_eq!(slug_of("***"), "org");
    }
}
