//! Where sessions live: one trait, [`SessionStore`], with a SQL backend
//! (the service's SQLite file by default, PostgreSQL with `--database-url`)
//! and a Redis backend (`--redis-url`).
//! Every call names the organization; no session is read by id alone.

use std::collections::BTreeMap;

use trellis_store::{EmbeddedMigration, Page, ServiceMigrations, StoreError};
use uuid::Uuid;

mod redis;
mod sql;

pub use self::redis::RedisSessions;
pub use sql::SqlSessions;

const SESSIONS: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "sessions",
    sql: include_str!("../migrations/0001_sessions.sql"),
};

/// The Session server's tables.
pub const MIGRATIONS: ServiceMigrations = ServiceMigrations {
    service: "session",
    sqlite: &[SESSIONS],
    postgres: &[SESSIONS],
};

/// A use is written back at most this often per session (Unix ms), so
/// reads do not all become writes; expiry slides from the last write.
pub const ACTIVITY_WRITE_INTERVAL_MS: i64 = 60_000;

trellis_store::stored_names! {
    /// Which kind of session: LOGIN (opened by Login, ending it logs out) or
    /// WORK (opened by CreateSession).
    SessionKind {
        Login = "login",
        Work = "work",
    }
}

/// One session as stored. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub kind: SessionKind,
    pub created_at: i64,
    pub last_activity_at: i64,
    /// Slides with use: last activity plus the idle TTL.
    pub idle_expires_at: i64,
    /// Fixed at creation: however active, the session ends here.
    pub absolute_expires_at: i64,
    pub metadata: BTreeMap<String, String>,
    pub csrf_token: String,
    pub user_agent: String,
    pub client_address: String,
}

impl SessionRecord {
    /// When it ends unless used again.
    pub fn expires_at(&self) -> i64 {
        self.idle_expires_at.min(self.absolute_expires_at)
    }

    pub fn is_live(&self, now: i64) -> bool {
        now < self.expires_at()
    }

    /// This session used at `now`: what to write back, if a write is due
    /// ([`ACTIVITY_WRITE_INTERVAL_MS`] after the last, or a quarter of the
    /// idle TTL when that is shorter), with the idle
    /// expiry slid to `now + idle_ms`, never past the absolute one.
    pub fn used_at(&self, now: i64, idle_ms: i64) -> Option<SessionRecord> {
        // A short idle TTL (seconds, in tests) writes more often, so a
        // session in use never expires between writes.
        if now - self.last_activity_at < ACTIVITY_WRITE_INTERVAL_MS.min(idle_ms / 4) {
            return None;
        }
        Some(SessionRecord {
            last_activity_at: now,
            idle_expires_at: now.saturating_add(idle_ms).min(self.absolute_expires_at),
            ..self.clone()
        })
    }
}

/// Counts over one organization's live sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub total: i64,
    /// Live and used since the `active_since` asked about.
    pub active: i64,
    /// Creation times of the oldest and newest live session.
    pub oldest_created_at: Option<i64>,
    pub newest_created_at: Option<i64>,
}

#[tonic::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn insert(&self, session: &SessionRecord) -> Result<(), StoreError>;

    /// The session if it is live at `now`.
    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// Records a use at `now`: the idle expiry slides to `now + idle_ms`
    /// (never past the absolute one), written only when the last write is
    /// [`ACTIVITY_WRITE_INTERVAL_MS`] old. The session as it is now, if live.
    async fn touch(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
        idle_ms: i64,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// A user's live sessions, newest first.
    async fn list_for_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        now: i64,
        page: &Page,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// Ends a session; the ended one, if it was live.
    async fn delete(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// Ends every live session of a user but `except`; how many.
    async fn delete_for_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        except: Option<Uuid>,
        now: i64,
    ) -> Result<u64, StoreError>;

    async fn counts(
        &self,
        org_id: Uuid,
        now: i64,
        active_since: i64,
    ) -> Result<SessionCounts, StoreError>;

    /// Removes up to `limit` sessions expired at `now`; how many. Backends
    /// that expire entries themselves remove none.
    async fn sweep_expired(&self, now: i64, limit: i64) -> Result<u64, StoreError>;

    /// Whether expired sessions vanish on their own (Redis TTLs), so no
    /// sweeper needs to run.
    fn expires_entries_itself(&self) -> bool {
        false
    }
}
