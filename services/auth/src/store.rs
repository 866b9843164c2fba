//! Auth's tables, on SQLite or PostgreSQL with the same SQL text. Every
//! query after login is scoped by organization.

use sqlx::FromRow;
use trellis_store::{
    BeginWrite, Database, EmbeddedMigration, ServiceMigrations, StoreError, is_unique_violation,
    with_pool, write_with_pool,
};

const ACCOUNTS: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "accounts",
    sql: include_str!("../migrations/0001_accounts.sql"),
};
const INVITATIONS: EmbeddedMigration = EmbeddedMigration {
    version: 2,
    description: "invitations",
    sql: include_str!("../migrations/0002_invitations.sql"),
};
const SESSIONS_BOUNDARY: &str = "sessions boundary";
const SERVICE_ACCOUNTS: EmbeddedMigration = EmbeddedMigration {
    version: 4,
    description: "service accounts",
    sql: include_str!("../migrations/0004_service_accounts.sql"),
};

pub const MIGRATIONS: ServiceMigrations = ServiceMigrations {
    service: "auth",
    sqlite: &[
        ACCOUNTS,
        INVITATIONS,
        EmbeddedMigration {
            version: 3,
            description: SESSIONS_BOUNDARY,
            sql: include_str!("../migrations/0003_sessions_boundary.sqlite.sql"),
        },
        SERVICE_ACCOUNTS,
    ],
    postgres: &[
        ACCOUNTS,
        INVITATIONS,
        EmbeddedMigration {
            version: 3,
            description: SESSIONS_BOUNDARY,
            sql: include_str!("../migrations/0003_sessions_boundary.postgres.sql"),
        },
        SERVICE_ACCOUNTS,
    ],
};

/// The insert of a user row, its fields bound, ready for either backend.
macro_rules! insert_user {
    ($user:expr) => {
        sqlx::query(sql::INSERT_USER)
            .bind(&$user.id)
            .bind(&$user.org_id)
            .bind(&$user.email)
            .bind(&$user.name)
            .bind(&$user.password_hash)
            .bind($user.role.as_str())
            .bind($user.status.as_str())
            .bind($user.created_at)
    };
}

mod handover;
mod organizations;
mod rows;
mod service_accounts;
mod sql;

pub use handover::{
    LegacyLoginSession, drop_legacy_login_sessions, legacy_login_sessions,
    remove_legacy_login_sessions,
};
pub use organizations::{AcceptOutcome, InviteOutcome, MemberChange, MemberOutcome, RevokeOutcome};
pub use rows::{InvitationRow, InvitationStatus, OrganizationRow, Plan, Role, UserRow, UserStatus};
pub use service_accounts::{ServiceAccountRow, ServiceAccounts, ServiceScope};

/// The first refresh token of a login session.
#[derive(Clone, Debug)]
pub struct NewRefreshToken {
    pub hash: String,
    pub session_id: String,
    pub org_id: String,
    pub user_id: String,
    pub now: i64,
    pub expires_at: i64,
}

/// Which session a refresh token belongs to.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenOwner {
    pub session_id: String,
    pub org_id: String,
    pub user_id: String,
}

/// What a presented refresh token is, before any exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum PresentedToken {
    /// Not exchanged yet and not expired.
    Unused(TokenOwner),
    /// Exchanged before: presenting it again is reuse.
    Used(TokenOwner),
    /// Unknown or expired.
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Exchanged for the new token; its session must still be live.
    Rotated(TokenOwner),
    /// An already-exchanged token: its whole session must end.
    Reused(TokenOwner),
    /// Unknown or expired.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum SignUpError {
    #[error("email already registered")]
    EmailTaken,
    /// Another sign-up kept taking the free slug (PostgreSQL only; SQLite
    /// writers queue for the lock).
    #[error("no free organization slug after {0} tries")]
    SlugContended(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One sign-up's view of the slugs can go stale before it inserts.
const SLUG_TRIES: u32 = 5;

pub(crate) const ORG_COLUMNS: &str =
    "id, name, slug, plan, max_users, max_concurrent_runs, max_runs_per_month, created_at";
pub(crate) const USER_COLUMNS: &str =
    "id, org_id, email, name, password_hash, role, status, created_at, last_login_at";

#[derive(Clone, Debug)]
pub struct AuthStore {
    db: Database,
}

impl AuthStore {
    pub fn new(db: Database) -> Self {
        AuthStore { db }
    }

    /// Creates the organization and its first user in one transaction. The
    /// slug gets a numeric suffix when taken.
    /// Creates the organization, with the first free slug, and its admin.
    pub async fn sign_up(
        &self,
        org: &OrganizationRow,
        admin: &UserRow,
    ) -> Result<OrganizationRow, SignUpError> {
        for _ in 0..SLUG_TRIES {
            match self.try_sign_up(org, admin).await? {
                Some(org) => return Ok(org),
                None => continue, // a concurrent sign-up took the slug
            }
        }
        Err(SignUpError::SlugContended(SLUG_TRIES))
    }

    async fn try_sign_up(
        &self,
        org: &OrganizationRow,
        admin: &UserRow,
    ) -> Result<Option<OrganizationRow>, SignUpError> {
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await.map_err(StoreError::from)?;
            let taken: Vec<String> = sqlx::query_scalar(
                "SELECT slug FROM auth_organizations WHERE slug = $1 OR slug LIKE $2",
            )
            .bind(&org.slug)
            .bind(format!("{}-%", org.slug))
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            let slug = (1..)
                .map(|n| {
                    if n == 1 {
                        org.slug.clone()
                    } else {
                        format!("{}-{n}", org.slug)
                    }
                })
                .find(|candidate| !taken.contains(candidate))
                .expect("some suffix is free");
            let org = OrganizationRow {
                slug,
                ..org.clone()
            };
            let inserted = sqlx::query(sql::INSERT_ORGANIZATION)
                .bind(&org.id)
                .bind(&org.name)
                .bind(&org.slug)
                .bind(org.plan.as_str())
                .bind(org.max_users)
                .bind(org.max_concurrent_runs)
                .bind(org.max_runs_per_month)
                .bind(org.created_at)
                .execute(&mut *tx)
                .await;
            match inserted {
                Err(error) if is_unique_violation(&error) => return Ok(None),
                other => {
                    other.map_err(StoreError::from)?;
                }
            }
            // The admin's org_id is the organization's id: only its slug
            // may have changed above.
            insert_user!(admin).execute(&mut *tx).await.map_err(|e| {
                if is_unique_violation(&e) {
                    SignUpError::EmailTaken
                } else {
                    StoreError::from(e).into()
                }
            })?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok(Some(org))
        })
    }

    /// Login is the one lookup not scoped by organization: emails are unique
    /// across Trellis and the organization is what it finds.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_users WHERE email = $1");
        with_pool!(&self.db, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(email)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(UserRow::from_row).transpose()?)
        })
    }

    pub async fn user(&self, org_id: &str, user_id: &str) -> Result<Option<UserRow>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_users WHERE org_id = $1 AND id = $2");
        with_pool!(&self.db, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org_id)
                .bind(user_id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(UserRow::from_row).transpose()?)
        })
    }

    pub async fn organization(&self, org_id: &str) -> Result<Option<OrganizationRow>, StoreError> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM auth_organizations WHERE id = $1");
        with_pool!(&self.db, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org_id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(OrganizationRow::from_row).transpose()?)
        })
    }

    /// Stores a login's first refresh token and records the login on the user.
    pub async fn record_login(&self, token: &NewRefreshToken) -> Result<(), StoreError> {
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(sql::INSERT_REFRESH_TOKEN)
                .bind(&token.hash)
                .bind(&token.session_id)
                .bind(&token.org_id)
                .bind(&token.user_id)
                .bind(token.now)
                .bind(token.expires_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE auth_users SET last_login_at = $1 WHERE org_id = $2 AND id = $3")
                .bind(token.now)
                .bind(&token.org_id)
                .bind(&token.user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn refresh_token(&self, hash: &str, now: i64) -> Result<PresentedToken, StoreError> {
        with_pool!(&self.db, |pool| {
            let row: Option<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
                "SELECT session_id, org_id, user_id, expires_at, rotated_at \
                 FROM auth_refresh_tokens WHERE token_hash = $1",
            )
            .bind(hash)
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some((session_id, org_id, user_id, _, Some(_))) => {
                    PresentedToken::Used(TokenOwner {
                        session_id,
                        org_id,
                        user_id,
                    })
                }
                Some((session_id, org_id, user_id, expires_at, None)) if expires_at > now => {
                    PresentedToken::Unused(TokenOwner {
                        session_id,
                        org_id,
                        user_id,
                    })
                }
                _ => PresentedToken::Unknown,
            })
        })
    }

    /// Exchanges a refresh token for a new one, exactly once. An exchanged
    /// token presented again is reported as reuse.
    pub async fn rotate_refresh(
        &self,
        presented_hash: &str,
        new_hash: &str,
        now: i64,
        new_expires_at: i64,
    ) -> Result<Refreshed, StoreError> {
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            // Only one of two concurrent exchanges can match `rotated_at IS NULL`.
            let claimed: Option<(String, String, String)> = sqlx::query_as(
                "UPDATE auth_refresh_tokens SET rotated_at = $1 \
                 WHERE token_hash = $2 AND rotated_at IS NULL AND expires_at > $1 \
                 RETURNING session_id, org_id, user_id",
            )
            .bind(now)
            .bind(presented_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((session_id, org_id, user_id)) = claimed else {
                let rotated: Option<(String, String, String, Option<i64>)> =
                    sqlx::query_as(sql::REFRESH_TOKEN_OWNER)
                        .bind(presented_hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                return Ok(match rotated {
                    Some((session_id, org_id, user_id, Some(_))) => Refreshed::Reused(TokenOwner {
                        session_id,
                        org_id,
                        user_id,
                    }),
                    _ => Refreshed::Invalid,
                });
            };
            sqlx::query(sql::INSERT_REFRESH_TOKEN)
                .bind(new_hash)
                .bind(&session_id)
                .bind(&org_id)
                .bind(&user_id)
                .bind(now)
                .bind(new_expires_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Refreshed::Rotated(TokenOwner {
                session_id,
                org_id,
                user_id,
            }))
        })
    }

    pub async fn set_password_hash(
        &self,
        org_id: &str,
        user_id: &str,
        hash: &str,
    ) -> Result<(), StoreError> {
        write_with_pool!(&self.db, |pool| {
            sqlx::query("UPDATE auth_users SET password_hash = $1 WHERE org_id = $2 AND id = $3")
                .bind(hash)
                .bind(org_id)
                .bind(user_id)
                .execute(pool)
                .await?;
            Ok(())
        })
    }
}
