//! The Cart server's tables (one SQL text for SQLite and PostgreSQL):
//! products and stock reservations ([`Catalog`]) and carts ([`Carts`]).
//! Every query names the organization. Writes that read first run in write
//! transactions (`BEGIN IMMEDIATE` on SQLite) and take their row lock with
//! the first statement, so concurrent writers never lose an update.

use trellis_store::{
    BeginWrite, Database, EmbeddedMigration, Page, ServiceMigrations, StoreError,
    is_unique_violation, with_pool, write_with_pool,
};
use uuid::Uuid;

use crate::model::{CartState, Line, LineOption, Price, Product};

const CATALOG_AND_CARTS: EmbeddedMigration = EmbeddedMigration {
    version: 1,
    description: "catalog and carts",
    sql: include_str!("../migrations/0001_catalog_and_carts.sql"),
};

pub const MIGRATIONS: ServiceMigrations = ServiceMigrations {
    service: "cart",
    sqlite: &[CATALOG_AND_CARTS],
    postgres: &[CATALOG_AND_CARTS],
};

const PRODUCT_COLUMNS: &str = "id, org_id, sku, name, category, price_minor, currency, stock, \
     active, description, created_at, updated_at";

trellis_store::row! {
    pub struct ProductRow {
        pub id: String,
        pub org_id: String,
        pub sku: String,
        pub name: String,
        pub category: String,
        pub price_minor: i64,
        pub currency: String,
        pub stock: Option<i64>,
        pub active: bool,
        pub description: String,
        pub created_at: i64,
        pub updated_at: i64,
    }
}

trellis_store::row! {
    pub struct LineRow {
        pub id: String,
        pub product_id: String,
        pub sku: String,
        pub name: String,
        pub quantity: i64,
        pub options: String,
        pub unit_price_minor: i64,
        pub currency: String,
        pub added_at: i64,
    }
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    trellis_store::corrupt("cart", what, error)
}

fn uuid(what: &str, text: &str) -> Result<Uuid, StoreError> {
    trellis_store::stored_uuid("cart", what, text)
}

impl TryFrom<ProductRow> for Product {
    type Error = StoreError;

    fn try_from(row: ProductRow) -> Result<Product, StoreError> {
        Ok(Product {
            id: uuid("product id", &row.id)?,
            org_id: uuid("org id", &row.org_id)?,
            sku: row.sku,
            name: row.name,
            category: row.category,
            price: Price {
                amount_minor: row.price_minor,
                currency: row.currency,
            },
            stock: row.stock,
            active: row.active,
            description: row.description,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

impl TryFrom<LineRow> for Line {
    type Error = StoreError;

    fn try_from(row: LineRow) -> Result<Line, StoreError> {
        let options: Vec<LineOption> =
            serde_json::from_str(&row.options).map_err(|e| corrupt("options", e))?;
        Ok(Line {
            id: uuid("item id", &row.id)?,
            product_id: uuid("product id", &row.product_id)?,
            sku: row.sku,
            name: row.name,
            quantity: row.quantity,
            options,
            unit_price: Price {
                amount_minor: row.unit_price_minor,
                currency: row.currency,
            },
            added_at: row.added_at,
        })
    }
}

fn products(rows: Vec<ProductRow>) -> Result<Vec<Product>, StoreError> {
    rows.into_iter().map(Product::try_from).collect()
}

/// Why a stock change did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum StockRefusal {
    NotFound,
    Unlimited,
    BelowZero(i64),
}

/// What a reservation did, or which product stopped it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Taken now, or by an earlier call for the same order.
    Lines(Vec<(Uuid, i64)>),
    /// The order reserved once and gave it back: it does not reserve again.
    Released,
    UnknownProduct(Uuid),
    Insufficient {
        product_id: Uuid,
        available: i64,
    },
}

/// Products and stock reservations.
#[derive(Clone, Debug)]
pub struct Catalog {
    db: Database,
}

impl Catalog {
    pub fn new(db: Database) -> Self {
        Catalog { db }
    }

    /// `false` when the organization already has a product with that sku.
    pub async fn insert(&self, product: &Product) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO cart_products ({PRODUCT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let inserted = write_with_pool!(&self.db, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(product.id.to_string())
                .bind(product.org_id.to_string())
                .bind(&product.sku)
                .bind(&product.name)
                .bind(&product.category)
                .bind(product.price.amount_minor)
                .bind(&product.price.currency)
                .bind(product.stock)
                .bind(product.active)
                .bind(&product.description)
                .bind(product.created_at)
                .bind(product.updated_at)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        });
        match inserted {
            Ok(_) => Ok(true),
            Err(error) if is_unique_violation(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn get(&self, org_id: Uuid, id: Uuid) -> Result<Option<Product>, StoreError> {
        let sql =
            format!("SELECT {PRODUCT_COLUMNS} FROM cart_products WHERE org_id = $1 AND id = $2");
        let row: Option<ProductRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        });
        row.map(Product::try_from).transpose()
    }

    /// Newest first; `category` exact when given.
    pub async fn list(
        &self,
        org_id: Uuid,
        category: Option<&str>,
        include_inactive: bool,
        page: &Page,
    ) -> Result<Vec<Product>, StoreError> {
        let (cursor_at, cursor_id, first, limit) = page.binds();
        let sql = format!(
            "SELECT {PRODUCT_COLUMNS} FROM cart_products WHERE org_id = $1 \
             AND ($6 OR active = TRUE) AND ($7 = '' OR category = $7) \
             AND ($4 = 1 OR created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows: Vec<ProductRow> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(cursor_at)
                .bind(&cursor_id)
                .bind(first)
                .bind(limit)
                .bind(include_inactive)
                .bind(category.unwrap_or(""))
                .fetch_all(pool)
                .await?
        });
        products(rows)
    }

    /// The products among `ids` that exist in the organization.
    pub async fn many(&self, org_id: Uuid, ids: &[Uuid]) -> Result<Vec<Product>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        // One statement per 100 ids keeps the bind count small on both.
        for chunk in ids.chunks(100) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|n| format!("${}", n + 2)).collect();
            let sql = format!(
                "SELECT {PRODUCT_COLUMNS} FROM cart_products WHERE org_id = $1 AND id IN ({})",
                placeholders.join(", ")
            );
            let rows: Vec<ProductRow> = with_pool!(&self.db, |pool| {
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(org_id.to_string());
                for id in chunk {
                    query = query.bind(id.to_string());
                }
                query.fetch_all(pool).await?
            });
            found.extend(products(rows)?);
        }
        Ok(found)
    }

    /// Writes the fields of `product` (read, changed by the caller), its
    /// stock only if `with_stock`; `Ok(false)` when the sku is another
    /// product's.
    pub async fn update(&self, product: &Product, with_stock: bool) -> Result<bool, StoreError> {
        let updated = write_with_pool!(&self.db, |pool| {
            sqlx::query(
                "UPDATE cart_products SET sku = $1, name = $2, category = $3, price_minor = $4, \
                 currency = $5, stock = CASE WHEN $12 THEN $6 ELSE stock END, active = $7, \
                 description = $8, updated_at = $9 WHERE org_id = $10 AND id = $11",
            )
            .bind(&product.sku)
            .bind(&product.name)
            .bind(&product.category)
            .bind(product.price.amount_minor)
            .bind(&product.price.currency)
            .bind(product.stock)
            .bind(product.active)
            .bind(&product.description)
            .bind(product.updated_at)
            .bind(product.org_id.to_string())
            .bind(product.id.to_string())
            .bind(with_stock)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        });
        match updated {
            Ok(_) => Ok(true),
            Err(error) if is_unique_violation(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Adds `delta` to a tracked stock, atomically, never below zero.
    pub async fn adjust_stock(
        &self,
        org_id: Uuid,
        id: Uuid,
        delta: i64,
        now: i64,
    ) -> Result<Result<Product, StockRefusal>, StoreError> {
        let sql = format!(
            "UPDATE cart_products SET stock = stock + $1, updated_at = $2 \
             WHERE org_id = $3 AND id = $4 AND stock IS NOT NULL AND stock + $1 >= 0 \
             RETURNING {PRODUCT_COLUMNS}"
        );
        let row: Option<ProductRow> = write_with_pool!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(delta)
                .bind(now)
                .bind(org_id.to_string())
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        });
        if let Some(row) = row {
            return Ok(Ok(Product::try_from(row)?));
        }
        Ok(Err(match self.get(org_id, id).await? {
            None => StockRefusal::NotFound,
            Some(Product { stock: None, .. }) => StockRefusal::Unlimited,
            Some(Product {
                stock: Some(stock), ..
            }) => StockRefusal::BelowZero(stock),
        }))
    }

    /// Takes `lines` (distinct products) for `order_id`, all or none; an
    /// order reserves once.
    pub async fn reserve(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        lines: &[(Uuid, i64)],
        now: i64,
    ) -> Result<Reserved, StoreError> {
        // Two first reservations of one order racing: the loser's header
        // insert conflicts, it rolls back, and reads what the winner took.
        for _ in 0..3 {
            if let Some(earlier) = self.reservation(org_id, order_id).await? {
                return Ok(earlier);
            }
            match self.try_reserve(org_id, order_id, lines, now).await {
                Err(StoreError::Sqlx(error)) if is_unique_violation(&error) => continue,
                other => return other,
            }
        }
        Ok(self
            .reservation(org_id, order_id)
            .await?
            .unwrap_or(Reserved::Lines(Vec::new())))
    }

    /// What an earlier reservation of the order holds, if there was one.
    async fn reservation(
        &self,
        org_id: Uuid,
        order_id: Uuid,
    ) -> Result<Option<Reserved>, StoreError> {
        let (org, order) = (org_id.to_string(), order_id.to_string());
        // (released_at of the order's header, if any; its lines)
        type Held = (Option<(Option<i64>,)>, Vec<(String, i64)>);
        let (header, rows): Held = with_pool!(&self.db, |pool| {
            let header = sqlx::query_as(
                "SELECT released_at FROM cart_reservation_orders \
                     WHERE org_id = $1 AND order_id = $2",
            )
            .bind(&org)
            .bind(&order)
            .fetch_optional(pool)
            .await?;
            let rows = sqlx::query_as(
                "SELECT product_id, quantity FROM cart_reservations \
                     WHERE org_id = $1 AND order_id = $2 ORDER BY product_id",
            )
            .bind(&org)
            .bind(&order)
            .fetch_all(pool)
            .await?;
            (header, rows)
        });
        match header {
            None => Ok(None),
            Some((Some(_),)) => Ok(Some(Reserved::Released)),
            Some((None,)) => rows
                .into_iter()
                .map(|(id, quantity)| Ok((uuid("product id", &id)?, quantity)))
                .collect::<Result<Vec<_>, _>>()
                .map(|lines| Some(Reserved::Lines(lines))),
        }
    }

    async fn try_reserve(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        lines: &[(Uuid, i64)],
        now: i64,
    ) -> Result<Reserved, StoreError> {
        let mut sorted = lines.to_vec();
        // One lock order for every transaction that takes product rows.
        sorted.sort();
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO cart_reservation_orders (org_id, order_id, created_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(org_id.to_string())
            .bind(order_id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for &(product_id, quantity) in &sorted {
                // Conditional on the stock: concurrent reservations of one
                // product serialize on its row, none takes below zero.
                let taken: Option<(Option<i64>,)> = sqlx::query_as(
                    "UPDATE cart_products SET stock = CASE WHEN stock IS NULL THEN NULL \
                     ELSE stock - $1 END, updated_at = $2 \
                     WHERE org_id = $3 AND id = $4 AND active = TRUE \
                     AND (stock IS NULL OR stock >= $1) RETURNING stock",
                )
                .bind(quantity)
                .bind(now)
                .bind(org_id.to_string())
                .bind(product_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                let Some((stock_after,)) = taken else {
                    let found: Option<(Option<i64>, bool)> = sqlx::query_as(
                        "SELECT stock, active FROM cart_products WHERE org_id = $1 AND id = $2",
                    )
                    .bind(org_id.to_string())
                    .bind(product_id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.rollback().await?;
                    return Ok(match found {
                        Some((Some(available), true)) => Reserved::Insufficient {
                            product_id,
                            available,
                        },
                        _ => Reserved::UnknownProduct(product_id),
                    });
                };
                sqlx::query(
                    "INSERT INTO cart_reservations \
                     (org_id, order_id, product_id, quantity, tracked) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(org_id.to_string())
                .bind(order_id.to_string())
                .bind(product_id.to_string())
                .bind(quantity)
                .bind(stock_after.is_some())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Reserved::Lines(sorted))
        })
    }

    /// Gives back what `order_id` took, once; what went back.
    pub async fn release(
        &self,
        org_id: Uuid,
        order_id: Uuid,
        now: i64,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let (org, order) = (org_id.to_string(), order_id.to_string());
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            let marked = sqlx::query(
                "UPDATE cart_reservation_orders SET released_at = $1 \
                 WHERE org_id = $2 AND order_id = $3 AND released_at IS NULL",
            )
            .bind(now)
            .bind(&org)
            .bind(&order)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if marked == 0 {
                // Nothing reserved yet: a tombstone, so a reservation of
                // this order still on its way (its caller gave up waiting
                // and released) is refused instead of taking stock no
                // order will ever give back.
                sqlx::query(
                    "INSERT INTO cart_reservation_orders (org_id, order_id, created_at, released_at) \
                     VALUES ($1, $2, $3, $3) ON CONFLICT (org_id, order_id) DO NOTHING",
                )
                .bind(&org)
                .bind(&order)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let held: Vec<(String, i64, bool)> = sqlx::query_as(
                "SELECT product_id, quantity, tracked FROM cart_reservations \
                 WHERE org_id = $1 AND order_id = $2 ORDER BY product_id",
            )
            .bind(&org)
            .bind(&order)
            .fetch_all(&mut *tx)
            .await?;
            let mut returned = Vec::new();
            for (product_id, quantity, tracked) in held {
                // Untracked when reserved: nothing was taken to give back.
                // Switched to unlimited since: nothing to give back to.
                if !tracked {
                    continue;
                }
                let done = sqlx::query(
                    "UPDATE cart_products SET stock = stock + $1, updated_at = $2 \
                     WHERE org_id = $3 AND id = $4 AND stock IS NOT NULL",
                )
                .bind(quantity)
                .bind(now)
                .bind(&org)
                .bind(&product_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done == 1 {
                    returned.push((uuid("product id", &product_id)?, quantity));
                }
            }
            tx.commit().await?;
            Ok(returned)
        })
    }
}

/// The one change a cart mutation makes.
pub enum Edit {
    Add(Line),
    /// A line (same id) with a new quantity or options.
    Replace(Line),
    Remove(Uuid),
    Clear,
}

/// Carts, one per session.
#[derive(Clone, Debug)]
pub struct Carts {
    db: Database,
}

const LINE_COLUMNS: &str =
    "id, product_id, sku, name, quantity, options, unit_price_minor, currency, added_at";

impl Carts {
    pub fn new(db: Database) -> Self {
        Carts { db }
    }

    /// The session's cart; an empty one at version 0 if it has none.
    pub async fn get(&self, org_id: Uuid, session_id: Uuid) -> Result<CartState, StoreError> {
        with_pool!(&self.db, |pool| {
            let head: Option<(i64, i64)> = sqlx::query_as(
                "SELECT version, updated_at FROM cart_carts WHERE org_id = $1 AND session_id = $2",
            )
            .bind(org_id.to_string())
            .bind(session_id.to_string())
            .fetch_optional(pool)
            .await?;
            let sql = format!(
                "SELECT {LINE_COLUMNS} FROM cart_items WHERE org_id = $1 AND session_id = $2 \
                 ORDER BY added_at, id"
            );
            let rows: Vec<LineRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(org_id.to_string())
                .bind(session_id.to_string())
                .fetch_all(pool)
                .await?;
            let (version, updated_at) = head.unwrap_or((0, 0));
            Ok(CartState {
                session_id,
                version,
                updated_at,
                lines: rows
                    .into_iter()
                    .map(Line::try_from)
                    .collect::<Result<_, _>>()?,
            })
        })
    }

    /// One change of the session's cart, atomically: the version is bumped
    /// first (taking the row's lock), `expected_version` checked against
    /// the one it replaced, then `decide` sees the lines and answers the
    /// one edit to make and its result. An `Err` from `decide` (or a stale
    /// version) writes nothing.
    pub async fn change<T, E>(
        &self,
        org_id: Uuid,
        session_id: Uuid,
        user_id: Uuid,
        expected_version: Option<i64>,
        now: i64,
        decide: impl FnOnce(&[Line]) -> Result<(Edit, T), E>,
    ) -> Result<Result<(T, CartState), ChangeRefused<E>>, StoreError> {
        let (org, session) = (org_id.to_string(), session_id.to_string());
        with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            // One statement makes the cart or bumps its version, so no
            // sweep between two statements can leave nothing to bump.
            let (version, owner): (i64, String) = sqlx::query_as(
                "INSERT INTO cart_carts (org_id, session_id, user_id, version, updated_at) \
                 VALUES ($1, $2, $3, 1, $4) ON CONFLICT (org_id, session_id) \
                 DO UPDATE SET version = cart_carts.version + 1, updated_at = $4 \
                 RETURNING version, user_id",
            )
            .bind(&org)
            .bind(&session)
            .bind(user_id.to_string())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            if owner != user_id.to_string() {
                tx.rollback().await?;
                return Ok(Err(ChangeRefused::NotOwner));
            }
            if let Some(expected) = expected_version.filter(|e| *e != version - 1) {
                tx.rollback().await?;
                return Ok(Err(ChangeRefused::Stale {
                    expected,
                    current: version - 1,
                }));
            }
            let sql = format!(
                "SELECT {LINE_COLUMNS} FROM cart_items WHERE org_id = $1 AND session_id = $2 \
                 ORDER BY added_at, id"
            );
            let rows: Vec<LineRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&org)
                .bind(&session)
                .fetch_all(&mut *tx)
                .await?;
            let mut lines = rows
                .into_iter()
                .map(Line::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            let (edit, answer) = match decide(&lines) {
                Ok(change) => change,
                Err(error) => {
                    tx.rollback().await?;
                    return Ok(Err(ChangeRefused::Decided(error)));
                }
            };
            // Only the line the edit touches is written.
            match edit {
                Edit::Add(line) | Edit::Replace(line) => {
                    let options =
                        serde_json::to_string(&line.options).map_err(|e| corrupt("options", e))?;
                    sqlx::query(
                        "INSERT INTO cart_items (org_id, session_id, id, product_id, sku, name, \
                         quantity, options, unit_price_minor, currency, added_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (org_id, session_id, id) DO UPDATE SET \
                         quantity = excluded.quantity, options = excluded.options",
                    )
                    .bind(&org)
                    .bind(&session)
                    .bind(line.id.to_string())
                    .bind(line.product_id.to_string())
                    .bind(&line.sku)
                    .bind(&line.name)
                    .bind(line.quantity)
                    .bind(options)
                    .bind(line.unit_price.amount_minor)
                    .bind(&line.unit_price.currency)
                    .bind(line.added_at)
                    .execute(&mut *tx)
                    .await?;
                    match lines.iter_mut().find(|l| l.id == line.id) {
                        Some(held) => *held = line,
                        None => lines.push(line),
                    }
                }
                Edit::Remove(item_id) => {
                    sqlx::query(
                        "DELETE FROM cart_items WHERE org_id = $1 AND session_id = $2 AND id = $3",
                    )
                    .bind(&org)
                    .bind(&session)
                    .bind(item_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                    lines.retain(|l| l.id != item_id);
                }
                Edit::Clear => {
                    sqlx::query("DELETE FROM cart_items WHERE org_id = $1 AND session_id = $2")
                        .bind(&org)
                        .bind(&session)
                        .execute(&mut *tx)
                        .await?;
                    lines.clear();
                }
            }
            tx.commit().await?;
            Ok(Ok((
                answer,
                CartState {
                    session_id,
                    version,
                    updated_at: now,
                    lines,
                },
            )))
        })
    }

    pub async fn exists(&self, org_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        let found: Option<(i64,)> = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT version FROM cart_carts WHERE org_id = $1 AND session_id = $2")
                .bind(org_id.to_string())
                .bind(session_id.to_string())
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    /// Removes the carts of ended sessions.
    pub async fn delete(&self, org_id: Uuid, session_ids: &[Uuid]) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for session_id in session_ids {
            let (org, session) = (org_id.to_string(), session_id.to_string());
            deleted += with_pool!(&self.db, |pool| {
                let mut tx = pool.begin_write().await?;
                sqlx::query("DELETE FROM cart_items WHERE org_id = $1 AND session_id = $2")
                    .bind(&org)
                    .bind(&session)
                    .execute(&mut *tx)
                    .await?;
                let done =
                    sqlx::query("DELETE FROM cart_carts WHERE org_id = $1 AND session_id = $2")
                        .bind(&org)
                        .bind(&session)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                tx.commit().await?;
                done
            });
        }
        Ok(deleted)
    }

    /// Up to `limit` carts after `after` (organization, session), in that
    /// order: the sweeper's walk.
    pub async fn page(
        &self,
        after: (String, String),
        limit: i64,
    ) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT org_id, session_id FROM cart_carts \
                 WHERE org_id > $1 OR (org_id = $1 AND session_id > $2) \
                 ORDER BY org_id, session_id LIMIT $3",
            )
            .bind(&after.0)
            .bind(&after.1)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(org, session)| Ok((uuid("org id", &org)?, uuid("session id", &session)?)))
            .collect()
    }
}

/// Why a cart change wrote nothing.
#[derive(Debug)]
pub enum ChangeRefused<E> {
    Stale {
        expected: i64,
        current: i64,
    },
    /// The cart row names another user (the session's owner is checked
    /// before; this is the last line of defence).
    NotOwner,
    Decided(E),
}
