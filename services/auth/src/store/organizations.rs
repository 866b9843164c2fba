//! Members and invitations. Every write first takes the organization's
//! lock (a no-op update of its row: a row lock on PostgreSQL, the database
//! write lock on SQLite), so invariants such as "one active admin" and the
//! seat limit hold under concurrent requests.

use sqlx::FromRow;
use trellis_store::{
    BeginWrite, Page, StoreError, is_unique_violation, newest_first, with_pool, write_with_pool,
};

use super::{
    AuthStore, InvitationRow, OrganizationRow, Role, USER_COLUMNS, UserRow, UserStatus, sql,
};

const LOCK_ORG: &str = "UPDATE auth_organizations SET name = name WHERE id = $1";

const INVITATION_COLUMNS: &str =
    "id, org_id, email, role, status, invited_by, created_at, expires_at";

#[derive(Clone, Debug)]
pub enum MemberChange {
    Role(Role),
    Suspend,
    Reactivate,
    Remove,
}

#[derive(Debug)]
pub enum MemberOutcome {
    /// The member after the change (`None` once removed).
    Done(Option<UserRow>),
    NotFound,
    /// It would leave the organization without an active admin.
    LastAdmin,
    NotSuspended,
}

#[derive(Debug)]
pub enum InviteOutcome {
    Created(InvitationRow),
    /// A member of this organization already has the email.
    MemberExists,
    PendingExists,
    SeatsExhausted,
}

#[derive(Debug)]
pub enum RevokeOutcome {
    Revoked(InvitationRow),
    NotFound,
    NotPending,
}

#[derive(Debug)]
pub enum AcceptOutcome {
    Joined(Box<(UserRow, OrganizationRow)>),
    /// Unknown, used, revoked or expired.
    Invalid,
    EmailTaken,
    SeatsExhausted,
}

impl AuthStore {
    pub async fn list_users(&self, org_id: &str, page: &Page) -> Result<Vec<UserRow>, StoreError> {
        let (created_at, id, first_page, limit) = page.binds();
        let sql = newest_first(USER_COLUMNS, "auth_users");
        with_pool!(&self.db, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org_id)
                .bind(created_at)
                .bind(id)
                .bind(first_page)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            Ok(rows
                .iter()
                .map(UserRow::from_row)
                .collect::<Result<_, _>>()?)
        })
    }

    pub async fn rename_organization(
        &self,
        org_id: &str,
        name: &str,
    ) -> Result<Option<OrganizationRow>, StoreError> {
        write_with_pool!(&self.db, |pool| {
            let row = sqlx::query(sql::RENAME_ORGANIZATION)
                .bind(name)
                .bind(org_id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(OrganizationRow::from_row).transpose()?)
        })
    }

    pub async fn change_member(
        &self,
        org_id: &str,
        user_id: &str,
        change: &MemberChange,
    ) -> Result<MemberOutcome, StoreError> {
        let select = format!("SELECT {USER_COLUMNS} FROM auth_users WHERE org_id = $1 AND id = $2");
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(LOCK_ORG).bind(org_id).execute(&mut *tx).await?;
            let current = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                .bind(org_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(current) = current.as_ref().map(UserRow::from_row).transpose()? else {
                return Ok(MemberOutcome::NotFound);
            };
            let active_admin = current.role == Role::Admin && current.status == UserStatus::Active;
            let stops_being_active_admin = match change {
                MemberChange::Role(role) => *role != Role::Admin,
                MemberChange::Suspend | MemberChange::Remove => true,
                MemberChange::Reactivate => false,
            };
            if active_admin && stops_being_active_admin {
                let others: i64 = sqlx::query_scalar(sql::COUNT_OTHER_ACTIVE_ADMINS)
                    .bind(org_id)
                    .bind(user_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if others == 0 {
                    return Ok(MemberOutcome::LastAdmin);
                }
            }
            match change {
                MemberChange::Role(role) => {
                    sqlx::query("UPDATE auth_users SET role = $1 WHERE org_id = $2 AND id = $3")
                        .bind(role.as_str())
                        .bind(org_id)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                MemberChange::Suspend => {
                    sqlx::query(
                        "UPDATE auth_users SET status = 'suspended' WHERE org_id = $1 AND id = $2",
                    )
                    .bind(org_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                }
                MemberChange::Reactivate => {
                    if current.status != UserStatus::Suspended {
                        return Ok(MemberOutcome::NotSuspended);
                    }
                    sqlx::query(
                        "UPDATE auth_users SET status = 'active' WHERE org_id = $1 AND id = $2",
                    )
                    .bind(org_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                }
                MemberChange::Remove => {
                    sqlx::query(
                        "DELETE FROM auth_refresh_tokens WHERE org_id = $1 AND user_id = $2",
                    )
                    .bind(org_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM auth_users WHERE org_id = $1 AND id = $2")
                        .bind(org_id)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    return Ok(MemberOutcome::Done(None));
                }
            }
            let updated = sqlx::query(sqlx::AssertSqlSafe(select))
                .bind(org_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
            let updated = updated.as_ref().map(UserRow::from_row).transpose()?;
            tx.commit().await?;
            Ok(MemberOutcome::Done(updated))
        })
    }

    /// Seats are users plus pending, unexpired invitations.
    pub async fn invite(
        &self,
        invitation: &InvitationRow,
        token_hash: &str,
        now: i64,
    ) -> Result<InviteOutcome, StoreError> {
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(LOCK_ORG)
                .bind(&invitation.org_id)
                .execute(&mut *tx)
                .await?;
            // Only this organization's members: whether the email is
            // registered elsewhere is none of the inviting admin's business.
            let member: Option<String> =
                sqlx::query_scalar("SELECT id FROM auth_users WHERE org_id = $1 AND email = $2")
                    .bind(&invitation.org_id)
                    .bind(&invitation.email)
                    .fetch_optional(&mut *tx)
                    .await?;
            if member.is_some() {
                return Ok(InviteOutcome::MemberExists);
            }
            let pending: i64 = sqlx::query_scalar(sql::COUNT_PENDING_INVITATIONS_FOR_EMAIL)
                .bind(&invitation.org_id)
                .bind(&invitation.email)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            if pending > 0 {
                return Ok(InviteOutcome::PendingExists);
            }
            let seats: (i64, i64, i64) = sqlx::query_as(sql::SEATS)
                .bind(now)
                .bind(&invitation.org_id)
                .fetch_one(&mut *tx)
                .await?;
            if seats.1 + seats.2 >= seats.0 {
                return Ok(InviteOutcome::SeatsExhausted);
            }
            sqlx::query(sql::INSERT_INVITATION)
                .bind(&invitation.id)
                .bind(&invitation.org_id)
                .bind(&invitation.email)
                .bind(invitation.role.as_str())
                .bind(token_hash)
                .bind(&invitation.invited_by)
                .bind(invitation.created_at)
                .bind(invitation.expires_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(InviteOutcome::Created(invitation.clone()))
        })
    }

    pub async fn list_invitations(
        &self,
        org_id: &str,
        page: &Page,
    ) -> Result<Vec<InvitationRow>, StoreError> {
        let (created_at, id, first_page, limit) = page.binds();
        let sql = newest_first(INVITATION_COLUMNS, "auth_invitations");
        with_pool!(&self.db, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org_id)
                .bind(created_at)
                .bind(id)
                .bind(first_page)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            Ok(rows
                .iter()
                .map(InvitationRow::from_row)
                .collect::<Result<_, _>>()?)
        })
    }

    pub async fn revoke_invitation(
        &self,
        org_id: &str,
        invitation_id: &str,
        now: i64,
    ) -> Result<RevokeOutcome, StoreError> {
        let select = format!(
            "SELECT {INVITATION_COLUMNS} FROM auth_invitations WHERE org_id = $1 AND id = $2"
        );
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE auth_invitations SET status = 'revoked' \
                 WHERE org_id = $1 AND id = $2 AND status = 'pending' AND expires_at > $3",
            )
            .bind(org_id)
            .bind(invitation_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(select))
                .bind(org_id)
                .bind(invitation_id)
                .fetch_optional(&mut *tx)
                .await?;
            let row = row.as_ref().map(InvitationRow::from_row).transpose()?;
            tx.commit().await?;
            Ok(match (row, done.rows_affected()) {
                (None, _) => RevokeOutcome::NotFound,
                (Some(row), 1) => RevokeOutcome::Revoked(row),
                (Some(_), _) => RevokeOutcome::NotPending,
            })
        })
    }

    /// The pending, unexpired invitation `token_hash` names: looked up
    /// before the costly password hash, so bogus tokens (and emails already
    /// registered) cost a lookup.
    pub async fn pending_invitation(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<InvitationRow>, StoreError> {
        let sql = format!(
            "SELECT {INVITATION_COLUMNS} FROM auth_invitations \
             WHERE token_hash = $1 AND status = 'pending' AND expires_at > $2"
        );
        with_pool!(&self.db, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(token_hash)
                .bind(now)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(InvitationRow::from_row).transpose()?)
        })
    }

    /// Uses the invitation exactly once and creates its user.
    pub async fn accept_invitation(
        &self,
        token_hash: &str,
        new_user: &UserRow,
        now: i64,
    ) -> Result<AcceptOutcome, StoreError> {
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let found = sqlx::query(sql::PENDING_INVITATION_BY_TOKEN)
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(invite) = found.as_ref().map(InvitationRow::from_row).transpose()? else {
                return Ok(AcceptOutcome::Invalid);
            };
            sqlx::query(LOCK_ORG)
                .bind(&invite.org_id)
                .execute(&mut *tx)
                .await?;
            let claimed = sqlx::query(sql::CLAIM_INVITATION)
                .bind(&invite.id)
                .execute(&mut *tx)
                .await?;
            if claimed.rows_affected() != 1 {
                return Ok(AcceptOutcome::Invalid);
            }
            let org_row = sqlx::query(sql::ORGANIZATION)
                .bind(&invite.org_id)
                .fetch_one(&mut *tx)
                .await?;
            let org = OrganizationRow::from_row(&org_row)?;
            let members: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM auth_users WHERE org_id = $1")
                    .bind(&invite.org_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if members >= org.max_users {
                return Ok(AcceptOutcome::SeatsExhausted);
            }
            let joined = UserRow {
                org_id: invite.org_id.clone(),
                email: invite.email.clone(),
                role: invite.role,
                status: UserStatus::Active,
                created_at: now,
                ..new_user.clone()
            };
            let inserted = insert_user!(joined).execute(&mut *tx).await;
            match inserted {
                Err(error) if is_unique_violation(&error) => return Ok(AcceptOutcome::EmailTaken),
                other => {
                    other?;
                }
            }
            tx.commit().await?;
            Ok(AcceptOutcome::Joined(Box::new((joined, org))))
        })
    }
}
