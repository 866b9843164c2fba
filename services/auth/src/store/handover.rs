//! Auth kept login sessions in its own `auth_login_sessions` table before
//! the Session service owned them. The upgrade hands the live ones over
//! (`trellis migrate`, and any process that migrates both Auth and Session)
//! and then drops the table: these are the two halves Auth provides.

use trellis_store::{Database, StoreError, with_pool, write_with_pool};

trellis_store::row! {
    /// A live session as Auth's old table kept it. Times are Unix ms.
    pub struct LegacyLoginSession {
        pub id: String,
        pub org_id: String,
        pub user_id: String,
        pub created_at: i64,
        pub last_used_at: i64,
        pub idle_expires_at: i64,
        pub absolute_expires_at: i64,
        pub user_agent: String,
        pub client_address: String,
    }
}

const LIVE: &str = "SELECT id, org_id, user_id, created_at, last_used_at, idle_expires_at, \
     absolute_expires_at, user_agent, client_address FROM auth_login_sessions \
     WHERE revoked_at IS NULL AND idle_expires_at > $1 AND absolute_expires_at > $1 \
     AND id > $2 ORDER BY id LIMIT $3";

async fn table_exists(db: &Database) -> Result<bool, StoreError> {
    with_pool!(db, |pool| {
        // Both backends answer this probe; the error of a missing table is
        // backend-specific, so ask the catalog instead of trying.
        let sql = if db.backend_name() == "postgres" {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'auth_login_sessions'"
        } else {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'auth_login_sessions'"
        };
        let found: i64 = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?;
        Ok(found > 0)
    })
}

/// Up to `limit` live sessions still in Auth's old table at `now`, in id
/// order after `after`; `None` once the table is gone (handed over already).
pub async fn legacy_login_sessions(
    db: &Database,
    now: i64,
    after: &str,
    limit: i64,
) -> Result<Option<Vec<LegacyLoginSession>>, StoreError> {
    if !table_exists(db).await? {
        return Ok(None);
    }
    with_pool!(db, |pool| {
        let rows = sqlx::query_as::<_, LegacyLoginSession>(LIVE)
            .bind(now)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?;
        Ok(Some(rows))
    })
}

/// Removes handed-over sessions from the old table, so a repeated or
/// resumed handover never brings back one ended since.
pub async fn remove_legacy_login_sessions(db: &Database, ids: &[String]) -> Result<(), StoreError> {
    for id in ids {
        write_with_pool!(db, |pool| {
            sqlx::query("DELETE FROM auth_login_sessions WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
        });
    }
    Ok(())
}

/// Drops the old table, once every live session in it is handed over.
pub async fn drop_legacy_login_sessions(db: &Database) -> Result<(), StoreError> {
    with_pool!(db, |pool| {
        sqlx::query("DROP TABLE IF EXISTS auth_login_sessions")
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    })
}
