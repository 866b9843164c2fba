//! [`LoginSessions`] in Auth's own `auth_login_sessions` table.

use trellis_store::{Database, StoreError, with_pool};

use super::sql;
use crate::clock::{ms, now_ms};
use crate::sessions::{LoginSessions, NewLoginSession, SessionLifetimes};

#[derive(Clone, Debug)]
pub struct LocalLoginSessions {
    db: Database,
    lifetimes: SessionLifetimes,
}

impl LocalLoginSessions {
    pub fn new(db: Database, lifetimes: SessionLifetimes) -> Self {
        LocalLoginSessions { db, lifetimes }
    }
}

#[tonic::async_trait]
impl LoginSessions for LocalLoginSessions {
    async fn open(&self, session: &NewLoginSession) -> Result<(), StoreError> {
        let now = now_ms();
        let idle_expires_at = now + ms(self.lifetimes.idle);
        let absolute_expires_at = now + ms(self.lifetimes.absolute);
        with_pool!(&self.db, |pool| {
            sqlx::query(sql::OPEN_LOGIN_SESSION)
                .bind(&session.id)
                .bind(&session.org_id)
                .bind(&session.user_id)
                .bind(now)
                .bind(idle_expires_at)
                .bind(absolute_expires_at)
                .bind(&session.user_agent)
                .bind(&session.client_address)
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
        });
        Ok(())
    }

    async fn is_live(&self, org_id: &str, session_id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        with_pool!(&self.db, |pool| {
            let found: Option<String> = sqlx::query_scalar(sql::LIVE_LOGIN_SESSION)
                .bind(org_id)
                .bind(session_id)
                .bind(now)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::from)?;
            Ok(found.is_some())
        })
    }

    async fn touch(&self, org_id: &str, session_id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let idle_expires_at = now + ms(self.lifetimes.idle);
        with_pool!(&self.db, |pool| {
            let done = sqlx::query(sql::TOUCH_LOGIN_SESSION)
                .bind(now)
                .bind(idle_expires_at)
                .bind(org_id)
                .bind(session_id)
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
            Ok(done.rows_affected() == 1)
        })
    }

    async fn end(
        &self,
        org_id: &str,
        user_id: &str,
        session_id: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        with_pool!(&self.db, |pool| {
            let done = sqlx::query(
                "UPDATE auth_login_sessions SET revoked_at = $1, revoke_reason = $2 \
                 WHERE org_id = $3 AND user_id = $4 AND id = $5 AND revoked_at IS NULL",
            )
            .bind(now_ms())
            .bind(reason)
            .bind(org_id)
            .bind(user_id)
            .bind(session_id)
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
            Ok(done.rows_affected() == 1)
        })
    }

    async fn end_all(&self, org_id: &str, user_id: &str, reason: &str) -> Result<u64, StoreError> {
        with_pool!(&self.db, |pool| {
            let done = sqlx::query(
                "UPDATE auth_login_sessions SET revoked_at = $1, revoke_reason = $2 \
                 WHERE org_id = $3 AND user_id = $4 AND revoked_at IS NULL",
            )
            .bind(now_ms())
            .bind(reason)
            .bind(org_id)
            .bind(user_id)
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
            Ok(done.rows_affected())
        })
    }
}
