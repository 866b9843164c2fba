use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

use crate::database::Database;
use crate::error::StoreError;

/// One migration compiled into the binary (`include_str!`), so a deployed
/// image needs no migration files beside it.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedMigration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// A service's own schema history, per backend. Each service records it in
/// its own table, so services migrate (and deploy) independently.
#[derive(Clone, Copy, Debug)]
pub struct ServiceMigrations {
    pub service: &'static str,
    pub sqlite: &'static [EmbeddedMigration],
    pub postgres: &'static [EmbeddedMigration],
}

impl ServiceMigrations {
    fn migrator(&self, migrations: &[EmbeddedMigration]) -> Migrator {
        let migrations = migrations
            .iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    AssertSqlSafe(m.sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(format!("_trellis_{}_migrations", self.service));
        migrator
    }
}

/// Applies the pending migrations of one service; already applied ones are
/// skipped, and a changed one is an error rather than silently re-run.
pub async fn migrate(
    database: &Database,
    migrations: &ServiceMigrations,
) -> Result<(), StoreError> {
    let error = |source| StoreError::Migrate {
        service: migrations.service,
        source,
    };
    match database {
        Database::Sqlite(pool) => migrations
            .migrator(migrations.sqlite)
            .run(pool)
            .await
            .map_err(error),
        Database::Postgres(pool) => migrations
            .migrator(migrations.postgres)
            .run(pool)
            .await
            .map_err(error),
    }
}
