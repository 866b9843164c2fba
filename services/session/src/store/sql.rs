//! [`SessionStore`] in the service's SQL database, one SQL text for SQLite
//! and PostgreSQL.

use trellis_store::{Database, Page, StoreError, with_pool, write_with_pool};
use uuid::Uuid;

use super::{SessionCounts, SessionKind, SessionRecord, SessionStore};

const COLUMNS: &str = "id, org_id, user_id, kind, created_at, last_activity_at, idle_expires_at, \
     absolute_expires_at, metadata, csrf_token, user_agent, client_address";

trellis_store::row! {
    pub struct SessionRow {
        pub id: String,
        pub org_id: String,
        pub user_id: String,
        pub kind: SessionKind as String,
        pub created_at: i64,
        pub last_activity_at: i64,
        pub idle_expires_at: i64,
        pub absolute_expires_at: i64,
        pub metadata: String,
        pub csrf_token: String,
        pub user_agent: String,
        pub client_address: String,
    }
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    trellis_store::corrupt("session", what, error)
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        let uuid = |what, text: &str| Uuid::parse_str(text).map_err(|e| corrupt(what, e));
        Ok(SessionRecord {
            id: uuid("id", &row.id)?,
            org_id: uuid("org_id", &row.org_id)?,
            user_id: uuid("user_id", &row.user_id)?,
            kind: row.kind,
            created_at: row.created_at,
            last_activity_at: row.last_activity_at,
            idle_expires_at: row.idle_expires_at,
            absolute_expires_at: row.absolute_expires_at,
            metadata: serde_json::from_str(&row.metadata).map_err(|e| corrupt("metadata", e))?,
            csrf_token: row.csrf_token,
            user_agent: row.user_agent,
            client_address: row.client_address,
        })
    }
}

fn records(rows: Vec<SessionRow>) -> Result<Vec<SessionRecord>, StoreError> {
    rows.into_iter().map(SessionRecord::try_from).collect()
}

/// Sessions in `session_sessions`.
#[derive(Clone, Debug)]
pub struct SqlSessions {
    db: Database,
}

impl SqlSessions {
    pub fn new(db: Database) -> Self {
        SqlSessions { db }
    }
}

#[tonic::async_trait]
impl SessionStore for SqlSessions {
    async fn insert(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let metadata =
            serde_json::to_string(&session.metadata).map_err(|e| corrupt("metadata", e))?;
        let sql = format!(
            "INSERT INTO session_sessions ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        write_with_pool!(&self.db, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(session.id.to_string())
                .bind(session.org_id.to_string())
                .bind(session.user_id.to_string())
                .bind(session.kind.as_str())
                .bind(session.created_at)
                .bind(session.last_activity_at)
                .bind(session.idle_expires_at)
                .bind(session.absolute_expires_at)
                .bind(&metadata)
                .bind(&session.csrf_token)
                .bind(&session.user_agent)
                .bind(&session.client_address)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM session_sessions WHERE org_id = $1 AND id = $2 \
             AND idle_expires_at > $3 AND absolute_expires_at > $3"
        );
        let row: Option<SessionRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(id.to_string())
                .bind(now)
                .fetch_optional(pool)
                .await?
        });
        row.map(SessionRecord::try_from).transpose()
    }

    async fn touch(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
        idle_ms: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(session) = self.get(org_id, id, now).await? else {
            return Ok(None);
        };
        let Some(used) = session.used_at(now, idle_ms) else {
            return Ok(Some(session));
        };
        // Conditional on the activity read: of two touches racing, one
        // writes; both answer the session as live.
        write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE session_sessions SET last_activity_at = $1, idle_expires_at = $2 \
                 WHERE org_id = $3 AND id = $4 AND last_activity_at = $5",
            )
            .bind(used.last_activity_at)
            .bind(used.idle_expires_at)
            .bind(org_id.to_string())
            .bind(id.to_string())
            .bind(session.last_activity_at)
            .execute(pool)
            .await?;
        });
        Ok(Some(used))
    }

    async fn list_for_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        now: i64,
        page: &Page,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let (created_at, after_id, first, limit) = page.binds();
        let sql = format!(
            "SELECT {COLUMNS} FROM session_sessions WHERE org_id = $1 AND user_id = $6 \
             AND idle_expires_at > $7 AND absolute_expires_at > $7 \
             AND (created_at < $2 OR (created_at = $2 AND id < $3) OR $4 = 1) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows: Vec<SessionRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(created_at)
                .bind(&after_id)
                .bind(first)
                .bind(limit)
                .bind(user_id.to_string())
                .bind(now)
                .fetch_all(pool)
                .await?
        });
        records(rows)
    }

    async fn delete(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!(
            "DELETE FROM session_sessions WHERE org_id = $1 AND id = $2 RETURNING {COLUMNS}"
        );
        let row: Option<SessionRow> = write_with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        });
        // An expired one is gone too, but was not live to end.
        Ok(row
            .map(SessionRecord::try_from)
            .transpose()?
            .filter(|session| session.is_live(now)))
    }

    async fn delete_for_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        except: Option<Uuid>,
        now: i64,
    ) -> Result<u64, StoreError> {
        let except = except.map(|id| id.to_string()).unwrap_or_default();
        let done = write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM session_sessions WHERE org_id = $1 AND user_id = $2 AND id <> $3 \
                 AND idle_expires_at > $4 AND absolute_expires_at > $4",
            )
            .bind(org_id.to_string())
            .bind(user_id.to_string())
            .bind(&except)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done)
    }

    async fn counts(
        &self,
        org_id: Uuid,
        now: i64,
        active_since: i64,
    ) -> Result<SessionCounts, StoreError> {
        let (total, active, oldest, newest): (i64, i64, Option<i64>, Option<i64>) =
            with_pool!(&self.db, |pool| {
                sqlx::query_as(
                    "SELECT COUNT(*), \
                     COALESCE(SUM(CASE WHEN last_activity_at >= $3 THEN 1 ELSE 0 END), 0), \
                     MIN(created_at), MAX(created_at) \
                     FROM session_sessions WHERE org_id = $1 \
                     AND idle_expires_at > $2 AND absolute_expires_at > $2",
                )
                .bind(org_id.to_string())
                .bind(now)
                .bind(active_since)
                .fetch_one(pool)
                .await?
            });
        Ok(SessionCounts {
            total,
            active,
            oldest_created_at: oldest,
            newest_created_at: newest,
        })
    }

    async fn sweep_expired(&self, now: i64, limit: i64) -> Result<u64, StoreError> {
        let done = write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM session_sessions WHERE id IN (SELECT id FROM session_sessions \
                 WHERE idle_expires_at <= $1 OR absolute_expires_at <= $1 LIMIT $2)",
            )
            .bind(now)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done)
    }
}
