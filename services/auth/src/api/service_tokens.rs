//! `IssueServiceToken` (client credentials) and whether a service account's
//! token is still good.

use tonic_types::FieldViolation;
use trellis::auth::v1 as pb;
use trellis_tenancy::{Principal, ServiceClaims, ServiceIdentity, ServiceKind};

use super::AuthApi;
use crate::audit::{Caller, audit, audit_throttled};
use crate::error::{AuthServiceError, Result};
use crate::store::{ServiceAccountRow, ServiceScope};
use crate::throttle::PublicRpc;
use crate::tokens::token_hash;
use crate::validate;
use trellis_runtime::time::now_ms;

/// Compares digests without stopping at the first difference.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn scope_of(kind: ServiceKind) -> ServiceScope {
    match kind {
        ServiceKind::Worker => ServiceScope::Worker,
        ServiceKind::Service => ServiceScope::Service,
    }
}

impl AuthApi {
    pub async fn issue_service_token(
        &self,
        caller: &Caller,
        input: pb::IssueServiceTokenRequest,
    ) -> Result<pb::IssueServiceTokenResponse> {
        let client_id = match (
            validate::id("client_id", &input.client_id),
            validate::opaque_token("client_secret", &input.client_secret),
        ) {
            (Ok(client_id), Ok(())) => client_id,
            (id, secret) => {
                let violations: Vec<FieldViolation> =
                    [id.err(), secret.err()].into_iter().flatten().collect();
                return Err(AuthServiceError::InvalidFields(violations));
            }
        };
        // Per client address, on counters of its own: no per-account limit
        // (see PublicRpcLimits::issue_service_token_rate) and no share of
        // the logins' address budget.
        if let Err(error) = self.admit_call(PublicRpc::IssueServiceToken, caller).await {
            audit_throttled("issue_service_token", caller);
            return Err(error);
        }
        let presented = token_hash(&input.client_secret);
        let account = self
            .service_accounts
            .active(&client_id)
            .await?
            .filter(|account| same_digest(&account.secret_hash, &presented));
        let Some(account) = account else {
            audit(
                "issue_service_token",
                caller,
                "",
                &client_id,
                "invalid_client",
            );
            return Err(AuthServiceError::InvalidClientCredentials);
        };
        let answer = self.service_token(&account)?;
        audit("issue_service_token", caller, "", &account.id, "ok");
        Ok(answer)
    }

    fn service_token(&self, account: &ServiceAccountRow) -> Result<pb::IssueServiceTokenResponse> {
        let now = now_ms() / 1000;
        let ttl = self.settings.service_token_ttl.as_secs() as i64;
        let claims = ServiceClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: uuid::Uuid::parse_str(&account.id).map_err(|e| {
                AuthServiceError::Internal(format!("stored id {:?}: {e}", account.id))
            })?,
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: uuid::Uuid::new_v4(),
            scope: account.scope.as_str().to_owned(),
        };
        let access_token = self
            .keys
            .signing_key()
            .sign(&claims)
            .map_err(|e| AuthServiceError::Internal(format!("signing: {e}")))?;
        Ok(pb::IssueServiceTokenResponse {
            access_token,
            expires_at: Some(prost_types::Timestamp {
                seconds: claims.exp,
                nanos: 0,
            }),
            expires_in: ttl,
            scope: claims.scope,
        })
    }

    /// `CheckSession` for any caller: a user's login session, or whether a
    /// service account is still active with the scope its token claims.
    pub async fn check_principal(&self, principal: &Principal) -> Result<pb::CheckSessionResponse> {
        match principal {
            Principal::User(tenant) => self.check_session(tenant).await,
            Principal::Worker(identity) | Principal::Service(identity) => {
                Ok(pb::CheckSessionResponse {
                    live: self.service_account_live(identity).await?,
                    role: pb::Role::Unspecified as i32,
                })
            }
        }
    }

    async fn service_account_live(&self, identity: &ServiceIdentity) -> Result<bool> {
        let account = self
            .service_accounts
            .active(&identity.account_id.to_string())
            .await?;
        Ok(account.is_some_and(|account| account.scope == scope_of(identity.kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_only_when_equal() {
        assert!(same_digest("abc", "abc"));
        assert!(!same_digest("abc", "abd"));
        assert!(!same_digest("abc", "ab"));
        assert!(!same_digest("", "a"));
    }
}
