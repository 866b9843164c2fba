//! Rows to protobuf messages, and the one answer SignUp, Login, Refresh and
//! AcceptInvitation share.

use trellis::auth::v1 as pb;
use trellis_tenancy::Role;

use crate::store::{InvitationRow, InvitationStatus, OrganizationRow, Plan, UserRow, UserStatus};

pub use trellis_runtime::time::timestamp;

pub fn role_message(role: Role) -> pb::Role {
    match role {
        Role::Admin => pb::Role::Admin,
        Role::Developer => pb::Role::Developer,
        Role::Viewer => pb::Role::Viewer,
    }
}

pub fn user_message(user: &UserRow) -> pb::User {
    pb::User {
        user_id: user.id.clone(),
        organization_id: user.org_id.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        role: role_message(user.role) as i32,
        status: match user.status {
            UserStatus::Active => pb::UserStatus::Active,
            UserStatus::Invited => pb::UserStatus::Invited,
            UserStatus::Suspended => pb::UserStatus::Suspended,
        } as i32,
        created_at: Some(timestamp(user.created_at)),
        last_login_at: user.last_login_at.map(timestamp),
    }
}

pub fn organization_message(org: &OrganizationRow) -> pb::Organization {
    pb::Organization {
        organization_id: org.id.clone(),
        name: org.name.clone(),
        slug: org.slug.clone(),
        plan: match org.plan {
            Plan::Free => pb::Plan::Free,
            Plan::Team => pb::Plan::Team,
            Plan::Enterprise => pb::Plan::Enterprise,
        } as i32,
        limits: Some(pb::PlanLimits {
            max_users: org.max_users as i32,
            max_concurrent_runs: org.max_concurrent_runs as i32,
            max_runs_per_month: org.max_runs_per_month as i32,
        }),
        created_at: Some(timestamp(org.created_at)),
    }
}

/// An invitation as of `now`; `token` only in the answer that created it.
pub fn invitation_message(row: &InvitationRow, now: i64, token: Option<String>) -> pb::Invitation {
    let status = match row.status {
        InvitationStatus::Pending if row.expires_at <= now => pb::InvitationStatus::Expired,
        InvitationStatus::Pending => pb::InvitationStatus::Pending,
        InvitationStatus::Accepted => pb::InvitationStatus::Accepted,
        InvitationStatus::Revoked => pb::InvitationStatus::Revoked,
    };
    pb::Invitation {
        invitation_id: row.id.clone(),
        organization_id: row.org_id.clone(),
        email: row.email.clone(),
        role: role_message(row.role) as i32,
        status: status as i32,
        token: token.unwrap_or_default(),
        invited_by: row.invited_by.clone(),
        created_at: Some(timestamp(row.created_at)),
        expires_at: Some(timestamp(row.expires_at)),
    }
}

/// What SignUp, Login, Refresh and AcceptInvitation answer: their response
/// messages share field names and numbers.
pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub session_id: String,
    pub csrf_token: String,
    pub user: pb::User,
    pub organization: pb::Organization,
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
                    csrf_token: issued.csrf_token,
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
