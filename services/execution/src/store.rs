//! The durable execution queue in the Execution server's database (one SQL
//! text for SQLite and PostgreSQL but for the row locks PostgreSQL takes).
//! Users' calls name their organization; workers' calls name a lease id
//! (random, so unguessable), since a worker serves every organization.
//!
//! Leasing is fair: organizations with eligible work are served least
//! recently served first, one execution each per round, so a backlog of one
//! cannot delay another by more than a few rounds; and never beyond an
//! organization's concurrency limit. On SQLite every lease runs alone
//! (`BEGIN IMMEDIATE`); on PostgreSQL a lease skips rows and organizations
//! another lease holds (`FOR UPDATE SKIP LOCKED`, a per-organization
//! transaction lock), so no execution goes to two workers and no limit is
//! passed by leases racing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trellis_store::{
    BeginWrite, Database, EmbeddedMigration, FanOut, Page, ServiceMigrations, StoreError,
    is_unique_violation, with_pool, write_with_pool,
};
use uuid::Uuid;

const QUEUE_SQLITE: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "queue",
    sql: include_str!("../migrations/0001_queue.sqlite.sql"),
};
const QUEUE_POSTGRES: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "queue",
    sql: include_str!("../migrations/0001_queue.postgres.sql"),
};
const EVENTS_AND_LOGS: EmbeddedMigration = EmbeddedMigration {
    version: 2,
    description: "events and logs",
    sql: include_str!("../migrations/0002_events_and_logs.sql"),
};

const LEASE_ORDER: EmbeddedMigration = EmbeddedMigration {
    version: 3,
    description: "lease order",
    sql: include_str!("../migrations/0003_lease_order.sql"),
};

pub const MIGRATIONS: ServiceMigrations = ServiceMigrations {
    service: "execution",
    sqlite: &[QUEUE_SQLITE, EVENTS_AND_LOGS, LEASE_ORDER],
    postgres: &[QUEUE_POSTGRES, EVENTS_AND_LOGS, LEASE_ORDER],
};

trellis_store::stored_names! {
    #[derive(Serialize, Deserialize)]
    /// Where an execution stands. PENDING and RUNNING are the live ones.
    State {
        Pending = "pending",
        Running = "running",
        Passed = "passed",
        Failed = "failed",
        Error = "error",
        Unstable = "unstable",
        Analyzing = "analyzing",
        Cancelled = "cancelled",
    }
}

impl State {
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

/// What to run, as the creator gave it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub image: String,
    pub command: Vec<String>,
    pub folder: String,
    pub tests: Vec<String>,
    pub config: BTreeMap<String, String>,
}

/// One execution as stored. Times are Unix ms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub created_by: Uuid,
    pub queue: String,
    pub state: State,
    /// Of the current or last attempt; 0 before the first.
    pub attempt: i64,
    pub max_attempts: i64,
    pub priority: i64,
    pub spec: Spec,
    pub payload: Vec<u8>,
    pub output: Vec<u8>,
    pub error: String,
    pub analysis: String,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// A pending execution is eligible from here (backoff between attempts).
    pub next_attempt_at: i64,
    pub lease_id: Option<Uuid>,
    pub lease_expires_at: Option<i64>,
    pub updated_at: i64,
    /// Enqueued by a Trellis server: outside the plan's run limits.
    pub system: bool,
}

const COLUMNS: &str = "id, org_id, created_by, queue, status, attempt, max_attempts, priority, \
     spec, payload, output, error, analysis, cancel_requested, idempotency_key, created_at, \
     started_at, finished_at, next_attempt_at, lease_id, lease_expires_at, updated_at, system";

trellis_store::row! {
    pub struct ExecutionRow {
        pub id: String,
        pub org_id: String,
        pub created_by: String,
        pub queue: String,
        pub status: State as String,
        pub attempt: i64,
        pub max_attempts: i64,
        pub priority: i64,
        pub spec: String,
        pub payload: Vec<u8>,
        pub output: Vec<u8>,
        pub error: String,
        pub analysis: String,
        pub cancel_requested: bool,
        pub idempotency_key: Option<String>,
        pub created_at: i64,
        pub started_at: Option<i64>,
        pub finished_at: Option<i64>,
        pub next_attempt_at: i64,
        pub lease_id: Option<String>,
        pub lease_expires_at: Option<i64>,
        pub updated_at: i64,
        pub system: bool,
    }
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    trellis_store::corrupt("execution", what, error)
}

fn uuid(what: &str, text: &str) -> Result<Uuid, StoreError> {
    trellis_store::stored_uuid("execution", what, text)
}

impl TryFrom<ExecutionRow> for ExecutionRecord {
    type Error = StoreError;

    fn try_from(row: ExecutionRow) -> Result<Self, StoreError> {
        Ok(ExecutionRecord {
            id: uuid("id", &row.id)?,
            org_id: uuid("org id", &row.org_id)?,
            created_by: uuid("creator", &row.created_by)?,
            queue: row.queue,
            state: row.status,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            priority: row.priority,
            spec: serde_json::from_str(&row.spec).map_err(|e| corrupt("spec", e))?,
            payload: row.payload,
            output: row.output,
            error: row.error,
            analysis: row.analysis,
            cancel_requested: row.cancel_requested,
            idempotency_key: row.idempotency_key,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            next_attempt_at: row.next_attempt_at,
            lease_id: row
                .lease_id
                .as_deref()
                .map(|l| uuid("lease", l))
                .transpose()?,
            lease_expires_at: row.lease_expires_at,
            updated_at: row.updated_at,
            system: row.system,
        })
    }
}

fn records(rows: Vec<ExecutionRow>) -> Result<Vec<ExecutionRecord>, StoreError> {
    rows.into_iter().map(ExecutionRecord::try_from).collect()
}

/// What CreateExecution made.
#[derive(Debug)]
pub enum Created {
    New(ExecutionRecord),
    /// The organization used this idempotency key before: its execution.
    Existing(ExecutionRecord),
    /// The month's allowance is used up.
    AllowanceUsed,
}

#[derive(Debug)]
pub enum Cancelled {
    /// Was pending: cancelled now.
    Now(ExecutionRecord),
    /// Running: its worker hears of it at its next heartbeat.
    Requested(ExecutionRecord),
    AlreadyFinal(ExecutionRecord),
    NotFound,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    NotFinal,
    NotFound,
}

/// How a lease call is limited.
pub struct LeaseAsk<'a> {
    pub queues: &'a [String],
    pub max_items: usize,
    pub lease_ms: i64,
    pub now: i64,
}

/// Rounds of one-per-organization picks a lease call makes at most, so one
/// call's cost is bounded whatever the backlog.
const MAX_ROUNDS: usize = 100;
/// Organizations one lease call looks at.
const MAX_ORGS_PER_LEASE: i64 = 100;

/// (organization, queue) pairs with pending work, least recently served
/// first, from the ready set (not the backlog). Binds: `$1` how many, `$2..`
/// the queue names.
fn turns_sql(queues: usize) -> String {
    let queue_list: Vec<String> = (0..queues).map(|n| format!("${}", n + 2)).collect();
    format!(
        "SELECT org_id, queue FROM execution_turns WHERE pending > 0 AND queue IN ({}) \
         ORDER BY served_at, org_id LIMIT $1",
        queue_list.join(", ")
    )
}

/// Moves an (organization, queue) pair's pending count by `$3` (upserting
/// it); binds `$1` organization, `$2` queue, `$3` the change.
const PENDING_BY: &str = "INSERT INTO execution_turns (org_id, queue, served_at, pending) \
     VALUES ($1, $2, 0, $3) ON CONFLICT (org_id, queue) \
     DO UPDATE SET pending = execution_turns.pending + $3";

/// An organization's allowance for a calendar month.
#[derive(Clone, Copy, Debug)]
pub struct MonthAllowance {
    pub month_start: i64,
    pub limit: i64,
}

/// One change of an execution, as WatchExecutions delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionEvent {
    pub event_id: i64,
    pub occurred_at: i64,
    /// Without payload and output.
    pub execution: ExecutionRecord,
}

/// One stored log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub sequence: i64,
    pub logged_at: i64,
    pub attempt: i64,
    pub line: String,
}

/// Which events of an organization a watcher can still be given.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Events after the asked id are all retained.
    From(i64),
    /// Some were pruned, or the id was never handed out: re-list.
    OutOfRange { oldest_retained: i64, last: i64 },
}

/// What AppendLogs did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// The sequence number of the last line stored.
    Through(i64),
    /// The execution holds [`MAX_LOG_LINES`] lines already.
    Full,
    LeaseNotFound,
}

/// Lines one execution may hold over all its attempts.
pub const MAX_LOG_LINES: i64 = 100_000;

/// An organization's executions topic and an execution's logs topic.
pub fn events_topic(org_id: Uuid) -> String {
    format!("exec:{org_id}")
}

pub fn logs_topic(execution_id: Uuid) -> String {
    format!("logs:{execution_id}")
}

/// Appends one event per changed execution inside the open transaction
/// `$tx` (at most [`MAX_EVENTS_PER_TRANSACTION`]), organizations in id order
/// (one lock order for the counters), each organization's in one counter
/// bump and one insert; evaluates to what to publish once committed. The
/// counter is bumped just before its events so its row lock is held only
/// to the commit.
macro_rules! append_events {
    ($tx:expr, $changed:expr, $now:expr) => {{
        let mut changed: Vec<&ExecutionRecord> = $changed.iter().collect();
        debug_assert!(changed.len() <= MAX_EVENTS_PER_TRANSACTION);
        changed.sort_by_key(|e| e.org_id);
        let mut published: Vec<Published> = Vec::with_capacity(changed.len());
        for batch in changed.chunk_by(|a, b| a.org_id == b.org_id) {
            let org = batch[0].org_id;
            let count = batch.len() as i64;
            let (last,): (i64,) = sqlx::query_as(
                "INSERT INTO execution_event_counters (org_id, last_event_id) VALUES ($1, $2) \
                 ON CONFLICT (org_id) DO UPDATE \
                 SET last_event_id = execution_event_counters.last_event_id + $2 \
                 RETURNING last_event_id",
            )
            .bind(org.to_string())
            .bind(count)
            .fetch_one(&mut *$tx)
            .await?;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO execution_events (org_id, event_id, execution_id, occurred_at, \
                 snapshot) ",
            );
            let mut event_id = last - count;
            let mut rows = Vec::with_capacity(batch.len());
            for execution in batch {
                event_id += 1;
                rows.push((event_id, execution, snapshot(execution)?));
                published.push(Published {
                    org_id: org,
                    event_id,
                    execution_id: execution.id,
                    is_final: execution.state.is_final(),
                });
            }
            insert.push_values(rows, |mut row, (event_id, execution, snapshot)| {
                row.push_bind(org.to_string())
                    .push_bind(event_id)
                    .push_bind(execution.id.to_string())
                    .push_bind($now)
                    .push_bind(snapshot);
            });
            insert.build().execute(&mut *$tx).await?;
        }
        published
    }};
}

/// Events one transaction appends at most (a lease of the most items), so
/// one insert's binds stay far below either database's limit.
const MAX_EVENTS_PER_TRANSACTION: usize = 100;

/// An event committed, to announce.
struct Published {
    org_id: Uuid,
    event_id: i64,
    execution_id: Uuid,
    is_final: bool,
}

fn snapshot(execution: &ExecutionRecord) -> Result<String, StoreError> {
    let mut light = execution.clone();
    light.payload = Vec::new();
    light.output = Vec::new();
    serde_json::to_string(&light).map_err(|e| corrupt("snapshot", e))
}

#[derive(Clone)]
pub struct Queue {
    db: Database,
    fanout: Arc<dyn FanOut>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("db", &self.db).finish()
    }
}

impl Queue {
    /// Changes are announced on `fanout` once committed.
    pub fn new(db: Database, fanout: Arc<dyn FanOut>) -> Self {
        Queue { db, fanout }
    }

    pub fn fanout(&self) -> &Arc<dyn FanOut> {
        &self.fanout
    }

    /// Wakes watchers of the organizations (and log followers of
    /// executions that became final). A lost wake-up delays a watcher
    /// until the next one, never loses an event: they read the database.
    async fn announce(&self, published: &[Published]) {
        for event in published {
            let id = event.event_id.to_string();
            let mut topics = vec![events_topic(event.org_id)];
            if event.is_final {
                topics.push(logs_topic(event.execution_id));
            }
            for topic in topics {
                if let Err(error) = self.fanout.publish(&topic, &id).await {
                    tracing::warn!(%error, "announcing an execution change failed");
                }
            }
        }
    }

    fn postgres(&self) -> bool {
        matches!(self.db, Database::Postgres(_))
    }

    pub async fn create(&self, execution: &ExecutionRecord) -> Result<Created, StoreError> {
        self.create_within(execution, None).await
    }

    /// Executions waiting to be leased, every organization and queue (the
    /// per-pair counts leasing keeps): the queue-depth gauge.
    pub async fn pending_total(&self) -> Result<i64, StoreError> {
        let (total,): (i64,) = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT CAST(COALESCE(SUM(pending), 0) AS BIGINT) FROM execution_turns")
                .fetch_one(pool)
                .await
        })?;
        Ok(total)
    }

    /// Creates, counting it in the month's `allowance` when one is given
    /// (refused once used up; exact, since the count is a row the
    /// transaction holds).
    pub async fn create_within(
        &self,
        execution: &ExecutionRecord,
        allowance: Option<MonthAllowance>,
    ) -> Result<Created, StoreError> {
        let spec = serde_json::to_string(&execution.spec).map_err(|e| corrupt("spec", e))?;
        let sql = format!(
            "INSERT INTO execution_executions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
        );
        let org = execution.org_id.to_string();
        // In a block of its own: a unique violation is an answer here.
        let inserted: Result<Option<Vec<Published>>, StoreError> = with_pool!(&self.db, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                if let Some(allowance) = allowance {
                    macro_rules! count_one {
                    () => {
                        sqlx::query(
                            "UPDATE execution_month_runs SET created = created + 1 \
                             WHERE org_id = $1 AND month_start = $2 AND created < $3",
                        )
                        .bind(&org)
                        .bind(allowance.month_start)
                        .bind(allowance.limit)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1
                    };
                }
                    let mut counted = count_one!();
                    if !counted {
                        // Used up, or the first ask this month (or since the
                        // upgrade): then count the month once and try again.
                        let seeded: Option<(i64,)> = sqlx::query_as(
                            "SELECT created FROM execution_month_runs \
                         WHERE org_id = $1 AND month_start = $2",
                        )
                        .bind(&org)
                        .bind(allowance.month_start)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if seeded.is_none() {
                            let (count,): (i64,) = sqlx::query_as(
                                "SELECT COUNT(*) FROM execution_executions WHERE org_id = $1 \
                             AND created_at >= $2 AND system = FALSE",
                            )
                            .bind(&org)
                            .bind(allowance.month_start)
                            .fetch_one(&mut *tx)
                            .await?;
                            sqlx::query(
                                "INSERT INTO execution_month_runs (org_id, month_start, created) \
                             VALUES ($1, $2, $3) ON CONFLICT (org_id, month_start) DO NOTHING",
                            )
                            .bind(&org)
                            .bind(allowance.month_start)
                            .bind(count)
                            .execute(&mut *tx)
                            .await?;
                        }
                        // Seeded now: by this call, or (PostgreSQL, read
                        // committed) by another first create of the month
                        // since the update above. Count again.
                        if seeded.is_none_or(|(created,)| created < allowance.limit) {
                            counted = count_one!();
                        }
                    }
                    if !counted {
                        return Ok(None);
                    }
                }
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(execution.id.to_string())
                    .bind(execution.org_id.to_string())
                    .bind(execution.created_by.to_string())
                    .bind(&execution.queue)
                    .bind(execution.state.as_str())
                    .bind(execution.attempt)
                    .bind(execution.max_attempts)
                    .bind(execution.priority)
                    .bind(&spec)
                    .bind(&execution.payload)
                    .bind(&execution.output)
                    .bind(&execution.error)
                    .bind(&execution.analysis)
                    .bind(execution.cancel_requested)
                    .bind(&execution.idempotency_key)
                    .bind(execution.created_at)
                    .bind(execution.started_at)
                    .bind(execution.finished_at)
                    .bind(execution.next_attempt_at)
                    .bind(execution.lease_id.map(|l| l.to_string()))
                    .bind(execution.lease_expires_at)
                    .bind(execution.updated_at)
                    .bind(execution.system)
                    .execute(&mut *tx)
                    .await?;
                if execution.state == State::Pending {
                    sqlx::query(PENDING_BY)
                        .bind(&org)
                        .bind(&execution.queue)
                        .bind(1_i64)
                        .execute(&mut *tx)
                        .await?;
                }
                let published =
                    append_events!(tx, std::slice::from_ref(execution), execution.created_at);
                tx.commit().await?;
                Ok(Some(published))
            }
            .await
        });
        match inserted {
            Ok(Some(published)) => {
                self.announce(&published).await;
                Ok(Created::New(execution.clone()))
            }
            Ok(None) => Ok(Created::AllowanceUsed),
            Err(StoreError::Sqlx(error))
                if is_unique_violation(&error) && execution.idempotency_key.is_some() =>
            {
                let key = execution.idempotency_key.as_deref().unwrap_or_default();
                match self.by_key(execution.org_id, key).await? {
                    Some(existing) => Ok(Created::Existing(existing)),
                    None => Err(error.into()),
                }
            }
            Err(error) => Err(error),
        }
    }

    async fn by_key(&self, org_id: Uuid, key: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM execution_executions WHERE org_id = $1 AND idempotency_key = $2"
        );
        let row: Option<ExecutionRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        row.map(ExecutionRecord::try_from).transpose()
    }

    pub async fn get(&self, org_id: Uuid, id: Uuid) -> Result<Option<ExecutionRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM execution_executions WHERE org_id = $1 AND id = $2");
        let row: Option<ExecutionRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        });
        row.map(ExecutionRecord::try_from).transpose()
    }

    /// Newest first, optionally of one state and one queue; the
    /// platform's own executions only with `include_system`.
    pub async fn list(
        &self,
        org_id: Uuid,
        state: Option<State>,
        queue: Option<&str>,
        include_system: bool,
        page: &Page,
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        let (cursor_at, cursor_id, first, limit) = page.binds();
        let sql = format!(
            "SELECT {COLUMNS} FROM execution_executions WHERE org_id = $1 \
             AND ($6 = '' OR status = $6) AND ($7 = '' OR queue = $7) \
             AND ($8 OR system = FALSE) \
             AND ($4 = 1 OR created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows: Vec<ExecutionRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(cursor_at)
                .bind(&cursor_id)
                .bind(first)
                .bind(limit)
                .bind(state.map_or("", State::as_str))
                .bind(queue.unwrap_or(""))
                .bind(include_system)
                .fetch_all(pool)
                .await?
        });
        records(rows)
    }

    pub async fn cancel(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<Cancelled, StoreError> {
        let sql = format!(
            "UPDATE execution_executions SET \
             status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END, \
             finished_at = CASE WHEN status = 'pending' THEN $1 ELSE finished_at END, \
             cancel_requested = TRUE, updated_at = $1 \
             WHERE org_id = $2 AND id = $3 AND status IN ('pending', 'running') \
             RETURNING {COLUMNS}"
        );
        let changed: Option<ExecutionRecord> = with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let row: Option<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(org_id.to_string())
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let changed = row.map(ExecutionRecord::try_from).transpose()?;
            if let Some(done) = changed.as_ref().filter(|e| e.state == State::Cancelled) {
                sqlx::query(PENDING_BY)
                    .bind(done.org_id.to_string())
                    .bind(&done.queue)
                    .bind(-1_i64)
                    .execute(&mut *tx)
                    .await?;
            }
            let published = append_events!(tx, changed.as_slice(), now);
            tx.commit().await?;
            self.announce(&published).await;
            changed
        });
        Ok(match changed {
            Some(done) if done.state == State::Cancelled => Cancelled::Now(done),
            Some(running) => Cancelled::Requested(running),
            None => match self.get(org_id, id).await? {
                Some(final_one) => Cancelled::AlreadyFinal(final_one),
                None => Cancelled::NotFound,
            },
        })
    }

    pub async fn delete(&self, org_id: Uuid, id: Uuid) -> Result<Deleted, StoreError> {
        let done = with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "DELETE FROM execution_executions WHERE org_id = $1 AND id = $2 \
                 AND status NOT IN ('pending', 'running')",
            )
            .bind(org_id.to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                sqlx::query("DELETE FROM execution_logs WHERE execution_id = $1")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            done
        });
        if done == 1 {
            return Ok(Deleted::Deleted);
        }
        Ok(match self.get(org_id, id).await? {
            Some(_) => Deleted::NotFinal,
            None => Deleted::NotFound,
        })
    }

    /// Organizations with pending work in `queues`, least recently served
    /// first, as a lease visits them.
    pub async fn ready_orgs(&self, queues: &[String]) -> Result<Vec<Uuid>, StoreError> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String)> = with_pool!(&self.db, |pool| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(turns_sql(queues.len())))
                .bind(MAX_ORGS_PER_LEASE);
            for queue in queues {
                query = query.bind(queue);
            }
            query.fetch_all(pool).await?
        });
        let mut orgs: Vec<Uuid> = Vec::new();
        for (org, _) in &rows {
            let org = uuid("org id", org)?;
            if !orgs.contains(&org) {
                orgs.push(org);
            }
        }
        Ok(orgs)
    }

    /// Up to `ask.max_items` eligible executions of `ask.queues`, fairly
    /// across organizations and within each one's `limit_of` running.
    pub async fn lease(
        &self,
        ask: &LeaseAsk<'_>,
        limit_of: &(dyn Fn(Uuid) -> i64 + Sync),
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        if ask.queues.is_empty() || ask.max_items == 0 {
            return Ok(Vec::new());
        }
        let lock_rows = if self.postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let turns_sql = turns_sql(ask.queues.len());
        // Takes an organization's next eligible execution in one statement;
        // `only_system` when it is at its limit (the platform's own
        // executions are outside it).
        let take_sql = |only_system: bool| {
            let system = if only_system {
                " AND system = TRUE"
            } else {
                ""
            };
            format!(
                "UPDATE execution_executions SET status = 'running', attempt = attempt + 1, \
                 lease_id = $1, lease_expires_at = $2, lease_ms = $3, \
                 started_at = COALESCE(started_at, $4), updated_at = $4 \
                 WHERE id = (SELECT id FROM execution_executions WHERE org_id = $5 \
                 AND queue = $6 AND status = 'pending' AND next_attempt_at <= $4{system} \
                 ORDER BY priority DESC, created_at, id LIMIT 1{lock_rows}) \
                 AND status = 'pending' RETURNING {COLUMNS}"
            )
        };
        let (take_any, take_system) = (take_sql(false), take_sql(true));
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(turns_sql)).bind(MAX_ORGS_PER_LEASE);
            for queue in ask.queues {
                query = query.bind(queue);
            }
            let turns: Vec<(String, String)> = query.fetch_all(&mut *tx).await?;
            // Organization -> how many more it may run (absent: not asked
            // yet; None: held by another lease).
            let mut room: HashMap<String, Option<i64>> = HashMap::new();
            let mut exhausted = vec![false; turns.len()];
            let mut taken_of = vec![0_i64; turns.len()];
            let mut leased = Vec::new();
            'rounds: for _ in 0..MAX_ROUNDS {
                let mut progress = false;
                for (index, (org, queue)) in turns.iter().enumerate() {
                    if leased.len() >= ask.max_items {
                        break 'rounds;
                    }
                    if exhausted[index] {
                        continue;
                    }
                    if !room.contains_key(org) {
                        // Another lease serving this organization right now:
                        // skip it rather than wait (two leases never update
                        // one organization's rows in opposite orders).
                        let free = if self.postgres() {
                            let (locked,): (bool,) = sqlx::query_as(
                                "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))",
                            )
                            .bind(org)
                            .fetch_one(&mut *tx)
                            .await?;
                            locked
                        } else {
                            true
                        };
                        let left = if free {
                            let (running,): (i64,) = sqlx::query_as(
                                "SELECT COUNT(*) FROM execution_executions \
                                 WHERE org_id = $1 AND status = 'running' AND system = FALSE",
                            )
                            .bind(org)
                            .fetch_one(&mut *tx)
                            .await?;
                            Some((limit_of(uuid("org id", org)?) - running).max(0))
                        } else {
                            None
                        };
                        room.insert(org.clone(), left);
                    }
                    let take = match room[org] {
                        None => None,
                        Some(left) if left > 0 => Some(&take_any),
                        Some(_) => Some(&take_system),
                    };
                    let Some(take) = take else {
                        exhausted[index] = true;
                        continue;
                    };
                    let taken: Option<ExecutionRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(take.clone()))
                            .bind(Uuid::new_v4().to_string())
                            .bind(ask.now + ask.lease_ms)
                            .bind(ask.lease_ms)
                            .bind(ask.now)
                            .bind(org)
                            .bind(queue)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some(row) = taken else {
                        exhausted[index] = true;
                        continue;
                    };
                    let execution = ExecutionRecord::try_from(row)?;
                    if !execution.system
                        && let Some(Some(left)) = room.get_mut(org)
                    {
                        *left -= 1;
                    }
                    leased.push(execution);
                    taken_of[index] += 1;
                    progress = true;
                }
                if !progress {
                    break;
                }
            }
            for ((org, queue), taken) in turns.iter().zip(taken_of) {
                if taken > 0 {
                    sqlx::query(
                        "UPDATE execution_turns SET served_at = $1, pending = pending - $2 \
                         WHERE org_id = $3 AND queue = $4",
                    )
                    .bind(ask.now)
                    .bind(taken)
                    .bind(org)
                    .bind(queue)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            let published = append_events!(tx, leased, ask.now);
            tx.commit().await?;
            self.announce(&published).await;
            Ok(leased)
        })
    }

    /// The running execution a live lease holds.
    pub async fn leased(
        &self,
        lease_id: Uuid,
        now: i64,
    ) -> Result<Option<ExecutionRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM execution_executions WHERE lease_id = $1 \
             AND status = 'running' AND lease_expires_at > $2"
        );
        let row: Option<ExecutionRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(lease_id.to_string())
                .bind(now)
                .fetch_optional(pool)
                .await?
        });
        row.map(ExecutionRecord::try_from).transpose()
    }

    /// Extends a live lease by `lease_ms` (its own duration when `None`).
    pub async fn heartbeat(
        &self,
        lease_id: Uuid,
        lease_ms: Option<i64>,
        now: i64,
    ) -> Result<Option<ExecutionRecord>, StoreError> {
        let sql = format!(
            "UPDATE execution_executions SET lease_expires_at = $1 + COALESCE($2, lease_ms), \
             updated_at = $1 WHERE lease_id = $3 AND status = 'running' AND lease_expires_at > $1 \
             RETURNING {COLUMNS}"
        );
        let row: Option<ExecutionRow> = write_with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(lease_ms)
                .bind(lease_id.to_string())
                .fetch_optional(pool)
                .await?
        });
        row.map(ExecutionRecord::try_from).transpose()
    }

    /// Ends a live lease's attempt in a final `state`.
    pub async fn complete(
        &self,
        lease_id: Uuid,
        state: State,
        output: &[u8],
        analysis: &str,
        now: i64,
    ) -> Result<Option<ExecutionRecord>, StoreError> {
        debug_assert!(state.is_final());
        let sql = format!(
            "UPDATE execution_executions SET status = $1, output = $2, analysis = $3, \
             finished_at = $4, updated_at = $4, lease_id = NULL, lease_expires_at = NULL \
             WHERE lease_id = $5 AND status = 'running' AND lease_expires_at > $4 \
             RETURNING {COLUMNS}"
        );
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let row: Option<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(state.as_str())
                .bind(output)
                .bind(analysis)
                .bind(now)
                .bind(lease_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let done = row.map(ExecutionRecord::try_from).transpose()?;
            let published = append_events!(tx, done.as_slice(), now);
            tx.commit().await?;
            self.announce(&published).await;
            Ok(done)
        })
    }

    /// Ends a live lease's attempt as failed: pending again after
    /// `retry_in_ms(attempt)` while `retryable` and attempts remain (and no
    /// cancellation was asked), else ERROR (CANCELLED when asked).
    pub async fn fail(
        &self,
        lease_id: Uuid,
        error: &str,
        retryable: bool,
        now: i64,
        retry_in_ms: &(dyn Fn(i64) -> i64 + Sync),
    ) -> Result<Option<ExecutionRecord>, StoreError> {
        let Some(current) = self.leased(lease_id, now).await? else {
            return Ok(None);
        };
        self.end_attempt(&current, error, retryable, now, retry_in_ms)
            .await
    }

    async fn end_attempt(
        &self,
        current: &ExecutionRecord,
        error: &str,
        retryable: bool,
        now: i64,
        retry_in_ms: &(dyn Fn(i64) -> i64 + Sync),
    ) -> Result<Option<ExecutionRecord>, StoreError> {
        let retry =
            retryable && !current.cancel_requested && current.attempt < current.max_attempts;
        let (state, next_attempt_at, finished_at) = match (retry, current.cancel_requested) {
            (true, _) => (State::Pending, now + retry_in_ms(current.attempt), None),
            (false, true) => (State::Cancelled, current.next_attempt_at, Some(now)),
            (false, false) => (State::Error, current.next_attempt_at, Some(now)),
        };
        let sql = format!(
            "UPDATE execution_executions SET status = $1, error = $2, next_attempt_at = $3, \
             finished_at = $4, updated_at = $5, lease_id = NULL, lease_expires_at = NULL \
             WHERE id = $6 AND lease_id = $7 AND status = 'running' RETURNING {COLUMNS}"
        );
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let row: Option<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(state.as_str())
                .bind(error)
                .bind(next_attempt_at)
                .bind(finished_at)
                .bind(now)
                .bind(current.id.to_string())
                .bind(current.lease_id.map(|l| l.to_string()))
                .fetch_optional(&mut *tx)
                .await?;
            let ended = row.map(ExecutionRecord::try_from).transpose()?;
            if let Some(again) = ended.as_ref().filter(|e| e.state == State::Pending) {
                sqlx::query(PENDING_BY)
                    .bind(again.org_id.to_string())
                    .bind(&again.queue)
                    .bind(1_i64)
                    .execute(&mut *tx)
                    .await?;
            }
            let published = append_events!(tx, ended.as_slice(), now);
            tx.commit().await?;
            self.announce(&published).await;
            Ok(ended)
        })
    }

    /// Ends up to `limit` attempts whose lease expired (their worker died
    /// or stalled) as failed and retryable; how many.
    pub async fn reclaim_expired(
        &self,
        now: i64,
        limit: i64,
        retry_in_ms: &(dyn Fn(i64) -> i64 + Sync),
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM execution_executions WHERE status = 'running' \
             AND lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT $2"
        );
        let rows: Vec<ExecutionRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        let mut reclaimed = 0;
        for expired in records(rows)? {
            // Conditional on the lease: a late Complete that won keeps its
            // result.
            if self
                .end_attempt(&expired, "lease expired", true, now, retry_in_ms)
                .await?
                .is_some()
            {
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }

    /// Appends `lines` to the execution a live lease holds, numbered on
    /// from its last line.
    pub async fn append_logs(
        &self,
        lease_id: Uuid,
        lines: &[String],
        now: i64,
    ) -> Result<Appended, StoreError> {
        let count = lines.len() as i64;
        let taken: Option<(String, String, i64, i64)> = with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let taken: Option<(String, String, i64, i64)> = sqlx::query_as(
                "UPDATE execution_executions SET log_lines = log_lines + $1 \
                 WHERE lease_id = $2 AND status = 'running' AND lease_expires_at > $3 \
                 AND log_lines + $1 <= $4 RETURNING id, org_id, attempt, log_lines",
            )
            .bind(count)
            .bind(lease_id.to_string())
            .bind(now)
            .bind(MAX_LOG_LINES)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, org_id, attempt, last)) = &taken
                && count > 0
            {
                let values: Vec<String> = (0..lines.len())
                    .map(|n| {
                        let at = 5 + 2 * n;
                        format!("($1, ${at}, $2, $3, $4, ${})", at + 1)
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO execution_logs (execution_id, sequence, org_id, attempt, \
                     logged_at, line) VALUES {}",
                    values.join(", ")
                );
                let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .bind(org_id)
                    .bind(*attempt)
                    .bind(now);
                for (n, line) in lines.iter().enumerate() {
                    insert = insert.bind(last - count + 1 + n as i64).bind(line);
                }
                insert.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            taken
        });
        let Some((id, _, _, last)) = taken else {
            return Ok(match self.leased(lease_id, now).await? {
                Some(_) => Appended::Full,
                None => Appended::LeaseNotFound,
            });
        };
        if count > 0 {
            let topic = logs_topic(uuid("id", &id)?);
            if let Err(error) = self.fanout.publish(&topic, &last.to_string()).await {
                tracing::warn!(%error, "announcing log lines failed");
            }
        }
        Ok(Appended::Through(last))
    }

    /// Up to `limit` lines of the organization's execution after `after`.
    pub async fn logs(
        &self,
        org_id: Uuid,
        execution_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows: Vec<(i64, i64, i64, String)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT sequence, logged_at, attempt, line FROM execution_logs \
                 WHERE execution_id = $1 AND org_id = $2 AND sequence > $3 \
                 ORDER BY sequence LIMIT $4",
            )
            .bind(execution_id.to_string())
            .bind(org_id.to_string())
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(sequence, logged_at, attempt, line)| LogLine {
                sequence,
                logged_at,
                attempt,
                line,
            })
            .collect())
    }

    /// Up to `limit` of the organization's events after `after`, in order.
    pub async fn events_after(
        &self,
        org_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ExecutionEvent>, StoreError> {
        let rows: Vec<(i64, i64, String)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT event_id, occurred_at, snapshot FROM execution_events \
                 WHERE org_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $3",
            )
            .bind(org_id.to_string())
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(event_id, occurred_at, snapshot)| {
                let execution: ExecutionRecord =
                    serde_json::from_str(&snapshot).map_err(|e| corrupt("snapshot", e))?;
                if execution.org_id != org_id {
                    return Err(corrupt("snapshot", "of another organization"));
                }
                Ok(ExecutionEvent {
                    event_id,
                    occurred_at,
                    execution,
                })
            })
            .collect()
    }

    /// The organization's last event id (0 before the first).
    pub async fn last_event_id(&self, org_id: Uuid) -> Result<i64, StoreError> {
        let last: Option<(i64,)> = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT last_event_id FROM execution_event_counters WHERE org_id = $1")
                .bind(org_id.to_string())
                .fetch_optional(pool)
                .await?
        });
        Ok(last.map_or(0, |(id,)| id))
    }

    /// Whether every event of the organization after `after` is retained.
    pub async fn resume(&self, org_id: Uuid, after: i64) -> Result<Resume, StoreError> {
        let last = self.last_event_id(org_id).await?;
        let (oldest,): (Option<i64>,) = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT MIN(event_id) FROM execution_events WHERE org_id = $1")
                .bind(org_id.to_string())
                .fetch_one(pool)
                .await?
        });
        let oldest_retained = oldest.unwrap_or(last + 1);
        if after < 0 || after > last || after + 1 < oldest_retained {
            return Ok(Resume::OutOfRange {
                oldest_retained,
                last,
            });
        }
        Ok(Resume::From(after))
    }

    /// Drops up to `limit` events that happened before `before`; how many.
    pub async fn prune_events(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
        Ok(write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM execution_events WHERE (org_id, event_id) IN \
                 (SELECT org_id, event_id FROM execution_events WHERE occurred_at < $1 \
                 ORDER BY occurred_at LIMIT $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }
}
