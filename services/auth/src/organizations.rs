//! `trellis.auth.v1.OrganizationService`: the organization, its members and
//! invitations. The caller's role is read from the database, not the token,
//! so a demotion takes effect at once here.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Response, Status};
use tonic_types::FieldViolation;
use trellis::auth::v1 as pb;
use trellis::auth::v1::organization_service_server::OrganizationService;

use crate::password::HashPriority;
use crate::store::{
    AcceptOutcome, InvitationRow, InviteOutcome, MemberChange, MemberOutcome, RevokeOutcome,
};
use crate::throttle::PublicRpc;
use crate::tokens::{new_opaque_token, token_hash};
use crate::validate::{self, MAX_PAGE_TOKEN_BYTES};
use crate::{
    AuthApi, AuthServiceError, Caller, OrganizationRow, UserRow, audit_admin, audit_throttled,
    now_ms, organization_message, password, role_message, tenant, timestamp, user_message,
};

const INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

fn page_size(requested: i32) -> Result<i64, AuthServiceError> {
    match requested {
        0 => Ok(DEFAULT_PAGE),
        n if (1..=MAX_PAGE as i32).contains(&n) => Ok(i64::from(n)),
        _ => Err(AuthServiceError::InvalidArgument(vec![
            FieldViolation::new("page_size", "must be between 0 (default 50) and 500"),
        ])),
    }
}

/// Page tokens are opaque to clients: `created_at:id` of the last item.
fn decode_page_token(token: &str) -> Result<Option<(i64, String)>, AuthServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_PAGE_TOKEN_BYTES {
        return Err(AuthServiceError::InvalidArgument(vec![
            FieldViolation::new("page_token", "is not a token from this list"),
        ]));
    }
    let invalid = || {
        AuthServiceError::InvalidArgument(vec![FieldViolation::new(
            "page_token",
            "is not a token from this list",
        )])
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (created_at, id) = text.split_once(':').ok_or_else(invalid)?;
    // Every id is a UUID; anything else did not come from this list.
    let id = uuid::Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some((
        created_at.parse().map_err(|_| invalid())?,
        id.to_string(),
    )))
}

fn encode_page_token(created_at: i64, id: &str, full_page: bool) -> String {
    if full_page {
        URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
    } else {
        String::new()
    }
}

fn role_name(field: &str, role: i32) -> Result<&'static str, AuthServiceError> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Admin) => Ok("admin"),
        Ok(pb::Role::Developer) => Ok("developer"),
        Ok(pb::Role::Viewer) => Ok("viewer"),
        _ => Err(AuthServiceError::InvalidArgument(vec![
            FieldViolation::new(field, "must be ROLE_ADMIN, ROLE_DEVELOPER or ROLE_VIEWER"),
        ])),
    }
}

/// Another organization's id and a missing one must look the same, so only
/// the format is checked here; the scoped query decides NOT_FOUND.
fn id_of(field: &str, value: &str) -> Result<String, AuthServiceError> {
    uuid::Uuid::parse_str(value)
        .map(|id| id.to_string())
        .map_err(|_| {
            AuthServiceError::InvalidArgument(vec![FieldViolation::new(field, "must be a UUID")])
        })
}

fn invitation_message(row: &InvitationRow, now: i64, token: Option<String>) -> pb::Invitation {
    let status = match row.status.as_str() {
        "pending" if row.expires_at <= now => pb::InvitationStatus::Expired,
        "pending" => pb::InvitationStatus::Pending,
        "accepted" => pb::InvitationStatus::Accepted,
        _ => pb::InvitationStatus::Revoked,
    };
    pb::Invitation {
        invitation_id: row.id.clone(),
        organization_id: row.org_id.clone(),
        email: row.email.clone(),
        role: role_message(&row.role) as i32,
        status: status as i32,
        token: token.unwrap_or_default(),
        invited_by: row.invited_by.clone(),
        created_at: Some(timestamp(row.created_at)),
        expires_at: Some(timestamp(row.expires_at)),
    }
}

impl AuthApi {
    /// The caller, live and an admin of its organization.
    async fn admin<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(UserRow, OrganizationRow), AuthServiceError> {
        let tenant = tenant(request)
            .map_err(|_| AuthServiceError::Unauthenticated("missing bearer token"))?;
        let (caller, org) = self.live_caller(&tenant).await?;
        if caller.role != "admin" {
            return Err(AuthServiceError::PermissionDenied("requires role admin"));
        }
        Ok((caller, org))
    }

    async fn member<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(UserRow, OrganizationRow), AuthServiceError> {
        let tenant = tenant(request)
            .map_err(|_| AuthServiceError::Unauthenticated("missing bearer token"))?;
        self.live_caller(&tenant).await
    }

    async fn change_member(
        &self,
        request: &Request<impl Send>,
        event: &str,
        user_id: &str,
        change: MemberChange,
    ) -> Result<Option<pb::User>, AuthServiceError> {
        let (admin, org) = self.admin(request).await?;
        let user_id = id_of("user_id", user_id)?;
        let outcome = self.store.change_member(&org.id, &user_id, &change).await?;
        let ends_sessions = match change {
            MemberChange::Suspend => Some("user suspended"),
            MemberChange::Remove => Some("user removed"),
            MemberChange::Role(_) | MemberChange::Reactivate => None,
        };
        if let (MemberOutcome::Done(_), Some(reason)) = (&outcome, ends_sessions) {
            // After the change commits: if this fails, the admin sees the
            // error and the user's refresh tokens already cannot be used
            // (suspended: refused at exchange; removed: deleted).
            self.sessions.end_all(&org.id, &user_id, reason).await?;
        }
        let result = match &outcome {
            MemberOutcome::Done(_) => "ok",
            MemberOutcome::NotFound => "not_found",
            MemberOutcome::LastAdmin => "last_admin",
            MemberOutcome::NotSuspended => "not_suspended",
        };
        audit_admin(
            event,
            &Caller::of(request),
            &org.id,
            &admin.id,
            &user_id,
            result,
        );
        match outcome {
            MemberOutcome::Done(user) => Ok(user.as_ref().map(user_message)),
            MemberOutcome::NotFound => Err(AuthServiceError::NotFound(format!(
                "user not found: {user_id}"
            ))),
            MemberOutcome::LastAdmin => Err(AuthServiceError::FailedPrecondition(
                "an organization must keep at least one active admin",
            )),
            MemberOutcome::NotSuspended => Err(AuthServiceError::FailedPrecondition(
                "user is not suspended",
            )),
        }
    }
}

impl AuthApi {
    /// AcceptInvitation. Every failure is an audit event: a token is tried
    /// by whoever holds it, and the inviting admin holds it too.
    async fn accept(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<pb::AcceptInvitationResponse, AuthServiceError> {
        let caller = Caller::of(&request);
        let input = request.into_inner();
        let password_violations = password::policy_violations("password", &input.password);
        let fields = (
            validate::opaque_token("token", &input.token),
            validate::name("name", &input.name),
        );
        let name = match fields {
            (Ok(()), Ok(name)) if password_violations.is_empty() => name,
            (token, name) => {
                let mut violations: Vec<FieldViolation> =
                    [token.err(), name.err()].into_iter().flatten().collect();
                violations.extend(password_violations);
                return Err(AuthServiceError::InvalidArgument(violations));
            }
        };
        // The organization and invitation, once the token names them.
        let refused = |known: Option<&InvitationRow>, result: &str, error: AuthServiceError| {
            let (org, invitation) = known.map_or(("", ""), |row| (&row.org_id, &row.id));
            audit_admin("accept_invitation", &caller, org, "", invitation, result);
            error
        };
        if let Err(error) = self.admit_call(PublicRpc::AcceptInvitation, &caller).await {
            audit_throttled("accept_invitation", &caller);
            return Err(error);
        }
        let now = now_ms();
        let hash = token_hash(&input.token);
        let Some(invitation) = self.store.pending_invitation(&hash, now).await? else {
            return Err(refused(
                None,
                "invalid",
                AuthServiceError::NotFound("invitation not found".into()),
            ));
        };
        // Emails are unique across Trellis, so an email registered in any
        // organization cannot join another; the answer is sign-up's own,
        // and counts against the same kind of per-address limit.
        if self.store.user_by_email(&invitation.email).await?.is_some() {
            return Err(refused(
                Some(&invitation),
                "email_taken",
                AuthServiceError::EmailTaken,
            ));
        }
        let template = UserRow {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: String::new(),
            email: String::new(),
            name,
            password_hash: self
                .passwords
                .hash(input.password, HashPriority::NewPassword)
                .await?,
            role: String::new(),
            status: String::new(),
            created_at: now,
            last_login_at: None,
        };
        let outcome = self.store.accept_invitation(&hash, &template, now).await?;
        let (user, org) = match outcome {
            AcceptOutcome::Joined(joined) => *joined,
            AcceptOutcome::Invalid => {
                return Err(refused(
                    Some(&invitation),
                    "invalid",
                    AuthServiceError::NotFound("invitation not found".into()),
                ));
            }
            AcceptOutcome::EmailTaken => {
                return Err(refused(
                    Some(&invitation),
                    "email_taken",
                    AuthServiceError::EmailTaken,
                ));
            }
            AcceptOutcome::SeatsExhausted => {
                return Err(refused(
                    Some(&invitation),
                    "max_users",
                    AuthServiceError::SeatsExhausted(
                        "the organization has no free seats on its plan".into(),
                    ),
                ));
            }
        };
        let issued = self.start_session(&user, &org, &caller).await?;
        audit_admin(
            "accept_invitation",
            &caller,
            &org.id,
            &user.id,
            &user.id,
            "ok",
        );
        Ok(issued.into())
    }
}

fn required_user(user: Option<pb::User>) -> Result<pb::User, AuthServiceError> {
    user.ok_or_else(|| AuthServiceError::Internal("member vanished during the change".into()))
}

#[tonic::async_trait]
impl OrganizationService for AuthApi {
    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::GetOrganizationResponse>, Status> {
        let (_, org) = self.member(&request).await?;
        Ok(Response::new(pb::GetOrganizationResponse {
            organization: Some(organization_message(&org)),
        }))
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::UpdateOrganizationResponse>, Status> {
        let (admin, org) = self.admin(&request).await?;
        let name = validate::name("name", &request.get_ref().name)
            .map_err(|violation| AuthServiceError::InvalidArgument(vec![violation]))?;
        let updated = self
            .store
            .rename_organization(&org.id, &name)
            .await
            .map_err(AuthServiceError::from)?
            .ok_or_else(|| AuthServiceError::Unauthenticated("session ended"))?;
        audit_admin(
            "update_organization",
            &Caller::of(&request),
            &org.id,
            &admin.id,
            &org.id,
            "ok",
        );
        Ok(Response::new(pb::UpdateOrganizationResponse {
            organization: Some(organization_message(&updated)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let (_, org) = self.member(&request).await?;
        let limit = page_size(request.get_ref().page_size)?;
        let after = decode_page_token(&request.get_ref().page_token)?;
        let users = self
            .store
            .list_users(&org.id, limit, &after)
            .await
            .map_err(AuthServiceError::from)?;
        let next_page_token = users
            .last()
            .map(|last| encode_page_token(last.created_at, &last.id, users.len() as i64 == limit))
            .unwrap_or_default();
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_message).collect(),
            next_page_token,
        }))
    }

    async fn update_user_role(
        &self,
        request: Request<pb::UpdateUserRoleRequest>,
    ) -> Result<Response<pb::UpdateUserRoleResponse>, Status> {
        let role = role_name("role", request.get_ref().role)?;
        let user_id = request.get_ref().user_id.clone();
        let user = self
            .change_member(
                &request,
                "update_user_role",
                &user_id,
                MemberChange::Role(role.into()),
            )
            .await?;
        Ok(Response::new(pb::UpdateUserRoleResponse {
            user: Some(required_user(user)?),
        }))
    }

    async fn suspend_user(
        &self,
        request: Request<pb::SuspendUserRequest>,
    ) -> Result<Response<pb::SuspendUserResponse>, Status> {
        let user_id = request.get_ref().user_id.clone();
        let user = self
            .change_member(&request, "suspend_user", &user_id, MemberChange::Suspend)
            .await?;
        Ok(Response::new(pb::SuspendUserResponse {
            user: Some(required_user(user)?),
        }))
    }

    async fn reactivate_user(
        &self,
        request: Request<pb::ReactivateUserRequest>,
    ) -> Result<Response<pb::ReactivateUserResponse>, Status> {
        let user_id = request.get_ref().user_id.clone();
        let user = self
            .change_member(
                &request,
                "reactivate_user",
                &user_id,
                MemberChange::Reactivate,
            )
            .await?;
        Ok(Response::new(pb::ReactivateUserResponse {
            user: Some(required_user(user)?),
        }))
    }

    async fn remove_user(
        &self,
        request: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserResponse>, Status> {
        let user_id = request.get_ref().user_id.clone();
        self.change_member(&request, "remove_user", &user_id, MemberChange::Remove)
            .await?;
        Ok(Response::new(pb::RemoveUserResponse {}))
    }

    async fn invite_user(
        &self,
        request: Request<pb::InviteUserRequest>,
    ) -> Result<Response<pb::InviteUserResponse>, Status> {
        let (admin, org) = self.admin(&request).await?;
        let fields = (
            validate::email("email", &request.get_ref().email),
            role_name("role", request.get_ref().role),
        );
        let (email, role) = match fields {
            (Ok(email), Ok(role)) => (email, role),
            (email, role) => {
                let mut violations: Vec<FieldViolation> = email.err().into_iter().collect();
                match role {
                    Err(AuthServiceError::InvalidArgument(more)) => violations.extend(more),
                    Err(other) => return Err(other.into()),
                    Ok(_) => {}
                }
                return Err(AuthServiceError::InvalidArgument(violations).into());
            }
        };
        let now = now_ms();
        let token = new_opaque_token();
        let invitation = InvitationRow {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org.id.clone(),
            email,
            role: role.into(),
            status: "pending".into(),
            invited_by: admin.id.clone(),
            created_at: now,
            expires_at: now + INVITATION_TTL.as_millis() as i64,
        };
        let outcome = self
            .store
            .invite(&invitation, &token_hash(&token), now)
            .await
            .map_err(AuthServiceError::from)?;
        let caller = Caller::of(&request);
        let created = match outcome {
            InviteOutcome::Created(created) => created,
            InviteOutcome::MemberExists => {
                audit_admin(
                    "invite_user",
                    &caller,
                    &org.id,
                    &admin.id,
                    "",
                    "member_exists",
                );
                return Err(AuthServiceError::AlreadyExists(
                    "a member of this organization has this email",
                )
                .into());
            }
            InviteOutcome::PendingExists => {
                audit_admin(
                    "invite_user",
                    &caller,
                    &org.id,
                    &admin.id,
                    "",
                    "pending_exists",
                );
                return Err(AuthServiceError::AlreadyExists(
                    "a pending invitation for this email exists",
                )
                .into());
            }
            InviteOutcome::SeatsExhausted => {
                audit_admin("invite_user", &caller, &org.id, &admin.id, "", "max_users");
                return Err(AuthServiceError::SeatsExhausted(format!(
                    "the {} plan allows {} users, counting pending invitations",
                    org.plan, org.max_users
                ))
                .into());
            }
        };
        audit_admin(
            "invite_user",
            &caller,
            &org.id,
            &admin.id,
            &created.id,
            "ok",
        );
        Ok(Response::new(pb::InviteUserResponse {
            invitation: Some(invitation_message(&created, now, Some(token))),
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        let (_, org) = self.admin(&request).await?;
        let limit = page_size(request.get_ref().page_size)?;
        let after = decode_page_token(&request.get_ref().page_token)?;
        let rows = self
            .store
            .list_invitations(&org.id, limit, &after)
            .await
            .map_err(AuthServiceError::from)?;
        let now = now_ms();
        let next_page_token = rows
            .last()
            .map(|last| encode_page_token(last.created_at, &last.id, rows.len() as i64 == limit))
            .unwrap_or_default();
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: rows
                .iter()
                .map(|row| invitation_message(row, now, None))
                .collect(),
            next_page_token,
        }))
    }

    async fn revoke_invitation(
        &self,
        request: Request<pb::RevokeInvitationRequest>,
    ) -> Result<Response<pb::RevokeInvitationResponse>, Status> {
        let (admin, org) = self.admin(&request).await?;
        let invitation_id = id_of("invitation_id", &request.get_ref().invitation_id)?;
        let now = now_ms();
        let outcome = self
            .store
            .revoke_invitation(&org.id, &invitation_id, now)
            .await
            .map_err(AuthServiceError::from)?;
        let result = match &outcome {
            RevokeOutcome::Revoked(_) => "ok",
            RevokeOutcome::NotFound => "not_found",
            RevokeOutcome::NotPending => "not_pending",
        };
        audit_admin(
            "revoke_invitation",
            &Caller::of(&request),
            &org.id,
            &admin.id,
            &invitation_id,
            result,
        );
        match outcome {
            RevokeOutcome::Revoked(row) => Ok(Response::new(pb::RevokeInvitationResponse {
                invitation: Some(invitation_message(&row, now, None)),
            })),
            RevokeOutcome::NotFound => Err(AuthServiceError::NotFound(format!(
                "invitation not found: {invitation_id}"
            ))
            .into()),
            RevokeOutcome::NotPending => {
                Err(AuthServiceError::FailedPrecondition("invitation is no longer pending").into())
            }
        }
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        Ok(Response::new(self.accept(request).await?))
    }
}
