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

/// The claims of a Trellis access token, exactly as signed by Auth.
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
    /// Space-separated scopes, e.g. "worker".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The verified caller, put in request extensions by [`crate::AuthLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantContext {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub session_id: Uuid,
    pub token_id: Uuid,
    /// Unix seconds.
    pub expires_at: i64,
    pub worker: bool,
}

impl TenantContext {
    pub(crate) fn from_claims(claims: &AccessClaims) -> Self {
        let worker = claims
            .scope
            .as_deref()
            .is_some_and(|scope| scope.split(' ').any(|s| s == "worker"));
        TenantContext {
            org_id: claims.org,
            user_id: claims.sub,
            role: claims.role,
            session_id: claims.sid,
            token_id: claims.jti,
            expires_at: claims.exp,
            worker,
        }
    }

    /// The caller of a request that went through [`crate::AuthLayer`].
    /// Returns `UNAUTHENTICATED` rather than panicking when the layer was not
    /// in front of the handler (a public method, or a wiring mistake).
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<&TenantContext, tonic::Status> {
        request
            .extensions()
            .get::<TenantContext>()
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

    #[test]
    fn only_the_worker_scope_makes_a_worker() {
        let claims = |scope: Option<&str>| AccessClaims {
            iss: "trellis".into(),
            aud: "trellis".into(),
            sub: Uuid::new_v4(),
            org: Uuid::new_v4(),
            role: Role::Viewer,
            sid: Uuid::new_v4(),
            iat: 0,
            nbf: 0,
            exp: 60,
            jti: Uuid::new_v4(),
            scope: scope.map(str::to_owned),
        };
        for (scope, worker) in [
            (None, false),
            (Some("worker"), true),
            (Some("read worker"), true),
            (Some("workers"), false),
            (Some("coworker"), false),
            (Some(""), false),
        ] {
            let tenant = TenantContext::from_claims(&claims(scope));
            assert_eq!(tenant.worker, worker, "{scope:?}");
            assert_eq!(tenant.expires_at, 60);
        }
    }
}
