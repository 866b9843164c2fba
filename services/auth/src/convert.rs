//! Rows to protobuf messages, and the one answer SignUp, Login, Refresh and
//! AcceptInvitation share.

use trellis::auth::v1 as pb;
use trellis_tenancy::Role;

use crate::store::{InvitationRow, OrganizationRow, UserRow};

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A stored role as the token's claim.
pub fn claims_role(role: &str) -> Role {
    match role {
        "admin" => Role::Admin,
        "developer" => Role::Developer,
        _ => Role::Viewer,
    }
}

pub fn role_message(role: &str) -> pb::Role {
    match role {
        "admin" => pb::Role::Admin,
        "developer" => pb::Role::Developer,
        _ => pb::Role::Viewer,
    }
}

pub fn user_message(user: &UserRow) -> pb::User {
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

pub fn organization_message(org: &OrganizationRow) -> pb::Organization {
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

/// An invitation as of `now`; `token` only in the answer that created it.
pub fn invitation_message(row: &InvitationRow, now: i64, token: Option<String>) -> pb::Invitation {
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

/// What SignUp, Login, Refresh and AcceptInvitation answer: their response
/// messages share field names and numbers.
pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub session_id: String,
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
