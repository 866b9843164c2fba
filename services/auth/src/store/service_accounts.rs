//! Service accounts in `auth_service_accounts`. They belong to no
//! organization: a worker serves every organization, and an internal call
//! names the organization it acts for in its request.

use trellis_store::{Database, StoreError, stored_names, with_pool, write_with_pool};

use trellis_runtime::time::now_ms;

stored_names!(
    /// The scope an account's tokens carry.
    ServiceScope {
        Worker = "worker",
        Service = "service",
    }
);

trellis_store::row! {
    #[derive(Clone, Debug)]
    pub struct ServiceAccountRow {
        pub id: String,
        pub name: String,
        pub scope: ServiceScope as String,
        pub secret_hash: String,
        pub created_at: i64,
        pub revoked_at: Option<i64>,
    }
}

/// The accounts, wherever Auth's tables are: the CLI and the server use the
/// same ones.
#[derive(Clone, Debug)]
pub struct ServiceAccounts {
    db: Database,
}

impl ServiceAccounts {
    pub fn new(db: Database) -> Self {
        ServiceAccounts { db }
    }

    /// Stores a new account whose secret hashes to `secret_hash`.
    pub async fn create(
        &self,
        name: &str,
        scope: ServiceScope,
        secret_hash: &str,
    ) -> Result<ServiceAccountRow, StoreError> {
        self.insert(
            &uuid::Uuid::new_v4().to_string(),
            name,
            scope,
            secret_hash,
            false,
        )
        .await
    }

    /// Stores the account `id` unless an account `id` exists (revoked or
    /// not); the row as it now is.
    pub async fn register(
        &self,
        id: &str,
        name: &str,
        scope: ServiceScope,
        secret_hash: &str,
    ) -> Result<ServiceAccountRow, StoreError> {
        self.insert(id, name, scope, secret_hash, true).await?;
        self.get(id)
            .await?
            .ok_or(StoreError::Sqlx(sqlx::Error::RowNotFound))
    }

    async fn insert(
        &self,
        id: &str,
        name: &str,
        scope: ServiceScope,
        secret_hash: &str,
        if_absent: bool,
    ) -> Result<ServiceAccountRow, StoreError> {
        let row = ServiceAccountRow {
            id: id.to_owned(),
            name: name.to_owned(),
            scope,
            secret_hash: secret_hash.to_owned(),
            created_at: now_ms(),
            revoked_at: None,
        };
        let statement = if if_absent {
            "INSERT INTO auth_service_accounts \
             (id, name, scope, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING"
        } else {
            "INSERT INTO auth_service_accounts \
             (id, name, scope, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)"
        };
        write_with_pool!(&self.db, |pool| {
            sqlx::query(statement)
                .bind(&row.id)
                .bind(&row.name)
                .bind(row.scope.as_str())
                .bind(&row.secret_hash)
                .bind(row.created_at)
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
        });
        Ok(row)
    }

    /// The account `id`, revoked or not.
    pub async fn get(&self, id: &str) -> Result<Option<ServiceAccountRow>, StoreError> {
        with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, name, scope, secret_hash, created_at, revoked_at \
                 FROM auth_service_accounts WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)
        })
    }

    /// Every account, revoked ones included, oldest first.
    pub async fn list(&self) -> Result<Vec<ServiceAccountRow>, StoreError> {
        with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, name, scope, secret_hash, created_at, revoked_at \
                 FROM auth_service_accounts ORDER BY created_at, id",
            )
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)
        })
    }

    /// The account, unless it is unknown or revoked.
    pub async fn active(&self, id: &str) -> Result<Option<ServiceAccountRow>, StoreError> {
        with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, name, scope, secret_hash, created_at, revoked_at \
                 FROM auth_service_accounts WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)
        })
    }

    /// Ends an account; whether it was active.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        write_with_pool!(&self.db, |pool| {
            let done = sqlx::query(
                "UPDATE auth_service_accounts SET revoked_at = $1 \
                 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
            Ok(done.rows_affected() == 1)
        })
    }
}
