//! `OrganizationService`: the organization, its members and invitations.
//! The caller's role is read from the database, not the token, so a
//! demotion takes effect at once here.

use std::time::Duration;

use tonic_types::FieldViolation;
use trellis::auth::v1 as pb;
use trellis_tenancy::TenantContext;

use super::AuthApi;
use crate::audit::{Caller, audit_admin, audit_throttled};
use crate::convert::{Issued, invitation_message, organization_message, user_message};
use crate::error::{AuthServiceError, Result};
use crate::password::{self, HashPriority};
use crate::store::{
    AcceptOutcome, InvitationRow, InvitationStatus, InviteOutcome, MemberChange, MemberOutcome,
    OrganizationRow, RevokeOutcome, Role, UserRow, UserStatus,
};
use crate::throttle::PublicRpc;
use crate::tokens::{new_opaque_token, token_hash};
use crate::validate;
use trellis_runtime::time::{millis as ms, now_ms};

const INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl AuthApi {
    /// The caller, live and an admin of its organization.
    async fn admin(&self, tenant: &TenantContext) -> Result<(UserRow, OrganizationRow)> {
        let (caller, org) = self.live_caller(tenant).await?;
        if caller.role != Role::Admin {
            return Err(AuthServiceError::AdminRequired);
        }
        Ok((caller, org))
    }

    pub async fn get_organization(&self, tenant: &TenantContext) -> Result<pb::Organization> {
        let (_, org) = self.live_caller(tenant).await?;
        Ok(organization_message(&org))
    }

    /// Internal: an organization's plan limits, for a server enforcing them.
    pub async fn plan_limits(&self, organization_id: &str) -> Result<pb::PlanLimits> {
        let org_id =
            validate::id("organization_id", organization_id).map_err(AuthServiceError::invalid)?;
        let org = self
            .store
            .organization(&org_id)
            .await?
            .ok_or(AuthServiceError::OrganizationNotFound(org_id))?;
        Ok(organization_message(&org)
            .limits
            .expect("every organization message has its limits"))
    }

    pub async fn update_organization(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        input: pb::UpdateOrganizationRequest,
    ) -> Result<pb::Organization> {
        let (admin, org) = self.admin(tenant).await?;
        let name = validate::name("name", &input.name).map_err(AuthServiceError::invalid)?;
        let updated = self
            .store
            .rename_organization(&org.id, &name)
            .await?
            .ok_or(AuthServiceError::SessionEnded)?;
        audit_admin(
            "update_organization",
            caller,
            &org.id,
            &admin.id,
            &org.id,
            "ok",
        );
        Ok(organization_message(&updated))
    }

    pub async fn list_users(
        &self,
        tenant: &TenantContext,
        input: pb::ListUsersRequest,
    ) -> Result<pb::ListUsersResponse> {
        let (_, org) = self.live_caller(tenant).await?;
        let page = validate::page(input.page_size, &input.page_token)
            .map_err(AuthServiceError::invalid)?;
        let users = self.store.list_users(&org.id, &page).await?;
        Ok(pb::ListUsersResponse {
            next_page_token: page.next_token(&users, |user| (user.created_at, &user.id)),
            users: users.iter().map(user_message).collect(),
        })
    }

    pub async fn update_user_role(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        input: pb::UpdateUserRoleRequest,
    ) -> Result<pb::User> {
        // The role is checked before the caller's rights.
        let role = validate::role("role", input.role).map_err(AuthServiceError::invalid)?;
        let change = MemberChange::Role(role);
        let user = self
            .change_member(caller, tenant, "update_user_role", &input.user_id, change)
            .await?;
        changed(user)
    }

    pub async fn suspend_user(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        input: pb::SuspendUserRequest,
    ) -> Result<pb::User> {
        let change = MemberChange::Suspend;
        let user = self
            .change_member(caller, tenant, "suspend_user", &input.user_id, change)
            .await?;
        changed(user)
    }

    pub async fn reactivate_user(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        input: pb::ReactivateUserRequest,
    ) -> Result<pb::User> {
        let change = MemberChange::Reactivate;
        let user = self
            .change_member(caller, tenant, "reactivate_user", &input.user_id, change)
            .await?;
        changed(user)
    }

    pub async fn remove_user(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        input: pb::RemoveUserRequest,
    ) -> Result<()> {
        let change = MemberChange::Remove;
        self.change_member(caller, tenant, "remove_user", &input.user_id, change)
            .await?;
        Ok(())
    }

    /// Changes a member of the caller's organization (admins only); the
    /// member as it is now, unless removed.
    async fn change_member(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        event: &str,
        user_id: &str,
        change: MemberChange,
    ) -> Result<Option<pb::User>> {
        let (admin, org) = self.admin(tenant).await?;
        let user_id = validate::id("user_id", user_id).map_err(AuthServiceError::invalid)?;
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
        audit_admin(event, caller, &org.id, &admin.id, &user_id, result);
        match outcome {
            MemberOutcome::Done(user) => Ok(user.as_ref().map(user_message)),
            MemberOutcome::NotFound => Err(AuthServiceError::UserNotFound(user_id)),
            MemberOutcome::LastAdmin => Err(AuthServiceError::LastAdmin),
            MemberOutcome::NotSuspended => Err(AuthServiceError::NotSuspended),
        }
    }

    pub async fn invite_user(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        input: pb::InviteUserRequest,
    ) -> Result<pb::Invitation> {
        let (admin, org) = self.admin(tenant).await?;
        let (email, role) = match (
            validate::email("email", &input.email),
            validate::role("role", input.role),
        ) {
            (Ok(email), Ok(role)) => (email, role),
            (email, role) => {
                let violations = [email.err(), role.err()].into_iter().flatten().collect();
                return Err(AuthServiceError::InvalidFields(violations));
            }
        };
        let now = now_ms();
        let token = new_opaque_token();
        let invitation = InvitationRow {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org.id.clone(),
            email,
            role,
            status: InvitationStatus::Pending,
            invited_by: admin.id.clone(),
            created_at: now,
            expires_at: now + ms(INVITATION_TTL),
        };
        let outcome = self
            .store
            .invite(&invitation, &token_hash(&token), now)
            .await?;
        let refused = |result: &str, error: AuthServiceError| {
            audit_admin("invite_user", caller, &org.id, &admin.id, "", result);
            Err(error)
        };
        let created = match outcome {
            InviteOutcome::Created(created) => created,
            InviteOutcome::MemberExists => {
                return refused("member_exists", AuthServiceError::MemberExists);
            }
            InviteOutcome::PendingExists => {
                return refused("pending_exists", AuthServiceError::InvitationPending);
            }
            InviteOutcome::SeatsExhausted => {
                return refused(
                    "max_users",
                    AuthServiceError::SeatsExhausted {
                        plan: org.plan.as_str(),
                        max_users: org.max_users,
                    },
                );
            }
        };
        audit_admin("invite_user", caller, &org.id, &admin.id, &created.id, "ok");
        Ok(invitation_message(&created, now, Some(token)))
    }

    pub async fn list_invitations(
        &self,
        tenant: &TenantContext,
        input: pb::ListInvitationsRequest,
    ) -> Result<pb::ListInvitationsResponse> {
        let (_, org) = self.admin(tenant).await?;
        let page = validate::page(input.page_size, &input.page_token)
            .map_err(AuthServiceError::invalid)?;
        let rows = self.store.list_invitations(&org.id, &page).await?;
        let now = now_ms();
        Ok(pb::ListInvitationsResponse {
            next_page_token: page.next_token(&rows, |row| (row.created_at, &row.id)),
            invitations: rows
                .iter()
                .map(|row| invitation_message(row, now, None))
                .collect(),
        })
    }

    pub async fn revoke_invitation(
        &self,
        caller: &Caller,
        tenant: &TenantContext,
        input: pb::RevokeInvitationRequest,
    ) -> Result<pb::Invitation> {
        let (admin, org) = self.admin(tenant).await?;
        let invitation_id = validate::id("invitation_id", &input.invitation_id)
            .map_err(AuthServiceError::invalid)?;
        let now = now_ms();
        let outcome = self
            .store
            .revoke_invitation(&org.id, &invitation_id, now)
            .await?;
        let result = match &outcome {
            RevokeOutcome::Revoked(_) => "ok",
            RevokeOutcome::NotFound => "not_found",
            RevokeOutcome::NotPending => "not_pending",
        };
        audit_admin(
            "revoke_invitation",
            caller,
            &org.id,
            &admin.id,
            &invitation_id,
            result,
        );
        match outcome {
            RevokeOutcome::Revoked(row) => Ok(invitation_message(&row, now, None)),
            RevokeOutcome::NotFound => Err(AuthServiceError::InvitationNotFound(invitation_id)),
            RevokeOutcome::NotPending => Err(AuthServiceError::InvitationNotPending),
        }
    }

    /// AcceptInvitation. Every failure is an audit event: a token is tried
    /// by whoever holds it, and the inviting admin holds it too.
    pub async fn accept_invitation(
        &self,
        caller: &Caller,
        input: pb::AcceptInvitationRequest,
    ) -> Result<Issued> {
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
                return Err(AuthServiceError::InvalidFields(violations));
            }
        };
        // The organization and invitation, once the token names them.
        let refused = |known: Option<&InvitationRow>, result: &str, error: AuthServiceError| {
            let (org, invitation) = known.map_or(("", ""), |row| (&row.org_id, &row.id));
            audit_admin("accept_invitation", caller, org, "", invitation, result);
            error
        };
        if let Err(error) = self.admit_call(PublicRpc::AcceptInvitation, caller).await {
            audit_throttled("accept_invitation", caller);
            return Err(error);
        }
        let now = now_ms();
        let hash = token_hash(&input.token);
        let Some(invitation) = self.store.pending_invitation(&hash, now).await? else {
            return Err(refused(
                None,
                "invalid",
                AuthServiceError::UnknownInvitationToken,
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
            // Both taken from the invitation.
            role: Role::Viewer,
            status: UserStatus::Active,
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
                    AuthServiceError::UnknownInvitationToken,
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
                    AuthServiceError::NoFreeSeats,
                ));
            }
        };
        let issued = self.start_session(&user, &org, caller).await?;
        audit_admin(
            "accept_invitation",
            caller,
            &org.id,
            &user.id,
            &user.id,
            "ok",
        );
        Ok(issued)
    }
}

/// A changed member is answered with its new state; only removal has none.
fn changed(user: Option<pb::User>) -> Result<pb::User> {
    user.ok_or_else(|| AuthServiceError::Internal("member vanished during the change".into()))
}
