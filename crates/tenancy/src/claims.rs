use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `typ` header of Trellis access tokens (RFC 9068), so a token of another
/// kind signed by the same key is never taken for one.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// A user's role inside its organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }

    /// Whether the role may create and change resources (sessions, carts,
    /// orders, executions).
    pub fn can_write(self) -> bool {
        matches!(self, Role::Admin | Role::Developer)
    }
}

/// A stored role name that is none of ours.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

impl TryFrom<String> for Role {
    type Error = UnknownRole;

    fn try_from(name: String) -> Result<Role, UnknownRole> {
        match name.as_str() {
            "admin" => Ok(Role::Admin),
            "developer" => Ok(Role::Developer),
            "viewer" => Ok(Role::Viewer),
            _ => Err(UnknownRole(name)),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of a user's access token, exactly as Auth signs them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// User id.
    pub sub: Uuid,
    /// Organization id: the token, never a header, decides the tenant.
    pub org: Uuid,
    pub role: Role,
    /// Login session id.
    pub sid: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Uuid,
    /// Absent, or `user`: a user token has no other scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The claims of a service account's token (client credentials): no
/// organization, session or role; it acts for no tenant by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceClaims {
    pub iss: String,
    pub aud: String,
    /// Service account id.
    pub sub: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Uuid,
    /// [`WORKER_SCOPE`] or [`SERVICE_SCOPE`].
    pub scope: String,
}

/// Scope of the tokens of worker accounts (`WorkerService`).
pub const WORKER_SCOPE: &str = "worker";
/// Scope of the tokens of other Trellis servers (internal RPCs).
pub const SERVICE_SCOPE: &str = "service";
const USER_SCOPE: &str = "user";

/// Any signed token's claims, before its kind is known. Typed, so a claim
/// of the wrong JSON type is refused by decoding.
#[derive(Deserialize)]
pub(crate) struct SignedClaims {
    // Checked by the JWT validation; typed here as well, so that an array
    // `aud` (our tokens name one audience) or a string `nbf` is refused.
    #[serde(rename = "iss")]
    _iss: String,
    #[serde(rename = "aud")]
    _aud: String,
    #[serde(rename = "nbf")]
    _nbf: i64,
    sub: Uuid,
    iat: i64,
    exp: i64,
    jti: Uuid,
    #[serde(default)]
    org: Option<Uuid>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    sid: Option<Uuid>,
    #[serde(default)]
    scope: Option<String>,
}

impl SignedClaims {
    pub(crate) fn iat(&self) -> i64 {
        self.iat
    }

    pub(crate) fn exp(&self) -> i64 {
        self.exp
    }

    /// The caller these claims make: a user token carries exactly `org`,
    /// `role` and `sid`; a worker or service token carries none of them.
    /// Any other scope, or a mix, is refused: a scope never widens a user
    /// token, and a service token never names a tenant.
    pub(crate) fn into_principal(self) -> Result<Principal, &'static str> {
        let service = |kind| {
            if self.org.is_some() || self.role.is_some() || self.sid.is_some() {
                return Err("a service-account token carries no org, role or sid");
            }
            Ok(ServiceIdentity {
                kind,
                account_id: self.sub,
                token_id: self.jti,
                expires_at: self.exp,
            })
        };
        match self.scope.as_deref() {
            None | Some(USER_SCOPE) => match (self.org, self.role, self.sid) {
                (Some(org_id), Some(role), Some(session_id)) => {
                    Ok(Principal::User(TenantContext {
                        org_id,
                        user_id: self.sub,
                        role,
                        session_id,
                        token_id: self.jti,
                        expires_at: self.exp,
                    }))
                }
                _ => Err("a user token needs org, role and sid"),
            },
            Some(WORKER_SCOPE) => service(ServiceKind::Worker).map(Principal::Worker),
            Some(SERVICE_SCOPE) => service(ServiceKind::Service).map(Principal::Service),
            Some(_) => Err("unknown scope"),
        }
    }
}

/// A user, the caller of most RPCs, inside its organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantContext {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub session_id: Uuid,
    pub token_id: Uuid,
    /// Unix seconds.
    pub expires_at: i64,
}

impl TenantContext {
    /// The user calling a request that went through [`crate::AuthLayer`].
    /// Returns `UNAUTHENTICATED` rather than panicking when the layer was not
    /// in front of the handler (a public method, or a wiring mistake).
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<&TenantContext, tonic::Status> {
        request
            .extensions()
            .get::<TenantContext>()
            .ok_or_else(|| tonic::Status::unauthenticated("missing bearer token"))
    }
}

/// Which kind of service account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Worker,
    Service,
}

impl ServiceKind {
    pub fn scope(self) -> &'static str {
        match self {
            ServiceKind::Worker => WORKER_SCOPE,
            ServiceKind::Service => SERVICE_SCOPE,
        }
    }
}

/// A service account calling with a client-credentials token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceIdentity {
    pub kind: ServiceKind,
    pub account_id: Uuid,
    pub token_id: Uuid,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Who is calling, as the token says: one typed value, so a handler never
/// checks optional fields to learn it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    User(TenantContext),
    Worker(ServiceIdentity),
    Service(ServiceIdentity),
}

impl Principal {
    /// Unix seconds.
    pub fn expires_at(&self) -> i64 {
        match self {
            Principal::User(tenant) => tenant.expires_at,
            Principal::Worker(identity) | Principal::Service(identity) => identity.expires_at,
        }
    }

    /// What Auth is asked about: a user's login session, or a service
    /// account (revoking it ends its tokens the way a logout does).
    pub fn session_key(&self) -> Uuid {
        match self {
            Principal::User(tenant) => tenant.session_id,
            Principal::Worker(identity) | Principal::Service(identity) => identity.account_id,
        }
    }

    /// The caller of a request that went through [`crate::AuthLayer`].
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<&Principal, tonic::Status> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| tonic::Status::unauthenticated("missing bearer token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_role_names_are_errors_not_viewers() {
        for name in ["", "Admin", "owner"] {
            assert!(Role::try_from(name.to_owned()).is_err(), "{name:?}");
        }
    }

    #[test]
    fn roles_are_named_as_the_token_writes_them_and_only_viewers_are_read_only() {
        for (role, name, writes) in [
            (Role::Admin, "admin", true),
            (Role::Developer, "developer", true),
            (Role::Viewer, "viewer", false),
        ] {
            assert_eq!(role.as_str(), name);
            assert_eq!(Role::try_from(name.to_owned()).unwrap(), role);
            assert_eq!(role.to_string(), name);
            assert_eq!(serde_json::to_value(role).unwrap(), name);
            assert_eq!(role.can_write(), writes, "{name}");
        }
    }

    fn signed(scope: Option<&str>, user: bool) -> SignedClaims {
        SignedClaims {
            _iss: "trellis".into(),
            _aud: "trellis".into(),
            _nbf: 0,
            sub: Uuid::new_v4(),
            iat: 0,
            exp: 60,
            jti: Uuid::new_v4(),
            org: user.then(Uuid::new_v4),
            role: user.then_some(Role::Viewer),
            sid: user.then(Uuid::new_v4),
            scope: scope.map(str::to_owned),
        }
    }

    #[test]
    fn the_scope_alone_decides_the_kind_and_never_widens_a_user_token() {
        for scope in [None, Some("user")] {
            let principal = signed(scope, true).into_principal().unwrap();
            assert!(matches!(principal, Principal::User(_)), "{scope:?}");
            assert_eq!(principal.expires_at(), 60);
            assert!(signed(scope, false).into_principal().is_err());
        }
        let worker = signed(Some("worker"), false).into_principal().unwrap();
        assert!(matches!(&worker, Principal::Worker(id) if id.kind == ServiceKind::Worker));
        let service = signed(Some("service"), false).into_principal().unwrap();
        assert!(matches!(&service, Principal::Service(id) if id.kind == ServiceKind::Service));
        if let Principal::Service(identity) = &service {
            assert_eq!(service.session_key(), identity.account_id);
        }
        for (scope, user) in [
            (Some("worker"), true),
            (Some("service"), true),
            (Some("read worker"), false),
            (Some("user worker"), true),
            (Some("workers"), false),
            (Some("admin"), true),
            (Some(""), true),
        ] {
            assert!(
                signed(scope, user).into_principal().is_err(),
                "{scope:?} with user claims: {user}"
            );
        }
        // Any one tenant claim on a service token is refused.
        let mut with_org = signed(Some("worker"), false);
        with_org.org = Some(Uuid::new_v4());
        assert!(with_org.into_principal().is_err());
        let mut with_sid = signed(Some("service"), false);
        with_sid.sid = Some(Uuid::new_v4());
        assert!(with_sid.into_principal().is_err());
    }
}
