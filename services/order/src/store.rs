//! Orders in the Order server's database (one SQL text for SQLite and
//! PostgreSQL): the orders, their per-organization numbers, idempotency
//! claims, and the outbox of what must still reach another service. Every
//! query names the organization, but for the outbox and sweeps, which
//! serve every organization and carry each row's own.
//!
//! Status changes are announced on the fan-out once committed, so
//! `WatchOrder` on any replica reads the new state.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trellis_store::{
    BeginWrite, Database, EmbeddedMigration, FanOut, Page, ServiceMigrations, StoreError,
    with_pool, write_with_pool,
};
use uuid::Uuid;

const ORDERS: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "orders",
    sql: include_str!("../migrations/0001_orders.sql"),
};

pub const MIGRATIONS: ServiceMigrations = ServiceMigrations {
    service: "order",
    sqlite: &[ORDERS],
    postgres: &[ORDERS],
};

trellis_store::stored_names! {
    /// PENDING until fulfilled; the others are final.
    OrderState {
        Pending = "pending",
        Confirmed = "confirmed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl OrderState {
    pub fn is_final(self) -> bool {
        self != OrderState::Pending
    }
}

trellis_store::stored_names! {
    /// What an outbox row still has to do: create the order's
    /// fulfillment execution, or give its reserved stock back.
    Chore {
        Enqueue = "enqueue",
        Release = "release",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemOption {
    pub group: String,
    pub value: String,
    pub quantity: i32,
}

/// A cart line as ordered; amounts in the order's currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub options: Vec<ItemOption>,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub name: String,
    pub phone: String,
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Delivered to `address`, else picked up.
    pub delivered: bool,
    pub address: String,
    /// Unix ms; none = as soon as possible.
    pub requested_for: Option<i64>,
}

/// One order as stored. Times are Unix ms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub user_id: Uuid,
    /// 0 until stored.
    pub number: i64,
    pub state: OrderState,
    pub session_id: Uuid,
    pub items: Vec<Item>,
    pub total_minor: i64,
    pub currency: String,
    pub customer: Customer,
    pub delivery: Delivery,
    pub execution_id: Option<Uuid>,
    pub failure_reason: String,
    pub cancel_reason: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, org_id, user_id, number, status, session_id, items, total_minor, \
     currency, customer, delivery, execution_id, failure_reason, cancel_reason, created_at, \
     updated_at";

trellis_store::row! {
    pub struct OrderRow {
        pub id: String,
        pub org_id: String,
        pub user_id: String,
        pub number: i64,
        pub status: OrderState as String,
        pub session_id: String,
        pub items: String,
        pub total_minor: i64,
        pub currency: String,
        pub customer: String,
        pub delivery: String,
        pub execution_id: Option<String>,
        pub failure_reason: String,
        pub cancel_reason: String,
        pub created_at: i64,
        pub updated_at: i64,
    }
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    trellis_store::corrupt("order", what, error)
}

fn uuid(what: &str, text: &str) -> Result<Uuid, StoreError> {
    trellis_store::stored_uuid("order", what, text)
}

fn json<T: Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

fn parsed<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

impl TryFrom<OrderRow> for OrderRecord {
    type Error = StoreError;

    fn try_from(row: OrderRow) -> Result<Self, StoreError> {
        Ok(OrderRecord {
            id: uuid("id", &row.id)?,
            org_id: uuid("org id", &row.org_id)?,
            user_id: uuid("user id", &row.user_id)?,
            number: row.number,
            state: row.status,
            session_id: uuid("session id", &row.session_id)?,
            items: parsed("items", &row.items)?,
            total_minor: row.total_minor,
            currency: row.currency,
            customer: parsed("customer", &row.customer)?,
            delivery: parsed("delivery", &row.delivery)?,
            execution_id: row
                .execution_id
                .as_deref()
                .map(|e| uuid("execution id", e))
                .transpose()?,
            failure_reason: row.failure_reason,
            cancel_reason: row.cancel_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn record(row: Option<OrderRow>) -> Result<Option<OrderRecord>, StoreError> {
    row.map(OrderRecord::try_from).transpose()
}

/// Who asks with which idempotency key, and the claim's token: when this
/// call claimed it. Only the holder of the current token may place the
/// order or give the key back, so a call that lost its claim to a takeover
/// can do neither.
#[derive(Clone, Debug)]
pub struct RequestKey {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub key: String,
    pub claimed_at: i64,
}

/// What claiming an idempotency key found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ours: place the order under this id.
    New(Uuid),
    /// Placed before: this order.
    Placed(Uuid),
    /// Another call is placing it, since `claimed_at`.
    InFlight { order_id: Uuid, claimed_at: i64 },
    /// The key was used for a different request.
    Mismatch,
}

/// One outbox row due.
#[derive(Clone, Debug)]
pub struct Due {
    pub order_id: Uuid,
    pub org_id: Uuid,
    pub chore: Chore,
    pub attempts: i64,
}

#[derive(Debug)]
pub enum Cancelled {
    Now(OrderRecord),
    /// Confirmed, failed or cancelled already.
    NotPending(OrderRecord),
    NotFound,
}

/// The topic `WatchOrder` waits on.
pub fn order_topic(org_id: Uuid, order_id: Uuid) -> String {
    format!("order:{org_id}:{order_id}")
}

#[derive(Clone)]
pub struct Orders {
    db: Database,
    fanout: Arc<dyn FanOut>,
}

impl Orders {
    pub fn new(db: Database, fanout: Arc<dyn FanOut>) -> Self {
        Orders { db, fanout }
    }

    pub fn fanout(&self) -> &Arc<dyn FanOut> {
        &self.fanout
    }

    /// A lost wake-up delays a watcher until its next look, never hides a
    /// change: watchers read the database.
    async fn announce(&self, order: &OrderRecord) {
        let topic = order_topic(order.org_id, order.id);
        if let Err(error) = self.fanout.publish(&topic, order.state.as_str()).await {
            tracing::warn!(%error, "announcing an order change failed");
        }
    }

    /// Claims `key` (at its `claimed_at`) for a request with
    /// `fingerprint`, to be placed as `order_id`.
    pub async fn claim(
        &self,
        key: &RequestKey,
        fingerprint: &str,
        order_id: Uuid,
    ) -> Result<Claim, StoreError> {
        let inserted = write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO order_requests (org_id, user_id, idempotency_key, fingerprint, \
                 order_id, placed, claimed_at) VALUES ($1, $2, $3, $4, $5, FALSE, $6) \
                 ON CONFLICT (org_id, user_id, idempotency_key) DO NOTHING",
            )
            .bind(key.org_id.to_string())
            .bind(key.user_id.to_string())
            .bind(&key.key)
            .bind(fingerprint)
            .bind(order_id.to_string())
            .bind(key.claimed_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if inserted == 1 {
            return Ok(Claim::New(order_id));
        }
        let found: Option<(String, String, bool, i64)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT fingerprint, order_id, placed, claimed_at FROM order_requests \
                 WHERE org_id = $1 AND user_id = $2 AND idempotency_key = $3",
            )
            .bind(key.org_id.to_string())
            .bind(key.user_id.to_string())
            .bind(&key.key)
            .fetch_optional(pool)
            .await?
        });
        // Given back between the two statements: claim it again.
        let Some((stored, order_id_text, placed, claimed_at)) = found else {
            return Box::pin(self.claim(key, fingerprint, order_id)).await;
        };
        let existing = uuid("order id", &order_id_text)?;
        Ok(if stored != fingerprint {
            Claim::Mismatch
        } else if placed {
            Claim::Placed(existing)
        } else {
            Claim::InFlight {
                order_id: existing,
                claimed_at,
            }
        })
    }

    /// Takes over, with `key.claimed_at` as the new token, a claim left
    /// since `claimed_at` (its call died); false when another call took it
    /// first or it was placed meanwhile.
    pub async fn take_over(&self, key: &RequestKey, claimed_at: i64) -> Result<bool, StoreError> {
        let taken = write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE order_requests SET claimed_at = $1 WHERE org_id = $2 AND user_id = $3 \
                 AND idempotency_key = $4 AND placed = FALSE AND claimed_at = $5",
            )
            .bind(key.claimed_at)
            .bind(key.org_id.to_string())
            .bind(key.user_id.to_string())
            .bind(&key.key)
            .bind(claimed_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(taken == 1)
    }

    /// Gives an unplaced claim back (the order was refused), so the key
    /// can be used again; false when `key` no longer holds it.
    pub async fn unclaim(&self, key: &RequestKey) -> Result<bool, StoreError> {
        let gone = write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM order_requests WHERE org_id = $1 AND user_id = $2 \
                 AND idempotency_key = $3 AND placed = FALSE AND claimed_at = $4",
            )
            .bind(key.org_id.to_string())
            .bind(key.user_id.to_string())
            .bind(&key.key)
            .bind(key.claimed_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(gone == 1)
    }

    /// Stores the order (numbered now), its outbox row for the fulfillment
    /// execution, and marks its claim placed, in one transaction. `None`
    /// when `key` no longer holds its claim (taken over): nothing stored.
    pub async fn place(
        &self,
        order: &OrderRecord,
        key: Option<&RequestKey>,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let items = json("items", &order.items)?;
        let customer = json("customer", &order.customer)?;
        let delivery = json("delivery", &order.delivery)?;
        let sql = format!(
            "INSERT INTO order_orders ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16)"
        );
        let number: Option<i64> = with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            if let Some(key) = key {
                let held = sqlx::query(
                    "UPDATE order_requests SET placed = TRUE WHERE org_id = $1 AND user_id = $2 \
                     AND idempotency_key = $3 AND placed = FALSE AND claimed_at = $4",
                )
                .bind(key.org_id.to_string())
                .bind(key.user_id.to_string())
                .bind(&key.key)
                .bind(key.claimed_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if held != 1 {
                    return Ok(None);
                }
            }
            // The counter row stays locked to the commit: concurrent orders
            // of one organization take consecutive numbers, and a rollback
            // gives its number back.
            let (number,): (i64,) = sqlx::query_as(
                "INSERT INTO order_counters (org_id, last_number) VALUES ($1, 1) \
                 ON CONFLICT (org_id) DO UPDATE SET last_number = order_counters.last_number + 1 \
                 RETURNING last_number",
            )
            .bind(order.org_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(order.id.to_string())
                .bind(order.org_id.to_string())
                .bind(order.user_id.to_string())
                .bind(number)
                .bind(order.state.as_str())
                .bind(order.session_id.to_string())
                .bind(&items)
                .bind(order.total_minor)
                .bind(&order.currency)
                .bind(&customer)
                .bind(&delivery)
                .bind(order.execution_id.map(|e| e.to_string()))
                .bind(&order.failure_reason)
                .bind(&order.cancel_reason)
                .bind(order.created_at)
                .bind(order.updated_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO order_outbox (order_id, kind, org_id, attempts, next_attempt_at) \
                 VALUES ($1, $2, $3, 0, $4)",
            )
            .bind(order.id.to_string())
            .bind(Chore::Enqueue.as_str())
            .bind(order.org_id.to_string())
            .bind(order.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Some(number)
        });
        Ok(number.map(|number| {
            let mut placed = order.clone();
            placed.number = number;
            placed
        }))
    }

    pub async fn get(&self, org_id: Uuid, id: Uuid) -> Result<Option<OrderRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM order_orders WHERE org_id = $1 AND id = $2");
        let row: Option<OrderRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        });
        record(row)
    }

    /// Newest first; of one user unless `user_id` is `None`.
    pub async fn list(
        &self,
        org_id: Uuid,
        user_id: Option<Uuid>,
        state: Option<OrderState>,
        page: &Page,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let (cursor_at, cursor_id, first, limit) = page.binds();
        let sql = format!(
            "SELECT {COLUMNS} FROM order_orders WHERE org_id = $1 \
             AND ($6 = '' OR user_id = $6) AND ($7 = '' OR status = $7) \
             AND ($4 = 1 OR created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows: Vec<OrderRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(cursor_at)
                .bind(&cursor_id)
                .bind(first)
                .bind(limit)
                .bind(user_id.map(|u| u.to_string()).unwrap_or_default())
                .bind(state.map_or("", OrderState::as_str))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(OrderRecord::try_from).collect()
    }

    /// Outbox rows due by `now`, oldest first.
    pub async fn due(&self, now: i64, limit: i64) -> Result<Vec<Due>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT order_id, org_id, kind, attempts FROM order_outbox \
                 WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(order_id, org_id, kind, attempts)| {
                Ok(Due {
                    order_id: uuid("outbox order id", &order_id)?,
                    org_id: uuid("outbox org id", &org_id)?,
                    chore: Chore::try_from(kind).map_err(|e| corrupt("outbox kind", e))?,
                    attempts,
                })
            })
            .collect()
    }

    /// Tries the row again at `next_attempt_at`.
    pub async fn retry_later(&self, due: &Due, next_attempt_at: i64) -> Result<(), StoreError> {
        write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE order_outbox SET attempts = attempts + 1, next_attempt_at = $1 \
                 WHERE order_id = $2 AND kind = $3",
            )
            .bind(next_attempt_at)
            .bind(due.order_id.to_string())
            .bind(due.chore.as_str())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The stock went back: the release row is done.
    pub async fn released(&self, order_id: Uuid) -> Result<(), StoreError> {
        write_with_pool!(&self.db, |pool| {
            sqlx::query("DELETE FROM order_outbox WHERE order_id = $1 AND kind = $2")
                .bind(order_id.to_string())
                .bind(Chore::Release.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The fulfillment execution exists: remember it, drop the enqueue row.
    pub async fn enqueued(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        execution_id: Uuid,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "UPDATE order_orders SET execution_id = $1, updated_at = $2 \
                 WHERE org_id = $3 AND id = $4 AND execution_id IS NULL",
            )
            .bind(execution_id.to_string())
            .bind(now)
            .bind(org_id.to_string())
            .bind(order_id.to_string())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM order_outbox WHERE order_id = $1 AND kind = $2")
                .bind(order_id.to_string())
                .bind(Chore::Enqueue.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Moves a pending order to `state` (a final one) with its reason; when
    /// the order gives up its stock (failed, cancelled), queues the release
    /// in the same transaction. `None` when it was not pending.
    async fn finish(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        state: OrderState,
        reason: &str,
        now: i64,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let reason_column = match state {
            OrderState::Failed => "failure_reason",
            OrderState::Cancelled => "cancel_reason",
            OrderState::Confirmed | OrderState::Pending => "failure_reason",
        };
        let sql = format!(
            "UPDATE order_orders SET status = $1, {reason_column} = $2, updated_at = $3 \
             WHERE org_id = $4 AND id = $5 AND status = 'pending' RETURNING {COLUMNS}"
        );
        let releases = matches!(state, OrderState::Failed | OrderState::Cancelled);
        let done = with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(state.as_str())
                .bind(reason)
                .bind(now)
                .bind(org_id.to_string())
                .bind(order_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            if row.is_some() && releases {
                sqlx::query(
                    "INSERT INTO order_outbox (order_id, kind, org_id, attempts, \
                     next_attempt_at) VALUES ($1, $2, $3, 0, $4) \
                     ON CONFLICT (order_id, kind) DO NOTHING",
                )
                .bind(order_id.to_string())
                .bind(Chore::Release.as_str())
                .bind(org_id.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            record(row)?
        });
        if let Some(order) = &done {
            self.announce(order).await;
        }
        Ok(done)
    }

    pub async fn confirm(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        now: i64,
    ) -> Result<Option<OrderRecord>, StoreError> {
        self.finish(org_id, order_id, OrderState::Confirmed, "", now)
            .await
    }

    pub async fn fail(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        reason: &str,
        now: i64,
    ) -> Result<Option<OrderRecord>, StoreError> {
        self.finish(org_id, order_id, OrderState::Failed, reason, now)
            .await
    }

    pub async fn cancel(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        reason: &str,
        now: i64,
    ) -> Result<Cancelled, StoreError> {
        if let Some(done) = self
            .finish(org_id, order_id, OrderState::Cancelled, reason, now)
            .await?
        {
            return Ok(Cancelled::Now(done));
        }
        Ok(match self.get(org_id, order_id).await? {
            Some(order) => Cancelled::NotPending(order),
            None => Cancelled::NotFound,
        })
    }

    /// Pending orders with an execution that have not changed since
    /// `before`, oldest first: the reconciler asks how their execution is.
    pub async fn stale_pending(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM order_orders WHERE status = 'pending' \
             AND execution_id IS NOT NULL AND updated_at < $1 ORDER BY updated_at LIMIT $2"
        );
        let rows: Vec<OrderRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(OrderRecord::try_from).collect()
    }

    /// Looked at now: the reconciler comes back to it later.
    pub async fn touch(&self, org_id: Uuid, order_id: Uuid, now: i64) -> Result<(), StoreError> {
        write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE order_orders SET updated_at = $1 WHERE org_id = $2 AND id = $3 \
                 AND status = 'pending'",
            )
            .bind(now)
            .bind(org_id.to_string())
            .bind(order_id.to_string())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Claims never placed and older than `before` (their call died after
    /// reserving stock, and nobody retried): (key with its token, order id).
    pub async fn abandoned_claims(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<(RequestKey, Uuid)>, StoreError> {
        let rows: Vec<(String, String, String, String, i64)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT org_id, user_id, idempotency_key, order_id, claimed_at FROM order_requests \
                 WHERE placed = FALSE AND claimed_at < $1 ORDER BY claimed_at LIMIT $2",
            )
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(org_id, user_id, key, order_id, claimed_at)| {
                Ok((
                    RequestKey {
                        org_id: uuid("claim org id", &org_id)?,
                        user_id: uuid("claim user id", &user_id)?,
                        key,
                        claimed_at,
                    },
                    uuid("claim order id", &order_id)?,
                ))
            })
            .collect()
    }
}
